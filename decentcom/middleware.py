import logging
from http import HTTPStatus

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpResponse
from django.utils.cache import patch_vary_headers

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


class ContentSecurityPolicyMiddleware:
    """The web client's pages (everything outside /admin/ and /api/): scripts
    and styles only from this origin, no inline script, no eval, network only
    to this server's API and gateway, never framed. The page renders message
    text, so this is the second wall behind rendering it as text only."""

    EXEMPT = ("/admin/", "/api/")

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith(self.EXEMPT):
            return self.get_response(request)
        # Whitenoise answers the app's files before CommonMiddleware checks the Host:
        # check it here (DisallowedHost is Django's 400), so the policy names only a served host.
        request.get_host()
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", self.policy(request))
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @staticmethod
    def policy(request) -> str:
        gateway = f"{'wss' if request.is_secure() else 'ws'}://{request.get_host()}"
        return "; ".join((
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            "font-src 'self'",
            "manifest-src 'self'",
            f"connect-src 'self' {gateway}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ))


class CorsMiddleware:
    """CORS for /api/ from the origins in CORS_ALLOWED_ORIGINS only (a copy of
    the web client served elsewhere). Bearer tokens, no cookies: no credentials."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.allowed = frozenset(settings.CORS_ALLOWED_ORIGINS)

    def __call__(self, request):
        origin = request.headers.get("Origin")
        if not (self.allowed and origin in self.allowed and request.path.startswith("/api/")):
            return self.get_response(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response = HttpResponse(status=204)
            response["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE"
            response["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response["Access-Control-Max-Age"] = "600"
        else:
            response = self.get_response(request)
            response["Access-Control-Expose-Headers"] = "Retry-After"
        response["Access-Control-Allow-Origin"] = origin
        patch_vary_headers(response, ("Origin",))
        return response
