"""The mirror's writes: a page of Zywave records, one statement per page; tombstones.

`sync.py` runs a sync (claim, lease, pages, finish) and hands each page here. Every write to
the mirror tables goes through `upsert`, one INSERT ... ON CONFLICT statement per page, so this
is the one place to extend what a page write does. What is mirrored, and how a record becomes
a row, is declared in `resources.py`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
from django.conf import settings
from django.db import connection as db
from django.db.models import Model, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from .resources import REGISTRY, UnusableId, account_row, contact_row, policy_row

__all__ = ["account_row", "contact_row", "policy_row", "upsert", "remove_unseen", "tombstone"]

log = logging.getLogger(__name__)


class Written(NamedTuple):
    rows: int  # rows written (a page repeating an id writes it once)
    newest: datetime | None  # the newest `updatedDateTime` among them
    skipped: int  # records with an unusable id, not written
    # What changed, as (Zywave id, kind) with kind created, updated, archived or deleted; rows
    # the page repeated unchanged are not in it. For `{resource}.changed` webhooks.
    changes: tuple[tuple[str, str], ...] = ()
    changed_at: datetime | None = None  # when they changed (the database's clock)


def upsert(
    resource: str,
    connection_id: int,
    run_id: int | None,
    records: list[dict[str, Any]],
    *,
    refetched: bool = False,
    fetched_at: datetime | None = None,
) -> Written:
    """Write one page as a single INSERT ... ON CONFLICT DO UPDATE on (connection, zywave_id).

    `refetched`: records fetched one by one after a Zywave notification (integrations/hooks.py).
    Then a row Zywave updated later than the fetched copy is left alone (notifications and
    fetches arrive in any order), and a row keeps the sync run that saw it (`seen_in_run`), so
    a full run going on meanwhile does not take it for deleted. `fetched_at`, when the fetch
    began, becomes the rows' `synced_at`: a tombstone made after that time (a deletion another
    fetch saw) is not brought back by this older copy.
    """
    model, build = REGISTRY[resource].model, REGISTRY[resource].row
    now = fetched_at or timezone.now()
    rows: dict[str, dict[str, Any]] = {}
    skipped = 0
    for record in records:
        try:
            row = build(connection_id, run_id, record, now)
        except UnusableId:
            skipped += 1
            continue
        rows[row["zywave_id"]] = row  # a page repeating an id keeps the last copy
    if skipped:
        log.warning("Skipped %s %s record(s) with an unusable id", skipped, resource)
    if not rows:
        return Written(0, None, skipped)
    newest = max(
        (r["updated_at_zywave"] for r in rows.values() if r["updated_at_zywave"]), default=None
    )
    if db.vendor == "postgresql":
        changes, changed_at = _upsert_postgresql(model, list(rows.values()), refetched)
    else:
        if refetched:
            _drop_older(model, connection_id, rows)
            if not rows:
                return Written(0, newest, skipped)
        changes = _keep_unchanged_since(model, connection_id, rows)
        changed_at = now
        kept = KEY_FIELDS | ({"seen_in_run"} if refetched else set())
        model._base_manager.bulk_create(
            [model(**row) for row in rows.values()],
            update_conflicts=True,
            unique_fields=["connection", "zywave_id"],
            update_fields=[name for name in rows[next(iter(rows))] if name not in kept],
        )
    return Written(len(rows), newest, skipped, tuple(changes), changed_at if changes else None)


def change_kind(inserted: bool, archived: bool) -> str:
    if inserted:
        return "created"
    return "archived" if archived else "updated"


KEY_FIELDS = {"connection_id", "zywave_id"}
# `changed_at` moves only when the row's content changed (or it comes back from a tombstone):
# a full sync that finds nothing new leaves every `changed_at` alone, so an incremental API
# pull after it returns nothing.
CHANGED = (
    "CASE WHEN t.raw IS DISTINCT FROM EXCLUDED.raw OR t.deleted_at IS NOT NULL "
    "THEN EXCLUDED.changed_at ELSE t.changed_at END"
)


# A refetched copy replaces a row only if Zywave did not update the row's copy later.
NEWER = (
    "CASE WHEN t.deleted_at IS NOT NULL THEN t.deleted_at < EXCLUDED.synced_at "
    "ELSE t.updated_at_zywave IS NULL OR EXCLUDED.updated_at_zywave IS NULL "
    "OR EXCLUDED.updated_at_zywave >= t.updated_at_zywave END"
)


def _drop_older(model: type[Model], connection_id: int, rows: dict[str, dict[str, Any]]) -> None:
    """SQLite (`make check`): NEWER, worked out in Python."""
    existing = model._base_manager.filter(  # type: ignore[attr-defined]
        connection_id=connection_id, zywave_id__in=list(rows)
    ).values_list("zywave_id", "updated_at_zywave", "deleted_at")
    for zywave_id, updated, deleted_at in existing:
        row = rows[zywave_id]
        fetched = row["updated_at_zywave"]
        if deleted_at is not None:
            older = deleted_at >= row["synced_at"]
        else:
            older = updated is not None and fetched is not None and fetched < updated
        if older:
            del rows[zywave_id]


def _keep_unchanged_since(
    model: type[Model], connection_id: int, rows: dict[str, dict[str, Any]]
) -> list[tuple[str, str]]:
    """SQLite (`make check`): the CASE above, worked out in Python with one query; returns
    what changed, as `_upsert_postgresql` does."""
    existing = model._base_manager.filter(  # type: ignore[attr-defined]
        connection_id=connection_id, zywave_id__in=list(rows)
    ).values_list("zywave_id", "raw", "changed_at", "deleted_at")
    unchanged = set()
    for zywave_id, raw, changed_at, deleted_at in existing:
        row = rows[zywave_id]
        if deleted_at is None and raw == row["raw"]:
            row["changed_at"] = changed_at
            unchanged.add(zywave_id)
    seen = {zywave_id for zywave_id, *_ in existing}
    return [
        (zywave_id, change_kind(zywave_id not in seen, bool(row.get("is_archived"))))
        for zywave_id, row in rows.items()
        if zywave_id not in unchanged
    ]


def _upsert_postgresql(
    model: type[Model], rows: list[dict[str, Any]], refetched: bool = False
) -> tuple[list[tuple[str, str]], datetime | None]:
    """The page travels as one JSON parameter that PostgreSQL expands with jsonb_to_recordset.

    Django's bulk_create would send one array parameter per column, quoted value by value in
    Python; that quoting cost more than the INSERT itself (see the sync benchmark).
    """
    fields = [model._meta.get_field("connection" if n == "connection_id" else n) for n in rows[0]]
    quote = db.ops.quote_name
    columns = [str(field.column) for field in fields]  # type: ignore[union-attr]
    types = [str(field.db_type(db)).split("(")[0] for field in fields]  # type: ignore[union-attr]
    names = ", ".join(quote(c) for c in columns)
    # `changed_at` is the database's clock, not this machine's: workers and web processes on
    # other hosts stamp the same column, and an API cursor must not see a later write behind it.
    selected = ", ".join(
        "statement_timestamp()" if c == "changed_at" else quote(c) for c in columns
    )
    record_type = ", ".join(f"{quote(c)} {t}" for c, t in zip(columns, types, strict=True))
    kept = KEY_FIELDS | ({"seen_in_run"} if refetched else set())
    updates = ", ".join(
        f"{quote(c)} = {CHANGED if c == 'changed_at' else f'EXCLUDED.{quote(c)}'}"
        for c in columns
        if c not in kept
    )
    if refetched:
        updates += f" WHERE {NEWER}"
    # What changed comes back with the write: `xmax = 0` marks a row this statement inserted,
    # and a row whose `changed_at` is this statement's time changed (the CASE above).
    archived = "t.is_archived" if "is_archived" in columns else "false"
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} AS t ({names}) "  # noqa: S608
        f"SELECT {selected} FROM jsonb_to_recordset(%s::jsonb) AS r({record_type}) "
        f"ON CONFLICT (connection_id, zywave_id) DO UPDATE SET {updates} "
        f"RETURNING t.zywave_id, t.xmax = 0, {archived}, t.changed_at = statement_timestamp(), "
        "statement_timestamp()"
    )
    with db.cursor() as cursor:
        cursor.execute(sql, [page_json(rows)])
        returned = cursor.fetchall()
    changes = [
        (zywave_id, change_kind(inserted, is_archived))
        for zywave_id, inserted, is_archived, changed, _at in returned
        if changed
    ]
    return changes, (returned[0][4] if returned else None)


def page_json(rows: list[dict[str, Any]]) -> str:
    """The page as JSON text. orjson encodes a page about ten times faster than the standard
    encoder (the sync benchmark's largest Python cost); it refuses what the standard encoder
    takes (integers beyond 64 bits in a raw record), and then the standard encoder writes it."""
    try:
        return orjson.dumps(rows, default=exact_decimal).decode()
    except orjson.JSONEncodeError:
        return json.dumps(rows, default=_text_of)


def exact_decimal(value: Any) -> Any:
    """orjson writes no Decimal: write its exact text as a JSON number (never a float)."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _text_of(value: Any) -> str:
    """For the standard encoder: dates and times in ISO 8601, decimals as their exact text
    (PostgreSQL reads a numeric column from either)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


Deleted = dict[str, tuple[list[str], datetime | None]]  # resource: (Zywave ids, when)


def remove_unseen(connection_id: int, run_id: int, keep: Collection[str] = ()) -> Deleted:
    """After a full run, which saw every record Zywave has: what it did not see was deleted at
    Zywave and becomes a tombstone. Resources in `keep` were not asked (unavailable) and keep
    their rows. Tombstones older than ZYWAVE_TOMBSTONE_DAYS go for good. Returns what became a
    tombstone, per resource."""
    deleted: Deleted = {}
    for resource in REGISTRY.values():
        if resource.name in keep:
            continue
        deleted[resource.name] = tombstone_returning(
            resource.live(connection_id).exclude(seen_in_run=run_id), connection_id
        )
        purge_tombstones(resource.model, connection_id)
    return deleted


def tombstone(rows: QuerySet[Any]) -> int:
    """Turn live rows into tombstones: the Zywave id and when, nothing of the record's content
    (every other column back to its default), so a deleted record's data leaves the mirror."""
    model = rows.model
    # The database's clock on PostgreSQL (see _upsert_postgresql); SQLite's CURRENT_TIMESTAMP
    # has whole seconds only, so `make check` keeps this process's.
    now: Any = Now() if db.vendor == "postgresql" else timezone.now()
    cleared = {
        field.attname: field.get_default()
        for field in model._meta.concrete_fields
        if not field.primary_key and field.attname not in TOMBSTONE_KEEPS
    }
    return rows.filter(deleted_at__isnull=True).update(
        **cleared, raw={}, deleted_at=now, changed_at=now
    )


def tombstone_returning(
    rows: QuerySet[Any], connection_id: int
) -> tuple[list[str], datetime | None]:
    """`tombstone`, returning the Zywave ids it turned and when (for `{resource}.changed`).
    The ids are read first, in the caller's transaction, which holds the run's row or the
    connection's (no other writer of this connection's mirror runs meanwhile)."""
    ids = list(rows.filter(deleted_at__isnull=True).values_list("zywave_id", flat=True))
    if not ids:
        return [], None
    tombstone(rows.filter(zywave_id__in=ids))
    when = (
        rows.model._base_manager.filter(connection_id=connection_id, zywave_id=ids[0])
        .values_list("changed_at", flat=True)
        .first()
    )
    return ids, when


# Kept by a tombstone (or set by `tombstone` itself); every other column is cleared.
TOMBSTONE_KEEPS = {
    "connection_id",
    "zywave_id",
    "seen_in_run",
    "synced_at",
    "changed_at",
    "deleted_at",
    "raw",
}


def tombstone_all(connection_id: int) -> Deleted:
    """Every live record of the connection becomes a tombstone (the profile changed)."""
    return {
        resource.name: tombstone_returning(resource.live(connection_id), connection_id)
        for resource in REGISTRY.values()
    }


def purge_tombstones(model: type[Model], connection_id: int) -> int:
    cutoff = timezone.now() - timedelta(days=settings.ZYWAVE_TOMBSTONE_DAYS)
    deleted, _ = model._base_manager.filter(  # type: ignore[attr-defined]
        connection_id=connection_id, deleted_at__lt=cutoff
    ).delete()
    return deleted
