import logging
from http import HTTPStatus

from django.core.exceptions import DisallowedHost

from decentcom.dbbreaker import database_breaker
from decentcom.errors import database_unavailable, is_database_down, json_error

logger = logging.getLogger("decentcom.errors")

# Codes for error answers made before or around our views (Django, whitenoise, daphne).
_STATUS_CODES = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                 413: "payload_too_large", 500: "server_error", 503: "service_unavailable"}
_DETAILS = {404: "no such endpoint"}
_NOT_COPIED = frozenset({"content-type", "content-length"})


def is_api_path(path: str) -> bool:
    return path.startswith("/api/")


def as_api_error(response):
    """An error answer as the §10 JSON body; JSON answers pass unchanged.
    Other headers (security headers, `Allow`, `Retry-After`) are kept."""
    if response.status_code < 400 or response.get("Content-Type", "").startswith("application/json"):
        return response
    status = response.status_code
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    code = _STATUS_CODES.get(status, phrase.lower().replace(" ", "_").replace("-", "_"))
    replacement = json_error(status, code, _DETAILS.get(status, phrase.lower()))
    for name, value in response.items():
        if name.lower() not in _NOT_COPIED:
            replacement[name] = value
    return replacement


class ApiErrorMiddleware:
    """Under /api/ every answer is JSON (§10), even Django's own pages, a bad
    Host and any crash. First in MIDDLEWARE, so that also holds for what the
    middleware after it answers (SecurityMiddleware's redirect reads the Host)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not is_api_path(request.path):
            return self.get_response(request)
        try:
            request.get_host()
        except DisallowedHost:
            # Scanners send these all day: one line, no traceback; %r keeps the log line whole.
            logger.warning("refused Host %r on %s", request.META.get("HTTP_HOST", "")[:200], request.path[:200])
            return json_error(400, "bad_host", "the Host header names no host this server serves")
        return as_api_error(self.get_response(request))

    def process_exception(self, request, exception):
        if not is_api_path(request.path):
            return None
        if is_database_down(exception):
            database_breaker.suspect()
            logger.error("database unavailable: %s", type(exception).__name__)
            return database_unavailable()
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "server_error", "internal server error")
