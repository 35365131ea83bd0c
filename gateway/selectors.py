from django.db.models import Q
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


CHECK_CHUNK = 500  # ids per query: under SQLite's bound-parameter limit


def gateway_sessions_ended(*, sessions: dict[int, int | None]) -> dict[int, int]:
    """Of these connections' sessions (session id -> device pk), the ended
    ones and the code to close each with. One query per CHECK_CHUNK live
    sessions; an ended one (rare) costs its own lookup for the code."""
    now = timezone.now()
    ids = list(sessions)
    live = set()
    for i in range(0, len(ids), CHECK_CHUNK):
        live.update(AuthSession.objects.filter(
            Q(device__isnull=True) | Q(device__revoked_at__isnull=True)
            & (Q(device__expires_at__isnull=True) | Q(device__expires_at__gt=now)),
            pk__in=ids[i:i + CHECK_CHUNK], expires_at__gt=now, user__is_active=True, user__suspended_at__isnull=True,
        ).values_list("pk", flat=True))
    ended = {session_id: gateway_session_close_code(session_id=session_id, device_pk=device_pk)
             for session_id, device_pk in sessions.items() if session_id not in live}
    return {session_id: code for session_id, code in ended.items() if code is not None}


def gateway_hello_get(*, session_id: int) -> dict | None:
    """HELLO's `pending_count`, read after the connection joined its groups so
    no message falls between the count and the first DM_NOTIFY. None if the
    session ended meanwhile."""
    session = gateway_session_get(session_id=session_id)
    if session is None:
        return None
    return {"pending_count": 0 if session.device is None else pending_count_for_device(device=session.device)}
