"""A sync run: claim it, hold its lease, page through Zywave, finish it.

Callable without a broker (`run_sync`); the Celery tasks are thin wrappers. Memory stays flat:
one page (at most 100 records) is in memory at a time, written by `mirror.upsert` as one
statement, and the run's progress is committed with it so an interrupted run resumes from its
last committed page.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable
from datetime import UTC, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import metrics, mirror, queueing, ratelimit, webhooks
from .client import (
    Forbidden,
    MalformedResponse,
    NoProfileChosen,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    ZywaveClient,
    ZywaveError,
    ZywaveTimeout,
)
from .models import Connection, SyncRun
from .resources import REGISTRY
from .tokens import ReauthRequired, RefreshFailed, client_for

log = logging.getLogger(__name__)


def resource_names() -> list[str]:
    """The mirrored resources in the order a run walks them (parents first): the registry's."""
    return list(REGISTRY)


def skipped_now(connection: Connection, resource: str) -> bool:
    """Not asked this run: its scope was not granted, or Zywave answered 404 for its list
    less than a day ago (`Connection.skips_resource`)."""
    return not REGISTRY[resource].granted(connection.scopes) or connection.skips_resource(resource)


def log_ids(run: SyncRun) -> dict[str, int]:
    """The ids a sync's log lines carry (JSON logs show them as fields)."""
    return {"sync_run_id": run.pk, "connection_id": run.connection_id}


class SyncStopped(Exception):
    """The run cannot go on (grant ended, forbidden, too many failures): recorded on the run."""


class Unavailable(Exception):
    """The resource's list route answered 404 on its first page: Zywave does not offer it to
    this connection (a scope, a product the agency does not have). Skipped, not fatal."""


class Cancelled(Exception):
    """Someone else ended the run (profile changed, disconnected): stop without writing."""


def lease() -> timedelta:
    return timedelta(seconds=settings.ZYWAVE_SYNC_LEASE_SECONDS)


# Runs a person (or their system) is waiting for: the `interactive` queue, the budget's
# interactive lead, and no cap on syncs at once. Scheduled and webhook-started runs are not.
INTERACTIVE_TRIGGERS = frozenset({"person", "api", "profile", "admin", "command"})


def is_interactive(run: SyncRun) -> bool:
    return run.trigger in INTERACTIVE_TRIGGERS


def queue_runs(connection_ids: list[int], trigger: str = "schedule") -> list[tuple[int, int]]:
    """Queue a run for each of the connections that has none queued or running, in two
    statements whatever their number: one INSERT of them all (the partial unique index skips
    a connection with an active run) and one SELECT of those that went in. Returns (connection
    id, run id) of each run queued."""
    if not connection_ids:
        return []
    now = timezone.now()
    SyncRun.objects.bulk_create(
        [SyncRun(connection_id=pk, trigger=trigger, queued_at=now) for pk in connection_ids],
        ignore_conflicts=True,
    )
    return list(
        SyncRun.objects.filter(
            connection_id__in=connection_ids,
            state=SyncRun.State.QUEUED,
            trigger=trigger,
            queued_at=now,
        ).values_list("connection_id", "pk")
    )


def start_interactive(
    connection: Connection, full: bool, trigger: str
) -> tuple[SyncRun | None, bool]:
    """A run someone is waiting for, sent to the `interactive` queue after commit: (the run,
    True) when queued now; (the active run, False) when one was queued or running already.

    A run still waiting in the scheduled backlog is taken to the front: it becomes this
    trigger's run and an interactive message claims it, instead of the person waiting for the
    scheduled message's turn (that message finds the run done and is absorbed).
    """
    run = queue_run(connection, full=full, trigger=trigger)
    created = run is not None
    if run is None:
        run = connection.sync_runs.active().first()
        if run is None or run.state != SyncRun.State.QUEUED or is_interactive(run):
            return run, False
        promoted = SyncRun.objects.filter(pk=run.pk, state=SyncRun.State.QUEUED).update(
            trigger=trigger
        )
        if not promoted:  # a worker took it meanwhile
            return run, False
        run.trigger = trigger
    queueing.after_commit(
        "sync_connection", connection.pk, full, queue="interactive", run_id=run.pk
    )
    return run, created


def queue_run(
    connection: Connection, full: bool = False, trigger: str = "schedule"
) -> SyncRun | None:
    """A queued run for the connection, or None when one is already queued or running.

    The partial unique index on active runs makes this safe against racing callers ("Sync now"
    twice, and beat, at once): exactly one insert wins.
    """
    try:
        with transaction.atomic():
            return SyncRun.objects.create(connection=connection, full=full, trigger=trigger)
    except IntegrityError:
        if full:  # a full resync asked while an incremental one waits: make it full
            # Only a run no worker has started: a running one keeps the kind it started as.
            SyncRun.objects.filter(
                connection=connection, state=SyncRun.State.QUEUED, full=False, pages_done=0
            ).update(full=True)
        return None


def claim(connection_id: int, full: bool = False, run_id: int | None = None) -> SyncRun | None:
    """Take the connection's active run (queued, or running with an expired lease), creating a
    queued one first if there is none. None: another worker holds it, or no sync is possible,
    or the message was sent for run `run_id` and that run is over (done by an earlier message).

    A conditional UPDATE on the lease decides who owns the run: only one caller sees a row
    count of 1.
    """
    connection = Connection.objects.filter(pk=connection_id).first()
    if connection is None:
        return None
    if not connection.can_sync:
        # A run queued before the grant ended (or the profile went) would otherwise wait, and
        # be re-sent by the reconciler, for ever.
        connection.sync_runs.cancel(
            "re-authorization needed"
            if connection.status == Connection.Status.REAUTH_REQUIRED
            else "no profile chosen"
        )
        return None
    run = SyncRun.objects.active().filter(connection=connection).first()
    if run_id is not None and (run is None or run.pk != run_id):
        return None  # its run is over (taken to the front and done, or resent): absorbed
    if run is None:
        queue_run(connection, full=full, trigger="task")
        run = SyncRun.objects.active().filter(connection=connection).first()
        if run is None:
            return None
    now = timezone.now()
    owner = secrets.token_hex(8)
    won = (
        SyncRun.objects.filter(pk=run.pk, state__in=SyncRun.ACTIVE_STATES)
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))  # free or lapsed
        .update(state=SyncRun.State.RUNNING, lease_until=now + lease(), lease_owner=owner)
    )
    if not won:
        return None
    run.refresh_from_db()
    if run.started_at is None:
        run.started_at = now
        SyncRun.objects.filter(pk=run.pk, started_at__isnull=True).update(started_at=now)
    return run


def _write(run: SyncRun, **fields: Any) -> None:
    """Save fields of a run this worker holds: a conditional UPDATE on its state and lease
    owner. No row means someone else ended the run (cancelled: profile changed, disconnected)
    or took it over after our lease lapsed (a slow page): stop without writing, so two workers
    never advance one run."""
    updated = SyncRun.objects.filter(
        pk=run.pk, state=SyncRun.State.RUNNING, lease_owner=run.lease_owner
    ).update(**fields)
    if not updated:
        raise Cancelled(f"run {run.pk} is no longer ours (cancelled, or its lease was taken)")
    for name, value in fields.items():
        setattr(run, name, value)


def _lock_if_ours(run: SyncRun) -> None:
    """Lock the run's row for this transaction if this worker still holds it, else Cancelled."""
    ours = SyncRun.objects.select_for_update().filter(
        pk=run.pk, state=SyncRun.State.RUNNING, lease_owner=run.lease_owner
    )
    if ours.values_list("pk", flat=True).first() is None:
        raise Cancelled(f"run {run.pk} is no longer ours (cancelled, or its lease was taken)")


def previous_marks(connection: Connection) -> dict[str, str]:
    last = (
        SyncRun.objects.filter(connection=connection, state=SyncRun.State.SUCCEEDED)
        .order_by("-finished_at")
        .only("marks")
        .first()
    )
    return dict(last.marks) if last else {}


def needs_full(connection: Connection) -> bool:
    """First run, or the last successful full run is older than the full-sync period."""
    last_full = (
        SyncRun.objects.filter(connection=connection, state=SyncRun.State.SUCCEEDED, full=True)
        .order_by("-finished_at")
        .values_list("finished_at", flat=True)
        .first()
    )
    period = timedelta(hours=settings.ZYWAVE_FULL_SYNC_HOURS)
    return last_full is None or last_full < timezone.now() - period


def run_sync(
    run: SyncRun,
    client: ZywaveClient | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_page: Callable[[SyncRun], None] | None = None,
) -> SyncRun:
    """Page through accounts then contacts from where the run stands, one transaction per page.

    429 and 503 (and timeouts, other 5xx) wait as Zywave asks or back off with jitter, then the
    same page is asked again, up to ZYWAVE_SYNC_MAX_RETRIES times in a row. A grant that ended,
    a 403 or a bad page stop the run; pages already written stay written. `on_page` is told
    after each committed page (progress bars).
    """
    connection = Connection.objects.select_related("chosen_profile").get(pk=run.connection_id)
    return _run(run, connection, client or client_for(connection), sleep, on_page)


def _run(
    run: SyncRun,
    connection: Connection,
    client: ZywaveClient,
    sleep: Callable[[float], None],
    on_page: Callable[[SyncRun], None] | None,
) -> SyncRun:
    try:
        names = resource_names()
        if (
            not run.full
            and not run.pages_done
            and run.resource == names[0]
            and needs_full(connection)
        ):
            _write(run, full=True)
        since_marks = {} if run.full else previous_marks(connection)
        start = names.index(run.resource) if run.resource in names else 0
        for resource in names[start:]:
            if run.resource != resource:
                _write(run, resource=resource, skip=0)
            if skipped_now(connection, resource):
                # Not granted (an older connection, or a scope the app is not given): skipped,
                # not failed; the dashboard says a reconnect would grant it.
                continue
            try:
                _sync_resource(
                    run, connection, client, resource, since_marks.get(resource), sleep, on_page
                )
            except Unavailable:
                log.warning(
                    "Sync run %s: Zywave has no %s list for this connection (404); retried "
                    "in a day",
                    run.pk,
                    resource,
                    extra=log_ids(run),
                )
                connection.set_resource_available(resource, False)
                continue
            connection.set_resource_available(resource, True)
        if run.full:
            skipped = [name for name in names if skipped_now(connection, name)]
            with transaction.atomic():
                # Delete only while the run is still ours, holding its row: a cancel (profile
                # changed) waits, and no newer run's rows can be taken for unseen ones.
                _lock_if_ours(run)
                deleted = mirror.remove_unseen(run.connection_id, run.pk, keep=skipped)
                webhooks.announce_deleted(connection, deleted)
    except Cancelled as exc:
        log.info("Sync run %s stopped: %s", run.pk, exc, extra=log_ids(run))
        run.refresh_from_db()
        return run
    except SyncStopped as exc:
        return _end_run(
            run, SyncRun.State.PARTIAL if run.pages_done else SyncRun.State.FAILED, str(exc)
        )
    except Exception as exc:
        # Record it, so the run does not sit "running" until its lease ends and is retried
        # forever by the reconciler; re-raise for the worker's log.
        _end_run(run, SyncRun.State.FAILED, f"unexpected error ({type(exc).__name__})")
        raise
    if run.records_skipped and not run.records_done:
        # Zywave sent records and not one could be mirrored: that is not a successful sync.
        return _end_run(
            run,
            SyncRun.State.FAILED,
            f"Zywave sent {run.records_skipped} records, none with a usable id",
        )
    return _end_run(run, SyncRun.State.SUCCEEDED, "")


def _odata_since(mark: str | None) -> str | None:
    when = parse_datetime(mark) if mark else None
    if when is None:
        return None
    since = when - timedelta(seconds=settings.ZYWAVE_SYNC_OVERLAP_SECONDS)
    # Archiving is a soft delete that bumps updatedDateTime: this filter sees archived records.
    return f"updatedDateTime gt {since.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def _sync_resource(
    run: SyncRun,
    connection: Connection,
    client: ZywaveClient,
    resource: str,
    mark: str | None,
    sleep: Callable[[float], None],
    on_page: Callable[[SyncRun], None] | None = None,
) -> None:
    odata_filter = _odata_since(mark)
    failures = 0
    while True:
        try:
            for page in client.pages(
                REGISTRY[resource].path, odata_filter=odata_filter, skip=run.skip
            ):
                with transaction.atomic():
                    # The run's row first, then the mirror's: the order a profile change takes
                    # them in too (cancel, then tombstones), so the two never deadlock.
                    _lock_if_ours(run)
                    written = mirror.upsert(resource, run.connection_id, run.pk, page.items)
                    _advance(run, resource, len(page.items), page.total, written)
                    # The page's event, in the page's transaction (the outbox).
                    webhooks.emit_changes(
                        connection.user_id,
                        connection.pk,
                        resource,
                        written.changes,
                        written.changed_at,
                    )
                metrics.records_mirrored(resource, len(page.items))
                failures = 0
                if on_page is not None:
                    on_page(run)
            return
        except (RateLimited, ServerError, ZywaveTimeout, RefreshFailed) as exc:
            failures += 1
            if failures > settings.ZYWAVE_SYNC_MAX_RETRIES:
                raise SyncStopped(f"Zywave kept failing: {exc}") from None
            delay = _delay(getattr(exc, "retry_after", None), failures)
            log.info(
                "Sync run %s waits %.1fs after %s",
                run.pk,
                delay,
                type(exc).__name__,
                extra=log_ids(run),
            )
            _renew_lease(run, delay)
            sleep(delay)
        except ReauthRequired:
            raise SyncStopped("Zywave needs the person to reconnect") from None
        except (Forbidden, NoProfileChosen) as exc:
            raise SyncStopped(f"Zywave refused access (scope or profile): {exc}") from None
        except NotFound as exc:
            if run.skip == 0:
                raise Unavailable(resource) from None
            raise SyncStopped(str(exc)) from None
        except (Unauthorized, MalformedResponse, ZywaveError) as exc:
            raise SyncStopped(str(exc)) from None


def _delay(retry_after: float | None, failures: int) -> float:
    """Zywave's Retry-After when given (capped), else exponential backoff with full jitter."""
    cap = float(settings.ZYWAVE_SYNC_MAX_WAIT_SECONDS)
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return random.uniform(0, min(cap, settings.ZYWAVE_SYNC_BACKOFF_SECONDS * 2**failures))  # noqa: S311


def _renew_lease(run: SyncRun, extra_seconds: float = 0) -> None:
    _write(run, lease_until=timezone.now() + lease() + timedelta(seconds=extra_seconds))
    ratelimit.renew_sync_slot(run.connection_id, lease().total_seconds() + extra_seconds)


def _advance(
    run: SyncRun,
    resource: str,
    count: int,
    total: int | None,
    written: mirror.Written,
) -> None:
    """Record a committed page (inside the page's transaction)."""
    newest = written.newest
    run.skip += count
    run.pages_done += 1
    run.records_done += written.rows
    run.records_skipped += written.skipped
    if total is not None and run.skip <= count:  # first page of a resource reports totals
        run.total_reported = (
            (run.total_reported or 0) + total if resource != resource_names()[0] else total
        )
    mark = parse_datetime(run.marks[resource]) if resource in run.marks else None
    if newest is not None and (mark is None or newest > mark):
        run.marks = {**run.marks, resource: newest.isoformat()}
    # If the run was cancelled or taken over meanwhile, `_write` raises Cancelled inside the
    # page's transaction, so the page is rolled back too.
    _write(
        run,
        skip=run.skip,
        pages_done=run.pages_done,
        records_done=run.records_done,
        records_skipped=run.records_skipped,
        total_reported=run.total_reported,
        marks=run.marks,
        lease_until=timezone.now() + lease(),
    )
    ratelimit.renew_sync_slot(run.connection_id, lease().total_seconds())


def _end_run(run: SyncRun, state: str, error: str) -> SyncRun:
    if state == SyncRun.State.SUCCEEDED:
        # Carry forward the marks of resources where nothing changed this time.
        connection = Connection.objects.get(pk=run.connection_id)
        run.marks = {**previous_marks(connection), **run.marks}
    try:
        with transaction.atomic():
            _write(
                run,
                state=state,
                error=error[:500],
                finished_at=timezone.now(),
                lease_until=None,
                marks=run.marks,
            )
            announce_finished(run)
    except Cancelled as exc:
        log.info("Sync run %s not finished here: %s", run.pk, exc, extra=log_ids(run))
        run.refresh_from_db()
        return run
    metrics.sync_ended(run)
    log.info(
        "Sync run %s of connection %s %s: %s pages, %s records",
        run.pk,
        run.connection_id,
        state,
        run.pages_done,
        run.records_done,
        extra=log_ids(run),
    )
    return run


def announce_finished(run: SyncRun) -> None:
    """`sync.succeeded` or `sync.failed` (a partial run too: `data.sync.state` says which)."""
    owner_id = Connection.objects.filter(pk=run.connection_id).values_list("user_id", flat=True)
    webhooks.emit(
        owner_id.get(),
        "sync.succeeded" if run.state == SyncRun.State.SUCCEEDED else "sync.failed",
        {
            "sync": {
                "id": run.pk,
                "state": run.state,
                "full": run.full,
                "trigger": run.trigger,
                "records": run.records_done,
                "pages": run.pages_done,
                "error": run.error or None,
                "finished_at": run.finished_at.isoformat() if run.finished_at else None,
            }
        },
        connection_id=run.connection_id,
    )


def sync_now(
    connection: Connection,
    full: bool = False,
    on_page: Callable[[SyncRun], None] | None = None,
) -> SyncRun | None:
    """Run a sync in this process (operators' command, tests): claim, then run."""
    if full:
        queue_run(connection, full=True, trigger="command")
    run = claim(connection.pk, full=full)
    return run_sync(run, on_page=on_page) if run else None
