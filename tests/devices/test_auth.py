import datetime as dt
import time

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from dmclient import protocol
from devices.models import AuthSession, Challenge, Device, User
from dms.selectors import server_settings_get
from tests.factories import Keys, challenge, issue_cert, login, make_person, verify

pytestmark = pytest.mark.django_db


def test_challenge_is_32_random_bytes_bound_to_key():
    client, keys = APIClient(), Keys()
    response = client.post("/api/v1/auth/challenge", {"pubkey": keys.id}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert len(protocol.b64d(body["challenge"])) == 32
    assert body["expires_at"].endswith("Z")
    assert Challenge.objects.get(challenge=body["challenge"]).pubkey == keys.id


def test_master_login_registers_user_and_gives_master_session():
    client, master = APIClient(), Keys()
    response = verify(client, master)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["user_id"] == master.id and body["device_id"] is None
    user = User.objects.get(username=master.id)
    assert user.is_key_user and not user.has_usable_password()
    # only the SHA-256 of the token is stored
    session = AuthSession.objects.get(user=user)
    assert session.token_sha256 != body["token"] and body["token"] not in session.token_sha256
    assert session.expires_at - session.created_at == dt.timedelta(hours=24)


def test_device_login_with_certificate_registers_device_then_without():
    master, device = Keys(), Keys()
    cert = issue_cert(master, device, name="phone")
    body = verify(APIClient(), device, certificate=cert).json()
    assert body["device_id"] == device.id and body["user_id"] == master.id
    assert Device.objects.get(device_id=device.id).user.username == master.id
    again = verify(APIClient(), device)
    assert again.status_code == 200 and again.json()["device_id"] == device.id
    assert Device.objects.get(device_id=device.id).last_seen_at is not None  # a login is a sighting


def test_reused_challenge_refused():
    client, keys = APIClient(), Keys()
    c = challenge(client, keys)
    assert verify(client, keys, challenge_b64=c).status_code == 200
    second = verify(client, keys, challenge_b64=c)
    assert second.status_code == 401 and second.json()["error"] == "invalid_challenge"


def test_expired_challenge_refused():
    client, keys = APIClient(), Keys()
    c = challenge(client, keys)
    Challenge.objects.filter(challenge=c).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert verify(client, keys, challenge_b64=c).status_code == 401


def test_challenge_issued_to_another_key_refused():
    client, alice, mallory = APIClient(), Keys(), Keys()
    c = challenge(client, alice)
    response = verify(client, mallory, challenge_b64=c)
    assert response.status_code == 401
    assert Challenge.objects.filter(challenge=c).exists()  # alice's challenge is not burnt


def test_unknown_challenge_refused():
    response = verify(APIClient(), Keys(), challenge_b64=protocol.b64e(b"\x01" * 32))
    assert response.status_code == 401


def test_wrong_signature_refused():
    client, keys, other = APIClient(), Keys(), Keys()
    c = challenge(client, keys)
    signed = protocol.auth_signed_bytes(challenge=c, pubkey=keys.id, server="http://testserver")
    response = client.post("/api/v1/auth/verify", {
        "pubkey": keys.id, "challenge": c, "signature": protocol.b64e(other.sign(signed))}, format="json")
    assert response.status_code == 401 and response.json()["error"] == "bad_signature"


def test_signature_for_another_server_refused():
    response = verify(APIClient(), Keys(), origin="https://other.example")
    assert response.status_code == 401 and response.json()["error"] == "bad_signature"


@override_settings(PUBLIC_URL="https://DM.example.org:443/")
def test_public_url_is_the_signed_origin():
    assert verify(APIClient(), Keys(), origin="https://dm.example.org").status_code == 200
    assert verify(APIClient(), Keys()).status_code == 401


def _verify_with_headers(origin: str, **headers):
    client, keys = APIClient(), Keys()
    c = challenge(client, keys)
    signed = protocol.auth_signed_bytes(challenge=c, pubkey=keys.id, server=origin)
    return client.post("/api/v1/auth/verify", {
        "pubkey": keys.id, "challenge": c, "signature": protocol.b64e(keys.sign(signed))}, format="json", **headers)


def test_forged_forwarded_proto_does_not_change_the_origin_without_a_proxy():
    """No proxy configured: X-Forwarded-Proto is the client's own writing (§3)."""
    response = _verify_with_headers("https://testserver", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 401 and response.json()["error"] == "bad_signature"
    assert _verify_with_headers("http://testserver", HTTP_X_FORWARDED_PROTO="https").status_code == 200


@override_settings(ALLOWED_HOSTS=["testserver", "127.0.0.1"])
@pytest.mark.parametrize("host", ["testserver:9999", "127.0.0.1:9999"])
def test_another_port_in_host_is_another_origin(host):
    """ALLOWED_HOSTS ignores ports: a signature for another server on the same
    host (another port) must not open a session here."""
    response = _verify_with_headers(f"http://{host}", HTTP_HOST=host)
    assert response.status_code == 401 and response.json()["error"] == "bad_signature"
    # the port this server listens on (the test client's SERVER_PORT 80) is the origin
    name = host.split(":")[0]
    assert _verify_with_headers(f"http://{name}", HTTP_HOST=host).status_code == 200


@override_settings(TRUSTED_PROXY_COUNT=1, SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
def test_behind_a_configured_proxy_its_scheme_header_counts():
    proxied = {"HTTP_X_FORWARDED_PROTO": "https", "HTTP_HOST": "testserver"}
    assert _verify_with_headers("https://testserver", **proxied).status_code == 200
    assert _verify_with_headers("http://testserver", **proxied).status_code == 401


def test_forged_certificate_refused():
    master, device, mallory = Keys(), Keys(), Keys()
    cert = issue_cert(mallory, device)
    cert["master"] = master.id  # claims master, signed by mallory
    response = verify(APIClient(), device, certificate=cert)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert not Device.objects.exists()


def test_expired_certificate_refused():
    master, device = Keys(), Keys()
    now = int(time.time())
    cert = issue_cert(master, device, issued_at=now - 100, expires_at=now - 1)
    response = verify(APIClient(), device, certificate=cert)
    assert response.status_code == 403 and response.json()["error"] == "certificate_expired"


def test_certificate_from_the_future_refused():
    master, device = Keys(), Keys()
    cert = issue_cert(master, device, issued_at=int(time.time()) + 3600)
    assert verify(APIClient(), device, certificate=cert).status_code == 400


def test_certificate_with_unknown_permission_refused():
    master, device = Keys(), Keys()
    cert = issue_cert(master, device, permissions=["launch_missiles"])
    assert verify(APIClient(), device, certificate=cert).status_code == 400


def test_certificate_for_another_device_key_refused():
    master, device, other = Keys(), Keys(), Keys()
    response = verify(APIClient(), device, certificate=issue_cert(master, other))
    assert response.status_code == 400 and response.json()["error"] == "invalid_certificate"


def test_device_session_expires_with_its_certificate():
    master, device = Keys(), Keys()
    now = int(time.time())
    client = login(device, certificate=issue_cert(master, device, expires_at=now + 3600))
    assert client.get("/api/v1/devices").status_code == 200
    Device.objects.filter(device_id=device.id).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert client.get("/api/v1/devices").status_code == 401
    response = verify(APIClient(), device)
    assert response.status_code == 403 and response.json()["error"] == "certificate_expired"


def test_logout_ends_the_token():
    client = login(Keys())
    assert client.get("/api/v1/devices").status_code == 200
    assert client.post("/api/v1/auth/logout").status_code == 204
    response = client.get("/api/v1/devices")
    assert response.status_code == 401 and response.json()["error"] == "invalid_token"


def test_expired_token_refused():
    client = login(Keys())
    AuthSession.objects.update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert client.get("/api/v1/devices").status_code == 401


def test_missing_and_malformed_authorization():
    client = APIClient()
    response = client.get("/api/v1/devices")
    assert response.status_code == 401 and response.json()["error"] == "not_authenticated"
    client.credentials(HTTP_AUTHORIZATION="Token abc")
    assert client.get("/api/v1/devices").status_code == 401


def test_master_session_cannot_use_dms():
    person = make_person(1)
    response = person.master_client().get("/api/v1/dms/conversations")
    assert response.status_code == 403 and response.json()["error"] == "device_session_required"


def test_challenges_asked_in_a_keys_name_cannot_lock_it_out():
    """§3: no per-key limit; at most 5 outstanding per key, a new one replacing the oldest."""
    conf = server_settings_get()
    conf.challenge_rate_per_ip = 1000
    conf.save()
    victim = Keys()
    for i in range(30):  # an attacker asks in the victim's name from many addresses
        response = APIClient(REMOTE_ADDR=f"10.0.0.{i}").post("/api/v1/auth/challenge", {"pubkey": victim.id},
                                                              format="json")
        assert response.status_code == 200
    assert Challenge.objects.filter(pubkey=victim.id).count() == 5
    # the owner's fresh challenge works
    assert verify(APIClient(), victim).status_code == 200


def test_a_sixth_challenge_replaces_the_oldest():
    client, keys = APIClient(), Keys()
    issued = [challenge(client, keys) for _ in range(6)]
    response = verify(client, keys, challenge_b64=issued[0])
    assert response.status_code == 401 and response.json()["error"] == "invalid_challenge"
    for c in issued[1:]:
        assert verify(client, keys, challenge_b64=c).status_code == 200
    other = Keys()
    challenge(client, other)  # other keys' challenges are untouched
    assert Challenge.objects.filter(pubkey=other.id).count() == 1


def test_challenge_rate_limit_per_client_address():
    conf = server_settings_get()
    conf.challenge_rate_per_ip = 3
    conf.save()
    client = APIClient()
    for _ in range(3):
        challenge(client, Keys())
    assert client.post("/api/v1/auth/challenge", {"pubkey": Keys().id}, format="json").status_code == 429
    other = APIClient(REMOTE_ADDR="10.9.9.9")
    assert other.post("/api/v1/auth/challenge", {"pubkey": Keys().id}, format="json").status_code == 200


@pytest.mark.parametrize("body", [
    {},
    {"pubkey": 5},
    {"pubkey": "11111111111111111111111111111111"},
    {"pubkey": "1111111111111111111111111111111"},
    {"pubkey": "0OIl1111111111111111111111111111"},
])
def test_bad_challenge_requests_are_400(body):
    response = APIClient().post("/api/v1/auth/challenge", body, format="json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request" and "pubkey" in response.json()["fields"]


def test_malformed_json_is_400():
    response = APIClient().post("/api/v1/auth/challenge", "{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"] == "malformed_json"


@pytest.mark.parametrize("signature", ["AAF=", "AAE", "AA-_", "AAE=\n", protocol.b64e(b"\x00" * 63), 7])
def test_bad_signature_encodings_are_400(signature):
    client, keys = APIClient(), Keys()
    c = challenge(client, keys)
    response = client.post("/api/v1/auth/verify", {"pubkey": keys.id, "challenge": c, "signature": signature},
                           format="json")
    assert response.status_code == 400 and "signature" in response.json()["fields"]


def test_vector_rejected_certificates_are_400(vectors):
    for case in vectors["reject"]["certificate"]:
        device = Keys()
        response = verify(APIClient(), device, certificate=case["wire"])
        assert response.status_code == 400, case["why"]


def test_unknown_api_path_is_json_404():
    response = APIClient().get("/api/v1/nope")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


# --- the certificate is checked before anything is written (§3, issue 10 point 13) ---------

def _assert_nothing_written(keys: Keys, master: Keys, c: str) -> None:
    assert Challenge.objects.filter(challenge=c).exists()  # not consumed: still usable
    assert not User.objects.filter(username=master.id).exists()
    assert not Device.objects.filter(device_id=keys.id).exists()


@pytest.mark.parametrize("field,value", [
    ("issued_at", protocol.MAX_UNIX_SECONDS + 1), ("issued_at", -1), ("issued_at", 10 ** 30),
    ("expires_at", protocol.MAX_UNIX_SECONDS + 1), ("expires_at", -5),
])
def test_certificate_times_out_of_range_are_400_and_write_nothing(field, value):
    master, device = Keys(), Keys()
    body = {**issue_cert(master, device), field: value}
    body.pop("signature")
    cert = {**body, "signature": protocol.b64e(master.sign(protocol.cert_signed_bytes(body)))}
    client = APIClient()
    c = challenge(client, device)
    response = verify(client, device, certificate=cert, challenge_b64=c)
    if abs(value) >= 2 ** 63:  # refused by the JSON parser already (§10 numbers out of range)
        assert response.status_code == 400 and response.json()["error"] == "malformed_json"
    else:
        assert response.status_code == 400 and response.json()["error"] == "invalid_request"
        assert "certificate" in response.json()["fields"]
    _assert_nothing_written(device, master, c)
    assert verify(client, device, certificate=issue_cert(master, device), challenge_b64=c).status_code == 200


@pytest.mark.parametrize("make", [
    lambda m, d: issue_cert(m, d, issued_at=int(time.time()) + 3600),  # from the future: 400
    lambda m, d: issue_cert(m, d, issued_at=int(time.time()) - 100, expires_at=int(time.time()) - 1),  # 403
    lambda m, d: issue_cert(m, d, permissions=["launch_missiles"]),  # unknown permission: 400
    lambda m, d: issue_cert(m, Keys()),  # another device key: 400
    lambda m, d: {**issue_cert(m, d), "signature": protocol.b64e(b"\x00" * 64)},  # bad signature: 400
])
def test_refused_certificate_consumes_no_challenge_and_creates_no_user(make):
    master, device = Keys(), Keys()
    client = APIClient()
    c = challenge(client, device)
    response = verify(client, device, certificate=make(master, device), challenge_b64=c)
    assert response.status_code in (400, 403), response.content
    assert set(response.json()) >= {"error", "detail"}
    _assert_nothing_written(device, master, c)


def test_refused_registration_creates_no_user():
    """A login refused after the challenge (here: the device limit) leaves no user row behind."""
    conf = server_settings_get()
    conf.max_devices_per_user = 0
    conf.save()
    master, device = Keys(), Keys()
    response = verify(APIClient(), device, certificate=issue_cert(master, device))
    assert response.status_code == 409 and response.json()["error"] == "device_limit_reached"
    assert not User.objects.filter(username=master.id).exists()


@pytest.mark.parametrize("name", ["a\u0085b", "evil\u009b[2J", "\u202egnp.exe", "x\u2066y", "zero\u200bwidth",
                                  "   "])
def test_device_names_with_controls_or_bidi_overrides_are_refused(name):
    """§2 names (issue 10 point 15): refused at registration (the login) and at renewal, with the §10 body."""
    master, device = Keys(), Keys()
    body = {**issue_cert(master, device), "name": name}
    body.pop("signature")
    cert = {**body, "signature": protocol.b64e(master.sign(protocol.cert_signed_bytes(body)))}
    client = APIClient()
    c = challenge(client, device)
    response = verify(client, device, certificate=cert, challenge_b64=c)
    assert response.status_code == 400, name
    assert response.json()["error"] == "invalid_request" and "certificate" in response.json()["fields"]
    _assert_nothing_written(device, master, c)
    me = login(device, certificate=issue_cert(master, device))
    cert = {**body, "issued_at": body["issued_at"] + 5}
    cert["signature"] = protocol.b64e(master.sign(protocol.cert_signed_bytes(cert)))
    response = me.post("/api/v1/devices", {"certificate": cert}, format="json")
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert Device.objects.get(device_id=device.id).name == "device"


def test_renewal_with_out_of_range_time_is_400():
    master, device = Keys(), Keys()
    me = login(device, certificate=issue_cert(master, device))
    body = {**issue_cert(master, device), "expires_at": protocol.MAX_UNIX_SECONDS + 1}
    body.pop("signature")
    cert = {**body, "signature": protocol.b64e(master.sign(protocol.cert_signed_bytes(body)))}
    response = me.post("/api/v1/devices", {"certificate": cert}, format="json")
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
