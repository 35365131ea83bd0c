"""§7a delivery status: every state driven through the real services, the
status outliving the message, and who may ask."""
import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.utils import timezone

from devices.models import AuthSession
from devices.selectors import token_sha256
from dms.models import DeliveryState, PendingDm, UsedMessageId
from dms.selectors import server_settings_get
from dms.services import dm_purge_expired
from tests.factories import ack, build_send, create_conversation, login, make_person, send

pytestmark = pytest.mark.django_db
DAY = dt.timedelta(days=1)
NO_COUNTS = dict.fromkeys(["pending", "delivered", "failed", "expired", "dropped", "skipped"], 0)


def counts(**n) -> dict:
    return {**NO_COUNTS, **n}


def parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def sent(sender, conversation) -> tuple[dict, dict]:
    body = build_send(sender, conversation)
    response = send(sender, body)
    assert response.status_code == 201, response.content
    return body, response.json()


def status_response(device, message_id: str):
    if not AuthSession.objects.filter(token_sha256=token_sha256(device.client.token)).exists():
        device.client = login(device.keys)  # a purge as of a later time ended the session
    return device.client.get(f"/api/v1/dms/messages/{message_id}/status")


def status(device, message_id: str) -> dict:
    response = status_response(device, message_id)
    assert response.status_code == 200, response.content
    return response.json()


def states(device, message_id: str) -> dict[str, tuple]:
    """device id -> (state, reason or None)."""
    return {d["device_id"]: (d["state"], d.get("reason")) for d in status(device, message_id)["devices"]}


@pytest.fixture
def people():
    return make_person(2), make_person(2)


def test_send_records_a_pending_state_per_recipient_device(people):
    alice, bob = people
    conv = create_conversation(alice.device, [bob.id])
    body, answer = sent(alice.device, conv)
    # any device of the sender's user may ask, the sending one included
    for device in alice.devices:
        got = status(device, body["message_id"])
        recipients = sorted([alice.devices[1].id, *(d.id for d in bob.devices)])
        assert got == {
            "message_id": body["message_id"], "conversation_id": conv["conversation_id"],
            "policy": answer["policy"], "created_at": answer["created_at"], "expires_at": answer["expires_at"],
            "devices": [{"device_id": d, "user_id": alice.id if d == alice.devices[1].id else bob.id,
                         "state": "pending", "at": None} for d in recipients],
            "counts": counts(pending=3)}
    # only metadata is kept: device, state, reason, time
    assert {f.name for f in DeliveryState._meta.fields} == {"id", "message", "device", "state", "reason", "at"}


def test_ack_delivered_and_failed_with_their_time_and_never_overwritten(people):
    alice, bob = people
    conv = create_conversation(alice.device, [bob.id])
    body, _ = sent(alice.device, conv)
    mid = body["message_id"]
    before = timezone.now()
    ack(bob.devices[0], [mid])
    ack(bob.devices[1], failed=[mid])
    got = status(alice.device, mid)
    by_device = {d["device_id"]: d for d in got["devices"]}
    assert by_device[bob.devices[0].id]["state"] == "delivered"
    assert by_device[bob.devices[1].id]["state"] == "failed"
    assert "reason" not in by_device[bob.devices[0].id]
    first_at = by_device[bob.devices[0].id]["at"]
    assert before <= parse(first_at) <= timezone.now()
    assert got["counts"] == counts(pending=1, delivered=1, failed=1)
    # ACKing again, as failed this time, and a later revocation change nothing
    ack(bob.devices[0], failed=[mid])
    bob.master_client().delete(f"/api/v1/devices/{bob.devices[0].id}")
    again = {d["device_id"]: d for d in status(alice.device, mid)["devices"]}
    assert again[bob.devices[0].id]["state"] == "delivered" and again[bob.devices[0].id]["at"] == first_at


def test_an_id_in_both_lists_is_failed(people):
    alice, bob = people
    conv = create_conversation(alice.device, [bob.id])
    body, _ = sent(alice.device, conv)
    ack(bob.devices[0], [body["message_id"]], failed=[body["message_id"]])
    assert states(alice.device, body["message_id"])[bob.devices[0].id] == ("failed", None)


def test_burn_on_read_status_answers_after_the_message_is_deleted(people):
    alice, bob = people
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "burn_on_read"})
    body, _ = sent(alice.device, conv)
    mid = body["message_id"]
    for device in (*bob.devices, alice.devices[1]):
        ack(device, [mid])
    assert not PendingDm.objects.filter(message_id=mid).exists()
    got = status(alice.device, mid)
    assert got["policy"] == "burn_on_read" and got["counts"] == counts(delivered=3)


def test_ttl_expiry_through_the_purge_command_as_of_later(people):
    alice, bob = people
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "ttl", "ttl_days": 2})
    body, _ = sent(alice.device, conv)
    mid = body["message_id"]
    ack(bob.devices[0], [mid])
    as_of = timezone.now() + 2 * DAY + dt.timedelta(minutes=1)
    call_command("purge_dms", "--as-of", as_of.isoformat(), stdout=io.StringIO())
    assert not PendingDm.objects.filter(message_id=mid).exists()
    got = status(alice.device, mid)
    by_device = {d["device_id"]: d for d in got["devices"]}
    assert by_device[bob.devices[0].id]["state"] == "delivered"  # final: the purge leaves it
    assert by_device[bob.devices[1].id]["state"] == "expired"
    assert parse(by_device[bob.devices[1].id]["at"]) == as_of  # the purge's time
    assert got["counts"] == counts(delivered=1, expired=2)


def test_max_undelivered_days_expires_the_delivery_not_the_message(people):
    alice, bob = people
    conf = server_settings_get()
    conf.max_undelivered_days = 3
    conf.save()
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "ttl", "ttl_days": 14})
    body, _ = sent(alice.device, conv)
    mid = body["message_id"]
    ack(bob.devices[0], [mid])
    assert dm_purge_expired(now=timezone.now() + 3 * DAY - dt.timedelta(minutes=1))["undelivered_deliveries"] == 0
    assert status(alice.device, mid)["counts"] == counts(pending=2, delivered=1)
    dm_purge_expired(now=timezone.now() + 3 * DAY + dt.timedelta(minutes=1))
    assert PendingDm.objects.filter(message_id=mid).exists()
    assert states(alice.device, mid) == {bob.devices[0].id: ("delivered", None), bob.devices[1].id: ("expired", None),
                                         alice.devices[1].id: ("expired", None)}


def test_revocation_drops_as_revoked(people):
    alice, bob = people
    conv = create_conversation(alice.device, [bob.id])
    body, _ = sent(alice.device, conv)
    assert bob.master_client().delete(f"/api/v1/devices/{bob.devices[1].id}").status_code == 204
    got = states(alice.device, body["message_id"])
    assert got[bob.devices[1].id] == ("dropped", "revoked")
    assert got[bob.devices[0].id] == ("pending", None)


def test_certificate_expiry_drops_as_revoked_through_the_purge(people):
    alice, bob = people
    short = bob.add_device("short-lived", expires_at=int(timezone.now().timestamp()) + 3600)
    conv = create_conversation(alice.device, [bob.id])
    body, _ = sent(alice.device, conv)
    assert dm_purge_expired(now=timezone.now() + 2 * dt.timedelta(hours=1))["expired_devices"] == 1
    assert states(alice.device, body["message_id"])[short.id] == ("dropped", "revoked")


def test_removal_from_a_group_and_leaving_drop_as_removed():
    alice, bob, carol = make_person(1), make_person(1), make_person(2)
    group = create_conversation(alice.device, [bob.id, carol.id], expect=201)
    body, _ = sent(alice.device, group)
    cid, mid = group["conversation_id"], body["message_id"]
    assert alice.device.client.delete(f"/api/v1/dms/conversations/{cid}/participants/{carol.id}").status_code == 204
    assert bob.device.client.delete(f"/api/v1/dms/conversations/{cid}/participants/{bob.id}").status_code == 204
    got = status(alice.device, mid)
    assert {d["device_id"]: (d["state"], d.get("reason")) for d in got["devices"]} == {
        bob.device.id: ("dropped", "removed"), carol.devices[0].id: ("dropped", "removed"),
        carol.devices[1].id: ("dropped", "removed")}
    assert got["counts"] == counts(dropped=3)
    assert all(d["at"] is not None for d in got["devices"])


def test_a_recipient_at_its_quota_is_skipped(people):
    alice, bob = people
    conf = server_settings_get()
    conf.pending_quota = 1
    conf.save()
    conv = create_conversation(alice.device, [bob.id])
    first, _ = sent(alice.device, conv)
    ack(bob.devices[0], [first["message_id"]])
    ack(alice.devices[1], [first["message_id"]])
    body, answer = sent(alice.device, conv)  # bob's second device still holds the first: at its quota
    assert answer["skipped"] == [{"device_id": bob.devices[1].id, "reason": "mailbox_full"}]
    got = status(alice.device, body["message_id"])
    skipped = next(d for d in got["devices"] if d["device_id"] == bob.devices[1].id)
    assert skipped["state"] == "skipped" and skipped["reason"] == "mailbox_full" and skipped["at"] is not None
    assert got["counts"] == counts(pending=2, skipped=1)


def test_status_is_refused_to_recipients_strangers_and_master_sessions(people):
    alice, bob = people
    stranger = make_person(1)
    conv = create_conversation(alice.device, [bob.id])
    body, _ = sent(alice.device, conv)
    mid = body["message_id"]
    for device in (bob.devices[0], stranger.device):
        response = device.client.get(f"/api/v1/dms/messages/{mid}/status")
        assert response.status_code == 404 and response.json()["error"] == "not_found"
        response = device.client.post("/api/v1/dms/status", {"message_ids": [mid]}, format="json")
        assert response.json() == {"statuses": [], "unknown": [mid]}
    assert alice.master_client().get(f"/api/v1/dms/messages/{mid}/status").status_code == 403


@pytest.mark.parametrize("path_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000",
                                     "A0000000-0000-4000-8000-000000000000"])
def test_an_unknown_or_malformed_id_is_404(person, path_id):
    response = person(1).device.client.get(f"/api/v1/dms/messages/{path_id}/status")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_status_of_many_sorted_with_the_unknown_listed(people):
    alice, bob = people
    conv = create_conversation(alice.device, [bob.id])
    ids = [sent(alice.device, conv)[0]["message_id"] for _ in range(3)]
    theirs = sent(bob.device, conv)[0]["message_id"]
    unknown = "00000000-0000-4000-8000-000000000000"
    response = alice.devices[1].client.post("/api/v1/dms/status",
                                            {"message_ids": [*ids, theirs, unknown, ids[0]]}, format="json")
    assert response.status_code == 200, response.content
    got = response.json()
    assert [s["message_id"] for s in got["statuses"]] == sorted(ids)
    assert got["statuses"][0] == status(alice.device, sorted(ids)[0])
    assert got["unknown"] == sorted([theirs, unknown])


@pytest.mark.parametrize("body", [{}, {"message_ids": "x"}, {"message_ids": ["not-a-uuid"]},
                                  {"message_ids": [f"00000000-0000-4000-8000-{i:012d}" for i in range(501)]}])
def test_status_input_is_checked(person, body):
    response = person(1).device.client.post("/api/v1/dms/status", body, format="json")
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_final_states_survive_the_message_and_vanish_with_its_remembered_id(people):
    alice, bob = people
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "ttl", "ttl_days": 1})
    body, _ = sent(alice.device, conv)
    mid = body["message_id"]
    ack(bob.devices[0], [mid])
    gone = timezone.now() + DAY + dt.timedelta(minutes=1)
    dm_purge_expired(now=gone)
    assert not PendingDm.objects.filter(message_id=mid).exists()
    UsedMessageId.objects.filter(message_id=mid).update(message_gone_at=gone)  # as the purge at that time would
    assert dm_purge_expired(now=gone + 7 * DAY - dt.timedelta(minutes=1))["delivery_states"] == 0
    assert status(alice.device, mid)["counts"] == counts(delivered=1, expired=2)
    purged = dm_purge_expired(now=gone + 7 * DAY + dt.timedelta(minutes=1))
    assert purged["delivery_states"] == 3 and purged["used_message_ids"] == 1
    assert not DeliveryState.objects.exists()
    assert status_response(alice.device, mid).status_code == 404


def test_the_purge_dry_run_counts_states_and_changes_nothing(people):
    alice, bob = people
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "ttl", "ttl_days": 1})
    body, _ = sent(alice.device, conv)
    later = timezone.now() + 9 * DAY
    UsedMessageId.objects.update(message_gone_at=timezone.now())
    assert dm_purge_expired(now=later, dry_run=True)["delivery_states"] == 3
    assert status(alice.device, body["message_id"])["counts"] == counts(pending=3)
