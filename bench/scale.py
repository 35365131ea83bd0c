"""Server-size benchmark (issue 13): the hot paths on an empty database and
on one filled by set-based SQL (bench/fill.py) with 100,000 users (a device
each), 100,000 conversations and 1,000,000 pending deliveries; then the purge
of 100,000 expired messages on the full one against a raw SQL DELETE of the
same rows.

    python -m bench.scale                     # two fresh SQLite databases of its own
    DATABASE_URL=postgres://… REDIS_URL=redis://… python -m bench.scale
                                              # two fresh PostgreSQL databases, Redis

In-process, on the bench's own databases (production settings, as
bench/mailbox.py's query counts): Django's test client, the same views and
queries. Both databases are open at once and each call goes to one and then
the other, so load from elsewhere on the machine weighs on both alike. Each
figure is the median of N calls of CPU ms (this process: the view, the ORM
and, on SQLite, the database) and wall ms; each database has its own fresh
devices and conversations, in the same state when timed."""
import argparse
import json
import signal
import statistics
import sys
import time

from bench.fill import fill_server
from bench.mailbox import (BENCH_SETTINGS, SYNC_LIMIT, InProcess, build_sends, ciphertext_len, django_setup,
                           new_devices, purge)
from bench.server import BenchDatabase, stop_after

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


class Databases:
    """The empty and the full database open side by side in this process, and
    the calls sent to each in turn: both see the same machine (whatever else
    runs on it meanwhile) and the same warm process. `use` points Django's
    default connection at one of them."""

    NAMES = ("empty", "full")

    def __init__(self, empty: BenchDatabase, full: BenchDatabase):
        from django.db import connections

        connections.settings["full"] = {**connections.settings["default"],
                                        "NAME": full.pg_name or f"{full.tmp.name}/db.sqlite3"}
        self.wrappers = {"empty": connections["default"], "full": connections["full"]}

    def use(self, name: str) -> None:
        from django.db import connections

        connections["default"] = self.wrappers[name]

    def in_turn(self, rep: int) -> tuple[str, str]:
        """Which goes first alternates, so neither always follows the other."""
        return self.NAMES if rep % 2 == 0 else self.NAMES[::-1]


def call_timed(call) -> tuple[float, float, int]:
    """CPU ms, wall ms and the queries of one call."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        c0, w0 = time.process_time(), time.perf_counter()
        call()
        c1, w1 = time.process_time(), time.perf_counter()
    return (c1 - c0) * 1000, (w1 - w0) * 1000, len(captured.captured_queries)


def summary(samples: list[tuple[float, float, int]]) -> dict:
    return {"cpu_ms": statistics.median(s[0] for s in samples), "wall_ms": statistics.median(s[1] for s in samples),
            "queries": samples[-1][2], "n": len(samples)}


def prepare(api: Api, args) -> dict:
    """Fresh devices and conversations on the current database, the sends to time, warm statements."""
    sender, recipients = new_devices(args.recipients)
    for device in [sender, *recipients]:
        api.login(device)
    participants = [r.user_id for r in recipients]
    conv = api.post("/api/v1/dms/conversations", {"participants": participants}, sender)
    for n in range(CONVERSATIONS_PER_USER - 1):  # more of the sender's, for the paged list
        api.post("/api/v1/dms/conversations", {"participants": participants[:1 + n % len(participants)]}, sender)
    first = api.get(f"/api/v1/dms/conversations?limit={LIST_PAGE}", sender)
    if not first["has_more"]:
        raise RuntimeError("the conversation list has one page only")
    warm = 20
    bodies = iter(build_sends(sender, conv, [r.id for r in recipients], warm + args.reps, args.size))
    drain = build_sends(sender, conv, [r.id for r in recipients], SYNC_LIMIT * args.drain_reps, args.size)
    for _ in range(warm):  # last_seen_at recorded, statements and caches warm
        api.post("/api/v1/dms/send", next(bodies)[1], sender)
    return {"conv": conv, "sender": sender, "recipients": recipients, "bodies": bodies, "drain": drain,
            "list_cursor": first["cursor"], "page": {}}


def measure(dbs: Databases, api: Api, fixtures: dict, args) -> dict:
    """Each operation on both databases in turn: {"empty": {op: figures}, "full": {...}}."""
    samples: dict = {name: {} for name in dbs.NAMES}

    def both(op: str, call, reps: int) -> None:
        for rep in range(reps):
            for name in dbs.in_turn(rep):
                dbs.use(name)
                samples[name].setdefault(op, []).append(call_timed(lambda: call(fixtures[name])))

    both("send", lambda fx: api.post("/api/v1/dms/send", next(fx["bodies"])[1], fx["sender"]), args.reps)
    for name in dbs.NAMES:  # untimed: the mailbox the drain reads
        dbs.use(name)
        for _, body in fixtures[name]["drain"]:
            api.post("/api/v1/dms/send", body, fixtures[name]["sender"])

    def sync(fx):
        fx["page"] = api.post("/api/v1/dms/sync", {"limit": SYNC_LIMIT}, fx["recipients"][0])
        if len(fx["page"]["messages"]) != SYNC_LIMIT:
            raise RuntimeError(f"sync gave {len(fx['page']['messages'])} messages, expected {SYNC_LIMIT}")

    def ack(fx):
        api.post("/api/v1/dms/ack", {"message_ids": [m["message_id"] for m in fx["page"]["messages"]]},
                 fx["recipients"][0])

    for rep in range(args.drain_reps):  # a page of 500 synced, then ACKed: the mailbox drains by pages
        for name in dbs.in_turn(rep):
            dbs.use(name)
            samples[name].setdefault("sync", []).append(call_timed(lambda: sync(fixtures[name])))
            samples[name].setdefault("ack", []).append(call_timed(lambda: ack(fixtures[name])))
    both("directory", lambda fx: api.get(f"/api/v1/users/{fx['recipients'][0].user_id}/devices", fx["sender"]),
         args.reps)
    both("conversations", lambda fx: api.get(  # the second page: the cursor path
        f"/api/v1/dms/conversations?limit={LIST_PAGE}&after={fx['list_cursor']}", fx["sender"]), args.reps)
    return {name: {op: summary(s) for op, s in ops.items()} for name, ops in samples.items()}


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

    stop_after(args.timeout)
    started = time.perf_counter()
    databases = []
    try:
        for _ in Databases.NAMES:
            databases.append(BenchDatabase())
            databases[-1].manage("shell", "-c", BENCH_SETTINGS.format(
                k=args.recipients, size=ciphertext_len(args.size),
                request=2 * ciphertext_len(args.size) + 200 * args.recipients))
        django_setup(databases[0])
        dbs = Databases(*databases)
        from django.utils import timezone

        engine = databases[0].engine
        print(f"decentcom scale bench: in-process on two fresh {engine} databases, an empty and a full one, called "
              f"in turn; DEBUG={databases[0].env['DEBUG']}; median of N={args.reps} (sync/ACK: {args.drain_reps} "
              "pages); CPU is this process's", flush=True)
        result: dict = {"engine": engine, "recipients": args.recipients, "reps": args.reps,
                        "drain_reps": args.drain_reps}
        dbs.use("full")
        t0 = time.perf_counter()
        result["filled"] = fill_server(users=args.users, conversations=args.conversations,
                                       deliveries=args.deliveries, now=timezone.now())
        result["fill_s"] = time.perf_counter() - t0
        print(f"filled in {result['fill_s']:.0f} s: {result['filled']}", flush=True)
        api = Api()
        fixtures = {}
        for name in dbs.NAMES:
            dbs.use(name)
            fixtures[name] = prepare(api, args)
        from devices.models import User

        users = {}
        for name in dbs.NAMES:
            dbs.use(name)
            users[name] = User.objects.count()
        if not users["empty"] < args.users <= users["full"]:
            raise RuntimeError(f"the calls do not reach the database meant: {users} users")
        result.update(measure(dbs, api, fixtures, args))
        result["ratio"] = {key: {"cpu": result["full"][key]["cpu_ms"] / result["empty"][key]["cpu_ms"],
                                 "wall": result["full"][key]["wall_ms"] / result["empty"][key]["wall_ms"]}
                           for key, _ in OPS}
        if args.purge_rows:
            dbs.use("full")
            result["purge"] = purge(args, fixtures["full"])
        result["bench_seconds"] = time.perf_counter() - started
        print(table(result))
        print(f"(bench ran {result['bench_seconds']:.0f} s)")
        if args.json:
            with open(args.json, "w") as out:
                json.dump(result, out, indent=2)
        return 0
    finally:
        signal.alarm(0)
        from django.db import connections

        connections.close_all()  # before PostgreSQL drops the databases
        for database in databases:
            database.close()

if __name__ == "__main__":
    sys.exit(main())
