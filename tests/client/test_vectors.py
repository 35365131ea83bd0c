"""Every client-side vector of vectors.json, reproduced through dmclient's own
code paths (KeyPair, certificate_issue, auth_signature, ConversationView,
crypto.seal/wrap and the receiving steps)."""
import json

import pytest

from dmclient import protocol
from dmclient import crypto
from dmclient.client import ClientError, ConversationView
from dmclient.crypto import Rejected
from dmclient.identity import KeyPair, auth_signature, certificate_issue


def keys(vectors, name) -> KeyPair:
    return KeyPair(bytes.fromhex(vectors["keys"][name]["ed25519_seed_hex"]))


@pytest.fixture
def received(vectors) -> dict:
    """The vector message as bob's laptop receives it from sync, with the vector wrap."""
    m, cert = vectors["message"], vectors["device_cert"]["wire"]
    return {
        "message_id": m["message_id"], "conversation_id": m["conversation_id"],
        "sender": vectors["keys"]["alice_master"]["id_b58"], "sender_device": m["sender_device"],
        "sender_certificate": cert, "epoch": m["epoch"], "key_id": m["key_id"],
        "participants_sha256": m["participants_sha256"], "nonce": m["nonce_b64"], "ciphertext": m["ciphertext_b64"],
        "signature": m["signature_b64"], "key_wrap": vectors["key_wrap"]["wrap"],
        "created_at": "2025-11-27T05:00:00.000000Z", "expires_at": None, "policy": "permanent",
    }


def cert_time(vectors) -> int:
    return vectors["device_cert"]["cert"]["issued_at"] + 86400


@pytest.mark.parametrize("name", ["alice_master", "alice_phone", "bob_master", "bob_laptop"])
def test_keys(vectors, name):
    v, pair = vectors["keys"][name], keys(vectors, name)
    assert pair.id == v["id_b58"]
    assert pair.public.hex() == v["ed25519_pub_hex"]
    # X25519 as crypto.wrap derives it (through protocol.key_wrap)
    assert protocol.x25519_private(pair.seed).hex() == v["x25519_priv_hex"]
    assert protocol.x25519_public(pair.public).hex() == v["x25519_pub_hex"]


@pytest.mark.parametrize("case,master,device", [("device_cert", "alice_master", "alice_phone"),
                                                ("device_cert_no_expiry", "bob_master", "bob_laptop")])
def test_device_certificates(vectors, case, master, device):
    v = vectors[case]
    cert = certificate_issue(keys(vectors, master), device_id=keys(vectors, device).id, name=v["cert"]["name"],
                             expires_at=v["cert"]["expires_at"], permissions=v["cert"]["permissions"],
                             issued_at=v["cert"]["issued_at"])
    assert cert == v["wire"]
    assert protocol.cert_signed_bytes(v["cert"]).hex() == v["signed_bytes_hex"]
    parsed = protocol.cert_check_client(cert, user_id=keys(vectors, master).id, device_id=keys(vectors, device).id,
                                        now=v["cert"]["issued_at"] + 3600)
    assert parsed.name == v["cert"]["name"]


def test_auth_signature(vectors):
    v = vectors["auth"]
    phone = keys(vectors, "alice_phone")
    assert phone.id == v["pubkey"]
    signed = protocol.auth_signed_bytes(challenge=v["challenge_b64"], pubkey=v["pubkey"], server=v["server"])
    assert signed.hex() == v["signed_bytes_hex"]
    assert auth_signature(phone, challenge=v["challenge_b64"], server=v["server"]) == v["signature_b64"]
    # the origin is normalised as RFC 6454 says before signing
    assert auth_signature(phone, challenge=v["challenge_b64"], server="HTTPS://DM.example.org:443/") == v["signature_b64"]


def test_participants_hash_through_the_conversation_view(vectors):
    v = vectors["participants"]
    wire = {"conversation_id": vectors["message"]["conversation_id"], "kind": "direct",
            "participants": v["participants"], "participants_sha256": v["participants_sha256"],
            "created_by": v["participants"][0], "epoch": 3, "retention": {"policy": "ttl", "ttl_days": 7}}
    assert ConversationView.from_wire(wire).participants_sha256 == v["participants_sha256"]
    with pytest.raises(ClientError) as exc:
        ConversationView.from_wire({**wire, "participants_sha256": vectors["message"]["key_id"]})
    assert exc.value.code == "bad_conversation"


def test_key_wrap(vectors, received):
    v = vectors["key_wrap"]
    info = protocol.key_wrap_info(conversation_id=v["conversation_id"], epoch=v["epoch"],
                                  recipient_device=v["recipient_device"], sender_device=v["sender_device"])
    assert info.hex() == v["info_hex"]
    phone, laptop = keys(vectors, "alice_phone"), keys(vectors, "bob_laptop")
    ss = protocol.x25519_shared(protocol.x25519_private(phone.seed), protocol.x25519_public(laptop.public))
    assert ss.hex() == v["shared_secret_hex"]
    assert protocol.hkdf32(ss, info).hex() == v["kek_hex"]
    wrap = crypto.wrap(device=phone, recipient_device=laptop.id, conversation_id=v["conversation_id"],
                       epoch=v["epoch"], group_key=bytes.fromhex(v["group_key_hex"]),
                       nonce=protocol.b64d(v["wrap"]["nonce"]))
    assert wrap == v["wrap"]
    # and bob's laptop unwraps it on receipt, checking key_id
    assert crypto.unwrap(laptop, crypto.parse(received)).hex() == v["group_key_hex"]


def test_message_seal(vectors):
    v = vectors["message"]
    plaintext = v["plaintext_utf8"].encode()
    fields = json.loads(plaintext)
    assert crypto.plaintext_encode(body=fields["body"], sent_at=fields["sent_at"], seq=fields["seq"]) == plaintext
    aad = protocol.dm_aad(conversation_id=v["conversation_id"], epoch=v["epoch"], message_id=v["message_id"],
                          sender_device=v["sender_device"])
    assert aad.hex() == v["aad_hex"]
    assert len(protocol.pad(plaintext)) == v["padded_len"]
    sealed = crypto.seal(device=keys(vectors, "alice_phone"), conversation_id=v["conversation_id"], epoch=v["epoch"],
                         message_id=v["message_id"], group_key=bytes.fromhex(v["group_key_hex"]),
                         participants_sha256=v["participants_sha256"], plaintext=plaintext,
                         nonce=protocol.b64d(v["nonce_b64"]))
    assert sealed == {"key_id": v["key_id"], "nonce": v["nonce_b64"], "ciphertext": v["ciphertext_b64"],
                      "signature": v["signature_b64"]}
    signed = protocol.dm_signed_bytes(
        ciphertext_sha256=protocol.H(protocol.b64d(v["ciphertext_b64"])), conversation_id=v["conversation_id"],
        epoch=v["epoch"], key_id=v["key_id"], message_id=v["message_id"], nonce=v["nonce_b64"],
        participants_sha256=v["participants_sha256"], sender_device=v["sender_device"])
    assert signed.hex() == v["signed_bytes_hex"]
    assert v["participants_sha256"] == vectors["participants"]["participants_sha256"]


def test_message_received_through_every_step(vectors, received):
    m = crypto.parse(received)
    crypto.check_certificate(m, now=cert_time(vectors))
    crypto.check_signature(m)
    key = crypto.unwrap(keys(vectors, "bob_laptop"), m)
    assert crypto.decrypt(key, m) == {"type": "text", "body": "hello bob — ünïcödé ✓", "sent_at": 1764219600000,
                                      "seq": 1}


def test_padding_lengths_through_seal(vectors):
    key = bytes(32)
    for case in vectors["padding"]:
        sealed = crypto.seal(device=keys(vectors, "alice_phone"), conversation_id=vectors["message"]["conversation_id"],
                             epoch=1, message_id=vectors["message"]["message_id"], group_key=key,
                             participants_sha256=vectors["message"]["participants_sha256"],
                             plaintext=b"x" * case["in_len"])
        assert len(protocol.b64d(sealed["ciphertext"])) == case["out_len"] + 16
        assert len(protocol.pad(b"x" * case["in_len"])) == case["out_len"]


@pytest.mark.parametrize("field", ["nonce", "ciphertext", "signature", "key_id"])
def test_rejected_base64_makes_a_message_malformed(vectors, received, field):
    for case in vectors["reject"]["base64"]:
        with pytest.raises(Rejected) as exc:
            crypto.parse({**received, field: case["in"]})
        assert exc.value.reason == "malformed", case["why"]


@pytest.mark.parametrize("field", ["sender", "sender_device"])
def test_rejected_base58_keys_make_a_message_malformed(vectors, received, field):
    for case in vectors["reject"]["base58_key"]:
        with pytest.raises(Rejected) as exc:
            crypto.parse({**received, field: case["in"]})
        assert exc.value.reason == "malformed", case["why"]


def test_rejected_certificates(vectors, received):
    for case in vectors["reject"]["certificate"]:
        m = crypto.parse({**received, "sender_certificate": case["wire"]})
        with pytest.raises(Rejected) as exc:
            crypto.check_certificate(m, now=cert_time(vectors))
        assert exc.value.reason == "bad_certificate", case["why"]


def test_certificate_checked_against_the_claimed_user(vectors, received):
    """A valid certificate, but of another user than the message claims."""
    m = crypto.parse({**received, "sender": vectors["keys"]["bob_master"]["id_b58"]})
    with pytest.raises(Rejected) as exc:
        crypto.check_certificate(m, now=cert_time(vectors))
    assert exc.value.reason == "bad_certificate"


def test_certificate_times_have_a_day_of_tolerance(vectors, received):
    m = crypto.parse(received)
    expires_at = vectors["device_cert"]["cert"]["expires_at"]
    crypto.check_certificate(m, now=expires_at + 86400 - 1)
    with pytest.raises(Rejected):
        crypto.check_certificate(m, now=expires_at + 86400)


def test_rejected_padding(vectors, received):
    key = bytes.fromhex(vectors["message"]["group_key_hex"])
    m = crypto.parse(received)
    aad = protocol.dm_aad(conversation_id=m.conversation_id, epoch=m.epoch, message_id=m.message_id,
                          sender_device=m.sender_device)
    for case in vectors["reject"]["padding"]:
        ciphertext = protocol.aead_encrypt(key, protocol.b64d(m.nonce), bytes.fromhex(case["in_hex"]), aad)
        tampered = crypto.parse({**received, "ciphertext": protocol.b64e(ciphertext)})
        with pytest.raises(Rejected) as exc:
            crypto.decrypt(key, tampered)
        assert exc.value.reason == "bad_padding", case["why"]


def test_rejected_x25519_points(vectors):
    priv = protocol.x25519_private(keys(vectors, "bob_laptop").seed)
    for case in vectors["reject"]["x25519_public"]:
        with pytest.raises(protocol.ProtocolError):
            protocol.x25519_shared(priv, bytes.fromhex(case["in_hex"]))


def test_tampered_vector_fails_signature_and_aead(vectors, received):
    m = crypto.parse({**received, "epoch": 4})
    with pytest.raises(Rejected) as exc:
        crypto.check_signature(m)
    assert exc.value.reason == "bad_signature"
    key = bytes.fromhex(vectors["message"]["group_key_hex"])
    with pytest.raises(Rejected) as exc:
        crypto.decrypt(key, m)  # the epoch is in the AAD
    assert exc.value.reason == "bad_ciphertext"


@pytest.mark.parametrize("case", ["key_wrap_v2", "key_wrap_v2_no_one_time"])
def test_key_wrap_v2_through_send_and_receive(vectors, received, case):
    """§6b: the v2 vectors made by crypto.wrap_v2 from the verified signed prekey
    (as `_new_wraps` does), and opened on receipt with the prekeys' private keys."""
    v, spk_v, otk_v = vectors[case], vectors["signed_prekey"], vectors["one_time_prekey"]
    phone, laptop = keys(vectors, "alice_phone"), keys(vectors, "bob_laptop")
    assert (phone.id, laptop.id) == (v["sender_device"], v["recipient_device"])
    spk = protocol.spk_parse(spk_v["wire"], device=laptop.id)
    assert spk.id == v["signed_prekey_id"]
    one_time = None if v["one_time_id"] is None else protocol.otk_parse(otk_v["public"])
    wrap = crypto.wrap_v2(device=phone, recipient_device=laptop.id, conversation_id=v["conversation_id"],
                          epoch=v["epoch"], group_key=bytes.fromhex(v["group_key_hex"]), signed_prekey=spk,
                          one_time=one_time, ephemeral_priv=bytes.fromhex(v["ephemeral_priv_hex"]),
                          nonce=protocol.b64d(v["wrap"]["nonce"]))
    assert wrap == v["wrap"]
    m = crypto.parse({**received, "key_wrap": v["wrap"]})
    key = crypto.unwrap_v2(laptop, m, signed_prekey_priv=bytes.fromhex(spk_v["x25519_priv_hex"]),
                           one_time_priv=None if one_time is None else bytes.fromhex(otk_v["x25519_priv_hex"]))
    assert key.hex() == v["group_key_hex"]
    assert crypto.decrypt(key, m)["body"] == "hello bob — ünïcödé ✓"
    # another one-time private key (or none where one is named) does not open it
    with pytest.raises(Rejected) as exc:
        crypto.unwrap_v2(laptop, m, signed_prekey_priv=bytes.fromhex(otk_v["x25519_priv_hex"]),
                         one_time_priv=None if one_time is None else bytes.fromhex(spk_v["x25519_priv_hex"]))
    assert exc.value.reason == "bad_key_wrap"


@pytest.mark.parametrize("change", [
    {"ephemeral": "AAAA"}, {"nonce": "AAAA"}, {"signed_prekey_id": 0}, {"one_time_id": -1}, {"one_time_id": True},
    {"v": 3}, {"extra": 1}, "drop_ephemeral"])
def test_a_v2_wrap_of_another_shape_makes_a_message_malformed(vectors, received, change):
    wrap = dict(vectors["key_wrap_v2"]["wrap"])
    if change == "drop_ephemeral":
        del wrap["ephemeral"]
    else:
        wrap.update(change)
    with pytest.raises(Rejected) as exc:
        crypto.parse({**received, "key_wrap": wrap})
    assert exc.value.reason == "malformed"
