"""A failure midway through a prekey write leaves nothing half-done: the
upload (signed prekey, then one-time prekeys), the claim, and a revocation
(which now deletes prekeys too). The failure is a real database trigger."""
import pytest
from django.db import DatabaseError

from devices.models import Device, OneTimePrekey, SignedPrekey
from devices.services import device_revoke, prekeys_claim, prekeys_upload
from tests.devices.test_prekeys import otks, spk
from tests.dms.test_rollback import failing

pytestmark = pytest.mark.django_db


def test_upload_failing_at_the_one_time_prekeys_stores_no_signed_prekey(person):
    bob = person()
    device = Device.objects.get(device_id=bob.device.id)
    prekeys_upload(device=device, signed_prekey=spk(bob.device, 1), one_time=otks(1, 2))
    with failing("device_one_time_prekeys", "INSERT"), pytest.raises(DatabaseError):
        prekeys_upload(device=device, signed_prekey=spk(bob.device, 2), one_time=otks(10, 5))
    assert SignedPrekey.objects.get(device=device).prekey_id == 1
    assert OneTimePrekey.objects.filter(device=device).count() == 2
    # and the same upload goes through afterwards
    assert prekeys_upload(device=device, signed_prekey=spk(bob.device, 2), one_time=otks(10, 5)) == {
        "signed_prekey_id": 2, "one_time_count": 7}


def test_claim_failing_takes_nothing(person):
    bob = person()
    device = Device.objects.get(device_id=bob.device.id)
    prekeys_upload(device=device, one_time=otks(1, 3))
    with failing("device_one_time_prekeys", "DELETE"), pytest.raises(DatabaseError):
        prekeys_claim(device_ids=[bob.device.id])
    assert OneTimePrekey.objects.filter(device=device).count() == 3
    assert prekeys_claim(device_ids=[bob.device.id])[0]["one_time"]["id"] == 1


def test_revocation_failing_at_the_prekeys_revokes_nothing(person):
    bob = person()
    device = Device.objects.get(device_id=bob.device.id)
    prekeys_upload(device=device, signed_prekey=spk(bob.device, 1), one_time=otks(1, 3))
    with failing("device_one_time_prekeys", "DELETE"), pytest.raises(DatabaseError):
        device_revoke(device=device)
    device.refresh_from_db()
    assert device.revoked_at is None
    assert SignedPrekey.objects.filter(device=device).exists()
    assert OneTimePrekey.objects.filter(device=device).count() == 3
