"""`make run`: the whole system on one machine — daphne (HTTP API, admin,
gateway), a Celery worker and Celery beat — until Ctrl-C."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "decentcom.settings")
    import django

    django.setup()
    from django.conf import settings

    var = Path(settings.VAR_DIR)
    (var / "celery" / "control").mkdir(parents=True, exist_ok=True)
    host, port = settings.HOST, settings.PORT
    python = sys.executable
    commands = {
        "web": [python, "-m", "daphne", "-b", host, "-p", str(port), "decentcom.asgi:application"],
        "worker": [python, "-m", "celery", "-A", "decentcom", "worker", "--loglevel=INFO",
                   "--concurrency=1", "--without-gossip", "--without-mingle"],
        "beat": [python, "-m", "celery", "-A", "decentcom", "beat", "--loglevel=INFO",
                 "--schedule", str(var / "celerybeat-schedule")],
    }
    procs = {name: subprocess.Popen(cmd, cwd=BASE_DIR) for name, cmd in commands.items()}
    base = f"http://{host}:{port}"
    web = (f"{base}/" if (Path(settings.WEB_DIST_DIR) / "index.html").exists()
           else "not built: it needs Node.js >= 20 (install it, then make run again)")
    print(f"""
decentcom DM mailbox is running (database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]},
channel layer: {'redis' if settings.REDIS_URL else 'in-memory'})
  Web client {web}
  API        {base}/api/v1/
  API docs   {base}/api/v1/docs/   (OpenAPI schema: {base}/api/v1/schema/)
  Admin      {base}/admin/         (create a login: make superuser)
  Gateway    ws://{host}:{port}/api/v1/gateway
Ctrl-C stops everything.
""", flush=True)

    def stop(*_):
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
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
