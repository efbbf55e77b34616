"""A receiver that is down is retried by the schedule, oldest event first, whatever new events
arrive meanwhile (found by the webhook outage drill, tests/drills/webhooks.py).

Before the fix, due deliveries were sent by `next_attempt_at`: once a pause ended, an event
written during it (due since it was written) went before the retry that had paused the
subscription, failed, and paused it for the schedule's first step again. With an event every
few seconds a dead endpoint got a request per event, never the next step of the schedule, and
events reached a receiver out of order. Retries are made due by ageing the rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from integrations import webhooks
from integrations.models import WebhookDelivery, WebhookEvent, WebhookSubscription

pytestmark = pytest.mark.django_db


class Receiver:
    """An endpoint on 127.0.0.1 answering every request with `status`; keeps each webhook-id."""

    def __init__(self) -> None:
        self.status = 503
        self.ids: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.ids.append(self.headers["webhook-id"])
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    settings.WEBHOOKS_RETRY_SCHEDULE = [5.0, 10.0, 20.0]
    settings.WEBHOOKS_TIMEOUT_SECONDS = 2
    # Every retry is further off than this: `drain` never queues a task of its own.
    settings.WEBHOOKS_RECONCILE_SECONDS = 1
    found = Receiver()
    yield found
    found.server.shutdown()
    found.server.server_close()


def emit(owner: User, n: int) -> WebhookEvent:
    with transaction.atomic():
        event = webhooks.emit(owner.pk, "sync.succeeded", {"sync": {"id": n}})
    assert event is not None
    return event


def pause_over(subscription: WebhookSubscription) -> None:
    """Let the time of the pause pass: every pending delivery and the pause itself move back by
    the same amount, as they would by waiting (their order in time is kept)."""
    subscription.refresh_from_db()
    assert subscription.paused_until is not None
    by = subscription.paused_until - timezone.now() + timedelta(seconds=1)
    for delivery in subscription.deliveries.filter(state=WebhookDelivery.State.PENDING):
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            next_attempt_at=delivery.next_attempt_at - by
        )
    WebhookSubscription.objects.filter(pk=subscription.pk).update(
        paused_until=subscription.paused_until - by
    )


def test_after_a_pause_the_oldest_event_is_retried_first_not_an_event_written_meanwhile(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = webhooks.subscribe(staff, receiver.url, ["sync.succeeded"])
    first = emit(staff, 1)
    webhooks.drain(subscription.pk)  # 503: paused until the first retry
    second = emit(staff, 2)  # written while the receiver is down: due at once, but paused
    pause_over(subscription)
    webhooks.drain(subscription.pk)
    # One request, for the oldest event: its retry, by the schedule's second step now.
    assert receiver.ids == [first.id, first.id]
    head = WebhookDelivery.objects.get(event=first)
    assert head.attempts == 2 and WebhookDelivery.objects.get(event=second).attempts == 0
    subscription.refresh_from_db()
    assert subscription.paused_until == head.next_attempt_at
    wait = (head.next_attempt_at - head.attempt_log.first().at).total_seconds()  # type: ignore[union-attr]
    assert 10.0 <= wait <= 10.0 * 1.2 + 0.5
    # The receiver is back: both delivered, in the order they were written.
    receiver.status = 200
    pause_over(subscription)
    webhooks.drain(subscription.pk)
    assert receiver.ids == [first.id, first.id, first.id, second.id]
    assert set(subscription.deliveries.values_list("state", flat=True)) == {"delivered"}
