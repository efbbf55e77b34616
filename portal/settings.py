"""Settings for the portal: one module, configured from the environment.

The defaults run on a fresh machine with no configuration (SQLite and a broker under `var/`,
the local sandbox as Zywave, development secrets generated into `var/`). With DEBUG off,
start-up refuses the unsafe defaults instead of silently using them, and refuses the
placeholders this repository ships.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
import socket
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import dj_database_url
from cryptography.fernet import Fernet
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from portal import env
from portal.logs import logging_config

if TYPE_CHECKING:
    from django.http import HttpRequest

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env.get("PORTAL_VAR_DIR") or BASE_DIR / "var")

DEBUG = env.get_bool("DEBUG", default=True)

# The image's `collectstatic` step (docker/Dockerfile) needs production settings but has no real
# secrets: it sets PORTAL_BUILD_ONLY and throwaway values. The marker lets those values through
# for that one command and refuses to start anything else (web, worker, beat, any other
# command), so an image run with the build's environment cannot serve.
BUILD_ONLY = env.get_bool("PORTAL_BUILD_ONLY", default=False)
if BUILD_ONLY and sys.argv[1:2] != ["collectstatic"]:
    raise ImproperlyConfigured(
        "PORTAL_BUILD_ONLY is set: it is for the image's `manage.py collectstatic` step only; "
        "unset it (and its throwaway values) to run the portal"
    )

# Values this repository ships as examples (docker/.env.example, the READMEs) or for the image
# build (docker/Dockerfile, all marked `build-only`). tests/portal/test_settings.py finds every
# shipped value with `git grep` and starts production with it, so a new placeholder that these
# markers miss fails the tests.
PLACEHOLDER = re.compile(
    # `<your host>`, `<new>`: a lower-case word or two in angle brackets, not any `<...>` (a
    # real secret may contain angle brackets).
    r"change-?me|replace-?me|placeholder|not-a-secret|build-only|(?-i:<[a-z][a-z _-]{0,40}>)",
    re.IGNORECASE,
)
# Django's own bar for a SECRET_KEY (check security.W009): "aaaa..." is no secret at any length.
SECRET_KEY_MIN_UNIQUE_CHARACTERS = 5


def _refuse_placeholder(name: str, value: str | None) -> None:
    """With DEBUG off (outside the image build), refuse a placeholder; never echo the value."""
    if DEBUG or BUILD_ONLY or not value:
        return
    if PLACEHOLDER.search(value):
        raise ImproperlyConfigured(
            f"{name} is a placeholder (from docker/.env.example, a README or the Dockerfile's "
            "build step): set the real value when DEBUG is off"
        )


# --- Secrets -------------------------------------------------------------------------------

SECRET_KEY = env.get("SECRET_KEY") or ""
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = env.dev_secret(VAR_DIR, "secret_key", lambda: "dev-" + secrets.token_urlsafe(50))
elif not DEBUG and (
    len(SECRET_KEY) < 32
    or len(set(SECRET_KEY)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
    or SECRET_KEY.startswith(("django-insecure", "dev-"))
):
    raise ImproperlyConfigured(
        "SECRET_KEY is a development or default value (or shorter than 32 characters, or of "
        "fewer than 5 distinct characters); set a long random value when DEBUG is off"
    )
_refuse_placeholder("SECRET_KEY", SECRET_KEY)


def _fernet_keys(raw: str) -> list[str]:
    keys = [key.strip() for key in raw.split(",") if key.strip()]
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEY is empty")
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                f"FIELD_ENCRYPTION_KEY: key #{position} is not a Fernet key "
                "(32 url-safe base64-encoded bytes, e.g. from Fernet.generate_key())"
            ) from None
        # 32 random bytes hold about 30 distinct values; fewer than 16 is a made-up key (the
        # Dockerfile's build-only key is 32 zero bytes).
        if not DEBUG and not BUILD_ONLY and len(set(base64.urlsafe_b64decode(key))) < 16:
            raise ImproperlyConfigured(
                f"FIELD_ENCRYPTION_KEY: key #{position} is not random (too few distinct bytes); "
                "generate one with the command in docker/.env.example"
            )
    return keys


_field_keys = env.get("FIELD_ENCRYPTION_KEY")
if not _field_keys:
    if not DEBUG:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEY must be set when DEBUG is off")
    _field_keys = env.dev_secret(
        VAR_DIR, "field_encryption_key", lambda: Fernet.generate_key().decode()
    )
# The first key encrypts; every key decrypts (rotation: see `manage.py rotate_encryption_key`).
FIELD_ENCRYPTION_KEY = _fernet_keys(_field_keys)

ALLOWED_HOSTS = env.get_list("ALLOWED_HOSTS")
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must list the portal's host names when DEBUG is off")
_refuse_placeholder("ALLOWED_HOSTS", ",".join(ALLOWED_HOSTS))
CSRF_TRUSTED_ORIGINS = env.get_list("CSRF_TRUSTED_ORIGINS")

# --- Applications --------------------------------------------------------------------------

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "social_django",
    "csp",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "integrations",
    "axes",  # last, as django-axes asks
]

MIDDLEWARE = [
    # First: answers /metrics before the HTTPS redirect, sessions and the host check (Prometheus
    # scrapes web:8000 inside the network), and times every other request whole.
    "portal.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "portal.logs.RequestContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into the lockout page
]

# Zywave's deliveries (/hooks/zywave/) and the API (/api/, not its two HTML pages) never carry a
# session or a cookie: they go through this list instead (portal/machine.py, portal/wsgi.py),
# with what still applies to them and none of sessions, CSRF, messages, auth, axes or pages' CSP.
PORTAL_MACHINE_MIDDLEWARE = [
    "portal.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",  # the ALLOWED_HOSTS check (400)
    "portal.logs.RequestContextMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "portal.machine.MachineCSP",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

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
                "integrations.context_processors.zywave",
            ],
        },
    },
]

# --- Database ------------------------------------------------------------------------------


# WAL lets the web process read while a worker writes; IMMEDIATE takes the write lock at BEGIN,
# so a transaction that reads then writes (a token refresh under `select_for_update`, which
# SQLite ignores) holds the lock from its first read and writers queue on `timeout`.
SQLITE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
}


def _database(url: str | None) -> dict[str, object]:
    if not url:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "portal.sqlite3",
            "OPTIONS": SQLITE_OPTIONS,
            # A file, not memory, so that worker processes started by tests share it.
            "TEST": {"NAME": VAR_DIR / "test_portal.sqlite3"},
        }
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except (ValueError, KeyError) as exc:
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
    if not config.get("ENGINE") or not config.get("NAME"):
        raise ImproperlyConfigured("DATABASE_URL is not a valid database URL: no database name")
    if str(config["ENGINE"]).endswith("sqlite3"):
        config["OPTIONS"] = {**SQLITE_OPTIONS, **config.get("OPTIONS", {})}
        config["CONN_MAX_AGE"] = 0

    return dict(config)


_refuse_placeholder("DATABASE_URL", env.get("DATABASE_URL"))
DATABASES = {"default": _database(env.get("DATABASE_URL"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Authentication ------------------------------------------------------------------------

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out login before any backend checks the password. It needs the
    # request, so tests log in with `force_login` or by POSTing to /login/, not `client.login`.
    "axes.backends.AxesStandaloneBackend",
    "integrations.backends.ZywaveOAuth2",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

# The proxies whose forwarding headers are believed, as gunicorn sees them (portal/gunicorn.conf.py
# reads the same variable the same way): gunicorn takes the scheme from their X-Forwarded-Proto,
# `client_address` below the client from their X-Forwarded-For. Anyone else's are ignored.
FORWARDED_ALLOW_IPS = env.get_addresses("FORWARDED_ALLOW_IPS", "127.0.0.1")


def client_address(request: HttpRequest) -> str:
    """The address a login attempt comes from (django-axes's AXES_CLIENT_IP_CALLABLE).

    The peer's address, unless the peer is a trusted proxy: then the address that proxy added to
    X-Forwarded-For. Each proxy appends the address it saw, so reading from the right and
    stepping over our own proxies gives the client; entries further left are whatever the
    client sent, and are never read. Anything unusable falls back to the peer.
    """
    from django.conf import settings

    trusted = settings.FORWARDED_ALLOW_IPS
    peer = request.META.get("REMOTE_ADDR", "")
    if "*" not in trusted and peer not in trusted:
        return peer
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    client = peer
    for hop in reversed([hop.strip() for hop in forwarded.split(",") if hop.strip()]):
        client = hop
        if hop not in trusted:
            break
    try:
        return str(ipaddress.ip_address(client))
    except ValueError:
        return peer


def lockout_parameters(request: HttpRequest, credentials: dict[str, Any] | None) -> list[Any]:
    """What django-axes counts failures by (AXES_LOCKOUT_PARAMETERS): the (username, address)
    pair, or the username alone once it is past its ceiling (AXES_USERNAME_FAILURE_LIMIT).

    Towards the ceiling, each address counts at most AXES_FAILURE_LIMIT failures (what it takes
    to lock its own pair), so no single address, however long it keeps trying, can lock a
    username for everyone: that takes AXES_USERNAME_FAILURE_LIMIT / AXES_FAILURE_LIMIT addresses.
    django-axes 8 compares every parameter with one AXES_FAILURE_LIMIT, hence this callable.
    """
    from axes.helpers import get_client_username
    from axes.models import AccessAttempt
    from django.conf import settings
    from django.db.models import Sum
    from django.utils import timezone

    pair: list[Any] = [["username", "ip_address"]]
    username = get_client_username(request, credentials)
    if not username:
        return pair
    now = getattr(request, "axes_attempt_time", None) or timezone.now()
    since = now - settings.AXES_COOLOFF_TIME
    per_address = (
        AccessAttempt.objects.filter(username=username, attempt_time__gte=since)
        .values("ip_address")
        .annotate(failures=Sum("failures_since_start"))
    )
    counted = sum(min(row["failures"], settings.AXES_FAILURE_LIMIT) for row in per_address)
    return ["username"] if counted >= settings.AXES_USERNAME_FAILURE_LIMIT else pair


# Login throttling (django-axes): after AXES_FAILURE_LIMIT wrong passwords for one username from
# one client address, that pair is refused for AXES_COOLOFF_MINUTES. Keyed on the pair, so a
# stranger guessing cannot lock a colleague out from another address. The address is the
# client's even behind a proxy (`client_address`: the trusted proxy's X-Forwarded-For), not the
# proxy's, which would make every lock a lock of the username for everyone. A guesser spread
# over many addresses meets a ceiling per username instead (`lockout_parameters`).
AXES_FAILURE_LIMIT = env.get_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_USERNAME_FAILURE_LIMIT = env.get_int(
    "AXES_USERNAME_FAILURE_LIMIT", 10 * AXES_FAILURE_LIMIT, minimum=AXES_FAILURE_LIMIT
)
AXES_COOLOFF_TIME = timedelta(minutes=env.get_int("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_CLIENT_IP_CALLABLE = client_address
AXES_LOCKOUT_PARAMETERS = lockout_parameters
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
AXES_SENSITIVE_PARAMETERS = ["username", "ip_address"]

# --- Internationalisation, static files ----------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing root
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- Email ---------------------------------------------------------------------------------

EMAIL_BACKEND = env.get(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env.get_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env.get("EMAIL_HOST_PASSWORD", "")
_refuse_placeholder("EMAIL_HOST_PASSWORD", EMAIL_HOST_PASSWORD)
EMAIL_USE_TLS = env.get_bool("EMAIL_USE_TLS", default=False)
# For django.core.mail.backends.filebased.EmailBackend (browser tests read the worker's mail).
EMAIL_FILE_PATH = env.get("EMAIL_FILE_PATH", str(VAR_DIR / "mail"))
DEFAULT_FROM_EMAIL = env.get("DEFAULT_FROM_EMAIL", "portal@localhost")

# --- Celery --------------------------------------------------------------------------------


def _redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


REDIS_URL = env.get("REDIS_URL")
CELERY_BROKER_URL = env.get("CELERY_BROKER_URL") or REDIS_URL
if not CELERY_BROKER_URL:
    if not DEBUG:
        raise ImproperlyConfigured("REDIS_URL (or CELERY_BROKER_URL) must be set when DEBUG is off")
    # Development: Redis when one answers locally, else a broker made of files under var/,
    # so `make run` works on a machine without Redis.
    CELERY_BROKER_URL = "redis://127.0.0.1:6379/0" if _redis_answers() else "filesystem://"
_refuse_placeholder(
    "REDIS_URL" if REDIS_URL == CELERY_BROKER_URL else "CELERY_BROKER_URL", CELERY_BROKER_URL
)
if urlsplit(CELERY_BROKER_URL).scheme not in {"redis", "rediss", "filesystem", "memory"}:
    raise ImproperlyConfigured(
        "CELERY_BROKER_URL must be a redis://, rediss:// or filesystem:// URL, "
        f"not {urlsplit(CELERY_BROKER_URL).scheme}://"
    )

# The cache (discovery documents, API throttling) is shared by every process through Redis
# when the broker is Redis; a per-process memory cache otherwise (`make run` without Redis).
if urlsplit(CELERY_BROKER_URL).scheme in {"redis", "rediss"}:
    CACHES = {
        "default": {
            "BACKEND": "portal.cache.SharedRedisCache",
            "LOCATION": CELERY_BROKER_URL,
            "KEY_PREFIX": "portal-cache",
            "TIMEOUT": 3600,
        }
    }

CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "celery" / "queue"
    _queue_dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "control_folder": str(VAR_DIR / "celery" / "control"),
    }
    (VAR_DIR / "celery" / "results").mkdir(parents=True, exist_ok=True)
    CELERY_RESULT_BACKEND = f"file://{VAR_DIR / 'celery' / 'results'}"
else:
    CELERY_RESULT_BACKEND = CELERY_BROKER_URL
    # With acks_late a task unacknowledged this long is delivered again: keep it above
    # CELERY_TASK_TIME_LIMIT so a slow task is not run twice while still running.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2 * 3600}

CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.get_int("CELERY_TASK_SOFT_TIME_LIMIT", 25 * 60, minimum=1)
CELERY_TASK_TIME_LIMIT = env.get_int("CELERY_TASK_TIME_LIMIT", 30 * 60, minimum=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_ALWAYS_EAGER = env.get_bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_ROUTES = {
    # Beat's scan on `celery`: never behind the scheduled backlog it feeds (nor counted in it).
    "integrations.tasks.sync_due_connections": {"queue": "celery"},
    "integrations.tasks.sync_*": {"queue": "sync"},
    # A person's Sync now, the API's POST syncs and a profile change go to `interactive` at the
    # call (integrations/sync.py `start_interactive`): never behind the scheduled backlog.
    "integrations.tasks.refresh_connection": {"queue": "tokens"},
    "integrations.tasks.keep_tokens_alive": {"queue": "tokens"},
    "integrations.tasks.deliver_webhooks": {"queue": "webhooks"},
    "integrations.tasks.refetch_record": {"queue": "refetch"},
    # The reconcilers run on `celery`, never behind the backlog they are there to rescue.
    "integrations.tasks.reconcile_webhooks": {"queue": "celery"},
    "integrations.tasks.reconcile_refetches": {"queue": "celery"},
    "integrations.tasks.purge_sync_history": {"queue": "celery"},
}
ZYWAVE_TOKEN_UPKEEP_MINUTES = env.get_int("ZYWAVE_TOKEN_UPKEEP_MINUTES", 10, minimum=1)
# How often beat looks for webhook deliveries nobody is sending (a lost task message), and the
# horizon within which a worker queues its own next retry instead of leaving it to beat.
WEBHOOKS_RECONCILE_SECONDS = env.get_int("WEBHOOKS_RECONCILE_SECONDS", 30, minimum=1)
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "keep-tokens-alive": {
        "task": "integrations.tasks.keep_tokens_alive",
        "schedule": ZYWAVE_TOKEN_UPKEEP_MINUTES * 60.0,
    },
    "sync-due-connections": {
        "task": "integrations.tasks.sync_due_connections",
        "schedule": 60.0,
    },
    "reconcile-webhooks": {
        "task": "integrations.tasks.reconcile_webhooks",
        "schedule": float(WEBHOOKS_RECONCILE_SECONDS),
    },
    "reconcile-refetches": {
        "task": "integrations.tasks.reconcile_refetches",
        "schedule": 60.0,
    },
    "purge-sync-history": {
        "task": "integrations.tasks.purge_sync_history",
        "schedule": 3600.0,
    },
}

# --- Zywave --------------------------------------------------------------------------------

ZYWAVE_AUTH_URL = (env.get("ZYWAVE_AUTH_URL") or "http://127.0.0.1:8001").rstrip("/")
ZYWAVE_API_URL = (env.get("ZYWAVE_API_URL") or "http://127.0.0.1:8001").rstrip("/")
for _name, _url in (("ZYWAVE_AUTH_URL", ZYWAVE_AUTH_URL), ("ZYWAVE_API_URL", ZYWAVE_API_URL)):
    if urlsplit(_url).scheme not in {"http", "https"} or not urlsplit(_url).netloc:
        raise ImproperlyConfigured(f"{_name} must be an http(s) URL, not {_url!r}")
ZYWAVE_CLIENT_ID = env.get("ZYWAVE_CLIENT_ID") or ("portal-dev" if DEBUG else "")
ZYWAVE_CLIENT_SECRET = env.get("ZYWAVE_CLIENT_SECRET") or ("portal-dev-secret" if DEBUG else "")
if not DEBUG and not (ZYWAVE_CLIENT_ID and ZYWAVE_CLIENT_SECRET):
    raise ImproperlyConfigured(
        "ZYWAVE_CLIENT_ID and ZYWAVE_CLIENT_SECRET must be set when DEBUG is off"
    )
_refuse_placeholder("ZYWAVE_CLIENT_ID", ZYWAVE_CLIENT_ID)
_refuse_placeholder("ZYWAVE_CLIENT_SECRET", ZYWAVE_CLIENT_SECRET)
# By default, a scope for each mirrored resource (integrations/resources.py: a test checks).
ZYWAVE_SCOPES = (
    env.get("ZYWAVE_SCOPES")
    or "openid profile email offline_access api.profiles api.accounts:read api.policies:read"
).split()
ZYWAVE_PROFILE_TYPE_CODE = env.get("ZYWAVE_PROFILE_TYPE_CODE") or "B"
ZYWAVE_PROFILE_HEADER = env.get_choice("ZYWAVE_PROFILE_HEADER", "token", ("token", "id"))
# How the portal authenticates at the token and revocation endpoints (RFC 6749 §2.3.1):
# the client secret in the form body, or HTTP Basic. Zywave does not say which it requires.
ZYWAVE_TOKEN_AUTH_METHOD = env.get_choice(
    "ZYWAVE_TOKEN_AUTH_METHOD",
    "client_secret_post",
    ("client_secret_post", "client_secret_basic"),
)
ZYWAVE_SYNC_INTERVAL_MINUTES = env.get_int("ZYWAVE_SYNC_INTERVAL_MINUTES", 15, minimum=1)
ZYWAVE_FULL_SYNC_HOURS = env.get_int("ZYWAVE_FULL_SYNC_HOURS", 24, minimum=1)
ZYWAVE_SYNC_LEASE_SECONDS = env.get_int("ZYWAVE_SYNC_LEASE_SECONDS", 120, minimum=5)
# A queued run no worker has started after this long is sent again: its message may have died
# with a worker killed outright (Redis gives unacknowledged messages back only after hours).
ZYWAVE_SYNC_REQUEUE_SECONDS = env.get_int("ZYWAVE_SYNC_REQUEUE_SECONDS", 300, minimum=5)
# Days finished sync runs are kept (each connection's newest successful and newest full run are
# kept whatever their age: the next run starts from their marks). 10,000 connections synced
# every 15 minutes add about 960,000 runs a day.
ZYWAVE_SYNC_HISTORY_DAYS = env.get_int("ZYWAVE_SYNC_HISTORY_DAYS", 7, minimum=1)
ZYWAVE_SYNC_OVERLAP_SECONDS = env.get_int("ZYWAVE_SYNC_OVERLAP_SECONDS", 300)
ZYWAVE_SYNC_MAX_RETRIES = env.get_int("ZYWAVE_SYNC_MAX_RETRIES", 6)
ZYWAVE_SYNC_MAX_WAIT_SECONDS = env.get_int("ZYWAVE_SYNC_MAX_WAIT_SECONDS", 120, minimum=1)
ZYWAVE_SYNC_BACKOFF_SECONDS = env.get_int("ZYWAVE_SYNC_BACKOFF_SECONDS", 2, minimum=0)
# One rate budget for the whole app (integrations/ratelimit.py), shared through Redis by every
# web process, worker and machine: Zywave API requests per second, 0 for no limit. Zywave
# publishes no figure (docs/zywave.md): set what Zywave granted the app.
ZYWAVE_RATE_LIMIT = env.get_int("ZYWAVE_RATE_LIMIT", 50)
# Per connection, on top of the app's (0: none; the app's budget is shared in turn anyway).
ZYWAVE_RATE_LIMIT_PER_CONNECTION = env.get_int("ZYWAVE_RATE_LIMIT_PER_CONNECTION", 0)
# The identity server's token endpoint, counted apart: refreshes never wait behind syncs.
ZYWAVE_TOKEN_RATE_LIMIT = env.get_int("ZYWAVE_TOKEN_RATE_LIMIT", 20)
# Each process's own limit while Redis cannot be reached (0: a tenth of ZYWAVE_RATE_LIMIT).
ZYWAVE_RATE_LIMIT_FALLBACK = env.get_int("ZYWAVE_RATE_LIMIT_FALLBACK", 0)
# Scheduled syncs running at once across the app (0: no cap). Interactive runs are not capped.
ZYWAVE_MAX_CONCURRENT_SYNCS = env.get_int("ZYWAVE_MAX_CONCURRENT_SYNCS", 16)
# How long a scheduled sync waits for one of those slots before leaving its run queued.
ZYWAVE_SYNC_SLOT_WAIT_SECONDS = env.get_int("ZYWAVE_SYNC_SLOT_WAIT_SECONDS", 30, minimum=1)
ZYWAVE_HTTP_TIMEOUT = (
    float(env.get_int("ZYWAVE_CONNECT_TIMEOUT", 5, minimum=1)),
    float(env.get_int("ZYWAVE_READ_TIMEOUT", 30, minimum=1)),
)
# Every answer of Zywave's is read streamed, refused past a size and cut past a total time
# (integrations/client.py), so one answer cannot grow a worker or hold its task. 8 MiB: a page
# of 100 records (PAGE_SIZE) with the 15 fields docs/zywave.md §4 lists is about 40 KB (the
# sandbox's), and still 2 MB at 20 KB a record (at least 64 KiB: a cap given in MB by mistake
# fails at start). 60 s: twice the read timeout, which bounds each wait; this bounds a server
# that keeps sending a byte just inside it.
ZYWAVE_MAX_RESPONSE_BYTES = env.get_int("ZYWAVE_MAX_RESPONSE_BYTES", 8 * 1024 * 1024, minimum=65536)
ZYWAVE_HTTP_DEADLINE_SECONDS = env.get_int("ZYWAVE_HTTP_DEADLINE_SECONDS", 60, minimum=1)

# Tombstones (records removed at Zywave) are kept this long for the API's incremental pulls:
# a job that pulls less often than this misses deletions and should pull everything again.
ZYWAVE_TOMBSTONE_DAYS = env.get_int("ZYWAVE_TOMBSTONE_DAYS", 30, minimum=1)
# The proxy forwards paths under these prefixes only (after normalisation): docs/api.md.
ZYWAVE_PROXY_ALLOW = env.get_list("ZYWAVE_PROXY_ALLOW", "profiles/,accounts/,policies/,industries/")
# The largest request body the proxy forwards to Zywave (its answers are capped by
# ZYWAVE_MAX_RESPONSE_BYTES).
ZYWAVE_PROXY_MAX_REQUEST_BYTES = env.get_int(
    "ZYWAVE_PROXY_MAX_REQUEST_BYTES", 1024 * 1024, minimum=1024
)

# --- Outbound webhooks ----------------------------------------------------------------------

# Waits before each retry of a failed delivery, in seconds (comma-separated): about a day in
# all; after the last one fails the subscription is disabled. Drills compress it.
try:
    WEBHOOKS_RETRY_SCHEDULE = [
        float(part)
        for part in env.get_list("WEBHOOKS_RETRY_SCHEDULE", "5,300,1800,7200,18000,36000,36000")
    ]
except ValueError:
    WEBHOOKS_RETRY_SCHEDULE = []
if not WEBHOOKS_RETRY_SCHEDULE or any(wait < 0 for wait in WEBHOOKS_RETRY_SCHEDULE):
    raise ImproperlyConfigured(
        "WEBHOOKS_RETRY_SCHEDULE must list one or more waits in seconds, comma-separated"
    )
# Each attempt ends by this (connect, answer and the first 4 KB of the body).
WEBHOOKS_TIMEOUT_SECONDS = env.get_int("WEBHOOKS_TIMEOUT_SECONDS", 10, minimum=1)
# A receiver's Retry-After is honoured up to this.
WEBHOOKS_MAX_RETRY_AFTER_SECONDS = env.get_int("WEBHOOKS_MAX_RETRY_AFTER_SECONDS", 86400, minimum=1)
# Delivered deliveries and their attempt log are kept this long.
WEBHOOKS_LOG_DAYS = env.get_int("WEBHOOKS_LOG_DAYS", 30, minimum=1)
# Development and tests only: endpoints on private addresses (127.0.0.1) and plain HTTP. With
# DEBUG off a system check warns, and /health/ and the admin say so.
WEBHOOKS_ALLOW_PRIVATE = env.get_bool("WEBHOOKS_ALLOW_PRIVATE", default=DEBUG)

# --- Zywave's webhooks in --------------------------------------------------------------------

# While Zywave delivers notifications, scheduled polling of a connection relaxes to this
# interval (it returns to ZYWAVE_SYNC_INTERVAL_MINUTES once none has come for this long).
ZYWAVE_WEBHOOK_POLL_MINUTES = env.get_int("ZYWAVE_WEBHOOK_POLL_MINUTES", 60, minimum=1)
# Notifications for one record this close together coalesce into one fetch (two at most).
ZYWAVE_WEBHOOK_COALESCE_SECONDS = env.get_int("ZYWAVE_WEBHOOK_COALESCE_SECONDS", 2, minimum=1)
# Deliveries per minute one receiver URL accepts; beyond, 429 with Retry-After.
ZYWAVE_WEBHOOK_RATE_LIMIT = env.get_int("ZYWAVE_WEBHOOK_RATE_LIMIT", 6000, minimum=1)

# --- Integration API -----------------------------------------------------------------------

# Requests per minute per API key, counted in the shared cache (all web processes together).
API_RATE_LIMIT = env.get_int("API_RATE_LIMIT", 1200, minimum=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["integrations.api.keys.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["integrations.api.keys.HasScope"],
    "DEFAULT_THROTTLE_CLASSES": ["integrations.api.keys.KeyThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "integrations.api.problems.JSONOnly",
    "EXCEPTION_HANDLER": "integrations.api.problems.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    # Several components have a `state`: each choice set gets its own name in the schema.
    "ENUM_NAME_OVERRIDES": {"WebhookSubscriptionStateEnum": ["active", "disabled"]},
    "TITLE": "Zywave integration portal API",
    "DESCRIPTION": (
        "The agency's own systems use a person's Zywave connection and its mirror with an API "
        "key (`Authorization: Bearer zwk_...`), without handling OAuth, refresh or profiles."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "APPEND_COMPONENTS": {
        "securitySchemes": {
            "ApiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "zwk_..."}
        }
    },
    "SECURITY": [{"ApiKey": []}],
    "AUTHENTICATION_WHITELIST": [],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "integrations.api.schema.problem_media_type",
    ],
}

# social-auth: the `zywave` backend reads these. Tokens never go to extra_data (see backends).
SOCIAL_AUTH_ZYWAVE_KEY = ZYWAVE_CLIENT_ID
SOCIAL_AUTH_ZYWAVE_SECRET = ZYWAVE_CLIENT_SECRET
SOCIAL_AUTH_ZYWAVE_SCOPE = ZYWAVE_SCOPES
SOCIAL_AUTH_URL_NAMESPACE = "social"
SOCIAL_AUTH_JSONFIELD_ENABLED = True
SOCIAL_AUTH_REDIRECT_IS_HTTPS = env.get_bool("SOCIAL_AUTH_REDIRECT_IS_HTTPS", default=not DEBUG)
SOCIAL_AUTH_RAISE_EXCEPTIONS = False
SOCIAL_AUTH_SANITIZE_REDIRECTS = True
SOCIAL_AUTH_ALLOWED_REDIRECT_HOSTS: list[str] = []
SOCIAL_AUTH_LOGIN_ERROR_URL = "/"
SOCIAL_AUTH_LOGIN_REDIRECT_URL = "/"
SOCIAL_AUTH_FIELDS_STORED_IN_SESSION: list[str] = []
PORTAL_URL = (env.get("PORTAL_URL") or "http://127.0.0.1:8000").rstrip("/")

SOCIAL_AUTH_PIPELINE = (
    "social_core.pipeline.social_auth.social_details",
    "social_core.pipeline.social_auth.social_uid",
    "integrations.pipeline.require_portal_user",
    "integrations.pipeline.refuse_second_identity",
    "integrations.pipeline.store_connection",
)

# --- Security ------------------------------------------------------------------------------

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    # No SECURE_PROXY_SSL_HEADER: Django would believe X-Forwarded-Proto from any client.
    # gunicorn believes it from FORWARDED_ALLOW_IPS only and passes its verdict as the WSGI
    # scheme, which is what request.is_secure() reads without that setting.
    SECURE_SSL_REDIRECT = env.get_bool("SECURE_SSL_REDIRECT", default=True)
    # A load balancer probes over plain HTTP inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^health/$"]
    SECURE_HSTS_SECONDS = env.get_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# Content-Security-Policy (django-csp): our own origin only, no inline script or style, no
# framing. The one exception is form-action: the "Connect Zywave" form posts to us and we
# redirect to Zywave's authorize page, and browsers apply form-action to that redirect too.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
        "form-action": [SELF, _origin(ZYWAVE_AUTH_URL)],
    },
}

# --- Metrics (docker/README.md, "Metrics and alerts") ---------------------------------------

# The bearer token Prometheus sends for /metrics; unset, /metrics does not exist (404).
METRICS_TOKEN = env.get("METRICS_TOKEN") or None
_refuse_placeholder("METRICS_TOKEN", METRICS_TOKEN)
if METRICS_TOKEN and not DEBUG and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters when DEBUG is off")
# A worker node's own metrics exporter (its pool processes added up): off unless set, and bound
# to METRICS_BIND (loopback by default; 0.0.0.0 inside a container, for the Compose network).
METRICS_PORT = env.get_int("METRICS_PORT", 0)
if METRICS_PORT > 65535:
    raise ImproperlyConfigured(f"METRICS_PORT must be a TCP port (1-65535), not {METRICS_PORT}")
METRICS_BIND = (env.get_addresses("METRICS_BIND", "127.0.0.1") or ["127.0.0.1"])[0]
if METRICS_BIND == "*":
    raise ImproperlyConfigured("METRICS_BIND must be one IP address (0.0.0.0 for every one)")

# --- Logging -------------------------------------------------------------------------------

# Production writes one JSON object per line (time, level, event, and the user, connection, sync
# run and Celery task ids); development writes plain lines. Either way every record passes the
# redaction filter on its way out (portal/logs.py), so a token that reaches a log is masked.
LOG_FORMAT = env.get_choice("LOG_FORMAT", "plain" if DEBUG else "json", ("json", "plain"))
LOG_LEVEL = env.get_choice(
    "LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")
).upper()
LOGGING = logging_config(
    LOG_FORMAT,
    LOG_LEVEL,
    {
        # urllib3 at DEBUG would print request lines; keep it quiet.
        "urllib3": {"level": "WARNING"},
        # Django's own handler for django.* mails admins and prints in DEBUG; send it through
        # ours instead, so that every line is redacted and in the same format.
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.server": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
    },
)
