"""The bench's mailbox fill writes what a send writes, so the 10,000-deep mailbox
it measures is one the server serves and ACKs like any other."""
import pytest
from django.db import connection

from bench.mailbox import Conversation, InProcess, build_sends, mailbox_fill, new_devices
from dms.models import Delivery, DeliveryState, PendingDm
from dms.selectors import pending_count_for_device

TABLES = ("pending_dms", "dm_deliveries", "dm_used_message_ids", "dm_delivery_states")


def rows_per_message(message_ids: list[str]) -> dict[str, set[int]]:
    """table -> the row counts its messages have (one value when they all have the same)."""
    param = PendingDm._meta.get_field("message_id").get_db_prep_value
    ids = [param(m, connection) for m in message_ids]
    out = {}
    with connection.cursor() as cursor:
        for table in TABLES:
            cursor.execute(f"SELECT message_id, COUNT(*) FROM {table} WHERE message_id IN "
                           f"({', '.join(['%s'] * len(ids))}) GROUP BY message_id", ids)
            counts = dict(cursor.fetchall())
            out[table] = {counts.get(i, 0) for i in ids}
    return out


@pytest.mark.django_db(transaction=True)
def test_mailbox_fill_writes_what_a_send_writes():
    api = InProcess()
    sender, recipients = new_devices(2)
    for device in [sender, *recipients]:
        api.login(device)
    conv = api.post("/api/v1/dms/conversations", {"participants": [r.user_id for r in recipients]}, sender)
    ((sent_id, body),) = build_sends(sender, conv, [r.id for r in recipients], 1, 1024)
    api.post("/api/v1/dms/send", body, sender)

    mailbox_fill(3, Conversation(sender, recipients, conv), 1024)

    filled = [str(m) for m in PendingDm.objects.exclude(message_id=sent_id).values_list("message_id", flat=True)]
    assert len(filled) == 3
    assert rows_per_message(filled) == rows_per_message([sent_id]) == {
        "pending_dms": {1}, "dm_deliveries": {2}, "dm_used_message_ids": {1}, "dm_delivery_states": {2}}
    for recipient in recipients:
        device = Delivery.objects.filter(device__device_id=recipient.id).first().device
        assert pending_count_for_device(device=device) == 4
        page = api.post("/api/v1/dms/sync", {"limit": 10}, recipient)
        served = [m["message_id"] for m in page["messages"]]
        assert sorted(served) == sorted([sent_id, *filled])
        assert all(m["key_wrap"] and m["ciphertext"] for m in page["messages"])
        api.post("/api/v1/dms/ack", {"message_ids": served}, recipient)
        assert pending_count_for_device(device=device) == 0
    assert set(DeliveryState.objects.values_list("state", flat=True)) == {DeliveryState.State.DELIVERED}
