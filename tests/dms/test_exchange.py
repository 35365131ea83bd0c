"""A full multi-device exchange with real crypto: two users with two devices
each, then a group of three; recipients decrypt with the key they unwrapped,
the sender's other device gets its copy, and after the last ACK nothing of a
burn-on-read message remains."""
import os

import pytest
from django.apps import apps
from django.db import connection

from dms.models import Delivery, PendingDm
from tests.factories import ack, build_send, create_conversation, make_person, open_message, send, sync

pytestmark = pytest.mark.django_db


def all_text_in_database() -> bytes:
    """Every column of every row of every table, as bytes."""
    dump = []
    with connection.cursor() as cursor:
        for model in apps.get_models():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(model._meta.db_table)}")
            for row in cursor.fetchall():
                for value in row:
                    dump.append(value if isinstance(value, (bytes, memoryview)) else str(value).encode())
    return b"\n".join(bytes(v) for v in dump)


def test_two_users_two_devices_each_and_a_group_of_three():
    alice, bob, carol = make_person(2), make_person(2), make_person(1)
    direct = create_conversation(alice.device, [bob.id], retention={"policy": "burn_on_read"})
    key = os.urandom(32)
    secret = "the eagle lands at midnight ✓"
    body = build_send(alice.devices[0], direct, text=secret, group_key=key)
    assert send(alice.devices[0], body).json()["recipients"] == 3
    # bob's two devices and alice's other device decrypt with the key they unwrap
    for device in [*bob.devices, alice.devices[1]]:
        messages = sync(device)["messages"]
        assert len(messages) == 1
        assert open_message(device, messages[0])["body"] == secret
    assert sync(alice.devices[0])["messages"] == []  # not to the sending device
    # nothing in the database holds the plaintext, nor the group key
    dump = all_text_in_database()
    assert secret.encode() not in dump and key not in dump and key.hex().encode() not in dump
    # after the last ACK no row of the message remains
    for device in [*bob.devices, alice.devices[1]]:
        assert ack(device, [body["message_id"]])["acked"] == [body["message_id"]]
    assert not PendingDm.objects.exists() and not Delivery.objects.exists()

    # a reply with the next key, without wraps for those that hold it
    reply_key = os.urandom(32)
    reply = build_send(bob.devices[1], direct, text="roger", group_key=reply_key)
    assert send(bob.devices[1], reply).status_code == 201
    for device in [*alice.devices, bob.devices[0]]:
        msg = sync(device)["messages"][0]
        assert open_message(device, msg)["body"] == "roger"
        ack(device, [msg["message_id"]])
    second = build_send(bob.devices[1], direct, text="again", group_key=reply_key, wrap_for=[])
    assert send(bob.devices[1], second).status_code == 201
    msg = sync(alice.devices[0])["messages"][0]
    assert msg["key_wrap"] is None
    assert open_message(alice.devices[0], msg, group_key=reply_key)["body"] == "again"

    # a group of three
    group = create_conversation(carol.device, [alice.id, bob.id])
    assert group["kind"] == "group" and len(group["participants"]) == 3
    gkey = os.urandom(32)
    hello = build_send(carol.device, group, text="hi all", group_key=gkey)
    assert send(carol.device, hello).json()["recipients"] == 4
    for device in [*alice.devices, *bob.devices]:
        messages = [m for m in sync(device)["messages"] if m["conversation_id"] == group["conversation_id"]]
        assert [open_message(device, m)["body"] for m in messages] == ["hi all"]
    assert sync(carol.device)["messages"] == []
