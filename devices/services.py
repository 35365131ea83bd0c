import datetime as dt
import json
import logging
import secrets

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from dmclient import protocol
from decentcom.errors import ApiError
from decentcom.ratelimit import rate_limit_hit
from devices.mailbox import mailbox
from devices.models import AuthSession, Challenge, Device, OneTimePrekey, SignedPrekey, User
from devices.selectors import prekeys_summary, token_sha256
from gateway.notify import (close_device_connections_on_commit, close_user_connections_on_commit,
                            notify_devices_on_commit, notify_users_on_commit)

logger = logging.getLogger("devices.services")

CLOSE_REVOKED = 4003


def _ts(seconds: int | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


def _too_many(detail: str, retry_after: int) -> ApiError:
    return ApiError(429, "rate_limited", detail, headers={"Retry-After": str(retry_after)})


# --- authentication (§3) -----------------------------------------------------

MAX_OUTSTANDING_CHALLENGES = 5


def challenge_create(*, pubkey: str, client_ip: str | None) -> Challenge:
    """A login challenge. Limited per client address only: device ids are
    public, so a limit per key would let anyone lock a key out. Instead a key
    has at most 5 outstanding challenges, a new one replacing the oldest."""
    conf = mailbox().server_settings_get()
    wait = rate_limit_hit(scope="challenge-ip", key=client_ip or "-", limit=conf.challenge_rate_per_ip, window_s=60)
    if wait:
        raise _too_many("too many challenges, slow down", wait)
    now = timezone.now()
    with transaction.atomic():
        challenge = Challenge.objects.create(
            challenge=protocol.b64e(secrets.token_bytes(32)), pubkey=pubkey, client_ip=client_ip,
            created_at=now, expires_at=now + dt.timedelta(seconds=settings.CHALLENGE_TTL_SECONDS))
        keep = list(Challenge.objects.filter(pubkey=pubkey).order_by("-id")
                    .values_list("id", flat=True)[:MAX_OUTSTANDING_CHALLENGES])
        Challenge.objects.filter(pubkey=pubkey).exclude(id__in=keep).delete()
    return challenge


def certificate_check(*, certificate: protocol.Certificate, now: dt.datetime) -> None:
    """The server's rules for a parsed certificate (§2): 400, or 403 when expired."""
    try:
        protocol.cert_check_server(certificate, now=int(now.timestamp()))
    except protocol.ProtocolError as exc:
        raise ApiError(403 if exc.code == "certificate_expired" else 400, exc.code, exc.detail) from None


def auth_verify(*, pubkey: str, challenge: str, signature: bytes,
                certificate: protocol.Certificate | None, server_origin: str) -> tuple[AuthSession, str]:
    """Check a signed challenge and open a master or device session; the
    first login of a certified device key registers it (§3: proof of possession).

    The certificate is checked in full before the challenge is used, and every
    write after that is one transaction: a refused login leaves no user or
    device behind. Returns the session and its bearer token (shown once,
    stored only hashed)."""
    now = timezone.now()
    if certificate is not None:
        if certificate.device != pubkey:
            raise ApiError(400, "invalid_certificate", "certificate is for another device key")
        certificate_check(certificate=certificate, now=now)
    consumed, _ = Challenge.objects.filter(challenge=challenge, pubkey=pubkey, expires_at__gt=now).delete()
    if not consumed:
        raise ApiError(401, "invalid_challenge", "challenge is unknown, used, expired or not for this key")
    signed = protocol.auth_signed_bytes(challenge=challenge, pubkey=pubkey, server=server_origin)
    if not protocol.verify(protocol.b58_key(pubkey), signed, signature):
        raise ApiError(401, "bad_signature", f"signature does not verify for server {server_origin}")

    with transaction.atomic():
        device = Device.objects.select_related("user").filter(device_id=pubkey).first()
        if certificate is not None and (device is None or certificate.issued_at > int(device.issued_at.timestamp())):
            device = device_register(certificate=certificate)
        if device is None:
            return session_create(user=user_get_or_create(user_id=pubkey), device=None, now=now)
        if device.revoked_at is not None:
            raise ApiError(403, "device_revoked", "this device has been revoked")
        if not device.is_active(now):
            raise ApiError(403, "certificate_expired", "this device's certificate has expired")
        _user_check_usable(device.user)
        return session_create(user=device.user, device=device, now=now)


def _user_check_usable(user: User) -> None:
    if not user.is_key_user or not user.is_active:
        raise ApiError(403, "forbidden", "this key cannot be used")
    if user.is_suspended:
        raise ApiError(403, "user_suspended", "this user is suspended by the server's admins")


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
    _user_check_usable(user)
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


# `last_seen_at` is written at most this often per device: it is read by people, not clocks.
LAST_SEEN_RESOLUTION_S = 60


def device_touch(*, device: Device, now=None) -> None:
    """Record `last_seen_at`, at most once a minute per device."""
    now = now or timezone.now()
    if device.last_seen_at is None or now - device.last_seen_at > dt.timedelta(seconds=LAST_SEEN_RESOLUTION_S):
        Device.objects.filter(pk=device.pk).update(last_seen_at=now)
        device.last_seen_at = now


# --- devices (§4) ---------------------------------------------------------------

def device_register(*, certificate: protocol.Certificate) -> Device:
    """Register the device of a login signed by that device's own key
    (`auth_verify`, the only caller), or renew it with a later certificate.
    The certificate is already checked (`certificate_check`)."""
    if User.objects.filter(username=certificate.device).exists():
        raise ApiError(409, "key_in_use", "this key is registered as a user's master key")
    user = user_get_or_create(user_id=certificate.master)
    conf = mailbox().server_settings_get()
    now = timezone.now()
    with transaction.atomic():
        # The user row first: serialises a user's registrations and its suspension.
        user = User.objects.select_for_update().get(pk=user.pk)
        _user_check_usable(user)
        device = Device.objects.select_for_update(no_key=True).filter(device_id=certificate.device).first()
        if device is not None:
            if device.user_id != user.pk:
                raise ApiError(409, "key_in_use", "this device key belongs to another user")
            return _device_renew_locked(device=device, certificate=certificate)
        if Device.objects.active(now).filter(user=user).count() >= conf.max_devices_per_user:
            raise ApiError(409, "device_limit_reached",
                           f"at most {conf.max_devices_per_user} active devices per user")
        wait = rate_limit_hit(scope="register", key=user.username, limit=conf.registration_rate_per_user,
                              window_s=3600)
        if wait:
            raise _too_many("too many device registrations", wait)
        device = Device.objects.create(user=user, device_id=certificate.device, created_at=now,
                                       **_certificate_fields(certificate))
        mailbox().conversations_bump_epoch_for_users(user_ids=[user.pk], actor=user, now=now)
        notify_users_on_commit(user_ids=[user.username], op="DEVICE_ADD",
                               d={"device_id": device.device_id, "name": device.name})
    logger.info("device registered: user=%s device=%s", user.username[:8], device.device_id[:8])
    return device


def device_renew(*, session: AuthSession, certificate: protocol.Certificate) -> Device:
    """`POST /devices` (§4): a later certificate for the calling device
    itself. Nobody registers or renews a key they did not log in with."""
    if (session.device_id is None or certificate.master != session.user.username
            or certificate.device != session.device.device_id):
        raise ApiError(403, "proof_of_possession_required",
                       "only the calling device renews its own certificate; a new device registers "
                       "by logging in with its own key")
    certificate_check(certificate=certificate, now=timezone.now())
    with transaction.atomic():
        device = Device.objects.select_for_update(no_key=True).get(pk=session.device_id)
        return _device_renew_locked(device=device, certificate=certificate)


def _certificate_fields(certificate: protocol.Certificate) -> dict:
    return dict(name=certificate.name, certificate=certificate.wire(), permissions=list(certificate.permissions),
                issued_at=_ts(certificate.issued_at), expires_at=_ts(certificate.expires_at))


def _device_renew_locked(*, device: Device, certificate: protocol.Certificate) -> Device:
    if device.revoked_at is not None:
        raise ApiError(403, "device_revoked", "a revoked device key is never accepted again")
    if device.certificate.get("signature") == certificate.signature:
        return device
    if certificate.issued_at <= int(device.issued_at.timestamp()):
        raise ApiError(409, "stale_certificate", "a later certificate is already registered")
    fields = _certificate_fields(certificate)
    for name, value in fields.items():
        setattr(device, name, value)
    device.save(update_fields=list(fields))
    return device


def device_can_revoke(*, session: AuthSession, device: Device) -> bool:
    if session.user_id != device.user_id:
        return False
    return session.is_master or session.device_id == device.pk or session.device.can_manage_devices


def device_revoke(*, device: Device, reason: str = "revoked") -> None:
    """End a device (§4): inactive, sessions gone, pending deliveries dropped,
    epochs bumped, all in one transaction; events after commit.

    Lock order as everywhere (dms.services): the user's conversation rows (id
    order) first, then the device, then pending_dms rows, then deliveries."""
    if device.revoked_at is not None:
        return
    now = timezone.now()
    user = device.user
    with transaction.atomic():
        mailbox().conversations_bump_epoch_for_users(user_ids=[user.pk], actor=user, now=now)
        if not Device.objects.filter(pk=device.pk, revoked_at__isnull=True).update(revoked_at=now):
            transaction.set_rollback(True)  # revoked meanwhile: undo the bump and its events
            device.revoked_at = Device.objects.get(pk=device.pk).revoked_at
            return
        AuthSession.objects.filter(device_id=device.pk).delete()
        prekeys_delete(device_ids=[device.pk])
        mailbox().deliveries_drop_for_devices(device_ids=[device.pk])
        notify_users_on_commit(user_ids=[user.username], op="DEVICE_REVOKE",
                               d={"device_id": device.device_id, "name": device.name})
        close_device_connections_on_commit(device_id=device.device_id, code=CLOSE_REVOKED)
    device.revoked_at = now
    logger.info("device %s: user=%s device=%s", reason, user.username[:8], device.device_id[:8])


# --- suspension (§4) -------------------------------------------------------------------

def user_suspend(*, user: User) -> bool:
    """Make a key user's devices inactive everywhere, as a revocation would
    (sessions end, pending deliveries dropped, epochs bumped, DEVICE_REVOKE,
    connections closed 4003), but for as long as the suspension lasts: nothing
    is revoked. Returns False if there was nothing to do."""
    now = timezone.now()
    with transaction.atomic():
        # user row, then conversations (id order), devices, pending_dms, deliveries
        locked = User.objects.select_for_update().get(pk=user.pk)
        if not locked.is_key_user or locked.is_suspended:
            return False
        mailbox().conversations_bump_epoch_for_users(user_ids=[locked.pk], actor=locked, now=now)
        devices = list(Device.objects.active(now).select_for_update(no_key=True, of=("self",))
                       .filter(user=locked).order_by("id"))
        locked.suspended_at = now
        locked.save(update_fields=["suspended_at"])
        AuthSession.objects.filter(user=locked).delete()
        all_devices = list(Device.objects.filter(user=locked).values_list("pk", flat=True))
        prekeys_delete(device_ids=all_devices)
        mailbox().deliveries_drop_for_devices(device_ids=all_devices)
        for device in devices:
            notify_users_on_commit(user_ids=[locked.username], op="DEVICE_REVOKE",
                                   d={"device_id": device.device_id, "name": device.name})
        close_user_connections_on_commit(user_id=locked.username, code=CLOSE_REVOKED)
    user.suspended_at = now
    logger.info("user suspended: user=%s devices=%d", locked.username[:8], len(devices))
    return True


def user_unsuspend(*, user: User) -> bool:
    """Lift a suspension: the user's devices that are neither revoked nor
    expired are active again (epoch bump, DEVICE_ADD). Returns False if the
    user was not suspended."""
    now = timezone.now()
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        if not locked.is_suspended:
            return False
        locked.suspended_at = None
        locked.save(update_fields=["suspended_at"])
        mailbox().conversations_bump_epoch_for_users(user_ids=[locked.pk], actor=locked, now=now)
        devices = list(Device.objects.active(now).filter(user=locked).order_by("id"))
        for device in devices:
            notify_users_on_commit(user_ids=[locked.username], op="DEVICE_ADD",
                                   d={"device_id": device.device_id, "name": device.name})
    user.suspended_at = None
    logger.info("user suspension lifted: user=%s devices=%d", locked.username[:8], len(devices))
    return True


# --- prekeys (§6b) -----------------------------------------------------------------------

MAX_ONE_TIME_PREKEYS = 200
MAX_ONE_TIME_PER_UPLOAD = 100
PREKEYS_LOW_BELOW = 20


def prekeys_delete(*, device_ids: list[int]) -> int:
    """A device is gone (revoked, expired, its user suspended): its prekeys go
    with it, in the caller's transaction. Returns the rows deleted."""
    if not device_ids:
        return 0
    signed = SignedPrekey.objects.filter(device_id__in=device_ids).delete()[0]
    return signed + OneTimePrekey.objects.filter(device_id__in=device_ids).delete()[0]


def prekeys_upload(*, device: Device, signed_prekey: object = None, one_time: list | None = None) -> dict:
    """`PUT /devices/prekeys` (§6b): a newer signed prekey and/or more
    one-time prekeys for the calling device. All or nothing, one transaction
    with the device row locked (concurrent uploads of one device queue; a
    revocation or suspension either runs first, and the upload is refused,
    or after, and deletes what it stored)."""
    spk = None if signed_prekey is None else protocol.spk_parse(signed_prekey, device=device.device_id)
    if one_time is not None and len(one_time) > MAX_ONE_TIME_PER_UPLOAD:
        raise ApiError(400, "invalid_request",
                       f"one_time: at most {MAX_ONE_TIME_PER_UPLOAD} one-time prekeys per upload")
    otks = [protocol.otk_parse(value) for value in one_time or []]
    ids = [prekey_id for prekey_id, _ in otks]
    if len(set(ids)) != len(ids):
        raise ApiError(400, "invalid_prekey", "a one-time prekey id appears twice in this upload")
    now = timezone.now()
    with transaction.atomic():
        # The device row only (a suspension locks the user row before the devices). The user's state is
        # read by its own query after the lock: a join in the locking query would recheck the device row
        # alone and keep the user row of its snapshot, missing a suspension committed meanwhile.
        locked = Device.objects.select_for_update(no_key=True).get(pk=device.pk)
        suspended = User.objects.filter(pk=locked.user_id, suspended_at__isnull=False).exists()
        if not locked.is_active(now) or suspended:
            raise ApiError(403, "device_revoked", "this device is no longer active")
        current = SignedPrekey.objects.filter(device=locked).first()
        if spk is not None:
            if current is not None and spk.id <= current.prekey_id:
                raise ApiError(409, "stale_prekey", f"signed prekey id must be above {current.prekey_id}",
                               signed_prekey_id=current.prekey_id)
            values = dict(prekey_id=spk.id, wire=json.dumps(spk.wire, separators=(",", ":")),
                          created_at=_ts(spk.created_at), uploaded_at=now)
            if current is None:
                current = SignedPrekey.objects.create(device=locked, **values)
            else:
                SignedPrekey.objects.filter(device=locked).update(**values)
                current.prekey_id = spk.id
        stored = OneTimePrekey.objects.filter(device=locked).count()
        if otks:
            known = set(OneTimePrekey.objects.filter(device=locked, prekey_id__in=ids)
                        .values_list("prekey_id", flat=True))
            new = [(prekey_id, pub) for prekey_id, pub in otks if prekey_id not in known]
            if stored + len(new) > MAX_ONE_TIME_PREKEYS:
                raise ApiError(409, "too_many_prekeys",
                               f"at most {MAX_ONE_TIME_PREKEYS} one-time prekeys are stored per device "
                               f"({stored} stored, {len(new)} new)", one_time_count=stored,
                               max_one_time=MAX_ONE_TIME_PREKEYS)
            OneTimePrekey.objects.bulk_create([
                OneTimePrekey(device=locked, prekey_id=prekey_id, x25519=protocol.b64e(pub), uploaded_at=now)
                for prekey_id, pub in new])
            stored += len(new)
    if spk is not None or otks:
        logger.info("prekeys uploaded: device=%s signed=%s one_time=%d", device.device_id[:8],
                    spk.id if spk else "-", len(otks))
    return {"signed_prekey_id": current.prekey_id if current else None, "one_time_count": stored}


def prekeys_claim_rate_check(*, device: Device, conf=None) -> None:
    """Every claim counts, per calling device: each one drains supplies (§6b)."""
    conf = conf or mailbox().server_settings_get()
    wait = rate_limit_hit(scope="prekey-claim", key=device.device_id, limit=conf.prekey_claim_rate_per_device,
                          window_s=60)
    if wait:
        raise _too_many("too many prekey claims, slow down", wait)


def prekeys_claim(*, device_ids: list[str], now=None) -> list[dict]:
    """`POST /dms/prekeys/claim` (§6b): for each active device among
    `device_ids` (in their order) its signed prekey and its lowest one-time
    prekey, which is deleted in this transaction. One statement takes them
    all: on PostgreSQL each device's row is locked with SKIP LOCKED, so
    concurrent claims never hand out one key twice nor wait on each other
    (SQLite has a single writer). PREKEYS_LOW after commit to each device
    this claim took a one-time prekey from and left with fewer than 20."""
    now = now or timezone.now()
    devices = {d.device_id: d for d in Device.objects.active(now).filter(device_id__in=device_ids)
               .only("pk", "device_id")}
    if not devices:
        return []
    pks = sorted(d.pk for d in devices.values())
    taken: dict[int, dict] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        values = ", ".join(["(%s)"] * len(pks))
        if connection.vendor == "postgresql":
            cursor.execute(
                "DELETE FROM device_one_time_prekeys WHERE id IN (SELECT p.id FROM (VALUES "
                f"{values}) AS d(device_id) CROSS JOIN LATERAL (SELECT o.id FROM device_one_time_prekeys o "
                "WHERE o.device_id = d.device_id ORDER BY o.prekey_id LIMIT 1 FOR UPDATE SKIP LOCKED) p) "
                "RETURNING device_id, prekey_id, x25519", pks)
        else:
            cursor.execute(
                "DELETE FROM device_one_time_prekeys WHERE id IN (SELECT (SELECT o.id FROM device_one_time_prekeys o "
                f"WHERE o.device_id = d.column1 ORDER BY o.prekey_id LIMIT 1) FROM (VALUES {values}) AS d) "
                "RETURNING device_id, prekey_id, x25519", pks)
        for device_pk, prekey_id, x25519 in cursor.fetchall():
            taken[device_pk] = {"id": prekey_id, "x25519": x25519}
        summaries = prekeys_summary(device_pks=pks)
        low = {d.device_id: ("PREKEYS_LOW", {"one_time_count": summaries[d.pk]["one_time_count"]})
               for d in devices.values()
               if d.pk in taken and summaries[d.pk]["one_time_count"] < PREKEYS_LOW_BELOW}
        if low:
            notify_devices_on_commit(events=low)
    return [{"device_id": device_id, "signed_prekey": summaries[devices[device_id].pk]["signed_prekey"],
             "one_time": taken.get(devices[device_id].pk)}
            for device_id in device_ids if device_id in devices]
