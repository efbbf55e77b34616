"""The encryption key canary and the system checks built on the app's settings.

A wrong FIELD_ENCRYPTION_KEY must stop the web process and the workers at start, not hand
ciphertext to Zywave at 3 a.m. The checks are registered in `IntegrationsConfig.ready()`;
`portal/wsgi.py` and the Celery worker's `worker_init` call `run_startup_checks()` because
neither gunicorn nor Celery runs Django's system checks.

integrations.E001: the configured keys cannot decrypt the canary (stops web and workers).
integrations.W001: WEBHOOKS_ALLOW_PRIVATE is on with DEBUG off (also said by /health/ to staff
and by the admin's webhook pages).
"""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.checks import Error, Warning
from django.db import DatabaseError

from .fields import key_fingerprint
from .models import EncryptionCanary

CANARY_PLAINTEXT = "zywave-portal-canary"


def ensure_canary(**kwargs: Any) -> None:
    """Write the canary once (after migrate), so a later start with a wrong key is caught."""
    if not EncryptionCanary.objects.exists():
        EncryptionCanary.objects.create(
            value=CANARY_PLAINTEXT,
            key_fingerprint=key_fingerprint(settings.FIELD_ENCRYPTION_KEY[0]),
        )


def check_canary() -> str | None:
    """None when the configured keys decrypt the canary, otherwise what is wrong."""
    from django.db import connection

    table = EncryptionCanary._meta.db_table
    if table not in connection.introspection.table_names():
        return None  # not migrated yet: nothing encrypted to protect
    row = EncryptionCanary.objects.values_list("key_fingerprint", flat=True).first()
    if row is None:
        return None
    # Read the raw column: the field itself would raise before we could say which keys differ.
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT value FROM {table} ORDER BY id LIMIT 1")  # noqa: S608
        (ciphertext,) = cursor.fetchone()
    configured = [key_fingerprint(key) for key in settings.FIELD_ENCRYPTION_KEY]
    for key in settings.FIELD_ENCRYPTION_KEY:
        try:
            if Fernet(key).decrypt(ciphertext.encode()).decode() == CANARY_PLAINTEXT:
                return None
        except InvalidToken:
            continue
    return (
        "FIELD_ENCRYPTION_KEY cannot decrypt the data stored in this database: it was "
        f"encrypted with the key whose fingerprint is {row}, and the configured keys have "
        f"fingerprints {', '.join(configured)}. Restore the right key (or add it after the new "
        "one and run `manage.py rotate_encryption_key`)."
    )


def encryption_key_decrypts_canary(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """System check integrations.E001 (registered with the `security` tag in apps.py)."""
    try:
        problem = check_canary()
    except DatabaseError:
        return []  # no database yet (fresh machine before migrate): nothing to protect
    if problem:
        return [Error(problem, id="integrations.E001")]
    return []


PRIVATE_WEBHOOKS = (
    "WEBHOOKS_ALLOW_PRIVATE is on with DEBUG off: webhook endpoints may use plain HTTP and "
    "addresses that are not public (loopback 127.0.0.1 and ::1, private networks such as "
    "10.0.0.0/8, shared 100.64.0.0/10, link-local and the cloud metadata address "
    "169.254.169.254), so anyone who can subscribe can make the portal send requests into "
    "its own network."
)


def private_webhooks_allowed() -> str | None:
    """What WEBHOOKS_ALLOW_PRIVATE lets through, when it is on outside development (DEBUG off);
    None otherwise. Read at call time: the system check, /health/ and the admin say the same."""
    if getattr(settings, "WEBHOOKS_ALLOW_PRIVATE", False) and not settings.DEBUG:
        return PRIVATE_WEBHOOKS
    return None


def webhooks_allow_private(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """System check integrations.W001 (registered with the `security` tag in apps.py): a
    warning, not an error, because a test or staging deployment may need it on purpose."""
    problem = private_webhooks_allowed()
    if problem:
        hint = "Unset WEBHOOKS_ALLOW_PRIVATE (or set it to false) in production."
        return [Warning(problem, hint=hint, id="integrations.W001")]
    return []


def run_startup_checks() -> None:
    """Run the checks that the web (wsgi) and worker processes must pass before serving."""
    from django.core.management.base import SystemCheckError

    errors = encryption_key_decrypts_canary()
    if errors:
        raise SystemCheckError("\n".join(f"{e.id}: {e.msg}" for e in errors))
