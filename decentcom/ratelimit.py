"""Fixed-window rate limits kept in the cache (Redis in production).

A limit that cannot be checked (cache down) lets the request through: losing
a rate limit for a moment is better than refusing every message."""
import logging
import math
import time

from django.core.cache import cache

logger = logging.getLogger("decentcom.ratelimit")


def rate_limit_hit(*, scope: str, key: str, limit: int, window_s: int) -> int | None:
    """Count one attempt. Returns the seconds to wait when over `limit`, else None."""
    if limit <= 0:
        return None
    now = time.time()
    window = int(now // window_s)
    cache_key = f"rl:{scope}:{key}:{window}"
    try:
        count = 1 if cache.add(cache_key, 1, timeout=window_s + 1) else cache.incr(cache_key)
    except Exception as exc:  # noqa: BLE001 - any cache failure fails open
        logger.warning("rate limit %s unchecked: %s", scope, type(exc).__name__)
        return None
    if count > limit:
        return max(1, math.ceil((window + 1) * window_s - now))
    return None
