"""Issue 14: /metrics after a real exchange through a live daphne, its
access rules, the health checks, and the request log (one line per request,
JSON with LOG_FORMAT=json, nothing secret; each 4xx once: point 8)."""
import json
import os
import time
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import ack, build_send, create_conversation, make_person, send, sync
from tests.faults.services import CuttableProxy, PrivateRedis

pytestmark = pytest.mark.live

TOKEN = "metrics-test-token"


def scrape(server, **headers) -> dict:
    response = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_show_a_real_exchange_and_the_log_has_one_line_per_request(daphne_factory):
    server = daphne_factory(extra_env={"METRICS_TOKEN": TOKEN, "LOG_FORMAT": "json"})
    before = scrape(server)
    alice, bob = make_person(1, base_url=server.url), make_person(2, base_url=server.url)
    conv = create_conversation(alice.device, [bob.id])
    body = build_send(alice.device, conv, text="counted")
    assert send(alice.device, body).status_code == 201
    assert send(alice.device, body).status_code == 200  # a retry is no second send
    assert [m["message_id"] for m in sync(bob.devices[0])["messages"]] == [body["message_id"]]
    assert ack(bob.devices[0], [body["message_id"]])["acked"] == [body["message_id"]]
    assert httpx.get(server.url + "/api/v1/no-such-endpoint").status_code == 404
    assert httpx.post(server.url + "/api/v1/dms/sync", json={}).status_code == 401

    after = scrape(server)
    assert value(after, "decentcom_dm_sends_total") - value(before, "decentcom_dm_sends_total") == 1
    assert value(after, "decentcom_dm_deliveries_total") - value(before, "decentcom_dm_deliveries_total") == 2
    assert value(after, "decentcom_dm_acks_total") - value(before, "decentcom_dm_acks_total") == 1
    assert value(after, "decentcom_dm_pending_deliveries") == 1  # bob's second device has not acked
    assert value(after, "decentcom_http_requests_total", operation="dm-send", method="POST", status="201") == 1
    assert value(after, "decentcom_http_requests_total", operation="dm-send", method="POST", status="200") == 1
    assert value(after, "decentcom_http_requests_total", operation="dm-sync", method="POST", status="401") == 1
    assert value(after, "decentcom_http_requests_total", operation="unmatched", method="GET", status="404") == 1
    assert value(after, "decentcom_http_request_duration_seconds_count", operation="dm-ack") == 1
    assert ("decentcom_gateway_connections", ()) in after
    assert ("decentcom_channel_layer_failures_total", ()) in after
    assert value(after, "decentcom_database_up") == 1

    time.sleep(0.3)
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line["logger"] == "decentcom.request"]
    sends = [line for line in requests if line["operation"] == "dm-send"]
    assert [(line["method"], line["status"]) for line in sends] == [("POST", 201), ("POST", 200)]
    assert all(isinstance(line["duration_ms"], float) for line in requests)
    assert not [line for line in requests if line["operation"] == "metrics"]  # scrapes are not logged
    # point 8: each 4xx is one line, ours (Django's "Not Found: …" / "Unauthorized: …" were a second)
    assert [line["status"] for line in requests if line["status"] >= 400] == [404, 401]
    assert not [line for line in lines if line["logger"] == "django.request"]
    log = server.log()
    for secret in (body["ciphertext"], body["signature"], alice.device.client.token, bob.devices[0].client.token,
                   body["recipients"][0]["key_wrap"]["wrapped_key"]):
        assert secret not in log


def test_metrics_are_off_without_a_token_or_allow_list_and_guarded_with_one(daphne_factory, live_database):
    off = daphne_factory()
    response = httpx.get(off.url + "/metrics")
    assert response.status_code == 404 and "decentcom_" not in response.text

    guarded = daphne_factory(extra_env={"METRICS_TOKEN": TOKEN})
    assert httpx.get(guarded.url + "/metrics").status_code == 401
    assert httpx.get(guarded.url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert scrape(guarded)

    allowed = daphne_factory(extra_env={"METRICS_ALLOWED_IPS": "127.0.0.0/8"})
    assert httpx.get(allowed.url + "/metrics").status_code == 200
    elsewhere = daphne_factory(extra_env={"METRICS_ALLOWED_IPS": "10.0.0.0/8"})
    assert httpx.get(elsewhere.url + "/metrics").status_code == 401


def test_healthz_and_readyz(daphne_server):
    assert httpx.get(daphne_server.url + "/healthz").json() == {"status": "ok"}
    response = httpx.get(daphne_server.url + "/readyz")
    expected = {"database": "ok", **({"redis": "ok"} if os.environ.get("REDIS_URL") else {})}
    assert response.status_code == 200 and response.json()["checks"] == expected


def test_readyz_is_503_while_redis_is_down(daphne_factory):
    redis = PrivateRedis()
    try:
        server = daphne_factory(extra_env={"REDIS_URL": redis.url})
        assert httpx.get(server.url + "/readyz").json()["checks"] == {"database": "ok", "redis": "ok"}
        redis.stop()
        response = httpx.get(server.url + "/readyz")
        assert response.status_code == 503
        assert response.json() == {"error": "service_unavailable", "detail": "unavailable: redis",
                                   "checks": {"database": "ok", "redis": "unavailable"}}
        assert httpx.get(server.url + "/healthz").status_code == 200  # the process is still up
        redis.start()
        assert httpx.get(server.url + "/readyz").status_code == 200
    finally:
        redis.close()


@pytest.mark.requires_postgres
def test_readyz_is_503_with_the_database_cut_and_200_when_it_returns(daphne_factory, live_database):
    upstream = urlsplit(live_database.url)
    proxy = CuttableProxy(upstream.port or 5432)
    via_proxy = urlunsplit(upstream._replace(netloc=f"{upstream.username}@127.0.0.1:{proxy.port}"))
    server = daphne_factory(extra_env={"DATABASE_URL": via_proxy, "REDIS_URL": ""})
    assert httpx.get(server.url + "/readyz").status_code == 200

    proxy.cut()
    response = httpx.get(server.url + "/readyz", timeout=30)
    assert response.status_code == 503
    assert response.json()["error"] == "service_unavailable" and response.json()["checks"]["database"] == "unavailable"
    assert httpx.get(server.url + "/healthz").status_code == 200  # no database needed

    proxy.restore()
    deadline = time.monotonic() + 30  # the pool reconnects with a backoff
    while (response := httpx.get(server.url + "/readyz", timeout=30)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert response.status_code == 200


def test_json_log_lines_carry_plain_fields_only():
    import logging

    from decentcom.logs import JsonFormatter

    record = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Internal Server Error: %s", ("/x",),
                               None)
    record.status_code, record.request = 500, object()  # as django.request logs them
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "Internal Server Error: /x" and line["status_code"] == 500
    assert "request" not in line and line["level"] == "ERROR" and line["logger"] == "django.request"
