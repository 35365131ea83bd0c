"""The web tier as several processes (python -m decentcom.serve): gateway events
cross them, and reach them from processes that are not web servers, through the
embedded channel layer (decentcom.layers) or Redis when REDIS_URL is set."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.conf import settings
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from bench.load import SETTINGS_FOR_LOAD
from bench.server import cpu_seconds
from tests.factories import build_send, create_conversation, directory, make_person, send
from tests.gateway.wsutil import Listener
from tests.live import BASE_DIR, free_port, pid_holding_connection
from tests.ops.test_monitoring import TOKEN, scrape, value

pytestmark = pytest.mark.live


def local_port(listener: Listener) -> int:
    return listener.ws.transport.get_extra_info("sockname")[1]


async def send_and_expect_notify(alice, conversation, listeners) -> None:
    recipients = [d for d in directory(alice.device.client, conversation["participants"]) if d != alice.device.id]
    body = build_send(alice.device, conversation, recipients=recipients)
    response = await asyncio.to_thread(send, alice.device, body)
    assert response.status_code == 201, response.text
    for listener in listeners:
        _, notify = await listener.wait_for("DM_NOTIFY", timeout=5)
        assert notify["d"]["message_id"] == body["message_id"]


def test_dm_notify_crosses_two_serve_parents_on_one_database(daphne_factory):
    a, b = daphne_factory(processes=1), daphne_factory(processes=1)
    alice, bob = (make_person(1, base_url=b.url) for _ in range(2))
    conversation = create_conversation(alice.device, [bob.id])

    async def scenario():
        bob_on_a = await Listener.open(a, bob.device.client.token)
        await send_and_expect_notify(alice, conversation, [bob_on_a])  # sent through b
        await bob_on_a.close()

    asyncio.run(scenario())


def test_every_connection_on_two_workers_gets_its_events(daphne_factory):
    server = daphne_factory(processes=2)
    workers = server.worker_pids()
    alice = make_person(1, base_url=server.url)
    people = [make_person(1, base_url=server.url) for _ in range(3)]
    conversation = create_conversation(alice.device, [p.id for p in people])

    async def scenario():
        listeners, held_by = [], set()
        # the kernel hands each connection to whichever worker accepts first: open until both hold some
        for attempt in range(40):
            person = people[attempt % len(people)]
            listener = await Listener.open(server, person.device.client.token)
            listeners.append(listener)
            held_by.add(pid_holding_connection(local_port(listener), workers))
            if held_by == set(workers) and len(listeners) >= len(people):
                break
        assert held_by == set(workers), f"all connections on {held_by}"
        await send_and_expect_notify(alice, conversation, listeners)
        for listener in listeners:
            await listener.close()

    asyncio.run(scenario())


def test_events_from_a_process_that_is_not_a_web_server_reach_the_gateway(daphne_factory, live_database):
    server = daphne_factory(processes=2)
    bob = make_person(1, base_url=server.url)

    async def scenario():
        listener = await Listener.open(server, bob.device.client.token)
        # A purge-sized DM_STATUS batch (one channel-layer message, far over a datagram's 200 KB)
        # sent after commit from a manage.py process, as the Celery worker sends the purge's.
        await asyncio.to_thread(live_database.manage, "shell", "-c", f"""
from django.db import transaction
from gateway.notify import notify_users_batch_on_commit
with transaction.atomic():
    notify_users_batch_on_commit(events={{{bob.id!r}: [
        ("DM_STATUS", {{"message_id": f"{{i:026d}}", "state": "expired", "pending_count": 0}})
        for i in range(5000)]}})
""")
        deadline = time.monotonic() + 10
        while listener.ops().count("DM_STATUS") < 5000 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        statuses = [frame["d"]["message_id"] for _, frame in listener.frames if frame["op"] == "DM_STATUS"]
        assert statuses == [f"{i:026d}" for i in range(5000)]

        # a revocation by a non-web process closes the connection at once (4003)
        await asyncio.to_thread(live_database.manage, "shell", "-c", f"""
from devices.models import Device
from devices.services import device_revoke
device_revoke(device=Device.objects.get(device_id={bob.device.id!r}))
""")
        await asyncio.wait_for(listener.task, timeout=5)
        assert listener.close_code == 4003

    asyncio.run(scenario())


@pytest.mark.skipif(bool(settings.REDIS_URL), reason="the embedded layer's sockets (no REDIS_URL)")
def test_a_killed_process_socket_does_not_break_sending(daphne_factory, live_database):
    a, b = daphne_factory(processes=1), daphne_factory(processes=1)
    alice, bob = (make_person(1, base_url=b.url) for _ in range(2))
    conversation = create_conversation(alice.device, [bob.id])
    folder = os.path.join(live_database.tmp.name, "channels")

    async def scenario():
        bob_on_a = await Listener.open(a, bob.device.client.token)
        victim = await asyncio.to_thread(daphne_factory, processes=1)
        carol = make_person(1, base_url=victim.url)
        await (await Listener.open(victim, carol.device.client.token)).close()  # it listens from its first group
        [victim_worker] = victim.worker_pids()
        stale = os.path.join(folder, f"{victim_worker}.sock")
        assert os.path.exists(stale)
        os.kill(victim_worker, signal.SIGKILL)  # no atexit: its socket file stays behind
        victim.proc.wait(timeout=10)
        assert os.path.exists(stale)

        await send_and_expect_notify(alice, conversation, [bob_on_a])
        assert not os.path.exists(stale)  # the first sender that met it removed it
        await bob_on_a.close()

    asyncio.run(scenario())


@pytest.mark.requires_redis
def test_dm_notify_crosses_workers_through_redis(daphne_factory):
    # With REDIS_URL the live servers use channels_redis; the same scenarios must hold.
    test_dm_notify_crosses_two_serve_parents_on_one_database(daphne_factory)
    test_every_connection_on_two_workers_gets_its_events(daphne_factory)


def test_serve_stops_its_workers_on_sigterm(daphne_factory):
    server = daphne_factory(processes=2)
    workers = server.worker_pids()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}")


def test_serve_exits_non_zero_and_stops_the_others_when_a_worker_dies(daphne_factory):
    server = daphne_factory(processes=2)
    first, second = server.worker_pids()
    os.kill(first, signal.SIGKILL)
    assert server.proc.wait(timeout=15) == 1
    assert not os.path.exists(f"/proc/{second}")
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/", timeout=2)


def test_make_run_web_workers_get_the_purge_events_of_celery(live_database):
    """`make run` starts decentcom.serve; the purge runs in the Celery worker, a
    process of its own, and its DM_STATUS reaches the sender's gateway connection."""
    port = free_port()
    env = {**live_database.env, "PORT": str(port), "WEB_CONCURRENCY": "2", "DMS_PURGE_INTERVAL_SECONDS": "1"}
    log_path = os.path.join(live_database.tmp.name, "run.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "decentcom.run"], cwd=BASE_DIR, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "is running" not in open(log_path).read() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert "web processes: 2)" in open(log_path).read()
        server = type("Run", (), {"url": f"http://127.0.0.1:{port}", "ws_url": f"ws://127.0.0.1:{port}/api/v1/gateway"})
        alice, bob = (make_person(1, base_url=server.url) for _ in range(2))
        conversation = create_conversation(alice.device, [bob.id])

        async def scenario():
            alice_listener = await Listener.open(server, alice.device.client.token)
            body = build_send(alice.device, conversation)
            response = await asyncio.to_thread(send, alice.device, body)
            assert response.status_code == 201, response.text
            live_database.sql("UPDATE pending_dms SET expires_at = %s", ("2000-01-01 00:00:00",))
            _, status = await alice_listener.wait_for("DM_STATUS", timeout=30)
            assert status["d"]["message_id"] == body["message_id"]
            await alice_listener.close()

        asyncio.run(scenario())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def hello_or_close_code(server, token: str) -> str | int:
    async with ws_connect(server.ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        try:
            return json.loads(await ws.recv())["op"]
        except ConnectionClosed:
            return ws.close_code


def test_connection_limits_hold_across_web_processes(daphne_factory, live_database):
    a, b = daphne_factory(processes=1), daphne_factory(processes=1)
    bob = make_person(1, base_url=a.url)
    live_database.sql("UPDATE dm_server_settings SET max_gateway_connections_per_device = 1")

    async def scenario():
        held = await Listener.open(a, bob.device.client.token)
        assert await asyncio.wait_for(hello_or_close_code(b, bob.device.client.token), 5) == 4008
        await held.close()
        # a's consumer frees the slot in its disconnect, just after the close handshake
        for _ in range(50):
            result = await asyncio.wait_for(hello_or_close_code(b, bob.device.client.token), 5)
            if result == "HELLO":
                break
            await asyncio.sleep(0.1)
        assert result == "HELLO"

    asyncio.run(scenario())


@pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3",
                    reason="SQLite's one writer shared by two processes")
def test_two_web_processes_share_sqlite_under_concurrent_sends(daphne_factory, live_database):
    live_database.manage("shell", "-c", SETTINGS_FOR_LOAD)
    server = daphne_factory(processes=2)
    workers = server.worker_pids()
    bob = make_person(1, base_url=server.url)
    senders = [make_person(1, base_url=server.url) for _ in range(6)]
    conversations = [create_conversation(s.device, [bob.id]) for s in senders]
    cpu_before = [cpu_seconds(pid) for pid in workers]

    def send_many(sender, conversation) -> list[int]:
        sender.device.client.http.headers["Connection"] = "close"  # a new connection each: both workers take some
        recipients = [d for d in directory(sender.device.client, conversation["participants"])
                      if d != sender.device.id]
        return [send(sender.device, build_send(sender.device, conversation, recipients=recipients)).status_code
                for _ in range(15)]

    with ThreadPoolExecutor(len(senders)) as pool:
        codes = [c for result in pool.map(send_many, senders, conversations) for c in result]
    assert codes == [201] * len(codes)
    assert live_database.sql("SELECT COUNT(*) FROM pending_dms") == [(len(codes),)]
    assert all(after > before for before, after in zip(cpu_before, (cpu_seconds(pid) for pid in workers)))
    assert "database is locked" not in server.log()


def test_metrics_of_every_web_worker_add_up(daphne_factory, live_database):
    metrics_dir = os.path.join(live_database.tmp.name, "metrics")
    os.mkdir(metrics_dir, 0o700)
    server = daphne_factory(processes=2, extra_env={"PROMETHEUS_MULTIPROC_DIR": metrics_dir,
                                                    "METRICS_TOKEN": TOKEN})
    workers = server.worker_pids()
    people = [make_person(1, base_url=server.url) for _ in range(3)]
    before = scrape(server)

    async def scenario():
        listeners, held_by = [], set()
        for attempt in range(40):  # until both workers hold connections
            listener = await Listener.open(server, people[attempt % len(people)].device.client.token)
            listeners.append(listener)
            held_by.add(pid_holding_connection(local_port(listener), workers))
            if held_by == set(workers):
                break
        assert held_by == set(workers)
        for _ in range(30):
            with httpx.Client() as fresh:  # a connection each, so both workers answer some
                assert fresh.get(server.url + "/healthz").status_code == 200
        for _ in range(6):  # each scrape, whichever worker answers it, shows every worker's figures
            after = scrape(server, Connection="close")
            assert value(after, "decentcom_http_requests_total", operation="healthz", method="GET",
                         status="200") - value(before, "decentcom_http_requests_total", operation="healthz",
                                               method="GET", status="200") == 30
            assert value(after, "decentcom_gateway_connections") == len(listeners)
        for listener in listeners:
            await listener.close()

    asyncio.run(scenario())
