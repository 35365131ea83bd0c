"""One-time prekeys are handed out exactly once under concurrent claims
(§6b), on PostgreSQL with real threads and connections (SQLite has a single
writer: there a claim is one statement of one writer)."""
import collections

import pytest

from devices.models import Device, OneTimePrekey
from devices.services import device_revoke, prekeys_claim, prekeys_upload
from tests.dms.test_concurrency import run_together
from tests.devices.test_prekeys import otks, spk
from tests.factories import make_person

pytestmark = [pytest.mark.requires_postgres, pytest.mark.django_db(transaction=True)]


def upload(device, n: int, first_id: int = 1) -> set[tuple[str, int, str]]:
    row = Device.objects.get(device_id=device.id)
    uploaded = set()
    for start in range(first_id, first_id + n, 100):
        keys = otks(start, min(100, first_id + n - start))
        prekeys_upload(device=row, signed_prekey=spk(device, start) if start == first_id else None, one_time=keys)
        uploaded |= {(device.id, k["id"], k["x25519"]) for k in keys}
    return uploaded


def claimer(device_ids: list[str], rounds: int):
    def run():
        got = []
        for _ in range(rounds):
            for entry in prekeys_claim(device_ids=device_ids):
                if entry["one_time"] is not None:
                    got.append((entry["device_id"], entry["one_time"]["id"], entry["one_time"]["x25519"]))
        return got
    return run


def remaining() -> set[tuple[str, int, str]]:
    return set(OneTimePrekey.objects.values_list("device__device_id", "prekey_id", "x25519"))


@pytest.mark.parametrize("round_", range(3))
def test_racing_claimers_never_hand_out_a_key_twice_nor_lose_one(round_):
    bob = make_person(3)
    uploaded = set()
    for device in bob.devices:
        uploaded |= upload(device, 60)
    ids = [d.id for d in bob.devices]
    # 8 claimers, each 10 rounds naming all three devices (in different orders): 80 claims per device, 60 keys each
    orders = [ids, ids[::-1], ids[1:] + ids[:1], ids[2:] + ids[:2]] * 2
    results = run_together([claimer(order, 10) for order in orders])
    handed = [key for got in results for key in got]
    counted = collections.Counter(handed)
    assert [key for key, n in counted.items() if n > 1] == []  # no key handed out twice
    left = remaining()
    assert set(handed) | left == uploaded  # none lost
    assert not set(handed) & left  # a key handed out is deleted
    assert len(handed) >= len(uploaded) - 8 * 3  # claims did drain the supply


def test_claims_racing_uploads_and_a_revocation():
    bob = make_person(2)
    uploaded = upload(bob.devices[0], 50) | upload(bob.devices[1], 50)
    ids = [d.id for d in bob.devices]
    target = Device.objects.get(device_id=ids[1])
    more = otks(1000, 50)

    def add_more():
        prekeys_upload(device=Device.objects.get(device_id=ids[0]), one_time=more)
        return []

    def revoke():
        device_revoke(device=target)
        return []

    results = run_together([claimer(ids, 15) for _ in range(6)] + [add_more, revoke])
    uploaded |= {(ids[0], k["id"], k["x25519"]) for k in more}
    handed = [key for got in results for key in got]
    assert len(handed) == len(set(handed))
    left = remaining()
    assert not set(handed) & left
    # the revoked device keeps nothing; every key of the other device is handed out or still there
    assert not {k for k in left if k[0] == ids[1]}
    assert {k for k in uploaded if k[0] == ids[0]} == {k for k in set(handed) | left if k[0] == ids[0]}
