"""Gateway clients for tests: WebsocketCommunicator against the real ASGI
application, and `Listener`, a real WebSocket to a live daphne."""
import asyncio
import json
import time

from channels.testing import WebsocketCommunicator
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from decentcom.asgi import application


def communicator(*, token: str | None = None, ticket: str | None = None,
                 authorization: str | None = None) -> WebsocketCommunicator:
    headers = []
    if token is not None:
        authorization = f"Bearer {token}"
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    path = "/api/v1/gateway" + (f"?ticket={ticket}" if ticket is not None else "")
    return WebsocketCommunicator(application, path, headers=headers)


async def connect(token: str | None = None, **kw) -> tuple[WebsocketCommunicator, dict]:
    """Connect and read HELLO."""
    comm = communicator(token=token, **kw)
    connected, _ = await comm.connect()
    assert connected
    hello = await comm.receive_json_from(timeout=5)
    assert hello["op"] == "HELLO", hello
    return comm, hello


async def closed_with(comm: WebsocketCommunicator, timeout: float = 5) -> int:
    """The close code, failing on any frame that comes before it."""
    output = await comm.receive_output(timeout)
    assert output["type"] == "websocket.close", output
    return output["code"]


async def connect_refused(**kw) -> int:
    """Connect with bad credentials: accepted, then closed with no frame."""
    comm = communicator(**kw)
    connected, _ = await comm.connect()
    assert connected
    code = await closed_with(comm)
    # Let the consumer finish: left for the event loop's shutdown to cancel, a
    # Redis channel-layer receive can hang that shutdown.
    await comm.disconnect()
    return code


async def next_op(comm: WebsocketCommunicator, op: str, timeout: float = 5) -> dict:
    """The next frame, which must be `op`, within `timeout`; HEARTBEATs before it are answered."""
    deadline = time.monotonic() + timeout
    while True:
        message = await comm.receive_json_from(timeout=max(0.01, deadline - time.monotonic()))
        if message["op"] == "HEARTBEAT" and op != "HEARTBEAT":
            await comm.send_to(text_data=json.dumps({"op": "HEARTBEAT_ACK", "d": {}}))
            continue
        assert message["op"] == op, message
        return message


async def silent(*comms: WebsocketCommunicator, timeout: float = 0.3) -> bool:
    for comm in comms:
        if not await comm.receive_nothing(timeout=timeout):
            return False
    return True


async def close_all(*comms: WebsocketCommunicator) -> None:
    for comm in comms:
        await comm.disconnect()


class Listener:
    """A gateway connection that stamps each frame with its arrival time."""

    def __init__(self, ws):
        self.ws = ws
        self.frames: list[tuple[float, dict]] = []
        self.close_code = None
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, server, token: str) -> "Listener":
        ws = await ws_connect(server.ws_url, additional_headers={"Authorization": f"Bearer {token}"})
        listener = cls(ws)
        await listener.wait_for("HELLO")
        return listener

    async def _read(self):
        try:
            async for message in self.ws:
                self.frames.append((time.monotonic(), json.loads(message)))
        except ConnectionClosed:  # any code but 1000/1001
            pass
        self.close_code = self.ws.close_code

    async def wait_for(self, op: str, timeout: float = 5) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for arrived, frame in self.frames:
                if frame["op"] == op:
                    return arrived, frame
            await asyncio.sleep(0.005)
        raise AssertionError(f"no {op} in {timeout} s: {self.frames}")

    def ops(self) -> list[str]:
        return [frame["op"] for _, frame in self.frames]

    async def close(self):
        await self.ws.close()
        await self.task
