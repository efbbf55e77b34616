"""Drills that break what the portal runs on: Redis restarted, PostgreSQL restarted, the
network to Zywave partitioned.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import requests

from tests.drills.helpers import (
    RequestLog,
    Result,
    Scale,
    active_runs,
    conn_ids,
    connect_flow,
    duplicates,
    expire_tokens,
    logged_in,
    mirror_mismatches,
    models,
    queue_syncs,
    start_slowed_syncs,
    wait_idle,
)
from tests.drills.netfaults import can_partition, partition
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
from tests.smoke.run_smoke import Browser


def use_broker(url: str) -> None:
    """Send from this process to another broker (same reset as tests/integrations/workers)."""
    from portal.celery import app

    app.conf.broker_url = url
    app.conf.result_backend = url
    app._after_fork()
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


def connect_missing(stack: Stack, indexes: list[int]) -> None:
    """Connect each of `indexes` who holds no connection that can sync (the whole flow, as the
    connect burst does), then wait for the full syncs that choosing a profile queued."""
    able = set(
        models()
        .Connection.objects.filter(
            status="active",
            chosen_profile__isnull=False,
            user__username__in=[f"staff{i:03d}" for i in indexes],
        )
        .values_list("user__username", flat=True)
    )
    missing = [i for i in indexes if f"staff{i:03d}" not in able]
    for i in missing:
        flow = connect_flow(stack, i)
        if not flow["ok"]:
            raise DrillError(f"connecting staff{i:03d}: {flow.get('error')}")
    if missing:
        wait_idle(conn_ids(missing), timeout=300)


def drill_redis_restart(stack: Stack, scale: Scale, indexes: list[int], overdue: int) -> Result:
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
    # What the drill needs, whichever drills ran before it: its people connected, and one
    # (`overdue`) last queued over ZYWAVE_SYNC_INTERVAL_MINUTES ago, so that beat's reconciler
    # has a sync to queue after the restart. After the drills before it both already hold.
    connect_missing(stack, [*indexes, overdue])
    interval = timedelta(minutes=int(stack.env["ZYWAVE_SYNC_INTERVAL_MINUTES"]))
    overdue_id = conn_ids([overdue])[0]
    wait_until(
        f"staff{overdue:03d} to be due for the reconciler",
        lambda: not m.SyncRun.objects.filter(
            connection_id=overdue_id, queued_at__gte=datetime.now(UTC) - interval
        ).exists(),
        timeout=interval.total_seconds() + 30,
        interval=1.0,
    )
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
    # The dashboard loads once more by everyone, now that the runs are over, before the
    # browsing stops (a failed load counts too: it is a figure, not a wait).
    idle_at = time.monotonic()
    wait_until(
        "every browser to load the dashboard once more",
        lambda: sum(1 for t, _ in list(samples) if t > idle_at) >= len(browsers),
        timeout=60,
    )
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
    cut_requests = RequestLog()  # how the refreshes' requests ended, as requests raised it
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
                with cut_requests.recording():
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
    # Each refresh's token request, in order: the exception requests raised (a dropped SYN:
    # ConnectTimeout; "no route to host": ConnectionError) or, were it answered, the status.
    cut_ends = [
        row.get("error") or row["status"]
        for row in cut_requests.rows
        if row["path"] == "/connect/token"
    ]
    f = result.figures
    f.update(
        connections=len(ids),
        seconds_cut=round(healed_at - cut_at, 1),
        sync_retries=dict(Counter(re.findall(r"waits [0-9.]+s after (\w+)", logs))),
        refreshes_while_cut=cut_refreshes,
        refresh_requests_while_cut=cut_ends,
        runs=ended,
        recovered_seconds_after_heal=round(recovered, 1),
        connections_synced=len(done),
        wrongly_reauth=wrongly,
        tokens_lost=tokens_lost,
        duplicates=duplicates(),
        mirror_mismatches=mismatched,
    )
    # A dropped SYN times out; once the neighbour entry expires the kernel answers "no route
    # to host" sooner. Either way a transient failure from the connect timeout or the refused
    # connection, never an answer or a read timeout: the mechanism is what is checked. The
    # clock is a coarse guard only (a loaded CI machine must not trip it).
    ceiling = connect * 3 + 10
    ended_by = {"timeout": "ConnectTimeout", "connection_failed": "ConnectionError"}
    result.checks = {
        "timeouts while cut": f["sync_retries"].get("ZywaveTimeout", 0) >= 1
        and bool(cut_refreshes)
        and len(cut_ends) == len(cut_refreshes)
        and all(
            (code := re.search(r"\((timeout|connection_failed)\)$", outcome)) is not None
            and ended_by[code.group(1)] == end
            and t <= ceiling
            for (t, outcome), end in zip(cut_refreshes, cut_ends, strict=True)
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
