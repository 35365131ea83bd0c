"""Gateway events, sent only after the transaction that caused them commits.

The WebSocket is a doorbell: payloads carry ids and counts, the mailbox is the
database. Sending is best effort: if the channel layer is down the failure is
logged and the device finds its mail on its next sync or HELLO."""
import asyncio
import logging
import time

from asgiref.sync import async_to_sync
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
    # An unresponsive Redis would otherwise hold the request that committed for
    # the client library's socket timeout (seconds) per send.
    results = await asyncio.wait_for(
        asyncio.gather(*(layer.group_send(g, m) for g, m in messages), return_exceptions=True),
        timeout=settings.GATEWAY_NOTIFY_TIMEOUT_MS / 1000)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        metrics.CHANNEL_LAYER_FAILURES.inc(len(failed))
        logger.warning("gateway notify: %d of %d sends failed (%s)", len(failed), len(messages),
                       type(failed[0]).__name__)


def _send_now(messages: list[tuple[str, dict]]) -> None:
    if not messages:
        return
    try:
        async_to_sync(_group_send_all)(messages)
    except Exception as exc:  # noqa: BLE001 - notification never breaks a committed write
        metrics.CHANNEL_LAYER_FAILURES.inc()
        logger.warning("gateway notify failed: %s", type(exc).__name__)


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
