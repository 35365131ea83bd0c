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
                          cwd=BASE_DIR, env={**base, "ENV_FILE": "", **env}, capture_output=True, text=True)


def test_check_deploy_passes_with_documented_environment():
    result = run_check(PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_to_start_without_secret_key():
    result = run_check({k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"})
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr


def test_production_refuses_to_start_without_public_url():
    """Without it the signed login origin (§3) would follow the request's headers."""
    result = run_check({k: v for k, v in PRODUCTION_ENV.items() if k != "PUBLIC_URL"})
    assert result.returncode != 0 and "PUBLIC_URL must be set" in result.stderr


def settings_value(env: dict, expression: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    code = f"import django; django.setup(); from django.conf import settings; print({expression})"
    result = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, capture_output=True, text=True,
                            env={**base, "DJANGO_SETTINGS_MODULE": "decentcom.settings", "DEBUG": "1", **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_proxy_headers_are_trusted_only_behind_a_configured_proxy():
    expression = "settings.SECURE_PROXY_SSL_HEADER, settings.USE_X_FORWARDED_HOST"
    assert settings_value({"TRUSTED_PROXY_COUNT": "0", "USE_X_FORWARDED_HOST": "1"}, expression) == "None False"
    assert (settings_value({"TRUSTED_PROXY_COUNT": "1", "USE_X_FORWARDED_HOST": "1"}, expression)
            == "('HTTP_X_FORWARDED_PROTO', 'https') True")


def test_sqlite_file_and_var_dir_are_owner_only(tmp_path):
    """var/db.sqlite3 held every user's metadata world-readable (0644)."""
    var = tmp_path / "var"
    env = {"VAR_DIR": str(var), "DATABASE_URL": ""}
    code = ("import os, django; os.umask(0o022); django.setup(); from django.db import connection; "
            "c = connection.cursor(); c.execute('CREATE TABLE t (x)'); c.execute('INSERT INTO t VALUES (1)')")
    base = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    result = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, capture_output=True, text=True,
                            env={**base, "DJANGO_SETTINGS_MODULE": "decentcom.settings", "DEBUG": "1", **env})
    assert result.returncode == 0, result.stderr
    assert oct(var.stat().st_mode & 0o777) == "0o700"
    for path in var.glob("db.sqlite3*"):  # the file and its -wal / -shm
        assert oct(path.stat().st_mode & 0o777) == "0o600", path
    assert (var / "db.sqlite3").stat().st_size > 0
