"""The gateway consumer (§9) against the real ASGI application, database and
channel layer (in-memory, or Redis when REDIS_URL is set)."""
import datetime as dt
import json
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from devices.models import AuthSession
from devices.selectors import token_sha256
from dms.selectors import server_settings_get
from tests.factories import build_send, create_conversation, make_person, send
from tests.gateway.wsutil import close_all, closed_with, communicator, connect, connect_refused, next_op, silent

pytestmark = pytest.mark.django_db(transaction=True)

FAST_HEARTBEAT = override_settings(GATEWAY_HEARTBEAT_INTERVAL_MS=100, GATEWAY_HEARTBEAT_GRACE_MS=400)


def run(scenario):
    async_to_sync(scenario)()


def send_dm(sender, conversation) -> dict:
    response = send(sender, build_send(sender, conversation))
    assert response.status_code == 201, response.content
    return response.json()


# --- HELLO and authentication ------------------------------------------------------

def test_hello_carries_interval_ids_and_pending_count():
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])
    send_dm(alice.device, conversation)
    send_dm(alice.device, conversation)

    async def scenario():
        before = int(time.time() * 1000)
        comm, hello = await connect(bob.device.client.token)
        assert hello["d"] == {"heartbeat_interval_ms": settings.GATEWAY_HEARTBEAT_INTERVAL_MS,
                              "user_id": bob.id, "device_id": bob.device.id, "pending_count": 2}
        assert before <= hello["t"] <= int(time.time() * 1000)
        sender, hello = await connect(alice.device.client.token)
        assert hello["d"]["pending_count"] == 0 and hello["d"]["device_id"] == alice.device.id
        await close_all(comm, sender)

    run(scenario)


def test_master_session_hello_has_no_device():
    alice = make_person(1)
    master = alice.master_client()

    async def scenario():
        comm, hello = await connect(master.token)
        assert hello["d"]["user_id"] == alice.id
        assert hello["d"]["device_id"] is None and hello["d"]["pending_count"] == 0
        await close_all(comm)

    run(scenario)


@pytest.mark.parametrize("credentials", [
    {},
    {"token": "not-a-token"},
    {"authorization": "Basic dXNlcjpwYXNz"},
    {"authorization": "Bearer"},
    {"authorization": "Bearer a b"},
    {"ticket": "not-a-ticket"},
    {"ticket": "x" * 500},
    {"ticket": ""},
])
def test_bad_credentials_are_accepted_then_closed_4001(credentials):
    make_person(1)
    assert async_to_sync(connect_refused)(**credentials) == 4001


def test_header_wins_over_ticket_and_a_revoked_devices_token_is_refused():
    alice = make_person(2)
    token = alice.devices[1].client.token
    ticket = alice.device.client.post("/api/v1/gateway/ticket").json()["ticket"]
    assert alice.master_client().delete(f"/api/v1/devices/{alice.devices[1].id}").status_code == 204

    async def scenario():
        assert await connect_refused(token=token) == 4001
        # a good ticket does not rescue a bad header
        assert await connect_refused(token=token, ticket=ticket) == 4001

    run(scenario)


# --- frames from the client ---------------------------------------------------------

BAD_FRAMES = [
    "not json",
    "[1, 2]",
    json.dumps({"d": {}}),
    json.dumps({"op": 7, "d": {}}),
    json.dumps({"op": "", "d": {}}),
    json.dumps({"op": "HEARTBEAT_ACK", "d": [1]}),
    json.dumps({"op": "X", "d": {}, "pad": "x" * 20000}),
    "[" * 5000 + "]" * 5000,
]


def test_each_malformed_frame_gets_an_error_frame():
    alice = make_person(1)

    async def scenario():
        comm, _ = await connect(alice.device.client.token)
        for i, text in enumerate(BAD_FRAMES):
            await comm.send_to(text_data=text)
            error = await next_op(comm, "ERROR")
            assert error["d"]["error"] == "malformed_frame" and error["d"]["detail"]
            assert isinstance(error["t"], int)
            if i % 3 == 2:  # a good frame in between: the connection is not "keeping on"
                await comm.send_json_to({"op": "HEARTBEAT_ACK", "d": {}})
        await comm.send_to(bytes_data=b"\x00binary")
        assert (await next_op(comm, "ERROR"))["d"]["detail"].startswith("frames are JSON text")
        assert await silent(comm)
        await close_all(comm)

    run(scenario)


def test_malformed_frames_that_keep_coming_close_4000():
    alice = make_person(1)

    async def scenario():
        comm, _ = await connect(alice.device.client.token)
        for _ in range(4):
            await comm.send_to(text_data="{")
            await next_op(comm, "ERROR")
        await comm.send_to(text_data="{")
        await next_op(comm, "ERROR")
        assert await closed_with(comm) == 4000
        await close_all(comm)

    run(scenario)


def test_unknown_client_ops_are_ignored():
    alice = make_person(1)

    async def scenario():
        comm, _ = await connect(alice.device.client.token)
        for op in ("RESUME", "HEARTBEAT", "hello"):
            await comm.send_json_to({"op": op, "d": {"x": 1}, "t": 1})
        await comm.send_json_to({"op": "PING"})  # `d` may be left out
        assert await silent(comm)
        # still open and answering: the next bad frame gets its ERROR
        await comm.send_to(text_data="nope")
        await next_op(comm, "ERROR")
        await close_all(comm)

    run(scenario)


# --- heartbeat and session end ------------------------------------------------------

@FAST_HEARTBEAT
def test_heartbeat_answered_keeps_the_connection_missed_closes_4002():
    alice = make_person(1)

    async def scenario():
        comm, hello = await connect(alice.device.client.token)
        assert hello["d"]["heartbeat_interval_ms"] == 100
        for _ in range(3):
            beat = await next_op(comm, "HEARTBEAT", timeout=1)
            assert beat["d"] == {}
            await comm.send_json_to({"op": "HEARTBEAT_ACK", "d": {}})
        await next_op(comm, "HEARTBEAT", timeout=1)
        started = time.monotonic()
        assert await closed_with(comm, timeout=2) == 4002
        assert 0.3 <= time.monotonic() - started < 1.5  # the 400 ms grace
        await close_all(comm)

    run(scenario)


def end_session(client, how: str) -> None:
    if how == "logout":
        assert client.post("/api/v1/auth/logout").status_code == 204
    else:
        AuthSession.objects.filter(token_sha256=token_sha256(client.token)).update(
            expires_at=timezone.now() - dt.timedelta(seconds=1))


@FAST_HEARTBEAT
@pytest.mark.parametrize("how", ["logout", "expiry"])
def test_a_session_that_ends_closes_its_connection_4001_at_the_next_heartbeat(how):
    alice = make_person(1)

    async def scenario():
        comm, _ = await connect(alice.device.client.token)
        await next_op(comm, "HEARTBEAT", timeout=1)
        await comm.send_json_to({"op": "HEARTBEAT_ACK", "d": {}})
        await sync_to_async(end_session)(alice.device.client, how)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            output = await comm.receive_output(timeout=1)
            if output["type"] == "websocket.close":
                assert output["code"] == 4001
                break
            assert json.loads(output["text"])["op"] == "HEARTBEAT"
            await comm.send_json_to({"op": "HEARTBEAT_ACK", "d": {}})
        else:
            pytest.fail(f"still open 2 s after {how}")
        await close_all(comm)

    run(scenario)


@FAST_HEARTBEAT
def test_group_membership_is_renewed_before_the_channel_layer_expires_it():
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])
    layers = {"default": {**settings.CHANNEL_LAYERS["default"],
                          "CONFIG": {**settings.CHANNEL_LAYERS["default"].get("CONFIG", {}), "group_expiry": 1}}}

    async def scenario():
        comm, _ = await connect(bob.device.client.token)
        deadline = time.monotonic() + 2.5  # past the 1 s expiry, to the next whole second and beyond
        while time.monotonic() < deadline:
            await next_op(comm, "HEARTBEAT", timeout=1)
            await comm.send_json_to({"op": "HEARTBEAT_ACK", "d": {}})
        body = await sync_to_async(send_dm)(alice.device, conversation)
        assert (await next_op(comm, "DM_NOTIFY"))["d"]["message_id"] == body["message_id"]
        await close_all(comm)

    with override_settings(CHANNEL_LAYERS=layers):
        run(scenario)


# --- events -------------------------------------------------------------------------

def test_dm_notify_goes_to_each_recipient_device_and_no_one_else():
    alice, bob, carol = make_person(2), make_person(2), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])
    bob_master = bob.master_client()

    async def scenario():
        recipients = [(await connect(d.client.token))[0] for d in (*bob.devices, alice.devices[1])]
        sender = (await connect(alice.device.client.token))[0]
        others = [(await connect(carol.device.client.token))[0], (await connect(bob_master.token))[0]]
        body = await sync_to_async(send_dm)(alice.device, conversation)
        for comm in recipients:
            notify = await next_op(comm, "DM_NOTIFY")
            assert notify["d"] == {"pending_count": 1, "conversation_id": conversation["conversation_id"],
                                   "message_id": body["message_id"]}
        assert await silent(sender, *others, *recipients)
        body = await sync_to_async(send_dm)(alice.device, conversation)
        assert (await next_op(recipients[0], "DM_NOTIFY"))["d"]["pending_count"] == 2
        await close_all(*recipients, sender, *others)

    run(scenario)


def test_device_add_and_revoke_reach_the_users_devices_and_master_sessions_and_close_4003():
    alice, bob = make_person(2), make_person(1)
    master = alice.master_client()
    doomed = alice.devices[1]

    async def scenario():
        keeper = (await connect(alice.device.client.token))[0]
        doomed_conns = [(await connect(doomed.client.token))[0] for _ in range(2)]
        master_conn = (await connect(master.token))[0]
        stranger = (await connect(bob.device.client.token))[0]

        added = await sync_to_async(alice.add_device)("laptop")
        for comm in (keeper, master_conn, *doomed_conns):
            assert (await next_op(comm, "DEVICE_ADD"))["d"] == {"device_id": added.id, "name": "laptop"}

        response = await sync_to_async(master.delete)(f"/api/v1/devices/{doomed.id}")
        assert response.status_code == 204
        for comm in (keeper, master_conn, *doomed_conns):
            assert (await next_op(comm, "DEVICE_REVOKE"))["d"] == {"device_id": doomed.id, "name": doomed.cert["name"]}
        for comm in doomed_conns:
            assert await closed_with(comm) == 4003
        assert await silent(stranger, keeper, master_conn)
        await close_all(keeper, *doomed_conns, master_conn, stranger)

    run(scenario)


def test_conversation_update_reaches_participants_before_and_after_only():
    alice, bob, carol, dave, eve = (make_person(1) for _ in range(5))
    group = create_conversation(alice.device, [bob.id, carol.id], expect=201)
    cid = group["conversation_id"]
    alice_master = alice.master_client()

    async def scenario():
        conns = {name: (await connect(p.device.client.token))[0]
                 for name, p in (("alice", alice), ("bob", bob), ("carol", carol), ("dave", dave), ("eve", eve))}
        master_conn = (await connect(alice_master.token))[0]

        response = await sync_to_async(alice.device.client.post)(
            f"/api/v1/dms/conversations/{cid}/participants", {"add": [dave.id]}, format="json")
        assert response.status_code == 200, response.content
        for name in ("alice", "bob", "carol", "dave"):
            update = (await next_op(conns[name], "CONVERSATION_UPDATE"))["d"]
            assert update["conversation"]["participants"] == sorted([alice.id, bob.id, carol.id, dave.id])
            assert update["change"] == {"actor": alice.id, "added": [dave.id], "removed": [], "epoch": 2,
                                        "retention": group["retention"]}

        response = await sync_to_async(alice.device.client.delete)(
            f"/api/v1/dms/conversations/{cid}/participants/{bob.id}")
        assert response.status_code == 204, response.content
        for name in ("alice", "bob", "carol", "dave"):  # bob was a participant before
            assert (await next_op(conns[name], "CONVERSATION_UPDATE"))["d"]["change"]["removed"] == [bob.id]

        retention = {"policy": "ttl", "ttl_days": 3}
        response = await sync_to_async(carol.device.client.patch)(
            f"/api/v1/dms/conversations/{cid}", {"retention": retention}, format="json")
        assert response.status_code == 200, response.content
        for name in ("alice", "carol", "dave"):
            assert (await next_op(conns[name], "CONVERSATION_UPDATE"))["d"]["change"]["retention"] == retention

        assert await silent(conns["eve"], conns["bob"], master_conn)  # master sessions: account events only
        await close_all(*conns.values(), master_conn)

    run(scenario)


# --- connection limit ---------------------------------------------------------------

def test_connections_over_the_per_device_limit_close_4008():
    alice = make_person(1)
    conf = server_settings_get()
    conf.max_gateway_connections_per_device = 2
    conf.save()
    token = alice.device.client.token

    async def scenario():
        first, second = (await connect(token))[0], (await connect(token))[0]
        over = communicator(token=token)
        assert (await over.connect())[0]
        assert await closed_with(over) == 4008
        await over.disconnect()
        await first.disconnect()
        third, _ = await connect(token)  # the slot is free again
        await close_all(second, third)

    run(scenario)


@pytest.mark.requires_redis
def test_an_idle_connection_survives_the_redis_layers_blocking_receive():
    # channels_redis blocks 5 s per receive; a client socket timeout of 5 s
    # (redis-py's default) raced it and killed idle consumers every 5 s.
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])

    async def scenario():
        comm, _ = await connect(bob.device.client.token)
        assert await comm.receive_nothing(timeout=11)
        body = await sync_to_async(send_dm)(alice.device, conversation)
        assert (await next_op(comm, "DM_NOTIFY"))["d"]["message_id"] == body["message_id"]
        await close_all(comm)

    run(scenario)
