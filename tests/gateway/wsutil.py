"""Gateway clients for tests: WebsocketCommunicator against the real ASGI application."""
import json
import time

from channels.testing import WebsocketCommunicator

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
