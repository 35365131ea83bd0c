"""Send handles the server's answers by itself (§7), against the real server
application in this process: stale_epoch, mismatched_devices, untrusted
devices, retention_changed, missing_key_wraps, 429 and a lost response —
every retry with the same message_id."""
import time
import types

import httpx
import pytest

from devices.models import Device, User
from dmclient import ClientError
from dms.models import Delivery, PendingDm, ServerSettings, UsedMessageId


@pytest.fixture
def pair(new_client):
    alice, bob = new_client("alice"), new_client("bob")
    conversation, _ = alice.create_conversation([bob.user_id])
    return alice, bob, conversation["conversation_id"]


def bodies(client) -> list[str]:
    client.sync()
    return [i["body"] for i in client.take_unshown() if i["type"] == "message"]


def test_stale_epoch_refreshes_and_rotates_to_a_fresh_key(pair, new_client):
    alice, bob, cid = pair
    first = alice.send(cid, "one")
    bob_phone = new_client.add_device(bob, "phone")  # registration bumps the epoch
    second = alice.send(cid, "two")
    assert second.retries == ["stale_epoch"]
    assert (first.epoch, second.epoch) == (1, 2)
    assert second.key_id != first.key_id
    assert second.message_id == UsedMessageId.objects.get(message_id=second.message_id).response["message_id"]
    assert [r[0] for r in alice.store.db.execute("SELECT epoch FROM sender_keys ORDER BY epoch")] == [1, 2]
    assert bodies(bob_phone) == ["two"]  # a new device never holds a key used before it existed
    assert bodies(bob) == ["one", "two"]


def test_mismatched_devices_refreshes_the_directory(pair, new_client):
    alice, bob, cid = pair
    alice.send(cid, "one")
    bob_phone = new_client.add_device(bob, "phone")
    alice.conversations()  # the new epoch is known, but the directory cache is not refreshed
    sent = alice.send(cid, "two")
    assert sent.retries == ["mismatched_devices"]
    assert sent.recipients == 2
    assert bodies(bob_phone) == ["two"]


def test_device_whose_certificate_fails_is_never_used(pair, new_client):
    """The server claims bob has a device that bob's master never certified."""
    alice, bob, cid = pair
    alice.send(cid, "one")
    mallory = new_client("mallory")
    Device.objects.filter(device_id=mallory.device_id).update(user=User.objects.get(username=bob.user_id))
    with pytest.raises(ClientError) as exc:
        alice.send(cid, "two")
    assert exc.value.code == "untrusted_device"
    assert exc.value.extra["missing"] == [mallory.device_id]
    assert PendingDm.objects.count() == 1  # nothing sent to it
    [event] = [i for i in alice.take_unshown() if i.get("kind") == "untrusted_device"]
    assert (event["user_id"], event["device_id"]) == (bob.user_id, mallory.device_id)


def test_retention_changed_asks_before_sending(pair):
    alice, bob, cid = pair
    alice.send(cid, "one")
    bob.set_retention(cid, {"policy": "burn_on_read", "ttl_days": None})
    with pytest.raises(ClientError) as exc:
        alice.send(cid, "two")
    assert exc.value.code == "retention_changed"
    assert exc.value.extra["retention"] == {"policy": "burn_on_read", "ttl_days": None}
    assert PendingDm.objects.count() == 1
    asked = []
    sent = alice.send(cid, "two", confirm_retention=lambda old, new: asked.append((old, new)) or True)
    assert asked == [({"policy": "ttl", "ttl_days": 14}, {"policy": "burn_on_read", "ttl_days": None})]
    assert (sent.retries, sent.policy, sent.seq) == (["retention_changed"], "burn_on_read", 2)  # the refusal kept no seq
    assert alice.send(cid, "three").retries == []  # accepted once, not asked again
    refused = []
    bob.set_retention(cid, {"policy": "ttl", "ttl_days": 3})
    with pytest.raises(ClientError):
        alice.send(cid, "four", confirm_retention=lambda old, new: refused.append(new) and False)
    assert refused == [{"policy": "ttl", "ttl_days": 3}]


def wrapped(message_id: str) -> bool:
    return Delivery.objects.get(message_id=message_id).wrapped_key is not None


def test_wraps_are_repeated_until_a_probe_shows_the_recipient_holds_the_key(pair, monkeypatch):
    alice, bob, cid = pair
    first = alice.send(cid, "one")
    second = alice.send(cid, "two")  # bob has not ACKed; within the probe interval the wrap is simply repeated
    assert (second.retries, second.key_id, wrapped(second.message_id)) == ([], first.key_id, True)
    monkeypatch.setattr("dmclient.client.WRAP_PROBE_S", 0)
    third = alice.send(cid, "three")  # a probe: no wrap, the server names bob, the wrap is added
    assert (third.retries, wrapped(third.message_id)) == (["missing_key_wraps"], True)
    assert bodies(bob) == ["one", "two", "three"]
    fourth = alice.send(cid, "four")  # bob ACKed: the probe succeeds without a wrap
    assert (fourth.retries, wrapped(fourth.message_id)) == ([], False)
    monkeypatch.setattr("dmclient.client.WRAP_PROBE_S", 3600)
    fifth = alice.send(cid, "five")  # known to hold the key: no wrap, no probe needed
    assert (fifth.retries, wrapped(fifth.message_id)) == ([], False)
    assert bodies(bob) == ["four", "five"]


def test_429_waits_retry_after_and_sends_the_same_message(pair, monkeypatch):
    alice, bob, cid = pair
    ServerSettings.objects.update_or_create(pk=1, defaults={"send_rate_per_device": 1})
    alice.send(cid, "one")
    # The server's rate-limit clock, moved to 1.5 s before the end of its 60 s window.
    offset = 58.5 - time.time() % 60
    monkeypatch.setattr("decentcom.ratelimit.time", types.SimpleNamespace(time=lambda: time.time() + offset))
    waits = []
    alice.api.on_wait = lambda code, seconds: waits.append((code, seconds, time.monotonic()))
    sent = alice.send(cid, "two")
    assert [(code, seconds) for code, seconds, _ in waits] == [("rate_limited", 2)]
    assert sent.retries == []  # the Api layer waited; the request was never refused for good
    assert UsedMessageId.objects.filter(message_id=sent.message_id).count() == 1
    assert bodies(bob) == ["one", "two"]


class LoseFirstSendResponse(httpx.BaseTransport):
    """The network between client and server: the first send reaches the
    server, but its response is lost."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/dms/send") and not self.lost:
            self.lost += 1
            raise httpx.ReadError("connection reset", request=request)
        return response


def test_lost_response_is_retried_with_the_same_body(pair, monkeypatch):
    alice, bob, cid = pair
    network = LoseFirstSendResponse(alice.api.http._transport)
    alice.api.http._transport = network
    monkeypatch.setattr("dmclient.client.NETWORK_BACKOFF_S", (0, 0))
    sent = alice.send(cid, "once only")
    assert network.lost == 1 and sent.retries == ["network"]
    assert PendingDm.objects.filter(message_id=sent.message_id).count() == 1
    assert bodies(bob) == ["once only"]


def test_new_group_member_gets_the_next_epoch_key_and_nothing_before(new_client):
    alice, bob, carol = (new_client(n) for n in ("alice", "bob", "carol"))
    group, _ = alice.create_conversation([bob.user_id, carol.user_id])
    cid = group["conversation_id"]
    alice.send(cid, "before dave")
    assert bodies(carol) == ["before dave"]
    dave = new_client("dave")
    alice.add_participants(cid, [dave.user_id])
    sent = alice.send(cid, "welcome dave")
    assert sent.epoch == 2 and sent.recipients == 3
    assert bodies(dave) == ["welcome dave"]
    carol.sync()
    shown = carol.take_unshown()
    assert [i["body"] for i in shown if i["type"] == "message"] == ["welcome dave"]
    membership = [i for i in shown if i.get("kind") == "membership"]
    assert [(m["added"], m["removed"], m["epoch"]) for m in membership] == [([dave.user_id], [], 2)]
