"""Notification is best effort: a channel layer that is down or hangs never
costs a stored message nor holds up the `201` (issue 4)."""
import asyncio
import os
import shutil
import signal
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import transaction
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


class GatedLayer(InMemoryChannelLayer):
    """Channels' in-memory layer whose group_send waits until the test opens the gate."""

    gate: asyncio.Event

    async def group_send(self, group, message):
        await self.gate.wait()
        await super().group_send(group, message)


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "tests.gateway.test_notify.GatedLayer"}},
                   GATEWAY_NOTIFY_TIMEOUT_MS=2000)
def test_a_request_thread_queues_its_events_on_the_server_loop_without_waiting_for_them(caplog):
    """From a thread serving the event loop (the HTTP pool), the events are
    queued on the loop and the thread goes on at once, in commit order."""
    from gateway.notify import device_group, notify_devices_on_commit

    def commit_events():
        for n in range(5):
            with transaction.atomic():
                notify_devices_on_commit(events={"dev": ("DM_NOTIFY", {"n": n})})
        return "returned"

    async def scenario():
        layer = get_channel_layer()
        layer.gate = asyncio.Event()
        channel = await layer.new_channel()
        await layer.group_add(device_group("dev"), channel)
        # The gate opens only after the thread returned: had it waited for its sends, they would time out.
        assert await sync_to_async(commit_events)() == "returned"
        layer.gate.set()
        return [(await asyncio.wait_for(layer.receive(channel), 5))["d"]["n"] for _ in range(5)]

    assert async_to_sync(scenario)() == [0, 1, 2, 3, 4]
    assert "gateway notify" not in caplog.text
