"""§8: every policy, the undelivered cap, and the purge worker."""
import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.utils import timezone

from devices.models import AuthSession, Challenge, Device
from dms.models import Delivery, KeyReceipt, PendingDm, UsedMessageId
from dms.selectors import server_settings_get
from dms.services import dm_purge_expired
from dms.tasks import dm_purge_expired_task
from tests.factories import ack, build_send, create_conversation, make_person, send, sync

pytestmark = pytest.mark.django_db
DAY = dt.timedelta(days=1)


def conversation(alice, bob, retention):
    return create_conversation(alice.device, [bob.id], retention=retention)


def parse(ts):
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


@pytest.fixture
def people():
    return make_person(1), make_person(2)


def test_expires_at_by_policy(people):
    alice, bob = people
    conf = server_settings_get()
    conf.allow_permanent = True
    conf.max_undelivered_days = 21
    conf.save()
    out = {}
    for retention in [{"policy": "ttl", "ttl_days": 7}, {"policy": "burn_on_read"}, {"policy": "permanent"}]:
        conv = create_conversation(alice.device, [bob.id])
        conv = alice.device.client.patch(f"/api/v1/dms/conversations/{conv['conversation_id']}",
                                         {"retention": retention}, format="json").json()
        out[retention["policy"]] = send(alice.device, build_send(alice.device, conv)).json()
    for policy, days in [("ttl", 7), ("burn_on_read", 21)]:
        body = out[policy]
        assert parse(body["expires_at"]) - parse(body["created_at"]) == dt.timedelta(days=days)
    assert out["permanent"]["expires_at"] is None


def test_policy_and_expiry_are_fixed_at_send(people):
    alice, bob = people
    conv = conversation(alice, bob, {"policy": "ttl", "ttl_days": 2})
    body = build_send(alice.device, conv)
    first = send(alice.device, body).json()
    alice.device.client.patch(f"/api/v1/dms/conversations/{conv['conversation_id']}",
                              {"retention": {"policy": "burn_on_read"}}, format="json")
    message = PendingDm.objects.get()
    assert message.policy == "ttl" and message.ttl_days == 2
    assert message.expires_at == parse(first["expires_at"])


def test_burn_on_read_deleted_when_last_delivery_acked(people):
    alice, bob = people
    alice.add_device("second")
    conv = conversation(alice, bob, {"policy": "burn_on_read"})
    body = build_send(alice.device, conv)
    send(alice.device, body)
    mid = body["message_id"]
    ack(bob.devices[0], [mid])
    ack(bob.devices[1], failed=[mid])
    assert PendingDm.objects.filter(message_id=mid).exists()
    ack(alice.devices[1], [mid])  # the sender's own other device: the last one
    assert not PendingDm.objects.filter(message_id=mid).exists()
    assert not Delivery.objects.filter(message_id=mid).exists()
    assert UsedMessageId.objects.get(message_id=mid).message_gone_at is not None


def test_burn_on_read_deleted_when_last_pending_device_is_revoked(people):
    alice, bob = people
    conv = conversation(alice, bob, {"policy": "burn_on_read"})
    body = build_send(alice.device, conv)
    send(alice.device, body)
    ack(bob.devices[0], [body["message_id"]])
    bob.master_client().delete(f"/api/v1/devices/{bob.devices[1].id}")
    assert not PendingDm.objects.exists()


def test_revocation_drops_pending_deliveries_of_every_policy(people):
    alice, bob = people
    conv = conversation(alice, bob, {"policy": "ttl", "ttl_days": 14})
    send(alice.device, build_send(alice.device, conv))
    bob.master_client().delete(f"/api/v1/devices/{bob.devices[1].id}")
    assert list(Delivery.objects.values_list("device__device_id", flat=True)) == [bob.devices[0].id]
    assert PendingDm.objects.count() == 1


def test_ttl_deleted_after_its_window_acked_or_not(people):
    alice, bob = people
    conv = conversation(alice, bob, {"policy": "ttl", "ttl_days": 3})
    b1, b2 = build_send(alice.device, conv), build_send(alice.device, conv)
    send(alice.device, b1)
    send(alice.device, b2)
    for device in bob.devices:
        ack(device, [b1["message_id"]])
    assert PendingDm.objects.count() == 2  # ttl is not burned by ACKs
    now = timezone.now()
    assert dm_purge_expired(now=now + 3 * DAY - dt.timedelta(minutes=1))["expired_messages"] == 0
    counts = dm_purge_expired(now=now + 3 * DAY + dt.timedelta(minutes=1))
    assert counts["expired_messages"] == 2
    assert not PendingDm.objects.exists() and not Delivery.objects.exists()


def test_permanent_needs_admin_and_is_never_purged(people):
    alice, bob = people
    response = alice.device.client.post("/api/v1/dms/conversations", {
        "participants": [bob.id], "retention": {"policy": "permanent"}}, format="json")
    assert response.status_code == 403 and response.json()["error"] == "permanent_not_allowed"
    conf = server_settings_get()
    conf.allow_permanent = True
    conf.save()
    conv = conversation(alice, bob, {"policy": "permanent"})
    body = build_send(alice.device, conv)
    send(alice.device, body)
    for device in bob.devices:
        ack(device, [body["message_id"]])
    dm_purge_expired(now=timezone.now() + 3650 * DAY)
    assert PendingDm.objects.filter(message_id=body["message_id"]).exists()


def test_undelivered_deliveries_dropped_after_max_undelivered_days(people):
    alice, bob = people
    conf = server_settings_get()
    conf.allow_permanent = True
    conf.max_undelivered_days = 10
    conf.save()
    conv = conversation(alice, bob, {"policy": "permanent"})
    body = build_send(alice.device, conv)
    send(alice.device, body)
    ack(bob.devices[0], [body["message_id"]])
    counts = dm_purge_expired(now=timezone.now() + 10 * DAY + dt.timedelta(minutes=1))
    assert counts["undelivered_deliveries"] == 1
    assert list(Delivery.objects.values_list("device__device_id", flat=True)) == [bob.devices[0].id]
    assert PendingDm.objects.exists()  # permanent: the row stays


def test_burn_on_read_undelivered_expires(people):
    alice, bob = people
    conv = conversation(alice, bob, {"policy": "burn_on_read"})
    send(alice.device, build_send(alice.device, conv))
    counts = dm_purge_expired(now=timezone.now() + 30 * DAY + dt.timedelta(minutes=1))
    assert counts["expired_messages"] == 1 and not PendingDm.objects.exists()


def test_expired_messages_never_served_before_purge(people):
    alice, bob = people
    conv = conversation(alice, bob, {"policy": "ttl", "ttl_days": 1})
    send(alice.device, build_send(alice.device, conv))
    PendingDm.objects.update(created_at=timezone.now() - 2 * DAY, expires_at=timezone.now() - DAY)
    assert sync(bob.device)["messages"] == []
    assert bob.device.client.get(
        f"/api/v1/dms/conversations/{conv['conversation_id']}/messages").json()["messages"] == []


def test_purge_handles_expired_devices_as_revocation(people):
    alice, bob = people
    conv = conversation(alice, bob, {"policy": "ttl", "ttl_days": 14})
    send(alice.device, build_send(alice.device, conv))
    Device.objects.filter(device_id=bob.devices[1].id).update(expires_at=timezone.now() + DAY)
    counts = dm_purge_expired(now=timezone.now() + 2 * DAY)
    assert counts["expired_devices"] == 1
    device = Device.objects.get(device_id=bob.devices[1].id)
    assert device.revoked_at is not None
    assert not Delivery.objects.filter(device=device).exists()
    assert not AuthSession.objects.filter(device=device).exists()
    from dms.models import Conversation

    assert Conversation.objects.get(id=conv["conversation_id"]).epoch == 2


def test_purge_housekeeping(people):
    alice, bob = people
    conv = conversation(alice, bob, {"policy": "burn_on_read"})
    body = build_send(alice.device, conv, group_key=b"k" * 32)
    send(alice.device, body)
    for device in bob.devices:
        ack(device, [body["message_id"]])
    assert KeyReceipt.objects.count() == 2 and UsedMessageId.objects.count() == 1
    bob.add_device("third")  # new epoch: the receipts are of a past epoch
    Challenge.objects.create(challenge="x", pubkey="y", expires_at=timezone.now() - DAY)
    counts = dm_purge_expired(now=timezone.now())
    assert counts["past_epoch_receipts"] == 2 and counts["challenges"] == 1
    assert counts["used_message_ids"] == 0
    counts = dm_purge_expired(now=timezone.now() + 7 * DAY + dt.timedelta(minutes=1))
    assert counts["used_message_ids"] == 1
    assert counts["sessions"] == 4 and not AuthSession.objects.exists()  # every session was 24 h long


def test_purge_chunks_until_short(people):
    alice, bob = people
    conv = conversation(alice, bob, {"policy": "ttl", "ttl_days": 1})
    for _ in range(5):
        send(alice.device, build_send(alice.device, conv))
    counts = dm_purge_expired(now=timezone.now() + 2 * DAY, chunk=2)
    assert counts["expired_messages"] == 5 and not PendingDm.objects.exists()


def test_purge_command_dry_run_and_as_of(people):
    alice, bob = people
    conv = conversation(alice, bob, {"policy": "ttl", "ttl_days": 1})
    send(alice.device, build_send(alice.device, conv))
    later = (timezone.now() + 2 * DAY).isoformat()
    out = io.StringIO()
    call_command("purge_dms", "--as-of", later, "--dry-run", stdout=out)
    assert "would delete" in out.getvalue() and "expired_messages: 1" in out.getvalue()
    assert PendingDm.objects.count() == 1
    out = io.StringIO()
    call_command("purge_dms", "--as-of", later, stdout=out)
    assert "expired_messages: 1" in out.getvalue() and not PendingDm.objects.exists()
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("purge_dms", "--as-of", "yesterday")


def test_celery_task_runs_the_purge(people):
    alice, bob = people
    conv = conversation(alice, bob, {"policy": "ttl", "ttl_days": 1})
    send(alice.device, build_send(alice.device, conv))
    PendingDm.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    counts = dm_purge_expired_task.apply().get()
    assert counts["expired_messages"] == 1


def test_beat_schedule_runs_purge_every_minute():
    from django.conf import settings

    entry = settings.CELERY_BEAT_SCHEDULE["dm-purge-expired"]
    assert entry["task"] == dm_purge_expired_task.name and entry["schedule"] == 60.0
