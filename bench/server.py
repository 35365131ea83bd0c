"""The benchmark's own server: a fresh database (a temporary SQLite file, or a
new PostgreSQL database on the cluster DATABASE_URL names), a Redis key prefix
of its own when REDIS_URL is set, and the web tier started as `make run` starts it
(python -m decentcom.serve with WEB_CONCURRENCY daphne workers).
Everything is removed again by `close()`; nothing touches a developer's data."""
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

BASE_DIR = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchDatabase:
    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="decentcom-bench-")
        base = os.environ.get("DATABASE_URL", "")
        self.pg_name = None
        if base.startswith(("postgres://", "postgresql://")):
            import psycopg

            self.pg_name = f"decentcom_bench_{uuid.uuid4().hex[:12]}"
            parts = urlsplit(base)
            self.admin_url = urlunsplit(parts._replace(path="/postgres"))
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.pg_name}"')
            self.url = urlunsplit(parts._replace(path=f"/{self.pg_name}"))
        else:
            self.url = f"sqlite:///{self.tmp.name}/db.sqlite3"
        self.redis_prefix = f"bench-{uuid.uuid4().hex[:8]}"
        # The port is chosen first: production settings need PUBLIC_URL, the origin clients sign.
        self.port = free_port()
        self.public_url = f"http://127.0.0.1:{self.port}"
        # Production settings, as the Procfile runs them (DEBUG=1 only on request: it measures a debug server).
        debug = os.environ.get("BENCH_DEBUG", "0")
        self.env = {**os.environ, "DATABASE_URL": self.url, "VAR_DIR": self.tmp.name, "DEBUG": debug,
                    "REDIS_PREFIX": self.redis_prefix, "PUBLIC_URL": self.public_url}
        if debug.strip().lower() not in ("1", "true", "yes", "on"):
            # Production mode on loopback: no HTTPS redirect, a throwaway key.
            self.env.update(SECRET_KEY=secrets.token_urlsafe(32), SECURE_SSL_REDIRECT="0")
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        self.manage("migrate", "--noinput")

    @property
    def engine(self) -> str:
        return "postgresql" if self.pg_name else "sqlite"

    def manage(self, *args: str) -> str:
        return subprocess.run([sys.executable, "manage.py", *args, "-v", "0"], cwd=BASE_DIR, env=self.env,
                              check=True, capture_output=True, text=True, timeout=120).stdout

    def close(self):
        if self.pg_name:
            import psycopg

            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
        redis_url = os.environ.get("REDIS_URL")
        if redis_url:
            import redis

            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(match=f"{self.redis_prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        self.tmp.cleanup()


class BenchServer:
    """`python -m decentcom.serve` with `processes` daphne workers, as `make run`'s web tier.
    `.pid` is the parent, `.pids` the parent and every worker."""

    def __init__(self, database: BenchDatabase, processes: int = 1):
        self.port = database.port
        self.log_path = Path(database.tmp.name) / "serve.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "decentcom.serve", "-b", "127.0.0.1", "-p", str(self.port)],
                cwd=BASE_DIR, env={**database.env, "WEB_CONCURRENCY": str(processes)},
                stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        try:
            self.pids = [self.pid, *serve_workers(self.proc, processes, self.port)]
        except RuntimeError:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def stop_after(seconds: int) -> None:
    """A bench's guard: TimeoutError after `seconds`, and SIGTERM as an exit,
    so that its `finally` stops the server and drops the database either way."""
    def on_timeout(*_):
        raise TimeoutError(f"the bench ran over {seconds} s")

    signal.signal(signal.SIGALRM, on_timeout)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.alarm(seconds)


# --- a server process seen from outside -------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the resident set's high-water mark."""
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) * 1024


def listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on TCP `port` on this machine."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # LISTEN
                inodes.add(cols[9])
    return inodes


def pid_listening_on(port: int) -> int | None:
    """The local process with a listening TCP socket on `port`, if we may see it."""
    inodes = listening_inodes(port)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def serve_workers(proc: subprocess.Popen, count: int, port: int, timeout_s: float = 30) -> list[int]:
    """The daphne workers of a `decentcom.serve` parent, once every one serves:
    its event loop polls a socket listening on `port`, which Twisted starts
    only after the application (Django) is loaded."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"decentcom.serve exited with {proc.returncode}")
        pids = [int(pid) for pid in children.read_text().split()]
        inodes = listening_inodes(port)
        if len(pids) == count and all(_polls_one_of(pid, inodes) for pid in pids):
            return pids
        time.sleep(0.1)
    raise RuntimeError(f"decentcom.serve: {count} workers not serving in {timeout_s:.0f} s")


def _polls_one_of(pid: int, inodes: set[str]) -> bool:
    """Whether an epoll instance of `pid` watches one of these sockets."""
    try:
        for info in Path(f"/proc/{pid}/fdinfo").iterdir():
            try:
                for fd in re.findall(r"^tfd:\s+(\d+)\s", info.read_text(), re.M):
                    if os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] in inodes:
                        return True
            except OSError:
                continue
    except OSError:
        pass
    return False
