"""Queueing a task of `integrations.tasks` by its name, after the caller's transaction commits.

`tasks.py` imports the modules whose work its tasks run (`sync`, `webhooks`, `hooks`); when
those modules queue a task in turn, they name it rather than import it, so no import cycle runs
through `tasks`. After commit, because a task must never read a change that might still roll
back; and a broker that refuses is logged, never raised: the change is committed already, and
every queue has a reconciler or a poll behind it (the webhooks' reconciler, the sync schedule).
A leaf module: it imports nothing of the app's.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import current_app
from django.db import transaction

log = logging.getLogger(__name__)


def after_commit(
    name: str, *args: Any, countdown: float | None = None, queue: str | None = None, **kwargs: Any
) -> None:
    """Send `integrations.tasks.<name>(*args, **kwargs)` once the current transaction commits
    (at once outside one), to `queue` when given, else the task's route. Eager mode
    (CELERY_TASK_ALWAYS_EAGER) runs it in place, as `.delay` would."""
    transaction.on_commit(
        functools.partial(send, name, *args, countdown=countdown, queue=queue, **kwargs)
    )


def send(
    name: str, *args: Any, countdown: float | None = None, queue: str | None = None, **kwargs: Any
) -> bool:
    options: dict[str, Any] = {"countdown": countdown}
    if queue:
        options["queue"] = queue
    try:
        current_app.tasks[f"integrations.tasks.{name}"].apply_async(args, kwargs, **options)
    except Exception as exc:  # the broker is down (kombu's OperationalError), or refuses
        log.warning(
            "Task %s not queued (%s): its reconciler or poll sends it", name, type(exc).__name__
        )
        return False
    return True
