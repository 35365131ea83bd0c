"""§7 check 11 reads each device's pending counter (dms.models.Mailbox, kept
by triggers on dm_deliveries) instead of counting its deliveries. After every
path that stores, ACKs or deletes an unACKed delivery the counter must equal
the count, driven through the real services."""
import datetime as dt
import threading

import pytest
from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone

from devices.models import Device, User
from devices.services import device_revoke, user_suspend
from dms.models import Conversation, Delivery, Mailbox, PendingDm
from dms.selectors import server_settings_get
from dms.services import conversation_remove_participant, dm_ack, dm_purge_expired
from tests.factories import ack, build_send, create_conversation, make_person, send, send_many, sync

pytestmark = pytest.mark.django_db
DAY = dt.timedelta(days=1)


def assert_counters_exact():
    """Every device's counter is its number of unACKed deliveries; a device that has
    deliveries has a counter row; and there is something to compare."""
    counted = dict(Device.objects.annotate(n=Count("dms_deliveries", filter=Q(dms_deliveries__acked_at__isnull=True)))
                   .values_list("pk", "n"))
    counters = dict(Mailbox.objects.values_list("device_id", "pending"))
    assert {pk: counters.get(pk, 0) for pk in counted} == counted
    assert set(Delivery.objects.values_list("device_id", flat=True)) <= set(counters)
    assert set(counters) <= set(counted)
    return counters


def pending_of(device) -> int:
    return Mailbox.objects.get(device__device_id=device.id).pending


def db_device(device) -> Device:
    return Device.objects.get(device_id=device.id)


@pytest.fixture
def group():
    alice, bob, carol = make_person(1), make_person(2), make_person(1)
    conv = create_conversation(alice.device, [bob.id, carol.id], retention={"policy": "ttl", "ttl_days": 3})
    return alice, bob, carol, conv


def test_the_counter_triggers_survive_the_migrations():
    """A migration that makes Django rebuild dm_deliveries on SQLite (most field
    changes) drops migration 0007's triggers without a word."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'dm_deliveries'")
        else:
            cursor.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'dm_deliveries'::regclass AND NOT tgisinternal")
        names = {row[0] for row in cursor.fetchall()}
    assert names == {f"dm_deliveries_mailbox_{op}" for op in ("insert", "update", "delete")}


def test_send_and_ack_keep_the_counters(group):
    alice, bob, carol, conv = group
    ids = send_many(alice.device, conv, 3)
    assert assert_counters_exact()[db_device(bob.devices[0]).pk] == 3
    ack(bob.devices[0], ids[:2])
    ack(bob.devices[0], ids[:2])  # again: nothing changes
    ack(carol.device, ids[:1], failed=ids[1:])
    assert pending_of(bob.devices[0]) == 1 and pending_of(bob.devices[1]) == 3 and pending_of(carol.device) == 0
    assert_counters_exact()


def test_burn_on_read_deletion_keeps_the_counters():
    alice, bob = make_person(1), make_person(2)
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "burn_on_read"})
    ids = send_many(alice.device, conv, 2)
    ack(bob.devices[0], ids)
    ack(bob.devices[1], ids[:1])  # its message is burned, with both deliveries
    assert not PendingDm.objects.filter(message_id=ids[0]).exists()
    assert pending_of(bob.devices[1]) == 1 and pending_of(bob.devices[0]) == 0
    assert_counters_exact()


def test_purge_of_expired_messages_in_chunks_keeps_the_counters(group):
    alice, bob, carol, conv = group
    send_many(alice.device, conv, 5)
    ack(carol.device, [m["message_id"] for m in sync(carol.device)["messages"][:2]])
    assert dm_purge_expired(now=timezone.now() + 4 * DAY, chunk=2)["expired_messages"] == 5
    assert set(assert_counters_exact().values()) == {0}


def test_purge_of_undelivered_deliveries_keeps_the_counters(group):
    alice, bob, carol, conv = group
    Conversation.objects.filter(id=conv["conversation_id"]).update(retention_policy="permanent",
                                                                   retention_ttl_days=None)
    conf = server_settings_get()
    conf.allow_permanent, conf.max_undelivered_days = True, 2
    conf.save()
    conv["retention"] = {"policy": "permanent", "ttl_days": None}
    ids = send_many(alice.device, conv, 3)
    ack(bob.devices[0], ids)
    counts = dm_purge_expired(now=timezone.now() + 3 * DAY)
    assert counts["undelivered_deliveries"] == 6 and counts["expired_devices"] == 0
    assert set(assert_counters_exact().values()) == {0}
    assert PendingDm.objects.count() == 3


def test_revocation_suspension_and_expiry_keep_the_counters(group):
    alice, bob, carol, conv = group
    send_many(alice.device, conv, 2)
    device_revoke(device=db_device(bob.devices[1]))
    assert pending_of(bob.devices[1]) == 0 and pending_of(bob.devices[0]) == 2
    assert_counters_exact()
    user_suspend(user=User.objects.get(username=carol.id))
    assert pending_of(carol.device) == 0
    assert_counters_exact()
    conv = create_conversation(alice.device, [bob.id, carol.id], retention={"policy": "ttl", "ttl_days": 3})
    send_many(alice.device, conv, 1)
    assert pending_of(bob.devices[0]) == 3
    Device.objects.filter(pk=db_device(bob.devices[0]).pk).update(expires_at=timezone.now() + DAY)
    assert dm_purge_expired(now=timezone.now() + 2 * DAY)["expired_devices"] == 1
    assert pending_of(bob.devices[0]) == 0
    assert_counters_exact()


def test_group_removal_leave_and_the_last_leave_keep_the_counters(group):
    alice, bob, carol, conv = group
    send_many(alice.device, conv, 2)
    other = create_conversation(alice.device, [bob.id, carol.id])
    send_many(alice.device, other, 1)
    conversation = Conversation.objects.get(id=conv["conversation_id"])
    alice_user, bob_user, carol_user = (User.objects.get(username=p.id) for p in (alice, bob, carol))
    conversation_remove_participant(conversation=conversation, actor=alice_user, user_id=bob.id)
    assert pending_of(bob.devices[0]) == 1 and pending_of(bob.devices[1]) == 1  # the other group's message
    assert_counters_exact()
    conversation_remove_participant(conversation=conversation, actor=carol_user, user_id=carol.id)  # leaves
    assert pending_of(carol.device) == 1
    assert_counters_exact()
    # the last one leaves: the group and its messages go
    ids = send_many(alice.device, other, 1)
    assert pending_of(carol.device) == 2
    other_conv = Conversation.objects.get(id=other["conversation_id"])
    for person, user in ((bob, bob_user), (carol, carol_user), (alice, alice_user)):
        conversation_remove_participant(conversation=other_conv, actor=user, user_id=person.id)
    assert not PendingDm.objects.filter(message_id=ids[0]).exists()
    assert set(assert_counters_exact().values()) == {0}


def test_orm_cascades_keep_the_counters(group):
    alice, bob, carol, conv = group
    ids = send_many(alice.device, conv, 3)
    PendingDm.objects.get(message_id=ids[0]).delete()
    assert pending_of(bob.devices[0]) == 2
    assert_counters_exact()
    # the device goes with its deliveries and its counter, whichever the cascade deletes first
    db_device(bob.devices[1]).delete()
    assert not Mailbox.objects.filter(device__device_id=bob.devices[1].id).exists()
    assert_counters_exact()
    User.objects.get(username=carol.id).delete()
    assert_counters_exact()
    Conversation.objects.get(id=conv["conversation_id"]).delete()
    assert set(assert_counters_exact().values()) == {0}


def test_the_quota_reads_the_counter(group):
    """The send trusts the counter: a device whose counter says full is skipped, and
    a device whose counter was lowered by its ACKs gets deliveries again."""
    alice, bob, carol, conv = group
    conf = server_settings_get()
    conf.pending_quota = 2
    conf.save()
    ids = send_many(alice.device, conv, 2)
    full = sorted(d.id for d in [*bob.devices, carol.device])
    response = send(alice.device, build_send(alice.device, conv))
    assert response.status_code == 429 and response.json()["devices"] == full
    ack(carol.device, ids[:1])
    response = send(alice.device, build_send(alice.device, conv))
    assert response.status_code == 201 and response.json()["recipients"] == 1
    # a counter that says full is believed even with the rows saying otherwise
    Mailbox.objects.filter(device__device_id=carol.device.id).update(pending=0)
    Mailbox.objects.filter(device__device_id=bob.devices[0].id).update(pending=2)
    ack(bob.devices[1], ids)
    response = send(alice.device, build_send(alice.device, conv))
    assert response.status_code == 201
    assert response.json()["skipped"] == [{"device_id": bob.devices[0].id, "reason": "mailbox_full"}]


# --- races, on PostgreSQL with real threads ---------------------------------------------

def run_together(functions):
    barrier = threading.Barrier(len(functions))
    errors = []

    def worker(fn):
        try:
            barrier.wait()
            fn()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(fn,)) for fn in functions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors


@pytest.mark.requires_postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_to_overlapping_devices_and_acks_end_exact():
    """Four senders in four groups whose members overlap, each with devices in
    the others' groups, send at once while two devices ACK what they have and
    a purge runs: no deadlock, and every counter exact."""
    people = [make_person(2) for _ in range(4)]
    groups = [(people[i], create_conversation(people[i].device, [people[(i + 1) % 4].id, people[(i + 2) % 4].id]))
              for i in range(4)]
    bodies = [(sender, [build_send(sender.device, conv) for _ in range(12)]) for sender, conv in groups]
    ackers = [db_device(people[0].devices[1]), db_device(people[2].devices[1])]

    def sender_fn(sender, sends):
        def run():
            for body in sends:
                assert send(sender.device, body).status_code == 201
        return run

    def acker_fn(device):
        def run():
            for _ in range(12):
                pending = list(Delivery.objects.filter(device=device, acked_at__isnull=True)
                               .values_list("message_id", flat=True))
                dm_ack(device=device, message_ids=[str(m) for m in pending], failed=[])
        return run

    run_together([*(sender_fn(s, b) for s, b in bodies), *(acker_fn(d) for d in ackers),
                  lambda: dm_purge_expired(now=timezone.now())])
    counters = assert_counters_exact()
    assert sum(counters.values()) == Delivery.objects.filter(acked_at__isnull=True).count() > 0
    assert Delivery.objects.count() == 4 * 12 * 5  # every send reached the five other devices
