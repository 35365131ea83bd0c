from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from decentcom.errors import AUTHENTICATED, error_responses
from decentcom.timefmt import rfc3339
from devices.auth import IsAnySession
from gateway import services


class GatewayTicketApi(APIView):
    """A single-use, 60-second ticket for `wss://…/api/v1/gateway?ticket=…`,
    for clients that cannot set headers on a WebSocket (browsers)."""

    permission_classes = [IsAnySession]

    @extend_schema_serializer(component_name="GatewayTicketOutput")
    class OutputSerializer(serializers.Serializer):
        ticket = serializers.CharField()
        expires_at = serializers.DateTimeField()

    @extend_schema(request=None, responses={200: OutputSerializer, **error_responses(*AUTHENTICATED, 429)})
    def post(self, request):
        row, ticket = services.gateway_ticket_create(session=request.auth)
        return Response({"ticket": ticket, "expires_at": rfc3339(row.expires_at)})
