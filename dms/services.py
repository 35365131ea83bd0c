"""Writes of the mailbox. Each service owns its transaction; gateway events
are scheduled with `transaction.on_commit` only.

Lock order, everywhere: user rows (by id; registration and joining a
conversation), then conversation rows (by id), then pending_dms rows (by
message_id), then deliveries, then (the triggers on deliveries do it) the
dm_mailboxes counters, by device id. Send locks its conversation, so no send
commits against an epoch a membership or device change has ended."""
import datetime as dt
import logging
import time
from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.utils import timezone

from decentcom import metrics, sql
from dmclient import protocol
from decentcom.errors import ApiError
from decentcom.ratelimit import rate_limit_hit
from decentcom.timefmt import rfc3339
from devices.models import AuthSession, Challenge, Device, OneTimePrekey, SignedPrekey, User
from devices.selectors import device_public_key
from devices.services import device_revoke
from dms.models import (Conversation, ConversationMember, Delivery, DeliveryState, KeyReceipt, PendingDm, Policy,
                        PurgeRun, ServerSettings, UsedMessageId)
from dms.events import dm_status_on_commit
from dms.selectors import (MAX_IDS_PER_STATEMENT, delivery_counts_for_messages, delivery_state_counts,
                           server_settings_get)
from gateway.models import GatewayTicket
from gateway.notify import notify_devices_on_commit

logger = logging.getLogger("dms.services")

USED_ID_MEMORY = dt.timedelta(days=7)
PURGE_CHUNK = 5000


# --- retention (§8) ---------------------------------------------------------------

def retention_resolve(*, retention: dict | None, conf: ServerSettings) -> dict:
    """A conversation's retention, checked against the admin's limits."""
    if retention is None:
        policy = conf.default_policy
        ttl_days = conf.default_ttl_days if policy == Policy.TTL else None
        retention = {"policy": policy, "ttl_days": ttl_days}
    policy, ttl_days = retention["policy"], retention.get("ttl_days")
    if policy == Policy.TTL:
        if ttl_days is None or not 1 <= ttl_days <= conf.max_ttl_days:
            raise ApiError(400, "invalid_retention", f"ttl_days must be 1..{conf.max_ttl_days}",
                           max_ttl_days=conf.max_ttl_days)
    elif ttl_days is not None:
        raise ApiError(400, "invalid_retention", f"ttl_days must be null for {policy}")
    if policy == Policy.PERMANENT and not conf.allow_permanent:
        raise ApiError(403, "permanent_not_allowed", "this server does not keep messages permanently")
    return {"policy": policy, "ttl_days": ttl_days}


def message_expiry(*, policy: str, ttl_days: int | None, created_at: dt.datetime,
                   conf: ServerSettings) -> dt.datetime | None:
    if policy == Policy.TTL:
        return created_at + dt.timedelta(days=ttl_days)
    if policy == Policy.BURN_ON_READ:
        return created_at + dt.timedelta(days=conf.max_undelivered_days)
    return None


def server_settings_update(*, settings_row: ServerSettings) -> ServerSettings:
    settings_row.pk = 1
    settings_row.full_clean()
    settings_row.save()
    return settings_row


# --- conversations (§5) -----------------------------------------------------------

def _conversation_touch_epoch(conversation: Conversation, *, now, participants: list[str]) -> None:
    conversation.epoch += 1
    conversation.participants_sha256 = protocol.participants_sha256(participants)
    conversation.updated_at = now
    conversation.save(update_fields=["epoch", "participants_sha256", "updated_at"])


# Conversation rows are locked FOR NO KEY UPDATE (as a send's UPDATE of the row locks it): that still
# serialises the changes of one conversation, but not the share lock an ACK's key receipts take on it
# (their foreign key) after the ACK has locked its messages; FOR UPDATE there, then the messages
# (dropping deliveries), deadlocked with that ACK on PostgreSQL.
def _lock_conversation(conversation_id) -> Conversation:
    return (Conversation.objects.select_for_update(of=("self",), no_key=True).select_related("created_by")
            .get(id=conversation_id))


def _participant_ids(conversation: Conversation) -> list[str]:
    return sorted(ConversationMember.objects.filter(conversation=conversation)
                  .values_list("user__username", flat=True))


def _users_for(user_ids: list[str]) -> list[User]:
    users = list(User.objects.filter(username__in=user_ids, is_key_user=True, is_active=True))
    unknown = sorted(set(user_ids) - {u.username for u in users})
    if unknown:
        raise ApiError(400, "unknown_users", "every participant must be a registered user", users=unknown)
    return users


def _lock_users(users: list[User]) -> None:
    """Lock user rows in id order, before any conversation row (as device registration
    does): it serialises the joins of one user, so the conversation limit holds under races."""
    list(User.objects.select_for_update().filter(pk__in=[u.pk for u in users]).order_by("pk")
         .values_list("pk", flat=True))


def _check_conversation_limit(*, users: list[User], conf: ServerSettings) -> None:
    """§5: a user is in at most `max_conversations_per_user` conversations, whoever
    added them; `users` are about to join one more. Call with their rows locked."""
    limit = conf.max_conversations_per_user
    at_limit = sorted(
        ConversationMember.objects.filter(user__in=users).values("user__username").annotate(n=Count("id"))
        .filter(n__gte=limit).values_list("user__username", flat=True))
    if at_limit:
        raise ApiError(409, "conversation_limit_reached", f"at most {limit} conversations per user",
                       users=at_limit)


def conversation_create(*, user: User, participant_ids: list[str], retention: dict | None
                        ) -> tuple[Conversation, bool]:
    """A direct conversation (two users, unique per pair) or a new group."""
    from dms.events import conversation_update_on_commit

    conf = server_settings_get()
    participant_ids = sorted(set(participant_ids) | {user.username})
    if len(participant_ids) < 2:
        raise ApiError(400, "too_few_participants", "a conversation needs at least one other user")
    if len(participant_ids) > conf.max_participants:
        raise ApiError(400, "too_many_participants", f"at most {conf.max_participants} participants",
                       max_participants=conf.max_participants)
    users = _users_for(participant_ids)
    kind = Conversation.Kind.DIRECT if len(users) == 2 else Conversation.Kind.GROUP
    direct_key = ":".join(participant_ids) if kind == Conversation.Kind.DIRECT else None
    if direct_key:
        existing = Conversation.objects.select_related("created_by").filter(direct_key=direct_key).first()
        if existing is not None:
            return existing, False
    resolved = retention_resolve(retention=retention, conf=conf)
    if kind == Conversation.Kind.GROUP:
        wait = rate_limit_hit(scope="group-create", key=user.username,
                              limit=conf.group_creation_rate_per_user, window_s=3600)
        if wait:
            raise ApiError(429, "rate_limited", "too many new groups", headers={"Retry-After": str(wait)})
    now = timezone.now()
    try:
        with transaction.atomic():
            _lock_users(users)
            if direct_key and (existing := Conversation.objects.select_related("created_by")
                               .filter(direct_key=direct_key).first()) is not None:
                return existing, False  # made while we waited for the locks
            _check_conversation_limit(users=users, conf=conf)
            conversation = Conversation.objects.create(
                kind=kind, direct_key=direct_key, created_by=user, epoch=1,
                participants_sha256=protocol.participants_sha256(participant_ids),
                retention_policy=resolved["policy"], retention_ttl_days=resolved["ttl_days"],
                created_at=now, updated_at=now, last_activity_at=now)
            ConversationMember.objects.bulk_create(
                [ConversationMember(conversation=conversation, user=u, joined_at=now) for u in users])
            conversation_update_on_commit(conversations=[conversation], actor=user, added=participant_ids)
    except IntegrityError:
        if direct_key is None:
            raise
        return Conversation.objects.select_related("created_by").get(direct_key=direct_key), False
    return conversation, True


def conversation_set_retention(*, conversation: Conversation, actor: User, retention: dict) -> Conversation:
    from dms.events import conversation_update_on_commit

    resolved = retention_resolve(retention=retention, conf=server_settings_get())
    with transaction.atomic():
        conversation = _lock_conversation(conversation.id)
        if conversation.retention != resolved:
            conversation.retention_policy = resolved["policy"]
            conversation.retention_ttl_days = resolved["ttl_days"]
            conversation.updated_at = timezone.now()
            conversation.save(update_fields=["retention_policy", "retention_ttl_days", "updated_at"])
            conversation_update_on_commit(conversations=[conversation], actor=actor)
    return conversation


def _group_only(conversation: Conversation) -> None:
    if conversation.kind != Conversation.Kind.GROUP:
        raise ApiError(409, "direct_conversation", "a direct conversation's participants never change")


def conversation_add_participants(*, conversation: Conversation, actor: User, user_ids: list[str]) -> Conversation:
    from dms.events import conversation_update_on_commit

    _group_only(conversation)
    conf = server_settings_get()
    users = _users_for(sorted(set(user_ids)))
    now = timezone.now()
    with transaction.atomic():
        _lock_users(users)
        conversation = _lock_conversation(conversation.id)
        current = set(_participant_ids(conversation))
        new = [u for u in users if u.username not in current]
        if not new:
            return conversation
        participants = sorted(current | {u.username for u in new})
        if len(participants) > conf.max_participants:
            raise ApiError(400, "too_many_participants", f"at most {conf.max_participants} participants",
                           max_participants=conf.max_participants)
        _check_conversation_limit(users=new, conf=conf)
        ConversationMember.objects.bulk_create(
            [ConversationMember(conversation=conversation, user=u, joined_at=now) for u in new])
        _conversation_touch_epoch(conversation, now=now, participants=participants)
        conversation_update_on_commit(conversations=[conversation], actor=actor,
                                      added=[u.username for u in new])
    return conversation


def conversation_remove_participant(*, conversation: Conversation, actor: User, user_id: str) -> Conversation | None:
    """Remove (by the creator) or leave. Returns None when the group was left empty and deleted."""
    from dms.events import conversation_update_on_commit

    _group_only(conversation)
    if actor.username != user_id and conversation.created_by_id != actor.pk:
        raise ApiError(403, "forbidden", "only the group's creator removes others; anyone may leave")
    now = timezone.now()
    with transaction.atomic():
        conversation = _lock_conversation(conversation.id)
        member = ConversationMember.objects.filter(conversation=conversation, user__username=user_id).first()
        if member is None:
            raise ApiError(404, "not_found", "not a participant")
        member.delete()
        device_ids = list(Device.objects.filter(user_id=member.user_id).values_list("pk", flat=True))
        deliveries_drop_for_devices(device_ids=device_ids, conversation_ids=[conversation.id], reason="removed")
        participants = _participant_ids(conversation)
        if not participants:
            messages_delete(message_ids=list(conversation.messages.values_list("message_id", flat=True)))
            conversation.delete()
            return None
        _conversation_touch_epoch(conversation, now=now, participants=participants)
        conversation_update_on_commit(conversations=[conversation], actor=actor, removed=[user_id])
    return conversation


def conversations_bump_epoch_for_users(*, user_ids: list[int], actor, now=None) -> list[Conversation]:
    """A participant's set of active devices changed: bump the epoch of each of
    their conversations (rows locked in id order) and tell the participants."""
    from dms.events import conversation_update_on_commit

    now = now or timezone.now()
    conversation_ids = ConversationMember.objects.filter(user_id__in=user_ids).values("conversation_id")
    conversations = list(Conversation.objects.select_for_update(of=("self",), no_key=True)
                         .select_related("created_by").filter(id__in=conversation_ids).order_by("id"))
    if not conversations:
        return []
    Conversation.objects.filter(id__in=[c.id for c in conversations]).update(
        epoch=F("epoch") + 1, updated_at=now)
    for conversation in conversations:
        conversation.epoch += 1
        conversation.updated_at = now
    conversation_update_on_commit(conversations=conversations, actor=actor)
    return conversations


# --- deleting messages ---------------------------------------------------------------

def messages_delete(*, message_ids: list) -> int:
    """Delete messages and their deliveries without reading ciphertext; their
    used ids start their 7-day countdown. Call inside a transaction."""
    # Plain statements (decentcom.sql): QuerySet.delete() would load every row, ciphertext included,
    # and the ORM took longer to build an IN list of a purge chunk than the database to run it.
    deleted = 0
    gone_at = sql.dt_param(timezone.now())
    with connection.cursor() as cursor:
        for start in range(0, len(message_ids), MAX_IDS_PER_STATEMENT):
            chunk = [sql.uuid_param(m) for m in message_ids[start:start + MAX_IDS_PER_STATEMENT]]
            among, ids = sql.among("message_id", chunk)
            cursor.execute(f"DELETE FROM dm_deliveries WHERE {among}", ids)
            cursor.execute(f"DELETE FROM pending_dms WHERE {among}", ids)
            deleted += cursor.rowcount
            cursor.execute(f"UPDATE dm_used_message_ids SET message_gone_at = %s WHERE {among}", [gone_at, *ids])
    return deleted


def messages_delete_burned(*, message_ids: list) -> int:
    """Delete the `burn_on_read` messages among `message_ids` that have no pending delivery."""
    if not message_ids:
        return 0
    still_pending = Delivery.objects.filter(message=OuterRef("pk"), acked_at__isnull=True)
    burned = list(PendingDm.objects.filter(message_id__in=message_ids, policy=Policy.BURN_ON_READ)
                  .filter(~Exists(still_pending)).values_list("message_id", flat=True))
    return messages_delete(message_ids=burned)


def deliveries_drop_for_devices(*, device_ids: list[int], conversation_ids: list | None = None,
                                reason: str = "revoked") -> int:
    """Drop pending deliveries of these devices and record them `dropped` with
    `reason` (§7a): "revoked" (revocation, certificate expiry, suspension) or
    "removed" (left or removed from a group). Locks the parent messages in id
    order first, as ACK does."""
    pending = Delivery.objects.filter(device_id__in=device_ids, acked_at__isnull=True)
    if conversation_ids is not None:
        pending = pending.filter(message__conversation_id__in=conversation_ids)
    message_ids = list(PendingDm.objects.select_for_update().filter(
        message_id__in=pending.values("message_id")).order_by("message_id").values_list("message_id", flat=True))
    if not message_ids:
        return 0
    delivery_states_end(message_ids=message_ids, device_ids=device_ids, state=DeliveryState.State.DROPPED,
                        reason=reason, at=timezone.now())
    dropped = Delivery.objects.filter(device_id__in=device_ids, acked_at__isnull=True,
                                      message_id__in=message_ids).delete()[0]
    messages_delete_burned(message_ids=message_ids)
    return dropped


def delivery_states_end(*, message_ids: list, state: str, at: dt.datetime, reason: str | None = None,
                        device_ids: list[int] | None = None, undelivered_before: dt.datetime | None = None) -> None:
    """§7a: the pending states of these messages (of `device_ids` only, or of
    deliveries unACKed since before `undelivered_before` only) become the final
    `state`, and DM_STATUS goes to the senders' users after commit. A final
    state is never overwritten. Call in the transaction that ends the
    deliveries, with the messages locked: the counts are read just before the
    UPDATE, which then returns nothing (a purge chunk ends 20,000 states)."""
    for start in range(0, len(message_ids), MAX_IDS_PER_STATEMENT):
        ids = [sql.uuid_param(m) for m in message_ids[start:start + MAX_IDS_PER_STATEMENT]]
        ending, params = "state = 'pending'", []
        if device_ids is not None:
            ending += f" AND device_id IN ({sql.placeholders(len(device_ids))})"
            params += device_ids
        if undelivered_before is not None:
            ending += (" AND EXISTS (SELECT 1 FROM dm_deliveries d WHERE d.message_id = dm_delivery_states.message_id"
                       " AND d.device_id = dm_delivery_states.device_id AND d.acked_at IS NULL AND d.created_at <= %s)")
            params.append(sql.dt_param(undelivered_before))
        changed = {}
        for message_id, entry in delivery_counts_for_messages(db_ids=ids, ending=(ending, params)).items():
            if n := entry.pop("ending"):
                entry["counts"]["pending"] -= n
                entry["counts"][state] += n
                changed[message_id] = entry
        with connection.cursor() as cursor:
            among, id_params = sql.among("message_id", ids)
            cursor.execute(f"UPDATE dm_delivery_states SET state = %s, reason = %s, at = %s WHERE {among} AND {ending}",
                           [state, reason, sql.dt_param(at), *id_params, *params])
        if changed:
            dm_status_on_commit(statuses=changed)


# --- send (§7) ---------------------------------------------------------------------

@dataclass(frozen=True)
class Recipient:
    device_id: str
    wrap: dict | None  # v1 {"nonce", "wrapped_key"} or v2 (§6b), already checked (protocol.key_wrap_problems)


def _wrap_columns(wrap: dict | None) -> tuple:
    """A checked wrap as dm_deliveries stores it: nonce, wrapped_key and v2's three extras."""
    if wrap is None:
        return None, None, None, None, None
    return (wrap["nonce"], wrap["wrapped_key"], wrap.get("signed_prekey_id"), wrap.get("one_time_id"),
            wrap.get("ephemeral"))


@dataclass(frozen=True)
class SendRequest:
    message_id: str
    conversation_id: str
    epoch: int
    key_id: str
    participants_sha256: str
    retention: dict
    nonce: bytes
    ciphertext: bytes
    signature: bytes
    recipients: list[Recipient]


def dm_send_rate_check(*, device: Device, conf: ServerSettings | None = None) -> None:
    """Check 2: every attempt counts, per device and per user."""
    conf = conf or server_settings_get()
    for scope, key, limit in (("send-device", device.device_id, conf.send_rate_per_device),
                              ("send-user", str(device.user_id), conf.send_rate_per_user)):
        wait = rate_limit_hit(scope=scope, key=key, limit=limit, window_s=60)
        if wait:
            raise ApiError(429, "rate_limited", "too many messages, slow down", headers={"Retry-After": str(wait)})


def dm_send(*, device: Device, request: SendRequest, conf: ServerSettings | None = None) -> tuple[bool, dict]:
    """Checks 3-11 of §7, then store the message once with one delivery per
    recipient not at its quota. Returns (created, body): created False is a retry's first answer."""
    conf = conf or server_settings_get()
    if len(request.recipients) > conf.max_recipients_per_message:
        raise ApiError(400, "too_many_recipients", f"at most {conf.max_recipients_per_message} recipients",
                       max_recipients=conf.max_recipients_per_message)
    if len(request.ciphertext) > conf.max_ciphertext_bytes:
        raise ApiError(413, "ciphertext_too_large", f"ciphertext is over {conf.max_ciphertext_bytes} bytes",
                       max_bytes=conf.max_ciphertext_bytes)
    ciphertext_sha256 = protocol.H(request.ciphertext)
    signed = protocol.dm_signed_bytes(
        ciphertext_sha256=ciphertext_sha256, conversation_id=request.conversation_id, epoch=request.epoch,
        key_id=request.key_id, message_id=request.message_id, nonce=protocol.b64e(request.nonce),
        participants_sha256=request.participants_sha256, sender_device=device.device_id)
    if not protocol.verify(device_public_key(device.device_id), signed, request.signature):
        raise ApiError(400, "bad_signature", "the signature does not verify with your device key")
    try:
        with transaction.atomic():
            return _dm_send_locked(device=device, request=request, conf=conf, ciphertext_sha256=ciphertext_sha256)
    except _ConcurrentDuplicate:
        return _dm_send_replay(device=device, message_id=request.message_id, ciphertext_sha256=ciphertext_sha256)


class _ConcurrentDuplicate(Exception):
    """A concurrent send with the same message_id committed first."""


def _dm_send_replay(*, device: Device, message_id: str, ciphertext_sha256: str) -> tuple[bool, dict]:
    used = UsedMessageId.objects.filter(message_id=message_id).first()
    if used is None:
        raise ApiError(409, "duplicate_message_id", "message_id was used concurrently; send again")
    if used.sender_device_id == device.pk and used.ciphertext_sha256 == ciphertext_sha256:
        return False, used.response
    raise ApiError(409, "duplicate_message_id", "this message_id is already used")


def _dm_send_locked(*, device: Device, request: SendRequest, conf: ServerSettings,
                    ciphertext_sha256: str) -> tuple[bool, dict]:
    # Every send runs this: hand-written SQL (decentcom.sql), a fixed number
    # of statements whatever the recipients.
    now = timezone.now()
    message_id = sql.uuid_param(request.message_id)
    conversation_id = sql.uuid_param(request.conversation_id)
    with connection.cursor() as cursor:
        # 6, and 5 in the same statement: the UPDATE locks the conversation row as SELECT ... FOR UPDATE
        # would, unless the message id is used; then (or for a stranger) the used id decides
        cursor.execute(
            "UPDATE dm_conversations SET last_activity_at = %s WHERE id = %s AND EXISTS ("
            "SELECT 1 FROM dm_conversation_members WHERE conversation_id = %s AND user_id = %s) "
            "AND NOT EXISTS (SELECT 1 FROM dm_used_message_ids WHERE message_id = %s) "
            "RETURNING epoch, participants_sha256, retention_policy, retention_ttl_days",
            [sql.dt_param(now), conversation_id, conversation_id, device.user_id, message_id])
        row = cursor.fetchone()
        if row is None:
            cursor.execute("SELECT 1 FROM dm_used_message_ids WHERE message_id = %s", [message_id])
            if cursor.fetchone() is not None:  # 5
                return _dm_send_replay(device=device, message_id=request.message_id,
                                       ciphertext_sha256=ciphertext_sha256)
            raise ApiError(404, "not_found", "no such conversation")
        epoch, participants_sha256, policy, ttl_days = row
        # the participants, their active devices and what each has pending (its counter: dms.models.Mailbox)
        cursor.execute(
            "SELECT m.user_id, u.username, d.id, d.device_id, COALESCE(b.pending, 0) FROM dm_conversation_members m "
            "JOIN users u ON u.id = m.user_id LEFT JOIN devices d ON d.user_id = m.user_id "
            "AND d.revoked_at IS NULL AND (d.expires_at IS NULL OR d.expires_at > %s) AND u.suspended_at IS NULL "
            "LEFT JOIN dm_mailboxes b ON b.device_id = d.id WHERE m.conversation_id = %s",
            [sql.dt_param(now), conversation_id])
        rows = cursor.fetchall()
    members = {user_id: username for user_id, username, _, _, _ in rows}
    active = {device_id: (pk, user_id) for user_id, _, pk, device_id, _ in rows if pk is not None}
    pending = {pk: n for _, _, pk, _, n in rows if pk is not None}
    # 7
    if request.epoch != epoch or request.participants_sha256 != participants_sha256:
        raise ApiError(409, "stale_epoch", "the conversation has moved to another epoch",
                       epoch=epoch, participants=sorted(members.values()))
    # 8
    if request.retention != {"policy": policy, "ttl_days": ttl_days}:
        raise ApiError(409, "retention_changed", "the conversation's retention has changed",
                       retention={"policy": policy, "ttl_days": ttl_days})
    # 9
    active.pop(device.device_id, None)
    given = {r.device_id for r in request.recipients}
    missing, extra = sorted(set(active) - given), sorted(given - set(active))
    if missing or extra:
        raise ApiError(409, "mismatched_devices", "recipients must be every active device of the participants",
                       missing=missing, extra=extra)
    # 10: only recipients sent no wrap need a receipt, and only one of this epoch
    # counts (a key seen in a past epoch says nothing about who may hold it now)
    recipient_pks = {r.device_id: active[r.device_id][0] for r in request.recipients}
    unwrapped = [r.device_id for r in request.recipients if r.wrap is None]
    if unwrapped:
        with_receipt = set(KeyReceipt.objects.filter(
            conversation_id=request.conversation_id, sender_device=device, key_id=request.key_id, epoch=epoch,
            recipient_device_id__in=[recipient_pks[d] for d in unwrapped]
        ).values_list("recipient_device_id", flat=True))
        unwrapped = sorted(d for d in unwrapped if recipient_pks[d] not in with_receipt)
        if unwrapped:
            raise ApiError(409, "missing_key_wraps", "these devices need a key wrap", devices=unwrapped)
    # 11: a device at its quota gets no delivery (one that never drains cannot block the conversation);
    # only when every recipient is full is nothing stored
    full = sorted(d for d, pk in recipient_pks.items() if pending[pk] >= conf.pending_quota)
    if full and len(full) == len(request.recipients):
        raise ApiError(429, "mailbox_full", "every recipient's mailbox is full", devices=full)
    stored = [r for r in request.recipients if pending[recipient_pks[r.device_id]] < conf.pending_quota]
    skipped_pks = [recipient_pks[d] for d in full]

    expires_at = message_expiry(policy=policy, ttl_days=ttl_days, created_at=now, conf=conf)
    with_devices = {user_id for _, user_id in active.values()} | {device.user_id}
    body = {
        "message_id": request.message_id, "created_at": rfc3339(now), "expires_at": rfc3339(expires_at),
        "policy": policy, "recipients": len(stored),
        "unreachable": sorted(name for uid, name in members.items() if uid not in with_devices),
        "skipped": [{"device_id": d, "reason": "mailbox_full"} for d in full],
    }
    created = sql.dt_param(now)
    with connection.cursor() as cursor:
        try:
            cursor.execute(
                "INSERT INTO dm_used_message_ids (message_id, sender_device_id, conversation_id, ciphertext_sha256, "
                "response, created_at, message_gone_at) VALUES (%s, %s, %s, %s, %s, %s, NULL)",
                [message_id, device.pk, conversation_id, ciphertext_sha256, sql.json_param(body), created])
        except IntegrityError:
            raise _ConcurrentDuplicate from None  # leaves the transaction, which rolls back
        cursor.execute(
            "INSERT INTO pending_dms (message_id, conversation_id, sender_device_id, epoch, key_id, "
            "participants_sha256, nonce, ciphertext, ciphertext_sha256, signature, policy, ttl_days, created_at, "
            "expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [message_id, conversation_id, device.pk, request.epoch, request.key_id, request.participants_sha256,
             protocol.b64e(request.nonce), request.ciphertext, ciphertext_sha256,
             protocol.b64e(request.signature), policy, ttl_days, created, sql.dt_param(expires_at)])
        if stored:
            cursor.execute(
                "INSERT INTO dm_deliveries (message_id, device_id, wrap_nonce, wrapped_key, wrap_signed_prekey_id, "
                "wrap_one_time_id, wrap_ephemeral, created_at, acked_at) "
                "VALUES " + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, NULL)"] * len(stored)),
                [value for r in stored for value in (
                    message_id, recipient_pks[r.device_id], *_wrap_columns(r.wrap), created)])
        _delivery_states_insert(cursor, message_id=message_id, at=created, skipped_pks=skipped_pks,
                                pending_pks=[recipient_pks[r.device_id] for r in stored])
    if policy == Policy.BURN_ON_READ and not stored:
        messages_delete(message_ids=[request.message_id])  # §8: no delivery of it will ever be pending
    notify_devices_on_commit(events={
        r.device_id: ("DM_NOTIFY", {"pending_count": pending[recipient_pks[r.device_id]] + 1,
                                    "conversation_id": request.conversation_id,
                                    "message_id": request.message_id})
        for r in stored})
    transaction.on_commit(lambda deliveries=len(stored): _count_send(deliveries=deliveries))
    return True, body


def _count_send(*, deliveries: int) -> None:
    metrics.DM_SENDS.inc()
    metrics.DM_DELIVERIES.inc(deliveries)


def _delivery_states_insert(cursor, *, message_id, pending_pks: list[int], skipped_pks: list[int], at) -> None:
    """§7a: a `pending` state per delivery and a final `skipped` one per device at its quota, in one statement."""
    rows = [(pk, DeliveryState.State.PENDING, None, None) for pk in pending_pks] + [
        (pk, DeliveryState.State.SKIPPED, "mailbox_full", at) for pk in skipped_pks]
    if rows:
        cursor.execute(
            "INSERT INTO dm_delivery_states (message_id, device_id, state, reason, at) VALUES "
            + ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows)),
            [value for row in rows for value in (message_id, *row)])


# --- ack (§7) ----------------------------------------------------------------------

def dm_ack(*, device: Device, message_ids: list[str], failed: list[str]) -> dict:
    """End the caller's deliveries; `message_ids` (not `failed`) make receipts.
    Idempotent; one transaction; parent rows locked in id order first.
    Hand-written SQL (decentcom.sql): a fixed number of statements whatever the batch."""
    failed_set = set(failed)
    requested = sorted(set(message_ids) | failed_set)
    if not requested:
        return {"acked": [], "unknown": []}
    now = timezone.now()
    ids = [sql.uuid_param(mid) for mid in requested]
    with transaction.atomic(), connection.cursor() as cursor:
        # the sender's user too, for DM_STATUS: the counts below then need no join
        cursor.execute(
            "SELECT m.message_id, m.policy, m.conversation_id, m.sender_device_id, m.key_id, m.epoch, su.username "
            "FROM pending_dms m JOIN devices sd ON sd.id = m.sender_device_id JOIN users su ON su.id = sd.user_id "
            "WHERE m.message_id IN (SELECT message_id FROM dm_deliveries WHERE device_id = %s "
            f"AND message_id IN ({sql.placeholders(len(ids))})) ORDER BY m.message_id{sql.for_update(of='m')}",
            [device.pk, *ids])
        locked = {row[0]: row for row in cursor.fetchall()}  # by the database's value of the id
        acked = []
        if locked:
            cursor.execute(
                "UPDATE dm_deliveries SET acked_at = %s WHERE device_id = %s AND acked_at IS NULL "
                f"AND message_id IN ({sql.placeholders(len(locked))}) RETURNING message_id, wrapped_key IS NOT NULL",
                [sql.dt_param(now), device.pk, *locked])
            acked = [(mid, has_wrap, sql.uuid_str(mid)) for mid, has_wrap in cursor.fetchall()]
        if acked:
            # §7a: their final state, in this transaction; `failed` wins over `message_ids` as for receipts
            acked_ids = [mid for mid, _, _ in acked]
            failed_ids = [mid for mid, _, text in acked if text in failed_set] if failed_set else []
            state = (f"CASE WHEN message_id IN ({sql.placeholders(len(failed_ids))}) THEN 'failed' "
                     "ELSE 'delivered' END" if failed_ids else "'delivered'")
            cursor.execute(
                f"UPDATE dm_delivery_states SET state = {state}, at = %s WHERE device_id = %s AND state = 'pending' "
                f"AND message_id IN ({sql.placeholders(len(acked_ids))})",
                [*failed_ids, sql.dt_param(now), device.pk, *acked_ids])
            counts = delivery_state_counts(db_ids=acked_ids)
            dm_status_on_commit(statuses={
                text: {"sender": locked[mid][6], "conversation_id": sql.uuid_str(locked[mid][2]), "counts": counts[mid]}
                for mid, _, text in acked if mid in counts})  # a message sent before §7a has no states
            transaction.on_commit(lambda n=len(acked_ids): metrics.DM_ACKS.inc(n))
        # One receipt per (conversation, sender device, key): a batch from one sender is usually one row.
        receipts: dict = {}
        for mid, has_wrap, text in acked:
            if has_wrap and text not in failed_set:
                key = (locked[mid][2], locked[mid][3], locked[mid][4])
                receipts[key] = max(receipts.get(key, 0), locked[mid][5])
        if receipts:
            # A key reused in a later epoch moves its receipt there: only current-epoch receipts count (check 10).
            cursor.execute(
                "INSERT INTO dm_key_receipts (conversation_id, sender_device_id, key_id, epoch, recipient_device_id, "
                "created_at) VALUES " + ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(receipts))
                + " ON CONFLICT (conversation_id, sender_device_id, key_id, recipient_device_id) DO UPDATE SET "
                "epoch = excluded.epoch, created_at = excluded.created_at WHERE dm_key_receipts.epoch < excluded.epoch",
                [value for (conversation_id, sender_pk, key_id), epoch in receipts.items()
                 for value in (conversation_id, sender_pk, key_id, epoch, device.pk, sql.dt_param(now))])
        messages_delete_burned(message_ids=[mid for mid, row in locked.items() if row[1] == Policy.BURN_ON_READ])
    found = sorted(sql.uuid_str(mid) for mid in locked)
    return {"acked": found, "unknown": sorted(set(requested) - set(found))}


# --- purge (§8) --------------------------------------------------------------------

def _chunks_locked(queryset, *, field: str, chunk: int, order: str | None = None):
    """Yield lists of ids, each locked (skipping rows others hold) inside its
    own transaction. `order` should be what an index serves, so that each
    chunk reads only its own rows; the lock order does not matter, as
    SKIP LOCKED never waits."""
    while True:
        with transaction.atomic():
            ids = list(queryset.select_for_update(skip_locked=True, of=("self",)).order_by(order or field)
                       .values_list(field, flat=True)[:chunk])
            if ids:
                yield ids
        if len(ids) < chunk:
            return


PURGE_RUN_MEMORY = dt.timedelta(days=30)


def dm_purge_expired(*, now: dt.datetime, dry_run: bool = False, chunk: int = PURGE_CHUNK) -> dict:
    """Delete what policy says must go, in chunks of one transaction each,
    never waiting on an ACK's locks. Returns the counts; logs them and
    records the run (`PurgeRun`, kept 30 days) for the dashboard."""
    started_at = timezone.now()
    started = time.monotonic()
    counts = _dm_purge(now=now, dry_run=dry_run, chunk=chunk)
    duration = time.monotonic() - started
    PurgeRun.objects.create(started_at=started_at, as_of=now, dry_run=dry_run, duration_ms=round(duration * 1000),
                            counts=counts)
    if not dry_run:
        # By the clock, not `now`: a purge as of a later time must not forget today's runs.
        PurgeRun.objects.filter(started_at__lte=started_at - PURGE_RUN_MEMORY).delete()
        metrics.PURGE_RUNS.inc()
        metrics.PURGE_DURATION.observe(duration)
        for kind, count in counts.items():
            metrics.PURGE_DELETED.labels(kind=kind).inc(count)
    logger.info("purge %sas of %s: %s in %.3f s", "dry run " if dry_run else "", rfc3339(now), counts, duration)
    return counts


def _dm_purge(*, now: dt.datetime, dry_run: bool, chunk: int) -> dict:
    conf = server_settings_get()
    undelivered_cutoff = now - dt.timedelta(days=conf.max_undelivered_days)
    expired_messages = PendingDm.objects.filter(expires_at__lte=now)
    # Found through the index of pending deliveries by age, not by scanning every message.
    stale_deliveries = PendingDm.objects.filter(message_id__in=Delivery.objects.filter(
        acked_at__isnull=True, created_at__lte=undelivered_cutoff).values("message_id"))
    orphan_burns = PendingDm.objects.filter(policy=Policy.BURN_ON_READ).filter(
        ~Exists(Delivery.objects.filter(message=OuterRef("pk"), acked_at__isnull=True)))
    expired_devices = Device.objects.filter(revoked_at__isnull=True, expires_at__lte=now)
    # §6b: prekeys of devices that are gone (revoked, expired, their user suspended). The services
    # delete them as that happens; this catches any left behind (an expired device until the purge).
    gone = Q(device__revoked_at__isnull=False) | Q(device__expires_at__lte=now) | Q(
        device__user__suspended_at__isnull=False)
    gone_signed, gone_one_time = SignedPrekey.objects.filter(gone), OneTimePrekey.objects.filter(gone)
    old_receipts = KeyReceipt.objects.filter(epoch__lt=F("conversation__epoch"))
    forgotten_ids = UsedMessageId.objects.filter(message_gone_at__lte=now - USED_ID_MEMORY)
    housekeeping = {
        "challenges": Challenge.objects.filter(expires_at__lte=now),
        "sessions": AuthSession.objects.filter(expires_at__lte=now),
        "gateway_tickets": GatewayTicket.objects.filter(expires_at__lte=now),
        "used_message_ids": forgotten_ids,
    }
    if dry_run:
        counts = {
            "expired_messages": expired_messages.count(),
            "undelivered_deliveries": Delivery.objects.filter(acked_at__isnull=True,
                                                              created_at__lte=undelivered_cutoff).count(),
            "burned_messages": orphan_burns.count(),
            "expired_devices": expired_devices.count(),
            "past_epoch_receipts": old_receipts.count(),
            "delivery_states": DeliveryState.objects.filter(message__in=forgotten_ids).count(),
            "prekeys": gone_signed.count() + gone_one_time.count(),
            **{name: qs.count() for name, qs in housekeeping.items()},
        }
        return counts

    counts = dict.fromkeys(["expired_messages", "undelivered_deliveries", "burned_messages", "expired_devices",
                            "past_epoch_receipts", "delivery_states", "prekeys", *housekeeping], 0)
    # The sweep first: it takes the expired devices' prekeys too, counted here as the dry run counts
    # them, and device_revoke then finds none left to delete.
    for queryset, field in ((gone_signed, "device_id"), (gone_one_time, "id")):
        for ids in _chunks_locked(queryset, field=field, chunk=chunk):
            counts["prekeys"] += queryset.model.objects.filter(**{f"{field}__in": ids}).delete()[0]
    for device in expired_devices:
        device_revoke(device=device, reason="expired")
        counts["expired_devices"] += 1
    for ids in _chunks_locked(expired_messages, field="message_id", order="expires_at", chunk=chunk):
        delivery_states_end(message_ids=ids, state=DeliveryState.State.EXPIRED, at=now)
        counts["expired_messages"] += messages_delete(message_ids=ids)
    for ids in _chunks_locked(stale_deliveries, field="message_id", chunk=chunk):
        delivery_states_end(message_ids=ids, state=DeliveryState.State.EXPIRED, at=now,
                            undelivered_before=undelivered_cutoff)
        counts["undelivered_deliveries"] += Delivery.objects.filter(
            message_id__in=ids, acked_at__isnull=True, created_at__lte=undelivered_cutoff).delete()[0]
        counts["burned_messages"] += messages_delete_burned(message_ids=ids)
    for ids in _chunks_locked(orphan_burns, field="message_id", chunk=chunk):
        counts["burned_messages"] += messages_delete_burned(message_ids=ids)
    for ids in _chunks_locked(old_receipts, field="id", chunk=chunk):
        counts["past_epoch_receipts"] += KeyReceipt.objects.filter(id__in=ids).delete()[0]
    for name, queryset in housekeeping.items():
        with transaction.atomic():
            if queryset is forgotten_ids:
                # A remembered id's states go with it (§7a), first: their foreign key has no cascade.
                counts["delivery_states"] = DeliveryState.objects.filter(message__in=forgotten_ids).delete()[0]
            counts[name] = queryset.delete()[0]
    return counts

