"""Celery tasks. They take ids, never tokens or model instances, and are safe to run twice."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from functools import partial

from celery import shared_task
from django.db import transaction
from django.utils import timezone

from .models import Connection
from .notify import send_deadline_warning
from .tokens import ReauthRequired, RefreshFailed, access_token_for

log = logging.getLogger(__name__)

# Refresh idle connections this long before their access token ends.
UPKEEP_HORIZON = timedelta(hours=1)
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
        access_token_for(connection, margin=UPKEEP_HORIZON)
    except ReauthRequired:
        return "reauth_required"
    except RefreshFailed:
        return "failed"
    return "ok"


@shared_task
def keep_tokens_alive() -> dict[str, int]:
    """Beat: refresh idle connections that expire soon, warn owners of the 30-day deadline."""
    expiring = list(Connection.objects.expiring_within(UPKEEP_HORIZON).values_list("pk", flat=True))
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
