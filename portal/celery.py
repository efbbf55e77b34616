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
    """A worker with a wrong encryption key must not start taking tasks."""
    from integrations.checks import run_startup_checks

    run_startup_checks()
