from django.conf import settings
from django.http.request import split_domain_port
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (OpenApiParameter, extend_schema, extend_schema_field, extend_schema_serializer,
                                   inline_serializer)
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from dmclient import protocol
from decentcom.errors import AUTHENTICATED, DEVICE_SESSION, JSON_BODY, ApiError, error_responses
from decentcom.ratelimit import client_address
from decentcom.fields import B58KeyField, B64Field, CertificateField, StrictCharField
from decentcom.timefmt import rfc3339
from devices import selectors, services
from devices.auth import IsAnySession, IsDeviceSession
from devices.models import Device


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "devices.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "a session token from /auth/verify"}


B58_PATTERN = "^[1-9A-HJ-NP-Za-km-z]{32,44}$"


def b58_path(name: str, what: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.PATH, pattern=B58_PATTERN,
                            description=f"{what}: base58 Ed25519 public key")


def is_key_id(value: str) -> bool:
    """Whether a path's user or device id is a b58 key (§1): nothing else can
    name one, and a NUL must never reach PostgreSQL, which refuses it in text."""
    try:
        protocol.b58_key(value)
    except protocol.ProtocolError:
        return False
    return True


def server_origin(request) -> str:
    """The origin clients must sign (§3): PUBLIC_URL, else this request's own.

    Without PUBLIC_URL (development only: production refuses to start) the
    host comes from `Host` (checked against ALLOWED_HOSTS, which ignores the
    port) and the port is the one this server listens on, so a signature made
    for another server on the same host does not open a session here. Proxy
    headers count only behind a configured proxy (settings)."""
    if settings.PUBLIC_URL:
        return protocol.origin(settings.PUBLIC_URL)
    host = request.get_host()
    if settings.TRUSTED_PROXY_COUNT == 0:
        host = f"{split_domain_port(host)[0]}:{request.get_port()}"
    return protocol.origin(f"{request.scheme}://{host}")


def device_wire(device: Device) -> dict:
    return {
        "device_id": device.device_id,
        "name": device.name,
        "x25519": device.x25519,
        "issued_at": rfc3339(device.issued_at),
        "expires_at": rfc3339(device.expires_at),
        "permissions": device.permissions,
        "certificate": device.certificate,
    }


class DeviceOutput(serializers.Serializer):
    device_id = serializers.CharField()
    name = serializers.CharField()
    x25519 = serializers.CharField()
    issued_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    permissions = serializers.ListField(child=serializers.CharField())
    certificate = serializers.DictField()


class OwnDeviceOutput(DeviceOutput):
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_seen_at = serializers.DateTimeField(allow_null=True, help_text=(
        f"when the device last logged in or used its session; updated at most once every "
        f"{services.LAST_SEEN_RESOLUTION_S} s per device, so it may lag by up to a minute (null: never)"))
    pending_count = serializers.IntegerField()
    current = serializers.BooleanField()


class AuthChallengeApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema_serializer(component_name="ChallengeInput")
    class InputSerializer(serializers.Serializer):
        pubkey = B58KeyField()

    @extend_schema(request=InputSerializer, responses={200: inline_serializer(
        "ChallengeOutput", {"challenge": serializers.CharField(), "expires_at": serializers.DateTimeField()}),
        **error_responses(*JSON_BODY, 429)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        challenge = services.challenge_create(pubkey=data.validated_data["pubkey"], client_ip=client_address(request.META))
        return Response({"challenge": challenge.challenge, "expires_at": rfc3339(challenge.expires_at)})


class AuthVerifyApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema_serializer(component_name="VerifyInput")
    class InputSerializer(serializers.Serializer):
        pubkey = B58KeyField()
        challenge = StrictCharField(max_length=64)
        signature = B64Field(length=protocol.SIGNATURE_LEN)
        certificate = CertificateField(required=False, allow_null=True)

    @extend_schema(request=InputSerializer, responses={200: inline_serializer("VerifyOutput", {
        "token": serializers.CharField(), "user_id": serializers.CharField(),
        "device_id": serializers.CharField(allow_null=True), "expires_at": serializers.DateTimeField()}),
        **error_responses(*JSON_BODY, 401, 403, 409, 429)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        session, token = services.auth_verify(
            pubkey=data.validated_data["pubkey"], challenge=data.validated_data["challenge"],
            signature=data.validated_data["signature"], certificate=data.validated_data.get("certificate"),
            server_origin=server_origin(request))
        return Response({
            "token": token, "user_id": session.user.username,
            "device_id": session.device.device_id if session.device else None,
            "expires_at": rfc3339(session.expires_at),
        })


class AuthLogoutApi(APIView):
    permission_classes = [IsAnySession]

    @extend_schema(request=None, responses={204: None, **error_responses(*AUTHENTICATED)})
    def post(self, request):
        services.session_logout(session=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UserDeviceListApi(APIView):
    permission_classes = [IsAnySession]

    @extend_schema(parameters=[b58_path("user_id", "the user's master key")],
                   responses={200: inline_serializer("UserDevicesOutput", {
                       "user_id": serializers.CharField(), "devices": DeviceOutput(many=True)}),
                       **error_responses(*AUTHENTICATED, 404)})
    def get(self, request, user_id: str):
        user = selectors.user_get_by_user_id(user_id=user_id) if is_key_id(user_id) else None
        if user is None:
            raise ApiError(404, "not_found", "unknown user")
        return Response({"user_id": user.username,
                         "devices": [device_wire(d) for d in selectors.device_list_active(user=user)]})


class DevicesApi(APIView):
    """GET: the caller's own devices. POST: renew the calling device's own certificate (§4)."""

    permission_classes = [IsAnySession]

    @extend_schema_serializer(component_name="DeviceRegisterInput")
    class InputSerializer(serializers.Serializer):
        certificate = CertificateField()

    @extend_schema(responses={200: inline_serializer("OwnDevicesOutput", {"devices": OwnDeviceOutput(many=True)}),
                              **error_responses(*AUTHENTICATED)})
    def get(self, request):
        current = request.auth.device_id
        devices = selectors.device_list_for_owner(user=request.user)
        return Response({"devices": [{
            **device_wire(d),
            "revoked_at": rfc3339(d.revoked_at), "last_seen_at": rfc3339(d.last_seen_at),
            "pending_count": d.pending_count, "current": d.pk == current,
        } for d in devices]})

    @extend_schema(request=InputSerializer, responses={
        200: DeviceOutput, **error_responses(*AUTHENTICATED, *JSON_BODY, 403, 409)})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device = services.device_renew(session=request.auth, certificate=data.validated_data["certificate"])
        return Response(device_wire(device))


class DeviceRevokeApi(APIView):
    permission_classes = [IsAnySession]

    @extend_schema(parameters=[b58_path("device_id", "the device's key")],
                   responses={204: None, **error_responses(*AUTHENTICATED, 403, 404)})
    def delete(self, request, device_id: str):
        device = selectors.device_get_for_user(user=request.user, device_id=device_id) if is_key_id(device_id) else None
        if device is None:
            raise ApiError(404, "not_found", "no such device of yours")
        if not services.device_can_revoke(session=request.auth, device=device):
            raise ApiError(403, "forbidden", "needs the master key, manage_devices, or the device itself")
        services.device_revoke(device=device)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- prekeys (§6b) -------------------------------------------------------------------

@extend_schema_field({"type": "object", "description": "wire signed prekey (PROTOCOL.md §6b): "
                      '{"v": 1, "device", "id", "x25519", "created_at", "signature"}', "additionalProperties": True})
class SignedPrekeyWireField(serializers.DictField):
    pass


class OneTimePrekeySerializer(serializers.Serializer):
    id = serializers.IntegerField(min_value=1, max_value=protocol.MAX_PREKEY_ID)
    x25519 = serializers.CharField(help_text="base64 X25519 public key (32 bytes)")


class PrekeysApi(APIView):
    """The calling device's prekeys (§6b). PUT: a newer signed prekey and/or
    more one-time prekeys (at most 100 a request, 200 stored); GET: what is stored."""

    permission_classes = [IsDeviceSession]

    @extend_schema_serializer(component_name="PrekeysUploadInput")
    class InputSerializer(serializers.Serializer):
        signed_prekey = SignedPrekeyWireField(required=False, help_text=(
            "signed by the calling device and naming it; its id above the stored one (else 409 stale_prekey)"))
        one_time = OneTimePrekeySerializer(many=True, required=False, help_text=(
            f"at most {services.MAX_ONE_TIME_PER_UPLOAD}; ids already stored are ignored; at most "
            f"{services.MAX_ONE_TIME_PREKEYS} are stored per device (else 409 too_many_prekeys)"))

    @extend_schema(operation_id="devices_prekeys_get", responses={200: inline_serializer("PrekeysOutput", {
        "signed_prekey": SignedPrekeyWireField(allow_null=True),
        "one_time_count": serializers.IntegerField()}), **error_responses(*DEVICE_SESSION)})
    def get(self, request):
        device = request.auth.device
        summary = selectors.prekeys_summary(device_pks=[device.pk])[device.pk]
        return Response(summary)

    @extend_schema(operation_id="devices_prekeys_put", request=InputSerializer,
                   responses={200: inline_serializer("PrekeysUploadOutput", {
                       "signed_prekey_id": serializers.IntegerField(allow_null=True),
                       "one_time_count": serializers.IntegerField()}),
                       **error_responses(*DEVICE_SESSION, *JSON_BODY, 409)})
    def put(self, request):
        data = request.data
        if type(data) is not dict or not data.keys() <= {"signed_prekey", "one_time"}:
            extra = sorted(data.keys() - {"signed_prekey", "one_time"}) if type(data) is dict else []
            raise ApiError(400, "invalid_request", "the body is {\"signed_prekey\"?, \"one_time\"?}"
                           + (f"; unexpected {extra}" if extra else ""))
        one_time = data.get("one_time")
        if one_time is not None and type(one_time) is not list:
            raise ApiError(400, "invalid_request", "one_time must be a list")
        return Response(services.prekeys_upload(device=request.auth.device, signed_prekey=data.get("signed_prekey"),
                                                one_time=one_time))
