"""Issue 14's first day, on a fresh clone through `make`: manage.py works
outside make (the .env that make writes), `make superuser` from a script,
celery beat's schedule under VAR_DIR."""
import os
import stat
import subprocess
import time

import pytest

from tests.ops.fresh_clone import fresh_clone, make, manage, newcomer_env

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    clone = fresh_clone(tmp_path_factory.mktemp("clone"))
    result = make(clone, "migrate")
    assert result.returncode == 0, result.stdout + result.stderr
    return clone


def test_make_writes_an_owner_only_env_file_for_development(clone):
    env_file = (clone / ".env").read_text()
    assert "DEBUG=1" in env_file.splitlines()
    key = next(line for line in env_file.splitlines() if line.startswith("SECRET_KEY="))
    assert len(key) > len("SECRET_KEY=") + 40
    assert stat.S_IMODE((clone / ".env").stat().st_mode) == 0o600
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=os.path.dirname(__file__))
    assert ignored.returncode == 0  # never committed


def test_manage_py_works_outside_make(clone):
    """The README's commands, without DEBUG in the environment: they crashed with a 30-line traceback."""
    for args in (["check"], ["purge_dms"], ["purge_dms", "--dry-run"]):
        result = manage(clone, *args)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "purge as of" in manage(clone, "purge_dms").stdout


def test_without_env_file_or_secret_key_manage_py_fails_in_one_clear_line(clone):
    result = manage(clone, "check", env=newcomer_env(ENV_FILE=str(clone / "no-such.env")))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "SECRET_KEY must be set" in result.stderr and "make setup" in result.stderr


def test_real_environment_wins_over_env_file(clone):
    result = manage(clone, "shell", "-v", "0", "-c", "from django.conf import settings; print(settings.DEBUG)",
                    env=newcomer_env(DEBUG="0", SECRET_KEY="x" * 50, PUBLIC_URL="https://dm.example.org"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def _superusers(clone) -> str:
    code = ("from devices.models import User; "
            "print(sorted(User.objects.filter(is_superuser=True).values_list('username', flat=True)))")
    return manage(clone, "shell", "-v", "0", "-c", code).stdout.strip()


def test_make_superuser_from_a_script(clone):
    env = newcomer_env(DJANGO_SUPERUSER_USERNAME="ops", DJANGO_SUPERUSER_PASSWORD="a long pass phrase 42",
                       DJANGO_SUPERUSER_EMAIL="ops@example.org")
    result = make(clone, "superuser", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _superusers(clone) == "['ops']"
    check = ("from devices.models import User; "
             "print(User.objects.get(username='ops').check_password('a long pass phrase 42'))")
    assert manage(clone, "shell", "-v", "0", "-c", check).stdout.strip() == "True"
    # the same again creates nothing: loud, not a silent success
    again = make(clone, "superuser", env=env)
    assert again.returncode != 0 and "already taken" in again.stderr


def test_make_superuser_that_creates_nothing_fails_loudly(clone):
    """Without a terminal Django skipped the user and make reported success."""
    result = make(clone, "superuser")
    assert result.returncode != 0
    assert "DJANGO_SUPERUSER_USERNAME and DJANGO_SUPERUSER_PASSWORD" in result.stderr
    no_password = make(clone, "superuser", env=newcomer_env(DJANGO_SUPERUSER_USERNAME="nopass"))
    assert no_password.returncode != 0 and "DJANGO_SUPERUSER_PASSWORD must be set" in no_password.stderr
    assert "nopass" not in _superusers(clone)


def test_celery_beat_keeps_its_schedule_under_var_dir(clone):
    """The Procfile's `beat` wrote celerybeat-schedule.* into the repository root."""
    beat = subprocess.Popen([str(clone / ".venv/bin/python"), "-m", "celery", "-A", "decentcom", "beat",
                             "--loglevel=INFO"], cwd=clone, env=newcomer_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not list((clone / "var").glob("celerybeat-schedule*")) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        beat.terminate()
        beat.wait(timeout=20)
    assert list((clone / "var").glob("celerybeat-schedule*"))
    assert not list(clone.glob("celerybeat-schedule*"))
