"""Prekey upload and read-back (§6b): PUT/GET /api/v1/devices/prekeys, with real keys."""
import time

import pytest

from dmclient import protocol
from devices.models import OneTimePrekey, SignedPrekey
from tests.factories import Keys, issue_cert, login

URL = "/api/v1/devices/prekeys"


def spk(device, prekey_id: int = 1, *, seed: bytes | None = None) -> dict:
    _, pub = protocol.x25519_keypair()
    return protocol.spk_issue(device_seed=seed or device.keys.seed, id=prekey_id, x25519_pub=pub,
                              created_at=int(time.time()))


def otks(start: int, n: int) -> list[dict]:
    return [{"id": i, "x25519": protocol.b64e(protocol.x25519_keypair()[1])} for i in range(start, start + n)]


def put(device, body):
    return device.client.put(URL, body, format="json")


@pytest.mark.django_db
def test_upload_then_get(person):
    device = person().device
    assert device.client.get(URL).json() == {"signed_prekey": None, "one_time_count": 0}
    wire = spk(device, 3)
    response = put(device, {"signed_prekey": wire, "one_time": otks(1, 100)})
    assert response.status_code == 200, response.content
    assert response.json() == {"signed_prekey_id": 3, "one_time_count": 100}
    got = device.client.get(URL).json()
    assert got == {"signed_prekey": wire, "one_time_count": 100}
    assert list(got["signed_prekey"]) == list(wire)  # served as uploaded, key order too
    protocol.spk_parse(got["signed_prekey"], device=device.id)


@pytest.mark.django_db
def test_signed_prekey_ids_strictly_increase(person):
    device = person().device
    assert put(device, {"signed_prekey": spk(device, 5)}).json()["signed_prekey_id"] == 5
    for stale in (5, 4, 1):
        response = put(device, {"signed_prekey": spk(device, stale)})
        assert response.status_code == 409, response.content
        assert response.json()["error"] == "stale_prekey"
        assert response.json()["signed_prekey_id"] == 5
    newer = spk(device, 6)
    assert put(device, {"signed_prekey": newer}).json() == {"signed_prekey_id": 6, "one_time_count": 0}
    assert device.client.get(URL).json()["signed_prekey"] == newer
    assert SignedPrekey.objects.count() == 1


@pytest.mark.django_db
def test_stale_signed_prekey_refuses_the_whole_upload(person):
    device = person().device
    put(device, {"signed_prekey": spk(device, 5)})
    response = put(device, {"signed_prekey": spk(device, 5), "one_time": otks(1, 10)})
    assert response.status_code == 409
    assert device.client.get(URL).json()["one_time_count"] == 0


@pytest.mark.django_db
def test_one_time_ids_already_stored_are_ignored(person):
    device = person().device
    first = otks(1, 50)
    assert put(device, {"one_time": first}).json() == {"signed_prekey_id": None, "one_time_count": 50}
    # ids 41..90: 41..50 are stored (with other keys here: the stored ones stay)
    again = otks(41, 50)
    assert put(device, {"one_time": again}).json()["one_time_count"] == 90
    stored = dict(OneTimePrekey.objects.values_list("prekey_id", "x25519"))
    assert stored[45] == first[44]["x25519"]
    assert stored[60] == again[19]["x25519"]


@pytest.mark.django_db
def test_at_most_200_stored(person):
    device = person().device
    assert put(device, {"one_time": otks(1, 100)}).status_code == 200
    assert put(device, {"one_time": otks(101, 90)}).json()["one_time_count"] == 190
    response = put(device, {"one_time": otks(191, 11)})
    assert response.status_code == 409, response.content
    assert response.json()["error"] == "too_many_prekeys"
    assert response.json()["one_time_count"] == 190
    assert OneTimePrekey.objects.count() == 190  # the whole request refused
    # already-stored ids do not count against the limit
    assert put(device, {"one_time": otks(181, 20)}).json()["one_time_count"] == 200


@pytest.mark.django_db
def test_more_than_100_per_upload_refused(person):
    device = person().device
    response = put(device, {"one_time": otks(1, 101)})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request" and "at most 100" in response.json()["detail"]
    assert OneTimePrekey.objects.count() == 0
    # The count is checked first: 101 entries, the last malformed, still answer with the count.
    response = put(device, {"one_time": otks(1, 100) + ["x"]})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert OneTimePrekey.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("index", [0, 1, 2])
def test_reject_vectors(person, vectors, index):
    """Every reject.signed_prekey entry, uploaded by the very device it names."""
    keys = vectors["keys"]["alice_phone"]
    entry = vectors["reject"]["signed_prekey"][index]
    device_keys = Keys(seed=bytes.fromhex(keys["ed25519_seed_hex"]))
    assert device_keys.id == entry["wire"]["device"]
    master = Keys()
    client = login(device_keys, certificate=issue_cert(master, device_keys))
    response = client.put(URL, {"signed_prekey": entry["wire"]}, format="json")
    assert response.status_code == 400, (entry["why"], response.content)
    assert response.json()["error"] == "invalid_prekey"
    assert SignedPrekey.objects.count() == 0


@pytest.mark.django_db
def test_valid_vector_prekey_is_accepted_from_its_device(person, vectors):
    entry = vectors["signed_prekey"]
    bob_laptop = vectors["keys"]["bob_laptop"]
    device_keys = Keys(seed=bytes.fromhex(bob_laptop["ed25519_seed_hex"]))
    assert device_keys.id == entry["device"]
    client = login(device_keys, certificate=issue_cert(Keys(), device_keys))
    response = client.put(URL, {"signed_prekey": entry["wire"]}, format="json")
    assert response.json() == {"signed_prekey_id": 7, "one_time_count": 0}


@pytest.mark.django_db
def test_prekey_of_another_device_refused(person):
    alice = person(2)
    mine, other = alice.devices
    # signed by the other device and naming it
    response = put(mine, {"signed_prekey": spk(other, 1)})
    assert response.status_code == 400 and response.json()["error"] == "invalid_prekey"
    # naming me but signed by the other device
    forged = spk(mine, 1, seed=other.keys.seed)
    forged["device"] = mine.id
    response = put(mine, {"signed_prekey": forged})
    assert response.status_code == 400 and response.json()["error"] == "invalid_prekey"
    assert SignedPrekey.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("body", [
    [],
    {"extra": 1},
    {"one_time": {"id": 1}},
    {"one_time": [{"id": 0, "x25519": protocol.b64e(bytes(32))}]},
    {"one_time": [{"id": True, "x25519": protocol.b64e(bytes(32))}]},
    {"one_time": [{"id": 2**53, "x25519": protocol.b64e(bytes(32))}]},
    {"one_time": [{"id": 1, "x25519": protocol.b64e(bytes(31))}]},
    {"one_time": [{"id": 1, "x25519": protocol.b64e(bytes(32)), "extra": 1}]},
    {"one_time": [{"id": 1, "x25519": protocol.b64e(bytes(32))}, {"id": 1, "x25519": protocol.b64e(bytes(32))}]},
    {"signed_prekey": "x"},
    {"signed_prekey": {}},
])
def test_bad_input_refused(person, body):
    device = person().device
    response = put(device, body)
    assert response.status_code == 400, response.content
    assert response.json()["error"] in ("invalid_request", "invalid_prekey")
    assert response.json()["detail"]
    assert OneTimePrekey.objects.count() == 0 and SignedPrekey.objects.count() == 0


@pytest.mark.django_db
def test_master_session_refused(person):
    alice = person()
    response = alice.master_client().put(URL, {"one_time": otks(1, 1)}, format="json")
    assert response.status_code == 403
    assert response.json()["error"] == "device_session_required"
