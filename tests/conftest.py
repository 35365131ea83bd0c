import pytest
from django.conf import settings
from django.core.cache import cache

from tests.factories import make_person


def pytest_collection_modifyitems(config, items):
    engine = settings.DATABASES["default"]["ENGINE"]
    skip_pg = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL)")
    skip_redis = pytest.mark.skip(reason="needs Redis (set REDIS_URL)")
    for item in items:
        if "requires_postgres" in item.keywords and "postgresql" not in engine:
            item.add_marker(skip_pg)
        if "requires_redis" in item.keywords and not settings.REDIS_URL:
            item.add_marker(skip_redis)


@pytest.fixture(autouse=True, scope="session")
def _own_embedded_cache_and_layer(tmp_path_factory):
    """Without Redis, the embedded cache and channel-layer sockets live under
    VAR_DIR, which a `make run` of this checkout shares: in-process tests get
    their own, so clearing the cache or sending an event never reaches it."""
    if settings.REDIS_URL:
        yield
        return
    from django.test import override_settings

    var = tmp_path_factory.mktemp("var")
    with override_settings(
            CACHES={"default": {**settings.CACHES["default"], "LOCATION": str(var / "cache.sqlite3")}},
            CHANNEL_LAYERS={"default": {**settings.CHANNEL_LAYERS["default"],
                                        "CONFIG": {"folder": str(var / "channels")}}}):
        yield


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    """Each test starts with no rate-limit counters. On Redis only this run's
    cache keys go: a FLUSHDB would also drop live servers' channel groups."""
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(f"{settings.REDIS_PREFIX}:*", count=1000))
        cache_keys = [k for k in keys if not k.startswith(f"{settings.REDIS_PREFIX}:asgi".encode())]
        if cache_keys:
            client.delete(*cache_keys)
        client.close()
    else:
        cache.clear()
    yield


@pytest.fixture
def person(db):
    return make_person


@pytest.fixture(scope="session")
def vectors():
    import json
    from pathlib import Path

    return json.loads((Path(__file__).parent / "vectors.json").read_text())


@pytest.fixture
def live_database():
    from tests.live import LiveDatabase

    database = LiveDatabase()
    yield database
    database.close()


@pytest.fixture
def daphne_factory(live_database):
    """Start daphne processes on `live_database`; all are stopped at teardown."""
    from tests.live import LiveServer

    servers = []

    def start(**kwargs):
        server = LiveServer(live_database, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def daphne_server(daphne_factory):
    return daphne_factory()
