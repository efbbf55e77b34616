"""`/health/`: is this deployment able to do its work? For load balancers and operators.

Answers JSON and 200 when every check passes, 503 otherwise. Checks: the database answers, the
broker (Redis) answers (`skipped` on development's file broker), at least one Celery worker
answers a ping, and the configured encryption keys decrypt the canary. Anonymous callers see
only `ok` / `fail` / `skipped` per check; staff also see why a check failed. Never a secret, a
URL, a host name or a version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

log = logging.getLogger(__name__)

# Seconds each outside check may take: a load balancer probe must answer quickly.
TIMEOUT = 2.0
# A worker ping is a broadcast every worker answers; remember a success this long so that
# frequent probes from several load balancers do not flood the workers' control queue.
WORKER_CACHE_SECONDS = 10.0
_last_worker_ok = 0.0


class CheckFailed(Exception):
    """A check's plain-language reason, shown to staff only."""


class Skipped(Exception):
    """The check does not apply to this deployment (reported as `skipped`, not a failure)."""


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _redis_url() -> str | None:
    url = settings.CELERY_BROKER_URL
    return url if urlsplit(url).scheme in {"redis", "rediss"} else None


def check_redis() -> None:
    import redis

    url = _redis_url()
    if url is None:
        raise Skipped("the broker is development's file broker: no Redis to ping")
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    try:
        if not client.ping():
            raise CheckFailed("Redis did not answer PING")
    finally:
        client.close()


def check_worker() -> None:
    global _last_worker_ok
    if time.monotonic() - _last_worker_ok < WORKER_CACHE_SECONDS:
        return
    from portal.celery import app

    replies = app.control.ping(timeout=TIMEOUT)
    if not replies:
        raise CheckFailed(f"no Celery worker answered a ping within {TIMEOUT:.0f}s")
    _last_worker_ok = time.monotonic()


def check_encryption() -> None:
    from integrations.checks import check_canary

    problem = check_canary()
    if problem:
        raise CheckFailed(problem)  # key fingerprints only, never keys


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "redis": check_redis,
    "worker": check_worker,
    "encryption": check_encryption,
}


def run_checks() -> tuple[dict[str, str | None], set[str]]:
    """Each check's name and None when it passed, else why it failed; and the skipped ones."""
    results: dict[str, str | None] = {}
    skipped: set[str] = set()
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = None
        except Skipped:
            results[name] = None
            skipped.add(name)
        except CheckFailed as exc:
            results[name] = str(exc)
        except Exception as exc:  # noqa: BLE001 (any failure of a dependency is a failed check)
            # The class name only: exception messages can carry URLs with credentials.
            results[name] = type(exc).__name__
        if results[name] is not None:
            log.warning("Health check %s failed: %s", name, results[name])
    return results, skipped


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    results, skipped = run_checks()
    healthy = all(reason is None for reason in results.values())
    body: dict[str, object] = {
        "status": "ok" if healthy else "fail",
        "checks": {
            name: "skipped" if name in skipped else "ok" if reason is None else "fail"
            for name, reason in results.items()
        },
    }
    user = getattr(request, "user", None)
    if user is not None and user.is_staff:
        body["errors"] = {name: reason for name, reason in results.items() if reason}
    return JsonResponse(body, status=200 if healthy else 503)
