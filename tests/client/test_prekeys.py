"""§6b in the reference client, against the real server application in this
process: prekeys published at registration, rotated, refilled and erased when
§6b says; v2 wraps claimed only when a new wrap is needed and sent again as
they were; a signed prekey that does not verify refused (never a silent v1);
a v1 wrap refused once this device has had a signed prekey for 24 h; sender
keys replaced after 1,000 messages and 7 days; v1-only clients still served."""
import json
import time
import uuid

import httpx
import pytest

from devices.models import OneTimePrekey, SignedPrekey
from dmclient import Client, protocol
from dmclient.client import (DAY_S, OLD_SIGNED_PREKEY_KEEP_S, ONE_TIME_LOW, ONE_TIME_TARGET, REPLAY_WINDOW_DAYS,
                             SIGNED_PREKEY_ROTATE_S, ClientError)
from dmclient import crypto
from dmclient.cli import Names, item_text
from dms.models import Delivery
from tests.client.conftest import PASSPHRASE


def server_prekeys(client: Client) -> dict:
    return client.call("GET", "/devices/prekeys")


def delivery(message_id: str, client: Client) -> Delivery:
    return Delivery.objects.get(message_id=message_id, device__device_id=client.device_id)


def one_time_ids(client: Client) -> set[int]:
    return {r[0] for r in client.store.db.execute("SELECT id FROM one_time_prekeys")}


def signed_rows(client: Client) -> list[dict]:
    return [dict(r) for r in client.store.db.execute(
        "SELECT id, created_at, replaced_at, published, sealed_private IS NOT NULL AS held FROM signed_prekeys "
        "ORDER BY id")]


def age_signed_prekeys(client: Client, seconds: int) -> None:
    """The store as it would be `seconds` later: its prekeys' times moved back."""
    with client.store.transaction() as db:
        db.execute("UPDATE signed_prekeys SET created_at = created_at - ?, "
                   "replaced_at = replaced_at - ?", (seconds, seconds))


@pytest.fixture
def pair(new_client):
    alice, bob = new_client("alice"), new_client("bob")
    conversation, _ = alice.create_conversation([bob.user_id])
    return alice, bob, conversation["conversation_id"]


def test_registration_publishes_a_signed_prekey_and_100_one_time_prekeys(new_client):
    alice = new_client("alice")
    held = server_prekeys(alice)
    spk = protocol.spk_parse(held["signed_prekey"], device=alice.device_id)
    assert (spk.id, held["one_time_count"]) == (1, ONE_TIME_TARGET)
    assert [(r["id"], r["published"], r["held"], r["replaced_at"]) for r in signed_rows(alice)] == [(1, 1, 1, None)]
    # the private key the store holds is the one published
    sealed = alice.store.db.execute("SELECT sealed_private FROM signed_prekeys WHERE id = 1").fetchone()[0]
    assert protocol.x25519_public_of(alice.store.unseal(sealed)) == spk.x25519
    assert sealed != alice.store.unseal(sealed)  # sealed in the store, like every secret
    assert one_time_ids(alice) == set(OneTimePrekey.objects.filter(device__device_id=alice.device_id)
                                       .values_list("prekey_id", flat=True)) and len(one_time_ids(alice)) == 100
    assert abs(alice.store.meta("first_spk_published_at") - time.time()) < 60
    # a second device, registered by `device add`, publishes its own
    laptop = new_client.add_device(alice, "laptop")
    held = server_prekeys(laptop)
    assert protocol.spk_parse(held["signed_prekey"], device=laptop.device_id).id == 1
    assert held["one_time_count"] == ONE_TIME_TARGET
    assert alice.prekeys()["server"] == {"signed_prekey_id": 1, "one_time_count": 100}


def test_the_signed_prekey_is_rotated_after_7_days_and_its_private_key_erased_after_the_window(new_client):
    alice = new_client("alice")
    age_signed_prekeys(alice, SIGNED_PREKEY_ROTATE_S - 3600)  # 6 days 23 h: not yet
    alice.maintain_prekeys()
    assert [r["id"] for r in signed_rows(alice)] == [1]
    age_signed_prekeys(alice, 3600)  # 7 days
    alice.maintain_prekeys()
    rows = signed_rows(alice)
    assert [(r["id"], r["held"], r["replaced_at"] is not None) for r in rows] == [(1, 1, True), (2, 1, False)]
    assert protocol.spk_parse(server_prekeys(alice)["signed_prekey"], device=alice.device_id).id == 2
    # the replaced one stays for the client's window (a message wrapped to it may still come), then goes
    age_signed_prekeys(alice, OLD_SIGNED_PREKEY_KEEP_S - 3600)  # (this ages the new one too: it rotates again)
    alice.maintain_prekeys()
    assert signed_rows(alice)[0]["held"] == 1
    age_signed_prekeys(alice, 3600)
    alice.maintain_prekeys()
    rows = signed_rows(alice)
    assert [(r["id"], r["held"]) for r in rows] == [(1, 0), (2, 1), (3, 1)]
    assert alice.store.db.execute("SELECT sealed_private FROM signed_prekeys WHERE id = 1").fetchone()[0] is None
    assert protocol.spk_parse(server_prekeys(alice)["signed_prekey"], device=alice.device_id).id == 3


def test_one_time_prekeys_are_refilled_at_start_when_fewer_than_20_remain(new_client, tmp_path):
    alice, bob = new_client("alice"), new_client("bob")
    for _ in range(ONE_TIME_TARGET - ONE_TIME_LOW):  # 80 claims: 20 left, not low yet
        alice.call("POST", "/dms/prekeys/claim", json={"devices": [bob.device_id]})
    reopened = Client.open(bob.store.path.parent, PASSPHRASE, transport=bob.transport)
    reopened.sync()
    assert server_prekeys(bob)["one_time_count"] == ONE_TIME_LOW
    reopened.close()
    alice.call("POST", "/dms/prekeys/claim", json={"devices": [bob.device_id]})  # 19
    reopened = Client.open(bob.store.path.parent, PASSPHRASE, transport=bob.transport)
    reopened.sync()  # a start: the supply is checked, and topped up to 100
    assert server_prekeys(bob)["one_time_count"] == ONE_TIME_TARGET
    assert len(one_time_ids(bob)) == ONE_TIME_TARGET + 81  # those claimed stay until a delivery uses them
    assert max(one_time_ids(bob)) == 181  # new ids, above every earlier one
    reopened.close()


def test_a_v2_message_is_read_and_its_one_time_private_key_erased_at_the_ack(pair):
    alice, bob, cid = pair
    sent = alice.send(cid, "hello bob")
    assert sent.key_wraps == {"v1": 0, "v2": 1}
    wrap = delivery(sent.message_id, bob).key_wrap
    assert (wrap["v"], wrap["signed_prekey_id"]) == (2, 1) and wrap["one_time_id"] in one_time_ids(bob)
    assert bob.sync().accepted == 1
    assert [m["body"] for m in bob.history(cid)] == ["hello bob"]
    assert wrap["one_time_id"] not in one_time_ids(bob) and len(one_time_ids(bob)) == 99
    assert delivery(sent.message_id, bob).acked_at is not None
    # the reply: alice's prekeys, claimed by bob
    reply = bob.send(cid, "hi alice")
    alice_wrap = delivery(reply.message_id, alice).key_wrap
    assert alice.sync().accepted == 1 and alice_wrap["one_time_id"] not in one_time_ids(alice)


def test_a_wrap_that_does_not_open_keeps_its_one_time_key_and_the_wrap_sent_again_opens(pair):
    """§6b: a one-time key goes at the ACK of a delivery whose wrap used it; a wrap that does not open
    has not used it. A server corrupting one delivery's wrap must not erase the key the stored wrap
    (sent again until bob holds the key) names, or every later message to bob fails until alice's
    sender key is replaced."""
    alice, bob, cid = pair
    sent = alice.send(cid, "hello bob")
    d = delivery(sent.message_id, bob)
    one_time_id = d.key_wrap["one_time_id"]
    d.wrap_nonce = protocol.b64e(bytes(12))  # the server corrupts the wrap: it does not open
    d.save()
    report = bob.sync()
    assert (report.accepted, report.failed) == (0, 1) and bob.failures()[-1]["reason"] == "bad_key_wrap"
    assert delivery(sent.message_id, bob).acked_at is not None  # ACKed as failed
    assert one_time_id in one_time_ids(bob)  # not used by a wrap that did not open
    again = alice.send(cid, "hello again")
    assert delivery(again.message_id, bob).key_wrap["one_time_id"] == one_time_id  # the stored wrap
    assert bob.sync().accepted == 1
    assert [m["body"] for m in bob.history(cid)] == ["hello again"]
    assert one_time_id not in one_time_ids(bob)  # used now: erased at that ACK
    assert bob.sync().accepted == 0 and alice.send(cid, "and again") and bob.sync().accepted == 1


def test_a_wrap_that_opened_for_a_message_failing_a_later_check_leaves_its_key_held(pair):
    """The wrap opened (its one-time key goes at the ACK) but the message failed a later check (here
    too old): bob keeps the key, authenticated to alice's device by the static DH term, so the same
    wrap sent again, naming the erased one-time key, still opens."""
    alice, bob, cid = pair
    first = alice.send(cid, "one")
    w1 = delivery(first.message_id, bob).key_wrap
    key = alice.store.unseal(alice.store.db.execute("SELECT sealed_key FROM sender_keys WHERE key_id = ?",
                                                    (first.key_id,)).fetchone()[0])
    delivery(first.message_id, bob).delete()  # bob never gets "one"; instead, with the same key and wrap:
    view = alice.conversation(cid)
    message_id = str(uuid.uuid4())
    old = int((time.time() - (REPLAY_WINDOW_DAYS + 1) * DAY_S) * 1000)
    sealed = crypto.seal(device=alice.device, conversation_id=cid, epoch=view.epoch, message_id=message_id,
                         group_key=key, participants_sha256=view.participants_sha256,
                         plaintext=crypto.plaintext_encode(body="old", sent_at=old, seq=1))
    alice.call("POST", "/dms/send", json={
        "message_id": message_id, "conversation_id": cid, "epoch": view.epoch, "participants_sha256":
        view.participants_sha256, "retention": view.retention, **sealed,
        "recipients": [{"device_id": bob.device_id, "key_wrap": w1}]})
    report = bob.sync()
    assert (report.accepted, report.failed) == (0, 1) and bob.failures()[-1]["reason"] == "too_old"
    assert w1["one_time_id"] not in one_time_ids(bob)  # the wrap opened: used, erased at the ACK
    again = alice.send(cid, "two")
    assert delivery(again.message_id, bob).key_wrap == w1
    assert bob.sync().accepted == 1
    assert [m["body"] for m in bob.history(cid)] == ["two"]


def test_a_wrap_is_sent_again_as_it_was_until_the_device_holds_the_key(lying, new_client):
    """Prekeys are claimed once per new wrap: a re-sent wrap is the stored one,
    and the recipient opens it with the key it already holds once the one-time
    prekey it used is erased."""
    alice, bob = new_client("alice", transport=lying), new_client("bob")
    cid = alice.create_conversation([bob.user_id])[0]["conversation_id"]
    first, second = alice.send(cid, "one"), alice.send(cid, "two")
    claims = [r for r in lying.requests if r.url.path.endswith("/dms/prekeys/claim")]
    assert len(claims) == 1 and json.loads(claims[0].content)["devices"] == [bob.device_id]
    w1, w2 = delivery(first.message_id, bob).key_wrap, delivery(second.message_id, bob).key_wrap
    assert w1 == w2 and w1["v"] == 2
    assert bob.sync(limit=1).accepted == 2  # one per page: the first ACK erases the one-time key the second names
    assert w1["one_time_id"] not in one_time_ids(bob)
    assert [m["body"] for m in bob.history(cid)] == ["one", "two"]
    # alice cannot see bob's receipt before a probe (WRAP_PROBE_S): the stored wrap again, still no claim
    third = alice.send(cid, "three")
    assert delivery(third.message_id, bob).key_wrap == w1
    assert len([r for r in lying.requests if r.url.path.endswith("/dms/prekeys/claim")]) == 1
    assert bob.sync().accepted == 1


def test_after_a_probe_the_stored_wrap_is_sent_again_not_a_new_claim(lying, new_client):
    alice, bob = new_client("alice", transport=lying), new_client("bob")
    cid = alice.create_conversation([bob.user_id])[0]["conversation_id"]
    first = alice.send(cid, "one")
    with alice.store.transaction() as db:  # a minute later: the next send probes (no wrap for bob)
        db.execute("UPDATE sender_keys SET probed_at = probed_at - 3600")
    second = alice.send(cid, "two")
    assert second.retries == ["missing_key_wraps"]  # bob never ACKed: the server asks for his wrap
    assert delivery(second.message_id, bob).key_wrap == delivery(first.message_id, bob).key_wrap
    assert len([r for r in lying.requests if r.url.path.endswith("/dms/prekeys/claim")]) == 1
    assert bob.sync().accepted == 2


def test_a_wrap_naming_a_prekey_this_device_does_not_hold_is_rejected(pair):
    alice, bob, cid = pair
    sent = alice.send(cid, "lost")
    one_time_id = delivery(sent.message_id, bob).key_wrap["one_time_id"]
    with bob.store.transaction() as db:
        db.execute("DELETE FROM one_time_prekeys WHERE id = ?", (one_time_id,))
    report = bob.sync()
    assert (report.accepted, report.failed) == (0, 1)
    failure = bob.failures()[-1]
    assert failure["reason"] == "unknown_prekey" and f"one-time prekey {one_time_id}" in failure["detail"]
    shown = [i for i in bob.take_unshown() if i["type"] == "failed"]
    assert shown and shown[0]["reason"] == "unknown_prekey"
    # the stored wrap is sent again (bob never held the key): it still names the erased one-time prekey
    again = alice.send(cid, "lost again")
    assert delivery(again.message_id, bob).key_wrap == delivery(sent.message_id, bob).key_wrap
    bob.sync()
    assert bob.failures()[-1]["reason"] == "unknown_prekey" and f"one-time prekey {one_time_id}" in failure["detail"]
    # the same for a signed prekey erased after its window: a new sender key, so a new wrap
    with alice.store.transaction() as db:
        db.execute("UPDATE sender_keys SET used = ?", (crypto.MAX_KEY_USES,))
    new_wrap = delivery(alice.send(cid, "lost too").message_id, bob).key_wrap
    assert new_wrap["one_time_id"] != one_time_id and new_wrap["one_time_id"] in one_time_ids(bob)
    with bob.store.transaction() as db:
        db.execute("UPDATE signed_prekeys SET sealed_private = NULL WHERE id = ?", (new_wrap["signed_prekey_id"],))
    bob.sync()
    assert bob.failures()[-1]["reason"] == "unknown_prekey" and "erased" in bob.failures()[-1]["detail"]


def _rewrite_claims(lying, change):
    def rewrite(request: httpx.Request, forward):
        if not request.url.path.endswith("/dms/prekeys/claim"):
            return None
        response = forward(request)
        body = response.json()
        for entry in body["prekeys"]:
            change(entry)
        return httpx.Response(200, json=body)
    lying.rewrite = rewrite


@pytest.mark.parametrize("tamper", ["other_key", "other_device", "bad_signature"])
def test_a_signed_prekey_that_does_not_verify_is_refused_never_replaced_by_v1(new_client, lying, tamper):
    alice, bob, carol = new_client("alice", transport=lying), new_client("bob"), new_client("carol")
    cid = alice.create_conversation([bob.user_id])[0]["conversation_id"]
    carol_spk = server_prekeys(carol)["signed_prekey"]

    def change(entry):
        spk = entry["signed_prekey"]
        if tamper == "other_key":  # the server's own key in bob's signed prekey
            spk["x25519"] = protocol.b64e(protocol.x25519_keypair()[1])
        elif tamper == "other_device":  # carol's genuine one, for bob
            entry["signed_prekey"] = carol_spk
        else:
            spk["signature"] = protocol.b64e(bytes(64))
    _rewrite_claims(lying, change)
    sends_before = sum(r.url.path.endswith("/dms/send") for r in lying.requests)
    with pytest.raises(ClientError) as exc:
        alice.send(cid, "not to be sent")
    assert exc.value.code == "invalid_prekey"
    assert [d["device_id"] for d in exc.value.extra["devices"]] == [bob.device_id]
    assert sum(r.url.path.endswith("/dms/send") for r in lying.requests) == sends_before  # nothing sent
    events = [i for i in alice.take_unshown() if i.get("kind") == "invalid_prekey"]
    assert events and events[0]["device_id"] == bob.device_id
    line = item_text(events[0], Names())  # as `dm read` prints it
    assert f"! WARNING device {bob.device_id}: the server handed out no usable prekey" in line
    assert line.endswith(f"({events[0]['reason']})")
    lying.rewrite = None
    assert alice.send(cid, "now it is").key_wraps == {"v1": 0, "v2": 1}


def test_withheld_prekeys_give_a_v1_wrap_which_the_upgraded_receiver_refuses(new_client, lying):
    alice, bob = new_client("alice", transport=lying), new_client("bob")
    cid = alice.create_conversation([bob.user_id])[0]["conversation_id"]

    def withhold(entry):
        entry["signed_prekey"] = entry["one_time"] = None
    _rewrite_claims(lying, withhold)
    fresh = alice.send(cid, "within the first day")
    assert fresh.key_wraps == {"v1": 1, "v2": 0} and "v" not in delivery(fresh.message_id, bob).key_wrap
    assert bob.sync().accepted == 1  # bob published a minute ago: a sender may not have seen it yet
    bob.store.meta_set_many({"first_spk_published_at": int(time.time()) - DAY_S - 60})
    with alice.store.transaction() as db:  # a new sender key, so a new (withheld) wrap
        db.execute("UPDATE sender_keys SET used = ?", (crypto.MAX_KEY_USES,))
    late = alice.send(cid, "downgraded")
    assert late.key_wraps == {"v1": 1, "v2": 0}
    report = bob.sync()
    assert (report.accepted, report.failed) == (0, 1)
    failure = [i for i in bob.take_unshown() if i["type"] == "failed"][-1]
    assert (failure["message_id"], failure["reason"]) == (late.message_id, "downgraded_key_wrap")
    assert "withheld" in failure["detail"] and "24 h" in failure["detail"]
    assert "downgraded" not in [m["body"] for m in bob.history(cid)]
    assert delivery(late.message_id, bob).acked_at is not None  # ACKed as failed


def test_a_v1_only_client_and_an_upgraded_one_talk_both_ways(new_client, inproc, tmp_path):
    alice = new_client("alice")
    old = Client.init(tmp_path / "old", PASSPHRASE, server=inproc.url, name="old", kdf="min",
                      transport=inproc.transport, legacy=True)
    try:
        assert server_prekeys(old) == {"signed_prekey": None, "one_time_count": 0}
        cid = alice.create_conversation([old.user_id])[0]["conversation_id"]
        to_old = alice.send(cid, "to the old client")
        assert to_old.key_wraps == {"v1": 1, "v2": 0}  # it has no signed prekey
        assert old.sync().accepted == 1
        from_old = old.send(cid, "from the old client")
        assert from_old.key_wraps == {"v1": 1, "v2": 0}  # it never claims
        assert alice.sync().accepted == 1
        assert [m["body"] for m in alice.history(cid)] == ["to the old client", "from the old client"]
        assert old.store.db.execute("SELECT count(*) FROM signed_prekeys").fetchone()[0] == 0
    finally:
        old.close()
    # its store, opened by the upgraded client: published at the first sync (the upgrade path)
    upgraded = Client.open(tmp_path / "old", PASSPHRASE, transport=inproc.transport, legacy=False)
    try:
        upgraded.sync()
        held = server_prekeys(upgraded)
        assert protocol.spk_parse(held["signed_prekey"], device=upgraded.device_id).id == 1
        assert held["one_time_count"] == ONE_TIME_TARGET
        with alice.store.transaction() as db:
            db.execute("UPDATE sender_keys SET used = ?", (crypto.MAX_KEY_USES,))
        assert alice.send(cid, "now v2").key_wraps == {"v1": 0, "v2": 1}
        assert upgraded.sync().accepted == 1
    finally:
        upgraded.close()


def test_a_group_and_every_other_device_get_v2_wraps(new_client):
    alice, bob, carol = new_client("alice"), new_client("bob"), new_client("carol")
    alice_laptop, bob_laptop = new_client.add_device(alice, "laptop"), new_client.add_device(bob, "laptop")
    cid = alice.create_conversation([bob.user_id, carol.user_id])[0]["conversation_id"]
    sent = alice.send(cid, "to all")
    assert sent.key_wraps == {"v1": 0, "v2": 4}  # bob x2, carol, and alice's laptop
    for device in (bob, bob_laptop, carol, alice_laptop):
        assert delivery(sent.message_id, device).key_wrap["v"] == 2
        device.conversation(cid, refresh=True)
        assert device.sync().accepted == 1
        assert [m["body"] for m in device.history(cid)] == ["to all"]
    reply = bob_laptop.send(cid, "from bob's laptop")
    assert reply.key_wraps == {"v1": 0, "v2": 4}
    for device in (alice, alice_laptop, bob, carol):
        assert device.sync().accepted == 1


def test_a_sender_key_is_replaced_after_1000_messages_and_after_7_days(pair):
    alice, bob, cid = pair
    first = alice.send(cid, "1").key_id
    with alice.store.transaction() as db:
        db.execute("UPDATE sender_keys SET used = ? WHERE key_id = ?", (crypto.MAX_KEY_USES - 2, first))
    assert alice.send(cid, "999th").key_id == first
    assert alice.send(cid, "1000th").key_id == first
    after_1000 = alice.send(cid, "1001st")
    assert after_1000.key_id != first and after_1000.key_wraps == {"v1": 0, "v2": 1}
    with alice.store.transaction() as db:
        db.execute("UPDATE sender_keys SET created_at = created_at - ? WHERE key_id = ?",
                   (crypto.MAX_KEY_AGE_S - 60, after_1000.key_id))
    assert alice.send(cid, "6 days 23 h 59 min").key_id == after_1000.key_id
    with alice.store.transaction() as db:
        db.execute("UPDATE sender_keys SET created_at = created_at - 60 WHERE key_id = ?", (after_1000.key_id,))
    week = alice.send(cid, "7 days")
    assert week.key_id not in (first, after_1000.key_id)
    assert bob.sync().accepted == 6
    assert [m["body"] for m in bob.history(cid)][-1] == "7 days"


def test_dm_prekeys_shows_the_signed_prekey_and_the_supply(new_client):
    alice = new_client("alice")
    info = alice.prekeys()
    assert [k["id"] for k in info["signed_prekeys"]] == [1] and info["signed_prekeys"][0]["age_days"] < 0.01
    assert (info["one_time_private_keys"], info["server"]["one_time_count"]) == (100, 100)
    assert info["legacy"] is False and info["first_published_at"] is not None


def test_stores_signed_prekey_matches_the_servers_and_no_private_key_leaves_the_store(new_client):
    """What the server stores is public: none of the store's prekey private keys is in it."""
    alice = new_client("alice")
    privates = [alice.store.unseal(r[0]) for r in alice.store.db.execute(
        "SELECT sealed_private FROM one_time_prekeys UNION ALL SELECT sealed_private FROM signed_prekeys")]
    stored = [SignedPrekey.objects.get(device__device_id=alice.device_id).wire] + [
        o.x25519 for o in OneTimePrekey.objects.filter(device__device_id=alice.device_id)]
    for priv in privates:
        assert protocol.b64e(priv) not in " ".join(stored)
    assert {protocol.b64e(protocol.x25519_public_of(p)) for p in privates[:100]} == {
        o.x25519 for o in OneTimePrekey.objects.filter(device__device_id=alice.device_id)}


def test_without_one_time_prekeys_the_wrap_opens_until_the_signed_prekey_is_erased(new_client):
    """A wrap made when the server had no one-time prekey left rests on the
    signed prekey alone: the device (seed and store) opens it through rotation
    and the window after it, and never once the private key is erased."""
    alice, bob, carol = new_client("alice"), new_client("bob"), new_client("carol")
    for _ in range(ONE_TIME_TARGET):
        carol.call("POST", "/dms/prekeys/claim", json={"devices": [bob.device_id]})
    cid = alice.create_conversation([bob.user_id])[0]["conversation_id"]
    sent = alice.send(cid, "no one-time prekey left")
    wrap = delivery(sent.message_id, bob).key_wrap
    assert (wrap["v"], wrap["signed_prekey_id"], wrap["one_time_id"]) == (2, 1, None)
    assert bob.sync().accepted == 1

    def opens() -> bool:
        candidates = [protocol.x25519_private(bob.device.seed)] + [bob.store.unseal(r[0]) for r in bob.store.db.execute(
            "SELECT sealed_private FROM signed_prekeys WHERE sealed_private IS NOT NULL UNION ALL "
            "SELECT sealed_private FROM one_time_prekeys")]
        for priv in candidates:
            try:
                protocol.key_unwrap_v2(signed_prekey_priv=priv, one_time_priv=None, recipient_device=bob.device_id,
                                       sender_device=alice.device_id, conversation_id=cid, epoch=sent.epoch, wrap=wrap)
                return True
            except protocol.ProtocolError:
                pass
        return False
    assert opens()  # after the ACK: the signed prekey is still current
    age_signed_prekeys(bob, SIGNED_PREKEY_ROTATE_S)
    bob.maintain_prekeys()
    assert opens()  # rotated, but kept for the window
    age_signed_prekeys(bob, OLD_SIGNED_PREKEY_KEEP_S)
    bob.maintain_prekeys()
    assert not opens()
    assert [m["body"] for m in bob.history(cid)] == ["no one-time prekey left"]  # the store kept the key itself


def test_a_retry_within_one_send_claims_no_prekeys_again(new_client, lying):
    """`mismatched_devices` makes the sender look at the directory again and
    plan anew: the wraps it made for this key are kept, no prekey is claimed twice."""
    alice, bob = new_client("alice", transport=lying), new_client("bob")
    bob_laptop = new_client.add_device(bob, "laptop")
    cid = alice.create_conversation([bob.user_id])[0]["conversation_id"]
    answered = []

    def once(request: httpx.Request, forward):
        if request.url.path.endswith("/dms/send") and not answered:
            answered.append(request)
            return httpx.Response(409, json={"error": "mismatched_devices", "detail": "(the test)", "missing": [],
                                             "extra": []})
        return None
    lying.rewrite = once
    sent = alice.send(cid, "to both")
    assert sent.retries == ["mismatched_devices"] and sent.key_wraps == {"v1": 0, "v2": 2}
    claims = [json.loads(r.content)["devices"] for r in lying.requests if r.url.path.endswith("/dms/prekeys/claim")]
    assert claims == [sorted([bob.device_id, bob_laptop.device_id])]
    assert server_prekeys(bob)["one_time_count"] == ONE_TIME_TARGET - 1
    assert bob.sync().accepted == 1 and bob_laptop.sync().accepted == 1


@pytest.mark.parametrize("lie", ["none", "older"])
def test_a_device_seen_with_a_signed_prekey_is_never_wrapped_v1_or_to_an_older_one(new_client, lying, lie):
    alice, bob = new_client("alice", transport=lying), new_client("bob")
    cid = alice.create_conversation([bob.user_id])[0]["conversation_id"]
    first_spk = server_prekeys(bob)["signed_prekey"]
    age_signed_prekeys(bob, SIGNED_PREKEY_ROTATE_S)
    bob.maintain_prekeys()  # signed prekey 2
    assert alice.send(cid, "to prekey 2").key_wraps == {"v1": 0, "v2": 1}

    def change(entry):
        entry["signed_prekey"] = None if lie == "none" else first_spk
    _rewrite_claims(lying, change)
    with alice.store.transaction() as db:  # a new sender key: a new wrap, a new claim
        db.execute("UPDATE sender_keys SET used = ?", (crypto.MAX_KEY_USES,))
    sends_before = sum(r.url.path.endswith("/dms/send") for r in lying.requests)
    with pytest.raises(ClientError) as exc:
        alice.send(cid, "downgraded by the sender's server")
    assert exc.value.code == "invalid_prekey"
    reason = exc.value.extra["devices"][0]["reason"]
    assert ("handed out this device's signed prekey 2 before" if lie == "none" else "older than 2") in reason
    assert sum(r.url.path.endswith("/dms/send") for r in lying.requests) == sends_before


def test_a_one_time_key_used_by_a_delivery_whose_ack_never_got_through_goes_at_the_next_sync(lying, new_client):
    alice, bob = new_client("alice"), new_client("bob", transport=lying)
    cid = alice.create_conversation([bob.user_id])[0]["conversation_id"]
    sent = alice.send(cid, "acked late")
    one_time_id = delivery(sent.message_id, bob).key_wrap["one_time_id"]

    def no_ack(request: httpx.Request, forward):
        if request.url.path.endswith("/dms/ack"):
            return httpx.Response(503, json={"error": "unavailable", "detail": "(the test)"})
        return None
    lying.rewrite = no_ack
    with pytest.raises(Exception):
        bob.sync()
    assert one_time_id in one_time_ids(bob)  # not ACKed: kept (marked)
    assert delivery(sent.message_id, bob).acked_at is None
    lying.rewrite = None
    bob.sync()  # the message comes again; bob holds its key already
    assert one_time_id not in one_time_ids(bob)
    assert delivery(sent.message_id, bob).acked_at is not None
    assert [m["body"] for m in bob.history(cid)] == ["acked late"]


def test_a_server_before_v12_is_asked_for_prekeys_once_not_at_every_sync_and_send(new_client, lying):
    alice, bob = new_client("alice"), new_client("bob")
    cid = alice.create_conversation([bob.user_id])[0]["conversation_id"]

    def older_server(request: httpx.Request, forward):  # 404 from a server without §6b
        if request.url.path.endswith(("/devices/prekeys", "/dms/prekeys/claim")):
            return httpx.Response(404, json={"error": "not_found", "detail": "no such endpoint"})
        return None
    lying.rewrite = older_server
    started = Client.open(alice.store.path.parent, PASSPHRASE, transport=lying)  # a start: the supply is asked for
    try:
        for text in ("one", "two"):
            with started.store.transaction() as db:  # a new sender key each time: a new wrap is needed
                db.execute("UPDATE sender_keys SET used = ?", (crypto.MAX_KEY_USES,))
            started.sync()
            assert started.send(cid, text).key_wraps == {"v1": 1, "v2": 0}
    finally:
        started.close()
    asked = [r.url.path.rsplit("/", 2)[-2:] for r in lying.requests
             if r.url.path.endswith(("/devices/prekeys", "/dms/prekeys/claim"))]
    assert asked == [["devices", "prekeys"]]  # once, at the start; no claim after that 404 either
    assert bob.sync().accepted == 2
