"""Delivery status in the reference client (issue 11, PROTOCOL.md §7a): marks
on one's own messages in `dm history` and `dm read`, `dm status`, DM_STATUS
in `dm listen`, and the last status kept for offline use. Two CLI users, each
`python -m dmclient` in processes of its own, against a real daphne; expiry
by the real purge (`manage.py purge_dms --as-of`) on the live database."""
import datetime as dt
import subprocess
import sys
import uuid

import pytest

from dmclient.client import delivery_mark
from tests.client.conftest import BASE_DIR

pytestmark = pytest.mark.live


def text(label: str) -> str:
    return f"{label} {uuid.uuid4().hex}"


def plain(cli, *args: str) -> subprocess.CompletedProcess:
    """The command's text output (no --json)."""
    proc = subprocess.run([sys.executable, "-m", "dmclient", "--home", str(cli.home), *args], cwd=BASE_DIR,
                          env=cli.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def marks(cli, conversation: str) -> dict[str, str | None]:
    return {m["body"]: m.get("mark") for m in cli.run("dm", "history", conversation)["messages"] if m["mine"]}


def counts(**given: int) -> dict[str, int]:
    return {**dict.fromkeys(("pending", "delivered", "failed", "expired", "dropped", "skipped"), 0), **given}


def test_delivered_to_every_device_then_expired_on_an_offline_one(daphne_server, live_database, cli):
    alice = cli("alice").init(daphne_server.url, "phone")
    bob = cli("bob").init(daphne_server.url, "laptop")
    alice.run("contact", "add", "bob", bob.user_id)
    cid = alice.run("dm", "new", "bob", "--policy", "ttl", "--ttl-days", "1")["conversation"]["conversation_id"]
    listening = alice.listen()
    listening.wait_event("connected")

    first = text("first")
    sent = plain(alice, "dm", "send", "--to", "bob", first)
    assert ": stored for 1 device(s)" in sent.stdout
    first_id = sent.stdout.split()[1]
    assert marks(alice, "bob") == {first: "✓"}  # stored, not yet fetched

    assert [i["body"] for i in bob.read()["items"] if i["type"] == "message"] == [first]
    change = listening.wait_for(lambda i: i.get("type") == "status" and i["message_id"] == first_id)
    assert (change["conversation_id"], change["counts"], change["mark"]) == (cid, counts(delivered=1), "✓✓")
    assert marks(alice, "bob") == {first: "✓✓"}
    status = alice.run("dm", "status", first_id[:8])  # the server's answer, exactly
    assert (status["message_id"], status["conversation_id"], status["policy"]) == (first_id, cid, "ttl")
    [device] = status["devices"]
    assert (device["device_id"], device["user_id"], device["state"]) == (bob.device_id, bob.user_id, "delivered")
    assert device["at"] is not None and status["counts"] == counts(delivered=1)
    shown = plain(alice, "dm", "status", first_id).stdout.splitlines()
    assert shown[0].startswith(f"message {first_id} in [{cid[:8]}] with bob (ttl, sent ")
    assert shown[1].split()[:2] == ["delivered", "bob/laptop"] and shown[-1] == "✓✓ 1 delivered"
    assert f"#1 ✓✓: {first}" in plain(alice, "dm", "history", "bob").stdout

    # bob's phone is added and stays offline; the second message reaches only his laptop
    bob.add_device(bob.home.parent / "bob-phone", "phone")
    second = text("second")
    second_id = alice.run("dm", "send", "bob", second)["message_id"]
    bob.read()
    listening.wait_for(lambda i: i.get("type") == "status" and i["message_id"] == second_id)
    assert marks(alice, "bob") == {first: "✓✓", second: "✓"}

    # two days on, the purge ends the ttl messages: the phone's delivery expired undelivered. A listener
    # away meanwhile (the purge also ends its session) is told on its next HELLO.
    listening.stop()
    as_of = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)).isoformat()
    live_database.manage("purge_dms", "--as-of", as_of)
    listening = alice.listen()
    expired = listening.wait_for(lambda i: i.get("type") == "status" and i["message_id"] == second_id)
    assert (expired["counts"], expired["mark"]) == (counts(delivered=1, expired=1), "! 1 expired")
    assert marks(alice, "bob") == {first: "✓✓", second: "! 1 expired"}  # the messages are gone, their states stay
    states = {d["state"] for d in alice.run("dm", "status", second_id)["devices"]}
    assert states == {"delivered", "expired"}
    assert "#2 ! 1 expired: " in plain(alice, "dm", "history", cid[:8]).stdout

    # offline: the last status the store holds
    listening.stop()
    daphne_server.stop()
    assert marks(alice, "bob") == {first: "✓✓", second: "! 1 expired"}
    offline = plain(alice, "dm", "status", second_id)
    assert "offline" in offline.stderr and offline.stdout.splitlines()[-1] == "! 1 expired 1 delivered, 1 expired"


def test_marks():
    assert delivery_mark(None) is None
    assert delivery_mark(counts()) == "✓"  # stored for no device (its users have none active)
    assert delivery_mark(counts(pending=1, delivered=1)) == "✓"
    assert delivery_mark(counts(delivered=2)) == "✓✓"
    assert delivery_mark(counts(delivered=1, skipped=1)) == "! 1 skipped"
    assert delivery_mark(counts(failed=1, dropped=2, pending=1)) == "! 1 failed, 2 dropped"


@pytest.mark.django_db
def test_dm_read_marks_own_messages_from_another_device(new_client, inproc, capsys, monkeypatch):
    """Self-sync: the laptop shows what the phone sent, with its status refreshed in one call."""
    import json

    from dmclient import cli
    from tests.client.conftest import PASSPHRASE

    monkeypatch.setenv("DMCLIENT_PASSPHRASE", PASSPHRASE)
    phone, bob = new_client("phone"), new_client("bob")
    laptop = new_client.add_device(phone, "laptop")
    cid = phone.create_conversation([bob.user_id])[0]["conversation_id"]
    sent = phone.send(cid, "from the phone")
    bob.sync()
    assert cli.main(["--home", str(laptop.store.path.parent), "--json", "dm", "read"], transport=inproc.transport) == 0
    [item] = [i for i in json.loads(capsys.readouterr().out)["items"] if i["type"] == "message"]
    # bob's device and this laptop (whose sync ACKs before the read shows it) both have it
    assert (item["message_id"], item["mine"], item["status"], item["mark"]) == (
        sent.message_id, True, counts(delivered=2), "✓✓")
