"""§7 check 11 reads each device's pending counter (dms.models.Mailbox, kept
by triggers on dm_deliveries) instead of counting its deliveries; the ACK and
DM_STATUS read each message's counts by state (dms.models.MessageStateCounts,
kept by triggers on dm_delivery_states) instead of its states. After every
path that stores, ACKs, ends or deletes a delivery or its state the counters
must equal the counts, driven through the real services."""
import datetime as dt
import threading
import uuid

import pytest
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from devices.models import Device, User
from devices.services import device_revoke, user_suspend
from dms.models import Conversation, Delivery, DeliveryState, Mailbox, MessageStateCounts, PendingDm, UsedMessageId
from dms.selectors import server_settings_get
from dms.services import conversation_remove_participant, dm_ack, dm_purge_expired, messages_delete
from tests.factories import ack, build_send, create_conversation, make_person, send, send_many, sync

pytestmark = pytest.mark.django_db
DAY = dt.timedelta(days=1)
STATES = tuple(DeliveryState.State.values)


def assert_counters_exact():
    """Every device's counter is its number of unACKed deliveries; a device that has
    deliveries has a counter row; and there is something to compare."""
    counted = dict(Device.objects.annotate(n=Count("dms_deliveries", filter=Q(dms_deliveries__acked_at__isnull=True)))
                   .values_list("pk", "n"))
    counters = dict(Mailbox.objects.values_list("device_id", "pending"))
    assert {pk: counters.get(pk, 0) for pk in counted} == counted
    assert set(Delivery.objects.values_list("device_id", flat=True)) <= set(counters)
    assert set(counters) <= set(counted)
    assert_state_counts_exact()
    return counters


def assert_state_counts_exact() -> dict:
    """Every message's counts row holds its number of states in each state, and a
    message has a counts row exactly while it has states."""
    counted: dict = {}
    for message_id, state in DeliveryState.objects.values_list("message_id", "state"):
        counted.setdefault(message_id, dict.fromkeys(STATES, 0))[state] += 1
    rows = {row.pop("message_id"): row for row in MessageStateCounts.objects.values("message_id", *STATES)}
    assert rows == counted
    return rows


def state_counts_of(message_id) -> dict:
    row = MessageStateCounts.objects.filter(message_id=message_id).values(*STATES).first()
    return {state: n for state, n in row.items() if n} if row else {}


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
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'dm_delivery_states'")
        else:
            cursor.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = 'dm_delivery_states'::regclass "
                           "AND NOT tgisinternal")
        names = {row[0] for row in cursor.fetchall()}
    assert names == {*(f"dm_delivery_states_counts_{op}" for op in ("insert", "update", "delete")),
                     "dm_delivery_states_never_move"}


def test_a_state_never_moves_to_another_message(group):
    """The counts follow a state's changes, not a move: the move is refused."""
    alice, bob, carol, conv = group
    ids = send_many(alice.device, conv, 2)
    with pytest.raises(Exception, match="never moves"), transaction.atomic():
        DeliveryState.objects.filter(message_id=ids[0]).update(message_id=ids[1])
    DeliveryState.objects.filter(message_id=ids[0]).update(message_id=ids[0])  # not a move
    assert state_counts_of(ids[0]) == state_counts_of(ids[1]) == {"pending": 3}
    assert_counters_exact()


def test_send_and_ack_keep_the_counters(group):
    alice, bob, carol, conv = group
    ids = send_many(alice.device, conv, 3)
    assert assert_counters_exact()[db_device(bob.devices[0]).pk] == 3
    ack(bob.devices[0], ids[:2])
    ack(bob.devices[0], ids[:2])  # again: nothing changes
    ack(carol.device, ids[:1], failed=ids[1:])
    assert pending_of(bob.devices[0]) == 1 and pending_of(bob.devices[1]) == 3 and pending_of(carol.device) == 0
    assert state_counts_of(ids[0]) == {"delivered": 2, "pending": 1}
    assert state_counts_of(ids[1]) == {"delivered": 1, "failed": 1, "pending": 1}
    assert state_counts_of(ids[2]) == {"failed": 1, "pending": 2}
    assert_counters_exact()


def test_burn_on_read_deletion_keeps_the_counters():
    alice, bob = make_person(1), make_person(2)
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "burn_on_read"})
    ids = send_many(alice.device, conv, 2)
    ack(bob.devices[0], ids)
    ack(bob.devices[1], ids[:1])  # its message is burned, with both deliveries
    assert not PendingDm.objects.filter(message_id=ids[0]).exists()
    assert pending_of(bob.devices[1]) == 1 and pending_of(bob.devices[0]) == 0
    assert state_counts_of(ids[0]) == {"delivered": 2}  # the message is gone, its counts stay
    assert_counters_exact()


def test_purge_of_expired_messages_in_chunks_keeps_the_counters(group):
    alice, bob, carol, conv = group
    send_many(alice.device, conv, 5)
    ack(carol.device, [m["message_id"] for m in sync(carol.device)["messages"][:2]])
    assert dm_purge_expired(now=timezone.now() + 4 * DAY, chunk=2)["expired_messages"] == 5
    assert set(assert_counters_exact().values()) == {0}
    assert sorted((c["delivered"], c["expired"]) for c in assert_state_counts_exact().values()) == [
        (0, 3), (0, 3), (0, 3), (1, 2), (1, 2)]


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
    assert state_counts_of(response.json()["message_id"]) == {"pending": 2, "skipped": 1}
    assert_state_counts_exact()  # the mailbox counters were set by hand above


def test_states_counts_outlive_the_message_and_vanish_with_its_remembered_id(group):
    alice, bob, carol, conv = group
    ids = send_many(alice.device, conv, 3)
    ack(carol.device, ids[:1])
    with transaction.atomic():
        messages_delete(message_ids=ids[:2])  # as the last leave or the burn deletes them
    assert state_counts_of(ids[0]) == {"delivered": 1, "pending": 2}  # the states as they were
    assert_counters_exact()
    gone = timezone.now() + 4 * DAY
    dm_purge_expired(now=gone)  # the third expires, the others stay pending as their message went
    assert state_counts_of(ids[2]) == {"expired": 3}
    UsedMessageId.objects.filter(message_id=ids[2]).update(message_gone_at=gone)
    assert dm_purge_expired(now=gone + 7 * DAY - DAY / 2)["delivery_states"] == 6  # the first two ids only
    assert set(MessageStateCounts.objects.values_list("message_id", flat=True)) == {uuid.UUID(ids[2])}
    assert_counters_exact()
    assert dm_purge_expired(now=gone + 7 * DAY + DAY / 2)["delivery_states"] == 3
    assert not MessageStateCounts.objects.exists() and not UsedMessageId.objects.exists()
    assert_counters_exact()


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


def race_group():
    alice, bob, carol, dave = make_person(1), make_person(4), make_person(1), make_person(1)
    conv = create_conversation(alice.device, [bob.id, carol.id, dave.id], retention={"policy": "ttl", "ttl_days": 7})
    ids = send_many(alice.device, conv, 24)
    PendingDm.objects.filter(message_id__in=ids[::2]).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    return alice, bob, carol, dave, conv, ids


def assert_every_state_final(ids, *, dropped: int):
    rows = assert_state_counts_exact()
    assert len(rows) == 24 and all(sum(c.values()) == 6 and c["pending"] == 0 for c in rows.values())
    for mid in ids[1::2]:  # not expired: ACKed, or dropped
        assert rows[uuid.UUID(mid)]["dropped"] == dropped and rows[uuid.UUID(mid)]["expired"] == 0
    assert_counters_exact()
    return rows


@pytest.mark.requires_postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(2))
def test_parallel_acks_and_a_purge_keep_the_state_counts(round_):
    """Six devices ACK the same messages (some as failed, in both orders) while
    the purge expires half of them: every message's counts row equals its states."""
    alice, bob, carol, dave, conv, ids = race_group()
    ackers = [db_device(d) for d in [*bob.devices, carol.device, dave.device]]
    run_together([
        *(lambda d=d, i=i: dm_ack(device=d, message_ids=ids[::(-1) ** i], failed=ids[i % 3::3])
          for i, d in enumerate(ackers)),
        lambda: dm_purge_expired(now=timezone.now(), chunk=5)])
    rows = assert_every_state_final(ids, dropped=0)
    assert all(c["failed"] == 2 for mid, c in rows.items() if str(mid) in ids[1::2])


@pytest.mark.requires_postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(2))
def test_parallel_revocation_removal_failed_acks_and_a_purge_keep_the_state_counts(round_):
    """A device revoked, a member removed, four devices ACKing as failed and the
    purge, all at once. (The ACKs are failed ones: an ACK that makes a key
    receipt takes a share lock on the conversation after locking its messages,
    while revocation and removal lock the conversation first; see the report.)"""
    alice, bob, carol, dave, conv, ids = race_group()
    ackers = [db_device(d) for d in [*bob.devices[:3], carol.device]]
    revoked, conversation = db_device(bob.devices[3]), Conversation.objects.get(id=conv["conversation_id"])
    alice_user = User.objects.get(username=alice.id)
    run_together([
        *(lambda d=d, i=i: dm_ack(device=d, message_ids=[], failed=ids[::(-1) ** i]) for i, d in enumerate(ackers)),
        lambda: device_revoke(device=revoked),
        lambda: conversation_remove_participant(conversation=conversation, actor=alice_user, user_id=dave.id),
        lambda: dm_purge_expired(now=timezone.now(), chunk=5)])
    assert_every_state_final(ids, dropped=2)
