"""Real keys, real certificates, real logins through the API."""
import os
import time
from dataclasses import dataclass, field

from rest_framework.test import APIClient

from decentcom import protocol

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


def login(keys: Keys, *, certificate: dict | None = None) -> APIClient:
    client = APIClient()
    response = verify(client, keys, certificate=certificate)
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

    @property
    def id(self) -> str:
        return self.master.id

    @property
    def device(self) -> Device:
        return self.devices[0]

    def master_client(self) -> APIClient:
        return login(self.master)

    def add_device(self, name: str = "device", **cert_kw) -> Device:
        keys = Keys()
        cert = issue_cert(self.master, keys, name=name, **cert_kw)
        device = Device(keys=keys, cert=cert, client=login(keys, certificate=cert))
        self.devices.append(device)
        return device


def make_person(n_devices: int = 1) -> Person:
    person = Person(master=Keys(), devices=[])
    for i in range(n_devices):
        person.add_device(name=f"device {i + 1}")
    return person
