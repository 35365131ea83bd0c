import httpx
import pytest

pytestmark = pytest.mark.live


def test_daphne_serves_api_docs_and_admin(daphne_server):
    assert httpx.get(daphne_server.url + "/api/v1/schema/").status_code == 200
    assert httpx.get(daphne_server.url + "/api/v1/docs/").status_code == 200
    assert httpx.get(daphne_server.url + "/admin/login/").status_code == 200
    response = httpx.post(daphne_server.url + "/api/v1/auth/challenge", json={"pubkey": "x"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
