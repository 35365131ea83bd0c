"""One test per bug the hardening tests (schema fuzzing, the mailbox state
machine) found; each fails without its fix."""
import datetime as dt

import jsonschema
import pytest
from django.core.management import call_command
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from dms.models import PendingDm
from tests.factories import build_send, create_conversation, make_person, send, sync

pytestmark = pytest.mark.django_db


def test_openapi_schema_generates_without_warnings(tmp_path):
    # Five request bodies shared one component ("InputRequest"), so the schema
    # documented the wrong body for auth/verify, devices, conversations and
    # participants; the bearer scheme was unknown; two operations shared an id.
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(tmp_path / "schema.yaml"))


@pytest.fixture(scope="module")
def openapi():
    return SchemaGenerator().get_schema(request=None, public=True)


def parameter_schema(openapi, path: str, method: str, name: str) -> dict:
    operation = openapi["paths"][path][method]
    return next(p["schema"] for p in operation["parameters"] if p["name"] == name)


def test_history_cursor_of_an_empty_page_is_valid_input(openapi):
    # The server answers an empty history page with cursor "", which the
    # schema refused (minLength 1) while the API accepted it.
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])
    url = f"/api/v1/dms/conversations/{conversation['conversation_id']}/messages"
    cursor = alice.device.client.get(url).json()["cursor"]
    assert cursor == ""
    assert alice.device.client.get(url, {"before": cursor}).status_code == 200
    jsonschema.validate(cursor, parameter_schema(
        openapi, "/api/v1/dms/conversations/{conversation_id}/messages", "get", "before"))



def test_history_limit_must_be_an_integer_even_when_empty():
    # `?limit=` was read as "no limit given" (DRF's form-input rule), so a
    # value the schema calls invalid was answered 200.
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])
    url = f"/api/v1/dms/conversations/{conversation['conversation_id']}/messages"
    response = alice.device.client.get(url, {"limit": ""})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert "limit" in response.json()["fields"]


def test_burn_on_read_message_without_recipients_is_not_kept():
    # §8: a burn_on_read row goes as soon as no delivery of it is pending. With
    # every other device revoked none ever is, yet the row waited for the purge.
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id], retention={"policy": "burn_on_read"})
    assert bob.master_client().delete(f"/api/v1/devices/{bob.device.id}").status_code == 204
    url = f"/api/v1/dms/conversations/{conversation['conversation_id']}"
    body = build_send(alice.device, alice.device.client.get(url).json(), recipients=[])
    response = send(alice.device, body)
    assert response.status_code == 201 and response.json()["recipients"] == 0
    assert response.json()["unreachable"] == [bob.id]
    assert not PendingDm.objects.filter(message_id=body["message_id"]).exists()
    retry = send(alice.device, body)
    assert retry.status_code == 200 and retry.json() == response.json()


def test_pending_count_leaves_out_expired_deliveries():
    # §4: pending_count is the deliveries waiting for the device; an expired
    # message is never served (§8), yet it was counted until the purge ran.
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id], retention={"policy": "ttl", "ttl_days": 1})
    body = build_send(alice.device, conversation)
    assert send(alice.device, body).status_code == 201
    PendingDm.objects.filter(message_id=body["message_id"]).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert sync(bob.device)["messages"] == []
    devices = bob.device.client.get("/api/v1/devices").json()["devices"]
    assert [d["pending_count"] for d in devices] == [0]


@pytest.mark.parametrize("bad_id", ["a%00b", "%00", "0OIl"])
def test_path_ids_that_are_no_key_are_404(bad_id):
    # A NUL in a user or device id reached PostgreSQL, which refuses it in
    # text: a 500. (SQLite takes it, so there this only checks the 404.)
    alice, bob, carol = make_person(1), make_person(1), make_person(1)
    group = create_conversation(alice.device, [bob.id, carol.id])
    client = alice.device.client
    for response in (client.get(f"/api/v1/users/{bad_id}/devices"),
                     client.delete(f"/api/v1/devices/{bad_id}"),
                     client.delete(f"/api/v1/dms/conversations/{group['conversation_id']}/participants/{bad_id}")):
        assert response.status_code == 404 and response.json()["error"] == "not_found"
