"""Forward secrecy (§6b) end to end: the CLI in processes of its own against a
live daphne and its own database.

The property itself: once a conversation's messages are ACKed and the
recipient's signed prekey has been rotated past the client's window, a copy of
the recipient device's Ed25519 seed plus everything the server stored (a dump
of its database) opens no wrap of those messages, whatever is tried — while
the same attack on v1 wraps (an old client) opens every one, so the test can
fail. Then: the upgraded receiver refuses the v1 wrap that a server withholding
prekeys (an HTTP proxy in the test) makes a sender fall back to; PREKEYS_LOW
reaches a listener, which refills; v1-only and upgraded CLIs talk."""
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from dmclient import Client, protocol
from dmclient.client import DAY_S, OLD_SIGNED_PREKEY_KEEP_S, ONE_TIME_TARGET, SIGNED_PREKEY_ROTATE_S
from tests.client.conftest import PASSPHRASE, assert_no_plaintext, database_dump, live_query

pytestmark = pytest.mark.live


def text(label: str) -> str:
    return f"{label} {uuid.uuid4().hex}"


def bodies(result: dict) -> list[str]:
    return [i["body"] for i in result["items"] if i["type"] == "message"]


def wraps_for(live_database, device_id: str) -> list[dict]:
    """Every wrap the server stores for `device_id`, with what names it (the attacker's view of the dump)."""
    rows = live_query(live_database, (
        "SELECT m.message_id, m.conversation_id, m.epoch, s.device_id, d.wrap_nonce, d.wrapped_key, "
        "d.wrap_signed_prekey_id, d.wrap_one_time_id, d.wrap_ephemeral, d.acked_at "
        "FROM dm_deliveries d JOIN pending_dms m ON m.message_id = d.message_id "
        "JOIN devices s ON s.id = m.sender_device_id JOIN devices r ON r.id = d.device_id "
        "WHERE r.device_id = %s AND d.wrapped_key IS NOT NULL"), [device_id])
    out = []
    for message_id, cid, epoch, sender, nonce, wrapped, spk_id, otk_id, ephemeral, acked_at in rows:
        wrap = ({"nonce": nonce, "wrapped_key": wrapped} if ephemeral is None else
                {"v": 2, "signed_prekey_id": spk_id, "one_time_id": otk_id, "ephemeral": ephemeral, "nonce": nonce,
                 "wrapped_key": wrapped})
        out.append({"message_id": str(uuid.UUID(str(message_id))), "conversation_id": str(uuid.UUID(str(cid))),
                    "epoch": epoch, "sender_device": sender, "wrap": wrap, "acked": acked_at is not None})
    return out


def dump_keys(live_database) -> set[bytes]:
    """Every 32-byte value (base64, or raw) anywhere in the server's database: tried as private keys too."""
    found = set()
    for _, _, value in database_dump(live_database):
        if isinstance(value, (bytes, memoryview)) and len(bytes(value)) == 32:
            found.add(bytes(value))
        elif isinstance(value, str):
            for token in {value, *value.replace('"', " ").replace(",", " ").replace(":", " ").split()}:
                try:
                    found.add(protocol.b64d(token, length=32))
                except protocol.ProtocolError:
                    pass
    return found


def device_privates(home) -> tuple[bytes, list[bytes], list[bytes]]:
    """What a thief of the device holds: its Ed25519 seed, and the prekey private keys its store still has."""
    client = Client.open(home, PASSPHRASE)
    try:
        seed = client.store.secret("device_seed")
        signed = [client.store.unseal(r[0]) for r in client.store.db.execute(
            "SELECT sealed_private FROM signed_prekeys WHERE sealed_private IS NOT NULL")]
        one_time = [client.store.unseal(r[0]) for r in client.store.db.execute(
            "SELECT sealed_private FROM one_time_prekeys")]
    finally:
        client.close()
    return seed, signed, one_time


def opens(entry: dict, recipient_device: str, seed: bytes, signed: list[bytes], one_time: list[bytes],
          extra: set[bytes] = frozenset()) -> bool:
    """Whether any key the attacker has opens this wrap: the device key as v1 would use it, and for v2
    every combination of candidate signed and one-time private keys (the seed's X25519 key among them)."""
    common = dict(recipient_device=recipient_device, sender_device=entry["sender_device"],
                  conversation_id=entry["conversation_id"], epoch=entry["epoch"], wrap=entry["wrap"])
    if entry["wrap"].get("v") != 2:
        try:
            protocol.key_unwrap(recipient_seed=seed, **common)
            return True
        except protocol.ProtocolError:
            return False
    static = protocol.x25519_private(seed)
    spk_candidates = [static, seed, *signed, *one_time, *extra]
    otk_candidates = [None] if entry["wrap"]["one_time_id"] is None else [static, seed, *one_time, *signed]
    for spk in spk_candidates:
        for otk in otk_candidates:
            try:
                protocol.key_unwrap_v2(signed_prekey_priv=spk, one_time_priv=otk, **common)
                return True
            except protocol.ProtocolError:
                pass
    return False


def age_store(home, seconds: int) -> None:
    """The store as it will be `seconds` later: the times of its prekeys moved back (no clock is faked)."""
    client = Client.open(home, PASSPHRASE)
    try:
        with client.store.transaction() as db:
            db.execute("UPDATE signed_prekeys SET created_at = created_at - ?, replaced_at = replaced_at - ?",
                       (seconds, seconds))
    finally:
        client.close()


@pytest.mark.parametrize("bob_protocol", ["1.2", "1.1"])
def test_a_stolen_device_seed_and_a_server_dump_open_no_wrap_after_ack_and_rotation(
        daphne_server, live_database, cli, bob_protocol):
    alice = cli("alice").init(daphne_server.url, "phone")
    bob = cli("bob")
    if bob_protocol == "1.1":  # an old client: no prekeys, v1 wraps only
        bob.env["DMCLIENT_PROTOCOL"] = "1.1"
    bob.init(daphne_server.url, "laptop")
    cid = alice.run("dm", "new", bob.user_id, "--policy", "ttl", "--ttl-days", "30")["conversation"]["conversation_id"]
    said = [text("first"), text("second"), text("third")]
    for body in said:
        alice.run("dm", "send", cid, body)
    seed, signed, one_time = device_privates(bob.home)
    wraps = wraps_for(live_database, bob.device_id)
    assert len(wraps) == 3 and all(w["wrap"].get("v") == (2 if bob_protocol == "1.2" else None) for w in wraps)
    # before: the device opens each wrap with what it holds (the attack below can find a wrap that opens)
    assert all(opens(w, bob.device_id, seed, signed, one_time) for w in wraps)

    assert bodies(bob.read()) == said  # received and ACKed
    if bob_protocol == "1.2":
        age_store(bob.home, SIGNED_PREKEY_ROTATE_S)
        assert bob.run("dm", "prekeys", "--refresh")["signed_prekeys"][-1]["id"] == 2  # rotated
        age_store(bob.home, OLD_SIGNED_PREKEY_KEEP_S)
        info = bob.run("dm", "prekeys", "--refresh")
        assert [(k["id"], k["private_key_held"]) for k in info["signed_prekeys"]] == [(1, False), (2, True), (3, True)]
    # the messages are still on the server, wraps and all (30 days retention)
    wraps = wraps_for(live_database, bob.device_id)
    assert len(wraps) == 3 and all(w["acked"] for w in wraps)
    assert len(live_query(live_database, "SELECT message_id FROM pending_dms")) == 3

    seed_now, signed_now, one_time_now = device_privates(bob.home)
    assert seed_now == seed
    stolen = [opens(w, bob.device_id, seed, signed_now, one_time_now, dump_keys(live_database)) for w in wraps]
    if bob_protocol == "1.2":
        assert stolen == [False, False, False]
        # one claim for the three (the wrap was sent again as it was); its one-time key is gone, the rest stay
        assert len({w["wrap"]["one_time_id"] for w in wraps}) == 1
        assert len(one_time_now) == ONE_TIME_TARGET - 1
    else:
        assert stolen == [True, True, True]  # v1: the device key alone opens every wrap, for ever
    # and bob still reads his history (he kept the key, sealed by his passphrase)
    assert [m["body"] for m in bob.run("dm", "history", cid)["messages"]] == said
    assert_no_plaintext(live_database, said, present=[wraps[0]["message_id"]])


class WithholdingProxy:
    """A real HTTP proxy in front of the live server that answers every prekey
    claim with `signed_prekey: null` while `withhold` (the server hiding that
    devices upgraded). The server's PUBLIC_URL is the proxy's: logins are for it."""

    def __init__(self):
        self.upstream = None
        self.withhold = True
        self.claims = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "connection")}
                answer = httpx.request(self.command, proxy.upstream + self.path, content=body, headers=headers,
                                       timeout=30)
                content = answer.content
                if (proxy.withhold and self.path.startswith("/api/v1/dms/prekeys/claim")
                        and answer.status_code == 200):
                    proxy.claims += 1
                    claimed = answer.json()
                    for entry in claimed["prekeys"]:
                        entry["signed_prekey"] = entry["one_time"] = None
                    content = json.dumps(claimed).encode()
                self.send_response(answer.status_code)
                for k, v in answer.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def withholding(daphne_factory):
    proxy = WithholdingProxy()
    proxy.upstream = daphne_factory(extra_env={"PUBLIC_URL": proxy.url}).url
    yield proxy
    proxy.close()


def test_a_server_withholding_prekeys_cannot_downgrade_an_upgraded_receiver_silently(live_database, cli, withholding):
    alice = cli("alice").init(withholding.url, "phone")
    bob = cli("bob").init(withholding.url, "laptop")
    cid = alice.run("dm", "new", bob.user_id)["conversation"]["conversation_id"]
    # bob published his signed prekey more than 24 h before the message is sent
    client = Client.open(bob.home, PASSPHRASE)
    client.store.meta_set_many({"first_spk_published_at": int(time.time()) - DAY_S - 600})
    client.close()
    body = text("withheld")
    sent = alice.run("dm", "send", cid, body)
    assert sent["key_wraps"] == {"v1": 1, "v2": 0} and withholding.claims == 1
    assert "v" not in wraps_for(live_database, bob.device_id)[0]["wrap"]  # the server holds a v1 wrap
    shown = bob.text("dm", "read")
    assert shown.returncode == 0, shown.stderr
    assert "REJECTED" in shown.stdout and "downgraded_key_wrap" in shown.stdout and body not in shown.stdout
    assert "withheld" in shown.stdout
    assert bob.run("dm", "history", cid)["messages"] == []
    # once the server stops withholding, the same sender wraps v2, and bob reads it
    withholding.withhold = False
    with_v2 = text("with prekeys")
    # a v1 wrap is never sent again: the next message claims afresh, and gets bob's prekeys
    assert alice.run("dm", "send", cid, with_v2)["key_wraps"] == {"v1": 0, "v2": 1}
    assert bodies(bob.read()) == [with_v2]


def test_v2_exchange_and_a_v1_only_cli_both_ways(daphne_server, live_database, cli):
    alice = cli("alice").init(daphne_server.url, "phone")
    laptop = alice.add_device(alice.home.parent / "alice-laptop", "laptop")
    bob = cli("bob").init(daphne_server.url, "laptop")
    old = cli("old")
    old.env["DMCLIENT_PROTOCOL"] = "1.1"
    old.init(daphne_server.url, "old")
    cid = alice.run("dm", "new", bob.user_id, old.user_id)["conversation"]["conversation_id"]
    hello = text("hello all")
    sent = alice.run("dm", "send", cid, hello)
    assert sent["key_wraps"] == {"v1": 1, "v2": 2}  # bob and alice's laptop v2, the old client v1
    for device in (bob, laptop, old):
        assert bodies(device.read()) == [hello]
    reply = text("from the old one")
    assert old.run("dm", "send", cid, reply)["key_wraps"] == {"v1": 3, "v2": 0}
    for device in (alice, laptop, bob):
        assert bodies(device.read()) == [reply]
    answer = text("from bob")
    assert bob.run("dm", "send", cid, answer)["key_wraps"] == {"v1": 1, "v2": 2}
    for device in (alice, laptop, old):
        assert bodies(device.read()) == [answer]
    assert bob.run("dm", "prekeys")["server"]["one_time_count"] == ONE_TIME_TARGET - 1
    info = old.run("dm", "prekeys")
    assert info["legacy"] and info["signed_prekeys"] == [] and info["one_time_private_keys"] == 0
    signed_prekeys_of = ("SELECT count(*) FROM device_signed_prekeys p JOIN devices d ON d.id = p.device_id "
                         "WHERE d.device_id = %s")
    assert live_query(live_database, signed_prekeys_of, [old.device_id]) == [(0,)]
    assert live_query(live_database, signed_prekeys_of, [bob.device_id]) == [(1,)]
    assert_no_plaintext(live_database, [hello, reply, answer], present=[sent["message_id"]])


def test_prekeys_low_makes_a_listener_refill(daphne_server, cli):
    alice = cli("alice").init(daphne_server.url, "phone")
    bob = cli("bob").init(daphne_server.url, "laptop")
    listening = bob.listen()
    listening.wait_event("synced")
    claimer = Client.open(alice.home, PASSPHRASE)
    try:
        for _ in range(ONE_TIME_TARGET - 19):  # 81 claims: 19 left, below 20
            claimer.call("POST", "/dms/prekeys/claim", json={"devices": [bob.device_id]})
        refilled = listening.wait_event("prekeys_refilled", timeout=30)
        assert refilled["one_time_count"] == ONE_TIME_TARGET
    finally:
        claimer.close()
    info = bob.run("dm", "prekeys")
    assert info["server"]["one_time_count"] == ONE_TIME_TARGET
    assert info["one_time_private_keys"] == ONE_TIME_TARGET + 81  # the claimed ones wait for a delivery naming them
