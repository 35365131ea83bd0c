"""Prometheus metrics (prometheus_client) and the `/metrics` endpoint.

Counters live in the process that counts them. With several processes on
one machine (`make run`: web, worker, beat) set `PROMETHEUS_MULTIPROC_DIR`
to an empty folder before they start (decentcom.run does, under VAR_DIR):
prometheus_client's multiprocess mode then adds up every process's values
at each scrape. Without it, each process shows only its own counters (the
purge's in-process counters then live in the worker); the figures computed
at scrape from the database (pending deliveries, the last purge run) are the
same whichever process answers."""
import hmac
import ipaddress
import logging
import os

from django.conf import settings
from django.http import Http404, HttpResponse
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, REGISTRY,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from decentcom.ratelimit import client_address

logger = logging.getLogger("decentcom.metrics")

HTTP_REQUESTS = Counter("decentcom_http_requests", "HTTP requests answered, by operation (URL name) and status",
                        ["operation", "method", "status"])
HTTP_DURATION = Histogram("decentcom_http_request_duration_seconds", "time to answer an HTTP request, by operation",
                          ["operation"], buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
DM_SENDS = Counter("decentcom_dm_sends", "messages stored (a retry's replay is not counted)")
DM_DELIVERIES = Counter("decentcom_dm_deliveries", "deliveries stored, one per target device of a message")
DM_ACKS = Counter("decentcom_dm_acks", "deliveries acknowledged by their device")
PURGE_RUNS = Counter("decentcom_purge_runs", "purge runs (dry runs not counted)")
PURGE_DELETED = Counter("decentcom_purge_deleted", "rows the purge deleted, by kind", ["kind"])
PURGE_DURATION = Histogram("decentcom_purge_duration_seconds", "how long a purge run took",
                           buckets=(.01, .05, .1, .5, 1, 5, 10, 30, 60, 300))
GATEWAY_CONNECTIONS = Gauge("decentcom_gateway_connections", "open gateway connections (after HELLO)",
                            multiprocess_mode="livesum")
CHANNEL_LAYER_FAILURES = Counter("decentcom_channel_layer_failures",
                                 "channel-layer sends that failed or timed out (gateway events lost, best effort)")


class DatabaseCollector:
    """Figures read from the database at scrape time: cheap (an index each)
    and right whichever process is scraped."""

    def collect(self):
        from dms.selectors import metrics_snapshot

        try:
            snapshot = metrics_snapshot()
        except Exception as exc:  # noqa: BLE001 - a scrape while the database is down shows the rest
            logger.warning("metrics: database figures unavailable: %s", type(exc).__name__)
            up = GaugeMetricFamily("decentcom_database_up", "whether the database answered this scrape")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("decentcom_database_up", "whether the database answered this scrape")
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("decentcom_dm_pending_deliveries", "deliveries not yet acknowledged",
                                value=snapshot["pending_deliveries"])
        yield GaugeMetricFamily("decentcom_dm_oldest_pending_age_seconds", "age of the oldest pending delivery",
                                value=snapshot["oldest_pending_age_s"])
        if snapshot["last_purge"] is not None:
            last = snapshot["last_purge"]
            yield GaugeMetricFamily("decentcom_purge_last_run_timestamp_seconds",
                                    "when the last (not dry) purge run started", value=last["started_at"])
            yield GaugeMetricFamily("decentcom_purge_last_duration_seconds", "how long the last purge run took",
                                    value=last["duration_s"])


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    if not getattr(registry, "_decentcom_db", False):
        registry.register(DatabaseCollector())
        registry._decentcom_db = True
    return registry


def _allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        given = request.META.get("HTTP_AUTHORIZATION", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
    if settings.METRICS_ALLOWED_IPS:
        address = client_address(request.META)
        if address is not None and any(ipaddress.ip_address(address) in net for net in settings.METRICS_ALLOWED_IPS):
            return True
    return False


def metrics_view(request):
    """`GET /metrics`: off (404) unless METRICS_TOKEN or METRICS_ALLOWED_IPS is set."""
    if not settings.METRICS_TOKEN and not settings.METRICS_ALLOWED_IPS:
        raise Http404("metrics are off")
    if not _allowed(request):
        response = HttpResponse("metrics need the token or an allowed address\n", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
