"""The development `.env`, the twelve-factor way: settings come from the
environment, and a checkout may keep a `.env` file (KEY=VALUE lines) that
fills in what the environment does not set. `make` writes one on first use
with DEBUG=1 and a generated SECRET_KEY, so `manage.py`, daphne and Celery
work outside `make` too. It is gitignored; production has no `.env` and sets
real environment variables, so it stays safe by default (DEBUG off).

`ENV_FILE` names another file; set it empty to read none."""
import os
import secrets
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def env_file_path() -> Path | None:
    value = os.environ.get("ENV_FILE")
    if value is None:
        return BASE_DIR / ".env"
    return Path(value) if value else None


def env_file_load(path: Path | None) -> None:
    """Put the file's variables into os.environ; a variable already set wins."""
    if path is None or not path.is_file():
        return
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = (part.strip() for part in line.removeprefix("export ").split("=", 1))
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ.setdefault(name, value)


def env_file_create(path: Path) -> bool:
    """Write a development `.env` (owner-only: it holds the key) unless one exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write("# Development settings for this checkout, written by `make` (gitignored).\n"
                "# Production has no .env: it sets real environment variables (README).\n"
                f"DEBUG=1\nSECRET_KEY={secrets.token_urlsafe(50)}\n")
    return True


if __name__ == "__main__":  # `make`: python -m decentcom.envfile
    target = env_file_path() or BASE_DIR / ".env"
    if env_file_create(target):
        print(f"wrote {target} (DEBUG=1, a generated SECRET_KEY) for development", file=sys.stderr)
