"""POST /api/v1/dms/prekeys/claim (§6b), PREKEYS_LOW (§9), and v2 key wraps
through send and sync (§7 check 3): real keys, real wraps."""
import datetime as dt
import os

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.utils import timezone

from dmclient import protocol
from devices.models import Device, OneTimePrekey, SignedPrekey, User
from devices.services import device_revoke, user_suspend
from dms.selectors import server_settings_get
from tests.devices.test_prekeys import otks, put, spk
from tests.factories import ack, build_send, create_conversation, make_person, send, sync
from tests.gateway.wsutil import close_all, connect, next_op, silent

CLAIM = "/api/v1/dms/prekeys/claim"


def claim(device, device_ids):
    return device.client.post(CLAIM, {"devices": device_ids}, format="json")


def publish(device, *, spk_id: int = 1, one_time: int = 100, first_id: int = 1, created_at: int = 0):
    """A signed prekey and `one_time` one-time prekeys; returns their private keys by id."""
    privs = {}
    spk_priv, spk_pub = protocol.x25519_keypair()
    wire = protocol.spk_issue(device_seed=device.keys.seed, id=spk_id, x25519_pub=spk_pub, created_at=created_at)
    keys = []
    for prekey_id in range(first_id, first_id + one_time):
        priv, pub = protocol.x25519_keypair()
        privs[prekey_id] = priv
        keys.append({"id": prekey_id, "x25519": protocol.b64e(pub)})
    for start in range(0, max(len(keys), 1), 100):
        body = {"one_time": keys[start:start + 100]}
        if start == 0:
            body["signed_prekey"] = wire
        assert put(device, body).status_code == 200
    return wire, spk_priv, privs


@pytest.mark.django_db
def test_claim_hands_out_lowest_first_and_deletes(person):
    alice, bob = person(), person(2)
    wire, _, _ = publish(bob.devices[0], one_time=3)
    response = claim(alice.device, [bob.devices[0].id, bob.devices[1].id])
    assert response.status_code == 200, response.content
    first, second = response.json()["prekeys"]
    assert first["device_id"] == bob.devices[0].id
    assert first["signed_prekey"] == wire
    assert first["one_time"]["id"] == 1
    # a device without prekeys: listed, with nulls
    assert second == {"device_id": bob.devices[1].id, "signed_prekey": None, "one_time": None}
    assert sorted(OneTimePrekey.objects.values_list("prekey_id", flat=True)) == [2, 3]
    ids = [claim(alice.device, [bob.devices[0].id]).json()["prekeys"][0]["one_time"] for _ in range(3)]
    assert [i and i["id"] for i in ids] == [2, 3, None]  # then empty: one_time null, signed prekey still there
    assert claim(alice.device, [bob.devices[0].id]).json()["prekeys"][0]["signed_prekey"] == wire
    assert bob.devices[0].client.get("/api/v1/devices/prekeys").json()["one_time_count"] == 0


@pytest.mark.django_db
def test_claim_answers_in_the_order_asked(person):
    alice, bob = person(), person(3)
    for device in bob.devices:
        publish(device, one_time=1)
    order = [bob.devices[2].id, bob.devices[0].id, bob.devices[1].id]
    assert [p["device_id"] for p in claim(alice.device, order).json()["prekeys"]] == order


@pytest.mark.django_db
def test_claim_leaves_out_inactive_devices(person):
    alice, bob, carol, dave = person(), person(2), person(), person()
    for device in (*bob.devices, carol.device, dave.device):
        publish(device, one_time=2)
    revoked, expiring = bob.devices
    device_revoke(device=Device.objects.get(device_id=revoked.id))
    Device.objects.filter(device_id=expiring.id).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    user_suspend(user=User.objects.get(username=carol.id))
    unknown = protocol.b58e(protocol.public_key(os.urandom(32)))
    response = claim(alice.device, [revoked.id, expiring.id, carol.device.id, unknown, dave.device.id])
    assert [p["device_id"] for p in response.json()["prekeys"]] == [dave.device.id]
    # nothing was taken from the expired device (its prekeys go with the purge)
    assert OneTimePrekey.objects.filter(device__device_id=expiring.id).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("body", [
    {}, {"devices": "x"}, {"devices": ["not-b58"]}, {"devices": [1]}, [],
])
def test_bad_claims_refused(person, body):
    alice = person()
    response = alice.device.client.post(CLAIM, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_request"


@pytest.mark.django_db
def test_duplicate_devices_refused(person):
    alice, bob = person(), person()
    publish(bob.device, one_time=2)
    response = claim(alice.device, [bob.device.id, bob.device.id])
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert OneTimePrekey.objects.count() == 2


@pytest.mark.django_db
def test_at_most_the_recipient_limit(person):
    alice, bob = person(), person(2)
    conf = server_settings_get()
    conf.max_recipients_per_message = 1
    conf.save()
    response = claim(alice.device, [d.id for d in bob.devices])
    assert response.status_code == 400 and response.json()["error"] == "too_many_recipients"
    assert claim(alice.device, [bob.devices[0].id]).status_code == 200


@pytest.mark.django_db
def test_claim_needs_a_device_session(person):
    alice, bob = person(), person()
    response = alice.master_client().post(CLAIM, {"devices": [bob.device.id]}, format="json")
    assert response.status_code == 403 and response.json()["error"] == "device_session_required"
    assert alice.device.client.post(CLAIM, {"devices": []}, format="json").json() == {"prekeys": []}


@pytest.mark.django_db
def test_claims_are_rate_limited_per_calling_device(person):
    alice, bob = person(2), person()
    publish(bob.device, one_time=10)
    conf = server_settings_get()
    conf.prekey_claim_rate_per_device = 3
    conf.save()
    for _ in range(3):
        assert claim(alice.devices[0], [bob.device.id]).status_code == 200
    response = claim(alice.devices[0], [bob.device.id])
    assert response.status_code == 429, response.content
    assert response.json()["error"] == "rate_limited"
    assert int(response["Retry-After"]) >= 1
    assert OneTimePrekey.objects.count() == 7  # the refused claim took nothing
    assert claim(alice.devices[1], [bob.device.id]).status_code == 200  # per calling device
    conf.prekey_claim_rate_per_device = 0  # no limit
    conf.save()
    for _ in range(3):
        assert claim(alice.devices[0], [bob.device.id]).status_code == 200


# --- PREKEYS_LOW over a WebSocket ----------------------------------------------------

@pytest.mark.django_db(transaction=True)
def test_prekeys_low_after_commit_to_the_claimed_device_only():
    alice, bob, carol = make_person(), make_person(2), make_person()
    publish(bob.devices[0], one_time=21)
    publish(bob.devices[1], one_time=30)
    publish(carol.device, one_time=5)

    async def scenario():
        low, other, carol_ws, alice_ws = [(await connect(d.client.token))[0] for d in (
            bob.devices[0], bob.devices[1], carol.device, alice.device)]
        # 21 -> 20: not below 20 yet
        await sync_to_async(claim)(alice.device, [bob.devices[0].id, bob.devices[1].id])
        assert await silent(low, other, carol_ws, alice_ws)
        # 20 -> 19 (and the other device 29 -> 28)
        await sync_to_async(claim)(alice.device, [bob.devices[0].id, bob.devices[1].id])
        frame = await next_op(low, "PREKEYS_LOW")
        assert frame["d"] == {"one_time_count": 19}
        assert await silent(low, other, carol_ws, alice_ws)  # one event per claim, to that device only
        # a device whose supply is already empty: nothing taken, no event
        for _ in range(5):
            await sync_to_async(claim)(alice.device, [carol.device.id])
            assert (await next_op(carol_ws, "PREKEYS_LOW"))["d"]["one_time_count"] >= 0
        await sync_to_async(claim)(alice.device, [carol.device.id])
        assert await silent(carol_ws)
        await close_all(low, other, carol_ws, alice_ws)

    async_to_sync(scenario)()


# --- deletion with the device --------------------------------------------------------

def _prekey_rows(device) -> int:
    return (SignedPrekey.objects.filter(device__device_id=device.id).count()
            + OneTimePrekey.objects.filter(device__device_id=device.id).count())


@pytest.mark.django_db
def test_revocation_deletes_prekeys(person):
    bob = person(2)
    for device in bob.devices:
        publish(device, one_time=5)
    assert bob.devices[1].client.delete(f"/api/v1/devices/{bob.devices[0].id}").status_code == 204
    assert _prekey_rows(bob.devices[0]) == 0
    assert _prekey_rows(bob.devices[1]) == 6


@pytest.mark.django_db
def test_suspension_deletes_prekeys(person):
    bob, carol = person(2), person()
    for device in (*bob.devices, carol.device):
        publish(device, one_time=5)
    assert user_suspend(user=User.objects.get(username=bob.id))
    assert all(_prekey_rows(d) == 0 for d in bob.devices)
    assert _prekey_rows(carol.device) == 6


@pytest.mark.django_db
def test_expiry_deletes_prekeys_in_the_purge(person):
    from dms.services import dm_purge_expired

    bob = person(2)
    for device in bob.devices:
        publish(device, one_time=5)
    Device.objects.filter(device_id=bob.devices[0].id).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    counts = dm_purge_expired(now=timezone.now())
    assert counts["expired_devices"] == 1
    assert _prekey_rows(bob.devices[0]) == 0
    assert _prekey_rows(bob.devices[1]) == 6


@pytest.mark.django_db
def test_purge_deletes_prekeys_of_devices_that_are_gone(person):
    """Rows a gone device kept (written before these deletions existed, or
    by hand): the purge deletes them, and no other device's."""
    from dms.services import dm_purge_expired

    bob, carol, dave = person(2), person(), person()
    now = timezone.now()
    for device in (*bob.devices, carol.device, dave.device):
        publish(device, one_time=3)
    # gone without the services' own deletions
    Device.objects.filter(device_id=bob.devices[0].id).update(revoked_at=now)
    User.objects.filter(username=carol.id).update(suspended_at=now)
    dry = dm_purge_expired(now=now, dry_run=True)
    assert dry["prekeys"] == 8
    assert _prekey_rows(bob.devices[0]) == 4
    counts = dm_purge_expired(now=now)
    assert counts["prekeys"] == 8
    assert _prekey_rows(bob.devices[0]) == 0 and _prekey_rows(carol.device) == 0
    assert _prekey_rows(bob.devices[1]) == 4 and _prekey_rows(dave.device) == 4


@pytest.mark.django_db
@pytest.mark.parametrize("gone", ["revoked", "suspended"])
def test_upload_by_a_device_gone_meanwhile_is_refused(person, gone):
    """The session check passed, the device row says otherwise (a revocation
    that committed between them): nothing is stored."""
    from devices.services import prekeys_upload

    bob = person()
    device = Device.objects.get(device_id=bob.device.id)
    if gone == "revoked":
        Device.objects.filter(pk=device.pk).update(revoked_at=timezone.now())
    else:
        User.objects.filter(pk=device.user_id).update(suspended_at=timezone.now())
    with pytest.raises(Exception) as info:
        prekeys_upload(device=device, one_time=otks(1, 3))
    assert getattr(info.value, "code", None) == "device_revoked"
    assert OneTimePrekey.objects.count() == 0


# --- key wrap v2 through send and sync (§7 check 3) --------------------------------------

def _v2_send(alice, bob, conversation, *, with_one_time: bool = True):
    """A message to bob's device wrapped v2 with a claimed prekey; returns (body, group_key, claimed)."""
    claimed = claim(alice.device, [bob.device.id]).json()["prekeys"][0]
    signed = protocol.spk_parse(claimed["signed_prekey"], device=bob.device.id)
    one_time = protocol.otk_parse(claimed["one_time"]) if with_one_time and claimed["one_time"] else None
    group_key = os.urandom(32)
    body = build_send(alice.device, conversation, group_key=group_key)
    [recipient] = body["recipients"]
    recipient["key_wrap"] = protocol.key_wrap_v2(
        sender_seed=alice.device.keys.seed, sender_device=alice.device.id, recipient_device=bob.device.id,
        conversation_id=conversation["conversation_id"], epoch=conversation["epoch"], group_key=group_key,
        signed_prekey=signed, one_time=one_time)
    return body, group_key, claimed


@pytest.mark.django_db
@pytest.mark.parametrize("with_one_time", [True, False])
def test_v2_wrap_is_stored_and_synced_back_as_sent(person, with_one_time):
    alice, bob = person(), person()
    _, spk_priv, otk_privs = publish(bob.device, one_time=3)
    conversation = create_conversation(alice.device, [bob.id])
    body, group_key, claimed = _v2_send(alice, bob, conversation, with_one_time=with_one_time)
    sent_wrap = body["recipients"][0]["key_wrap"]
    assert (sent_wrap["one_time_id"] is None) is (not with_one_time)
    response = send(alice.device, body)
    assert response.status_code == 201, response.content
    [msg] = sync(bob.device)["messages"]
    assert msg["key_wrap"] == sent_wrap
    assert list(msg["key_wrap"]) == list(sent_wrap)  # the order of §6b
    opened = protocol.key_unwrap_v2(
        signed_prekey_priv=spk_priv, one_time_priv=otk_privs[sent_wrap["one_time_id"]] if with_one_time else None,
        recipient_device=bob.device.id, sender_device=alice.device.id,
        conversation_id=conversation["conversation_id"], epoch=conversation["epoch"], wrap=msg["key_wrap"])
    assert opened == group_key
    # the history serves it too, to the recipient
    history = bob.device.client.get(f"/api/v1/dms/conversations/{conversation['conversation_id']}/messages").json()
    assert history["messages"][0]["key_wrap"] == sent_wrap
    # a v2 wrap ACKed makes a receipt, as a v1 wrap does (check 10)
    ack(bob.device, [msg["message_id"]])
    again = build_send(alice.device, conversation, group_key=group_key, wrap_for=[])
    assert send(alice.device, again).status_code == 201


@pytest.mark.django_db
def test_v1_and_v2_wraps_side_by_side(person):
    alice, bob = person(), person(2)
    publish(bob.devices[0], one_time=1)
    conversation = create_conversation(alice.device, [bob.id])
    group_key = os.urandom(32)
    body = build_send(alice.device, conversation, group_key=group_key)
    claimed = claim(alice.device, [bob.devices[0].id]).json()["prekeys"][0]
    for recipient in body["recipients"]:
        if recipient["device_id"] == bob.devices[0].id:
            recipient["key_wrap"] = protocol.key_wrap_v2(
                sender_seed=alice.device.keys.seed, sender_device=alice.device.id,
                recipient_device=bob.devices[0].id, conversation_id=conversation["conversation_id"],
                epoch=conversation["epoch"], group_key=group_key,
                signed_prekey=protocol.spk_parse(claimed["signed_prekey"], device=bob.devices[0].id),
                one_time=protocol.otk_parse(claimed["one_time"]))
    assert send(alice.device, body).status_code == 201
    sent = {r["device_id"]: r["key_wrap"] for r in body["recipients"]}
    for device in bob.devices:
        [msg] = sync(device)["messages"]
        assert msg["key_wrap"] == sent[device.id]
    assert protocol.wrap_version(sync(bob.devices[1])["messages"][0]["key_wrap"]) == 1


def _good_v2() -> dict:
    return {"v": 2, "signed_prekey_id": 1, "one_time_id": 2, "ephemeral": protocol.b64e(os.urandom(32)),
            "nonce": protocol.b64e(os.urandom(12)), "wrapped_key": protocol.b64e(os.urandom(48))}


BAD_WRAPS = {
    "v1 with an extra key": lambda w: {"nonce": w["nonce"], "wrapped_key": w["wrapped_key"], "x": 1},
    "v1 missing wrapped_key": lambda w: {"nonce": w["nonce"]},
    "v 1": lambda w: {**w, "v": 1},
    "v 3": lambda w: {**w, "v": 3},
    "v as a string": lambda w: {**w, "v": "2"},
    "v true": lambda w: {**w, "v": True},
    "missing one_time_id": lambda w: {k: v for k, v in w.items() if k != "one_time_id"},
    "missing ephemeral": lambda w: {k: v for k, v in w.items() if k != "ephemeral"},
    "an extra key": lambda w: {**w, "extra": None},
    "signed_prekey_id 0": lambda w: {**w, "signed_prekey_id": 0},
    "signed_prekey_id null": lambda w: {**w, "signed_prekey_id": None},
    "signed_prekey_id negative": lambda w: {**w, "signed_prekey_id": -1},
    "signed_prekey_id a float": lambda w: {**w, "signed_prekey_id": 1.0},
    "signed_prekey_id a string": lambda w: {**w, "signed_prekey_id": "1"},
    "signed_prekey_id over 2^53-1": lambda w: {**w, "signed_prekey_id": 2**53},
    "one_time_id 0": lambda w: {**w, "one_time_id": 0},
    "one_time_id true": lambda w: {**w, "one_time_id": True},
    "ephemeral 31 bytes": lambda w: {**w, "ephemeral": protocol.b64e(os.urandom(31))},
    "ephemeral 33 bytes": lambda w: {**w, "ephemeral": protocol.b64e(os.urandom(33))},
    "ephemeral not base64": lambda w: {**w, "ephemeral": "!" * 44},
    "ephemeral null": lambda w: {**w, "ephemeral": None},
    "nonce 11 bytes": lambda w: {**w, "nonce": protocol.b64e(os.urandom(11))},
    "wrapped_key 32 bytes": lambda w: {**w, "wrapped_key": protocol.b64e(os.urandom(32))},
    "wrapped_key 49 bytes": lambda w: {**w, "wrapped_key": protocol.b64e(os.urandom(49))},
    "a list": lambda w: [w],
    "a string": lambda w: "wrap",
}


@pytest.mark.django_db
@pytest.mark.parametrize("why", list(BAD_WRAPS))
def test_bad_v2_shapes_refused(person, why):
    alice, bob = person(), person()
    conversation = create_conversation(alice.device, [bob.id])
    body = build_send(alice.device, conversation)
    body["recipients"][0]["key_wrap"] = BAD_WRAPS[why](_good_v2())
    response = send(alice.device, body)
    assert response.status_code == 400, (why, response.content)
    assert response.json()["error"] == "invalid_request"
    assert any(f.startswith("recipients.0.key_wrap") for f in response.json()["fields"]), response.json()
    assert sync(bob.device)["messages"] == []


@pytest.mark.django_db
def test_good_v2_shape_accepted_with_null_one_time_id(person):
    """The server checks the shape only (§6b): a wrap it cannot open is stored as sent."""
    alice, bob = person(), person()
    conversation = create_conversation(alice.device, [bob.id])
    body = build_send(alice.device, conversation)
    wrap = {**_good_v2(), "one_time_id": None, "signed_prekey_id": protocol.MAX_PREKEY_ID}
    body["recipients"][0]["key_wrap"] = wrap
    assert send(alice.device, body).status_code == 201, send(alice.device, body).content
    assert sync(bob.device)["messages"][0]["key_wrap"] == wrap


# --- per-request work does not grow with the devices claimed ------------------------------

# session, settings, the active devices, BEGIN, the DELETE of one-time prekeys, signed prekeys,
# one-time counts, COMMIT
CLAIM_QUERIES = 8


@pytest.mark.django_db
@pytest.mark.parametrize("devices", [1, 9])
def test_claim_query_count_is_flat(person, devices, django_assert_num_queries):
    alice, bob = person(), person(devices)
    for device in bob.devices:
        publish(device, one_time=2)
    with django_assert_num_queries(CLAIM_QUERIES):
        response = claim(alice.device, [d.id for d in bob.devices])
    assert [p["one_time"]["id"] for p in response.json()["prekeys"]] == [1] * devices


@pytest.mark.django_db
@pytest.mark.parametrize("recipients", [1, 8])
def test_v2_send_and_sync_query_counts_are_those_of_v1(person, recipients, django_assert_max_num_queries):
    from tests.dms.test_query_counts import SEND_QUERIES, SYNC_QUERIES

    alice, bob = person(), person(recipients)
    conversation = create_conversation(alice.device, [bob.id])
    body = build_send(alice.device, conversation)
    for recipient in body["recipients"]:
        recipient["key_wrap"] = _good_v2()
    with django_assert_max_num_queries(SEND_QUERIES):
        assert send(alice.device, body).status_code == 201
    with django_assert_max_num_queries(SYNC_QUERIES):
        assert len(sync(bob.devices[0])["messages"]) == 1
