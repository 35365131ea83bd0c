from django.utils import timezone

from devices.models import AuthSession, Device
from dms.selectors import pending_count_for_device

CLOSE_AUTH_FAILED = 4001
CLOSE_REVOKED = 4003


def gateway_session_get(*, session_id: int) -> AuthSession | None:
    """The session if it is still live: not logged out or expired, its user
    active and not suspended, its device (if any) neither revoked nor expired."""
    now = timezone.now()
    session = (AuthSession.objects.select_related("user", "device")
               .filter(pk=session_id, expires_at__gt=now).first())
    if session is None or not session.user.is_active or session.user.is_suspended:
        return None
    if session.device is not None and not session.device.is_active(now):
        return None
    return session


def gateway_session_close_code(*, session_id: int, device_pk: int | None) -> int | None:
    """None while the session is live; else the code to close its connections with."""
    if gateway_session_get(session_id=session_id) is not None:
        return None
    if device_pk is not None:
        device = Device.objects.select_related("user").filter(pk=device_pk).first()
        if device is None or not device.is_active() or device.user.is_suspended:
            return CLOSE_REVOKED
    return CLOSE_AUTH_FAILED


def gateway_hello_get(*, session_id: int) -> dict | None:
    """HELLO's `pending_count`, read after the connection joined its groups so
    no message falls between the count and the first DM_NOTIFY. None if the
    session ended meanwhile."""
    session = gateway_session_get(session_id=session_id)
    if session is None:
        return None
    return {"pending_count": 0 if session.device is None else pending_count_for_device(device=session.device)}
