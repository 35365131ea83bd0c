"""Issue 7's faults, against real processes: Redis stopped, the database
unreachable, and a purge worker killed mid-run."""
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.faults.services import PrivateRedis, daphne_behind_cuttable_proxy
from tests.factories import ack, build_send, create_conversation, make_person, send, sync
from tests.live import BASE_DIR

pytestmark = pytest.mark.live


@pytest.fixture
def private_redis():
    redis = PrivateRedis()
    yield redis
    redis.close()


def test_redis_stopped_sends_and_syncs_keep_working(daphne_factory, private_redis):
    server = daphne_factory(extra_env={"REDIS_URL": private_redis.url})
    alice, bob = make_person(1, base_url=server.url), make_person(2, base_url=server.url)
    conv = create_conversation(alice.device, [bob.id])
    sent = []
    body = build_send(alice.device, conv, text="before")
    assert send(alice.device, body).status_code == 201
    sent.append(body["message_id"])

    private_redis.stop()
    for i in range(3):
        body = build_send(alice.device, conv, text=f"during {i}")
        started = time.monotonic()
        response = send(alice.device, body)
        assert response.status_code == 201, response.text
        assert time.monotonic() - started < 5
        sent.append(body["message_id"])
    # nothing is lost: every device finds every message on its next sync
    for device in bob.devices:
        assert [m["message_id"] for m in sync(device)["messages"]] == sent
        assert ack(device, sent)["acked"] == sorted(sent)
    assert "gateway notify" in server.log()  # the failure was logged

    private_redis.start()
    body = build_send(alice.device, conv, text="after")
    assert send(alice.device, body).status_code == 201
    assert [m["message_id"] for m in sync(bob.device)["messages"]] == [body["message_id"]]


@pytest.mark.requires_postgres
def test_database_unreachable_is_503_and_recovers(daphne_factory, live_database):
    server, proxy = daphne_behind_cuttable_proxy(daphne_factory, live_database)
    alice, bob = make_person(1, base_url=server.url), make_person(1, base_url=server.url)
    conv = create_conversation(alice.device, [bob.id])

    during = build_send(alice.device, conv)
    proxy.cut()
    for call in (lambda: send(alice.device, during),
                 lambda: bob.device.client.post("/api/v1/dms/sync", {}),
                 lambda: httpx.post(server.url + "/api/v1/auth/challenge", json={"pubkey": alice.id}, timeout=30)):
        response = call()
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "service_unavailable" and response.headers["Retry-After"]

    proxy.restore()
    deadline = time.monotonic() + 30  # the connection pool reconnects with a backoff
    while (response := send(alice.device, during)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(int(response.headers["Retry-After"]))
    assert response.status_code == 201  # the failed attempt stored nothing: the same message_id goes through
    assert [m["message_id"] for m in sync(bob.device)["messages"]] == [during["message_id"]]


def _seed_expired(live_database, messages: int, deliveries: int) -> None:
    script = f"""
import datetime as dt, os, uuid
from django.utils import timezone
from devices.models import Device, User
from dms.models import Conversation, Delivery, PendingDm
now = timezone.now()
user = User.objects.create(username="seed", is_key_user=True)
devices = [Device.objects.create(user=user, device_id=f"d{{i}}", name="d", certificate={{}}, issued_at=now)
           for i in range({deliveries})]
conv = Conversation.objects.create(kind="group", epoch=1, participants_sha256="x", retention_policy="ttl",
                                   retention_ttl_days=1, created_at=now, updated_at=now, last_activity_at=now)
past = now - dt.timedelta(days=2)
for start in range(0, {messages}, 5000):
    ids = [uuid.uuid4() for _ in range(min(5000, {messages} - start))]
    PendingDm.objects.bulk_create([PendingDm(
        message_id=i, conversation=conv, sender_device=devices[0], epoch=1, key_id="k", participants_sha256="x",
        nonce="n", ciphertext=os.urandom(64), ciphertext_sha256="h", signature="s", policy="ttl", ttl_days=1,
        created_at=past, expires_at=past + dt.timedelta(days=1)) for i in ids])
    Delivery.objects.bulk_create([Delivery(message_id=i, device=d, created_at=past) for i in ids for d in devices])
"""
    live_database.manage("shell", "-v", "0", "-c", script)


def test_worker_killed_mid_purge_leaves_no_half_deleted_message(live_database):
    messages, per_message = 40_000, 2
    _seed_expired(live_database, messages, per_message)
    purge = subprocess.Popen([sys.executable, "manage.py", "purge_dms"], cwd=BASE_DIR, env=live_database.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    count = "SELECT COUNT(*) FROM pending_dms"
    deadline = time.monotonic() + 60
    while live_database.sql(count)[0][0] == messages and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(purge.pid, signal.SIGKILL)
    purge.wait()
    left = live_database.sql(count)[0][0]
    assert 0 < left < messages, "the purge was not caught mid-run"
    # every message still there has all its deliveries; no delivery lost its message
    broken = live_database.sql(
        "SELECT m.message_id FROM pending_dms m LEFT JOIN dm_deliveries d ON d.message_id = m.message_id "
        "GROUP BY m.message_id HAVING COUNT(d.id) <> %s", (per_message,))
    assert broken == []
    orphans = live_database.sql("SELECT COUNT(*) FROM dm_deliveries d LEFT JOIN pending_dms m "
                                "ON d.message_id = m.message_id WHERE m.message_id IS NULL")
    assert orphans[0][0] == 0
    # the next run finishes the job
    live_database.manage("purge_dms")
    assert live_database.sql(count)[0][0] == 0
    assert live_database.sql("SELECT COUNT(*) FROM dm_deliveries")[0][0] == 0
