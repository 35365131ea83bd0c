"""Production settings pass Django's deployment checks with the environment
variables the README documents."""
import os
import secrets
import subprocess
import sys

from tests.live import BASE_DIR

PRODUCTION_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "dm.example.org",
    "PUBLIC_URL": "https://dm.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://dm.example.org",
    "SECURE_HSTS_PRELOAD": "1",
}


def run_check(env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE")}
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=BASE_DIR, env={**base, **env}, capture_output=True, text=True)


def test_check_deploy_passes_with_documented_environment():
    result = run_check(PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_to_start_without_secret_key():
    result = run_check({k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"})
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr
