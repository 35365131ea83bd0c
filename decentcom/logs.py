"""Production logs: one line per request, JSON lines when LOG_FORMAT=json.

The request line names the operation (the URL's name, as the metrics do),
never the path's query string nor a header or body: no token, ciphertext or
key wrap can reach the log through it."""
import datetime as dt
import json
import logging
import time

from decentcom import metrics

logger = logging.getLogger("decentcom.request")

# LogRecord's own attributes: everything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the `extra=` fields, and a traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Plain values only: Django's records carry the request object, whose repr has the query string.
        entry.update({k: v for k, v in vars(record).items()
                      if k not in _RECORD_FIELDS and not k.startswith("_") and isinstance(v, (str, int, float, bool))})
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class CrashesOnly(logging.Filter):
    """For `django.request`: keep the records that carry a traceback (a crash
    outside /api/), drop its "Not Found: …" / "Bad Request: …" lines, which
    the request line already says (every 4xx was logged twice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is not None


def request_operation(request) -> str:
    """The URL's name ("dms-send", "admin:index"): a label of bounded cardinality, unlike the path."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "static" if request.path.startswith("/static/") else "unmatched"
    return match.view_name


class RequestLogMiddleware:
    """First in MIDDLEWARE: times everything after it, logs one line and counts the request."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        duration = time.perf_counter() - started
        operation = request_operation(request)
        status = response.status_code
        metrics.HTTP_REQUESTS.labels(operation=operation, method=request.method, status=str(status)).inc()
        metrics.HTTP_DURATION.labels(operation=operation).observe(duration)
        if operation not in ("metrics", "healthz", "readyz", "static"):  # probes and scrapes all day: no line
            level = logging.WARNING if status >= 500 else logging.INFO
            logger.log(level, "%s %s %d %.1f ms", request.method, operation, status, duration * 1000,
                       extra={"operation": operation, "method": request.method, "status": status,
                              "duration_ms": round(duration * 1000, 1)})
        return response
