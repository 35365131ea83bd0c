"""Bounded load test: many devices send, sync and ACK at once for a fixed
time, then every message must have reached every recipient device exactly
once and nothing may be left behind.

    python -m bench.load                      # starts its own server as `make run` does
    python -m bench.load --url http://…       # a running deployment (rate limits must allow the load)

Loopback only; it stops by itself after --seconds plus the final drain."""
import argparse
import asyncio
import collections
import json
import os
import sys
import time
import uuid

import httpx

from dmclient import protocol

SETTINGS_FOR_LOAD = ("from dms.selectors import server_settings_get; from dms.services import server_settings_update; "
                     "s = server_settings_get(); s.send_rate_per_device = 0; s.send_rate_per_user = 0; "
                     "s.challenge_rate_per_ip = 0; s.registration_rate_per_user = 0; "
                     "s.group_creation_rate_per_user = 0; server_settings_update(settings_row=s)")


class Device:
    def __init__(self, http: httpx.AsyncClient, user_id: str, seed: bytes, cert: dict):
        self.http, self.user_id, self.seed, self.cert = http, user_id, seed, cert
        self.id = cert["device"]
        self.token = None

    async def login(self, origin: str):
        challenge = (await self.http.post("/api/v1/auth/challenge", json={"pubkey": self.id})).json()["challenge"]
        signed = protocol.auth_signed_bytes(challenge=challenge, pubkey=self.id, server=origin)
        response = await self.http.post("/api/v1/auth/verify", json={
            "pubkey": self.id, "challenge": challenge, "signature": protocol.b64e(protocol.sign(self.seed, signed)),
            "certificate": self.cert})
        response.raise_for_status()
        self.token = response.json()["token"]

    @property
    def headers(self):
        return {"Authorization": f"Bearer {self.token}"}


def new_user_devices(http, n: int) -> list[Device]:
    master = os.urandom(32)
    user_id = protocol.b58e(protocol.public_key(master))
    devices = []
    for i in range(n):
        seed = os.urandom(32)
        cert = protocol.cert_issue(master_seed=master, device=protocol.b58e(protocol.public_key(seed)),
                                   name=f"load {i}", issued_at=int(time.time()), expires_at=None, permissions=[])
        devices.append(Device(http, user_id, seed, cert))
    return devices


def build_send(sender: Device, conv: dict, recipients: list[str], group_key: bytes) -> dict:
    message_id = str(uuid.uuid4())
    cid, epoch = conv["conversation_id"], conv["epoch"]
    nonce = os.urandom(12)
    plaintext = json.dumps({"type": "text", "body": "load", "sent_at": int(time.time() * 1000), "seq": 1}).encode()
    aad = protocol.dm_aad(conversation_id=cid, epoch=epoch, message_id=message_id, sender_device=sender.id)
    ciphertext = protocol.aead_encrypt(group_key, nonce, protocol.pad(plaintext), aad)
    kid = protocol.key_id(group_key)
    signed = protocol.dm_signed_bytes(
        ciphertext_sha256=protocol.H(ciphertext), conversation_id=cid, epoch=epoch, key_id=kid,
        message_id=message_id, nonce=protocol.b64e(nonce), participants_sha256=conv["participants_sha256"],
        sender_device=sender.id)
    return {"message_id": message_id, "conversation_id": cid, "epoch": epoch, "key_id": kid,
            "participants_sha256": conv["participants_sha256"], "retention": conv["retention"],
            "nonce": protocol.b64e(nonce), "ciphertext": protocol.b64e(ciphertext),
            "signature": protocol.b64e(protocol.sign(sender.seed, signed)),
            "recipients": [{"device_id": r, "key_wrap": protocol.key_wrap(
                sender_seed=sender.seed, sender_device=sender.id, recipient_device=r, conversation_id=cid,
                epoch=epoch, group_key=group_key)} for r in recipients]}


class Load:
    def __init__(self, args, http: httpx.AsyncClient, origin: str):
        self.args, self.http, self.origin = args, http, origin
        self.expected = collections.defaultdict(set)   # device -> message ids accepted for it
        self.received = collections.defaultdict(set)   # device -> message ids served to it
        self.acked = collections.defaultdict(set)      # device -> message ids it ACKed successfully
        self.served_after_ack = collections.Counter()  # device -> re-served although ACKed: a bug
        self.errors = collections.Counter()
        self.sends = self.syncs = self.acks = 0

    async def setup(self):
        self.users = [new_user_devices(self.http, self.args.devices_per_user) for _ in range(self.args.users)]
        self.devices = [d for user in self.users for d in user]
        await asyncio.gather(*(d.login(self.origin) for d in self.devices))
        self.conversations = []  # (conv, {user_id: [device ids]})
        by_user = {user[0].user_id: [d.id for d in user] for user in self.users}
        for i, user in enumerate(self.users):  # a ring of direct conversations and one group
            peer = self.users[(i + 1) % len(self.users)]
            self.conversations.append(await self.create(user[0], [peer[0].user_id], {"policy": "burn_on_read"}))
        members = [u[0].user_id for u in self.users[:min(5, len(self.users))]]
        self.conversations.append(await self.create(self.users[0][0], members, {"policy": "ttl", "ttl_days": 1}))
        self.members = by_user
        self.keys = {}

    async def create(self, device, participants, retention):
        response = await self.http.post("/api/v1/dms/conversations", headers=device.headers,
                                        json={"participants": participants, "retention": retention})
        response.raise_for_status()
        return response.json()

    async def send_one(self, device: Device, rng):
        mine = [c for c in self.conversations if device.user_id in c["participants"]]
        conv = mine[rng.randrange(len(mine))]
        recipients = [d for u in conv["participants"] for d in self.members[u] if d != device.id]
        key = self.keys.setdefault((conv["conversation_id"], device.id), os.urandom(32))
        body = build_send(device, conv, recipients, key)
        response = await self.http.post("/api/v1/dms/send", headers=device.headers, json=body)
        self.sends += 1
        if response.status_code == 201:
            for r in recipients:
                self.expected[r].add(body["message_id"])
        else:
            self.errors[f"send {response.status_code} {response.json().get('error')}"] += 1

    async def drain(self, device: Device) -> int:
        got = 0
        while True:
            response = await self.http.post("/api/v1/dms/sync", headers=device.headers, json={"limit": 200})
            self.syncs += 1
            if response.status_code != 200:
                self.errors[f"sync {response.status_code}"] += 1
                return got
            page = response.json()
            ids = [m["message_id"] for m in page["messages"]]
            self.served_after_ack[device.id] += len(self.acked[device.id].intersection(ids))
            self.received[device.id].update(ids)
            got += len(ids)
            if ids:
                response = await self.http.post("/api/v1/dms/ack", headers=device.headers, json={"message_ids": ids})
                self.acks += 1
                if response.status_code == 200:
                    self.acked[device.id].update(ids)
                else:  # those messages are served again: a redelivery, not a duplicate
                    self.errors[f"ack {response.status_code}"] += 1
            if not page["has_more"]:
                return got

    async def device_loop(self, device: Device, until: float, seed: int):
        import random

        rng = random.Random(seed)
        while time.monotonic() < until:
            await self.send_one(device, rng)
            if rng.random() < 0.5:
                await self.drain(device)

    async def run(self):
        await self.setup()
        started = time.monotonic()
        until = started + self.args.seconds
        await asyncio.gather(*(self.device_loop(d, until, i) for i, d in enumerate(self.devices)))
        elapsed = time.monotonic() - started
        while sum(await asyncio.gather(*(self.drain(d) for d in self.devices))):
            pass
        return elapsed

    async def leftovers(self) -> int:
        total = 0
        for user in self.users:
            response = await self.http.get("/api/v1/devices", headers=user[0].headers)
            response.raise_for_status()
            total += sum(d["pending_count"] for d in response.json()["devices"])
        return total


def check(load: Load) -> list[str]:
    problems = []
    for device in load.devices:
        got, want = load.received[device.id], load.expected[device.id]
        if load.served_after_ack[device.id]:
            problems.append(f"{device.id[:8]}: {load.served_after_ack[device.id]} served again after their ACK")
        if got != want:
            problems.append(f"{device.id[:8]}: {len(want - got)} missing, {len(got - want)} unexpected")
    return problems


async def main_async(args, url: str) -> int:
    limits = httpx.Limits(max_connections=args.connections)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        load = Load(args, http, protocol.origin(url))
        elapsed = await load.run()
        problems = check(load)
        left = await load.leftovers()
    delivered = sum(len(v) for v in load.received.values())
    print(f"devices {len(load.devices)}  seconds {elapsed:.1f}  sends {load.sends} ({load.sends / elapsed:.0f}/s)  "
          f"deliveries {delivered} ({delivered / elapsed:.0f}/s)  syncs {load.syncs}  acks {load.acks}")
    print(f"errors: {dict(load.errors) or 'none'}")
    print(f"pending after the last ACK: {left}")
    print("exactly once to every recipient: " + ("yes" if not problems else "NO\n  " + "\n  ".join(problems)))
    return 0 if not problems and not load.errors and left == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one on embedded defaults)")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--devices-per-user", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--connections", type=int, default=16, help="HTTP connections in flight at most")
    args = parser.parse_args()
    if args.url:
        return asyncio.run(main_async(args, args.url))
    sys.path.insert(0, os.getcwd())
    from tests.live import LiveDatabase, LiveServer

    database = LiveDatabase()
    try:
        database.manage("shell", "-v", "0", "-c", SETTINGS_FOR_LOAD)
        server = LiveServer(database)
        try:
            print(f"server: daphne on {server.url}, database {database.url.split(':')[0]}, "
                  f"channel layer {'redis' if os.environ.get('REDIS_URL') else 'embedded'} (rate limits off)")
            return asyncio.run(main_async(args, server.url))
        finally:
            server.stop()
    finally:
        database.close()


if __name__ == "__main__":
    sys.exit(main())
