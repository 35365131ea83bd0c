import datetime as dt
import functools
import hashlib
import json

from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone

from decentcom import sql
from dmclient import protocol
from devices.models import AuthSession, Device, OneTimePrekey, SignedPrekey, User


@functools.lru_cache(maxsize=4096)
def device_public_key(device_id: str) -> bytes:
    """`protocol.b58_key`, remembered: sends name the same devices again and
    again, and each check (base58, then a curve point) cost about 40 µs."""
    return protocol.b58_key(device_id)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@functools.cache
def _session_rows() -> tuple[sql.Rows, sql.Rows, sql.Rows, str]:
    rows = sql.Rows(AuthSession, "s"), sql.Rows(User, "u"), sql.Rows(Device, "d")
    query = (f"SELECT {', '.join(r.select for r in rows)} FROM auth_sessions s "
             "JOIN users u ON u.id = s.user_id LEFT JOIN devices d ON d.id = s.device_id "
             "WHERE s.token_sha256 = %s AND s.expires_at > %s")
    return (*rows, query)


def session_get_by_token(*, token: str) -> AuthSession | None:
    """The live session for a bearer token, or None (unknown, expired, inactive device, suspended user).
    Runs on every request: one hand-written query (decentcom.sql)."""
    now = timezone.now()
    sessions, users, devices, query = _session_rows()
    with connection.cursor() as cursor:
        cursor.execute(query, [token_sha256(token), sql.dt_param(now)])
        row = cursor.fetchone()
    if row is None:
        return None
    session = sessions.build(row[:sessions.width])
    session.user = users.build(row[sessions.width:sessions.width + users.width])
    device_values = row[sessions.width + users.width:]
    session.device = None if device_values[0] is None else devices.build(device_values)
    if not session.user.is_active or session.user.is_suspended:
        return None
    if session.device is not None and not session.device.is_active(now):
        return None
    return session


def user_get_by_user_id(*, user_id: str) -> User | None:
    return User.objects.filter(username=user_id, is_key_user=True).first()


def device_list_active(*, user: User) -> list[Device]:
    return list(Device.objects.active().filter(user=user).order_by("created_at", "id"))


def device_list_for_owner(*, user: User) -> list[Device]:
    """All of a user's devices, revoked ones included, with `pending_count`:
    the deliveries waiting for each, as sync would serve them (§4, §8)."""
    from devices.mailbox import mailbox

    now = timezone.now()
    cutoff = now - dt.timedelta(days=mailbox().server_settings_get().max_undelivered_days)
    waiting = (Q(dms_deliveries__acked_at__isnull=True) & Q(dms_deliveries__created_at__gt=cutoff)
               & (Q(dms_deliveries__message__expires_at__isnull=True) | Q(dms_deliveries__message__expires_at__gt=now)))
    return list(
        Device.objects.filter(user=user)
        .annotate(pending_count=Count("dms_deliveries", filter=waiting))
        .order_by("created_at", "id")
    )


def device_get_for_user(*, user: User, device_id: str) -> Device | None:
    return Device.objects.filter(user=user, device_id=device_id).first()


def prekeys_summary(*, device_pks: list[int]) -> dict[int, dict]:
    """Per device: its signed prekey's wire form (or None) and how many
    one-time prekeys it has stored. Two queries whatever the number of devices."""
    wires = dict(SignedPrekey.objects.filter(device_id__in=device_pks).values_list("device_id", "wire"))
    counts = dict(OneTimePrekey.objects.filter(device_id__in=device_pks).values("device_id")
                  .annotate(n=Count("id")).values_list("device_id", "n"))
    return {pk: {"signed_prekey": json.loads(wires[pk]) if pk in wires else None,
                 "one_time_count": counts.get(pk, 0)} for pk in device_pks}
