"""§7a under races, on PostgreSQL with real threads: parallel ACKs of the
same messages by several devices and a purge at the same time leave exactly
one final state per delivery, and the counts the status answers agree."""
import datetime as dt

import pytest
from django.utils import timezone

from devices.models import Device, User
from devices.services import device_revoke
from dms.models import Conversation, DeliveryState, KeyReceipt, PendingDm
from dms.selectors import delivery_status_for_user
from dms.services import conversation_remove_participant, dm_ack, dm_purge_expired
from tests.dms.test_concurrency import run_together
from tests.factories import build_send, create_conversation, make_person, send

pytestmark = [pytest.mark.requires_postgres, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("policy", [{"policy": "ttl", "ttl_days": 7}, {"policy": "burn_on_read"}])
@pytest.mark.parametrize("round_", range(2))
def test_parallel_acks_and_a_purge_leave_one_final_state_per_delivery(policy, round_):
    alice, bob = make_person(1), make_person(4)
    conv = create_conversation(alice.device, [bob.id], retention=policy)
    ids = []
    for _ in range(20):
        body = build_send(alice.device, conv)
        assert send(alice.device, body).status_code == 201
        ids.append(body["message_id"])
    expired = set(ids[:10])
    PendingDm.objects.filter(message_id__in=expired).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    devices = [Device.objects.get(device_id=d.id) for d in bob.devices]
    results = run_together([*(lambda d=d: dm_ack(device=d, message_ids=ids, failed=[]) for d in devices),
                            lambda: dm_purge_expired(now=timezone.now(), chunk=3)])
    acks = dict(zip(devices, results))
    rows = list(DeliveryState.objects.values_list("message_id", "device_id", "state"))
    assert len(rows) == len({(m, d) for m, d, _ in rows}) == 20 * 4  # one state per delivery
    state = {(str(m), d): s for m, d, s in rows}
    for device, result in acks.items():
        assert sorted(result["acked"] + result["unknown"]) == sorted(ids)
        for mid in ids:
            # the ACK got in first (delivered) or the purge did (expired); never both, never pending
            want = "delivered" if mid in result["acked"] else "expired"
            assert state[(mid, device.pk)] == want
            if mid not in expired:
                assert want == "delivered"
    statuses = delivery_status_for_user(user=Device.objects.get(device_id=alice.device.id).user, message_ids=ids)
    for mid in ids:
        per_device = [state[(mid, d.pk)] for d in devices]
        assert statuses[mid]["counts"] == {s: per_device.count(s) for s in statuses[mid]["counts"]}
        assert sum(statuses[mid]["counts"].values()) == 4


@pytest.mark.parametrize("round_", range(3))
def test_acks_that_make_receipts_race_a_revocation_a_removal_and_a_purge_without_deadlock(round_):
    """An ACK locks its messages, then its key receipts' foreign key takes a share
    lock on the conversation row; revocation (the epoch bump) and removal lock
    that row first, then the messages. They must not deadlock: the conversation
    is locked FOR NO KEY UPDATE, as a send's UPDATE of it does, which an ACK's
    share lock does not wait for. Every delivery then has one final state."""
    alice, bob, carol, dave = make_person(1), make_person(4), make_person(1), make_person(1)
    conv = create_conversation(alice.device, [bob.id, carol.id, dave.id], retention={"policy": "ttl", "ttl_days": 7})
    ids = []
    for _ in range(24):
        body = build_send(alice.device, conv)
        assert send(alice.device, body).status_code == 201
        ids.append(body["message_id"])
    PendingDm.objects.filter(message_id__in=ids[::2]).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    ackers = [Device.objects.get(device_id=d.id) for d in [*bob.devices[:3], carol.device]]
    revoked = Device.objects.get(device_id=bob.devices[3].id)
    conversation = Conversation.objects.get(id=conv["conversation_id"])
    alice_user = User.objects.get(username=alice.id)
    results = run_together([
        *(lambda d=d, i=i: dm_ack(device=d, message_ids=ids[::(-1) ** i], failed=ids[i::4])
          for i, d in enumerate(ackers)),
        lambda: device_revoke(device=revoked),
        lambda: conversation_remove_participant(conversation=conversation, actor=alice_user, user_id=dave.id),
        lambda: dm_purge_expired(now=timezone.now(), chunk=5)])
    assert all(sorted(r["acked"] + r["unknown"]) == sorted(ids) for r in results[:4])
    rows = list(DeliveryState.objects.values_list("message_id", "device_id", "state"))
    assert len(rows) == len({(m, d) for m, d, _ in rows}) == 24 * 6 and "pending" not in {s for _, _, s in rows}
    statuses = delivery_status_for_user(user=alice_user, message_ids=ids)
    for mid in ids[1::2]:  # not expired: two dropped (the revoked device, dave's), four ACKed
        assert statuses[mid]["counts"]["dropped"] == 2 and statuses[mid]["counts"]["expired"] == 0
        assert statuses[mid]["counts"]["delivered"] + statuses[mid]["counts"]["failed"] == 4
    assert KeyReceipt.objects.exists()  # the ACKs made receipts (the share lock this is about)
