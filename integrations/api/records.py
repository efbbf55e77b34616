"""Mirror rows as the API shows them, read and encoded without REST framework's serializers.

A page is one SELECT of plain values, with `raw` read as JSON text and passed through to
orjson as a fragment: a 500-record page costs one query and no per-field Python work
(`make bench` compares it with one SQL query encoded by orjson). `schema.py` describes the
same fields for the OpenAPI schema from `Resource.fields`, so the two cannot drift. Both come
by rule from the registry (`integrations/resources.py`) and each model's fields: a new
mirrored resource is served without a line here.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
from django.db import connection as db
from django.db import models
from django.db.models import F, Model, Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.utils.dateparse import parse_datetime

from ..mirror import exact_decimal
from ..resources import REGISTRY, Mirrored
from .problems import Problem

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True)
class Field:
    name: str  # in the API
    column: str  # the model field
    kind: type  # str, int, bool, datetime, date or Decimal (for the schema)
    nullable: bool = False
    description: str = ""


# Columns every mirror model has that the API does not show as such (`id` is Zywave's id).
HIDDEN = {"id", "connection", "zywave_id", "raw", "seen_in_run", "synced_at", "deleted_at"}
KINDS: list[tuple[type[models.Field[Any, Any]], type]] = [
    (models.BooleanField, bool),
    (models.DecimalField, Decimal),
    (models.DateTimeField, datetime),  # before DateField, its parent class
    (models.DateField, date),
    (models.IntegerField, int),
    (models.CharField, str),
]
DESCRIPTIONS = {
    "id": "Zywave's id of the record.",
    "updated_at": "When Zywave last updated the record.",
    "changed_at": "When the portal's copy last changed: the cursor of incremental pulls.",
}


def api_name(column: str) -> str:
    """The API's name of a model field: `zywave_id` is `id`, `updated_at_zywave` is
    `updated_at`, and `account_zywave_id` is `account_id` (Zywave's id of the account)."""
    if column == "zywave_id":
        return "id"
    if column == "updated_at_zywave":
        return "updated_at"
    return column.replace("_zywave_id", "_id")


def fields_of(model: type[Model]) -> list[Field]:
    """The API fields of a mirror model, by rule: its id, every column of its own in model
    order, then `updated_at` and `changed_at`."""
    own = [
        f
        for f in model._meta.concrete_fields
        if f.name not in HIDDEN | {"updated_at_zywave", "changed_at"}
    ]
    ordered = [model._meta.get_field("zywave_id"), *own]
    ordered += [model._meta.get_field("updated_at_zywave"), model._meta.get_field("changed_at")]
    result = []
    for f in ordered:
        kind = next((k for base, k in KINDS if isinstance(f, base)), None)
        if kind is None:
            raise TypeError(
                f"{model.__name__}.{f.name}: the API serves no {type(f).__name__} "
                "(add its kind to records.KINDS and schema._KINDS)"
            )
        name = api_name(f.name)
        nullable = bool(getattr(f, "null", False))
        result.append(Field(name, f.name, kind, nullable, DESCRIPTIONS.get(name, "")))
    return result


def _text(value: str, limit: int = 100) -> str:
    # PostgreSQL refuses NUL in a lookup: drop it from what callers send.
    return value.replace("\x00", "").strip()[:limit]


@dataclass(frozen=True)
class Resource:
    """A mirrored resource as the API serves it (`/api/v1/<name>`), from its registry entry."""

    mirrored: Mirrored
    fields: list[Field]

    @property
    def name(self) -> str:
        return self.mirrored.name

    @property
    def model(self) -> type[Model]:
        return self.mirrored.model

    @property
    def filter_params(self) -> dict[str, str]:
        """Query parameter -> description (for the schema)."""
        params = {}
        if self.mirrored.search:
            names = ", ".join(api_name(column) for column in self.mirrored.search)
            params["search"] = f"Part of {names} (case-insensitive)."
        for param, column in self.mirrored.filters.items():
            params[param] = f"Exactly this `{api_name(column)}`."
        if self.has_status:
            params["status"] = (
                "`active` (active and not archived), `archived`, or `all` (the default)."
            )
        return params

    @property
    def has_status(self) -> bool:
        names = {f.name for f in self.model._meta.concrete_fields}
        return {"is_active", "is_archived"} <= names

    def filters(self, rows: QuerySet[Any], params: Any) -> QuerySet[Any]:
        search = _text(params.get("search", ""))
        if search and self.mirrored.search:
            match = Q()
            for column in self.mirrored.search:
                match |= Q(**{f"{column}__icontains": search})
            rows = rows.filter(match)
        for param, column in self.mirrored.filters.items():
            value = _text(params.get(param, ""), 200)
            if value:
                rows = rows.filter(**{column: value})
        status = params.get("status", "")
        if status == "active" and self.has_status:
            rows = rows.filter(is_active=True, is_archived=False)
        elif status == "archived" and self.has_status:
            rows = rows.filter(is_archived=True)
        elif status not in ("", "all") or (status and not self.has_status):
            raise Problem(400, "invalid", "`status` must be active, archived or all.")
        return rows

    def rows(self, connection_id: int) -> QuerySet[Any]:
        return self.model.all_rows.filter(connection_id=connection_id)  # type: ignore[attr-defined]

    @property
    def columns(self) -> list[str]:
        return [field.column for field in self.fields]

    def render(self, rows: QuerySet[Any]) -> list[dict[str, Any]]:
        """The records (and tombstones) of `rows`, in its order: one query."""
        values = rows.annotate(raw_text=Cast(F("raw"), TextField())).values_list(
            "pk", "deleted_at", *self.columns, "raw_text"
        )
        names = [field.name for field in self.fields]
        changed = names.index("changed_at")
        records = []
        for pk, deleted_at, *cells, raw_text in values:
            if deleted_at is not None:
                record = {"id": cells[0], "deleted": True, "changed_at": cells[changed]}
            else:
                record = dict(zip(names, cells, strict=True))
                record["deleted"] = False
                record["raw"] = orjson.Fragment(raw_text or "{}")
            record[_PK] = pk
            records.append(record)
        return records

    def page(self, rows: QuerySet[Any], size: int) -> Page:
        """One page of `rows` (ordered by changed_at, pk): its records as JSON text, and the
        key of its last row when more follow. On PostgreSQL the page is built by the database
        in the one query (json_build_object per row, json_agg over the page), so Python only
        passes text on; the LIMIT is applied before any row is built, whatever the planner's
        statistics. Elsewhere (SQLite) `render` builds it in Python."""
        ordered = rows.order_by("changed_at", "pk")[: size + 1]
        if db.vendor != "postgresql":
            records = self.render(ordered)
            more = len(records) > size
            records = records[:size]
            keys = [pk_of(record) for record in records]
            last = (records[-1]["changed_at"], keys[-1]) if more else None
            return Page(orjson.dumps(records, option=orjson.OPT_UTC_Z, default=exact_decimal), last)
        inner, params = ordered.values(
            "id", "deleted_at", *self.columns, "raw"
        ).query.sql_with_params()
        quote = db.ops.quote_name
        columns = {field.name: f"p.{quote(field.column)}" for field in self.fields}
        live = ", ".join(
            f"'{field.name}', "
            + (utc_text(columns[field.name]) if field.kind is datetime else columns[field.name])
            for field in self.fields
        )
        sql = (
            "SELECT coalesce(json_agg(CASE WHEN p.deleted_at IS NULL "  # noqa: S608
            f"THEN json_build_object({live}, 'deleted', false, 'raw', p.raw) "
            "ELSE json_build_object('id', p.zywave_id, 'deleted', true, "
            f"'changed_at', {utc_text('p.changed_at')}) END "
            "ORDER BY p.rn) FILTER (WHERE p.rn <= %s), '[]')::text, count(*), "
            "(array_agg(p.changed_at ORDER BY p.rn DESC) FILTER (WHERE p.rn <= %s))[1], "
            "(array_agg(p.id ORDER BY p.rn DESC) FILTER (WHERE p.rn <= %s))[1] "
            "FROM (SELECT q.*, row_number() OVER (ORDER BY q.changed_at, q.id) AS rn "
            f"FROM ({inner}) AS q) AS p"
        )
        with db.cursor() as cursor:
            cursor.execute(sql, [size, size, size, *params])
            text, count, changed_at, pk = cursor.fetchone()
        return Page(text.encode(), (changed_at, pk) if count > size else None)


def utc_text(column: str) -> str:
    """SQL for a timestamp as the API writes every time (orjson's OPT_UTC_Z): UTC, `Z`,
    microseconds only when there are any."""
    return (
        f"regexp_replace(to_char({column} AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '\\.000000Z$', 'Z')"
    )


class Page(NamedTuple):
    records: bytes  # a JSON array
    last: tuple[datetime, int] | None  # the last record's (changed_at, pk) when more follow


_PK = "\x00pk"  # the row's key travels with the record to the cursor, never to the caller


def api_resources() -> dict[str, Resource]:
    """Every registered resource, as the API serves it (read when the URLs load)."""
    return {m.name: Resource(m, fields_of(m.model)) for m in REGISTRY.values()}


API = api_resources()
ACCOUNTS = API["accounts"]


# --- Cursors ----------------------------------------------------------------------------------


def encode_cursor(changed_at: datetime, pk: int) -> str:
    raw = orjson.dumps([changed_at.isoformat(), pk])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        when, pk = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        changed_at = parse_datetime(when)
        if changed_at is None or changed_at.tzinfo is None or type(pk) is not int:
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError, UnicodeError) as exc:
        raise Problem(
            400, "invalid_cursor", "`cursor` is not one this API gave: use the `next` URL as is."
        ) from exc
    return changed_at, pk


def parse_time(value: str, name: str) -> datetime:
    """An RFC 3339 time with its offset (`2026-12-01T10:00:00Z`)."""
    try:
        parsed = parse_datetime(value.strip().replace(" ", "+"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise Problem(
            400,
            "invalid",
            f"`{name}` must be an RFC 3339 time with an offset, like 2026-12-01T10:00:00Z.",
        )
    return parsed


def page_size(params: Any) -> int:
    value = params.get("page_size")
    if value is None or value == "":
        return DEFAULT_PAGE_SIZE
    try:
        size = int(value)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise Problem(
            400, "invalid", f"`page_size` must be a whole number from 1 to {MAX_PAGE_SIZE}."
        )
    return size


def pk_of(record: dict[str, Any]) -> int:
    return int(record.pop(_PK))
