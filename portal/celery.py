"""The Celery app: Celery's own "First steps with Django" recipe."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init

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
