"""Contacts, ids by prefix, and safety numbers (issue 14 point 4, issue 12
"Contacts and verification", PROTOCOL.md §6): the CLI in this process
(`cli.main` with the real in-process server as its transport)."""
import json

import pytest

from dmclient import protocol
from devices.models import Device, User
from dmclient import cli
from dmclient.identity import KeyPair
from tests.client.conftest import PASSPHRASE


@pytest.fixture(autouse=True)
def passphrase(monkeypatch):
    monkeypatch.setenv("DMCLIENT_PASSPHRASE", PASSPHRASE)


def run(capsys, client, *argv: str, transport, as_json: bool = True) -> tuple[int, object, str]:
    code = cli.main(["--home", str(client.store.path.parent), *(["--json"] if as_json else []), *argv],
                    transport=transport)
    captured = capsys.readouterr()
    out = captured.out
    if as_json and out.strip():
        out = json.loads(out.strip().splitlines()[-1])
    return code, out, captured.err


def two_ids_with_a_common_start() -> tuple[str, str, str]:
    seen = {}
    while True:
        user_id = KeyPair.generate().id
        if user_id[:2] in seen:
            return seen[user_id[:2]], user_id, user_id[:2]
        seen[user_id[:2]] = user_id


def test_contact_names_and_id_prefixes_are_accepted_wherever_an_id_is(new_client, inproc, capsys):
    alice, bob, carol = new_client("alice"), new_client("bob"), new_client("carol")
    t = inproc.transport
    assert run(capsys, alice, "contact", "add", "bob", bob.user_id, transport=t)[:2] == (0, {"contact": {
        "name": "bob", "user_id": bob.user_id, "verified": False, "verified_at": None,
        "changed_since_verified": False, "verified_user_id": None}})

    # --to NAME finds or creates the direct conversation; the contact's name is then a conversation reference
    code, first, _ = run(capsys, alice, "dm", "send", "--to", "bob", "hi bob", transport=t)
    assert code == 0
    code, again, _ = run(capsys, alice, "dm", "send", "bob", "same conversation", transport=t)
    assert code == 0 and again["conversation_id"] == first["conversation_id"]
    code, new, _ = run(capsys, alice, "dm", "new", "bob", transport=t)
    assert (code, new["created"], new["conversation"]["conversation_id"]) == (0, False, first["conversation_id"])
    bob.sync()
    assert [i["body"] for i in bob.take_unshown() if i["type"] == "message"] == ["hi bob", "same conversation"]

    # shown by the contact's name, never listing yourself
    code, text, _ = run(capsys, alice, "dm", "list", transport=t, as_json=False)
    assert code == 0 and text.rstrip().endswith(" bob") and alice.user_id[:8] not in text
    code, text, _ = run(capsys, alice, "dm", "history", "bob", transport=t, as_json=False)
    assert code == 0 and [line.split(" #")[0].split()[-1] for line in text.splitlines()] == [
        f"me/{alice.device_id[:8]}"] * 2

    # a prefix of a known user id: carol is known to alice once they share a group
    group = alice.create_conversation([bob.user_id, carol.user_id])[0]
    code, text, _ = run(capsys, alice, "dm", "list", transport=t, as_json=False)
    group_line = next(line for line in text.splitlines() if line.startswith(group["conversation_id"]))
    # contacts by name, the others by short id
    assert sorted(group_line.split("   ")[-1].strip().split(", ")) == sorted(["bob", carol.user_id[:8]])
    code, removed, _ = run(capsys, alice, "dm", "remove", group["conversation_id"][:8], carol.user_id[:8],
                           transport=t)
    assert code == 0 and removed["conversation"]["participants"] == sorted([alice.user_id, bob.user_id])
    assert run(capsys, alice, "contact", "add", "carol", carol.user_id[:6], transport=t)[1]["contact"][
        "user_id"] == carol.user_id

    # an ambiguous prefix is an error that lists the candidates; an unknown one says what it is not
    one, other, common = two_ids_with_a_common_start()
    run(capsys, alice, "contact", "add", "x", one, transport=t)
    run(capsys, alice, "contact", "add", "y", other, transport=t)
    code, error, _ = run(capsys, alice, "dm", "new", common, transport=t)
    assert (code, error["error"], error["candidates"]) == (1, "ambiguous_id", sorted([one, other]))
    code, error, _ = run(capsys, alice, "dm", "new", "zzzzzzzzz", transport=t)
    assert (code, error["error"]) == (1, "invalid_user_id")
    code, error, _ = run(capsys, alice, "dm", "send", "nobody", "text", transport=t)
    assert (code, error["error"]) == (1, "unknown_conversation")

    # a device by the prefix of one of ours
    laptop = new_client.add_device(alice, "laptop")
    code, revoked, _ = run(capsys, alice, "device", "revoke", laptop.device_id[:8], transport=t)
    assert (code, revoked) == (0, {"revoked": laptop.device_id})

    # names: one per user, not an id, not `me`; remove
    code, error, _ = run(capsys, alice, "contact", "add", "bobby", bob.user_id, transport=t)
    assert (code, error["error"]) == (1, "contact_exists")
    for name in (carol.user_id, "me", "bad\x1bname"):
        assert run(capsys, alice, "contact", "add", name, bob.user_id, transport=t)[1]["error"] == "invalid_name"
    assert run(capsys, alice, "contact", "remove", "x", transport=t)[0] == 0
    assert [c["name"] for c in run(capsys, alice, "contact", "list", transport=t)[1]["contacts"]] == [
        "bob", "carol", "y"]
    assert run(capsys, alice, "contact", "remove", "x", transport=t)[1]["error"] == "unknown_contact"


def test_safety_numbers_match_on_both_sides_and_verification_warns_loudly(new_client, inproc, capsys):
    alice, bob, carol = new_client("alice"), new_client("bob"), new_client("carol")
    t = inproc.transport
    run(capsys, alice, "contact", "add", "bob", bob.user_id, transport=t)
    run(capsys, bob, "contact", "add", "alice", alice.user_id, transport=t)

    # without --yes and without a terminal: shown, not marked
    code, shown, _ = run(capsys, bob, "contact", "verify", "alice", transport=t)
    assert (code, shown["verified"]) == (0, False)
    code, text, _ = run(capsys, alice, "contact", "verify", "bob", "--yes", transport=t, as_json=False)
    number = protocol.safety_number(alice.user_id, bob.user_id)
    assert code == 0 and shown["safety_number"] == number
    groups = number.split()
    assert f"  {' '.join(groups[:4])}\n  {' '.join(groups[4:8])}\n  {' '.join(groups[8:])}\n" in text
    assert "bob is marked verified" in text
    [contact] = run(capsys, alice, "contact", "list", transport=t)[1]["contacts"]
    assert (contact["verified"], contact["changed_since_verified"]) == (True, False)
    assert run(capsys, alice, "contact", "list", transport=t, as_json=False)[1].startswith("✓ verified")

    # the server shows a device under bob that bob's master never certified: loud, and not used
    mallory = new_client("mallory")
    Device.objects.filter(device_id=mallory.device_id).update(user=User.objects.get(username=bob.user_id))
    code, error, err = run(capsys, alice, "dm", "send", "--to", "bob", "hello", transport=t)
    assert (code, error["error"]) == (1, "untrusted_device")
    assert f"!!! WARNING: VERIFIED CONTACT bob shows device {mallory.device_id[:8]} whose certificate does not " \
           "verify" in err
    Device.objects.filter(device_id=mallory.device_id).update(user=User.objects.get(username=mallory.user_id))

    # the name now points at another user id: no longer verified, and said loudly wherever bob shows
    code, replaced, _ = run(capsys, alice, "contact", "add", "bob", carol.user_id, transport=t)
    assert (code, replaced["error"]) == (1, "contact_exists")
    code, replaced, _ = run(capsys, alice, "contact", "add", "bob", carol.user_id, "--replace", transport=t)
    assert (code, replaced["contact"]["verified"], replaced["contact"]["changed_since_verified"]) == (0, False, True)
    code, text, err = run(capsys, alice, "contact", "list", transport=t, as_json=False)
    assert text.startswith("! CHANGED SINCE VERIFIED")
    assert "!!! WARNING: contact bob is not the user you verified" in err
    code, sent, err = run(capsys, alice, "dm", "send", "--to", "bob", "to carol, named bob", transport=t)
    assert code == 0 and "!!! WARNING: contact bob is not the user you verified" in err
    code, _, err = run(capsys, alice, "dm", "list", transport=t)
    assert "!!! WARNING: contact bob is not the user you verified" in err
    code, _, _ = run(capsys, alice, "contact", "verify", "bob", "--yes", transport=t)
    assert run(capsys, alice, "contact", "list", transport=t)[1]["contacts"][0]["verified"] is True
