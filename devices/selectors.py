import hashlib

from django.db.models import Count, Q
from django.utils import timezone

from devices.models import AuthSession, Device, User


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def session_get_by_token(*, token: str) -> AuthSession | None:
    """The live session for a bearer token, or None (unknown, expired, inactive device)."""
    now = timezone.now()
    session = (AuthSession.objects.select_related("user", "device")
               .filter(token_sha256=token_sha256(token), expires_at__gt=now).first())
    if session is None or not session.user.is_active:
        return None
    if session.device is not None and not session.device.is_active(now):
        return None
    return session


def user_get_by_user_id(*, user_id: str) -> User | None:
    return User.objects.filter(username=user_id, is_key_user=True).first()


def device_list_active(*, user: User) -> list[Device]:
    return list(Device.objects.active().filter(user=user).order_by("created_at", "id"))


def device_list_for_owner(*, user: User) -> list[Device]:
    """All of a user's devices, revoked ones included, with `pending_count`."""
    return list(
        Device.objects.filter(user=user)
        .annotate(pending_count=Count("dms_deliveries", filter=Q(dms_deliveries__acked_at__isnull=True)))
        .order_by("created_at", "id")
    )


def device_get_for_user(*, user: User, device_id: str) -> Device | None:
    return Device.objects.filter(user=user, device_id=device_id).first()
