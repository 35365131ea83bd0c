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


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
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
