"""Gateway writes: single-use tickets (§9) and connection slots per device and per master user."""
import datetime as dt
import logging
import math
import secrets

from django.conf import settings
from django.utils import timezone
from rest_framework.exceptions import AuthenticationFailed

from decentcom.cache import shared as shared_cache
from decentcom.errors import ApiError
from decentcom.ratelimit import rate_limit_hit
from devices.auth import bearer_token
from devices.models import AuthSession
from devices.selectors import session_get_by_token, token_sha256
from devices.services import device_touch
from dms.selectors import server_settings_get
from gateway.models import GatewayTicket
from gateway.selectors import gateway_session_get

logger = logging.getLogger("gateway.services")

TICKET_RATE_PER_SESSION = 30  # per minute: each ticket is a row until it is used or purged
MAX_TICKET_LEN = 64


# --- tickets ------------------------------------------------------------------------

def gateway_ticket_create(*, session: AuthSession) -> tuple[GatewayTicket, str]:
    """A 60-second, single-use credential for `?ticket=`. Returns the row and
    the ticket, which is shown once and stored only as its SHA-256."""
    wait = rate_limit_hit(scope="gateway-ticket", key=str(session.pk), limit=TICKET_RATE_PER_SESSION, window_s=60)
    if wait:
        raise ApiError(429, "rate_limited", "too many gateway tickets", headers={"Retry-After": str(wait)})
    ticket = secrets.token_urlsafe(32)
    now = timezone.now()
    row = GatewayTicket.objects.create(
        ticket_sha256=token_sha256(ticket), session=session, created_at=now,
        expires_at=now + dt.timedelta(seconds=settings.GATEWAY_TICKET_TTL_SECONDS))
    return row, ticket


def gateway_ticket_consume(*, ticket: str) -> AuthSession | None:
    """The ticket's live session, or None. Of concurrent uses only the one
    whose DELETE removes the row wins; an expired ticket is deleted too."""
    row = (GatewayTicket.objects.filter(ticket_sha256=token_sha256(ticket))
           .values("pk", "session_id", "expires_at").first())
    if row is None:
        return None
    deleted, _ = GatewayTicket.objects.filter(pk=row["pk"]).delete()
    if not deleted or row["expires_at"] <= timezone.now():
        return None
    return gateway_session_get(session_id=row["session_id"])


def gateway_authenticate(*, authorization: bytes, ticket: str | None) -> AuthSession | None:
    """The `Authorization` header when there is one, else the ticket. None: close 4001."""
    if authorization.strip():
        try:
            token = bearer_token(authorization)
        except AuthenticationFailed:
            return None
        session = session_get_by_token(token=token) if token else None
    elif ticket and len(ticket) <= MAX_TICKET_LEN:
        session = gateway_ticket_consume(ticket=ticket)
    else:
        return None
    if session is not None and session.device is not None:
        device_touch(device=session.device)
    return session


# --- connection slots ---------------------------------------------------------------
# A device holds at most `max_gateway_connections_per_device` slots, and the
# master sessions of a user together at most
# `max_gateway_master_connections_per_user` (§9). A slot is a cache key (Redis
# when REDIS_URL is set, so the limit holds across processes) claimed
# atomically with `add` and leased: renewed every heartbeat interval while open, so the
# slots of a crashed process free themselves within one lease.

def _slot_key(holder: str, slot: int) -> str:
    return f"gw:slot:{holder}:{slot}"


def _slot_lease_s() -> int:
    return math.ceil((settings.GATEWAY_HEARTBEAT_INTERVAL_MS + settings.GATEWAY_HEARTBEAT_GRACE_MS) / 1000) + 5


def gateway_slot_claim(*, user_id: str, device_id: str | None, owner: str) -> tuple[bool, str | None]:
    """A slot for a connection of this device, or (`device_id` None) of this
    user's master sessions. Returns (allowed, slot key). A cache outage lets
    the connection in untracked (key None), as rate limits do."""
    conf = server_settings_get()
    if device_id is None:
        holder, limit = f"master:{user_id}", conf.max_gateway_master_connections_per_user
    else:
        holder, limit = f"device:{device_id}", conf.max_gateway_connections_per_device
    try:
        for slot in range(limit):
            key = _slot_key(holder, slot)
            if shared_cache().add(key, owner, timeout=_slot_lease_s()):
                return True, key
    except Exception as exc:  # noqa: BLE001 - any cache failure fails open
        logger.warning("gateway connection limit unchecked: %s", type(exc).__name__)
        return True, None
    return False, None


def gateway_slots_renew(*, slots: dict[str, str]) -> None:
    """Renew the leases of these slots (key -> owner), all of a process's at once."""
    for key, owner in slots.items():
        try:
            if not shared_cache().touch(key, timeout=_slot_lease_s()):
                shared_cache().add(key, owner, timeout=_slot_lease_s())
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            logger.warning("gateway slots not renewed: %s", type(exc).__name__)
            return


def gateway_slot_release(*, key: str, owner: str) -> None:
    try:
        if shared_cache().get(key) == owner:
            shared_cache().delete(key)
    except Exception as exc:  # noqa: BLE001 - the lease frees it later
        logger.warning("gateway slot not released: %s", type(exc).__name__)
