"""Schema fuzzing (issue 7, issue 10): schemathesis drives every operation of
our own OpenAPI schema through a real daphne process (the ASGI stack as
deployed: Twisted, daphne, our HTTP handler, Django), authenticated as a real
device, with every check schemathesis has. No response may be a 5xx, every
response must match the schema, and every error must carry the protocol's
error body (PROTOCOL.md §10)."""
import json
import re

import httpx
import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import CHECKS, load_all_checks

from tests.hardening.fuzz_world import CALLER_TOKEN, World, no_rate_limits
from tests.live import LiveDatabase, LiveServer, free_port

# The port is fixed at collection: schemathesis builds the coverage cases then.
PORT = free_port()
BASE_URL = f"http://127.0.0.1:{PORT}"
# The schema the server serves (/api/v1/schema/), generated here so collection needs no server.
RAW_SCHEMA = json.loads(json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str))
# Unknown query parameters are ignored, as HTTP APIs commonly do; the schema
# does not promise to refuse them.
GENERATION = {"allow-extra-parameters": False}
# Schema-valid is not always acceptable: no schema says that a base58 string
# decodes to 32 bytes, that a signature verifies or a cursor is one the server
# issued (400), or what the admin's size limits are today (413).
CHECKS_CONFIG = {"positive_data_acceptance": {
    "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "429"]}}
FUZZ = schemathesis.openapi.from_dict(RAW_SCHEMA, config=schemathesis.Config.from_dict(
    {"generation": GENERATION, "checks": CHECKS_CONFIG}))
# Boundary values of every constraint (schemathesis' coverage phase), as the caller.
BOUNDARIES = schemathesis.openapi.from_dict(RAW_SCHEMA, config=schemathesis.Config.from_dict(
    {"generation": GENERATION, "checks": CHECKS_CONFIG,
     "phases": {"fuzzing": {"enabled": False}, "coverage": {"enabled": True}}}))
ERROR_CODE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def protocol_error_body(ctx, response, case):
    """§10: every error is {"error": <snake_case>, "detail": <str>, ...}, and
    `fields` maps (dotted) names to lists of plain messages."""
    if response.status_code < 400:
        return None
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), f"error body is not an object: {body!r}"
    assert isinstance(body.get("error"), str) and ERROR_CODE.match(body["error"]), f"bad error code: {body!r}"
    assert isinstance(body.get("detail"), str), f"error without detail: {body!r}"
    if "fields" in body:
        fields = body["fields"]
        assert isinstance(fields, dict) and fields, f"fields is no object of names: {body!r}"
        for name, messages in fields.items():
            assert isinstance(messages, list) and messages, f"{name}: not a list of messages: {body!r}"
            assert all(isinstance(m, str) and "ErrorDetail" not in m for m in messages), f"{name}: {body!r}"
    return True


load_all_checks()
# Every check schemathesis has, and ours.
CHECKS_ALL = [*CHECKS.get_all(), protocol_error_body]


@pytest.fixture(scope="module")
def fuzz_server():
    database = LiveDatabase()
    server = LiveServer(database, port=PORT)
    # One request creates the settings row; then the fuzzer runs without rate limits.
    httpx.post(server.url + "/api/v1/auth/challenge", json={"pubkey": "1"})
    no_rate_limits(server)
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-5000:]
    database.close()


@pytest.fixture(scope="module")
def world(fuzz_server):
    # One world for all operations: building one costs ~40 requests with real crypto.
    return World(fuzz_server)


def call(case):
    return case.call(base_url=BASE_URL, timeout=30)


@BOUNDARIES.auth(refresh_interval=None)
class DeviceSession:
    """The caller's session; its token is fixed because coverage cases are built at collection."""

    def get(self, case, ctx):
        return CALLER_TOKEN

    def set(self, case, data, ctx):
        case.headers["Authorization"] = f"Bearer {data}"


HYPOTHESIS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                        HealthCheck.filter_too_much])


@FUZZ.parametrize()
@FUZZ.given(data=st.data())
@settings(max_examples=30, **HYPOTHESIS)
def test_every_operation(case, data, world):
    headers = world.aim(case, data)
    case.validate_response(call(case), checks=CHECKS_ALL, headers=headers)


@BOUNDARIES.parametrize()
@settings(**HYPOTHESIS)
def test_every_operation_at_its_boundaries(case, world):
    case.validate_response(call(case), checks=CHECKS_ALL, headers={"Authorization": f"Bearer {CALLER_TOKEN}"})
