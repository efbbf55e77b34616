"""Settings of the sandbox: the emulated Zywave identity server and API.

A separate Django project from the portal (own database, own port). Everything is configured
by environment variables whose defaults run on a fresh machine. The ones a test must flip while
the server runs (envelope, refresh mode, lifetimes, ...) are only *defaults* here: the control
API stores overrides in the database, because gunicorn runs several worker processes that
share nothing but the database (see zywave.models.RuntimeSetting).
"""

from __future__ import annotations

import os
from pathlib import Path

from sandbox.keys import ensure_rsa_key
from sandbox.scopes import ZYWAVE_SCOPES  # a setting too: settings.ZYWAVE_SCOPES

REPO_ROOT = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def env_seconds(name: str, default: list[float]) -> list[float]:
    """A comma-separated list of seconds ("1,2,4")."""
    value = os.environ.get(name)
    return [float(part) for part in value.split(",") if part.strip()] if value else default


VAR_DIR = Path(os.environ.get("SANDBOX_VAR_DIR") or REPO_ROOT / "var")
DATABASE_PATH = Path(os.environ.get("SANDBOX_DATABASE_PATH") or VAR_DIR / "sandbox.sqlite3")
RSA_KEY_PATH = VAR_DIR / "sandbox-oidc-rsa.pem"

# Not a secret worth protecting: the sandbox only ever holds demo data.
SECRET_KEY = os.environ.get("SANDBOX_SECRET_KEY", "sandbox-insecure-development-key-0123456789")
DEBUG = env_bool("SANDBOX_DEBUG", False)
ALLOWED_HOSTS = ["*"]  # a local emulator reached as 127.0.0.1, localhost or a container name

SANDBOX_CONTROL_KEY = os.environ.get("SANDBOX_CONTROL_KEY", "sandbox-control-key")
# When set, every token issued is appended to this file, one per line: test harnesses search
# the portal's storage for them (the drills' secrets sweep). Not something Zywave has.
SANDBOX_ISSUED_TOKENS_FILE = os.environ.get("SANDBOX_ISSUED_TOKENS_FILE", "")

# Defaults of the runtime settings (zywave.models.RuntimeSetting): each may be overridden
# through POST /_sandbox/settings and is restored by POST /_sandbox/reset.
SANDBOX_DEFAULTS: dict[str, object] = {
    "access_token_lifetime": env_int("SANDBOX_ACCESS_TOKEN_LIFETIME", 3600),
    # Absolute: counted from the original authorization, never extended by refreshes.
    "refresh_token_lifetime": env_int("SANDBOX_REFRESH_TOKEN_LIFETIME", 30 * 24 * 3600),
    "refresh_mode": os.environ.get("SANDBOX_REFRESH_MODE", "one-time"),  # or "reuse"
    "refresh_grace_seconds": env_int("SANDBOX_REFRESH_GRACE_SECONDS", 0),
    "reuse_revokes_grant": env_bool("SANDBOX_REUSE_REVOKES_GRANT", True),
    "envelope": os.environ.get("SANDBOX_ENVELOPE", "items"),  # or "value" or "array"
    "key_case": os.environ.get("SANDBOX_KEY_CASE", "pascal"),  # or "camel"
    "issuer": os.environ.get("SANDBOX_ISSUER", ""),  # empty: the request's origin
    "clock_offset": 0,  # seconds added to the real clock (time travel)
    # How a client must authenticate at /connect/token and /connect/revocation: "any", or only
    # "client_secret_post" (secret in the body) or "client_secret_basic" (HTTP Basic).
    "token_auth_method": os.environ.get("SANDBOX_TOKEN_AUTH_METHOD", "any"),
    # One thing wrong in every id_token issued (zywave.oauth.spoiled_id_token), or "none".
    "id_token_fault": "none",
    # Webhooks (zywave.webhooks, docs/zywave.md §6). Zywave documents that failed deliveries
    # are retried with growing waits, not the waits: these are ours. One wait per retry; after
    # the last one the delivery is given up.
    "webhook_retry_schedule": env_seconds(
        "SANDBOX_WEBHOOK_RETRY_SCHEDULE", [1, 2, 4, 8, 16, 32, 60]
    ),
    "webhook_timeout": env_float("SANDBOX_WEBHOOK_TIMEOUT", 5),  # seconds per delivery POST
    "webhook_verify_timeout": env_float("SANDBOX_WEBHOOK_VERIFY_TIMEOUT", 10),  # challenge GET
    # The body's key names are assumed (the docs name its contents only): "camel"
    # (eventType, ...) or "pascal" (EventType, ...).
    "webhook_key_case": os.environ.get("SANDBOX_WEBHOOK_KEY_CASE", "camel"),
    # Injected delivery faults, all off by default (zywave.webhooks.FAULT_SETTINGS).
    "webhook_duplicates": False,  # each delivery sent twice
    "webhook_out_of_order": False,  # each batch of one change queued shuffled
    "webhook_delay_seconds": 0.0,  # each delivery held this long before its first attempt
    "webhook_burst": 0,  # N >= 2: each event becomes N deliveries for its record
    "webhook_foreign": False,  # also delivered to subscribers who may not see the record
    # Deliveries of one subscription in flight at once: 1 sends them in the order they were
    # queued; more sends faster, in no particular order (a flood).
    "webhook_parallel": 1,
    # The app-wide rate limit of the API (zywave.ratelimit): requests a second for all clients
    # together, 0 for none; bursts of `rate_limit_burst` requests (0: one second's worth).
    "rate_limit": env_float("SANDBOX_RATE_LIMIT", 0.0),
    "rate_limit_burst": env_int("SANDBOX_RATE_LIMIT_BURST", 0),
}

# Sender threads per server process (zywave.webhooks.Dispatcher): how many subscriptions one
# process delivers to at once. Each subscription's own queue goes out one at a time, in order.
SANDBOX_WEBHOOK_SENDERS = env_int("SANDBOX_WEBHOOK_SENDERS", 4)

# A shapes file (the portal's `zywave_doctor --record`, or tests/shapes/): the profile and list
# routes answer in its recorded shapes with the sandbox's own values (zywave.shapes). Empty:
# every answer as it always was.
SANDBOX_SHAPES_FILE = os.environ.get("SANDBOX_SHAPES_FILE", "")

# Apps a test adds (comma-separated module paths): a test-only resource is a model in such an
# app and one registry entry its AppConfig.ready() registers (zywave.resources.register).
SANDBOX_EXTRA_APPS = [
    name.strip() for name in os.environ.get("SANDBOX_EXTRA_APPS", "").split(",") if name.strip()
]

INSTALLED_APPS = [
    "sandbox.zywave",  # first, so its templates override oauth2_provider's
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
    *SANDBOX_EXTRA_APPS,
]

MIDDLEWARE = [
    "sandbox.zywave.middleware.counters",
    "sandbox.zywave.middleware.rate_limit",
    "sandbox.zywave.middleware.faults",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "sandbox.urls"
WSGI_APPLICATION = "sandbox.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATABASE_PATH,
        # Several gunicorn processes write at once (tokens, counters, faults): wait for the
        # lock instead of failing, take the write lock when a transaction starts (so two
        # refreshes of one token serialise instead of deadlocking on a lock upgrade), and
        # use WAL so readers never wait for writers.
        "OPTIONS": {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        "CONN_MAX_AGE": 600,
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Demo credentials only. PBKDF2 at Django's default cost makes every login and every
# client-secret check take half a second on a small machine, which the token race tests and
# the portal's sync tests would feel; the sandbox stores nothing worth that cost.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LOGIN_URL = "/account/login"
LOGIN_REDIRECT_URL = "/account/login"

# The portal runs on the same host (127.0.0.1:8000); cookies ignore the port, so the
# sandbox's cookies need their own names or each server would overwrite the other's session.
SESSION_COOKIE_NAME = "zywave_sandbox_session"
CSRF_COOKIE_NAME = "zywave_sandbox_csrftoken"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# The toolkit's models are swappable; migrations resolve them through these names.
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"
OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL = "oauth2_provider.AccessToken"
OAUTH2_PROVIDER_REFRESH_TOKEN_MODEL = "oauth2_provider.RefreshToken"
OAUTH2_PROVIDER_ID_TOKEN_MODEL = "oauth2_provider.IDToken"
OAUTH2_PROVIDER_GRANT_MODEL = "oauth2_provider.Grant"

OAUTH2_PROVIDER = {
    "OAUTH2_VALIDATOR_CLASS": "sandbox.zywave.oauth.SandboxValidator",
    "SCOPES": ZYWAVE_SCOPES,  # sandbox/scopes.py (docs/zywave.md §2)
    "DEFAULT_SCOPES": ["openid"],
    "PKCE_REQUIRED": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,  # S256 only, never "plain"
    "AUTHORIZATION_CODE_EXPIRE_SECONDS": 300,  # IdentityServer's default
    "ACCESS_TOKEN_EXPIRE_SECONDS": SANDBOX_DEFAULTS["access_token_lifetime"],
    "ID_TOKEN_EXPIRE_SECONDS": 300,
    "ROTATE_REFRESH_TOKEN": True,  # the validator decides per request (refresh_mode)
    "REFRESH_TOKEN_REUSE_PROTECTION": False,  # the validator decides (reuse_revokes_grant)
    "REFRESH_TOKEN_GENERATOR": "sandbox.keys.hex64_token",
    "REQUEST_APPROVAL_PROMPT": "force",  # always show the consent page
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": ensure_rsa_key(RSA_KEY_PATH),
    "OIDC_ISS_ENDPOINT": SANDBOX_DEFAULTS["issuer"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
