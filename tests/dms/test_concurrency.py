"""Races, on PostgreSQL with real threads (select_for_update is a no-op on SQLite)."""
import datetime as dt
import threading

import pytest
from django.db import connection
from django.utils import timezone

from devices.models import Device
from dms.models import Delivery, PendingDm, UsedMessageId
from dms.services import dm_ack, dm_purge_expired
from tests.factories import build_send, create_conversation, make_person, send

pytestmark = [pytest.mark.requires_postgres, pytest.mark.django_db(transaction=True)]


def run_together(functions):
    """Start all functions at once on their own threads and connections; return their results."""
    barrier = threading.Barrier(len(functions))
    results, errors = [None] * len(functions), []

    def worker(i, fn):
        try:
            barrier.wait()
            results[i] = fn()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, fn)) for i, fn in enumerate(functions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def burn_message(recipients: int):
    alice = make_person(1)
    bob = make_person(recipients)
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "burn_on_read"})
    body = build_send(alice.device, conv)
    assert send(alice.device, body).status_code == 201
    return body["message_id"], [Device.objects.get(device_id=d.id) for d in bob.devices]


@pytest.mark.parametrize("round_", range(3))
def test_parallel_acks_delete_burn_message_exactly_when_the_last_one_lands(round_):
    message_id, devices = burn_message(4)
    # all but one ACK at once: the message must stay
    results = run_together([lambda d=d: dm_ack(device=d, message_ids=[message_id], failed=[])
                            for d in devices[:-1]])
    assert all(r["acked"] == [message_id] for r in results)
    assert PendingDm.objects.filter(message_id=message_id).exists()
    assert Delivery.objects.filter(message_id=message_id, acked_at__isnull=True).count() == 1


@pytest.mark.parametrize("round_", range(3))
def test_parallel_acks_of_every_device_never_lose_the_delete(round_):
    message_id, devices = burn_message(4)
    results = run_together([lambda d=d: dm_ack(device=d, message_ids=[message_id], failed=[]) for d in devices])
    assert all(r["acked"] == [message_id] for r in results)
    assert not PendingDm.objects.filter(message_id=message_id).exists()
    assert not Delivery.objects.filter(message_id=message_id).exists()
    assert UsedMessageId.objects.get(message_id=message_id).message_gone_at is not None


def test_ack_racing_the_purge_leaves_exact_rows():
    alice, bob = make_person(1), make_person(2)
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "burn_on_read"})
    ids = []
    for _ in range(30):
        body = build_send(alice.device, conv)
        send(alice.device, body)
        ids.append(body["message_id"])
    devices = [Device.objects.get(device_id=d.id) for d in bob.devices]
    dm_ack(device=devices[0], message_ids=ids, failed=[])
    # half of them expire; the purge and the second device's ACK of everything race
    expired = ids[:15]
    PendingDm.objects.filter(message_id__in=expired).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    results = run_together([
        lambda: dm_ack(device=devices[1], message_ids=ids, failed=[]),
        lambda: dm_purge_expired(now=timezone.now(), chunk=5),
    ])
    ack_result = results[0]
    assert sorted(ack_result["acked"] + ack_result["unknown"]) == sorted(ids)
    # every message is gone one way or the other, with nothing left behind
    assert not PendingDm.objects.exists()
    assert not Delivery.objects.exists()


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_identical_sends_store_one_message(round_):
    alice, bob = make_person(1), make_person(2)
    conv = create_conversation(alice.device, [bob.id])
    body = build_send(alice.device, conv)
    responses = run_together([lambda: send(alice.device, body) for _ in range(6)])
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [201]
    assert all(r.json() == responses[0].json() for r in responses)
    assert PendingDm.objects.count() == 1 and Delivery.objects.count() == 2
    assert UsedMessageId.objects.count() == 1


def test_send_never_commits_against_an_ended_epoch():
    """Sends racing a device registration either land before it (old epoch) or are refused."""
    alice, bob = make_person(1), make_person(1)
    conv = create_conversation(alice.device, [bob.id])
    bodies = [build_send(alice.device, conv) for _ in range(8)]
    results = run_together([*(lambda b=b: send(alice.device, b) for b in bodies),
                            lambda: bob.add_device("new")])
    responses = results[:-1]
    assert {r.status_code for r in responses} <= {201, 409}
    stored = set(PendingDm.objects.values_list("message_id", flat=True))
    new_device = Device.objects.get(device_id=bob.devices[1].id)
    # every stored message went to exactly the devices active at its epoch
    for message_id in stored:
        devices = set(Delivery.objects.filter(message_id=message_id).values_list("device_id", flat=True))
        assert new_device.pk not in devices
        assert PendingDm.objects.get(message_id=message_id).epoch == 1
    assert {str(m) for m in stored} == {b["message_id"] for b, r in zip(bodies, responses) if r.status_code == 201}


@pytest.mark.parametrize("round_", range(3))
def test_racing_joins_never_pass_the_conversation_limit(round_):
    """Issue 10 point 12: creates and adds that would each take carol to the limit, at once, with her own
    device registration (user row, then conversation rows) in the mix: one join wins, nothing deadlocks."""
    from dms.models import ConversationMember
    from dms.selectors import server_settings_get

    carol = make_person(1)
    others = [make_person(1) for _ in range(6)]
    create_conversation(others[0].device, [carol.id])  # carol is in 1 of 2
    conf = server_settings_get()
    conf.max_conversations_per_user = 2
    conf.save()
    groups = [create_conversation(o.device, [others[5].id, others[4].id]) for o in others[:2]]
    url = "/api/v1/dms/conversations"
    joins = [*(lambda o=o: o.device.client.post(url, {"participants": [carol.id, others[5].id]}, format="json")
               for o in others[2:5]),
             *(lambda o=o, g=g: o.device.client.post(f"{url}/{g['conversation_id']}/participants",
                                                    {"add": [carol.id]}, format="json")
               for o, g in zip(others[:2], groups))]
    results = run_together([*joins, lambda: carol.add_device("new")])
    statuses = sorted(r.status_code for r in results[:-1])
    assert statuses == [200 if any(r.status_code == 200 for r in results[3:5]) else 201, 409, 409, 409, 409]
    assert all(r.json()["error"] == "conversation_limit_reached" for r in results[:-1] if r.status_code == 409)
    assert ConversationMember.objects.filter(user__username=carol.id).count() == 2
