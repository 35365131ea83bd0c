import datetime as dt

import pytest
from django.utils import timezone

from dms.models import Delivery, KeyReceipt, PendingDm
from tests.factories import ack, build_send, create_conversation, make_person, open_message, send, sync

pytestmark = pytest.mark.django_db


@pytest.fixture
def trio():
    alice, bob = make_person(1), make_person(2)
    conv = create_conversation(alice.device, [bob.id])
    return alice, bob, conv


def test_sync_oldest_first_with_own_wrap_and_sender_certificate(trio):
    alice, bob, conv = trio
    bodies = [build_send(alice.device, conv, text=f"m{i}") for i in range(3)]
    for body in bodies:
        assert send(alice.device, body).status_code == 201
    page = sync(bob.devices[1])
    assert [m["message_id"] for m in page["messages"]] == [b["message_id"] for b in bodies]
    assert page["has_more"] is False
    msg = page["messages"][0]
    assert msg["sender"] == alice.id and msg["sender_device"] == alice.device.id
    assert msg["sender_certificate"] == alice.device.cert
    mine = next(r for r in bodies[0]["recipients"] if r["device_id"] == bob.devices[1].id)
    assert msg["key_wrap"] == mine["key_wrap"]
    for key in ("nonce", "ciphertext", "signature", "key_id", "participants_sha256", "epoch", "conversation_id"):
        assert msg[key] == bodies[0][key]
    assert msg["policy"] == "ttl" and msg["expires_at"].endswith("Z")
    assert open_message(bob.devices[1], msg)["body"] == "m0"


def test_sync_pages_with_cursor(trio):
    alice, bob, conv = trio
    ids = []
    for i in range(5):
        body = build_send(alice.device, conv)
        send(alice.device, body)
        ids.append(body["message_id"])
    first = sync(bob.device, limit=2)
    assert [m["message_id"] for m in first["messages"]] == ids[:2] and first["has_more"]
    second = sync(bob.device, limit=2, after=first["cursor"])
    assert [m["message_id"] for m in second["messages"]] == ids[2:4] and second["has_more"]
    third = sync(bob.device, limit=2, after=second["cursor"])
    assert [m["message_id"] for m in third["messages"]] == ids[4:] and not third["has_more"]
    empty = sync(bob.device, limit=2, after=third["cursor"])
    assert empty["messages"] == [] and not empty["has_more"]


@pytest.mark.parametrize("body", [{"limit": 0}, {"limit": 501}, {"limit": "5"}, {"after": "garbage"},
                                  {"after": "AAE="}, {"after": 5}])
def test_sync_bad_input_is_400(trio, body):
    _, bob, _ = trio
    response = bob.device.client.post("/api/v1/dms/sync", body, format="json")
    assert response.status_code == 400, body


def test_sync_never_serves_expired_messages(trio):
    alice, bob, conv = trio
    body = build_send(alice.device, conv)
    send(alice.device, body)
    PendingDm.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert sync(bob.device)["messages"] == []


def test_sync_never_serves_deliveries_past_max_undelivered(trio):
    alice, bob, conv = trio
    conf_days = 30
    send(alice.device, build_send(alice.device, conv))
    PendingDm.objects.update(expires_at=None)  # even a permanent message
    Delivery.objects.update(created_at=timezone.now() - dt.timedelta(days=conf_days, seconds=1))
    assert sync(bob.device)["messages"] == []


def test_ack_ends_only_the_callers_delivery_and_is_idempotent(trio):
    alice, bob, conv = trio
    body = build_send(alice.device, conv)
    send(alice.device, body)
    mid = body["message_id"]
    assert ack(bob.devices[0], [mid]) == {"acked": [mid], "unknown": []}
    assert sync(bob.devices[0])["messages"] == []
    assert len(sync(bob.devices[1])["messages"]) == 1
    assert ack(bob.devices[0], [mid]) == {"acked": [mid], "unknown": []}
    assert Delivery.objects.filter(acked_at__isnull=True).count() == 1


def test_ack_unknown_ids_change_nothing(trio):
    alice, bob, conv = trio
    body = build_send(alice.device, conv)
    send(alice.device, body)
    stranger = make_person(1)
    mid = body["message_id"]
    import uuid

    other = str(uuid.uuid4())
    assert ack(stranger.device, [mid, other]) == {"acked": [], "unknown": sorted([mid, other])}
    # the sender never had a delivery
    assert ack(alice.device, [mid]) == {"acked": [], "unknown": [mid]}
    assert Delivery.objects.filter(acked_at__isnull=True).count() == 2


def test_ack_for_someone_elses_device_is_403(trio):
    alice, bob, conv = trio
    response = bob.devices[0].client.post("/api/v1/dms/ack", {"message_ids": [], "device_id": bob.devices[1].id},
                                          format="json")
    assert response.status_code == 403
    response = bob.devices[0].client.post("/api/v1/dms/ack", {"message_ids": [], "device_id": bob.devices[0].id},
                                          format="json")
    assert response.status_code == 200


@pytest.mark.parametrize("body", [{"message_ids": ["nope"]}, {"message_ids": "x"}, {"failed": [1]},
                                  {"message_ids": ["6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b"] * 501}])
def test_ack_bad_input_is_400(trio, body):
    _, bob, _ = trio
    assert bob.device.client.post("/api/v1/dms/ack", body, format="json").status_code == 400


def test_failed_ack_ends_delivery_without_receipt(trio):
    alice, bob, conv = trio
    body = build_send(alice.device, conv)
    send(alice.device, body)
    assert ack(bob.device, failed=[body["message_id"]])["acked"] == [body["message_id"]]
    assert sync(bob.device)["messages"] == []
    assert not KeyReceipt.objects.exists()


def test_history_ttl_and_permanent_only_newest_first(trio):
    from dms.selectors import server_settings_get

    alice, bob, conv = trio
    conf = server_settings_get()
    conf.allow_permanent = True
    conf.save()
    url = f"/api/v1/dms/conversations/{conv['conversation_id']}"
    sent = []
    for retention in [None, {"policy": "burn_on_read"}, {"policy": "permanent"}]:
        if retention:
            conv = alice.device.client.patch(url, {"retention": retention}, format="json").json()
        body = build_send(alice.device, conv)
        assert send(alice.device, body).status_code == 201
        sent.append(body)
    history = bob.devices[0].client.get(url + "/messages").json()
    assert [m["message_id"] for m in history["messages"]] == [sent[2]["message_id"], sent[0]["message_id"]]
    assert all(m["key_wrap"] is not None for m in history["messages"])
    # history survives ACK for ttl/permanent
    ack(bob.devices[0], [b["message_id"] for b in sent])
    assert len(bob.devices[0].client.get(url + "/messages").json()["messages"]) == 2
    # the sender sees what it sent, without a wrap
    own = alice.device.client.get(url + "/messages").json()["messages"]
    assert len(own) == 2 and all(m["key_wrap"] is None for m in own)
    # paging
    page = bob.devices[0].client.get(url + "/messages?limit=1").json()
    assert page["has_more"] and len(page["messages"]) == 1
    rest = bob.devices[0].client.get(url + f"/messages?limit=1&before={page['cursor']}").json()
    assert [m["message_id"] for m in rest["messages"]] == [sent[0]["message_id"]] and not rest["has_more"]
    assert bob.devices[0].client.get(url + "/messages?before=bad").status_code == 400


def test_history_excludes_devices_that_neither_sent_nor_received(trio):
    alice, bob, conv = trio
    send(alice.device, build_send(alice.device, conv))
    late = bob.add_device("late")
    url = f"/api/v1/dms/conversations/{conv['conversation_id']}/messages"
    assert late.client.get(url).json()["messages"] == []


def test_devices_list_shows_pending_count(trio):
    alice, bob, conv = trio
    for _ in range(2):
        send(alice.device, build_send(alice.device, conv))
    devices = {d["device_id"]: d for d in bob.device.client.get("/api/v1/devices").json()["devices"]}
    assert devices[bob.devices[0].id]["pending_count"] == 2
    ack(bob.devices[0], [m["message_id"] for m in sync(bob.devices[0])["messages"]][:1])
    devices = {d["device_id"]: d for d in bob.device.client.get("/api/v1/devices").json()["devices"]}
    assert devices[bob.devices[0].id]["pending_count"] == 1
    assert devices[bob.devices[1].id]["pending_count"] == 2


def _cursor(*parts) -> str:
    import base64

    return base64.b64encode("|".join(parts).encode()).decode()


# Issue 10 point 13: cursors out of range were a 500 (SQLite OverflowError); each is a 400 invalid_cursor.
OUT_OF_RANGE_IDS = [str(10 ** 30), str(2 ** 63), "-1", "+5", " 5", "1_000", "\u0665"]


@pytest.mark.parametrize("value", OUT_OF_RANGE_IDS)
def test_sync_cursor_out_of_range_is_400_invalid_cursor(trio, value):
    _, bob, _ = trio
    response = bob.device.client.post("/api/v1/dms/sync", {"after": _cursor(value)}, format="json")
    assert response.status_code == 400, response.content
    assert response.json() == {"error": "invalid_cursor", "detail": response.json()["detail"]}


def test_sync_cursor_at_the_largest_id_is_an_empty_page(trio):
    alice, bob, conv = trio
    send(alice.device, build_send(alice.device, conv))
    page = sync(bob.device, after=_cursor(str(2 ** 63 - 1)))
    assert page["messages"] == [] and not page["has_more"]


HISTORY_CURSORS = [
    ("0001-01-01T00:00:00+01:00", "00000000-0000-4000-8000-000000000000"),  # before year 1 in UTC
    ("9999-12-31T23:59:59-01:00", "00000000-0000-4000-8000-000000000000"),  # after 9999 in UTC
    ("2026-01-01T00:00:00", "00000000-0000-4000-8000-000000000000"),        # no time zone
    ("99999-01-01T00:00:00+00:00", "00000000-0000-4000-8000-000000000000"),
    ("2026-01-01T00:00:00+00:00", "99999999999999999999999999"),
]


@pytest.mark.parametrize("created,message_id", HISTORY_CURSORS)
def test_history_cursor_out_of_range_is_400_invalid_cursor(trio, created, message_id):
    alice, bob, conv = trio
    url = f"/api/v1/dms/conversations/{conv['conversation_id']}/messages"
    response = bob.device.client.get(url, {"before": _cursor(created, message_id)})
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_cursor" and set(response.json()) == {"error", "detail"}


@pytest.mark.parametrize("limit", ["0", "501", str(10 ** 30), "-1", "1.5", "x"])
def test_history_limit_out_of_range_is_400(trio, limit):
    _, bob, conv = trio
    response = bob.device.client.get(f"/api/v1/dms/conversations/{conv['conversation_id']}/messages",
                                     {"limit": limit})
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_request" and "limit" in response.json()["fields"]


@pytest.mark.parametrize("limit", [0, 501, 10 ** 30, -(10 ** 30), 1.5, True])
def test_sync_limit_out_of_range_is_400(trio, limit):
    _, bob, _ = trio
    response = bob.device.client.post("/api/v1/dms/sync", {"limit": limit}, format="json")
    assert response.status_code == 400, response.content
    if isinstance(limit, int) and abs(limit) >= 2 ** 63:  # the JSON parser refuses it before the view
        assert response.json()["error"] == "malformed_json"
    else:
        assert response.json()["error"] == "invalid_request" and "limit" in response.json()["fields"]
