"""One error shape for the whole API (PROTOCOL.md §10):
`{"error": "<snake_case code>", "detail": "<human text>", ...extra fields}`."""
import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response

from decentcom.dbbreaker import database_breaker
from dmclient.protocol import ProtocolError

logger = logging.getLogger("decentcom.errors")

# A process serves again within a second or so of the database's return (decentcom.dbbreaker).
DB_RETRY_AFTER_S = 2


class ApiError(exceptions.APIException):
    """An error with a protocol code and optional extra body fields."""

    def __init__(self, status_code: int, code: str, detail: str = "", *, headers: dict | None = None, **extra):
        self.status_code = status_code
        self.code = code
        self.extra = extra
        self.headers = headers or {}
        super().__init__(detail or code.replace("_", " "), code)


def error_body(code: str, detail: str, **extra) -> dict:
    return {"error": code, "detail": detail, **extra}


def _flatten(detail, name: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail as §10 `fields`: dotted paths
    (`recipients.0.device_id`, from list serializers, `ListField` and
    `DictField` children alike) to lists of plain messages."""
    fields: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        items = detail.items()
    elif isinstance(detail, list):
        items = [(None, m) for m in detail if not isinstance(m, (dict, list))]
        items += [(i, m) for i, m in enumerate(detail) if isinstance(m, (dict, list))]
    else:
        items = [(None, detail)]
    for key, value in items:
        if key is None:
            fields.setdefault(name or "non_field_errors", []).append(str(value))
            continue
        for path, messages in _flatten(value, f"{name}.{key}" if name else str(key)).items():
            fields.setdefault(path, []).extend(messages)
    return fields


_SIMPLE = [
    (exceptions.ParseError, 400, "malformed_json"),
    (exceptions.NotAuthenticated, 401, "not_authenticated"),
    (exceptions.AuthenticationFailed, 401, "invalid_token"),
    (exceptions.PermissionDenied, 403, "forbidden"),
    (exceptions.NotFound, 404, "not_found"),
    (exceptions.MethodNotAllowed, 405, "method_not_allowed"),
    (exceptions.NotAcceptable, 406, "not_acceptable"),
    (exceptions.UnsupportedMediaType, 415, "unsupported_media_type"),
]


def exception_handler(exc, context):
    headers = {}
    if isinstance(exc, ApiError):
        status_code, body = exc.status_code, error_body(exc.code, str(exc.detail), **exc.extra)
        headers = exc.headers
    elif isinstance(exc, ProtocolError):
        status_code, body = 400, error_body(exc.code, exc.detail)
    elif isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail) or {"non_field_errors": ["invalid input"]}
        first = next(iter(fields.items()))
        status_code = 400
        body = error_body("invalid_request", f"{first[0]}: {first[1][0]}", fields=fields)
    elif isinstance(exc, exceptions.Throttled):
        status_code, body = 429, error_body("rate_limited", str(exc.detail))
        if exc.wait:
            headers["Retry-After"] = str(int(exc.wait))
    elif isinstance(exc, RequestDataTooBig):
        status_code, body = 413, error_body("payload_too_large", "request body is too large")
    elif isinstance(exc, Http404):
        status_code, body = 404, error_body("not_found", "not found")
    elif isinstance(exc, DjangoPermissionDenied):
        status_code, body = 403, error_body("forbidden", "permission denied")
    elif isinstance(exc, SuspiciousOperation):
        status_code, body = 400, error_body("bad_request", "bad request")
    elif isinstance(exc, (OperationalError, InterfaceError)):
        database_breaker.suspect()
        logger.error("database unavailable: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        status_code, body = 503, error_body("service_unavailable", "the database is unavailable, try again")
        headers["Retry-After"] = str(DB_RETRY_AFTER_S)
    else:
        for cls, code_status, code in _SIMPLE:
            if isinstance(exc, cls):
                status_code, body = code_status, error_body(code, str(exc.detail))
                break
        else:
            if isinstance(exc, exceptions.APIException):
                status_code = exc.status_code
                body = error_body(str(exc.default_code), str(exc.detail))
            else:
                return None
        if isinstance(exc, exceptions.APIException):
            headers.update(_auth_header(exc, context))
    return Response(body, status=status_code, headers=headers)


def _auth_header(exc, context) -> dict:
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return {"WWW-Authenticate": 'Bearer realm="api"'}
    return {}


def database_unavailable() -> JsonResponse:
    return json_error(503, "service_unavailable", "the database is unavailable, try again",
                      **{"Retry-After": str(DB_RETRY_AFTER_S)})


def json_error(status_code: int, code: str, detail: str, **headers) -> JsonResponse:
    response = JsonResponse(error_body(code, detail), status=status_code)
    for name, value in headers.items():
        response[name] = value
    return response


def is_database_down(exc: BaseException) -> bool:
    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DatabaseError) and "connection" in str(exc).lower())


# --- the error body in the OpenAPI schema ----------------------------------------

class ErrorSerializer(serializers.Serializer):
    """Schema only: the §10 body. Codes add their own fields (`epoch`, `missing`, …)."""

    error = serializers.RegexField(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$", help_text="snake_case error code")
    detail = serializers.CharField(help_text="human-readable text")
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False,
                                   help_text="validation errors: field name -> messages")


_ERROR_MEANINGS = {
    400: "malformed request (malformed_json, invalid_request, bad_signature, invalid_cursor, …)",
    401: "no, unknown or expired bearer token; or a failed login",
    403: "not allowed (forbidden, device_session_required, device_revoked, …)",
    404: "no such resource, or not one the caller may see",
    409: "conflicts with the current state (stale_epoch, mismatched_devices, duplicate_message_id, …)",
    413: "request body or ciphertext too large",
    415: "the body is not application/json",
    429: "rate_limited or mailbox_full; `Retry-After` says when to come back",
    503: "the database is unavailable; `Retry-After` says when to retry",
}
# Every authenticated operation can answer these; 503 any operation.
AUTHENTICATED = (401,)
DEVICE_SESSION = (401, 403)
JSON_BODY = (400, 413, 415)


def error_responses(*statuses: int) -> dict:
    """The documented error answers of an operation, for `extend_schema(responses=...)`."""
    return {code: OpenApiResponse(ErrorSerializer, description=_ERROR_MEANINGS[code])
            for code in sorted({*statuses, 503})}


__all__ = ["ApiError", "exception_handler", "json_error", "error_body", "error_responses", "status"]
