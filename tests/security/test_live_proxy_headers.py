"""Against real daphne processes: the Procfile's web process keys rate limits
on the socket peer whatever X-Forwarded-For says (point 8), and the login
origin follows neither a forged Host port nor X-Forwarded-Proto (point 9)."""
import shlex
import subprocess
import sys
import time

import httpx
import pytest

from dmclient import protocol
from tests.factories import Keys
from tests.live import BASE_DIR, free_port

pytestmark = pytest.mark.live


def procfile_web(port: int) -> list[str]:
    line = next(l for l in (BASE_DIR / "Procfile").read_text().splitlines() if l.startswith("web:"))
    args = shlex.split(line.removeprefix("web:").replace("$PORT", str(port)).replace("0.0.0.0", "127.0.0.1"))
    assert args[:3] == ["python", "-m", "decentcom.serve"]
    return [sys.executable, *args[1:]]


@pytest.fixture
def procfile_server(live_database):
    port = free_port()
    log = open(f"{live_database.tmp.name}/procfile-web.log", "ab")
    proc = subprocess.Popen(procfile_web(port), cwd=BASE_DIR, env=live_database.env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the Procfile's web process did not start"
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ask(url: str, **headers) -> httpx.Response:
    return httpx.post(url + "/api/v1/auth/challenge", json={"pubkey": Keys().id}, headers=headers)


def test_procfile_web_keys_the_address_limit_on_the_peer_not_on_x_forwarded_for(procfile_server, live_database):
    assert ask(procfile_server).status_code == 200  # makes the settings row
    live_database.sql("UPDATE dm_server_settings SET challenge_rate_per_ip = 3")
    answers = [ask(procfile_server, **{"X-Forwarded-For": value}).status_code
               for value in ("198.51.100.1", "198.51.100.2", "not an address", "198.51.100.3")]
    assert answers == [200, 200, 429, 429]  # one limit for the one peer (3 per minute, one used above)
    stored = {str(row[0]) for row in live_database.sql("SELECT client_ip FROM auth_challenges")}
    assert stored == {"127.0.0.1"}


def login_status(url: str, origin: str, **headers) -> int:
    keys = Keys()
    challenge = httpx.post(url + "/api/v1/auth/challenge", json={"pubkey": keys.id}).json()["challenge"]
    signed = protocol.auth_signed_bytes(challenge=challenge, pubkey=keys.id, server=origin)
    return httpx.post(url + "/api/v1/auth/verify", headers=headers, json={
        "pubkey": keys.id, "challenge": challenge, "signature": protocol.b64e(keys.sign(signed))}).status_code


def test_live_login_origin_is_the_listening_port_and_scheme(daphne_server):
    other = "http://127.0.0.1:9999"
    assert login_status(daphne_server.url, other, Host="127.0.0.1:9999") == 401
    assert login_status(daphne_server.url, "https://127.0.0.1:%d" % daphne_server.port,
                        **{"X-Forwarded-Proto": "https"}) == 401
    assert login_status(daphne_server.url, daphne_server.url, Host="127.0.0.1:9999") == 200
    assert login_status(daphne_server.url, daphne_server.url) == 200
