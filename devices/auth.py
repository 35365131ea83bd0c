"""Bearer-token authentication and the two kinds of session (§3)."""
from rest_framework import permissions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from decentcom.errors import ApiError
from devices.selectors import session_get_by_token
from devices.services import device_touch


def bearer_token(header: bytes) -> str | None:
    parts = header.split()
    if not parts:
        return None
    if len(parts) != 2 or parts[0].lower() != b"bearer":
        raise AuthenticationFailed("use 'Authorization: Bearer <token>'")
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise AuthenticationFailed("malformed token") from None


class BearerTokenAuthentication(BaseAuthentication):
    def authenticate(self, request):
        token = bearer_token(get_authorization_header(request))
        if token is None:
            return None
        session = session_get_by_token(token=token)
        if session is None:
            raise AuthenticationFailed("token is unknown, expired or revoked")
        if session.device is not None:
            device_touch(device=session.device)
        return session.user, session

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class IsAnySession(permissions.BasePermission):
    """Master or device session: auth, devices, users and the gateway."""

    def has_permission(self, request, view):
        return request.auth is not None


class IsDeviceSession(permissions.BasePermission):
    """Everything under /dms/ needs a device session, so the master key can stay offline."""

    def has_permission(self, request, view):
        if request.auth is None:
            return False
        if request.auth.device_id is None:
            raise ApiError(403, "device_session_required", "this endpoint needs a device session")
        return True
