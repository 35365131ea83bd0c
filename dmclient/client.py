"""The high-level SDK: identity and devices, conversations, send with the
server's answers handled (§7), sync + receive + ACK with every check of §6,
and history. One `Client` is one device's store."""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import httpx

from dmclient import protocol
from dmclient import crypto
from dmclient.api import Api, ApiError, NetworkError
from dmclient.crypto import Rejected
from dmclient.identity import (KeyPair, PhraseError, Session, certificate_issue, expiry_from_days, login, parse_time,
                               recovery_phrase, seed_from_phrase)
from dmclient.store import Store, StoreError, store_path

DAY_S = 86400
TOKEN_MARGIN_S = 300
# §6 "The replay window is the client's own": a constant, never taken from the
# server or a conversation's (server-reported) retention, which an attacker
# could inflate to have a purged message accepted again. It is the longest
# retention this client sets or accepts, plus 7 days; ids of accepted messages
# are remembered for that long (plus the day ahead a `sent_at` may be), and a
# message whose `sent_at` is older is refused.
LONGEST_RETENTION_DAYS = 365
REPLAY_WINDOW_DAYS = LONGEST_RETENTION_DAYS + 7
REPLAY_WINDOW_MS = REPLAY_WINDOW_DAYS * DAY_S * 1000
FUTURE_SKEW_MS = DAY_S * 1000
SEND_ATTEMPTS = 8
NETWORK_BACKOFF_S = (0.5, 1, 2, 4, 8)
WRAP_PROBE_S = 60
SYNC_PAGE = 100
CONVERSATION_PAGE = 100
STATUS_PAGE = 500  # ids per POST /dms/status (§7a)
# §6b prekeys (protocol v1.2)
SIGNED_PREKEY_ROTATE_S = 7 * DAY_S  # a new signed prekey at least this often
# An old signed prekey's private key is kept for the client's own window (§6) after it was
# replaced: a message wrapped to it may wait that long in a mailbox (and be re-sent).
OLD_SIGNED_PREKEY_KEEP_S = REPLAY_WINDOW_DAYS * DAY_S
ONE_TIME_TARGET = 100  # one-time prekeys kept on the server
ONE_TIME_LOW = 20  # ... refilled to ONE_TIME_TARGET when fewer remain
ONE_TIME_PUT_MAX = 100  # per PUT /devices/prekeys
V1_WRAP_GRACE_MS = DAY_S * 1000  # a v1 wrap sent later than this after we first published a signed prekey is refused
CLAIM_PAGE = 500  # devices per POST /dms/prekeys/claim (the server's default recipient limit)
LEGACY_ENV = "DMCLIENT_PROTOCOL"  # "1.1": behave as a client before v1.2 (no prekeys, v1 wraps only), for interop tests


class ClientError(Exception):
    """A failure the user must hear about, with a code scripts can test."""

    def __init__(self, code: str, detail: str, **extra):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.extra = extra


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ConversationView:
    conversation_id: str
    kind: str
    participants: tuple[str, ...]
    participants_sha256: str
    created_by: str | None
    epoch: int
    retention: dict

    @classmethod
    def from_wire(cls, wire: object) -> ConversationView:
        """A conversation as the server sends it (§5), checked: the hash is
        recomputed here and must equal the server's."""
        try:
            if not isinstance(wire, dict):
                raise protocol.ProtocolError("conversation is not an object")
            protocol.parse_uuid(wire.get("conversation_id"), what="conversation_id")
            participants = wire.get("participants")
            if not isinstance(participants, list) or participants != sorted(set(participants)):
                raise protocol.ProtocolError("participants must be a sorted list without duplicates")
            for user_id in participants:
                protocol.b58_key(user_id, what="participant")
            epoch, retention = wire.get("epoch"), wire.get("retention")
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                raise protocol.ProtocolError("epoch must be an integer")
            if not isinstance(retention, dict) or not isinstance(retention.get("policy"), str):
                raise protocol.ProtocolError("retention must be {policy, ttl_days}")
            digest = protocol.participants_sha256(participants)
            if digest != wire.get("participants_sha256"):
                raise protocol.ProtocolError("participants_sha256 does not match the participants")
        except protocol.ProtocolError as exc:
            raise ClientError("bad_conversation", f"the server sent an invalid conversation: {exc.detail}") from None
        return cls(conversation_id=wire["conversation_id"], kind=str(wire.get("kind")),
                   participants=tuple(participants), participants_sha256=digest,
                   created_by=wire.get("created_by"), epoch=epoch,
                   retention={"policy": retention["policy"], "ttl_days": retention.get("ttl_days")})

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ConversationView:
        return cls(conversation_id=row["conversation_id"], kind=row["kind"],
                   participants=tuple(json.loads(row["participants"])),
                   participants_sha256=row["participants_sha256"], created_by=row["created_by"],
                   epoch=row["epoch"], retention=json.loads(row["retention"]))

    def wire(self) -> dict:
        return {**asdict(self), "participants": list(self.participants)}


@dataclass
class SendResult:
    message_id: str
    conversation_id: str
    epoch: int
    key_id: str
    seq: int
    created_at: str
    expires_at: str | None
    policy: str
    recipients: int
    unreachable: list[str]
    retries: list[str] = field(default_factory=list)
    untrusted_devices: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # devices not delivered to (v1.1 §7 check 11)
    key_wraps: dict = field(default_factory=dict)  # {"v1": n, "v2": n} wraps in the request the server accepted


@dataclass
class SyncReport:
    accepted: int = 0
    failed: int = 0


class Client:
    """One device: its store, its server, its sessions."""

    def __init__(self, store: Store, *, transport: httpx.BaseTransport | None = None,
                 on_wait: Callable[[str, int], None] | None = None, legacy: bool | None = None):
        self.store = store
        # legacy: a client of protocol 1.1 (publishes no prekeys, wraps v1 only), to test that old clients still talk
        self.legacy = os.environ.get(LEGACY_ENV) == "1.1" if legacy is None else legacy
        self._prekeys_checked = False  # the server's prekey supply looked at since this client opened
        self._pre_v12 = False  # the server answered 404/405 to a prekey request (before v1.2): not asked again
        self.server = store.meta("server")
        self.device = KeyPair(store.secret("device_seed"))
        self.device_id = self.device.id
        self.transport = transport
        self.api = Api(self.server, transport=transport, on_wait=on_wait)
        self._refreshed: set[str] | None = None  # conversations refreshed during one sync pass
        self.untrusted: list[dict] = []  # devices left out by `directory` since this client opened
        self._server_info: dict | None = None
        self._server_info_fetched = False
        self.purge_expired()

    # --- creating and opening stores ------------------------------------------------------

    @classmethod
    def init(cls, home, passphrase: str, *, server: str, name: str, join: bool = False,
             expires_days: int | None = None, kdf: str | None = None,
             transport: httpx.BaseTransport | None = None, register: bool = True,
             phrase: str | None = None, legacy: bool | None = None) -> Client:
        """A new store. Without `join`: a new user (master key) and its first
        device, which registers first (or, with `register=False`, at its first
        login): a server that cannot be reached, redirects or refuses leaves no
        store behind. With `phrase`, the master key restored from its recovery
        phrase and a new device for it. With `join`: only a device key, waiting
        for a certificate from the user's master key (`import_certificate`)."""
        server = server_address(server)
        if store_path(home).exists():
            raise StoreError("store_exists", f"{store_path(home)} already exists")
        try:  # checked before anything is written
            restored = None if phrase is None else KeyPair(seed_from_phrase(phrase))
        except PhraseError as exc:
            raise ClientError("invalid_phrase", str(exc)) from None
        device = KeyPair.generate()
        cert = master = session = None
        if not join:
            master = restored or KeyPair.generate()
            cert = certificate_issue(master, device_id=device.id, name=name, expires_at=expiry_from_days(expires_days),
                                     permissions=["manage_devices"])
            if register:
                api = Api(server, transport=transport)
                try:
                    session = login(api, device, certificate=cert)
                finally:
                    api.close()
        store = Store.create(home, passphrase, kdf=kdf)
        store.secret_set("device_seed", device.seed)
        if master is not None:
            store.secret_set("master_seed", master.seed)
        store.meta_set_many({"server": server, "device_name": name, "user_id": master.id if master else None,
                             "certificate": cert})
        client = cls(store, transport=transport, legacy=legacy)
        if session is not None:
            client._adopt(session)
            client._prekeys_after_registration()
        return client

    @classmethod
    def open(cls, home, passphrase: str, **kw) -> Client:
        return cls(Store.open(home, passphrase), **kw)

    def close(self) -> None:
        self.api.close()
        self.store.close()

    @property
    def user_id(self) -> str | None:
        return self.store.meta("user_id")

    @property
    def certificate(self) -> dict | None:
        return self.store.meta("certificate")

    @property
    def master(self) -> KeyPair | None:
        seed = self.store.secret("master_seed")
        return None if seed is None else KeyPair(seed)

    def recovery_phrase(self) -> str:
        """The master seed as 24 BIP39 words (`init --restore` takes them back)."""
        master = self.master
        if master is None:
            raise ClientError("no_master_key", "this store does not hold the master key")
        return recovery_phrase(master.seed)

    def whoami(self) -> dict:
        cert = self.certificate
        return {"user_id": self.user_id, "device_id": self.device_id, "device_name": self.store.meta("device_name"),
                "server": self.server, "has_master_key": self.master is not None,
                "certificate": cert, "store": str(self.store.path)}

    def server_set(self, server: str) -> dict:
        """Point this store at another address of its server (a new name, or
        https:// after a redirect): a login there first, as every login sends
        this device's certificate (§3), so a server that does not know the
        device registers it, as `init` would. Tokens are bound to an origin,
        so the old one goes; nothing changes when the login fails."""
        server = server_address(server)
        session = None
        if self.certificate is not None:
            api = Api(server, transport=self.transport)
            try:
                session = login(api, self.device, certificate=self.certificate)
            finally:
                api.close()
            self._check_session(session)
        self.store.meta_set_many({"server": server})
        self.forget_token()
        self.api.close()
        self.server, self.api = server, Api(server, transport=self.transport, on_wait=self.api.on_wait)
        self._server_info_fetched = False
        self._prekeys_checked = False
        self._pre_v12 = False
        if session is not None:
            self._adopt(session)
            self._prekeys_after_registration()  # a server that just registered this device has none of its prekeys
        return self.whoami()

    # --- sessions (§3) --------------------------------------------------------------------------

    def login(self) -> Session:
        if self.certificate is None:
            raise ClientError("no_certificate", "this device has no certificate yet: import one first")
        return self._adopt(login(self.api, self.device, certificate=self.certificate))

    def _check_session(self, session: Session) -> None:
        if session.user_id != self.user_id or session.device_id != self.device_id:
            raise ClientError("server_mismatch", "the server logged us in as another user or device")

    def _adopt(self, session: Session) -> Session:
        self._check_session(session)
        self.store.secret_set("token", session.token.encode())
        self.store.meta_set_many({"token_expires_at": session.expires_at})
        return session

    def token(self) -> str:
        token = self.store.secret("token")
        if token is not None and self.store.meta("token_expires_at", 0) > time.time() + TOKEN_MARGIN_S:
            return token.decode()
        return self.login().token

    def forget_token(self) -> None:
        self.store.secret_set("token", None)

    def call(self, method: str, path: str, **kw):
        """A request in this device's session; an ended session logs in again once."""
        try:
            return self.api.request(method, path, token=self.token(), **kw)
        except ApiError as exc:
            if exc.status != 401:
                raise
        self.forget_token()
        return self.api.request(method, path, token=self.login().token, **kw)

    def master_call(self, method: str, path: str, **kw):
        master = self.master
        if master is None:
            raise ClientError("no_master_key", "this store does not hold the master key")
        session = login(self.api, master)
        try:
            return self.api.request(method, path, token=session.token, **kw)
        finally:
            self.api.request("POST", "/auth/logout", token=session.token)

    # --- devices (§2, §4) ---------------------------------------------------------------------

    def certify(self, device_id: str, *, name: str, expires_days: int | None = None,
                permissions: list[str] = ()) -> dict:
        """A certificate for another device of this user, signed offline with the master key."""
        master = self.master
        if master is None:
            raise ClientError("no_master_key", "this store does not hold the master key")
        try:
            return certificate_issue(master, device_id=device_id, name=name,
                                     expires_at=expiry_from_days(expires_days), permissions=list(permissions))
        except protocol.ProtocolError as exc:
            raise ClientError("invalid_name" if exc.code == "invalid_name" else "invalid_certificate",
                              exc.detail) from None

    def import_certificate(self, cert: dict) -> dict:
        """Adopt a certificate for this device's key and log in, which registers it."""
        try:
            parsed = protocol.cert_check_client(cert, user_id=cert.get("master") if isinstance(cert, dict) else "",
                                                device_id=self.device_id, now=int(time.time()))
        except protocol.ProtocolError as exc:
            raise ClientError("invalid_certificate", exc.detail) from None
        if self.user_id not in (None, parsed.master):
            raise ClientError("invalid_certificate", "the certificate is for another user")
        self.store.meta_set_many({"user_id": parsed.master, "certificate": cert, "device_name": parsed.name})
        self.forget_token()
        self.login()
        self._prekeys_after_registration()
        return self.whoami()

    def add_device(self, home, passphrase: str, *, name: str, expires_days: int | None = None,
                   permissions: list[str] = (), kdf: str | None = None) -> Client:
        """A new device store at `home`, certified by this store's master key and registered."""
        new = Client.init(home, passphrase, server=self.server, name=name, join=True, kdf=kdf,
                          transport=self.transport, legacy=self.legacy)
        new.import_certificate(self.certify(new.device_id, name=name, expires_days=expires_days,
                                            permissions=permissions))
        return new

    def devices(self) -> list[dict]:
        """This user's devices with last seen and pending counts (the multi-device status)."""
        now = int(time.time())
        out = []
        for device in self.call("GET", "/devices")["devices"]:
            try:
                protocol.cert_check_client(device.get("certificate"), user_id=self.user_id,
                                           device_id=device.get("device_id"), now=now)
                cert_ok = True
            except protocol.ProtocolError:
                cert_ok = False
            out.append({**{k: device.get(k) for k in (
                "device_id", "name", "permissions", "issued_at", "expires_at", "revoked_at", "last_seen_at",
                "pending_count", "current")}, "certificate_ok": cert_ok})
        return out

    def revoke(self, device_id: str) -> None:
        """Revoke with this device's session, or with the master key when this
        device may not (it lacks `manage_devices`)."""
        try:
            self.call("DELETE", f"/devices/{device_id}")
        except ApiError as exc:
            if exc.status != 403 or self.master is None:
                raise
            self.master_call("DELETE", f"/devices/{device_id}")
        if device_id == self.device_id:
            self.forget_token()
        with self.store.transaction() as db:
            db.execute("DELETE FROM directory WHERE device_id = ?", (device_id,))

    # --- directory: devices we encrypt to (§2 client rules) ---------------------------------

    def directory(self, user_id: str, *, refresh: bool = False) -> list[str]:
        """`user_id`'s active devices whose certificates verify against it. A
        device that fails is not used, and the user is told (an event)."""
        db = self.store.db
        now = int(time.time())
        if not refresh and db.execute("SELECT 1 FROM directory_fetched WHERE user_id = ?", (user_id,)).fetchone():
            cached = db.execute("SELECT device_id, certificate FROM directory WHERE user_id = ? ORDER BY device_id",
                                (user_id,)).fetchall()
            try:  # checked again at each use: a certificate may have expired since it was fetched
                for device_id, cert in cached:
                    protocol.cert_check_client(json.loads(cert), user_id=user_id, device_id=device_id, now=now)
                return [device_id for device_id, _ in cached]
            except protocol.ProtocolError:
                pass
        try:
            listed = self.call("GET", f"/users/{user_id}/devices")["devices"]
        except ApiError as exc:
            if exc.status != 404:
                raise
            listed = []
        good, bad = [], []
        for device in listed:
            device_id = device.get("device_id") if isinstance(device, dict) else None
            try:
                if not isinstance(device_id, str):
                    raise protocol.ProtocolError("device_id missing")
                cert = protocol.cert_check_client(device.get("certificate"), user_id=user_id, device_id=device_id,
                                                  now=now)
                good.append((user_id, device_id, cert.name, json.dumps(device["certificate"])))
            except protocol.ProtocolError as exc:
                bad.append({"user_id": user_id, "device_id": device_id, "reason": exc.detail})
        with self.store.transaction() as db:
            db.execute("DELETE FROM directory WHERE user_id = ?", (user_id,))
            db.executemany("INSERT INTO directory (user_id, device_id, name, certificate) VALUES (?, ?, ?, ?)", good)
            db.execute("INSERT OR REPLACE INTO directory_fetched (user_id, fetched_at) VALUES (?, ?)", (user_id, now))
            for problem in bad:
                self.store.event_add(db, kind="untrusted_device", detail=problem)
        self.untrusted += bad
        return sorted(row[1] for row in good)

    # --- prekeys: forward secrecy (§6b, v1.2) ------------------------------------------------

    def maintain_prekeys(self, *, now: float | None = None, check_server: bool = True) -> dict | None:
        """Publish, rotate, refill and erase this device's prekeys (§6b); what the
        server holds afterwards, or None from a server before v1.2 (or in legacy mode)."""
        with self.store.sync_lock():
            return self._maintain_prekeys(now=now, check_server=check_server)

    def _maintain_prekeys(self, *, now: float | None = None, check_server: bool = True) -> dict | None:
        """A signed prekey newer than SIGNED_PREKEY_ROTATE_S (a new one has a larger id),
        published; one-time prekeys topped up to ONE_TIME_TARGET when the server has fewer
        than ONE_TIME_LOW (or when it is asked, at start and on PREKEYS_LOW); an old signed
        prekey's private key erased OLD_SIGNED_PREKEY_KEEP_S after it was replaced."""
        if self.legacy or self.certificate is None:
            return None
        now = int(time.time() if now is None else now)
        expired = "sealed_private IS NOT NULL AND replaced_at IS NOT NULL AND replaced_at + ? <= ?"
        if self.store.db.execute(f"SELECT 1 FROM signed_prekeys WHERE {expired}",  # noqa: S608 - fixed text
                                 (OLD_SIGNED_PREKEY_KEEP_S, now)).fetchone():
            with self.store.transaction() as db:
                db.execute(f"UPDATE signed_prekeys SET sealed_private = NULL WHERE {expired}",  # noqa: S608
                           (OLD_SIGNED_PREKEY_KEEP_S, now))
        current = self._current_signed_prekey()
        if not check_server and current is not None and current["published"] and \
                current["created_at"] + SIGNED_PREKEY_ROTATE_S > now:
            return None  # nothing due, and nobody asked the server
        if self._pre_v12:
            return None  # told by this server already: v1 wraps only
        try:
            held = self.call("GET", "/devices/prekeys")
        except ApiError as exc:
            if exc.status in (404, 405):
                self._pre_v12 = True
                return None  # a server before v1.2: v1 wraps only
            raise
        self._prekeys_checked = True
        server_spk = held.get("signed_prekey") if isinstance(held, dict) else None
        server_spk_id = server_spk.get("id") if isinstance(server_spk, dict) else None
        count = held.get("one_time_count") if isinstance(held, dict) else None
        count = count if isinstance(count, int) and not isinstance(count, bool) else 0
        for _ in range(2):  # a second time only after a `stale_prekey` (the server holds a later id)
            if current is None or current["created_at"] + SIGNED_PREKEY_ROTATE_S <= now:
                current = self._new_signed_prekey(now, above=server_spk_id if protocol.prekey_id_ok(server_spk_id)
                                                  else 0)
            body = {}
            if not current["published"] or server_spk_id != current["id"]:
                body["signed_prekey"] = self._signed_prekey_wire(current)
            one_time = self._one_time_to_publish(count) if count < ONE_TIME_LOW else []
            if one_time:
                body["one_time"] = [{"id": i, "x25519": protocol.b64e(pub)} for i, pub in one_time]
            if not body:
                return {"signed_prekey_id": server_spk_id, "one_time_count": count}
            try:
                answer = self.call("PUT", "/devices/prekeys", json=body)
            except ApiError as exc:
                if exc.code != "stale_prekey":
                    raise
                held = self.call("GET", "/devices/prekeys")
                server_spk = held.get("signed_prekey") if isinstance(held, dict) else None
                server_spk_id = server_spk.get("id") if isinstance(server_spk, dict) else None
                current = None
                continue
            with self.store.transaction() as db:
                db.execute("UPDATE signed_prekeys SET published = 1 WHERE id = ?", (current["id"],))
                db.executemany("UPDATE one_time_prekeys SET published = 1 WHERE id = ?", [(i,) for i, _ in one_time])
                if db.execute("SELECT 1 FROM meta WHERE key = 'first_spk_published_at'").fetchone() is None:
                    db.execute("INSERT INTO meta (key, value) VALUES ('first_spk_published_at', ?)", (json.dumps(now),))
            return answer
        raise ClientError("stale_prekey", "the server keeps refusing this device's new signed prekey as stale")

    def _prekeys_after_registration(self) -> None:
        """Publish at registration; a failure does not undo it (the first sync publishes)."""
        try:
            self.maintain_prekeys()
        except (ApiError, NetworkError, ClientError) as exc:
            with self.store.transaction() as db:
                self.store.event_add(db, kind="prekeys_failed", detail={
                    "error": getattr(exc, "code", "network_error"),
                    "detail": f"publishing this device's prekeys failed, the next sync tries again: {exc}"})

    def _current_signed_prekey(self) -> sqlite3.Row | None:
        return self.store.db.execute("SELECT * FROM signed_prekeys WHERE replaced_at IS NULL AND sealed_private IS NOT "
                                     "NULL ORDER BY id DESC LIMIT 1").fetchone()

    def _new_signed_prekey(self, now: int, *, above: int = 0) -> sqlite3.Row:
        """A new signed prekey, its id above every earlier one (ours and the server's); the current one is replaced."""
        priv, _ = protocol.x25519_keypair()
        with self.store.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'next_signed_prekey_id'").fetchone()
            last = db.execute("SELECT max(id) FROM signed_prekeys").fetchone()[0] or 0
            new_id = max(json.loads(row[0]) if row else 1, last + 1, above + 1)
            db.execute("UPDATE signed_prekeys SET replaced_at = ? WHERE replaced_at IS NULL", (now,))
            db.execute("INSERT INTO signed_prekeys (id, sealed_private, created_at) VALUES (?, ?, ?)",
                       (new_id, self.store.seal(priv), now))
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_signed_prekey_id', ?)",
                       (json.dumps(new_id + 1),))
            return db.execute("SELECT * FROM signed_prekeys WHERE id = ?", (new_id,)).fetchone()

    def _signed_prekey_wire(self, row: sqlite3.Row) -> dict:
        pub = protocol.x25519_public_of(self.store.unseal(row["sealed_private"]))
        return protocol.spk_issue(device_seed=self.device.seed, id=row["id"], x25519_pub=pub,
                                  created_at=row["created_at"])

    def _one_time_to_publish(self, count: int) -> list[tuple[int, bytes]]:
        """(id, public key) of the one-time prekeys that bring the server's `count` to
        ONE_TIME_TARGET: those made before but not published yet first, then new ones."""
        want = min(max(ONE_TIME_TARGET - count, 0), ONE_TIME_PUT_MAX)
        out = [(r[0], protocol.x25519_public_of(self.store.unseal(r[1]))) for r in self.store.db.execute(
            "SELECT id, sealed_private FROM one_time_prekeys WHERE published = 0 ORDER BY id LIMIT ?", (want,))]
        if len(out) < want:
            fresh = [protocol.x25519_keypair() for _ in range(want - len(out))]
            with self.store.transaction() as db:
                row = db.execute("SELECT value FROM meta WHERE key = 'next_one_time_id'").fetchone()
                last = db.execute("SELECT max(id) FROM one_time_prekeys").fetchone()[0] or 0
                first = max(json.loads(row[0]) if row else 1, last + 1)
                db.executemany("INSERT INTO one_time_prekeys (id, sealed_private) VALUES (?, ?)",
                               [(first + i, self.store.seal(priv)) for i, (priv, _) in enumerate(fresh)])
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_one_time_id', ?)",
                           (json.dumps(first + len(fresh)),))
            out += [(first + i, pub) for i, (_, pub) in enumerate(fresh)]
        return out

    def prekeys(self) -> dict:
        """This device's prekeys as the store holds them, and the server's supply (`dm prekeys`)."""
        now = int(time.time())
        rows = self.store.db.execute("SELECT id, created_at, replaced_at, published, "
                                     "sealed_private IS NOT NULL AS held FROM signed_prekeys ORDER BY id").fetchall()
        held = None
        if not self.legacy:
            try:
                held = self.call("GET", "/devices/prekeys")
            except ApiError as exc:
                if exc.status not in (404, 405):
                    raise
        one_time = self.store.db.execute("SELECT count(*), sum(published) FROM one_time_prekeys").fetchone()
        server_spk = held.get("signed_prekey") if isinstance(held, dict) else None
        return {
            "legacy": self.legacy,
            "first_published_at": rfc3339(self.store.meta("first_spk_published_at")),
            "signed_prekeys": [{"id": r["id"], "created_at": rfc3339(r["created_at"]),
                                "age_days": round((now - r["created_at"]) / DAY_S, 2),
                                "replaced_at": rfc3339(r["replaced_at"]), "published": bool(r["published"]),
                                "private_key_held": bool(r["held"])} for r in rows],
            "one_time_private_keys": one_time[0], "one_time_published": one_time[1] or 0,
            "server": None if held is None else {
                "signed_prekey_id": server_spk.get("id") if isinstance(server_spk, dict) else None,
                "one_time_count": held.get("one_time_count")}}

    def _erase_used_one_time(self) -> None:
        """§6b: one-time private keys go once the deliveries whose wraps used them are ACKed
        (as received or as failed). Also at the start of a sync: a process that stopped
        between a store and its ACK gets those messages again, and holds their keys."""
        if self.store.db.execute("SELECT 1 FROM one_time_prekeys WHERE used = 1 LIMIT 1").fetchone():
            with self.store.transaction() as db:
                db.execute("DELETE FROM one_time_prekeys WHERE used = 1")

    # --- contacts and ids: local names, prefixes of known ids, safety numbers (§6) -------------

    def contacts(self) -> list[dict]:
        return [_contact_out(r) for r in self.store.db.execute("SELECT * FROM contacts ORDER BY name")]

    def contact(self, name: str) -> dict | None:
        row = self.store.db.execute("SELECT * FROM contacts WHERE name = ?", (name,)).fetchone()
        return None if row is None else _contact_out(row)

    def contact_add(self, name: str, user_ref: str, *, replace: bool = False) -> dict:
        """A local name for a user id; never sent to any server. `replace` points
        an existing name at another id; if the old one was verified, the contact
        is then shown as changed since verified until verified again."""
        problem = protocol.name_problem(name)
        if problem is None and (name == "me" or is_b58_key(name)):
            problem = "it reads as an id (or `me`)"
        if problem is not None:
            raise ClientError("invalid_name", f"contact name {name!r}: {problem}")
        user_id = self.resolve_user(user_ref)
        if user_id == self.user_id:
            raise ClientError("invalid_contact", "that is your own user id")
        with self.store.transaction() as db:
            other = db.execute("SELECT name FROM contacts WHERE user_id = ? AND name != ?", (user_id, name)).fetchone()
            if other is not None:
                raise ClientError("contact_exists", f"{user_id} is your contact {other[0]!r} already")
            old = db.execute("SELECT user_id FROM contacts WHERE name = ?", (name,)).fetchone()
            if old is None:
                db.execute("INSERT INTO contacts (name, user_id, added_at) VALUES (?, ?, ?)",
                           (name, user_id, int(time.time())))
            elif old[0] != user_id:
                if not replace:
                    raise ClientError("contact_exists", f"{name!r} is {old[0]}; --replace points it at {user_id}")
                db.execute("UPDATE contacts SET user_id = ? WHERE name = ?", (user_id, name))
        return self.contact(name)

    def contact_remove(self, name: str) -> None:
        with self.store.transaction() as db:
            if db.execute("DELETE FROM contacts WHERE name = ?", (name,)).rowcount == 0:
                raise ClientError("unknown_contact", f"no contact named {name!r}")

    def safety_number(self, name: str) -> dict:
        contact = self._contact_or_fail(name)
        return {**contact, "safety_number": protocol.safety_number(self.user_id, contact["user_id"])}

    def contact_mark_verified(self, name: str) -> dict:
        """The user compared the safety number with this contact: it verifies the contact's current user id."""
        contact = self._contact_or_fail(name)
        with self.store.transaction() as db:
            db.execute("UPDATE contacts SET verified_user_id = user_id, verified_at = ? WHERE name = ?",
                       (int(time.time()), name))
        return self.safety_number(contact["name"])

    def _contact_or_fail(self, name: str) -> dict:
        contact = self.contact(name)
        if contact is None:
            raise ClientError("unknown_contact", f"no contact named {name!r}")
        return contact

    def known_users(self) -> set[str]:
        """Every user id this store has seen: ours, contacts, participants, directory."""
        db = self.store.db
        users = {self.user_id} if self.user_id else set()
        users |= {r[0] for r in db.execute("SELECT user_id FROM contacts UNION SELECT user_id FROM directory")}
        for (participants,) in db.execute("SELECT participants FROM conversation_epochs"):
            users |= set(json.loads(participants))
        return users

    def resolve_user(self, ref: str) -> str:
        """A user id from a contact name, `me`, a full id, or a unique prefix of a known id."""
        contact = self.contact(ref)
        if contact is not None:
            return contact["user_id"]
        if ref == "me" and self.user_id:
            return self.user_id
        if is_b58_key(ref):
            return ref
        return by_prefix(ref, self.known_users(), what="user", none_code="invalid_user_id")

    def resolve_device(self, ref: str, known: list[str]) -> str:
        """A device id from a full id or a unique prefix of one of `known`."""
        return ref if is_b58_key(ref) else by_prefix(ref, known, what="device", none_code="unknown_device")

    def resolve_message(self, ref: str) -> str:
        """A message id from a full id or a unique prefix of one this device holds or sent."""
        if protocol.is_uuid(ref):
            return ref
        known = [r[0] for r in self.store.db.execute(
            "SELECT message_id FROM messages UNION SELECT message_id FROM delivery_status")]
        return by_prefix(ref.lower(), known, what="message", none_code="unknown_message")

    def device_name(self, device_id: str | None) -> str | None:
        """The certificate name of a device in the directory (untrusted text)."""
        row = self.store.db.execute("SELECT name FROM directory WHERE device_id = ?", (device_id,)).fetchone()
        if row is None and device_id == self.device_id:
            return self.store.meta("device_name")
        return None if row is None else row[0]

    # --- conversations (§5) ---------------------------------------------------------------------

    def _refusal(self, old: sqlite3.Row | None, view: ConversationView, expected: set[str] | None) -> str | None:
        """Why this view of a conversation cannot be true (§5, §6 "Membership a
        client accepts"), or None. A direct conversation has its two
        participants, and every conversation its kind, for ever."""
        if view.kind not in ("direct", "group"):
            return f"unknown kind {view.kind!r}"
        if expected is not None and set(view.participants) != expected:
            return "it does not have the participants asked for"
        if view.kind == "direct" and (len(view.participants) != 2 or self.user_id not in view.participants):
            return f"a direct conversation of {len(view.participants)} participants"
        if old is None:
            return None
        if old["kind"] != view.kind:
            return f"its kind changed from {old['kind']} to {view.kind}"
        if view.kind == "direct" and json.loads(old["participants"]) != list(view.participants):
            return "a direct conversation's participants never change"
        return None

    def _record_refusal(self, db: sqlite3.Connection, view: ConversationView, refusal: str) -> None:
        self.store.event_add(db, conversation_id=view.conversation_id, kind="membership_refused", detail={
            "epoch": view.epoch, "conversation_kind": view.kind, "participants": list(view.participants),
            "detail": f"the server showed this conversation with other members or kind ({refusal}): refused, "
                      "nothing is sent to them"})

    def _refuse_named_participants(self, view: ConversationView, named: object) -> None:
        """A `stale_epoch` answer names the participants (§7): for a direct
        conversation they can only be its two, or the answer is a lie."""
        if view.kind != "direct" or not isinstance(named, list) or sorted(map(str, named)) == list(view.participants):
            return
        refusal = "a direct conversation's participants never change"
        lied = ConversationView(conversation_id=view.conversation_id, kind=view.kind,
                                participants=tuple(sorted(map(str, named))), participants_sha256="",
                                created_by=view.created_by, epoch=view.epoch, retention=view.retention)
        with self.store.transaction() as db:
            self._record_refusal(db, lied, refusal)
        raise ClientError("membership_refused", f"conversation {view.conversation_id} refused: {refusal}",
                          conversation_id=view.conversation_id, participants=list(lied.participants), kind=view.kind)

    def _apply_view(self, db: sqlite3.Connection, view: ConversationView, *, actor: str | None = None,
                    accept_retention: bool = False, expected: set[str] | None = None) -> str | None:
        """Record what the server says a conversation is now; tell the user what
        changed. A view that cannot be true is not recorded at all: the user is
        warned, and the reason returned."""
        cid = view.conversation_id
        old = db.execute("SELECT * FROM conversations WHERE conversation_id = ?", (cid,)).fetchone()
        refusal = self._refusal(old, view, expected)
        if refusal is not None:
            self._record_refusal(db, view, refusal)
            return refusal
        known = db.execute("SELECT participants_sha256 FROM conversation_epochs WHERE conversation_id = ? AND epoch = ?",
                           (cid, view.epoch)).fetchone()
        if known is None:
            db.execute("INSERT INTO conversation_epochs (conversation_id, epoch, participants, participants_sha256) "
                       "VALUES (?, ?, ?, ?)", (cid, view.epoch, json.dumps(view.participants), view.participants_sha256))
        elif known[0] != view.participants_sha256:
            self.store.event_add(db, conversation_id=cid, kind="membership_fork", detail={
                "epoch": view.epoch, "detail": "the server has shown two different memberships for this epoch"})
        member = int(self.user_id in view.participants)
        if old is None:
            db.execute(
                "INSERT INTO conversations (conversation_id, kind, participants, participants_sha256, created_by, "
                "epoch, retention, retention_accepted, member) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cid, view.kind, json.dumps(view.participants), view.participants_sha256, view.created_by,
                 view.epoch, json.dumps(view.retention), json.dumps(view.retention), member))
            self.store.event_add(db, conversation_id=cid, kind="conversation", detail={
                "conversation_kind": view.kind, "participants": list(view.participants), "created_by": view.created_by,
                "retention": view.retention, "epoch": view.epoch})
            return None
        if view.epoch < old["epoch"]:
            return None  # older news than what we hold
        before = set(json.loads(old["participants"]))
        added, removed = sorted(set(view.participants) - before), sorted(before - set(view.participants))
        if added or removed:
            self.store.event_add(db, conversation_id=cid, kind="membership", detail={
                "added": added, "removed": removed, "actor": actor, "epoch": view.epoch,
                "participants": list(view.participants)})
        if json.loads(old["retention"]) != view.retention:
            self.store.event_add(db, conversation_id=cid, kind="retention", detail={
                "old": json.loads(old["retention"]), "new": view.retention, "actor": actor})
        db.execute(
            "UPDATE conversations SET participants = ?, participants_sha256 = ?, epoch = ?, retention = ?, member = ?"
            + (", retention_accepted = retention" if accept_retention else "") + " WHERE conversation_id = ?",
            (json.dumps(view.participants), view.participants_sha256, view.epoch, json.dumps(view.retention),
             member, cid))
        return None

    def _store_view(self, wire: dict, *, actor: str | None = None, accept_retention: bool = False,
                    expected: set[str] | None = None) -> ConversationView:
        """The server's view, checked and recorded; `membership_refused` when it cannot be true."""
        view = ConversationView.from_wire(wire)
        with self.store.transaction() as db:
            refusal = self._apply_view(db, view, actor=actor, accept_retention=accept_retention, expected=expected)
        if refusal is not None:
            raise ClientError("membership_refused", f"conversation {view.conversation_id} refused: {refusal}",
                              conversation_id=view.conversation_id, participants=list(view.participants),
                              kind=view.kind)
        return view

    def _local_view(self, conversation_id: str) -> sqlite3.Row | None:
        return self.store.db.execute("SELECT * FROM conversations WHERE conversation_id = ?",
                                     (conversation_id,)).fetchone()

    def resolve(self, ref: str) -> str:
        """A conversation id from a full id, a unique prefix of a known one, or a
        contact's name (their direct conversation, known to this device)."""
        if protocol.is_uuid(ref):
            return ref
        contact = self.contact(ref)
        if contact is not None:
            direct = self.direct_conversation(contact["user_id"])
            if direct is None:
                raise ClientError("unknown_conversation", f"no direct conversation with {ref!r} yet: "
                                  "`dm send --to NAME` or `dm new NAME` starts one")
            return direct
        known = [r[0] for r in self.store.db.execute("SELECT conversation_id FROM conversations")]
        return by_prefix(ref.lower(), known, what="conversation", none_code="unknown_conversation")

    def direct_conversation(self, user_id: str) -> str | None:
        """Our direct conversation with `user_id`, if this device knows it."""
        row = self.store.db.execute("SELECT conversation_id FROM conversations WHERE kind = 'direct' AND member = 1 "
                                    "AND participants = ?", (json.dumps(sorted({self.user_id, user_id})),)).fetchone()
        return None if row is None else row[0]

    def direct_conversation_with(self, user_id: str) -> str:
        """Find or create the direct conversation with `user_id` (the server answers an existing one)."""
        return self.direct_conversation(user_id) or self.create_conversation([user_id])[0]["conversation_id"]

    def conversation(self, conversation_id: str, *, refresh: bool = False) -> ConversationView:
        row = self._local_view(conversation_id)
        if row is not None and row["member"] and not refresh:
            return ConversationView.from_row(row)
        try:
            wire = self.call("GET", f"/dms/conversations/{conversation_id}")
        except ApiError as exc:
            if exc.status != 404:
                raise
            if row is not None and row["member"]:
                with self.store.transaction() as db:
                    db.execute("UPDATE conversations SET member = 0 WHERE conversation_id = ?", (conversation_id,))
                    self.store.event_add(db, conversation_id=conversation_id, kind="membership", detail={
                        "added": [], "removed": [self.user_id], "actor": None, "epoch": row["epoch"]})
            raise ClientError("not_found", "no such conversation, or you are not a participant") from None
        return self._store_view(wire)

    def _conversation_pages(self) -> list:
        """Every page of GET /dms/conversations (v1.1 pages it; an older server sends one list)."""
        wires, after = [], None
        while True:
            page = self.call("GET", "/dms/conversations",
                             params={"limit": CONVERSATION_PAGE, **({"after": after} if after else {})})
            wires += page["conversations"]
            if not page.get("has_more") or not page.get("cursor") or page.get("cursor") == after:
                return wires
            after = page["cursor"]

    def conversations(self) -> list[dict]:
        """Every conversation the server lists, checked; one refused (§6) keeps
        our record of it and is shown as a warning, not as the server's version."""
        views, current = [], set()
        for wire in self._conversation_pages():
            try:
                views.append(self._store_view(wire))
            except ClientError as exc:
                if exc.code != "membership_refused":
                    raise
                current.add(exc.extra["conversation_id"])
                row = self._local_view(exc.extra["conversation_id"])
                if row is not None:
                    views.append(ConversationView.from_row(row))
        current |= {v.conversation_id for v in views}
        with self.store.transaction() as db:
            for row in db.execute("SELECT conversation_id, epoch FROM conversations WHERE member = 1").fetchall():
                if row[0] not in current:
                    db.execute("UPDATE conversations SET member = 0 WHERE conversation_id = ?", (row[0],))
                    self.store.event_add(db, conversation_id=row[0], kind="membership", detail={
                        "added": [], "removed": [self.user_id], "actor": None, "epoch": row[1]})
        return [v.wire() for v in views]

    def server_info(self) -> dict | None:
        """`GET /server` (§4): the server's description, or None from a server
        without it. A hint for messages to the user, never a security input."""
        if not self._server_info_fetched:
            try:
                info = self.api.request("GET", "/server", token="")
            except ApiError:
                info = None
            self._server_info = info if isinstance(info, dict) else None
            self._server_info_fetched = True
        return self._server_info

    def create_conversation(self, user_ids: list[str], *, retention: dict | None = None) -> tuple[dict, bool]:
        body = {"participants": sorted(set(user_ids))}
        if retention is not None:
            check_retention(retention)
            body["retention"] = retention
        status, wire = self.call("POST", "/dms/conversations", json=body, with_status=True)
        return self._store_view(wire, expected={*body["participants"], self.user_id}).wire(), status == 201

    def set_retention(self, conversation_id: str, retention: dict) -> dict:
        check_retention(retention)
        wire = self.call("PATCH", f"/dms/conversations/{conversation_id}", json={"retention": retention})
        return self._store_view(wire, actor=self.user_id, accept_retention=True).wire()

    def add_participants(self, conversation_id: str, user_ids: list[str]) -> dict:
        wire = self.call("POST", f"/dms/conversations/{conversation_id}/participants", json={"add": user_ids})
        return self._store_view(wire, actor=self.user_id).wire()

    def remove_participant(self, conversation_id: str, user_id: str) -> dict | None:
        self.call("DELETE", f"/dms/conversations/{conversation_id}/participants/{user_id}")
        if user_id == self.user_id:
            with self.store.transaction() as db:
                db.execute("UPDATE conversations SET member = 0 WHERE conversation_id = ?", (conversation_id,))
            return None
        return self.conversation(conversation_id, refresh=True).wire()

    def apply_conversation_update(self, d: dict) -> None:
        """A gateway CONVERSATION_UPDATE (§9)."""
        change = d.get("change") if isinstance(d.get("change"), dict) else {}
        self._store_view(d.get("conversation"), actor=change.get("actor"))

    # --- sending (§6, §7) ----------------------------------------------------------------------

    def _sender_key(self, conversation_id: str, epoch: int) -> tuple[bytes, str]:
        """This device's key for (conversation, epoch): a fresh one for every new
        epoch, and within one a new one after MAX_KEY_USES messages or MAX_KEY_AGE_S
        (§6b "Sender keys age"; a key from before schema 3 has no age and is replaced)."""
        now = int(time.time())
        with self.store.transaction() as db:
            row = db.execute("SELECT generation, sealed_key, used, created_at FROM sender_keys "
                             "WHERE conversation_id = ? AND epoch = ? ORDER BY generation DESC LIMIT 1",
                             (conversation_id, epoch)).fetchone()
            if (row is not None and row["used"] < crypto.MAX_KEY_USES
                    and (row["created_at"] or 0) + crypto.MAX_KEY_AGE_S > now):
                key = self.store.unseal(row["sealed_key"])
                return key, protocol.key_id(key)
            key = crypto.new_group_key()
            db.execute("INSERT INTO sender_keys (conversation_id, epoch, generation, key_id, sealed_key, probed_at, "
                       "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (conversation_id, epoch, 0 if row is None else row["generation"] + 1, protocol.key_id(key),
                        self.store.seal(key), now, now))
        return key, protocol.key_id(key)

    def _recipient_devices(self, view: ConversationView, *, refresh: bool = False) -> list[str]:
        devices = []
        for user_id in view.participants:
            devices += self.directory(user_id, refresh=refresh)
        return sorted(d for d in devices if d != self.device_id)

    def _next_seq(self, conversation_id: str) -> int:
        with self.store.transaction() as db:
            seq = db.execute("SELECT next_seq FROM conversations WHERE conversation_id = ?",
                             (conversation_id,)).fetchone()[0]
            db.execute("UPDATE conversations SET next_seq = ? WHERE conversation_id = ?", (seq + 1, conversation_id))
        return seq

    def send(self, conversation_id: str, text: str, *,
             confirm_retention: Callable[[dict, dict], bool] | None = None) -> SendResult:
        """Encrypt and send one text message, handling the server's answers:
        `stale_epoch` (refresh, new key), `retention_changed` (ask the user),
        `mismatched_devices` (refresh the directory), `missing_key_wraps` (add
        them), 429 (wait Retry-After, in Api) and network errors (same body
        again). Every attempt carries the same message_id."""
        if not text.strip():
            raise ClientError("empty_message", "the message is empty: there is nothing to send")
        view = self.conversation(conversation_id)
        seq = self._next_seq(conversation_id)
        try:
            return self._send(view, text, seq, confirm_retention)
        except (ClientError, ApiError):
            # Refused for good, so nothing was stored: give the seq back unless a later
            # send took one, so recipients see no false gap. (After a network error the
            # message may be stored; then the seq stays used.)
            with self.store.transaction() as db:
                db.execute("UPDATE conversations SET next_seq = ? WHERE conversation_id = ? AND next_seq = ?",
                           (seq, conversation_id, seq + 1))
            raise

    def _send(self, view: ConversationView, text: str, seq: int,
              confirm_retention: Callable[[dict, dict], bool] | None) -> SendResult:
        conversation_id = view.conversation_id
        accepted = json.loads(self._local_view(conversation_id)["retention_accepted"])
        message_id = str(uuid.uuid4())
        plaintext = crypto.plaintext_encode(body=text, sent_at=_now_ms(), seq=seq)
        retries: list[str] = []
        sealed = wraps = None
        key = key_id = None
        probing = False
        network_failures = 0
        last_mismatch = None
        for _ in range(SEND_ATTEMPTS):
            if sealed is None:
                key, key_id = self._sender_key(conversation_id, view.epoch)
                sealed = crypto.seal(device=self.device, conversation_id=conversation_id, epoch=view.epoch,
                                     message_id=message_id, group_key=key,
                                     participants_sha256=view.participants_sha256, plaintext=plaintext)
                wraps = None
                made: dict[str, dict] = {}  # wraps of this key made by this send: a retry claims no prekeys again
            if wraps is None:
                wraps, probing = self._plan_wraps(view, key, key_id, made)
                made.update((d, w) for d, w in wraps.items() if w is not None)
            body = {"message_id": message_id, "conversation_id": conversation_id, "epoch": view.epoch,
                    "participants_sha256": view.participants_sha256, "retention": accepted, **sealed,
                    "recipients": [{"device_id": d, "key_wrap": w} for d, w in sorted(wraps.items())]}
            try:
                answer = self.call("POST", "/dms/send", json=body)
            except NetworkError:
                if network_failures == len(NETWORK_BACKOFF_S):
                    raise
                retries.append("network")
                time.sleep(NETWORK_BACKOFF_S[network_failures])
                network_failures += 1
                continue
            except ApiError as exc:
                retries.append(exc.code)
                if exc.code == "stale_epoch":
                    self._refuse_named_participants(view, exc.body.get("participants"))
                    view = self.conversation(conversation_id, refresh=True)
                    for user_id in view.participants:
                        self.directory(user_id, refresh=True)
                    sealed = None
                elif exc.code == "retention_changed":
                    new = exc.body.get("retention")
                    self.conversation(conversation_id, refresh=True)
                    check_retention(new)  # beyond what this client accepts (its replay window): not sent
                    if confirm_retention is None or not confirm_retention(accepted, new):
                        raise ClientError("retention_changed", "the conversation's retention changed; not sent",
                                          retention=new, previous=accepted) from None
                    accepted = new
                    with self.store.transaction() as db:
                        db.execute("UPDATE conversations SET retention_accepted = ? WHERE conversation_id = ?",
                                   (json.dumps(new), conversation_id))
                elif exc.code == "mismatched_devices":
                    mismatch = (exc.body.get("missing"), exc.body.get("extra"))
                    if mismatch == last_mismatch:
                        raise ClientError("untrusted_device", "the server requires devices whose certificates do "
                                          "not verify; not sent", missing=mismatch[0], extra=mismatch[1]) from None
                    last_mismatch = mismatch
                    self._recipient_devices(view, refresh=True)
                    wraps = None
                elif exc.code == "missing_key_wraps":
                    lacking = [d for d in exc.body.get("devices", []) if d in wraps]
                    new = {**self._stored_wraps(view.conversation_id, key_id, lacking),  # a probe left them out
                           **{d: made[d] for d in lacking if d in made}}
                    new.update(self._new_wraps(view, key, [d for d in lacking if d not in new]))
                    made.update((d, w) for d, w in new.items() if w is not None)
                    withheld = sorted(d for d in lacking if new.get(d) is None)
                    if withheld:
                        raise ClientError("prekeys_withheld", "the server wants key wraps for devices it gives no "
                                          "prekeys for; not sent", devices=withheld) from None
                    wraps.update(new)
                elif exc.code == "mailbox_full":
                    raise ClientError("mailbox_full", "every recipient device's mailbox is full; not sent",
                                      devices=exc.body.get("devices", [])) from None
                else:
                    raise
                continue
            self._store_sent(view, message_id, plaintext, key_id, wraps, answer, seq, probed=probing)
            return SendResult(
                message_id=message_id, conversation_id=conversation_id, epoch=view.epoch, key_id=key_id, seq=seq,
                created_at=answer["created_at"], expires_at=answer["expires_at"], policy=answer["policy"],
                recipients=answer["recipients"], unreachable=answer["unreachable"], retries=retries,
                untrusted_devices=[p for p in self.untrusted if p["user_id"] in view.participants],
                skipped=self._skipped(answer.get("skipped")), key_wraps=_wrap_counts(wraps))
        raise ClientError("send_failed", f"gave up after {SEND_ATTEMPTS} attempts", retries=retries)

    def _skipped(self, skipped: object) -> list[dict]:
        """The send answer's `skipped` devices (absent from older servers), with the user each belongs to."""
        out = []
        for entry in skipped if isinstance(skipped, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("device_id"), str):
                row = self.store.db.execute("SELECT user_id FROM directory WHERE device_id = ?",
                                            (entry["device_id"],)).fetchone()
                out.append({"device_id": entry["device_id"], "user_id": row[0] if row else None,
                            "reason": str(entry.get("reason") or "mailbox_full")})
        return out

    def _plan_wraps(self, view: ConversationView, key: bytes, key_id: str,
                    made: dict[str, dict] | None = None) -> tuple[dict, bool]:
        """device_id -> wrap, or None where the device holds the key already.

        A wrap is needed until the recipient ACKs a message carrying one (§7,
        check 10), which the sender cannot see. So a device known to hold the
        key gets none; one wrapped before but not known to hold it gets a wrap
        again, except in a probe — at most one per WRAP_PROBE_S per key — that
        leaves them out and lets `missing_key_wraps` name those still lacking it.
        This keeps offline recipients from costing every message a second attempt.

        A v2 wrap sent before is sent again as it was (§6b: prekeys are claimed only
        for a device that needs a new wrap); the others get a new one (`_new_wraps`)."""
        known = {r[0]: (r[1], r[2]) for r in self.store.db.execute(
            "SELECT device_id, holds_key, wrap FROM wraps_sent WHERE conversation_id = ? AND key_id = ?",
            (view.conversation_id, key_id))}
        probed_at = self.store.db.execute("SELECT probed_at FROM sender_keys WHERE key_id = ?", (key_id,)).fetchone()[0]
        probing = time.time() - probed_at >= WRAP_PROBE_S and any(not holds for holds, _ in known.values())
        wraps, new = {}, []
        for d in self._recipient_devices(view):
            holds, stored = known.get(d, (0, None))
            if holds or (probing and d in known):
                wraps[d] = None
            elif stored is not None:
                wraps[d] = json.loads(stored)
            elif made and d in made:
                wraps[d] = made[d]
            else:
                new.append(d)
        wraps.update(self._new_wraps(view, key, new))
        return wraps, probing

    def _stored_wraps(self, conversation_id: str, key_id: str, devices: list[str]) -> dict[str, dict]:
        rows = self.store.db.execute("SELECT device_id, wrap FROM wraps_sent WHERE conversation_id = ? AND key_id = ? "
                                     "AND wrap IS NOT NULL", (conversation_id, key_id)).fetchall()
        return {r[0]: json.loads(r[1]) for r in rows if r[0] in devices}

    def _claim(self, devices: list[str]) -> dict[str, dict] | None:
        """POST /dms/prekeys/claim: device_id -> its entry; None from a server before v1.2."""
        if self._pre_v12:
            return None
        claimed: dict[str, dict] = {}
        try:
            for start in range(0, len(devices), CLAIM_PAGE):
                chunk = devices[start:start + CLAIM_PAGE]
                answer = self.call("POST", "/dms/prekeys/claim", json={"devices": chunk})
                entries = answer.get("prekeys") if isinstance(answer, dict) else None
                for entry in entries if isinstance(entries, list) else []:
                    if isinstance(entry, dict) and entry.get("device_id") in chunk:
                        claimed.setdefault(entry["device_id"], entry)
        except ApiError as exc:
            if exc.status not in (404, 405):
                raise
            self._pre_v12 = True
            return None
        return claimed

    def _new_wraps(self, view: ConversationView, key: bytes, devices: list[str]) -> dict[str, dict | None]:
        """New wraps of `key` for `devices` (§6b "When v2 is used"): their prekeys
        claimed in one call, each signed prekey verified against the device id the
        directory certified; v2 for every device with a signed prekey, v1 only for
        one without (an older client) or from a server before v1.2. A device the
        claim leaves out gets None (the server's answer to the send says why). A
        signed prekey that does not verify is refused: never replaced by a v1 wrap;
        so is "no signed prekey" (or an older one) for a device that had one before."""
        if not devices:
            return {}
        claimed = None if self.legacy else self._claim(devices)  # None: nobody has prekeys
        seen = {} if self.legacy else {r[0]: r[1] for r in self.store.db.execute(
            "SELECT device_id, signed_prekey_id FROM prekeys_seen")}
        wraps, invalid, newest = {}, [], []
        for d in devices:
            entry = {"signed_prekey": None} if claimed is None else claimed.get(d)
            if entry is None:
                wraps[d] = None
            elif "signed_prekey" not in entry:
                invalid.append({"device_id": d, "reason": "the claim answer has no signed_prekey field"})
            elif entry["signed_prekey"] is None and d in seen:
                # A device never takes its signed prekey back (the server drops it only with the device).
                invalid.append({"device_id": d, "reason": f"the server says it has no signed prekey, but it handed "
                                                          f"out this device's signed prekey {seen[d]} before"})
            elif entry["signed_prekey"] is None:
                wraps[d] = crypto.wrap(device=self.device, recipient_device=d, conversation_id=view.conversation_id,
                                       epoch=view.epoch, group_key=key)
            else:
                try:
                    spk = protocol.spk_parse(entry["signed_prekey"], device=d)
                    one_time = None if entry.get("one_time") is None else protocol.otk_parse(entry["one_time"])
                    if spk.id < seen.get(d, 0):
                        raise protocol.ProtocolError(f"signed prekey {spk.id} is older than {seen[d]}, "
                                                     "handed out before")
                except protocol.ProtocolError as exc:
                    invalid.append({"device_id": d, "reason": exc.detail})
                    continue
                wraps[d] = crypto.wrap_v2(device=self.device, recipient_device=d, conversation_id=view.conversation_id,
                                          epoch=view.epoch, group_key=key, signed_prekey=spk, one_time=one_time)
                newest.append((d, spk.id, int(time.time())))
        if newest:
            with self.store.transaction() as db:
                db.executemany("INSERT INTO prekeys_seen (device_id, signed_prekey_id, seen_at) VALUES (?, ?, ?) "
                               "ON CONFLICT DO UPDATE SET signed_prekey_id = max(signed_prekey_id, "
                               "excluded.signed_prekey_id), seen_at = excluded.seen_at", newest)
        if invalid:
            with self.store.transaction() as db:
                for problem in invalid:
                    self.store.event_add(db, conversation_id=view.conversation_id, kind="invalid_prekey", detail={
                        **problem, "detail": "the server handed out no usable prekey for this device: "
                                             "nothing was sent (a v1 wrap would give up forward secrecy)"})
            raise ClientError("invalid_prekey", f"the server handed out no usable signed prekey for {len(invalid)} "
                              "device(s): one that does not verify, none for a device that had one, or an older "
                              "one; not sent", devices=invalid)
        return wraps

    def _store_sent(self, view: ConversationView, message_id: str, plaintext: bytes, key_id: str, wraps: dict,
                    answer: dict, seq: int, *, probed: bool) -> None:
        with self.store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO messages (sender_device, message_id, conversation_id, sender, outgoing, epoch, "
                "seq, sent_at, created_at, expires_at, policy, sealed_body, stored_at, shown) "
                "VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (self.device_id, message_id, view.conversation_id, self.user_id, view.epoch, seq,
                 json.loads(plaintext)["sent_at"], parse_time(answer["created_at"]), parse_time(answer["expires_at"]),
                 answer["policy"], self.store.seal(plaintext), int(time.time())))
            # Accepted without a wrap: the server holds a receipt, so that device holds the key.
            # A v2 wrap is kept to be sent again until then; a v1 one is not (the device may
            # publish a prekey meanwhile, and would then refuse it, §6b).
            db.executemany("INSERT INTO wraps_sent (conversation_id, key_id, device_id, holds_key, wrap) "
                           "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET holds_key = max(holds_key, "
                           "excluded.holds_key), wrap = CASE WHEN excluded.holds_key THEN NULL ELSE "
                           "coalesce(excluded.wrap, wrap) END",
                           [(view.conversation_id, key_id, d, int(w is None),
                             json.dumps(w) if w is not None and w.get("v") == 2 else None)
                            for d, w in wraps.items()])
            db.execute("UPDATE sender_keys SET used = used + 1" + (", probed_at = ?" if probed else "") +
                       " WHERE key_id = ?", (int(time.time()), key_id) if probed else (key_id,))
            # Stored for `recipients` devices, not for the skipped: the status until the server says more.
            skipped = answer.get("skipped") if isinstance(answer.get("skipped"), list) else []
            counts = {**dict.fromkeys(DELIVERY_STATES, 0), "pending": answer["recipients"], "skipped": len(skipped)}
            self._keep_status(message_id, view.conversation_id, counts, None, db=db)

    # --- delivery status (§7a) --------------------------------------------------------------------

    def message_status(self, message_id: str) -> dict:
        """The server's status of one of our user's messages, kept in the store."""
        try:
            status = self.call("GET", f"/dms/messages/{message_id}/status")
        except ApiError as exc:
            if exc.status != 404:
                raise
            raise ClientError("not_found", "no such message of yours, or the server no longer remembers it") from None
        self._keep_statuses([status])
        return status

    def refresh_statuses(self, message_ids: list[str]) -> None:
        """The latest status of these messages, in one POST /dms/status per 500."""
        ids = sorted(set(message_ids))
        for start in range(0, len(ids), STATUS_PAGE):
            answer = self.call("POST", "/dms/status", json={"message_ids": ids[start:start + STATUS_PAGE]})
            self._keep_statuses(answer.get("statuses") if isinstance(answer, dict) else None)

    def stored_status(self, message_id: str) -> dict | None:
        """The latest status this store knows: `devices` is None when only counts came since (DM_STATUS)."""
        row = self.store.db.execute("SELECT * FROM delivery_status WHERE message_id = ?", (message_id,)).fetchone()
        if row is None:
            return None
        return {"message_id": row["message_id"], "conversation_id": row["conversation_id"],
                "counts": json.loads(row["counts"]), "devices": None if row["devices"] is None else json.loads(
                    row["devices"]), "updated_at": rfc3339(row["updated_at"])}

    def apply_status_event(self, d: dict) -> dict | None:
        """A gateway DM_STATUS (§9): kept, and returned as an item for the user,
        unless malformed or older than what the store holds."""
        counts = delivery_counts(d.get("counts"))
        if not protocol.is_uuid(d.get("message_id")) or counts is None:
            return None
        cid = d.get("conversation_id") if protocol.is_uuid(d.get("conversation_id")) else None
        if not self._keep_status(d["message_id"], cid, counts, None):
            return None
        return {"type": "status", "message_id": d["message_id"], "conversation_id": cid, "counts": counts,
                "mark": delivery_mark(counts)}

    def catch_up_statuses(self) -> list[dict]:
        """After a (re)connection: the changes that DM_STATUS events would have
        told while away, for our messages still pending somewhere (one POST)."""
        before = {r[0]: json.loads(r[1]) for r in self.store.db.execute(
            "SELECT message_id, counts FROM delivery_status ORDER BY updated_at DESC LIMIT ?", (STATUS_PAGE,))}
        before = {m: c for m, c in before.items() if c.get("pending")}
        if not before:
            return []
        self.refresh_statuses(list(before))
        items = []
        for message_id, old in sorted(before.items()):
            now = self.stored_status(message_id)
            if now["counts"] != old:
                items.append({"type": "status", "message_id": message_id, "conversation_id": now["conversation_id"],
                              "counts": now["counts"], "mark": delivery_mark(now["counts"])})
        return items

    def with_status(self, items: list[dict], *, refresh: bool) -> bool:
        """Our own messages among `items` get their `status` (counts) and
        `mark`, refreshed first in one call when `refresh`. False when the
        refresh failed (no network, or a server before v1.1 §7a): the marks
        are then the last this store knows."""
        own = [i for i in items if i.get("type") == "message" and i.get("sender") == self.user_id]
        online = True
        if refresh and own:
            try:
                self.refresh_statuses([i["message_id"] for i in own])
            except (NetworkError, ApiError):
                online = False
        for item in own:
            stored = self.stored_status(item["message_id"])
            item["status"] = None if stored is None else stored["counts"]
            item["mark"] = delivery_mark(item["status"])
        return online

    def _keep_statuses(self, statuses: object) -> None:
        for status in statuses if isinstance(statuses, list) else []:
            if not isinstance(status, dict) or not protocol.is_uuid(status.get("message_id")):
                continue
            counts, devices = delivery_counts(status.get("counts")), status.get("devices")
            if counts is not None:
                cid = status.get("conversation_id")
                self._keep_status(status["message_id"], cid if protocol.is_uuid(cid) else None, counts,
                                  devices if isinstance(devices, list) else None)

    def _keep_status(self, message_id: str, conversation_id: str | None, counts: dict, devices: list | None,
                     db: sqlite3.Connection | None = None) -> bool:
        """Store a status unless the store holds a later one; True if stored."""
        with (contextlib.nullcontext(db) if db is not None else self.store.transaction()) as db:
            old = db.execute("SELECT counts FROM delivery_status WHERE message_id = ?", (message_id,)).fetchone()
            if old is not None and (_progress(json.loads(old[0])) > _progress(counts)
                                    or (devices is None and json.loads(old[0]) == counts)):
                return False
            db.execute("INSERT OR REPLACE INTO delivery_status (message_id, conversation_id, counts, devices, "
                       "updated_at) VALUES (?, ?, ?, ?, ?)",
                       (message_id, conversation_id, json.dumps(counts),
                        None if devices is None else json.dumps(devices), int(time.time())))
        return True

    # --- receiving (§6) ---------------------------------------------------------------------------

    def sync(self, *, progress: Callable[[int, int | None], None] | None = None, total: int | None = None,
             limit: int = SYNC_PAGE) -> SyncReport:
        """Fetch pending messages, check and store each, then ACK the page
        (store first: a crash before storing means the message comes again).
        Pages on with `after`, then finishes with passes without it (§7)."""
        with self.store.sync_lock():
            self._prekeys_at_sync()
            return self._sync(progress=progress, total=total, limit=limit)

    def _prekeys_at_sync(self) -> None:
        """At start (the first sync of this client) the server's supply is checked;
        rotation is due locally. A failure here is told, and the sync goes on."""
        try:
            self._maintain_prekeys(check_server=not self._prekeys_checked)
        except (ApiError, ClientError) as exc:
            self._prekeys_checked = True  # not again at every sync of a long-running listener
            with self.store.transaction() as db:
                self.store.event_add(db, kind="prekeys_failed", detail={
                    "error": exc.code, "detail": f"publishing this device's prekeys failed: {exc.detail}"})

    def _sync(self, *, progress, total, limit) -> SyncReport:
        report = SyncReport()
        self._erase_used_one_time()
        if progress is not None and total is None:
            total = next((d["pending_count"] for d in self.call("GET", "/devices")["devices"] if d["current"]), None)
        after = None
        self._refreshed = set()
        try:
            while True:
                page = self.call("POST", "/dms/sync", json={"limit": limit, **({"after": after} if after else {})})
                ok, failed = [], []
                for msg in page["messages"]:
                    accepted, ackable_id = self._receive(msg)
                    if ackable_id is not None:
                        (ok if accepted else failed).append(ackable_id)
                    report.accepted += accepted
                    report.failed += not accepted
                    if progress is not None:
                        progress(report.accepted + report.failed, total)
                if ok or failed:
                    self.call("POST", "/dms/ack", json={"message_ids": ok, "failed": failed})
                    self._erase_used_one_time()
                if page["has_more"]:
                    after = page["cursor"]
                elif after is None or not (ok or failed):
                    return report
                else:
                    after = None
        finally:
            self._refreshed = None

    def _receive(self, msg: object) -> tuple[bool, str | None]:
        """Every check of §6 "Receiving", in its order; the message is stored as
        accepted, or recorded as failed. Returns (accepted, id to ACK)."""
        message_id = msg.get("message_id") if isinstance(msg, dict) else None
        ackable = message_id if protocol.is_uuid(message_id) else None
        now = time.time()
        # §6b: a one-time private key goes at the ACK of a delivery whose wrap used it (accepted or
        # failed); a wrap that does not open with it has not used it (a server corrupting one delivery
        # must not erase the key the re-sent wrap names), so it is kept.
        one_time_id = None
        opened = None  # (m, key) once a v2 wrap opened: the key is kept even if a later check fails
        try:
            m = crypto.parse(msg)
            crypto.check_certificate(m, now=int(now))
            warnings = self._check_membership(m)
            crypto.check_signature(m)
            try:
                key, fresh = self._open_key(m)
            except Rejected as rejected:
                if rejected.reason == "bad_key_id" and m.key_wrap is not None and m.key_wrap.get("v") == 2:
                    one_time_id = m.key_wrap["one_time_id"]  # the wrap opened (its key is not the message's)
                raise
            if fresh:
                one_time_id = m.key_wrap["one_time_id"]
                opened = (m, key)
            plaintext = crypto.decrypt(key, m)
            self._check_time(m, plaintext, now)
            self._check_wrap_version(m, plaintext)
            self._store_received(m, key, plaintext, warnings, one_time_id=one_time_id)
        except Rejected as rejected:
            self._record_failure(msg, rejected, one_time_id=one_time_id, opened=opened)
            return False, ackable
        return True, ackable

    def _epoch_view(self, conversation_id: str, epoch: int) -> tuple[list[str], str] | None:
        row = self.store.db.execute("SELECT participants, participants_sha256 FROM conversation_epochs "
                                    "WHERE conversation_id = ? AND epoch = ?", (conversation_id, epoch)).fetchone()
        return None if row is None else (json.loads(row[0]), row[1])

    def _epoch_views(self, conversation_id: str) -> dict[int, set[str]]:
        """Our own record of the conversation: its participants at each epoch this device saw."""
        return {epoch: set(json.loads(participants)) for epoch, participants in self.store.db.execute(
            "SELECT epoch, participants FROM conversation_epochs WHERE conversation_id = ?", (conversation_id,))}

    def _check_membership(self, m: crypto.Incoming) -> list[str]:
        """§6 "Receiving" and "Epochs a client accepts": the epoch is one the
        conversation had, the sender was a participant in it, and
        `participants_sha256` is our view of it; refresh once if not. Returns
        the warnings to show with the message."""
        cid = m.conversation_id
        if m.epoch < 1:
            raise Rejected("bad_epoch", f"epoch {m.epoch}: a conversation's epochs start at 1")
        view = self._epoch_view(cid, m.epoch)
        good = view is not None and m.sender in view[0] and view[1] == m.participants_sha256
        if not good and (self._refreshed is None or cid not in self._refreshed):
            if self._refreshed is not None:
                self._refreshed.add(cid)
            try:
                self.conversation(cid, refresh=True)
            except ClientError as exc:
                raise Rejected("membership_refused" if exc.code == "membership_refused" else "not_a_participant",
                               exc.detail) from None
            view = self._epoch_view(cid, m.epoch)
        row = self._local_view(cid)
        if row is None or m.epoch > row["epoch"]:
            raise Rejected("bad_epoch", f"epoch {m.epoch} is ahead of the conversation"
                           + ("" if row is None else f" (epoch {row['epoch']})"))
        seen = self._epoch_views(cid)
        warnings = []
        if view is not None:
            if m.sender not in view[0]:
                raise Rejected("not_a_participant", f"the sender is not a participant at epoch {m.epoch}")
            if view[1] != m.participants_sha256:
                with self.store.transaction() as db:
                    self.store.event_add(db, conversation_id=cid, kind="membership_fork", detail={
                        "epoch": m.epoch, "message_id": m.message_id, "sender": m.sender,
                        "detail": "the sender saw other participants than we do: the server may show "
                                  "different members to different people"})
                raise Rejected("participants_mismatch", "participants_sha256 differs from our view of the "
                               f"conversation at epoch {m.epoch}")
        else:
            # An epoch this device never saw (it was offline through it): its members cannot be
            # checked, so the sender must be a participant in the nearest epoch we saw before it or
            # in the nearest one after it (the current one, or one we saw later).
            before = max((e for e in seen if e < m.epoch), default=None)
            after = min((e for e in seen if e > m.epoch), default=None)  # the current one, at least
            if not any(e is not None and m.sender in seen[e] for e in (before, after)):
                raise Rejected("not_a_participant", f"the sender was not a participant around epoch {m.epoch} "
                               "as far as this device knows")
            warnings.append(f"participants of epoch {m.epoch} not verified (this device never saw that epoch)")
        removed_at = min((e for e, members in seen.items() if e > m.epoch and m.sender not in members), default=None)
        if removed_at is not None:
            # A removed member (with the server's help) can still label messages with an old epoch.
            warnings.append(f"sent before the sender was removed (epoch {removed_at}): not a current message")
        return warnings

    def _message_key(self, m: crypto.Incoming) -> bytes:
        return self._open_key(m)[0]

    def _open_key(self, m: crypto.Incoming) -> tuple[bytes, bool]:
        """The message key, and whether it came out of a v2 wrap opened now (not a key held already)."""
        if m.key_wrap is not None:
            held = self._held_key(m) if m.sender_device != self.device_id else None
            if held is not None:  # a wrap sent again after we got the key (its one-time prekey may be gone)
                return held, False
            if m.key_wrap.get("v") != 2:
                return crypto.unwrap(self.device, m), False
            return crypto.unwrap_v2(self.device, m, **self._prekey_privates(m.key_wrap)), True
        if m.sender_device == self.device_id:
            row = self.store.db.execute("SELECT sealed_key FROM sender_keys WHERE key_id = ? AND conversation_id = ?",
                                        (m.key_id, m.conversation_id)).fetchone()
            key = None if row is None else self.store.unseal(row[0])
        else:
            key = self._held_key(m)
        if key is None:
            raise Rejected("missing_key", "no key wrap and no stored key for this key_id")
        crypto.check_key_id(key, m)
        return key, False

    def _held_key(self, m: crypto.Incoming) -> bytes | None:
        row = self.store.db.execute(
            "SELECT sealed_key FROM received_keys WHERE conversation_id = ? AND sender_device = ? AND epoch = ? "
            "AND key_id = ?", (m.conversation_id, m.sender_device, m.epoch, m.key_id)).fetchone()
        return None if row is None else self.store.unseal(row[0])

    def _prekey_privates(self, wrap: dict) -> dict:
        """The private keys a v2 wrap names, by id; `unknown_prekey` if this device does not (or no longer) hold one."""
        spk = self.store.db.execute("SELECT sealed_private FROM signed_prekeys WHERE id = ?",
                                    (wrap["signed_prekey_id"],)).fetchone()
        if spk is None or spk[0] is None:
            raise Rejected("unknown_prekey", f"the key wrap names signed prekey {wrap['signed_prekey_id']}, which this "
                           "device " + ("never made" if spk is None else "has erased (it was replaced long ago)"))
        one_time = None
        if wrap["one_time_id"] is not None:
            row = self.store.db.execute("SELECT sealed_private FROM one_time_prekeys WHERE id = ?",
                                        (wrap["one_time_id"],)).fetchone()
            if row is None:
                raise Rejected("unknown_prekey", f"the key wrap names one-time prekey {wrap['one_time_id']}, which "
                               "this device does not hold (never made, or erased once used)")
            one_time = self.store.unseal(row[0])
        return {"signed_prekey_priv": self.store.unseal(spk[0]), "one_time_priv": one_time}

    def _check_wrap_version(self, m: crypto.Incoming, plaintext: dict) -> None:
        """§6b: once this device has published a signed prekey, a v1 wrap in a
        message sent more than 24 h later is refused: a server withholding our
        prekeys from the sender must not downgrade us silently."""
        if m.key_wrap is None or m.key_wrap.get("v") == 2:
            return
        first = self.store.meta("first_spk_published_at")
        if first is not None and plaintext["sent_at"] > first * 1000 + V1_WRAP_GRACE_MS:
            raise Rejected("downgraded_key_wrap", "the key came in a v1 wrap (without this device's prekeys) in a "
                           "message sent more than 24 h after this device published its signed prekey: the server "
                           "may have withheld our prekeys from the sender, or the sender's client is outdated")

    def _check_time(self, m: crypto.Incoming, plaintext: dict, now: float) -> None:
        now_ms = int(now * 1000)
        if plaintext["sent_at"] < now_ms - REPLAY_WINDOW_MS:
            raise Rejected("too_old", "sent_at is older than the replay window")
        if plaintext["sent_at"] > now_ms + FUTURE_SKEW_MS:
            raise Rejected("from_the_future", "sent_at is more than a day ahead")

    def _store_received(self, m: crypto.Incoming, key: bytes, plaintext: dict, warnings: list[str], *,
                        one_time_id: int | None = None) -> None:
        with self.store.transaction() as db:
            _mark_used(db, one_time_id)
            # Checked inside the write transaction: another process on this store may be syncing too.
            seen = db.execute("SELECT stored_at FROM messages WHERE sender_device = ? AND message_id = ?",
                              (m.sender_device, m.message_id)).fetchone()
            if seen is not None:
                raise Rejected("replay", "this message was accepted before (a replay or a repeated delivery)")
            seq = plaintext["seq"]
            last = db.execute("SELECT last_seq FROM seq_seen WHERE conversation_id = ? AND sender_device = ?",
                              (m.conversation_id, m.sender_device)).fetchone()
            if last is not None and seq > last[0] + 1:
                warnings = [*warnings, f"{seq - last[0] - 1} earlier message(s) from this device never arrived "
                                       f"(seq {last[0] + 1}..{seq - 1})"]
            elif last is not None and seq <= last[0]:
                warnings = [*warnings, f"out of order: seq {seq} after {last[0]}"]
            db.execute("INSERT INTO seq_seen (conversation_id, sender_device, last_seq) VALUES (?, ?, ?) "
                       "ON CONFLICT DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
                       (m.conversation_id, m.sender_device, seq))
            db.execute("INSERT OR IGNORE INTO received_keys (conversation_id, sender_device, epoch, key_id, sealed_key)"
                       " VALUES (?, ?, ?, ?, ?)",
                       (m.conversation_id, m.sender_device, m.epoch, m.key_id, self.store.seal(key)))
            db.execute(
                "INSERT INTO messages (sender_device, message_id, conversation_id, sender, outgoing, epoch, seq, "
                "sent_at, created_at, expires_at, policy, sealed_body, warning, stored_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (m.sender_device, m.message_id, m.conversation_id, m.sender, int(m.sender == self.user_id),
                 m.epoch, seq, plaintext["sent_at"], _time_or_none(m.created_at), _time_or_none(m.expires_at),
                 m.policy, self.store.seal(json.dumps(plaintext).encode()), "; ".join(warnings) or None,
                 int(time.time())))

    def _record_failure(self, msg: object, rejected: Rejected, *, one_time_id: int | None = None,
                        opened: tuple[crypto.Incoming, bytes] | None = None) -> None:
        """`opened`: the v2 wrap opened before a later check failed. Its key is kept (the static DH
        term authenticates it to the sender device), so the same wrap sent again, its one-time
        prekey erased at this ACK, still opens with the held key."""
        get = msg.get if isinstance(msg, dict) else (lambda k: None)
        text = (lambda v: v if isinstance(v, str) else None)
        with self.store.transaction() as db:
            _mark_used(db, one_time_id)
            if opened is not None:
                m, key = opened
                db.execute("INSERT OR IGNORE INTO received_keys (conversation_id, sender_device, epoch, key_id, "
                           "sealed_key) VALUES (?, ?, ?, ?, ?)",
                           (m.conversation_id, m.sender_device, m.epoch, m.key_id, self.store.seal(key)))
            db.execute("INSERT INTO failures (message_id, conversation_id, sender, sender_device, reason, detail, "
                       "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (str(get("message_id")), text(get("conversation_id")), text(get("sender")),
                        text(get("sender_device")), rejected.reason, rejected.detail, int(time.time())))

    def open_history_message(self, msg: dict) -> dict:
        """A message of the server's history (§7), checked as on receipt but not
        stored (it was received, or sent, before)."""
        try:
            m = crypto.parse(msg)
            crypto.check_certificate(m, now=int(time.time()))
            view = self._epoch_view(m.conversation_id, m.epoch)
            if view is not None and (m.sender not in view[0] or view[1] != m.participants_sha256):
                raise Rejected("participants_mismatch", "not our view of the conversation at that epoch")
            crypto.check_signature(m)
            plaintext = crypto.decrypt(self._message_key(m), m)
        except Rejected as rejected:
            return {"message_id": msg.get("message_id"), "error": rejected.reason, "detail": rejected.detail}
        return {"message_id": m.message_id, "sender": m.sender, "sender_device": m.sender_device,
                "seq": plaintext["seq"], "sent_at": plaintext["sent_at"], "body": plaintext["body"],
                "policy": m.policy, "created_at": m.created_at, "expires_at": m.expires_at}

    def server_history(self, conversation_id: str, *, limit: int = 100) -> list[dict]:
        """What the server still stores of this conversation for this device, newest first."""
        out, before = [], None
        while len(out) < limit:
            page = self.call("GET", f"/dms/conversations/{conversation_id}/messages",
                             params={"limit": min(100, limit - len(out)), **({"before": before} if before else {})})
            out += [self.open_history_message(m) for m in page["messages"]]
            if not page["has_more"]:
                break
            before = page["cursor"]
        return out

    # --- what the user sees ----------------------------------------------------------------------

    def _message_out(self, row: sqlite3.Row) -> dict:
        body = json.loads(self.store.unseal(row["sealed_body"]))["body"] if row["sealed_body"] is not None else None
        return {"type": "message", "conversation_id": row["conversation_id"], "message_id": row["message_id"],
                "sender": row["sender"], "sender_device": row["sender_device"], "mine": bool(row["outgoing"]),
                "seq": row["seq"], "sent_at": row["sent_at"], "body": body, "policy": row["policy"],
                "expires_at": rfc3339(row["expires_at"]), "warning": row["warning"]}

    def take_unshown(self) -> list[dict]:
        """Messages, failures and events not shown yet, oldest first; marks them shown."""
        with self.store.transaction() as db:
            rows = {table: db.execute(f"SELECT rowid AS rid, * FROM {table} WHERE shown = 0").fetchall()  # noqa: S608
                    for table in ("messages", "failures", "events")}
            for table, selected in rows.items():
                db.executemany(f"UPDATE {table} SET shown = 1 WHERE rowid = ?",  # noqa: S608 - fixed names
                               [(r["rid"],) for r in selected])
        items = [(r["stored_at"], 1, r["sent_at"], self._message_out(r)) for r in rows["messages"]]
        items += [(r["recorded_at"], 0, r["id"], {
            "type": "failed", "message_id": r["message_id"], "conversation_id": r["conversation_id"],
            "claimed_sender": r["sender"], "claimed_sender_device": r["sender_device"], "reason": r["reason"],
            "detail": r["detail"]}) for r in rows["failures"]]
        items += [(r["recorded_at"], 0, r["id"], {"type": "event", "kind": r["kind"],
                                                  "conversation_id": r["conversation_id"], **json.loads(r["detail"])})
                  for r in rows["events"]]
        return [item for *_, item in sorted(items, key=lambda i: i[:3])]

    def history(self, conversation_id: str, *, limit: int = 50) -> list[dict]:
        rows = self.store.db.execute(
            "SELECT * FROM (SELECT * FROM messages WHERE conversation_id = ? AND sealed_body IS NOT NULL "
            "ORDER BY sent_at DESC, stored_at DESC LIMIT ?) ORDER BY sent_at, stored_at", (conversation_id, limit))
        return [self._message_out(r) for r in rows]

    def failures(self) -> list[dict]:
        return [dict(r) for r in self.store.db.execute("SELECT * FROM failures ORDER BY id")]

    def purge_expired(self, *, now: float | None = None) -> None:
        """Keep no message longer than the server would: bodies go at `expires_at`;
        the id stays for the replay window (§6), then goes too. The window counts
        from when it was stored, plus the day ahead its `sent_at` may have been:
        every copy that `_check_time` would still accept finds the id."""
        now = int(time.time() if now is None else now)
        with self.store.transaction() as db:
            db.execute("UPDATE messages SET sealed_body = NULL WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
            db.execute("DELETE FROM messages WHERE sealed_body IS NULL AND stored_at + ? < ?",
                       ((REPLAY_WINDOW_MS + FUTURE_SKEW_MS) // 1000, now))
            db.execute("DELETE FROM delivery_status WHERE message_id NOT IN (SELECT message_id FROM messages)")


def server_address(server: str) -> str:
    try:
        protocol.origin(server)
    except protocol.ProtocolError as exc:
        raise ClientError("invalid_server", f"{exc.detail}: give an address like https://dm.example.org") from None
    return server.strip().rstrip("/")


def check_retention(retention: object) -> None:
    """A retention this client accepts: ttl_days at most LONGEST_RETENTION_DAYS,
    so its replay window covers every message (§6)."""
    policy = retention.get("policy") if isinstance(retention, dict) else None
    ttl_days = retention.get("ttl_days") if isinstance(retention, dict) else None
    if policy == "ttl" and not (isinstance(ttl_days, int) and 1 <= ttl_days <= LONGEST_RETENTION_DAYS):
        raise ClientError("invalid_retention", f"ttl_days must be 1..{LONGEST_RETENTION_DAYS}",
                          min_ttl_days=1, max_ttl_days=LONGEST_RETENTION_DAYS)


def by_prefix(ref: str, known, *, what: str, none_code: str) -> str:
    """The one id in `known` that starts with `ref`; an ambiguous prefix lists its candidates."""
    matches = sorted({k for k in known if ref and k.startswith(ref)})
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ClientError(none_code, f"{ref!r} is no contact name, full {what} id or start of a known one")
    raise ClientError("ambiguous_id", f"{ref!r} is the start of {len(matches)} {what} ids: {', '.join(matches)}",
                      candidates=matches)


def is_b58_key(value: str) -> bool:
    try:
        protocol.b58_key(value)
    except protocol.ProtocolError:
        return False
    return True


def _contact_out(row: sqlite3.Row) -> dict:
    verified = row["verified_user_id"] is not None and row["verified_user_id"] == row["user_id"]
    return {"name": row["name"], "user_id": row["user_id"], "verified": verified,
            "verified_at": rfc3339(row["verified_at"]) if verified else None,
            # verified once, then pointed at another user id: the loud case of §6
            "changed_since_verified": row["verified_user_id"] not in (None, row["user_id"]),
            "verified_user_id": row["verified_user_id"]}


DELIVERY_STATES = ("pending", "delivered", "failed", "expired", "dropped", "skipped")
NOT_DELIVERED = ("failed", "expired", "dropped", "skipped")


def delivery_counts(value: object) -> dict[str, int] | None:
    """A status's `counts` (§7a) as this client uses them, or None if malformed."""
    if not isinstance(value, dict):
        return None
    counts = {state: value.get(state, 0) for state in DELIVERY_STATES}
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31 for n in counts.values()):
        return None
    return counts


def delivery_mark(counts: dict[str, int] | None) -> str | None:
    """`✓` stored, `✓✓` delivered to every device, `!` with what went wrong where."""
    if counts is None:
        return None
    bad = [f"{counts[state]} {state}" for state in NOT_DELIVERED if counts[state]]
    if bad:
        return "! " + ", ".join(bad)
    total = sum(counts.values())
    return "✓✓" if total and counts["delivered"] == total else "✓"


def _progress(counts: dict[str, int]) -> int:
    """Final states only accumulate: a status with fewer of them is older news."""
    return sum(n for state, n in counts.items() if state != "pending")


def rfc3339(seconds: int | None) -> str | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def _mark_used(db: sqlite3.Connection, one_time_id: int | None) -> None:
    """A delivery's wrap opened with this one-time prekey: its private key goes at that delivery's ACK."""
    if one_time_id is not None:
        db.execute("UPDATE one_time_prekeys SET used = 1 WHERE id = ? AND used = 0", (one_time_id,))


def _wrap_counts(wraps: dict) -> dict:
    versions = [2 if w.get("v") == 2 else 1 for w in wraps.values() if w is not None]
    return {"v1": versions.count(1), "v2": versions.count(2)}


def _time_or_none(value: str | None) -> int | None:
    try:
        return parse_time(value)
    except (TypeError, ValueError):
        return None
