"""`POST /api/v1/gateway/ticket` and `?ticket=` (§9): single use, 60 s, stored hashed."""
import datetime as dt
import hashlib
import threading

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from gateway.models import GatewayTicket
from gateway.services import TICKET_RATE_PER_SESSION, gateway_ticket_consume
from tests.factories import make_person
from tests.gateway.wsutil import close_all, connect, connect_refused

pytestmark = pytest.mark.django_db(transaction=True)


def new_ticket(client) -> dict:
    response = client.post("/api/v1/gateway/ticket")
    assert response.status_code == 200, response.content
    return response.json()


def test_ticket_is_stored_only_hashed_and_lives_60_seconds():
    alice = make_person(1)
    before = timezone.now()
    body = new_ticket(alice.device.client)
    assert set(body) == {"ticket", "expires_at"}
    expires_at = dt.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert before + dt.timedelta(seconds=59) <= expires_at <= timezone.now() + dt.timedelta(seconds=60)
    row = GatewayTicket.objects.get()
    assert row.ticket_sha256 == hashlib.sha256(body["ticket"].encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM gateway_tickets")
        assert not any(body["ticket"] in str(value) for value in cursor.fetchone())


def test_ticket_needs_a_session_and_a_master_session_may_have_one():
    alice = make_person(1)
    response = APIClient().post("/api/v1/gateway/ticket")
    assert response.status_code == 401 and response.json()["error"] == "not_authenticated"
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer nope")
    assert bad.post("/api/v1/gateway/ticket").status_code == 401
    master = alice.master_client()
    ticket = new_ticket(master)["ticket"]

    async def scenario():
        comm, hello = await connect(ticket=ticket)
        assert hello["d"]["user_id"] == alice.id and hello["d"]["device_id"] is None
        await close_all(comm)

    async_to_sync(scenario)()


def test_ticket_works_once():
    alice = make_person(1)
    ticket = new_ticket(alice.device.client)["ticket"]

    async def scenario():
        comm, hello = await connect(ticket=ticket)
        assert hello["d"]["device_id"] == alice.device.id
        assert await connect_refused(ticket=ticket) == 4001
        await close_all(comm)

    async_to_sync(scenario)()


def test_expired_ticket_is_refused_and_deleted():
    alice = make_person(1)
    ticket = new_ticket(alice.device.client)["ticket"]
    GatewayTicket.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert async_to_sync(connect_refused)(ticket=ticket) == 4001
    assert not GatewayTicket.objects.exists()


def test_ticket_dies_with_its_session():
    alice = make_person(2)
    logged_out = new_ticket(alice.devices[0].client)["ticket"]
    assert alice.devices[0].client.post("/api/v1/auth/logout").status_code == 204
    revoked = new_ticket(alice.devices[1].client)["ticket"]
    assert alice.master_client().delete(f"/api/v1/devices/{alice.devices[1].id}").status_code == 204

    async def scenario():
        assert await connect_refused(ticket=logged_out) == 4001
        assert await connect_refused(ticket=revoked) == 4001

    async_to_sync(scenario)()


def test_ticket_creation_is_rate_limited_per_session():
    alice = make_person(1)
    for _ in range(TICKET_RATE_PER_SESSION):
        new_ticket(alice.device.client)
    response = alice.device.client.post("/api/v1/gateway/ticket")
    assert response.status_code == 429 and response.json()["error"] == "rate_limited"
    assert int(response["Retry-After"]) >= 1
    new_ticket(alice.master_client())  # another session has its own budget


@pytest.mark.requires_postgres
def test_concurrent_uses_of_one_ticket_let_exactly_one_in():
    alice = make_person(1)
    ticket = new_ticket(alice.device.client)["ticket"]
    barrier = threading.Barrier(8)
    results = []

    def use():
        barrier.wait()
        try:
            results.append(gateway_ticket_consume(ticket=ticket))
        finally:
            connection.close()

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and sum(r is not None for r in results) == 1
