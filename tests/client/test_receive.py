"""Every receiving check of §6, against the real server application in this
process. A test plays the malicious party — the server (changing rows between
send and sync) or a sender (sending what an honest client never would) — and
asserts the exact outcome: the message is recorded as failed with its reason,
never shown as genuine, and ACKed as `failed` (the delivery ends, no receipt)."""
import datetime as dt
import os
import sqlite3
import time
import uuid

import pytest
from django.utils import timezone

from dmclient import protocol
from devices.models import Device
from dmclient import crypto
from dmclient.client import REPLAY_WINDOW_DAYS
from dms.models import Conversation, Delivery, KeyReceipt, PendingDm

MALLORY_TEXT = "forged text that must never be shown"


@pytest.fixture
def pair(new_client):
    alice, bob = new_client("alice"), new_client("bob")
    conversation, _ = alice.create_conversation([bob.user_id])
    return alice, bob, conversation


def forge(sender, conversation: dict, recipient, *, text: str = MALLORY_TEXT, sent_at: int | None = None,
          seq: int = 1, participants_sha256: str | None = None, key_id: str | None = None,
          padded: bytes | None = None, via_api: bool = True) -> str:
    """A message built by hand with `sender`'s device key: sent through the API
    (a malicious sender; the server accepts it) or written straight into the
    server's tables (a malicious server)."""
    cid, epoch = conversation["conversation_id"], conversation["epoch"]
    message_id, key, nonce = str(uuid.uuid4()), os.urandom(32), os.urandom(12)
    plaintext = crypto.plaintext_encode(body=text, sent_at=sent_at or int(time.time() * 1000), seq=seq)
    aad = protocol.dm_aad(conversation_id=cid, epoch=epoch, message_id=message_id, sender_device=sender.device_id)
    ciphertext = protocol.aead_encrypt(key, nonce, protocol.pad(plaintext) if padded is None else padded, aad)
    key_id = key_id or protocol.key_id(key)
    phash = participants_sha256 or conversation["participants_sha256"]
    signature = sender.device.sign(protocol.dm_signed_bytes(
        ciphertext_sha256=protocol.H(ciphertext), conversation_id=cid, epoch=epoch, key_id=key_id,
        message_id=message_id, nonce=protocol.b64e(nonce), participants_sha256=phash,
        sender_device=sender.device_id))
    wrap = crypto.wrap(device=sender.device, recipient_device=recipient.device_id, conversation_id=cid, epoch=epoch,
                       group_key=key)
    if via_api:
        sender.call("POST", "/dms/send", json={
            "message_id": message_id, "conversation_id": cid, "epoch": epoch, "key_id": key_id,
            "participants_sha256": phash, "retention": conversation["retention"], "nonce": protocol.b64e(nonce),
            "ciphertext": protocol.b64e(ciphertext), "signature": protocol.b64e(signature),
            "recipients": [{"device_id": recipient.device_id, "key_wrap": wrap}]})
    else:
        now = timezone.now()
        message = PendingDm.objects.create(
            message_id=message_id, conversation_id=cid, sender_device=Device.objects.get(device_id=sender.device_id),
            epoch=epoch, key_id=key_id, participants_sha256=phash, nonce=protocol.b64e(nonce), ciphertext=ciphertext,
            ciphertext_sha256=protocol.H(ciphertext), signature=protocol.b64e(signature), policy="ttl", ttl_days=7,
            created_at=now, expires_at=now + dt.timedelta(days=7))
        Delivery.objects.create(message=message, device=Device.objects.get(device_id=recipient.device_id),
                                wrap_nonce=wrap["nonce"], wrapped_key=wrap["wrapped_key"], created_at=now)
    return message_id


def delivery(message_id: str, client) -> Delivery:
    return Delivery.objects.get(message_id=message_id, device__device_id=client.device_id)


def assert_rejected(bob, message_id: str, reason: str, *, conversation_id: str | None = None) -> None:
    """Bob's sync records exactly this failure, shows nothing genuine, and ACKs it as failed."""
    history_before = bob.store.db.execute("SELECT count(*) FROM messages").fetchone()[0]
    report = bob.sync()
    assert (report.accepted, report.failed) == (0, 1)
    failure = bob.failures()[-1]
    assert (failure["message_id"], failure["reason"]) == (message_id, reason), failure
    assert bob.store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == history_before
    shown = bob.take_unshown()
    assert [i for i in shown if i["type"] == "message"] == []
    assert [(i["message_id"], i["reason"]) for i in shown if i["type"] == "failed"] == [(message_id, reason)]
    if PendingDm.objects.filter(message_id=message_id).exists():
        assert delivery(message_id, bob).acked_at is not None  # ACKed...
    assert not KeyReceipt.objects.filter(recipient_device__device_id=bob.device_id).exists()  # ...as failed
    assert bob.sync().failed == 0  # and not offered again


def test_genuine_message_is_accepted_and_acked(pair):
    alice, bob, conversation = pair
    sent = alice.send(conversation["conversation_id"], "hello bob")
    report = bob.sync()
    assert (report.accepted, report.failed) == (1, 0)
    items = [i for i in bob.take_unshown() if i["type"] == "message"]
    assert [(i["message_id"], i["body"], i["sender"], i["seq"]) for i in items] == [
        (sent.message_id, "hello bob", alice.user_id, 1)]
    assert delivery(sent.message_id, bob).acked_at is not None
    assert KeyReceipt.objects.filter(recipient_device__device_id=bob.device_id, key_id=sent.key_id).exists()


def test_tampered_signature(pair):
    alice, bob, conversation = pair
    sent = alice.send(conversation["conversation_id"], "hello bob")
    signature = bytearray(protocol.b64d(PendingDm.objects.get(message_id=sent.message_id).signature))
    signature[5] ^= 1
    PendingDm.objects.filter(message_id=sent.message_id).update(signature=protocol.b64e(bytes(signature)))
    assert_rejected(bob, sent.message_id, "bad_signature")


def test_tampered_ciphertext(pair):
    alice, bob, conversation = pair
    sent = alice.send(conversation["conversation_id"], "hello bob")
    row = PendingDm.objects.get(message_id=sent.message_id)
    ciphertext = bytearray(row.ciphertext)
    ciphertext[0] ^= 1
    PendingDm.objects.filter(message_id=sent.message_id).update(ciphertext=bytes(ciphertext))
    assert_rejected(bob, sent.message_id, "bad_signature")


def test_wrong_participants_sha256_is_failed_and_warned(pair, new_client):
    alice, bob, conversation = pair
    mallory = new_client("mallory")
    forked = protocol.participants_sha256([alice.user_id, bob.user_id, mallory.user_id])
    message_id = forge(alice, conversation, bob, participants_sha256=forked, via_api=False)
    assert_rejected(bob, message_id, "participants_mismatch")
    warnings = [e for e in bob.store.db.execute("SELECT kind FROM events WHERE kind = 'membership_fork'")]
    assert len(warnings) == 1


def test_foreign_sender_certificate(pair, new_client):
    """The server swaps in a certificate for alice's device key issued by another master."""
    alice, bob, conversation = pair
    mallory = new_client("mallory")
    sent = alice.send(conversation["conversation_id"], "hello bob")
    Device.objects.filter(device_id=alice.device_id).update(
        certificate=mallory.certify(alice.device_id, name="not alice's"))
    assert_rejected(bob, sent.message_id, "bad_certificate")


def test_sender_who_is_not_a_participant(pair, new_client):
    """A real user with a valid certificate, slipped into a conversation she is not in."""
    alice, bob, conversation = pair
    mallory = new_client("mallory")
    message_id = forge(mallory, conversation, bob, via_api=False)
    assert_rejected(bob, message_id, "not_a_participant")


def test_replay_of_an_accepted_message(pair):
    alice, bob, conversation = pair
    sent = alice.send(conversation["conversation_id"], "pay bob 10 coins")
    assert bob.sync().accepted == 1
    bob.take_unshown()
    Delivery.objects.filter(message_id=sent.message_id).update(acked_at=None)  # the server offers it again
    KeyReceipt.objects.all().delete()
    assert_rejected(bob, sent.message_id, "replay")
    assert [m["body"] for m in bob.history(conversation["conversation_id"])] == ["pay bob 10 coins"]


def test_bad_padding_from_a_malicious_sender(pair):
    alice, bob, conversation = pair
    message_id = forge(alice, conversation, bob, padded=b"a" * 255 + b"\x00")
    assert_rejected(bob, message_id, "bad_padding")


def test_key_id_that_does_not_match_the_key(pair):
    alice, bob, conversation = pair
    message_id = forge(alice, conversation, bob, key_id=protocol.key_id(os.urandom(32)))
    assert_rejected(bob, message_id, "bad_key_id")


def test_tampered_key_wrap(pair):
    alice, bob, conversation = pair
    sent = alice.send(conversation["conversation_id"], "hello bob")
    wrapped = bytearray(protocol.b64d(delivery(sent.message_id, bob).wrapped_key))
    wrapped[0] ^= 1
    Delivery.objects.filter(message_id=sent.message_id).update(wrapped_key=protocol.b64e(bytes(wrapped)))
    assert_rejected(bob, sent.message_id, "bad_key_wrap")


def test_no_wrap_and_no_stored_key(pair):
    alice, bob, conversation = pair
    sent = alice.send(conversation["conversation_id"], "hello bob")
    Delivery.objects.filter(message_id=sent.message_id).update(wrap_nonce=None, wrapped_key=None)
    assert_rejected(bob, sent.message_id, "missing_key")


def test_sent_at_outside_the_replay_window(pair):
    alice, bob, conversation = pair
    old = forge(alice, conversation, bob, sent_at=int((time.time() - (REPLAY_WINDOW_DAYS + 1) * 86400) * 1000))
    assert_rejected(bob, old, "too_old")
    ahead = forge(alice, conversation, bob, sent_at=int((time.time() + 2 * 86400) * 1000), seq=2)
    assert_rejected(bob, ahead, "from_the_future")


def test_a_forged_long_retention_does_not_widen_the_replay_window(pair):
    """§6: the window is the client's constant. The server claims a ttl of 10 years
    for the conversation; a message older than the window is still refused."""
    alice, bob, conversation = pair
    cid = conversation["conversation_id"]
    Conversation.objects.filter(id=cid).update(retention_policy="ttl", retention_ttl_days=3650)
    bob.conversation(cid, refresh=True)
    assert bob.conversation(cid).retention == {"policy": "ttl", "ttl_days": 3650}
    old = forge(alice, {**conversation, "retention": {"policy": "ttl", "ttl_days": 3650}}, bob,
                sent_at=int((time.time() - (REPLAY_WINDOW_DAYS + 1) * 86400) * 1000), via_api=False)
    assert_rejected(bob, old, "too_old")
    # just inside the window it is accepted: the bound is the constant, not less
    inside = forge(alice, conversation, bob, sent_at=int((time.time() - (REPLAY_WINDOW_DAYS - 1) * 86400) * 1000),
                   seq=2, via_api=False)
    assert bob.sync().accepted == 1 and bob.history(cid)[-1]["message_id"] == inside


def test_malformed_message(pair):
    alice, bob, conversation = pair
    sent = alice.send(conversation["conversation_id"], "hello bob")
    PendingDm.objects.filter(message_id=sent.message_id).update(nonce="AAAA")
    assert_rejected(bob, sent.message_id, "malformed")


def test_a_later_message_uses_the_stored_key_without_a_wrap(pair, monkeypatch):
    alice, bob, conversation = pair
    cid = conversation["conversation_id"]
    first = alice.send(cid, "one")
    bob.sync()
    monkeypatch.setattr("dmclient.client.WRAP_PROBE_S", 0)
    second = alice.send(cid, "two")
    assert second.key_id == first.key_id and second.retries == []  # bob holds a receipt: no wrap needed
    assert delivery(second.message_id, bob).wrapped_key is None
    assert bob.sync().accepted == 1
    assert [m["body"] for m in bob.history(cid)] == ["one", "two"]


def test_seq_gap_is_noted(pair):
    alice, bob, conversation = pair
    cid = conversation["conversation_id"]
    sent = [alice.send(cid, text) for text in ("one", "two", "three")]
    delivery(sent[1].message_id, bob).delete()  # the server drops one
    assert bob.sync().accepted == 2
    messages = [i for i in bob.take_unshown() if i["type"] == "message"]
    assert [(m["body"], m["warning"]) for m in messages] == [
        ("one", None), ("three", "1 earlier message(s) from this device never arrived (seq 2..2)")]


def test_message_from_an_epoch_this_device_never_saw(new_client):
    """Bob was offline through epoch 1 of a group: the sender is a known
    participant, but that epoch's members cannot be checked — accepted, with a warning."""
    alice, bob, carol, dave = (new_client(n) for n in ("alice", "bob", "carol", "dave"))
    group, created = alice.create_conversation([bob.user_id, carol.user_id])
    assert created and group["epoch"] == 1
    alice.send(group["conversation_id"], "before dave")
    alice.add_participants(group["conversation_id"], [dave.user_id])
    assert bob.sync().accepted == 1
    [message] = [i for i in bob.take_unshown() if i["type"] == "message"]
    assert message["body"] == "before dave"
    assert message["warning"] == "participants of epoch 1 not verified (this device never saw that epoch)"


def test_storage_failure_means_no_ack_and_the_message_comes_again(pair):
    """Store, then ACK: when the store cannot be written the sync stops before the ACK."""
    alice, bob, conversation = pair
    sent = alice.send(conversation["conversation_id"], "hello bob")
    bob.conversation(conversation["conversation_id"], refresh=True)
    bob.store.db.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(bob.store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # readers go on, writers wait
    with pytest.raises(sqlite3.OperationalError) as exc:
        bob.sync()
    assert "_store_received" in [entry.name for entry in exc.traceback]  # it got that far, and no further
    blocker.execute("ROLLBACK")
    blocker.close()
    assert delivery(sent.message_id, bob).acked_at is None
    assert bob.sync().accepted == 1
    assert delivery(sent.message_id, bob).acked_at is not None
    assert [m["body"] for m in bob.history(conversation["conversation_id"])] == ["hello bob"]


def test_epochs_the_conversation_never_had_are_rejected(pair):
    """§6 "Epochs a client accepts": below 1, or above the current one after a refresh."""
    alice, bob, conversation = pair
    zero = forge(alice, {**conversation, "epoch": 0}, bob, via_api=False)
    assert_rejected(bob, zero, "bad_epoch")
    ahead = forge(alice, {**conversation, "epoch": conversation["epoch"] + 1}, bob, seq=2, via_api=False)
    assert_rejected(bob, ahead, "bad_epoch")


@pytest.fixture
def group_of_three(new_client):
    alice, bob, carol, dave = (new_client(n) for n in ("alice", "bob", "carol", "dave"))
    group, _ = alice.create_conversation([bob.user_id, carol.user_id])
    bob.conversations()  # bob sees epoch 1
    return alice, bob, carol, dave, group


def test_a_removed_member_is_shown_as_sent_before_the_removal(group_of_three):
    alice, bob, carol, dave, group = group_of_three
    cid = group["conversation_id"]
    alice.remove_participant(cid, carol.user_id)
    bob.conversations()  # epoch 2, without carol
    # the server helps carol post with the epoch in which she was a member
    forge(carol, group, bob, text="from the past", via_api=False)
    assert bob.sync().accepted == 1
    [message] = [i for i in bob.take_unshown() if i["type"] == "message"]
    assert message["body"] == "from the past"
    assert message["warning"] == "sent before the sender was removed (epoch 2): not a current message"
    # in the epoch after her removal she is no participant at all
    now = bob.conversation(cid)
    message_id = forge(carol, {**group, "epoch": now.epoch, "participants_sha256": now.participants_sha256}, bob,
                       seq=2, via_api=False)
    assert (bob.sync().failed, bob.failures()[-1]["message_id"], bob.failures()[-1]["reason"]) == (
        1, message_id, "not_a_participant")


def test_an_unseen_epoch_needs_the_sender_around_it(group_of_three):
    """Bob saw epochs 1, 2 (carol removed) and 4, not 3. Carol claims epoch 3:
    she was in the conversation neither just before it nor after it."""
    alice, bob, carol, dave, group = group_of_three
    cid = group["conversation_id"]
    alice.remove_participant(cid, carol.user_id)
    bob.conversations()
    alice.add_participants(cid, [dave.user_id])
    alice.remove_participant(cid, dave.user_id)
    bob.conversations()
    assert sorted(bob._epoch_views(cid)) == [1, 2, 4]
    message_id = forge(carol, {**group, "epoch": 3}, bob, via_api=False)
    assert_rejected(bob, message_id, "not_a_participant")
    # alice, a participant throughout, is accepted for it, with the warning that it was not seen
    forge(alice, {**group, "epoch": 3}, bob, text="alice in epoch 3", via_api=False)
    assert bob.sync().accepted == 1
    [message] = [i for i in bob.take_unshown() if i["type"] == "message"]
    assert message["warning"] == "participants of epoch 3 not verified (this device never saw that epoch)"
