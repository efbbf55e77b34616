"""An event written while the broker is down (found by the webhook drill that restarts Redis,
tests/drills/webhooks.py).

Before the fix, the drain task was sent with `delay_on_commit`: with Redis down the send raised
after the caller's transaction had committed, so whoever wrote the event (a sync page, a
disconnect, the OAuth pipeline) failed with the change already made, and the caller's other
on-commit callbacks were skipped. The event is committed: the reconciler sends it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from integrations import webhooks
from integrations.models import WebhookDelivery
from portal.celery import app
from tests.sandboxserver import free_port

pytestmark = pytest.mark.django_db


def use_broker(url: str) -> None:
    """Send from this process to `url` (Celery's own reset after a fork, as
    tests/integrations/workers.py does)."""
    app.conf.broker_url = url
    app._after_fork()  # type: ignore[attr-defined]
    app._backend_cache = None  # type: ignore[attr-defined]
    app._local.__dict__.pop("backend", None)  # type: ignore[attr-defined]


@contextmanager
def broker_down() -> Iterator[None]:
    """A broker URL where nothing listens: every send is refused, as with Redis restarting."""
    before = app.conf.broker_url
    use_broker(f"redis://127.0.0.1:{free_port()}/0")
    try:
        yield
    finally:
        use_broker(before)


def test_an_event_written_while_the_broker_is_down_fails_nobody_and_waits_for_the_reconciler(
    staff: User,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    subscription, _ = webhooks.subscribe(staff, "http://127.0.0.1:9/hook", ["sync.succeeded"])
    after: list[str] = []
    with (
        caplog.at_level(logging.WARNING, logger="integrations.queueing"),
        broker_down(),
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        transaction.atomic(),
    ):
        event = webhooks.emit(staff.pk, "sync.succeeded", {"sync": {"id": 1}})
        transaction.on_commit(lambda: after.append("the caller's own callback"))
    assert len(callbacks) == 2
    assert after == ["the caller's own callback"]  # not skipped by a failed send before it
    assert event is not None
    assert WebhookDelivery.objects.get(event=event).state == "pending"
    # Nobody is delivering it: the reconciler's next run sends it.
    assert webhooks.stranded() == [subscription.pk]
    assert "deliver_webhooks not queued" in caplog.text and "reconciler" in caplog.text
