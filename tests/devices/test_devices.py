import time

import pytest
from django.contrib.admin.sites import site
from django.test import Client
from rest_framework.test import APIClient

from dmclient import protocol
from devices.models import AuthSession, Device, User
from dms.selectors import server_settings_get
from tests.factories import Keys, issue_cert, login, make_person, verify

pytestmark = pytest.mark.django_db


def test_public_directory_lists_active_devices_with_certificates():
    alice = make_person(2)
    bob = make_person(1)
    response = bob.device.client.get(f"/api/v1/users/{alice.id}/devices")
    assert response.status_code == 200
    body = response.json()
    assert body["user_id"] == alice.id
    assert {d["device_id"] for d in body["devices"]} == {d.id for d in alice.devices}
    entry = next(d for d in body["devices"] if d["device_id"] == alice.devices[0].id)
    assert entry["certificate"] == alice.devices[0].cert
    assert entry["x25519"] == protocol.b64e(protocol.x25519_public(alice.devices[0].keys.pub))
    assert entry["permissions"] == ["manage_devices"] and entry["expires_at"] is None
    # a revoked device leaves the directory
    assert alice.master_client().delete(f"/api/v1/devices/{alice.devices[1].id}").status_code == 204
    body = bob.device.client.get(f"/api/v1/users/{alice.id}/devices").json()
    assert [d["device_id"] for d in body["devices"]] == [alice.devices[0].id]


def test_directory_unknown_user_is_404():
    person = make_person(1)
    response = person.device.client.get(f"/api/v1/users/{Keys().id}/devices")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_own_device_list_marks_current_and_keeps_revoked():
    alice = make_person(2)
    alice.master_client().delete(f"/api/v1/devices/{alice.devices[1].id}")
    devices = alice.device.client.get("/api/v1/devices").json()["devices"]
    by_id = {d["device_id"]: d for d in devices}
    assert by_id[alice.devices[0].id]["current"] is True
    assert by_id[alice.devices[0].id]["revoked_at"] is None
    assert by_id[alice.devices[0].id]["last_seen_at"] is not None
    assert by_id[alice.devices[0].id]["pending_count"] == 0
    assert by_id[alice.devices[1].id]["current"] is False
    assert by_id[alice.devices[1].id]["revoked_at"] is not None


def test_renew_own_certificate_then_idempotent_then_stale():
    alice = make_person(1)
    me = alice.device
    now = int(time.time())
    same = me.client.post("/api/v1/devices", {"certificate": me.cert}, format="json")
    assert same.status_code == 200 and same.json()["device_id"] == me.id
    renewed = issue_cert(alice.master, me.keys, name="tablet 2", issued_at=now + 5, permissions=[])
    response = me.client.post("/api/v1/devices", {"certificate": renewed}, format="json")
    assert response.status_code == 200 and response.json()["name"] == "tablet 2"
    assert Device.objects.get(device_id=me.id).permissions == []
    assert me.client.post("/api/v1/devices", {"certificate": renewed}, format="json").status_code == 200
    stale = issue_cert(alice.master, me.keys, name="old", issued_at=now - 5)
    response = me.client.post("/api/v1/devices", {"certificate": stale}, format="json")
    assert response.status_code == 409 and response.json()["error"] == "stale_certificate"
    assert Device.objects.get(device_id=me.id).name == "tablet 2"


@pytest.mark.parametrize("caller", ["master", "sibling", "other_user"])
def test_nobody_registers_a_key_they_do_not_hold(caller):
    """Key squatting (v1.1 §3/§4): POST /devices never registers another key,
    so the key's owner's first login registers it as their own device."""
    alice, mallory = make_person(1), make_person(1)
    victim_master, victim_device = Keys(), Keys()
    client = {"master": mallory.master_client(), "sibling": mallory.device.client,
              "other_user": alice.device.client}[caller]
    squat = issue_cert(mallory.master, victim_device, name="squatted")
    response = client.post("/api/v1/devices", {"certificate": squat}, format="json")
    assert response.status_code == 403 and response.json()["error"] == "proof_of_possession_required"
    assert not Device.objects.filter(device_id=victim_device.id).exists()
    # the owner's login registers the key under the owner's own user
    login(victim_device, certificate=issue_cert(victim_master, victim_device))
    assert Device.objects.get(device_id=victim_device.id).user.username == victim_master.id


def test_renewal_of_a_sibling_or_by_master_session_is_refused():
    alice = make_person(2)
    first, second = alice.devices
    later = issue_cert(alice.master, second.keys, name="renamed", issued_at=int(time.time()) + 5)
    for client in (first.client, alice.master_client()):
        response = client.post("/api/v1/devices", {"certificate": later}, format="json")
        assert response.status_code == 403 and response.json()["error"] == "proof_of_possession_required"
    assert Device.objects.get(device_id=second.id).name == second.cert["name"]
    # a certificate for my key but from another master is refused too
    bob = make_person(1)
    foreign = issue_cert(bob.master, first.keys, issued_at=int(time.time()) + 5)
    response = first.client.post("/api/v1/devices", {"certificate": foreign}, format="json")
    assert response.status_code == 403 and response.json()["error"] == "proof_of_possession_required"


def test_device_limit():
    conf = server_settings_get()
    conf.max_devices_per_user = 2
    conf.save()
    alice = make_person(2)
    extra = Keys()
    response = verify(APIClient(), extra, certificate=issue_cert(alice.master, extra))
    assert response.status_code == 409 and response.json()["error"] == "device_limit_reached"
    assert not Device.objects.filter(device_id=extra.id).exists()
    # revoking one makes room
    alice.master_client().delete(f"/api/v1/devices/{alice.devices[1].id}")
    assert verify(APIClient(), extra, certificate=issue_cert(alice.master, extra)).status_code == 200


def test_device_registration_rate_limit():
    conf = server_settings_get()
    conf.registration_rate_per_user = 1
    conf.save()
    alice = make_person(1)
    extra = Keys()
    response = verify(APIClient(), extra, certificate=issue_cert(alice.master, extra))
    assert response.status_code == 429 and "Retry-After" in response


@pytest.mark.parametrize("who", ["master", "manager", "itself"])
def test_revocation_allowed(who):
    alice = make_person(1)
    manager = alice.device
    plain = alice.add_device(name="plain", permissions=[])
    client = {"master": alice.master_client(), "manager": manager.client, "itself": plain.client}[who]
    assert client.delete(f"/api/v1/devices/{plain.id}").status_code == 204
    assert Device.objects.get(device_id=plain.id).revoked_at is not None


def test_revocation_refused_without_permission_and_for_others():
    alice, bob = make_person(1), make_person(1)
    plain = alice.add_device(name="plain", permissions=[])
    response = plain.client.delete(f"/api/v1/devices/{alice.device.id}")
    assert response.status_code == 403
    response = bob.device.client.delete(f"/api/v1/devices/{alice.device.id}")
    assert response.status_code == 404
    assert Device.objects.get(device_id=alice.device.id).revoked_at is None


def test_revocation_ends_sessions_and_key_is_never_accepted_again():
    alice = make_person(2)
    victim = alice.devices[1]
    assert alice.master_client().delete(f"/api/v1/devices/{victim.id}").status_code == 204
    assert not AuthSession.objects.filter(device__device_id=victim.id).exists()
    assert victim.client.get("/api/v1/devices").status_code == 401
    response = verify(APIClient(), victim.keys)
    assert response.status_code == 403 and response.json()["error"] == "device_revoked"
    # not with a fresh certificate either, nor as a master key, nor re-registered
    fresh = issue_cert(alice.master, victim.keys, issued_at=int(time.time()) + 60)
    response = verify(APIClient(), victim.keys, certificate=fresh)
    assert response.status_code == 403 and response.json()["error"] == "device_revoked"
    # revoking twice is harmless
    assert alice.master_client().delete(f"/api/v1/devices/{victim.id}").status_code == 204


def test_device_key_cannot_become_a_master_and_vice_versa():
    alice = make_person(1)
    response = verify(APIClient(), alice.device.keys)  # device key, no cert: a device session, not a user
    assert response.json()["device_id"] == alice.device.id
    assert not User.objects.filter(username=alice.device.id).exists()
    bob = make_person(1)
    cert = issue_cert(alice.master, bob.master)  # bob's master key as alice's device
    response = verify(APIClient(), bob.master, certificate=cert)
    assert response.status_code == 409 and response.json()["error"] == "key_in_use"


def test_admin_revoke_action_uses_the_service(admin_user):
    alice = make_person(1)
    client = Client()
    client.force_login(admin_user)
    device = Device.objects.get(device_id=alice.device.id)
    response = client.post("/admin/devices/device/", {
        "action": "revoke_devices", "_selected_action": [device.pk]})
    assert response.status_code == 302
    device.refresh_from_db()
    assert device.revoked_at is not None
    assert alice.device.client.get("/api/v1/devices").status_code == 401


def test_admin_pages_render(admin_user):
    make_person(1)
    client = Client()
    client.force_login(admin_user)
    for url in ["/admin/devices/user/", "/admin/devices/device/",
                f"/admin/devices/user/{User.objects.get(is_key_user=True).pk}/change/"]:
        assert client.get(url).status_code == 200, url
    assert client.get("/admin/devices/device/add/").status_code == 403


def test_docs_and_schema_are_served():
    client = APIClient()
    assert client.get("/api/v1/schema/").status_code == 200
    assert client.get("/api/v1/docs/").status_code == 200
    assert client.get("/").status_code == 200
