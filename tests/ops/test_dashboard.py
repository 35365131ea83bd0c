"""Issue 14: the admin dashboard (aggregates only, a fixed number of
queries), the purge history (PurgeRun) and the admin lists of point 10."""
import datetime as dt

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.models import Device, User
from devices.services import device_revoke, user_suspend
from dms.models import Delivery, PendingDm, PurgeRun
from dms.selectors import server_settings_get
from dms.services import dm_purge_expired
from tests.dms.test_admin import ciphertext_column_reads
from tests.factories import build_send, create_conversation, make_person, send

pytestmark = pytest.mark.django_db


def exchange(n_messages: int) -> list[dict]:
    alice, bob = make_person(1), make_person(2)
    conv = create_conversation(alice.device, [bob.id])
    bodies = [build_send(alice.device, conv, text=f"secret {i}") for i in range(n_messages)]
    for body in bodies:
        assert send(alice.device, body).status_code == 201
    return bodies


def dashboard_queries(client) -> tuple[str, int]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/admin/")
    assert response.status_code == 200
    assert not ciphertext_column_reads(ctx.captured_queries)
    return response.content.decode(), len(ctx.captured_queries)


def test_dashboard_shows_the_mailbox_in_a_fixed_number_of_queries(admin_client):
    bodies = exchange(1)
    dm_purge_expired(now=timezone.now())
    page_small, queries_small = dashboard_queries(admin_client)

    more = exchange(6)
    dm_purge_expired(now=timezone.now(), dry_run=True)
    bob_device = Device.objects.get(device_id=more[0]["recipients"][0]["device_id"])
    device_revoke(device=bob_device, reason="test")
    user_suspend(user=User.objects.get(username=PendingDm.objects.get(message_id=bodies[0]["message_id"])
                                       .sender_device.user.username))
    # one delivery near the 30-day cap
    Delivery.objects.filter(message_id=more[1]["message_id"]).update(created_at=timezone.now() - dt.timedelta(days=25))
    page, queries = dashboard_queries(admin_client)

    assert queries == queries_small  # whatever the number of rows
    assert 'id="dashboard"' in page
    for text in ("Pending deliveries by age", "Stored by policy", "Devices by last seen", "Messages sent per hour",
                 "Last purge runs", "Recent suspensions", "Recent revocations", "near the 30-day cap"):
        assert text in page, text
    assert "7 messages sent in the last 48 hours" in page
    assert "dry run" in page
    assert bob_device.device_id[:8] in page
    for body in bodies + more:  # metadata only
        assert body["ciphertext"] not in page and body["signature"] not in page
    assert "<script" not in page.split('id="dashboard"', 1)[1].split("</section>\n</div>", 1)[0]
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


def test_dashboard_needs_the_view_permission_on_messages(django_user_model):
    staff = django_user_model.objects.create_user(username="support", password="x", is_staff=True)
    client = Client()
    client.force_login(staff)
    page = client.get("/admin/").content.decode()
    assert 'id="dashboard"' not in page


def test_each_purge_run_is_recorded_and_listed_read_only(admin_client):
    exchange(1)
    as_of = timezone.now() + dt.timedelta(days=40)  # past every expiry
    counts = dm_purge_expired(now=as_of, dry_run=True)
    assert PurgeRun.objects.get().dry_run and PurgeRun.objects.get().counts == counts
    counts = dm_purge_expired(now=as_of)
    run = PurgeRun.objects.filter(dry_run=False).get()
    assert run.counts == counts and run.counts["expired_messages"] == 1 and run.as_of == as_of
    assert run.duration_ms >= 0 and run.started_at <= timezone.now()

    listing = admin_client.get("/admin/dms/purgerun/").content.decode()
    assert "expired_messages 1" in listing
    assert admin_client.get("/admin/dms/purgerun/add/").status_code == 403
    assert admin_client.post(f"/admin/dms/purgerun/{run.pk}/delete/").status_code == 403
    # a month later the history forgets it
    PurgeRun.objects.update(started_at=timezone.now() - dt.timedelta(days=31))
    dm_purge_expired(now=timezone.now())
    assert PurgeRun.objects.count() == 1


def test_conversation_admin_searches_by_id_and_participant(admin_client):
    alice, bob, carol = make_person(1), make_person(1), make_person(1)
    with_bob = create_conversation(alice.device, [bob.id])
    with_carol = create_conversation(alice.device, [carol.id])
    for query, found, missing in ((bob.id[:10], with_bob, with_carol), (with_carol["conversation_id"][:8], with_carol, with_bob),
                                  (with_bob["conversation_id"], with_bob, with_carol)):
        page = admin_client.get("/admin/dms/conversation/", {"q": query}).content.decode()
        assert found["conversation_id"] in page and missing["conversation_id"] not in page, query


def test_max_request_bytes_says_which_limit_wins(admin_client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000
    row = server_settings_get()
    page = admin_client.get(f"/admin/dms/serversettings/{row.pk}/change/").content.decode()
    assert "the smaller of this and the environment's MAX_REQUEST_BYTES wins" in page
    assert "100,000 bytes: the smaller of max_request_bytes and the MAX_REQUEST_BYTES" in page
