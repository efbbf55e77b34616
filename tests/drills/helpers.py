"""What the drills share. Each drill takes the running `Stack` and a `Scale` and returns a
result row: what was injected, what was expected, the figures measured and a verdict
computed from them.

Figures are measured, never assumed: from the portal's database (runs, events, mirror rows),
the sandbox's counters, request times recorded in this process, and /proc.

The drills, grouped by what they break: `tokens.py` (the token endpoint and refreshes),
`sync.py` (rate limits, workers killed mid-sync), `infrastructure.py` (Redis, PostgreSQL,
the network), `load.py` (connect burst, soak, pages under load), `secrets.py` (the sweep
after all of them), `scan.py` (the web vulnerability scanner); `run_drills.py` runs them
in order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.drills.stack import PASSWORD, DrillError, Stack, wait_until
from tests.sandboxserver import Sandbox
from tests.smoke.run_smoke import Browser, choose_first_profile, csrf_from

API_PAGES = r"^/accounts/v2\.0/(account|contact)$"


@dataclass
class Scale:
    """How big each drill is: `full` for `make drills`, `short` for `make test`."""

    name: str
    users: int
    big: int
    flows: int
    concurrency: int
    outage_seconds: float
    outage_connections: int
    kills: int
    soak_connections: int
    soak_seconds: float
    page_users: int
    hang_connections: int


FULL = Scale(
    name="full",
    users=200,
    big=20,
    flows=200,
    concurrency=50,
    outage_seconds=45,
    outage_connections=10,
    kills=20,
    soak_connections=100,
    soak_seconds=240,
    page_users=20,
    hang_connections=3,
)


SHORT = Scale(
    name="short",
    users=12,
    big=3,
    flows=12,
    concurrency=5,
    outage_seconds=4,
    outage_connections=3,
    kills=3,
    soak_connections=8,
    soak_seconds=25,
    page_users=3,
    hang_connections=2,
)


@dataclass
class Result:
    drill: str
    injected: str
    expected: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    measured: str = ""
    seconds: float = 0.0
    error: str = ""

    @property
    def verdict(self) -> str:
        if self.error:
            return "error"
        return "pass" if self.checks and all(self.checks.values()) else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {
            "drill": self.drill,
            "injected": self.injected,
            "expected": self.expected,
            "measured": self.measured,
            "figures": self.figures,
            "checks": self.checks,
            "verdict": self.verdict,
            "seconds": round(self.seconds, 1),
            "error": self.error,
        }


# --- Helpers: the portal, as this process sees it (same database and broker) ------------------


def models() -> Any:
    from integrations import models as m

    return m


def conn_of(i: int) -> Any:
    return models().Connection.objects.get(user__username=f"staff{i:03d}")


def conn_ids(indexes: list[int]) -> list[int]:
    found = dict(
        models()
        .Connection.objects.filter(user__username__in=[f"staff{i:03d}" for i in indexes])
        .values_list("user__username", "pk")
    )
    return [found[f"staff{i:03d}"] for i in indexes]


def expire_tokens(ids: list[int]) -> None:
    from django.utils import timezone

    models().Connection.objects.filter(pk__in=ids).update(
        access_token_expires_at=timezone.now() - timedelta(seconds=1)
    )


def queue_syncs(ids: list[int], full: bool = False, keep_results: bool = False) -> list[Any]:
    """What "Sync now" does (a queued run, then the task) where the dashboard would offer it;
    for a connection that cannot sync only the task, as a stale message would bring it.

    Returns the tasks sent; with `keep_results`, `finished` can wait for a worker to end them
    (a task that finds nothing to sync leaves no run for `wait_idle` to see)."""
    from integrations.sync import queue_run
    from integrations.tasks import sync_connection

    sent: list[Any] = []
    for conn in models().Connection.objects.filter(pk__in=ids):
        if conn.can_sync:
            queue_run(conn, full=full, trigger="drill")
        if keep_results:
            sent.append(ask(sync_connection, conn.pk, full))
        else:
            sent.append(sync_connection.delay(conn.pk, full))
    return sent


def ask(task: Any, *args: Any) -> Any:
    """Send `task(*args)` with its result kept (the portal's tasks ignore theirs), so that
    `finished` can wait for a worker to end it."""
    return task.apply_async(args, ignore_result=False)


def finished(sent: list[Any], timeout: float = 60) -> float:
    """Seconds until a worker has ended every task in `sent` (sent by `ask`, or by
    `queue_syncs(keep_results=True)`), whatever each returned or raised; DrillError after
    `timeout` seconds. What the drill waits on instead of a pause that hopes they ran."""
    from celery.exceptions import TimeoutError as ResultTimeout

    start = time.monotonic()
    for result in sent:
        left = timeout - (time.monotonic() - start)
        try:
            result.get(timeout=max(left, 0.1), propagate=False)
        except ResultTimeout:
            raise DrillError(
                f"task {result.id} not ended by a worker after {timeout:.0f}s"
            ) from None
    return time.monotonic() - start


def reconcile() -> dict[str, int]:
    """Beat's reconciler, called here so the drill decides when it runs."""
    from integrations.tasks import sync_due_connections

    result: dict[str, int] = sync_due_connections()
    return result


def active_runs(ids: list[int] | None = None) -> int:
    """Queued or running runs of connections that can sync (a run left queued for a connection
    that can no longer sync is never picked up: counted by `orphaned_runs`)."""
    runs = (
        models()
        .SyncRun.objects.active()
        .filter(connection__status="active", connection__chosen_profile__isnull=False)
    )
    if ids is not None:
        runs = runs.filter(connection_id__in=ids)
    return int(runs.count())


def orphaned_runs() -> int:
    return int(models().SyncRun.objects.active().exclude(connection__status="active").count())


def wait_idle(ids: list[int] | None, timeout: float, reconcile_every: float = 2.0) -> float:
    """Wait until no run of `ids` is queued or running, calling the reconciler meanwhile."""
    start = time.monotonic()
    last = 0.0
    while time.monotonic() - start < timeout:
        if not active_runs(ids):
            return time.monotonic() - start
        if time.monotonic() - last > reconcile_every:
            reconcile()
            last = time.monotonic()
        time.sleep(0.3)
    raise DrillError(f"runs still active after {timeout:.0f}s: {active_runs(ids)}")


def start_slowed_syncs(zywave: Sandbox, ids: list[int], delay_ms: int) -> datetime:
    """Full syncs of `ids` over pages each `delay_ms` slower, once one has written a page (so
    a fault injected next lands mid-run). Returns when they were queued."""
    m = models()
    zywave.add_fault(API_PAGES, count=100000, delay_ms=delay_ms)
    started = datetime.now(UTC)
    queue_syncs(ids, full=True)
    wait_until(
        "runs to start",
        lambda: m.SyncRun.objects.filter(
            connection_id__in=ids, state="running", pages_done__gt=0
        ).exists(),
        timeout=60,
    )
    return started


def clear_faults(stack: Stack) -> dict[str, Any]:
    """Read the counters, then clear faults, counters and runtime settings."""
    counters = stack.zywave.counters()
    stack.zywave.reset()
    return dict(counters)


def duplicates() -> int:
    from django.db import connection as db

    with db.cursor() as cursor:
        total = 0
        for table in ("integrations_account", "integrations_contact"):
            cursor.execute(
                f"SELECT count(*) FROM (SELECT connection_id, zywave_id FROM {table} "  # noqa: S608
                "GROUP BY 1, 2 HAVING count(*) > 1) d"
            )
            total += cursor.fetchone()[0]
    return total


def mirror_mismatches(stack: Stack, indexes: list[int]) -> list[str]:
    """Connections whose mirror does not hold exactly the sandbox's records."""
    m = models()
    wrong = []
    for i in indexes:
        conn = conn_of(i)
        expected = stack.sandbox_book(i)
        accounts = m.Account.objects.filter(connection=conn).count()
        contacts = m.Contact.objects.filter(connection=conn).count()
        foreign = m.Account.objects.filter(connection=conn).exclude(
            name__startswith=f"Drill{i:03d} "
        )
        if accounts != expected or contacts != expected or foreign.exists():
            wrong.append(f"staff{i:03d}: {accounts}/{contacts} of {expected}")
    return wrong


class RequestLog:
    """Every HTTP request this process sends (requests' adapter), with send and answer times."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @contextmanager
    def recording(self) -> Iterator[RequestLog]:
        from requests.adapters import HTTPAdapter

        original = HTTPAdapter.send
        log = self

        def send(adapter: HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.time()
            row: dict[str, Any] = {"path": urlsplit(request.url).path, "sent": started}
            try:
                response = original(adapter, request, *args, **kwargs)
            except Exception as exc:
                row.update(answered=time.time(), status=None, error=type(exc).__name__)
                with log.lock:
                    log.rows.append(row)
                raise
            row.update(
                answered=time.time(),
                status=response.status_code,
                retry_after=response.headers.get("Retry-After"),
            )
            with log.lock:
                log.rows.append(row)
            return response

        HTTPAdapter.send = send  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            HTTPAdapter.send = original  # type: ignore[method-assign]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# --- Connecting: the complete flow a person goes through ----------------------------------


def logged_in(stack: Stack, i: int) -> Browser:
    """A browser holding a portal session for staff{i} (what /login/ would set; the password
    hash check is left out so that the load measures connecting, not PBKDF2)."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User

    user = User.objects.get(username=f"staff{i:03d}")
    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    browser = Browser()
    browser.cookies.set(settings.SESSION_COOKIE_NAME, store.session_key, domain="127.0.0.1")
    return browser


def connect_flow(stack: Stack, i: int) -> dict[str, Any]:
    """Dashboard → Connect Zywave → sandbox login and consent → callback → profile picker →
    choose the first profile. Returns timings, statuses, state and PKCE challenge."""
    portal = stack.portal
    browser = logged_in(stack, i)
    statuses: list[int] = []
    result: dict[str, Any] = {"i": i, "ok": False, "statuses": statuses}
    start = time.monotonic()
    try:
        page = browser.get(f"{portal}/", timeout=60)
        statuses.append(page.status_code)
        begin = browser.post(
            f"{portal}/oauth/login/zywave/",
            data={"csrfmiddlewaretoken": csrf_from(page.text)},
            allow_redirects=False,
            timeout=60,
        )
        statuses.append(begin.status_code)
        authorize = begin.headers.get("Location", "")
        query = parse_qs(urlsplit(authorize).query)
        result["state"] = query.get("state", [""])[0]
        result["challenge"] = query.get("code_challenge", [""])[0]
        result["method"] = query.get("code_challenge_method", [""])[0]
        callback = stack.zywave.walk_authorize(
            authorize, username=stack.email(i), password=PASSWORD
        )
        landed = browser.get(callback, timeout=60)
        statuses.extend([r.status_code for r in landed.history] + [landed.status_code])
        path = urlsplit(landed.url).path
        if path == "/":
            # One profile: the callback chose it and started the first sync.
            chosen = landed
        elif path == "/zywave/profiles/":
            chosen, profile_id = choose_first_profile(browser, landed, timeout=60)
            if profile_id is None:
                raise DrillError("no profile offered")
            statuses.extend([r.status_code for r in chosen.history] + [chosen.status_code])
        else:
            raise DrillError(f"landed on {landed.url}")
        result["ok"] = chosen.status_code == 200 and "profile" in chosen.text.lower()
        if not result["ok"]:
            result["error"] = f"choosing a profile answered {chosen.status_code}"
    except Exception as exc:  # noqa: BLE001 (a failed flow is a figure, not a crash)
        result["error"] = f"{type(exc).__name__}: {exc}"[:300]
    result["seconds"] = time.monotonic() - start
    return result
