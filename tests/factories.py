"""Real keys, real certificates, real logins through the API."""
import os
import time
from dataclasses import dataclass, field

from rest_framework.test import APIClient

from dmclient import protocol

TEST_ORIGIN = "http://testserver"


@dataclass
class Keys:
    seed: bytes = field(default_factory=lambda: os.urandom(32))

    @property
    def pub(self) -> bytes:
        return protocol.public_key(self.seed)

    @property
    def id(self) -> str:
        return protocol.b58e(self.pub)

    def sign(self, message: bytes) -> bytes:
        return protocol.sign(self.seed, message)


def issue_cert(master: Keys, device: Keys, *, name: str = "device", issued_at: int | None = None,
               expires_at: int | None = None, permissions=("manage_devices",)) -> dict:
    return protocol.cert_issue(
        master_seed=master.seed, device=device.id, name=name,
        issued_at=int(time.time()) if issued_at is None else issued_at,
        expires_at=expires_at, permissions=list(permissions))


def challenge(client: APIClient, keys: Keys) -> str:
    response = client.post("/api/v1/auth/challenge", {"pubkey": keys.id}, format="json")
    assert response.status_code == 200, response.content
    return response.json()["challenge"]


def verify(client: APIClient, keys: Keys, *, certificate: dict | None = None, origin: str = TEST_ORIGIN,
           challenge_b64: str | None = None):
    challenge_b64 = challenge_b64 or challenge(client, keys)
    signed = protocol.auth_signed_bytes(challenge=challenge_b64, pubkey=keys.id, server=origin)
    body = {"pubkey": keys.id, "challenge": challenge_b64, "signature": protocol.b64e(keys.sign(signed))}
    if certificate is not None:
        body["certificate"] = certificate
    return client.post("/api/v1/auth/verify", body, format="json")


class HttpApi:
    """An httpx client for a live server with the calls of DRF's APIClient that
    these factories use, so the same helpers drive a real daphne process."""

    def __init__(self, base_url: str):
        import httpx

        self.origin = protocol.origin(base_url)
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def credentials(self, HTTP_AUTHORIZATION: str):  # noqa: N803 - APIClient's spelling
        self.http.headers["Authorization"] = HTTP_AUTHORIZATION

    def get(self, url, data=None, format=None):  # noqa: A002
        return self.http.get(url, params=data)

    def post(self, url, data=None, format=None):  # noqa: A002
        return self.http.post(url, json=data)

    def patch(self, url, data=None, format=None):  # noqa: A002
        return self.http.patch(url, json=data)

    def put(self, url, data=None, format=None):  # noqa: A002
        return self.http.put(url, json=data)

    def delete(self, url, data=None, format=None):  # noqa: A002
        return self.http.delete(url)


def new_client(base_url: str | None) -> APIClient | HttpApi:
    return APIClient() if base_url is None else HttpApi(base_url)


def login(keys: Keys, *, certificate: dict | None = None, base_url: str | None = None) -> APIClient:
    client = new_client(base_url)
    response = verify(client, keys, certificate=certificate, origin=getattr(client, "origin", TEST_ORIGIN))
    assert response.status_code == 200, response.content
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
    client.token = response.json()["token"]
    return client


@dataclass
class Device:
    keys: Keys
    cert: dict
    client: APIClient

    @property
    def id(self) -> str:
        return self.keys.id


@dataclass
class Person:
    master: Keys
    devices: list[Device]
    base_url: str | None = None  # None: in-process APIClient; else a live server

    @property
    def id(self) -> str:
        return self.master.id

    @property
    def device(self) -> Device:
        return self.devices[0]

    def master_client(self) -> APIClient:
        return login(self.master, base_url=self.base_url)

    def add_device(self, name: str = "device", **cert_kw) -> Device:
        keys = Keys()
        cert = issue_cert(self.master, keys, name=name, **cert_kw)
        device = Device(keys=keys, cert=cert, client=login(keys, certificate=cert, base_url=self.base_url))
        self.devices.append(device)
        return device


def make_person(n_devices: int = 1, *, base_url: str | None = None) -> Person:
    person = Person(master=Keys(), devices=[], base_url=base_url)
    for i in range(n_devices):
        person.add_device(name=f"device {i + 1}")
    return person


# --- the mailbox, with real crypto (§6) ------------------------------------------

def create_conversation(device: Device, participants: list[str], retention: dict | None = None,
                        expect: int | None = None) -> dict:
    body = {"participants": participants}
    if retention is not None:
        body["retention"] = retention
    response = device.client.post("/api/v1/dms/conversations", body, format="json")
    if expect is not None:
        assert response.status_code == expect, response.content
    else:
        assert response.status_code in (200, 201), response.content
    return response.json()


def directory(client: APIClient, user_ids: list[str]) -> list[str]:
    ids = []
    for user_id in user_ids:
        ids += [d["device_id"] for d in client.get(f"/api/v1/users/{user_id}/devices").json()["devices"]]
    return ids


def build_send(sender: Device, conversation: dict, *, text: str = "hello", group_key: bytes | None = None,
               recipients: list[str] | None = None, wrap_for: list[str] | None = None,
               message_id: str | None = None, seq: int = 1, ciphertext: bytes | None = None) -> dict:
    """A signed send request. `recipients` default: every active device of the
    participants but the sender; `wrap_for` default: all of them."""
    import json as _json
    import uuid as _uuid

    cid, epoch = conversation["conversation_id"], conversation["epoch"]
    group_key = group_key or os.urandom(32)
    if recipients is None:
        recipients = [d for d in directory(sender.client, conversation["participants"]) if d != sender.id]
    wrap_for = recipients if wrap_for is None else wrap_for
    message_id = message_id or str(_uuid.uuid4())
    nonce = os.urandom(12)
    if ciphertext is None:
        plaintext = _json.dumps({"type": "text", "body": text, "sent_at": int(time.time() * 1000), "seq": seq})
        aad = protocol.dm_aad(conversation_id=cid, epoch=epoch, message_id=message_id, sender_device=sender.id)
        ciphertext = protocol.aead_encrypt(group_key, nonce, protocol.pad(plaintext.encode()), aad)
    kid = protocol.key_id(group_key)
    signed = protocol.dm_signed_bytes(
        ciphertext_sha256=protocol.H(ciphertext), conversation_id=cid, epoch=epoch, key_id=kid,
        message_id=message_id, nonce=protocol.b64e(nonce),
        participants_sha256=conversation["participants_sha256"], sender_device=sender.id)
    return {
        "message_id": message_id, "conversation_id": cid, "epoch": epoch, "key_id": kid,
        "participants_sha256": conversation["participants_sha256"], "retention": conversation["retention"],
        "nonce": protocol.b64e(nonce), "ciphertext": protocol.b64e(ciphertext),
        "signature": protocol.b64e(sender.keys.sign(signed)),
        "recipients": [{"device_id": r, "key_wrap": protocol.key_wrap(
            sender_seed=sender.keys.seed, sender_device=sender.id, recipient_device=r,
            conversation_id=cid, epoch=epoch, group_key=group_key) if r in wrap_for else None}
            for r in recipients],
    }


def send(sender: Device, body: dict):
    return sender.client.post("/api/v1/dms/send", body, format="json")


def send_many(sender: Device, conversation: dict, n: int) -> list[str]:
    """`n` messages sent, each answered 201; their ids in order."""
    ids = []
    for _ in range(n):
        body = build_send(sender, conversation)
        assert send(sender, body).status_code == 201
        ids.append(body["message_id"])
    return ids


def sync(device: Device, **body) -> dict:
    response = device.client.post("/api/v1/dms/sync", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def ack(device: Device, message_ids=(), failed=()) -> dict:
    response = device.client.post("/api/v1/dms/ack", {"message_ids": list(message_ids), "failed": list(failed)},
                                  format="json")
    assert response.status_code == 200, response.content
    return response.json()


def open_message(device: Device, msg: dict, *, group_key: bytes | None = None) -> dict:
    """Receive as §6 says: check the signature, unwrap, check key_id, decrypt, unpad."""
    import json as _json

    signed = protocol.dm_signed_bytes(
        ciphertext_sha256=protocol.H(protocol.b64d(msg["ciphertext"])), conversation_id=msg["conversation_id"],
        epoch=msg["epoch"], key_id=msg["key_id"], message_id=msg["message_id"], nonce=msg["nonce"],
        participants_sha256=msg["participants_sha256"], sender_device=msg["sender_device"])
    assert protocol.verify(protocol.b58_key(msg["sender_device"]), signed, protocol.b64d(msg["signature"]))
    protocol.cert_check_client(msg["sender_certificate"], user_id=msg["sender"], device_id=msg["sender_device"],
                               now=int(time.time()))
    if group_key is None:
        group_key = protocol.key_unwrap(
            recipient_seed=device.keys.seed, recipient_device=device.id, sender_device=msg["sender_device"],
            conversation_id=msg["conversation_id"], epoch=msg["epoch"], wrap=msg["key_wrap"])
    assert protocol.key_id(group_key) == msg["key_id"]
    aad = protocol.dm_aad(conversation_id=msg["conversation_id"], epoch=msg["epoch"],
                          message_id=msg["message_id"], sender_device=msg["sender_device"])
    padded = protocol.aead_decrypt(group_key, protocol.b64d(msg["nonce"]), protocol.b64d(msg["ciphertext"]), aad)
    return _json.loads(protocol.unpad(padded))
