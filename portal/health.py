"""`/health/`: is this deployment able to do its work? For load balancers and operators.

Answers JSON and 200 when every check passes, 503 otherwise. Checks: the database answers, the
broker (Redis) answers (`skipped` on development's file broker), at least one Celery worker
answers a ping, and the configured encryption keys decrypt the canary. Anonymous callers see
only `ok` / `fail` / `skipped` per check; staff also see why a check failed, and `warnings`:
settings that work but weaken the deployment (WEBHOOKS_ALLOW_PRIVATE with DEBUG off, the system
check integrations.W001). A warning does not fail the probe, and it is not shown to anonymous
callers: that the SSRF rules are off is worth knowing to an attacker. Never a secret, a URL, a
host name or a version.
"""

from __future__ import annotations

import logging
import threading
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
# A worker ping is a broadcast every worker answers, and with no worker up it waits the whole
# TIMEOUT. /health/ is anonymous, so its answer is remembered: a success this long, so that
# frequent probes do not flood the workers' control queue, and a failure briefly, so that a flood
# of probes while workers are down costs one broadcast and a worker coming back is seen soon.
WORKER_OK_SECONDS = 10.0
WORKER_FAIL_SECONDS = 3.0
# The last ping in this process: (monotonic time it ended, why it failed or None).
_worker_probe: tuple[float, str | None] | None = None
_worker_lock = threading.Lock()


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


def _ping_workers() -> str | None:
    from portal.celery import app

    try:
        replies = app.control.ping(timeout=TIMEOUT)
    except Exception as exc:  # noqa: BLE001 (an unreachable broker fails the probe like silence)
        return type(exc).__name__  # the class name only, as in run_checks
    return None if replies else f"no Celery worker answered a ping within {TIMEOUT:.0f}s"


def _fresh(ended: float, reason: str | None) -> bool:
    return time.monotonic() - ended < (WORKER_OK_SECONDS if reason is None else WORKER_FAIL_SECONDS)


def check_worker() -> None:
    """At most one ping per period and process, whatever the number of requests.

    Requests that arrive while a ping is under way wait on the lock for it and then read its
    result, instead of each sending a broadcast of its own (the race this lock closes). The
    wait is bounded, so a ping that hangs past its timeout cannot pile up every web thread.
    """
    global _worker_probe
    if not _worker_lock.acquire(timeout=TIMEOUT + 1):
        raise CheckFailed("a worker ping is still under way")
    try:
        probe = _worker_probe
        if probe is None or not _fresh(*probe):
            reason = _ping_workers()
            probe = _worker_probe = (time.monotonic(), reason)
        reason = probe[1]
    finally:
        _worker_lock.release()
    if reason:
        raise CheckFailed(reason)


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


def warnings() -> dict[str, str]:
    """Each weakening setting in force, by name, with what it allows (staff only)."""
    from integrations import ratelimit
    from integrations.checks import private_webhooks_allowed

    found: dict[str, str] = {}
    if problem := private_webhooks_allowed():
        found["webhooks"] = problem
    if problem := ratelimit.health_warning():
        found["rate_limit"] = problem
    return found


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
        if found := warnings():
            body["warnings"] = found
    return JsonResponse(body, status=200 if healthy else 503)
