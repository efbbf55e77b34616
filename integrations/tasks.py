"""Celery tasks. They take ids, never tokens or model instances, and are safe to run twice."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from . import webhooks
from .models import Connection, SyncRun
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
def sync_connection(connection_id: int, full: bool = False) -> str:
    """Mirror one connection. A second request while a run holds the lease is absorbed; a run
    whose worker died (lease expired) is resumed from its last committed page."""
    from .sync import claim, run_sync

    run = claim(connection_id, full=full)
    if run is None:
        return "absorbed"
    return run_sync(run).state


@shared_task
def sync_due_connections() -> dict[str, int]:
    """Beat: queue a sync for every connection that is due, and re-send runs nobody is working
    on (lease expired, or queued too long: see `SyncRun.objects.stale()`)."""
    from .sync import queue_run

    now = timezone.now()
    queued = 0
    for connection in Connection.objects.due_for_sync(now):
        if queue_run(connection, trigger="schedule") is not None:
            sync_connection.delay_on_commit(connection.pk)
            queued += 1
    resumed = 0
    for pk in SyncRun.objects.stale(now).values_list("connection_id", flat=True):
        sync_connection.delay_on_commit(pk)
        resumed += 1
    return {"queued": queued, "resumed": resumed}


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
