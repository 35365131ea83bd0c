from rest_framework.parsers import JSONParser

from decentcom.errors import ApiError


class LimitedJSONParser(JSONParser):
    """JSON, refused with 413 over the admin's request size limit. The static
    MAX_REQUEST_BYTES setting stays the hard cap, before anything is read."""

    def parse(self, stream, media_type=None, parser_context=None):
        from dms.selectors import server_settings_for_request, server_settings_get

        request = (parser_context or {}).get("request")
        length = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        conf = server_settings_get() if request is None else server_settings_for_request(request)
        limit = conf.max_request_bytes
        if length > limit:
            raise ApiError(413, "payload_too_large", f"request body is over {limit} bytes", max_bytes=limit)
        return super().parse(stream, media_type, parser_context)
