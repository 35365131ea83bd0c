"""Every row of the §7 send table, in order, with its exact error body."""
import os
import uuid

import pytest

from dmclient import protocol
from devices.models import Device
from dms.models import Delivery, KeyReceipt, PendingDm, UsedMessageId
from dms.selectors import server_settings_get
from tests.factories import ack, build_send, create_conversation, make_person, send, sync

pytestmark = pytest.mark.django_db


@pytest.fixture
def pair():
    alice, bob = make_person(2), make_person(2)
    conv = create_conversation(alice.device, [bob.id])
    return alice, bob, conv


def nothing_stored():
    return not PendingDm.objects.exists() and not Delivery.objects.exists() and not UsedMessageId.objects.exists()


def test_success_stores_once_with_one_delivery_per_recipient(pair):
    alice, bob, conv = pair
    body = build_send(alice.device, conv)
    response = send(alice.device, body)
    assert response.status_code == 201, response.content
    out = response.json()
    assert out["message_id"] == body["message_id"] and out["policy"] == "ttl"
    assert out["recipients"] == 3 and out["unreachable"] == []
    assert out["created_at"].endswith("Z") and out["expires_at"].endswith("Z")
    message = PendingDm.objects.get()
    assert bytes(message.ciphertext) == protocol.b64d(body["ciphertext"])
    assert set(Delivery.objects.values_list("device__device_id", flat=True)) == {
        alice.devices[1].id, *(d.id for d in bob.devices)}
    # each recipient's delivery holds its own wrap
    for recipient in body["recipients"]:
        delivery = Delivery.objects.get(device__device_id=recipient["device_id"])
        assert delivery.key_wrap == recipient["key_wrap"]


def test_1_unauthenticated_is_401():
    from rest_framework.test import APIClient

    assert APIClient().post("/api/v1/dms/send", {}, format="json").status_code == 401


def test_2_rate_limit_counts_every_attempt(pair):
    alice, _, conv = pair
    conf = server_settings_get()
    conf.send_rate_per_device = 2
    conf.save()
    assert send(alice.device, {}).status_code == 400  # malformed attempts count too
    assert send(alice.device, build_send(alice.device, conv)).status_code == 201
    response = send(alice.device, build_send(alice.device, conv))
    assert response.status_code == 429 and response.json()["error"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert send(alice.devices[1], build_send(alice.devices[1], conv)).status_code == 201


def test_2_rate_limit_per_user(pair):
    alice, _, conv = pair
    conf = server_settings_get()
    conf.send_rate_per_user = 1
    conf.save()
    assert send(alice.device, build_send(alice.device, conv)).status_code == 201
    assert send(alice.devices[1], build_send(alice.devices[1], conv)).status_code == 429


@pytest.mark.parametrize("mutate,field", [
    (lambda b: b.update(nonce=protocol.b64e(b"\x00" * 11)), "nonce"),
    (lambda b: b.update(signature=protocol.b64e(b"\x00" * 63)), "signature"),
    (lambda b: b["recipients"][0].update(key_wrap={"nonce": protocol.b64e(b"\x00" * 12),
                                                   "wrapped_key": protocol.b64e(b"\x00" * 47)}), "recipients"),
    (lambda b: b["recipients"].append(dict(b["recipients"][0])), "recipients"),
    (lambda b: b.update(message_id=b["message_id"].upper()), "message_id"),
    (lambda b: b.update(epoch="1"), "epoch"),
    (lambda b: b.update(epoch=True), "epoch"),
    (lambda b: b.update(ciphertext="AAF="), "ciphertext"),
    (lambda b: b.update(key_id="short"), "key_id"),
    (lambda b: b["recipients"][0].update(device_id="11111111111111111111111111111111"), "recipients"),
    (lambda b: b.pop("retention"), "retention"),
])
def test_3_malformed_is_400(pair, mutate, field):
    alice, _, conv = pair
    body = build_send(alice.device, conv)
    mutate(body)
    response = send(alice.device, body)
    assert response.status_code == 400, response.content
    fields = response.json()["fields"]  # dotted names (§10): recipients.0.key_wrap.wrapped_key
    assert response.json()["error"] == "invalid_request" and any(f.split(".")[0] == field for f in fields)
    assert nothing_stored()


def test_3_ciphertext_over_limit_is_413(pair):
    alice, _, conv = pair
    conf = server_settings_get()
    conf.max_ciphertext_bytes = 1024
    conf.save()
    response = send(alice.device, build_send(alice.device, conv, ciphertext=os.urandom(1025)))
    assert response.status_code == 413 and response.json()["error"] == "ciphertext_too_large"
    assert send(alice.device, build_send(alice.device, conv, ciphertext=os.urandom(1024))).status_code == 201


def test_4_bad_signature(pair):
    alice, _, conv = pair
    body = build_send(alice.device, conv)
    body["ciphertext"] = protocol.b64e(os.urandom(256))  # signature no longer covers it
    response = send(alice.device, body)
    assert response.status_code == 400 and response.json()["error"] == "bad_signature"
    # signed by another device of the same user
    body = build_send(alice.devices[1], conv)
    response = send(alice.device, body)
    assert response.json()["error"] == "bad_signature"
    assert nothing_stored()


def test_5_retry_answers_200_with_first_answer_and_duplicate_is_409(pair):
    alice, bob, conv = pair
    body = build_send(alice.device, conv)
    first = send(alice.device, body)
    assert first.status_code == 201
    retry = send(alice.device, body)
    assert retry.status_code == 200 and retry.json() == first.json()
    assert PendingDm.objects.count() == 1 and Delivery.objects.count() == 3
    # same id, other content
    other = build_send(alice.device, conv, message_id=body["message_id"])
    response = send(alice.device, other)
    assert response.status_code == 409 and response.json()["error"] == "duplicate_message_id"
    # same id from another device
    response = send(bob.device, build_send(bob.device, conv, message_id=body["message_id"]))
    assert response.status_code == 409 and response.json()["error"] == "duplicate_message_id"


def test_5_late_retry_after_message_is_gone(pair):
    alice, bob, conv = pair
    url = f"/api/v1/dms/conversations/{conv['conversation_id']}"
    alice.device.client.patch(url, {"retention": {"policy": "burn_on_read", "ttl_days": None}}, format="json")
    conv = alice.device.client.get(url).json()
    body = build_send(alice.device, conv)
    first = send(alice.device, body).json()
    for device in [alice.devices[1], *bob.devices]:
        ack(device, [body["message_id"]])
    assert not PendingDm.objects.exists()
    retry = send(alice.device, body)
    assert retry.status_code == 200 and retry.json() == first
    assert not PendingDm.objects.exists()


def test_5_retry_after_leaving_the_group_answers_first_and_changes_nothing():
    """Check 5 comes before 6: a retry from someone no longer a participant still
    gets its first answer, and the retry does not touch the conversation."""
    from dms.models import Conversation

    alice, bob, carol = make_person(1), make_person(1), make_person(1)
    group = create_conversation(alice.device, [bob.id, carol.id])
    body = build_send(alice.device, group)
    first = send(alice.device, body)
    assert first.status_code == 201
    url = f"/api/v1/dms/conversations/{group['conversation_id']}/participants/{alice.id}"
    for leave in (False, True):
        if leave:
            assert alice.device.client.delete(url).status_code in (200, 204)
        before = Conversation.objects.get(id=group["conversation_id"]).last_activity_at
        retry = send(alice.device, body)
        assert retry.status_code == 200 and retry.json() == first.json()
        assert Conversation.objects.get(id=group["conversation_id"]).last_activity_at == before
    fresh = send(alice.device, build_send(alice.device, group))
    assert fresh.status_code == 404 and fresh.json()["error"] == "not_found"


def test_6_unknown_or_foreign_conversation_is_404(pair):
    alice, bob, conv = pair
    eve = make_person(1)
    body = build_send(eve.device, conv, recipients=[d.id for d in alice.devices + bob.devices])
    response = send(eve.device, body)
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    body = build_send(alice.device, {**conv, "conversation_id": str(uuid.uuid4())})
    assert send(alice.device, body).status_code == 404
    assert nothing_stored()


def test_7_stale_epoch(pair):
    alice, bob, conv = pair
    old = dict(conv)
    bob.add_device("third")
    response = send(alice.device, build_send(alice.device, old))
    assert response.status_code == 409
    assert response.json() == {"error": "stale_epoch", "detail": response.json()["detail"],
                               "epoch": 2, "participants": sorted([alice.id, bob.id])}
    wrong_hash = {**conv, "participants_sha256": protocol.participants_sha256([alice.id])}
    wrong_hash["epoch"] = 2
    assert send(alice.device, build_send(alice.device, wrong_hash)).json()["error"] == "stale_epoch"
    assert nothing_stored()


def test_8_retention_changed(pair):
    alice, bob, conv = pair
    bob.device.client.patch(f"/api/v1/dms/conversations/{conv['conversation_id']}",
                            {"retention": {"policy": "ttl", "ttl_days": 3}}, format="json")
    response = send(alice.device, build_send(alice.device, conv))
    assert response.status_code == 409
    assert response.json()["error"] == "retention_changed"
    assert response.json()["retention"] == {"policy": "ttl", "ttl_days": 3}
    assert nothing_stored()


def test_9_mismatched_devices(pair):
    alice, bob, conv = pair
    everyone = [alice.devices[1].id, *(d.id for d in bob.devices)]
    stranger = make_person(1).device.id
    body = build_send(alice.device, conv, recipients=[everyone[0], everyone[1], stranger])
    response = send(alice.device, body)
    assert response.status_code == 409
    assert response.json()["error"] == "mismatched_devices"
    assert response.json()["missing"] == [everyone[2]] and response.json()["extra"] == [stranger]
    # the sender itself is not a recipient
    body = build_send(alice.device, conv, recipients=[*everyone, alice.device.id])
    assert send(alice.device, body).json()["extra"] == [alice.device.id]
    assert nothing_stored()


def test_9_revoked_device_is_not_a_recipient(pair):
    alice, bob, conv = pair
    bob.master_client().delete(f"/api/v1/devices/{bob.devices[1].id}")
    conv = alice.device.client.get(f"/api/v1/dms/conversations/{conv['conversation_id']}").json()
    body = build_send(alice.device, conv, recipients=[alice.devices[1].id, bob.devices[0].id, bob.devices[1].id])
    response = send(alice.device, body)
    assert response.json()["error"] == "mismatched_devices" and response.json()["extra"] == [bob.devices[1].id]


def test_10_missing_key_wraps_until_receipts_exist(pair):
    alice, bob, conv = pair
    key = os.urandom(32)
    recipients = [alice.devices[1].id, *(d.id for d in bob.devices)]
    response = send(alice.device, build_send(alice.device, conv, group_key=key, wrap_for=recipients[:1]))
    assert response.status_code == 409 and response.json()["error"] == "missing_key_wraps"
    assert response.json()["devices"] == sorted(recipients[1:])
    first = build_send(alice.device, conv, group_key=key)
    assert send(alice.device, first).status_code == 201
    # bob's first device ACKs (a receipt); his second ACKs as failed (no receipt)
    ack(bob.devices[0], [first["message_id"]])
    ack(bob.devices[1], failed=[first["message_id"]])
    assert KeyReceipt.objects.count() == 1
    response = send(alice.device, build_send(alice.device, conv, group_key=key, wrap_for=[]))
    assert response.json()["devices"] == sorted([alice.devices[1].id, bob.devices[1].id])
    body = build_send(alice.device, conv, group_key=key, wrap_for=[alice.devices[1].id, bob.devices[1].id])
    assert send(alice.device, body).status_code == 201
    delivered = Delivery.objects.get(message_id=body["message_id"], device__device_id=bob.devices[0].id)
    assert delivered.key_wrap is None
    # a new key needs wraps again
    response = send(alice.device, build_send(alice.device, conv, wrap_for=[]))
    assert response.json()["error"] == "missing_key_wraps"


def test_11_mailbox_full_only_when_every_recipient_is_full(pair):
    alice, bob, conv = pair
    conf = server_settings_get()
    conf.pending_quota = 2
    conf.save()
    for _ in range(2):
        assert send(alice.device, build_send(alice.device, conv)).status_code == 201
    everyone = sorted([alice.devices[1].id, *(d.id for d in bob.devices)])
    body = build_send(alice.device, conv)
    response = send(alice.device, body)
    assert response.status_code == 429 and response.json()["error"] == "mailbox_full"
    assert response.json()["devices"] == everyone
    assert not PendingDm.objects.filter(message_id=body["message_id"]).exists()
    # once one device drains, the same message goes to it alone and the others are reported
    ack(bob.devices[0], [m["message_id"] for m in sync(bob.devices[0])["messages"]])
    response = send(alice.device, body)
    assert response.status_code == 201 and response.json()["recipients"] == 1
    assert response.json()["skipped"] == [{"device_id": d, "reason": "mailbox_full"}
                                          for d in sorted([alice.devices[1].id, bob.devices[1].id])]
    assert list(Delivery.objects.filter(message_id=body["message_id"]).values_list(
        "device__device_id", flat=True)) == [bob.devices[0].id]


def test_11_a_member_filling_their_own_device_cannot_jam_the_conversation():
    """Issue 10 point 5: bob never syncs his second device; the group keeps working."""
    alice, bob, carol = make_person(1), make_person(2), make_person(1)
    group = create_conversation(alice.device, [bob.id, carol.id])
    conf = server_settings_get()
    conf.pending_quota = 3
    conf.save()
    jammed = bob.devices[1]
    for _ in range(3):
        assert send(bob.device, build_send(bob.device, group)).status_code == 201
    for device in (alice.device, carol.device):
        ack(device, [m["message_id"] for m in sync(device)["messages"]])
    for sender in (alice.device, bob.device, carol.device):
        body = build_send(sender, group)
        response = send(sender, body)
        assert response.status_code == 201, response.content
        assert response.json()["recipients"] == 2  # the two other active devices but the jammed one
        assert response.json()["skipped"] == [{"device_id": jammed.id, "reason": "mailbox_full"}]
        assert not Delivery.objects.filter(message_id=body["message_id"], device__device_id=jammed.id).exists()
        # a retry gets the same first answer
        retry = send(sender, body)
        assert retry.status_code == 200 and retry.json() == response.json()
    for device in (alice.device, carol.device, bob.device):
        page = sync(device)["messages"]
        assert len(page) == 2
        ack(device, [m["message_id"] for m in page])
    assert len(sync(jammed)["messages"]) == 3


@pytest.mark.django_db(transaction=True)
def test_11_skipped_device_gets_no_dm_notify():
    from asgiref.sync import async_to_sync, sync_to_async

    from tests.gateway.wsutil import close_all, connect, next_op, silent

    alice, bob = make_person(1), make_person(2)
    conv = create_conversation(alice.device, [bob.id])
    conf = server_settings_get()
    conf.pending_quota = 1
    conf.save()
    assert send(alice.device, build_send(alice.device, conv)).status_code == 201
    ack(bob.device, [m["message_id"] for m in sync(bob.device)["messages"]])
    body = build_send(alice.device, conv)

    async def scenario():
        drained, jammed = [(await connect(d.client.token))[0] for d in bob.devices]
        response = await sync_to_async(send)(alice.device, body)
        assert response.status_code == 201 and response.json()["recipients"] == 1
        assert (await next_op(drained, "DM_NOTIFY"))["d"]["message_id"] == response.json()["message_id"]
        assert await silent(jammed)
        await close_all(drained, jammed)

    async_to_sync(scenario)()


def test_checks_run_in_table_order(pair):
    """A request failing checks 7, 8 and 9 at once gets 7's answer; 8 before 9."""
    alice, bob, conv = pair
    old = dict(conv)
    bob.device.client.patch(f"/api/v1/dms/conversations/{conv['conversation_id']}",
                            {"retention": {"policy": "ttl", "ttl_days": 5}}, format="json")
    bob.add_device("third")
    assert send(alice.device, build_send(alice.device, old, recipients=[])).json()["error"] == "stale_epoch"
    fresh = alice.device.client.get(f"/api/v1/dms/conversations/{conv['conversation_id']}").json()
    body = build_send(alice.device, {**fresh, "retention": old["retention"]}, recipients=[])
    assert send(alice.device, body).json()["error"] == "retention_changed"


def test_unreachable_lists_participants_without_active_device():
    alice, bob = make_person(1), make_person(1)
    conv = create_conversation(alice.device, [bob.id])
    bob.master_client().delete(f"/api/v1/devices/{bob.device.id}")
    conv = alice.device.client.get(f"/api/v1/dms/conversations/{conv['conversation_id']}").json()
    response = send(alice.device, build_send(alice.device, conv, recipients=[]))
    assert response.status_code == 201 and response.json()["unreachable"] == [bob.id]
    assert response.json()["recipients"] == 0


def test_expired_device_is_not_a_recipient(pair):
    from django.utils import timezone

    alice, bob, conv = pair
    recipients = [alice.devices[1].id, *(d.id for d in bob.devices)]
    Device.objects.filter(device_id=bob.devices[1].id).update(expires_at=timezone.now())
    assert bob.devices[1].id not in [d["device_id"] for d in bob.device.client.get(
        f"/api/v1/users/{bob.id}/devices").json()["devices"]]
    body = build_send(alice.device, conv, recipients=recipients)
    assert send(alice.device, body).json()["extra"] == [bob.devices[1].id]


def test_3_too_many_recipients(pair):
    alice, _, conv = pair
    conf = server_settings_get()
    conf.max_recipients_per_message = 2
    conf.save()
    response = send(alice.device, build_send(alice.device, conv))
    assert response.status_code == 400 and response.json()["error"] == "too_many_recipients"
    assert nothing_stored()


def test_request_body_over_admin_limit_is_413(pair):
    alice, _, conv = pair
    conf = server_settings_get()
    conf.max_request_bytes = 2048
    conf.save()
    response = send(alice.device, build_send(alice.device, conv, ciphertext=os.urandom(2000)))
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"
    assert nothing_stored()
    assert send(alice.device, build_send(alice.device, conv, ciphertext=os.urandom(500))).status_code == 201


def test_request_body_over_hard_cap_is_413(pair, settings):
    alice, _, conv = pair
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    response = send(alice.device, build_send(alice.device, conv, ciphertext=os.urandom(5000)))
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"


def test_10_receipts_of_a_past_epoch_do_not_count(pair):
    """Issue 10 point 15: a receipt made under epoch n says nothing for epoch n+1."""
    alice, bob, conv = pair
    key = os.urandom(32)
    first = build_send(alice.device, conv, group_key=key)
    assert send(alice.device, first).status_code == 201
    for device in [alice.devices[1], *bob.devices]:
        ack(device, [first["message_id"]])
    assert send(alice.device, build_send(alice.device, conv, group_key=key, wrap_for=[])).status_code == 201
    third = bob.add_device("third")  # epoch n+1; the old receipts are not purged yet
    conv = alice.device.client.get(f"/api/v1/dms/conversations/{conv['conversation_id']}").json()
    assert KeyReceipt.objects.filter(epoch=conv["epoch"] - 1).count() == 3
    response = send(alice.device, build_send(alice.device, conv, group_key=key, wrap_for=[third.id]))
    assert response.status_code == 409 and response.json()["error"] == "missing_key_wraps"
    assert response.json()["devices"] == sorted([alice.devices[1].id, *(d.id for d in bob.devices[:2])])
    # wrapped again and ACKed under n+1, the same key_id needs no wraps any more
    again = build_send(alice.device, conv, group_key=key)
    assert send(alice.device, again).status_code == 201
    for device in [alice.devices[1], *bob.devices]:
        ack(device, [again["message_id"]])
    assert set(KeyReceipt.objects.values_list("epoch", flat=True)) == {conv["epoch"]}
    assert send(alice.device, build_send(alice.device, conv, group_key=key, wrap_for=[])).status_code == 201
