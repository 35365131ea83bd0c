import datetime as dt
import functools

from django.conf import settings
from django.db import connection
from django.db.models import Count, Exists, Min, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Length, TruncHour
from django.utils import timezone

from decentcom import sql
from dmclient import protocol
from decentcom.errors import ApiError
from decentcom.timefmt import rfc3339
from devices.models import Device, User
from dms.models import (Conversation, ConversationMember, Delivery, DeliveryState, PendingDm, Policy, PurgeRun,
                        ServerSettings, UsedMessageId, key_wrap_wire)
from dms.wire import conversation_wire

MAX_IDS_PER_STATEMENT = 10_000  # SQLite takes at most 32,766 parameters


@functools.cache
def _settings_rows() -> tuple[sql.Rows, str]:
    rows = sql.Rows(ServerSettings, "s")
    return rows, f"SELECT {rows.select} FROM dm_server_settings s WHERE s.id = 1"


def server_settings_get() -> ServerSettings:
    """The admin's settings as they are now (a change applies to the next
    request). Read by most requests: one hand-written query (decentcom.sql)."""
    rows, query = _settings_rows()
    with connection.cursor() as cursor:
        cursor.execute(query)
        row = cursor.fetchone()
    if row is None:
        return ServerSettings.objects.get_or_create(pk=1)[0]
    return rows.build(row)


PROTOCOL_VERSION = "1.2"  # §6b forward secrecy: prekeys and key wrap v2


def server_description(*, origin: str, conf: ServerSettings) -> dict:
    """§4 `GET /api/v1/server`: what clients need not guess, from the admin's
    settings as they are now. A hint for user interfaces, never a security input."""
    scheme, host = origin.split("://", 1)
    ttl_days = conf.default_ttl_days if conf.default_policy == Policy.TTL else None
    return {
        "protocol": PROTOCOL_VERSION,
        "origin": origin,
        "retention": {
            "default": {"policy": conf.default_policy, "ttl_days": ttl_days},
            "max_ttl_days": conf.max_ttl_days,
            "permanent_allowed": conf.allow_permanent,
            "max_undelivered_days": conf.max_undelivered_days,
        },
        "limits": {
            "max_ciphertext_bytes": conf.max_ciphertext_bytes,
            "max_participants": conf.max_participants,
            "max_recipients_per_message": conf.max_recipients_per_message,
            "max_devices_per_user": conf.max_devices_per_user,
            "pending_quota": conf.pending_quota,
            # the effective limit: the admin's, capped by the MAX_REQUEST_BYTES setting (decentcom.parsers)
            "max_request_bytes": min(conf.max_request_bytes, settings.DATA_UPLOAD_MAX_MEMORY_SIZE),
        },
        "gateway": {
            "url": f"{'wss' if scheme == 'https' else 'ws'}://{host}/api/v1/gateway",
            "heartbeat_interval_ms": settings.GATEWAY_HEARTBEAT_INTERVAL_MS,
        },
    }


def server_settings_for_request(request) -> ServerSettings:
    """`server_settings_get`, read once per request: its parser, rate limit and service all need it."""
    conf = getattr(request, "server_settings", None)
    if conf is None:
        conf = request.server_settings = server_settings_get()
    return conf


def conversation_participants_map(*, conversation_ids) -> dict:
    """conversation id -> sorted participant user ids, in one query."""
    result: dict = {cid: [] for cid in conversation_ids}
    rows = (ConversationMember.objects.filter(conversation_id__in=list(conversation_ids))
            .values_list("conversation_id", "user__username"))
    for conversation_id, user_id in rows:
        result[conversation_id].append(user_id)
    for members in result.values():
        members.sort()
    return result


def conversation_get_for_user(*, conversation_id, user) -> Conversation | None:
    """The conversation if `user` participates in it, else None (a 404 to the caller)."""
    return (Conversation.objects.select_related("created_by")
            .filter(id=conversation_id, members__user=user).first())


def conversation_list_for_user(*, user, limit: int, after: str | None) -> dict:
    """§5: the user's conversations, latest activity first, paged like sync."""
    conversations = Conversation.objects.select_related("created_by").filter(members__user=user)
    if after:
        at, conversation_id = _decode_time_id_cursor(after)
        conversations = conversations.filter(
            Q(last_activity_at__lt=at) | Q(last_activity_at=at, id__lt=conversation_id))
    rows = list(conversations.order_by("-last_activity_at", "-id")[:limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    participants = conversation_participants_map(conversation_ids=[c.id for c in rows])
    return {
        "conversations": [conversation_wire(c, participants[c.id]) for c in rows], "has_more": has_more,
        "cursor": _encode_cursor(rows[-1].last_activity_at.isoformat(), rows[-1].id) if rows else (after or ""),
    }


# Cursors are opaque to clients: base64 of "|"-joined parts. Anything else, or a value out of the
# database's range (SQLite refuses integers past 64 bits with OverflowError), is not one we gave.
_MAX_ID = 2 ** 63 - 1


def _invalid_cursor() -> ApiError:
    return ApiError(400, "invalid_cursor", "cursor is not one this server gave")


def _encode_cursor(*parts) -> str:
    return protocol.b64e("|".join(str(p) for p in parts).encode())


def _decode_cursor(cursor: str, n: int) -> list[str]:
    try:
        parts = protocol.b64d(cursor).decode().split("|")
    except (protocol.ProtocolError, UnicodeDecodeError):
        parts = []
    if len(parts) != n:
        raise _invalid_cursor()
    return parts


def _decode_id_cursor(cursor: str) -> int:
    """A row id: plain ASCII digits, within a 64-bit signed integer."""
    (value,) = _decode_cursor(cursor, 1)
    if not (value.isascii() and value.isdigit() and len(value) <= 19 and int(value) <= _MAX_ID):
        raise _invalid_cursor()
    return int(value)


def _decode_time_id_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """An aware time that is still a valid UTC datetime, and a UUID."""
    created, row_id = _decode_cursor(cursor, 2)
    try:
        at = dt.datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("naive")
        at = at.astimezone(dt.timezone.utc)
        protocol.parse_uuid(row_id)
    except (ValueError, OverflowError, protocol.ProtocolError):
        raise _invalid_cursor() from None
    return at, row_id


def message_wire(message: PendingDm, *, wrap: dict | None) -> dict:
    sender = message.sender_device
    return {
        "message_id": str(message.message_id),
        "conversation_id": str(message.conversation_id),
        "sender": sender.user.username,
        "sender_device": sender.device_id,
        "sender_certificate": sender.certificate,
        "epoch": message.epoch,
        "key_id": message.key_id,
        "participants_sha256": message.participants_sha256,
        "nonce": message.nonce,
        "ciphertext": protocol.b64e(bytes(message.ciphertext)),
        "signature": message.signature,
        "key_wrap": wrap,
        "created_at": rfc3339(message.created_at),
        "expires_at": rfc3339(message.expires_at),
        "policy": message.policy,
    }


def dm_list_pending_for_device(*, device, limit: int, after: str | None, conf: ServerSettings | None = None) -> dict:
    """Sync (§7): the device's pending, unexpired deliveries, oldest first.
    One hand-written query whatever the page size (decentcom.sql): the ORM
    spent more time building 500 rows of three models than the database did."""
    after_id = _decode_id_cursor(after) if after else 0
    now = timezone.now()
    conf = conf or server_settings_get()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.id, d.wrap_nonce, d.wrapped_key, d.wrap_signed_prekey_id, d.wrap_one_time_id, d.wrap_ephemeral, "
            "m.message_id, m.conversation_id, m.epoch, m.key_id, "
            "m.participants_sha256, m.nonce, m.ciphertext, m.signature, m.created_at, m.expires_at, m.policy, "
            "m.sender_device_id, s.device_id, s.certificate, u.username "
            "FROM dm_deliveries d JOIN pending_dms m ON m.message_id = d.message_id "
            "JOIN devices s ON s.id = m.sender_device_id JOIN users u ON u.id = s.user_id "
            "WHERE d.device_id = %s AND d.acked_at IS NULL AND d.id > %s AND d.created_at > %s "
            "AND (m.expires_at IS NULL OR m.expires_at > %s) ORDER BY d.id LIMIT %s",
            [device.pk, after_id, sql.dt_param(now - dt.timedelta(days=conf.max_undelivered_days)),
             sql.dt_param(now), limit + 1])
        rows = cursor.fetchall()
    has_more = len(rows) > limit
    rows = rows[:limit]
    certificates = {}  # one parse per sender device
    messages = []
    for (_, wrap_nonce, wrapped_key, wrap_spk, wrap_otk, wrap_ephemeral, message_id, conversation_id, epoch, key_id,
         participants_sha256, nonce,
         ciphertext, signature, created_at, expires_at, policy, sender_pk, sender_device, certificate,
         sender) in rows:
        if sender_pk not in certificates:
            certificates[sender_pk] = sql.json_value(certificate)
        messages.append({
            "message_id": sql.uuid_str(message_id),
            "conversation_id": sql.uuid_str(conversation_id),
            "sender": sender,
            "sender_device": sender_device,
            "sender_certificate": certificates[sender_pk],
            "epoch": epoch,
            "key_id": key_id,
            "participants_sha256": participants_sha256,
            "nonce": nonce,
            "ciphertext": protocol.b64e(ciphertext),
            "signature": signature,
            "key_wrap": key_wrap_wire(wrap_nonce, wrapped_key, wrap_spk, wrap_otk, wrap_ephemeral),
            "created_at": sql.rfc3339_value(created_at),
            "expires_at": sql.rfc3339_value(expires_at),
            "policy": policy,
        })
    return {"messages": messages, "has_more": has_more, "cursor": _encode_cursor(rows[-1][0] if rows else after_id)}


def dm_list_history(*, conversation: Conversation, device, limit: int, before: str | None) -> dict:
    """Stored ttl and permanent messages this device sent or received, newest first."""
    now = timezone.now()
    mine = Delivery.objects.filter(message=OuterRef("pk"), device=device)
    messages = (PendingDm.objects.filter(conversation=conversation, policy__in=[Policy.TTL, Policy.PERMANENT])
                .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
                .filter(Q(sender_device=device) | Exists(mine))
                .annotate(my_wrap_nonce=Subquery(mine.values("wrap_nonce")[:1]),
                          my_wrapped_key=Subquery(mine.values("wrapped_key")[:1]),
                          my_wrap_spk=Subquery(mine.values("wrap_signed_prekey_id")[:1]),
                          my_wrap_otk=Subquery(mine.values("wrap_one_time_id")[:1]),
                          my_wrap_ephemeral=Subquery(mine.values("wrap_ephemeral")[:1]))
                .select_related("sender_device", "sender_device__user"))
    if before:
        created_at, message_id = _decode_time_id_cursor(before)
        messages = messages.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, message_id__lt=message_id))
    rows = list(messages.order_by("-created_at", "-message_id")[:limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    cursor = _encode_cursor(rows[-1].created_at.isoformat(), rows[-1].message_id) if rows else (before or "")
    return {
        "messages": [message_wire(m, wrap=key_wrap_wire(m.my_wrap_nonce, m.my_wrapped_key, m.my_wrap_spk,
                                                        m.my_wrap_otk, m.my_wrap_ephemeral)) for m in rows],
        "has_more": has_more, "cursor": cursor,
    }


def pending_count_for_device(*, device) -> int:
    now = timezone.now()
    conf = server_settings_get()
    return (Delivery.objects.filter(device=device, acked_at__isnull=True,
                                    created_at__gt=now - dt.timedelta(days=conf.max_undelivered_days))
            .filter(Q(message__expires_at__isnull=True) | Q(message__expires_at__gt=now)).count())


# --- delivery status (§7a) ------------------------------------------------------------

_STATES = tuple(DeliveryState.State.values)  # read once: an enum's `values` is rebuilt at each access


def delivery_counts_zero() -> dict[str, int]:
    return dict.fromkeys(_STATES, 0)


# One row per message: its counts by state, aggregated before the per-message joins.
_COUNT_COLUMNS = ", ".join(f"COUNT(CASE WHEN state = '{state}' THEN 1 END)" for state in _STATES)


def delivery_counts_for_messages(*, db_ids: list, ending: tuple[str, list] | None = None) -> dict[str, dict]:
    """message id -> {"conversation_id", "sender" (user id), "counts"}, for
    DM_STATUS: one query per 10,000 ids, given as the database returns them
    (`sql.uuid_param` values: no conversion on the hot paths). Messages
    without states are left out. With `ending` (an SQL condition on
    `dm_delivery_states` rows and its parameters), each entry also has
    "ending": how many of its states meet it."""
    result: dict[str, dict] = {}
    extra = f", COUNT(CASE WHEN {ending[0]} THEN 1 END)" if ending else ""
    with connection.cursor() as cursor:
        for start in range(0, len(db_ids), MAX_IDS_PER_STATEMENT):
            among, ids = sql.among("message_id", db_ids[start:start + MAX_IDS_PER_STATEMENT])
            cursor.execute(
                "SELECT c.*, u.conversation_id, su.username FROM ("
                f"SELECT message_id, {_COUNT_COLUMNS}{extra} FROM dm_delivery_states "
                f"WHERE {among} GROUP BY message_id) c "
                "JOIN dm_used_message_ids u ON u.message_id = c.message_id "
                "JOIN devices sd ON sd.id = u.sender_device_id JOIN users su ON su.id = sd.user_id",
                [*(ending[1] if ending else ()), *ids])
            for row in cursor.fetchall():
                conversation_id, entry = row[-2], {"sender": row[-1], "counts": dict(zip(_STATES, row[1:]))}
                entry["conversation_id"] = None if conversation_id is None else sql.uuid_str(conversation_id)
                if ending:
                    entry["ending"] = row[1 + len(_STATES)]
                result[sql.uuid_str(row[0])] = entry
    return result


def delivery_state_counts(*, db_ids: list) -> dict:
    """message id (as the database returns it) -> its counts by state, for
    messages whose sender the caller knows already (ACK): the states alone,
    one query per 10,000 ids. Messages without states are left out."""
    result = {}
    with connection.cursor() as cursor:
        for start in range(0, len(db_ids), MAX_IDS_PER_STATEMENT):
            ids = db_ids[start:start + MAX_IDS_PER_STATEMENT]
            cursor.execute(f"SELECT message_id, {_COUNT_COLUMNS} FROM dm_delivery_states "
                           f"WHERE message_id IN ({sql.placeholders(len(ids))}) GROUP BY message_id", ids)
            for row in cursor.fetchall():
                result[row[0]] = dict(zip(_STATES, row[1:]))
    return result


def delivery_status_for_user(*, user, message_ids: list[str]) -> dict[str, dict]:
    """§7a: message id -> its status, for the messages among `message_ids`
    that a device of `user` sent and whose id the server still remembers;
    the others are left out (unknown to the caller, recipients included).
    One query whatever the number of messages and devices."""
    if not message_ids:
        return {}
    ids = [sql.uuid_param(m) for m in message_ids]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT u.message_id, u.conversation_id, u.response, d.device_id, du.username, s.state, s.reason, s.at "
            "FROM dm_used_message_ids u JOIN devices sd ON sd.id = u.sender_device_id "
            "LEFT JOIN dm_delivery_states s ON s.message_id = u.message_id "
            "LEFT JOIN devices d ON d.id = s.device_id LEFT JOIN users du ON du.id = d.user_id "
            f"WHERE sd.user_id = %s AND u.message_id IN ({sql.placeholders(len(ids))})", [user.pk, *ids])
        rows = cursor.fetchall()
    statuses: dict[str, dict] = {}
    for message_id, conversation_id, response, device_id, user_id, state, reason, at in rows:
        message_id = sql.uuid_str(message_id)
        status = statuses.get(message_id)
        if status is None:
            first = sql.json_value(response)  # the send's first answer: policy and times as the sender got them
            status = statuses[message_id] = {
                "message_id": message_id,
                "conversation_id": None if conversation_id is None else sql.uuid_str(conversation_id),
                "policy": first["policy"], "created_at": first["created_at"], "expires_at": first["expires_at"],
                "devices": [], "counts": delivery_counts_zero()}
        if state is None:
            continue  # a message stored for no device
        entry = {"device_id": device_id, "user_id": user_id, "state": state, "at": sql.rfc3339_value(sql.dt_value(at))}
        if reason is not None:
            entry["reason"] = reason
        status["devices"].append(entry)
        status["counts"][state] += 1
    for status in statuses.values():
        status["devices"].sort(key=lambda entry: entry["device_id"])
    return statuses


# --- operators: the admin dashboard and the metrics -------------------------------

SENDS_CHART_HOURS = 48
RECENT_ROWS = 8


def _pending_age_edges(*, max_undelivered_days: int) -> list[tuple[str, dt.timedelta]]:
    """Lower edges of the age buckets of pending deliveries, oldest last: the
    last bucket is the final fifth before max_undelivered_days, when the
    purge drops them."""
    cap = dt.timedelta(days=max_undelivered_days)
    near_cap = cap * 0.8
    edges = [("< 1 h", dt.timedelta(0)), ("1 h – 1 d", dt.timedelta(hours=1)), ("1 – 7 d", dt.timedelta(days=1)),
             ("> 7 d", dt.timedelta(days=7))]
    edges = [(label, start) for label, start in edges if start < near_cap]
    return [*edges, (f"≥ {near_cap.total_seconds() / 86400:g} d: near the {max_undelivered_days}-day cap", near_cap)]


def dashboard_get(*, now: dt.datetime) -> dict:
    """The admin dashboard's figures: metadata and aggregates only, in a fixed
    number of queries whatever the size of the mailbox."""
    conf = server_settings_get()
    edges = _pending_age_edges(max_undelivered_days=conf.max_undelivered_days)
    bounds = [now - start for _, start in edges]  # newest first
    age_filters = {}
    for i, (label, _) in enumerate(edges):
        q = Q(created_at__lte=bounds[i])
        if i + 1 < len(edges):
            q &= Q(created_at__gt=bounds[i + 1])
        age_filters[f"b{i}"] = Count("id", filter=q)
    pending = Delivery.objects.filter(acked_at__isnull=True).aggregate(
        total=Count("id"), oldest=Min("created_at"), **age_filters)
    by_policy = {row["policy"]: row for row in PendingDm.objects.order_by().values("policy").annotate(
        messages=Count("message_id"), bytes=Sum(Length("ciphertext")))}
    day, week = now - dt.timedelta(days=1), now - dt.timedelta(days=7)
    devices = Device.objects.aggregate(
        active=Count("id", filter=Q(revoked_at__isnull=True)),
        revoked=Count("id", filter=Q(revoked_at__isnull=False)),
        today=Count("id", filter=Q(revoked_at__isnull=True, last_seen_at__gt=day)),
        week=Count("id", filter=Q(revoked_at__isnull=True, last_seen_at__gt=week, last_seen_at__lte=day)),
        older=Count("id", filter=Q(revoked_at__isnull=True, last_seen_at__lte=week)),
        never=Count("id", filter=Q(revoked_at__isnull=True, last_seen_at__isnull=True)))
    users = User.objects.filter(is_key_user=True).aggregate(
        total=Count("id"), suspended=Count("id", filter=Q(suspended_at__isnull=False)))
    since = (now - dt.timedelta(hours=SENDS_CHART_HOURS - 1)).replace(minute=0, second=0, microsecond=0)
    # Used ids are kept 7 days past their message: they count sends whose messages are already gone.
    sends = {row["hour"]: row["n"] for row in UsedMessageId.objects.filter(created_at__gte=since).order_by()
             .annotate(hour=TruncHour("created_at")).values("hour").annotate(n=Count("message_id"))}
    hours = [since + dt.timedelta(hours=h) for h in range(SENDS_CHART_HOURS)]
    return {
        "now": now,
        "max_undelivered_days": conf.max_undelivered_days,
        "pending": {"total": pending["total"], "oldest_at": pending["oldest"],
                    "buckets": [(label, pending[f"b{i}"]) for i, (label, _) in enumerate(edges)]},
        "policies": [(policy.label, by_policy.get(policy.value, {}).get("messages", 0),
                      by_policy.get(policy.value, {}).get("bytes") or 0) for policy in Policy],
        "devices": devices,
        "last_seen": [("today", devices["today"]), ("this week", devices["week"]), ("older", devices["older"]),
                      ("never", devices["never"])],
        "users": users,
        "conversations": Conversation.objects.count(),
        "sends_per_hour": [(hour, sends.get(hour, 0)) for hour in hours],
        "purge_runs": list(PurgeRun.objects.order_by("-started_at")[:RECENT_ROWS]),
        "suspensions": list(User.objects.filter(suspended_at__isnull=False).order_by("-suspended_at")
                            .values("username", "suspended_at")[:RECENT_ROWS]),
        "revocations": list(Device.objects.filter(revoked_at__isnull=False).order_by("-revoked_at")
                            .values("device_id", "name", "user__username", "revoked_at")[:RECENT_ROWS]),
    }


def metrics_snapshot() -> dict:
    """What `/metrics` reads from the database at each scrape: two indexed queries."""
    now = timezone.now()
    pending = Delivery.objects.filter(acked_at__isnull=True).aggregate(n=Count("id"), oldest=Min("created_at"))
    last = PurgeRun.objects.filter(dry_run=False).order_by("-started_at").first()
    return {
        "pending_deliveries": pending["n"],
        "oldest_pending_age_s": (now - pending["oldest"]).total_seconds() if pending["oldest"] else 0.0,
        "last_purge": None if last is None else {"started_at": last.started_at.timestamp(),
                                                 "duration_s": last.duration_ms / 1000},
    }
