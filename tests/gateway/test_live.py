"""Two daphne processes sharing one Redis and one database: an event raised in
one reaches a connection held by the other, and only the right one."""
import asyncio
import time

import pytest

from tests.factories import build_send, create_conversation, directory, make_person, send
from tests.gateway.wsutil import Listener

pytestmark = [pytest.mark.live, pytest.mark.requires_redis]


def test_dm_notify_crosses_processes_and_reaches_only_the_recipient(daphne_factory):
    a, b = daphne_factory(), daphne_factory()
    alice, bob, carol = (make_person(1, base_url=b.url) for _ in range(3))
    conversation = create_conversation(alice.device, [bob.id])
    recipients = [d for d in directory(alice.device.client, conversation["participants"]) if d != alice.device.id]

    async def scenario():
        bob_on_a = await Listener.open(a, bob.device.client.token)
        bystanders = [await Listener.open(server, carol.device.client.token) for server in (a, b)]
        sender_on_a = await Listener.open(a, alice.device.client.token)

        body = build_send(alice.device, conversation, recipients=recipients)
        response = await asyncio.to_thread(send, alice.device, body)  # through process B
        answered = time.monotonic()
        assert response.status_code == 201, response.text
        arrived, notify = await bob_on_a.wait_for("DM_NOTIFY", timeout=1)
        assert arrived - answered < 1.0
        assert notify["d"] == {"pending_count": 1, "conversation_id": conversation["conversation_id"],
                               "message_id": body["message_id"]}
        await asyncio.sleep(0.5)
        assert [listener.ops() for listener in (*bystanders, sender_on_a)] == [["HELLO"]] * 3

        # revoking through B closes bob's connections on both processes at once
        bob_on_b = await Listener.open(b, bob.device.client.token)
        master = await asyncio.to_thread(bob.master_client)
        response = await asyncio.to_thread(master.delete, f"/api/v1/devices/{bob.device.id}")
        assert response.status_code == 204
        await asyncio.wait_for(asyncio.gather(bob_on_a.task, bob_on_b.task), timeout=2)
        assert bob_on_a.close_code == bob_on_b.close_code == 4003
        for listener in (*bystanders, sender_on_a):
            await listener.close()

    asyncio.run(scenario())
