"""One settings module: everything from the environment, with embedded
defaults that run on a laptop (SQLite file, a channel layer over Unix sockets, a
filesystem Celery broker). Every variable is documented in the README.
A development checkout's `.env` fills in what the environment does not set
(decentcom.envfile)."""
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from decentcom.envfile import env_file_load, env_file_path

BASE_DIR = Path(__file__).resolve().parent.parent
env_file_load(env_file_path())
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (in production: set SECRET_KEY, PUBLIC_URL and "
            "ALLOWED_HOSTS in the environment; for development: run `make setup` once, which writes a "
            ".env with DEBUG=1 and a generated SECRET_KEY)")
    SECRET_KEY = "insecure-development-key-only-for-DEBUG"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "8000"))
# The origin clients sign in their auth challenge (§3). Empty (development
# only): the request's scheme and host with the port this server listens on.
PUBLIC_URL = os.environ.get("PUBLIC_URL", "").strip()
if PUBLIC_URL and not PUBLIC_URL.lower().startswith(("http://", "https://")):
    raise ImproperlyConfigured("PUBLIC_URL must be an http(s) origin, e.g. https://dm.example.org")
if not PUBLIC_URL and not DEBUG:
    # Without it the signed origin would follow the request's headers.
    raise ImproperlyConfigured("PUBLIC_URL must be set when DEBUG is off")
# Number of trusted proxies in front of us. The client address is taken that
# many hops from the right of X-Forwarded-For (decentcom.ratelimit.client_address),
# and only behind a proxy are its X-Forwarded-Proto (and, if asked, X-Forwarded-Host)
# believed: without one, any client could write them.
TRUSTED_PROXY_COUNT = int(os.environ.get("TRUSTED_PROXY_COUNT", "0"))
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured("TRUSTED_PROXY_COUNT must be 0 or more")
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRUSTED_PROXY_COUNT > 0 else None
USE_X_FORWARDED_HOST = TRUSTED_PROXY_COUNT > 0 and env_bool("USE_X_FORWARDED_HOST", False)

INSTALLED_APPS = [
    "daphne",
    "decentcom.apps.MailboxAdminConfig",  # django.contrib.admin with the dashboard
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "devices",
    "dms",
    "gateway",
]

MIDDLEWARE = [
    "decentcom.logs.RequestLogMiddleware",
    "decentcom.middleware.ApiErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "decentcom.middleware.ContentSecurityPolicyMiddleware",
    "decentcom.middleware.CorsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "decentcom.urls"
ASGI_APPLICATION = "decentcom.asgi.application"
AUTH_USER_MODEL = "devices.User"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL", "")
# VAR_DIR holds the SQLite file and the broker's messages: owner-only (0700).
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
# Connections are thread-local. HTTP requests run on the fixed threads of
# decentcom.asgi_http (Django's own ASGI handler starts a thread per request,
# which leaked persistent connections): PostgreSQL connections come from a
# per-process pool, SQLite ones are kept by those threads.
DATABASES = {"default": dj_database_url.parse(DATABASE_URL or f"sqlite:///{VAR_DIR / 'db.sqlite3'}", conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["OPTIONS"] = {"pool": {
        "min_size": int(os.environ.get("DB_POOL_MIN_SIZE", "1")),
        "max_size": int(os.environ.get("DB_POOL_MAX_SIZE", "10")),
        # how long a request waits for a connection before answering 503; the
        # HTTP threads never outnumber the pool, so only an outage makes them wait
        "timeout": float(os.environ.get("DB_POOL_TIMEOUT", "1.5")),
    }}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _sqlite_file = DATABASES["default"]["NAME"]
    if _sqlite_file != ":memory:" and not os.path.exists(_sqlite_file) and os.path.isdir(os.path.dirname(_sqlite_file)):
        # SQLite would create it with the umask (0644: world-readable metadata);
        # its -wal and -shm files take the database file's mode.
        os.close(os.open(_sqlite_file, os.O_CREAT | os.O_WRONLY, 0o600))
    # WAL lets the web server, worker and beat share the file; IMMEDIATE
    # takes the write lock at BEGIN so concurrent writers queue instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Opening one per request (with its PRAGMAs) cost about 3 ms of CPU in bench.mailbox.
    DATABASES["default"]["CONN_MAX_AGE"] = 0 if DATABASES["default"]["NAME"] == ":memory:" else 600
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Threads that run HTTP requests (decentcom.asgi_http). SQLite has one writer
# at a time, and a thread waiting for it sleeps in SQLite's busy handler.
HTTP_THREADS = int(os.environ.get(
    "HTTP_THREADS", "1" if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" else "4"))

REDIS_URL = os.environ.get("REDIS_URL", "")
REDIS_PREFIX = os.environ.get("REDIS_PREFIX", "decentcom")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # The layer's receive blocks in Redis for 5 s at a time; redis-py's
            # default socket timeout (5 s) raced it and killed idle consumers.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 10}], "prefix": f"{REDIS_PREFIX}:asgi"},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_PREFIX,
            # Rate limits fail open: a hung Redis must cost a send milliseconds, not seconds.
            "OPTIONS": {"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
        }
    }
else:
    # Groups cross the processes of this machine (web workers, Celery) through Unix sockets.
    CHANNEL_LAYERS = {"default": {"BACKEND": "decentcom.layers.ProcessChannelLayer",
                                  "CONFIG": {"folder": str(VAR_DIR / "channels")}}}
    # Rate limits and gateway connection slots hold across processes (decentcom.cache).
    CACHES = {"default": {"BACKEND": "decentcom.cache.SqliteCache", "LOCATION": str(VAR_DIR / "cache.sqlite3")}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns on every request otherwise
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG
# The web client: the bundle `npm run build` writes to web/dist, served at `/`
# (whitenoise answers `/` with its index.html; without a build, `/` is a page saying so).
WEB_DIST_DIR = BASE_DIR / "web" / "dist"
WHITENOISE_ROOT = WEB_DIST_DIR
WHITENOISE_INDEX_FILE = True
# Origins of copies of the web client served elsewhere that may call the API.
# Tokens are bearer headers, never cookies, so this only lets their pages read answers.
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS", "")

# Requests larger than this are refused with 413 before they are parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("MAX_REQUEST_BYTES", str(1024 * 1024)))

# Bearer-token lifetime (§3) and gateway ticket lifetime (§9).
SESSION_TOKEN_TTL_SECONDS = int(os.environ.get("SESSION_TOKEN_TTL_SECONDS", str(24 * 3600)))
CHALLENGE_TTL_SECONDS = 300
GATEWAY_TICKET_TTL_SECONDS = 60
GATEWAY_HEARTBEAT_INTERVAL_MS = int(os.environ.get("GATEWAY_HEARTBEAT_INTERVAL_MS", "30000"))
GATEWAY_HEARTBEAT_GRACE_MS = int(os.environ.get("GATEWAY_HEARTBEAT_GRACE_MS", "10000"))
# Upper bound on the after-commit channel-layer send, so a Redis outage cannot hold up a `201`.
GATEWAY_NOTIFY_TIMEOUT_MS = int(os.environ.get("GATEWAY_NOTIFY_TIMEOUT_MS", "1000"))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["devices.auth.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["devices.auth.IsDeviceSession"],
    "DEFAULT_PARSER_CLASSES": ["decentcom.parsers.LimitedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["decentcom.renderers.FastJSONRenderer"],
    "EXCEPTION_HANDLER": "decentcom.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "decentcom DM mailbox",
    "DESCRIPTION": "End-to-end-encrypted direct-message mailbox (wire protocol v1).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI served from our own static files: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Celery: Redis when REDIS_URL is set, else a filesystem broker that needs no server.
# A hostname, or kombu warns "No hostname was supplied" in every process at start.
CELERY_BROKER_URL = REDIS_URL or "filesystem://localhost/"
if not REDIS_URL:
    _broker_dir = VAR_DIR / "celery"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# beat keeps its schedule state here, not in the working directory (the repository, under the Procfile)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
DMS_PURGE_INTERVAL_SECONDS = int(os.environ.get("DMS_PURGE_INTERVAL_SECONDS", "60"))
CELERY_BEAT_SCHEDULE = {
    "dm-purge-expired": {
        "task": "dms.tasks.dm_purge_expired_task",
        "schedule": float(DMS_PURGE_INTERVAL_SECONDS),
    },
}

# --- logging, metrics, health checks (operators) ----------------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
# "plain" (default) or "json": one JSON object per line, for a log collector.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"crashes_only": {"()": "decentcom.logs.CrashesOnly"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "decentcom.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "decentcom": {"level": LOG_LEVEL},
        "devices": {"level": LOG_LEVEL},
        "dms": {"level": LOG_LEVEL},
        "gateway": {"level": LOG_LEVEL},
        # Each request has its own line (decentcom.logs.RequestLogMiddleware): Django's
        # request logger keeps only what that line cannot say, a crash's traceback.
        "django.request": {"filters": ["crashes_only"]},
    },
}
# /metrics is off (404) unless one of these is set: a bearer token, or the client
# addresses (decentcom.ratelimit.client_address) allowed without it (IPs or networks).
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "").strip()
try:
    import ipaddress as _ipaddress

    METRICS_ALLOWED_IPS = [_ipaddress.ip_network(item, strict=False) for item in env_list("METRICS_ALLOWED_IPS", "")]
except ValueError as _exc:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_IPS: {_exc}") from None
# A load balancer probes these over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
# ------------------------------------------------------------------------------------

if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    SECURE_CONTENT_TYPE_NOSNIFF = True
