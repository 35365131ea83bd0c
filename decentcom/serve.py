"""The web tier: WEB_CONCURRENCY daphne processes sharing one listening socket.

    python -m decentcom.serve [-b HOST] [-p PORT]

daphne runs one process (one core). Here the parent binds one SO_REUSEPORT
socket per worker on the same address and starts each worker with its own
inherited as systemd would hand it over (LISTEN_FDS, Twisted's `systemd:`
endpoint); the kernel spreads new connections evenly over the sockets. (One
shared socket does not: Twisted accepts many connections per wake-up, so a
burst lands on one worker.) Gateway events cross processes through the channel layer. The parent
only supervises: a worker that dies takes the tier down, for the platform (or
`make run`) to restart, rather than serving on with fewer cores unnoticed."""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time

APPLICATION = "decentcom.asgi:application"
LISTEN_FD = 3  # SD_LISTEN_FDS_START: where systemd, and so Twisted, expects it


def web_concurrency() -> int:
    value = os.environ.get("WEB_CONCURRENCY", "").strip()
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"WEB_CONCURRENCY must be a positive integer, not {value!r}")
    return int(value)


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens there already. Without SO_REUSEPORT: the
    workers' sockets would otherwise share the port with another server of ours.
    SO_REUSEADDR, so a port in TIME_WAIT is not "in use"."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def worker(fd: int, family: str) -> None:
    """In a worker: the inherited socket at fd 3 and the variables Twisted reads
    at import time, then daphne's own command line."""
    if fd != LISTEN_FD:
        os.dup2(fd, LISTEN_FD)
        os.close(fd)
    os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="web")
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(["-e", f"systemd:domain={family}:index=0", APPLICATION])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-b", "--bind", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--family", default="INET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_fd is not None:
        worker(args.worker_fd, args.family)
        return 0
    count = web_concurrency()
    if port_in_use(args.bind, args.port):
        raise SystemExit(f"decentcom.serve: {args.bind}:{args.port} is already in use")
    # All bound before any worker starts.
    socks = [listen(args.bind, args.port) for _ in range(count)]
    family = "INET6" if socks[0].family == socket.AF_INET6 else "INET"
    workers = [subprocess.Popen([sys.executable, "-m", "decentcom.serve", "--worker-fd", str(sock.fileno()),
                                 "--family", family], pass_fds=(sock.fileno(),)) for sock in socks]
    for sock in socks:
        sock.close()  # the workers hold them now

    def stop(*_):
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    try:
        while all(p.poll() is None for p in workers):
            time.sleep(0.5)
        code = next((p.returncode for p in workers if p.returncode not in (None, 0, -signal.SIGTERM)), 0)
        if code:
            print(f"a web worker exited with {code}; stopping the others", file=sys.stderr)
    finally:
        stop()
        for proc in workers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 1 if code else 0


if __name__ == "__main__":
    sys.exit(main())
