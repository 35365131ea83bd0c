"""Mailbox benchmark (issue 6): send, drain, notify and purge, with real
crypto done on the client side before anything is timed.

    python -m bench.mailbox                   # own server and database, as `make run` starts it
    DATABASE_URL=postgres://… REDIS_URL=redis://… python -m bench.mailbox
                                              # the same on a fresh PostgreSQL database and Redis
    python -m bench.mailbox --url http://127.0.0.1:8000
                                              # a running server on this machine (loopback only)

Phases: M sends by one device to a conversation of K recipient devices (C in
flight); the K devices drain with sync + ACK at once until nothing is
pending; DM_NOTIFY latency at a connected recipient, one send at a time; the
purge service on N expired messages (K deliveries each) against the same
delete as raw SQL on an identical copy. Query counts are measured in-process
(Django's test client and CaptureQueriesContext on the bench's database).
Rate limits are switched off in the bench's own database; `--url` uses the
server's settings as they are."""
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
from urllib.parse import urlsplit

import httpx

from bench.server import BenchDatabase, BenchServer, cpu_seconds, peak_rss_bytes, pid_listening_on
from dmclient import protocol

# The peer (a Python Matrix homeserver, same machine, SQLite) and the targets of issue 6.
PEER = {"sends_per_s": (110, 130), "cpu_ms_per_send": 7, "drain_per_s": (5300, 6600), "notify_ms": 18}
TARGET = {"sends_per_s": 3 * 130, "drain_per_s": 2 * 6600, "notify_p50_ms": 10}

BENCH_SETTINGS = ("from dms.selectors import server_settings_get; from dms.services import server_settings_update; "
                  "s = server_settings_get(); s.send_rate_per_device = 0; s.send_rate_per_user = 0; "
                  "s.challenge_rate_per_ip = 0; s.registration_rate_per_user = 0; "
                  "s.group_creation_rate_per_user = 0; s.pending_quota = 1_000_000_000; "
                  "s.max_participants = max(s.max_participants, {k} + 1); "
                  "s.max_recipients_per_message = max(s.max_recipients_per_message, {k}); "
                  "s.max_ciphertext_bytes = max(s.max_ciphertext_bytes, {size}); "
                  "s.max_request_bytes = max(s.max_request_bytes, {request}); "
                  "server_settings_update(settings_row=s)")
SYNC_LIMIT = 500  # the protocol's largest page


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


def build_sends(sender: BenchDevice, conv: dict, recipients: list[str], count: int, size: int
                ) -> list[tuple[str, bytes]]:
    """`count` signed send bodies (§6, §7), JSON-encoded: (message_id, body)."""
    cid, epoch = conv["conversation_id"], conv["epoch"]
    group_key = os.urandom(32)
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


# --- the HTTP phases, against a real server ----------------------------------------------

class ServerProcess:
    def __init__(self, pid: int | None):
        self.pid = pid

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid) if self.pid else None


async def http_login(http: httpx.AsyncClient, device: BenchDevice, origin: str) -> None:
    response = await http.post("/api/v1/auth/challenge", json={"pubkey": device.id})
    response.raise_for_status()
    response = await http.post("/api/v1/auth/verify", json=device.verify_body(response.json()["challenge"], origin))
    response.raise_for_status()
    device.token = response.json()["token"]


async def http_phases(args, url: str, server: ServerProcess) -> dict:
    result: dict = {}
    origin = protocol.origin(url)
    limits = httpx.Limits(max_connections=max(args.concurrency, args.recipients) + 2)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        sender, recipients = new_devices(args.recipients)
        for device in [sender, *recipients]:
            await http_login(http, device, origin)
        response = await http.post("/api/v1/dms/conversations", headers=sender.headers,
                                   json={"participants": [r.user_id for r in recipients]})
        response.raise_for_status()
        conv = response.json()
        recipient_ids = [r.id for r in recipients]
        started = time.perf_counter()
        bodies = build_sends(sender, conv, recipient_ids, args.messages + args.notify_samples, args.size)
        result["client_crypto_s"] = time.perf_counter() - started
        sends, notify_sends = bodies[:args.messages], bodies[args.messages:]

        # 1. sends, C in flight
        pending = iter(sends)
        statuses: dict[int, int] = {}

        async def sender_worker():
            for _, body in pending:
                r = await http.post("/api/v1/dms/send", content=body, headers=sender.headers)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code != 201:
                    raise RuntimeError(f"send answered {r.status_code}: {r.text[:300]}")

        cpu0, own0, t0 = server.cpu(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(sender_worker() for _ in range(args.concurrency)))
        wall, cpu1, own1 = time.perf_counter() - t0, server.cpu(), time.process_time()
        result["send"] = {"seconds": wall, "sends_per_s": args.messages / wall,
                          "deliveries_per_s": args.messages * args.recipients / wall,
                          "server_cpu_ms_per_send": None if cpu0 is None else (cpu1 - cpu0) * 1000 / args.messages,
                          "client_cpu_ms_per_send": (own1 - own0) * 1000 / args.messages}

        # 2. every recipient drains at once: sync a page, ACK it, until nothing is pending
        counts = {"syncs": 0, "acks": 0}

        async def drain(device: BenchDevice) -> list[str]:
            got = []
            while True:
                r = await http.post("/api/v1/dms/sync", content=b'{"limit": %d}' % SYNC_LIMIT, headers=device.headers)
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
                    return got

        cpu0, t0 = server.cpu(), time.perf_counter()
        drained = await asyncio.gather(*(drain(d) for d in recipients))
        wall, cpu1 = time.perf_counter() - t0, server.cpu()
        expected = {mid for mid, _ in sends}
        for device, got in zip(recipients, drained):
            if len(got) != len(expected) or set(got) != expected:
                raise RuntimeError(f"device {device.id[:8]} drained {len(got)} messages, expected {len(expected)}")
        total = sum(len(g) for g in drained)
        result["drain"] = {"seconds": wall, "messages": total, "messages_per_s": total / wall, **counts,
                           "server_cpu_ms_per_1000": None if cpu0 is None else (cpu1 - cpu0) * 1e6 / total}

        # 3. DM_NOTIFY at a connected recipient, one send at a time
        result["notify"] = await notify_phase(http, url, sender, recipients[0], notify_sends)
    return result


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
            await asyncio.wait_for(waiting[mid].wait(), 10)
            from_send.append((arrived[mid] - t0) * 1000)
            from_response.append((arrived[mid] - t1) * 1000)
    finally:
        task.cancel()
        await ws.close()
    return {"samples": len(from_send),
            "from_send_p50_ms": percentile(from_send, 50), "from_send_p99_ms": percentile(from_send, 99),
            "from_response_p50_ms": percentile(from_response, 50),
            "from_response_p99_ms": percentile(from_response, 99)}


# --- in-process: query counts and the purge, on the bench's own database --------------------

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
    return {"send": send_queries, "sync": sync_queries, "ack": ack_queries, "sync_messages": len(ids),
            "ack_ids": len(ids), "_fixture": {"conv": conv, "sender": sender, "recipients": recipients}}


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

def table(r: dict) -> str:
    def num(v, fmt="{:,.0f}"):
        return "n/a" if v is None else fmt.format(v)

    send, drain, notify, q, p = r["send"], r["drain"], r["notify"], r["queries"], r.get("purge", {})
    rows = [
        ("sends/s", num(send["sends_per_s"]), f">= {TARGET['sends_per_s']} (3 x peer's 110-130)"),
        ("per-device deliveries/s", num(send["deliveries_per_s"]), ""),
        ("server CPU ms per send", num(send["server_cpu_ms_per_send"], "{:.2f}"),
         f"peer ~7; the bench's client {send['client_cpu_ms_per_send']:.2f}"),
        ("drained messages/s (sync + ACK)", num(drain["messages_per_s"]),
         f">= {TARGET['drain_per_s']:,} (2 x peer's 5,300-6,600)"),
        ("server CPU ms per 1,000 drained", num(drain["server_cpu_ms_per_1000"], "{:.1f}"), ""),
    ]
    if "error" in notify:
        rows.append(("notify p50 / p99 ms", "n/a", notify["error"]))
    else:
        rows += [
            ("notify p50 / p99 ms (from send)",
             f"{notify['from_send_p50_ms']:.2f} / {notify['from_send_p99_ms']:.2f}",
             f"p50 < {TARGET['notify_p50_ms']} (peer ~18)"),
            ("notify p50 / p99 ms (after 201)",
             f"{notify['from_response_p50_ms']:.2f} / {notify['from_response_p99_ms']:.2f}",
             "negative: the frame came first"),
        ]
    if p:
        rows += [
            (f"purge rows/s service ({p['rows']:,} x {p['deliveries_per_row']})", num(p["service_rows_per_s"]),
             f"{p['service_s']:.2f} s"),
            ("purge rows/s raw SQL", num(p["raw_rows_per_s"]), f"{p['raw_s']:.2f} s"),
            ("purge service / raw SQL speed", f"{p['ratio']:.2f}", "1.00 = the database's own limit"),
        ]
    rows += [
        ("queries per send / sync / ack", f"{q['send']} / {q['sync']} / {q['ack']}",
         f"{r['recipients']} recipients; {q['sync_messages']} messages; {q['ack_ids']} ids"),
        ("peak server memory (VmHWM)", "n/a" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f} MiB", ""),
    ]
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'metric':<{width}}  {'value':>15}  note", "-" * (width + 40)]
    lines += [f"{name:<{width}}  {value:>15}  {note}".rstrip() for name, value, note in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", "-M", type=int, default=500, help="sends (default 500)")
    parser.add_argument("--recipients", "-K", type=int, default=4, help="recipient devices (default 4)")
    parser.add_argument("--size", type=int, default=1024,
                        help="plaintext bytes, padded to 256 (default 1024; the ciphertext adds the 16-byte tag)")
    parser.add_argument("--concurrency", "-C", type=int, default=4, help="sends in flight (default 4)")
    parser.add_argument("--notify-samples", type=int, default=200, help="sends timed for DM_NOTIFY (default 200)")
    parser.add_argument("--purge-rows", type=int, default=100_000, help="expired messages to purge (default 100,000)")
    parser.add_argument("--url", help="a running server on this machine (default: start one)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--timeout", type=int, default=900, help="stop everything after this many seconds")
    args = parser.parse_args()
    if min(args.messages, args.recipients, args.concurrency, args.size) < 1:
        parser.error("--messages, --recipients, --concurrency and --size must be positive")
    if args.url and urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be on loopback")

    def on_timeout(*_):
        raise TimeoutError(f"the bench ran over {args.timeout} s")

    signal.signal(signal.SIGALRM, on_timeout)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.alarm(args.timeout)
    bench_started = time.perf_counter()
    database = BenchDatabase()
    server = None
    try:
        database.manage("shell", "-c", BENCH_SETTINGS.format(
            k=args.recipients, size=ciphertext_len(args.size), request=2 * ciphertext_len(args.size) + 200 * args.recipients))
        if args.url:
            url = args.url.rstrip("/")
            pid = pid_listening_on(urlsplit(url).port or 80)
            where = f"server at {url} (pid {pid or 'unknown'}), its own settings"
        else:
            server = BenchServer(database)
            url, pid = server.url, server.pid
            where = (f"daphne as `make run` starts it (no Celery worker/beat), pid {pid}, on a fresh "
                     f"{database.engine} database; rate limits off and pending quota raised in that database")
        layer = "redis" if os.environ.get("REDIS_URL") else "in-memory"
        print(f"decentcom mailbox bench: {where}\n  channel layer {layer}, DEBUG={database.env['DEBUG']}; "
              f"M={args.messages} sends x K={args.recipients} recipient devices, ciphertext "
              f"{ciphertext_len(args.size)} B, {args.concurrency} in flight\n  query counts and the purge: "
              "in-process, on the bench's own database", flush=True)
        result = {"engine": database.engine if not args.url else "server at " + url, "channel_layer": layer,
                  "messages": args.messages, "recipients": args.recipients,
                  "ciphertext_bytes": ciphertext_len(args.size), "concurrency": args.concurrency}
        result.update(asyncio.run(http_phases(args, url, ServerProcess(pid))))
        result["peak_rss_mib"] = peak_rss_bytes(pid) / 2**20 if pid else None
        if server is not None:
            server.stop()  # the purge runs alone
        django_setup(database)
        queries = query_counts(args)
        fixture = queries.pop("_fixture")
        result["queries"] = queries
        result["purge"] = purge(args, fixture)
        result["bench_seconds"] = time.perf_counter() - bench_started
        print(table(result))
        print(f"(bench ran {result['bench_seconds']:.0f} s; client-side crypto {result['client_crypto_s']:.1f} s, "
              "before the timed phases)")
        if args.json:
            with open(args.json, "w") as out:
                json.dump(result, out, indent=2)
        return 0
    finally:
        signal.alarm(0)
        if server is not None:
            server.stop()
        database.close()


if __name__ == "__main__":
    sys.exit(main())
