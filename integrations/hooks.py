"""Zywave's webhooks in: a receiver URL per connection, notifications kept, records re-fetched.

Zywave POSTs a notification (event time, record type, record id; docs/zywave.md §6) to the
connection's receiver URL, `/hooks/zywave/<token>/`. The portal writes it to the database and
answers 202 at once, without calling Zywave; a worker on the `refetch` queue then GETs that one
record under the connection's profile and upserts it (or makes it a tombstone when Zywave no
longer shows it), emitting `{resource}.changed` like a sync page. The body's own data is never
trusted: it only says which record to look at. Notifications for one record that arrive close
together coalesce into one fetch, across every process (the shared cache), and a fetched copy
never replaces one Zywave updated later (`mirror.upsert(refetched=True)`). Polling stays as the
safety net, at a relaxed interval while notifications arrive (`Connection.objects.due_for_sync`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.core.cache import cache
from django.db import connection as db
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import mirror, queueing, webhooks
from .client import (
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    ZywaveError,
    ZywaveTimeout,
    lower_keys,
    safe_id,
)
from .models import Connection, ConnectionEvent, SyncRun, ZywaveNotification
from .resources import REGISTRY
from .tokens import ReauthRequired, RefreshFailed, client_for

log = logging.getLogger(__name__)

# The body's keys, read case-insensitively ([assumed]: Zywave names the contents, not the
# keys): the first of each list that is present wins.
EVENT_TYPE_KEYS = ("eventtype", "event_type", "event", "eventname", "type")
EVENT_TIME_KEYS = (
    "eventdatetime",
    "event_date_time",
    "eventtime",
    "eventdate",
    "occurredat",
    "timestamp",
    "datetime",
)
RECORD_TYPE_KEYS = ("recordtype", "record_type", "entitytype", "resourcetype", "objecttype")
RECORD_ID_KEYS = ("recordid", "record_id", "entityid", "resourceid", "objectid", "id")
# A notification is a few hundred bytes; anything much larger is not one.
MAX_BODY_BYTES = 16 * 1024
# `last delivery` is written at most this often per connection (a flood is not a write storm).
TOUCH_EVERY = timedelta(seconds=5)


class BadNotification(ValueError):
    """The body is not a notification the portal understands: what is wrong, for the 400."""


@dataclass(frozen=True)
class Notification:
    event_type: str
    resource: str
    record_id: str
    event_at: datetime


# --- The receiver token ----------------------------------------------------------------------


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def rotate_token(connection: Connection, actor: Any = None) -> str:
    """A new receiver token (the old URL answers 404 from now on); audited. A connection gets
    its first one when it is made (`Connection.save`)."""
    token = secrets.token_urlsafe(32)
    connection.set_hook_token(token)
    connection.save(update_fields=["hook_token", "hook_token_hash", "hook_token_rotated_at"])
    connection.record(ConnectionEvent.Kind.HOOK_TOKEN_ROTATED, actor=actor)
    return token


def receiver_url(connection: Connection) -> str:
    """The connection's receiver URL ("" for one made before receivers existed and not yet
    given one: the dashboard offers to make it)."""
    if not connection.hook_token:
        return ""
    return f"{settings.PORTAL_URL}/hooks/zywave/{connection.hook_token}/"


def connection_for(token: str) -> Connection | None:
    """The connection whose receiver this is, found by the token's hash: the lookup and the
    comparison never touch the token itself, so their timing says nothing about it."""
    if not token or len(token) > 128:
        return None
    found = list(
        Connection.objects.filter(hook_token_hash=digest(token))
        .exclude(status=Connection.Status.DISCONNECTED)
        # What a delivery needs, not the tokens: each is decrypted as it is read, on every
        # request of a flood. Anything else is read when asked for.
        .only("id", "status", "hook_last_delivery_at")
        # No ORDER BY: the hash is unique, and Connection's ordering joins auth_user.
        .order_by()[:1]
    )
    return found[0] if found else None


# --- Notifications ---------------------------------------------------------------------------


def _first(body: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if body.get(key) not in (None, ""):
            return body[key]
    return None


def resource_for(record_type: str) -> str | None:
    """`Account`, `account`, `accounts`, `Policy`, `policies` (and the same of every
    registered resource)."""
    wanted = record_type.strip().lower()
    for name in REGISTRY:
        singular = name[:-3] + "y" if name.endswith("ies") else name.removesuffix("s")
        if wanted in (name, singular):
            return name
    return None


def parse(raw: bytes) -> Notification:
    if len(raw) > MAX_BODY_BYTES:
        raise BadNotification(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = lower_keys(orjson.loads(raw))
    except (orjson.JSONDecodeError, ZywaveError):
        raise BadNotification("the body is not a JSON object") from None
    event_type = _first(body, EVENT_TYPE_KEYS)
    if not isinstance(event_type, str) or not 0 < len(event_type) <= 100:
        raise BadNotification("no event type (eventType)")
    if not event_type.isprintable():
        raise BadNotification("the event type holds control characters")
    record_type = _first(body, RECORD_TYPE_KEYS)
    if record_type is None and "." in event_type:
        record_type = event_type.split(".", 1)[0]  # account.updated names its record type
    resource = resource_for(record_type) if isinstance(record_type, str) else None
    if resource is None:
        raise BadNotification(f"unknown record type {str(record_type)[:40]!r} (recordType)")
    record_id = safe_id(_first(body, RECORD_ID_KEYS))
    if record_id is None:
        raise BadNotification("no usable record id (recordId)")
    when = _first(body, EVENT_TIME_KEYS)
    try:
        event_at = parse_datetime(when) if isinstance(when, str) else None
    except ValueError:  # well formed, impossible: month 13, an offset of a day
        event_at = None
    if event_at is None:
        raise BadNotification("no parsable event time (eventDateTime, RFC 3339)")
    event_at = (event_at if event_at.tzinfo else event_at.replace(tzinfo=UTC)).astimezone(UTC)
    return Notification(event_type, resource, record_id, event_at)


def receive(connection: Connection, notification: Notification) -> ZywaveNotification:
    """Keep the notification (committed before the caller answers) and queue its fetch."""
    kept = ZywaveNotification.objects.create(
        connection=connection,
        event_type=notification.event_type,
        resource=notification.resource,
        record_id=notification.record_id,
        event_at=notification.event_at,
    )
    now = timezone.now()
    last = connection.hook_last_delivery_at
    if last is None or last < now - TOUCH_EVERY:  # as read with the connection: no query
        _touch(connection.pk, now)
    schedule_fetch(connection.pk, notification.resource, notification.record_id)
    return kept


def _touch(connection_id: int, now: datetime) -> None:
    """`hook_last_delivery_at`, at most every TOUCH_EVERY, and never waiting: while a token
    refresh or a profile change holds the connection's row, a delivery skips the write instead
    of queueing behind it (a flood would otherwise fill every web thread)."""
    if db.vendor != "postgresql":
        Connection.objects.filter(pk=connection_id).filter(
            Q(hook_last_delivery_at__isnull=True) | Q(hook_last_delivery_at__lt=now - TOUCH_EVERY)
        ).update(hook_last_delivery_at=now)
        return
    table = db.ops.quote_name(Connection._meta.db_table)
    with db.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET hook_last_delivery_at = %s WHERE id = ("  # noqa: S608
            f"SELECT id FROM {table} WHERE id = %s AND (hook_last_delivery_at IS NULL "
            "OR hook_last_delivery_at < %s) FOR NO KEY UPDATE SKIP LOCKED)",
            [now, connection_id, now - TOUCH_EVERY],
        )


def schedule_fetch(connection_id: int, resource: str, record_id: str) -> str:
    """Queue the record's fetch, coalescing: the first notification of a window fetches at
    once; any later one in the window asks for one more fetch at the window's end (so the last
    change is always seen), and the rest ride along. That later fetch opens the next window, so
    a stream of notifications makes one fetch per window, whichever process received them.
    Without the shared cache, every one fetches."""
    window = settings.ZYWAVE_WEBHOOK_COALESCE_SECONDS
    key = f"zywave-refetch:{connection_id}:{resource}:{record_id}"
    coalesce = getattr(cache, "coalesce", None)  # the shared Redis cache: one round trip
    try:
        if coalesce is not None:
            outcome = coalesce(key, window)
            leading, trailing = outcome == 1, outcome == 2
        else:
            leading = cache.add(key, 1, timeout=window)
            trailing = not leading and cache.add(f"{key}:again", 1, timeout=window)
            if trailing:
                # The window goes on for one more after the fetch at its end: a notification
                # then asks for the next fetch at that window's end. Ending with the first
                # window, the next notification fetched at once, just before the fetch at its
                # end: two a window.
                cache.set(key, 1, timeout=2 * window)
    except Exception as exc:  # the cache is down: fetch every time rather than lose one
        log.warning("Coalescing unavailable (%s): fetching at once", type(exc).__name__)
        leading, trailing = True, False
    args = (connection_id, resource, record_id)
    if leading:
        queueing.after_commit("refetch_record", *args)
        return "now"
    if trailing:
        queueing.after_commit("refetch_record", *args, countdown=window)
        return "later"
    return "coalesced"


class TryAgain(Exception):
    """Zywave could not answer now (429, 5xx, timeout): the task retries with backoff."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__("Zywave could not answer now")
        self.retry_after = retry_after


def refetch(connection_id: int, resource: str, record_id: str) -> str:
    """Fetch one record under the connection's profile and mirror what Zywave says now."""
    connection = (
        Connection.objects.select_related("chosen_profile").filter(pk=connection_id).first()
    )
    if connection is None or resource not in REGISTRY:
        return "gone"
    started = timezone.now()
    if not connection.can_sync or not REGISTRY[resource].granted(connection.scopes):
        _settle(connection_id, resource, record_id, started, "failed", "connection cannot sync")
        return "skipped"
    if _no_detail_route(connection_id, resource):
        return _poll_instead(connection, resource, record_id, started)
    client = client_for(connection)
    try:
        record = client.get(f"{REGISTRY[resource].path}/{record_id}")
    except (NotFound, Forbidden):
        # Gone, or not visible under this profile (a record of another agency): Zywave shows
        # nothing of it to this connection, so neither does the mirror. Unless the route for
        # one record is what is missing (assumed for contacts: docs/zywave.md §6): then a
        # record the mirror holds live is not found either, and deleting on a 404 would empty
        # the mirror one notification at a time.
        if not _detail_route_seen(connection_id, resource) and not _detail_route_answers(
            connection, client, resource, record_id
        ):
            cache.set(_no_detail_key(connection_id, resource), 1, timeout=86400)
            log.warning(
                "Zywave has no route for one %s record (a live one is not found): "
                "notifications for %s queue a sync instead, for a day",
                resource,
                resource,
                extra={"connection_id": connection_id},
            )
            return _poll_instead(connection, resource, record_id, started)
        record = None
    except RateLimited as exc:
        raise TryAgain(exc.retry_after) from None
    except (ServerError, ZywaveTimeout, RefreshFailed) as exc:
        raise TryAgain(getattr(exc, "retry_after", None)) from None
    except (ReauthRequired, ZywaveError) as exc:
        _settle(connection_id, resource, record_id, started, "failed", str(exc)[:200])
        return "failed"
    if record is not None:
        _detail_route_works(connection_id, resource)
        try:
            body = lower_keys(record)
        except ZywaveError:
            body = {}
        if safe_id(body.get("id")) != record_id:
            _settle(
                connection_id, resource, record_id, started, "failed", "Zywave sent another record"
            )
            return "failed"
    with transaction.atomic():
        if record is None:
            ids, when = mirror.tombstone_returning(
                REGISTRY[resource].live(connection_id).filter(zywave_id=record_id), connection_id
            )
            changes = [(i, "deleted") for i in ids]
        else:
            running = (
                SyncRun.objects.active()
                .filter(connection_id=connection_id)
                .values_list("pk", flat=True)
                .first()
            )
            written = mirror.upsert(
                resource, connection_id, running, [record], refetched=True, fetched_at=started
            )
            changes, when = list(written.changes), written.changed_at
        webhooks.emit_changes(connection.user_id, connection_id, resource, changes, when)
        outcome = changes[0][1] if changes else "unchanged"
        _settle(connection_id, resource, record_id, started, "applied", outcome)
    return outcome


def _no_detail_key(connection_id: int, resource: str) -> str:
    return f"zywave-no-detail-route:{connection_id}:{resource}"


def _no_detail_route(connection_id: int, resource: str) -> bool:
    try:
        return bool(cache.get(_no_detail_key(connection_id, resource)))
    except Exception:  # the cache is down: ask Zywave (the probe decides again)
        return False


def _detail_ok_key(connection_id: int, resource: str) -> str:
    return f"zywave-detail-route-answers:{connection_id}:{resource}"


def _detail_route_works(connection_id: int, resource: str) -> None:
    """The route for one record answered with a record: a later 404 on it is a deletion."""
    with contextlib.suppress(Exception):  # the cache is down: the probe decides after a 404
        cache.set(_detail_ok_key(connection_id, resource), 1, timeout=86400)


def _detail_route_seen(connection_id: int, resource: str) -> bool:
    try:
        return bool(cache.get(_detail_ok_key(connection_id, resource)))
    except Exception:
        return False


PROBES = 3  # live records tried before a 404 is taken for a missing route


def _detail_route_answers(connection: Connection, client: Any, resource: str, missing: str) -> bool:
    """After a 404 for `missing`: does the route answer for a record the mirror holds live? A
    probed record may have been deleted at Zywave too (deletions come in batches: an account and
    its contacts), so the route is missing only if none of PROBES live records is found. With
    no other live record there is nothing to compare, and the 404 stands."""
    probes = list(
        REGISTRY[resource]
        .live(connection.pk)
        .exclude(zywave_id=missing)
        .values_list("zywave_id", flat=True)[:PROBES]
    )
    for probe in probes:
        try:
            client.get(f"{REGISTRY[resource].path}/{probe}")
        except (NotFound, Forbidden):
            continue
        except RateLimited as exc:
            raise TryAgain(exc.retry_after) from None
        except (ServerError, ZywaveTimeout, RefreshFailed, ZywaveError) as exc:
            # A hiccup on the probe decides nothing: ask again later rather than delete.
            raise TryAgain(getattr(exc, "retry_after", None)) from None
        _detail_route_works(connection.pk, resource)
        return True
    return not probes


def _poll_instead(connection: Connection, resource: str, record_id: str, started: datetime) -> str:
    """No way to fetch one record: an incremental sync brings the change (one at a time per
    connection, so a flood of notifications queues one)."""
    from .sync import queue_run

    if queue_run(connection, trigger="webhook") is not None:
        queueing.after_commit("sync_connection", connection.pk)
        outcome = "sync queued"
    else:
        # A run is already queued (it will see the change) or running (it may be past the
        # record already: the next scheduled poll brings it).
        outcome = "sync already queued or running"
    _settle(connection.pk, resource, record_id, started, "applied", outcome)
    return "sync queued"


def _settle(
    connection_id: int, resource: str, record_id: str, started: datetime, state: str, outcome: str
) -> None:
    """Mark the record's notifications received before this fetch began as done; later ones
    wait for the fetch queued for them."""
    queued = ZywaveNotification.objects.filter(
        connection_id=connection_id,
        resource=resource,
        record_id=record_id,
        state=ZywaveNotification.State.QUEUED,
        received_at__lte=started,
    )
    queued.update(state=state, applied_at=timezone.now(), outcome=outcome[:200])


def allow(connection_id: int) -> float | None:
    """Count a delivery against the receiver's ZYWAVE_WEBHOOK_RATE_LIMIT per minute (one
    fixed window in the shared cache, as the API's throttle): None when allowed, else the
    seconds until the window ends (Retry-After)."""
    window = 60
    now = timezone.now().timestamp()
    start = int(now // window) * window
    if _count(f"zywave-hook-rate:{connection_id}:{start}", window + 5) <= (
        settings.ZYWAVE_WEBHOOK_RATE_LIMIT
    ):
        return None
    return max(1.0, start + window - now)


REFUSALS = ("unknown_token", "bad_request", "too_large", "rate_limited")


def count_refusal(connection_id: int | None, reason: str) -> None:
    """Every refusal is counted (per connection and reason, for a week; unknown tokens in one
    count of their own): the admin shows them. In the cache, not the database, so a flood of
    refusals is not a flood of writes."""
    try:
        _count(f"zywave-hook-refused:{connection_id or 'unknown'}:{reason}", 7 * 86400)
    except Exception as exc:  # counting must never turn a refusal into a 500
        log.warning("Could not count a refused Zywave delivery (%s)", type(exc).__name__)


def refusals(connection_id: int | None) -> dict[str, int]:
    keys = {
        reason: f"zywave-hook-refused:{connection_id or 'unknown'}:{reason}" for reason in REFUSALS
    }
    try:
        found = cache.get_many(list(keys.values()))
    except Exception:
        return {}
    return {reason: int(found.get(key) or 0) for reason, key in keys.items()}


def _count(key: str, timeout: int) -> int:
    counter = getattr(cache, "count", None)  # the shared Redis cache: one round trip
    if counter is not None:
        return int(counter(key, timeout))
    cache.add(key, 0, timeout=timeout)
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=timeout)
        return 1


# A queued notification older than this (its fetch's message lost, or its retries spent) is
# fetched again by the reconciler; one older than GIVE_UP is given up and a sync queued.
STRANDED_AFTER = timedelta(seconds=60)
GIVE_UP = timedelta(hours=6)
KEEP = timedelta(days=7)


def reconcile(now: datetime | None = None, limit: int = 1000) -> dict[str, int]:
    """Beat: fetch again records whose notifications were acknowledged but never applied (a
    task message lost with a restarted Redis, a refused send, retries spent), give up on very
    old ones (a sync is queued for their connection instead), and trim the log."""
    now = now or timezone.now()
    window = timedelta(seconds=settings.ZYWAVE_WEBHOOK_COALESCE_SECONDS)
    queued = ZywaveNotification.objects.filter(state=ZywaveNotification.State.QUEUED)
    stale = (
        queued.filter(received_at__lt=now - window - STRANDED_AFTER, received_at__gte=now - GIVE_UP)
        .values_list("connection_id", "resource", "record_id")
        .distinct()
        .order_by()[:limit]
    )
    requeued = 0
    for connection_id, resource, record_id in stale:
        queueing.after_commit("refetch_record", connection_id, resource, record_id)
        requeued += 1
    abandoned = queued.filter(received_at__lt=now - GIVE_UP)
    given_up = 0
    for connection_id in set(abandoned.values_list("connection_id", flat=True)):
        connection = Connection.objects.filter(pk=connection_id).first()
        if connection is not None and connection.can_sync:
            from .sync import queue_run

            if queue_run(connection, trigger="webhook") is not None:
                queueing.after_commit("sync_connection", connection_id)
    given_up = abandoned.update(
        state=ZywaveNotification.State.FAILED,
        applied_at=now,
        outcome="not fetched in 6 hours: a sync was queued",
    )
    purged, _ = (
        ZywaveNotification.objects.exclude(state=ZywaveNotification.State.QUEUED)
        .filter(received_at__lt=now - KEEP)
        .delete()
    )
    return {"requeued": requeued, "given_up": given_up, "purged": purged}


def delivery_health(connection: Connection) -> dict[str, Any]:
    """What the dashboard and admin show: the last delivery, and how many in the last day."""
    since = timezone.now() - timedelta(days=1)
    return {
        "last_delivery_at": connection.hook_last_delivery_at,
        "last_day": connection.zywave_notifications.filter(received_at__gte=since).count(),
        "relaxed": relaxed(connection.hook_last_delivery_at),
    }


def relaxed(last_delivery_at: datetime | None, now: datetime | None = None) -> bool:
    """Zywave is delivering: polling can run at ZYWAVE_WEBHOOK_POLL_MINUTES."""
    window = timedelta(minutes=settings.ZYWAVE_WEBHOOK_POLL_MINUTES)
    return last_delivery_at is not None and last_delivery_at > (now or timezone.now()) - window
