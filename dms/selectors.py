import datetime as dt
import functools

from django.db import connection
from django.db.models import Exists, OuterRef, Q, Subquery
from django.utils import timezone

from decentcom import protocol, sql
from decentcom.errors import ApiError
from decentcom.timefmt import rfc3339
from dms.models import (Conversation, ConversationMember, Delivery, DeliveryState, PendingDm, Policy,
                        ServerSettings)

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


def conversation_list_for_user(*, user) -> list[Conversation]:
    return list(Conversation.objects.select_related("created_by").filter(members__user=user)
                .order_by("-last_activity_at", "-id"))


def _encode_cursor(*parts) -> str:
    return protocol.b64e("|".join(str(p) for p in parts).encode())


def _decode_cursor(cursor: str, n: int) -> list[str]:
    try:
        parts = protocol.b64d(cursor).decode().split("|")
    except (protocol.ProtocolError, UnicodeDecodeError):
        parts = []
    if len(parts) != n:
        raise ApiError(400, "invalid_cursor", "cursor is not one this server gave")
    return parts


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
    try:
        after_id = int(_decode_cursor(after, 1)[0]) if after else 0
    except ValueError:
        raise ApiError(400, "invalid_cursor", "cursor is not one this server gave") from None
    now = timezone.now()
    conf = conf or server_settings_get()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.id, d.wrap_nonce, d.wrapped_key, m.message_id, m.conversation_id, m.epoch, m.key_id, "
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
    for (_, wrap_nonce, wrapped_key, message_id, conversation_id, epoch, key_id, participants_sha256, nonce,
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
            "key_wrap": None if wrapped_key is None else {"nonce": wrap_nonce, "wrapped_key": wrapped_key},
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
                          my_wrapped_key=Subquery(mine.values("wrapped_key")[:1]))
                .select_related("sender_device", "sender_device__user"))
    if before:
        created, message_id = _decode_cursor(before, 2)
        try:
            created_at = dt.datetime.fromisoformat(created)
            protocol.parse_uuid(message_id)
        except (ValueError, protocol.ProtocolError):
            raise ApiError(400, "invalid_cursor", "cursor is not one this server gave") from None
        messages = messages.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, message_id__lt=message_id))
    rows = list(messages.order_by("-created_at", "-message_id")[:limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    cursor = _encode_cursor(rows[-1].created_at.isoformat(), rows[-1].message_id) if rows else (before or "")
    return {
        "messages": [message_wire(m, wrap=None if m.my_wrapped_key is None else
                                  {"nonce": m.my_wrap_nonce, "wrapped_key": m.my_wrapped_key}) for m in rows],
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


def delivery_counts_for_messages(*, db_ids: list) -> dict[str, dict]:
    """message id -> {"conversation_id", "sender" (user id), "counts"}, for
    DM_STATUS: one query per 10,000 ids, given as the database returns them
    (`sql.uuid_param` values: no conversion on the ACK's hot path).
    Messages without states are left out."""
    result: dict[str, dict] = {}
    with connection.cursor() as cursor:
        for start in range(0, len(db_ids), MAX_IDS_PER_STATEMENT):
            ids = db_ids[start:start + MAX_IDS_PER_STATEMENT]
            cursor.execute(
                "SELECT s.message_id, u.conversation_id, su.username, s.state, COUNT(*) FROM dm_delivery_states s "
                "JOIN dm_used_message_ids u ON u.message_id = s.message_id "
                "JOIN devices sd ON sd.id = u.sender_device_id JOIN users su ON su.id = sd.user_id "
                f"WHERE s.message_id IN ({sql.placeholders(len(ids))}) "
                "GROUP BY s.message_id, u.conversation_id, su.username, s.state", ids)
            for message_id, conversation_id, sender, state, n in cursor.fetchall():
                entry = result.get(message_id)
                if entry is None:
                    entry = result[message_id] = {
                        "conversation_id": None if conversation_id is None else sql.uuid_str(conversation_id),
                        "sender": sender, "counts": delivery_counts_zero()}
                entry["counts"][state] = n
    return {sql.uuid_str(message_id): entry for message_id, entry in result.items()}


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
