"""§6 for the client, as thin glue over dmclient.protocol: seal an outgoing
message, and take a received one apart step by step. Each receiving step
raises `Rejected` with the reason the message is recorded as failed."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from dmclient import protocol

from dmclient.identity import KeyPair

MAX_KEY_USES = 1000  # a sender key is replaced after this many messages (§6b "Sender keys age")
MAX_KEY_AGE_S = 7 * 86400  # ... and once it is this old, even within one epoch


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def new_group_key() -> bytes:
    return os.urandom(protocol.KEY_LEN)


def plaintext_encode(*, body: str, sent_at: int, seq: int) -> bytes:
    """The plaintext as cjson would write it, but any body: a message may have
    several lines (the plaintext is "any serialization", §6; cjson refuses controls)."""
    return json.dumps({"type": "text", "body": body, "sent_at": sent_at, "seq": seq}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def seal(*, device: KeyPair, conversation_id: str, epoch: int, message_id: str, group_key: bytes,
         participants_sha256: str, plaintext: bytes, nonce: bytes | None = None) -> dict:
    """Pad, encrypt and sign: the message fields of a send request."""
    nonce = os.urandom(protocol.NONCE_LEN) if nonce is None else nonce
    aad = protocol.dm_aad(conversation_id=conversation_id, epoch=epoch, message_id=message_id,
                          sender_device=device.id)
    ciphertext = protocol.aead_encrypt(group_key, nonce, protocol.pad(plaintext), aad)
    key_id = protocol.key_id(group_key)
    signed = protocol.dm_signed_bytes(
        ciphertext_sha256=protocol.H(ciphertext), conversation_id=conversation_id, epoch=epoch, key_id=key_id,
        message_id=message_id, nonce=protocol.b64e(nonce), participants_sha256=participants_sha256,
        sender_device=device.id)
    return {"key_id": key_id, "nonce": protocol.b64e(nonce), "ciphertext": protocol.b64e(ciphertext),
            "signature": protocol.b64e(device.sign(signed))}


def wrap(*, device: KeyPair, recipient_device: str, conversation_id: str, epoch: int, group_key: bytes,
         nonce: bytes | None = None) -> dict:
    """A v1 wrap (§6): only for a device that has no signed prekey (an older client)."""
    return protocol.key_wrap(sender_seed=device.seed, sender_device=device.id, recipient_device=recipient_device,
                             conversation_id=conversation_id, epoch=epoch, group_key=group_key, nonce=nonce)


def wrap_v2(*, device: KeyPair, recipient_device: str, conversation_id: str, epoch: int, group_key: bytes,
            signed_prekey: protocol.SignedPrekey, one_time: tuple[int, bytes] | None,
            ephemeral_priv: bytes | None = None, nonce: bytes | None = None) -> dict:
    """A v2 wrap (§6b) with a verified signed prekey (and a one-time prekey if one was claimed).
    `ephemeral_priv` and `nonce` are for the vectors only: otherwise fresh, and the ephemeral gone after."""
    return protocol.key_wrap_v2(sender_seed=device.seed, sender_device=device.id, recipient_device=recipient_device,
                                conversation_id=conversation_id, epoch=epoch, group_key=group_key,
                                signed_prekey=signed_prekey, one_time=one_time, ephemeral_priv=ephemeral_priv,
                                nonce=nonce)


# --- receiving ----------------------------------------------------------------------

@dataclass(frozen=True)
class Incoming:
    """A `msg` of sync or history (§7), well-formed but not yet trusted."""

    message_id: str
    conversation_id: str
    sender: str
    sender_device: str
    sender_certificate: object
    epoch: int
    key_id: str
    participants_sha256: str
    nonce: str
    ciphertext: bytes
    signature: bytes
    key_wrap: dict | None
    created_at: str | None
    expires_at: str | None
    policy: str


def parse(msg: object) -> Incoming:
    """Check the message's structure (§1); anything else is `malformed`."""
    try:
        if not isinstance(msg, dict):
            raise protocol.ProtocolError("message is not an object")
        protocol.parse_uuid(msg.get("message_id"), what="message_id")
        protocol.parse_uuid(msg.get("conversation_id"), what="conversation_id")
        protocol.b58_key(msg.get("sender"), what="sender")
        protocol.b58_key(msg.get("sender_device"), what="sender_device")
        epoch = msg.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise protocol.ProtocolError("epoch must be a non-negative integer")
        protocol.b64d(msg.get("key_id"), length=32, what="key_id")
        protocol.b64d(msg.get("participants_sha256"), length=32, what="participants_sha256")
        protocol.b64d(msg.get("nonce"), length=protocol.NONCE_LEN, what="nonce")
        ciphertext = protocol.b64d(msg.get("ciphertext"), what="ciphertext")
        signature = protocol.b64d(msg.get("signature"), length=protocol.SIGNATURE_LEN, what="signature")
        wrap_ = msg.get("key_wrap")
        if wrap_ is not None:
            check_wrap_shape(wrap_)
        policy = msg.get("policy")
        if not isinstance(policy, str):
            raise protocol.ProtocolError("policy must be a string")
    except protocol.ProtocolError as exc:
        raise Rejected("malformed", exc.detail) from None
    return Incoming(
        message_id=msg["message_id"], conversation_id=msg["conversation_id"], sender=msg["sender"],
        sender_device=msg["sender_device"], sender_certificate=msg.get("sender_certificate"), epoch=epoch,
        key_id=msg["key_id"], participants_sha256=msg["participants_sha256"], nonce=msg["nonce"],
        ciphertext=ciphertext, signature=signature, key_wrap=wrap_, created_at=msg.get("created_at"),
        expires_at=msg.get("expires_at"), policy=policy)


def check_wrap_shape(wrap_: object) -> int:
    """A v1 wrap {nonce, wrapped_key} or a v2 wrap of exactly its six keys (§6b); its version."""
    return protocol.key_wrap_shape(wrap_)


def check_certificate(m: Incoming, *, now: int) -> None:
    """The sender's certificate, against the user the message claims (§2 client rules)."""
    try:
        protocol.cert_check_client(m.sender_certificate, user_id=m.sender, device_id=m.sender_device, now=now)
    except protocol.ProtocolError as exc:
        raise Rejected("bad_certificate", exc.detail) from None


def check_signature(m: Incoming) -> None:
    signed = protocol.dm_signed_bytes(
        ciphertext_sha256=protocol.H(m.ciphertext), conversation_id=m.conversation_id, epoch=m.epoch,
        key_id=m.key_id, message_id=m.message_id, nonce=m.nonce, participants_sha256=m.participants_sha256,
        sender_device=m.sender_device)
    if not protocol.verify(protocol.b58_key(m.sender_device), signed, m.signature):
        raise Rejected("bad_signature", "the signature does not verify with the sender device's key")


def unwrap(device: KeyPair, m: Incoming) -> bytes:
    try:
        key = protocol.key_unwrap(recipient_seed=device.seed, recipient_device=device.id,
                                  sender_device=m.sender_device, conversation_id=m.conversation_id,
                                  epoch=m.epoch, wrap=m.key_wrap)
    except protocol.ProtocolError as exc:
        raise Rejected("bad_key_wrap", exc.detail) from None
    check_key_id(key, m)
    return key


def unwrap_v2(device: KeyPair, m: Incoming, *, signed_prekey_priv: bytes, one_time_priv: bytes | None) -> bytes:
    try:
        key = protocol.key_unwrap_v2(signed_prekey_priv=signed_prekey_priv, one_time_priv=one_time_priv,
                                     recipient_device=device.id, sender_device=m.sender_device,
                                     conversation_id=m.conversation_id, epoch=m.epoch, wrap=m.key_wrap)
    except protocol.ProtocolError as exc:
        raise Rejected("bad_key_wrap", exc.detail) from None
    check_key_id(key, m)
    return key


def check_key_id(key: bytes, m: Incoming) -> None:
    if protocol.key_id(key) != m.key_id:
        raise Rejected("bad_key_id", "the key does not match the message's key_id")


def decrypt(key: bytes, m: Incoming) -> dict:
    """Decrypt, unpad and parse the plaintext: {type, body, sent_at, seq}."""
    aad = protocol.dm_aad(conversation_id=m.conversation_id, epoch=m.epoch, message_id=m.message_id,
                          sender_device=m.sender_device)
    try:
        padded = protocol.aead_decrypt(key, protocol.b64d(m.nonce), m.ciphertext, aad)
    except protocol.ProtocolError as exc:
        raise Rejected("bad_ciphertext", exc.detail) from None
    try:
        raw = protocol.unpad(padded)
    except protocol.ProtocolError as exc:
        raise Rejected("bad_padding", exc.detail) from None
    try:
        plaintext = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Rejected("bad_plaintext", "the plaintext is not UTF-8 JSON") from None
    if not isinstance(plaintext, dict) or plaintext.get("type") != "text" or not isinstance(plaintext.get("body"), str):
        raise Rejected("bad_plaintext", "the plaintext is not a text message")
    for field in ("sent_at", "seq"):
        value = plaintext.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if field == "seq" else 0):
            raise Rejected("bad_plaintext", f"{field} must be a positive integer")
    return plaintext
