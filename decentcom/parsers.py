import codecs
import json
import math

from django.conf import settings
from rest_framework.parsers import JSONParser

from decentcom.errors import ApiError

# §10: an over-deep document and numbers out of range are 400 at the parser,
# so no view (and no database driver) ever sees them. The deepest body the
# protocol has (a send: body → recipients → wrap) is 4 levels.
MAX_JSON_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _malformed(detail: str) -> ApiError:
    return ApiError(400, "malformed_json", detail)


def _parse_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # over Python's digit limit for int()
        raise _malformed("integer out of range (signed 64-bit)") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise _malformed("integer out of range (signed 64-bit)")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise _malformed("number out of range")
    return value


def _parse_constant(text: str):
    raise _malformed(f"{text} is not JSON")


def json_depth(value) -> int:
    """The nesting depth of a parsed document (a scalar is 0), without recursion."""
    depth, level = 0, [(value, 1)]
    while level:
        node, d = level.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        depth = max(depth, d)
        level.extend((child, d + 1) for child in children)
    return depth


def json_loads(text: str):
    """JSON as the API accepts it: at most MAX_JSON_DEPTH deep, integers in
    int64, finite floats. Raises ApiError (400 malformed_json)."""
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except RecursionError:  # far deeper than the limit: the C scanner gave up
        raise _malformed(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise _malformed(f"JSON parse error - {exc}") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise _malformed(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


class LimitedJSONParser(JSONParser):
    """JSON, refused with 413 over the admin's request size limit and with 400
    when too deep or out of range (`json_loads`). The static MAX_REQUEST_BYTES
    setting stays the hard cap, before anything is read."""

    def parse(self, stream, media_type=None, parser_context=None):
        from dms.selectors import server_settings_for_request, server_settings_get

        parser_context = parser_context or {}
        request = parser_context.get("request")
        length = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        conf = server_settings_get() if request is None else server_settings_for_request(request)
        limit = conf.max_request_bytes
        if length > limit:
            raise ApiError(413, "payload_too_large", f"request body is over {limit} bytes", max_bytes=limit)
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.getreader(encoding)(stream).read()
        except (UnicodeDecodeError, LookupError):
            raise _malformed(f"body is not {encoding} text") from None
        return json_loads(text)
