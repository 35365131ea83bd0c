"""`dmc jsonrpc` (standard input/output) and `dmc daemon --socket PATH`:
JSON-RPC 2.0 with real processes against a live daphne."""
import itertools
import json
import os
import queue
import socket
import stat
import subprocess
import threading
import time

import pytest

pytestmark = pytest.mark.live


class Peer:
    """One JSON-RPC connection: calls answered by id, notifications kept in order."""

    def __init__(self, write, lines):
        self.write = write
        self.answers: dict = {}
        self.notes: queue.Queue = queue.Queue()
        self.ids = itertools.count(1)
        self.lock = threading.Condition()
        threading.Thread(target=self._pump, args=(lines,), daemon=True).start()

    def _pump(self, lines):
        for line in lines:
            obj = json.loads(line)
            if "id" in obj and "method" not in obj:
                with self.lock:
                    self.answers[obj["id"]] = obj
                    self.lock.notify_all()
            else:
                self.notes.put(obj)

    def raw(self, line: str, rid) -> dict:
        self.write(line + "\n")
        with self.lock:
            assert self.lock.wait_for(lambda: rid in self.answers, timeout=60), f"no answer to {line}"
            return self.answers.pop(rid)

    def call(self, method: str, **params) -> dict:
        rid = next(self.ids)
        return self.raw(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}), rid)

    def result(self, method: str, **params):
        answer = self.call(method, **params)
        assert "result" in answer, answer
        return answer["result"]

    def note(self, predicate, timeout: float = 30) -> dict:
        deadline, seen = time.monotonic() + timeout, []
        while True:
            try:
                note = self.notes.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"not notified in {timeout} s; seen {seen}") from None
            seen.append(note)
            if predicate(note):
                return note


def received(body: str):
    return lambda n: n["method"] == "receive" and n["params"].get("body") == body


def connected(n):
    return n["method"] == "listener" and n["params"].get("event") == "connected"


def two_people(daphne_server, cli):
    alice, bob = cli("alice").init(daphne_server.url, "phone"), cli("bob").init(daphne_server.url, "bot")
    cid = alice.run("dm", "new", bob.user_id)["conversation"]["conversation_id"]
    return alice, bob, cid


def test_jsonrpc_over_standard_input_and_output(daphne_server, cli):
    alice, bob, cid = two_people(daphne_server, cli)
    proc = subprocess.Popen(bob.args("jsonrpc", json_output=False), cwd=bob.cwd, env=bob.env, text=True, bufsize=1,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        bot = Peer(lambda s: (proc.stdin.write(s), proc.stdin.flush()), proc.stdout)
        bot.note(connected)
        status = bot.result("status")
        assert (status["user_id"], status["device_id"], status["gateway"]) == (bob.user_id, bob.device_id, "connected")

        alice.run("dm", "send", cid, "hello bot")
        note = bot.note(received("hello bot"))  # pushed as it arrives, no call needed
        assert (note["params"]["sender"], note["params"]["conversation_id"]) == (alice.user_id, cid)
        assert bot.result("read")["items"] == []  # already delivered, as a notification: never twice

        sent = bot.result("send", conversation=cid[:8], text="hello human")
        assert sent["conversation_id"] == cid and sent["recipients"] == 1
        assert alice.bodies() == ["hello human"]
        assert [c["conversation_id"] for c in bot.result("conversations")["conversations"]] == [cid]
        assert bot.result("contacts") == {"contacts": [{"user_id": alice.user_id, "conversations": [cid]}]}
        assert [d["device_id"] for d in bot.result("devices")["devices"]] == [bob.device_id]
        prekeys = bot.result("prekeys", refresh=True)
        assert [k["id"] for k in prekeys["signed_prekeys"]] == [1] and prekeys["server"]["one_time_count"] == 99  # alice claimed one
        assert [m["body"] for m in bot.result("history", conversation=cid)["messages"]] == ["hello bot", "hello human"]

        assert bot.raw("{not json", None)["error"]["code"] == -32700
        assert bot.call("nope")["error"]["code"] == -32601
        assert bot.call("send", conversation=cid)["error"]["code"] == -32602  # no text
        error = bot.call("send", conversation=cid, text="  ")["error"]
        assert (error["code"], error["data"]["error"]) == (-32000, "empty_message")
        error = bot.call("send", conversation="ffffffff", text="x")["error"]
        assert (error["code"], error["data"]["error"]) == (-32000, "unknown_conversation")
        proc.stdin.close()  # end of input ends the session
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_daemon_on_a_unix_socket(daphne_server, cli, tmp_path):
    alice, bob, cid = two_people(daphne_server, cli)
    path = tmp_path / "bob.sock"
    proc = subprocess.Popen(bob.args("daemon", "--socket", str(path), json_output=False), cwd=bob.cwd, env=bob.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peers = []
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.1)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # the socket holds the store's powers: the user's only
        for _ in range(2):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(path))
            stream = sock.makefile("rw", encoding="utf-8", newline="\n")
            peers.append(Peer(lambda s, f=stream: (f.write(s), f.flush()), stream))
        first, second = peers
        assert first.result("status")["user_id"] == bob.user_id

        alice.run("dm", "send", cid, "to every peer")
        for peer in peers:  # each connected program is notified
            assert peer.note(received("to every peer"))["params"]["sender"] == alice.user_id
        assert second.result("send", conversation=cid, text="from the daemon")["recipients"] == 1
        assert alice.bodies() == ["from the daemon"]

        # a second daemon on a live socket is refused; the first keeps it
        again = bob.run("daemon", "--socket", str(path), expect_error="daemon_running")
        assert again["detail"].startswith("a daemon already answers")
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        assert not path.exists()  # removed on the way out
    finally:
        if proc.poll() is None:
            proc.kill()
