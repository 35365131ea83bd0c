"""PREKEYS_LOW (§9) over a real WebSocket to a live daphne: after the claim
commits, to the device whose supply fell below 20, and to no one else."""
import asyncio

import pytest

from dmclient import protocol
from tests.factories import make_person
from tests.gateway.wsutil import Listener

pytestmark = [pytest.mark.live]


def test_prekeys_low_reaches_only_the_drained_device(daphne_server):
    alice, bob, carol = (make_person(n, base_url=daphne_server.url) for n in (1, 2, 1))
    drained, other = bob.devices
    for device, n in ((drained, 20), (other, 40), (carol.device, 40)):
        keys = [{"id": i, "x25519": protocol.b64e(protocol.x25519_keypair()[1])} for i in range(1, n + 1)]
        assert device.client.put("/api/v1/devices/prekeys", {"one_time": keys}).status_code == 200

    def claim(device_ids):
        response = alice.device.client.post("/api/v1/dms/prekeys/claim", {"devices": device_ids})
        assert response.status_code == 200, response.text
        return response.json()["prekeys"]

    async def scenario():
        listeners = {name: await Listener.open(daphne_server, d.client.token) for name, d in (
            ("drained", drained), ("other", other), ("carol", carol.device), ("alice", alice.device))}
        claimed = await asyncio.to_thread(claim, [drained.id, other.id, carol.device.id])
        assert [p["one_time"]["id"] for p in claimed] == [1, 1, 1]
        _, frame = await listeners["drained"].wait_for("PREKEYS_LOW")
        assert frame["d"] == {"one_time_count": 19}
        # the count is as committed: what a GET now says
        got = await asyncio.to_thread(drained.client.get, "/api/v1/devices/prekeys")
        assert got.json()["one_time_count"] == 19
        await asyncio.sleep(0.5)
        assert {name: listener.ops() for name, listener in listeners.items()} == {
            "drained": ["HELLO", "PREKEYS_LOW"], "other": ["HELLO"], "carol": ["HELLO"], "alice": ["HELLO"]}
        for listener in listeners.values():
            await listener.close()

    asyncio.run(scenario())
