"""`make run`: the whole system on one machine — the web tier (HTTP API, admin,
gateway: WEB_CONCURRENCY daphne processes, decentcom.serve), a Celery worker
and Celery beat — until Ctrl-C."""
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from decentcom.serve import port_in_use, web_concurrency

BASE_DIR = Path(__file__).resolve().parent.parent
LISTEN_TIMEOUT_S = 60


def wait_serving(host: str, port: int, web: subprocess.Popen) -> bool:
    """Until the web tier answers HTTP (True), or exits or takes too long (False).
    Not only a TCP connect: decentcom.serve listens before its workers have loaded Django."""
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    url = f"http://{host if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{port}/healthz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an HTTP_PROXY
    while time.monotonic() < deadline and web.poll() is None:
        try:
            opener.open(url, timeout=2).close()
            return True
        except urllib.error.HTTPError:
            return True  # it answers, whatever it says
        except OSError:
            time.sleep(0.2)
    return False


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "decentcom.settings")
    import django

    django.setup()
    from django.conf import settings

    var = Path(settings.VAR_DIR)
    (var / "celery" / "control").mkdir(parents=True, exist_ok=True)
    host, port = settings.HOST, settings.PORT
    if port_in_use(host, port):
        print(f"cannot start: {host}:{port} is already in use (another `make run`?); "
              f"stop it or choose another port: PORT=8001 make run", file=sys.stderr)
        return 1
    # Metrics of web, worker and beat add up at /metrics (decentcom.metrics); a fresh folder per run.
    metrics_dir = var / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    python = sys.executable
    web_processes = web_concurrency()
    os.environ["WEB_CONCURRENCY"] = str(web_processes)
    commands = {
        "web": [python, "-m", "decentcom.serve", "-b", host, "-p", str(port)],
        "worker": [python, "-m", "celery", "-A", "decentcom", "worker", "--loglevel=INFO",
                   "--concurrency=1", "--without-gossip", "--without-mingle"],
        "beat": [python, "-m", "celery", "-A", "decentcom", "beat", "--loglevel=INFO",
                 "--schedule", str(var / "celerybeat-schedule")],
    }
    procs = {name: subprocess.Popen(cmd, cwd=BASE_DIR) for name, cmd in commands.items()}
    base = f"http://{host}:{port}"
    web = (f"{base}/" if (Path(settings.WEB_DIST_DIR) / "index.html").exists()
           else "not built: it needs Node.js >= 20 (install it, then make run again)")

    def stop(*_):
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if wait_serving(host, port, procs["web"]):  # "is running" only once it is
        print(f"""
decentcom DM mailbox is running (database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]},
channel layer: {'redis' if settings.REDIS_URL else 'embedded (Unix sockets)'}, web processes: {web_processes})
  Web client {web}
  API        {base}/api/v1/
  API docs   {base}/api/v1/docs/   (OpenAPI schema: {base}/api/v1/schema/)
  Admin      {base}/admin/         (create a login: make superuser)
  Gateway    ws://{host}:{port}/api/v1/gateway
Ctrl-C stops everything.
""", flush=True)
    code = 0
    try:
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        for name, proc in procs.items():
            if proc.poll() is not None and proc.returncode not in (0, -signal.SIGTERM):
                print(f"{name} exited with {proc.returncode}", file=sys.stderr)
                code = 1
    finally:
        stop()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return code


if __name__ == "__main__":
    sys.exit(main())
