"""The embedded cache: one SQLite file that every process of the machine shares.

Rate limits and gateway connection slots (gateway.services) must hold across
the web workers, as they do on Redis; LocMemCache is per process, so two
workers let twice the limit through. Each operation is one autocommit
statement, so `add` and `incr` are atomic across processes (the file's write
lock), with no Django database of its own to migrate. A file apart from the
main database: its writes never wait on a send's transaction.

Values: int and str as SQLite stores them (so `incr` is one UPDATE), anything
else pickled."""
import os
import pickle
import sqlite3
import threading
import time

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

_shared: tuple[dict, BaseCache] | None = None


def shared() -> BaseCache:
    """One backend per process for the counters (rate limits, gateway slots).
    `django.core.cache.cache` is one per asyncio context: every request and
    every open WebSocket built its own (a SQLite connection, or a Redis
    connection pool, about 100 KiB each)."""
    global _shared
    if _shared is None or _shared[0] is not settings.CACHES:  # anew after override_settings
        _shared = (settings.CACHES, caches.create_connection("default"))
    return _shared[1]


NEVER = 2.0 ** 62
PURGE_EVERY_WRITES = 1000  # expired keys are deleted now and then, by whichever process writes


class SqliteCache(BaseCache):
    def __init__(self, location, params):
        super().__init__(params)
        self.path = location
        self._local = threading.local()
        self._writes = 0

    def _db(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # per thread, and anew after a fork (Celery's pool)
            if not os.path.exists(self.path):
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))  # -wal and -shm take its mode
            local.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            local.conn.execute("PRAGMA journal_mode=WAL")
            local.conn.execute("PRAGMA synchronous=NORMAL")
            local.conn.execute("CREATE TABLE IF NOT EXISTS cache "
                               "(key TEXT PRIMARY KEY, value, expires REAL NOT NULL) WITHOUT ROWID")
            local.pid = os.getpid()
        return local.conn

    def _expires(self, timeout) -> float:
        seconds = self.get_backend_timeout(timeout)
        return NEVER if seconds is None else seconds

    @staticmethod
    def _encode(value):
        return value if type(value) in (int, str) else pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def _decode(value):
        return pickle.loads(value) if isinstance(value, bytes) else value

    def _write(self, sql: str, params) -> sqlite3.Cursor:
        db = self._db()
        self._writes += 1
        if self._writes % PURGE_EVERY_WRITES == 0:
            db.execute("DELETE FROM cache WHERE expires <= ?", (time.time(),))
        return db.execute(sql, params)

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        # An expired row counts as absent: the upsert overwrites only that.
        return self._write(
            "INSERT INTO cache VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
            "SET value = excluded.value, expires = excluded.expires WHERE cache.expires <= ?",
            (key, self._encode(value), self._expires(timeout), time.time())).rowcount == 1

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        self._write("INSERT OR REPLACE INTO cache VALUES (?, ?, ?)", (key, self._encode(value), self._expires(timeout)))

    def get(self, key, default=None, version=None):
        key = self.make_and_validate_key(key, version=version)
        row = self._db().execute("SELECT value FROM cache WHERE key = ? AND expires > ?",
                                 (key, time.time())).fetchone()
        return default if row is None else self._decode(row[0])

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        key = self.make_and_validate_key(key, version=version)
        return self._write("UPDATE cache SET expires = ? WHERE key = ? AND expires > ?",
                           (self._expires(timeout), key, time.time())).rowcount == 1

    def incr(self, key, delta=1, version=None):
        key = self.make_and_validate_key(key, version=version)
        row = self._write("UPDATE cache SET value = value + ? WHERE key = ? AND expires > ? "
                          "AND typeof(value) = 'integer' RETURNING value", (delta, key, time.time())).fetchall()
        if not row:  # fetched to the end: the statement, and its write lock, end with it
            raise ValueError(f"Key '{key}' not found")
        return row[0][0]

    def delete(self, key, version=None):
        key = self.make_and_validate_key(key, version=version)
        return self._write("DELETE FROM cache WHERE key = ?", (key,)).rowcount == 1

    def clear(self):
        self._write("DELETE FROM cache", ())
