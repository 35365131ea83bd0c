"""`GET /api/v1/` (the banner's "API" URL) was a 404: now it lists the endpoints and links the docs."""
from django.urls import reverse


def test_api_root_lists_the_endpoints_and_links_the_docs(client):
    response = client.get("/api/v1/", HTTP_HOST="localhost")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["docs"] == "http://localhost/api/v1/docs/" and body["schema"] == "http://localhost/api/v1/schema/"
    assert body["server"] == "http://localhost/api/v1/server"
    assert body["gateway"] == "ws://localhost/api/v1/gateway"
    endpoints = {e["path"]: e["methods"] for e in body["endpoints"]}
    assert endpoints["/api/v1/dms/send"] == ["POST"]
    assert endpoints["/api/v1/devices"] == ["GET", "POST"]
    assert endpoints["/api/v1/devices/{device_id}"] == ["DELETE"]
    assert endpoints["/api/v1/dms/messages/{message_id}/status"] == ["GET"]
    assert "/api/v1/" not in endpoints
    # each listed path is routed (the docs page answers too)
    assert client.get(body["docs"].removeprefix("http://localhost"), HTTP_HOST="localhost").status_code == 200
    assert reverse("api-root") == "/api/v1/"


def test_openapi_says_last_seen_is_updated_at_most_once_a_minute(client):
    schema = client.get("/api/v1/schema/?format=json", HTTP_HOST="localhost").json()
    field = schema["components"]["schemas"]["OwnDeviceOutput"]["properties"]["last_seen_at"]
    assert "at most once every 60 s" in field["description"]
