"""Failing fast while PostgreSQL is unreachable: one circuit breaker per process.

Without it every request waited the pool's whole timeout on one of the few
HTTP threads (decentcom.asgi_http), so 24 clients of one process waited up
to 15 s for their 503; and after the database came back the pool's own
reconnect backoff (1, 2, 4, 8 s…, no cap) kept answering 503 for seconds.

A request that fails with a connection error makes the breaker *suspect* the
database, and a probe decides: a fresh connection with a short connect
timeout. If it fails, the breaker opens: API requests answer 503 at once,
before they take a thread or a connection, and the probe repeats every
PROBE_INTERVAL_S. When a probe connects, the process's connection pool is
replaced by a fresh one (no backoff left over) and the breaker closes. An
error that is no outage (a deadlock, a pool drained by slow queries) finds the
database answering, and nothing opens. SQLite has no pool and no outage: off."""
import logging
import threading
import time

from django.conf import settings
from django.db import connections

logger = logging.getLogger("decentcom.dbbreaker")

PROBE_INTERVAL_S = 0.25
PROBE_CONNECT_TIMEOUT_S = 1


class DatabaseBreaker:
    def __init__(self, alias: str = "default"):
        self.alias = alias
        self._lock = threading.Lock()
        self._probing = False
        self.is_open = False

    @property
    def enabled(self) -> bool:
        return settings.DATABASES[self.alias]["ENGINE"] == "django.db.backends.postgresql"

    def suspect(self) -> None:
        """A request failed to reach the database: probe it (in the background)."""
        if not self.enabled:
            return
        with self._lock:
            if self._probing:
                return
            self._probing = True
        threading.Thread(target=self._probe_until_reachable, name="db-breaker", daemon=True).start()

    def _probe_until_reachable(self) -> None:
        opened_at = None
        try:
            while not self._probe():
                if opened_at is None:
                    opened_at = time.monotonic()
                    self.is_open = True
                    logger.error("database unreachable: API requests answer 503 at once until it is back")
                time.sleep(PROBE_INTERVAL_S)
            if opened_at is not None:
                self._pool_replace()
                self.is_open = False
                logger.warning("database reachable again after %.1f s", time.monotonic() - opened_at)
        finally:
            with self._lock:
                self._probing = False

    def _probe(self) -> bool:
        import psycopg

        # Only reads the settings: this thread's wrapper never opens a connection of its own.
        params = {**connections[self.alias].get_connection_params(), "connect_timeout": PROBE_CONNECT_TIMEOUT_S,
                  "autocommit": True}
        try:
            with psycopg.connect(**params) as conn:
                conn.execute("SELECT 1")
            return True
        except (psycopg.Error, OSError):
            return False

    def _pool_replace(self) -> None:
        # Django makes a new pool on the next connection; connections still out
        # go back to the pool they came from (DatabaseWrapper.close).
        pools = type(connections[self.alias])._connection_pools
        pool = pools.pop(self.alias, None)
        if pool is not None:
            pool.close(timeout=0)


database_breaker = DatabaseBreaker()
