"""Celery tasks. They take ids, never tokens or model instances, and are safe to run twice."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from functools import partial

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .models import Connection
from .notify import send_deadline_warning
from .tokens import MARGIN, ReauthRequired, RefreshFailed, access_token_for

log = logging.getLogger(__name__)


def upkeep_horizon() -> timedelta:
    """Refresh an idle connection when its token would fall under the margin before the next
    upkeep run: once per token lifetime, not on every run (an hour-long token is always
    "expiring within the next hour")."""
    return timedelta(minutes=settings.ZYWAVE_TOKEN_UPKEEP_MINUTES) + MARGIN


# Warn the owner this long before the 30-day refresh deadline.
DEADLINE_NOTICE = timedelta(days=7)


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
        access_token_for(connection, margin=upkeep_horizon())
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
    for pk in Connection.objects.deadline_within(DEADLINE_NOTICE).values_list("pk", flat=True):
        # Conditional UPDATE: of two beats racing here, only one sees a row count of 1.
        with transaction.atomic():
            won = Connection.objects.filter(pk=pk, deadline_warned_at__isnull=True).update(
                deadline_warned_at=timezone.now()
            )
            if won:
                transaction.on_commit(partial(send_deadline_warning, pk))
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
    """Beat: queue a sync for every active connection with a chosen profile that is due, and
    re-enqueue runs whose worker vanished (lease expired)."""
    from django.conf import settings
    from django.db.models import Max, Q

    from .models import SyncRun
    from .sync import queue_run

    now = timezone.now()
    due_before = now - timedelta(minutes=settings.ZYWAVE_SYNC_INTERVAL_MINUTES)
    candidates = (
        Connection.objects.active()
        .filter(chosen_profile__isnull=False)
        .annotate(last_queued=Max("sync_runs__queued_at"))
        .filter(Q(last_queued__isnull=True) | Q(last_queued__lt=due_before))
        .only("pk")  # queue_run needs the row, not its (encrypted) tokens
    )
    queued = 0
    for connection in candidates:
        if queue_run(connection, trigger="schedule") is not None:
            sync_connection.delay_on_commit(connection.pk)
            queued += 1
    stale = SyncRun.objects.active().filter(
        Q(lease_until__lt=now)
        | Q(
            lease_until__isnull=True,
            queued_at__lt=now - timedelta(seconds=settings.ZYWAVE_SYNC_REQUEUE_SECONDS),
        )
    )
    resumed = 0
    for pk in stale.values_list("connection_id", flat=True):
        sync_connection.delay_on_commit(pk)
        resumed += 1
    return {"queued": queued, "resumed": resumed}
