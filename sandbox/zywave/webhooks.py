"""Zywave's webhooks, emulated (docs/zywave.md §6): subscriptions verified by a challenge, a
delivery queued for every change the control API makes to a record, sent by background threads
of the server process, retried with growing waits, with switchable faults.

What Zywave documents: a webhook listens to one event type and sees only what its owner may
see; a delivery is a POST carrying the event time, the record type and the record id; a URI is
verified by a GET whose `challenge` the answer must echo; failed deliveries are retried with
growing waits; there is no signature. Everything else here is assumed and, where a client could
depend on it, a runtime setting: the body's key names (`webhook_key_case`), the waits
(`webhook_retry_schedule`), the timeouts.

Traffic stays on this machine: a URI whose host is not a loopback address (or `localhost`,
sent to 127.0.0.1) is refused, and neither the challenge nor a delivery follows a redirect.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import queue
import random
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import User
from django.db import close_old_connections, models, transaction
from django.utils import timezone

from sandbox.zywave.models import (
    Profile,
    RuntimeSetting,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)
from sandbox.zywave.resources import RESOURCES, Resource, iso_z

log = logging.getLogger(__name__)

ACTIONS = ("created", "updated", "archived", "deleted")
# The runtime settings that inject delivery faults (all off by default, cleared by reset).
FAULT_SETTINGS = (
    "webhook_duplicates",
    "webhook_out_of_order",
    "webhook_delay_seconds",
    "webhook_burst",
    "webhook_foreign",
)
BODY_KEYS = ("eventType", "eventDateTime", "recordType", "recordId")
MAX_ANSWER_BYTES = 64 * 1024  # what is read of an answer (a challenge echo is short)
USER_AGENT = "Zywave-Sandbox-Webhooks/1.0"


class WebhookError(ValueError):
    """A subscription refused: its URI, or its verification (the message says why)."""


def record_type(resource: Resource) -> str:
    """`Account`, `Contact`, `Policy`: the record type a delivery names."""
    return resource.noun.capitalize()


def event_types() -> list[str]:
    """Every event type a webhook may listen to: `account.created`, ..., one set per
    resource of the registry."""
    return [f"{resource.noun}.{action}" for resource in RESOURCES for action in ACTIONS]


# Subscriptions -------------------------------------------------------------------------------


def check_uri(uri: str) -> None:
    """Refuse a URI the sandbox must not send to: anything but http(s) on a loopback address.

    A name other than `localhost` is refused unresolved (resolving it is already traffic)."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as error:
        raise WebhookError(f"Not a URI: {error}") from None
    if parts.scheme not in {"http", "https"}:
        raise WebhookError("The URI must be http:// or https://")
    host = parts.hostname or ""
    if parts.username is not None or parts.password is not None:
        raise WebhookError("The URI must not carry credentials")
    if host != "localhost":
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise WebhookError(
                f"The sandbox only delivers to loopback addresses, not to {host!r}"
            ) from None
        if not address.is_loopback:
            raise WebhookError(f"The sandbox only delivers to loopback addresses, not to {host}")
    if port == 0:
        raise WebhookError("The URI needs a port other than 0")


def connection_for(uri: str, timeout: float) -> tuple[http.client.HTTPConnection, str, str]:
    """An HTTP connection to a checked URI, the request target and the Host header value.

    `localhost` is connected to as 127.0.0.1: what it resolves to is not trusted."""
    check_uri(uri)
    parts = urlsplit(uri)
    host = parts.hostname or ""
    address = "127.0.0.1" if host == "localhost" else host
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # The port given, so that http.client never reads one out of an IPv6 address ("::1").
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return kind(address, port, timeout=timeout), target, parts.netloc


def verify(uri: str, timeout: float) -> None:
    """Zywave's challenge (§6, documented): `GET <uri>?challenge=<random>` must answer 2xx with
    exactly the challenge as its body. Raises WebhookError saying why not."""
    challenge = secrets.token_urlsafe(24)
    separator = "&" if urlsplit(uri).query else "?"
    conn, target, host = connection_for(f"{uri}{separator}challenge={challenge}", timeout)
    try:
        conn.request("GET", target, headers={"Host": host, "User-Agent": USER_AGENT})
        answer = conn.getresponse()
        body = answer.read(MAX_ANSWER_BYTES)
    except (OSError, http.client.HTTPException) as error:
        raise WebhookError(f"The challenge GET failed: {type(error).__name__}: {error}") from None
    finally:
        conn.close()
    if not 200 <= answer.status < 300:
        raise WebhookError(f"The challenge GET answered {answer.status}, not 2xx")
    if body != challenge.encode():
        shown = body[:80].decode("utf-8", "replace")
        raise WebhookError(f"The challenge GET answered {shown!r}, not the challenge")


def subscribe(email: str, event_type: str, uri: str) -> tuple[WebhookSubscription, bool]:
    """Verify `uri` and register (or find) the subscription; True when it is new."""
    user = User.objects.filter(username__iexact=email).first()
    if user is None:
        raise WebhookError(f"No sandbox user {email!r}")
    if event_type not in event_types():
        raise WebhookError(f"event_type must be one of {event_types()}")
    check_uri(uri)
    verify(uri, float(RuntimeSetting.get("webhook_verify_timeout")))
    return WebhookSubscription.objects.get_or_create(user=user, event_type=event_type, uri=uri)


# Queueing ------------------------------------------------------------------------------------


def body_of(event_type: str, kind: str, record_id: str, when: datetime, key_case: str) -> str:
    """The delivery's JSON: the event's time, type and record, nothing of the record itself.
    The key names are assumed (`webhook_key_case`)."""
    keys = [key[0].upper() + key[1:] for key in BODY_KEYS] if key_case == "pascal" else BODY_KEYS
    values = [event_type, iso_z(when), kind, record_id]
    return json.dumps(dict(zip(keys, values, strict=True)))


def queue_changes(
    resource: Resource, action: str, rows: models.QuerySet[Any], when: datetime
) -> int:
    """Queue `{noun}.{action}` for each row of `rows` (evaluated now: call it before the rows
    are deleted), in the change's transaction."""
    columns = ["pk", "agency_id"] if resource.profiled else ["pk"]
    records = [
        (row[0], row[1] if resource.profiled else None)
        for row in rows.order_by("pk").values_list(*columns)
    ]
    return queue_events(resource, action, records, when)


def queue_events(
    resource: Resource, action: str, records: Sequence[tuple[int, int | None]], when: datetime
) -> int:
    """Queue a delivery of `{noun}.{action}` about each record (id, agency id) to every
    subscription of that event type whose user may see it: a user sees the records of the
    agencies of their profiles, as the API's profiles do (api.resolve_profile). Returns how many
    deliveries were queued; they are sent once the transaction commits.

    The fault settings shape what is queued (FAULT_SETTINGS)."""
    event_type = f"{resource.noun}.{action}"
    subscriptions = list(WebhookSubscription.objects.filter(event_type=event_type).order_by("id"))
    if not records or not subscriptions:
        return 0
    options = RuntimeSetting.current()
    seen: dict[int | None, set[int]] = {}  # user id -> the agencies of the user's profiles
    for user_id, agency in Profile.objects.filter(
        user_id__in={subscription.user_id for subscription in subscriptions}
    ).values_list("user_id", "agency_id"):
        seen.setdefault(user_id, set()).add(agency)
    deliveries = []
    for subscription in subscriptions:
        batch = []
        for record_id, agency_id in records:
            visible = agency_id is None or agency_id in seen.get(subscription.user_id, set())
            if visible or options["webhook_foreign"]:
                faults = [] if visible else ["foreign"]
                batch += with_faults(
                    subscription, resource, event_type, str(record_id), when, faults, options
                )
        if options["webhook_out_of_order"]:
            batch = shuffled(batch)
        deliveries += batch
    WebhookDelivery.objects.bulk_create(deliveries, batch_size=500)
    transaction.on_commit(wake)
    return len(deliveries)


def with_faults(
    subscription: WebhookSubscription,
    resource: Resource,
    event_type: str,
    record_id: str,
    when: datetime,
    faults: list[str],
    options: dict[str, Any],
) -> list[WebhookDelivery]:
    """The deliveries one event becomes: one, or a burst of `webhook_burst` (their event times a
    millisecond apart, the last one the change's), each twice with `webhook_duplicates`, all
    held `webhook_delay_seconds` with that set."""
    burst = int(options["webhook_burst"])
    delay = float(options["webhook_delay_seconds"])
    copies = burst if burst >= 2 else 1
    due = timezone.now() + timedelta(seconds=delay)
    faults = [*faults, *(["delayed"] if delay > 0 else [])]
    result = []
    for index in range(copies):
        at = when - timedelta(milliseconds=copies - 1 - index)
        body = body_of(
            event_type, record_type(resource), record_id, at, str(options["webhook_key_case"])
        )
        marks = [*faults, *(["burst"] if copies > 1 else [])]
        for copy in range(2 if options["webhook_duplicates"] else 1):
            result.append(
                WebhookDelivery(
                    subscription=subscription,
                    event_type=event_type,
                    record_type=record_type(resource),
                    record_id=record_id,
                    event_time=at,
                    body=body,
                    due_at=due,
                    faults=",".join([*marks, *(["duplicate"] if copy else [])]),
                )
            )
    return result


def shuffled(batch: list[WebhookDelivery]) -> list[WebhookDelivery]:
    """The batch in a random order that is never the original one (when it can differ)."""
    if len(batch) < 2:
        return batch
    order = list(range(len(batch)))
    while order == sorted(order):
        random.shuffle(order)
    for delivery in batch:
        delivery.faults = ",".join(filter(None, [delivery.faults, "out_of_order"]))
    return [batch[index] for index in order]


def queue_one(subscription: WebhookSubscription, record_id: str, when: datetime) -> WebhookDelivery:
    """A hand-made delivery to one subscription about any record id, visible or not (the
    control API's `webhooks/<id>/send`)."""
    noun = subscription.event_type.partition(".")[0]
    resource = next(r for r in RESOURCES if r.noun == noun)
    key_case = str(RuntimeSetting.get("webhook_key_case"))
    delivery = WebhookDelivery.objects.create(
        subscription=subscription,
        event_type=subscription.event_type,
        record_type=record_type(resource),
        record_id=record_id,
        event_time=when,
        body=body_of(subscription.event_type, record_type(resource), record_id, when, key_case),
        due_at=timezone.now(),
        faults="manual",
    )
    transaction.on_commit(wake)
    return delivery


# Sending -------------------------------------------------------------------------------------


def post(uri: str, body: str, timeout: float) -> tuple[int | None, str]:
    """POST a delivery: the answer's status, or None and why there was none."""
    try:
        conn, target, host = connection_for(uri, timeout)
    except WebhookError as error:
        return None, str(error)
    headers = {"Host": host, "Content-Type": "application/json", "User-Agent": USER_AGENT}
    try:
        conn.request("POST", target, body=body.encode(), headers=headers)
        answer = conn.getresponse()
        answer.read(MAX_ANSWER_BYTES)
        return answer.status, ""
    except (OSError, http.client.HTTPException) as error:
        return None, f"{type(error).__name__}: {error}"[:300]
    finally:
        conn.close()


@dataclass(frozen=True)
class Outcome:
    """One POST of a delivery: when, how long, and the answer's status or why there was none."""

    delivery: WebhookDelivery
    at: datetime
    status: int | None
    error: str
    duration_ms: int


def send(delivery: WebhookDelivery, options: dict[str, Any]) -> Outcome:
    """POST a delivery once (no database work: parallel senders run this in threads)."""
    at = timezone.now()
    started = time.monotonic()
    status, error = post(
        delivery.subscription.uri, delivery.body, float(options["webhook_timeout"])
    )
    duration_ms = int((time.monotonic() - started) * 1000)
    return Outcome(delivery, at, status, error, duration_ms)


def record(outcomes: Sequence[Outcome], options: dict[str, Any]) -> None:
    """Write down what the POSTs did, in one transaction: a delivery answered 2xx is delivered;
    any other is retried after the schedule's next wait, or given up after its last. A delivery
    that vanished meanwhile (a reset, an unsubscribe) is skipped."""
    schedule = [float(wait) for wait in options["webhook_retry_schedule"]]
    now = timezone.now()
    with transaction.atomic():
        for outcome in outcomes:
            tries = outcome.delivery.attempts + 1
            changes: dict[str, Any] = {"attempts": tries}
            if outcome.status is not None and 200 <= outcome.status < 300:
                changes.update(state=WebhookDelivery.DELIVERED, finished_at=now)
            elif tries > len(schedule):
                changes.update(state=WebhookDelivery.FAILED, finished_at=now)
            else:
                changes.update(due_at=now + timedelta(seconds=schedule[tries - 1]))
            if WebhookDelivery.objects.filter(pk=outcome.delivery.pk).update(**changes):
                WebhookAttempt.objects.create(
                    delivery_id=outcome.delivery.pk,
                    at=outcome.at,
                    status=outcome.status,
                    error=outcome.error,
                    duration_ms=outcome.duration_ms,
                )


def due_deliveries(subscription_id: int, limit: int) -> list[WebhookDelivery]:
    """The subscription's deliveries due now, in the order they were queued."""
    return list(
        WebhookDelivery.objects.select_related("subscription")
        .filter(
            subscription_id=subscription_id,
            state=WebhookDelivery.PENDING,
            due_at__lte=timezone.now(),
        )
        .order_by("id")[:limit]
    )


class Dispatcher:
    """The background sender of one server process: a loop that looks for subscriptions with
    deliveries due (woken by a change made in this process, else when the next delivery falls
    due, at least every POLL_SECONDS), and SANDBOX_WEBHOOK_SENDERS threads that each take a
    subscription's lease and send its due deliveries in queue order.

    The queue is in the database, so every gunicorn worker runs one of these and the lease
    decides which of them sends for a subscription. A process that dies mid-send leaves its
    lease to expire: the delivery is sent again (at least once, as Zywave's retries are)."""

    POLL_SECONDS = 1.0
    SLICE_SECONDS = 5.0  # then the lease is let go, so that other subscriptions get a turn
    CHUNK = 50  # due deliveries read at once

    def __init__(self, senders: int) -> None:
        self.owner = f"{os.getpid()}:{secrets.token_hex(4)}"
        self.senders = senders
        self.wake = threading.Event()
        self.work: queue.Queue[int] = queue.Queue()
        self.busy: set[int] = set()
        self.lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self.loop, name="webhook-dispatcher", daemon=True).start()
        for number in range(self.senders):
            name = f"webhook-sender-{number}"
            threading.Thread(target=self.send_loop, name=name, daemon=True).start()

    @staticmethod
    def lease_seconds(options: dict[str, Any]) -> float:
        # Longer than the sends between two renewals can take (see send_due).
        return 5 * float(options["webhook_timeout"]) + 30

    def loop(self) -> None:
        pause = self.POLL_SECONDS
        while True:
            self.wake.wait(pause)
            self.wake.clear()
            try:
                pause = self.dispatch()
            except Exception:
                log.exception("Webhook dispatch failed; trying again")
                close_old_connections()
                pause = self.POLL_SECONDS

    def dispatch(self) -> float:
        """Hand each subscription with deliveries due to a sender; return how long to wait
        before looking again (until the next held or retried delivery falls due)."""
        now = timezone.now()
        pending = WebhookDelivery.objects.filter(state=WebhookDelivery.PENDING).order_by()
        due = pending.filter(due_at__lte=now).values_list("subscription_id", flat=True).distinct()
        options = RuntimeSetting.current()
        for subscription_id in due:
            with self.lock:
                if subscription_id in self.busy or len(self.busy) >= self.senders:
                    continue
            if WebhookSubscription.take_lease(
                subscription_id, self.owner, self.lease_seconds(options)
            ):
                with self.lock:
                    self.busy.add(subscription_id)
                self.work.put(subscription_id)
        upcoming = pending.filter(due_at__gt=now).aggregate(next=models.Min("due_at"))["next"]
        if upcoming is None:
            return self.POLL_SECONDS
        return min(self.POLL_SECONDS, max(0.01, (upcoming - now).total_seconds()))

    def send_loop(self) -> None:
        while True:
            subscription_id = self.work.get()
            try:
                self.send_due(subscription_id)
            except Exception:
                log.exception("Webhook sending failed for subscription %s", subscription_id)
                close_old_connections()
            finally:
                try:
                    WebhookSubscription.release_lease(subscription_id, self.owner)
                except Exception:
                    log.exception("Could not release the lease of %s", subscription_id)
                with self.lock:
                    self.busy.discard(subscription_id)
                self.wake.set()

    def send_due(self, subscription_id: int) -> None:
        """Send the subscription's due deliveries for up to SLICE_SECONDS: one at a time in
        queue order, or `webhook_parallel` at a time (then in no particular order). The lease
        is renewed every few seconds and before each chunk; a lost lease stops the sending."""
        ends = time.monotonic() + self.SLICE_SECONDS
        while time.monotonic() < ends:
            options = RuntimeSetting.current()
            parallel = int(options["webhook_parallel"])
            if not WebhookSubscription.renew_lease(
                subscription_id, self.owner, self.lease_seconds(options)
            ):
                return
            # A parallel chunk takes at most 4 timeouts, within the lease (lease_seconds).
            batch = due_deliveries(subscription_id, self.CHUNK if parallel <= 1 else 4 * parallel)
            if not batch:
                return
            if parallel > 1:
                # The POSTs in threads, their outcomes written at once: threads writing to
                # SQLite each would wait on each other's locks.
                with ThreadPoolExecutor(parallel, thread_name_prefix="webhook-parallel") as pool:
                    record(list(pool.map(send, batch, [options] * len(batch))), options)
                continue
            renewed = time.monotonic()
            for delivery in batch:
                if time.monotonic() - renewed > 5:
                    if not WebhookSubscription.renew_lease(
                        subscription_id, self.owner, self.lease_seconds(options)
                    ):
                        return
                    renewed = time.monotonic()
                record([send(delivery, options)], options)
                if time.monotonic() >= ends:
                    return


DISPATCHER: Dispatcher | None = None


def start_dispatcher() -> None:
    """Start this process's sender (once): called by the WSGI entry point, so only server
    processes send, never `migrate` or `seed`."""
    global DISPATCHER
    if DISPATCHER is None:
        DISPATCHER = Dispatcher(int(settings.SANDBOX_WEBHOOK_SENDERS))
        DISPATCHER.start()


def wake() -> None:
    """Look for due deliveries now rather than at the next poll (after a change commits)."""
    if DISPATCHER is not None:
        DISPATCHER.wake.set()


def counts() -> dict[str, int]:
    """Deliveries by state."""
    result = {state: 0 for state, _label in WebhookDelivery.STATES}
    for state, number in (
        WebhookDelivery.objects.order_by().values_list("state").annotate(n=models.Count("id"))
    ):
        result[state] = number
    return result


def wait_until_empty(timeout: float) -> bool:
    """Whether no delivery is pending (due, held or being sent) within `timeout` seconds."""
    ends = time.monotonic() + timeout
    while WebhookDelivery.objects.filter(state=WebhookDelivery.PENDING).exists():
        if time.monotonic() >= ends:
            return False
        time.sleep(0.05)
    return True
