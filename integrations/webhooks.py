"""Outbound webhooks: the agency's systems hear of changes, signed per Standard Webhooks.

The outbox: `emit` writes an event and one delivery per interested subscription in the caller's
transaction (a page of the mirror, a sync finishing, a grant ending), so an event exists if and
only if its change was committed. Deliveries are sent after commit by `drain`, one worker per
subscription at a time, at least once, with retries over about a day; the reconciler
(`tasks.reconcile_webhooks`) sends again whatever a lost task message left behind.

A delivery's body is `{"type", "timestamp", "data"}`; `data` always carries `sequence` (per
subscription, without gaps, so a receiver can order events and see a missing one) and
`connection_id`. The `webhook-id` header is the event's id, the same on every retry and replay.
"""

from __future__ import annotations

import base64
import logging
import random
import secrets
import time
import traceback
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db import connection as db
from django.db.models import Q, QuerySet
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from . import egress, metrics, notify, queueing
from .models import (
    WEBHOOK_TEST_EVENT,
    ConnectionEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)
from .resources import REGISTRY

log = logging.getLogger(__name__)

CONNECTION_EVENTS = {
    "connection.reauth_required": "The Zywave grant ended: the person must reconnect.",
    "connection.reconnected": "The person connected Zywave again.",
    "connection.disconnected": "The connection was removed (tokens and mirror deleted).",
    "connection.deadline_approaching": "The 30-day refresh deadline is a week away or less.",
}
SYNC_EVENTS = {
    "sync.succeeded": "A sync finished and mirrored everything.",
    "sync.failed": "A sync failed or stopped part way (`data.sync.state`).",
}
# A `{resource}.changed` event lists at most this many changes (one page of the API's pull).
CHANGES_PER_EVENT = 500
# After a rotation the previous secret signs too, for this long.
ROTATION_OVERLAP = timedelta(hours=24)
# A worker delivering to a subscription holds it this long past each attempt's timeout.
LEASE_MARGIN = timedelta(seconds=20)
USER_AGENT = "zywave-portal-webhooks/1 (+Standard Webhooks)"


def event_types() -> dict[str, str]:
    """Every event type a subscription may ask for, with what it means: the connection's, the
    syncs', and one `{resource}.changed` per mirrored resource in the registry."""
    changed = {
        f"{name}.changed": f"{resource.label} were created, updated, archived or deleted."
        for name, resource in REGISTRY.items()
    }
    return {**CONNECTION_EVENTS, **SYNC_EVENTS, **changed}


class InvalidSubscription(ValueError):
    """What is wrong with a subscription's URL or events, in words for its owner."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_event_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def retry_schedule() -> list[float]:
    return list(settings.WEBHOOKS_RETRY_SCHEDULE)


# --- Subscriptions ---------------------------------------------------------------------------


def clean_events(events: Any) -> list[str]:
    known = event_types()
    if not isinstance(events, list) or not events:
        raise InvalidSubscription("events", "choose at least one event type")
    unknown = [e for e in events if not isinstance(e, str) or e not in known]
    if unknown:
        raise InvalidSubscription(
            "events", f"unknown event type(s): {', '.join(map(str, unknown))}"
        )
    return sorted(set(events))


def clean_url(url: Any) -> str:
    if not isinstance(url, str) or not url.strip():
        raise InvalidSubscription("url", "give the endpoint's URL")
    try:
        return egress.check(url).url
    except egress.UnsafeURL as exc:
        raise InvalidSubscription("url", str(exc)) from None


def subscribe(
    owner: Any, url: Any, events: Any, actor: Any = None
) -> tuple[WebhookSubscription, str]:
    """A new active subscription and its secret (shown to the owner this once)."""
    url, events = clean_url(url), clean_events(events)
    secret = new_secret()
    with transaction.atomic():
        subscription = WebhookSubscription.objects.create(
            owner=owner, url=url, events=events, secret=secret
        )
        _audit(subscription, ConnectionEvent.Kind.WEBHOOK_SUBSCRIBED, actor or owner)
    return subscription, secret


def change(
    subscription: WebhookSubscription, actor: Any, url: Any = None, events: Any = None
) -> None:
    fields = []
    if url is not None:
        subscription.url = clean_url(url)
        fields.append("url")
    if events is not None:
        subscription.events = clean_events(events)
        fields.append("events")
    if fields:
        with transaction.atomic():
            _audit(subscription, ConnectionEvent.Kind.WEBHOOK_CHANGED, actor, fields=fields)
            subscription.save(update_fields=fields)


def rotate_secret(subscription: WebhookSubscription, actor: Any) -> str:
    """A new secret; the old one keeps signing too for ROTATION_OVERLAP, so a receiver can
    switch without missing a delivery."""
    secret = new_secret()
    with transaction.atomic():
        _audit(subscription, ConnectionEvent.Kind.WEBHOOK_SECRET_ROTATED, actor)
        locked = WebhookSubscription.objects.select_for_update().get(pk=subscription.pk)
        locked.previous_secret = locked.secret
        locked.previous_secret_until = timezone.now() + ROTATION_OVERLAP
        locked.secret = secret
        locked.save(update_fields=["secret", "previous_secret", "previous_secret_until"])
    subscription.refresh_from_db()
    return secret


def delete(subscription: WebhookSubscription, actor: Any) -> None:
    with transaction.atomic():
        _audit(subscription, ConnectionEvent.Kind.WEBHOOK_DELETED, actor)
        subscription.delete()


def disable(subscription: WebhookSubscription, reason: str, actor: Any = None) -> bool:
    """Stop delivering (events keep being recorded, held until it is enabled again); tell the
    owner once. False when it already was disabled (nothing written)."""
    with transaction.atomic():
        _audit(subscription, ConnectionEvent.Kind.WEBHOOK_DISABLED, actor, reason=reason[:300])
        won = WebhookSubscription.objects.filter(
            pk=subscription.pk, state=WebhookSubscription.State.ACTIVE
        ).update(
            state=WebhookSubscription.State.DISABLED,
            disabled_at=timezone.now(),
            disabled_reason=reason[:300],
        )
        if not won:
            transaction.set_rollback(True)  # the audit row goes too
            return False
        subscription.refresh_from_db()
        transaction.on_commit(lambda: _tell_owner_disabled(subscription.pk))
    return True


def enable(subscription: WebhookSubscription, actor: Any) -> int:
    """Deliver again, starting with everything held or given up on; the number of deliveries
    that will be sent."""
    with transaction.atomic():
        audit = _audit(subscription, ConnectionEvent.Kind.WEBHOOK_ENABLED, actor, replayed=0)
        WebhookSubscription.objects.filter(pk=subscription.pk).update(
            state=WebhookSubscription.State.ACTIVE,
            disabled_at=None,
            disabled_reason="",
            paused_until=None,
        )
        pending = _reset(subscription.deliveries.undelivered())
        # The count is known only now; the row is this transaction's own, seen by nobody yet.
        audit.detail["replayed"] = pending
        audit.save(update_fields=["detail"])
        _drain_on_commit([subscription.pk])
    subscription.refresh_from_db()
    return pending


def replay(deliveries: QuerySet[WebhookDelivery]) -> int:
    """Send these deliveries again (same webhook-id, same body, a fresh attempt count)."""
    with transaction.atomic():
        subscriptions = set(deliveries.values_list("subscription_id", flat=True))
        count = _reset(deliveries)
        _drain_on_commit(subscriptions)
    return count


def replay_range(subscription: WebhookSubscription, since: datetime, until: datetime) -> int:
    return replay(subscription.deliveries.filter(created_at__gte=since, created_at__lt=until))


def send_test(subscription: WebhookSubscription) -> WebhookDelivery:
    """A `webhook.test` event to this subscription only."""
    from .models import Connection

    connection_id = (
        Connection.objects.filter(user_id=subscription.owner_id)
        .values_list("pk", flat=True)
        .first()
    )
    data = {"connection_id": connection_id, "message": "A test event from the portal."}
    with transaction.atomic():
        _lock_subscriptions(subscription.owner_id)
        event = _write_event(
            subscription.owner_id,
            WEBHOOK_TEST_EVENT,
            data,
            [(subscription.pk, subscription.state)],
        )
    return event.deliveries.get()


def _reset(deliveries: QuerySet[WebhookDelivery]) -> int:
    return deliveries.update(
        state=WebhookDelivery.State.PENDING, attempts=0, next_attempt_at=timezone.now()
    )


def _audit(
    subscription: WebhookSubscription, kind: str, actor: Any, **detail: Any
) -> ConnectionEvent:
    """The audit row of a change to the subscription, written (in the caller's transaction)
    before the subscription's row is updated or locked, its connection's row held first
    (`_hold_connection`)."""
    return ConnectionEvent.objects.create(
        user_id=subscription.owner_id,
        connection_id=_hold_connection(subscription.owner_id),
        kind=kind,
        actor=actor if actor is not None and getattr(actor, "pk", None) else None,
        detail={"subscription": subscription.pk, "url": audited_url(subscription.url), **detail},
    )


def audited_url(url: str) -> str:
    """scheme://host[:port]/path of a subscription's URL, as the audit (shown in the admin)
    keeps it: never its query, which may carry a token the receiver asked for, nor user info
    or fragment."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}{parts.path}"


def _hold_connection(owner_id: int) -> int | None:
    """The owner's connection, its row held FOR KEY SHARE until the transaction ends.

    The audit row's foreign key takes that lock anyway, but only at commit (Django's foreign
    keys are DEFERRABLE INITIALLY DEFERRED): after the subscription's row, the other order from
    emitters', which hold the connection and then take the owner's subscriptions; each waited
    for the other (deadlock detected). Taken here, first, a change waits for the emitter."""
    from .models import Connection

    table = db.ops.quote_name(Connection._meta.db_table)
    lock = " FOR KEY SHARE" if db.vendor == "postgresql" else ""
    with db.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {table} WHERE user_id = %s ORDER BY id LIMIT 1{lock}",  # noqa: S608
            [owner_id],
        )
        row = cursor.fetchone()
    return int(row[0]) if row else None


def _tell_owner_disabled(subscription_id: int) -> None:
    subscription = (
        WebhookSubscription.objects.select_related("owner").filter(pk=subscription_id).first()
    )
    if subscription is not None and subscription.owner.email:
        notify.send_webhook_disabled(subscription.owner.email, subscription)


# --- The outbox ------------------------------------------------------------------------------


def emit(
    owner_id: int, event_type: str, data: dict[str, Any], connection_id: int | None = None
) -> WebhookEvent | None:
    """Record an event for every subscription of the owner that listens to its type, in the
    caller's transaction; delivered after commit. None when nobody listens (nothing written)."""
    if event_type == WEBHOOK_TEST_EVENT:
        return None  # sent to one subscription by `send_test`, never emitted
    # No savepoint: in a sync page's transaction it would cost two more round trips a page,
    # and a failure here fails the caller's transaction anyway.
    with transaction.atomic(savepoint=False):
        listening = [
            (pk, state)
            for pk, events, state in _lock_subscriptions(owner_id)
            if event_type in events
        ]
        if not listening:
            return None
        return _write_event(
            owner_id, event_type, {"connection_id": connection_id, **data}, listening
        )


def emit_changes(
    owner_id: int,
    connection_id: int,
    resource: str,
    changes: Sequence[tuple[str, str]],
    changed_at: datetime | None,
) -> int:
    """`{resource}.changed` events for a batch of changes ((id, kind) pairs), at most
    CHANGES_PER_EVENT each: one event for a page of a sync. The number of events written."""
    if not changes:
        return 0
    since = _cursor(changed_at)
    written = 0
    for start in range(0, len(changes), CHANGES_PER_EVENT):
        batch = changes[start : start + CHANGES_PER_EVENT]
        event = emit(
            owner_id,
            f"{resource}.changed",
            {
                "resource": resource,
                "changes": [{"id": zywave_id, "kind": kind} for zywave_id, kind in batch],
                "updated_since": since,
            },
            connection_id=connection_id,
        )
        if event is None:
            return 0
        written += 1
    return written


def announce_connection(connection: Any, event_type: str, **data: Any) -> None:
    """A `connection.*` event, in the caller's transaction: its status and refresh deadline,
    and what the caller adds (`reason`)."""
    deadline = connection.refresh_deadline
    emit(
        connection.user_id,
        event_type,
        {
            "status": connection.status,
            "refresh_deadline": deadline.isoformat() if deadline else None,
            **data,
        },
        connection_id=connection.pk,
    )


def announce_deleted(
    connection: Any, deleted: dict[str, tuple[list[str], datetime | None]]
) -> None:
    """`{resource}.changed` events for records that became tombstones (`mirror.remove_unseen`,
    `mirror.tombstone_all`), in the caller's transaction."""
    for resource, (ids, when) in deleted.items():
        emit_changes(
            connection.user_id, connection.pk, resource, [(i, "deleted") for i in ids], when
        )


def _cursor(changed_at: datetime | None) -> str | None:
    """The API's `updated_since` that returns these changes: just before the time they were
    written (the API returns rows changed strictly after it)."""
    if changed_at is None:
        return None
    before = (changed_at - timedelta(microseconds=1)).astimezone(UTC)
    return before.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lock_subscriptions(owner_id: int) -> list[tuple[int, list[str], str]]:
    """The owner's subscriptions (id, events, state), their rows locked in id order until the
    transaction ends. Sequence numbers are taken under these locks; and a transaction that
    emits more than once (a full run's removals, one event per resource) holds them all from
    its first event, so two emitters for one owner never each hold one and wait for the other
    (a deadlock). One statement: it runs for every page of every sync."""
    table = db.ops.quote_name(WebhookSubscription._meta.db_table)
    lock = " FOR UPDATE" if db.features.has_select_for_update else ""
    with db.cursor() as cursor:
        cursor.execute(
            f"SELECT id, events, state FROM {table} WHERE owner_id = %s ORDER BY id{lock}",  # noqa: S608
            [owner_id],
        )
        rows = cursor.fetchall()
    return [
        (int(pk), orjson.loads(events) if isinstance(events, str | bytes) else events, state)
        for pk, events, state in rows
    ]


def _write_event(
    owner_id: int,
    event_type: str,
    data: dict[str, Any],
    subscriptions: list[tuple[int, str]],
) -> WebhookEvent:
    """The event and a numbered delivery for each (id, state) of `subscriptions`, whose rows the
    caller locked (`_lock_subscriptions`). A delivery task is queued on commit for each active
    subscription that had no delivery due yet: one that had is being sent or has its task
    queued, and that drain sends this one too (after releasing the subscription's lease, which
    waits for this transaction's lock, it looks again). So a sync of 200 pages queues one task
    while the first waits, not 200; a task lost on the way is the reconciler's."""
    event = WebhookEvent(
        id=new_event_id(), owner_id=owner_id, type=event_type, data=data, created_at=timezone.now()
    )
    ids = [pk for pk, _state in subscriptions]
    active = {pk for pk, state in subscriptions if state == WebhookSubscription.State.ACTIVE}
    if db.vendor == "postgresql":
        waiting = _insert_event(event, ids, active)
    else:
        numbers = _next_sequences(ids)
        event.save(force_insert=True)
        WebhookDelivery.objects.bulk_create(
            [
                WebhookDelivery(
                    subscription_id=pk, event=event, sequence=sequence, created_at=event.created_at
                )
                for pk, sequence in numbers.items()
            ]
        )
        waiting = set(
            WebhookDelivery.objects.due(event.created_at)
            .filter(subscription_id__in=active)
            .exclude(event=event)
            .values_list("subscription_id", flat=True)
        )
    _drain_on_commit(active - waiting)
    return event


def _insert_event(event: WebhookEvent, subscription_ids: list[int], active: set[int]) -> set[int]:
    """PostgreSQL, one statement: raise the subscriptions' counters (`_next_sequences`), write
    the event and its numbered deliveries, and return which `active` subscriptions already had
    a delivery due. Its snapshot is taken after `_lock_subscriptions` took the rows, so it sees
    every delivery committed before."""
    subscriptions = db.ops.quote_name(WebhookSubscription._meta.db_table)
    events = db.ops.quote_name(WebhookEvent._meta.db_table)
    deliveries = db.ops.quote_name(WebhookDelivery._meta.db_table)
    at = event.created_at
    with db.cursor() as cursor:
        cursor.execute(
            f"WITH numbered AS (UPDATE {subscriptions} SET last_sequence = last_sequence + 1 "  # noqa: S608
            "WHERE id = ANY(%s::bigint[]) RETURNING id, last_sequence), "
            f"new_event AS (INSERT INTO {events} (id, owner_id, type, data, created_at) "
            "VALUES (%s, %s, %s, %s::jsonb, %s)), "
            f"new_deliveries AS (INSERT INTO {deliveries} (subscription_id, event_id, sequence, "
            "state, attempts, created_at, next_attempt_at, last_error) "
            "SELECT id, %s, last_sequence, %s, 0, %s, %s, '' FROM numbered) "
            f"SELECT DISTINCT subscription_id FROM {deliveries} "
            "WHERE subscription_id = ANY(%s::bigint[]) AND state = %s AND next_attempt_at <= %s",
            [
                subscription_ids,
                event.id,
                event.owner_id,
                event.type,
                orjson.dumps(event.data, option=orjson.OPT_NON_STR_KEYS).decode(),
                at,
                event.id,
                WebhookDelivery.State.PENDING,
                at,
                at,
                sorted(active),
                WebhookDelivery.State.PENDING,
                at,
            ],
        )
        waiting = {int(pk) for (pk,) in cursor.fetchall()}
    event._state.adding = False
    event._state.db = db.alias
    return waiting


def _next_sequences(subscription_ids: list[int]) -> dict[int, int]:
    """Raise each subscription's counter by one and return the new values (other databases
    than PostgreSQL; there `_insert_event` does it). The rows are the caller's, locked until
    its transaction ends, so two writers never take the same number and a rolled-back one
    leaves no gap."""
    table = db.ops.quote_name(WebhookSubscription._meta.db_table)
    placeholders = ", ".join(["%s"] * len(subscription_ids))
    with db.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_sequence = last_sequence + 1 "  # noqa: S608
            f"WHERE id IN ({placeholders}) RETURNING id, last_sequence",
            subscription_ids,
        )
        return {int(pk): int(sequence) for pk, sequence in cursor.fetchall()}


def _drain_on_commit(subscription_ids: Iterable[int]) -> None:
    """Queue a drain per subscription after commit (a refusing broker leaves it to the
    reconciler: the event is committed already)."""
    for pk in sorted(set(subscription_ids)):
        queueing.after_commit("deliver_webhooks", pk)


# --- Delivery --------------------------------------------------------------------------------


def body_of(delivery: WebhookDelivery) -> bytes:
    """The delivery's body, the same bytes on every attempt."""
    event = delivery.event
    data = {**event.data, "sequence": delivery.sequence}
    return orjson.dumps(
        {
            "type": event.type,
            "timestamp": event.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "data": data,
        }
    )


def signature(secrets_now: list[str], msg_id: str, at: datetime, body: bytes) -> str:
    """`webhook-signature`: one `v1,<base64>` per live secret, space-separated (Standard
    Webhooks), so a receiver holding either the new or the old secret verifies it."""
    text = body.decode()
    return " ".join(Webhook(secret).sign(msg_id, at, text) for secret in secrets_now)


def headers_for(
    subscription: WebhookSubscription, delivery: WebhookDelivery, body: bytes, at: datetime
) -> dict[str, str]:
    return {
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature(subscription.secrets_now(at), delivery.event_id, at, body),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }


def drain(subscription_id: int) -> str:
    """Send the subscription's due deliveries, oldest first, holding its lease so that no two
    workers send to one endpoint at once. What happened, in a word (for the task's result)."""
    owner = secrets.token_hex(8)
    sent = 0
    for _round in range(3):
        if not _claim(subscription_id, owner):
            return "busy" if not sent else f"sent {sent}"
        try:
            done, more = _send_due(subscription_id, owner)
            sent += done
        finally:
            WebhookSubscription.objects.filter(pk=subscription_id, lease_owner=owner).update(
                lease_until=None, lease_owner=""
            )
        if more:
            # Its share is spent: queue itself behind the other subscriptions' drains, so that
            # a busy subscription does not keep a worker process while others wait.
            queueing.send("deliver_webhooks", subscription_id)
            return f"sent {sent}, more queued"
        # A delivery committed while we held the lease had its task turned away as "busy":
        # look once more now that the lease is free, so it is not left for the reconciler.
        if not _due(subscription_id).exists():
            break
    _schedule_next(subscription_id)
    return f"sent {sent}"


def _lease_seconds() -> timedelta:
    return timedelta(seconds=settings.WEBHOOKS_TIMEOUT_SECONDS) + LEASE_MARGIN


def _claim(subscription_id: int, owner: str) -> bool:
    """A conditional UPDATE: of two workers, only one sees a row count of 1."""
    now = timezone.now()
    return bool(
        WebhookSubscription.objects.filter(
            pk=subscription_id, state=WebhookSubscription.State.ACTIVE
        )
        .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
        .filter(Q(paused_until__isnull=True) | Q(paused_until__lte=now))
        .update(lease_until=now + _lease_seconds(), lease_owner=owner)
    )


def _due(subscription_id: int) -> QuerySet[WebhookDelivery]:
    now = timezone.now()
    return (
        WebhookDelivery.objects.due(now)
        .filter(
            subscription_id=subscription_id,
            subscription__state=WebhookSubscription.State.ACTIVE,
        )
        .filter(Q(subscription__paused_until__isnull=True) | Q(subscription__paused_until__lte=now))
    )


# One drain's share of a worker process: then it queues itself again behind the others.
DRAIN_SHARE = (100, 5.0)  # deliveries, seconds


def _send_due(subscription_id: int, owner: str) -> tuple[int, bool]:
    """Send due deliveries while they succeed; (sent, whether the share ran out first)."""
    sent = 0
    started = time.monotonic()
    most, seconds = DRAIN_SHARE
    while True:
        if sent >= most or time.monotonic() - started > seconds:
            return sent, True
        delivery = _due(subscription_id).select_related("event").order_by("sequence").first()
        if delivery is None:
            return sent, False
        # For the timeout and LEASE_MARGIN: `attempt`, lookup and request, ends by the timeout.
        renewed = WebhookSubscription.objects.filter(pk=subscription_id, lease_owner=owner).update(
            lease_until=timezone.now() + _lease_seconds()
        )
        if not renewed:
            return sent, False  # our lease lapsed and another worker took the subscription
        subscription = WebhookSubscription.objects.get(pk=subscription_id)
        if not subscription.is_active:
            return sent, False
        if attempt(subscription, delivery):
            sent += 1
            continue
        now_state = WebhookSubscription.objects.filter(pk=subscription_id).first()
        if now_state is None:
            return sent, False  # deleted while its attempt was out
        if not now_state.is_active or (
            now_state.paused_until and now_state.paused_until > timezone.now()
        ):
            return sent, False


def attempt(subscription: WebhookSubscription, delivery: WebhookDelivery) -> bool:
    """One attempt, logged; True when the receiver took it (2xx)."""
    at = timezone.now()
    body = body_of(delivery)
    status: int | None = None
    retry_after: float | None = None
    excerpt = error = ""
    duration_ms = 0
    # The whole attempt, lookup and request, ends by the timeout: `_send_due` renewed the
    # lease for the timeout and LEASE_MARGIN before it, so no other worker takes the
    # subscription while it is out.
    timeout = float(settings.WEBHOOKS_TIMEOUT_SECONDS)
    started = time.monotonic()
    try:
        # Resolved and checked again at every attempt (the name may point elsewhere now), and
        # the connection made to the address checked.
        target = egress.check(subscription.url, timeout=egress.lookup_timeout())
        answer = egress.post(
            target,
            body,
            headers_for(subscription, delivery, body, at),
            timeout=timeout - (time.monotonic() - started),
        )
        status, retry_after, excerpt, duration_ms = (
            answer.status,
            answer.retry_after,
            answer.excerpt,
            answer.duration_ms,
        )
    except egress.LookupTimedOut as exc:
        # Like no answer (the receiver's name cannot be reached now): retried, not refused.
        error, duration_ms = str(exc), int((time.monotonic() - started) * 1000)
    except egress.UnsafeURL as exc:
        error = f"refused: {exc}"
    except egress.SendFailed as exc:
        error, duration_ms = exc.reason, exc.duration_ms
    except Exception as exc:
        # Whatever else goes wrong (a bug here, in urllib3 or http.client) is a failed attempt
        # like any other, retried and in the end given up on: raised, it would leave the
        # delivery pending with no attempt logged, first in line at every drain, holding up
        # every later one for good. Logged without its message, which may quote the URL (and
        # a token in it) or the request.
        error = f"unexpected error ({type(exc).__name__})"
        log.error(
            "Webhook delivery %s of subscription %s: %s\n%s",
            delivery.pk,
            subscription.pk,
            error,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
    try:
        with transaction.atomic():
            WebhookAttempt.objects.create(
                delivery=delivery,
                at=at,
                duration_ms=duration_ms,
                status=status,
                error=error[:300],
                response_excerpt=excerpt[: egress.EXCERPT_BYTES],
            )
    except IntegrityError:
        # The subscription (and its deliveries) was deleted while the request was out.
        log.info("Webhook delivery %s went with its subscription mid-attempt", delivery.pk)
        return False
    metrics.webhook_attempted(status)
    if status is not None and 200 <= status < 300:
        _as_read(delivery).update(
            state=WebhookDelivery.State.DELIVERED,
            attempts=delivery.attempts + 1,
            delivered_at=timezone.now(),
            last_status=status,
            last_error="",
        )
        return True
    _failed(subscription, delivery, status, retry_after, error or f"HTTP {status}")
    return False


def _failed(
    subscription: WebhookSubscription,
    delivery: WebhookDelivery,
    status: int | None,
    retry_after: float | None,
    reason: str,
) -> None:
    """Schedule the next attempt, or give up after the last one and disable the subscription.

    The receiver is down (no answer, 5xx, 408, 429): the whole subscription waits until the
    next attempt, so a dead endpoint gets one request per step of the schedule, not one per
    pending event. A 4xx other than those is about this event only: the others go on.
    """
    now = timezone.now()
    attempts = delivery.attempts + 1
    schedule = retry_schedule()
    if attempts > len(schedule):
        # Giving up is one transaction: a FAILED delivery on an active subscription (a crash or
        # a deadlock between two) would be retried and reported by nobody. The subscription
        # first (its audit, then its row: `_audit`), then the delivery, as `enable` takes them.
        with transaction.atomic():
            disable(subscription, f"delivery {delivery.event_id} failed {attempts} times: {reason}")
            gave_up = _as_read(delivery).update(
                state=WebhookDelivery.State.FAILED,
                attempts=attempts,
                last_status=status,
                last_error=reason[:300],
            )
            if not gave_up:
                transaction.set_rollback(True)  # replayed meanwhile: it is sent again instead
        return
    wait = schedule[attempts - 1] * random.uniform(1.0, 1.2)  # noqa: S311 (jitter)
    if status in (429, 503) and retry_after is not None:
        wait = max(wait, min(retry_after, float(settings.WEBHOOKS_MAX_RETRY_AFTER_SECONDS)))
    next_at = now + timedelta(seconds=wait)
    scheduled = _as_read(delivery).update(
        attempts=attempts, next_attempt_at=next_at, last_status=status, last_error=reason[:300]
    )
    if scheduled and (status is None or status >= 500 or status in (408, 429)):
        WebhookSubscription.objects.filter(pk=subscription.pk).update(paused_until=next_at)


def _as_read(delivery: WebhookDelivery) -> QuerySet[WebhookDelivery]:
    """The delivery's row if it is still as it was read before the request: a replay or an
    enable made while the request was out reset it (attempts 0, due now), and the attempt's
    outcome must not overwrite that (the delivery is then sent again, as asked)."""
    return WebhookDelivery.objects.filter(
        pk=delivery.pk, attempts=delivery.attempts, next_attempt_at=delivery.next_attempt_at
    )


def _schedule_next(subscription_id: int) -> None:
    """Queue the next drain when a retry falls due soon; later ones are the reconciler's (a
    task held for hours in the broker would be delivered again at its visibility timeout)."""
    subscription = WebhookSubscription.objects.filter(
        pk=subscription_id, state=WebhookSubscription.State.ACTIVE
    ).first()
    if subscription is None:
        return
    earliest = (
        subscription.deliveries.filter(state=WebhookDelivery.State.PENDING)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    if earliest is None:
        return
    if subscription.paused_until and subscription.paused_until > earliest:
        earliest = subscription.paused_until
    wait = (earliest - timezone.now()).total_seconds()
    if wait <= settings.WEBHOOKS_RECONCILE_SECONDS:
        queueing.send("deliver_webhooks", subscription_id, countdown=max(0.0, wait) + 0.05)


def stranded() -> list[int]:
    """Active subscriptions with deliveries due and nobody delivering: a lost task message (a
    worker killed, Redis restarted) or a retry beyond `_schedule_next`'s horizon."""
    now = timezone.now()
    return list(
        WebhookDelivery.objects.due(now)
        .filter(subscription__state=WebhookSubscription.State.ACTIVE)
        .filter(Q(subscription__lease_until__isnull=True) | Q(subscription__lease_until__lt=now))
        .filter(Q(subscription__paused_until__isnull=True) | Q(subscription__paused_until__lte=now))
        .values_list("subscription_id", flat=True)
        .distinct()
        .order_by()
    )


def purge_log(now: datetime | None = None) -> int:
    """Delivered deliveries (and their attempts) older than WEBHOOKS_LOG_DAYS, and events no
    delivery refers to any more."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.WEBHOOKS_LOG_DAYS)
    deleted, _ = WebhookDelivery.objects.filter(
        state=WebhookDelivery.State.DELIVERED, delivered_at__lt=cutoff
    ).delete()
    WebhookEvent.objects.filter(created_at__lt=cutoff, deliveries__isnull=True).delete()
    return deleted
