"""Background sync over the gateway (§9): answer heartbeats, sync on HELLO and
DM_NOTIFY, refill one-time prekeys on PREKEYS_LOW, follow device and conversation changes and delivery status (DM_STATUS), and reconnect with
backoff when the server or the network goes away. The WebSocket is only a
doorbell: every message comes through `Client.sync`, so whatever was missed
while disconnected is fetched on the HELLO that follows reconnection."""
from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from dmclient.api import ApiError, NetworkError
from dmclient.client import Client, ClientError

CLOSE_AUTH_FAILED = 4001
CLOSE_REVOKED = 4003
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
SYNC_RETRY_S = 5.0
PREKEYS_CHECK_S = 3600.0  # how often a listener looks whether its signed prekey is due for rotation (§6b)


def gateway_url(server: str) -> str:
    scheme, rest = server.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest.rstrip('/')}/api/v1/gateway"


class Revoked(Exception):
    """This device has been revoked: listening is over."""


class Listener:
    """`emit` receives every status change and every item for the user as a dict.
    The store is used from one worker thread only, so heartbeats are answered
    while a long sync runs."""

    def __init__(self, client: Client, emit: Callable[[dict], None], *,
                 progress: Callable[[int, int | None], None] | None = None, backoff_max: float = BACKOFF_MAX_S):
        self.client = client
        self.emit = emit
        self.progress = progress
        self.backoff_max = backoff_max
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmclient-store")
        self.sync_wanted = asyncio.Event()
        self.pending_hint: int | None = None

    async def _worker(self, fn, *args, **kw):
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args, **kw))

    async def run(self) -> None:
        """Until this device is revoked (raises `Revoked`) or the task is cancelled."""
        tasks = [asyncio.create_task(self._connect_loop()), asyncio.create_task(self._sync_loop()),
                 asyncio.create_task(self._prekeys_loop())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.executor.shutdown(wait=True)

    async def _flush(self) -> None:
        for item in await self._worker(self.client.take_unshown):
            self.emit(item)

    # --- the connection ----------------------------------------------------------------

    async def _connect_loop(self) -> None:
        url = gateway_url(self.client.server)
        delay = BACKOFF_FIRST_S
        while True:
            code, reason = None, ""
            try:
                token = await self._worker(self.client.token)
                async with connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                   open_timeout=10, close_timeout=2) as ws:
                    async for raw in ws:
                        if await self._on_frame(ws, raw):
                            delay = BACKOFF_FIRST_S
                code = ws.close_code
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
            except (OSError, InvalidHandshake, TimeoutError, NetworkError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except ApiError as exc:
                if exc.code == "device_revoked":
                    self.emit({"event": "revoked", "detail": exc.detail})
                    raise Revoked(exc.detail) from None
                reason = str(exc)
            if code == CLOSE_REVOKED:
                self.emit({"event": "revoked", "detail": "the server closed the gateway: this device is revoked"})
                raise Revoked("closed with 4003")
            if code == CLOSE_AUTH_FAILED:
                await self._worker(self.client.forget_token)  # log in afresh on the next attempt
            wait = delay * random.uniform(0.8, 1.2)
            self.emit({"event": "disconnected", "code": code, "reason": reason, "retry_in": round(wait, 2)})
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.backoff_max)

    async def _on_frame(self, ws, raw) -> bool:
        """Handle one frame; True on HELLO (the connection is fully up)."""
        try:
            frame = json.loads(raw)
            op, d = frame["op"], frame.get("d") or {}
            if not isinstance(d, dict):
                raise TypeError("d is not an object")
        except (ValueError, TypeError, KeyError):
            return False
        if op == "HEARTBEAT":
            await ws.send(json.dumps({"op": "HEARTBEAT_ACK", "d": {}}))
        elif op == "HELLO":
            self.pending_hint = d.get("pending_count") if isinstance(d.get("pending_count"), int) else None
            self.emit({"event": "connected", "pending_count": self.pending_hint})
            self.sync_wanted.set()
            try:  # DM_STATUS events missed while away
                for item in await self._worker(self.client.catch_up_statuses):
                    self.emit(item)
            except (ApiError, NetworkError) as exc:
                self.emit({"event": "status_failed", "detail": str(exc)})
            return True
        elif op == "DM_NOTIFY":
            self.sync_wanted.set()
        elif op == "PREKEYS_LOW":  # our one-time prekeys ran low on the server (§6b, §9): refill them
            try:
                held = await self._worker(self.client.maintain_prekeys)
            except (ApiError, NetworkError, ClientError) as exc:
                self.emit({"event": "prekeys_failed", "detail": str(exc)})
            else:
                self.emit({"event": "prekeys_refilled", "one_time_count": (held or {}).get("one_time_count")})
        elif op == "DM_STATUS":  # a delivery state of one of our messages changed (§7a)
            item = await self._worker(self.client.apply_status_event, d)
            if item is not None:
                self.emit(item)
        elif op in ("DEVICE_ADD", "DEVICE_REVOKE"):
            await self._worker(self._device_event, op, d)
            await self._flush()
        elif op == "CONVERSATION_UPDATE":
            try:
                await self._worker(self.client.apply_conversation_update, d)
            except ClientError as exc:
                self.emit({"event": "error", "code": exc.code, "detail": exc.detail})
            await self._flush()
        elif op == "ERROR":
            self.emit({"event": "error", "code": d.get("error"), "detail": d.get("detail")})
        return False

    def _device_event(self, op: str, d: dict) -> None:
        with self.client.store.transaction() as db:
            self.client.store.event_add(db, kind="device_added" if op == "DEVICE_ADD" else "device_revoked",
                                        detail={"device_id": d.get("device_id"), "name": d.get("name")})
        self.client.directory(self.client.user_id, refresh=True)

    async def _prekeys_loop(self) -> None:
        """A listener may run for weeks without a sync: rotation (local, no request unless due) hourly."""
        while True:
            await asyncio.sleep(PREKEYS_CHECK_S)
            try:
                await self._worker(self.client.maintain_prekeys, check_server=False)
            except (ApiError, NetworkError, ClientError) as exc:
                self.emit({"event": "prekeys_failed", "detail": str(exc)})

    # --- syncing --------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.sync_wanted.wait()
            self.sync_wanted.clear()
            total, self.pending_hint = self.pending_hint, None
            try:
                report = await self._worker(self.client.sync, progress=self.progress if total else None,
                                            total=total)
            except ApiError as exc:
                if exc.code == "device_revoked":
                    self.emit({"event": "revoked", "detail": exc.detail})
                    raise Revoked(exc.detail) from None
                self.emit({"event": "sync_failed", "error": exc.code, "detail": exc.detail})
                loop.call_later(SYNC_RETRY_S, self.sync_wanted.set)
            except (NetworkError, ClientError) as exc:
                self.emit({"event": "sync_failed", "error": type(exc).__name__, "detail": str(exc)})
                loop.call_later(SYNC_RETRY_S, self.sync_wanted.set)
            else:
                await self._flush()
                self.emit({"event": "synced", "accepted": report.accepted, "failed": report.failed})
