"""The gateway (§9): a doorbell per connected client; the mailbox is the database.

Close codes: 4000 malformed frames kept coming; 4001 bad credentials, or the
session ended (logout, expiry) while connected; 4002 heartbeat not answered in
time; 4003 the device was revoked; 4008 the device already holds
`max_gateway_connections_per_device` connections, or the user's master
sessions together `max_gateway_master_connections_per_user`; 4010 the server
lost its channel layer (Redis): reconnect with backoff and catch up from HELLO."""
import asyncio
import logging
import time
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from decentcom import metrics
from decentcom.errors import ApiError
from decentcom.parsers import json_loads
from decentcom.ratelimit import client_address
from gateway import selectors, services
from gateway.notify import device_group, frame, user_group

logger = logging.getLogger("gateway.consumers")

CLOSE_MALFORMED = 4000
CLOSE_AUTH_FAILED = selectors.CLOSE_AUTH_FAILED
CLOSE_HEARTBEAT_TIMEOUT = 4002
CLOSE_TOO_MANY_CONNECTIONS = 4008
CLOSE_RECONNECT = 4010
# What a lost Redis raises from the channel layer.
CHANNEL_LAYER_ERRORS = (RedisError, OSError)

MAX_MALFORMED_IN_A_ROW = 5
MAX_FRAME_CHARS = 16 * 1024
ACCOUNT_OPS = frozenset({"DEVICE_ADD", "DEVICE_REVOKE"})  # all a master session receives


def parse_frame(text_data: str | None) -> tuple[dict | None, str]:
    """A client frame, or None and why it is malformed."""
    if text_data is None:
        return None, "frames are JSON text, not binary"
    if len(text_data) > MAX_FRAME_CHARS:
        return None, f"frame is over {MAX_FRAME_CHARS} characters"
    try:
        content = json_loads(text_data)  # the API's own rules: depth, int64, finite
    except ApiError as exc:
        return None, str(exc.detail)
    if not isinstance(content, dict):
        return None, "frame must be a JSON object"
    if not isinstance(content.get("op"), str) or not content["op"]:
        return None, "op must be a non-empty string"
    if not isinstance(content.get("d", {}), dict):
        return None, "d must be an object"
    return content, ""


class GatewayConsumer(AsyncJsonWebsocketConsumer):
    session_id: int | None = None
    user_id: str | None = None
    device_id: str | None = None  # None: a master session
    device_pk: int | None = None
    slot_key: str | None = None
    closed = False
    counted = False  # in the gateway-connections gauge
    malformed = 0
    heartbeat_task: asyncio.Task | None = None
    watch: "SessionWatch | None" = None
    groups_joined_at = 0.0

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        except CHANNEL_LAYER_ERRORS as exc:
            # Without the layer no event reaches this connection: tell the client
            # to come back (§9) instead of dying with 1011 and a traceback.
            logger.warning("gateway: channel layer lost (%s): closing %d", type(exc).__name__, CLOSE_RECONNECT)
            await self._close_without_layer()

    async def _close_without_layer(self) -> None:
        self._stop_heartbeat()
        if not self.closed:
            self.closed = True
            await self.base_send({"type": "websocket.close", "code": CLOSE_RECONNECT})
        if self.slot_key:  # fails quietly while Redis is gone; the lease frees it then
            await sync_to_async(services.gateway_slot_release)(key=self.slot_key, owner=self.channel_name)

    async def connect(self):
        # Accept first: a refused handshake tells the client nothing, a 4001 does (§9).
        await self.accept()
        self.acked = asyncio.Event()
        session = await database_sync_to_async(services.gateway_authenticate)(
            authorization=self._header(b"authorization"), ticket=self._query("ticket"))
        if session is None:
            logger.info("gateway: authentication failed from %s", client_address({
                "REMOTE_ADDR": (self.scope.get("client") or [""])[0],
                "HTTP_X_FORWARDED_FOR": self._header(b"x-forwarded-for").decode("latin-1")}))
            await self.close_with(CLOSE_AUTH_FAILED)
            return
        self.session_id, self.user_id = session.pk, session.user.username
        if session.device is not None:
            self.device_id, self.device_pk = session.device.device_id, session.device.pk
        allowed, self.slot_key = await database_sync_to_async(services.gateway_slot_claim)(
            user_id=self.user_id, device_id=self.device_id, owner=self.channel_name)
        if not allowed:
            await self.close_with(CLOSE_TOO_MANY_CONNECTIONS)
            return
        await self._join_groups()
        # Read after joining: a message committed from here on also rings the bell.
        hello = await database_sync_to_async(selectors.gateway_hello_get)(session_id=self.session_id)
        if hello is None:
            await self.close_with(await self._session_close_code() or CLOSE_AUTH_FAILED)
            return
        await self.send_frame("HELLO", {
            "heartbeat_interval_ms": settings.GATEWAY_HEARTBEAT_INTERVAL_MS,
            "user_id": self.user_id, "device_id": self.device_id, **hello})
        self.heartbeat_task = asyncio.create_task(self._heartbeat())
        self.watch = SessionWatch.of_running_loop()
        self.watch.add(self)
        self.counted = True
        metrics.GATEWAY_CONNECTIONS.inc()

    async def disconnect(self, code):
        self.closed = True
        if self.counted:
            self.counted = False
            metrics.GATEWAY_CONNECTIONS.dec()
        self._stop_heartbeat()
        if self.slot_key:
            await sync_to_async(services.gateway_slot_release)(key=self.slot_key, owner=self.channel_name)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if self.closed or self.session_id is None:
            return
        content, problem = parse_frame(text_data)
        if content is None:
            self.malformed += 1
            await self.send_frame("ERROR", {"error": "malformed_frame", "detail": problem})
            if self.malformed >= MAX_MALFORMED_IN_A_ROW:
                await self.close_with(CLOSE_MALFORMED)
            return
        self.malformed = 0
        if content["op"] == "HEARTBEAT_ACK":
            self.acked.set()
        # Any other client op is ignored (§9), so clients may add ops older servers skip.

    # --- channel-layer messages (gateway/notify.py) ---

    async def gateway_event(self, message):
        if self.device_id is None and message["op"] not in ACCOUNT_OPS:
            return
        await self.send_frame(message["op"], message["d"])

    async def gateway_events(self, message):
        # Several frames in one channel-layer message (notify_users_batch_on_commit).
        for event in message["events"]:
            await self.gateway_event(event)

    async def gateway_close(self, message):
        await self.close_with(message["code"])

    # --- helpers ---

    async def send_frame(self, op: str, d: dict) -> None:
        if not self.closed:
            await self.send_json(frame(op, d))

    async def close_with(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        await self.close(code=code)
        self._stop_heartbeat()

    def _stop_heartbeat(self) -> None:
        if self.watch is not None:
            self.watch.discard(self)
        task = self.heartbeat_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _join_groups(self) -> None:
        # Disconnect discards `self.groups`. Joining again renews the membership,
        # which the channel layer otherwise drops after its `group_expiry`.
        self.groups = [user_group(self.user_id)] + ([device_group(self.device_id)] if self.device_id else [])
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined_at = time.monotonic()

    async def _session_close_code(self) -> int | None:
        return await database_sync_to_async(selectors.gateway_session_close_code)(
            session_id=self.session_id, device_pk=self.device_pk)

    async def _heartbeat(self) -> None:
        interval = settings.GATEWAY_HEARTBEAT_INTERVAL_MS / 1000
        grace = settings.GATEWAY_HEARTBEAT_GRACE_MS / 1000
        group_renew_s = getattr(self.channel_layer, "group_expiry", 86400) / 2
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.closed:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            self.acked.clear()
            await self.send_frame("HEARTBEAT", {})
            try:
                await asyncio.wait_for(self.acked.wait(), grace)
            except asyncio.TimeoutError:
                await self.close_with(CLOSE_HEARTBEAT_TIMEOUT)
                return
            if time.monotonic() - self.groups_joined_at > group_renew_s:
                try:
                    await self._join_groups()
                except Exception as exc:  # noqa: BLE001 - a channel-layer blip; retried next beat
                    logger.warning("gateway: groups not renewed: %s", type(exc).__name__)

    def _header(self, name: bytes) -> bytes:
        return next((value for key, value in self.scope.get("headers", []) if key.lower() == name), b"")

    def _query(self, name: str) -> str | None:
        values = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get(name)
        return values[0] if values else None


class SessionWatch:
    """The session check and slot renewal of every connection of an event loop
    (a daphne process), once per heartbeat interval: one query per
    CHECK_CHUNK sessions and one thread hop, where one of each per connection
    queued 333 a second on the one database thread at 10,000 connections.
    Logout, expiry and suspension close their connections here, within one
    interval; revocation closes them at once through gateway.close."""

    _current: "SessionWatch | None" = None

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.consumers: set[GatewayConsumer] = set()
        self.task: asyncio.Task | None = None

    @classmethod
    def of_running_loop(cls) -> "SessionWatch":
        loop = asyncio.get_running_loop()
        if cls._current is None or cls._current.loop is not loop:  # tests run a loop each
            cls._current = cls(loop)
        return cls._current

    def add(self, consumer: GatewayConsumer) -> None:
        self.consumers.add(consumer)
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._run())

    def discard(self, consumer: GatewayConsumer) -> None:
        self.consumers.discard(consumer)

    async def _run(self) -> None:
        while self.consumers:  # ends with the last connection, so an idle loop holds no task
            await asyncio.sleep(settings.GATEWAY_HEARTBEAT_INTERVAL_MS / 1000)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the watch must outlive one bad round
                logger.exception("gateway: session watch round failed")

    async def check(self) -> None:
        consumers = [c for c in self.consumers if not c.closed]
        if not consumers:
            return
        try:
            ended = await database_sync_to_async(selectors.gateway_sessions_ended)(
                sessions={c.session_id: c.device_pk for c in consumers})
        except DatabaseError as exc:
            logger.warning("gateway: sessions not checked: %s", type(exc).__name__)
            ended = {}
        slots = {c.slot_key: c.channel_name for c in consumers if c.slot_key and c.session_id not in ended}
        if slots:
            await sync_to_async(services.gateway_slots_renew)(slots=slots)
        for consumer in consumers:
            if consumer.session_id in ended:
                await consumer.close_with(ended[consumer.session_id])
