# dm_mailboxes: each device's count of unACKed deliveries (§7 check 11), kept by triggers on dm_deliveries.
#
# PostgreSQL: statement-level triggers over transition tables, one aggregated
# change per device per statement (row triggers would update one counter row
# thousands of times in a purge chunk: a long MVCC version chain). Counter rows
# are locked in device-id order, so concurrent sends, ACKs and purges touching
# overlapping devices never deadlock. SQLite has only row triggers, cheap there.
# A counter row is made with a device's first delivery and goes only with the
# device; changes other than that first insert only UPDATE, so a device being
# deleted (the ORM's cascade may delete its counter row first) never gets its
# row back. A later migration that rebuilds dm_deliveries on SQLite (Django's
# table remake for most field changes) drops these triggers: create them again
# there (tests/dms/test_mailbox_counters.py fails without them).

import django.db.models.deletion
from django.db import migrations, models

# The change of each device's count in one statement, from its transition tables.
_PG_DELTA = {
    "insert": "SELECT device_id, COUNT(*) AS n FROM dm_new WHERE acked_at IS NULL GROUP BY device_id",
    "delete": "SELECT device_id, -COUNT(*) AS n FROM dm_old WHERE acked_at IS NULL GROUP BY device_id",
    "update": "SELECT device_id, SUM(n) AS n FROM (SELECT device_id, -1 AS n FROM dm_old WHERE acked_at IS NULL "
              "UNION ALL SELECT device_id, 1 FROM dm_new WHERE acked_at IS NULL) c GROUP BY device_id "
              "HAVING SUM(n) <> 0",
}
_PG_TRANSITIONS = {"insert": "NEW TABLE AS dm_new", "delete": "OLD TABLE AS dm_old",
                   "update": "OLD TABLE AS dm_old NEW TABLE AS dm_new"}


def _pg_function(op: str) -> str:
    if op == "insert":
        body = (f"INSERT INTO dm_mailboxes AS b (device_id, pending) {_PG_DELTA[op]} ORDER BY device_id "
                "ON CONFLICT (device_id) DO UPDATE SET pending = b.pending + EXCLUDED.pending;")
    else:
        body = (f"PERFORM 1 FROM dm_mailboxes WHERE device_id IN (SELECT device_id FROM ({_PG_DELTA[op]}) c) "
                "ORDER BY device_id FOR UPDATE;\n"
                f"UPDATE dm_mailboxes b SET pending = b.pending + c.n FROM ({_PG_DELTA[op]}) c "
                "WHERE b.device_id = c.device_id;")
    return (f"CREATE FUNCTION dm_mailboxes_{op}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body}\nRETURN NULL;\nEND $$")


POSTGRESQL = [sql for op in ("insert", "update", "delete") for sql in (
    _pg_function(op),
    f"CREATE TRIGGER dm_deliveries_mailbox_{op} AFTER {op.upper()} ON dm_deliveries "
    f"REFERENCING {_PG_TRANSITIONS[op]} FOR EACH STATEMENT EXECUTE FUNCTION dm_mailboxes_{op}()")]
POSTGRESQL_REVERSE = [sql for op in ("insert", "update", "delete") for sql in (
    f"DROP TRIGGER dm_deliveries_mailbox_{op} ON dm_deliveries", f"DROP FUNCTION dm_mailboxes_{op}()")]

SQLITE = [
    """CREATE TRIGGER dm_deliveries_mailbox_insert AFTER INSERT ON dm_deliveries WHEN NEW.acked_at IS NULL BEGIN
        INSERT INTO dm_mailboxes (device_id, pending) VALUES (NEW.device_id, 1)
        ON CONFLICT (device_id) DO UPDATE SET pending = pending + 1;
    END""",
    """CREATE TRIGGER dm_deliveries_mailbox_update AFTER UPDATE OF acked_at, device_id ON dm_deliveries
    WHEN (OLD.acked_at IS NULL) <> (NEW.acked_at IS NULL) OR (OLD.acked_at IS NULL AND OLD.device_id <> NEW.device_id)
    BEGIN
        UPDATE dm_mailboxes SET pending = pending - 1 WHERE OLD.acked_at IS NULL AND device_id = OLD.device_id;
        UPDATE dm_mailboxes SET pending = pending + 1 WHERE NEW.acked_at IS NULL AND device_id = NEW.device_id;
    END""",
    """CREATE TRIGGER dm_deliveries_mailbox_delete AFTER DELETE ON dm_deliveries WHEN OLD.acked_at IS NULL BEGIN
        UPDATE dm_mailboxes SET pending = pending - 1 WHERE device_id = OLD.device_id;
    END""",
]
SQLITE_REVERSE = ["DROP TRIGGER dm_deliveries_mailbox_insert", "DROP TRIGGER dm_deliveries_mailbox_update",
                  "DROP TRIGGER dm_deliveries_mailbox_delete"]

# After the triggers: on PostgreSQL CREATE TRIGGER holds off writes to dm_deliveries until commit.
BACKFILL = ("INSERT INTO dm_mailboxes (device_id, pending) SELECT device_id, "
            "SUM(CASE WHEN acked_at IS NULL THEN 1 ELSE 0 END) FROM dm_deliveries GROUP BY device_id")


def _run(statements: dict):
    def run(apps, schema_editor):
        for statement in statements[schema_editor.connection.vendor]:
            schema_editor.execute(statement, params=None)
    return run


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0002_user_suspension_and_challenge_index'),
        ('dms', '0006_purge_runs'),
    ]

    operations = [
        migrations.CreateModel(
            name='Mailbox',
            fields=[
                ('device', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True,
                                                related_name='+', serialize=False, to='devices.device')),
                ('pending', models.PositiveIntegerField(default=0)),
            ],
            options={
                'db_table': 'dm_mailboxes',
            },
        ),
        migrations.RunPython(
            _run({"postgresql": [*POSTGRESQL, BACKFILL], "sqlite": [*SQLITE, BACKFILL]}),
            _run({"postgresql": POSTGRESQL_REVERSE, "sqlite": SQLITE_REVERSE}),
        ),
    ]
