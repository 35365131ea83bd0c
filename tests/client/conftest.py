"""Fixtures for the reference client's tests.

`inproc`: the real server application in this process (Django's WSGI handler
behind httpx's WSGI transport, on the test database), so a test can play a
malicious server by changing rows between a send and a sync. The end-to-end
tests use real daphne processes instead (`daphne_server`)."""
import json
import os
import queue
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dmclient import Client

PASSPHRASE = "correct horse battery staple"
BASE_DIR = Path(__file__).resolve().parent.parent.parent


@dataclass
class InProcessServer:
    url: str
    transport: httpx.BaseTransport


@pytest.fixture
def inproc(db):
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    # As Django's test client does: the connection must survive requests inside the test's transaction.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield InProcessServer(url="http://testserver", transport=httpx.WSGITransport(app=WSGIHandler()))
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


class LyingServer(httpx.BaseTransport):
    """The real server with a liar in front: `rewrite(request, forward)` may
    answer a request itself or change the real answer (`forward(request)`);
    returning None passes it through. Every request is kept in `requests`."""

    def __init__(self, transport: httpx.BaseTransport):
        self.transport = transport
        self.rewrite = None
        self.requests: list[httpx.Request] = []

    def forward(self, request: httpx.Request) -> httpx.Response:
        response = self.transport.handle_request(request)
        response.read()
        return response

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.rewrite(request, self.forward) if self.rewrite is not None else None
        return self.forward(request) if answer is None else answer


@pytest.fixture
def lying(inproc) -> LyingServer:
    return LyingServer(inproc.transport)


@pytest.fixture
def new_client(inproc, tmp_path):
    """A fresh user with one device (its store in tmp_path), registered on `inproc`
    (or through `transport`, e.g. a `LyingServer` in front of it)."""
    clients = []

    def make(name: str = "device", transport: httpx.BaseTransport | None = None) -> Client:
        client = Client.init(tmp_path / f"{name}-{uuid.uuid4().hex[:6]}", PASSPHRASE, server=inproc.url,
                             name=name, kdf="min", transport=transport or inproc.transport)
        clients.append(client)
        return client

    def add_device(client: Client, name: str = "second") -> Client:
        new = client.add_device(tmp_path / f"{name}-{uuid.uuid4().hex[:6]}", PASSPHRASE, name=name, kdf="min")
        clients.append(new)
        return new

    make.add_device = add_device
    yield make
    for client in clients:
        client.close()


# --- end-to-end: the CLI in processes of its own --------------------------------------------------

class Cli:
    """One device's store, driven through `python -m dmclient --json`."""

    def __init__(self, home: Path, listeners: list | None = None, *, command: list[str] | None = None,
                 cwd: Path = BASE_DIR):
        self.home = home
        self.listeners = listeners if listeners is not None else []
        self.env = {**os.environ, "DMCLIENT_PASSPHRASE": PASSPHRASE, "DMCLIENT_KDF": "min"}
        self.user_id = self.device_id = None
        self.command = command or [sys.executable, "-m", "dmclient"]  # or an installed `dmc`
        self.cwd = cwd

    def args(self, *args: str, json_output: bool = True) -> list[str]:
        return [*self.command, "--home", str(self.home), *(["--json"] if json_output else []), *args]

    def text(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        """The command without --json: what a person sees."""
        return subprocess.run(self.args(*args, json_output=False), cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=60, input=input)

    def run(self, *args: str, expect_error: str | None = None, timeout: float = 60, input: str | None = None) -> dict:
        proc = subprocess.run(self.args(*args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input)
        lines = proc.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {}
        self.last_stderr = proc.stderr
        if expect_error is None:
            assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
        else:
            assert proc.returncode == 1 and result.get("error") == expect_error, f"{args}: {proc.stdout}\n{proc.stderr}"
        return result

    def init(self, server_url: str, name: str) -> "Cli":
        me = self.run("init", "--server", server_url, "--name", name)
        self.user_id, self.device_id = me["user_id"], me["device_id"]
        return self

    def add_device(self, home: Path, name: str) -> "Cli":
        me = self.run("device", "add", "--name", name, "--to", str(home))
        other = Cli(home, self.listeners, command=self.command, cwd=self.cwd)
        other.user_id, other.device_id = me["user_id"], me["device_id"]
        return other

    def read(self) -> dict:
        return self.run("dm", "read")

    def bodies(self) -> list[str]:
        """Sync, and the bodies of the messages accepted by that sync."""
        return [i["body"] for i in self.read()["items"] if i["type"] == "message"]

    def listen(self, *extra: str) -> "Listening":
        listening = Listening(subprocess.Popen(self.args("dm", "listen", *extra), cwd=self.cwd, env=self.env,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1))
        self.listeners.append(listening)
        return listening


class Listening:
    """A running `dm listen --json`: its JSON lines, read as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(proc.stderr, False), daemon=True).start()

    def _pump(self, stream, is_stdout: bool) -> None:
        for line in stream:
            if is_stdout:
                self.lines.put(json.loads(line))
            else:
                self.stderr.append(line)

    def wait_for(self, predicate, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"not seen in {timeout} s; seen {self.seen}; stderr {''.join(self.stderr)}") from None
            self.seen.append(item)
            if predicate(item):
                return item

    def wait_event(self, event: str, timeout: float = 20) -> dict:
        return self.wait_for(lambda i: i.get("event") == event, timeout)

    def wait_body(self, body: str, timeout: float = 20) -> dict:
        return self.wait_for(lambda i: i.get("type") == "message" and i.get("body") == body, timeout)

    def drain(self, seconds: float) -> None:
        """Collect what comes for `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.seen.append(self.lines.get(timeout=left))
            except queue.Empty:
                return

    def bodies(self) -> list[str]:
        return [i["body"] for i in self.seen if i.get("type") == "message"]

    def events(self, event: str) -> list[dict]:
        return [i for i in self.seen if i.get("event") == event]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=10)


@pytest.fixture
def cli(tmp_path):
    listeners: list[Listening] = []

    def make(name: str) -> Cli:
        return Cli(tmp_path / name, listeners)
    yield make
    for listening in listeners:
        listening.stop()


def live_query(live_database, sql: str, params: list = ()) -> list[tuple]:
    """A query on a live server's database; `%s` placeholders, uuid.UUID for UUID columns."""
    if live_database.pg_name:
        import psycopg

        with psycopg.connect(live_database.url) as conn:
            return [tuple(row) for row in conn.execute(sql, params)]
    params = [p.hex if isinstance(p, uuid.UUID) else p for p in params]  # Django keeps UUIDs as hex in SQLite
    with sqlite3.connect(live_database.url.removeprefix("sqlite:///")) as conn:
        return conn.execute(sql.replace("%s", "?"), params).fetchall()


def database_dump(live_database) -> list[tuple[str, str, object]]:
    """(table, column, value) for every column of every row of every table of a live server's database."""
    out = []
    if live_database.pg_name:
        import psycopg

        with psycopg.connect(live_database.url) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
                "AND table_type = 'BASE TABLE'")]
            for table in tables:
                cursor = conn.execute(f'SELECT * FROM "{table}"')
                columns = [c.name for c in cursor.description]
                out += [(table, col, val) for row in cursor for col, val in zip(columns, row)]
    else:
        path = live_database.url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                cursor = conn.execute(f'SELECT * FROM "{table}"')
                columns = [c[0] for c in cursor.description]
                out += [(table, col, val) for row in cursor for col, val in zip(columns, row)]
    return out


def assert_no_plaintext(live_database, bodies: list[str], present: list[str]) -> None:
    """No body in any column of any table; `present` (ids the server must hold) proves the scan reads data."""
    cells = []
    for table, column, value in database_dump(live_database):
        raw = bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
        cells.append((table, column, raw))
    for body in bodies:
        needle = body.encode()
        hits = [(t, c) for t, c, raw in cells if needle in raw]
        assert not hits, f"plaintext {body!r} found in {hits}"
    for marker in present:
        assert any(marker.encode() in raw for _, _, raw in cells), f"{marker} not found: the scan reads nothing"
