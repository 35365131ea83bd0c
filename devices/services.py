import datetime as dt
import logging
import secrets

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from decentcom import protocol
from decentcom.errors import ApiError
from decentcom.ratelimit import rate_limit_hit
from devices.models import AuthSession, Challenge, Device, User
from devices.selectors import token_sha256
from dms.selectors import server_settings_get
from gateway.notify import close_device_connections_on_commit, notify_users_on_commit

logger = logging.getLogger("devices.services")

CLOSE_REVOKED = 4003


def _ts(seconds: int | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


def _too_many(detail: str, retry_after: int) -> ApiError:
    return ApiError(429, "rate_limited", detail, headers={"Retry-After": str(retry_after)})


# --- authentication (§3) -----------------------------------------------------

def challenge_create(*, pubkey: str, client_ip: str | None) -> Challenge:
    conf = server_settings_get()
    for scope, key, limit in (("challenge-key", pubkey, conf.challenge_rate_per_key),
                              ("challenge-ip", client_ip or "-", conf.challenge_rate_per_ip)):
        wait = rate_limit_hit(scope=scope, key=key, limit=limit, window_s=60)
        if wait:
            raise _too_many("too many challenges, slow down", wait)
    now = timezone.now()
    return Challenge.objects.create(
        challenge=protocol.b64e(secrets.token_bytes(32)), pubkey=pubkey, client_ip=client_ip,
        created_at=now, expires_at=now + dt.timedelta(seconds=settings.CHALLENGE_TTL_SECONDS))


def auth_verify(*, pubkey: str, challenge: str, signature: bytes,
                certificate: protocol.Certificate | None, server_origin: str) -> tuple[AuthSession, str]:
    """Check a signed challenge and open a master or device session.

    Returns the session and its bearer token (shown once, stored only hashed)."""
    now = timezone.now()
    consumed, _ = Challenge.objects.filter(challenge=challenge, pubkey=pubkey, expires_at__gt=now).delete()
    if not consumed:
        raise ApiError(401, "invalid_challenge", "challenge is unknown, used, expired or not for this key")
    signed = protocol.auth_signed_bytes(challenge=challenge, pubkey=pubkey, server=server_origin)
    if not protocol.verify(protocol.b58_key(pubkey), signed, signature):
        raise ApiError(401, "bad_signature", f"signature does not verify for server {server_origin}")

    device = Device.objects.select_related("user").filter(device_id=pubkey).first()
    if certificate is not None:
        if certificate.device != pubkey:
            raise ApiError(400, "invalid_certificate", "certificate is for another device key")
        if device is None or certificate.issued_at > int(device.issued_at.timestamp()):
            user = user_get_or_create(user_id=certificate.master)
            device, _ = device_register(user=user, certificate=certificate)
    if device is not None:
        if device.revoked_at is not None:
            raise ApiError(403, "device_revoked", "this device has been revoked")
        if not device.is_active(now):
            raise ApiError(403, "certificate_expired", "this device's certificate has expired")
        return session_create(user=device.user, device=device, now=now)
    return session_create(user=user_get_or_create(user_id=pubkey), device=None, now=now)


def user_get_or_create(*, user_id: str) -> User:
    user = User.objects.filter(username=user_id).first()
    if user is None:
        if Device.objects.filter(device_id=user_id).exists():
            raise ApiError(409, "key_in_use", "this key is registered as a device")
        try:
            with transaction.atomic():
                user = User.objects.create(username=user_id, is_key_user=True, password="!")
        except IntegrityError:
            user = User.objects.get(username=user_id)
    if not user.is_key_user or not user.is_active:
        raise ApiError(403, "forbidden", "this key cannot be used")
    return user


def session_create(*, user: User, device: Device | None, now) -> tuple[AuthSession, str]:
    if device is not None:
        device_touch(device=device, now=now)
    token = secrets.token_urlsafe(32)
    session = AuthSession.objects.create(
        token_sha256=token_sha256(token), user=user, device=device, created_at=now,
        expires_at=now + dt.timedelta(seconds=settings.SESSION_TOKEN_TTL_SECONDS))
    return session, token


def session_logout(*, session: AuthSession) -> None:
    AuthSession.objects.filter(pk=session.pk).delete()


def device_touch(*, device: Device, now=None) -> None:
    """Record `last_seen_at`, at most once a minute per device."""
    now = now or timezone.now()
    if device.last_seen_at is None or now - device.last_seen_at > dt.timedelta(seconds=60):
        Device.objects.filter(pk=device.pk).update(last_seen_at=now)
        device.last_seen_at = now


# --- devices (§4) ---------------------------------------------------------------

def device_register(*, user: User, certificate: protocol.Certificate) -> tuple[Device, bool]:
    """Register a certified device, or renew its certificate. Returns (device, created)."""
    from dms.services import conversations_bump_epoch_for_users

    now = timezone.now()
    try:
        protocol.cert_check_server(certificate, now=int(now.timestamp()))
    except protocol.ProtocolError as exc:
        raise ApiError(403 if exc.code == "certificate_expired" else 400, exc.code, exc.detail) from None
    if certificate.master != user.user_id:
        raise ApiError(403, "forbidden", "the certificate's master is not your user")
    if User.objects.filter(username=certificate.device).exists():
        raise ApiError(409, "key_in_use", "this key is registered as a user's master key")

    conf = server_settings_get()
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=user.pk).get()  # serialises a user's registrations
        device = Device.objects.select_for_update().filter(device_id=certificate.device).first()
        fields = dict(name=certificate.name, certificate=certificate.wire(),
                      permissions=list(certificate.permissions),
                      issued_at=_ts(certificate.issued_at), expires_at=_ts(certificate.expires_at))
        if device is not None:
            if device.user_id != user.pk:
                raise ApiError(409, "key_in_use", "this device key belongs to another user")
            if device.revoked_at is not None:
                raise ApiError(403, "device_revoked", "a revoked device key is never accepted again")
            if device.certificate.get("signature") == certificate.signature:
                return device, False
            if certificate.issued_at <= int(device.issued_at.timestamp()):
                raise ApiError(409, "stale_certificate", "a later certificate is already registered")
            for name, value in fields.items():
                setattr(device, name, value)
            device.save(update_fields=list(fields))
            return device, False

        if Device.objects.active(now).filter(user=user).count() >= conf.max_devices_per_user:
            raise ApiError(409, "device_limit_reached",
                           f"at most {conf.max_devices_per_user} active devices per user")
        wait = rate_limit_hit(scope="register", key=user.username, limit=conf.registration_rate_per_user,
                              window_s=3600)
        if wait:
            raise _too_many("too many device registrations", wait)
        device = Device.objects.create(user=user, device_id=certificate.device, created_at=now, **fields)
        conversations_bump_epoch_for_users(user_ids=[user.pk], actor=user, now=now)
        notify_users_on_commit(user_ids=[user.username], op="DEVICE_ADD",
                               d={"device_id": device.device_id, "name": device.name})
    logger.info("device registered: user=%s device=%s", user.username[:8], device.device_id[:8])
    return device, True


def device_can_revoke(*, session: AuthSession, device: Device) -> bool:
    if session.user_id != device.user_id:
        return False
    return session.is_master or session.device_id == device.pk or session.device.can_manage_devices


def device_revoke(*, device: Device, reason: str = "revoked") -> None:
    """End a device (§4): inactive, sessions gone, pending deliveries dropped,
    epochs bumped, all in one transaction; events after commit."""
    from dms.services import conversations_bump_epoch_for_users, deliveries_drop_for_devices

    now = timezone.now()
    with transaction.atomic():
        locked = Device.objects.select_for_update().get(pk=device.pk)
        if locked.revoked_at is not None:
            return
        locked.revoked_at = now
        locked.save(update_fields=["revoked_at"])
        AuthSession.objects.filter(device=locked).delete()
        deliveries_drop_for_devices(device_ids=[locked.pk])
        conversations_bump_epoch_for_users(user_ids=[locked.user_id], actor=locked.user, now=now)
        notify_users_on_commit(user_ids=[locked.user.username], op="DEVICE_REVOKE",
                               d={"device_id": locked.device_id, "name": locked.name})
        close_device_connections_on_commit(device_id=locked.device_id, code=CLOSE_REVOKED)
    device.revoked_at = now
    logger.info("device %s: user=%s device=%s", reason, locked.user.username[:8], locked.device_id[:8])
