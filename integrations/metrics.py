"""The portal's Prometheus metrics: every definition in one place, and what is read at scrape time.

Counted where it happens (one line at each call site, through the small functions below):
token refreshes by outcome, transitions to `reauth_required`, sync runs by outcome with their
duration, records mirrored, Zywave requests by route template and status, 429s and rate-limit
waits, webhook delivery attempts by outcome, HTTP requests of the web process, Celery tasks.

Read at scrape time (`DomainCollector`, only for the web's `/metrics`): connections by status,
the sync lag, the Celery queues' depth in Redis and whether the encryption canary decrypts. It
runs a bounded number of queries whatever the number of connections (four on the database, one
Redis round trip), and a source that is down is reported as `portal_metrics_source_up 0` with
its metrics left out, never as an error.

Multi-process mode (gunicorn workers, Celery's prefork children) is prometheus_client's own:
with PROMETHEUS_MULTIPROC_DIR set before this module is first imported, every process writes
its values to files there and `/metrics` adds them up (`portal/metrics.py`).

Label values are bounded: a Zywave route is its template (`/accounts/v2.0/account/{id}`), never
the path with an id in it, and outcomes are fixed words.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    import requests
    from prometheus_client import Metric

    from .models import SyncRun

log = logging.getLogger(__name__)

# prometheus_client opens its files there as each metric is defined, below: a directory that
# does not exist yet (a fresh tmpfs) would stop the process at import.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# The Celery queues (docs/architecture.md, "Celery tasks and queues"): their depth is read at
# scrape time. Celery's Redis transport keeps each queue as a list under the queue's name.
QUEUES = ("interactive", "refetch", "sync", "tokens", "webhooks", "celery")
# Seconds a scrape-time read of Redis may take before it counts as down.
REDIS_TIMEOUT = 1.0

# --- Zywave and the domain ---------------------------------------------------------------------

TOKEN_REFRESHES = Counter(
    "zywave_token_refreshes_total",
    "Refresh-token grants sent to Zywave, by outcome: succeeded, invalid_grant (the grant "
    "ended), failed (transient: kept the old tokens, retried later).",
    ["outcome"],
)
REAUTH_REQUIRED = Counter(
    "zywave_reauth_required_total",
    "Connections that went from active to reauth_required (the person must reconnect).",
)
SYNC_RUNS = Counter(
    "zywave_sync_runs_total",
    "Sync runs ended, by outcome: succeeded, partial, failed.",
    ["outcome"],
)
SYNC_DURATION = Histogram(
    "zywave_sync_duration_seconds",
    "From a sync run's start to its end, by outcome.",
    ["outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
RECORDS_MIRRORED = Counter(
    "zywave_records_mirrored_total",
    "Records written to the mirror by syncs, by resource.",
    ["resource"],
)
REQUESTS = Counter(
    "zywave_requests_total",
    "Requests to Zywave's API, by route template and HTTP status (timeout or unreachable when "
    "no answer came).",
    ["route", "status"],
)
REQUEST_DURATION = Histogram(
    "zywave_request_duration_seconds",
    "Seconds until Zywave's answer's headers arrived, by route template.",
    ["route"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_LIMITED = Counter(
    "zywave_rate_limited_total",
    "Times Zywave answered 429 and the shared rate budget paused.",
)
RATE_LIMIT_WAIT = Histogram(
    "zywave_rate_limit_wait_seconds",
    "Seconds a call waited for the shared rate budget before it was sent.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
WEBHOOK_ATTEMPTS = Counter(
    "portal_webhook_deliveries_total",
    "Outbound webhook delivery attempts, by outcome: delivered (2xx), refused (the receiver "
    "answered another status), no_answer (timeout, connection failed, address refused).",
    ["outcome"],
)

# --- The processes -----------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "portal_http_requests_total",
    "Requests the web process answered, by method, route pattern and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "portal_http_request_duration_seconds",
    "Seconds the web process took to answer, by route pattern.",
    ["route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DB_QUERIES = Counter(
    "portal_db_queries_total",
    "Database queries made while answering web requests, by outcome (ok, error).",
    ["outcome"],
)
DB_DURATION = Histogram(
    "portal_db_query_duration_seconds",
    "Seconds each database query of a web request took.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
TASKS = Counter(
    "portal_celery_tasks_total",
    "Celery tasks run by the workers, by task name and final state (SUCCESS, FAILURE, RETRY...).",
    ["task", "state"],
)
TASK_DURATION = Histogram(
    "portal_celery_task_duration_seconds",
    "Seconds each Celery task ran, by task name.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800),
)

# Every outcome exists from the start at 0, so that rate() and increase() see the first one.
for _outcome in ("succeeded", "invalid_grant", "failed"):
    TOKEN_REFRESHES.labels(_outcome)
for _outcome in ("succeeded", "partial", "failed"):
    SYNC_RUNS.labels(_outcome)
for _outcome in ("delivered", "refused", "no_answer"):
    WEBHOOK_ATTEMPTS.labels(_outcome)


# --- Call sites --------------------------------------------------------------------------------


def token_refreshed(outcome: str) -> None:
    """`tokens._call_token_endpoint`: succeeded, invalid_grant or failed."""
    TOKEN_REFRESHES.labels(outcome).inc()


def reauth_required() -> None:
    """`tokens.end_grant`, when this call ended an active grant."""
    REAUTH_REQUIRED.inc()


def sync_ended(run: SyncRun) -> None:
    """`sync._end_run`, once the run's end is written (succeeded, partial or failed)."""
    SYNC_RUNS.labels(run.state).inc()
    if run.started_at is not None and run.finished_at is not None:
        SYNC_DURATION.labels(run.state).observe((run.finished_at - run.started_at).total_seconds())


def records_mirrored(resource: str, count: int) -> None:
    """`sync._sync_resource`, after a page's transaction committed."""
    RECORDS_MIRRORED.labels(resource).inc(count)


def zywave_answered(path: str, response: requests.Response) -> None:
    """`client._send`: an answer came (any status)."""
    route = route_template(path)
    REQUESTS.labels(route, str(response.status_code)).inc()
    REQUEST_DURATION.labels(route).observe(response.elapsed.total_seconds())


def zywave_failed(path: str, reason: str) -> None:
    """`client._send`: no answer (`timeout` or `unreachable`)."""
    REQUESTS.labels(route_template(path), reason).inc()


def rate_limited() -> None:
    """Zywave answered 429: the shared budget pauses (`integrations/ratelimit.py`)."""
    RATE_LIMITED.inc()


def rate_limit_waited(seconds: float) -> None:
    """A call waited this long for the shared budget (`integrations/ratelimit.py`)."""
    RATE_LIMIT_WAIT.observe(seconds)


def webhook_attempted(status: int | None) -> None:
    """`webhooks.attempt`, once the attempt is logged: the receiver's status, or None."""
    if status is None:
        WEBHOOK_ATTEMPTS.labels("no_answer").inc()
    else:
        WEBHOOK_ATTEMPTS.labels("delivered" if 200 <= status < 300 else "refused").inc()


# --- Route templates ---------------------------------------------------------------------------

# Zywave's routes are /{api}/{version}/{Resource}[/{TypeCode}][/{id}[/{Resource}...]] or end in
# `current` (docs/zywave.md §3-4). Words of letters are kept, anything else is an id.
_VERSION = re.compile(r"^[vV]\d+(\.\d+)?$")
_WORD = re.compile(r"^[A-Za-z][A-Za-z_-]{0,39}$")
_LITERALS = {"current"}
_MAX_SEGMENTS = 6
# Distinct templates one process labels; past it, `other`. The proxy forwards any path under
# its allowed prefixes, so someone with an API key could otherwise invent routes without end.
MAX_ROUTES = 100
_routes: set[str] = set()
_routes_lock = threading.Lock()


def route_template(path: str) -> str:
    """`/accounts/v2.0/account/1234` -> `/accounts/v2.0/account/{id}` (bounded label values).

    The first segment is the API, the second its version, the third the resource; after that
    ids and resource names alternate (`/{id}/contact/{id}`), and on the Profiles API the fourth
    is the type code (`/profiles/V2.0/Profile/{type_code}/{id}`).
    """
    segments = [segment for segment in path.split("?", 1)[0].split("/") if segment]
    if len(segments) > _MAX_SEGMENTS:
        segments = [*segments[:_MAX_SEGMENTS], "..."]
    shaped: list[str] = []
    for position, segment in enumerate(segments):
        kept = (
            segment == "..."
            or segment in _LITERALS
            or (position == 1 and bool(_VERSION.match(segment)))
            or (position in (0, 2) and bool(_WORD.match(segment)))
            or (position > 3 and shaped[-1] == "{id}" and bool(_WORD.match(segment)))
        )
        if kept:
            shaped.append(segment)
        elif position == 3 and shaped[0].lower() == "profiles":
            shaped.append("{type_code}")
        else:
            shaped.append("{id}")
    template = "/" + "/".join(shaped)
    with _routes_lock:
        if template in _routes:
            return template
        if len(_routes) >= MAX_ROUTES:
            return "other"
        _routes.add(template)
    return template


# --- Scrape time -------------------------------------------------------------------------------


class DomainCollector(Collector):
    """The domain's state, read when Prometheus scrapes (see the module's docstring)."""

    def describe(self) -> list[Metric]:
        return []  # registered without a trial collect (no query at start-up)

    def collect(self) -> Iterator[Metric]:
        from django.conf import settings

        up = GaugeMetricFamily(
            "portal_metrics_source_up",
            "Whether a source of the scrape-time metrics answered (database, redis).",
            labels=["source"],
        )
        database = _read(_database)
        up.add_metric(["database"], 0.0 if database is None else 1.0)
        yield from database or []
        if _broker_is_redis():
            depth = _read(queue_depth)
            up.add_metric(["redis"], 0.0 if depth is None else 1.0)
            yield from depth or []
        yield up
        interval = GaugeMetricFamily(
            "zywave_sync_interval_seconds", "ZYWAVE_SYNC_INTERVAL_MINUTES, in seconds."
        )
        interval.add_metric([], settings.ZYWAVE_SYNC_INTERVAL_MINUTES * 60.0)
        yield interval


def _database() -> list[Metric]:
    from .checks import check_canary

    canary = GaugeMetricFamily(
        "portal_encryption_canary_ok",
        "1 when the configured FIELD_ENCRYPTION_KEY decrypts the canary, else 0.",
    )
    canary.add_metric([], 0.0 if check_canary() else 1.0)
    return [*connections_by_status(), *sync_lag(), canary]


def _broker_is_redis() -> bool:
    from urllib.parse import urlsplit

    from django.conf import settings

    return urlsplit(settings.CELERY_BROKER_URL).scheme in {"redis", "rediss"}


def queue_depth() -> list[Metric]:
    """One Redis round trip: LLEN of every queue."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(
        str(settings.CELERY_BROKER_URL),
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
    )
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in QUEUES:
                pipe.llen(queue)
            depths = pipe.execute()
    finally:
        client.close()
    depth = GaugeMetricFamily(
        "portal_queue_depth",
        "Celery messages waiting in each queue (Redis LLEN).",
        labels=["queue"],
    )
    for queue, length in zip(QUEUES, depths, strict=True):
        depth.add_metric([queue], float(length))
    return [depth]


def _read(source: Any) -> Any:
    """A source's metrics, or None when it failed (logged by class name: messages may hold
    URLs with credentials)."""
    try:
        return source()
    except Exception as exc:  # noqa: BLE001 (a scrape never fails for a source that is down)
        log.warning("Metrics: a scrape-time source failed (%s)", type(exc).__name__)
        return None


def connections_by_status() -> list[Metric]:
    """One query: connections grouped by status (every status present, 0 when none)."""
    from django.db.models import Count

    from .models import Connection

    counts = dict.fromkeys(Connection.Status.values, 0)
    for row in Connection.objects.order_by().values("status").annotate(n=Count("pk")):
        counts[row["status"]] = row["n"]
    gauge = GaugeMetricFamily(
        "portal_connections", "Zywave connections by status.", labels=["status"]
    )
    for status, count in sorted(counts.items()):
        gauge.add_metric([status], float(count))
    return [gauge]


def sync_lag() -> list[Metric]:
    """One query: how long the longest-waiting connection that can sync has gone without a
    successful sync, in seconds and in its own polling intervals (ZYWAVE_SYNC_INTERVAL_MINUTES,
    or ZYWAVE_WEBHOOK_POLL_MINUTES while Zywave's webhooks arrive for it: `due_for_sync`'s
    rule). Since it connected when it never synced. Nothing to report: both 0."""
    from django.conf import settings
    from django.db.models import Min, OuterRef, Q, Subquery
    from django.db.models.functions import Coalesce
    from django.utils import timezone

    from .models import Connection, SyncRun

    now = timezone.now()
    last_success = (
        SyncRun.objects.filter(connection=OuterRef("pk"), state=SyncRun.State.SUCCEEDED)
        .order_by("-finished_at")
        .values("finished_at")[:1]
    )
    hooked = Q(
        hook_last_delivery_at__gt=now - timedelta(minutes=settings.ZYWAVE_WEBHOOK_POLL_MINUTES)
    )
    oldest = (
        Connection.objects.active()
        .filter(chosen_profile__isnull=False)
        .annotate(since=Coalesce(Subquery(last_success), "authorized_at", "created_at"))
        .aggregate(plain=Min("since", filter=~hooked), relaxed=Min("since", filter=hooked))
    )
    age = lag = 0.0
    for key, minutes in (
        ("plain", settings.ZYWAVE_SYNC_INTERVAL_MINUTES),
        ("relaxed", settings.ZYWAVE_WEBHOOK_POLL_MINUTES),
    ):
        if oldest[key] is not None:
            seconds = max((now - oldest[key]).total_seconds(), 0.0)
            age, lag = max(age, seconds), max(lag, seconds / (minutes * 60))
    age_gauge = GaugeMetricFamily(
        "zywave_sync_oldest_age_seconds",
        "Seconds since the last successful sync of the connection that has waited longest.",
    )
    age_gauge.add_metric([], age)
    lag_gauge = GaugeMetricFamily(
        "zywave_sync_lag_intervals",
        "The longest wait since a connection's last successful sync, in that connection's "
        "polling intervals (1 is on time; the alert fires past 2).",
    )
    lag_gauge.add_metric([], lag)
    return [age_gauge, lag_gauge]
