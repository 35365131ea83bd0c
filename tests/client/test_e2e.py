"""End to end: the real server (daphne on a free port, its own database) and
several client instances, each `python -m dmclient --json` in a process of
its own with a store of its own. After each scenario the server's database
is scanned: no message body is in any column of any table."""
import datetime as dt
import json
import uuid

import pytest

from dmclient import protocol
from dmclient import Client
from tests.client.conftest import PASSPHRASE, assert_no_plaintext, live_query

pytestmark = pytest.mark.live


def text(label: str) -> str:
    """A message body no other row of the database can contain by chance."""
    return f"{label} {uuid.uuid4().hex}"


def messages(result: dict) -> list[tuple[str, str, bool]]:
    return [(i["body"], i["sender"], i["mine"]) for i in result["items"] if i["type"] == "message"]


def count_messages(live_database) -> int:
    return live_query(live_database, "SELECT count(*) FROM pending_dms")[0][0]


def test_direct_exchange_with_self_sync_to_the_second_device(daphne_server, live_database, cli):
    alice = cli("alice-phone").init(daphne_server.url, "phone")
    bob = cli("bob-laptop").init(daphne_server.url, "laptop")
    alice_laptop = alice.add_device(alice.home.parent / "alice-laptop", "laptop")
    assert alice_laptop.user_id == alice.user_id != bob.user_id
    cid = alice.run("dm", "new", bob.user_id)["conversation"]["conversation_id"]

    hello, reply = text("hello bob"), text("hi alice, bob here")
    sent = alice.run("dm", "send", cid, hello)
    assert (sent["recipients"], sent["seq"], sent["unreachable"]) == (2, 1, [])
    # the multi-device status: alice's laptop has one message waiting
    devices = {d["name"]: d for d in alice.run("device", "list")["devices"]}
    assert (devices["phone"]["current"], devices["phone"]["pending_count"]) == (True, 0)
    assert (devices["laptop"]["current"], devices["laptop"]["pending_count"]) == (False, 1)
    assert devices["laptop"]["last_seen_at"] is not None and devices["laptop"]["certificate_ok"]  # its login

    assert messages(bob.read()) == [(hello, alice.user_id, False)]
    assert messages(alice_laptop.read()) == [(hello, alice.user_id, True)]  # self-sync
    laptop = {d["name"]: d for d in alice.run("device", "list")["devices"]}["laptop"]
    assert laptop["pending_count"] == 0 and laptop["last_seen_at"] is not None
    assert bob.run("dm", "send", cid, reply)["recipients"] == 2
    assert messages(alice.read()) == [(reply, bob.user_id, False)]
    assert messages(alice_laptop.read()) == [(reply, bob.user_id, False)]
    assert messages(bob.read()) == []
    for device in (alice, alice_laptop, bob):
        history = device.run("dm", "history", cid)["messages"]
        assert [(m["body"], m["seq"]) for m in history] == [(hello, 1), (reply, 1)]
    assert_no_plaintext(live_database, [hello, reply], present=[sent["message_id"], alice_laptop.device_id])


def test_group_of_three_with_a_member_removed(daphne_server, live_database, cli):
    alice, bob, carol = (cli(n).init(daphne_server.url, n) for n in ("alice", "bob", "carol"))
    new = alice.run("dm", "new", bob.user_id, carol.user_id)
    assert new["created"] and new["conversation"]["kind"] == "group"
    gid = new["conversation"]["conversation_id"]
    before, after = text("all three of us"), text("carol is gone")
    assert alice.run("dm", "send", gid, before)["recipients"] == 2
    assert [b for b, _, _ in messages(bob.read())] == [before]
    assert [b for b, _, _ in messages(carol.read())] == [before]

    listening = bob.listen()
    listening.wait_event("connected")
    alice.run("dm", "remove", gid, carol.user_id)
    # bob's listener shows the change as it happens (CONVERSATION_UPDATE)...
    change = listening.wait_for(lambda i: i.get("kind") == "membership")
    assert (change["removed"], change["actor"], change["epoch"]) == ([carol.user_id], alice.user_id, 2)
    # ...so his next message goes out in the new epoch at the first attempt, to alice alone
    sent = bob.run("dm", "send", gid, after)
    assert (sent["retries"], sent["epoch"], sent["recipients"]) == ([], 2, 1)
    read = alice.read()
    assert [b for b, _, _ in messages(read)] == [after]
    assert [(e["removed"], e["epoch"]) for e in read["items"] if e.get("kind") == "membership"] == [
        ([carol.user_id], 2)]
    carol_read = carol.read()
    assert messages(carol_read) == []
    [removed] = [e for e in carol_read["items"] if e.get("kind") == "membership"]
    assert removed["removed"] == [carol.user_id]
    assert carol.run("dm", "list")["conversations"] == []

    # Carol cannot decrypt it even with the ciphertext in hand: no wrap is for her, and
    # no key she holds opens it.
    mid = uuid.UUID(sent["message_id"])
    [(ciphertext, nonce)] = live_query(live_database, "SELECT ciphertext, nonce FROM pending_dms WHERE message_id = %s",
                                       [mid])
    ciphertext = bytes(ciphertext)
    recipients = live_query(live_database, "SELECT v.device_id FROM dm_deliveries d JOIN devices v "
                                           "ON v.id = d.device_id WHERE d.message_id = %s", [mid])
    assert recipients == [(alice.device_id,)]
    store = Client.open(carol.home, PASSPHRASE)
    try:
        keys = [store.store.unseal(r[0]) for r in store.store.db.execute(
            "SELECT sealed_key FROM received_keys UNION ALL SELECT sealed_key FROM sender_keys")]
        assert len(keys) == 1 and protocol.key_id(keys[0]) != sent["key_id"]
        aad = protocol.dm_aad(conversation_id=gid, epoch=2, message_id=sent["message_id"],
                              sender_device=bob.device_id)
        for key in keys:
            with pytest.raises(protocol.ProtocolError):
                protocol.aead_decrypt(key, protocol.b64d(nonce), ciphertext, aad)
    finally:
        store.close()
    assert_no_plaintext(live_database, [before, after], present=[alice.user_id, carol.user_id])


def test_device_revoked_mid_conversation(daphne_server, live_database, cli):
    alice = cli("alice-phone").init(daphne_server.url, "phone")
    alice_laptop = alice.add_device(alice.home.parent / "alice-laptop", "laptop")
    bob = cli("bob").init(daphne_server.url, "bob")
    cid = bob.run("dm", "new", alice.user_id)["conversation"]["conversation_id"]
    first, second = text("to both of alice's devices"), text("after the laptop was revoked")
    assert bob.run("dm", "send", cid, first)["recipients"] == 2
    assert [b for b, _, _ in messages(alice_laptop.read())] == [first]
    listening = alice_laptop.listen()
    listening.wait_event("connected")

    assert alice.run("device", "revoke", alice_laptop.device_id) == {"revoked": alice_laptop.device_id}
    revoked = listening.wait_event("revoked")  # the gateway closes the laptop's connection (4003)
    assert "revoked" in revoked["detail"]
    assert listening.proc.wait(timeout=10) == 1

    sent = bob.run("dm", "send", cid, second)
    assert (sent["retries"], sent["epoch"], sent["recipients"]) == (["stale_epoch"], 2, 1)
    assert [b for b, _, _ in messages(alice.read())] == [first, second]
    alice_laptop.run("dm", "read", expect_error="device_revoked")
    devices = {d["name"]: d for d in alice.run("device", "list")["devices"]}
    assert devices["laptop"]["revoked_at"] is not None and devices["phone"]["revoked_at"] is None
    assert_no_plaintext(live_database, [first, second], present=[sent["message_id"]])


def test_each_retention_policy(daphne_server, live_database, cli):
    alice, bob = cli("alice").init(daphne_server.url, "alice"), cli("bob").init(daphne_server.url, "bob")
    new = alice.run("dm", "new", bob.user_id, "--policy", "ttl", "--ttl-days", "3")
    cid = new["conversation"]["conversation_id"]
    assert new["conversation"]["retention"] == {"policy": "ttl", "ttl_days": 3}
    kept, burned, forever = text("kept three days"), text("burn after reading"), text("kept for good")

    ttl = alice.run("dm", "send", cid, kept)
    created, expires = (dt.datetime.fromisoformat(ttl[k]) for k in ("created_at", "expires_at"))
    assert (ttl["policy"], expires - created) == ("ttl", dt.timedelta(days=3))
    assert [b for b, _, _ in messages(bob.read())] == [kept]
    assert [m["body"] for m in bob.run("dm", "history", cid, "--server")["messages"]] == [kept]  # kept after ACK

    # bob changes the policy: alice is told and asked; without --yes nothing is sent
    bob.run("dm", "retention", cid, "--policy", "burn_on_read")
    refused = alice.run("dm", "send", cid, burned, expect_error="retention_changed")
    assert refused["retention"] == {"policy": "burn_on_read", "ttl_days": None}
    assert "retention changed from ttl 3d to burn_on_read" in alice.last_stderr
    assert count_messages(live_database) == 1
    burn = alice.run("dm", "send", cid, burned, "--yes")
    assert (burn["policy"], burn["retries"]) == ("burn_on_read", ["retention_changed"])
    assert count_messages(live_database) == 2
    assert [b for b, _, _ in messages(bob.read())] == [burned]
    # read by its only recipient device: gone from the server at once
    assert count_messages(live_database) == 1

    bob.run("dm", "retention", cid, "--policy", "permanent", expect_error="permanent_not_allowed")
    live_database.manage("shell", "-c", "from dms.selectors import server_settings_get; "
                                        "s = server_settings_get(); s.allow_permanent = True; s.save()")
    bob.run("dm", "retention", cid, "--policy", "permanent")
    perm = alice.run("dm", "send", cid, forever, "--yes")
    assert (perm["policy"], perm["expires_at"]) == ("permanent", None)
    assert [b for b, _, _ in messages(bob.read())] == [forever]

    # four days on, the purge removes the ttl message and keeps the permanent one
    as_of = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=4)).isoformat()
    assert "expired_messages: 1" in live_database.manage("purge_dms", "--as-of", as_of)
    assert [m["body"] for m in bob.run("dm", "history", cid, "--server")["messages"]] == [forever]
    assert [m["body"] for m in alice.run("dm", "history", cid, "--server")["messages"]] == [forever]
    assert_no_plaintext(live_database, [kept, burned, forever], present=[perm["message_id"]])


def test_offline_device_catches_up_through_hello(daphne_factory, live_database, cli):
    # Heartbeats every 300 ms with 1 s of grace: a listener that did not answer would be closed 4002.
    server = daphne_factory(extra_env={"GATEWAY_HEARTBEAT_INTERVAL_MS": "300", "GATEWAY_HEARTBEAT_GRACE_MS": "1000"})
    alice, bob = cli("alice").init(server.url, "alice"), cli("bob").init(server.url, "bob")
    cid = alice.run("dm", "new", bob.user_id)["conversation"]["conversation_id"]
    missed = [text(f"while bob was away {i}") for i in range(3)]
    for body in missed:
        alice.run("dm", "send", cid, body)

    listening = bob.listen("--progress")
    assert listening.wait_event("connected")["pending_count"] == 3
    assert listening.wait_event("synced") == {"event": "synced", "accepted": 3, "failed": 0}
    assert listening.bodies() == missed
    live = text("while bob listens")
    alice.run("dm", "send", cid, live)
    listening.wait_body(live)  # rung by DM_NOTIFY
    listening.drain(2.0)  # several heartbeat intervals, all answered
    assert listening.events("disconnected") == []
    assert listening.bodies() == [*missed, live]
    assert listening.stop() in (0, -15)
    assert "syncing: 3/3 messages" in "".join(listening.stderr)
    assert_no_plaintext(live_database, [*missed, live], present=[bob.device_id])


def test_server_restart_during_listen(daphne_server, live_database, cli):
    alice, bob = cli("alice").init(daphne_server.url, "alice"), cli("bob").init(daphne_server.url, "bob")
    cid = alice.run("dm", "new", bob.user_id)["conversation"]["conversation_id"]
    listening = bob.listen()
    listening.wait_event("connected")
    before, during, after = text("before the restart"), text("sent as it came back"), text("after reconnecting")
    alice.run("dm", "send", cid, before)
    listening.wait_body(before)

    daphne_server.restart()
    listening.wait_event("disconnected")
    alice.run("dm", "send", cid, during)  # most likely before bob is back: fetched on HELLO
    listening.wait_body(during, timeout=40)
    assert len(listening.events("connected")) == 2
    alice.run("dm", "send", cid, after)
    listening.wait_body(after)
    listening.drain(0.5)
    assert listening.bodies() == [before, during, after]  # each exactly once
    assert_no_plaintext(live_database, [before, during, after], present=[alice.device_id])


def test_join_flow_with_a_certificate_file(daphne_server, cli, tmp_path):
    """The other way to add a device: the key is made on the device, only the certificate travels."""
    alice = cli("alice").init(daphne_server.url, "phone")
    tablet = cli("tablet")
    joined = tablet.run("init", "--server", daphne_server.url, "--name", "tablet", "--join")
    assert joined["user_id"] is None and joined["certificate"] is None
    cert = alice.run("device", "certify", joined["device_id"], "--name", "tablet", "--expires-days", "30")
    assert cert["device"] == joined["device_id"] and cert["master"] == alice.user_id
    assert cert["expires_at"] - cert["issued_at"] == 30 * 86400 and cert["permissions"] == []
    (tmp_path / "cert.json").write_text(json.dumps(cert))
    me = tablet.run("device", "import-cert", str(tmp_path / "cert.json"))
    assert (me["user_id"], me["device_name"]) == (alice.user_id, "tablet")
    names = sorted(d["name"] for d in alice.run("device", "list")["devices"])
    assert names == ["phone", "tablet"]
    # a tablet without manage_devices cannot revoke the phone; alice's phone revokes the tablet
    tablet.run("device", "revoke", alice.device_id, expect_error="forbidden")
    alice.run("device", "revoke", joined["device_id"])
    tablet.run("dm", "list", expect_error="device_revoked")
