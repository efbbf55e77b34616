"""System checks: configuration mistakes are reported at start, with ids, not deep in a request."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Tags, register
from django.db import DatabaseError


@register(Tags.security)
def encryption_key_decrypts_canary(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """A wrong FIELD_ENCRYPTION_KEY must stop the web process and the workers at start."""
    from integrations.fields import check_canary

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
