"""The device admin (§6b): per device the signed prekey's id and age and the
one-time supply, counts only: no prekey, public or not, on any page."""
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices.models import Device, OneTimePrekey, SignedPrekey
from tests.dms.test_prekey_claim import publish

pytestmark = pytest.mark.django_db


def test_device_admin_shows_prekey_id_age_and_supply_never_keys(admin_client, person):
    bob = person(2)
    # created 3 h ago (and a minute, so that the age reads 3 h however slow the test)
    wire, _, _ = publish(bob.devices[0], spk_id=41, one_time=37, created_at=int(time.time()) - 3 * 3600 - 60)
    keys = [wire["x25519"], wire["signature"], *OneTimePrekey.objects.values_list("x25519", flat=True)]
    listing = admin_client.get("/admin/devices/device/")
    assert listing.status_code == 200
    html = listing.content.decode()
    assert "#41, 3 h old" in html and ">37<" in html
    assert ">0<" in html  # the other device: no one-time prekeys
    device = Device.objects.get(device_id=bob.devices[0].id)
    with CaptureQueriesContext(connection) as ctx:
        detail = admin_client.get(f"/admin/devices/device/{device.pk}/change/")
    assert detail.status_code == 200
    page = detail.content.decode()
    assert "id 41, created " in page and " UTC (3 h ago), uploaded " in page
    assert '<div class="readonly">37</div>' in page
    for key in keys:
        assert key not in html and key not in page
    # the pages never read a key column
    assert not [q["sql"] for q in ctx.captured_queries
                if '"x25519"' in q["sql"] or '"device_signed_prekeys"."wire"' in q["sql"]]
    assert SignedPrekey.objects.count() == 1


def test_device_admin_without_prekeys(admin_client, person):
    bob = person()
    device = Device.objects.get(device_id=bob.device.id)
    assert "none published" in admin_client.get(f"/admin/devices/device/{device.pk}/change/").content.decode()
