"""Mirroring a connection's Zywave accounts and contacts, page by page.

Callable without a broker (`run_sync`); the Celery tasks are thin wrappers. Memory stays flat:
one page (at most 100 records) is in memory at a time, written as one bulk upsert, and the run's
progress is committed with it so an interrupted run resumes from its last committed page.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db import connection as db
from django.db.models import Model
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from portal.logs import bind

from .client import (
    ACCOUNTS,
    CONTACTS,
    Forbidden,
    MalformedResponse,
    NoProfileChosen,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    ZywaveClient,
    ZywaveError,
    ZywaveTimeout,
    lower_keys,
)
from .models import Account, Connection, Contact, SyncRun
from .tokens import ReauthRequired, RefreshFailed, client_for

log = logging.getLogger(__name__)

RESOURCES = ("accounts", "contacts")
PATHS = {"accounts": ACCOUNTS, "contacts": CONTACTS}


class SyncStopped(Exception):
    """The run cannot go on (grant ended, forbidden, too many failures): recorded on the run."""


class Cancelled(Exception):
    """Someone else ended the run (profile changed, disconnected): stop without writing."""


# --- Converting Zywave records (camelCase, zywave-api.md §4) to mirror rows ----------------


def _text(record: dict[str, Any], key: str, limit: int) -> str:
    value = record.get(key)
    if value is None:
        return ""
    if isinstance(value, list):
        value = ", ".join(str(item) for item in value)
    return str(value)[:limit]


def _bool(record: dict[str, Any], key: str, default: bool) -> bool:
    value = record.get(key)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    return default


def _int(record: dict[str, Any], key: str) -> int | None:
    value = record.get(key)
    if isinstance(value, bool):
        return None
    try:
        number = int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and -(2**31) < number < 2**31 else None


def _when(record: dict[str, Any], key: str) -> datetime | None:
    value = record.get(key)
    if not isinstance(value, str):
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return None
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, UTC)
    return parsed


def _zywave_id(record: dict[str, Any], resource: str) -> str:
    value = record.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise MalformedResponse(f"a {resource} record without an id")
    return str(value)[:64]


def account_row(
    connection_id: int, run_id: int, record: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The mirror columns of one Zywave account record (field name -> value)."""
    r = lower_keys(record)
    return {
        "connection_id": connection_id,
        "zywave_id": _zywave_id(r, "account"),
        "name": _text(r, "name", 255),
        "classification": _text(r, "classification", 100),
        "lines_of_business": _text(r, "linesofbusiness", 500),
        "client_size": _text(r, "clientsize", 50),
        "number_of_employees": _int(r, "numberofemployees"),
        "is_active": _bool(r, "isactive", True),
        "is_archived": _bool(r, "isarchived", False),
        "city": _text(r, "city", 100),
        "state": _text(r, "state", 50),
        "updated_at_zywave": _when(r, "updateddatetime"),
        "raw": record,
        "seen_in_run": run_id,
        "synced_at": now,
    }


def contact_row(
    connection_id: int, run_id: int, record: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The mirror columns of one Zywave contact record (field name -> value)."""
    r = lower_keys(record)
    return {
        "connection_id": connection_id,
        "zywave_id": _zywave_id(r, "contact"),
        "account_zywave_id": _text(r, "accountid", 64),
        "first_name": _text(r, "firstname", 100),
        "last_name": _text(r, "lastname", 100),
        "email": _text(r, "emailaddress", 254),
        "title": _text(r, "title", 150),
        "work_phone": _text(r, "workphonenumber", 50),
        "mobile_phone": _text(r, "mobilephonenumber", 50),
        "is_primary": _bool(r, "isprimarycontact", False),
        "is_active": _bool(r, "isactive", True),
        "is_archived": _bool(r, "isarchived", False),
        "updated_at_zywave": _when(r, "updateddatetime"),
        "raw": record,
        "seen_in_run": run_id,
        "synced_at": now,
    }


ROWS: dict[str, tuple[type[Model], Callable[..., dict[str, Any]]]] = {
    "accounts": (Account, account_row),
    "contacts": (Contact, contact_row),
}


def upsert(
    resource: str, connection_id: int, run_id: int, records: list[dict[str, Any]]
) -> tuple[int, datetime | None]:
    """Write one page as a single INSERT ... ON CONFLICT DO UPDATE on (connection, zywave_id).

    Returns the rows written and the newest `updatedDateTime` among them.
    """
    model, build = ROWS[resource]
    now = timezone.now()
    rows: dict[str, dict[str, Any]] = {}
    for record in records:
        row = build(connection_id, run_id, record, now)
        rows[row["zywave_id"]] = row  # a page repeating an id keeps the last copy
    if not rows:
        return 0, None
    newest = max(
        (r["updated_at_zywave"] for r in rows.values() if r["updated_at_zywave"]), default=None
    )
    if db.vendor == "postgresql":
        _upsert_postgresql(model, list(rows.values()))
    else:
        model._default_manager.bulk_create(
            [model(**row) for row in rows.values()],
            update_conflicts=True,
            unique_fields=["connection", "zywave_id"],
            update_fields=[name for name in rows[next(iter(rows))] if name not in KEY_FIELDS],
        )
    return len(rows), newest


KEY_FIELDS = {"connection_id", "zywave_id"}


def _upsert_postgresql(model: type[Model], rows: list[dict[str, Any]]) -> None:
    """The page travels as one JSON parameter that PostgreSQL expands with jsonb_to_recordset.

    Django's bulk_create would send one array parameter per column, quoted value by value in
    Python; that quoting cost more than the INSERT itself (see the sync benchmark).
    """
    fields = [model._meta.get_field("connection" if n == "connection_id" else n) for n in rows[0]]
    quote = db.ops.quote_name
    columns = [str(field.column) for field in fields]  # type: ignore[union-attr]
    types = [str(field.db_type(db)).split("(")[0] for field in fields]  # type: ignore[union-attr]
    names = ", ".join(quote(c) for c in columns)
    record_type = ", ".join(f"{quote(c)} {t}" for c, t in zip(columns, types, strict=True))
    updates = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in columns if c not in KEY_FIELDS)
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({names}) "  # noqa: S608
        f"SELECT {names} FROM jsonb_to_recordset(%s::jsonb) AS r({record_type}) "
        f"ON CONFLICT (connection_id, zywave_id) DO UPDATE SET {updates}"
    )
    with db.cursor() as cursor:
        cursor.execute(sql, [page_json(rows)])


def page_json(rows: list[dict[str, Any]]) -> str:
    """The page as JSON text. orjson encodes a page about ten times faster than the standard
    encoder (the sync benchmark's largest Python cost); it refuses what the standard encoder
    takes (integers beyond 64 bits in a raw record), and then the standard encoder writes it."""
    try:
        return orjson.dumps(rows).decode()
    except orjson.JSONEncodeError:
        return json.dumps(rows, default=_isoformat)


def _isoformat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- Runs ------------------------------------------------------------------------------------


def lease() -> timedelta:
    return timedelta(seconds=settings.ZYWAVE_SYNC_LEASE_SECONDS)


def can_sync(connection: Connection) -> bool:
    return (
        connection.status == Connection.Status.ACTIVE and connection.chosen_profile_id is not None
    )


def queue_run(
    connection: Connection, full: bool = False, trigger: str = "schedule"
) -> SyncRun | None:
    """A queued run for the connection, or None when one is already queued or running.

    The partial unique index on active runs makes this safe against racing callers ("Sync now"
    twice, and beat, at once): exactly one insert wins.
    """
    try:
        with transaction.atomic():
            return SyncRun.objects.create(connection=connection, full=full, trigger=trigger)
    except IntegrityError:
        if full:  # a full resync asked while an incremental one waits: make it full
            SyncRun.objects.active().filter(connection=connection, full=False, pages_done=0).update(
                full=True
            )
        return None


def claim(connection_id: int, full: bool = False) -> SyncRun | None:
    """Take the connection's active run (queued, or running with an expired lease), creating a
    queued one first if there is none. None: another worker holds it, or no sync is possible.

    A conditional UPDATE on the lease decides who owns the run: only one caller sees a row
    count of 1.
    """
    connection = Connection.objects.filter(pk=connection_id).first()
    if connection is None:
        return None
    if not can_sync(connection):
        # A run queued before the grant ended (or the profile went) would otherwise wait, and
        # be re-sent by the reconciler, for ever.
        connection.sync_runs.cancel(
            "re-authorization needed"
            if connection.status == Connection.Status.REAUTH_REQUIRED
            else "no profile chosen"
        )
        return None
    run = SyncRun.objects.active().filter(connection=connection).first()
    if run is None:
        queue_run(connection, full=full, trigger="task")
        run = SyncRun.objects.active().filter(connection=connection).first()
        if run is None:
            return None
    now = timezone.now()
    won = (
        SyncRun.objects.filter(pk=run.pk, state__in=SyncRun.ACTIVE_STATES)
        .filter(models_lease_free(now))
        .update(state=SyncRun.State.RUNNING, lease_until=now + lease())
    )
    if not won:
        return None
    run.refresh_from_db()
    if run.started_at is None:
        run.started_at = now
        run.save(update_fields=["started_at"])
    return run


def models_lease_free(now: datetime) -> Any:
    from django.db.models import Q

    return Q(lease_until__isnull=True) | Q(lease_until__lt=now)


def previous_marks(connection: Connection) -> dict[str, str]:
    last = (
        SyncRun.objects.filter(connection=connection, state=SyncRun.State.SUCCEEDED)
        .order_by("-finished_at")
        .only("marks")
        .first()
    )
    return dict(last.marks) if last else {}


def needs_full(connection: Connection) -> bool:
    """First run, or the last successful full run is older than the full-sync period."""
    last_full = (
        SyncRun.objects.filter(connection=connection, state=SyncRun.State.SUCCEEDED, full=True)
        .order_by("-finished_at")
        .values_list("finished_at", flat=True)
        .first()
    )
    period = timedelta(hours=settings.ZYWAVE_FULL_SYNC_HOURS)
    return last_full is None or last_full < timezone.now() - period


def run_sync(
    run: SyncRun,
    client: ZywaveClient | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_page: Callable[[SyncRun], None] | None = None,
) -> SyncRun:
    """Page through accounts then contacts from where the run stands, one transaction per page.

    429 and 503 (and timeouts, other 5xx) wait as Zywave asks or back off with jitter, then the
    same page is asked again, up to ZYWAVE_SYNC_MAX_RETRIES times in a row. A grant that ended,
    a 403 or a bad page stop the run; pages already written stay written. `on_page` is told
    after each committed page (progress bars).
    """
    connection = Connection.objects.select_related("chosen_profile").get(pk=run.connection_id)
    if (
        not run.full
        and not run.pages_done
        and run.resource == RESOURCES[0]
        and needs_full(connection)
    ):
        run.full = True
        run.save(update_fields=["full"])
    since_marks = {} if run.full else previous_marks(connection)
    client = client or client_for(connection)
    with bind(sync_run_id=run.pk, connection_id=run.connection_id):
        return _run(run, client, since_marks, sleep, on_page)


def _run(
    run: SyncRun,
    client: ZywaveClient,
    since_marks: dict[str, str],
    sleep: Callable[[float], None],
    on_page: Callable[[SyncRun], None] | None,
) -> SyncRun:
    try:
        for resource in RESOURCES[RESOURCES.index(run.resource) :]:
            if run.resource != resource:
                run.resource, run.skip = resource, 0
                run.save(update_fields=["resource", "skip"])
            _sync_resource(run, client, resource, since_marks.get(resource), sleep, on_page)
        if run.full:
            _remove_unseen(run)
    except Cancelled as exc:
        log.info("Sync run %s stopped: %s", run.pk, exc)
        run.refresh_from_db()
        return run
    except SyncStopped as exc:
        return _finish(
            run, SyncRun.State.PARTIAL if run.pages_done else SyncRun.State.FAILED, str(exc)
        )
    except Exception as exc:
        # Record it, so the run does not sit "running" until its lease ends and is retried
        # forever by the reconciler; re-raise for the worker's log.
        _finish(run, SyncRun.State.FAILED, f"unexpected error ({type(exc).__name__})")
        raise
    return _finish(run, SyncRun.State.SUCCEEDED, "")


def _odata_since(mark: str | None) -> str | None:
    when = parse_datetime(mark) if mark else None
    if when is None:
        return None
    since = when - timedelta(seconds=settings.ZYWAVE_SYNC_OVERLAP_SECONDS)
    # Archiving is a soft delete that bumps updatedDateTime: this filter sees archived records.
    return f"updatedDateTime gt {since.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def _sync_resource(
    run: SyncRun,
    client: ZywaveClient,
    resource: str,
    mark: str | None,
    sleep: Callable[[float], None],
    on_page: Callable[[SyncRun], None] | None = None,
) -> None:
    odata_filter = _odata_since(mark)
    failures = 0
    while True:
        try:
            for page in client.pages(PATHS[resource], odata_filter=odata_filter, skip=run.skip):
                with transaction.atomic():
                    written, newest = upsert(resource, run.connection_id, run.pk, page.items)
                    _advance(run, resource, len(page.items), page.total, written, newest)
                failures = 0
                if on_page is not None:
                    on_page(run)
            return
        except (RateLimited, ServerError, ZywaveTimeout, RefreshFailed) as exc:
            failures += 1
            if failures > settings.ZYWAVE_SYNC_MAX_RETRIES:
                raise SyncStopped(f"Zywave kept failing: {exc}") from None
            delay = _delay(getattr(exc, "retry_after", None), failures)
            log.info("Sync run %s waits %.1fs after %s", run.pk, delay, type(exc).__name__)
            _renew_lease(run, delay)
            sleep(delay)
        except ReauthRequired:
            raise SyncStopped("Zywave needs the person to reconnect") from None
        except (Forbidden, NoProfileChosen) as exc:
            raise SyncStopped(f"Zywave refused access (scope or profile): {exc}") from None
        except (Unauthorized, NotFound, MalformedResponse, ZywaveError) as exc:
            raise SyncStopped(str(exc)) from None


def _delay(retry_after: float | None, failures: int) -> float:
    """Zywave's Retry-After when given (capped), else exponential backoff with full jitter."""
    cap = float(settings.ZYWAVE_SYNC_MAX_WAIT_SECONDS)
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return random.uniform(0, min(cap, settings.ZYWAVE_SYNC_BACKOFF_SECONDS * 2**failures))  # noqa: S311


def _renew_lease(run: SyncRun, extra_seconds: float = 0) -> None:
    run.lease_until = timezone.now() + lease() + timedelta(seconds=extra_seconds)
    SyncRun.objects.filter(pk=run.pk).update(lease_until=run.lease_until)


def _advance(
    run: SyncRun,
    resource: str,
    count: int,
    total: int | None,
    written: int,
    newest: datetime | None,
) -> None:
    """Record a committed page (inside the page's transaction)."""
    run.skip += count
    run.pages_done += 1
    run.records_done += written
    if total is not None and run.skip <= count:  # first page of a resource reports totals
        run.total_reported = (
            (run.total_reported or 0) + total if resource != RESOURCES[0] else total
        )
    mark = parse_datetime(run.marks[resource]) if resource in run.marks else None
    if newest is not None and (mark is None or newest > mark):
        run.marks = {**run.marks, resource: newest.isoformat()}
    run.lease_until = timezone.now() + lease()
    # Conditional UPDATE: if the run was cancelled meanwhile (the profile changed, or the
    # person disconnected), no row matches and the page's transaction is rolled back.
    updated = SyncRun.objects.filter(pk=run.pk, state=SyncRun.State.RUNNING).update(
        skip=run.skip,
        pages_done=run.pages_done,
        records_done=run.records_done,
        total_reported=run.total_reported,
        marks=run.marks,
        lease_until=run.lease_until,
    )
    if not updated:
        raise Cancelled(f"run {run.pk} was cancelled")


def _remove_unseen(run: SyncRun) -> None:
    """A full run saw every record Zywave has: what it did not see was deleted at Zywave."""
    for model in (Account, Contact):
        model._default_manager.filter(connection_id=run.connection_id).exclude(
            seen_in_run=run.pk
        ).delete()


def _finish(run: SyncRun, state: str, error: str) -> SyncRun:
    if state == SyncRun.State.SUCCEEDED:
        # Carry forward the marks of resources where nothing changed this time.
        connection = Connection.objects.get(pk=run.connection_id)
        run.marks = {**previous_marks(connection), **run.marks}
    run.state = state
    run.error = error[:500]
    run.finished_at = timezone.now()
    run.lease_until = None
    run.save(update_fields=["state", "error", "finished_at", "lease_until", "marks"])
    log.info(
        "Sync run %s of connection %s %s: %s pages, %s records",
        run.pk,
        run.connection_id,
        state,
        run.pages_done,
        run.records_done,
    )
    return run


def sync_now(
    connection: Connection,
    full: bool = False,
    on_page: Callable[[SyncRun], None] | None = None,
) -> SyncRun | None:
    """Run a sync in this process (operators' command, tests): claim, then run."""
    if full:
        queue_run(connection, full=True, trigger="command")
    run = claim(connection.pk, full=full)
    return run_sync(run, on_page=on_page) if run else None
