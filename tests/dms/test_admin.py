import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.models import Device
from dms.models import PendingDm, ServerSettings
from dms.services import dm_ack
from dms.selectors import server_settings_get
from tests.factories import build_send, create_conversation, make_person, send

pytestmark = pytest.mark.django_db


@pytest.fixture
def message():
    alice, bob = make_person(1), make_person(2)
    conv = create_conversation(alice.device, [bob.id])
    body = build_send(alice.device, conv, text="top secret")
    send(alice.device, body)
    return body


def ciphertext_column_reads(queries) -> list[str]:
    """SQL that reads a ciphertext or wrap column other than through LENGTH()."""
    bad = []
    for q in queries:
        sql = q["sql"]
        for column in ('"ciphertext"', '"wrapped_key"', '"wrap_nonce"', '"wrap_ephemeral"'):
            for match in re.finditer(re.escape(column), sql):
                if not sql[:match.start()].rstrip().upper().endswith(("LENGTH(", "LENGTH(\"PENDING_DMS\".",
                                                                       "LENGTH(\"DM_DELIVERIES\".")):
                    bad.append(sql)
    return bad


def test_pending_dm_admin_shows_metadata_only(admin_client, message):
    with CaptureQueriesContext(connection) as ctx:
        listing = admin_client.get("/admin/dms/pendingdm/")
    assert listing.status_code == 200
    assert not ciphertext_column_reads(ctx.captured_queries)
    page = listing.content.decode()
    assert message["ciphertext"] not in page
    size = len(bytes(PendingDm.objects.get().ciphertext))
    assert f">{size}<" in page
    assert PendingDm.objects.get().ciphertext_sha256[:8] in page
    with CaptureQueriesContext(connection) as ctx:
        detail = admin_client.get(f"/admin/dms/pendingdm/{message['message_id']}/change/")
    assert detail.status_code == 200
    assert not ciphertext_column_reads(ctx.captured_queries)
    text = detail.content.decode()
    assert message["ciphertext"] not in text and message["signature"] not in text
    for recipient in message["recipients"]:
        assert recipient["key_wrap"]["wrapped_key"] not in text
    assert admin_client.get("/admin/dms/pendingdm/add/").status_code == 403


def test_pending_dm_admin_shows_each_devices_delivery_state(admin_client, message):
    recipient = message["recipients"][0]["device_id"]
    device = Device.objects.get(device_id=recipient)
    dm_ack(device=device, message_ids=[], failed=[message["message_id"]])
    with CaptureQueriesContext(connection) as ctx:
        detail = admin_client.get(f"/admin/dms/pendingdm/{message['message_id']}/change/")
    assert detail.status_code == 200
    assert not ciphertext_column_reads(ctx.captured_queries)
    rows = re.findall(r"<tr><td>([^<]+)</td><td>[^<]+</td><td>(\w+)</td>", detail.content.decode())
    assert sorted(rows) == sorted([(r["device_id"], "failed" if r["device_id"] == recipient else "pending")
                                   for r in message["recipients"]])


def test_conversation_admin_is_read_only(admin_client, message):
    assert admin_client.get("/admin/dms/conversation/").status_code == 200
    detail = admin_client.get(f"/admin/dms/conversation/{message['conversation_id']}/change/")
    assert detail.status_code == 200
    assert admin_client.get("/admin/dms/conversation/add/").status_code == 403


def test_server_settings_edited_in_admin_take_effect_at_once(admin_client):
    response = admin_client.get("/admin/dms/serversettings/")
    assert response.status_code == 302
    form_url = response["Location"]
    assert admin_client.get(form_url).status_code == 200
    data = {f.name: getattr(server_settings_get(), f.name) for f in ServerSettings._meta.fields if f.name != "id"}
    data.update(max_ciphertext_bytes=512, allow_permanent="on")
    response = admin_client.post(form_url, data)
    assert response.status_code == 302, response.content
    assert server_settings_get().max_ciphertext_bytes == 512
    # an inconsistent setting is refused
    data.update(default_ttl_days=40, max_ttl_days=30)
    response = admin_client.post(form_url, data)
    assert response.status_code == 200 and server_settings_get().default_ttl_days == 14


def test_admin_purge_button(admin_client, message):
    PendingDm.objects.update(expires_at="2000-01-01T00:00:00Z")
    response = admin_client.post("/admin/dms/pendingdm/purge/")
    assert response.status_code == 302
    assert not PendingDm.objects.exists()
