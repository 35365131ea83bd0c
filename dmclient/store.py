"""The local secret store: one SQLite file per device, mode 0600 in a 0700 home.

Every secret (the master and device seeds, the session token, sender keys,
received keys) and every decrypted message body is sealed with a SecretBox
whose key is derived from the passphrase with Argon2id. Ids, times and
membership stay in clear so the store can be queried without the key.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

STORE_FILE = "store.sqlite3"
SYNC_LOCK_FILE = "sync.lock"
SCHEMA_VERSION = 3
VERIFIER = b"decentcom/dmclient/store/v1\n"

# DMCLIENT_KDF picks the Argon2id cost of a new store; opening uses the cost it was made with.
KDF_LIMITS = {
    "interactive": (nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE, nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (nacl.pwhash.argon2id.OPSLIMIT_MODERATE, nacl.pwhash.argon2id.MEMLIMIT_MODERATE),
    "sensitive": (nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE, nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE),
    "min": (nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN),  # tests only
}
DEFAULT_KDF = "interactive"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE secrets (name TEXT PRIMARY KEY, sealed BLOB NOT NULL);
CREATE TABLE conversations (
    conversation_id TEXT PRIMARY KEY, kind TEXT NOT NULL, participants TEXT NOT NULL,
    participants_sha256 TEXT NOT NULL, created_by TEXT, epoch INTEGER NOT NULL,
    retention TEXT NOT NULL, retention_accepted TEXT NOT NULL, member INTEGER NOT NULL DEFAULT 1,
    next_seq INTEGER NOT NULL DEFAULT 1, updated_at TEXT);
CREATE TABLE conversation_epochs (
    conversation_id TEXT NOT NULL, epoch INTEGER NOT NULL, participants TEXT NOT NULL,
    participants_sha256 TEXT NOT NULL, PRIMARY KEY (conversation_id, epoch));
CREATE TABLE directory (
    user_id TEXT NOT NULL, device_id TEXT NOT NULL, name TEXT NOT NULL, certificate TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id));
CREATE TABLE directory_fetched (user_id TEXT PRIMARY KEY, fetched_at INTEGER NOT NULL);
CREATE TABLE sender_keys (
    conversation_id TEXT NOT NULL, epoch INTEGER NOT NULL, generation INTEGER NOT NULL,
    key_id TEXT NOT NULL UNIQUE, sealed_key BLOB NOT NULL, used INTEGER NOT NULL DEFAULT 0,
    probed_at INTEGER NOT NULL, PRIMARY KEY (conversation_id, epoch, generation));
CREATE TABLE wraps_sent (
    conversation_id TEXT NOT NULL, key_id TEXT NOT NULL, device_id TEXT NOT NULL,
    holds_key INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (conversation_id, key_id, device_id));
CREATE TABLE received_keys (
    conversation_id TEXT NOT NULL, sender_device TEXT NOT NULL, epoch INTEGER NOT NULL,
    key_id TEXT NOT NULL, sealed_key BLOB NOT NULL,
    PRIMARY KEY (conversation_id, sender_device, epoch, key_id));
CREATE TABLE messages (
    sender_device TEXT NOT NULL, message_id TEXT NOT NULL, conversation_id TEXT NOT NULL,
    sender TEXT NOT NULL, outgoing INTEGER NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
    sent_at INTEGER NOT NULL, created_at INTEGER, expires_at INTEGER, policy TEXT NOT NULL,
    sealed_body BLOB, warning TEXT, stored_at INTEGER NOT NULL, shown INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sender_device, message_id));
CREATE INDEX messages_by_conversation ON messages (conversation_id, sent_at);
CREATE TABLE seq_seen (
    conversation_id TEXT NOT NULL, sender_device TEXT NOT NULL, last_seq INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, sender_device));
CREATE TABLE failures (
    id INTEGER PRIMARY KEY, message_id TEXT NOT NULL, conversation_id TEXT, sender TEXT,
    sender_device TEXT, reason TEXT NOT NULL, detail TEXT NOT NULL, recorded_at INTEGER NOT NULL,
    shown INTEGER NOT NULL DEFAULT 0);
CREATE TABLE events (
    id INTEGER PRIMARY KEY, conversation_id TEXT, kind TEXT NOT NULL, detail TEXT NOT NULL,
    recorded_at INTEGER NOT NULL, shown INTEGER NOT NULL DEFAULT 0);
"""
# Added in schema 2; `Store.open` adds them to an older store.
SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS contacts (
    name TEXT PRIMARY KEY, user_id TEXT NOT NULL UNIQUE, added_at INTEGER NOT NULL,
    verified_user_id TEXT, verified_at INTEGER);
CREATE TABLE IF NOT EXISTS delivery_status (
    message_id TEXT PRIMARY KEY, conversation_id TEXT, counts TEXT NOT NULL, devices TEXT,
    updated_at INTEGER NOT NULL);
"""
# Added in schema 3 (§6b, protocol v1.2): this device's prekeys, sealed like every other
# secret; the age of a sender key; the v2 wrap sent for a key, re-sent until the device
# holds it (a second claim would drain the recipient's one-time prekeys for nothing).
SCHEMA_3 = """
CREATE TABLE IF NOT EXISTS signed_prekeys (
    id INTEGER PRIMARY KEY, sealed_private BLOB, created_at INTEGER NOT NULL, replaced_at INTEGER,
    published INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS one_time_prekeys (
    id INTEGER PRIMARY KEY, sealed_private BLOB NOT NULL, published INTEGER NOT NULL DEFAULT 0);
"""
SCHEMA_3_COLUMNS = (("sender_keys", "created_at", "INTEGER"), ("wraps_sent", "wrap", "TEXT"))


class StoreError(Exception):
    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _add_columns(db: sqlite3.Connection, columns) -> None:
    for table, column, kind in columns:
        if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:  # noqa: S608 - fixed names
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def store_path(home: str | os.PathLike) -> Path:
    return Path(home).expanduser() / STORE_FILE


def kdf_limits(name: str | None = None) -> tuple[int, int]:
    name = name or os.environ.get("DMCLIENT_KDF") or DEFAULT_KDF
    if name not in KDF_LIMITS:
        raise StoreError("invalid_kdf", f"DMCLIENT_KDF must be one of {sorted(KDF_LIMITS)}")
    return KDF_LIMITS[name]


def _derive(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> nacl.secret.SecretBox:
    key = nacl.pwhash.argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), salt,
                                   opslimit=opslimit, memlimit=memlimit)
    return nacl.secret.SecretBox(key)


class Store:
    """An unlocked store. Use `Store.create` or `Store.open`."""

    def __init__(self, path: Path, db: sqlite3.Connection, box: nacl.secret.SecretBox):
        self.path = path
        self.db = db
        self._box = box

    # --- lifecycle -------------------------------------------------------------

    @classmethod
    def create(cls, home: str | os.PathLike, passphrase: str, *, kdf: str | None = None) -> Store:
        if not passphrase:
            raise StoreError("empty_passphrase", "the passphrase must not be empty")
        home = Path(home).expanduser()
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        path = home / STORE_FILE
        try:
            # Created 0600 before SQLite touches it; SQLite gives its journal the same mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise StoreError("store_exists", f"{path} already exists") from None
        opslimit, memlimit = kdf_limits(kdf)
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        box = _derive(passphrase, salt, opslimit, memlimit)
        db = cls._connect(path)
        db.executescript(SCHEMA + SCHEMA_2 + SCHEMA_3)
        _add_columns(db, SCHEMA_3_COLUMNS)
        store = cls(path, db, box)
        store.meta_set_many({
            "schema_version": SCHEMA_VERSION, "kdf": {"salt": salt.hex(), "opslimit": opslimit, "memlimit": memlimit},
            "verifier": box.encrypt(VERIFIER).hex(),
        })
        return store

    @classmethod
    def open(cls, home: str | os.PathLike, passphrase: str) -> Store:
        path = store_path(home)
        if not path.exists():
            raise StoreError("no_store", f"no store at {path}: run `init` first")
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # someone loosened it; secrets are sealed, but keep it private
        db = cls._connect(path)
        row = db.execute("SELECT value FROM meta WHERE key = 'kdf'").fetchone()
        verifier = db.execute("SELECT value FROM meta WHERE key = 'verifier'").fetchone()
        if row is None or verifier is None:
            raise StoreError("corrupt_store", f"{path} is not a dmclient store")
        kdf = json.loads(row[0])
        box = _derive(passphrase, bytes.fromhex(kdf["salt"]), kdf["opslimit"], kdf["memlimit"])
        try:
            box.decrypt(bytes.fromhex(json.loads(verifier[0])))
        except nacl.exceptions.CryptoError:
            db.close()
            raise StoreError("wrong_passphrase", "wrong passphrase for this store") from None
        store = cls(path, db, box)
        if store.meta("schema_version", 1) < SCHEMA_VERSION:
            store._upgrade()
        return store

    def _upgrade(self) -> None:
        """Bring an older store to SCHEMA_VERSION, step by step, in one transaction
        (another process opening it at the same time waits, then finds it done)."""
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = 1 if row is None else json.loads(row[0])
            if version < 2:
                for statement in _statements(SCHEMA_2):
                    db.execute(statement)
            if version < 3:
                for statement in _statements(SCHEMA_3):
                    db.execute(statement)
                _add_columns(db, SCHEMA_3_COLUMNS)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                       (json.dumps(SCHEMA_VERSION),))

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # Autocommit; `transaction()` opens explicit ones. Several processes (a listener
        # and a sender) may share one store, hence the busy timeout.
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        return db

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def sync_lock(self):
        """One sync at a time per store: a listener and a `dm read` on the same
        device would otherwise both fetch a message, and the slower one would
        take it for a replay."""
        fd = os.open(self.path.parent / SYNC_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- sealing -----------------------------------------------------------------

    def seal(self, data: bytes) -> bytes:
        return bytes(self._box.encrypt(data))

    def unseal(self, sealed: bytes) -> bytes:
        return self._box.decrypt(bytes(sealed))

    # --- meta and secrets ----------------------------------------------------------

    def meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def meta_set_many(self, values: dict) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in values.items()])

    def secret(self, name: str) -> bytes | None:
        row = self.db.execute("SELECT sealed FROM secrets WHERE name = ?", (name,)).fetchone()
        return None if row is None else self.unseal(row[0])

    def secret_set(self, name: str, value: bytes | None) -> None:
        with self.transaction() as db:
            if value is None:
                db.execute("DELETE FROM secrets WHERE name = ?", (name,))
            else:
                db.execute("INSERT OR REPLACE INTO secrets (name, sealed) VALUES (?, ?)", (name, self.seal(value)))

    # --- events shown to the user ------------------------------------------------------

    def event_add(self, db: sqlite3.Connection, *, kind: str, detail: dict, conversation_id: str | None = None):
        db.execute("INSERT INTO events (conversation_id, kind, detail, recorded_at) VALUES (?, ?, ?, ?)",
                   (conversation_id, kind, json.dumps(detail), int(time.time())))
