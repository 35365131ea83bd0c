"""The hot paths' query plans on PostgreSQL (issue 13): on a server filled
(bench/fill.py) well past the size where an index pays, every statement that
send, sync, ACK, the delivery status, the directory and the conversation list
really run (captured from the real requests, so the test follows the code) is
EXPLAINed with its parameters; none may scan a big table sequentially."""
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bench.fill import analyze, fill_server
from tests.factories import ack, build_send, create_conversation, make_person, send, sync

pytestmark = [pytest.mark.requires_postgres, pytest.mark.django_db]

BIG_TABLES = {"pending_dms", "dm_deliveries", "dm_delivery_states", "dm_used_message_ids", "devices", "users",
              "dm_conversations", "dm_conversation_members"}
EXPLAINED = ("SELECT", "UPDATE", "INSERT", "DELETE", "WITH")


def seq_scans(plan: dict) -> list[str]:
    """The big tables a plan (tree) reads by Seq Scan."""
    found = [plan["Relation Name"]] if plan.get("Node Type") == "Seq Scan" and plan.get(
        "Relation Name") in BIG_TABLES else []
    for child in plan.get("Plans", []):
        found += seq_scans(child)
    return found


def explain(statement: str) -> dict:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement)
        return cursor.fetchone()[0][0]["Plan"]


class Captured:
    """The statements of the requests run inside, by operation."""

    def __init__(self):
        self.statements: dict[str, list[str]] = {}

    def run(self, name: str, call):
        with CaptureQueriesContext(connection) as captured:
            result = call()
        self.statements[name] = [q["sql"] for q in captured.captured_queries
                                 if q["sql"].lstrip().split(None, 1)[0].upper() in EXPLAINED]
        return result

    def seq_scans(self) -> list[str]:
        return [f"{name}: Seq Scan on {', '.join(tables)} in {statement[:300]}"
                for name, statements in self.statements.items() for statement in statements
                if (tables := seq_scans(explain(statement)))]


@pytest.fixture
def hot_paths():
    """A big server, then each hot path run once by real clients, its statements captured."""
    fill_server(users=20_000, conversations=20_000, deliveries=200_000, now=timezone.now())
    alice, bob, carol = make_person(), make_person(2), make_person()
    sender = alice.devices[0]
    conversation = create_conversation(sender, [bob.id, carol.id])
    for n in range(3):  # more than a page of alice's conversations
        create_conversation(sender, [bob.id] if n == 0 else [bob.id, carol.id])
    bodies = [build_send(sender, conversation, seq=n) for n in range(4)]
    for body in bodies[:3]:
        assert send(sender, body).status_code == 201
    analyze()

    captured = Captured()
    reader = bob.devices[0]
    response = captured.run("send", lambda: send(sender, bodies[3]))
    assert response.status_code == 201, response.content
    page = captured.run("sync", lambda: sync(reader, limit=500))
    ids = [m["message_id"] for m in page["messages"]]
    assert len(ids) == 4
    assert captured.run("ack", lambda: ack(reader, ids[:2], failed=ids[2:3]))["acked"] == sorted(ids[:3])
    response = captured.run("status", lambda: sender.client.get(f"/api/v1/dms/messages/{ids[0]}/status"))
    assert response.status_code == 200, response.content
    response = captured.run("status batch", lambda: sender.client.post(
        "/api/v1/dms/status", {"message_ids": ids}, format="json"))
    assert len(response.json()["statuses"]) == 4
    response = captured.run("directory", lambda: sender.client.get(f"/api/v1/users/{bob.id}/devices"))
    assert len(response.json()["devices"]) == 2
    first = captured.run("conversations", lambda: sender.client.get("/api/v1/dms/conversations?limit=2")).json()
    assert first["has_more"]
    captured.run("conversations page 2", lambda: sender.client.get(
        f"/api/v1/dms/conversations?limit=2&after={first['cursor']}"))
    for name in ("send", "sync", "ack", "directory", "conversations page 2"):
        assert captured.statements[name], f"{name} ran no statement"
    return captured


def test_hot_paths_use_indexes(hot_paths):
    assert hot_paths.seq_scans() == []


def test_a_dropped_index_shows(hot_paths):
    """The check itself: without the indexes of deliveries by device (dropped
    inside this test's transaction) the hot paths scan them."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'dm_deliveries' "
                       "AND indexdef LIKE %s", ["%(device_id%"])
        for (name,) in cursor.fetchall():
            cursor.execute(f'DROP INDEX "{name}"')
    analyze()
    found = hot_paths.seq_scans()
    assert any("Seq Scan on dm_deliveries" in line for line in found), found
