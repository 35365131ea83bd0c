"""Gateway benchmark: with N devices connected, how long from a `send`'s
response to the recipient's DM_NOTIFY, and how much server memory each
connection costs.

    python -m bench.notify                           # N = 100 and 1000, a fresh server for each
    python -m bench.notify --devices 100 --messages 500
    python -m bench.notify --url http://127.0.0.1:8000 --pid 1234   # a running server (loopback only;
                                                     # its rate limits must allow N logins and the sends)

Each device belongs to a user of its own; devices are paired in direct
conversations. Messages are real signed sends with key wraps, one at a time,
each to one recipient; every device stays connected and answers heartbeats.
The server runs as `make run` runs it (daphne; SQLite and the embedded
channel layer by default, PostgreSQL/Redis when DATABASE_URL/REDIS_URL are
set). Memory is the growth of the daphne process's VmRSS from before the N
connections to after them. Every wait is bounded; the run stops by itself."""
import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.load import SETTINGS_FOR_LOAD, Device, build_send, new_user_devices
from dmclient import protocol

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
NOTIFY_WAIT_S = 2
RUN_LIMIT_S = 600


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Connection:
    """One device's gateway connection; records when each DM_NOTIFY arrives."""

    def __init__(self, device: Device, ws, arrivals: dict):
        self.device, self.ws, self.arrivals = device, ws, arrivals
        self.notified: list[str] = []
        self.close_code = None
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame["op"] == "DM_NOTIFY":
                    message_id = frame["d"]["message_id"]
                    self.arrivals.setdefault(message_id, (time.monotonic(), self.device.id))
                    self.notified.append(message_id)
                elif frame["op"] == "HEARTBEAT":
                    await self.ws.send(json.dumps({"op": "HEARTBEAT_ACK", "d": {}}))
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code

    async def close(self):
        await self.ws.close()
        await self.task


async def open_connection(ws_url: str, device: Device, arrivals: dict) -> Connection:
    ws = await connect(ws_url, additional_headers=device.headers, max_queue=None, open_timeout=30)
    hello = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert hello["op"] == "HELLO", hello
    return Connection(device, ws, arrivals)


async def run_one(n: int, messages: int, url: str, pid: int | None, http_connections: int) -> dict:
    origin = protocol.origin(url)
    ws_url = url.replace("http", "ws", 1) + "/api/v1/gateway"
    limits = httpx.Limits(max_connections=http_connections)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        started = time.monotonic()
        devices = [new_user_devices(http, 1)[0] for _ in range(n)]
        await asyncio.gather(*(d.login(origin) for d in devices))
        pairs = []
        for a, b in zip(devices[0::2], devices[1::2]):
            response = await http.post("/api/v1/dms/conversations", headers=a.headers,
                                       json={"participants": [b.user_id]})
            response.raise_for_status()
            pairs.append((a, b, response.json()))
        setup_s = time.monotonic() - started

        arrivals: dict[str, tuple[float, str]] = {}
        gate = asyncio.Semaphore(50)

        async def opened(device):
            async with gate:
                return await open_connection(ws_url, device, arrivals)

        warm = await asyncio.gather(*(opened(d) for d in devices[:10]))  # first-use imports and caches
        await asyncio.gather(*(c.close() for c in warm))
        await asyncio.sleep(1)
        rss_before = rss_kib(pid) if pid else None
        started = time.monotonic()
        conns = await asyncio.gather(*(opened(d) for d in devices))
        connect_s = time.monotonic() - started
        by_device = {c.device.id: c for c in conns}
        await asyncio.sleep(1)
        rss_after = rss_kib(pid) if pid else None

        after_response, after_request, missing = [], [], 0
        expected = {}
        for k in range(messages):
            a, b, conv = pairs[k % len(pairs)]
            sender, recipient = (a, b) if (k // len(pairs)) % 2 == 0 else (b, a)
            body = build_send(sender, conv, [recipient.id], os.urandom(32))
            expected[body["message_id"]] = recipient.id
            requested = time.monotonic()
            response = await http.post("/api/v1/dms/send", headers=sender.headers, json=body)
            answered = time.monotonic()
            if response.status_code != 201:
                raise RuntimeError(f"send {response.status_code}: {response.text}")
            deadline = answered + NOTIFY_WAIT_S
            listening = by_device[recipient.id].task
            while body["message_id"] not in arrivals and time.monotonic() < deadline and not listening.done():
                await asyncio.sleep(0.0005)
            if body["message_id"] not in arrivals:
                missing += 1
                continue
            arrived = arrivals[body["message_id"]][0]
            after_response.append((arrived - answered) * 1000)
            after_request.append((arrived - requested) * 1000)

        await asyncio.sleep(0.5)  # a stray notification to a wrong device would show up here
        wrong = sum(1 for c in conns for m in c.notified if expected.get(m) != c.device.id)
        closed_early = sum(1 for c in conns if c.close_code is not None)
        await asyncio.gather(*(c.close() for c in conns))
    return {
        "n": n, "messages": messages, "setup_s": setup_s, "connect_s": connect_s,
        "rss_before": rss_before, "rss_after": rss_after, "after_response": after_response,
        "after_request": after_request, "missing": missing, "wrong": wrong, "closed_early": closed_early,
    }


def report(r: dict) -> None:
    print(f"N={r['n']}: setup {r['setup_s']:.1f} s ({r['n']} logins, {r['n'] // 2} conversations), "
          f"{r['n']} gateway connections in {r['connect_s']:.1f} s")
    if r["rss_before"] is not None:
        per = (r["rss_after"] - r["rss_before"]) / r["n"]
        print(f"  server RSS {r['rss_before'] / 1024:.1f} MiB -> {r['rss_after'] / 1024:.1f} MiB: "
              f"{per:.1f} KiB per connection")
    else:
        print("  server RSS: n/a (give --pid of the daphne process)")
    a, q = r["after_response"], r["after_request"]
    if a:
        print(f"  send response -> DM_NOTIFY: p50 {pct(a, 50):.2f} ms  p99 {pct(a, 99):.2f} ms  "
              f"(negative: the notification beat the response)")
        print(f"  send request  -> DM_NOTIFY: p50 {pct(q, 50):.2f} ms  p99 {pct(q, 99):.2f} ms  "
              f"mean {statistics.fmean(q):.2f} ms")
    print(f"  notifications: {r['messages']} sent, {len(a)} arrived at their recipient, "
          f"{r['missing']} missing (not within {NOTIFY_WAIT_S} s, or closed), {r['wrong']} at a wrong device; "
          f"{r['closed_early']} connections closed early")


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so `finally` stops the server and drops its database
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", default=[100, 1000], help="N: connected devices")
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--url", help="a running server on this machine (default: start one per N)")
    parser.add_argument("--pid", type=int, help="with --url: the daphne process, for its memory")
    parser.add_argument("--connections", type=int, default=16, help="HTTP connections in flight at most")
    args = parser.parse_args()
    if any(n < 2 or n % 2 for n in args.devices):
        parser.error("--devices: even numbers of at least 2")
    if args.url and urlsplit(args.url).hostname not in LOOPBACK:
        parser.error("--url: loopback only")

    def bounded(n: int, url: str, pid: int | None) -> dict:
        return asyncio.run(asyncio.wait_for(run_one(n, args.messages, url, pid, args.connections), RUN_LIMIT_S))

    failed = False
    for n in args.devices:
        if args.url:
            result = bounded(n, args.url.rstrip("/"), args.pid)
        else:
            sys.path.insert(0, os.getcwd())
            from tests.live import LiveDatabase, LiveServer

            database = LiveDatabase()
            try:
                database.manage("shell", "-v", "0", "-c", SETTINGS_FOR_LOAD)
                server = LiveServer(database)
                try:
                    print(f"server: daphne pid {server.proc.pid} on {server.url}, database "
                          f"{database.url.split(':')[0]}, channel layer "
                          f"{'redis' if os.environ.get('REDIS_URL') else 'embedded'} (rate limits off)")
                    result = bounded(n, server.url, server.proc.pid)
                finally:
                    server.stop()
            finally:
                database.close()
        report(result)
        failed |= bool(result["missing"] or result["wrong"] or result["closed_early"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
