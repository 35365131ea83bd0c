"""Notification is best effort: a channel layer that is down or hangs never
costs a stored message nor holds up the `201` (issue 4)."""
import os
import shutil
import signal
import time

import pytest
from django.test import override_settings

from tests.factories import build_send, create_conversation, make_person, send, sync
from tests.faults.services import PrivateRedis
from tests.live import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def redis_layer(url: str) -> dict:
    return {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [url]}}}


def send_timed(sender, conversation) -> tuple[dict, float]:
    body = build_send(sender, conversation)
    started = time.monotonic()
    response = send(sender, body)
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.content
    return body, elapsed


def test_send_is_stored_and_answered_when_redis_refuses_connections(caplog):
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])
    with override_settings(CHANNEL_LAYERS=redis_layer(f"redis://127.0.0.1:{free_port()}/0")):
        body, elapsed = send_timed(alice.device, conversation)
    assert elapsed < 1
    assert [m["message_id"] for m in sync(bob.device)["messages"]] == [body["message_id"]]
    assert "gateway notify" in caplog.text


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
@override_settings(GATEWAY_NOTIFY_TIMEOUT_MS=300)
def test_an_unresponsive_redis_holds_send_no_longer_than_the_notify_timeout(caplog):
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id])
    redis = PrivateRedis()
    try:
        with override_settings(CHANNEL_LAYERS=redis_layer(redis.url)):
            send_timed(alice.device, conversation)  # connected while Redis answers
            os.kill(redis.proc.pid, signal.SIGSTOP)  # accepts TCP, never replies
            try:
                body, elapsed = send_timed(alice.device, conversation)
            finally:
                os.kill(redis.proc.pid, signal.SIGCONT)
    finally:
        redis.close()
    assert elapsed < 1.5  # the client library's own socket timeout is 5 s
    assert body["message_id"] in [m["message_id"] for m in sync(bob.device)["messages"]]
    assert "TimeoutError" in caplog.text
