"""Real server processes for end-to-end tests: daphne on a free port, as
`make run` starts it, on a database of its own (a temporary SQLite file, or
a fresh PostgreSQL database when DATABASE_URL points at PostgreSQL), sharing
Redis when REDIS_URL is set."""
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from bench.server import serve_workers

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveDatabase:
    """A database of its own for a group of live server processes."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="decentcom-live-")
        base = os.environ.get("DATABASE_URL", "")
        self.pg_name = None
        if base.startswith(("postgres://", "postgresql://")):
            import psycopg

            self.pg_name = f"decentcom_live_{uuid.uuid4().hex[:12]}"
            parts = urlsplit(base)
            self.admin_url = urlunsplit(parts._replace(path="/postgres"))
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.pg_name}"')
            self.url = urlunsplit(parts._replace(path=f"/{self.pg_name}"))
        else:
            self.url = f"sqlite:///{self.tmp.name}/db.sqlite3"
        self.env = {**os.environ, "DATABASE_URL": self.url, "DEBUG": "1", "VAR_DIR": self.tmp.name,
                    "REDIS_PREFIX": f"live-{uuid.uuid4().hex[:8]}"}
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                       cwd=BASE_DIR, env=self.env, check=True)

    def sql(self, query: str, params=()) -> list[tuple]:
        """Run one statement on this database from the test process."""
        if self.pg_name:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                cursor = conn.execute(query, params)
                return cursor.fetchall() if cursor.description else []
        import sqlite3

        conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30)
        try:
            rows = conn.execute(query.replace("%s", "?"), params).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    def manage(self, *args: str) -> str:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=self.env,
                              check=True, capture_output=True, text=True).stdout

    def close(self):
        if self.pg_name:
            import psycopg

            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        self.tmp.cleanup()


class LiveServer:
    """One daphne process serving the whole ASGI application or, with
    `processes`, `python -m decentcom.serve` and that many daphne workers."""

    def __init__(self, database: LiveDatabase, *, port: int | None = None, extra_env: dict | None = None,
                 processes: int | None = None):
        self.database = database
        self.port = port or free_port()
        self.extra_env = extra_env or {}
        self.processes = processes
        self.proc = None
        self.log_path = Path(database.tmp.name) / f"daphne-{self.port}.log"
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/gateway"

    def start(self):
        log = open(self.log_path, "ab")
        env = {**self.database.env, **self.extra_env}
        if self.processes is None:
            command = ["-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "decentcom.asgi:application"]
        else:
            command = ["-m", "decentcom.serve", "-b", "127.0.0.1", "-p", str(self.port)]
            env["WEB_CONCURRENCY"] = str(self.processes)
        self.proc = subprocess.Popen([sys.executable, *command], cwd=BASE_DIR, env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daphne exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    if self.processes is not None:
                        self.worker_pids()  # every worker serves, not only the first
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("daphne did not start in 30 s")

    def worker_pids(self) -> list[int]:
        """decentcom.serve's daphne workers, once all serve."""
        return serve_workers(self.proc, self.processes, self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self):
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def pid_holding_connection(local_port: int, server_pids: list[int]) -> int | None:
    """Which of `server_pids` holds the server end of our TCP connection from `local_port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[2].rsplit(":", 1)[1], 16) == local_port and cols[3] == "01":  # ESTABLISHED
                inodes.add(f"socket:[{cols[9]}]")
    for pid in server_pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    return None
