"""DM_STATUS (§7a, §9) over real WebSockets: to the devices of the sender's
user only, one frame per message per change, one channel-layer send per user
for a whole ACK batch or purge chunk."""
import datetime as dt

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from devices.models import User
from dms.selectors import delivery_status_for_user, server_settings_get
from dms.services import dm_purge_expired
from tests.factories import ack, create_conversation, make_person, send_many
from tests.gateway.wsutil import close_all, connect, next_op, silent

pytestmark = pytest.mark.django_db(transaction=True)
NO_COUNTS = dict.fromkeys(["pending", "delivered", "failed", "expired", "dropped", "skipped"], 0)


def run(scenario):
    async_to_sync(scenario)()


def counts(**n) -> dict:
    return {**NO_COUNTS, **n}


async def next_status(comm) -> dict:
    """The next DM_STATUS, past the CONVERSATION_UPDATE and DEVICE_REVOKE frames the same change sends."""
    while True:
        message = await comm.receive_json_from(timeout=5)
        if message["op"] == "DM_STATUS":
            return message
        assert message["op"] in ("CONVERSATION_UPDATE", "DEVICE_REVOKE", "HEARTBEAT"), message


@pytest.fixture
def group_sends(monkeypatch):
    """The channel-layer sends made, by group: a wrapper that counts and passes each on."""
    layer = get_channel_layer()
    made = []
    real = layer.group_send

    async def counted(group, message):
        made.append((group, message["type"]))
        return await real(group, message)

    monkeypatch.setattr(layer, "group_send", counted)
    return made


def test_dm_status_goes_to_the_senders_devices_only():
    alice, bob, carol = make_person(2), make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])
    alice_master = alice.master_client()

    async def scenario():
        mine = [(await connect(d.client.token))[0] for d in alice.devices]
        others = [(await connect(p.device.client.token))[0] for p in (bob, carol)]
        master = (await connect(alice_master.token))[0]
        [mid] = await sync_to_async(send_many)(alice.device, conversation, 1)
        for comm in (mine[1], others[0]):
            await next_op(comm, "DM_NOTIFY")
        await sync_to_async(ack)(bob.device, [mid])
        for comm in mine:
            status = await next_op(comm, "DM_STATUS")
            assert status["d"] == {"message_id": mid, "conversation_id": conversation["conversation_id"],
                                   "counts": counts(pending=1, delivered=1)}
        assert await silent(*mine, *others, master)
        # an ACK that changes nothing sends nothing
        await sync_to_async(ack)(bob.device, [mid])
        assert await silent(*mine)
        await close_all(*mine, *others, master)

    run(scenario)


def test_an_ack_of_500_ids_is_500_frames_in_one_channel_layer_send(group_sends):
    conf = server_settings_get()
    conf.send_rate_per_device = conf.send_rate_per_user = 0
    conf.save()
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])
    ids = send_many(alice.device, conversation, 500)

    async def scenario():
        comm = (await connect(alice.device.client.token))[0]
        group_sends.clear()
        await sync_to_async(ack)(bob.device, ids)
        assert group_sends == [(f"user.{alice.id}", "gateway.events")]
        got = [(await next_op(comm, "DM_STATUS"))["d"] for _ in ids]
        assert [d["message_id"] for d in got] == sorted(ids)
        assert all(d["counts"] == counts(delivered=1) for d in got)
        assert await silent(comm)
        await close_all(comm)

    run(scenario)


def test_the_purge_sends_one_status_per_expired_message_not_per_delivery(group_sends):
    alice, bob = make_person(1), make_person(3)
    conversation = create_conversation(alice.device, [bob.id], retention={"policy": "ttl", "ttl_days": 1})
    ids = send_many(alice.device, conversation, 3)

    async def scenario():
        comm = (await connect(alice.device.client.token))[0]
        group_sends.clear()
        await sync_to_async(dm_purge_expired)(now=timezone.now() + dt.timedelta(days=2))
        assert [g for g in group_sends if g[1] == "gateway.events"] == [(f"user.{alice.id}", "gateway.events")]
        got = [(await next_op(comm, "DM_STATUS"))["d"] for _ in ids]
        assert [d["message_id"] for d in got] == sorted(ids)
        assert all(d["counts"] == counts(expired=3) for d in got)
        assert await silent(comm)
        await close_all(comm)

    run(scenario)


def test_revocation_and_removal_send_dm_status():
    alice, bob, carol = make_person(1), make_person(2), make_person(1)
    group = create_conversation(alice.device, [bob.id, carol.id], expect=201)
    [mid] = send_many(alice.device, group, 1)
    bob_master = bob.master_client()

    async def scenario():
        comm = (await connect(alice.device.client.token))[0]
        response = await sync_to_async(bob_master.delete)(f"/api/v1/devices/{bob.devices[1].id}")
        assert response.status_code == 204
        assert (await next_status(comm))["d"]["counts"] == counts(pending=2, dropped=1)
        response = await sync_to_async(carol.device.client.delete)(
            f"/api/v1/dms/conversations/{group['conversation_id']}/participants/{carol.id}")
        assert response.status_code == 204
        assert (await next_status(comm))["d"] == {
            "message_id": mid, "conversation_id": group["conversation_id"], "counts": counts(pending=1, dropped=2)}
        await close_all(comm)

    run(scenario)


def test_an_undelivered_purge_sends_the_counts_the_status_answers():
    """The purge reads a chunk's counts before its UPDATE and moves only the
    states it ends: DM_STATUS must still carry what the status endpoint answers."""
    alice, bob = make_person(1), make_person(3)
    conf = server_settings_get()
    conf.max_undelivered_days = 3
    conf.save()
    conversation = create_conversation(alice.device, [bob.id], retention={"policy": "ttl", "ttl_days": 14})
    [mid] = send_many(alice.device, conversation, 1)
    ack(bob.devices[0], [mid])

    async def scenario():
        comm = (await connect(alice.device.client.token))[0]
        await sync_to_async(dm_purge_expired)(now=timezone.now() + dt.timedelta(days=3, minutes=1))
        got = (await next_op(comm, "DM_STATUS"))["d"]
        # The purge as of 3 days later ended the client's session: the status as the endpoint reads it.
        answer = await sync_to_async(delivery_status_for_user)(user=await User.objects.aget(username=alice.id),
                                                               message_ids=[mid])
        assert got["counts"] == answer[mid]["counts"] == counts(delivered=1, expired=2)
        assert await silent(comm)
        await close_all(comm)

    run(scenario)
