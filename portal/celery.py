"""The Celery app: Celery's own "First steps with Django" recipe."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def check_before_consuming(**kwargs: object) -> None:
    """A worker with a wrong encryption key must not start taking tasks.

    Celery logs and swallows any Exception a signal handler raises, and the worker would
    start anyway: the failed check leaves through SystemExit, which Celery lets through."""
    import sys

    from django.core.management.base import SystemCheckError

    from integrations.checks import run_startup_checks

    try:
        run_startup_checks()
    except SystemCheckError as exc:
        print(f"The worker refuses to start:\n{exc}", file=sys.stderr)
        raise SystemExit(1) from None


# Metrics (portal/metrics.py): prometheus_client is imported inside the handlers, never here,
# so that gunicorn's config (which imports this package) can still set PROMETHEUS_MULTIPROC_DIR.


@worker_init.connect
def prepare_metrics(**kwargs: object) -> None:
    """Before the pool forks: one metrics directory for this worker node, emptied."""
    from django.conf import settings

    from portal.metrics import ensure_multiprocess

    try:
        ensure_multiprocess("worker", wanted=bool(settings.METRICS_PORT))
    except RuntimeError as exc:
        import sys

        print(f"The worker refuses to start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


@worker_ready.connect
def serve_metrics(**kwargs: object) -> None:
    from portal.metrics import start_worker_exporter

    start_worker_exporter()


@worker_shutdown.connect
def forget_metrics(**kwargs: object) -> None:
    from portal.metrics import remove_own_dir

    remove_own_dir()


@worker_process_shutdown.connect
def pool_process_exited(pid: int | None = None, **kwargs: object) -> None:
    from portal.metrics import process_dead

    if pid:
        process_dead(pid)


@task_prerun.connect
def count_task_start(task_id: str | None = None, **kwargs: object) -> None:
    from portal.metrics import task_started

    if task_id:
        task_started(task_id)


@task_postrun.connect
def count_task_end(
    task_id: str | None = None, task: Any = None, state: str | None = None, **kwargs: object
) -> None:
    from portal.metrics import task_ended

    if task_id and task is not None:
        task_ended(task_id, task.name, state or "")
