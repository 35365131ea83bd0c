"""The web client as the server serves it: the bundle at `/` under a strict
Content-Security-Policy, the old link page at /about/, a plain page when the
bundle is not built, and CORS only for the configured origins."""
import pytest
from django.test import Client, override_settings


def csp(response) -> dict[str, str]:
    directives = (d.strip().split(" ", 1) for d in response["Content-Security-Policy"].split(";"))
    return {d[0]: d[1] if len(d) > 1 else "" for d in directives}


def body(response) -> str:
    return b"".join(response.streaming_content).decode() if response.streaming else response.content.decode()


@pytest.fixture
def dist(tmp_path):
    """A stand-in bundle, so these tests do not need Node.js."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text(
        '<!doctype html><title>decentcom</title><script type="module" src="./assets/app.js"></script>')
    (tmp_path / "assets" / "app.js").write_text("console.log('app')")
    with override_settings(WHITENOISE_ROOT=tmp_path):
        yield tmp_path


def test_root_serves_the_bundle_under_a_strict_policy(dist, db):
    client = Client(HTTP_HOST="127.0.0.1:8000")
    response = client.get("/")
    assert response.status_code == 200
    assert 'src="./assets/app.js"' in body(response)
    policy = csp(response)
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self' ws://127.0.0.1:8000"  # the API and the gateway only
    assert policy["frame-ancestors"] == "'none'"
    assert policy["base-uri"] == "'none'"
    assert "unsafe" not in response["Content-Security-Policy"]
    asset = client.get("/assets/app.js")
    assert asset.status_code == 200 and "Content-Security-Policy" in asset


@override_settings(ALLOWED_HOSTS=["dm.example.org"])
def test_policy_over_https_allows_only_wss(dist, db):
    response = Client(HTTP_HOST="dm.example.org").get("/", secure=True)
    assert csp(response)["connect-src"] == "'self' wss://dm.example.org"


def test_a_disallowed_host_is_refused_before_the_bundle_is_served(dist, db):
    # Whitenoise answers before CommonMiddleware; the Host is checked first all the same
    # (and so never reaches the policy, where it could add directives).
    for path in ("/", "/assets/app.js", "/about/"):
        response = Client(HTTP_HOST="evil.example; script-src *").get(path)
        assert response.status_code == 400
        assert "Content-Security-Policy" not in response


def test_about_page_keeps_the_links(client, db):
    response = client.get("/about/")
    assert response.status_code == 200
    text = response.content.decode()
    for link in ("/api/v1/docs/", "/api/v1/schema/", "/admin/"):
        assert f'href="{link}"' in text
    assert "Content-Security-Policy" in response


def test_without_a_build_root_says_what_is_missing(tmp_path, db):
    with override_settings(WHITENOISE_ROOT=tmp_path / "not-built"), pytest.warns(UserWarning, match="No directory"):
        response = Client().get("/")
    assert response.status_code == 200
    assert "Node.js 20" in response.content.decode()


def test_api_and_admin_are_outside_the_app_policy(client, db):
    assert "Content-Security-Policy" not in client.get("/api/v1/schema/")
    assert "Content-Security-Policy" not in client.get("/admin/login/")


@override_settings(CORS_ALLOWED_ORIGINS=["http://copy.example:8080"])
def test_cors_only_for_configured_origins(db):
    client = Client()
    preflight = client.options("/api/v1/auth/challenge", HTTP_ORIGIN="http://copy.example:8080",
                               HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
                               HTTP_ACCESS_CONTROL_REQUEST_HEADERS="content-type")
    assert preflight.status_code == 204
    assert preflight["Access-Control-Allow-Origin"] == "http://copy.example:8080"
    assert "Authorization" in preflight["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in preflight  # bearer tokens, never cookies
    answer = client.post("/api/v1/auth/challenge", {"pubkey": "x"}, content_type="application/json",
                         HTTP_ORIGIN="http://copy.example:8080")
    assert answer["Access-Control-Allow-Origin"] == "http://copy.example:8080"
    assert "Origin" in answer["Vary"]
    other = client.post("/api/v1/auth/challenge", {"pubkey": "x"}, content_type="application/json",
                        HTTP_ORIGIN="http://evil.example")
    assert "Access-Control-Allow-Origin" not in other


def test_no_cors_by_default(client, db):
    answer = client.post("/api/v1/auth/challenge", {"pubkey": "x"}, content_type="application/json",
                         HTTP_ORIGIN="http://copy.example:8080")
    assert "Access-Control-Allow-Origin" not in answer
