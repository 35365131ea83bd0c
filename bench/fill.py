"""A big server by set-based SQL (issue 13): users with a device each,
group conversations of three members, and pending messages with what a send
writes beside them (a delivery per other member, a used id, a pending
delivery state per delivery). Used by bench/scale.py and by the query-plan
test (tests/ops/test_query_plans.py), on SQLite and PostgreSQL alike."""
import datetime as dt
import os

MEMBERS = 3  # per conversation: a message goes to the two others
FILL_PREFIX = "fill-"  # usernames and device ids of the filler


def _hex_uuid(tag: str, expr: str, pg: bool) -> str:
    """A UUID column value from an integer: `tag` (2 hex digits) and the integer in 30 hex digits."""
    if pg:
        return f"('{tag}' || lpad(to_hex({expr}), 30, '0'))::uuid"
    return f"'{tag}' || printf('%%030x', {expr})"


def _insert_series(cursor, n: int, pg: bool, insert: str, params: list) -> None:
    """Run `insert`, whose SELECT reads `FROM g` with g.i = 0 .. n-1. `%` must be written `%%`."""
    if pg:
        cursor.execute(insert.replace("FROM g", f"FROM generate_series(0, {int(n) - 1}) AS g(i)"), params)
    else:
        cursor.execute(f"WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < {int(n) - 1}) "
                       + insert, params)


def _consecutive_ids(cursor, table: str, column: str, n: int) -> int:
    """The first id of the n rows just inserted (one INSERT ... SELECT numbers them in order)."""
    cursor.execute(f"SELECT MIN(id), MAX(id), COUNT(*) FROM {table} WHERE {column} LIKE %s", [FILL_PREFIX + "%"])
    low, high, count = cursor.fetchone()
    if count != n or high - low + 1 != n:
        raise RuntimeError(f"{table}: the filler's ids are not consecutive ({low}..{high}, {count} rows)")
    return low


def fill_server(*, users: int, conversations: int, deliveries: int, now: dt.datetime,
                ciphertext_bytes: int = 272) -> dict:
    """Fill the current database. `deliveries` pending ones, two per message
    (deliveries // 2 messages), spread over the conversations and so over
    every device. Returns the row counts. Run it once per database.

    If a table is maintained beside these by the services (a per-device
    pending counter, say), fill it here too."""
    from django.db import connection, transaction

    if users < MEMBERS or conversations < 1:
        raise ValueError("need at least 3 users and a conversation")
    pg = connection.vendor == "postgresql"
    ts = connection.ops.adapt_datetimefield_value
    joined = ts(now - dt.timedelta(days=30))
    created, expires = ts(now - dt.timedelta(hours=1)), ts(now + dt.timedelta(days=13))
    messages = deliveries // 2
    U, C = users, conversations
    if pg:
        json_empty, true, false = "'{}'::jsonb", "true", "false"
        cert, perms = "'{}'::jsonb", "'[]'::jsonb"
        activity = "%s::timestamptz - make_interval(secs => i)"
    else:
        json_empty, true, false = "'{}'", "1", "0"
        cert, perms = "'{}'", "'[]'"
        # As Django writes it: naive UTC text, microseconds included.
        activity = "strftime('%%Y-%%m-%%d %%H:%%M:%%f000', %s, '-' || i || ' seconds')"
    conv = _hex_uuid("cc", f"i %% {C}", pg)
    with transaction.atomic(), connection.cursor() as cursor:
        _insert_series(cursor, U, pg,
                       "INSERT INTO users (password, last_login, is_superuser, username, is_key_user, is_staff, "
                       f"is_active, date_joined, suspended_at) SELECT '!', NULL, {false}, %s || i, {true}, {false}, "
                       f"{true}, %s, NULL FROM g", [FILL_PREFIX, joined])
        user0 = _consecutive_ids(cursor, "users", "username", U)
        _insert_series(cursor, U, pg,
                       "INSERT INTO devices (device_id, user_id, name, certificate, permissions, issued_at, "
                       f"expires_at, created_at, revoked_at, last_seen_at) SELECT %s || i, {user0} + i, 'fill', "
                       f"{cert}, {perms}, %s, NULL, %s, NULL, NULL FROM g", [FILL_PREFIX, joined, joined])
        device0 = _consecutive_ids(cursor, "devices", "device_id", U)
        _insert_series(cursor, C, pg,
                       "INSERT INTO dm_conversations (id, kind, direct_key, created_by_id, epoch, participants_sha256, "
                       "retention_policy, retention_ttl_days, created_at, updated_at, last_activity_at) SELECT "
                       f"{_hex_uuid('cc', 'i', pg)}, 'group', NULL, {user0} + i %% {U}, 1, '{'p' * 44}', 'ttl', 14, "
                       f"%s, %s, {activity} FROM g", [joined, joined, ts(now - dt.timedelta(hours=2))])
        for k in range(MEMBERS):
            _insert_series(cursor, C, pg,
                           "INSERT INTO dm_conversation_members (conversation_id, user_id, joined_at) SELECT "
                           f"{_hex_uuid('cc', 'i', pg)}, {user0} + (i + {k}) %% {U}, %s FROM g", [joined])
        # Message i: in conversation i % C, from its member i % 3, to the two others.
        sender_device = f"{device0} + (i %% {C} + i %% {MEMBERS}) %% {U}"
        if messages:
            _insert_series(cursor, messages, pg,
                           "INSERT INTO pending_dms (message_id, conversation_id, sender_device_id, epoch, key_id, "
                           "participants_sha256, nonce, ciphertext, ciphertext_sha256, signature, policy, ttl_days, "
                           f"created_at, expires_at) SELECT {_hex_uuid('dd', 'i', pg)}, {conv}, {sender_device}, 1, "
                           f"'{'k' * 44}', '{'p' * 44}', '{'n' * 16}', %s, '{'h' * 44}', '{'s' * 88}', 'ttl', 14, "
                           "%s, %s FROM g", [os.urandom(ciphertext_bytes), created, expires])
            cursor.execute("SELECT COALESCE(MAX(id), 0) FROM dm_deliveries WHERE id > %s", [0])
            (last_delivery,) = cursor.fetchone()
            for r in range(1, MEMBERS):  # r: the recipient's place after the sender among the members
                recipient = f"{device0} + (i %% {C} + (i %% {MEMBERS} + {r}) %% {MEMBERS}) %% {U}"
                _insert_series(cursor, messages, pg,
                               "INSERT INTO dm_deliveries (message_id, device_id, wrap_nonce, wrapped_key, created_at, "
                               f"acked_at) SELECT {_hex_uuid('dd', 'i', pg)}, {recipient}, '{'w' * 16}', "
                               f"'{'x' * 64}', %s, NULL FROM g", [created])
            _insert_series(cursor, messages, pg,
                           "INSERT INTO dm_used_message_ids (message_id, sender_device_id, conversation_id, "
                           f"ciphertext_sha256, response, created_at, message_gone_at) SELECT {_hex_uuid('dd', 'i', pg)}, "
                           f"{sender_device}, {conv}, '{'h' * 44}', {json_empty}, %s, NULL FROM g", [created])
            cursor.execute("INSERT INTO dm_delivery_states (message_id, device_id, state, reason, at) "
                           "SELECT message_id, device_id, 'pending', NULL, NULL FROM dm_deliveries WHERE id > %s",
                           [last_delivery])
    analyze()
    return {"users": U, "devices": U, "conversations": C, "members": C * MEMBERS, "messages": messages,
            "deliveries": messages * (MEMBERS - 1)}


def analyze() -> None:
    """Fresh planner statistics and, outside a transaction on PostgreSQL, a
    VACUUM too: the steady state autovacuum keeps (hint bits set, the
    visibility map that index-only scans read), not a bulk load's aftermath."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and not connection.in_atomic_block:
            cursor.execute("VACUUM (ANALYZE)")
        else:
            cursor.execute("ANALYZE")
