"""The Celery tasks, called as the functions they are (no broker): token upkeep and its
deadline warning, one connection's sync, and beat's sweep for due and abandoned runs.
(test_sync.py runs the same tasks on a real worker where the worker itself matters.)"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.utils import timezone

from integrations.models import Account, Connection, Contact, SyncRun
from integrations.sync import claim, needs_full, queue_run, sync_now
from integrations.tasks import (
    keep_tokens_alive,
    refresh_connection,
    sync_connection,
    sync_due_connections,
    upkeep_horizon,
)
from portal.celery import app
from tests.conftest import connection
from tests.integrations.flows import api_requests, inject_fault, sandbox_counts
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db


def token_counts(sandbox: Sandbox) -> dict[str, int]:
    return dict(sandbox.counters()["token"])


def expiring_in(minutes: int) -> dict[str, Any]:
    return {"access_token_expires_at": timezone.now() + timedelta(minutes=minutes)}


# --- refresh_connection ----------------------------------------------------------------------


def test_refreshing_a_deleted_connection_reports_it_gone(db: None) -> None:
    assert refresh_connection(987654) == "gone"


def test_a_token_that_would_lapse_before_the_next_upkeep_is_refreshed_now(
    staff: User, zywave: Sandbox
) -> None:
    # Upkeep runs every 10 minutes and hands out tokens valid 5 more: 12 minutes is too short.
    conn = connection(staff, zywave, profile=False, **expiring_in(12))
    zywave.control("POST", "counters/reset")
    assert refresh_connection(conn.pk) == "ok"
    assert token_counts(zywave) == {"refresh_token:success": 1}
    expires = Connection.objects.get(pk=conn.pk).access_token_expires_at
    assert expires is not None and expires > timezone.now() + timedelta(minutes=55)


def test_a_token_that_outlasts_the_next_upkeep_is_left_alone(staff: User, zywave: Sandbox) -> None:
    # An hour-long token ten minutes old: refreshing it would refresh everyone on every run.
    conn = connection(staff, zywave, profile=False, **expiring_in(50))
    zywave.control("POST", "counters/reset")
    assert refresh_connection(conn.pk) == "ok"
    assert token_counts(zywave) == {}


def test_refreshing_a_grant_zywave_ended_reports_reauth_required(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave, profile=False, **expiring_in(1))
    zywave.control("POST", "users/agent@example.com/revoke")
    assert refresh_connection(conn.pk) == "reauth_required"
    assert Connection.objects.get(pk=conn.pk).status == Connection.Status.REAUTH_REQUIRED


def test_a_transient_refresh_failure_is_reported_and_the_connection_stays_active(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave, profile=False, **expiring_in(1))
    inject_fault(zywave, "^/connect/token", status=503)
    assert refresh_connection(conn.pk) == "failed"
    conn.refresh_from_db()
    assert conn.status == Connection.Status.ACTIVE and conn.last_error


def test_refreshing_a_connection_that_needs_reauth_asks_zywave_nothing(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, status=Connection.Status.REAUTH_REQUIRED, **expiring_in(1))
    assert refresh_connection(conn.pk) == "reauth_required"
    assert token_counts(zywave) == {}


# --- keep_tokens_alive (beat) ---------------------------------------------------------------


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks the task under test queues run at once, in this process: Celery's own eager mode,
    in place of a broker and a worker."""
    monkeypatch.setattr(app.conf, "task_always_eager", True)


@pytest.mark.usefixtures("eager")
def test_upkeep_refreshes_only_the_connections_expiring_before_its_next_run(
    staff: User, other_staff: User, zywave: Sandbox
) -> None:
    soon = connection(staff, zywave, profile=False, **expiring_in(12))
    later = connection(
        other_staff, zywave, profile=False, zywave_user="solo@example.com", **expiring_in(50)
    )
    zywave.control("POST", "counters/reset")
    assert keep_tokens_alive() == {"refreshes_queued": 1, "deadline_warnings": 0}
    assert token_counts(zywave) == {"refresh_token:success": 1}
    assert Connection.objects.get(pk=soon.pk).last_refreshed_at is not None
    assert Connection.objects.get(pk=later.pk).last_refreshed_at is None
    assert list(Connection.objects.expiring_within(upkeep_horizon())) == []


def test_upkeep_warns_an_owner_once_in_the_last_week_before_the_30_day_deadline(
    staff: User, django_capture_on_commit_callbacks: Any
) -> None:
    connection(staff, authorized_at=timezone.now() - timedelta(days=24))
    with django_capture_on_commit_callbacks(execute=True):
        first = keep_tokens_alive()
        second = keep_tokens_alive()
    assert (first["deadline_warnings"], second["deadline_warnings"]) == (1, 0)
    assert [message.to for message in mail.outbox] == [[staff.email]]
    assert "renewing" in mail.outbox[0].subject


def test_upkeep_warns_nobody_before_the_last_week(
    staff: User, django_capture_on_commit_callbacks: Any
) -> None:
    conn = connection(staff, authorized_at=timezone.now() - timedelta(days=20))
    with django_capture_on_commit_callbacks(execute=True):
        assert keep_tokens_alive()["deadline_warnings"] == 0
    assert mail.outbox == []
    assert Connection.objects.get(pk=conn.pk).deadline_warned_at is None


# --- sync_connection ------------------------------------------------------------------------


@pytest.fixture
def quick_retries(settings: Any) -> None:
    settings.ZYWAVE_SYNC_BACKOFF_SECONDS = 0


@pytest.mark.usefixtures("quick_retries")
def test_sync_connection_takes_the_queued_run_and_finishes_it(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave)
    queued = queue_run(conn, full=True, trigger="person")
    assert queued is not None
    assert sync_connection(conn.pk) == SyncRun.State.SUCCEEDED
    assert SyncRun.objects.get().pk == queued.pk
    expected = sandbox_counts(zywave, conn)
    assert Account.objects.filter(connection=conn).count() == expected["accounts"]
    assert Contact.objects.filter(connection=conn).count() == expected["contacts"]


def test_sync_connection_absorbs_a_request_while_another_worker_holds_the_run(
    staff: User,
) -> None:
    conn = connection(staff)
    held = claim(conn.pk)  # another worker took it: running, its lease current
    assert held is not None
    assert sync_connection(conn.pk) == "absorbed"
    assert list(SyncRun.objects.values_list("pk", "state")) == [(held.pk, SyncRun.State.RUNNING)]


@pytest.mark.usefixtures("quick_retries")
def test_sync_connection_resumes_a_run_whose_worker_died_where_it_stood(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    run = queue_run(conn, trigger="test")
    assert run is not None
    # As a killed worker leaves it: running, accounts done, its lease run out.
    SyncRun.objects.filter(pk=run.pk).update(
        state=SyncRun.State.RUNNING,
        resource="contacts",
        pages_done=3,
        lease_until=timezone.now() - timedelta(seconds=1),
    )
    zywave.control("POST", "counters/reset")
    assert sync_connection(conn.pk) == SyncRun.State.SUCCEEDED
    assert SyncRun.objects.get().pk == run.pk
    assert api_requests(zywave, "account") == 0 and api_requests(zywave, "contact") > 0


def test_sync_connection_of_a_deleted_connection_is_absorbed(db: None) -> None:
    assert sync_connection(987654) == "absorbed"
    assert not SyncRun.objects.exists()


# --- sync_due_connections (beat) --------------------------------------------------------------


@pytest.fixture(autouse=True)
def phase_ten_minutes_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection's phase in the interval (`ratelimit.phase`) fell ten minutes ago, so
    these tests of when beat queues a run do not depend on the ids the database hands out.
    How phases spread connections is tested in test_ratelimit.py."""
    from integrations import ratelimit

    at = timezone.now().timestamp() - 10 * 60
    monkeypatch.setattr(ratelimit, "phase", lambda pk, interval: at % interval)


def finished_run(conn: Connection, queued_minutes_ago: float) -> SyncRun:
    queued_at = timezone.now() - timedelta(minutes=queued_minutes_ago)
    return SyncRun.objects.create(
        connection=conn, state=SyncRun.State.SUCCEEDED, queued_at=queued_at, finished_at=queued_at
    )


def test_beat_queues_a_connection_that_never_synced_and_sends_its_task_after_commit(
    staff: User, django_capture_on_commit_callbacks: Any
) -> None:
    conn = connection(staff)
    # Not executed: the task would go to a broker.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert sync_due_connections() == {"queued": 1, "resumed": 0}
    run = SyncRun.objects.get()
    assert (run.connection_id, run.state, run.trigger) == (conn.pk, "queued", "schedule")
    assert [(c.func.__self__.name, c.args) for c in callbacks] == [
        ("integrations.tasks.sync_connection", (conn.pk,))
    ]


def test_beat_leaves_a_connection_synced_within_the_interval(staff: User) -> None:
    finished_run(connection(staff), queued_minutes_ago=5)
    assert sync_due_connections() == {"queued": 0, "resumed": 0}
    assert SyncRun.objects.count() == 1


def test_beat_queues_a_connection_again_once_the_interval_has_passed(
    staff: User, settings: Any
) -> None:
    settings.ZYWAVE_SYNC_INTERVAL_MINUTES = 15
    finished_run(connection(staff), queued_minutes_ago=16)  # its phase has come round since
    assert sync_due_connections() == {"queued": 1, "resumed": 0}
    assert SyncRun.objects.filter(state=SyncRun.State.QUEUED).count() == 1


def test_beat_skips_connections_without_a_profile_or_needing_reauth(
    staff: User, other_staff: User
) -> None:
    connection(staff, profile=False)
    connection(other_staff, status=Connection.Status.REAUTH_REQUIRED)
    assert sync_due_connections() == {"queued": 0, "resumed": 0}
    assert not SyncRun.objects.exists()


def test_beat_resends_a_running_run_whose_lease_ran_out(
    staff: User, django_capture_on_commit_callbacks: Any
) -> None:
    conn = connection(staff)
    SyncRun.objects.create(
        connection=conn,
        state=SyncRun.State.RUNNING,
        lease_until=timezone.now() - timedelta(seconds=1),
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert sync_due_connections() == {"queued": 0, "resumed": 1}
    assert [c.args for c in callbacks] == [(conn.pk,)]


def test_beat_leaves_a_run_whose_worker_still_holds_the_lease(staff: User) -> None:
    conn = connection(staff)
    SyncRun.objects.create(
        connection=conn,
        state=SyncRun.State.RUNNING,
        lease_until=timezone.now() + timedelta(minutes=1),
    )
    assert sync_due_connections() == {"queued": 0, "resumed": 0}


def test_beat_leaves_a_freshly_queued_run_to_its_own_message(staff: User, settings: Any) -> None:
    settings.ZYWAVE_SYNC_REQUEUE_SECONDS = 60
    queued_at = timezone.now() - timedelta(seconds=30)
    SyncRun.objects.create(connection=connection(staff), queued_at=queued_at)
    assert sync_due_connections() == {"queued": 0, "resumed": 0}


def test_beat_resends_a_queued_run_nobody_started_within_the_requeue_delay(
    staff: User, settings: Any
) -> None:
    # A worker killed outright takes its reserved messages with it (see SyncRun.objects.stale).
    settings.ZYWAVE_SYNC_REQUEUE_SECONDS = 60
    queued_at = timezone.now() - timedelta(seconds=61)
    SyncRun.objects.create(connection=connection(staff), queued_at=queued_at)
    assert sync_due_connections() == {"queued": 0, "resumed": 1}


# --- Beat's schedule: incremental every interval, full every full-sync period -----------------


def due(now: Any = None) -> set[int]:
    return set(Connection.objects.due_for_sync(now).values_list("pk", flat=True))


def age(run: SyncRun, **ago: timedelta) -> None:
    """Move a run's times back from where they stand now: `queued=...`, `finished=...`."""
    run.refresh_from_db()
    fields = {f"{name}_at": getattr(run, f"{name}_at") - delta for name, delta in ago.items()}
    SyncRun.objects.filter(pk=run.pk).update(**fields)


def test_beat_decides_when_a_connection_is_due_and_when_its_run_is_full(
    staff: User, settings: Any
) -> None:
    settings.ZYWAVE_SYNC_INTERVAL_MINUTES = 15
    settings.ZYWAVE_FULL_SYNC_HOURS = 24
    conn = connection(staff)
    # Never ran: due, and the first run is full.
    assert due() == {conn.pk} and needs_full(conn)

    full = finished_run(conn, queued_minutes_ago=5)
    SyncRun.objects.filter(pk=full.pk).update(full=True)
    # Ran 5 minutes ago: not due; the full run is recent, so the next one is incremental.
    assert due() == set() and not needs_full(conn)
    assert sync_due_connections() == {"queued": 0, "resumed": 0}

    # 16 minutes ago (past the interval) but well within 24 hours: due, incremental.
    age(full, queued=timedelta(minutes=11), finished=timedelta(minutes=11))
    assert due() == {conn.pk} and not needs_full(conn)
    # One minute short of the full-sync period: still incremental.
    age(full, finished=timedelta(hours=23, minutes=43))  # finished 23h59m ago
    assert not needs_full(conn)
    # Past it: the next run is full. An incremental run since does not count as a full one.
    age(full, finished=timedelta(minutes=2))  # 24h01m ago
    assert needs_full(conn)
    recent = finished_run(conn, queued_minutes_ago=1)
    assert due() == set() and needs_full(conn)
    # A full run that failed does not count either.
    SyncRun.objects.filter(pk=recent.pk).update(full=True, state=SyncRun.State.FAILED)
    assert needs_full(conn)
    SyncRun.objects.filter(pk=recent.pk).update(state=SyncRun.State.SUCCEEDED)
    assert not needs_full(conn)

    # The interval is read from the setting, not fixed.
    settings.ZYWAVE_SYNC_INTERVAL_MINUTES = 1
    assert due(timezone.now() + timedelta(seconds=61)) == {conn.pk}


def beat_runs(conn: Connection, capture: Any) -> SyncRun:
    """Beat finds the connection due, queues a run and sends its task; the worker runs it."""
    with capture(execute=False) as callbacks:
        assert sync_due_connections() == {"queued": 1, "resumed": 0}
    assert [c.args for c in callbacks] == [(conn.pk,)]
    assert sync_connection(conn.pk) == SyncRun.State.SUCCEEDED
    return SyncRun.objects.latest("queued_at")


@pytest.mark.usefixtures("quick_retries")
def test_a_full_run_removes_what_zywave_deleted_and_an_incremental_run_does_not(
    staff: User, zywave: Sandbox, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.ZYWAVE_SYNC_INTERVAL_MINUTES = 15
    settings.ZYWAVE_FULL_SYNC_HOURS = 24
    conn = connection(staff, zywave)
    assert conn.chosen_profile is not None
    profile_id = conn.chosen_profile.zywave_id
    mirror = Account.objects.filter(connection=conn)

    first = sync_now(conn)
    assert first is not None and first.state == SyncRun.State.SUCCEEDED
    assert first.full  # the first run is full, though not asked for
    before = sandbox_counts(zywave, conn)["accounts"]
    assert mirror.count() == before

    deleted = [
        str(pk)
        for pk in zywave.control("POST", "accounts/delete", profile_id=profile_id, count=3)["ids"]
    ]
    assert len(deleted) == 3 and mirror.filter(zywave_id__in=deleted).count() == 3
    assert sandbox_counts(zywave, conn)["accounts"] == before - 3

    # Past the interval, within the full-sync period: beat's run is incremental and cannot
    # know what was deleted, so the rows stay.
    age(first, queued=timedelta(minutes=16), finished=timedelta(minutes=16))
    incremental = beat_runs(conn, django_capture_on_commit_callbacks)
    assert incremental.pk != first.pk and not incremental.full
    assert mirror.filter(zywave_id__in=deleted).count() == 3
    assert mirror.count() == before

    # The last full run ages past ZYWAVE_FULL_SYNC_HOURS: the next run is full and removes them.
    age(first, finished=timedelta(hours=24))
    age(incremental, queued=timedelta(minutes=16), finished=timedelta(minutes=16))
    assert needs_full(conn)
    full = beat_runs(conn, django_capture_on_commit_callbacks)
    assert full.pk not in {first.pk, incremental.pk} and full.full
    assert not mirror.filter(zywave_id__in=deleted).exists()
    assert mirror.count() == before - 3
    assert not needs_full(conn)


def test_beat_leaves_queued_runs_alone_while_sync_messages_wait_in_the_broker(
    staff: User, settings: Any
) -> None:
    # Behind a deep backlog a queued run is waiting its turn: resending it every minute would
    # only grow the backlog. The broker is the run's Redis; the message here is a stand-in.
    settings.ZYWAVE_SYNC_REQUEUE_SECONDS = 60
    SyncRun.objects.create(
        connection=connection(staff), queued_at=timezone.now() - timedelta(seconds=61)
    )
    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        client.lpush("sync", "a message ahead of it")
        try:
            assert sync_due_connections() == {"queued": 0, "resumed": 0}
        finally:
            client.delete("sync")
    assert sync_due_connections() == {"queued": 0, "resumed": 1}


def test_old_sync_history_is_purged_in_batches_keeping_what_the_next_run_needs(
    staff: User, other_staff: User, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integrations import tasks

    settings.ZYWAVE_SYNC_HISTORY_DAYS = 7
    monkeypatch.setattr(tasks, "PURGE_BATCH", 3)
    conn, other = connection(staff), connection(other_staff)
    now = timezone.now()

    def run(c: Connection, days: float, state: str = "succeeded", full: bool = False) -> SyncRun:
        at = now - timedelta(days=days)
        return SyncRun.objects.create(
            connection=c, state=state, full=full, queued_at=at, finished_at=at
        )

    purged = [run(conn, 20, full=True), run(conn, 19), run(conn, 18, "failed")]
    newest_full = run(conn, 12, full=True)  # old, but the newest full run: kept
    purged.append(run(conn, 11))
    newest_ok = run(conn, 10)  # the newest successful run: kept
    recent = [run(conn, 1, "failed"), run(conn, 0.5, "partial")]  # within 7 days: kept
    only_failures = [run(other, 30, "failed"), run(other, 8, "failed")]  # none succeeded
    queued = SyncRun.objects.create(connection=other, queued_at=now - timedelta(days=9))
    assert tasks.purge_sync_history() == 6  # in batches of 3
    left = set(SyncRun.objects.values_list("pk", flat=True))
    assert left == {newest_full.pk, newest_ok.pk, *(r.pk for r in recent), queued.pk}
    assert not left & {r.pk for r in purged + only_failures}
    assert tasks.purge_sync_history() == 0
