"""Forward-secrecy bench (issue 15, §6b): what a new epoch costs with prekeys
and key wrap v2, and that a steady epoch costs what it did.

    python -m bench.prekeys                   # own server and database, as `make run` starts it
    DATABASE_URL=postgres://… REDIS_URL=redis://… python -m bench.prekeys

One web process on a fresh database, rate limits off there. K recipient
devices (each a user of its own) publish a signed prekey and 100 one-time
prekeys. Then, one at a time (wall times, the client's crypto included):

- claim: POST /dms/prekeys/claim for the K devices, with the server's CPU per claim;
- new epoch, v1: a fresh key wrapped v1 for the K devices, sent;
- new epoch, v2: claim, each signed prekey verified, the key wrapped v2, sent;
- steady epoch: messages under a key every recipient has a receipt for (no
  wraps), sent then synced and ACKed, once under a key first sent v1 and once v2.

Each pair (v1/v2) is alternated, so the machine's other load falls on both alike.
The client's own cost per recipient (v1 wrap; signed-prekey check + v2 wrap)
is timed in-process without the server."""
import argparse
import json
import os
import statistics
import sys
import time
import uuid

import httpx

from bench.mailbox import BenchDevice, new_devices, percentile
from bench.server import BenchDatabase, BenchServer, cpu_seconds, stop_after
from dmclient import protocol

BENCH_SETTINGS = ("from dms.selectors import server_settings_get; from dms.services import server_settings_update; "
                  "s = server_settings_get(); s.send_rate_per_device = 0; s.send_rate_per_user = 0; "
                  "s.challenge_rate_per_ip = 0; s.registration_rate_per_user = 0; s.prekey_claim_rate_per_device = 0; "
                  "s.group_creation_rate_per_user = 0; s.pending_quota = 1_000_000_000; "
                  "s.max_participants = max(s.max_participants, {k} + 1); server_settings_update(settings_row=s)")


class Api:
    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, timeout=60)
        self.origin = protocol.origin(url)

    def call(self, method: str, path: str, body=None, device: BenchDevice | None = None, expect=(200, 201)):
        headers = {"Authorization": f"Bearer {device.token}"} if device else {}
        response = self.http.request(method, path, json=body, headers=headers)
        if response.status_code not in expect:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def login(self, device: BenchDevice) -> None:
        challenge = self.call("POST", "/api/v1/auth/challenge", {"pubkey": device.id})["challenge"]
        device.token = self.call("POST", "/api/v1/auth/verify", device.verify_body(challenge, self.origin))["token"]


def publish(api: Api, device: BenchDevice, n: int) -> None:
    _, spk_pub = protocol.x25519_keypair()
    wire = protocol.spk_issue(device_seed=device.seed, id=1, x25519_pub=spk_pub, created_at=int(time.time()))
    keys = [{"id": i, "x25519": protocol.b64e(protocol.x25519_keypair()[1])} for i in range(1, n + 1)]
    for start in range(0, n, 100):
        body = {"one_time": keys[start:start + 100], **({"signed_prekey": wire} if start == 0 else {})}
        api.call("PUT", "/api/v1/devices/prekeys", body, device)


def message(sender: BenchDevice, conv: dict, group_key: bytes, wraps: dict) -> dict:
    cid, epoch = conv["conversation_id"], conv["epoch"]
    message_id = str(uuid.uuid4())
    nonce = os.urandom(12)
    plaintext = json.dumps({"type": "text", "body": "x" * 200, "sent_at": int(time.time() * 1000), "seq": 1})
    aad = protocol.dm_aad(conversation_id=cid, epoch=epoch, message_id=message_id, sender_device=sender.id)
    ciphertext = protocol.aead_encrypt(group_key, nonce, protocol.pad(plaintext.encode()), aad)
    kid = protocol.key_id(group_key)
    signed = protocol.dm_signed_bytes(
        ciphertext_sha256=protocol.H(ciphertext), conversation_id=cid, epoch=epoch, key_id=kid, message_id=message_id,
        nonce=protocol.b64e(nonce), participants_sha256=conv["participants_sha256"], sender_device=sender.id)
    return {"message_id": message_id, "conversation_id": cid, "epoch": epoch, "key_id": kid,
            "participants_sha256": conv["participants_sha256"], "retention": conv["retention"],
            "nonce": protocol.b64e(nonce), "ciphertext": protocol.b64e(ciphertext),
            "signature": protocol.b64e(protocol.sign(sender.seed, signed)),
            "recipients": [{"device_id": d, "key_wrap": w} for d, w in wraps.items()]}


def v1_wraps(sender, conv, recipients, group_key) -> dict:
    return {r.id: protocol.key_wrap(sender_seed=sender.seed, sender_device=sender.id, recipient_device=r.id,
                                    conversation_id=conv["conversation_id"], epoch=conv["epoch"], group_key=group_key)
            for r in recipients}


def v2_wraps(sender, conv, claimed: list[dict], group_key) -> dict:
    wraps = {}
    for entry in claimed:
        signed = protocol.spk_parse(entry["signed_prekey"], device=entry["device_id"])
        wraps[entry["device_id"]] = protocol.key_wrap_v2(
            sender_seed=sender.seed, sender_device=sender.id, recipient_device=entry["device_id"],
            conversation_id=conv["conversation_id"], epoch=conv["epoch"], group_key=group_key,
            signed_prekey=signed, one_time=protocol.otk_parse(entry["one_time"]) if entry["one_time"] else None)
    return wraps


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def summary(ms: list[float]) -> dict:
    return {"p50_ms": round(percentile(ms, 50), 3), "mean_ms": round(statistics.fmean(ms), 3), "n": len(ms)}


def client_costs(k: int, n: int) -> dict:
    """µs per recipient on the client: a v1 wrap; a signed-prekey check and a v2 wrap."""
    sender, recipients = new_devices(1)[0], [BenchDevice(os.urandom(32)) for _ in range(k)]
    conv = {"conversation_id": str(uuid.uuid4()), "epoch": 1}
    key = os.urandom(32)
    claimed = []
    for r in recipients:
        wire = protocol.spk_issue(device_seed=r.seed, id=1, x25519_pub=protocol.x25519_keypair()[1], created_at=0)
        claimed.append({"device_id": r.id, "signed_prekey": wire,
                        "one_time": {"id": 1, "x25519": protocol.b64e(protocol.x25519_keypair()[1])}})
    v1 = timed(lambda: v1_wraps(sender, conv, recipients, key), n)
    v2 = timed(lambda: v2_wraps(sender, conv, claimed, key), n)
    return {"v1_wrap_us": round(1000 * statistics.fmean(v1) / k, 1),
            "v2_check_and_wrap_us": round(1000 * statistics.fmean(v2) / k, 1)}


def run(args, server: BenchServer) -> dict:
    api = Api(server.url)
    sender, recipients = new_devices(args.recipients)
    for device in [sender, *recipients]:
        api.login(device)
    for device in recipients:
        publish(api, device, 100)
    conv = api.call("POST", "/api/v1/dms/conversations", {"participants": [r.user_id for r in recipients]}, sender)
    ids = [r.id for r in recipients]
    result = {}

    cpu_before = sum(cpu_seconds(pid) for pid in server.pids)
    claims = timed(lambda: api.call("POST", "/api/v1/dms/prekeys/claim", {"devices": ids}, sender), args.epochs)
    cpu = sum(cpu_seconds(pid) for pid in server.pids) - cpu_before
    result["claim"] = {**summary(claims), "server_cpu_ms": round(1000 * cpu / args.epochs, 3)}

    def epoch_v1():
        key = os.urandom(32)
        wraps = v1_wraps(sender, conv, recipients, key)
        api.call("POST", "/api/v1/dms/send", message(sender, conv, key, wraps), sender)

    def epoch_v2():
        key = os.urandom(32)
        claimed = api.call("POST", "/api/v1/dms/prekeys/claim", {"devices": ids}, sender)["prekeys"]
        api.call("POST", "/api/v1/dms/send", message(sender, conv, key, v2_wraps(sender, conv, claimed, key)), sender)

    epochs = {"v1": [], "v2": []}
    for _ in range(args.epochs):  # alternated, as the steady rounds below
        epochs["v1"] += timed(epoch_v1, 1)
        epochs["v2"] += timed(epoch_v2, 1)
    result["new_epoch_v1"], result["new_epoch_v2"] = summary(epochs["v1"]), summary(epochs["v2"])
    drain(api, recipients)

    keys = {}
    for version in ("v1", "v2"):
        keys[version] = key = os.urandom(32)
        if version == "v1":
            wraps = v1_wraps(sender, conv, recipients, key)
        else:
            claimed = api.call("POST", "/api/v1/dms/prekeys/claim", {"devices": ids}, sender)["prekeys"]
            wraps = v2_wraps(sender, conv, claimed, key)
        api.call("POST", "/api/v1/dms/send", message(sender, conv, key, wraps), sender)
    drain(api, recipients)  # receipts for both keys: the steady messages carry no wraps
    # alternated rounds, so that the machine's other load falls on both alike
    steady = {version: {"send": [], "drained": 0, "drain_ms": 0.0} for version in keys}
    rounds = 4
    for _ in range(rounds):
        for version, key in keys.items():
            bodies = iter([message(sender, conv, key, dict.fromkeys(ids)) for _ in range(args.steady // rounds)])
            steady[version]["send"] += timed(lambda: api.call("POST", "/api/v1/dms/send", next(bodies), sender),
                                             args.steady // rounds)
            started = time.perf_counter()
            steady[version]["drained"] += drain(api, recipients)
            steady[version]["drain_ms"] += (time.perf_counter() - started) * 1000
    for version, figures in steady.items():
        assert figures["drained"] == len(figures["send"]) * len(recipients), figures["drained"]
        result[f"steady_under_{version}_key"] = {
            "send": summary(figures["send"]), "drain_per_s": round(figures["drained"] / (figures["drain_ms"] / 1000))}
    return result


def drain(api: Api, recipients: list[BenchDevice]) -> int:
    total = 0
    for device in recipients:
        while True:
            page = api.call("POST", "/api/v1/dms/sync", {"limit": 500}, device)
            if not page["messages"]:
                break
            total += len(page["messages"])
            api.call("POST", "/api/v1/dms/ack", {"message_ids": [m["message_id"] for m in page["messages"]]}, device)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", "-K", type=int, default=4, help="recipient devices (default 4)")
    parser.add_argument("--epochs", type=int, default=40, help="claims and new epochs timed (default 40; "
                        "each v2 epoch uses one of each device's 100 one-time prekeys)")
    parser.add_argument("--steady", type=int, default=200, help="steady-epoch sends per key (default 200)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--timeout", type=int, default=600)
    args = parser.parse_args()
    if args.epochs > 45 or min(args.recipients, args.epochs, args.steady) < 1:
        parser.error("--epochs 1..45 (two claims an epoch out of 100 one-time prekeys), the others positive")
    stop_after(args.timeout)
    database = BenchDatabase()
    try:
        database.manage("shell", "-c", BENCH_SETTINGS.format(k=args.recipients))
        server = BenchServer(database, processes=1)
        try:
            result = {"engine": database.engine, "recipients": args.recipients,
                      "client": client_costs(args.recipients, 200), **run(args, server)}
        finally:
            server.stop()
    finally:
        database.close()
    k = args.recipients
    print(f"decentcom prekeys bench: 1 web process, {result['engine']}, K={k} recipient devices")
    print(f"  client, per recipient: v1 wrap {result['client']['v1_wrap_us']} µs; signed-prekey check + v2 wrap "
          f"{result['client']['v2_check_and_wrap_us']} µs")
    claim = result["claim"]
    print(f"  claim of {k} devices: p50 {claim['p50_ms']} ms, server CPU {claim['server_cpu_ms']} ms a claim")
    for name in ("new_epoch_v1", "new_epoch_v2"):
        print(f"  {name.replace('_', ' ')} (wraps + send{', + claim' if name.endswith('v2') else ''}): "
              f"p50 {result[name]['p50_ms']} ms, mean {result[name]['mean_ms']} ms")
    for version in ("v1", "v2"):
        steady = result[f"steady_under_{version}_key"]
        print(f"  steady epoch under a {version}-wrapped key: send p50 {steady['send']['p50_ms']} ms, "
              f"drain {steady['drain_per_s']:,} deliveries/s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
