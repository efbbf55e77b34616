"""The outbox queues a delivery task on commit only when the subscription has no earlier
delivery due: a sync of 200 pages queues one task while the first waits, not 200 (the
webhooks benchmark's finding, tests/bench/bench_webhooks.py), and nothing is left unsent.

Tasks are counted in the run's own Redis database (the broker, `tests.services`); no worker
consumes them here: deliveries are sent by calling `webhooks.drain`, as the task does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.db import connection as db
from django.db import transaction
from django.utils import timezone

from integrations import webhooks
from integrations.models import WebhookDelivery, WebhookEvent, WebhookSubscription
from tests.integrations.workers import TEST_BROKER, use_test_broker

pytestmark = pytest.mark.django_db(transaction=True)


class Receiver:
    """An endpoint on 127.0.0.1 that answers 204 and records each request's webhook-id."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.arrived = threading.Event()  # set at each request, before it is answered
        self.gate: threading.Event | None = None  # when set up, a request waits for it
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.ids.append(str(self.headers.get("webhook-id")))
                receiver.arrived.set()
                if receiver.gate is not None:
                    receiver.gate.wait(10)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    settings.WEBHOOKS_RECONCILE_SECONDS = 1  # `drain` queues no retry of its own here
    started = Receiver()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def queued() -> Iterator[redis.Redis]:
    """The broker's `webhooks` queue, empty at the start and the end."""
    use_test_broker()
    broker = redis.Redis.from_url(TEST_BROKER)
    broker.delete("webhooks")
    try:
        yield broker
    finally:
        broker.delete("webhooks")


def tasks(broker: redis.Redis) -> int:
    return int(broker.llen("webhooks"))


def emit(owner: User, n: int) -> WebhookEvent:
    with transaction.atomic():  # committed: its task, if any, is queued now
        event = webhooks.emit(owner.pk, "sync.succeeded", {"n": n})
    assert event is not None
    return event


def test_events_written_while_the_first_is_due_queue_one_task_and_one_drain_sends_all(
    staff: User, receiver: Receiver, queued: redis.Redis
) -> None:
    subscription, _ = webhooks.subscribe(staff, receiver.url, ["sync.succeeded"])
    events = [emit(staff, n) for n in range(5)]
    assert tasks(queued) == 1
    assert webhooks.drain(subscription.pk) == "sent 5"
    assert receiver.ids == [e.id for e in events]
    numbers = subscription.deliveries.order_by("sequence").values_list("sequence", flat=True)
    assert list(numbers) == [1, 2, 3, 4, 5]


def test_an_event_after_the_earlier_ones_were_delivered_queues_its_own_task(
    staff: User, receiver: Receiver, queued: redis.Redis
) -> None:
    subscription, _ = webhooks.subscribe(staff, receiver.url, ["sync.succeeded"])
    emit(staff, 1)
    assert webhooks.drain(subscription.pk) == "sent 1"
    emit(staff, 2)
    assert tasks(queued) == 2


def test_an_earlier_delivery_waiting_for_its_retry_does_not_hold_back_a_new_events_task(
    staff: User, receiver: Receiver, queued: redis.Redis
) -> None:
    subscription, _ = webhooks.subscribe(staff, receiver.url, ["sync.succeeded"])
    first = emit(staff, 1)
    WebhookDelivery.objects.filter(event=first).update(
        attempts=1, next_attempt_at=timezone.now() + timedelta(minutes=5)
    )
    emit(staff, 2)
    assert tasks(queued) == 2
    other, _ = webhooks.subscribe(staff, receiver.url, ["sync.succeeded"])
    emit(staff, 3)  # `other` had nothing due: its own task; `subscription` had #2 due: none
    assert tasks(queued) == 3
    assert set(WebhookDelivery.objects.values_list("subscription_id", flat=True)) == {
        subscription.pk,
        other.pk,
    }


def test_a_disabled_subscription_queues_nothing(
    staff: User, receiver: Receiver, queued: redis.Redis
) -> None:
    subscription, _ = webhooks.subscribe(staff, receiver.url, ["sync.succeeded"])
    WebhookSubscription.objects.filter(pk=subscription.pk).update(state="disabled")
    emit(staff, 1)
    assert tasks(queued) == 0
    assert subscription.deliveries.get().state == "pending"


def test_a_drain_ending_while_an_event_is_being_written_waits_for_it_and_sends_it(
    staff: User, receiver: Receiver, queued: redis.Redis
) -> None:
    """An event written while the drain sends the one before it queues no task (one is due),
    so that drain must send it: releasing its lease waits on the subscription's row, which the
    writer holds until it commits, and it then looks again."""
    subscription, _ = webhooks.subscribe(staff, receiver.url, ["sync.succeeded"])
    first = emit(staff, 1)
    receiver.gate = threading.Event()
    holding, commit = threading.Event(), threading.Event()
    written: list[WebhookEvent] = []
    outcome: list[str] = []

    def drain() -> None:
        try:
            outcome.append(webhooks.drain(subscription.pk))
        finally:
            db.close()

    def writer() -> None:
        try:
            with transaction.atomic():
                event = webhooks.emit(staff.pk, "sync.succeeded", {"n": 2})
                assert event is not None
                written.append(event)
                holding.set()
                commit.wait(10)
        finally:
            db.close()

    draining = threading.Thread(target=drain)
    draining.start()
    assert receiver.arrived.wait(10)  # #1 is being sent: the drain holds the lease
    writing = threading.Thread(target=writer)
    writing.start()
    assert holding.wait(10)  # #2 written, not committed, the subscription's row held
    receiver.gate.set()  # #1 answered: the drain finds nothing due yet and releases its lease
    draining.join(1.0)
    assert draining.is_alive()  # ... which waits for the writer
    commit.set()
    writing.join(10)
    draining.join(10)
    assert outcome == ["sent 2"]
    assert receiver.ids == [first.id, written[0].id]
    assert tasks(queued) == 1  # only #1's: #2 was sent by the drain already going
