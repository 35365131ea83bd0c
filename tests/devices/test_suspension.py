"""Suspension (§4, issue 10 "Also in v1.1"): a suspended user's devices are
inactive everywhere, as after a revocation, until the admin lifts it.
Through the real services, API, database and gateway."""
import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from rest_framework.test import APIClient

from devices.models import AuthSession, Device, User
from devices.services import user_suspend, user_unsuspend
from dms.models import Conversation, Delivery
from tests.factories import Keys, build_send, create_conversation, issue_cert, make_person, send, verify
from tests.gateway.wsutil import close_all, connect, connect_refused, next_op

pytestmark = pytest.mark.django_db(transaction=True)


def user_row(person) -> User:
    return User.objects.get(username=person.id)


def directory_ids(client, person) -> list[str]:
    return [d["device_id"] for d in client.get(f"/api/v1/users/{person.id}/devices").json()["devices"]]


async def frames_until_close(comm, timeout: float = 5) -> tuple[list[str], int]:
    ops = []
    while True:
        output = await comm.receive_output(timeout)
        if output["type"] == "websocket.close":
            return ops, output["code"]
        ops.append(json.loads(output["text"])["op"])


def test_suspension_makes_devices_inactive_everywhere_and_lifting_restores_them():
    alice, bob = make_person(2), make_person(1)
    conversation = create_conversation(bob.device, [alice.id])
    cid = conversation["conversation_id"]
    assert send(bob.device, build_send(bob.device, conversation)).status_code == 201
    alice_pks = list(Device.objects.filter(user__username=alice.id).values_list("pk", flat=True))
    assert Delivery.objects.filter(device_id__in=alice_pks, acked_at__isnull=True).count() == 2
    master = alice.master_client()
    epoch = Conversation.objects.get(id=cid).epoch

    async def scenario():
        alice_conns = [(await connect(d.client.token))[0] for d in alice.devices]
        master_conn = (await connect(master.token))[0]
        bob_conn = (await connect(bob.device.client.token))[0]

        assert await sync_to_async(user_suspend)(user=await sync_to_async(user_row)(alice)) is True
        # bob hears of the epoch bump; alice's connections, master session's too, close 4003
        update = await next_op(bob_conn, "CONVERSATION_UPDATE")
        assert update["d"]["conversation"]["conversation_id"] == cid
        assert update["d"]["change"]["epoch"] == epoch + 1
        for comm in alice_conns:
            ops, code = await frames_until_close(comm)
            assert code == 4003 and ops.count("DEVICE_REVOKE") == 2, ops
        ops, code = await frames_until_close(master_conn)
        assert code == 4003 and ops == ["DEVICE_REVOKE", "DEVICE_REVOKE"]
        # no new connection: the sessions are gone
        assert await connect_refused(token=alice.device.client.token) == 4001
        await close_all(*alice_conns, master_conn, bob_conn)

    async_to_sync(scenario)()

    # sessions ended, login refused (device, master, and a new device of the user)
    assert not AuthSession.objects.filter(user__username=alice.id).exists()
    assert alice.device.client.get("/api/v1/devices").status_code == 401
    for keys in (alice.device.keys, alice.master):
        response = verify(APIClient(), keys)
        assert response.status_code == 403 and response.json()["error"] == "user_suspended"
    new = Keys()
    response = verify(APIClient(), new, certificate=issue_cert(alice.master, new))
    assert response.status_code == 403 and response.json()["error"] == "user_suspended"
    assert not Device.objects.filter(device_id=new.id).exists()

    # the directory is empty, pending deliveries are dropped, the epoch went up
    assert directory_ids(bob.device.client, alice) == []
    assert not Delivery.objects.filter(device_id__in=alice_pks, acked_at__isnull=True).exists()
    assert Conversation.objects.get(id=cid).epoch == epoch + 1
    # send check 9: alice has no active device; naming one is `extra`, none is fine and she is unreachable
    conversation = bob.device.client.get(f"/api/v1/dms/conversations/{cid}").json()
    response = send(bob.device, build_send(bob.device, conversation, recipients=[alice.devices[0].id]))
    assert response.status_code == 409 and response.json()["error"] == "mismatched_devices"
    assert response.json()["extra"] == [alice.devices[0].id]
    response = send(bob.device, build_send(bob.device, conversation, recipients=[]))
    assert response.status_code == 201 and response.json()["unreachable"] == [alice.id]
    assert not Delivery.objects.filter(device_id__in=alice_pks).exclude(acked_at__isnull=False).exists()
    # nothing was revoked
    assert not Device.objects.filter(pk__in=alice_pks, revoked_at__isnull=False).exists()

    # lifting: the same devices are active again, with an epoch bump and DEVICE_ADD
    async def lift():
        bob_conn = (await connect(bob.device.client.token))[0]
        assert await sync_to_async(user_unsuspend)(user=await sync_to_async(user_row)(alice)) is True
        update = await next_op(bob_conn, "CONVERSATION_UPDATE")
        assert update["d"]["change"]["epoch"] == epoch + 2
        await close_all(bob_conn)

    async_to_sync(lift)()
    assert Conversation.objects.get(id=cid).epoch == epoch + 2
    assert sorted(directory_ids(bob.device.client, alice)) == sorted(d.id for d in alice.devices)
    response = verify(APIClient(), alice.device.keys)
    assert response.status_code == 200
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
    own = client.get("/api/v1/devices").json()["devices"]
    assert {d["device_id"]: d["pending_count"] for d in own} == {d.id: 0 for d in alice.devices}
    assert verify(APIClient(), alice.master).status_code == 200
    conversation = bob.device.client.get(f"/api/v1/dms/conversations/{cid}").json()
    assert send(bob.device, build_send(bob.device, conversation)).status_code == 201


def test_lifting_sends_device_add_to_the_users_sessions():
    alice = make_person(2)
    user = user_row(alice)
    user_suspend(user=user)

    async def scenario():
        from channels.layers import get_channel_layer

        from gateway.notify import user_group

        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(user_group(alice.id), channel)
        await sync_to_async(user_unsuspend)(user=user)
        events = [await layer.receive(channel) for _ in alice.devices]
        assert sorted((e["op"], e["d"]["device_id"]) for e in events) == sorted(
            ("DEVICE_ADD", d.id) for d in alice.devices)
        await layer.group_discard(user_group(alice.id), channel)

    async_to_sync(scenario)()


def test_a_revoked_or_expired_device_stays_inactive_after_lifting():
    alice = make_person(2)
    alice.master_client().delete(f"/api/v1/devices/{alice.devices[1].id}")
    user = user_row(alice)
    assert user_suspend(user=user) is True
    assert user_suspend(user=user) is False  # twice is harmless
    assert user_unsuspend(user=user) is True
    assert user_unsuspend(user=user) is False
    bob = make_person(1)
    assert directory_ids(bob.device.client, alice) == [alice.devices[0].id]
    response = verify(APIClient(), alice.devices[1].keys)
    assert response.status_code == 403 and response.json()["error"] == "device_revoked"


def test_a_gateway_ticket_of_a_suspended_user_is_refused():
    alice = make_person(1)
    ticket = alice.device.client.post("/api/v1/gateway/ticket").json()["ticket"]
    user_suspend(user=user_row(alice))

    async def scenario():
        assert await connect_refused(ticket=ticket) == 4001

    async_to_sync(scenario)()
