"""Zywave's one rate budget (integrations/ratelimit.py): shared by real processes through the
run's Redis, paused for everyone by a 429, safe without Redis, interactive first, and the
schedule spread over the interval."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations import ratelimit
from integrations.client import RateLimited
from integrations.models import Connection, SyncRun
from integrations.tasks import sync_due_connections
from integrations.tokens import client_for
from tests.conftest import connection, member
from tests.sandboxserver import Sandbox

ROOT = Path(__file__).resolve().parents[2]

# One process taking slots for `seconds` and printing when it was allowed to send each call.
TAKER = textwrap.dedent(
    """
    import json, os, sys, time
    import django
    django.setup()
    from integrations import ratelimit
    seconds, priority = float(sys.argv[1]), sys.argv[2]
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    while time.time() < start:
        time.sleep(0.001)
    sent = []
    with ratelimit.priority(priority):
        while time.time() < start + seconds:
            ratelimit.wait_for_slot(int(os.environ["CONNECTION"]))
            sent.append(time.time())
    print(json.dumps(sent))
    """
)


def takers(
    count: int, seconds: float, rate: int, priority: str = "background", **env: str
) -> list[list[float]]:
    """`count` real processes drawing on the budget at once; each one's send times."""
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "ZYWAVE_RATE_LIMIT": str(rate),
        "CONNECTION": "1",
        **env,
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TAKER, str(seconds), priority],
            cwd=ROOT,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    for process in processes:  # each has set Django up
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
    start = time.time() + 0.2
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{start}\n")
        process.stdin.close()
    sent = []
    for process in processes:
        assert process.stdout is not None
        sent.append(json.loads(process.stdout.read()))
        process.wait(timeout=60)
    return sent


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


@pytest.mark.slow
def test_four_processes_share_one_budget_and_use_it_whole() -> None:
    rate, seconds = 40, 4.0
    sent = takers(4, seconds, rate)
    every = [at for one in sent for at in one]
    # No more than the budget in any second (and the background's lead of 0.1 s: +4, +1 for
    # the first call of an idle bucket), and the budget used rather than wasted: at least
    # three quarters of it however loaded this 2-core machine is (a slot whose every taker
    # wakes late is lost; `make bench`'s fleet section measures the fraction), all four served.
    lead = int(rate * ratelimit.BACKGROUND_LEAD)
    assert most_in_any_window(every, 1.0) <= rate + lead + 1
    assert 0.75 * rate * seconds <= len(every) <= rate * seconds + lead + 1
    assert all(len(one) >= 0.15 * rate * seconds for one in sent), [len(one) for one in sent]


@pytest.mark.slow
def test_the_per_connection_budget_holds_across_processes() -> None:
    sent = takers(2, 3.0, 1000, ZYWAVE_RATE_LIMIT_PER_CONNECTION="10")
    every = [at for one in sent for at in one]
    assert most_in_any_window(every, 1.0) <= 10 + 1 + 1  # the lead: 10 x 0.1 s
    assert len(every) >= 27


def test_a_429_pauses_every_caller_of_the_app_for_its_retry_after(
    staff: User, other_staff: User, zywave: Sandbox, settings: Any
) -> None:
    settings.ZYWAVE_RATE_LIMIT = 1000
    first = connection(staff, zywave)
    other = connection(other_staff, zywave, zywave_user="solo@example.com")
    zywave.add_fault("^/accounts/v2.0/account$", status=429, retry_after="5")
    with pytest.raises(RateLimited):
        client_for(first).get("/accounts/v2.0/account")
    paused_until = time.time() + ratelimit.paused_for()
    assert paused_until - time.time() > 4
    # Another connection, in another process (a worker elsewhere), sends only once the pause
    # is over: the 429 reached everyone, not only the caller that got it.
    [sent] = takers(1, 0.01, 1000, CONNECTION=str(other.pk))
    assert sent and sent[0] >= paused_until - 0.05
    # And after it, in this process, the app calls Zywave again at once.
    started = time.monotonic()
    client_for(other).get("/accounts/v2.0/account")
    assert time.monotonic() - started < 1.0
    assert ratelimit.paused_for() == 0


def test_without_redis_each_process_keeps_a_local_limit_and_health_says_so(
    settings: Any, caplog: pytest.LogCaptureFixture, admin_client: Any
) -> None:
    from tests.services import free_port

    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    settings.ZYWAVE_RATE_LIMIT = 100
    settings.ZYWAVE_RATE_LIMIT_FALLBACK = 10
    ratelimit.forget()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="integrations.ratelimit"):
        waits = [ratelimit.reserve(7) for _ in range(5)]
    assert time.monotonic() - started < 2  # no hang on the dead Redis
    # Never unlimited: five calls at once are spaced a tenth of a second apart (the first two
    # at once: the background's lead).
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3], abs=0.02)
    assert ratelimit.degraded()
    said = [r.getMessage() for r in caplog.records if "rate budget" in r.getMessage()]
    assert len(said) == 1 and "limits itself to 10" in said[0]  # once, not once per call
    assert "127.0.0.1" not in caplog.text  # the broker's address is not logged
    body = admin_client.get("/health/").json()
    assert "rate_limit" in body["warnings"]
    assert "10 Zywave requests/s" in body["warnings"]["rate_limit"]
    # A pause still holds without Redis.
    ratelimit.pause(1.0)
    assert ratelimit.reserve(8) >= 0.9


def test_interactive_calls_go_ahead_of_the_background_backlog(settings: Any) -> None:
    settings.ZYWAVE_RATE_LIMIT = 10
    # Eight background callers have reserved the next 0.8 s of the budget (the first two at
    # once: the background's lead of 0.1 s).
    background = [ratelimit.reserve(100 + n) for n in range(8)]
    assert background[-1] == pytest.approx(0.6, abs=0.05)
    with ratelimit.priority(ratelimit.INTERACTIVE):
        interactive = ratelimit.reserve(1)
    assert interactive == pytest.approx(0.3, abs=0.05)  # ahead by the interactive lead, 0.5 s
    # The background caller after it waits behind both: the budget is kept.
    assert ratelimit.reserve(200) == pytest.approx(0.8, abs=0.05)


def test_without_a_budget_a_429_pause_still_holds(settings: Any) -> None:
    settings.ZYWAVE_RATE_LIMIT = 0
    assert ratelimit.reserve(1) == 0.0  # no limit: no wait
    ratelimit.pause(2)
    assert 1.5 < ratelimit.reserve(1) <= 2.0


def test_a_person_is_told_to_come_back_rather_than_kept_waiting(settings: Any) -> None:
    settings.ZYWAVE_RATE_LIMIT = 10
    ratelimit.pause(30)
    with ratelimit.priority(ratelimit.INTERACTIVE), pytest.raises(ratelimit.Busy) as busy:
        ratelimit.reserve(1)
    assert 29 < busy.value.wait <= 30


def test_sync_slots_are_capped_and_renewed(settings: Any) -> None:
    settings.ZYWAVE_MAX_CONCURRENT_SYNCS = 2
    assert ratelimit.take_sync_slot(1, 60) and ratelimit.take_sync_slot(2, 60)
    assert not ratelimit.take_sync_slot(3, 60)
    assert ratelimit.take_sync_slot(1, 60)  # the holder renews its own
    ratelimit.release_sync_slot(2)
    assert ratelimit.take_sync_slot(3, 60)
    assert ratelimit.syncs_running() == 2
    # A long sync renews its slot with each page; one that died lets it go when its lease ends.
    assert ratelimit.take_sync_slot(1, 0.05)
    ratelimit.renew_sync_slot(3, 0.05)
    ratelimit.renew_sync_slot(9, 60)  # holds none: takes none
    time.sleep(0.1)
    assert ratelimit.syncs_running() == 0
    assert ratelimit.take_sync_slot(4, 60)
    ratelimit.renew_sync_slot(4, 0.05)
    ratelimit.renew_sync_slot(4, 60)
    time.sleep(0.1)
    assert ratelimit.syncs_running() == 1


# --- The schedule, spread over the interval ------------------------------------------------


def test_phases_spread_connections_evenly_over_the_interval() -> None:
    interval = 900
    minutes = [0] * 15
    for pk in range(1, 10_001):
        minutes[int(ratelimit.phase(pk, interval) // 60)] += 1
    # 10,000 connections, 15 minutes: about 667 a minute, none over a fifth more.
    assert max(minutes) < 1.2 * 10_000 / 15 and min(minutes) > 0.8 * 10_000 / 15


def test_10000_connections_synced_in_one_minute_are_due_spread_over_their_next_interval() -> None:
    interval, start = 900.0, 1_800_000_000.0
    last = dict.fromkeys(range(1, 10_001), start)
    due_per_minute = []
    for minute in range(1, 46):
        now = start + minute * 60
        due = [pk for pk, at in last.items() if ratelimit.is_due(pk, at, now, interval)]
        for pk in due:
            last[pk] = now
        due_per_minute.append(len(due))
        if minute == 18:
            assert all(at > start for at in last.values())  # each once within 1.1 intervals
    # Nothing is due within a tenth of the interval; then each minute takes its own share
    # (about 667) instead of all 10,000 at minute 15, and every connection keeps its phase.
    assert due_per_minute[0] == 0
    assert max(due_per_minute) < 1.25 * 10_000 / 15, due_per_minute
    # Never more than 1.1 intervals (and a beat's minute) between two runs of one connection.
    assert all(start + 45 * 60 - at <= 1.1 * interval + 60 for at in last.values())


def test_a_run_by_hand_just_before_the_phase_does_not_bring_a_scheduled_one_at_once() -> None:
    interval, pk = 900.0, 42
    phase_at = 1_800_000_000.0 // interval * interval + ratelimit.phase(pk, interval)
    assert not ratelimit.is_due(pk, phase_at - 10, phase_at + 30, interval)
    assert not ratelimit.is_due(pk, phase_at - 10, phase_at + interval - 1, interval)
    assert ratelimit.is_due(pk, phase_at - 10, phase_at + interval, interval)  # the next phase
    assert ratelimit.is_due(pk, phase_at - interval - 1, phase_at + 1, interval)


# --- Beat's scan: a fixed number of queries per batch ---------------------------------------


def test_beat_queues_a_large_fleet_in_a_few_queries_per_batch(
    db: None, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    from integrations import tasks

    monkeypatch.setattr(tasks, "SCAN_BATCH", 100)
    base = connection(member("fleet-0"))
    users = User.objects.bulk_create([User(username=f"fleet-{n}") for n in range(1, 350)])
    Connection.objects.bulk_create(
        [
            Connection(
                user=user,
                zywave_subject=f"sub-{user.username}",
                access_token="a",
                refresh_token="r",
                chosen_profile=base.chosen_profile,
            )
            for user in users
        ]
    )
    assert Connection.objects.count() == 350
    # One of them synced a minute ago: not due.
    recent = Connection.objects.order_by("pk")[5]
    SyncRun.objects.create(
        connection=recent, state="succeeded", queued_at=timezone.now() - timedelta(minutes=1)
    )
    with (
        CaptureQueriesContext(db_connection) as queries,
        django_capture_on_commit_callbacks(execute=False) as callbacks,
    ):
        result = sync_due_connections()
    assert result == {"queued": 349, "resumed": 0}
    assert len(callbacks) == 349
    # 4 batches x (read, insert, read back) + savepoints, and the stale runs: not 350 queries.
    assert len(queries) <= 4 * 5 + 4, [q["sql"][:80] for q in queries.captured_queries]
    # Beat again at once: all queued, nothing more.
    assert sync_due_connections() == {"queued": 0, "resumed": 0}


# --- Priorities, with real workers -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_sync_now_starts_ahead_of_a_deep_scheduled_backlog(zywave: Sandbox, tmp_path: Path) -> None:
    from integrations.sync import start_interactive
    from tests.bench.fleet import make_fleet
    from tests.integrations.workers import Worker, use_test_broker, wait_for

    use_test_broker()
    ids = make_fleet(zywave, 30, prefix="priority")
    # Beat finds all 30 due: a scheduled backlog on `sync`, drained at 6 Zywave requests/s.
    assert sync_due_connections()["queued"] == 30
    budget = {"ZYWAVE_RATE_LIMIT": "6"}
    scheduled = Worker(zywave, tmp_path / "sync.log", "sync,tokens,celery", **budget).start()
    live = Worker(zywave, tmp_path / "live.log", "interactive,refetch,webhooks,celery", **budget)
    live.start()
    try:
        runs = SyncRun.objects.filter(connection_id__in=ids)
        wait_for(lambda: runs.filter(state="succeeded").count() >= 2, what="the backlog moves")
        promoted: SyncRun | None = None
        for _ in range(3):  # the run chosen may be taken by a worker just then: choose again
            waiting = runs.filter(state="queued").order_by("-connection_id").first()
            assert waiting is not None
            pressed = timezone.now()
            promoted, created = start_interactive(waiting.connection, full=False, trigger="person")
            assert promoted is not None and promoted.pk == waiting.pk and not created
            if promoted.trigger == "person":  # taken to the front
                break
        assert promoted is not None and promoted.trigger == "person"
        run = promoted
        wait_for(lambda: runs.filter(pk=run.pk, state="succeeded").exists(), what="Sync now")
        run.refresh_from_db()
        still_waiting = runs.filter(state="queued").count()
        wait_for(lambda: not runs.filter(state__in=["queued", "running"]).exists(), 90, "drain")
    finally:
        scheduled.stop()
        live.stop()
    assert run.started_at is not None and run.trigger == "person"
    # It started at once and was done while most of the backlog still waited its turn.
    assert (run.started_at - pressed).total_seconds() < 3
    assert still_waiting >= 10
    # The scheduled message for that connection found its run done: no second run, and every
    # connection of the backlog synced once.
    assert runs.filter(connection_id=run.connection_id).count() == 1
    assert runs.filter(state="succeeded").count() == 30


# --- The cap on scheduled syncs, in the task -------------------------------------------------


def sync_messages() -> list[dict[str, Any]]:
    """The `sync_connection` messages that were waiting in the run's Redis, oldest first
    (headers), taken out of it: no later test or worker sees them."""
    from portal.celery import app

    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        raw = client.lrange("sync", 0, -1)
        client.delete("sync")
    return [json.loads(item)["headers"] for item in reversed(raw)]


def test_a_scheduled_sync_without_a_slot_is_sent_again_naming_its_run(
    staff: User, settings: Any
) -> None:
    from integrations.tasks import sync_connection

    settings.ZYWAVE_MAX_CONCURRENT_SYNCS = 1
    settings.ZYWAVE_SYNC_SLOT_WAIT_SECONDS = 1
    conn = connection(staff)
    run = SyncRun.objects.create(connection=conn)
    assert ratelimit.take_sync_slot(999, 60) == ratelimit.TAKEN  # another connection syncs
    assert sync_messages() == []
    assert sync_connection(conn.pk) == "deferred"
    # Not dropped: the message is back at the end of `sync`, for that run; the run still waits.
    [message] = sync_messages()
    assert message["task"] == "integrations.tasks.sync_connection"
    assert message["kwargsrepr"] == f"{{'run_id': {run.pk}}}"
    run.refresh_from_db()
    assert run.state == "queued"


def test_a_second_message_of_a_syncing_connection_leaves_its_slot_alone(
    staff: User, other_staff: User, settings: Any
) -> None:
    from integrations.tasks import sync_connection

    settings.ZYWAVE_MAX_CONCURRENT_SYNCS = 1
    settings.ZYWAVE_SYNC_SLOT_WAIT_SECONDS = 1
    conn = connection(staff)
    SyncRun.objects.create(
        connection=conn, state="running", lease_until=timezone.now() + timedelta(minutes=1)
    )
    assert ratelimit.take_sync_slot(conn.pk, 60) == ratelimit.TAKEN  # its worker's
    assert sync_connection(conn.pk) == "absorbed"  # a duplicate: the run is held
    # The slot is still the running sync's: the cap still holds another connection back.
    assert ratelimit.syncs_running() == 1
    assert ratelimit.take_sync_slot(connection(other_staff).pk, 60) == 0
