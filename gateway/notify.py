"""Gateway events, sent only after the transaction that caused them commits.

The WebSocket is a doorbell: payloads carry ids and counts, the mailbox is the
database. Sending is best effort: if the channel layer is down the failure is
logged and the device finds its mail on its next sync or HELLO."""
import asyncio
import collections
import logging
import os
import time
import weakref

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from decentcom import metrics

logger = logging.getLogger("gateway.notify")


def device_group(device_id: str) -> str:
    return f"device.{device_id}"


def user_group(user_id: str) -> str:
    return f"user.{user_id}"


def frame(op: str, d: dict) -> dict:
    return {"op": op, "d": d, "t": int(time.time() * 1000)}


async def _group_send_all(messages: list[tuple[str, dict]]) -> None:
    layer = get_channel_layer()
    failed = []
    # One deadline for the batch: an unresponsive Redis would otherwise hold the
    # events queued after these (or, without a server loop, the request) for the
    # client library's socket timeout. One send after the other: no task and no
    # timer per message, which cost more CPU than the in-memory layer's sends.
    async with asyncio.timeout(settings.GATEWAY_NOTIFY_TIMEOUT_MS / 1000):
        for group, message in messages:
            try:
                await layer.group_send(group, message)
            except Exception as exc:  # noqa: BLE001 - counted and logged below; the others still go
                failed.append(exc)
    if failed:
        metrics.CHANNEL_LAYER_FAILURES.inc(len(failed))
        logger.warning("gateway notify: %d of %d sends failed (%s)", len(failed), len(messages),
                       type(failed[0]).__name__)


def _failed(exc: Exception) -> None:
    metrics.CHANNEL_LAYER_FAILURES.inc()
    logger.warning("gateway notify failed: %s", type(exc).__name__)


async def _send_logged(messages: list[tuple[str, dict]]) -> None:
    try:
        await _group_send_all(messages)
    except Exception as exc:  # noqa: BLE001 - notification never breaks a committed write
        _failed(exc)


class _LoopSender:
    """One event loop's queue of sends, in commit order: one batch at a time,
    so two events for one device never overtake each other."""

    def __init__(self):
        self.pending = collections.deque()
        self.draining = False

    def submit(self, messages: list[tuple[str, dict]]) -> None:  # on the loop
        self.pending.append(messages)
        if not self.draining:
            self.draining = True
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.pending:
                await _send_logged(self.pending.popleft())
        finally:
            self.draining = False


_senders: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSender]" = weakref.WeakKeyDictionary()


def _submit(messages: list[tuple[str, dict]]) -> None:
    loop = asyncio.get_running_loop()
    sender = _senders.get(loop)
    if sender is None:
        sender = _senders[loop] = _LoopSender()
    sender.submit(messages)


def _server_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop this thread serves (a sync_to_async thread: the HTTP
    pool, the consumers' ORM calls): the one async_to_sync would use."""
    local = SyncToAsync.threadlocal
    loop = getattr(local, "main_event_loop", None)
    if loop is None or getattr(local, "main_event_loop_pid", None) != os.getpid() or loop.is_closed():
        return None
    return loop


def _send_now(messages: list[tuple[str, dict]]) -> None:
    if not messages:
        return
    loop = _server_loop()
    try:
        if loop is not None:
            # Queued on the server's loop, not waited for: the thread answers
            # its request at once instead of sleeping through the hop.
            loop.call_soon_threadsafe(_submit, messages)
        else:  # no server loop (a Celery task, a management command, the test client)
            async_to_sync(_send_logged)(messages)
    except Exception as exc:  # noqa: BLE001 - the loop is closing: the event is lost, as on any failure
        _failed(exc)


def _on_commit(messages: list[tuple[str, dict]]) -> None:
    transaction.on_commit(lambda messages=messages: _send_now(messages))


def notify_devices_on_commit(*, events: dict[str, tuple[str, dict]]) -> None:
    """`events`: device_id -> (op, d). Each device gets its own frame."""
    _on_commit([(device_group(device_id), {"type": "gateway.event", "op": op, "d": d})
                for device_id, (op, d) in events.items()])


def notify_users_on_commit(*, user_ids, op: str, d: dict) -> None:
    message = {"type": "gateway.event", "op": op, "d": d}
    _on_commit([(user_group(user_id), message) for user_id in sorted(set(user_ids))])


def notify_users_batch_on_commit(*, events: dict[str, list[tuple[str, dict]]]) -> None:
    """`events`: user_id -> [(op, d), ...]. Each user's frames travel in one
    channel-layer message (`gateway.events`) that the consumer writes out
    frame by frame: a batch costs one send per user, not one per frame."""
    _on_commit([(user_group(user_id), {"type": "gateway.events",
                                       "events": [{"op": op, "d": d} for op, d in frames]})
                for user_id, frames in sorted(events.items()) if frames])


def close_device_connections_on_commit(*, device_id: str, code: int) -> None:
    _on_commit([(device_group(device_id), {"type": "gateway.close", "code": code})])


def close_user_connections_on_commit(*, user_id: str, code: int) -> None:
    """Every connection of a user, master sessions' too (suspension)."""
    _on_commit([(user_group(user_id), {"type": "gateway.close", "code": code})])
