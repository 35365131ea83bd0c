"""§9 connection limits with real WebSockets against a running daphne: per
device, and for master sessions per user (which were unlimited: 500 of 500
held)."""
import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.factories import make_person
from tests.gateway.wsutil import Listener

pytestmark = pytest.mark.live


async def refused_code(server, token: str) -> int:
    """Connect: the server accepts, then closes before HELLO."""
    async with connect(server.ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        with pytest.raises(ConnectionClosed):
            frame = await ws.recv()
            raise AssertionError(f"a frame before the close: {frame}")
        return ws.close_code


def test_master_sessions_are_limited_per_user(daphne_server, live_database):
    alice, bob = make_person(1, base_url=daphne_server.url), make_person(1, base_url=daphne_server.url)
    live_database.sql("UPDATE dm_server_settings SET max_gateway_master_connections_per_user = 2, "
                      "max_gateway_connections_per_device = 1")
    # Separate master sessions: the limit is the user's, not one session's.
    first, second, third = (alice.master_client().token for _ in range(3))

    async def scenario():
        held = [await Listener.open(daphne_server, first), await Listener.open(daphne_server, second)]
        assert await asyncio.wait_for(refused_code(daphne_server, third), 5) == 4008
        assert await asyncio.wait_for(refused_code(daphne_server, first), 5) == 4008
        # Devices and other users count apart.
        device = await Listener.open(daphne_server, alice.device.client.token)
        assert await asyncio.wait_for(refused_code(daphne_server, alice.device.client.token), 5) == 4008
        other = await Listener.open(daphne_server, bob.master_client().token)
        # A closed connection frees its slot at once.
        await held[0].close()
        again = await Listener.open(daphne_server, third)
        await asyncio.sleep(0.3)
        assert [listener.close_code for listener in (held[1], device, other, again)] == [None] * 4
        for listener in (held[1], device, other, again):
            await listener.close()

    asyncio.run(scenario())
