"""The local store: sealed secrets and bodies, a passphrase that is checked,
Argon2id limits, 0600/0700 permissions, and local expiry."""
import json
import sqlite3
import stat

import nacl.pwhash
import pytest

from dmclient import Client
from dmclient.client import REPLAY_WINDOW_DAYS
from dmclient.store import SCHEMA, SCHEMA_2, SCHEMA_VERSION, STORE_FILE, Store, StoreError
from tests.client.conftest import PASSPHRASE

SECRET_TEXT = "the store must never show this sentence in clear"


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_store_is_private(tmp_path):
    store = Store.create(tmp_path / "home", PASSPHRASE, kdf="min")
    store.close()
    assert mode(tmp_path / "home") == 0o700
    assert mode(tmp_path / "home" / STORE_FILE) == 0o600


def test_open_tightens_loosened_permissions(tmp_path):
    Store.create(tmp_path / "home", PASSPHRASE, kdf="min").close()
    (tmp_path / "home" / STORE_FILE).chmod(0o644)
    Store.open(tmp_path / "home", PASSPHRASE).close()
    assert mode(tmp_path / "home" / STORE_FILE) == 0o600


def test_wrong_passphrase_is_refused(tmp_path):
    Store.create(tmp_path / "home", PASSPHRASE, kdf="min").close()
    with pytest.raises(StoreError) as exc:
        Store.open(tmp_path / "home", PASSPHRASE + "!")
    assert exc.value.code == "wrong_passphrase"


def test_a_store_of_schema_1_gains_contacts_and_delivery_status(tmp_path):
    store = Store.create(tmp_path / "home", PASSPHRASE, kdf="min")
    store.db.executescript("DROP TABLE contacts; DROP TABLE delivery_status;")
    store.meta_set_many({"schema_version": 1})
    store.close()
    store = Store.open(tmp_path / "home", PASSPHRASE)
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"contacts", "delivery_status"} <= tables and store.meta("schema_version") == SCHEMA_VERSION
    store.close()


def test_a_store_of_schema_2_gains_prekey_tables_and_key_ages(tmp_path):
    """A store made by the v1.1 client (its tables as they were) opens as schema 3 (§6b)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    db = sqlite3.connect(home / "store.sqlite3")
    db.executescript(SCHEMA + SCHEMA_2)
    db.close()
    fresh = Store.create(tmp_path / "fresh", PASSPHRASE, kdf="min")
    meta = fresh.db.execute("SELECT key, value FROM meta").fetchall()
    fresh.close()
    db = sqlite3.connect(home / "store.sqlite3")
    db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [tuple(r) for r in meta])
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    store = Store.open(home, PASSPHRASE)
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"signed_prekeys", "one_time_prekeys"} <= tables
    assert "created_at" in {r[1] for r in store.db.execute("PRAGMA table_info(sender_keys)")}
    assert "wrap" in {r[1] for r in store.db.execute("PRAGMA table_info(wraps_sent)")}
    assert store.meta("schema_version") == SCHEMA_VERSION == 3
    store.close()


def test_existing_store_is_not_overwritten(tmp_path):
    Store.create(tmp_path / "home", PASSPHRASE, kdf="min").close()
    with pytest.raises(StoreError) as exc:
        Store.create(tmp_path / "home", PASSPHRASE, kdf="min")
    assert exc.value.code == "store_exists"


def test_default_kdf_is_argon2id_interactive(tmp_path, monkeypatch):
    monkeypatch.delenv("DMCLIENT_KDF", raising=False)
    store = Store.create(tmp_path / "a", PASSPHRASE)
    kdf = store.meta("kdf")
    assert (kdf["opslimit"], kdf["memlimit"]) == (nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
                                                  nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE)
    monkeypatch.setenv("DMCLIENT_KDF", "moderate")
    assert Store.create(tmp_path / "b", PASSPHRASE).meta("kdf")["opslimit"] == nacl.pwhash.argon2id.OPSLIMIT_MODERATE
    monkeypatch.setenv("DMCLIENT_KDF", "weak")
    with pytest.raises(StoreError):
        Store.create(tmp_path / "c", PASSPHRASE)


def test_secrets_and_bodies_are_sealed_at_rest(new_client):
    alice, bob = new_client("alice"), new_client("bob")
    conversation, _ = alice.create_conversation([bob.user_id])
    alice.send(conversation["conversation_id"], SECRET_TEXT)
    assert bob.sync().accepted == 1
    key = bob.store.unseal(bob.store.db.execute("SELECT sealed_key FROM received_keys").fetchone()[0])
    secrets = {
        "master seed": alice.master.seed, "device seed": alice.device.seed, "token": alice.token().encode(),
        "bob's device seed": bob.device.seed, "group key": key,
    }
    for client in (alice, bob):
        raw = client.store.path.read_bytes()
        assert SECRET_TEXT.encode() not in raw
        for name, value in secrets.items():
            assert value not in raw and value.hex().encode() not in raw, name
    # ...while the stores still open them
    assert [m["body"] for m in bob.history(conversation["conversation_id"])] == [SECRET_TEXT]
    assert [m["body"] for m in alice.history(conversation["conversation_id"])] == [SECRET_TEXT]


def test_local_copy_goes_at_expiry_and_the_id_after_the_replay_window(new_client):
    alice, bob = new_client("alice"), new_client("bob")
    conversation, _ = alice.create_conversation([bob.user_id], retention={"policy": "ttl", "ttl_days": 2})
    cid = conversation["conversation_id"]
    alice.send(cid, SECRET_TEXT)
    bob.sync()
    row = bob.store.db.execute("SELECT expires_at, created_at FROM messages").fetchone()
    assert row["expires_at"] - row["created_at"] == 2 * 86400
    bob.purge_expired(now=row["expires_at"] - 1)
    assert [m["body"] for m in bob.history(cid)] == [SECRET_TEXT]
    bob.purge_expired(now=row["expires_at"])
    assert bob.history(cid) == []
    assert bob.store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1  # still remembered
    # the id is remembered for the client's replay window (plus the day a sent_at may be ahead), from storing
    stored_at = bob.store.db.execute("SELECT stored_at FROM messages").fetchone()[0]
    bob.purge_expired(now=stored_at + (REPLAY_WINDOW_DAYS + 1) * 86400)
    assert bob.store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
    bob.purge_expired(now=stored_at + (REPLAY_WINDOW_DAYS + 1) * 86400 + 1)
    assert bob.store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_reopen_with_passphrase(new_client, inproc):
    alice = new_client("alice")
    home = alice.store.path.parent
    user_id, token = alice.user_id, alice.token()
    alice.close()
    again = Client.open(home, PASSPHRASE, transport=inproc.transport)
    assert again.user_id == user_id and again.token() == token  # the session is reused, not a new login
    assert json.loads(json.dumps(again.whoami()))["has_master_key"] is True
    again.close()
