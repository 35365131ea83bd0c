"""The purge runs in a real Celery worker process, fed through the real broker
(Redis when REDIS_URL is set, the embedded filesystem broker otherwise)."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.live import BASE_DIR

pytestmark = pytest.mark.live

COUNT_EXPIRED = ("from devices.models import Challenge; "
                 "print(Challenge.objects.filter(pubkey='celery-test').count())")
ADD_EXPIRED = ("import datetime as dt; from django.utils import timezone; from devices.models import Challenge; "
               "Challenge.objects.create(challenge='c1', pubkey='celery-test', "
               "expires_at=timezone.now() - dt.timedelta(minutes=1))")
SEND_TASK = "from decentcom.celery import app; app.send_task('dms.tasks.dm_purge_expired_task')"


def test_worker_runs_the_purge_task(live_database):
    Path(live_database.tmp.name, "celery", "control").mkdir(parents=True, exist_ok=True)
    live_database.manage("shell", "-v", "0", "-c", ADD_EXPIRED)
    assert live_database.manage("shell", "-v", "0", "-c", COUNT_EXPIRED).strip() == "1"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "decentcom", "worker", "--loglevel=INFO", "--concurrency=1",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=BASE_DIR, env=live_database.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        subprocess.run([sys.executable, "-c", "import django; django.setup(); " + SEND_TASK],
                       cwd=BASE_DIR, env={**live_database.env, "DJANGO_SETTINGS_MODULE": "decentcom.settings"},
                       check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if live_database.manage("shell", "-v", "0", "-c", COUNT_EXPIRED).strip() == "0":
                break
            time.sleep(0.5)
        else:
            pytest.fail("the worker did not purge within 30 s")
    finally:
        worker.terminate()
        output = worker.communicate(timeout=20)[0].decode(errors="replace")
    assert "dms.tasks.dm_purge_expired_task" in output and "succeeded" in output
