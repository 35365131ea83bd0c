"""§10 for input the views should never see, and for every answer under
/api/: over-deep JSON and numbers out of range are 400 at the parser, nested
validation errors come under dotted names as plain text, and what daphne and
Django answer before any view runs (a malformed multipart body, a bad Host)
is the JSON error body too — checked through a real daphne process."""
import json
import re
import socket

import httpx
import pytest

from tests.factories import build_send, create_conversation, make_person, send
from tests.live import LiveDatabase, LiveServer

ERROR_CODE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def assert_error_body(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body.get("error"), str) and ERROR_CODE.match(body["error"]), body
    assert isinstance(body.get("detail"), str), body
    for name, messages in body.get("fields", {}).items():
        assert isinstance(name, str) and all(isinstance(m, str) for m in messages), body
        assert "ErrorDetail" not in "".join(messages), body
    if code is not None:
        assert body["error"] == code, body
    return body


def post_raw(client, url: str, content: bytes, content_type: str = "application/json"):
    return client.generic("POST", url, content, content_type=content_type)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# --- 13: the parser refuses over-deep documents and out-of-range numbers -------------

@pytest.mark.django_db
def test_over_deep_json_is_400_at_the_parser(client):
    # 2 KB of brackets was a RecursionError: a 500 and two tracebacks per request.
    response = post_raw(client, "/api/v1/auth/challenge", nested(1024))
    assert "deeper than 32" in assert_error_body(response, 400, "malformed_json")["detail"]
    assert_error_body(post_raw(client, "/api/v1/auth/challenge", nested(33)), 400, "malformed_json")
    deep_object = b'{"a":' * 33 + b"1" + b"}" * 33
    assert_error_body(post_raw(client, "/api/v1/auth/challenge", deep_object), 400, "malformed_json")
    # 32 levels parse (and then fail validation as any wrong body does)
    assert_error_body(post_raw(client, "/api/v1/auth/challenge", nested(32)), 400, "invalid_request")


@pytest.mark.django_db
@pytest.mark.parametrize("number", [b"9223372036854775808", b"-9223372036854775809", b"1" * 5000,
                                    b"1e999", b"-1e999", b"NaN", b"Infinity"])
def test_numbers_out_of_range_are_400_at_the_parser(client, number):
    body = b'{"pubkey": ' + number + b"}"
    assert_error_body(post_raw(client, "/api/v1/auth/challenge", body), 400, "malformed_json")


@pytest.mark.django_db
def test_int64_bounds_still_reach_the_view(client):
    for number in (2**63 - 1, -(2**63)):
        body = json.dumps({"pubkey": number}).encode()
        assert_error_body(post_raw(client, "/api/v1/auth/challenge", body), 400, "invalid_request")


@pytest.mark.django_db(transaction=True)
def test_huge_numbers_in_send_sync_and_history_are_400():
    # An epoch of 2**70 reached the database (SQLite: OverflowError, a 500).
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])
    body = build_send(alice.device, conversation)
    assert_error_body(send(alice.device, {**body, "epoch": 2**70}), 400, "malformed_json")
    client = alice.device.client
    assert_error_body(client.post("/api/v1/dms/sync", {"limit": 10**30}, format="json"), 400, "malformed_json")
    patch = client.patch(f"/api/v1/dms/conversations/{conversation['conversation_id']}",
                         {"retention": {"policy": "ttl", "ttl_days": 2**64}}, format="json")
    assert_error_body(patch, 400, "malformed_json")
    assert send(alice.device, body).status_code == 201  # nothing was stored or consumed meanwhile


# --- 14a: nested validation errors under dotted names, as plain text ----------------

@pytest.mark.django_db(transaction=True)
def test_nested_validation_errors_have_dotted_names_and_plain_messages():
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])
    body = build_send(alice.device, conversation)
    body["recipients"] = [body["recipients"][0], {"device_id": "not a key", "key_wrap": {"nonce": 1}}]
    fields = assert_error_body(send(alice.device, body), 400, "invalid_request")["fields"]
    assert set(fields) >= {"recipients.1.device_id", "recipients.1.key_wrap.nonce"}, fields

    group = create_conversation(alice.device, [bob.id, make_person(1).id])
    response = alice.device.client.post(f"/api/v1/dms/conversations/{group['conversation_id']}/participants",
                                        {"add": [bob.id, "not a key"]}, format="json")
    body = assert_error_body(response, 400, "invalid_request")
    assert list(body["fields"]) == ["add.1"] and body["detail"].startswith("add.1: "), body


# --- 14b, 14c and the parser through a real daphne ----------------------------------

@pytest.fixture(scope="module")
def api_server():
    database = LiveDatabase()
    server = LiveServer(database)
    yield server
    server.stop()
    database.close()


def test_malformed_multipart_and_form_bodies_get_the_error_body(api_server):
    # Twisted parsed multipart POST bodies itself and answered a bad one with a
    # bare "400" before daphne or Django saw it.
    url = api_server.url + "/api/v1/auth/challenge"
    for content_type, content in [("multipart/form-data", b"a=b"),
                                  ("multipart/form-data; boundary=x", b"--x\r\nbroken"),
                                  ("multipart/form-data; boundary=", b"--\r\n\r\n"),
                                  ("application/x-www-form-urlencoded", b"%%%&&=")]:
        response = httpx.post(url, content=content, headers={"Content-Type": content_type})
        assert_error_body(response, 415, "unsupported_media_type")


def test_a_bad_host_under_api_gets_the_error_body(api_server):
    # It was Django's HTML page (the full debug page with DEBUG=1).
    for host in ("evil.example", "bad host!", "localhost.evil.example:80"):
        for method, path in [("GET", "/api/v1/devices"), ("POST", "/api/v1/auth/challenge"), ("GET", "/api/nowhere")]:
            response = httpx.request(method, api_server.url + path, headers={"Host": host}, json={})
            assert_error_body(response, 400, "bad_host")
    # Outside /api/ Django's own page stays.
    assert httpx.get(api_server.url + "/", headers={"Host": "evil.example"}).status_code == 400


def raw_request(server, head: bytes) -> tuple[int, dict, bytes]:
    """One request as raw bytes (clients refuse to send what is tested here)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_what_twisted_answers_itself_is_the_error_body(api_server):
    # Twisted answered a NUL in a header or a request line that is not ASCII
    # with a bare "400".
    status, headers, body = raw_request(
        api_server, b"GET /api/v1/devices HTTP/1.1\r\nHost: localhost\r\nX-Thing: a\x00b\r\n\r\n")
    assert (status, headers["content-type"]) == (400, "application/json"), (status, headers, body)
    assert json.loads(body) == {"error": "bad_request", "detail": "malformed HTTP request"}
    status, headers, body = raw_request(
        api_server, b"GET /api/v1/devices?a=\xff HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert (status, headers["content-type"]) == (400, "application/json"), (status, headers, body)
    assert json.loads(body) == {"error": "bad_request", "detail": "malformed HTTP request"}


def test_deep_json_through_daphne_is_400_without_a_traceback(api_server):
    before = len(api_server.log())
    response = httpx.post(api_server.url + "/api/v1/auth/challenge", content=nested(1024),
                          headers={"Content-Type": "application/json"})
    assert_error_body(response, 400, "malformed_json")
    response = httpx.post(api_server.url + "/api/v1/auth/challenge", content=b'{"pubkey": 1e999}',
                          headers={"Content-Type": "application/json"})
    assert_error_body(response, 400, "malformed_json")
    log = api_server.log()[before:]
    assert "Traceback" not in log and "Internal Server Error" not in log, log
