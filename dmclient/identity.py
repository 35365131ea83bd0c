"""Keys, delegation certificates (§2) and login (§3), over dmclient.protocol."""
from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass

from mnemonic import Mnemonic

from dmclient import protocol

from dmclient.api import Api

DAY_S = 86400


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 key pair held as its 32-byte seed; `id` is its b58 public key."""

    seed: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        while True:
            keys = cls(os.urandom(protocol.KEY_LEN))
            if protocol.ed25519_key_usable(keys.public):
                return keys

    @property
    def public(self) -> bytes:
        return protocol.public_key(self.seed)

    @property
    def id(self) -> str:
        return protocol.b58e(self.public)

    def sign(self, message: bytes) -> bytes:
        return protocol.sign(self.seed, message)


PHRASE_WORDS = 24  # BIP39 of a 32-byte seed


class PhraseError(ValueError):
    """Not the 24-word BIP39 phrase of a master seed."""


def recovery_phrase(seed: bytes) -> str:
    """The master seed as 24 BIP39 English words, single spaces: the same words
    as the web client's, so either restores what the other made."""
    return Mnemonic("english").to_mnemonic(seed)


def seed_from_phrase(phrase: str) -> bytes:
    """The master seed of a recovery phrase; any spacing or case, but every word
    from the English list and the BIP39 checksum right."""
    words = phrase.lower().split()
    if len(words) != PHRASE_WORDS:
        raise PhraseError(f"a recovery phrase has {PHRASE_WORDS} words, not {len(words)}")
    mnemonic = Mnemonic("english")
    unknown = [w for w in words if w not in mnemonic.wordlist]
    if unknown:
        raise PhraseError(f"not in the BIP39 English word list: {', '.join(unknown[:3])}")
    if not mnemonic.check(" ".join(words)):
        raise PhraseError("the checksum does not match: a word is wrong or out of place")
    seed = bytes(mnemonic.to_entropy(" ".join(words)))
    if not protocol.ed25519_key_usable(protocol.public_key(seed)):
        raise PhraseError("this phrase does not give a usable master key")
    return seed


def certificate_issue(master: KeyPair, *, device_id: str, name: str, expires_at: int | None = None,
                      permissions: list[str] = (), issued_at: int | None = None) -> dict:
    """A wire certificate by which `master` authorizes `device_id` (§2)."""
    protocol.b58_key(device_id, what="device id")
    unknown = sorted(set(permissions) - protocol.KNOWN_PERMISSIONS)
    if unknown:
        raise protocol.ProtocolError(f"unknown permissions {unknown}")
    cert = protocol.cert_issue(master_seed=master.seed, device=device_id, name=name,
                               issued_at=int(time.time()) if issued_at is None else issued_at,
                               expires_at=expires_at, permissions=list(permissions))
    protocol.cert_parse(cert)
    return cert


def expiry_from_days(days: int | None) -> int | None:
    return None if days is None else int(time.time()) + days * DAY_S


def auth_signature(keys: KeyPair, *, challenge: str, server: str) -> str:
    """The §3 signature over the challenge, bound to the server's origin."""
    signed = protocol.auth_signed_bytes(challenge=challenge, pubkey=keys.id, server=protocol.origin(server))
    return protocol.b64e(keys.sign(signed))


@dataclass(frozen=True)
class Session:
    token: str
    user_id: str
    device_id: str | None
    expires_at: int  # unix seconds


def parse_time(value: str | None) -> int | None:
    return None if value is None else int(dt.datetime.fromisoformat(value).timestamp())


def login(api: Api, keys: KeyPair, *, certificate: dict | None = None) -> Session:
    """Challenge, sign, verify. A device sends its certificate every time: the
    first login registers it, later ones are no-ops (or renew a newer one)."""
    challenge = api.post("/auth/challenge", {"pubkey": keys.id}, token="")["challenge"]
    body = {"pubkey": keys.id, "challenge": challenge,
            "signature": auth_signature(keys, challenge=challenge, server=api.server)}
    if certificate is not None:
        body["certificate"] = certificate
    answer = api.post("/auth/verify", body, token="")
    return Session(token=answer["token"], user_id=answer["user_id"], device_id=answer["device_id"],
                   expires_at=parse_time(answer["expires_at"]))
