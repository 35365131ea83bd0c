"""Schema fuzzing (issue 7): schemathesis drives every operation of our own
OpenAPI schema through the real WSGI stack, authenticated as a real device.
No response may be a 5xx, every response must match the schema, and every
error must carry the protocol's error body (PROTOCOL.md §10)."""
import re

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

from tests.hardening.fuzz_world import CALLER_TOKEN, World

APP = WSGIHandler()
# Unknown query parameters are ignored, as HTTP APIs commonly do; the schema
# does not promise to refuse them.
GENERATION = {"allow-extra-parameters": False}
FUZZ = schemathesis.openapi.from_wsgi("/api/v1/schema/", APP, config=schemathesis.Config.from_dict(
    {"generation": GENERATION}))
# Boundary values of every constraint (schemathesis' coverage phase), as the caller.
BOUNDARIES = schemathesis.openapi.from_wsgi("/api/v1/schema/", APP, config=schemathesis.Config.from_dict(
    {"generation": GENERATION, "phases": {"fuzzing": {"enabled": False}, "coverage": {"enabled": True}}}))
ERROR_CODE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def protocol_error_body(ctx, response, case):
    """§10: every error is {"error": <snake_case>, "detail": <str>, ...}."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict), f"error body is not an object: {body!r}"
    assert isinstance(body.get("error"), str) and ERROR_CODE.match(body["error"]), f"bad error code: {body!r}"
    assert isinstance(body.get("detail"), str), f"error without detail: {body!r}"
    if "fields" in body:
        assert isinstance(body["fields"], dict)
    return True


def call(case):
    """The request, through the app, inside the test's transaction."""
    # As Django's test client does, keep the app from closing the connection
    # after the request, which would end the test's transaction. The test
    # client reconnects these after each of its own requests (World makes some).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    return case.call()


@pytest.fixture
def world(db):
    yield World()
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@BOUNDARIES.auth(refresh_interval=None)
class DeviceSession:
    """The caller's session; its token is fixed because coverage cases are built at collection."""

    def get(self, case, ctx):
        return CALLER_TOKEN

    def set(self, case, data, ctx):
        case.headers["Authorization"] = f"Bearer {data}"


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection, protocol_error_body]
HYPOTHESIS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                        HealthCheck.filter_too_much])


@FUZZ.parametrize()
@FUZZ.given(data=st.data())
@settings(max_examples=100, **HYPOTHESIS)
def test_every_operation(case, data, world):
    world.aim(case, data)
    case.validate_response(call(case), checks=CHECKS)


@BOUNDARIES.parametrize()
@settings(**HYPOTHESIS)
def test_every_operation_at_its_boundaries(case, world):
    case.validate_response(call(case), checks=CHECKS)
