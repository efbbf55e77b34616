"""Celery tasks. They take ids, never tokens or model instances, and are safe to run twice."""

from __future__ import annotations

import socket

from celery import shared_task
from django.utils import timezone


@shared_task(ignore_result=False, acks_late=False)
def heartbeat() -> dict[str, str]:
    """Answer from a worker: used by health checks and to prove the broker path works."""
    return {"worker": socket.gethostname(), "at": timezone.now().isoformat()}
