"""A failure midway through send, ACK or purge leaves nothing half-done.

The failure is a real one: a database trigger that refuses one statement
of the multi-step write, after earlier steps have already run."""
import datetime as dt
from contextlib import contextmanager

import pytest
from django.db import DatabaseError, connection
from django.utils import timezone

from devices.models import Device
from dms.models import Delivery, KeyReceipt, PendingDm, UsedMessageId
from dms.services import Recipient, SendRequest, dm_ack, dm_purge_expired, dm_send
from dmclient import protocol
from tests.factories import build_send, create_conversation, make_person, send

pytestmark = pytest.mark.django_db


@contextmanager
def failing(table: str, operation: str):
    """Make every `operation` (INSERT, UPDATE, DELETE) on `table` fail."""
    name = f"fail_{table}_{operation.lower()}"
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(f"CREATE TRIGGER {name} BEFORE {operation} ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
        else:
            cursor.execute(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$ "
                           f"BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql")
            cursor.execute(f"CREATE TRIGGER {name} BEFORE {operation} ON {table} "
                           f"FOR EACH ROW EXECUTE FUNCTION {name}()")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute(f"DROP TRIGGER {name}")
            else:
                cursor.execute(f"DROP TRIGGER {name} ON {table}")
                cursor.execute(f"DROP FUNCTION {name}()")


def request_from(body: dict) -> SendRequest:
    return SendRequest(
        message_id=body["message_id"], conversation_id=body["conversation_id"], epoch=body["epoch"],
        key_id=body["key_id"], participants_sha256=body["participants_sha256"], retention=body["retention"],
        nonce=protocol.b64d(body["nonce"]), ciphertext=protocol.b64d(body["ciphertext"]),
        signature=protocol.b64d(body["signature"]),
        recipients=[Recipient(device_id=r["device_id"], wrap=r["key_wrap"]) for r in body["recipients"]])


def test_send_failing_at_deliveries_stores_nothing():
    alice, bob = make_person(1), make_person(2)
    conv = create_conversation(alice.device, [bob.id])
    body = build_send(alice.device, conv)
    sender = Device.objects.get(device_id=alice.device.id)
    with failing("dm_deliveries", "INSERT"), pytest.raises(DatabaseError):
        dm_send(device=sender, request=request_from(body))
    assert not PendingDm.objects.exists() and not UsedMessageId.objects.exists()
    # the same message_id then goes through: nothing was remembered
    assert send(alice.device, body).status_code == 201


def test_ack_failing_at_burn_leaves_deliveries_pending():
    alice, bob = make_person(1), make_person(1)
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "burn_on_read"})
    body = build_send(alice.device, conv)
    send(alice.device, body)
    device = Device.objects.get(device_id=bob.device.id)
    with failing("pending_dms", "DELETE"), pytest.raises(DatabaseError):
        dm_ack(device=device, message_ids=[body["message_id"]], failed=[])
    assert Delivery.objects.get().acked_at is None
    assert not KeyReceipt.objects.exists() and PendingDm.objects.exists()
    assert dm_ack(device=device, message_ids=[body["message_id"]], failed=[])["acked"] == [body["message_id"]]
    assert not PendingDm.objects.exists()


def test_purge_failing_midway_leaves_no_half_deleted_message():
    alice, bob = make_person(1), make_person(2)
    conv = create_conversation(alice.device, [bob.id], retention={"policy": "ttl", "ttl_days": 1})
    for _ in range(3):
        send(alice.device, build_send(alice.device, conv))
    later = timezone.now() + dt.timedelta(days=2)
    with failing("pending_dms", "DELETE"), pytest.raises(DatabaseError):
        dm_purge_expired(now=later)
    # the deliveries deleted before the failing statement came back with the rollback
    assert PendingDm.objects.count() == 3 and Delivery.objects.count() == 6
    assert dm_purge_expired(now=later)["expired_messages"] == 3
    assert not PendingDm.objects.exists() and not Delivery.objects.exists()
