"""Server-size benchmark (issue 13): the hot paths on an empty database, then
on one filled by set-based SQL (bench/fill.py) with 100,000 users (a device
each), 100,000 conversations and 1,000,000 pending deliveries; then the purge
of 100,000 expired messages against a raw SQL DELETE of the same rows.

    python -m bench.scale                     # a fresh SQLite database of its own
    DATABASE_URL=postgres://… REDIS_URL=redis://… python -m bench.scale
                                              # a fresh PostgreSQL database, Redis

In-process, on the bench's own database (production settings, as
bench/mailbox.py's query counts): Django's test client, the same views and
queries. Each figure is the median of N calls of CPU ms (this process: the
view, the ORM and, on SQLite, the database) and wall ms; each phase uses
fresh devices and a fresh conversation so both phases start alike."""
import argparse
import json
import signal
import statistics
import sys
import time

from bench.fill import fill_server
from bench.mailbox import (BENCH_SETTINGS, SYNC_LIMIT, InProcess, build_sends, ciphertext_len, django_setup,
                           new_devices, purge)
from bench.server import BenchDatabase

TARGET_RATIO = 1.20  # full / empty
TARGET_PURGE = 0.7  # service speed / raw SQL speed
CONVERSATIONS_PER_USER = 30  # the fixture sender's, for a list of more than one page
LIST_PAGE = 20


class Api(InProcess):
    def get(self, path: str, device):
        response = self.client.get(path, HTTP_AUTHORIZATION=f"Bearer {device.token}")
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.content[:300]!r}")
        return json.loads(response.content)


def timed(call, reps: int) -> dict:
    """Median CPU and wall ms of `reps` calls, and the queries of the last one."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    cpu, wall = [], []
    for rep in range(reps):
        if rep == reps - 1:
            with CaptureQueriesContext(connection) as captured:
                c0, w0 = time.process_time(), time.perf_counter()
                call(rep)
                c1, w1 = time.process_time(), time.perf_counter()
            queries = len(captured.captured_queries)
        else:
            c0, w0 = time.process_time(), time.perf_counter()
            call(rep)
            c1, w1 = time.process_time(), time.perf_counter()
        cpu.append((c1 - c0) * 1000)
        wall.append((w1 - w0) * 1000)
    return {"cpu_ms": statistics.median(cpu), "wall_ms": statistics.median(wall), "queries": queries, "n": reps}


def phase(args) -> tuple[dict, dict]:
    """Figures of send, sync, ACK, the directory and the conversation list; and the phase's fixture."""
    api = Api()
    sender, recipients = new_devices(args.recipients)
    for device in [sender, *recipients]:
        api.login(device)
    participants = [r.user_id for r in recipients]
    conv = api.post("/api/v1/dms/conversations", {"participants": participants}, sender)
    for n in range(CONVERSATIONS_PER_USER - 1):  # more of the sender's, for the paged list
        api.post("/api/v1/dms/conversations", {"participants": participants[:1 + n % len(participants)]}, sender)
    warm, drained = 20, SYNC_LIMIT * args.drain_reps
    bodies = iter(build_sends(sender, conv, [r.id for r in recipients], warm + args.reps + drained, args.size))
    for _ in range(warm):  # last_seen_at recorded, statements and caches warm
        api.post("/api/v1/dms/send", next(bodies)[1], sender)
    out = {"send": timed(lambda _: api.post("/api/v1/dms/send", next(bodies)[1], sender), args.reps)}
    for _ in range(drained):  # untimed: the mailbox the drain reads
        api.post("/api/v1/dms/send", next(bodies)[1], sender)
    reader = recipients[0]
    page: dict = {}

    def sync(_):
        page.update(api.post("/api/v1/dms/sync", {"limit": SYNC_LIMIT}, reader))

    def ack(_):
        api.post("/api/v1/dms/ack", {"message_ids": [m["message_id"] for m in page["messages"]]}, reader)

    syncs, acks = [], []
    for _ in range(args.drain_reps):  # sync a page of 500, then ACK it: the mailbox drains by pages
        syncs.append(timed(sync, 1))
        if len(page["messages"]) != SYNC_LIMIT:
            raise RuntimeError(f"sync gave {len(page['messages'])} messages, expected {SYNC_LIMIT}")
        acks.append(timed(ack, 1))
    out["sync"], out["ack"] = merge(syncs), merge(acks)
    out["directory"] = timed(lambda _: api.get(f"/api/v1/users/{recipients[0].user_id}/devices", sender), args.reps)
    first = api.get(f"/api/v1/dms/conversations?limit={LIST_PAGE}", sender)
    if not first["has_more"]:
        raise RuntimeError("the conversation list has one page only")
    out["conversations"] = timed(  # the second page: the cursor path
        lambda _: api.get(f"/api/v1/dms/conversations?limit={LIST_PAGE}&after={first['cursor']}", sender), args.reps)
    return out, {"conv": conv, "sender": sender, "recipients": recipients}


def merge(runs: list[dict]) -> dict:
    return {"cpu_ms": statistics.median(r["cpu_ms"] for r in runs),
            "wall_ms": statistics.median(r["wall_ms"] for r in runs), "queries": runs[-1]["queries"], "n": len(runs)}


OPS = [("send", "send ({k} recipients)"), ("sync", "sync 500"), ("ack", "ACK 500"),
       ("directory", "directory (a user's devices)"), ("conversations", f"conversation list, page 2 of {LIST_PAGE}")]


def table(r: dict) -> str:
    lines = [f"{'operation':<34} {'empty cpu/wall ms':>18} {'full cpu/wall ms':>18} {'ratio cpu/wall':>15} "
             f"{'queries':>8}  target", "-" * 112]
    for key, name in OPS:
        e, f, ratio = r["empty"][key], r["full"][key], r["ratio"][key]
        ok = "ok" if max(ratio["cpu"], ratio["wall"]) <= TARGET_RATIO else "OVER"
        queries = f"{e['queries']}/{f['queries']}"
        lines.append(f"{name.format(k=r['recipients']):<34} {e['cpu_ms']:>8.2f} /{e['wall_ms']:>8.2f} "
                     f"{f['cpu_ms']:>8.2f} /{f['wall_ms']:>8.2f} {ratio['cpu']:>6.2f} /{ratio['wall']:>6.2f} "
                     f"{queries:>8}  <= {TARGET_RATIO:.2f} {ok}")
    p = r.get("purge")
    if p:
        ok = "ok" if p["ratio"] >= TARGET_PURGE else "UNDER"
        lines += ["",
                  f"purge of {p['rows']:,} expired messages x {p['deliveries_per_row']} deliveries, on the full database:",
                  f"  service {p['service_s']:.2f} s ({p['service_rows_per_s']:,.0f} rows/s), raw SQL DELETE "
                  f"{p['raw_s']:.2f} s ({p['raw_rows_per_s']:,.0f} rows/s): service/raw speed {p['ratio']:.2f} "
                  f"(>= {TARGET_PURGE} {ok})"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000, help="filler users, a device each (default 100,000)")
    parser.add_argument("--conversations", type=int, default=100_000, help="filler conversations (default 100,000)")
    parser.add_argument("--deliveries", type=int, default=1_000_000,
                        help="filler pending deliveries, two per message (default 1,000,000)")
    parser.add_argument("--recipients", "-K", type=int, default=4, help="recipient devices of a send (default 4)")
    parser.add_argument("--size", type=int, default=1024, help="plaintext bytes of the timed sends (default 1024)")
    parser.add_argument("--reps", "-N", type=int, default=50,
                        help="calls per figure of send, directory and list (default 50)")
    parser.add_argument("--drain-reps", type=int, default=5, help="pages of 500 synced and ACKed (default 5)")
    parser.add_argument("--purge-rows", type=int, default=100_000, help="expired messages to purge (default 100,000)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--timeout", type=int, default=1800, help="stop after this many seconds")
    args = parser.parse_args()
    if min(args.reps, args.drain_reps, args.recipients, args.users) < 1:
        parser.error("--reps, --drain-reps, --recipients and --users must be positive")

    def on_timeout(*_):
        raise TimeoutError(f"the bench ran over {args.timeout} s")

    signal.signal(signal.SIGALRM, on_timeout)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.alarm(args.timeout)
    started = time.perf_counter()
    database = BenchDatabase()
    try:
        database.manage("shell", "-c", BENCH_SETTINGS.format(
            k=args.recipients, size=ciphertext_len(args.size),
            request=2 * ciphertext_len(args.size) + 200 * args.recipients))
        django_setup(database)
        from django.utils import timezone

        print(f"decentcom scale bench: in-process on a fresh {database.engine} database, DEBUG={database.env['DEBUG']}; "
              f"median of N={args.reps} (sync/ACK: {args.drain_reps} pages); CPU is this process's", flush=True)
        result: dict = {"engine": database.engine, "recipients": args.recipients, "reps": args.reps,
                        "drain_reps": args.drain_reps}
        # A first round, not counted: imports, statement caches and the first requests weigh on it.
        phase(argparse.Namespace(**{**vars(args), "reps": 10, "drain_reps": 1}))
        result["empty"], _ = phase(args)
        t0 = time.perf_counter()
        result["filled"] = fill_server(users=args.users, conversations=args.conversations,
                                       deliveries=args.deliveries, now=timezone.now())
        result["fill_s"] = time.perf_counter() - t0
        print(f"filled in {result['fill_s']:.0f} s: {result['filled']}", flush=True)
        result["full"], fixture = phase(args)
        result["ratio"] = {key: {"cpu": result["full"][key]["cpu_ms"] / result["empty"][key]["cpu_ms"],
                                 "wall": result["full"][key]["wall_ms"] / result["empty"][key]["wall_ms"]}
                           for key, _ in OPS}
        if args.purge_rows:
            result["purge"] = purge(args, fixture)
        result["bench_seconds"] = time.perf_counter() - started
        print(table(result))
        print(f"(bench ran {result['bench_seconds']:.0f} s)")
        if args.json:
            with open(args.json, "w") as out:
                json.dump(result, out, indent=2)
        return 0
    finally:
        signal.alarm(0)
        database.close()


if __name__ == "__main__":
    sys.exit(main())
