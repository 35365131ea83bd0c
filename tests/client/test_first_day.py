"""Issue 14, the client's first day (points 3, 5, 6, 11): CLI processes against
a live daphne."""
import http.server
import threading

import pytest

from tests.live import free_port

pytestmark = pytest.mark.live


class Redirecting(http.server.BaseHTTPRequestHandler):
    """What a production deployment behind SECURE_SSL_REDIRECT answers on plain HTTP."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(301)
        self.send_header("Location", f"https://{self.headers['Host']}{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def redirecting_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_failed_init_leaves_no_store_and_names_the_cause(daphne_server, redirecting_server, cli):
    alice = cli("alice")
    closed = f"http://127.0.0.1:{free_port()}"
    error = alice.run("init", "--server", closed, "--name", "phone", expect_error="network_error")
    assert error["detail"].startswith(f"cannot reach {closed} (ConnectError")
    assert not (alice.home / "store.sqlite3").exists()

    error = alice.run("init", "--server", redirecting_server, "--name", "phone", expect_error="redirected")
    assert error["detail"].startswith(f"the server forces HTTPS: it redirects {redirecting_server} to https://")
    assert error["location"].startswith("https://127.0.0.1:") and error["status"] == 301
    assert not (alice.home / "store.sqlite3").exists()
    shown = alice.text("init", "--server", redirecting_server, "--name", "phone")
    assert shown.returncode == 1 and "the server forces HTTPS" in shown.stderr and "registered" not in shown.stdout

    alice.init(daphne_server.url, "phone")  # no store_exists: the failures left nothing behind
    assert alice.run("dm", "list") == {"conversations": []}


def test_server_set_points_a_store_at_another_address_of_its_server(daphne_server, cli):
    alice, bob = cli("alice").init(daphne_server.url, "phone"), cli("bob").init(daphne_server.url, "laptop")
    cid = alice.run("dm", "new", bob.user_id)["conversation"]["conversation_id"]
    other_name = f"http://localhost:{daphne_server.port}"  # the same server under another name (a new origin)
    assert alice.run("server", "set", other_name)["server"] == other_name
    assert alice.run("whoami")["server"] == other_name
    alice.run("dm", "send", cid, "from the new address")  # logs in at the new origin
    assert bob.bodies() == ["from the new address"]

    closed = f"http://127.0.0.1:{free_port()}"
    alice.run("server", "set", closed, expect_error="network_error")
    alice.run("server", "set", "ftp://example.org", expect_error="invalid_server")
    assert alice.run("whoami")["server"] == other_name  # a failed change changes nothing


def test_read_shows_membership_changes_without_a_message_and_no_epoch_numbers(daphne_server, cli):
    alice, bob, carol = (cli(n).init(daphne_server.url, n) for n in ("alice", "bob", "carol"))
    cid = alice.run("dm", "new", bob.user_id, carol.user_id)["conversation"]["conversation_id"]
    bob.read(), carol.read()
    alice.run("dm", "remove", cid, carol.user_id)
    alice.run("device", "add", "--name", "laptop", "--to", str(alice.home.parent / "alice-laptop"))  # epoch +1

    shown = bob.text("dm", "read")  # no message was sent: the change shows all the same
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [f"[{cid[:8]}] * members removed {carol.user_id[:8]}"]
    assert "epoch" not in bob.text("dm", "list").stdout
    events = [i for i in carol.read()["items"] if i.get("kind") == "membership"]
    assert events and events[-1]["removed"] == [carol.user_id] and "epoch" in events[-1]  # JSON keeps it


def test_send_reads_standard_input_for_dash_and_refuses_an_empty_message(daphne_server, cli):
    alice, bob = cli("alice").init(daphne_server.url, "phone"), cli("bob").init(daphne_server.url, "laptop")
    cid = alice.run("dm", "new", bob.user_id)["conversation"]["conversation_id"]
    alice.run("dm", "send", cid, "-", input="first line\nsecond line\n")
    alice.run("dm", "send", cid, "-", input="-\n")  # a message that is only a dash goes through stdin
    for empty in ("", "\n", "  \n\t"):
        alice.run("dm", "send", cid, "-", input=empty, expect_error="empty_message")
    alice.run("dm", "send", cid, "", expect_error="empty_message")
    assert bob.bodies() == ["first line\nsecond line", "-"]


def test_small_confusions_ttl_flag_and_burn_on_read_expiry(daphne_server, cli):
    alice, bob = cli("alice").init(daphne_server.url, "phone"), cli("bob").init(daphne_server.url, "laptop")
    error = alice.run("dm", "new", bob.user_id, "--policy", "ttl", expect_error="invalid_retention")
    assert error["detail"].startswith("--ttl-days is missing: --policy ttl needs --ttl-days 1..")
    cid = alice.run("dm", "new", bob.user_id, "--policy", "burn_on_read")["conversation"]["conversation_id"]
    shown = alice.text("dm", "send", cid, "gone once read")
    assert shown.returncode == 0, shown.stderr
    assert "burn_on_read: deleted once read by every recipient device; unread copies are dropped 20" in shown.stdout
