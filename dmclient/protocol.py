"""Wire protocol v1.2 (PROTOCOL.md): encodings, canonical JSON, certificates,
signatures and the client-side constructions of §6.

Pure code with no Django import: the server and the reference client
(`dmclient`) both use it, so each rule is written once.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import unicodedata
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import base58
import nacl.bindings
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CERT_LABEL = b"decentcom/device-cert/v1\n"
AUTH_LABEL = b"decentcom/auth/v1\n"
KEY_ID_LABEL = b"decentcom/key-id/v1\n"
KEY_WRAP_LABEL = b"decentcom/key-wrap/v1\n"
KEY_WRAP_V2_LABEL = b"decentcom/key-wrap/v2\n"
SIGNED_PREKEY_LABEL = b"decentcom/signed-prekey/v1\n"
DM_AAD_LABEL = b"decentcom/dm-aad/v1\n"
DM_LABEL = b"decentcom/dm/v1\n"
SAFETY_NUMBER_LABEL = b"decentcom/safety-number/v1\n"

KNOWN_PERMISSIONS = frozenset({"manage_devices"})
CERT_FIELDS = frozenset({"v", "master", "device", "name", "issued_at", "expires_at", "permissions"})
CERT_FUTURE_SKEW_S = 5 * 60  # server: issued_at at most 5 minutes ahead
CLIENT_CERT_TOLERANCE_S = 24 * 3600

KEY_LEN = 32
NONCE_LEN = 12
SIGNATURE_LEN = 64
WRAPPED_KEY_LEN = 48
PAD_BLOCK = 256
SPK_FIELDS = frozenset({"v", "device", "id", "x25519", "created_at"})
# Prekey ids: positive and exact in a JavaScript number, so every client reads them alike.
MAX_PREKEY_ID = 2**53 - 1

# Signed times (unix seconds) a certificate may carry: what both Python's
# datetime and a JavaScript Date can hold, so no client or server overflows.
MAX_UNIX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z
# Characters a name may not hold: controls (C0 and C1), format characters
# (zero-width, bidirectional overrides and isolates), line and paragraph
# separators and lone surrogates. A UI would render them misleadingly.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})

_P = 2**255 - 19
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class ProtocolError(ValueError):
    """Input that breaks a rule of the protocol; the server answers 400."""

    def __init__(self, detail: str, *, code: str = "invalid"):
        super().__init__(detail)
        self.code = code
        self.detail = detail


# --- §1 encodings ---------------------------------------------------------

def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(value: object, *, length: int | None = None, what: str = "value") -> bytes:
    """Strict, canonical RFC 4648 §4 base64 (padding required)."""
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ProtocolError(f"{what} is not valid base64") from None
    if b64e(raw) != value:
        raise ProtocolError(f"{what} is not canonical base64")
    if length is not None and len(raw) != length:
        raise ProtocolError(f"{what} must decode to {length} bytes")
    return raw


def b58e(key: bytes) -> str:
    return base58.b58encode(key).decode("ascii")


def b58_key(value: object, *, what: str = "key") -> bytes:
    """Decode a b58 Ed25519 public key; only canonical, usable keys pass."""
    if not isinstance(value, str) or not value or len(value) > 50:
        raise ProtocolError(f"{what} must be a base58 Ed25519 public key")
    try:
        raw = base58.b58decode(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ProtocolError(f"{what} is not valid base58") from None
    if len(raw) != KEY_LEN or b58e(raw) != value:
        raise ProtocolError(f"{what} must encode exactly 32 bytes")
    if not ed25519_key_usable(raw):
        raise ProtocolError(f"{what} is not a usable Ed25519 public key")
    return raw


def ed25519_key_usable(raw: bytes) -> bool:
    """Canonical, on the curve, not of small order (libsodium's pk_to_curve25519)."""
    if int.from_bytes(raw, "little") & ((1 << 255) - 1) >= _P:
        return False
    try:
        nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(raw)
    except (nacl.exceptions.CryptoError, RuntimeError, ValueError):
        return False
    return True


def _check_canonical(value: object) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        return
    if isinstance(value, str):
        if any(ord(c) < 0x20 for c in value):
            raise ProtocolError("strings must not contain control characters")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProtocolError("object keys must be strings")
            _check_canonical(k)
            _check_canonical(v)
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_canonical(v)
        return
    raise ProtocolError(f"{type(value).__name__} is not allowed in canonical JSON")


def cjson(value: object) -> bytes:
    _check_canonical(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def H(data: bytes) -> str:
    return b64e(hashlib.sha256(data).digest())


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and bool(_UUID_RE.match(value))


def parse_uuid(value: object, *, what: str = "id") -> uuid.UUID:
    if not is_uuid(value):
        raise ProtocolError(f"{what} must be a lower-case UUID string")
    return uuid.UUID(value)


def origin(url: str) -> str:
    """RFC 6454 serialization: lower case, port only when not the default."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        raise ProtocolError(f"{url!r} is not an http(s) origin")
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


# --- signatures ------------------------------------------------------------

def sign(seed: bytes, message: bytes) -> bytes:
    return nacl.signing.SigningKey(seed).sign(message).signature


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 as libsodium verifies it (small-order keys, non-canonical S refused)."""
    if len(signature) != SIGNATURE_LEN or len(public_key) != KEY_LEN:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True


def public_key(seed: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed).verify_key)


# --- §2 certificates --------------------------------------------------------

@dataclass(frozen=True)
class Certificate:
    v: int
    master: str
    device: str
    name: str
    issued_at: int
    expires_at: int | None
    permissions: tuple[str, ...]
    signature: str

    def body(self) -> dict:
        return {
            "v": self.v, "master": self.master, "device": self.device, "name": self.name,
            "issued_at": self.issued_at, "expires_at": self.expires_at,
            "permissions": list(self.permissions),
        }

    def wire(self) -> dict:
        return {**self.body(), "signature": self.signature}

    @property
    def device_key(self) -> bytes:
        return b58_key(self.device)


def cert_signed_bytes(cert: dict) -> bytes:
    return CERT_LABEL + cjson(cert)


def cert_issue(*, master_seed: bytes, device: str, name: str, issued_at: int,
               expires_at: int | None, permissions: list[str]) -> dict:
    problem = name_problem(name)
    if problem:
        raise ProtocolError(problem, code="invalid_name")
    body = {
        "v": 1, "master": b58e(public_key(master_seed)), "device": device, "name": name,
        "issued_at": issued_at, "expires_at": expires_at, "permissions": sorted(set(permissions)),
    }
    return {**body, "signature": b64e(sign(master_seed, cert_signed_bytes(body)))}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: object) -> bool:
    return _is_int(value) and 0 <= value <= MAX_UNIX_SECONDS


def name_problem(name: object) -> str | None:
    """Why `name` is not acceptable as a device name, or None. One rule for
    the server (registration) and every client (certificates it makes or
    verifies): 1-64 code points, none of them hidden or a control, and not
    blank."""
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        return "name must be 1-64 characters"
    if any(unicodedata.category(ch) in _HIDDEN_CATEGORIES for ch in name):
        return "name must not hold control, invisible or bidirectional-override characters"
    if not name.strip():
        return "name must not be blank"
    return None


def cert_parse(wire: object) -> Certificate:
    """Check a wire certificate's structure and master signature.

    Time and permission rules differ between server and client: see
    `cert_check_server` and `cert_check_client`.
    """
    if not isinstance(wire, dict):
        raise ProtocolError("certificate must be an object", code="invalid_certificate")
    keys, expected = set(wire), CERT_FIELDS | {"signature"}
    if keys != expected:
        extra, missing = sorted(keys - expected), sorted(expected - keys)
        raise ProtocolError(
            f"certificate fields: missing {missing}, unexpected {extra}", code="invalid_certificate")
    body = {k: wire[k] for k in CERT_FIELDS}
    try:
        if not _is_int(body["v"]):
            raise ProtocolError("v must be an integer")
        b58_key(body["master"], what="master")
        b58_key(body["device"], what="device")
        problem = name_problem(body["name"])
        if problem:
            raise ProtocolError(problem)
        if not _is_time(body["issued_at"]):
            raise ProtocolError(f"issued_at must be an integer 0..{MAX_UNIX_SECONDS}")
        if body["expires_at"] is not None and not _is_time(body["expires_at"]):
            raise ProtocolError(f"expires_at must be an integer 0..{MAX_UNIX_SECONDS} or null")
        perms = body["permissions"]
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            raise ProtocolError("permissions must be a list of strings")
        if perms != sorted(set(perms)):
            raise ProtocolError("permissions must be sorted and without duplicates")
        signature = b64d(wire["signature"], length=SIGNATURE_LEN, what="signature")
        signed = cert_signed_bytes(body)
    except ProtocolError as exc:
        raise ProtocolError(f"certificate: {exc.detail}", code="invalid_certificate") from None
    if not verify(b58_key(body["master"]), signed, signature):
        raise ProtocolError("certificate signature does not verify against master",
                            code="invalid_certificate")
    return Certificate(signature=wire["signature"], permissions=tuple(perms),
                       **{k: body[k] for k in CERT_FIELDS - {"permissions"}})


def cert_check_server(cert: Certificate, *, now: int) -> None:
    """The server's rules (§2). Raises ProtocolError; `certificate_expired` is a 403."""
    if cert.v != 1:
        raise ProtocolError("unsupported certificate version", code="invalid_certificate")
    unknown = sorted(set(cert.permissions) - KNOWN_PERMISSIONS)
    if unknown:
        raise ProtocolError(f"unknown permissions {unknown}", code="invalid_certificate")
    if cert.issued_at > now + CERT_FUTURE_SKEW_S:
        raise ProtocolError("certificate issued in the future", code="invalid_certificate")
    if cert.expires_at is not None and cert.expires_at <= now:
        raise ProtocolError("certificate has expired", code="certificate_expired")


def cert_check_client(wire: object, *, user_id: str, device_id: str | None = None,
                      now: int) -> Certificate:
    """The client's rules (§2): strict structure, 24 h of tolerance on times."""
    cert = cert_parse(wire)
    if cert.v != 1 or cert.master != user_id or (device_id is not None and cert.device != device_id):
        raise ProtocolError("certificate is not for this user or device", code="invalid_certificate")
    if cert.issued_at > now + CLIENT_CERT_TOLERANCE_S:
        raise ProtocolError("certificate issued in the future", code="invalid_certificate")
    if cert.expires_at is not None and cert.expires_at <= now - CLIENT_CERT_TOLERANCE_S:
        raise ProtocolError("certificate has expired", code="certificate_expired")
    return cert


# --- §3 authentication -------------------------------------------------------

def auth_signed_bytes(*, challenge: str, pubkey: str, server: str) -> bytes:
    return AUTH_LABEL + cjson({"challenge": challenge, "pubkey": pubkey, "server": server})


# --- §5 conversations ---------------------------------------------------------

def participants_sha256(participants: list[str]) -> str:
    return H(cjson(sorted(participants)))


def safety_number(user_a: str, user_b: str) -> str:
    """§6 "Safety numbers": 12 groups of 5 digits that both people's clients
    compute alike from the two master keys, whichever way round."""
    ka, kb = sorted((b58_key(user_a, what="user id"), b58_key(user_b, what="user id")))
    h = hashlib.sha512(SAFETY_NUMBER_LABEL + ka + kb).digest()
    return " ".join(f"{int.from_bytes(h[5 * i:5 * i + 5], 'big') % 100000:05d}" for i in range(12))


# --- §6 encryption (client side) -----------------------------------------------

def x25519_private(seed: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed).to_curve25519_private_key())


def x25519_public(ed25519_pub: bytes) -> bytes:
    return bytes(nacl.signing.VerifyKey(ed25519_pub).to_curve25519_public_key())


def x25519_shared(priv: bytes, peer_pub: bytes) -> bytes:
    try:
        ss = nacl.bindings.crypto_scalarmult(priv, peer_pub)
    except (nacl.exceptions.CryptoError, RuntimeError):
        raise ProtocolError("X25519 shared secret is all zero") from None
    if ss == bytes(32):
        raise ProtocolError("X25519 shared secret is all zero")
    return ss


def key_id(group_key: bytes) -> str:
    return H(KEY_ID_LABEL + group_key)


def key_wrap_info(*, conversation_id: str, epoch: int, recipient_device: str, sender_device: str) -> bytes:
    return KEY_WRAP_LABEL + cjson({
        "conversation_id": conversation_id, "epoch": epoch,
        "recipient_device": recipient_device, "sender_device": sender_device,
    })


def hkdf32(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(32), info=info).derive(ikm)


def key_wrap(*, sender_seed: bytes, sender_device: str, recipient_device: str,
             conversation_id: str, epoch: int, group_key: bytes, nonce: bytes | None = None) -> dict:
    info = key_wrap_info(conversation_id=conversation_id, epoch=epoch,
                         recipient_device=recipient_device, sender_device=sender_device)
    ss = x25519_shared(x25519_private(sender_seed), x25519_public(b58_key(recipient_device)))
    nonce = nonce if nonce is not None else os.urandom(NONCE_LEN)
    wrapped = AESGCM(hkdf32(ss, info)).encrypt(nonce, group_key, info)
    return {"nonce": b64e(nonce), "wrapped_key": b64e(wrapped)}


def key_unwrap(*, recipient_seed: bytes, recipient_device: str, sender_device: str,
               conversation_id: str, epoch: int, wrap: dict) -> bytes:
    info = key_wrap_info(conversation_id=conversation_id, epoch=epoch,
                         recipient_device=recipient_device, sender_device=sender_device)
    ss = x25519_shared(x25519_private(recipient_seed), x25519_public(b58_key(sender_device)))
    nonce = b64d(wrap.get("nonce"), length=NONCE_LEN, what="wrap nonce")
    wrapped = b64d(wrap.get("wrapped_key"), length=WRAPPED_KEY_LEN, what="wrapped_key")
    try:
        return AESGCM(hkdf32(ss, info)).decrypt(nonce, wrapped, info)
    except Exception:
        raise ProtocolError("key wrap does not decrypt", code="bad_key_wrap") from None


# --- §6b forward secrecy (v1.2) --------------------------------------------------

def x25519_keypair() -> tuple[bytes, bytes]:
    """A fresh random X25519 key pair (private, public)."""
    priv = os.urandom(KEY_LEN)
    return priv, nacl.bindings.crypto_scalarmult_base(priv)


def x25519_public_of(priv: bytes) -> bytes:
    return nacl.bindings.crypto_scalarmult_base(priv)


def prekey_id_ok(value: object) -> bool:
    return _is_int(value) and 1 <= value <= MAX_PREKEY_ID


@dataclass(frozen=True)
class SignedPrekey:
    device: str
    id: int
    x25519: bytes
    created_at: int
    wire: dict


def spk_signed_bytes(spk: dict) -> bytes:
    return SIGNED_PREKEY_LABEL + cjson({k: spk[k] for k in SPK_FIELDS})


def spk_issue(*, device_seed: bytes, id: int, x25519_pub: bytes, created_at: int) -> dict:
    """The wire form of a signed prekey, signed by the device key `device_seed`."""
    spk = {"v": 1, "device": b58e(public_key(device_seed)), "id": id, "x25519": b64e(x25519_pub),
           "created_at": created_at}
    return {**spk, "signature": b64e(sign(device_seed, spk_signed_bytes(spk)))}


def spk_parse(wire: object, *, device: str) -> SignedPrekey:
    """A signed prekey of `device`: exactly the five keys and a signature, `v` 1,
    a positive id, a 32-byte X25519 key, and a signature by `device`'s own key."""
    if not isinstance(wire, dict):
        raise ProtocolError("signed prekey must be an object", code="invalid_prekey")
    keys, expected = set(wire), SPK_FIELDS | {"signature"}
    if keys != expected:
        extra, missing = sorted(keys - expected), sorted(expected - keys)
        raise ProtocolError(f"signed prekey fields: missing {missing}, unexpected {extra}", code="invalid_prekey")
    try:
        if wire["v"] != 1 or not _is_int(wire["v"]):
            raise ProtocolError("v must be 1")
        if wire["device"] != device:
            raise ProtocolError("it names another device")
        if not prekey_id_ok(wire["id"]):
            raise ProtocolError(f"id must be an integer 1..{MAX_PREKEY_ID}")
        if not _is_time(wire["created_at"]):
            raise ProtocolError(f"created_at must be an integer 0..{MAX_UNIX_SECONDS}")
        pub = b64d(wire["x25519"], length=KEY_LEN, what="x25519")
        signature = b64d(wire["signature"], length=SIGNATURE_LEN, what="signature")
        if not verify(b58_key(device, what="device"), spk_signed_bytes(wire), signature):
            raise ProtocolError("signature does not verify against the device key")
    except ProtocolError as exc:
        raise ProtocolError(f"signed prekey: {exc.detail}", code="invalid_prekey") from None
    return SignedPrekey(device=device, id=wire["id"], x25519=pub, created_at=wire["created_at"], wire=dict(wire))


def otk_parse(value: object) -> tuple[int, bytes]:
    """A one-time prekey {"id", "x25519"} as (id, public key)."""
    if not isinstance(value, dict) or set(value) != {"id", "x25519"}:
        raise ProtocolError('a one-time prekey is {"id", "x25519"}', code="invalid_prekey")
    if not prekey_id_ok(value["id"]):
        raise ProtocolError(f"one-time prekey id must be an integer 1..{MAX_PREKEY_ID}", code="invalid_prekey")
    try:
        return value["id"], b64d(value["x25519"], length=KEY_LEN, what="x25519")
    except ProtocolError as exc:
        raise ProtocolError(f"one-time prekey: {exc.detail}", code="invalid_prekey") from None


def key_wrap_v2_info(*, conversation_id: str, epoch: int, ephemeral: str, one_time_id: int | None,
                     recipient_device: str, sender_device: str, signed_prekey_id: int) -> bytes:
    return KEY_WRAP_V2_LABEL + cjson({
        "conversation_id": conversation_id, "epoch": epoch, "ephemeral": ephemeral, "one_time_id": one_time_id,
        "recipient_device": recipient_device, "sender_device": sender_device, "signed_prekey_id": signed_prekey_id,
    })


def key_wrap_v2(*, sender_seed: bytes, sender_device: str, recipient_device: str, conversation_id: str,
                epoch: int, group_key: bytes, signed_prekey: SignedPrekey, one_time: tuple[int, bytes] | None,
                ephemeral_priv: bytes | None = None, nonce: bytes | None = None) -> dict:
    """Wrap `group_key` for `recipient_device` with a fresh ephemeral key, its signed
    prekey (already verified by `spk_parse`) and one of its one-time prekeys if any.
    The ephemeral private key lives only in this call."""
    if signed_prekey.device != recipient_device:
        raise ProtocolError("signed prekey of another device", code="invalid_prekey")
    e_priv = ephemeral_priv if ephemeral_priv is not None else os.urandom(KEY_LEN)
    e_pub = b64e(x25519_public_of(e_priv))
    one_time_id = one_time[0] if one_time else None
    ikm = (x25519_shared(e_priv, signed_prekey.x25519)
           + x25519_shared(x25519_private(sender_seed), signed_prekey.x25519)
           + (x25519_shared(e_priv, one_time[1]) if one_time else b""))
    del e_priv
    info = key_wrap_v2_info(conversation_id=conversation_id, epoch=epoch, ephemeral=e_pub, one_time_id=one_time_id,
                            recipient_device=recipient_device, sender_device=sender_device,
                            signed_prekey_id=signed_prekey.id)
    nonce = nonce if nonce is not None else os.urandom(NONCE_LEN)
    wrapped = AESGCM(hkdf32(ikm, info)).encrypt(nonce, group_key, info)
    return {"v": 2, "signed_prekey_id": signed_prekey.id, "one_time_id": one_time_id, "ephemeral": e_pub,
            "nonce": b64e(nonce), "wrapped_key": b64e(wrapped)}


V1_WRAP_KEYS = frozenset({"nonce", "wrapped_key"})
V2_WRAP_KEYS = frozenset({"v", "signed_prekey_id", "one_time_id", "ephemeral", "nonce", "wrapped_key"})


def _b64_problem(value: object, length: int, what: str) -> str | None:
    try:
        b64d(value, length=length, what=what)
    except ProtocolError as exc:
        return exc.detail
    return None


def _prekey_id_problem(value: object, *, nullable: bool) -> str | None:
    if (value is None and nullable) or prekey_id_ok(value):
        return None
    return f"must be {'null or ' if nullable else ''}an integer 1..{MAX_PREKEY_ID}"


def key_wrap_problems(value: object) -> dict[str, str] | str:
    """The key wrap shape rule (§7 check 3, §6b), for the server and clients alike:
    what is wrong, by member; {} when it is exactly the v1 shape `{nonce, wrapped_key}`
    or exactly v2's six keys with `"v": 2`, a 12-byte nonce, a 48-byte wrapped_key,
    a 32-byte ephemeral and ids 1..MAX_PREKEY_ID (one_time_id may be null);
    a string when it is no object at all."""
    if type(value) is not dict:
        return "key_wrap must be an object or null"
    v2 = "v" in value
    expected = V2_WRAP_KEYS if v2 else V1_WRAP_KEYS
    problems = {key: "This field is required." for key in sorted(expected - set(value))}
    problems.update({key: f"not a member of a v{2 if v2 else 1} key wrap" for key in sorted(set(value) - expected)})
    checks = {"nonce": lambda x: _b64_problem(x, NONCE_LEN, "nonce"),
              "wrapped_key": lambda x: _b64_problem(x, WRAPPED_KEY_LEN, "wrapped_key")}
    if v2:
        checks.update({
            "v": lambda x: None if type(x) is int and x == 2 else "must be 2",
            "signed_prekey_id": lambda x: _prekey_id_problem(x, nullable=False),
            "one_time_id": lambda x: _prekey_id_problem(x, nullable=True),
            "ephemeral": lambda x: _b64_problem(x, KEY_LEN, "ephemeral"),
        })
    for key, check in checks.items():
        if key in value and (problem := check(value[key])):
            problems[key] = problem
    return problems


def key_wrap_shape(value: object) -> int:
    """A key wrap's version (1 or 2) if `key_wrap_problems` finds nothing;
    else ProtocolError "bad_key_wrap" naming every problem."""
    problems = key_wrap_problems(value)
    if problems:
        raise ProtocolError(problems if type(problems) is str else
                            "key_wrap " + "; ".join(f"{key}: {message}" for key, message in problems.items()),
                            code="bad_key_wrap")
    return 2 if "v" in value else 1


def wrap_version(wrap: object) -> int:
    """1 or 2 by shape (§7 check 3): v1 is exactly {nonce, wrapped_key}, v2 has `"v": 2`."""
    if isinstance(wrap, dict) and wrap.get("v") == 2 and _is_int(wrap.get("v")):
        return 2
    if isinstance(wrap, dict) and set(wrap) == {"nonce", "wrapped_key"}:
        return 1
    raise ProtocolError("key_wrap is neither a v1 nor a v2 wrap", code="bad_key_wrap")


def key_unwrap_v2(*, signed_prekey_priv: bytes, one_time_priv: bytes | None, recipient_device: str,
                  sender_device: str, conversation_id: str, epoch: int, wrap: dict) -> bytes:
    """Open a v2 wrap with this device's signed prekey (and one-time prekey, when the
    wrap names one) private keys, looked up by the caller from the wrap's ids."""
    if set(wrap) != {"v", "signed_prekey_id", "one_time_id", "ephemeral", "nonce", "wrapped_key"}:
        raise ProtocolError("v2 key wrap must have exactly its six keys", code="bad_key_wrap")
    if not prekey_id_ok(wrap["signed_prekey_id"]) or not (wrap["one_time_id"] is None
                                                          or prekey_id_ok(wrap["one_time_id"])):
        raise ProtocolError("v2 key wrap ids must be positive integers", code="bad_key_wrap")
    if (wrap["one_time_id"] is None) != (one_time_priv is None):
        raise ProtocolError("one-time prekey does not match the wrap", code="bad_key_wrap")
    e_pub = b64d(wrap["ephemeral"], length=KEY_LEN, what="ephemeral")
    nonce = b64d(wrap["nonce"], length=NONCE_LEN, what="wrap nonce")
    wrapped = b64d(wrap["wrapped_key"], length=WRAPPED_KEY_LEN, what="wrapped_key")
    ikm = (x25519_shared(signed_prekey_priv, e_pub)
           + x25519_shared(signed_prekey_priv, x25519_public(b58_key(sender_device, what="sender_device")))
           + (x25519_shared(one_time_priv, e_pub) if one_time_priv is not None else b""))
    info = key_wrap_v2_info(conversation_id=conversation_id, epoch=epoch, ephemeral=wrap["ephemeral"],
                            one_time_id=wrap["one_time_id"], recipient_device=recipient_device,
                            sender_device=sender_device, signed_prekey_id=wrap["signed_prekey_id"])
    try:
        return AESGCM(hkdf32(ikm, info)).decrypt(nonce, wrapped, info)
    except Exception:
        raise ProtocolError("key wrap does not decrypt", code="bad_key_wrap") from None


def pad(plaintext: bytes) -> bytes:
    n = (-(len(plaintext) + 1)) % PAD_BLOCK
    return plaintext + b"\x80" + b"\x00" * n


def unpad(padded: bytes) -> bytes:
    if not padded or len(padded) % PAD_BLOCK:
        raise ProtocolError("padded length is not a multiple of 256", code="bad_padding")
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80:
        raise ProtocolError("padding has no 0x80 marker", code="bad_padding")
    return stripped[:-1]


def dm_aad(*, conversation_id: str, epoch: int, message_id: str, sender_device: str) -> bytes:
    return DM_AAD_LABEL + cjson({
        "conversation_id": conversation_id, "epoch": epoch,
        "message_id": message_id, "sender_device": sender_device,
    })


def dm_signed_bytes(*, ciphertext_sha256: str, conversation_id: str, epoch: int, key_id: str,
                    message_id: str, nonce: str, participants_sha256: str, sender_device: str) -> bytes:
    return DM_LABEL + cjson({
        "ciphertext_sha256": ciphertext_sha256, "conversation_id": conversation_id,
        "epoch": epoch, "key_id": key_id, "message_id": message_id, "nonce": nonce,
        "participants_sha256": participants_sha256, "sender_device": sender_device,
    })


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except Exception:
        raise ProtocolError("message does not decrypt", code="bad_ciphertext") from None
