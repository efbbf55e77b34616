"""Celery tasks. They take ids, never tokens or model instances, and are safe to run twice."""

from __future__ import annotations

import logging
import random
import socket
import time
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from . import ratelimit, webhooks
from .models import Connection, SyncRun
from .sync import INTERACTIVE_TRIGGERS
from .tokens import MARGIN, ReauthRequired, RefreshFailed, access_token_for, margin_for

log = logging.getLogger(__name__)


def upkeep_horizon(connection: Connection | None = None) -> timedelta:
    """Refresh an idle connection when its token would fall under its margin before the next
    upkeep run: once per token lifetime, not on every run (an hour-long token is always
    "expiring within the next hour"). Without a connection, the widest horizon (the SQL filter
    that picks candidates)."""
    margin = MARGIN if connection is None else margin_for(connection)
    return timedelta(minutes=settings.ZYWAVE_TOKEN_UPKEEP_MINUTES) + margin


@shared_task(ignore_result=False, acks_late=False)
def heartbeat() -> dict[str, str]:
    """Answer from a worker: used by health checks and to prove the broker path works."""
    return {"worker": socket.gethostname(), "at": timezone.now().isoformat()}


@shared_task
def refresh_connection(connection_id: int) -> str:
    """Make sure the connection holds an access token valid for the next hour.

    Safe to run twice or concurrently: the refresh re-checks under the row lock.
    """
    connection = Connection.objects.filter(pk=connection_id).first()
    if connection is None:
        return "gone"
    try:
        access_token_for(connection, margin=upkeep_horizon(connection))
    except ReauthRequired:
        return "reauth_required"
    except RefreshFailed:
        return "failed"
    return "ok"


@shared_task
def keep_tokens_alive() -> dict[str, int]:
    """Beat: refresh idle connections that expire soon, warn owners of the 30-day deadline."""
    expiring = list(
        Connection.objects.expiring_within(upkeep_horizon()).values_list("pk", flat=True)
    )
    for pk in expiring:
        refresh_connection.delay(pk)
    warned = 0
    for pk in Connection.objects.due_for_deadline_warning().values_list("pk", flat=True):
        # Conditional UPDATE: of two beats racing here, only one sees a row count of 1.
        with transaction.atomic():
            won = Connection.objects.filter(pk=pk, deadline_warned_at__isnull=True).update(
                deadline_warned_at=timezone.now()
            )
            if won:
                connection = Connection.objects.select_related("user").get(pk=pk)
                transaction.on_commit(connection.notify_deadline_approaching)
                webhooks.announce_connection(connection, "connection.deadline_approaching")
                warned += 1
    return {"refreshes_queued": len(expiring), "deadline_warnings": warned}


@shared_task(acks_late=True, reject_on_worker_lost=True)
def sync_connection(connection_id: int, full: bool = False, run_id: int | None = None) -> str:
    """Mirror one connection. A second request while a run holds the lease is absorbed; a run
    whose worker died (lease expired) is resumed from its last committed page; a message for
    another run than the active one (`run_id`: done already, or taken to the front by Sync
    now) is absorbed.

    A run someone waits for draws on Zywave's budget as interactive; a scheduled one as
    background, and only once it holds one of ZYWAVE_MAX_CONCURRENT_SYNCS slots: without one
    within ZYWAVE_SYNC_SLOT_WAIT_SECONDS the message is sent again, to the back of its queue."""
    from .sync import claim, is_interactive, run_sync

    taken = False
    if not SyncRun.objects.filter(
        connection_id=connection_id,
        trigger__in=INTERACTIVE_TRIGGERS,
        state__in=SyncRun.ACTIVE_STATES,
    ).exists():
        slot = _wait_for_sync_slot(connection_id)
        if not slot:
            return _defer(connection_id, full, run_id)
        taken = slot == ratelimit.TAKEN  # HELD: this connection's sync runs elsewhere
    try:
        run = claim(connection_id, full=full, run_id=run_id)
        if run is None:
            return "absorbed"
        level = ratelimit.INTERACTIVE if is_interactive(run) else ratelimit.BACKGROUND
        with ratelimit.priority(level):
            return run_sync(run).state
    finally:
        if taken:
            ratelimit.release_sync_slot(connection_id)


def _wait_for_sync_slot(connection_id: int) -> int:
    """One of the capped slots of scheduled syncs (`ratelimit.take_sync_slot`), waited for with
    jitter: TAKEN, HELD, or 0 when none came within ZYWAVE_SYNC_SLOT_WAIT_SECONDS."""
    lease = settings.ZYWAVE_SYNC_LEASE_SECONDS + settings.ZYWAVE_SYNC_MAX_WAIT_SECONDS
    ends_at = time.monotonic() + settings.ZYWAVE_SYNC_SLOT_WAIT_SECONDS
    while not (slot := ratelimit.take_sync_slot(connection_id, lease)):
        if time.monotonic() > ends_at:
            return 0
        time.sleep(random.uniform(0.2, 1.0))  # noqa: S311
    return slot


def _defer(connection_id: int, full: bool, run_id: int | None) -> str:
    """No slot came: send the message again, to the back of the `sync` queue, naming the run
    it is for (never dropped: beat queues no second run while this one waits)."""
    active = SyncRun.objects.active().filter(connection_id=connection_id)
    waiting = active.values_list("pk", flat=True).first()
    if waiting is None or (run_id is not None and waiting != run_id):
        return "absorbed"
    log.info("Sync of connection %s waits for a slot: sent again", connection_id)
    sync_connection.apply_async((connection_id, full), {"run_id": waiting}, queue="sync")
    return "deferred"


# Connections beat looks at per query (`Connection.objects.due_batches`).
SCAN_BATCH = 500


@shared_task
def sync_due_connections() -> dict[str, int]:
    """Beat: queue a sync for every connection that is due, in batches of SCAN_BATCH with a
    fixed number of queries each (one to read the batch, two to queue its runs), and re-send
    runs nobody is working on (see `SyncRun.objects.stale()`). Queued runs are re-sent only
    when no sync message waits in the broker: behind a deep backlog a queued run has not lost
    its message, it is waiting its turn."""
    from .sync import queue_runs

    now = timezone.now()
    queued = 0
    for batch in Connection.objects.due_batches(now, SCAN_BATCH):
        with transaction.atomic():
            for pk, run_id in queue_runs(batch, trigger="schedule"):
                # Naming the run: if Sync now takes it to the front, this message is absorbed.
                sync_connection.delay_on_commit(pk, run_id=run_id)
                queued += 1
    stale = SyncRun.objects.stale(now)
    if backlog() > 0:
        stale = stale.filter(state=SyncRun.State.RUNNING)
    resumed = 0
    for pk in stale.values_list("connection_id", flat=True):
        sync_connection.delay_on_commit(pk)
        resumed += 1
    return {"queued": queued, "resumed": resumed}


def backlog() -> int:
    """Sync messages waiting in the broker (`sync` and `interactive`); 0 when it cannot say."""
    from .ratelimit import redis_url

    if redis_url() is None:
        return 0
    from celery import current_app

    try:
        with current_app.connection_for_read() as conn:
            client = conn.default_channel.client
            return sum(int(client.llen(queue)) for queue in ("sync", "interactive"))
    except Exception:  # noqa: BLE001 (the broker down: resend as before)
        return 0


# Runs deleted per statement by `purge_sync_history`: short transactions, whatever the backlog.
PURGE_BATCH = 5000


@shared_task
def purge_sync_history() -> int:
    """Beat, hourly: delete finished runs older than ZYWAVE_SYNC_HISTORY_DAYS (each connection's
    newest successful and newest full run stay), PURGE_BATCH at a time. The number deleted."""
    before = timezone.now() - timedelta(days=settings.ZYWAVE_SYNC_HISTORY_DAYS)
    deleted = 0
    while True:
        old = SyncRun.objects.past_history(before).order_by()
        batch = list(old.values_list("pk", flat=True)[:PURGE_BATCH])
        if batch:
            deleted += SyncRun.objects.filter(pk__in=batch).delete()[0]
        if len(batch) < PURGE_BATCH:
            return deleted


@shared_task(acks_late=True, reject_on_worker_lost=True)
def deliver_webhooks(subscription_id: int) -> str:
    """Send a subscription's due webhook deliveries (one worker per subscription at a time)."""
    return webhooks.drain(subscription_id)


@shared_task
def reconcile_webhooks() -> dict[str, int]:
    """Beat: send again what a lost task message left undelivered, and trim the old log."""
    stranded = webhooks.stranded()
    for pk in stranded:
        deliver_webhooks.delay(pk)
    return {"requeued": len(stranded), "purged": webhooks.purge_log()}


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=8)
def refetch_record(self: Any, connection_id: int, resource: str, record_id: str) -> str:
    """Fetch one record Zywave notified us of and mirror it (integrations/hooks.py). Zywave
    busy or down: retried with backoff (its Retry-After when given); the notification stays
    queued meanwhile, and polling is the safety net past the last retry."""
    from . import hooks

    try:
        with ratelimit.priority(ratelimit.REFETCH):
            return hooks.refetch(connection_id, resource, record_id)
    except hooks.TryAgain as exc:
        wait = exc.retry_after if exc.retry_after is not None else 2 ** (self.request.retries + 1)
        raise self.retry(countdown=min(wait, 300)) from None
    except (OperationalError, InterfaceError):
        # The database went away under the fetch (a restart, a failover): the notification is
        # kept, still queued, and Zywave was answered 202, so nobody sends it again. Fetch again
        # once the database is back rather than leave the change to the next poll.
        raise self.retry(countdown=min(2 ** (self.request.retries + 1), 300)) from None


@shared_task
def reconcile_refetches() -> dict[str, int]:
    """Beat: fetch again what Zywave's acknowledged notifications never got (a lost message,
    spent retries), give up on very old ones with a sync instead, and trim their log."""
    from . import hooks

    return hooks.reconcile()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_doctor(report_id: int) -> str:
    """Run a Zywave doctor report asked for in the admin (integrations/doctor.py): read-only
    towards Zywave, at most seven calls, never a refresh. Queue `celery` (the default: no
    route). Safe to run twice: the report is claimed by a conditional UPDATE."""
    from .doctor import run_report

    return run_report(report_id)
