"""§4 GET /api/v1/server: the server's description, without authentication."""
import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from dms.models import Policy
from dms.selectors import server_settings_get

pytestmark = pytest.mark.django_db


def describe(client=None) -> dict:
    response = (client or APIClient()).get("/api/v1/server")
    assert response.status_code == 200, response.content
    return response.json()


def test_defaults_without_authentication(settings):
    settings.PUBLIC_URL = ""
    assert describe() == {
        "protocol": "1.2",
        "origin": "http://testserver",
        "retention": {"default": {"policy": "ttl", "ttl_days": 14}, "max_ttl_days": 30,
                      "permanent_allowed": False, "max_undelivered_days": 30},
        "limits": {"max_ciphertext_bytes": 65536, "max_participants": 50, "max_recipients_per_message": 500,
                   "max_devices_per_user": 10, "pending_quota": 10000, "max_request_bytes": 256 * 1024},
        "gateway": {"url": "ws://testserver/api/v1/gateway",
                    "heartbeat_interval_ms": settings.GATEWAY_HEARTBEAT_INTERVAL_MS},
    }
    # a bad token changes nothing: nothing here is authenticated
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer nonsense")
    assert describe(client)["protocol"] == "1.2"


def test_follows_admin_changes_at_once(settings):
    assert describe()["retention"]["default"] == {"policy": "ttl", "ttl_days": 14}
    conf = server_settings_get()
    conf.default_policy, conf.allow_permanent, conf.max_ttl_days = Policy.BURN_ON_READ, True, 90
    conf.max_undelivered_days, conf.max_ciphertext_bytes, conf.max_participants = 7, 4096, 12
    conf.max_recipients_per_message, conf.max_devices_per_user, conf.pending_quota = 40, 3, 99
    conf.max_request_bytes = 8192
    conf.save()
    described = describe()
    assert described["retention"] == {"default": {"policy": "burn_on_read", "ttl_days": None}, "max_ttl_days": 90,
                                      "permanent_allowed": True, "max_undelivered_days": 7}
    assert described["limits"] == {"max_ciphertext_bytes": 4096, "max_participants": 12,
                                   "max_recipients_per_message": 40, "max_devices_per_user": 3,
                                   "pending_quota": 99, "max_request_bytes": 8192}
    # the effective request limit is the smaller of the admin's and MAX_REQUEST_BYTES
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4000
    assert describe()["limits"]["max_request_bytes"] == 4000


def test_origin_and_gateway_follow_public_url(settings):
    settings.PUBLIC_URL = "https://dm.example.org"
    described = describe()
    assert described["origin"] == "https://dm.example.org"
    assert described["gateway"]["url"] == "wss://dm.example.org/api/v1/gateway"
    settings.PUBLIC_URL = "http://127.0.0.1:8000"
    assert describe()["gateway"]["url"] == "ws://127.0.0.1:8000/api/v1/gateway"


def test_answer_matches_its_openapi_schema():
    import jsonschema

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operation = schema["paths"]["/api/v1/server"]["get"]
    assert operation.get("security") in (None, [], [{}])
    body = operation["responses"]["200"]["content"]["application/json"]["schema"]
    components = schema["components"]["schemas"]

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(components[node["$ref"].rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved = resolve(body)
    jsonschema.validate(describe(), resolved)
    assert set(resolved["properties"]) == {"protocol", "origin", "retention", "limits", "gateway"}
    assert set(resolved["properties"]["limits"]["properties"]) == set(describe()["limits"])
