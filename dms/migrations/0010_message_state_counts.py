# dm_message_state_counts: each message's delivery states counted by state (§7a), kept by triggers on
# dm_delivery_states, so the ACK and DM_STATUS read one row per message instead of its states.
#
# As migration 0007's counters: on PostgreSQL statement-level triggers over
# transition tables, one aggregated change per message per statement (an ACK
# of 500 ids or a purge chunk of 20,000 states is one trigger call), counts
# rows locked in message-id order (the services lock the messages in that
# order already) so concurrent ACKs and purges never deadlock; SQLite has only
# row triggers, cheap there. A counts row is made with a message's first
# states (at its send) and deleted with its last one (the purge deletes a
# remembered id's states before the id; a device's deletion takes its
# states), so the counts outlive the message exactly as long as its states.
# States never move to another message: no code sets message_id, and a
# trigger refuses it (the counts would not follow). A later migration that
# rebuilds dm_delivery_states on SQLite (Django's table remake for most field
# changes) drops these triggers: create them again there
# (tests/dms/test_mailbox_counters.py fails without them).

import django.db.models.deletion
from django.db import migrations, models

STATES = ("pending", "delivered", "failed", "expired", "dropped", "skipped")  # DeliveryState.State, as of now
_COLUMNS = ", ".join(STATES)
_ALL_ZERO = " AND ".join(f"{s} = 0" for s in STATES)


def _sums(sign: str) -> str:
    return ", ".join(f"SUM(CASE WHEN state = '{s}' THEN {sign} ELSE 0 END) AS {s}" for s in STATES)


# The change of each message's counts in one statement, from its transition tables.
_PG_DELTA = {
    "insert": f"SELECT message_id, {_sums('1')} FROM dm_new GROUP BY message_id",
    "delete": f"SELECT message_id, {_sums('1')} FROM dm_old GROUP BY message_id",
    "update": f"SELECT message_id, {_sums('n')} FROM (SELECT message_id, state, -1 AS n FROM dm_old "
              "UNION ALL SELECT message_id, state, 1 FROM dm_new) c GROUP BY message_id "
              "HAVING " + " OR ".join(f"SUM(CASE WHEN state = '{s}' THEN n ELSE 0 END) <> 0" for s in STATES),
}
_PG_TRANSITIONS = {"insert": "NEW TABLE AS dm_new", "delete": "OLD TABLE AS dm_old",
                   "update": "OLD TABLE AS dm_old NEW TABLE AS dm_new"}


def _pg_function(op: str) -> str:
    delta = _PG_DELTA[op]
    if op == "insert":
        body = (f"INSERT INTO dm_message_state_counts AS b (message_id, {_COLUMNS}) {delta} ORDER BY message_id "
                "ON CONFLICT (message_id) DO UPDATE SET " + ", ".join(f"{s} = b.{s} + EXCLUDED.{s}" for s in STATES)
                + ";")
    else:
        sign = "-" if op == "delete" else "+"
        body = "\n".join([
            f"PERFORM 1 FROM dm_message_state_counts WHERE message_id IN (SELECT message_id FROM ({delta}) c) "
            "ORDER BY message_id FOR UPDATE;",
            "UPDATE dm_message_state_counts b SET " + ", ".join(f"{s} = b.{s} {sign} c.{s}" for s in STATES)
            + f" FROM ({delta}) c WHERE b.message_id = c.message_id;"])
        if op == "delete":
            body += ("\nDELETE FROM dm_message_state_counts WHERE message_id IN (SELECT message_id FROM dm_old) "
                     f"AND {_ALL_ZERO};")
    return (f"CREATE FUNCTION dm_message_state_counts_{op}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body}\nRETURN NULL;\nEND $$")


_NEVER_MOVES = "a delivery state never moves to another message"
# Fired only by an UPDATE that sets message_id (none does): the counts need not follow a moved state.
PG_NEVER_MOVES = [
    "CREATE FUNCTION dm_delivery_states_never_move() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    f"BEGIN\nRAISE EXCEPTION '{_NEVER_MOVES}';\nEND $$",
    "CREATE TRIGGER dm_delivery_states_never_move BEFORE UPDATE OF message_id ON dm_delivery_states FOR EACH ROW "
    "WHEN (OLD.message_id IS DISTINCT FROM NEW.message_id) EXECUTE FUNCTION dm_delivery_states_never_move()",
]


POSTGRESQL = [*PG_NEVER_MOVES, *(sql for op in ("insert", "update", "delete") for sql in (
    _pg_function(op),
    f"CREATE TRIGGER dm_delivery_states_counts_{op} AFTER {op.upper()} ON dm_delivery_states "
    f"REFERENCING {_PG_TRANSITIONS[op]} FOR EACH STATEMENT EXECUTE FUNCTION dm_message_state_counts_{op}()"))]
POSTGRESQL_REVERSE = [*(sql for op in ("insert", "update", "delete") for sql in (
    f"DROP TRIGGER dm_delivery_states_counts_{op} ON dm_delivery_states",
    f"DROP FUNCTION dm_message_state_counts_{op}()")),
    "DROP TRIGGER dm_delivery_states_never_move ON dm_delivery_states", "DROP FUNCTION dm_delivery_states_never_move()"]


def _is(row: str, state: str) -> str:
    return f"({row}.state = '{state}')"  # 1 or 0


SQLITE = [
    f"""CREATE TRIGGER dm_delivery_states_counts_insert AFTER INSERT ON dm_delivery_states BEGIN
        INSERT INTO dm_message_state_counts (message_id, {_COLUMNS})
        VALUES (NEW.message_id, {", ".join(_is("NEW", s) for s in STATES)})
        ON CONFLICT (message_id) DO UPDATE SET {", ".join(f"{s} = {s} + excluded.{s}" for s in STATES)};
    END""",
    f"""CREATE TRIGGER dm_delivery_states_counts_update AFTER UPDATE OF state ON dm_delivery_states
    WHEN OLD.state <> NEW.state BEGIN
        UPDATE dm_message_state_counts SET {", ".join(f"{s} = {s} - {_is('OLD', s)} + {_is('NEW', s)}" for s in STATES)}
        WHERE message_id = OLD.message_id;
    END""",
    f"""CREATE TRIGGER dm_delivery_states_counts_delete AFTER DELETE ON dm_delivery_states BEGIN
        UPDATE dm_message_state_counts SET {", ".join(f"{s} = {s} - {_is('OLD', s)}" for s in STATES)}
        WHERE message_id = OLD.message_id;
        DELETE FROM dm_message_state_counts WHERE message_id = OLD.message_id AND {_ALL_ZERO};
    END""",
    f"""CREATE TRIGGER dm_delivery_states_never_move BEFORE UPDATE OF message_id ON dm_delivery_states
    WHEN OLD.message_id <> NEW.message_id BEGIN
        SELECT RAISE(ABORT, '{_NEVER_MOVES}');
    END""",
]
SQLITE_REVERSE = [*(f"DROP TRIGGER dm_delivery_states_counts_{op}" for op in ("insert", "update", "delete")),
                  "DROP TRIGGER dm_delivery_states_never_move"]

# After the triggers: on PostgreSQL CREATE TRIGGER holds off writes to dm_delivery_states until commit.
BACKFILL = (f"INSERT INTO dm_message_state_counts (message_id, {_COLUMNS}) SELECT message_id, "
            + ", ".join(f"SUM(CASE WHEN state = '{s}' THEN 1 ELSE 0 END)" for s in STATES)
            + " FROM dm_delivery_states GROUP BY message_id")


def _run(statements: dict):
    def run(apps, schema_editor):
        for statement in statements[schema_editor.connection.vendor]:
            schema_editor.execute(statement, params=None)
    return run


class Migration(migrations.Migration):

    dependencies = [
        ('dms', '0008_drop_covered_indexes'),
    ]

    operations = [
        migrations.CreateModel(
            name='MessageStateCounts',
            fields=[
                ('message', models.OneToOneField(on_delete=django.db.models.deletion.DO_NOTHING, primary_key=True,
                                                 related_name='+', serialize=False, to='dms.usedmessageid')),
                ('pending', models.PositiveIntegerField(default=0)),
                ('delivered', models.PositiveIntegerField(default=0)),
                ('failed', models.PositiveIntegerField(default=0)),
                ('expired', models.PositiveIntegerField(default=0)),
                ('dropped', models.PositiveIntegerField(default=0)),
                ('skipped', models.PositiveIntegerField(default=0)),
            ],
            options={
                'db_table': 'dm_message_state_counts',
            },
        ),
        migrations.RunPython(
            _run({"postgresql": [*POSTGRESQL, BACKFILL], "sqlite": [*SQLITE, BACKFILL]}),
            _run({"postgresql": POSTGRESQL_REVERSE, "sqlite": SQLITE_REVERSE}),
        ),
    ]
