"""A model of the mailbox, written from PROTOCOL.md §4, §5, §7 and §8 rather
than from the code: what the server must store, offer and answer.

It knows nothing of HTTP or the database; the state machine drives both the
server and this model and compares them after every step.
"""
import datetime as dt
from dataclasses import dataclass, field

from dmclient import protocol
from tests.factories import Device, Person

USED_ID_MEMORY = dt.timedelta(days=7)


@dataclass
class MDevice:
    device: Device
    user_id: str
    expires_at: dt.datetime | None = None
    revoked: bool = False

    @property
    def id(self) -> str:
        return self.device.id

    def active(self, now: dt.datetime) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


@dataclass
class MConversation:
    id: str
    kind: str
    participants: set[str]
    created_by: str
    retention: dict
    epoch: int = 1

    @property
    def participants_sha256(self) -> str:
        return protocol.participants_sha256(sorted(self.participants))

    def wire(self) -> dict:
        """What a client holds after GET: the fields build_send reads."""
        return {"conversation_id": self.id, "epoch": self.epoch, "participants": sorted(self.participants),
                "participants_sha256": self.participants_sha256, "retention": dict(self.retention)}


@dataclass
class MDelivery:
    wrapped: bool
    acked: bool = False


@dataclass
class MMessage:
    id: str
    conversation_id: str
    sender: str  # device id
    key_id: str
    epoch: int
    policy: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    deliveries: dict[str, MDelivery]  # recipient device id -> delivery; a dropped one is gone

    def pending(self) -> set[str]:
        return {d for d, delivery in self.deliveries.items() if not delivery.acked}


@dataclass
class MUsedId:
    sender: str
    ciphertext_sha256: str
    response: dict
    gone_at: dt.datetime | None = None


@dataclass
class Outcome:
    status: int
    error: str | None = None
    extra: dict = field(default_factory=dict)  # fields of the error body, or the success body


@dataclass
class Mailbox:
    max_undelivered: dt.timedelta
    pending_quota: int
    people: dict[str, Person] = field(default_factory=dict)  # user id -> person
    devices: dict[str, MDevice] = field(default_factory=dict)
    conversations: dict[str, MConversation] = field(default_factory=dict)
    messages: dict[str, MMessage] = field(default_factory=dict)  # in send order
    used_ids: dict[str, MUsedId] = field(default_factory=dict)
    # (conversation, sender device, key_id, recipient device) -> epoch of the message that made it
    receipts: dict[tuple, int] = field(default_factory=dict)

    # -- queries -------------------------------------------------------------------

    def user_devices(self, user_id: str) -> list[MDevice]:
        return [d for d in self.devices.values() if d.user_id == user_id]

    def active_devices_of(self, user_ids, now) -> set[str]:
        return {d.id for d in self.devices.values() if d.user_id in user_ids and d.active(now)}

    def offered(self, device_id: str, now) -> list[str]:
        """§7 sync: the device's pending, unexpired deliveries, oldest first."""
        return [m.id for m in self.messages.values()
                if device_id in m.pending()
                and (m.expires_at is None or m.expires_at > now)
                and m.created_at > now - self.max_undelivered]

    def pending_count(self, device_id: str) -> int:
        return sum(device_id in m.pending() for m in self.messages.values())

    def remembered(self, message_id: str) -> MUsedId | None:
        return self.used_ids.get(message_id)

    # -- changes ---------------------------------------------------------------------

    def bump_epochs_of(self, user_id: str) -> None:
        for conversation in self.conversations.values():
            if user_id in conversation.participants:
                conversation.epoch += 1

    def delete_messages(self, message_ids, now) -> None:
        for message_id in list(message_ids):
            if self.messages.pop(message_id, None) is not None:
                self.used_ids[message_id].gone_at = now

    def burn_if_read(self, message_ids, now) -> None:
        """§8: a burn_on_read message goes as soon as no delivery of it is pending."""
        self.delete_messages([m for m in message_ids if m in self.messages
                              and self.messages[m].policy == "burn_on_read" and not self.messages[m].pending()], now)

    def drop_pending(self, device_ids: set[str], now, conversation_id: str | None = None) -> None:
        touched = []
        for message in self.messages.values():
            if conversation_id is not None and message.conversation_id != conversation_id:
                continue
            for device_id in device_ids & message.pending():
                del message.deliveries[device_id]
                touched.append(message.id)
        self.burn_if_read(touched, now)

    def revoke(self, device_id: str, now) -> None:
        """§4: inactive, pending deliveries dropped, epochs of the user's conversations bumped."""
        device = self.devices[device_id]
        if device.revoked:
            return
        device.revoked = True
        self.drop_pending({device_id}, now)
        self.bump_epochs_of(device.user_id)

    def register(self, device: MDevice) -> None:
        self.devices[device.id] = device
        self.bump_epochs_of(device.user_id)

    def remove_participant(self, conversation_id: str, user_id: str, now) -> None:
        conversation = self.conversations[conversation_id]
        conversation.participants.discard(user_id)
        self.drop_pending({d.id for d in self.user_devices(user_id)}, now, conversation_id=conversation_id)
        if not conversation.participants:
            self.delete_messages([m.id for m in self.messages.values() if m.conversation_id == conversation_id], now)
            del self.conversations[conversation_id]
            self.receipts = {k: v for k, v in self.receipts.items() if k[0] != conversation_id}
        else:
            conversation.epoch += 1

    def purge(self, as_of: dt.datetime, now: dt.datetime) -> None:
        """§8 and §4, as the purge worker run at `as_of` must leave it."""
        for device in list(self.devices.values()):
            if not device.revoked and device.expires_at is not None and device.expires_at <= as_of:
                self.revoke(device.id, now)
        self.delete_messages([m.id for m in self.messages.values()
                              if m.expires_at is not None and m.expires_at <= as_of], now)
        cutoff = as_of - self.max_undelivered
        for message in self.messages.values():
            if message.created_at <= cutoff:
                for device_id in message.pending():
                    del message.deliveries[device_id]
        self.burn_if_read(list(self.messages), now)
        self.receipts = {k: epoch for k, epoch in self.receipts.items()
                         if epoch >= self.conversations[k[0]].epoch}
        self.used_ids = {m: used for m, used in self.used_ids.items()
                         if used.gone_at is None or used.gone_at > as_of - USED_ID_MEMORY}

    # -- §7 send and ack, as the server must answer them -------------------------------------

    def predict_send(self, *, sender: str, body: dict, signature_ok: bool, now) -> Outcome:
        """The answer to `body` from device `sender`, checked in the order of §7."""
        device = self.devices[sender]
        if not device.active(now):
            return Outcome(401, "invalid_token")
        if not signature_ok:
            return Outcome(400, "bad_signature")
        message_id, ciphertext_sha256 = body["message_id"], protocol.H(protocol.b64d(body["ciphertext"]))
        used = self.remembered(message_id)
        if used is not None:
            if used.sender == sender and used.ciphertext_sha256 == ciphertext_sha256:
                return Outcome(200, extra=used.response)
            return Outcome(409, "duplicate_message_id")
        conversation = self.conversations.get(body["conversation_id"])
        if conversation is None or device.user_id not in conversation.participants:
            return Outcome(404, "not_found")
        if body["epoch"] != conversation.epoch or body["participants_sha256"] != conversation.participants_sha256:
            return Outcome(409, "stale_epoch", {"epoch": conversation.epoch,
                                                "participants": sorted(conversation.participants)})
        if body["retention"] != conversation.retention:
            return Outcome(409, "retention_changed", {"retention": conversation.retention})
        expected = self.active_devices_of(conversation.participants, now) - {sender}
        given = {r["device_id"] for r in body["recipients"]}
        if given != expected:
            return Outcome(409, "mismatched_devices", {"missing": sorted(expected - given),
                                                       "extra": sorted(given - expected)})
        unwrapped = sorted(r["device_id"] for r in body["recipients"] if r["key_wrap"] is None and self.receipts.get(
                           (conversation.id, sender, body["key_id"], r["device_id"])) != conversation.epoch)
        if unwrapped:
            return Outcome(409, "missing_key_wraps", {"devices": unwrapped})
        full = sorted(d for d in given if self.pending_count(d) >= self.pending_quota)
        if full and len(full) == len(given):
            return Outcome(429, "mailbox_full", {"devices": full})
        holders = {self.devices[d].user_id for d in expected} | {device.user_id}
        return Outcome(201, extra={
            "message_id": message_id, "policy": conversation.retention["policy"], "recipients": len(given) - len(full),
            "unreachable": sorted(conversation.participants - holders),
            "skipped": [{"device_id": d, "reason": "mailbox_full"} for d in full]})

    def apply_send(self, *, sender: str, body: dict, response: dict, created_at, expires_at) -> None:
        conversation = self.conversations[body["conversation_id"]]
        self.messages[body["message_id"]] = MMessage(
            id=body["message_id"], conversation_id=conversation.id, sender=sender, key_id=body["key_id"],
            epoch=body["epoch"], policy=conversation.retention["policy"], created_at=created_at,
            expires_at=expires_at,
            deliveries={r["device_id"]: MDelivery(wrapped=r["key_wrap"] is not None) for r in body["recipients"]
                        if r["device_id"] not in {s["device_id"] for s in response["skipped"]}})
        self.used_ids[body["message_id"]] = MUsedId(
            sender=sender, ciphertext_sha256=protocol.H(protocol.b64d(body["ciphertext"])), response=response)
        self.burn_if_read([body["message_id"]], created_at)  # sent to no device: nothing is pending

    def expiry(self, retention: dict, created_at: dt.datetime) -> dt.datetime | None:
        if retention["policy"] == "ttl":
            return created_at + dt.timedelta(days=retention["ttl_days"])
        if retention["policy"] == "burn_on_read":
            return created_at + self.max_undelivered
        return None

    def ack(self, *, device_id: str, message_ids: list[str], failed: list[str], now) -> dict:
        """§7 ack; returns the expected body and applies it."""
        requested = set(message_ids) | set(failed)
        known = {m for m in requested if m in self.messages and device_id in self.messages[m].deliveries}
        for message_id in known:
            message = self.messages[message_id]
            delivery = message.deliveries[device_id]
            if not delivery.acked:
                delivery.acked = True
                if delivery.wrapped and message_id not in failed:
                    key = (message.conversation_id, message.sender, message.key_id, device_id)
                    self.receipts[key] = max(self.receipts.get(key, 0), message.epoch)
        self.burn_if_read(known, now)
        return {"acked": sorted(known), "unknown": sorted(requested - known)}
