"""Every entry of vectors.json, byte for byte."""
import json
from pathlib import Path

import pytest

from dmclient import protocol as p
from dmclient import protocol

V = json.loads((Path(__file__).parent / "vectors.json").read_text())
SEED = {name: bytes.fromhex(k["ed25519_seed_hex"]) for name, k in V["keys"].items()}


@pytest.mark.parametrize("name", sorted(V["keys"]))
def test_keys(name):
    k = V["keys"][name]
    pub = p.public_key(SEED[name])
    assert pub.hex() == k["ed25519_pub_hex"]
    assert p.b58e(pub) == k["id_b58"]
    assert p.b58_key(k["id_b58"]) == pub
    assert p.x25519_private(SEED[name]).hex() == k["x25519_priv_hex"]
    assert p.x25519_public(pub).hex() == k["x25519_pub_hex"]


@pytest.mark.parametrize("name", ["device_cert", "device_cert_no_expiry"])
def test_device_certificates(name):
    c = V[name]
    assert p.cert_signed_bytes(c["cert"]).hex() == c["signed_bytes_hex"]
    cert = p.cert_parse(c["wire"])
    assert cert.wire() == c["wire"]
    master = next(n for n, k in V["keys"].items() if k["id_b58"] == c["cert"]["master"])
    issued = p.cert_issue(master_seed=SEED[master], device=c["cert"]["device"], name=c["cert"]["name"],
                          issued_at=c["cert"]["issued_at"], expires_at=c["cert"]["expires_at"],
                          permissions=c["cert"]["permissions"])
    assert issued == c["wire"]
    p.cert_check_server(cert, now=c["cert"]["issued_at"])
    p.cert_check_client(c["wire"], user_id=c["cert"]["master"], now=c["cert"]["issued_at"])


def test_auth_signature():
    a = V["auth"]
    signed = p.auth_signed_bytes(challenge=a["challenge_b64"], pubkey=a["pubkey"], server=a["server"])
    assert signed.hex() == a["signed_bytes_hex"]
    assert p.b64e(p.sign(SEED["alice_phone"], signed)) == a["signature_b64"]
    assert p.verify(p.b58_key(a["pubkey"]), signed, p.b64d(a["signature_b64"]))
    other_server = p.auth_signed_bytes(challenge=a["challenge_b64"], pubkey=a["pubkey"], server="https://evil.example")
    assert not p.verify(p.b58_key(a["pubkey"]), other_server, p.b64d(a["signature_b64"]))


def test_participants_sha256():
    v = V["participants"]
    assert p.participants_sha256(v["participants"]) == v["participants_sha256"]
    assert p.participants_sha256(list(reversed(v["participants"]))) == v["participants_sha256"]


def test_safety_number_either_way_round():
    v = V["safety_number"]
    assert p.safety_number(v["user_a"], v["user_b"]) == v["digits"]
    assert p.safety_number(v["user_b"], v["user_a"]) == v["digits"]
    with pytest.raises(p.ProtocolError):
        p.safety_number(v["user_a"], "not-a-key")


def test_key_wrap_both_directions():
    kw = V["key_wrap"]
    args = dict(conversation_id=kw["conversation_id"], epoch=kw["epoch"],
                recipient_device=kw["recipient_device"], sender_device=kw["sender_device"])
    assert p.key_wrap_info(**args).hex() == kw["info_hex"]
    ss = p.x25519_shared(p.x25519_private(SEED["alice_phone"]), p.x25519_public(p.b58_key(kw["recipient_device"])))
    assert ss.hex() == kw["shared_secret_hex"]
    assert p.x25519_shared(p.x25519_private(SEED["bob_laptop"]),
                           p.x25519_public(p.b58_key(kw["sender_device"]))) == ss
    assert p.hkdf32(ss, bytes.fromhex(kw["info_hex"])).hex() == kw["kek_hex"]
    wrap = p.key_wrap(sender_seed=SEED["alice_phone"], group_key=bytes.fromhex(kw["group_key_hex"]),
                      nonce=p.b64d(kw["wrap"]["nonce"]), **args)
    assert wrap == kw["wrap"]
    assert p.key_unwrap(recipient_seed=SEED["bob_laptop"], wrap=wrap, **args).hex() == kw["group_key_hex"]
    with pytest.raises(p.ProtocolError):
        p.key_unwrap(recipient_seed=SEED["bob_laptop"], wrap=wrap, **{**args, "epoch": 4})


def test_message():
    m = V["message"]
    key = bytes.fromhex(m["group_key_hex"])
    assert p.key_id(key) == m["key_id"]
    aad = p.dm_aad(conversation_id=m["conversation_id"], epoch=m["epoch"], message_id=m["message_id"],
                   sender_device=m["sender_device"])
    assert aad.hex() == m["aad_hex"]
    padded = p.pad(m["plaintext_utf8"].encode())
    assert len(padded) == m["padded_len"]
    ct = p.aead_encrypt(key, p.b64d(m["nonce_b64"]), padded, aad)
    assert p.b64e(ct) == m["ciphertext_b64"]
    signed = p.dm_signed_bytes(ciphertext_sha256=p.H(ct), conversation_id=m["conversation_id"], epoch=m["epoch"],
                               key_id=m["key_id"], message_id=m["message_id"], nonce=m["nonce_b64"],
                               participants_sha256=m["participants_sha256"], sender_device=m["sender_device"])
    assert signed.hex() == m["signed_bytes_hex"]
    assert p.b64e(p.sign(SEED["alice_phone"], signed)) == m["signature_b64"]
    assert p.unpad(p.aead_decrypt(key, p.b64d(m["nonce_b64"]), ct, aad)).decode() == m["plaintext_utf8"]
    assert m["participants_sha256"] == V["participants"]["participants_sha256"]


@pytest.mark.parametrize("case", V["padding"], ids=lambda c: str(c["in_len"]))
def test_padding(case):
    data = b"a" * case["in_len"]
    assert len(p.pad(data)) == case["out_len"]
    assert p.unpad(p.pad(data)) == data


@pytest.mark.parametrize("case", V["reject"]["base64"], ids=lambda c: c["why"])
def test_reject_base64(case):
    with pytest.raises(p.ProtocolError):
        p.b64d(case["in"])


@pytest.mark.parametrize("case", V["reject"]["base58_key"], ids=lambda c: c["why"])
def test_reject_base58_key(case):
    with pytest.raises(p.ProtocolError):
        p.b58_key(case["in"])


@pytest.mark.parametrize("case", V["reject"]["certificate"], ids=lambda c: c["why"])
def test_reject_certificate(case):
    with pytest.raises(p.ProtocolError):
        p.cert_parse(case["wire"])


@pytest.mark.parametrize("case", V["reject"]["padding"], ids=lambda c: c["why"])
def test_reject_padding(case):
    with pytest.raises(p.ProtocolError):
        p.unpad(bytes.fromhex(case["in_hex"]))


@pytest.mark.parametrize("case", V["reject"]["x25519_public"], ids=lambda c: c["in_hex"][:4])
def test_reject_small_order_x25519(case):
    with pytest.raises(p.ProtocolError):
        p.x25519_shared(p.x25519_private(SEED["alice_phone"]), bytes.fromhex(case["in_hex"]))


def test_non_canonical_b58_key_rejected():
    good = V["keys"]["alice_master"]["id_b58"]
    with pytest.raises(p.ProtocolError):
        p.b58_key("1" + good)  # a leading zero byte: 33 bytes
    # y >= p: not canonical even though it decodes to 32 bytes
    with pytest.raises(p.ProtocolError):
        p.b58_key(p.b58e(b"\xff" * 31 + b"\x7f"))


@pytest.mark.parametrize("url,expected", [
    ("https://DM.Example.org/", "https://dm.example.org"),
    ("https://dm.example.org:443", "https://dm.example.org"),
    ("http://127.0.0.1:8000/api/", "http://127.0.0.1:8000"),
    ("http://localhost:80", "http://localhost"),
])
def test_origin(url, expected):
    assert p.origin(url) == expected


@pytest.mark.parametrize("value", [1.5, "a\x00b", {"k": "\n"}])
def test_cjson_refuses_non_canonical_values(value):
    with pytest.raises(p.ProtocolError):
        p.cjson(value)


def test_client_cert_rules_tolerate_a_day_and_check_the_user():
    c = V["device_cert"]
    now = c["cert"]["expires_at"] + 3600  # expired an hour ago: within the client's 24 h
    p.cert_check_client(c["wire"], user_id=c["cert"]["master"], now=now)
    with pytest.raises(p.ProtocolError):
        p.cert_check_client(c["wire"], user_id=c["cert"]["master"], now=c["cert"]["expires_at"] + 25 * 3600)
    with pytest.raises(p.ProtocolError):
        p.cert_check_client(c["wire"], user_id=V["keys"]["bob_master"]["id_b58"], now=c["cert"]["issued_at"])
    with pytest.raises(p.ProtocolError):
        p.cert_check_server(p.cert_parse(c["wire"]), now=c["cert"]["expires_at"])


@pytest.mark.parametrize("name", [
    "a\x85b",             # C1 control (NEL)
    "a\x1bb",             # ESC
    "Alice\u202e enohp",  # right-to-left override
    "x\u2066y\u2069",     # bidirectional isolates
    "zero\u200bwidth",    # zero-width space
    "line\u2028break",    # line separator
    "   ",                # blank
    "",
    "x" * 65,
])
def test_device_names_that_would_mislead_are_refused(name):
    assert protocol.name_problem(name)
    with pytest.raises(protocol.ProtocolError):
        protocol.cert_issue(master_seed=b"\x01" * 32, device=protocol.b58e(protocol.public_key(b"\x02" * 32)),
                            name=name, issued_at=1, expires_at=None, permissions=[])


def test_device_names_in_any_script_are_accepted():
    for name in ["Alice's phone", "Ноутбук Боба", "手机", "café ☕", "x" * 64]:
        assert protocol.name_problem(name) is None


def _forged_cert(**changes):
    master, device = b"\x01" * 32, protocol.b58e(protocol.public_key(b"\x02" * 32))
    body = {"v": 1, "master": protocol.b58e(protocol.public_key(master)), "device": device, "name": "ok",
            "issued_at": 1, "expires_at": None, "permissions": [], **changes}
    return {**body, "signature": protocol.b64e(protocol.sign(master, protocol.cert_signed_bytes(body)))}


@pytest.mark.parametrize("changes", [
    {"issued_at": 10**20}, {"issued_at": -1}, {"expires_at": 10**20}, {"expires_at": 253402300800},
    {"name": "evil\u202e"},
])
def test_signed_certificates_with_out_of_range_times_or_hidden_names_are_refused(changes):
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.cert_parse(_forged_cert(**changes))
    assert exc.value.code == "invalid_certificate"
    protocol.cert_parse(_forged_cert(issued_at=253402300799))  # the largest time is fine


# --- §6b (v1.2) ------------------------------------------------------------------

def test_signed_prekey():
    v = V["signed_prekey"]
    assert p.spk_signed_bytes(v["spk"]).hex() == v["signed_bytes_hex"]
    pub = p.x25519_public_of(bytes.fromhex(v["x25519_priv_hex"]))
    assert p.spk_issue(device_seed=SEED["bob_laptop"], id=7, x25519_pub=pub,
                       created_at=v["spk"]["created_at"]) == v["wire"]
    spk = p.spk_parse(v["wire"], device=v["device"])
    assert (spk.id, p.b64e(spk.x25519), spk.created_at) == (7, v["spk"]["x25519"], v["spk"]["created_at"])


def test_one_time_prekey():
    v = V["one_time_prekey"]
    assert p.b64e(p.x25519_public_of(bytes.fromhex(v["x25519_priv_hex"]))) == v["public"]["x25519"]
    assert p.otk_parse(v["public"]) == (42, p.b64d(v["public"]["x25519"]))


@pytest.mark.parametrize("case", ["key_wrap_v2", "key_wrap_v2_no_one_time"])
def test_key_wrap_v2_both_directions(case):
    v, spk_v, otk_v = V[case], V["signed_prekey"], V["one_time_prekey"]
    spk = p.spk_parse(spk_v["wire"], device=v["recipient_device"])
    one_time = p.otk_parse(otk_v["public"]) if v["one_time_id"] else None
    common = {"sender_device": v["sender_device"], "recipient_device": v["recipient_device"],
              "conversation_id": v["conversation_id"], "epoch": v["epoch"]}
    e_priv = bytes.fromhex(v["ephemeral_priv_hex"])
    assert p.b64e(p.x25519_public_of(e_priv)) == v["ephemeral_pub_b64"]
    assert p.key_wrap_v2_info(ephemeral=v["ephemeral_pub_b64"], one_time_id=v["one_time_id"],
                              signed_prekey_id=v["signed_prekey_id"], **common).hex() == v["info_hex"]
    wrap = p.key_wrap_v2(sender_seed=SEED["alice_phone"], group_key=bytes.fromhex(v["group_key_hex"]),
                         signed_prekey=spk, one_time=one_time, ephemeral_priv=e_priv,
                         nonce=p.b64d(v["wrap"]["nonce"]), **common)
    assert wrap == v["wrap"]
    assert p.wrap_version(wrap) == 2
    key = p.key_unwrap_v2(signed_prekey_priv=bytes.fromhex(spk_v["x25519_priv_hex"]),
                          one_time_priv=bytes.fromhex(otk_v["x25519_priv_hex"]) if one_time else None,
                          wrap=wrap, **common)
    assert key.hex() == v["group_key_hex"]
    # The static key alone (what a stolen device seed gives) does not open it.
    with pytest.raises(p.ProtocolError):
        p.key_unwrap_v2(signed_prekey_priv=p.x25519_private(SEED["bob_laptop"]),
                        one_time_priv=bytes.fromhex(otk_v["x25519_priv_hex"]) if one_time else None,
                        wrap=wrap, **common)


def test_key_wrap_v2_intermediates():
    v = V["key_wrap_v2"]
    spk_priv = bytes.fromhex(V["signed_prekey"]["x25519_priv_hex"])
    e_pub = p.b64d(v["ephemeral_pub_b64"])
    assert p.x25519_shared(spk_priv, e_pub).hex() == v["dh_signed_prekey_hex"]
    alice = p.x25519_public(p.b58_key(v["sender_device"]))
    assert p.x25519_shared(spk_priv, alice).hex() == v["dh_static_hex"]
    assert p.x25519_shared(bytes.fromhex(V["one_time_prekey"]["x25519_priv_hex"]), e_pub).hex() == v["dh_one_time_hex"]
    assert p.hkdf32(bytes.fromhex(v["ikm_hex"]), bytes.fromhex(v["info_hex"])).hex() == v["kek_hex"]


@pytest.mark.parametrize("case", V["reject"]["signed_prekey"], ids=lambda c: c["why"])
def test_reject_signed_prekey(case):
    with pytest.raises(p.ProtocolError) as err:
        p.spk_parse(case["wire"], device=case["wire"]["device"])
    assert err.value.code == "invalid_prekey"


@pytest.mark.parametrize("wrap", [
    {"nonce": "AAAAAAAAAAAAAAAA", "wrapped_key": "x", "v": 1}, {"v": "2"}, {"v": True}, [], None,
    {"nonce": "AAAAAAAAAAAAAAAA"},
])
def test_wrap_version_refuses_other_shapes(wrap):
    with pytest.raises(p.ProtocolError):
        p.wrap_version(wrap)
