"""Drills that break syncs: Zywave rate-limiting the pages, workers killed mid-sync."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from tests.drills.helpers import (
    API_PAGES,
    RequestLog,
    Result,
    Scale,
    clear_faults,
    conn_ids,
    conn_of,
    duplicates,
    mirror_mismatches,
    models,
    queue_syncs,
    reconcile,
    wait_idle,
)
from tests.drills.stack import Stack


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
