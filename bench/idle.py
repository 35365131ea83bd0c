"""Idle gateway memory (issue 13): N authenticated WebSocket connections held
open on ONE daphne process, each answering its heartbeats, and that
process's resident memory before and after.

    python -m bench.idle                      # 10,000 connections, own server and SQLite database
    DATABASE_URL=postgres://… REDIS_URL=redis://… python -m bench.idle

The devices (real certificates, 100 per user) are written by the ORM into
the bench's own database and their sessions opened by the session service
(devices.services.session_create), so no login's signature is spent per
connection. The client side is a few processes of one asyncio loop each."""
import argparse
import asyncio
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.mailbox import django_setup
from bench.server import BenchDatabase, BenchServer, cpu_seconds

TARGET_MIB = 300
DEVICES_PER_USER = 100
# Per client process. A handshake the server has not accepted within 5 s daphne refuses (403):
# more in flight only queues them past that on a busy machine.
CONNECTS_IN_FLIGHT = 8
CONNECT_TRIES = 5
IDLE_SETTINGS = ("from dms.selectors import server_settings_get; from dms.services import server_settings_update; "
                 "s = server_settings_get(); s.max_devices_per_user = {per_user}; "
                 "server_settings_update(settings_row=s)")


def raise_nofile() -> int:
    """The soft limit of open files up to the hard one; children (daphne) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def memory_kib(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) for key in ("VmRSS", "VmHWM")}


def sessions(n: int) -> list[str]:
    """N device sessions (DEVICES_PER_USER devices per user), their bearer tokens."""
    from django.db import transaction
    from django.utils import timezone

    from devices.models import Device
    from devices.services import session_create, user_get_or_create
    from dmclient import protocol

    tokens = []
    now = timezone.now()
    for u in range(math.ceil(n / DEVICES_PER_USER)):
        master = os.urandom(32)
        user = user_get_or_create(user_id=protocol.b58e(protocol.public_key(master)))
        certificates = [protocol.cert_parse(protocol.cert_issue(
            master_seed=master, device=protocol.b58e(protocol.public_key(os.urandom(32))), name=f"idle {i}",
            issued_at=int(now.timestamp()), expires_at=None, permissions=[]))
            for i in range(min(DEVICES_PER_USER, n - u * DEVICES_PER_USER))]
        with transaction.atomic():
            devices = Device.objects.bulk_create([Device(
                user=user, device_id=c.device, name=c.name, certificate=c.wire(), permissions=[], issued_at=now,
                created_at=now) for c in certificates])
            tokens += [session_create(user=user, device=device, now=now)[1] for device in devices]
    return tokens


# --- the client side: one process holds its share of the connections ------------------------

async def hold(url: str, tokens: list[str], connect_timeout: float, report) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    opened, closed, retries = set(), {}, []

    async def open_one(token: str):
        for attempt in range(CONNECT_TRIES):
            try:
                ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                   ping_interval=None, max_queue=4, open_timeout=60)
                hello = json.loads(await ws.recv())
                if hello["op"] != "HELLO":
                    raise RuntimeError(f"first frame {hello['op']}: {hello}")
                return ws
            except (InvalidHandshake, OSError, TimeoutError):
                if attempt == CONNECT_TRIES - 1:
                    raise
                retries.append(1)  # as a client would: back off and come again
                await asyncio.sleep(0.5 * 2 ** attempt)

    async def one(token: str):
        while True:  # a connection the server closes comes back, as a client's would
            async with gate:
                ws = await open_one(token)
            opened.add(ws)
            try:
                async for text in ws:
                    if json.loads(text)["op"] == "HEARTBEAT":
                        await ws.send('{"op": "HEARTBEAT_ACK"}')
            except ConnectionClosed:
                pass
            finally:
                opened.discard(ws)
                closed[ws.close_code] = closed.get(ws.close_code, 0) + 1
            if stopping:
                return

    stopping = False
    tasks = [asyncio.create_task(one(t)) for t in tokens]
    # Until every connection is open or has given up (its retries spent), or the deadline.
    deadline = time.monotonic() + connect_timeout
    while len(opened) + sum(t.done() for t in tasks) < len(tokens) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    failed = [t.exception() for t in tasks if t.done()]
    report({"opened": len(opened), "failed": [repr(e)[:200] for e in failed[:3]], "closed": dict(closed),
            "retries": len(retries)})
    before = dict(closed)
    # Held until the parent closes stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stopping = True
    report({"opened": len(opened), "closed_meanwhile": {c: n - before.get(c, 0) for c, n in closed.items()
                                                        if n > before.get(c, 0)}})
    await asyncio.gather(*(ws.close() for ws in list(opened)))


def client_main(url: str, token_file: str, connect_timeout: str) -> int:
    raise_nofile()
    tokens = Path(token_file).read_text().split()
    asyncio.run(hold(url, tokens, float(connect_timeout), lambda d: print(json.dumps(d), flush=True)))
    return 0


# --- the bench -------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", "-n", type=int, default=10_000, help="idle connections (default 10,000)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--idle", type=float, default=45, help="seconds held idle before measuring (default 45: "
                        "more than a heartbeat interval)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--connect-timeout", type=float, default=600,
                        help="seconds to open them all; past it, what is open is measured (default 600)")
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(*args.client)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally below cleans up
    hard = raise_nofile()
    if args.connections + 100 > hard:
        parser.error(f"{args.connections} connections need more open files than the hard limit {hard} "
                     "(raise it: ulimit -Hn)")
    started = time.perf_counter()
    database = BenchDatabase()
    server, clients = None, []
    try:
        database.manage("shell", "-c", IDLE_SETTINGS.format(per_user=DEVICES_PER_USER))
        django_setup(database)
        t0 = time.perf_counter()
        tokens = sessions(args.connections)
        sessions_s = time.perf_counter() - t0
        server = BenchServer(database)
        daphne = server.pids[1]  # the worker: server.pid is decentcom.serve's supervising parent
        before = memory_kib(daphne)
        ws_url = server.url.replace("http://", "ws://") + "/api/v1/gateway"
        layer = "redis" if os.environ.get("REDIS_URL") else "embedded (Unix sockets)"
        print(f"decentcom idle gateway bench: {args.connections:,} connections to one daphne (pid {daphne}) "
              f"on a fresh {database.engine} database, channel layer {layer}, from {args.clients} client processes",
              flush=True)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            for c in range(args.clients):
                path = Path(tmp) / f"tokens{c}"
                path.write_text("\n".join(tokens[c::args.clients]))
                clients.append(subprocess.Popen([sys.executable, "-m", "bench.idle", "--client", ws_url, str(path),
                                                 str(args.connect_timeout)],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            reports = [json.loads(c.stdout.readline()) for c in clients]
        connect_s = time.perf_counter() - t0
        opened = sum(r["opened"] for r in reports)
        retried = sum(r["retries"] for r in reports)
        reconnected = {code: n for r in reports for code, n in r["closed"].items()}
        failures = [f for r in reports for f in r["failed"]]
        if opened == 0:
            raise RuntimeError(f"no connection opened: {reports}")
        connected = memory_kib(daphne)
        cpu0 = cpu_seconds(daphne)
        time.sleep(args.idle)
        idle_cpu = (cpu_seconds(daphne) - cpu0) / args.idle
        after = memory_kib(daphne)
        for c in clients:
            c.stdin.close()
        ends = [json.loads(c.stdout.readline()) for c in clients]
        dropped = {code: n for e in ends for code, n in e["closed_meanwhile"].items()}
        result = {
            "engine": database.engine, "channel_layer": layer, "connections": args.connections, "held": opened,
            "gave_up": failures,
            "sessions_s": sessions_s, "connect_s": connect_s, "connects_per_s": opened / connect_s,
            "rss_before_mib": before["VmRSS"] / 1024, "rss_connected_mib": connected["VmRSS"] / 1024,
            "rss_after_idle_mib": after["VmRSS"] / 1024, "hwm_mib": after["VmHWM"] / 1024,
            "kib_per_connection": (after["VmRSS"] - before["VmRSS"]) / opened,
            "connect_retries": retried, "closed_while_connecting": reconnected, "idle_cpu_percent": idle_cpu * 100, "idle_s": args.idle,
            "closed_while_idle": dropped,
        }
        ok = ("ok" if result["hwm_mib"] <= TARGET_MIB else "OVER") if opened == args.connections else (
            f"not measured: only {opened:,} of {args.connections:,} held; gave up: {failures[:2]}")
        print(f"  {opened:,} of {args.connections:,} held; sessions made in {sessions_s:.1f} s; connected in {connect_s:.1f} s "
              f"({result['connects_per_s']:,.0f}/s; {retried} handshakes retried; closed by the server meanwhile and "
              f"reconnected: {reconnected or 'none'})\n"
              f"  daphne VmRSS: {result['rss_before_mib']:.0f} MiB before, {result['rss_connected_mib']:.0f} MiB "
              f"connected, {result['rss_after_idle_mib']:.0f} MiB after {args.idle:.0f} s idle; VmHWM "
              f"{result['hwm_mib']:.0f} MiB (<= {TARGET_MIB} {ok})\n"
              f"  {result['kib_per_connection']:.1f} KiB per connection; server CPU while idle "
              f"{result['idle_cpu_percent']:.1f}% of a core (heartbeats); closed while idle: {dropped or 'none'}\n"
              f"(bench ran {time.perf_counter() - started:.0f} s)")
        if args.json:
            with open(args.json, "w") as out:
                json.dump(result, out, indent=2)
        return 0
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()
        if server is not None:
            server.stop()
        database.close()


if __name__ == "__main__":
    sys.exit(main())
