"""A fresh clone of this checkout (its tracked and new files, as a commit would
have them) with the shared virtual environment linked in, for the make targets."""
import os
import shutil
import subprocess
from pathlib import Path

from tests.live import BASE_DIR

# What a newcomer's shell has: none of the settings the test run itself uses.
_NOT_INHERITED = ("DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "REDIS_PREFIX",
                  "VAR_DIR", "ENV_FILE", "PUBLIC_URL", "MAKEFLAGS", "MAKELEVEL")


def newcomer_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in _NOT_INHERITED and not k.startswith(("DJANGO_SUPERUSER_", "PYTEST_"))}
    return {**env, **extra}


def fresh_clone(target: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=BASE_DIR,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = BASE_DIR / name
        if source.is_file() and not source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to((BASE_DIR / ".venv").resolve())
    # The shared venv is installed already: make must not reinstall it for a newer requirements.txt.
    os.utime(target / "requirements.txt", (0, 0))
    return target


def make(clone: Path, *targets: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *targets], cwd=clone, env=env or newcomer_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def manage(clone: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(clone / ".venv/bin/python"), "manage.py", *args], cwd=clone,
                          env=env or newcomer_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)
