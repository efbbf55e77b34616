"""The drills. Each takes the running `Stack` and a `Scale` and returns a result row: what was
injected, what was expected, the figures measured and a verdict computed from them.

Figures are measured, never assumed: from the portal's database (runs, events, mirror rows),
the sandbox's counters, request times recorded in this process, and /proc.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import sqlite3
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
import requests

from tests.drills.netfaults import CuttingProxy, can_partition, partition
from tests.drills.stack import (
    CLIENT_ID,
    PASSWORD,
    DrillError,
    Stack,
    redis_server,
    seed_drill_users,
    stop_process,
    wait_until,
)
from tests.sandboxserver import Sandbox, free_port, start_sandbox, stop_sandbox
from tests.smoke.run_smoke import Browser, choose_first_profile, csrf_from

TOKEN_PATH = r"^/connect/token$"
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


def queue_syncs(ids: list[int], full: bool = False) -> int:
    """What "Sync now" does (a queued run, then the task) where the dashboard would offer it;
    for a connection that cannot sync only the task, as a stale message would bring it."""
    from integrations.sync import can_sync, queue_run
    from integrations.tasks import sync_connection

    queued = 0
    for conn in models().Connection.objects.filter(pk__in=ids):
        if can_sync(conn) and queue_run(conn, full=full, trigger="drill") is not None:
            queued += 1
        sync_connection.delay(conn.pk, full)
    return queued


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


def fault_remaining(stack: Stack) -> int:
    return sum(f["remaining"] for f in stack.zywave.control("GET", "faults")["faults"])


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
        if urlsplit(landed.url).path != "/zywave/profiles/":
            raise DrillError(f"landed on {landed.url}")
        chosen, profile_id = choose_first_profile(browser, landed, timeout=60)
        if profile_id is None:
            raise DrillError("no profile offered")
        statuses.extend([r.status_code for r in chosen.history] + [chosen.status_code])
        result["ok"] = chosen.status_code == 200 and "profile" in chosen.text.lower()
        if not result["ok"]:
            result["error"] = f"choosing a profile answered {chosen.status_code}"
    except Exception as exc:  # noqa: BLE001 (a failed flow is a figure, not a crash)
        result["error"] = f"{type(exc).__name__}: {exc}"[:300]
    result["seconds"] = time.monotonic() - start
    return result


def tokens_belong_to_owners(stack: Stack, indexes: list[int]) -> tuple[int, int]:
    """(checked, wrong): each connection's access token, asked at Zywave's userinfo, names the
    connection's own Zywave identity; refresh tokens are all distinct."""
    wrong = 0
    refresh_tokens = set()
    session = requests.Session()
    for i in indexes:
        conn = conn_of(i)
        info = session.get(
            f"{stack.zywave.url}/connect/userinfo",
            headers={"Authorization": f"Bearer {conn.access_token}"},
            timeout=30,
        )
        email = info.json().get("email") if info.ok else None
        if email != stack.email(i) or conn.zywave_email != stack.email(i):
            wrong += 1
        refresh_tokens.add(conn.refresh_token)
    wrong += len(indexes) - len(refresh_tokens)
    return len(indexes), wrong


# --- The drills ------------------------------------------------------------------------------


def drill_connect_burst(stack: Stack, scale: Scale) -> Result:
    result = Result(
        "Load: connect burst",
        f"{scale.concurrency} concurrent clients, {scale.flows} complete connect flows (portal "
        "dashboard, Connect, sandbox login and consent, callback, profile picker, choice)",
        f"failures 0, 5xx 0, connections {scale.flows}, distinct state and PKCE challenges "
        f"{scale.flows}, tokens held by their owner only",
    )
    indexes = list(range(1, scale.flows + 1))
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=scale.concurrency) as pool:
        flows = list(pool.map(lambda i: connect_flow(stack, i), indexes))
    wall = time.monotonic() - start
    failures = [f for f in flows if not f["ok"]]
    server_errors = sum(1 for f in flows for s in f["statuses"] if s >= 500)
    times = [f["seconds"] for f in flows if f["ok"]]
    connections = models().Connection.objects.filter(status="active").count()
    checked, wrong = tokens_belong_to_owners(stack, indexes)
    f = result.figures
    f.update(
        flows=len(flows),
        failures=len(failures),
        server_errors=server_errors,
        connections=connections,
        distinct_state=len({x.get("state") for x in flows if x.get("state")}),
        distinct_pkce=len({x.get("challenge") for x in flows if x.get("challenge")}),
        pkce_s256=sum(1 for x in flows if x.get("method") == "S256"),
        wrong_owner=wrong,
        p50=round(statistics.median(times), 2) if times else None,
        p95=round(percentile(times, 0.95), 2),
        wall=round(wall, 1),
        first_errors=[x.get("error") for x in failures[:3]],
    )
    result.checks = {
        "no failures": not failures,
        "no 5xx": server_errors == 0,
        "a connection per flow": connections == scale.flows,
        "distinct state": f["distinct_state"] == scale.flows,
        "distinct PKCE": f["distinct_pkce"] == scale.flows == f["pkce_s256"],
        "tokens with their owner": wrong == 0 and checked == scale.flows,
    }
    result.measured = (
        f"{len(failures)} failures, {server_errors} 5xx, {connections} connections, "
        f"{f['distinct_state']} distinct state, {f['distinct_pkce']} distinct PKCE challenges "
        f"(S256), {wrong} tokens with another user; flow p50 {f['p50']} s, p95 {f['p95']} s "
        f"({len(flows)} flows in {f['wall']} s)"
    )
    # Choosing a profile queued a full sync per connection: let the workers finish them.
    wait_idle(None, timeout=300)
    return result


def drill_token_outage(stack: Stack, scale: Scale, first: int) -> Result:
    """The token endpoint answers 500 for a window while syncs and refreshes need it."""
    m = models()
    window = scale.outage_seconds
    indexes = list(range(first, first + scale.outage_connections))
    ids = conn_ids(indexes)
    retries = int(stack.env["ZYWAVE_SYNC_MAX_RETRIES"])
    result = Result(
        "Token endpoint 500s",
        f"/connect/token answers 500 for {window:.0f} s; {len(ids)} connections with expired "
        "access tokens are synced and refreshed meanwhile",
        "tokens lost 0, wrongly marked for re-authorization 0, refresh attempts per connection "
        f"within {retries + 1} per sync run plus 1 per refresh task, all healthy after recovery",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    before = {c.pk: c.refresh_token for c in m.Connection.objects.filter(pk__in=ids)}
    started = datetime.now(UTC)
    stack.zywave.add_fault(TOKEN_PATH, count=100000, status=500, method="POST")
    expire_tokens(ids)
    queue_syncs(ids)
    from integrations.tasks import refresh_connection

    for pk in ids:
        refresh_connection.delay(pk)
    end = time.monotonic() + window
    while time.monotonic() < end:
        time.sleep(min(5.0, max(0.0, end - time.monotonic())))
        reconcile()
    conns = list(m.Connection.objects.filter(pk__in=ids))
    wrongly_reauth = sum(1 for c in conns if c.status != "active")
    lost = sum(1 for c in conns if not c.refresh_token or c.refresh_token != before[c.pk])
    live = 0
    for c in conns:
        status = stack.zywave.control("GET", f"tokens/{c.refresh_token}")
        live += bool(status.get("active"))
    counters = clear_faults(stack)  # the recovery: the token endpoint answers again
    recovered_at = datetime.now(UTC)
    attempts = counters["token"].get("refresh_token:500", 0)
    events = m.ConnectionEvent.objects.filter(
        connection_id__in=ids, kind="refresh_failed", at__gte=started
    )
    per_conn = [events.filter(connection_id=pk).count() for pk in ids]
    runs_in_window = [
        m.SyncRun.objects.filter(connection_id=pk, queued_at__gte=started).count() for pk in ids
    ]
    over_bound = sum(
        1 for n, runs in zip(per_conn, runs_in_window, strict=True) if n > runs * (retries + 1) + 1
    )

    def healthy() -> bool:
        reconcile()
        good = m.Connection.objects.filter(
            pk__in=ids,
            status="active",
            last_error="",
            access_token_expires_at__gt=datetime.now(UTC) + timedelta(minutes=5),
        ).count()
        synced = (
            m.SyncRun.objects.filter(
                connection_id__in=ids, state="succeeded", finished_at__gte=recovered_at
            )
            .values("connection_id")
            .distinct()
            .count()
        )
        return good == len(ids) and synced == len(ids)

    recovery = wait_until("every connection healthy and synced", healthy, timeout=150, interval=2)
    f = result.figures
    f.update(
        window_seconds=window,
        connections=len(ids),
        token_requests_answered_500=attempts,
        refresh_failed_events=sum(per_conn),
        attempts_per_connection_max=max(per_conn),
        attempts_per_connection_mean=round(sum(per_conn) / len(per_conn), 2),
        sync_runs_in_window=sum(runs_in_window),
        connections_over_bound=over_bound,
        tokens_lost=lost,
        refresh_tokens_still_live=live,
        wrongly_reauth=wrongly_reauth,
        healthy_after_seconds=round(recovery, 1),
    )
    result.checks = {
        "tokens lost 0": lost == 0 and live == len(ids),
        "wrongly reauth 0": wrongly_reauth == 0,
        "attempts within bound": over_bound == 0 and attempts > 0,
        "all healthy after recovery": True,
    }
    result.measured = (
        f"{attempts} refresh requests answered 500 over {len(ids)} connections (max "
        f"{max(per_conn)}, mean {f['attempts_per_connection_mean']} per connection, "
        f"{sum(runs_in_window)} sync runs; {over_bound} over the bound); tokens lost {lost} "
        f"({live}/{len(ids)} refresh tokens still live at Zywave); wrongly marked for "
        f"re-authorization {wrongly_reauth}; all {len(ids)} refreshed and synced "
        f"{recovery:.1f} s after recovery"
    )
    return result


def drill_invalid_grant(stack: Stack, scale: Scale, victim: int, others: list[int]) -> Result:
    m = models()
    result = Result(
        "invalid_grant",
        f"the grant of one person (drill{victim:03d}) revoked at Zywave; their access token and "
        f"those of {len(others)} others expire; syncs and refreshes asked for all, then again",
        "re-authorization flagged after exactly one refresh attempt, that refresh token never "
        "presented again, the others refreshed and synced",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    victim_id = conn_ids([victim])[0]
    other_ids = conn_ids(others)
    started = datetime.now(UTC)
    stack.zywave.control("POST", f"users/{stack.email(victim)}/revoke")
    expire_tokens([victim_id, *other_ids])
    queue_syncs([victim_id, *other_ids])
    wait_idle([victim_id, *other_ids], timeout=60)
    first = stack.zywave.counters()["token"]
    # Everything that could use the token again: beat, "Sync now", the upkeep task.
    from integrations.tasks import keep_tokens_alive, refresh_connection

    queue_syncs([victim_id])
    refresh_connection.delay(victim_id)
    keep_tokens_alive.delay()
    reconcile()
    time.sleep(4)
    wait_idle([victim_id, *other_ids], timeout=60)
    after = clear_faults(stack)["token"]
    victim_conn = m.Connection.objects.get(pk=victim_id)
    others_ok = m.Connection.objects.filter(pk__in=other_ids, status="active").count()
    others_synced = (
        m.SyncRun.objects.filter(
            connection_id__in=other_ids, state="succeeded", finished_at__gte=started
        )
        .values("connection_id")
        .distinct()
        .count()
    )
    reauth_events = m.ConnectionEvent.objects.filter(
        connection_id=victim_id, kind="reauth_required", at__gte=started
    ).count()
    others_refreshed = (
        m.ConnectionEvent.objects.filter(
            connection_id__in=other_ids, kind="refreshed", at__gte=started
        )
        .values("connection_id")
        .distinct()
        .count()
    )
    emails = m.ConnectionEvent.objects.filter(connection_id=victim_id, at__gte=started).count()
    f = result.figures
    f.update(
        victim_status=victim_conn.status,
        invalid_grant_first=first.get("refresh_token:invalid_grant", 0),
        invalid_grant_total=after.get("refresh_token:invalid_grant", 0),
        refresh_successes=after.get("refresh_token:success", 0),
        reauth_events=reauth_events,
        victim_events=emails,
        others_active=others_ok,
        others_synced=others_synced,
        others_refreshed=others_refreshed,
    )
    result.checks = {
        "flagged": victim_conn.status == "reauth_required" and reauth_events == 1,
        "exactly one attempt": f["invalid_grant_first"] == 1,
        "never presented again": f["invalid_grant_total"] == 1,
        "others unaffected": others_ok == len(others) == others_synced == others_refreshed,
    }
    result.measured = (
        f"victim {victim_conn.status} after {f['invalid_grant_first']} refresh attempt "
        f"(invalid_grant); after more syncs, a refresh task and the upkeep task: "
        f"{f['invalid_grant_total']} invalid_grant in all; {reauth_events} re-authorization "
        f"event; others {others_ok}/{len(others)} active, {others_refreshed} refreshed, "
        f"{others_synced} synced"
    )
    return result


def http_date(seconds_ahead: float) -> tuple[str, float]:
    when = datetime.now(UTC) + timedelta(seconds=seconds_ahead)
    when = when.replace(microsecond=0) + timedelta(seconds=1)
    return format_datetime(when, usegmt=True), when.timestamp()


def drill_rate_limit(stack: Stack, scale: Scale, indexes: list[int]) -> Result:
    from integrations.sync import claim, queue_run, run_sync

    m = models()
    result = Result(
        "429 with Retry-After",
        "429 on the accounts and contacts pages with Retry-After as seconds (2, 3) and as an "
        "HTTP date (3-4 s ahead), during syncs in this process (request times recorded) and on "
        f"the workers ({len(indexes)} syncs, 8 429s)",
        "no request before the delay elapsed, every sync finishes",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    early: list[str] = []
    margins: list[float] = []
    seen = 0
    plans = [
        ("2", "date"),  # accounts: seconds; contacts: an HTTP date
        ("date", "3"),
    ]
    for i, plan in zip(indexes[:2], plans, strict=False):
        conn = conn_of(i)
        not_before: dict[str, float] = {}
        for resource, retry in zip(("account", "contact"), plan, strict=True):
            if retry == "date":
                value, at = http_date(3)
                not_before[resource] = at
            else:
                value = retry
            stack.zywave.add_fault(
                rf"^/accounts/v2\.0/{resource}$", count=1, status=429, retry_after=value
            )
        queue_run(conn, full=True, trigger="drill")
        run = claim(conn.pk)
        assert run is not None
        log = RequestLog()
        with log.recording():
            finished = run_sync(run)
        if finished.state != "succeeded":
            early.append(f"run {finished.pk} {finished.state}")
        for resource in ("account", "contact"):
            rows = [r for r in log.rows if r["path"] == f"/accounts/v2.0/{resource}"]
            for index, row in enumerate(rows):
                if row["status"] != 429:
                    continue
                seen += 1
                nxt = rows[index + 1]["sent"] if index + 1 < len(rows) else None
                header = row["retry_after"] or ""
                due = (
                    row["answered"] + float(header)
                    if header.isdigit()
                    else not_before.get(resource, row["answered"])
                )
                if nxt is None:
                    early.append(f"no retry after the 429 on {resource}")
                    continue
                margins.append(nxt - due)
                if nxt < due:
                    early.append(f"{resource}: retried {due - nxt:.2f}s early")
    # The same through the workers: every sync finishes.
    ids = conn_ids(indexes)
    stack.zywave.add_fault(r"^/accounts/v2\.0/account$", count=5, status=429, retry_after="1")
    value, _ = http_date(2)
    stack.zywave.add_fault(r"^/accounts/v2\.0/contact$", count=3, status=429, retry_after=value)
    stack.zywave.control("POST", "counters/reset")
    started = datetime.now(UTC)
    queue_syncs(ids, full=True)
    wait_idle(ids, timeout=120)
    counters = clear_faults(stack)
    served = sum(n for k, n in counters["api"].items() if k.endswith(":429"))
    succeeded = (
        m.SyncRun.objects.filter(connection_id__in=ids, state="succeeded", finished_at__gte=started)
        .values("connection_id")
        .distinct()
        .count()
    )
    mismatched = mirror_mismatches(stack, indexes)
    f = result.figures
    f.update(
        timed_429s=seen,
        early_requests=len([e for e in early if "early" in e]),
        problems=early,
        min_margin_seconds=round(min(margins), 3) if margins else None,
        worker_429s_served=served,
        worker_syncs=len(ids),
        worker_syncs_succeeded=succeeded,
        mirror_mismatches=mismatched,
    )
    result.checks = {
        "no early request": not early and seen == 4,
        "every sync finishes": succeeded == len(ids) and not mismatched and served == 8,
    }
    result.measured = (
        f"{seen} timed 429s (2 as seconds, 2 as HTTP dates): {f['early_requests']} requests "
        f"before the delay, smallest margin {f['min_margin_seconds']} s; on the workers "
        f"{served} 429s served, {succeeded}/{len(ids)} syncs succeeded, mirrors exact"
    )
    return result


def drill_worker_kills(stack: Stack, scale: Scale) -> Result:
    m = models()
    indexes = list(range(1, scale.big + 1))
    ids = conn_ids(indexes)
    result = Result(
        "Worker SIGKILL mid-sync",
        f"{scale.kills} SIGKILLs of a whole worker (parent and pool) at random moments (1-3 s "
        f"apart) while {len(ids)} connections run full syncs of {stack.sizes[0]} accounts and "
        f"{stack.sizes[0]} contacts (pages slowed by 150 ms); a new worker started after each; "
        f"lease {stack.env['ZYWAVE_SYNC_LEASE_SECONDS']} s, reconciler every 2 s",
        "syncs lost 0, duplicate records 0, every mirror exact",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    stack.zywave.add_fault(API_PAGES, count=100000, delay_ms=150)
    started = datetime.now(UTC)
    rng = random.Random(11)
    kills = 0
    mid_run = 0
    next_kill = time.monotonic() + rng.uniform(1, 3)
    last_reconcile = 0.0
    deadline = time.monotonic() + 60 + scale.kills * 6
    while kills < scale.kills and time.monotonic() < deadline:
        idle = [
            pk for pk in ids if not m.SyncRun.objects.active().filter(connection_id=pk).exists()
        ]
        if idle:
            queue_syncs(idle, full=True)
        if time.monotonic() - last_reconcile > 2:
            reconcile()
            last_reconcile = time.monotonic()
        if time.monotonic() >= next_kill:
            running = m.SyncRun.objects.filter(
                connection_id__in=ids, state="running", pages_done__gt=0
            ).count()
            mid_run += bool(running)
            victim = rng.choice(stack.workers)
            stack.replace_worker(victim)
            kills += 1
            next_kill = time.monotonic() + rng.uniform(1, 3)
        time.sleep(0.3)
    counters = clear_faults(stack)  # pages at full speed again
    drain = wait_idle(ids, timeout=180)
    runs = m.SyncRun.objects.filter(connection_id__in=ids, queued_at__gte=started)
    states: dict[str, int] = {}
    for state in runs.values_list("state", flat=True):
        states[state] = states.get(state, 0) + 1
    resumed = runs.filter(state="succeeded", trigger="drill").count()
    dupes = duplicates()
    mismatched = mirror_mismatches(stack, indexes)
    lost = sum(n for s, n in states.items() if s != "succeeded")
    f = result.figures
    f.update(
        kills=kills,
        kills_with_a_run_mid_page=mid_run,
        runs=sum(states.values()),
        states=states,
        resumed_or_succeeded=resumed,
        syncs_lost=lost,
        duplicates=dupes,
        mirror_mismatches=mismatched,
        drain_seconds=round(drain, 1),
        api_requests=sum(counters["api"].values()),
    )
    result.checks = {
        f"{scale.kills} kills": kills == scale.kills,
        "syncs lost 0": lost == 0,
        "duplicates 0": dupes == 0,
        "mirrors exact": not mismatched,
    }
    result.measured = (
        f"{kills} kills ({mid_run} with a run between pages); {f['runs']} runs: {states}; "
        f"syncs lost {lost}; duplicate records {dupes}; {len(mismatched)} mirrors off; "
        f"all runs done {drain:.1f} s after the last kill"
    )
    return result


def lock_is_free(pk: int) -> bool:
    from django.db import DatabaseError, transaction

    try:
        with transaction.atomic():
            models().Connection.objects.select_for_update(nowait=True).filter(pk=pk).first()
        return True
    except DatabaseError:
        return False


def drill_kill_in_refresh(stack: Stack, scale: Scale, i: int) -> Result:
    m = models()
    pk = conn_ids([i])[0]
    result = Result(
        "Worker SIGKILL inside a token refresh",
        "the token endpoint holds a refresh for 4 s (then would answer 503); both workers are "
        "SIGKILLed while one holds the connection's row lock and waits for it; new workers "
        "start and the refresh is asked again",
        "no stuck lock, exactly one successful refresh, connection active",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    stack.zywave.add_fault(TOKEN_PATH, count=1, status=503, delay_ms=4000, method="POST")
    expire_tokens([pk])
    started = datetime.now(UTC)
    from integrations.tasks import refresh_connection

    refresh_connection.delay(pk)
    wait_until("the refresh to reach Zywave", lambda: fault_remaining(stack) == 0, timeout=30)
    time.sleep(0.5)
    held = not lock_is_free(pk)
    killed_at = time.monotonic()
    for worker in list(stack.workers):
        stack.replace_worker(worker)
    free_after = wait_until("the row lock to be released", lambda: lock_is_free(pk), timeout=60)
    free_after = max(free_after, time.monotonic() - killed_at - free_after)
    stack.wait_workers()
    time.sleep(4)  # the 503 is answered to nobody
    refresh_connection.delay(pk)
    wait_until(
        "the refresh",
        lambda: m.Connection.objects.filter(
            pk=pk, access_token_expires_at__gt=datetime.now(UTC) + timedelta(minutes=5)
        ).exists(),
        timeout=60,
    )
    counters = clear_faults(stack)["token"]
    conn = m.Connection.objects.get(pk=pk)
    refreshed = m.ConnectionEvent.objects.filter(
        connection_id=pk, kind="refreshed", at__gte=started
    ).count()
    f = result.figures
    f.update(
        lock_held_before_kill=held,
        lock_free_seconds_after_kill=round(time.monotonic() - killed_at, 1)
        if not held
        else round(free_after, 2),
        refresh_successes=counters.get("refresh_token:success", 0),
        refresh_503=counters.get("refresh_token:503", 0),
        invalid_grant=counters.get("refresh_token:invalid_grant", 0),
        refreshed_events=refreshed,
        status=conn.status,
    )
    result.checks = {
        "lock held, then released": held and free_after < 30,
        "one refresh": f["refresh_successes"] == 1 == refreshed and f["invalid_grant"] == 0,
        "active": conn.status == "active",
    }
    result.measured = (
        f"row lock held at the kill: {held}; free {f['lock_free_seconds_after_kill']} s after "
        f"it; {f['refresh_successes']} successful refresh at Zywave ({refreshed} recorded), "
        f"{f['invalid_grant']} invalid_grant; connection {conn.status}"
    )
    return result


def after_a_lost_refresh(stack: Stack, lost: Any) -> dict[str, int]:
    """Every chance to loop after a refresh whose answer never arrived: the refresh retried on
    a worker, then a sync, the upkeep task and another refresh. Returns the token endpoint's
    counters since the last reset, and clears the faults."""
    from integrations.tasks import keep_tokens_alive, refresh_connection

    m = models()
    refresh_connection.delay(lost.pk)
    wait_until(
        "the retried refresh",
        lambda: m.Connection.objects.get(pk=lost.pk).status != "active"
        or m.Connection.objects.filter(
            pk=lost.pk, access_token_expires_at__gt=datetime.now(UTC)
        ).exists(),
        timeout=30,
    )
    queue_syncs([lost.pk])
    keep_tokens_alive.delay()
    refresh_connection.delay(lost.pk)
    time.sleep(4)
    wait_idle([lost.pk], timeout=30)
    counters = clear_faults(stack)["token"]
    lost.refresh_from_db()
    return dict(counters)


def drill_lost_answer(stack: Stack, scale: Scale, i: int) -> Result:
    """A refresh whose answer is lost on the way back, by a proxy that resets the portal's
    connection after Zywave answered (and so rotated the refresh token)."""
    from django.conf import settings

    from integrations.tokens import RefreshFailed, refresh

    result = Result(
        "Lost refresh response through a proxy",
        "a reverse proxy between the portal and /connect/token forwards one refresh, reads "
        "Zywave's answer (the refresh token rotated) and resets the portal's connection "
        "instead of passing it on; then a retry on a worker, a sync, the upkeep task and "
        "another refresh",
        "no loop, the consumed token presented at most once more, the connection classified "
        "as needing re-authorization",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    upstream = urlsplit(stack.zywave.url)
    proxy = CuttingProxy((upstream.hostname or "127.0.0.1", upstream.port or 80), cuts=1)
    lost = conn_of(i)
    expire_tokens([lost.pk])
    lost.refresh_from_db()
    direct = settings.ZYWAVE_AUTH_URL
    settings.ZYWAVE_AUTH_URL = proxy.url  # this process only: its refresh goes through it
    began = time.monotonic()
    try:
        refresh(lost)
        outcome = "refreshed"
    except RefreshFailed as exc:
        outcome = f"RefreshFailed ({exc})"
    finally:
        settings.ZYWAVE_AUTH_URL = direct
        proxy.close()
    call = time.monotonic() - began
    lost.refresh_from_db()
    status_after_loss = lost.status
    counters = after_a_lost_refresh(stack, lost)
    f = result.figures
    f.update(
        answers_cut=len(proxy.cut_statuses),
        zywave_answered=proxy.cut_statuses,
        call_seconds=round(call, 2),
        outcome=outcome,
        status_after_the_loss=status_after_loss,
        rotated_at_zywave_unseen=counters.get("refresh_token:success", 0),
        consumed_token_presented_again=counters.get("refresh_token:invalid_grant", 0),
        token_requests_total=sum(counters.values()),
        connection_status=lost.status,
    )
    result.checks = {
        "the answer was lost after the rotation": proxy.cut_statuses == [200]
        and f["rotated_at_zywave_unseen"] == 1
        and outcome.startswith("RefreshFailed"),
        "a lost answer is not yet a lost grant": status_after_loss == "active",
        "no loop, classified": f["consumed_token_presented_again"] == 1
        and f["token_requests_total"] == 2
        and lost.status == "reauth_required",
    }
    result.measured = (
        f"Zywave answered {proxy.cut_statuses} and rotated; the portal saw a reset after "
        f"{call:.2f} s ({outcome.split(' (')[0]}) and kept the connection {status_after_loss}; "
        f"the consumed token was presented {f['consumed_token_presented_again']} more time, "
        f"{f['token_requests_total']} token requests in all (then a sync, the upkeep task and "
        f"a refresh: no further use); connection {lost.status}"
    )
    return result


def drill_hang(stack: Stack, scale: Scale, indexes: list[int], lost_one: int) -> Result:
    """The API and the token endpoint hang past the read timeout."""
    from integrations.tokens import RefreshFailed, client_for, refresh

    m = models()
    read_timeout = float(stack.env["ZYWAVE_READ_TIMEOUT"])
    hang_ms = int((read_timeout + 4) * 1000)
    result = Result(
        "API and token endpoint hanging",
        f"the accounts API and /connect/token answer only after {hang_ms / 1000:.0f} s (read "
        f"timeout {read_timeout:.0f} s): one call timed here, then {len(indexes)} syncs on the "
        "workers; a refresh whose answer comes after the timeout (Zywave rotated the token, "
        "the portal never saw it)",
        "every call ends at its timeout, no worker stuck, no task lost; the lost refresh: "
        "no loop, the consumed token presented at most once more, re-authorization flagged",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    ids = conn_ids(indexes)
    # One call here, timed.
    stack.zywave.add_fault(r"^/accounts/v2\.0/account$", count=1, delay_ms=hang_ms)
    conn = conn_of(indexes[0])
    client = client_for(conn)
    call_start = time.monotonic()
    outcome = "answered"
    try:
        next(iter(client.pages("/accounts/v2.0/account")))
    except Exception as exc:  # noqa: BLE001
        outcome = type(exc).__name__
    api_call = time.monotonic() - call_start
    # Syncs on the workers, each meeting one hang.
    stack.zywave.add_fault(
        r"^/accounts/v2\.0/account$", count=len(ids), delay_ms=hang_ms, method="GET"
    )
    started = datetime.now(UTC)
    queue_syncs(ids, full=True)
    sync_time = wait_idle(ids, timeout=120)
    succeeded = m.SyncRun.objects.filter(
        connection_id__in=ids, state="succeeded", finished_at__gte=started
    ).count()
    heartbeat = stack.wait_workers(timeout=30)
    # The token endpoint: a refresh that times out here while Zywave rotates the token.
    lost = conn_of(lost_one)
    stack.zywave.add_fault(TOKEN_PATH, count=1, delay_ms=hang_ms, method="POST")
    expire_tokens([lost.pk])
    lost.refresh_from_db()
    token_start = time.monotonic()
    token_outcome = "refreshed"
    try:
        refresh(lost)
    except RefreshFailed as exc:
        token_outcome = f"RefreshFailed ({exc})"
    token_call = time.monotonic() - token_start
    time.sleep(hang_ms / 1000 - token_call + 1)  # Zywave finishes the rotation meanwhile
    middle = stack.zywave.counters()["token"]
    counters = after_a_lost_refresh(stack, lost)
    f = result.figures
    f.update(
        api_call_seconds=round(api_call, 2),
        api_call_outcome=outcome,
        worker_syncs=len(ids),
        worker_syncs_succeeded=succeeded,
        worker_syncs_seconds=round(sync_time, 1),
        heartbeat_after_seconds=round(heartbeat, 2),
        token_call_seconds=round(token_call, 2),
        token_call_outcome=token_outcome,
        rotated_at_zywave_unseen=middle.get("refresh_token:success", 0),
        consumed_token_presented_again=counters.get("refresh_token:invalid_grant", 0),
        token_requests_total=sum(counters.values()),
        lost_connection_status=lost.status,
    )
    limit = read_timeout + 1.5
    result.checks = {
        "API call ends at its timeout": read_timeout - 0.5 <= api_call <= limit
        and outcome != "answered",
        "token call ends at its timeout": read_timeout - 0.5 <= token_call <= limit,
        "no task lost": succeeded == len(ids),
        "no worker stuck": heartbeat < 10,
        "lost refresh classified, no loop": lost.status == "reauth_required"
        and f["consumed_token_presented_again"] == 1,
    }
    result.measured = (
        f"API call ended after {api_call:.2f} s ({outcome}); token call after "
        f"{token_call:.2f} s ({token_outcome.split(' (')[0]}); {succeeded}/{len(ids)} syncs on "
        f"the workers succeeded in {sync_time:.1f} s; workers answered a heartbeat in "
        f"{heartbeat:.2f} s; lost refresh: Zywave rotated ({f['rotated_at_zywave_unseen']}), "
        f"the consumed token was presented {f['consumed_token_presented_again']} more time "
        f"(then a sync, the upkeep task and a refresh task: no further use), connection "
        f"{lost.status}"
    )
    return result


def use_broker(url: str) -> None:
    """Send from this process to another broker (same reset as tests/integrations/workers)."""
    from portal.celery import app

    app.conf.broker_url = url
    app.conf.result_backend = url
    app._after_fork()
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


def drill_redis_restart(stack: Stack, scale: Scale, indexes: list[int]) -> Result:
    m = models()
    result = Result(
        "Redis restarted mid-run",
        f"a Redis of our own (no persistence, as in docker/compose.yaml) restarted while "
        f"{len(indexes)} syncs run (pages slowed); workers and this process use it",
        "workers consume again (time to first task), the reconciler re-enqueues overdue syncs, "
        "nothing lost",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    own = redis_server(port, stack.tmp / "redis")
    stack.swap_workers({**stack.env, "REDIS_URL": url})
    try:
        use_broker(url)
        stack.wait_workers(timeout=60)
        ids = conn_ids(indexes)
        started = start_slowed_syncs(stack.zywave, ids, delay_ms=400)
        states_at_restart = dict.fromkeys(("queued", "running"), 0)
        for state in (
            m.SyncRun.objects.active().filter(connection_id__in=ids).values_list("state", flat=True)
        ):
            states_at_restart[state] += 1
        stop_process(own)
        own = redis_server(port, stack.tmp / "redis")
        restarted = time.monotonic()
        first_task = stack.wait_workers(timeout=90)
        stack.zywave.reset()  # pages at full speed
        # Beat's reconciler: every connection overdue (last queued over a minute ago) again.
        from integrations.tasks import sync_due_connections

        asked = datetime.now(UTC)
        due = sync_due_connections()
        drain = wait_idle(None, timeout=180)
        total = time.monotonic() - restarted
        runs = m.SyncRun.objects.filter(connection_id__in=ids, queued_at__gte=started)
        lost = runs.exclude(state="succeeded").count()
        scheduled = m.SyncRun.objects.filter(queued_at__gte=asked, trigger="schedule")
        overdue_runs = scheduled.count()
        overdue_synced = scheduled.filter(state="succeeded").count()
        keys_after = redis.Redis.from_url(url).dbsize()
    finally:
        stop_process(own)
        use_broker(stack.redis_url)
        stack.restore_workers()
    stack.wait_workers(timeout=60)
    mismatched = mirror_mismatches(stack, indexes)
    f = result.figures
    f.update(
        runs_at_restart=states_at_restart,
        first_task_after_restart_seconds=round(first_task, 2),
        reconciler=due,
        overdue_queued=overdue_runs,
        overdue_synced=overdue_synced,
        runs_lost=lost,
        all_done_seconds=round(total, 1),
        drain_seconds=round(drain, 1),
        mirror_mismatches=mismatched,
        keys_after=keys_after,
    )
    result.checks = {
        "workers consume again": first_task < 60,
        "reconciler re-enqueues overdue": due.get("queued", 0) >= 1
        and overdue_synced == overdue_runs == due.get("queued", 0),
        "nothing lost": lost == 0 and not mismatched,
    }
    result.measured = (
        f"at the restart {states_at_restart['running']} runs running, "
        f"{states_at_restart['queued']} queued; first task consumed {first_task:.2f} s after "
        f"Redis was back; reconciler queued {due.get('queued', 0)} overdue syncs and resumed "
        f"{due.get('resumed', 0)}; {overdue_synced}/{overdue_runs} overdue synced; "
        f"runs lost {lost}; "
        f"everything done {total:.1f} s after the restart"
    )
    return result


def drill_postgres_restart(stack: Stack, scale: Scale, indexes: list[int]) -> Result:
    """Fast shutdown of the portal's PostgreSQL while syncs run and people browse, a few
    seconds down, then up again: what an operator's restart or a failover does."""
    from django.db import connections

    from integrations.tasks import sync_due_connections

    assert stack.postgres is not None
    m = models()
    down_for = 3.0 if scale.name == "short" else 8.0
    result = Result(
        "PostgreSQL restarted",
        f"the portal's PostgreSQL (a private cluster) stopped (fast shutdown) for "
        f"{down_for:.0f} s and started again while {len(indexes)} syncs run (pages slowed) "
        f"and {len(indexes)} people load the dashboard every 0.2 s",
        "while down, pages answer 503 (try again shortly), not 500; web and workers reconnect "
        "(CONN_HEALTH_CHECKS): no 5xx once it is back, no run lost",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    ids = conn_ids(indexes)
    browsers = [logged_in(stack, i) for i in indexes]
    samples: list[tuple[float, int]] = []  # (monotonic time, status; 0 = no answer)
    stop = threading.Event()

    def browse(browser: Browser) -> None:
        while not stop.is_set() and len(samples) < 20000:
            try:
                status = browser.get(f"{stack.portal}/", timeout=10).status_code
            except requests.RequestException:
                status = 0
            samples.append((time.monotonic(), status))
            time.sleep(0.2)

    threads = [threading.Thread(target=browse, args=(b,), daemon=True) for b in browsers]
    for thread in threads:
        thread.start()
    started = start_slowed_syncs(stack.zywave, ids, delay_ms=600)
    running_at_stop = m.SyncRun.objects.filter(connection_id__in=ids, state="running").count()
    stopped_at = time.monotonic()
    stack.postgres.stop()
    time.sleep(down_for)
    back_after = stack.postgres.start()
    back_at = time.monotonic()
    connections.close_all()  # this process's connection died with the server, as the others did
    stack.zywave.reset()  # pages at full speed
    # The runs whose page transaction died hold a lease until it ends; beat's reconciler (run
    # here, as beat would every minute) resumes them then.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and active_runs(ids):
        sync_due_connections()
        time.sleep(1.0)
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)
    runs = m.SyncRun.objects.filter(connection_id__in=ids, queued_at__gte=started)
    succeeded = runs.filter(state="succeeded").values("connection_id").distinct().count()
    lost = len(ids) - succeeded
    during = [code for t, code in samples if stopped_at <= t <= back_at]
    after = [code for t, code in samples if t > back_at + 0.5]  # answers sent after it was back
    first_ok = next((t - back_at for t, code in samples if t > back_at and code == 200), None)
    worker_errors = sum(
        (stack.logs / f"{w.name}.log").read_text(errors="replace").count("OperationalError")
        for w in stack.workers
    )
    mismatched = mirror_mismatches(stack, indexes)
    f = result.figures
    f.update(
        runs_running_at_stop=running_at_stop,
        seconds_down=round(back_at - stopped_at, 1),
        seconds_to_accept_after_start=round(back_after, 2),
        requests_while_down=len(during),
        non_200_while_down=sum(1 for c in during if c != 200),
        statuses_while_down={str(c): during.count(c) for c in sorted(set(during))},
        requests_after=len(after),
        server_errors_after=sum(1 for c in after if c == 0 or c >= 500),
        first_200_after_seconds=round(first_ok, 2) if first_ok is not None else None,
        worker_operational_errors_logged=worker_errors,
        syncs=len(ids),
        syncs_succeeded=succeeded,
        runs_lost=lost,
        duplicates=duplicates(),
        mirror_mismatches=mismatched,
    )
    result.checks = {
        "the outage was real": running_at_stop >= 1 and f["non_200_while_down"] >= 1,
        "503 while down, never a 500": all(c in (200, 503) for c in during),
        "web recovers": len(after) >= 5 and f["server_errors_after"] == 0,
        "no run lost": lost == 0 and not mismatched and f["duplicates"] == 0,
    }
    result.measured = (
        f"{running_at_stop} runs running at the stop; down {f['seconds_down']} s; while down "
        f"{f['non_200_while_down']}/{len(during)} dashboard loads failed "
        f"({f['statuses_while_down']}); after: first 200 "
        f"{f['first_200_after_seconds']} s after PostgreSQL was back, 5xx "
        f"{f['server_errors_after']} of {len(after)}; syncs {succeeded}/{len(ids)} succeeded, "
        f"runs lost {lost}, duplicates {f['duplicates']}, mirrors exact: {not mismatched}"
    )
    return result


def linked_here(stack: Stack, zywave: Sandbox, username: str, email: str) -> Any:
    """A portal user connected to `zywave` (tokens from a real code flow, a chosen profile),
    set up from this process, whose settings must point at that sandbox meanwhile."""
    from django.contrib.auth.models import User
    from django.utils import timezone

    from integrations.profiles import choose_profile, refresh_profiles
    from integrations.tokens import client_for

    m = models()
    user = User.objects.create(username=username)
    tokens = zywave.obtain_tokens(
        username=email,
        password=PASSWORD,
        client_id=CLIENT_ID,
        client_secret=stack.env["ZYWAVE_CLIENT_SECRET"],
        redirect_uri=f"{stack.portal}/oauth/complete/zywave/",
    )
    conn = m.Connection(user=user, zywave_subject=email, zywave_email=email)
    conn.set_tokens(tokens)
    conn.authorized_at = timezone.now()
    conn.save()
    refresh_profiles(conn, client_for(conn))
    choose_profile(conn, client_for(conn), zywave.profiles(email)[0]["id"], actor=None)
    return conn


def drill_partition(stack: Stack, scale: Scale) -> Result:
    """The network between the portal and Zywave goes away and comes back: the sandbox serves
    from a network namespace joined by a veth pair, whose far end is taken down and up."""
    from django.conf import settings
    from django.contrib.auth.models import User

    from integrations.tokens import ReauthRequired, RefreshFailed, access_token_for, refresh

    m = models()
    cut_refreshes: list[tuple[float, str]] = []
    people = 2 if scale.name == "short" else 6
    cut_for = 10.0 if scale.name == "short" else 20.0
    connect = float(stack.env["ZYWAVE_CONNECT_TIMEOUT"])
    result = Result(
        "Network partition",
        f"a sandbox of its own in a network namespace, reached over a veth pair; {people} "
        f"connections syncing (pages slowed); the namespace's end of the pair taken down for "
        f"{cut_for:.0f} s (packets dropped), then up; the tokens of half of them expire as "
        "the link goes down",
        "calls end in timeouts, then recovery: every sync completes, tokens lost 0, "
        "connections wrongly marked for re-authorization 0, duplicates 0",
    )
    reason = can_partition()
    if reason:
        raise DrillError(reason)
    wait_idle(None, timeout=60)
    name = f"zpd{os.getpid() % 100000}"
    net = 10 + os.getpid() % 200  # a /30 of its own, should two runs overlap
    var_dir = stack.tmp / "sandbox-partitioned"
    workers: list[Any] = []
    ns_process = None
    own_redis = None
    direct = (settings.ZYWAVE_AUTH_URL, settings.ZYWAVE_API_URL)
    with partition(name, inside=f"10.213.{net}.2", outside=f"10.213.{net}.1") as part:
        try:
            zywave, ns_process = start_sandbox(
                var_dir, accounts=50, host=part.inside, wrap=part.command
            )
            seed_drill_users(var_dir, people, people, 250, 10)
            zywave.register_client(
                CLIENT_ID,
                stack.env["ZYWAVE_CLIENT_SECRET"],
                [f"{stack.portal}/oauth/complete/zywave/"],
            )
            settings.ZYWAVE_AUTH_URL = settings.ZYWAVE_API_URL = zywave.url
            conns = [
                linked_here(stack, zywave, f"part{i:03d}", stack.email(i))
                for i in range(1, people + 1)
            ]
            ids = [c.pk for c in conns]
            # Workers of its own on a Redis of its own: only this drill's tasks reach them.
            port = free_port()
            own_redis = redis_server(port, stack.tmp / "redis-partition")
            broker = f"redis://127.0.0.1:{port}/0"
            use_broker(broker)
            workers = stack.swap_workers(
                {
                    **stack.env,
                    "REDIS_URL": broker,
                    "ZYWAVE_AUTH_URL": zywave.url,
                    "ZYWAVE_API_URL": zywave.url,
                }
            )
            stack.wait_workers(timeout=60)
            started = start_slowed_syncs(zywave, ids, delay_ms=300)
            part.cut()
            cut_at = time.monotonic()
            # Refreshes while cut, from here (the workers hold their tokens in memory).
            expired = ids[: people // 2]
            expire_tokens(expired)
            for pk in expired:
                began = time.monotonic()
                try:
                    refresh(m.Connection.objects.get(pk=pk))
                    outcome = "refreshed"
                except RefreshFailed as exc:
                    outcome = str(exc)
                cut_refreshes.append((round(time.monotonic() - began, 2), outcome))
            time.sleep(max(0.0, cut_for - (time.monotonic() - cut_at)))
            part.heal()
            healed_at = time.monotonic()
            # Recovery: until every connection has a successful sync, begun before or after
            # the cut.
            deadline = time.monotonic() + 150
            done: set[int] = set()
            while time.monotonic() < deadline:
                done = set(
                    m.SyncRun.objects.filter(
                        connection_id__in=ids, state="succeeded", queued_at__gte=started
                    ).values_list("connection_id", flat=True)
                )
                if len(done) == len(ids) and not active_runs(ids):
                    break
                # What beat does when their next sync is due: only these connections (the
                # reconciler would send the stack's others to this Zywave).
                idle = [pk for pk in ids if pk not in done and not active_runs([pk])]
                if idle:
                    queue_syncs(idle, full=True)
                time.sleep(1.0)
            recovered = time.monotonic() - healed_at
            # Every stored refresh token must still work at Zywave: refresh them all, now.
            expire_tokens(ids)
            tokens_lost = 0
            for pk in ids:
                try:
                    access_token_for(m.Connection.objects.get(pk=pk))
                except (RefreshFailed, ReauthRequired):
                    tokens_lost += 1
            runs = m.SyncRun.objects.filter(connection_id__in=ids, queued_at__gte=started)
            ended = {s: runs.filter(state=s).count() for s in ("succeeded", "partial", "failed")}
            wrongly = m.Connection.objects.filter(pk__in=ids).exclude(status="active").count()
            expected = 250
            mismatched = [
                f"part{k:03d}"
                for k, pk in enumerate(ids, start=1)
                if m.Account.objects.filter(connection_id=pk).count() != expected
                or m.Contact.objects.filter(connection_id=pk).count() != expected
            ]
            logs = "".join(
                (stack.logs / f"{w.name}.log").read_text(errors="replace") for w in workers
            )
        finally:
            settings.ZYWAVE_AUTH_URL, settings.ZYWAVE_API_URL = direct
            # Their Zywave goes away with the namespace: left connected, beat would keep
            # syncing them into timeouts and hold up the workers of the drills after this one.
            User.objects.filter(username__startswith="part").delete()
            use_broker(stack.redis_url)
            stack.restore_workers()
            if own_redis is not None:
                stop_process(own_redis)
            if ns_process is not None:
                stop_sandbox(ns_process)
    stack.wait_workers(timeout=60)
    f = result.figures
    f.update(
        connections=len(ids),
        seconds_cut=round(healed_at - cut_at, 1),
        sync_retries=dict(Counter(re.findall(r"waits [0-9.]+s after (\w+)", logs))),
        refreshes_while_cut=cut_refreshes,
        runs=ended,
        recovered_seconds_after_heal=round(recovered, 1),
        connections_synced=len(done),
        wrongly_reauth=wrongly,
        tokens_lost=tokens_lost,
        duplicates=duplicates(),
        mirror_mismatches=mismatched,
    )
    result.checks = {
        # A dropped SYN times out; once the neighbour entry expires the kernel answers "no
        # route to host" sooner. Either way a transient failure, within the connect timeout.
        "timeouts while cut": f["sync_retries"].get("ZywaveTimeout", 0) >= 1
        and bool(cut_refreshes)
        and all(
            re.search(r"\((timeout|connection_failed)\)", outcome) and t < connect + 1.5
            for t, outcome in cut_refreshes
        ),
        "recovery": len(done) == len(ids) and not mismatched,
        "nothing lost": wrongly == 0 and tokens_lost == 0 and f["duplicates"] == 0,
    }
    result.measured = (
        f"cut {f['seconds_cut']} s: sync retries after {f['sync_retries']}; refreshes while "
        f"cut ended after {[t for t, _ in cut_refreshes]} s as "
        f"{sorted({o.rsplit('(', 1)[-1].rstrip(')') for _, o in cut_refreshes})}; "
        f"runs {ended}; every connection "
        f"synced ({len(done)}/{len(ids)}, mirrors exact: {not mismatched}) "
        f"{recovered:.1f} s after the link came back; wrongly re-authorization {wrongly}; "
        f"refresh tokens lost {tokens_lost} of {len(ids)} (each refreshed at Zywave after it); "
        f"duplicates {f['duplicates']}"
    )
    return result


def page_user(
    stack: Stack,
    i: int,
    until: float,
    samples: list[tuple[float, int]],
    wrong: list[str],
    wrong_errors: list[str],
) -> None:
    browser = logged_in(stack, i)
    own = f"{i:03d}"
    pattern = re.compile(r"(?:Drill|drill)(\d{3})")
    paths = ["/", "/zywave/accounts/", f"/zywave/accounts/?q=Account+{random.randint(0, 9)}"]
    n = 0
    while time.monotonic() < until and n < 2000:
        path = paths[n % len(paths)]
        n += 1
        start = time.monotonic()
        try:
            response = browser.get(f"{stack.portal}{path}", timeout=30)
        except requests.RequestException as exc:
            samples.append((time.monotonic() - start, 0))
            wrong_errors.append(type(exc).__name__)
            continue
        samples.append((time.monotonic() - start, response.status_code))
        others = {m for m in pattern.findall(response.text) if m != own}
        if others:
            wrong.append(f"staff{own} saw {sorted(others)[:3]} on {path}")
        time.sleep(0.2)


def web_restarts(stack: Stack) -> int:
    """gunicorn's max_requests recycling, counted in its log."""
    path = stack.logs / "web.log"
    return path.read_text(errors="replace").count("Autorestarting worker") if path.exists() else 0


def drill_soak(stack: Stack, scale: Scale, indexes: list[int]) -> tuple[Result, Result]:
    m = models()
    ids = conn_ids(indexes)
    lifetime = 330  # the portal refreshes 5 minutes ahead: a token is "fresh" for 30 s
    soak = Result(
        "Load: sync soak",
        f"{len(ids)} connections, access tokens living {lifetime} s (fresh for 30 s given the "
        f"portal's 5-minute margin: a refresh per use after that), beat (syncs due every "
        f"minute, token upkeep every minute), plus the upkeep task every "
        f"{5 if scale.name == 'short' else 20} s and Sync now for idle connections every "
        f"{5 if scale.name == 'short' else 10} s, for {scale.soak_seconds:.0f} s, two workers",
        "syncs lost 0, duplicates 0, refreshes per token generation 1.00, invalid_grant 0",
    )
    pages = Result(
        "Load: pages during the soak",
        f"{scale.page_users} logged-in users browsing the dashboard and accounts (list, search) "
        "during the soak, 0.2 s between pages",
        "5xx 0, another user's data shown 0",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    stack.zywave.control("POST", "settings", access_token_lifetime=lifetime)
    broker = redis.Redis.from_url(stack.redis_url)
    memory_start = {
        "workers_kib": sum(w.rss_kib() for w in stack.workers),
        "redis_used_kib": int(broker.info("memory")["used_memory"]) // 1024,
    }
    expire_tokens(ids)
    started = datetime.now(UTC)
    beat = stack.start_beat()
    samples: list[tuple[float, int]] = []
    wrong: list[str] = []
    connection_errors: list[str] = []
    restarts_before = web_restarts(stack)
    until = time.monotonic() + scale.soak_seconds
    threads = [
        threading.Thread(
            target=page_user, args=(stack, i, until, samples, wrong, connection_errors), daemon=True
        )
        for i in indexes[: scale.page_users]
    ]
    for thread in threads:
        thread.start()
    from integrations.tasks import keep_tokens_alive

    upkeep_every = 5.0 if scale.name == "short" else 20.0
    sync_every = 5.0 if scale.name == "short" else 10.0
    last_upkeep = last_sync = 0.0
    while time.monotonic() < until:
        # Beat runs each of its entries once a minute; between its runs the drill adds what
        # people and a hotter schedule would: the upkeep task and "Sync now" for idle ones.
        if time.monotonic() - last_upkeep >= upkeep_every:
            keep_tokens_alive.delay()
            last_upkeep = time.monotonic()
        if time.monotonic() - last_sync >= sync_every:
            busy = set(
                m.SyncRun.objects.active()
                .filter(connection_id__in=ids)
                .values_list("connection_id", flat=True)
            )
            queue_syncs([pk for pk in ids if pk not in busy])
            last_sync = time.monotonic()
        time.sleep(min(1.0, max(0.0, until - time.monotonic())))
        if not beat.alive():
            raise DrillError(f"beat exited:\n{beat.tail()}")
    for thread in threads:
        thread.join(timeout=60)
    memory_end = {
        "workers_kib": sum(w.rss_kib() for w in stack.workers),
        "redis_used_kib": int(broker.info("memory")["used_memory"]) // 1024,
    }
    beat.stop()
    stack.processes.remove(beat)
    stack.beat = None
    drain = wait_idle(ids, timeout=120)
    counters = clear_faults(stack)["token"]
    runs = m.SyncRun.objects.filter(connection_id__in=ids, queued_at__gte=started)
    states: dict[str, int] = {}
    for state in runs.values_list("state", flat=True):
        states[state] = states.get(state, 0) + 1
    lost = sum(n for s, n in states.items() if s != "succeeded")
    # Every refresh since the start (the upkeep task refreshes every connection, not only
    # the soak's), against every refresh Zywave answered.
    events = m.ConnectionEvent.objects.filter(kind="refreshed", at__gte=started)
    used = [e.detail.get("used") for e in events]
    generations = len(set(used))
    refreshes = counters.get("refresh_token:success", 0)
    attempts = sum(counters.values())
    per_generation = round(attempts / generations, 2) if generations else 0.0
    dupes = duplicates()
    mismatched = mirror_mismatches(stack, indexes)
    synced = runs.filter(state="succeeded").values("connection_id").distinct().count()
    f = soak.figures
    f.update(
        connections=len(ids),
        seconds=scale.soak_seconds,
        runs=sum(states.values()),
        states=states,
        connections_synced=synced,
        syncs_lost=lost,
        duplicates=dupes,
        mirror_mismatches=mismatched,
        token_requests=attempts,
        refreshes_at_zywave=refreshes,
        refreshed_events=len(used),
        token_generations_replaced=generations,
        refreshes_per_generation=per_generation,
        invalid_grant=counters.get("refresh_token:invalid_grant", 0),
        reauth=m.Connection.objects.filter(pk__in=ids).exclude(status="active").count(),
        memory_start=memory_start,
        memory_end=memory_end,
        drain_seconds=round(drain, 1),
    )
    soak.checks = {
        "syncs lost 0": lost == 0 and synced == len(ids),
        "duplicates 0": dupes == 0 and not mismatched,
        "one refresh per generation": per_generation == 1.0
        and refreshes == len(used) == generations
        and generations >= len(ids),
        "no grant lost": f["invalid_grant"] == 0 and f["reauth"] == 0,
    }
    soak.measured = (
        f"{f['runs']} sync runs over {len(ids)} connections ({states}); syncs lost {lost}; "
        f"duplicates {dupes}; {refreshes} refreshes for {generations} token generations = "
        f"{per_generation:.2f} per generation, invalid_grant {f['invalid_grant']}; worker memory "
        f"{memory_start['workers_kib'] // 1024} → {memory_end['workers_kib'] // 1024} MiB, Redis "
        f"used_memory {memory_start['redis_used_kib'] // 1024} → "
        f"{memory_end['redis_used_kib'] // 1024} MiB (the shared server)"
    )
    times = [t for t, s in samples if s]
    errors = sum(1 for _, s in samples if s >= 500)
    restarts = web_restarts(stack) - restarts_before
    pf = pages.figures
    pf.update(
        users=scale.page_users,
        pages=len(samples),
        server_errors=errors,
        connection_errors=len(connection_errors),
        connection_error_kinds=sorted(set(connection_errors)),
        gunicorn_worker_restarts=restarts,
        other_users_data=len(wrong),
        first_wrong=wrong[:3],
        p50=round(statistics.median(times), 3) if times else None,
        p95=round(percentile(times, 0.95), 3),
        max=round(max(times), 3) if times else None,
    )
    pages.checks = {
        "5xx 0": errors == 0 and len(samples) > 0,
        "no other user's data": not wrong,
        "every page answered": not connection_errors,
        "all answered 200": all(s == 200 for _, s in samples if s),
    }
    pages.measured = (
        f"{len(samples)} pages by {scale.page_users} users: {errors} 5xx, {len(wrong)} showing "
        f"another user's data; {len(connection_errors)} requests cut off without an answer "
        f"({', '.join(sorted(set(connection_errors))) or 'none'}; gunicorn recycled a worker "
        f"{restarts} times meanwhile, max_requests); p50 {pf['p50']} s, p95 {pf['p95']} s, "
        f"max {pf['max']} s"
    )
    return soak, pages


# --- Secrets after everything ------------------------------------------------------------------

SECRET_RUN = re.compile(r"[A-Za-z0-9_\-.~+/=]+")


def secret_hits(text: str, secrets: set[str]) -> int:
    """How many times any of `secrets` occurs in `text`. Tokens are made of URL-safe, base64
    and JWT characters: only runs of those are searched, window by window."""
    lengths = sorted({len(secret) for secret in secrets})
    found = 0
    for run in SECRET_RUN.findall(text):
        for length in lengths:
            if length > len(run):
                break
            found += sum(run[i : i + length] in secrets for i in range(len(run) - length + 1))
    return found


def redis_dump(url: str) -> str:
    """Every key and value of a Redis database as text, Celery's base64 message bodies
    decoded (a token in a task's arguments would be there)."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    values: list[Any] = []
    for key in client.scan_iter(count=1000):
        values.append(key)
        kind = client.type(key)
        if kind == b"string":
            values.append(client.get(key) or b"")
        elif kind == b"list":
            values += client.lrange(key, 0, -1)
        elif kind == b"hash":
            values += [v for pair in client.hgetall(key).items() for v in pair]
        elif kind in (b"set", b"zset"):
            values += list(client.smembers(key) if kind == b"set" else client.zrange(key, 0, -1))
    client.close()
    chunks = []
    for value in values:
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        chunks.append(text)
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(text)
            if message.get("properties", {}).get("body_encoding") == "base64":
                chunks.append(base64.b64decode(message["body"]).decode(errors="replace"))
    return "\n".join(chunks)


def drill_secrets(stack: Stack, scale: Scale) -> Result:
    """After every other drill: the portal's database dump, its Redis, every log and every
    email searched for every token the sandboxes issued, every profile token and the client
    secret."""
    assert stack.postgres is not None
    result = Result(
        "Secrets after all drills",
        "every token the sandboxes issued during the run (their journal), every profile token "
        "and the client secret, searched for in a pg_dump of the portal's database, every key "
        "and message in its Redis (Celery bodies decoded), every process log and every email",
        "hits 0",
    )
    issued: set[str] = set()
    journals = ""
    for journal in stack.tmp.glob("sandbox*/issued-tokens.txt"):
        journals += journal.read_text()
    issued.update(line for line in journals.splitlines() if line)
    profile_tokens: set[str] = set()
    for database in stack.tmp.glob("sandbox*/sandbox.sqlite3"):
        with contextlib.closing(sqlite3.connect(database)) as sandbox_db:
            rows = sandbox_db.execute("SELECT token FROM zywave_profile").fetchall()
        profile_tokens.update(token for (token,) in rows)
    secrets = issued | profile_tokens | {stack.env["ZYWAVE_CLIENT_SECRET"]}
    dump = subprocess.run(
        [
            str(stack.postgres.bindir / "pg_dump"),
            "--data-only",
            stack.postgres.url(stack.database),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    logs = {
        path.name: path.read_text(errors="replace")
        for path in stack.logs.glob("*.log")
        if not path.name.startswith("sandbox")  # Zywave's own log, not the portal's
    }
    mails = [path.read_text(errors="replace") for path in (stack.tmp / "mail").glob("*")]
    places = {
        "database": secret_hits(dump, secrets),
        "redis": secret_hits(redis_dump(stack.redis_url), secrets),
        "logs": sum(secret_hits(text, secrets) for text in logs.values()),
        "mail": sum(secret_hits(text, secrets) for text in mails),
    }
    f = result.figures
    f.update(
        # The search itself, on the journals: it must find every token there.
        found_in_the_journals=secret_hits(journals, secrets),
        tokens_issued=len(issued),
        profile_tokens=len(profile_tokens),
        database_dump_mb=round(len(dump) / 1e6, 1),
        log_files=len(logs),
        log_mb=round(sum(len(t) for t in logs.values()) / 1e6, 1),
        emails=len(mails),
        hits=places,
    )
    result.checks = {
        "searched for real": len(issued) >= 2 * scale.flows
        and f["found_in_the_journals"] >= len(issued)
        and len(dump) > 0,
        "hits 0": not any(places.values()),
    }
    result.measured = (
        f"{len(issued)} issued tokens, {len(profile_tokens)} profile tokens and the client "
        f"secret, in a {f['database_dump_mb']} MB database dump, Redis, {len(logs)} logs "
        f"({f['log_mb']} MB) and {len(mails)} emails: hits {sum(places.values())} "
        f"({', '.join(f'{k} {v}' for k, v in places.items())})"
    )
    return result
