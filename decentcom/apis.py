"""The API's root, `GET /api/v1/`: what `make run`'s banner points a newcomer at."""
import re

from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.apis import server_origin
from dms.selectors import PROTOCOL_VERSION

API_PREFIX = "api/v1/"
_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")


def _routes(patterns, prefix: str = ""):
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route, pattern


def api_endpoints() -> list[dict]:
    """Every HTTP endpoint under /api/v1/ with its methods, path parameters as
    in the OpenAPI schema (`{user_id}`); read from the URL configuration, so it
    cannot fall behind it."""
    endpoints = []
    for route, pattern in _routes(get_resolver().url_patterns):
        view = getattr(pattern.callback, "view_class", None)
        if not route.startswith(API_PREFIX) or route == API_PREFIX or view is None:
            continue
        path = "/" + _PARAMETER.sub(r"{\1}", route)
        methods = [m.upper() for m in view.http_method_names if m not in ("options", "head") and hasattr(view, m)]
        endpoints.append({"path": path, "methods": methods, "name": pattern.name})
    return endpoints


class ApiRootApi(APIView):
    """The endpoints of this API and where its documentation is; no authentication."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="api_root", responses={200: inline_serializer("ApiRoot", {
        "name": serializers.CharField(), "protocol": serializers.CharField(),
        "docs": serializers.URLField(), "schema": serializers.URLField(), "server": serializers.URLField(),
        "gateway": serializers.CharField(help_text="the WebSocket gateway (§9)"),
        "endpoints": inline_serializer("ApiEndpoint", {
            "path": serializers.CharField(), "methods": serializers.ListField(child=serializers.CharField()),
            "name": serializers.CharField()}, many=True),
    })})
    def get(self, request):
        origin = server_origin(request)
        return Response({
            "name": "decentcom DM mailbox",
            "protocol": PROTOCOL_VERSION,
            "docs": f"{origin}/api/v1/docs/",
            "schema": f"{origin}/api/v1/schema/",
            "server": f"{origin}/api/v1/server",
            "gateway": "ws" + origin.removeprefix("http") + "/api/v1/gateway",
            "endpoints": api_endpoints(),
        })
