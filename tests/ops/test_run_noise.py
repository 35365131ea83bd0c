"""Point 8: no log noise at start. `make run` (decentcom.run) refuses a busy
port before it starts anything and says "is running" only once daphne listens;
the embedded broker's URL names a host, so kombu does not warn in each process."""
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time

import httpx
import pytest
from kombu import Connection

from decentcom.celery import app
from tests.live import BASE_DIR, free_port


def run_env(tmp: str, port: int) -> dict:
    env = {**os.environ, "DEBUG": "1", "VAR_DIR": tmp, "PORT": str(port), "DATABASE_URL": f"sqlite:///{tmp}/db.sqlite3",
           "REDIS_URL": ""}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def test_a_busy_port_fails_at_once_without_saying_it_is_running():
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "decentcom.run"], cwd=BASE_DIR, capture_output=True, text=True,
                                env=run_env(tmp, busy.getsockname()[1]), timeout=60)
    assert result.returncode == 1
    assert "is already in use" in result.stderr and "PORT=" in result.stderr
    assert "is running" not in result.stdout
    assert "celery" not in result.stderr.lower()  # nothing else was started
    assert time.monotonic() - started < 30


@pytest.mark.live
def test_make_run_says_it_is_running_once_it_listens_and_kombu_stays_quiet():
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = run_env(tmp, port)
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=BASE_DIR, env=env,
                       check=True)
        out = open(os.path.join(tmp, "run.log"), "w+")
        proc = subprocess.Popen([sys.executable, "-m", "decentcom.run"], cwd=BASE_DIR, env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            while "is running" not in open(out.name).read() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert "is running" in open(out.name).read()
            # printed once it listens: the port answers now
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            time.sleep(4)  # worker and beat connect to the broker
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        log = open(out.name).read()
    assert "No hostname was supplied" not in log
    assert log.count("is running") == 1


def test_the_embedded_broker_url_names_a_host(caplog, settings):
    with caplog.at_level(logging.WARNING, logger="kombu"):
        Connection(settings.CELERY_BROKER_URL)._info()
        app.connection_for_write()._info()
    assert "No hostname was supplied" not in caplog.text
