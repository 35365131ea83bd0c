"""Every Django-admin action that changes state needs the model's *change*
permission (issue 10 point 11): a real view-only staff user, logged in to the
admin with a password, is refused and nothing changes; one with the change
permission can. Actions go through the same services as the API."""
import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from devices.models import AuthSession, Device, User
from dms.models import PendingDm
from tests.factories import build_send, create_conversation, make_person, send

pytestmark = pytest.mark.django_db

PASSWORD = "a long staff password 4711"


def staff(*codenames: str) -> Client:
    user = User.objects.create_user(f"staff-{'-'.join(codenames)}", PASSWORD, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def run_action(client: Client, url: str, action: str, pks: list[int]):
    return client.post(url, {"action": action, "_selected_action": pks})


def test_view_only_staff_cannot_revoke_a_device():
    alice = make_person(1)
    device = Device.objects.get(device_id=alice.device.id)
    viewer = staff("view_device")
    assert viewer.get("/admin/devices/device/").status_code == 200  # may look
    page = viewer.get("/admin/devices/device/").content.decode()
    assert "revoke_devices" not in page
    run_action(viewer, "/admin/devices/device/", "revoke_devices", [device.pk])
    device.refresh_from_db()
    assert device.revoked_at is None
    assert alice.device.client.get("/api/v1/devices").status_code == 200


def test_staff_with_change_permission_revokes_through_the_service():
    alice = make_person(1)
    device = Device.objects.get(device_id=alice.device.id)
    changer = staff("view_device", "change_device")
    assert "revoke_devices" in changer.get("/admin/devices/device/").content.decode()
    assert run_action(changer, "/admin/devices/device/", "revoke_devices", [device.pk]).status_code == 302
    device.refresh_from_db()
    assert device.revoked_at is not None
    assert not AuthSession.objects.filter(device=device).exists()
    # the change form stays read-only even so
    assert changer.get(f"/admin/devices/device/{device.pk}/change/").status_code == 200
    changer.post(f"/admin/devices/device/{device.pk}/change/", {"name": "renamed"})
    device.refresh_from_db()
    assert device.name == alice.device.cert["name"]


@pytest.mark.parametrize("action", ["suspend_users", "unsuspend_users"])
def test_view_only_staff_cannot_suspend_or_lift(action):
    alice = make_person(1)
    user = User.objects.get(username=alice.id)
    if action == "unsuspend_users":
        User.objects.filter(pk=user.pk).update(suspended_at=timezone.now())
    viewer = staff("view_user")
    assert viewer.get("/admin/devices/user/").status_code == 200
    run_action(viewer, "/admin/devices/user/", action, [user.pk])
    user.refresh_from_db()
    assert (user.suspended_at is None) == (action == "suspend_users")


def test_staff_with_change_permission_suspends_and_lifts():
    alice = make_person(1)
    user = User.objects.get(username=alice.id)
    changer = staff("view_user", "change_user")
    assert run_action(changer, "/admin/devices/user/", "suspend_users", [user.pk]).status_code == 302
    user.refresh_from_db()
    assert user.suspended_at is not None
    assert alice.device.client.get("/api/v1/devices").status_code == 401
    assert changer.get(f"/admin/devices/user/{user.pk}/change/").status_code == 200
    assert run_action(changer, "/admin/devices/user/", "unsuspend_users", [user.pk]).status_code == 302
    user.refresh_from_db()
    assert user.suspended_at is None


def expired_message() -> str:
    alice, bob = make_person(1), make_person(1)
    conversation = create_conversation(alice.device, [bob.id], retention={"policy": "ttl", "ttl_days": 1})
    body = build_send(alice.device, conversation)
    assert send(alice.device, body).status_code == 201
    PendingDm.objects.filter(message_id=body["message_id"]).update(expires_at=timezone.now())
    return body["message_id"]


def test_view_only_staff_cannot_run_the_purge():
    message_id = expired_message()
    viewer = staff("view_pendingdm")
    page = viewer.get("/admin/dms/pendingdm/")
    assert page.status_code == 200 and b"Run the purge now" not in page.content
    viewer.post("/admin/dms/pendingdm/purge/")
    assert PendingDm.objects.filter(message_id=message_id).exists()


def test_staff_with_change_permission_runs_the_purge():
    message_id = expired_message()
    changer = staff("view_pendingdm", "change_pendingdm")
    assert b"Run the purge now" in changer.get("/admin/dms/pendingdm/").content
    assert changer.post("/admin/dms/pendingdm/purge/").status_code == 302
    assert not PendingDm.objects.filter(message_id=message_id).exists()


def test_view_only_staff_cannot_change_server_settings():
    viewer = staff("view_serversettings")
    from dms.selectors import server_settings_get

    before = server_settings_get().pending_quota
    viewer.post("/admin/dms/serversettings/1/change/", {"pending_quota": before + 1})
    assert server_settings_get().pending_quota == before
