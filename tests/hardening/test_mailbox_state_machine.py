"""Mailbox invariants as a hypothesis state machine (issue 7).

Random sequences of: register and revoke devices (some with certificates that
expire), create conversations, add and remove participants, change retention,
send (valid, and broken in each way §7 names), sync, ack (own and foreign ids,
as failed too), let time pass and purge. Everything goes through the real API
with real keys and real crypto (tests.factories), and the same steps are
applied to `Mailbox`, a model written from the protocol. After every step:

- every active device is offered exactly the messages sent to it that it has
  not ACKed and that have not expired, oldest first (and nothing else: not to
  a non-recipient, not to a device added later);
- a revoked or expired device gets nothing at all (its token is refused);
- the message rows are exactly those whose policy keeps them, with their
  deliveries; no delivery outlives its message;
- conversations, epochs, key receipts and remembered message ids match.

Every send is answered as `Mailbox.predict_send` says, check by check in the
order of §7, and every ack as `Mailbox.ack` says.

Time: the server reads the clock through `django.utils.timezone.now`, which
the test replaces with a simulated clock that stands still between steps and
moves only when the `time_passes` rule says so. Created-at, expiry, session
and certificate times then all agree with the model's clock, and boundaries
(a message expiring exactly now) are reached exactly. The clock is the only
thing replaced; it is outside the system. Sessions live 24 h of simulated
time, so devices log in again after time passes, as real clients would.
"""
import datetime as dt
import os
import uuid

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition, rule,
                                 run_state_machine_as_test)
from rest_framework.test import APIClient

from dmclient import protocol
from devices.models import Device
from dms.models import Conversation, Delivery, KeyReceipt, PendingDm, UsedMessageId
from dms.models import Mailbox as PendingCounter
from dms.selectors import dm_list_pending_for_device, server_settings_get
from dms.services import dm_purge_expired
from tests.factories import build_send, login, make_person, verify
from tests.hardening.mailbox_model import Mailbox, MConversation, MDevice, Outcome

pytestmark = pytest.mark.django_db

HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)
MAX_UNDELIVERED_DAYS = 10
PENDING_QUOTA = 6
RETENTIONS = [{"policy": "ttl", "ttl_days": 1}, {"policy": "ttl", "ttl_days": 3},
              {"policy": "ttl", "ttl_days": 20}, {"policy": "burn_on_read", "ttl_days": None},
              {"policy": "permanent", "ttl_days": None}]
SEND_VARIANTS = ["retry", "reuse_id", "reuse_key", "no_wraps", "stale_epoch", "wrong_participants",
                 "wrong_retention", "missing_recipient", "extra_recipient", "bad_signature", "outsider",
                 "dead_sender"]


class Clock:
    def __init__(self):
        self.now = timezone.now()

    def __call__(self):
        return self.now


def parse(ts: str | None):
    return None if ts is None else dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


class MailboxMachine(RuleBasedStateMachine):
    clock: Clock  # set by the test

    def __init__(self):
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()  # every example starts from the empty database
        self.clock.now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        conf = server_settings_get()
        conf.send_rate_per_device = conf.send_rate_per_user = 0
        conf.challenge_rate_per_ip = 0
        conf.registration_rate_per_user = conf.group_creation_rate_per_user = 0
        conf.max_devices_per_user = 100
        conf.allow_permanent = True
        conf.max_ttl_days = 40
        conf.max_undelivered_days = MAX_UNDELIVERED_DAYS
        conf.pending_quota = PENDING_QUOTA
        conf.save()
        self.model = Mailbox(max_undelivered=dt.timedelta(days=MAX_UNDELIVERED_DAYS), pending_quota=PENDING_QUOTA)
        self.sent_bodies: list[tuple[str, dict, bool]] = []  # (sender, body, signature_ok) of every attempt
        self.stored_bodies: dict[str, dict] = {}  # message id -> the body that stored it
        self.sender_keys: dict[tuple, bytes] = {}  # (conversation, epoch, sender) -> K
        for n_devices in (2, 1, 1, 1):
            self._add_person(n_devices)

    def teardown(self):
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    @property
    def now(self) -> dt.datetime:
        return self.clock.now

    # -- helpers -------------------------------------------------------------------------

    def _add_person(self, n_devices: int) -> None:
        person = make_person(n_devices)
        self.model.people[person.id] = person
        for device in person.devices:
            self.model.register(MDevice(device=device, user_id=person.id))

    def _ordered(self, ids) -> list[str]:
        """`ids` in the order they came to be: keys are random, and a replayed
        example must draw the same things to reproduce."""
        ids = set(ids)
        return [x for x in (*self.model.people, *self.model.devices, *self.model.conversations) if x in ids]

    def _pick(self, data, items, label):
        return data.draw(st.sampled_from(self._ordered(items)), label=label)

    def _active(self) -> list[MDevice]:
        return [d for d in self.model.devices.values() if d.active(self.now)]

    def _expect(self, response, outcome: Outcome, what: str) -> dict:
        body = response.json() if response.content else {}
        assert response.status_code == outcome.status, (what, outcome, response.status_code, body)
        if outcome.error is not None:
            assert body["error"] == outcome.error, (what, body)
            for key, value in outcome.extra.items():
                assert body[key] == value, (what, key, body)
        return body

    @initialize(direct=st.sampled_from(RETENTIONS), group=st.sampled_from(RETENTIONS))
    def first_conversations(self, direct, group):
        alice, bob, carol, _ = self.model.people
        self._create(self.model.devices[self.model.people[alice].device.id], [bob], direct)
        self._create(self.model.devices[self.model.people[alice].device.id], [bob, carol], group)

    # -- devices (§4) ----------------------------------------------------------------------

    @rule(data=st.data(), expires_in=st.sampled_from([None, None, DAY, 5 * DAY, 12 * DAY]))
    def register_device(self, data, expires_in):
        person = self.model.people[self._pick(data, self.model.people, "user")]
        expires_at = None if expires_in is None else self.now + expires_in
        device = person.add_device(expires_at=None if expires_at is None else int(expires_at.timestamp()))
        self.model.register(MDevice(device=device, user_id=person.id, expires_at=expires_at))

    @rule(data=st.data(), by_itself=st.booleans())
    def revoke_device(self, data, by_itself):
        device = self.model.devices[self._pick(data, self.model.devices, "device")]
        if by_itself and device.active(self.now):
            client = device.device.client
        else:
            client = login(self.model.people[device.user_id].master)
        response = client.delete(f"/api/v1/devices/{device.id}")
        assert response.status_code == 204, response.content
        self.model.revoke(device.id, self.now)
        assert device.device.client.post("/api/v1/dms/sync", {}, format="json").status_code == 401

    # -- conversations (§5) -----------------------------------------------------------------

    @rule(data=st.data(), retention=st.sampled_from([None, *RETENTIONS]))
    def create_conversation(self, data, retention):
        creator = self._pick(data, [d.id for d in self._active()], "creator") if self._active() else None
        if creator is None:
            return
        creator = self.model.devices[creator]
        others = self._ordered(set(self.model.people) - {creator.user_id})
        chosen = data.draw(st.lists(st.sampled_from(others), min_size=1, max_size=len(others), unique=True),
                           label="participants")
        self._create(creator, chosen, retention)

    def _create(self, creator: MDevice, chosen: list[str], retention: dict | None) -> None:
        body = {"participants": chosen}
        if retention is not None:
            body["retention"] = retention
        response = creator.device.client.post("/api/v1/dms/conversations", body, format="json")
        participants = set(chosen) | {creator.user_id}
        existing = [c for c in self.model.conversations.values()
                    if c.kind == "direct" and c.participants == participants]
        if existing:
            wire = self._expect(response, Outcome(200), "create existing direct")
            assert wire["conversation_id"] == existing[0].id
            return
        wire = self._expect(response, Outcome(201), "create")
        effective = retention or {"policy": "ttl", "ttl_days": 14}
        self.model.conversations[wire["conversation_id"]] = MConversation(
            id=wire["conversation_id"], kind="direct" if len(participants) == 2 else "group",
            participants=participants, created_by=creator.user_id, retention=dict(effective))

    def _participant_device(self, data, conversation: MConversation) -> MDevice | None:
        candidates = [d.id for d in self._active() if d.user_id in conversation.participants]
        return self.model.devices[self._pick(data, candidates, "actor")] if candidates else None

    @precondition(lambda self: self.model.conversations)
    @rule(data=st.data())
    def add_participants(self, data):
        conversation = self.model.conversations[self._pick(data, self.model.conversations, "conversation")]
        actor = self._participant_device(data, conversation)
        if actor is None:
            return
        add = data.draw(st.lists(st.sampled_from(list(self.model.people)), min_size=1, unique=True), label="add")
        response = actor.device.client.post(f"/api/v1/dms/conversations/{conversation.id}/participants",
                                             {"add": add}, format="json")
        if conversation.kind == "direct":
            self._expect(response, Outcome(409, "direct_conversation"), "add to direct")
            return
        self._expect(response, Outcome(200), "add")
        if set(add) - conversation.participants:
            conversation.participants |= set(add)
            conversation.epoch += 1

    @precondition(lambda self: self.model.conversations)
    @rule(data=st.data())
    def remove_participant(self, data):
        conversation = self.model.conversations[self._pick(data, self.model.conversations, "conversation")]
        actor = self._participant_device(data, conversation)
        if actor is None:
            return
        target = self._pick(data, conversation.participants, "target")
        response = actor.device.client.delete(f"/api/v1/dms/conversations/{conversation.id}/participants/{target}")
        if conversation.kind == "direct":
            self._expect(response, Outcome(409, "direct_conversation"), "remove from direct")
        elif target != actor.user_id and conversation.created_by != actor.user_id:
            self._expect(response, Outcome(403, "forbidden"), "remove by non-creator")
        else:
            self._expect(response, Outcome(204), "remove")
            self.model.remove_participant(conversation.id, target, self.now)

    @precondition(lambda self: self.model.conversations)
    @rule(data=st.data(), retention=st.sampled_from(RETENTIONS))
    def change_retention(self, data, retention):
        conversation = self.model.conversations[self._pick(data, self.model.conversations, "conversation")]
        actor = self._participant_device(data, conversation)
        if actor is None:
            return
        response = actor.device.client.patch(f"/api/v1/dms/conversations/{conversation.id}",
                                             {"retention": retention}, format="json")
        wire = self._expect(response, Outcome(200), "retention")
        assert wire["retention"] == retention and wire["epoch"] == conversation.epoch
        conversation.retention = dict(retention)

    # -- send (§7) --------------------------------------------------------------------------

    @precondition(lambda self: self.model.conversations)
    @rule(data=st.data(), count=st.integers(1, 3))
    def send(self, data, count):
        """Well-formed sends by participants: most are stored, some meet a full mailbox."""
        for _ in range(count):
            conversation = self.model.conversations[self._pick(data, self.model.conversations, "conversation")]
            sender = self._participant_device(data, conversation)
            if sender is not None:
                self._send_variant(data, sender, conversation, "valid")

    @precondition(lambda self: self.model.conversations)
    @rule(data=st.data(), variant=st.sampled_from(SEND_VARIANTS))
    def send_broken(self, data, variant):
        """Each failure of §7 (and retries); none may store anything new."""
        if variant == "retry" and self.sent_bodies:
            sender, body, signature_ok = self.sent_bodies[
                data.draw(st.integers(0, len(self.sent_bodies) - 1), label="retry")]
            self._send(self.model.devices[sender], body, signature_ok=signature_ok)
            return
        conversation = self.model.conversations[self._pick(data, self.model.conversations, "conversation")]
        if variant == "outsider":
            candidates = [d.id for d in self._active() if d.user_id not in conversation.participants]
        elif variant == "dead_sender":
            candidates = [d.id for d in self.model.devices.values() if not d.active(self.now)]
        else:
            candidates = [d.id for d in self._active() if d.user_id in conversation.participants]
        if candidates:
            sender = self.model.devices[self._pick(data, candidates, "sender")]
            self._send_variant(data, sender, conversation, variant)

    def _send_variant(self, data, sender: MDevice, conversation: MConversation, variant: str) -> None:
        wire = conversation.wire()
        recipients = self._ordered(self.model.active_devices_of(conversation.participants, self.now) - {sender.id})
        key_slot = (conversation.id, conversation.epoch, sender.id)
        group_key, wrap_for = None, None
        if variant in ("reuse_key", "no_wraps") and key_slot in self.sender_keys:
            group_key = self.sender_keys[key_slot]
            key_id = protocol.key_id(group_key)
            wrap_for = [] if variant == "no_wraps" else [
                r for r in recipients if (conversation.id, sender.id, key_id, r) not in self.model.receipts]
        elif variant == "stale_epoch":
            wire["epoch"] = data.draw(st.sampled_from([conversation.epoch - 1, conversation.epoch + 1]))
        elif variant == "wrong_participants":
            wire["participants_sha256"] = protocol.participants_sha256(sorted(conversation.participants)[1:])
        elif variant == "wrong_retention":
            wire["retention"] = data.draw(st.sampled_from([r for r in RETENTIONS if r != conversation.retention]))
        elif variant == "missing_recipient" and recipients:
            recipients.remove(data.draw(st.sampled_from(recipients)))
        elif variant == "extra_recipient":
            strangers = self._ordered(set(self.model.devices) - set(recipients) - {sender.id})
            if strangers:
                recipients.append(data.draw(st.sampled_from(strangers)))
        message_id = None
        if variant == "reuse_id" and self.sent_bodies:
            message_id = data.draw(st.sampled_from(self.sent_bodies))[1]["message_id"]
        group_key = group_key or self.sender_keys.get(key_slot) or os.urandom(32)
        body = build_send(sender.device, wire, recipients=recipients, wrap_for=wrap_for, group_key=group_key,
                          message_id=message_id)
        if variant == "bad_signature":
            body["signature"] = protocol.b64e(sender.device.keys.sign(b"something else"))
        outcome = self._send(sender, body, signature_ok=variant != "bad_signature")
        if outcome.status == 201 and wire["epoch"] == conversation.epoch:
            self.sender_keys[key_slot] = group_key  # one sender key per (conversation, epoch), as §6 has it

    def _send(self, sender: MDevice, body: dict, *, signature_ok: bool) -> Outcome:
        outcome = self.model.predict_send(sender=sender.id, body=body, signature_ok=signature_ok, now=self.now)
        response = sender.device.client.post("/api/v1/dms/send", body, format="json")
        answer = self._expect(response, outcome, "send")
        self.sent_bodies.append((sender.id, body, signature_ok))
        if outcome.status == 200:
            assert answer == outcome.extra, "a retry is answered with the first answer"
        if outcome.status == 201:
            for key, value in outcome.extra.items():
                assert answer[key] == value, (key, answer, outcome)
            created_at = parse(answer["created_at"])
            assert created_at == self.now
            expires_at = self.model.expiry(self.model.conversations[body["conversation_id"]].retention, created_at)
            assert parse(answer["expires_at"]) == expires_at
            self.model.apply_send(sender=sender.id, body=body, response=answer, created_at=created_at,
                                  expires_at=expires_at)
            self.stored_bodies[body["message_id"]] = body
        return outcome

    # -- sync and ack (§7) --------------------------------------------------------------------

    @rule(data=st.data(), limit=st.sampled_from([1, 2, 100]))
    def sync(self, data, limit):
        if not self._active():
            return
        device = self.model.devices[self._pick(data, [d.id for d in self._active()], "device")]
        ids, after = [], None
        while True:
            body = {"limit": limit} | ({"after": after} if after else {})
            response = device.device.client.post("/api/v1/dms/sync", body, format="json")
            assert response.status_code == 200, response.content
            page = response.json()
            for message in page["messages"]:
                sent = self.stored_bodies[message["message_id"]]
                own = next(r for r in sent["recipients"] if r["device_id"] == device.id)
                assert message["key_wrap"] == own["key_wrap"] and message["ciphertext"] == sent["ciphertext"]
            ids += [m["message_id"] for m in page["messages"]]
            after = page["cursor"]
            if not page["has_more"]:
                break
        assert ids == self.model.offered(device.id, self.now)
        own = device.device.client.get("/api/v1/devices").json()["devices"]
        assert {d["device_id"]: d["pending_count"] for d in own}[device.id] == len(ids), "§4: waiting for it"

    @rule(data=st.data(), foreign=st.booleans(), unknown=st.booleans(), as_failed=st.booleans(),
          for_another=st.sampled_from([False, False, False, True]))
    def ack(self, data, foreign, unknown, as_failed, for_another):
        if not self._active():
            return
        device = self.model.devices[self._pick(data, [d.id for d in self._active()], "device")]
        offered = self.model.offered(device.id, self.now)
        ids = data.draw(st.lists(st.sampled_from(offered), unique=True), label="ids") if offered else []
        if foreign and self.sent_bodies:
            ids.append(data.draw(st.sampled_from(self.sent_bodies), label="foreign")[1]["message_id"])
        if unknown:
            ids.append(str(uuid.uuid4()))
        failed = ids[: len(ids) // 2] if as_failed else []
        message_ids = [m for m in ids if m not in failed]
        body = {"message_ids": message_ids, "failed": failed}
        if for_another:
            body["device_id"] = self._pick(data, set(self.model.devices) - {device.id}, "other device")
        response = device.device.client.post("/api/v1/dms/ack", body, format="json")
        if for_another:
            assert response.status_code == 403, response.content  # and nothing changed: the invariants say
            return
        assert response.status_code == 200, response.content
        expected = self.model.ack(device_id=device.id, message_ids=message_ids, failed=failed, now=self.now)
        assert response.json() == expected

    # -- time and purge (§8) --------------------------------------------------------------------

    @rule(step=st.sampled_from([HOUR, DAY, 3 * DAY, 10 * DAY, 20 * DAY]))
    def time_passes(self, step):
        self.clock.now += step
        for device in self.model.devices.values():
            if device.active(self.now):
                device.device.client = login(device.device.keys)
            elif not device.revoked:
                # expired, not purged yet: its key is refused, so nothing is offered to it
                assert device.device.client.post("/api/v1/dms/sync", {}, format="json").status_code == 401
                assert verify(APIClient(), device.device.keys).status_code == 403

    @rule(lag=st.sampled_from([dt.timedelta(0), dt.timedelta(0), DAY]))
    def purge(self, lag):
        dm_purge_expired(now=self.now - lag)
        self.model.purge(as_of=self.now - lag, now=self.now)

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def offered_exactly_what_is_pending_and_unexpired(self):
        for device in self.model.devices.values():
            if device.active(self.now):
                row = Device.objects.select_related("user").get(device_id=device.id)
                page = dm_list_pending_for_device(device=row, limit=500, after=None)
                assert [m["message_id"] for m in page["messages"]] == self.model.offered(device.id, self.now), \
                    device.id

    @invariant()
    def rows_exist_exactly_as_long_as_their_policy_says(self):
        stored = {str(mid): (policy, expires_at) for mid, policy, expires_at in
                  PendingDm.objects.values_list("message_id", "policy", "expires_at")}
        assert stored == {m.id: (m.policy, m.expires_at) for m in self.model.messages.values()}
        deliveries = {(str(mid), device_id, acked_at is not None) for mid, device_id, acked_at in
                      Delivery.objects.values_list("message_id", "device__device_id", "acked_at")}
        assert deliveries == {(m.id, d, delivery.acked) for m in self.model.messages.values()
                              for d, delivery in m.deliveries.items()}
        assert not Delivery.objects.exclude(message_id__in=PendingDm.objects.values("message_id")).exists()

    @invariant()
    def pending_counters_match(self):
        """§7 check 11 reads these counters (kept by triggers), not the rows."""
        counters = dict(PendingCounter.objects.values_list("device__device_id", "pending"))
        expected = {d: 0 for d in self.model.devices}
        for m in self.model.messages.values():
            for d, delivery in m.deliveries.items():
                expected[d] += not delivery.acked
        assert {d: counters.get(d, 0) for d in expected} == expected

    @invariant()
    def conversations_receipts_and_used_ids_match(self):
        stored = {str(c.id): (c.epoch, c.participants_sha256, c.retention) for c in Conversation.objects.all()}
        assert stored == {c.id: (c.epoch, c.participants_sha256, c.retention)
                          for c in self.model.conversations.values()}
        receipts = {(str(cid), sender, key_id, recipient) for cid, sender, key_id, recipient in
                    KeyReceipt.objects.values_list("conversation_id", "sender_device__device_id", "key_id",
                                                   "recipient_device__device_id")}
        assert receipts == set(self.model.receipts)
        assert {str(m) for m in UsedMessageId.objects.values_list("message_id", flat=True)} == set(
            self.model.used_ids)
        revoked = set(Device.objects.filter(revoked_at__isnull=False).values_list("device_id", flat=True))
        assert revoked == {d.id for d in self.model.devices.values() if d.revoked}


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(timezone, "now", clock)
    return clock


@pytest.mark.timeout(900)  # a failure is shrunk for up to 5 minutes before it is reported
def test_mailbox_invariants(db, clock):
    MailboxMachine.clock = clock
    run_state_machine_as_test(MailboxMachine, settings=settings(
        max_examples=50, stateful_step_count=50, deadline=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
