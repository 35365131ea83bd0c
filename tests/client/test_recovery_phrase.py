"""The recovery phrase (issue 12 "One recovery phrase for both clients"): the
master seed as 24 BIP39 English words; `identity phrase` shows it and
`init --restore` makes a new device of the same user from it, through CLI
processes against a real daphne."""
import json
import subprocess

import pytest

from dmclient.identity import PhraseError, recovery_phrase, seed_from_phrase
from tests.client.conftest import BASE_DIR

# BIP39's own test vectors (English, 256-bit entropy), so the words are those of every BIP39 library
BIP39 = [
    (bytes(32), " ".join(["abandon"] * 23 + ["art"])),
    (bytes([0x7f]) * 32, " ".join(["legal", "winner", "thank", "year", "wave", "sausage", "worth", "useful"] * 3)
     .rsplit(" ", 1)[0] + " title"),
    (bytes([0xff]) * 32, " ".join(["zoo"] * 23 + ["vote"])),
]


@pytest.mark.parametrize(("seed", "phrase"), BIP39)
def test_phrase_is_bip39_of_the_master_seed(seed, phrase):
    assert recovery_phrase(seed) == phrase
    assert seed_from_phrase(phrase) == seed
    assert seed_from_phrase("  " + phrase.upper().replace(" ", " \n ") + "\n") == seed  # any spacing or case


@pytest.mark.parametrize(("phrase", "problem"), [
    (" ".join(["abandon"] * 24), "checksum"),
    (" ".join(["abandon"] * 12), "24 words"),
    (" ".join(["abandon"] * 23 + ["arts"]), "word list"),
])
def test_wrong_phrases_are_refused(phrase, problem):
    with pytest.raises(PhraseError, match=problem):
        seed_from_phrase(phrase)


@pytest.mark.live
def test_restore_from_the_phrase_is_the_same_user_on_a_new_device(daphne_server, cli):
    alice = cli("alice").init(daphne_server.url, "phone")
    bob = cli("bob").init(daphne_server.url, "bob")
    phrase = alice.run("identity", "phrase")["phrase"]
    assert len(phrase.split()) == 24 and "keep them offline" in alice.last_stderr

    # from standard input
    restored = cli("alice-restored")
    proc = subprocess.run(restored.args("init", "--server", daphne_server.url, "--name", "restored", "--restore"),
                          input=phrase + "\n", cwd=BASE_DIR, env=restored.env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    me = json.loads(proc.stdout)
    assert me["user_id"] == alice.user_id and me["device_id"] != alice.device_id and me["has_master_key"]
    restored.user_id, restored.device_id = me["user_id"], me["device_id"]
    assert restored.run("identity", "phrase")["phrase"] == phrase
    assert sorted(d["name"] for d in alice.run("device", "list")["devices"]) == ["phone", "restored"]

    # the restored device is one of alice's: it reads what bob sends her
    cid = bob.run("dm", "new", alice.user_id)["conversation"]["conversation_id"]
    bob.run("dm", "send", cid, "to both of alice's devices")
    assert restored.bodies() == ["to both of alice's devices"]

    # from the environment; a wrong phrase writes no store
    again = cli("again")
    again.env["DMCLIENT_RECOVERY_PHRASE"] = phrase
    assert again.run("init", "--server", daphne_server.url, "--name", "third", "--restore")["user_id"] == alice.user_id
    wrong = cli("wrong")
    wrong.env["DMCLIENT_RECOVERY_PHRASE"] = " ".join(["abandon"] * 24)  # the checksum fails
    wrong.run("init", "--server", daphne_server.url, "--name", "x", "--restore", expect_error="invalid_phrase")
    assert not wrong.home.exists()

    # a store without the master key has no phrase to show
    laptop = alice.add_device(alice.home.parent / "alice-laptop", "laptop")
    laptop.run("identity", "phrase", expect_error="no_master_key")
