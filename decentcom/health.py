"""Health checks for a load balancer or a PaaS: `/healthz` says the process
answers (it touches nothing else), `/readyz` that it can serve: the database
and, when configured, Redis answer. Outside /api/ and without
authentication; their bodies say only which dependency is down."""
import logging

from django.conf import settings
from django.db import connection
from django.http import JsonResponse

logger = logging.getLogger("decentcom.health")

REDIS_TIMEOUT_S = 1.0


def healthz(request):
    return JsonResponse({"status": "ok"})


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        logger.warning("readyz: database unavailable: %s", type(exc).__name__)
        return False


def _redis_ok() -> bool:
    import redis

    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=REDIS_TIMEOUT_S,
                                      socket_connect_timeout=REDIS_TIMEOUT_S)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001
        logger.warning("readyz: redis unavailable: %s", type(exc).__name__)
        return False


def readyz(request):
    checks = {"database": "ok" if _database_ok() else "unavailable"}
    if settings.REDIS_URL:
        checks["redis"] = "ok" if _redis_ok() else "unavailable"
    down = sorted(name for name, state in checks.items() if state != "ok")
    if down:
        # The §10 error body, as under /api/.
        return JsonResponse({"error": "service_unavailable", "detail": f"unavailable: {', '.join(down)}",
                             "checks": checks}, status=503, headers={"Retry-After": "1"})
    return JsonResponse({"status": "ok", "checks": checks})
