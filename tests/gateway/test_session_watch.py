"""The batched session check behind SessionWatch (gateway/consumers.py): one
query for the live sessions of all a process's connections, and the right
close code for each that ended."""
import datetime as dt
import os
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone

from devices.models import AuthSession, Device
from devices.selectors import token_sha256
from gateway.selectors import CHECK_CHUNK, CLOSE_AUTH_FAILED, CLOSE_REVOKED, gateway_sessions_ended
from tests.factories import make_person
from tests.gateway.wsutil import close_all, connect

pytestmark = pytest.mark.django_db(transaction=True)


def session_of(client) -> AuthSession:
    return AuthSession.objects.get(token_sha256=token_sha256(client.token))


def watched(*sessions: AuthSession) -> dict[int, int | None]:
    return {s.pk: s.device_id for s in sessions}


def test_live_sessions_cost_one_query_however_many(django_assert_num_queries):
    alice, bob = make_person(3), make_person(2)
    sessions = [session_of(d.client) for d in (*alice.devices, *bob.devices)] + [session_of(alice.master_client())]
    with django_assert_num_queries(1):
        assert gateway_sessions_ended(sessions=watched(*sessions)) == {}


def test_more_than_a_chunk_is_one_query_per_chunk(django_assert_num_queries):
    alice = make_person(1)
    live = session_of(alice.device.client)
    # Ids of no session: ended, each looked up on its own for its code.
    sessions = {live.pk: live.device_id, **{-i: None for i in range(1, CHECK_CHUNK + 1)}}
    with django_assert_num_queries(2 + CHECK_CHUNK):
        ended = gateway_sessions_ended(sessions=sessions)
    assert ended == {-i: CLOSE_AUTH_FAILED for i in range(1, CHECK_CHUNK + 1)}


def test_each_ended_session_gets_its_close_code():
    alice, bob, carol = make_person(3), make_person(1), make_person(1)
    live, logged_out, revoked = (session_of(d.client) for d in alice.devices)
    expired, suspended = session_of(bob.device.client), session_of(carol.device.client)
    master = session_of(alice.master_client())
    assert alice.devices[1].client.post("/api/v1/auth/logout").status_code == 204
    Device.objects.filter(pk=revoked.device_id).update(revoked_at=timezone.now())
    AuthSession.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    carol_user = suspended.user
    carol_user.suspended_at = timezone.now()
    carol_user.save(update_fields=["suspended_at"])
    assert gateway_sessions_ended(sessions=watched(live, logged_out, revoked, expired, suspended, master)) == {
        logged_out.pk: CLOSE_AUTH_FAILED, revoked.pk: CLOSE_REVOKED, expired.pk: CLOSE_AUTH_FAILED,
        suspended.pk: CLOSE_REVOKED}


@pytest.mark.skipif(bool(settings.REDIS_URL), reason="counts the embedded cache's SQLite files")
def test_connections_share_one_slot_cache_connection():
    # django.core.cache.cache is one backend per asyncio context: through it,
    # each open connection kept a SQLite connection (two descriptors) of its own.
    alice = make_person(4)
    cache_file = settings.CACHES["default"]["LOCATION"]

    def cache_fds() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd).startswith(cache_file))

    async def scenario():
        comms = [(await connect(d.client.token))[0] for d in alice.devices]
        opened = cache_fds()
        await close_all(*comms)
        return opened

    before = cache_fds()
    assert async_to_sync(scenario)() - before <= 2  # at most the one connection of the one thread
