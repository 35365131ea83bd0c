"""Issue 14: failing fast when a dependency is down, against real processes.
PostgreSQL cut by a TCP proxy: every one of 24 concurrent clients gets its
503 within 2 s, and the process serves again within 3 s of the return. Redis
killed: open gateway connections are closed 4010 (§9), and reconnect once it
is back."""
import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import websockets

from tests.factories import build_send, create_conversation, make_person, send
from tests.faults.services import PrivateRedis, daphne_behind_cuttable_proxy

pytestmark = pytest.mark.live

CLIENTS = 24


def _concurrent_syncs(url: str, token: str) -> list[tuple[int, float, str]]:
    """CLIENTS clients, each with its own connection, send a sync at the same
    moment; each result is (status, seconds until its answer, body)."""
    clients = [httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
               for _ in range(CLIENTS)]
    start = threading.Barrier(CLIENTS)

    def timed_sync(client: httpx.Client) -> tuple[int, float, str]:
        start.wait()
        started = time.monotonic()
        response = client.post("/api/v1/dms/sync", json={})
        return response.status_code, time.monotonic() - started, response.text

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            return list(pool.map(timed_sync, clients))
    finally:
        for client in clients:
            client.close()


@pytest.mark.requires_postgres
def test_database_down_answers_every_client_503_within_2s_and_serves_within_3s_of_return(
        daphne_factory, live_database):
    server, proxy = daphne_behind_cuttable_proxy(daphne_factory, live_database)
    alice, bob = make_person(1, base_url=server.url), make_person(1, base_url=server.url)
    conv = create_conversation(alice.device, [bob.id])
    token = bob.device.client.token
    assert {status for status, _, _ in _concurrent_syncs(server.url, token)} == {200}  # the pool is warm

    during = build_send(alice.device, conv)
    proxy.cut()
    for _ in range(3):  # the first wave finds the outage, the next ones the open breaker
        results = _concurrent_syncs(server.url, token)
        assert {status for status, _, _ in results} == {503}, results
        assert max(seconds for _, seconds, _ in results) < 2, (sorted(results), server.log()[-3000:])
        assert json.loads(results[0][2])["error"] == "service_unavailable"
        time.sleep(1)

    proxy.restore()
    back = time.monotonic()
    while (response := send(alice.device, during)).status_code == 503 and time.monotonic() - back < 10:
        time.sleep(0.05)
    assert response.status_code == 201, response.text
    assert time.monotonic() - back < 3
    assert {status for status, _, _ in _concurrent_syncs(server.url, token)} == {200}
    log = server.log()
    assert "Traceback" not in log
    assert "database unreachable" in log and "database reachable again" in log


async def _hello(ws_url: str, token: str):
    ws = await websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"})
    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert hello["op"] == "HELLO"
    return ws


async def _closed_code(ws) -> int:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 15)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def test_redis_lost_closes_gateway_connections_4010_and_they_reconnect(daphne_factory):
    redis = PrivateRedis()
    try:
        server = daphne_factory(extra_env={"REDIS_URL": redis.url})
        alice, bob = make_person(1, base_url=server.url), make_person(1, base_url=server.url)
        conv = create_conversation(alice.device, [bob.id])
        token = bob.device.client.token

        async def scenario():
            connections = [await _hello(server.ws_url, token) for _ in range(3)]
            redis.stop()
            codes = await asyncio.gather(*(_closed_code(ws) for ws in connections))
            assert codes == [4010] * 3
            redis.start()
            deadline = time.monotonic() + 15
            while True:  # the client's reconnect with backoff
                try:
                    ws = await _hello(server.ws_url, token)
                    break
                except (AssertionError, websockets.ConnectionClosed, OSError, asyncio.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            # the doorbell rings again through the new channel layer connection
            assert (await asyncio.to_thread(send, alice.device, build_send(alice.device, conv))).status_code == 201
            while (event := json.loads(await asyncio.wait_for(ws.recv(), 10)))["op"] != "DM_NOTIFY":
                pass
            assert event["d"]["conversation_id"] == conv["conversation_id"]
            await ws.close()

        asyncio.run(scenario())
        log = server.log()
        assert "Traceback" not in log, log[-3000:]
        assert "4010" in log
    finally:
        redis.close()
