"""The CLI's text output of untrusted data (issue 10 point 3): a message body
cannot forge a line of the CLI or drive the terminal; `--json` stays exact.
Through CLI processes against the real server."""
import subprocess
import sys

import pytest

from dmclient.cli import CONTINUATION, body_text, fit, visible
from tests.client.conftest import BASE_DIR

pytestmark = pytest.mark.live

HOSTILE = "hi\n[conv] 12:00 mallory: fake\x1b]0;title\x07\x1b[2J\u202eevil\u2066x\u200b\r\x9b31m"


def test_a_hostile_body_cannot_forge_a_line_or_reach_the_terminal(daphne_server, cli):
    alice = cli("alice").init(daphne_server.url, "phone")
    bob = cli("bob").init(daphne_server.url, "laptop")
    cid = alice.run("dm", "new", bob.user_id)["conversation"]["conversation_id"]
    alice.run("dm", "send", cid, HOSTILE)
    alice.run("dm", "send", cid, "second")

    proc = subprocess.run([sys.executable, "-m", "dmclient", "--home", str(bob.home), "dm", "read"], cwd=BASE_DIR,
                          env=bob.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    messages = [line for line in lines if line.startswith(f"[{cid[:8]}] ") and " #" in line]
    assert len(messages) == 2, lines  # the body's "[conv] ..." line is no line of its own
    assert [line for line in lines if line.startswith("[conv]")] == []
    assert f"{CONTINUATION}[conv] 12:00 mallory: fake" in lines[lines.index(messages[0]) + 1]
    for raw in ("\x1b", "\x07", "\u202e", "\u2066", "\u200b", "\r", "\x9b"):
        assert raw not in proc.stdout + proc.stderr
    assert "\\x1b]0;title\\x07\\x1b[2J\\u202eevil\\u2066x\\u200b\\r\\x9b31m" in proc.stdout

    # --json: the exact body, JSON-escaped
    again = alice.run("dm", "send", cid, HOSTILE)
    read = bob.read()
    assert [i["body"] for i in read["items"] if i["type"] == "message"] == [HOSTILE]
    assert again["message_id"] in {i["message_id"] for i in read["items"]}


def test_visible_escapes_every_invisible_or_controlling_character():
    assert visible("plain text, ünïcödé, 日本語") == "plain text, ünïcödé, 日本語"
    assert visible("a\nb\tc\x00\x7f\x85\u2028\u2029\u061c\ufeff\U000e0001") == (
        "a\\nb\\tc\\x00\\x7f\\x85\\u2028\\u2029\\u061c\\ufeff\\U000e0001")
    assert body_text("one\ntwo\n\nthree") == f"one\n{CONTINUATION}two\n{CONTINUATION}\n{CONTINUATION}three"


def test_lines_wider_than_the_terminal_are_broken_behind_the_continuation_mark():
    """The terminal's own wrap would put the tail of a long body at column 0."""
    width = 40
    line = "[abcdef12] 12:00 me/xyz #1: " + "x" * (width - 28) + "[conv] 12:00 mallory: fake"
    rows = fit(line, width).split("\n")
    assert rows[0] == line[:width] and rows[1] == CONTINUATION + "[conv] 12:00 mallory: fake"
    assert all(len(row) <= width for row in rows)
    wide = fit("日本語" * 10, 10).split("\n")  # two columns each
    assert wide[0] == "日本語日本" and all(row.startswith(CONTINUATION) for row in wide[1:])
    assert fit("short\n  | two", width) == "short\n  | two"
