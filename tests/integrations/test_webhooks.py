"""Outbound webhooks: the outbox (events written with their change), and delivery to a real
receiver on 127.0.0.1 (signed, in sequence, retried, bounded, one worker per subscription).

Deliveries are sent by calling `webhooks.drain` directly, as the task does; a real Celery worker
only where the worker is the point (re-queued by the reconciler, a retry it queues itself).
Retries are made due by ageing the rows, never by sleeping through the schedule.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.db import OperationalError, transaction
from django.db import connection as db
from django.utils import timezone
from svix.webhooks import Webhook, WebhookVerificationError

from integrations import webhooks
from integrations.models import (
    Account,
    Connection,
    ConnectionEvent,
    Contact,
    SyncRun,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)
from integrations.profiles import choose_profile
from integrations.resources import resources
from integrations.sync import claim, queue_run, run_sync, sync_now
from integrations.tasks import keep_tokens_alive, reconcile_webhooks
from integrations.tokens import client_for, disconnect, end_grant
from tests.api.callers import system_of
from tests.conftest import Person, connection
from tests.integrations.flows import connect, inject_fault, sandbox_counts
from tests.integrations.workers import Worker, use_test_broker, wait_for
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db

SCHEDULE = [5.0, 10.0, 20.0]  # three retries: the fourth failed attempt is the last


@pytest.fixture(autouse=True)
def webhook_settings(settings: Any) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = True  # receivers here are http://127.0.0.1
    settings.WEBHOOKS_RETRY_SCHEDULE = SCHEDULE
    settings.WEBHOOKS_TIMEOUT_SECONDS = 1
    settings.WEBHOOKS_MAX_RETRY_AFTER_SECONDS = 120
    # Every retry here is further off than this, so `drain` never queues its own next task:
    # nothing is sent to a broker that no worker of this test consumes.
    settings.WEBHOOKS_RECONCILE_SECONDS = 1
    settings.ZYWAVE_SYNC_BACKOFF_SECONDS = 0


# --- A receiver ------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.json["data"])


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    hang: float = 0.0  # seconds before answering at all
    stream: int = 0  # answer 200 with a body of this many bytes, written until the caller leaves
    drip: float = 0.0  # send the status line, then a header line every `drip` seconds, for 10 s


class Receiver:
    """A webhook endpoint on 127.0.0.1 (threaded http.server): records every request's
    headers and body, and answers each with the next reply it was told (`answer`), else 200."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.replies: deque[Reply] = deque()
        self.lock = threading.Lock()
        self.released = threading.Event()  # ends every hang (at close)
        self.streamed = 0  # bytes of a streamed body written before the caller hung up
        self.delay = 0.0  # every answer waits this long (to make concurrent senders overlap)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver.lock:
                    receiver.received.append(Received(self.path, headers, body))
                    reply = receiver.replies.popleft() if receiver.replies else Reply()
                if reply.hang:
                    receiver.released.wait(reply.hang)
                if receiver.delay:
                    time.sleep(receiver.delay)
                # The sender may go away first (a timeout, a capped read).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.answer(reply)

            def answer(self, reply: Reply) -> None:
                if reply.drip:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    ends = time.monotonic() + 10
                    while time.monotonic() < ends and not receiver.released.wait(reply.drip):
                        self.wfile.write(b"X-Drip: 1\r\n")
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.stream:
                    self.send_header("Content-Length", str(reply.stream))
                    self.end_headers()
                    chunk = b"x" * 65536
                    while receiver.streamed < reply.stream:
                        self.wfile.write(chunk)
                        receiver.streamed += len(chunk)
                    return
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hooks/portal"

    def answer(self, *replies: Reply) -> None:
        with self.lock:
            self.replies.extend(replies)

    def ids(self) -> list[str]:
        return [r.id for r in self.received]

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    try:
        yield started
    finally:
        started.close()


# --- Helpers ---------------------------------------------------------------------------------

ALL_EVENTS = sorted(webhooks.event_types())


def subscribe(
    owner: User, receiver: Receiver, events: list[str] | None = None
) -> tuple[WebhookSubscription, str]:
    return webhooks.subscribe(owner, receiver.url, events or ALL_EVENTS)


def emit(owner: User, event_type: str = "sync.succeeded", **data: Any) -> WebhookEvent:
    event = webhooks.emit(owner.pk, event_type, data, connection_id=None)
    assert event is not None
    return event


def verifies(secret: str, received: Received) -> bool:
    try:
        Webhook(secret).verify(received.body, received.headers)
    except WebhookVerificationError:
        return False
    return True


def due_now(subscription: WebhookSubscription) -> None:
    """The wait before the next attempt is over: aged, not slept through."""
    past = timezone.now() - timedelta(seconds=1)
    subscription.deliveries.filter(state=WebhookDelivery.State.PENDING).update(next_attempt_at=past)
    WebhookSubscription.objects.filter(pk=subscription.pk).update(paused_until=past)


def delivery_of(event: WebhookEvent) -> WebhookDelivery:
    return WebhookDelivery.objects.get(event=event)


def outbox(subscription: WebhookSubscription, event_type: str) -> list[dict[str, Any]]:
    """The `data` of the subscription's events of this type, in sequence order."""
    return [
        {**d.event.data, "sequence": d.sequence}
        for d in subscription.deliveries.filter(event__type=event_type)
        .select_related("event")
        .order_by("sequence")
    ]


def changes_in(events: list[dict[str, Any]]) -> dict[str, str]:
    return {change["id"]: change["kind"] for data in events for change in data["changes"]}


def run(conn: Connection, full: bool = False) -> SyncRun:
    result = sync_now(conn, full=full)
    assert result is not None
    return result


def synced_then_subscribed(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> tuple[Connection, WebhookSubscription, str]:
    """A connection synced once, then a subscription to every event (which hears only what
    comes after that sync), and the connection's Zywave profile id."""
    conn = connection(staff, zywave)
    run(conn)
    subscription, _ = subscribe(staff, receiver)
    profile = conn.chosen_profile
    assert profile is not None
    return conn, subscription, profile.zywave_id


# --- Signatures ------------------------------------------------------------------------------


def test_a_delivery_verifies_with_svix_and_its_secret_only(staff: User, receiver: Receiver) -> None:
    subscription, secret = subscribe(staff, receiver)
    emit(staff)
    assert webhooks.drain(subscription.pk) == "sent 1"
    (received,) = receiver.received
    assert verifies(secret, received)
    assert not verifies(webhooks.new_secret(), received)
    assert received.headers["webhook-signature"].count("v1,") == 1


def test_during_a_rotation_both_secrets_verify_and_after_the_overlap_only_the_new_one(
    staff: User, receiver: Receiver
) -> None:
    subscription, old = subscribe(staff, receiver)
    new = webhooks.rotate_secret(subscription, staff)
    emit(staff)
    webhooks.drain(subscription.pk)
    overlap = receiver.received[-1]
    assert overlap.headers["webhook-signature"].count("v1,") == 2
    assert verifies(old, overlap) and verifies(new, overlap)
    WebhookSubscription.objects.filter(pk=subscription.pk).update(
        previous_secret_until=timezone.now() - timedelta(seconds=1)
    )
    emit(staff)
    webhooks.drain(subscription.pk)
    after = receiver.received[-1]
    assert after.headers["webhook-signature"].count("v1,") == 1
    assert verifies(new, after) and not verifies(old, after)


# --- The body and the webhook-id -------------------------------------------------------------


def test_the_body_is_type_timestamp_and_data_with_sequence_and_connection_id(
    staff: User, receiver: Receiver
) -> None:
    conn = connection(staff)
    subscription, _ = subscribe(staff, receiver)
    end_grant(conn, "grant revoked at Zywave")
    webhooks.drain(subscription.pk)
    (received,) = receiver.received
    body = received.json
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == "connection.reauth_required"
    event = WebhookEvent.objects.get()
    assert body["timestamp"] == event.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert body["data"]["sequence"] == 1 and body["data"]["connection_id"] == conn.pk
    assert body["data"]["status"] == "reauth_required"
    assert received.id == event.id and event.id.startswith("msg_")
    assert received.headers["content-type"] == "application/json"
    assert received.headers["user-agent"] == webhooks.USER_AGENT
    assert received.path == "/hooks/portal"


def test_a_retry_and_a_replay_carry_the_same_webhook_id_and_body(
    staff: User, receiver: Receiver
) -> None:
    subscription, secret = subscribe(staff, receiver)
    event = emit(staff)
    receiver.answer(Reply(500))
    webhooks.drain(subscription.pk)
    due_now(subscription)
    webhooks.drain(subscription.pk)
    assert delivery_of(event).state == WebhookDelivery.State.DELIVERED
    assert webhooks.replay(subscription.deliveries.all()) == 1
    webhooks.drain(subscription.pk)
    assert receiver.ids() == [event.id] * 3
    assert len({r.body for r in receiver.received}) == 1
    assert all(verifies(secret, r) for r in receiver.received)


# --- Sequence --------------------------------------------------------------------------------


def test_sequence_numbers_of_a_subscription_are_gapless_and_increasing(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = subscribe(staff, receiver)
    for n in range(5):
        emit(staff, n=n)
    webhooks.drain(subscription.pk)
    assert [(r.data["n"], r.data["sequence"]) for r in receiver.received] == [
        (n, n + 1) for n in range(5)
    ]


def test_an_event_emitted_in_a_transaction_that_rolls_back_leaves_no_event_delivery_or_gap(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = subscribe(staff, receiver)
    emit(staff, n=1)
    with pytest.raises(RuntimeError), transaction.atomic():
        emit(staff, n=2)
        raise RuntimeError("the change failed")
    emit(staff, n=3)
    assert WebhookEvent.objects.count() == 2 and WebhookDelivery.objects.count() == 2
    webhooks.drain(subscription.pk)
    assert [(r.data["n"], r.data["sequence"]) for r in receiver.received] == [(1, 1), (3, 2)]


def test_two_subscriptions_of_one_owner_each_count_their_own_sequence(
    staff: User, receiver: Receiver
) -> None:
    both, _ = subscribe(staff, receiver, ["accounts.changed", "sync.succeeded"])
    syncs, _ = subscribe(staff, receiver, ["sync.succeeded"])
    emit(staff, "accounts.changed", n=1)
    emit(staff, "sync.succeeded", n=2)
    emit(staff, "sync.succeeded", n=3)
    assert list(both.deliveries.order_by("sequence").values_list("sequence", flat=True)) == [
        1,
        2,
        3,
    ]
    assert list(syncs.deliveries.order_by("sequence").values_list("sequence", flat=True)) == [1, 2]
    assert [d["n"] for d in outbox(syncs, "sync.succeeded")] == [2, 3]


def test_another_users_subscription_gets_nothing(
    staff: User, other_staff: User, receiver: Receiver
) -> None:
    theirs, _ = subscribe(other_staff, receiver)
    conn = connection(staff)
    assert webhooks.emit(staff.pk, "sync.succeeded", {}, conn.pk) is None  # nobody listens
    end_grant(conn, "revoked")
    assert not theirs.deliveries.exists()
    assert webhooks.drain(theirs.pk) == "sent 0"
    assert receiver.received == []


@pytest.mark.django_db(transaction=True)
def test_a_writer_waiting_on_a_sequence_number_takes_it_when_the_holder_rolls_back(
    staff: User, receiver: Receiver
) -> None:
    """Two transactions emit at once: the second waits on the subscription's row, and when
    the first rolls back it takes number 1, not 2 (no gap a receiver would wait for)."""
    subscription, _ = subscribe(staff, receiver)
    # Disabled: nothing is queued to a broker on commit (events are held, numbered all the same).
    WebhookSubscription.objects.filter(pk=subscription.pk).update(state="disabled")
    holding, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first_writer() -> None:
        try:
            with transaction.atomic():
                emit(staff, n=1)
                holding.set()
                release.wait(10)
                raise RuntimeError("rolled back")
        except RuntimeError:
            pass
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    def second_writer() -> None:
        try:
            emit(staff, n=2)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    first = threading.Thread(target=first_writer)
    first.start()
    assert holding.wait(10)
    second = threading.Thread(target=second_writer)
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waiting for the first writer's row lock
    release.set()
    first.join(10)
    second.join(10)
    assert errors == []
    assert [(d["n"], d["sequence"]) for d in outbox(subscription, "sync.succeeded")] == [(2, 1)]


@pytest.mark.django_db(transaction=True)
def test_a_transaction_emitting_twice_and_a_concurrent_emitter_do_not_deadlock(
    staff: User, receiver: Receiver
) -> None:
    """A full run's last transaction emits once per resource; meanwhile token upkeep (say)
    emits for the same owner. The first emit takes the one subscription that listens to it,
    the upkeep's takes both (the other first) and waits; the run's second emit then needs the
    other. Taking the owner's subscriptions in one order every time, neither waits on the
    other in a cycle."""
    lower, _ = subscribe(staff, receiver, ["contacts.changed", "sync.failed"])
    higher, _ = subscribe(staff, receiver, ["accounts.changed", "contacts.changed", "sync.failed"])
    assert lower.pk < higher.pk
    WebhookSubscription.objects.update(state="disabled")  # nothing queued to a broker on commit
    first_done, second_waiting = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run_like() -> None:
        try:
            with transaction.atomic():
                emit(staff, "accounts.changed", n=1)  # `higher` only
                first_done.set()
                second_waiting.wait(10)
                time.sleep(0.5)  # the other writer is now waiting for `higher`
                emit(staff, "contacts.changed", n=2)  # both
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    def upkeep_like() -> None:
        try:
            assert first_done.wait(10)
            second_waiting.set()
            emit(staff, "sync.failed", n=3)  # both
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=run_like), threading.Thread(target=upkeep_like)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(
        d["n"] for d in outbox(higher, "contacts.changed") + outbox(higher, "sync.failed")
    ) == [2, 3]


# --- The outbox: syncs -----------------------------------------------------------------------


def test_a_first_sync_emits_one_changed_event_per_page_all_created(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> None:
    conn = connection(staff, zywave)
    subscription, _ = subscribe(staff, receiver)
    assert run(conn).state == SyncRun.State.SUCCEEDED
    counts = sandbox_counts(zywave, conn)
    for resource in resources():
        events = outbox(subscription, f"{resource.name}.changed")
        assert len(events) == -(-counts[resource.name] // 100)  # one per page of 100
        mirrored = set(resource.live(conn.pk).values_list("zywave_id", flat=True))
        assert changes_in(events) == dict.fromkeys(mirrored, "created")
        assert all(e["resource"] == resource.name and e["connection_id"] == conn.pk for e in events)
    webhooks.drain(subscription.pk)
    sequences = [r.data["sequence"] for r in receiver.received]
    assert sequences == list(range(1, subscription.deliveries.count() + 1))


def test_a_sync_after_changes_at_zywave_emits_exactly_them_updated_and_archived(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> None:
    conn, subscription, profile_id = synced_then_subscribed(staff, zywave, receiver)
    changed = zywave.control(
        "POST", "accounts/change", profile_id=profile_id, count=3, field="name"
    )["ids"]
    archived = zywave.control("POST", "accounts/archive", profile_id=profile_id, count=2)["ids"]
    assert not run(conn).full
    events = outbox(subscription, "accounts.changed")
    assert changes_in(events) == {
        **{str(i): "updated" for i in changed},
        **{str(i): "archived" for i in archived},
    }
    # Archiving an account at Zywave archives what hangs under it too.
    for other in resources()[1:]:
        under = other.live(conn.pk).filter(account_zywave_id__in=[str(i) for i in archived])
        assert under.exists()
        assert changes_in(outbox(subscription, f"{other.name}.changed")) == dict.fromkeys(
            under.values_list("zywave_id", flat=True), "archived"
        )


def test_a_full_sync_after_a_deletion_at_zywave_emits_deleted_for_exactly_those(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> None:
    conn, subscription, profile_id = synced_then_subscribed(staff, zywave, receiver)
    deleted = zywave.control("POST", "accounts/delete", profile_id=profile_id, count=2)["ids"]
    run(conn, full=True)
    (event,) = outbox(subscription, "accounts.changed")
    assert changes_in([event]) == {str(i): "deleted" for i in deleted}


def test_a_full_sync_that_finds_nothing_new_emits_no_changed_event(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> None:
    conn = connection(staff, zywave)
    run(conn, full=True)
    subscription, _ = subscribe(staff, receiver)
    assert run(conn, full=True).state == SyncRun.State.SUCCEEDED
    types = set(subscription.deliveries.values_list("event__type", flat=True))
    assert types == {"sync.succeeded"}


def test_a_sync_that_succeeds_emits_sync_succeeded_once_with_the_run(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> None:
    conn = connection(staff, zywave)
    subscription, _ = subscribe(staff, receiver)
    finished = run(conn)
    (event,) = outbox(subscription, "sync.succeeded")
    assert outbox(subscription, "sync.failed") == []
    assert event["connection_id"] == conn.pk
    assert event["sync"] == {
        "id": finished.pk,
        "state": "succeeded",
        "full": True,
        "trigger": finished.trigger,
        "records": finished.records_done,
        "pages": finished.pages_done,
        "error": None,
        "finished_at": finished.finished_at.isoformat() if finished.finished_at else None,
    }


def test_a_sync_that_fails_emits_sync_failed_once_with_the_run(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> None:
    conn = connection(staff, zywave)
    subscription, _ = subscribe(staff, receiver)
    zywave.control("POST", "users/agent@example.com/revoke")
    Connection.objects.filter(pk=conn.pk).update(access_token_expires_at=timezone.now())
    finished = run(conn)
    assert finished.state == SyncRun.State.FAILED
    (event,) = outbox(subscription, "sync.failed")
    assert outbox(subscription, "sync.succeeded") == []
    assert event["sync"]["id"] == finished.pk and event["sync"]["state"] == "failed"
    assert event["sync"]["error"] == finished.error and "reconnect" in finished.error
    assert len(outbox(subscription, "connection.reauth_required")) == 1


def test_a_run_stopped_by_a_bad_page_announces_the_pages_it_wrote_and_sync_failed_partial(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> None:
    conn = connection(staff, zywave)
    subscription, _ = subscribe(staff, receiver)
    inject_fault(
        zywave,
        r"^/accounts/v2\.0/contact$",
        status=200,
        body='{"items": [1, 2]}',  # not records at all
        content_type="application/json",
    )
    finished = run(conn)
    assert finished.state == SyncRun.State.PARTIAL
    mirrored = set(Account.objects.filter(connection=conn).values_list("zywave_id", flat=True))
    assert set(changes_in(outbox(subscription, "accounts.changed"))) == mirrored
    assert outbox(subscription, "contacts.changed") == []
    (failed,) = outbox(subscription, "sync.failed")
    assert failed["sync"]["state"] == "partial" and failed["sync"]["error"] == finished.error


def test_changes_beyond_one_event_are_split_into_events_of_at_most_500(
    staff: User, receiver: Receiver
) -> None:
    conn = connection(staff)
    subscription, _ = subscribe(staff, receiver)
    changes = [(f"A{n}", "deleted") for n in range(1200)]
    written = webhooks.emit_changes(staff.pk, conn.pk, "accounts", changes, timezone.now())
    assert written == 3
    events = outbox(subscription, "accounts.changed")
    assert [len(e["changes"]) for e in events] == [500, 500, 200]
    assert [c["id"] for e in events for c in e["changes"]] == [i for i, _ in changes]
    assert len({e["updated_since"] for e in events}) == 1


def test_a_run_cancelled_mid_run_writes_neither_the_next_page_nor_its_event(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> None:
    """The run is cancelled while it waits to ask for the contacts again (a 429): the page
    that comes back after is not written, and so no `contacts.changed` exists for it."""
    conn = connection(staff, zywave)
    subscription, _ = subscribe(staff, receiver)
    inject_fault(zywave, r"^/accounts/v2\.0/contact$", status=429, retry_after="0")
    queue_run(conn, full=True)
    sync_run = claim(conn.pk)
    assert sync_run is not None

    def cancelled_meanwhile(seconds: float) -> None:
        SyncRun.objects.filter(pk=sync_run.pk).cancel("cancelled by a test")

    result = run_sync(sync_run, sleep=cancelled_meanwhile)
    assert (result.state, result.error) == ("failed", "cancelled by a test")
    assert not Contact.objects.filter(connection=conn).exists()
    assert outbox(subscription, "contacts.changed") == []
    mirrored = set(Account.objects.filter(connection=conn).values_list("zywave_id", flat=True))
    assert set(changes_in(outbox(subscription, "accounts.changed"))) == mirrored


def test_a_profile_change_emits_deleted_for_every_record_of_the_old_profile(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> None:
    conn = connection(staff, zywave)
    run(conn)
    before = {
        resource.name: set(resource.live(conn.pk).values_list("zywave_id", flat=True))
        for resource in resources()
    }
    subscription, _ = subscribe(staff, receiver)
    choose_profile(conn, client_for(conn), zywave.profiles()[1]["id"], actor=staff)
    for resource in resources():
        events = outbox(subscription, f"{resource.name}.changed")
        assert changes_in(events) == dict.fromkeys(before[resource.name], "deleted")


def test_updated_since_in_an_event_pulls_exactly_its_changes_through_the_api(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> None:
    conn, subscription, profile_id = synced_then_subscribed(staff, zywave, receiver)
    zywave.control("POST", "accounts/change", profile_id=profile_id, count=3, field="name")
    zywave.control("POST", "accounts/archive", profile_id=profile_id, count=1)
    run(conn)
    (event,) = outbox(subscription, "accounts.changed")
    system = system_of(staff, "read")
    response = system.get("/api/v1/accounts", {"updated_since": event["updated_since"]})
    assert response.status_code == 200, response.content[:300]
    body = response.json()
    assert body["next"] is None
    assert {r["id"] for r in body["results"]} == set(changes_in([event]))


def test_updated_since_in_a_deleted_event_pulls_exactly_the_tombstones(
    staff: User, zywave: Sandbox, receiver: Receiver
) -> None:
    conn, subscription, profile_id = synced_then_subscribed(staff, zywave, receiver)
    zywave.control("POST", "accounts/delete", profile_id=profile_id, count=2)
    run(conn, full=True)
    (event,) = outbox(subscription, "accounts.changed")
    response = system_of(staff, "read").get(
        "/api/v1/accounts", {"updated_since": event["updated_since"]}
    )
    results = response.json()["results"]
    assert {r["id"] for r in results} == set(changes_in([event]))
    assert all(r["deleted"] for r in results)


# --- Connection events -----------------------------------------------------------------------


def test_reauth_required_is_emitted_once_not_on_a_second_mark(
    staff: User, receiver: Receiver
) -> None:
    conn = connection(staff)
    subscription, _ = subscribe(staff, receiver)
    end_grant(conn, "revoked")
    end_grant(conn, "revoked again")
    (event,) = outbox(subscription, "connection.reauth_required")
    assert event["reason"] == "revoked" and event["connection_id"] == conn.pk


def test_disconnecting_emits_disconnected(staff: User, receiver: Receiver) -> None:
    conn = connection(staff)
    subscription, _ = subscribe(staff, receiver)
    disconnect(conn, staff, revoked=True, reason="person asked")
    (event,) = outbox(subscription, "connection.disconnected")
    assert (event["status"], event["reason"], event["connection_id"]) == (
        "disconnected",
        "person asked",
        conn.pk,
    )


def test_connecting_again_emits_reconnected_and_a_first_connect_does_not(
    dana: Person, zywave: Sandbox, receiver: Receiver
) -> None:
    subscription, _ = subscribe(dana.user, receiver)
    assert connect(dana, zywave).status_code == 302
    assert outbox(subscription, "connection.reconnected") == []
    assert connect(dana, zywave).status_code == 302
    (event,) = outbox(subscription, "connection.reconnected")
    conn = Connection.objects.get(user=dana.user)
    assert (event["connection_id"], event["status"]) == (conn.pk, "active")
    assert event["refresh_deadline"] == conn.refresh_deadline.isoformat()  # type: ignore[union-attr]


def test_token_upkeep_emits_deadline_approaching_once(staff: User, receiver: Receiver) -> None:
    conn = connection(staff, authorized_at=timezone.now() - timedelta(days=24))
    subscription, _ = subscribe(staff, receiver)
    keep_tokens_alive()
    keep_tokens_alive()
    (event,) = outbox(subscription, "connection.deadline_approaching")
    assert event["connection_id"] == conn.pk
    assert event["refresh_deadline"] == conn.refresh_deadline.isoformat()  # type: ignore[union-attr]


# --- The audit ---------------------------------------------------------------------------------


def test_the_audit_keeps_the_urls_scheme_host_port_and_path_never_its_query(
    staff: User, receiver: Receiver
) -> None:
    """A receiver may ask for a token in the query; the audit is shown in the admin."""
    connection(staff)
    subscription, _ = webhooks.subscribe(staff, f"{receiver.url}?token=tok-one#frag", ALL_EVENTS)
    moved = receiver.url.replace("/hooks/portal", "/hooks/v2")
    webhooks.change(subscription, staff, url=f"{moved}?key=tok-two&x=1")
    webhooks.rotate_secret(subscription, staff)
    webhooks.disable(subscription, "test", actor=staff)
    webhooks.enable(subscription, staff)
    webhooks.delete(subscription, staff)
    audits = list(ConnectionEvent.objects.order_by("id"))
    assert [a.kind for a in audits] == [
        "webhook_subscribed",
        "webhook_changed",
        "webhook_secret_rotated",
        "webhook_disabled",
        "webhook_enabled",
        "webhook_deleted",
    ]
    assert [a.detail["url"] for a in audits] == [receiver.url] + [moved] * 5
    assert all(a.connection is not None for a in audits)
    kept = json.dumps([a.detail for a in audits])
    assert "tok-one" not in kept and "tok-two" not in kept and "frag" not in kept


def test_the_audited_url_drops_user_info_and_keeps_a_port_and_a_bracketed_ipv6_host() -> None:
    assert webhooks.audited_url("https://user:pw@Hooks.Example.com:8443/in?t=1") == (
        "https://hooks.example.com:8443/in"
    )
    assert webhooks.audited_url("https://[2606:4700::1]/a/b") == "https://[2606:4700::1]/a/b"
    assert webhooks.audited_url("https://例え.jp/é?t=1") == "https://例え.jp/é"


# --- Retries ---------------------------------------------------------------------------------


def test_a_500_schedules_the_next_attempt_by_the_schedule_with_jitter_and_pauses_the_rest(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = subscribe(staff, receiver)
    first, second = emit(staff, n=1), emit(staff, n=2)
    receiver.answer(Reply(500))
    webhooks.drain(subscription.pk)
    failed = delivery_of(first)
    (logged,) = failed.attempt_log.all()
    wait = (failed.next_attempt_at - logged.at).total_seconds()
    assert SCHEDULE[0] <= wait <= SCHEDULE[0] * 1.2 + 0.5
    assert (failed.state, failed.attempts, failed.last_status) == ("pending", 1, 500)
    subscription.refresh_from_db()
    assert subscription.paused_until == failed.next_attempt_at
    assert delivery_of(second).attempts == 0 and receiver.ids() == [first.id]
    assert webhooks.drain(subscription.pk) == "busy"  # paused: not even the second is tried
    assert len(receiver.received) == 1
    due_now(subscription)
    webhooks.drain(subscription.pk)
    assert receiver.ids() == [first.id, first.id, second.id]


def test_the_jitter_of_successive_retries_stays_within_each_steps_bounds(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = subscribe(staff, receiver)
    event = emit(staff)
    receiver.answer(*[Reply(503)] * len(SCHEDULE))
    for step in SCHEDULE:
        webhooks.drain(subscription.pk)
        delivery = delivery_of(event)
        at = delivery.attempt_log.values_list("at", flat=True).first()
        assert at is not None
        assert step <= (delivery.next_attempt_at - at).total_seconds() <= step * 1.2 + 0.5
        due_now(subscription)
    assert delivery_of(event).attempts == len(SCHEDULE)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_on_a_429_or_503_is_honoured(
    staff: User, receiver: Receiver, status: int
) -> None:
    subscription, _ = subscribe(staff, receiver)
    event = emit(staff)
    receiver.answer(Reply(status, headers={"Retry-After": "60"}))
    started = timezone.now()
    webhooks.drain(subscription.pk)
    delivery = delivery_of(event)
    assert 60 <= (delivery.next_attempt_at - started).total_seconds() <= 62
    subscription.refresh_from_db()
    assert subscription.paused_until == delivery.next_attempt_at


def test_a_retry_after_beyond_the_maximum_is_capped(staff: User, receiver: Receiver) -> None:
    subscription, _ = subscribe(staff, receiver)
    event = emit(staff)
    receiver.answer(Reply(429, headers={"Retry-After": "86400"}))
    started = timezone.now()
    webhooks.drain(subscription.pk)
    wait = (delivery_of(event).next_attempt_at - started).total_seconds()
    assert 120 <= wait <= 122  # WEBHOOKS_MAX_RETRY_AFTER_SECONDS


def test_a_400_retries_only_that_delivery_and_the_others_go_on(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = subscribe(staff, receiver)
    refused, *others = [emit(staff, n=n) for n in range(3)]
    receiver.answer(Reply(400, body=b"bad event"))
    assert webhooks.drain(subscription.pk) == "sent 2"
    assert receiver.ids() == [refused.id] + [e.id for e in others]
    retried = delivery_of(refused)
    assert (retried.state, retried.attempts, retried.last_status) == ("pending", 1, 400)
    assert retried.next_attempt_at > timezone.now()
    assert all(delivery_of(e).state == "delivered" for e in others)
    subscription.refresh_from_db()
    assert subscription.paused_until is None


def test_after_the_last_retry_fails_the_delivery_fails_and_the_subscription_is_disabled(
    staff: User, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    subscription, _ = subscribe(staff, receiver)
    event = emit(staff)
    receiver.answer(*[Reply(500)] * (len(SCHEDULE) + 1))
    for _step in SCHEDULE:
        webhooks.drain(subscription.pk)
        due_now(subscription)
    with django_capture_on_commit_callbacks(execute=True):
        webhooks.drain(subscription.pk)
    delivery = delivery_of(event)
    assert (delivery.state, delivery.attempts) == ("failed", len(SCHEDULE) + 1)
    subscription.refresh_from_db()
    assert subscription.state == "disabled" and event.id in subscription.disabled_reason
    assert [m.to for m in mail.outbox] == [[staff.email]]
    assert "stopped receiving" in mail.outbox[0].subject
    (audit,) = ConnectionEvent.objects.filter(kind=ConnectionEvent.Kind.WEBHOOK_DISABLED)
    assert audit.detail["subscription"] == subscription.pk
    assert len(receiver.received) == len(SCHEDULE) + 1


def test_a_disabled_subscription_keeps_its_events_emails_once_and_enable_sends_them_in_order(
    staff: User, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    subscription, _ = subscribe(staff, receiver)
    failed = emit(staff, n=0)
    receiver.answer(*[Reply(500)] * (len(SCHEDULE) + 1))
    for _step in SCHEDULE:
        webhooks.drain(subscription.pk)
        due_now(subscription)
    with django_capture_on_commit_callbacks(execute=True):
        webhooks.drain(subscription.pk)
        held = [emit(staff, n=n) for n in range(1, 4)]
        assert webhooks.drain(subscription.pk) == "busy"
        assert not webhooks.disable(subscription, "again")  # already disabled: no second email
    assert len(mail.outbox) == 1
    assert len(receiver.received) == len(SCHEDULE) + 1
    assert all(delivery_of(e).state == "pending" for e in held)
    assert webhooks.enable(subscription, staff) == 4
    receiver.received.clear()
    assert webhooks.drain(subscription.pk) == "sent 4"
    assert [r.data["sequence"] for r in receiver.received] == [1, 2, 3, 4]
    assert receiver.ids() == [failed.id] + [e.id for e in held]
    assert ConnectionEvent.objects.filter(kind=ConnectionEvent.Kind.WEBHOOK_ENABLED).count() == 1


def test_replaying_a_range_resends_only_the_deliveries_made_in_it(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = subscribe(staff, receiver)
    events = [emit(staff, n=n) for n in range(3)]
    webhooks.drain(subscription.pk)
    now = timezone.now()
    for hours, event in zip([3, 2, 1], events, strict=True):
        WebhookDelivery.objects.filter(event=event).update(created_at=now - timedelta(hours=hours))
    receiver.received.clear()
    replayed = webhooks.replay_range(
        subscription, now - timedelta(hours=2, minutes=30), now - timedelta(hours=1, minutes=30)
    )
    assert replayed == 1
    webhooks.drain(subscription.pk)
    assert receiver.ids() == [events[1].id]
    assert receiver.received[0].data["sequence"] == delivery_of(events[1]).sequence


@contextlib.contextmanager
def lock_timeout(milliseconds: int) -> Iterator[None]:
    """This connection gives up waiting for a row lock after `milliseconds` (a real
    LockNotAvailable from PostgreSQL, as a deadlock's victim gets its error)."""
    with db.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = {int(milliseconds)}")
    try:
        yield
    finally:
        with db.cursor() as cursor:
            cursor.execute("RESET lock_timeout")


@contextlib.contextmanager
def connection_row_held(conn: Connection) -> Iterator[threading.Event]:
    """Another transaction holds the connection's row FOR UPDATE (as a delete of the
    connection does) until the block ends, or until the event it yields is set."""
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        try:
            with transaction.atomic():
                Connection.objects.select_for_update().get(pk=conn.pk)
                held.set()
                release.wait(20)
        finally:
            db.close()

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    try:
        yield release
    finally:
        release.set()
        thread.join(20)


@pytest.mark.django_db(transaction=True)
def test_giving_up_is_one_transaction_a_failure_between_its_writes_leaves_the_delivery_due(
    staff: User, receiver: Receiver
) -> None:
    """The last attempt fails; writing the audit of the disable then fails (a lock wait that
    times out, as a deadlock's victim would fail). The delivery was FAILED in a statement of its
    own, on a subscription left active: retried and reported by nobody. Now nothing of it is
    written: the delivery stays due (the reconciler's), and the next drain gives up for good."""
    conn = connection(staff)
    subscription, _ = subscribe(staff, receiver)
    WebhookSubscription.objects.filter(pk=subscription.pk).update(state="disabled")
    event = emit(staff)  # no task queued: the drains here are the only senders
    WebhookSubscription.objects.filter(pk=subscription.pk).update(state="active")
    WebhookDelivery.objects.filter(event=event).update(attempts=len(SCHEDULE))
    receiver.answer(Reply(500), Reply(500))
    with connection_row_held(conn), lock_timeout(300), pytest.raises(OperationalError):
        webhooks.drain(subscription.pk)
    delivery = delivery_of(event)
    assert (delivery.state, delivery.attempts) == ("pending", len(SCHEDULE))
    subscription.refresh_from_db()
    assert subscription.state == "active" and subscription.lease_owner == ""
    assert webhooks.stranded() == [subscription.pk]  # due, and nobody delivering: re-queued
    assert not ConnectionEvent.objects.filter(kind=ConnectionEvent.Kind.WEBHOOK_DISABLED).exists()
    webhooks.drain(subscription.pk)
    delivery = delivery_of(event)
    assert (delivery.state, delivery.attempts) == ("failed", len(SCHEDULE) + 1)
    subscription.refresh_from_db()
    assert subscription.state == "disabled"
    assert ConnectionEvent.objects.filter(kind=ConnectionEvent.Kind.WEBHOOK_DISABLED).count() == 1


@pytest.mark.parametrize(
    ("answer", "attempts_before"),
    [(500, 1), (500, len(SCHEDULE)), (200, 0)],
    ids=["a retry", "the last attempt", "a success"],
)
@pytest.mark.django_db(transaction=True)
def test_a_replay_made_while_the_request_is_out_is_not_overwritten_by_its_outcome(
    staff: User, receiver: Receiver, answer: int, attempts_before: int
) -> None:
    """The owner replays a delivery while an attempt at it is out. Its outcome was written
    from the copy read before the request (attempts + 1, the next retry, FAILED and the
    subscription disabled, or delivered): the replay was undone. The attempt is logged; the
    delivery stays as the replay left it, due now, and is sent again."""
    subscription, _ = subscribe(staff, receiver)
    WebhookSubscription.objects.filter(pk=subscription.pk).update(state="disabled")
    event = emit(staff)  # no task queued: nothing else sends
    WebhookSubscription.objects.filter(pk=subscription.pk).update(state="active")
    WebhookDelivery.objects.filter(event=event).update(attempts=attempts_before)
    subscription.refresh_from_db()
    receiver.answer(Reply(answer))
    receiver.delay = 0.6  # the replay comes while the receiver takes its time

    def owner_replays() -> None:
        try:
            assert webhooks.replay(WebhookDelivery.objects.filter(event=event)) == 1
        finally:
            db.close()

    replayer = threading.Timer(0.2, owner_replays)
    replayer.start()
    sent = webhooks.attempt(subscription, WebhookDelivery.objects.select_related("event").get())
    replayer.join()
    assert sent == (answer == 200)
    assert WebhookAttempt.objects.get().status == answer  # the attempt itself is logged
    delivery = delivery_of(event)
    assert (delivery.state, delivery.attempts) == ("pending", 0)
    assert delivery.next_attempt_at <= timezone.now()
    subscription.refresh_from_db()
    assert subscription.state == "active" and subscription.paused_until is None
    assert not ConnectionEvent.objects.filter(kind=ConnectionEvent.Kind.WEBHOOK_DISABLED).exists()


def waiting_on_a_lock() -> int:
    """Backends of this test's database waiting for a lock now (read afresh: inside a
    transaction PostgreSQL shows the activity as of its first look)."""
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        )
        (count,) = cursor.fetchone()
    return int(count)


CHANGES = {
    "disable": lambda sub, who: webhooks.disable(sub, "test", actor=who),
    "enable": lambda sub, who: webhooks.enable(sub, who),
    "rotate_secret": lambda sub, who: webhooks.rotate_secret(sub, who),
    "change": lambda sub, who: webhooks.change(sub, who, events=["sync.failed", "sync.succeeded"]),
}


@pytest.mark.parametrize("name", CHANGES)
@pytest.mark.django_db(transaction=True)
def test_a_change_to_a_subscription_and_an_emitter_holding_the_connection_do_not_deadlock(
    staff: User, receiver: Receiver, name: str
) -> None:
    """An emitter holds the connection's row (FOR UPDATE here, as a delete of the connection
    takes it), then takes the owner's subscriptions. A change to a subscription writes its
    audit row, whose foreign key takes the connection's row (KEY SHARE), before it updates or
    locks the subscription: it waits for the emitter, which goes on. In the other order each
    waited for the other and PostgreSQL aborted one of them (deadlock detected)."""
    conn = connection(staff)
    subscription, _ = subscribe(staff, receiver, ["sync.succeeded"])
    if name == "enable":
        webhooks.disable(subscription, "to be enabled")
    errors: list[BaseException] = []
    emitted, holding = threading.Event(), threading.Event()

    def emitter() -> None:
        try:
            with transaction.atomic():
                Connection.objects.select_for_update().get(pk=conn.pk)
                holding.set()
                wait_for(lambda: waiting_on_a_lock() >= 1, timeout=10, what="the change")
                time.sleep(0.2)  # the change waits where it waits (before the fix: holding)
                webhooks.emit(staff.pk, "sync.succeeded", {"n": 1}, connection_id=conn.pk)
            emitted.set()
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    def changer() -> None:
        try:
            CHANGES[name](WebhookSubscription.objects.get(pk=subscription.pk), staff)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=emitter), threading.Thread(target=changer)]
    threads[0].start()
    assert holding.wait(10)
    threads[1].start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and emitted.is_set()
    assert WebhookDelivery.objects.filter(subscription=subscription).count() == 1
    kind = {
        "disable": ConnectionEvent.Kind.WEBHOOK_DISABLED,
        "enable": ConnectionEvent.Kind.WEBHOOK_ENABLED,
        "rotate_secret": ConnectionEvent.Kind.WEBHOOK_SECRET_ROTATED,
        "change": ConnectionEvent.Kind.WEBHOOK_CHANGED,
    }[name]
    assert ConnectionEvent.objects.filter(kind=kind, connection=conn).count() == 1


# --- Bounded requests ------------------------------------------------------------------------


def test_a_receiver_that_hangs_is_given_up_at_the_timeout_and_logged_as_timed_out(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = subscribe(staff, receiver)
    event = emit(staff)
    receiver.answer(Reply(hang=10))
    started = time.monotonic()
    webhooks.drain(subscription.pk)
    assert time.monotonic() - started < 3  # WEBHOOKS_TIMEOUT_SECONDS is 1
    (logged,) = WebhookAttempt.objects.all()
    assert (logged.status, logged.error) == (None, "timed out")
    assert 900 <= logged.duration_ms < 3000
    delivery = delivery_of(event)
    assert (delivery.state, delivery.last_error) == ("pending", "timed out")
    subscription.refresh_from_db()
    assert subscription.paused_until == delivery.next_attempt_at  # no answer: the receiver waits


def test_a_receiver_that_trickles_its_headers_is_given_up_at_the_timeout_all_the_same(
    staff: User, receiver: Receiver
) -> None:
    """A header line every 0.3 s: every read is answered within the timeout, but the attempt
    as a whole still ends at it (it would otherwise hold the worker as long as the receiver
    likes, and past its lease on the subscription)."""
    subscription, _ = subscribe(staff, receiver)
    event = emit(staff)
    receiver.answer(Reply(drip=0.3))
    started = time.monotonic()
    webhooks.drain(subscription.pk)
    assert time.monotonic() - started < 3  # WEBHOOKS_TIMEOUT_SECONDS is 1
    (logged,) = WebhookAttempt.objects.all()
    assert (logged.status, logged.error) == (None, "timed out")
    assert delivery_of(event).state == "pending"


def test_a_receiver_that_is_not_listening_is_logged_as_refused_not_timed_out(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = subscribe(staff, receiver)
    receiver.close()  # nothing listens on its port now
    event = emit(staff)
    webhooks.drain(subscription.pk)
    (logged,) = WebhookAttempt.objects.all()
    assert (logged.status, logged.error) == (None, "connection refused or unreachable")
    delivery = delivery_of(event)
    assert delivery.last_error == "connection refused or unreachable"
    subscription.refresh_from_db()
    assert subscription.paused_until == delivery.next_attempt_at  # no answer: the receiver waits


def test_a_redirect_is_not_followed(staff: User, receiver: Receiver) -> None:
    elsewhere = Receiver()
    try:
        subscription, _ = subscribe(staff, receiver)
        event = emit(staff)
        receiver.answer(Reply(302, headers={"Location": elsewhere.url}))
        webhooks.drain(subscription.pk)
        assert elsewhere.received == []
    finally:
        elsewhere.close()
    delivery = delivery_of(event)
    assert (delivery.state, delivery.last_status) == ("pending", 302)


def test_a_huge_response_is_read_only_up_to_the_cap_and_logged_as_a_short_excerpt(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = subscribe(staff, receiver)
    event = emit(staff)
    huge = 256 * 1024 * 1024
    receiver.answer(Reply(stream=huge))
    started = time.monotonic()
    webhooks.drain(subscription.pk)
    assert time.monotonic() - started < 3
    assert delivery_of(event).state == "delivered"
    (logged,) = WebhookAttempt.objects.all()
    assert logged.status == 200 and 0 < len(logged.response_excerpt) <= 300
    time.sleep(0.2)  # the receiver's writer notices the closed connection
    assert receiver.streamed < huge // 8  # what the sockets' buffers took, not the body


def test_the_attempt_log_never_holds_the_response_headers(staff: User, receiver: Receiver) -> None:
    subscription, _ = subscribe(staff, receiver)
    event = emit(staff)
    receiver.answer(
        Reply(
            500,
            body=b"try later",
            headers={"Set-Cookie": "session=cookie-value-1", "X-Upstream-Token": "tok-value-2"},
        )
    )
    webhooks.drain(subscription.pk)
    (logged,) = WebhookAttempt.objects.all()
    delivery = delivery_of(event)
    kept = " ".join([logged.error, logged.response_excerpt, delivery.last_error])
    assert logged.response_excerpt == "try later"
    for header in ("Set-Cookie", "cookie-value-1", "X-Upstream-Token", "tok-value-2"):
        assert header.lower() not in kept.lower()


def test_an_unexpected_error_in_the_request_is_a_logged_failed_attempt_not_a_raise(
    staff: User,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Raised out of `attempt`, an error left the delivery pending with no attempt logged, first
    in line at every drain: it held up every later delivery for good. A stub stands in for
    `egress.post` here: the UnicodeEncodeError a non-ASCII URL raised in http.client is what it
    raises, and no real component raises it any more (egress.check now encodes such URLs)."""
    subscription, _ = subscribe(staff, receiver)
    first, second = emit(staff, n=1), emit(staff, n=2)

    def broken_post(*args: Any, **kwargs: Any) -> Any:
        raise UnicodeEncodeError("ascii", "/hooks/café?token=tok-in-the-url", 10, 11, "no")

    with monkeypatch.context() as patched:
        patched.setattr(webhooks.egress, "post", broken_post)
        assert webhooks.drain(subscription.pk) == "sent 0"
    (logged,) = WebhookAttempt.objects.all()
    assert (logged.status, logged.error) == (None, "unexpected error (UnicodeEncodeError)")
    failed = delivery_of(first)
    assert (failed.state, failed.attempts) == ("pending", 1)
    assert failed.last_error == "unexpected error (UnicodeEncodeError)"
    assert failed.next_attempt_at > timezone.now()  # retried by the schedule, like no answer
    subscription.refresh_from_db()
    assert subscription.paused_until == failed.next_attempt_at
    (record,) = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert record.levelname == "ERROR" and "broken_post" in record.getMessage()  # where
    assert "tok-in-the-url" not in caplog.text  # the exception's message is not logged
    due_now(subscription)
    assert webhooks.drain(subscription.pk) == "sent 2"
    assert receiver.ids() == [first.id, second.id]


# --- One worker per subscription, the reconciler, the log ------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_drains_at_once_send_each_delivery_once(staff: User, receiver: Receiver) -> None:
    subscription, _ = subscribe(staff, receiver)
    # Emitted while disabled, so that no task is queued on commit: the drains below are the
    # only senders.
    WebhookSubscription.objects.filter(pk=subscription.pk).update(state="disabled")
    events = [emit(staff, n=n) for n in range(6)]
    WebhookSubscription.objects.filter(pk=subscription.pk).update(state="active")
    receiver.delay = 0.05
    start = threading.Barrier(4)
    results: list[str] = []

    def drainer() -> None:
        try:
            start.wait(5)
            results.append(webhooks.drain(subscription.pk))
        finally:
            db.close()

    threads = [threading.Thread(target=drainer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(receiver.ids()) == sorted(e.id for e in events)
    assert set(WebhookDelivery.objects.values_list("state", "attempts")) == {("delivered", 1)}
    # One drain sent all six; the others found the lease held (or, late, nothing left).
    assert sorted(results)[-1] == "sent 6" and set(sorted(results)[:-1]) <= {"busy", "sent 0"}


def test_stranded_finds_only_active_subscriptions_with_due_deliveries_and_nobody_delivering(
    staff: User, receiver: Receiver
) -> None:
    lost, leased, paused, disabled = (subscribe(staff, receiver)[0] for _ in range(4))
    emit(staff)  # one due delivery for each
    now = timezone.now()
    WebhookSubscription.objects.filter(pk=leased.pk).update(
        lease_until=now + timedelta(seconds=30), lease_owner="someone"
    )
    WebhookSubscription.objects.filter(pk=paused.pk).update(paused_until=now + timedelta(minutes=5))
    webhooks.disable(disabled, "test")
    assert webhooks.stranded() == [lost.pk]
    WebhookSubscription.objects.filter(pk=leased.pk).update(lease_until=now - timedelta(seconds=1))
    assert sorted(webhooks.stranded()) == sorted([lost.pk, leased.pk])  # its worker died


def test_purging_the_log_removes_only_old_delivered_deliveries(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = subscribe(staff, receiver)
    other, _ = subscribe(staff, receiver)
    old_delivered, old_failed, recent = emit(staff, n=1), emit(staff, n=2), emit(staff, n=3)
    webhooks.drain(subscription.pk)  # `other` is never drained: its deliveries stay pending
    month_ago = timezone.now() - timedelta(days=31)
    for event in (old_delivered, old_failed):
        WebhookEvent.objects.filter(pk=event.pk).update(created_at=month_ago)
        WebhookDelivery.objects.filter(event=event).update(delivered_at=month_ago)
    WebhookDelivery.objects.filter(event=old_failed, subscription=subscription).update(
        state="failed"
    )
    webhooks.purge_log()
    assert not subscription.deliveries.filter(event=old_delivered).exists()
    assert not WebhookAttempt.objects.filter(delivery__event=old_delivered).exists()
    assert subscription.deliveries.filter(event=old_failed).exists()
    assert subscription.deliveries.filter(event=recent).exists()
    assert other.deliveries.count() == 3  # pending, however old
    assert WebhookEvent.objects.filter(pk=old_delivered.pk).exists()  # `other` still needs it
    other.deliveries.filter(event=old_delivered).update(state="delivered", delivered_at=month_ago)
    webhooks.purge_log()
    assert not WebhookEvent.objects.filter(pk=old_delivered.pk).exists()


# --- With a real Celery worker ----------------------------------------------------------------


@pytest.fixture
def webhook_worker(zywave: Sandbox, tmp_path: Path) -> Iterator[Worker]:
    """The `worker` fixture's worker, allowed to deliver to this test's 127.0.0.1 receiver,
    with a retry schedule of one second."""
    use_test_broker()
    started = Worker(
        zywave,
        tmp_path / "worker.log",
        WEBHOOKS_ALLOW_PRIVATE="true",
        WEBHOOKS_RETRY_SCHEDULE="1,1",
        WEBHOOKS_TIMEOUT_SECONDS="2",
    ).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_reconciler_requeues_a_subscription_whose_task_was_lost(
    staff: User, receiver: Receiver, webhook_worker: Worker
) -> None:
    subscription, secret = subscribe(staff, receiver)
    # Emitted while disabled, then switched on without `enable`: due deliveries whose task
    # message never existed, as after a lost message.
    WebhookSubscription.objects.filter(pk=subscription.pk).update(state="disabled")
    events = [emit(staff, n=n) for n in range(2)]
    WebhookSubscription.objects.filter(pk=subscription.pk).update(state="active")
    assert webhooks.stranded() == [subscription.pk]
    assert reconcile_webhooks() == {"requeued": 1, "purged": 0}
    wait_for(lambda: len(receiver.received) == 2, timeout=30, what="the worker's deliveries")
    assert receiver.ids() == [e.id for e in events]
    assert all(verifies(secret, r) for r in receiver.received)
    wait_for(
        lambda: set(WebhookDelivery.objects.values_list("state", flat=True)) == {"delivered"},
        what="the deliveries recorded",
    )
    assert webhooks.stranded() == []


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_retries_a_failed_delivery_by_itself_when_the_retry_is_near(
    staff: User, receiver: Receiver, webhook_worker: Worker
) -> None:
    subscription, _ = subscribe(staff, receiver)
    receiver.answer(Reply(503))
    event = emit(staff)  # committed: its task is queued on commit
    wait_for(lambda: len(receiver.received) == 2, timeout=30, what="the retry")
    assert receiver.ids() == [event.id, event.id]
    wait_for(lambda: delivery_of(event).state == "delivered", what="the delivery recorded")
    assert delivery_of(event).attempts == 2


@pytest.mark.django_db(transaction=True)
def test_a_subscription_deleted_while_its_attempt_is_out_ends_the_drain_quietly(
    staff: User, receiver: Receiver
) -> None:
    subscription, _ = subscribe(staff, receiver)
    emit(staff)
    emit(staff)
    # The receiver's answer comes after the owner deleted the subscription (another thread,
    # as a web request would): its log row has nothing left to belong to.

    def delete_then_answer() -> None:
        try:
            WebhookSubscription.objects.filter(pk=subscription.pk).delete()
        finally:
            db.close()  # the thread's own connection (left open, it kept the test database)

    receiver.delay = 0.3
    deleter = threading.Timer(0.1, delete_then_answer)
    deleter.start()
    assert webhooks.drain(subscription.pk) == "sent 0"
    deleter.join()
    assert len(receiver.received) == 1  # the second one was never sent
    assert not WebhookSubscription.objects.filter(pk=subscription.pk).exists()


def test_a_busy_subscription_yields_its_worker_after_its_share_and_queues_itself_again(
    staff: User,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: Any,
) -> None:
    from integrations import queueing

    subscription, _ = subscribe(staff, receiver)
    for _ in range(5):
        emit(staff)
    monkeypatch.setattr(webhooks, "DRAIN_SHARE", (2, 60.0))
    queued: list[tuple[str, tuple[Any, ...]]] = []
    # Recorded instead of sent: no worker runs here, the test drains by hand.
    monkeypatch.setattr(queueing, "send", lambda name, *args, **kw: queued.append((name, args)))
    assert webhooks.drain(subscription.pk) == "sent 2, more queued"
    assert queued == [("deliver_webhooks", (subscription.pk,))]  # behind the others' drains
    assert subscription.deliveries.filter(state="pending").count() == 3
    subscription.refresh_from_db()
    assert subscription.lease_owner == ""  # the lease is free for whoever takes the task
    assert webhooks.drain(subscription.pk) == "sent 2, more queued"
    assert webhooks.drain(subscription.pk) == "sent 1"
    assert [r.json["data"]["sequence"] for r in receiver.received] == [1, 2, 3, 4, 5]
