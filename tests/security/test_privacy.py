"""After a full exchange, no table and no log line holds a plaintext, a
bearer token, a group key, a key wrap or a ciphertext where it should not."""
import logging
import os

import pytest
from django.apps import apps
from django.db import connection
from rest_framework.test import APIClient

from dmclient import protocol
from tests.factories import ack, build_send, create_conversation, make_person, send, sync

pytestmark = pytest.mark.django_db


def database_dump() -> bytes:
    chunks = []
    with connection.cursor() as cursor:
        for model in apps.get_models():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(model._meta.db_table)}")
            for row in cursor.fetchall():
                for value in row:
                    chunks.append(bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode())
    return b"\n".join(chunks)


def test_full_exchange_leaves_no_secret_in_tables_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    alice, bob, carol = make_person(2), make_person(1), make_person(1)
    tokens = [d.client.token for p in (alice, bob, carol) for d in p.devices]
    master_client = alice.master_client()
    tokens.append(master_client.token)
    plaintexts, keys, wraps, ciphertexts = [], [], [], []
    direct = create_conversation(alice.device, [bob.id])
    group = create_conversation(carol.device, [alice.id, bob.id], retention={"policy": "burn_on_read"})
    for i, (sender, conv) in enumerate([(alice.device, direct), (bob.device, direct), (carol.device, group)]):
        text, key = f"secret plaintext number {i} 🦉", os.urandom(32)
        body = build_send(sender, conv, text=text, group_key=key)
        assert send(sender, body).status_code == 201
        assert send(sender, body).status_code == 200  # a retry too
        plaintexts.append(text)
        keys.append(key)
        ciphertexts.append(body["ciphertext"])
        wraps += [r["key_wrap"]["wrapped_key"] for r in body["recipients"]]
    for person in (alice, bob, carol):
        for device in person.devices:
            ack(device, [m["message_id"] for m in sync(device)["messages"]])
    # a failing send that carries a ciphertext and wraps: the error must not echo them
    bad = build_send(alice.device, direct)
    bad["signature"] = protocol.b64e(os.urandom(64))
    response = send(alice.device, bad)
    assert response.status_code == 400
    assert bad["ciphertext"] not in response.content.decode()
    assert all(r["key_wrap"]["wrapped_key"] not in response.content.decode() for r in bad["recipients"])
    # and one with a bad token
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer " + tokens[0][::-1])
    assert client.post("/api/v1/dms/sync", {}, format="json").status_code == 401
    master_client.post("/api/v1/auth/logout")

    dump = database_dump()
    logs = "\n".join(record.getMessage() + " " + str(record.args) for record in caplog.records).encode()
    assert logs  # the exchange did log
    for text in plaintexts:
        assert text.encode() not in dump and text.encode() not in logs
    for token in tokens:
        assert token.encode() not in dump and token.encode() not in logs
        assert token[::-1].encode() not in logs
    for key in keys:
        assert key not in dump and protocol.b64e(key).encode() not in dump and key.hex().encode() not in logs
    for secret in wraps + ciphertexts:
        assert secret.encode() not in logs


def test_tokens_are_stored_as_sha256_only():
    import hashlib

    from devices.models import AuthSession

    person = make_person(1)
    session = AuthSession.objects.get(device__device_id=person.device.id)
    assert session.token_sha256 == hashlib.sha256(person.device.client.token.encode()).hexdigest()
