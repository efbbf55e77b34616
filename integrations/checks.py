"""The encryption key canary and the system check built on it.

A wrong FIELD_ENCRYPTION_KEY must stop the web process and the workers at start, not hand
ciphertext to Zywave at 3 a.m. The check is registered in `IntegrationsConfig.ready()`;
`portal/wsgi.py` and the Celery worker's `worker_init` call `run_startup_checks()` because
neither gunicorn nor Celery runs Django's system checks.
"""

from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.checks import Error
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


def run_startup_checks() -> None:
    """Run the checks that the web (wsgi) and worker processes must pass before serving."""
    from django.core.management.base import SystemCheckError

    errors = encryption_key_decrypts_canary()
    if errors:
        raise SystemCheckError("\n".join(f"{e.id}: {e.msg}" for e in errors))
