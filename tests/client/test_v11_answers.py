"""The client side of the v1.1 answers (issue 10 points 5-9), with a liar in
front of the real in-process server (`LyingServer`): `skipped` devices and
`429 mailbox_full` on send, registration only by the device's own login,
`GET /server` as a hint, the paged conversation list, and device names."""
import json
import time

import httpx
import pytest

from dmclient import ClientError, cli
from dmclient.client import LONGEST_RETENTION_DAYS
from tests.client.conftest import PASSPHRASE


def is_(request: httpx.Request, method: str, path: str) -> bool:
    return request.method == method and request.url.path == f"/api/v1{path}"


def answer(status: int, body: dict, **headers) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


@pytest.fixture
def pair(new_client, lying):
    alice, bob = new_client("alice", transport=lying), new_client("bob")
    conversation, _ = alice.create_conversation([bob.user_id])
    return alice, bob, conversation["conversation_id"]


def cli_run(capsys, client, *argv: str, transport) -> tuple[int, str, str]:
    code = cli.main(["--home", str(client.store.path.parent), *argv], transport=transport)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- point 5: skipped devices and a mailbox that is full everywhere -------------------------------

def test_skipped_devices_are_returned_and_shown(pair, lying, capsys, monkeypatch):
    alice, bob, cid = pair

    def skip_bob(request, forward):
        if is_(request, "POST", "/dms/send"):
            real = forward(request)
            return answer(real.status_code, {**real.json(), "skipped": [
                {"device_id": bob.device_id, "reason": "mailbox_full"}]})
    lying.rewrite = skip_bob
    result = alice.send(cid, "one")
    assert result.skipped == [{"device_id": bob.device_id, "user_id": bob.user_id, "reason": "mailbox_full"}]
    monkeypatch.setenv("DMCLIENT_PASSPHRASE", PASSPHRASE)
    code, out, err = cli_run(capsys, alice, "dm", "send", cid, "two", transport=lying)
    assert code == 0 and out.startswith("sent ")
    assert f"not delivered to device {bob.device_id} of {bob.user_id[:8]}, mailbox full" in err
    lying.rewrite = None
    assert alice.send(cid, "three").skipped == []  # an older server without the key


def test_mailbox_full_everywhere_is_an_error_not_a_retry_loop(pair, lying):
    alice, bob, cid = pair
    refused = []

    def full(request, forward):
        if is_(request, "POST", "/dms/send") and len(refused) < 3:
            refused.append(request)
            return answer(429, {"error": "mailbox_full", "detail": "every mailbox is full",
                                "devices": [bob.device_id]}, **{"Retry-After": "1"})
    lying.rewrite = full
    started = time.monotonic()
    with pytest.raises(ClientError) as exc:
        alice.send(cid, "one")
    assert (exc.value.code, exc.value.extra["devices"], len(refused)) == ("mailbox_full", [bob.device_id], 1)
    assert time.monotonic() - started < 1


# --- point 6: a device registers only by its own login --------------------------------------------

def test_a_new_device_registers_by_its_own_login(new_client, lying, tmp_path):
    alice = new_client("alice", transport=lying)
    laptop = alice.add_device(tmp_path / "laptop", PASSPHRASE, name="laptop", kdf="min")
    assert not [r for r in lying.requests if is_(r, "POST", "/devices")]
    verify = [json.loads(r.content) for r in lying.requests if is_(r, "POST", "/auth/verify")]
    first = next(v for v in verify if v["pubkey"] == laptop.device_id)
    assert first["certificate"]["device"] == laptop.device_id  # signed by the laptop's key, with its certificate
    assert laptop.device_id in {d["device_id"] for d in alice.devices()}
    laptop.close()


# --- point 7: GET /server, a hint --------------------------------------------------------------

def describe(max_ttl_days: int):
    def rewrite(request, forward):
        if is_(request, "GET", "/server"):
            return answer(200, {"protocol": "1.1", "origin": "http://testserver", "retention": {
                "default": {"policy": "ttl", "ttl_days": 7}, "max_ttl_days": max_ttl_days,
                "permanent_allowed": False, "max_undelivered_days": 30}, "limits": {},
                "gateway": {"url": "ws://testserver/api/v1/gateway", "heartbeat_interval_ms": 30000}})
    return rewrite


def test_ttl_bounds_in_errors_come_from_get_server_and_never_widen(new_client, lying, capsys, monkeypatch):
    monkeypatch.setenv("DMCLIENT_PASSPHRASE", PASSPHRASE)
    alice, bob = new_client("alice"), new_client("bob")
    new = ("--json", "dm", "new", bob.user_id, "--policy", "ttl")
    lying.rewrite = describe(90)
    for extra in ((), ("--ttl-days", "91"), ("--ttl-days", "0")):
        code, out, _ = cli_run(capsys, alice, *new, *extra, transport=lying)
        error = json.loads(out)
        assert (code, error["error"], error["max_ttl_days"]) == (1, "invalid_retention", 90)
        assert "--ttl-days 1..90 (this server's max_ttl_days)" in error["detail"]
    lying.rewrite = describe(100000)  # a server that claims more does not widen the client's own bound
    code, out, _ = cli_run(capsys, alice, *new, "--ttl-days", str(LONGEST_RETENTION_DAYS + 1), transport=lying)
    assert (code, json.loads(out)["max_ttl_days"]) == (1, LONGEST_RETENTION_DAYS)
    def older_server(request, forward):  # no GET /server (404 from a v1 server): the client's own bounds
        if is_(request, "GET", "/server"):
            return answer(404, {"error": "not_found", "detail": "no such endpoint"})
    lying.rewrite = older_server
    code, out, _ = cli_run(capsys, alice, *new, transport=lying)
    assert (code, json.loads(out)["detail"]) == (
        1, f"--ttl-days is missing: --policy ttl needs --ttl-days 1..{LONGEST_RETENTION_DAYS} (this client's longest)")
    assert not [r for r in lying.requests if is_(r, "POST", "/dms/conversations")]  # nothing was created
    code, out, _ = cli_run(capsys, alice, *new, "--ttl-days", "5", transport=lying)
    assert code == 0 and json.loads(out)["conversation"]["retention"] == {"policy": "ttl", "ttl_days": 5}


# --- point 8: the paged conversation list ----------------------------------------------------------

def test_every_page_of_the_conversation_list_is_read(new_client, lying):
    """A v1.1 server pages GET /dms/conversations; here one conversation a page."""
    alice = new_client("alice", transport=lying)
    others = [new_client(f"user{i}") for i in range(3)]
    made = {alice.create_conversation([o.user_id])[0]["conversation_id"] for o in others}
    assert {c["conversation_id"] for c in alice.conversations()} == made  # the old shape, one list
    asked = []

    def one_a_page(request, forward):
        if is_(request, "GET", "/dms/conversations"):
            asked.append(dict(request.url.params))
            everything = forward(httpx.Request("GET", request.url.copy_with(query=None), headers=request.headers))
            listed = everything.json()["conversations"]
            start = int(request.url.params.get("after", "0"))
            return answer(200, {"conversations": listed[start:start + 1], "has_more": start + 1 < len(listed),
                                "cursor": str(start + 1)})
    lying.rewrite = one_a_page
    assert {c["conversation_id"] for c in alice.conversations()} == made
    assert [a.get("after") for a in asked] == [None, "1", "2"]
    assert alice.store.db.execute("SELECT count(*) FROM conversations WHERE member = 1").fetchone()[0] == 3
    left = [e for e in alice.take_unshown() if e.get("kind") == "membership" and e.get("removed")]
    assert left == []  # conversations on later pages are not taken for ones we left


# --- point 9: one rule for device names, before any network call -----------------------------------

@pytest.mark.parametrize("name", ["evil\u202etxt.exe", "two\nlines", "bell\x07", "c1\x85", "zero\u200bwidth",
                                  "   ", "x" * 65, ""])
def test_a_bad_device_name_is_refused_before_any_network_call(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setenv("DMCLIENT_PASSPHRASE", "x")
    home = tmp_path / "new"
    # port 9: nothing listens, so any network call would be a network_error
    assert cli.main(["--json", "--home", str(home), "init", "--server", "http://127.0.0.1:9", "--name", name]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "invalid_name"
    assert not home.exists()


def test_device_add_and_certify_refuse_a_bad_name(new_client, capsys, monkeypatch, tmp_path, lying):
    monkeypatch.setenv("DMCLIENT_PASSPHRASE", PASSPHRASE)
    alice = new_client("alice")
    for argv in (["device", "add", "--name", "a\u2066b", "--to", str(tmp_path / "laptop")],
                 ["device", "certify", alice.device_id, "--name", "a\x1b[2Jb"]):
        code, out, _ = cli_run(capsys, alice, "--json", *argv, transport=lying)
        assert (code, json.loads(out)["error"]) == (1, "invalid_name")
    assert lying.requests == [] and not (tmp_path / "laptop").exists()
    with pytest.raises(ClientError) as exc:
        alice.certify(alice.device_id, name="a\u202eb")
    assert exc.value.code == "invalid_name"
