"""Mailbox benchmark (issues 6, 13 and 15): send, drain, notify, many senders, a
10,000-deep mailbox and the purge, with real crypto done on the client side
before anything is timed.

    python -m bench.mailbox                   # own server and database, as `make run` starts it
    DATABASE_URL=postgres://… REDIS_URL=redis://… python -m bench.mailbox
                                              # the same on a fresh PostgreSQL database and Redis
    python -m bench.mailbox --url http://127.0.0.1:8000
                                              # a running server on this machine (loopback only)

Phases, for each number of web processes (--web-processes, default 1 and 2):
M sends by one device to a conversation of K recipient devices (C in flight);
the K devices drain with sync + ACK at once until nothing is pending; DM_NOTIFY
latency at a connected recipient, one send at a time; many senders (D devices
in D/2 direct conversations, 16 in flight). With the first: the same sends and
drains to recipients with empty mailboxes and to recipients with 10,000 pending
deliveries each (filled by SQL), alternated; and what a new epoch costs (§6b,
protocol 1.2) in conversations of --epoch-devices recipient devices, each with
a signed prekey and 100 one-time prekeys published: the sender's prekey claim
for all of them, its v2 wraps against v1 wraps of the same keys, the server's
work on a first send carrying v2 against v1 wraps (alternated), and the
recipients' unwrapping (skipped against a server older than 1.2). Then
in-process on the bench's database: query counts (Django's test client and CaptureQueriesContext) and the
purge service on N expired messages against the same delete as raw SQL.

The bench client and the server share this machine: each timed phase reports
the CPU of the web processes (and of their PostgreSQL backends), the client's
own and the whole machine's (/proc/stat), so the table shows when the machine,
not the server, is the limit. Rate limits are switched off in
the bench's own database; `--url` uses the server's settings as they are."""
import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench.server import BenchDatabase, BenchServer, cpu_seconds, peak_rss_bytes, pid_listening_on, stop_after
from dmclient import protocol

# The peer: Synapse 1.163 on SQLite, to-device messages, rate limits off, doing this bench's default job
# (one sender, a 1 KiB message to 4 recipient devices, 500 times, 4 in flight, then the 4 devices draining
# with sync + ACK; notify = its long-poll sync waking up). Measured side by side with this bench in one
# run on this 2-core machine, twice: (first run, second run). Ratios use the better run, the second.
PEER_RUNS = {"sends_per_s": (338, 390), "cpu_ms_per_send": (2.5, 2.2), "drain_per_s": (16_800, 18_900),
             "notify_p50_ms": (6.7, 5.8)}
PEER = {name: runs[1] for name, runs in PEER_RUNS.items()}


def targets(engine: str) -> dict:
    """Issue 13's targets: PostgreSQL (with Redis) has its own for CPU and sends/s."""
    pg = engine == "postgresql"
    return {"cpu_ms_per_send": 1.3 if pg else 0.9, "sends_per_s": (2 if pg else 3) * PEER["sends_per_s"],
            "drain_per_s": 2 * PEER["drain_per_s"], "notify_p50_ms": 5, "rss_mib": 150, "flat_ratio": 0.90}


BENCH_SETTINGS = ("from dms.selectors import server_settings_get; from dms.services import server_settings_update; "
                  "s = server_settings_get(); s.send_rate_per_device = 0; s.send_rate_per_user = 0; "
                  "s.challenge_rate_per_ip = 0; s.registration_rate_per_user = 0; "
                  "s.group_creation_rate_per_user = 0; s.pending_quota = 1_000_000_000; "
                  "s.max_participants = max(s.max_participants, {k} + 1); "
                  "s.max_recipients_per_message = max(s.max_recipients_per_message, {k}); "
                  "s.max_ciphertext_bytes = max(s.max_ciphertext_bytes, {size}); "
                  "s.max_request_bytes = max(s.max_request_bytes, {request}); "
                  "s.prekey_claim_rate_per_device = 0; "  # §6b, protocol 1.2 (an attribute only, before it)
                  "server_settings_update(settings_row=s)")
SYNC_LIMIT = 500  # the protocol's largest page
NOTIFY_WAIT_S = 2  # a DM_NOTIFY later than this counts as lost (e.g. a layer that does not cross processes)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# --- clients -------------------------------------------------------------------------

@dataclass
class BenchDevice:
    master_seed: bytes
    seed: bytes = field(default_factory=lambda: os.urandom(32))
    token: str = ""

    @property
    def id(self) -> str:
        return protocol.b58e(protocol.public_key(self.seed))

    @property
    def user_id(self) -> str:
        return protocol.b58e(protocol.public_key(self.master_seed))

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}

    def verify_body(self, challenge: str, origin: str) -> dict:
        cert = protocol.cert_issue(master_seed=self.master_seed, device=self.id, name="bench",
                                   issued_at=int(time.time()), expires_at=None, permissions=[])
        signed = protocol.auth_signed_bytes(challenge=challenge, pubkey=self.id, server=origin)
        return {"pubkey": self.id, "challenge": challenge, "certificate": cert,
                "signature": protocol.b64e(protocol.sign(self.seed, signed))}


def new_devices(k: int) -> tuple[BenchDevice, list[BenchDevice]]:
    """The sender, and K recipient devices, each of a user of its own."""
    return BenchDevice(os.urandom(32)), [BenchDevice(os.urandom(32)) for _ in range(k)]


def build_sends(sender: BenchDevice, conv: dict, recipients: list[str], count: int, size: int,
                group_key: bytes | None = None) -> list[tuple[str, bytes]]:
    """`count` signed send bodies (§6, §7), JSON-encoded: (message_id, body), each with a v1 wrap of
    one sender key (`group_key`, or a new one) for every device in `recipients`."""
    cid, epoch = conv["conversation_id"], conv["epoch"]
    group_key = group_key or os.urandom(32)
    kid = protocol.key_id(group_key)
    padded_len = max(protocol.PAD_BLOCK, -(-size // protocol.PAD_BLOCK) * protocol.PAD_BLOCK)
    out = []
    for seq in range(1, count + 1):
        message_id = str(uuid.uuid4())
        plaintext = json.dumps({"type": "text", "body": "", "sent_at": int(time.time() * 1000), "seq": seq})
        plaintext = plaintext.replace('"body": ""', '"body": "' + "x" * (padded_len - len(plaintext) - 1) + '"')
        nonce = os.urandom(12)
        aad = protocol.dm_aad(conversation_id=cid, epoch=epoch, message_id=message_id, sender_device=sender.id)
        ciphertext = protocol.aead_encrypt(group_key, nonce, protocol.pad(plaintext.encode()), aad)
        signed = protocol.dm_signed_bytes(
            ciphertext_sha256=protocol.H(ciphertext), conversation_id=cid, epoch=epoch, key_id=kid,
            message_id=message_id, nonce=protocol.b64e(nonce), participants_sha256=conv["participants_sha256"],
            sender_device=sender.id)
        body = {
            "message_id": message_id, "conversation_id": cid, "epoch": epoch, "key_id": kid,
            "participants_sha256": conv["participants_sha256"], "retention": conv["retention"],
            "nonce": protocol.b64e(nonce), "ciphertext": protocol.b64e(ciphertext),
            "signature": protocol.b64e(protocol.sign(sender.seed, signed)),
            "recipients": [{"device_id": r, "key_wrap": protocol.key_wrap(
                sender_seed=sender.seed, sender_device=sender.id, recipient_device=r, conversation_id=cid,
                epoch=epoch, group_key=group_key)} for r in recipients],
        }
        out.append((message_id, json.dumps(body).encode()))
    return out


def ciphertext_len(size: int) -> int:
    return max(protocol.PAD_BLOCK, -(-size // protocol.PAD_BLOCK) * protocol.PAD_BLOCK) + 16


# --- measuring --------------------------------------------------------------------------

def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all the machine's CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def database_backends(name: str) -> list[int]:
    """The PostgreSQL backends serving database `name` on this machine
    (`postgres: [cluster:] user database host(port) state`)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            words = (proc / "cmdline").read_bytes().split(b" ") if proc.name.isdigit() else []
        except OSError:
            continue
        if words[:1] == [b"postgres:"] and name.encode() in words:
            found.append(int(proc.name))
    return found


def cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except OSError:  # gone meanwhile
            pass
    return out


@dataclass
class Watch:
    """The processes whose CPU is the server's: the web processes and, on PostgreSQL, the database's backends."""
    web: list[int]
    database: str | None = None

    def database_cpu(self) -> dict[int, float]:
        return cpu_of(database_backends(self.database)) if self.database else {}


class Meter:
    """Wall time and the CPU of the web processes, the database, this bench and the whole machine over a phase."""

    def __init__(self, watch: Watch):
        self.watch = watch
        self.wall = time.perf_counter()
        self.server = cpu_of(watch.web)
        self.database = watch.database_cpu()
        self.client = time.process_time()
        self.machine = machine_jiffies()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.wall
        now = cpu_of(self.watch.web)
        server = {pid: now[pid] - before for pid, before in self.server.items() if pid in now}
        # a backend that started during the phase counts whole; one that ended is lost (persistent connections)
        database = sum(cpu - self.database.get(pid, 0.0) for pid, cpu in self.watch.database_cpu().items())
        busy, total = (after - before for after, before in zip(machine_jiffies(), self.machine))
        cores = os.cpu_count() or 1
        return {"seconds": wall, "server_cpu_s": sum(server.values()) if server else None,
                "server_cpu_s_by_pid": server, "database_cpu_s": database if self.watch.database else None,
                "client_cpu_s": time.process_time() - self.client,
                "machine_busy_cores": cores * busy / total if total else None, "cores": cores}


def per_send(usage: dict, sends: int) -> dict:
    database = usage["database_cpu_s"]
    return {"sends": sends, "sends_per_s": sends / usage["seconds"],
            "server_cpu_ms_per_send": None if usage["server_cpu_s"] is None else usage["server_cpu_s"] * 1000 / sends,
            "database_cpu_ms_per_send": None if database is None else database * 1000 / sends,
            "client_cpu_ms_per_send": usage["client_cpu_s"] * 1000 / sends, "usage": usage}


# --- the HTTP phases, against a real server ----------------------------------------------

@dataclass
class Conversation:
    sender: BenchDevice
    recipients: list[BenchDevice]
    conv: dict = field(default_factory=dict)


async def http_login(http: httpx.AsyncClient, device: BenchDevice, origin: str) -> None:
    response = await http.post("/api/v1/auth/challenge", json={"pubkey": device.id})
    response.raise_for_status()
    response = await http.post("/api/v1/auth/verify", json=device.verify_body(response.json()["challenge"], origin))
    response.raise_for_status()
    device.token = response.json()["token"]


async def conversation_setup(http: httpx.AsyncClient, k: int) -> Conversation:
    """A sender and K recipient devices (each of a user of its own), logged in, in one conversation."""
    fx = Conversation(*new_devices(k))
    origin = protocol.origin(str(http.base_url))
    await asyncio.gather(*(http_login(http, d, origin) for d in [fx.sender, *fx.recipients]))
    response = await http.post("/api/v1/dms/conversations", headers=fx.sender.headers,
                               json={"participants": [r.user_id for r in fx.recipients]})
    response.raise_for_status()
    fx.conv = response.json()
    return fx


async def open_connections(http: httpx.AsyncClient, device: BenchDevice, n: int) -> None:
    """n pooled connections, opened one at a time before a timed phase: a burst of connects would all
    be accepted by whichever web process wakes first (Twisted accepts many per wake-up)."""
    for in_flight in range(1, n + 1):  # each round reuses the idle connections and opens one more
        responses = await asyncio.gather(*(http.post("/api/v1/dms/sync", content=b'{"limit": 1}',
                                                     headers=device.headers) for _ in range(in_flight)))
        for r in responses:
            r.raise_for_status()


async def send_all(http: httpx.AsyncClient, jobs: list[tuple[BenchDevice, bytes]], concurrency: int) -> None:
    pending = iter(jobs)

    async def worker():
        for device, body in pending:
            r = await http.post("/api/v1/dms/send", content=body, headers=device.headers)
            if r.status_code != 201:
                raise RuntimeError(f"send answered {r.status_code}: {r.text[:300]}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def drain(http: httpx.AsyncClient, device: BenchDevice, counts: dict, limit: int | None = None) -> list[str]:
    """Sync a page, ACK it, until nothing is pending (or `limit` messages are ACKed)."""
    got: list[str] = []
    while limit is None or len(got) < limit:
        page_size = SYNC_LIMIT if limit is None else min(SYNC_LIMIT, limit - len(got))
        r = await http.post("/api/v1/dms/sync", content=b'{"limit": %d}' % page_size, headers=device.headers)
        counts["syncs"] += 1
        r.raise_for_status()
        page = json.loads(r.content)
        ids = [m["message_id"] for m in page["messages"]]
        got += ids
        if ids:
            r = await http.post("/api/v1/dms/ack", content=json.dumps({"message_ids": ids}).encode(),
                                headers=device.headers)
            counts["acks"] += 1
            r.raise_for_status()
        if not page["has_more"]:
            break
    return got


async def send_phase(http: httpx.AsyncClient, fx: Conversation, bodies: list[tuple[str, bytes]], concurrency: int,
                     watch: Watch) -> dict:
    await open_connections(http, fx.sender, concurrency)
    meter = Meter(watch)
    await send_all(http, [(fx.sender, body) for _, body in bodies], concurrency)
    return per_send(meter.stop(), len(bodies))


async def drain_phase(http: httpx.AsyncClient, fx: Conversation, watch: Watch, expected: set[str] | None = None,
                      limit: int | None = None) -> dict:
    """Every recipient drains at once: all its mail, or its first `limit` messages."""
    counts = {"syncs": 0, "acks": 0}
    meter = Meter(watch)
    drained = await asyncio.gather(*(drain(http, d, counts, limit) for d in fx.recipients))
    usage = meter.stop()
    for device, got in zip(fx.recipients, drained):
        wanted = len(expected) if expected is not None else limit
        if len(set(got)) != len(got) or len(got) != wanted or (expected is not None and set(got) != expected):
            raise RuntimeError(f"device {device.id[:8]} drained {len(got)} messages, expected {wanted}")
    total = sum(len(g) for g in drained)
    server, database = usage["server_cpu_s"], usage["database_cpu_s"]
    return {"messages": total, "messages_per_s": total / usage["seconds"], **counts,
            "server_cpu_ms_per_1000": None if server is None else server * 1e6 / total,
            "database_cpu_ms_per_1000": None if database is None else database * 1e6 / total, "usage": usage}


async def notify_phase(http: httpx.AsyncClient, url: str, sender: BenchDevice, recipient: BenchDevice,
                       sends: list[tuple[str, bytes]]) -> dict:
    if not sends:
        return {"error": "no samples"}
    from websockets.asyncio.client import connect

    ws_url = "ws" + url.removeprefix("http") + "/api/v1/gateway"
    try:
        ws = await connect(ws_url, additional_headers={"Authorization": f"Bearer {recipient.token}"},
                           open_timeout=10, max_size=2**20)
        hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if hello.get("op") != "HELLO":
            raise RuntimeError(f"first frame {hello.get('op')}")
    except Exception as exc:  # noqa: BLE001 - reported in the table: no gateway, no figure
        return {"error": f"gateway: {type(exc).__name__}: {exc}"[:200]}
    arrived: dict[str, float] = {}
    waiting: dict[str, asyncio.Event] = {}

    async def reader():
        async for raw in ws:
            now = time.perf_counter()
            frame = json.loads(raw)
            if frame["op"] == "HEARTBEAT":
                await ws.send(json.dumps({"op": "HEARTBEAT_ACK", "d": {}}))
            elif frame["op"] == "DM_NOTIFY":
                mid = frame["d"]["message_id"]
                arrived[mid] = now
                if mid in waiting:
                    waiting[mid].set()

    task = asyncio.create_task(reader())
    from_send, from_response = [], []
    try:
        for mid, body in sends:
            waiting[mid] = asyncio.Event()
            t0 = time.perf_counter()
            r = await http.post("/api/v1/dms/send", content=body, headers=sender.headers)
            t1 = time.perf_counter()
            if r.status_code != 201:
                raise RuntimeError(f"send answered {r.status_code}: {r.text[:300]}")
            try:
                await asyncio.wait_for(waiting[mid].wait(), NOTIFY_WAIT_S)
            except TimeoutError:
                return {"error": f"no DM_NOTIFY within {NOTIFY_WAIT_S} s after {len(from_send)} samples"}
            from_send.append((arrived[mid] - t0) * 1000)
            from_response.append((arrived[mid] - t1) * 1000)
    finally:
        task.cancel()
        await ws.close()
    return {"samples": len(from_send),
            "from_send_p50_ms": percentile(from_send, 50), "from_send_p99_ms": percentile(from_send, 99),
            "from_response_p50_ms": percentile(from_response, 50),
            "from_response_p99_ms": percentile(from_response, 99)}


async def many_senders_phase(http: httpx.AsyncClient, args, watch: Watch) -> dict:
    """D devices in D/2 direct conversations, all sending to their peer at once."""
    pairs = await asyncio.gather(*(conversation_setup(http, 1) for _ in range(args.senders // 2)))
    per_device = -(-args.messages // (2 * len(pairs)))
    streams = []
    for fx in pairs:
        streams.append([(fx.sender, b) for _, b in build_sends(fx.sender, fx.conv, [fx.recipients[0].id],
                                                                per_device, args.size)])
        streams.append([(fx.recipients[0], b) for _, b in build_sends(fx.recipients[0], fx.conv, [fx.sender.id],
                                                                       per_device, args.size)])
    jobs = [job for round_ in zip(*streams) for job in round_]  # round-robin: every device keeps sending
    await open_connections(http, pairs[0].sender, args.many_concurrency)
    meter = Meter(watch)
    await send_all(http, jobs, args.many_concurrency)
    return {"devices": 2 * len(pairs), "conversations": len(pairs), "concurrency": args.many_concurrency,
            **per_send(meter.stop(), len(jobs))}


async def one_sender_phases(http: httpx.AsyncClient, args, url: str, watch: Watch) -> dict:
    fx = await conversation_setup(http, args.recipients)
    started = time.perf_counter()
    bodies = build_sends(fx.sender, fx.conv, [r.id for r in fx.recipients], args.messages + args.notify_samples,
                         args.size)
    crypto_s = time.perf_counter() - started
    sends, notify_sends = bodies[:args.messages], bodies[args.messages:]
    result = {"client_crypto_s": crypto_s,
              "send": await send_phase(http, fx, sends, args.concurrency, watch),
              "drain": await drain_phase(http, fx, watch, expected={mid for mid, _ in sends})}
    result["notify"] = await notify_phase(http, url, fx.sender, fx.recipients[0], notify_sends)
    return result


async def mailbox_depth_phase(http: httpx.AsyncClient, args, watch: Watch) -> dict:
    """The same sends and drains to recipients with empty mailboxes and to recipients with
    --mailbox-depth pending deliveries each, alternated so that both see the same machine."""
    empty, full = await asyncio.gather(*(conversation_setup(http, args.recipients) for _ in range(2)))
    started = time.perf_counter()
    await asyncio.to_thread(mailbox_fill_in_thread, args.mailbox_depth, full, args.size)
    fill_s = time.perf_counter() - started
    runs: dict[str, list] = {"empty": [], "full": []}
    per_round = max(1, args.messages // args.mailbox_rounds)  # M sends in all to each kind of mailbox
    for _ in range(args.mailbox_rounds):
        for name, fx in (("empty", empty), ("full", full)):
            bodies = build_sends(fx.sender, fx.conv, [r.id for r in fx.recipients], per_round, args.size)
            send = await send_phase(http, fx, bodies, args.concurrency, watch)
            drained = await drain_phase(http, fx, watch, limit=per_round)
            runs[name].append((send, drained))
    out = {"depth": args.mailbox_depth, "rounds": args.mailbox_rounds, "fill_s": fill_s}
    for name, pairs in runs.items():
        send_s = sum(s["usage"]["seconds"] for s, _ in pairs)
        drain_s = sum(d["usage"]["seconds"] for _, d in pairs)
        sends = sum(s["sends"] for s, _ in pairs)

        def ms_per_send(key: str) -> float | None:
            cpu = [s["usage"][key] for s, _ in pairs]
            return None if None in cpu else sum(cpu) * 1000 / sends

        out[name] = {"sends_per_s": sends / send_s, "server_cpu_ms_per_send": ms_per_send("server_cpu_s"),
                     "database_cpu_ms_per_send": ms_per_send("database_cpu_s"),
                     "drain_per_s": sum(d["messages"] for _, d in pairs) / drain_s}
    out["ratio"] = {key: out["full"][key] / out["empty"][key] if out["empty"][key] else None
                    for key in ("sends_per_s", "drain_per_s")}
    return out


# --- a new epoch: prekey claims and v2 wraps (§6b, issue 15) ----------------------------------

ONE_TIME_PUBLISHED = 100  # as a client publishes at registration (§6b)


async def prekeys_publish(http: httpx.AsyncClient, device: BenchDevice) -> tuple[bytes, dict[int, bytes]]:
    """A signed prekey and 100 one-time prekeys for `device`, published as a client does at
    registration (PUT /devices/prekeys); the private keys: the signed one's and the one-time ones by id."""
    spk_priv, spk_pub = protocol.x25519_keypair()
    one_time = {i: protocol.x25519_keypair() for i in range(1, ONE_TIME_PUBLISHED + 1)}
    body = {"signed_prekey": protocol.spk_issue(device_seed=device.seed, id=1, x25519_pub=spk_pub,
                                                created_at=int(time.time())),
            "one_time": [{"id": i, "x25519": protocol.b64e(pub)} for i, (_, pub) in one_time.items()]}
    r = await http.put("/api/v1/devices/prekeys", json=body, headers=device.headers)
    if r.status_code != 200:
        raise RuntimeError(f"prekey upload answered {r.status_code}: {r.text[:300]}")
    return spk_priv, {i: priv for i, (priv, _) in one_time.items()}


def epoch_sends(sender: BenchDevice, conv: dict, claimed: list[list[dict]], count: int, size: int, version: int
                ) -> tuple[list[tuple[str, bytes]], float, list[bytes]]:
    """`count` first sends of a new epoch (each a new sender key, wrapped for every recipient device):
    with v2 wraps from the claimed prekeys, taken in turn (each signed prekey verified first, as §6b
    requires), or v1 wraps. The server sees only the wraps' shape, so a one-time prekey used again
    costs it what a fresh one would. Returns the bodies, the client CPU seconds of the wraps alone,
    and the keys."""
    cid, epoch = conv["conversation_id"], conv["epoch"]
    wrap_cpu, bodies, keys = 0.0, [], []
    for i in range(count):
        prekeys = claimed[i % len(claimed)]
        group_key = os.urandom(32)
        t0 = time.process_time()
        if version == 2:
            wraps = {p["device_id"]: protocol.key_wrap_v2(
                sender_seed=sender.seed, sender_device=sender.id, recipient_device=p["device_id"],
                conversation_id=cid, epoch=epoch, group_key=group_key,
                signed_prekey=protocol.spk_parse(p["signed_prekey"], device=p["device_id"]),
                one_time=protocol.otk_parse(p["one_time"]) if p["one_time"] else None) for p in prekeys}
        else:
            wraps = {p["device_id"]: protocol.key_wrap(
                sender_seed=sender.seed, sender_device=sender.id, recipient_device=p["device_id"],
                conversation_id=cid, epoch=epoch, group_key=group_key) for p in prekeys}
        wrap_cpu += time.process_time() - t0
        (message_id, body), = build_sends(sender, conv, [], 1, size, group_key=group_key)
        body = json.loads(body)
        body["recipients"] = [{"device_id": d, "key_wrap": w} for d, w in wraps.items()]
        bodies.append((message_id, json.dumps(body).encode()))
        keys.append(group_key)
    return bodies, wrap_cpu, keys


async def epoch_phase(http: httpx.AsyncClient, args, n: int, watch: Watch) -> dict:
    """What a new epoch costs in a conversation with n recipient devices (§6b): the
    sender's claim of their prekeys (POST /dms/prekeys/claim, one at a time), its
    v2 wraps against v1 wraps of the same keys, the server's work on a send that
    carries n v2 wraps against one with n v1 wraps (alternated blocks), and the
    recipients' unwrapping of both after their drain."""
    r = await http.get("/api/v1/server")
    r.raise_for_status()
    if tuple(int(x) for x in r.json().get("protocol", "1.0").split(".")) < (1, 2):
        return {"error": f"the server speaks protocol {r.json().get('protocol')}: no prekeys"}
    fx = await conversation_setup(http, n)
    meter = Meter(watch)
    secrets = [await prekeys_publish(http, d) for d in fx.recipients]
    upload = meter.stop()
    epochs = min(args.epochs, ONE_TIME_PUBLISHED)
    ids = [d.id for d in fx.recipients]
    await open_connections(http, fx.sender, 1)
    claims, claim_ms = [], []
    meter = Meter(watch)
    for _ in range(epochs):
        t0 = time.perf_counter()
        r = await http.post("/api/v1/dms/prekeys/claim", content=json.dumps({"devices": ids}).encode(),
                            headers=fx.sender.headers)
        claim_ms.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"prekey claim answered {r.status_code}: {r.text[:300]}")
        claims.append(r.json()["prekeys"])
    claim = meter.stop()
    handed = [(p["device_id"], p["one_time"]["id"]) for c in claims for p in c if p["one_time"]]
    if len(handed) != len(set(handed)) or len(handed) != epochs * n or any(len(c) != n for c in claims):
        raise RuntimeError(f"claims handed out {len(handed)} one-time prekeys ({len(set(handed))} distinct), "
                           f"expected {epochs * n}")
    sends = max(args.epoch_sends, epochs)
    v2_bodies, v2_wrap_s, v2_keys = epoch_sends(fx.sender, fx.conv, claims, sends, args.size, 2)
    v1_bodies, v1_wrap_s, v1_keys = epoch_sends(fx.sender, fx.conv, claims, sends, args.size, 1)
    blocks = 4
    per_block = -(-sends // blocks)
    send_usage: dict[int, list[dict]] = {1: [], 2: []}
    await open_connections(http, fx.sender, args.concurrency)
    for b in range(blocks):  # alternated, so that both see the same machine
        for version, bodies in ((2, v2_bodies), (1, v1_bodies)):
            block = bodies[b * per_block:(b + 1) * per_block]
            if block:
                meter = Meter(watch)
                await send_all(http, [(fx.sender, body) for _, body in block], args.concurrency)
                send_usage[version].append(meter.stop())
    drained = await drain_phase(http, fx, watch, expected={mid for mid, _ in v1_bodies + v2_bodies})
    # the recipients open every wrap they were sent, timed alone: v2 with their prekeys' private keys by id
    unwrap_s = {1: 0.0, 2: 0.0}
    key_of = dict(zip([mid for mid, _ in v2_bodies + v1_bodies], v2_keys + v1_keys))
    wraps_of = {mid: {r["device_id"]: r["key_wrap"] for r in json.loads(body)["recipients"]}
                for mid, body in v2_bodies + v1_bodies}
    for device, (spk_priv, one_time_privs) in zip(fx.recipients, secrets):
        for mid, wraps in wraps_of.items():
            wrap = wraps[device.id]
            version = protocol.wrap_version(wrap)
            t0 = time.process_time()
            if version == 2:
                key = protocol.key_unwrap_v2(
                    signed_prekey_priv=spk_priv, one_time_priv=one_time_privs.get(wrap["one_time_id"]),
                    recipient_device=device.id, sender_device=fx.sender.id,
                    conversation_id=fx.conv["conversation_id"], epoch=fx.conv["epoch"], wrap=wrap)
            else:
                key = protocol.key_unwrap(recipient_seed=device.seed, recipient_device=device.id,
                                          sender_device=fx.sender.id, conversation_id=fx.conv["conversation_id"],
                                          epoch=fx.conv["epoch"], wrap=wrap)
            unwrap_s[version] += time.process_time() - t0
            if key != key_of[mid]:
                raise RuntimeError(f"device {device.id[:8]} unwrapped a wrong key from a v{version} wrap")

    def server_ms(usages: list[dict], count: int) -> float | None:
        cpu = [u["server_cpu_s"] for u in usages]
        return None if None in cpu or not count else sum(cpu) * 1000 / count

    def database_ms(usages: list[dict], count: int) -> float | None:
        cpu = [u["database_cpu_s"] for u in usages]
        return None if None in cpu or not count else sum(cpu) * 1000 / count

    return {
        "devices": n, "epochs": epochs, "sends": sends,
        "upload": {"server_cpu_ms_per_device": server_ms([upload], n), "seconds": upload["seconds"]},
        "claim": {"p50_ms": percentile(claim_ms, 50), "p99_ms": percentile(claim_ms, 99),
                  "server_cpu_ms": server_ms([claim], epochs), "database_cpu_ms": database_ms([claim], epochs),
                  "one_time_handed_out": len(handed)},
        "wrap": {"v2_client_ms_per_epoch": v2_wrap_s * 1000 / sends, "v1_client_ms_per_epoch": v1_wrap_s * 1000 / sends},
        "unwrap": {"v2_client_ms_per_wrap": unwrap_s[2] * 1000 / (sends * n),
                   "v1_client_ms_per_wrap": unwrap_s[1] * 1000 / (sends * n)},
        "send": {"v2_server_cpu_ms": server_ms(send_usage[2], sends), "v1_server_cpu_ms": server_ms(send_usage[1], sends),
                 "v2_database_cpu_ms": database_ms(send_usage[2], sends),
                 "v1_database_cpu_ms": database_ms(send_usage[1], sends)},
        "drain": {"messages": drained["messages"], "server_cpu_ms_per_1000": drained["server_cpu_ms_per_1000"]},
    }


def server_phases(args, url: str, watch: Watch, *, with_depth: bool) -> dict:
    async def run() -> dict:
        limits = httpx.Limits(max_connections=max(args.concurrency, args.many_concurrency, args.recipients,
                                                  *args.epoch_devices) + 2)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            result = await one_sender_phases(http, args, url, watch)
            result["many"] = await many_senders_phase(http, args, watch)
            if with_depth:
                result["depth"] = await mailbox_depth_phase(http, args, watch)
                if args.epochs:
                    result["epoch"] = [await epoch_phase(http, args, n, watch) for n in args.epoch_devices]
        return result

    result = asyncio.run(run())
    workers = watch.web[1:] or watch.web  # the serve parent only supervises
    result["peak_rss_mib"] = max(peak_rss_bytes(pid) for pid in workers) / 2**20 if workers else None
    return result


# --- in-process: the fills, query counts and the purge, on the bench's own database -------------

def django_setup(database: BenchDatabase) -> None:
    os.environ.update({k: database.env[k] for k in ("DATABASE_URL", "VAR_DIR", "DEBUG", "REDIS_PREFIX")})
    for key in ("SECRET_KEY", "SECURE_SSL_REDIRECT", "PUBLIC_URL"):
        if key in database.env:
            os.environ[key] = database.env[key]
    os.environ["DJANGO_SETTINGS_MODULE"] = "decentcom.settings"
    import django

    django.setup()
    for name in ("dms", "devices", "decentcom"):  # the purge, logins and requests log each run
        logging.getLogger(name).setLevel(logging.WARNING)


class InProcess:
    """Django's test client on the bench database: same views, same queries."""

    def __init__(self):
        from django.conf import settings
        from django.test import Client

        self.client = Client(HTTP_HOST="127.0.0.1")
        self.origin = settings.PUBLIC_URL or "http://127.0.0.1"

    def post(self, path: str, body, device: BenchDevice | None = None, expect=(200, 201)):
        extra = {"HTTP_AUTHORIZATION": f"Bearer {device.token}"} if device else {}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = self.client.post(path, data=data, content_type="application/json", **extra)
        if response.status_code not in expect:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.content[:300]!r}")
        return json.loads(response.content)

    def put(self, path: str, body, device: BenchDevice):
        response = self.client.put(path, data=json.dumps(body).encode(), content_type="application/json",
                                   HTTP_AUTHORIZATION=f"Bearer {device.token}")
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.content[:300]!r}")
        return json.loads(response.content)

    def protocol(self) -> tuple[int, ...]:
        version = json.loads(self.client.get("/api/v1/server").content).get("protocol", "1.0")
        return tuple(int(x) for x in version.split("."))

    def login(self, device: BenchDevice) -> None:
        challenge = self.post("/api/v1/auth/challenge", {"pubkey": device.id})["challenge"]
        device.token = self.post("/api/v1/auth/verify", device.verify_body(challenge, self.origin))["token"]

    def counted(self, path: str, body, device: BenchDevice):
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as captured:
            answer = self.post(path, body, device)
        return len(captured.captured_queries), answer


def query_counts(args) -> dict:
    api = InProcess()
    sender, recipients = new_devices(args.recipients)
    for device in [sender, *recipients]:
        api.login(device)
    conv = api.post("/api/v1/dms/conversations", {"participants": [r.user_id for r in recipients]}, sender)
    pages = 100
    bodies = build_sends(sender, conv, [r.id for r in recipients], pages + 1, args.size)
    for _, body in bodies[:pages]:  # warm: last_seen_at recorded, settings read
        api.post("/api/v1/dms/send", body, sender)
    send_queries, _ = api.counted("/api/v1/dms/send", bodies[pages][1], sender)
    sync_queries, page = api.counted("/api/v1/dms/sync", {"limit": SYNC_LIMIT}, recipients[0])
    ids = [m["message_id"] for m in page["messages"]]
    ack_queries, _ = api.counted("/api/v1/dms/ack", {"message_ids": ids}, recipients[0])
    claim_queries = None
    if api.protocol() >= (1, 2):  # §6b: the recipients publish prekeys, the sender claims them
        for device in recipients:
            spk_pub = protocol.x25519_keypair()[1]
            api.put("/api/v1/devices/prekeys", {
                "signed_prekey": protocol.spk_issue(device_seed=device.seed, id=1, x25519_pub=spk_pub,
                                                    created_at=int(time.time())),
                "one_time": [{"id": i, "x25519": protocol.b64e(protocol.x25519_keypair()[1])} for i in (1, 2)]},
                device)
        claim_queries, claimed = api.counted("/api/v1/dms/prekeys/claim", {"devices": [r.id for r in recipients]},
                                             sender)
        if len(claimed["prekeys"]) != len(recipients):
            raise RuntimeError(f"the claim answered {claimed}")
    return {"send": send_queries, "sync": sync_queries, "ack": ack_queries, "claim": claim_queries,
            "sync_messages": len(ids), "ack_ids": len(ids),
            "_fixture": {"conv": conv, "sender": sender, "recipients": recipients}}


def mailbox_fill(n: int, fx: Conversation, size: int) -> None:
    """n pending messages from fx's sender to every one of its recipient devices, written as a send
    writes them (pending_dms, a delivery per device, the used id, a `pending` delivery state per
    delivery), in set-based inserts. A table a send also writes gets its fill here."""
    from django.db import connection, transaction
    from django.utils import timezone

    from devices.models import Device
    from dms.models import Conversation as ConversationRow
    from dms.models import PendingDm
    from dms.selectors import server_settings_get
    from dms.services import message_expiry

    row = ConversationRow.objects.get(pk=uuid.UUID(fx.conv["conversation_id"]))
    conv_id = PendingDm._meta.get_field("conversation").get_db_prep_value(row.pk, connection)
    sender_pk = Device.objects.get(device_id=fx.sender.id).pk
    device_pks = list(Device.objects.filter(device_id__in=[r.id for r in fx.recipients]).values_list("pk", flat=True))
    created_at = timezone.now() - dt.timedelta(minutes=1)  # before the sends that follow; marks this fill's rows
    expires_at = message_expiry(policy=row.retention_policy, ttl_days=row.retention_ttl_days, created_at=created_at,
                                conf=server_settings_get())
    ts = connection.ops.adapt_datetimefield_value
    created, expires = ts(created_at), None if expires_at is None else ts(expires_at)
    blob = os.urandom(ciphertext_len(size))
    fixed = ["1", "'" + "k" * 44 + "'", "'" + "p" * 44 + "'", "'" + "n" * 16 + "'"]
    rest = ["'" + "h" * 44 + "'", "'" + "s" * 88 + "'", "%s", "%s"]
    if connection.vendor == "postgresql":
        prefix, source, new_id = "", "generate_series(1, %s)", "gen_random_uuid()"
    else:
        prefix = "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < %s) "
        source, new_id = "seq", "lower(hex(randomblob(16)))"
    columns = ("message_id, conversation_id, sender_device_id, epoch, key_id, participants_sha256, nonce, "
               "ciphertext, ciphertext_sha256, signature, policy, ttl_days, created_at, expires_at")
    select = ", ".join([new_id, "%s", "%s", *fixed, "%s", *rest, "%s", "%s"])
    values = [conv_id, sender_pk, blob, row.retention_policy, row.retention_ttl_days, created, expires]
    mine = "m.conversation_id = %s AND m.created_at = %s"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"{prefix}INSERT INTO pending_dms ({columns}) SELECT {select} FROM {source}",
                       [*values, n] if connection.vendor == "postgresql" else [n, *values])
        cursor.execute(
            "INSERT INTO dm_deliveries (message_id, device_id, wrap_nonce, wrapped_key, created_at, acked_at) "
            f"SELECT m.message_id, d.id, '{'w' * 16}', '{'x' * 64}', %s, NULL FROM pending_dms m CROSS JOIN devices d "
            f"WHERE {mine} AND d.id IN ({', '.join(['%s'] * len(device_pks))}) ORDER BY m.message_id, d.id",
            [created, conv_id, created, *device_pks])
        cursor.execute(
            "INSERT INTO dm_used_message_ids (message_id, sender_device_id, conversation_id, ciphertext_sha256, "
            "response, created_at, message_gone_at) SELECT m.message_id, m.sender_device_id, m.conversation_id, "
            f"m.ciphertext_sha256, '{{}}', %s, NULL FROM pending_dms m WHERE {mine}", [created, conv_id, created])
        cursor.execute(
            "INSERT INTO dm_delivery_states (message_id, device_id, state, reason, at) SELECT d.message_id, "
            "d.device_id, 'pending', NULL, NULL FROM dm_deliveries d JOIN pending_dms m ON m.message_id = d.message_id "
            f"WHERE {mine}", [conv_id, created])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def mailbox_fill_in_thread(n: int, fx: Conversation, size: int) -> None:
    """The fill from a thread beside the bench's event loop (Django is sync-only there)."""
    from django.db import connections

    try:
        mailbox_fill(n, fx, size)
    finally:
        connections.close_all()  # this thread's own connection


def _purge_fill(n: int, fixture: dict, size: int, now: dt.datetime) -> None:
    """N expired `ttl` messages with a delivery per recipient and a used id each, in set-based inserts."""
    from django.db import connection, transaction

    from devices.models import Device
    from dms.models import PendingDm

    conv_field = PendingDm._meta.get_field("conversation")
    conv_id = conv_field.get_db_prep_value(uuid.UUID(fixture["conv"]["conversation_id"]), connection)
    sender_pk = Device.objects.get(device_id=fixture["sender"].id).pk
    device_pks = list(Device.objects.filter(device_id__in=[r.id for r in fixture["recipients"]])
                      .values_list("pk", flat=True))
    ts = connection.ops.adapt_datetimefield_value
    created, expires = ts(now - dt.timedelta(days=2)), ts(now - dt.timedelta(days=1))
    blob = os.urandom(ciphertext_len(size))  # incompressible; inline on both databases
    common = ["1", "'" + "k" * 44 + "'", "'" + "p" * 44 + "'", "'" + "n" * 16 + "'"]
    rest = ["'" + "h" * 44 + "'", "'" + "s" * 88 + "'", "'ttl'", "1"]
    if connection.vendor == "postgresql":
        source, new_id = "generate_series(1, %s)", "gen_random_uuid()"
        prefix = ""
    else:
        source, new_id = "seq", "lower(hex(randomblob(16)))"
        prefix = "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < %s) "
    columns = ("message_id, conversation_id, sender_device_id, epoch, key_id, participants_sha256, nonce, "
               "ciphertext, ciphertext_sha256, signature, policy, ttl_days, created_at, expires_at")
    select = ", ".join([new_id, "%s", "%s", *common, "%s", *rest, "%s", "%s"])
    with transaction.atomic(), connection.cursor() as cursor:
        values = [conv_id, sender_pk, blob, created, expires]
        cursor.execute(f"{prefix}INSERT INTO pending_dms ({columns}) SELECT {select} FROM {source}",
                       [*values, n] if connection.vendor == "postgresql" else [n, *values])
        cursor.execute(
            "INSERT INTO dm_deliveries (message_id, device_id, wrap_nonce, wrapped_key, created_at, acked_at) "
            f"SELECT m.message_id, d.id, '{'w' * 16}', '{'x' * 64}', %s, NULL FROM pending_dms m "
            f"CROSS JOIN devices d WHERE m.expires_at = %s AND d.id IN ({', '.join(['%s'] * len(device_pks))})",
            [created, expires, *device_pks])
        cursor.execute(
            "INSERT INTO dm_used_message_ids (message_id, sender_device_id, ciphertext_sha256, response, "
            "created_at, message_gone_at) SELECT message_id, sender_device_id, ciphertext_sha256, '{}', %s, NULL "
            "FROM pending_dms WHERE expires_at = %s", [created, expires])
        cursor.execute(  # a pending delivery state (§7a) per delivery, as a send writes them
            "INSERT INTO dm_delivery_states (message_id, device_id, state, reason, at) SELECT d.message_id, "
            "d.device_id, 'pending', NULL, NULL FROM dm_deliveries d JOIN pending_dms m ON m.message_id = d.message_id "
            "WHERE m.expires_at = %s", [expires])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _raw_delete(now: dt.datetime) -> None:
    from django.db import connection, transaction

    at = connection.ops.adapt_datetimefield_value(now)
    expired = "SELECT message_id FROM pending_dms WHERE expires_at <= %s"
    with transaction.atomic(), connection.cursor() as cursor:
        # The delivery FK is not ON DELETE CASCADE in the database: deliveries first.
        cursor.execute(f"UPDATE dm_delivery_states SET state = 'expired', at = %s WHERE state = 'pending' "
                       f"AND message_id IN ({expired})", [at, at])
        cursor.execute(f"DELETE FROM dm_deliveries WHERE message_id IN ({expired})", [at])
        cursor.execute(f"UPDATE dm_used_message_ids SET message_gone_at = %s WHERE message_id IN ({expired})",
                       [at, at])
        cursor.execute("DELETE FROM pending_dms WHERE expires_at <= %s", [at])


def purge(args, fixture: dict) -> dict:
    from django.utils import timezone

    from dms.models import Delivery, PendingDm
    from dms.services import dm_purge_expired

    if not args.purge_rows:
        return {}
    now = timezone.now()
    before = PendingDm.objects.count(), Delivery.objects.count()
    _purge_fill(args.purge_rows, fixture, args.size, now)
    t0 = time.perf_counter()
    counts = dm_purge_expired(now=now)
    service_s = time.perf_counter() - t0
    if counts["expired_messages"] != args.purge_rows or (PendingDm.objects.count(), Delivery.objects.count()) != before:
        raise RuntimeError(f"purge deleted {counts}, expected {args.purge_rows} messages")
    _purge_fill(args.purge_rows, fixture, args.size, now)
    t0 = time.perf_counter()
    _raw_delete(now)
    raw_s = time.perf_counter() - t0
    if (PendingDm.objects.count(), Delivery.objects.count()) != before:
        raise RuntimeError("raw delete left rows behind")
    return {"rows": args.purge_rows, "deliveries_per_row": args.recipients,
            "service_s": service_s, "service_rows_per_s": args.purge_rows / service_s,
            "raw_s": raw_s, "raw_rows_per_s": args.purge_rows / raw_s, "ratio": raw_s / service_s}


# --- report --------------------------------------------------------------------------------

def figure(metric: str, value, fmt: str = "{:,.0f}", *, target: tuple[str, float] | None = None,
           peer: float | None = None, note: str = "", text: str | None = None) -> dict:
    """One row of the table (and of --json): the value, its target and whether it is met, value / peer."""
    met = None
    if target and value is not None:
        op, bound = target
        met = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
    return {"metric": metric, "value": value, "text": text or ("n/a" if value is None else fmt.format(value)),
            "target": f"{target[0]} {target[1]:,}" if target else "", "met": met,
            "x_peer": value / peer if peer and value is not None else None, "note": note}


def machine_note(usage: dict) -> str:
    """Where the machine's busy cores went: web processes (and their split), database, bench client, others."""
    server = usage["server_cpu_s"]
    if usage["machine_busy_cores"] is None or server is None:
        return ""
    seconds = usage["seconds"]
    web, client, database = server / seconds, usage["client_cpu_s"] / seconds, (usage["database_cpu_s"] or 0) / seconds
    workers = list(usage["server_cpu_s_by_pid"].values())[1:]
    split = f" (workers {'/'.join(f'{100 * w / server:.0f}' for w in workers)}%)" if server and len(workers) > 1 else ""
    busy = usage["machine_busy_cores"]
    return (f"web {web:.2f}{split}{f', database {database:.2f}' if usage['database_cpu_s'] is not None else ''}, "
            f"bench client {client:.2f}, others {max(0.0, busy - web - database - client):.2f}"
            f"{'; the machine is the limit' if busy >= 0.95 * usage['cores'] else ''}")


def database_rows(metric: str, value: float | None, fmt: str = "{:.2f}") -> list[dict]:
    """PostgreSQL's own CPU, outside the web processes' (none on SQLite: it runs inside them)."""
    return [] if value is None else [figure(metric, value, fmt, note="the PostgreSQL backends of the web processes")]


def run_rows(label: str, r: dict, t: dict) -> list[dict]:
    send, drain, notify, many = r["send"], r["drain"], r["notify"], r["many"]
    cores = send["usage"]["cores"]
    rows = [
        figure(f"sends/s, one sender [{label}]", send["sends_per_s"], target=(">=", t["sends_per_s"]),
               peer=PEER["sends_per_s"]),
        figure("  server CPU ms per send", send["server_cpu_ms_per_send"], "{:.2f}",
               target=("<=", t["cpu_ms_per_send"]), peer=PEER["cpu_ms_per_send"]),
        *database_rows("  database CPU ms per send", send["database_cpu_ms_per_send"]),
        figure("  bench client CPU ms per send", send["client_cpu_ms_per_send"], "{:.2f}"),
        figure(f"  machine busy (cores of {cores})", send["usage"]["machine_busy_cores"], "{:.2f}",
               note=machine_note(send["usage"])),
        figure(f"drained messages/s [{label}]", drain["messages_per_s"], target=(">=", t["drain_per_s"]),
               peer=PEER["drain_per_s"], note=f"{drain['syncs']} syncs, {drain['acks']} ACKs"),
        figure("  server CPU ms per 1,000 drained", drain["server_cpu_ms_per_1000"], "{:.1f}"),
        *database_rows("  database CPU ms per 1,000 drained", drain["database_cpu_ms_per_1000"], "{:.1f}"),
        figure(f"  machine busy (cores of {cores})", drain["usage"]["machine_busy_cores"], "{:.2f}",
               note=machine_note(drain["usage"])),
    ]
    if "error" in notify:
        rows.append(figure(f"notify p50 ms [{label}]", None, note=notify["error"]))
    else:
        rows += [
            figure(f"notify p50 / p99 ms from send [{label}]", notify["from_send_p50_ms"],
                   text=f"{notify['from_send_p50_ms']:.2f} / {notify['from_send_p99_ms']:.2f}",
                   target=("<", t["notify_p50_ms"]), peer=PEER["notify_p50_ms"]),
            figure("  p50 / p99 ms after the 201", notify["from_response_p50_ms"],
                   text=f"{notify['from_response_p50_ms']:.2f} / {notify['from_response_p99_ms']:.2f}",
                   note="negative: the frame came first"),
        ]
    rows += [
        figure(f"sends/s, {many['devices']} senders in {many['conversations']} conversations [{label}]",
               many["sends_per_s"], note=f"C={many['concurrency']}, 1 recipient device each"),
        figure("  server CPU ms per send", many["server_cpu_ms_per_send"], "{:.2f}"),
        *database_rows("  database CPU ms per send", many["database_cpu_ms_per_send"]),
        figure(f"  machine busy (cores of {cores})", many["usage"]["machine_busy_cores"], "{:.2f}",
               note=machine_note(many["usage"])),
        figure(f"peak RSS per web process [{label}]", r["peak_rss_mib"], "{:.0f} MiB", target=("<=", t["rss_mib"])),
    ]
    return rows


def depth_rows(d: dict, t: dict) -> list[dict]:
    depth, empty, full = d["depth"], d["empty"], d["full"]
    def cpu(key: str) -> str:
        return " / ".join("n/a" if x[key] is None else f"{x[key]:.2f}" for x in (empty, full))

    database = "" if empty["database_cpu_ms_per_send"] is None else f", database {cpu('database_cpu_ms_per_send')}"
    return [
        figure("sends/s, recipients' mailboxes empty", empty["sends_per_s"],
               note=f"{d['rounds']} rounds alternated; CPU ms per send empty / full: web "
                    f"{cpu('server_cpu_ms_per_send')}{database}"),
        figure(f"sends/s, {depth:,} pending per recipient device", full["sends_per_s"]),
        figure("  full / empty", d["ratio"]["sends_per_s"], "{:.2f}", target=(">=", t["flat_ratio"])),
        figure("drained messages/s, mailboxes empty", empty["drain_per_s"]),
        figure(f"drained messages/s, {depth:,} deeper", full["drain_per_s"],
               note="sync + ACK of the same number, at the head of the mailbox"),
        figure("  full / empty", d["ratio"]["drain_per_s"], "{:.2f}", target=(">=", t["flat_ratio"])),
    ]


def epoch_rows(e: dict) -> list[dict]:
    if "error" in e:
        return [figure("new epoch: prekey claim", None, note=e["error"])]
    n, claim, wrap, unwrap, send = e["devices"], e["claim"], e["wrap"], e["unwrap"], e["send"]

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    database = "" if claim["database_cpu_ms"] is None else f"; database {ms(claim['database_cpu_ms'])} ms"
    send_db = ("" if send["v2_database_cpu_ms"] is None else
               f"; database v2 / v1 {ms(send['v2_database_cpu_ms'])} / {ms(send['v1_database_cpu_ms'])} ms")
    return [
        figure(f"new epoch, {n} recipient devices: prekey claim p50 / p99 ms", claim["p50_ms"],
               text=f"{claim['p50_ms']:.2f} / {claim['p99_ms']:.2f}",
               note=f"POST /dms/prekeys/claim for {n} devices, one at a time, {e['epochs']} epochs; "
                    f"{claim['one_time_handed_out']} one-time prekeys, none twice"),
        figure("  server CPU ms per claim", claim["server_cpu_ms"], "{:.2f}", note=database.removeprefix("; ")),
        figure(f"  client CPU ms: {n} v2 wraps / {n} v1 wraps", wrap["v2_client_ms_per_epoch"],
               text=f"{wrap['v2_client_ms_per_epoch']:.2f} / {wrap['v1_client_ms_per_epoch']:.2f}",
               note="v2: each signed prekey verified, 3 X25519 (2 without a one-time prekey); v1: 1 X25519"),
        figure("  server CPU ms: first send with v2 / v1 wraps", send["v2_server_cpu_ms"],
               text=f"{ms(send['v2_server_cpu_ms'])} / {ms(send['v1_server_cpu_ms'])}",
               note=f"{e['sends']} sends of each, in alternated blocks{send_db}"),
        figure("  recipient CPU ms per unwrap: v2 / v1", unwrap["v2_client_ms_per_wrap"],
               text=f"{unwrap['v2_client_ms_per_wrap']:.3f} / {unwrap['v1_client_ms_per_wrap']:.3f}"),
        figure("  prekey upload (signed + 100 one-time): server CPU ms", e["upload"]["server_cpu_ms_per_device"],
               "{:.2f}", note="per device, as at registration"),
    ]


def table_rows(r: dict) -> list[dict]:
    t = r["targets"]
    rows = [row for label, run in r["runs"].items() for row in run_rows(label, run, t)]
    for run in r["runs"].values():
        if "depth" in run:
            rows += depth_rows(run["depth"], t)
        for e in run.get("epoch", []):
            rows += epoch_rows(e)
    p, q = r["purge"], r["queries"]
    if p:
        rows += [
            figure(f"purge rows/s service ({p['rows']:,} x {p['deliveries_per_row']})", p["service_rows_per_s"],
                   note=f"{p['service_s']:.2f} s"),
            figure("purge rows/s raw SQL", p["raw_rows_per_s"], note=f"{p['raw_s']:.2f} s"),
            figure("purge service / raw SQL speed", p["ratio"], "{:.2f}", note="1.00 = the database's own limit"),
        ]
    rows.append(figure("queries per send / sync / ack", q["send"], text=f"{q['send']} / {q['sync']} / {q['ack']}",
                       note=f"{r['recipients']} recipients; {q['sync_messages']} messages; {q['ack_ids']} ids"))
    if q.get("claim") is not None:
        rows.append(figure("queries per prekey claim", q["claim"], note=f"for {r['recipients']} devices"))
    return rows


def format_table(rows: list[dict]) -> str:
    width = max(len(row["metric"]) for row in rows)
    head = f"{'metric':<{width}}  {'value':>15}  {'target':>9}  met  x peer  note"
    lines = [head, "-" * (len(head) + 30)]
    for row in rows:
        met = "" if row["met"] is None else "yes" if row["met"] else "NO"
        x_peer = "" if row["x_peer"] is None else f"{row['x_peer']:.2f}"
        lines.append(f"{row['metric']:<{width}}  {row['text']:>15}  {row['target']:>9}  {met:<3}  {x_peer:>6}  "
                     f"{row['note']}".rstrip())
    return "\n".join(lines)


def web_processes(value: str) -> list[int]:
    counts = [int(v) for v in value.split(",")]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("positive numbers, comma-separated")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", "-M", type=int, default=500, help="sends per phase (default 500)")
    parser.add_argument("--recipients", "-K", type=int, default=4, help="recipient devices (default 4)")
    parser.add_argument("--size", type=int, default=1024,
                        help="plaintext bytes, padded to 256 (default 1024; the ciphertext adds the 16-byte tag)")
    parser.add_argument("--concurrency", "-C", type=int, default=4, help="sends in flight (default 4)")
    parser.add_argument("--notify-samples", type=int, default=200, help="sends timed for DM_NOTIFY (default 200)")
    parser.add_argument("--senders", type=int, default=50, help="devices of the many-senders phase (default 50)")
    parser.add_argument("--many-concurrency", type=int, default=16,
                        help="sends in flight in the many-senders phase (default 16)")
    parser.add_argument("--web-processes", type=web_processes, default=[1, 2],
                        help="web processes to run the phases with, e.g. 1,2 (default)")
    parser.add_argument("--mailbox-depth", type=int, default=10_000,
                        help="pending deliveries per recipient device in the mailbox-size phase (default 10,000)")
    parser.add_argument("--mailbox-rounds", type=int, default=4,
                        help="alternated empty/full rounds the M sends are split into (default 4)")
    parser.add_argument("--purge-rows", type=int, default=20_000,
                        help="expired messages to purge (default 20,000; `make bench-scale` purges 100,000)")
    parser.add_argument("--epoch-sends", type=int, default=200,
                        help="v2- and v1-wrapped first sends each in the epoch phase (default 200)")
    parser.add_argument("--epochs", type=int, default=50,
                        help="new epochs (prekey claims and v2-wrapped first sends) per conversation size in the "
                             f"epoch phase (default 50, at most {ONE_TIME_PUBLISHED}; 0 skips the phase)")
    parser.add_argument("--epoch-devices", type=web_processes, default=[4, 16],
                        help="recipient devices of the epoch phase's conversations, e.g. 4,16 (default)")
    parser.add_argument("--url", help="a running server on this machine (default: start one)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--timeout", type=int, default=900, help="stop everything after this many seconds")
    args = parser.parse_args()
    if min(args.messages, args.recipients, args.concurrency, args.size, args.many_concurrency,
           args.mailbox_rounds) < 1 or args.senders < 2 or not 0 <= args.epochs <= ONE_TIME_PUBLISHED:
        parser.error("--messages, --recipients, --concurrency, --size, --many-concurrency and --mailbox-rounds "
                     f"must be positive, --senders at least 2, --epochs 0..{ONE_TIME_PUBLISHED}")
    if args.url and urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be on loopback")

    stop_after(args.timeout)
    bench_started = time.perf_counter()
    database = BenchDatabase()
    try:
        k = max(args.recipients, *args.epoch_devices)
        database.manage("shell", "-c", BENCH_SETTINGS.format(
            k=k, size=ciphertext_len(args.size), request=2 * ciphertext_len(args.size) + 400 * k))
        layer = "redis" if os.environ.get("REDIS_URL") else "embedded (Unix sockets)"
        if args.url:
            where = f"server at {args.url}, its own settings and database (no mailbox-size phase)"
        else:
            where = (f"`python -m decentcom.serve` with {' and then '.join(map(str, args.web_processes))} web "
                     f"processes (no Celery worker/beat) on a fresh {database.engine} database; rate limits off and "
                     "pending quota raised in that database")
        print(f"decentcom mailbox bench: {where}\n  channel layer {layer}, DEBUG={database.env['DEBUG']}; "
              f"M={args.messages} sends x K={args.recipients} recipient devices, ciphertext "
              f"{ciphertext_len(args.size)} B, {args.concurrency} in flight\n  mailbox fill, query counts and the "
              "purge: in-process, on the bench's own database", flush=True)
        django_setup(database)
        result = {"engine": database.engine if not args.url else "server at " + args.url, "channel_layer": layer,
                  "messages": args.messages, "recipients": args.recipients,
                  "ciphertext_bytes": ciphertext_len(args.size), "concurrency": args.concurrency,
                  "peer": PEER, "peer_runs": PEER_RUNS, "targets": targets(database.engine), "runs": {}}
        if args.url:
            url = args.url.rstrip("/")
            pid = pid_listening_on(urlsplit(url).port or 80)
            result["runs"]["server"] = server_phases(args, url, Watch([pid] if pid else []), with_depth=False)
        for i, processes in enumerate([] if args.url else args.web_processes):
            server = BenchServer(database, processes=processes)
            try:
                label = f"{processes} web process{'es' if processes > 1 else ''}"
                result["runs"][label] = server_phases(args, server.url, Watch(server.pids, database.pg_name),
                                                           with_depth=i == 0)
            finally:
                server.stop()  # the next phases run alone
        queries = query_counts(args)
        fixture = queries.pop("_fixture")
        result["queries"] = queries
        result["purge"] = purge(args, fixture)
        result["bench_seconds"] = time.perf_counter() - bench_started
        result["table"] = table_rows(result)
        print(format_table(result["table"]))
        print(f"(bench ran {result['bench_seconds']:.0f} s; client-side crypto is done before each timed phase. "
              f"x peer = value / the peer's better run: {PEER['sends_per_s']} sends/s, {PEER['cpu_ms_per_send']} ms "
              f"CPU per send, {PEER['drain_per_s']:,} drained/s, notify p50 {PEER['notify_p50_ms']} ms)")
        if args.json:
            with open(args.json, "w") as out:
                json.dump(result, out, indent=2)
        return 0
    finally:
        signal.alarm(0)
        database.close()


if __name__ == "__main__":
    sys.exit(main())
