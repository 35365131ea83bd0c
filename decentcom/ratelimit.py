"""Fixed-window rate limits kept in the cache (Redis in production).

A limit that cannot be checked (cache down) lets the request through: losing
a rate limit for a moment is better than refusing every message."""
import ipaddress
import logging
import math
import time
from collections.abc import Mapping

from django.conf import settings

from decentcom.cache import shared as shared_cache

logger = logging.getLogger("decentcom.ratelimit")


def rate_limit_hit(*, scope: str, key: str, limit: int, window_s: int) -> int | None:
    """Count one attempt. Returns the seconds to wait when over `limit`, else None."""
    if limit <= 0:
        return None
    now = time.time()
    window = int(now // window_s)
    cache_key = f"rl:{scope}:{key}:{window}"
    try:
        cache = shared_cache()
        count = 1 if cache.add(cache_key, 1, timeout=window_s + 1) else cache.incr(cache_key)
    except Exception as exc:  # noqa: BLE001 - any cache failure fails open
        logger.warning("rate limit %s unchecked: %s", scope, type(exc).__name__)
        return None
    if count > limit:
        return max(1, math.ceil((window + 1) * window_s - now))
    return None


def client_address(meta: Mapping[str, str]) -> str | None:
    """The client's IP address, the one rule for every use (rate limits, the
    stored challenge, logs): `TRUSTED_PROXY_COUNT` hops from the right of
    `X-Forwarded-For` — entries further left are written by the client and
    prove nothing — or, without proxies, the socket peer (`REMOTE_ADDR`).
    None when that is not an IP address. `meta` is a request's META, or the
    same two keys built from an ASGI scope."""
    hops = settings.TRUSTED_PROXY_COUNT
    value = meta.get("REMOTE_ADDR")
    if hops > 0:
        forwarded = [a.strip() for a in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
        if len(forwarded) >= hops:
            value = forwarded[-hops]
    try:
        address = ipaddress.ip_address(value or "")
    except ValueError:
        return None
    if getattr(address, "scope_id", None):  # fe80::1%eth0 is no inet value
        return None
    return str(address)
