"""Rate limits count in one cache backend per process. `django.core.cache.cache`
is one backend per asyncio context, and under ASGI every request runs in a
context of its own: through it each request opened a SQLite connection (or,
on Redis, a connection pool) of its own."""
import contextvars
import os
from pathlib import Path

import pytest
from django.conf import settings

from decentcom.ratelimit import rate_limit_hit


@pytest.mark.skipif(bool(settings.REDIS_URL), reason="counts the embedded cache's SQLite files")
def test_rate_limits_of_many_requests_share_one_cache_connection():
    cache_file = settings.CACHES["default"]["LOCATION"]

    def cache_fds() -> int:
        return sum(1 for fd in Path("/proc/self/fd").iterdir() if os.path.realpath(fd).startswith(cache_file))

    before = cache_fds()
    for _ in range(20):  # twenty requests, each in a context of its own
        contextvars.Context().run(rate_limit_hit, scope="test", key="k", limit=100, window_s=60)
    assert cache_fds() - before <= 2  # at most the one connection of this thread
    waits = [rate_limit_hit(scope="test", key="k", limit=21, window_s=60) for _ in range(2)]
    assert waits[0] is None and waits[1] is not None  # and all twenty counted in it
