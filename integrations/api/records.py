"""Mirror rows as the API shows them, read and encoded without REST framework's serializers.

A page is one SELECT of plain values, with `raw` read as JSON text and passed through to
orjson as a fragment: a 500-record page costs one query and no per-field Python work
(`make bench` compares it with one SQL query encoded by orjson). `schema.py` describes the
same fields for the OpenAPI schema from `Resource.fields`, so the two cannot drift.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from django.db.models import F, Model, Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.utils.dateparse import parse_datetime

from ..models import Account, Contact
from .problems import Problem

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True)
class Field:
    name: str  # in the API
    column: str  # the model field
    kind: type  # str, int, bool or datetime (for the schema)
    nullable: bool = False
    description: str = ""


def _text(value: str, limit: int = 100) -> str:
    # PostgreSQL refuses NUL in a lookup: drop it from what callers send.
    return value.replace("\x00", "").strip()[:limit]


def _account_filters(rows: QuerySet[Any], params: Any) -> QuerySet[Any]:
    search = _text(params.get("search", ""))
    if search:
        rows = rows.filter(name__icontains=search)
    status = params.get("status", "")
    if status == "active":
        rows = rows.filter(is_active=True, is_archived=False)
    elif status == "archived":
        rows = rows.filter(is_archived=True)
    elif status not in ("", "all"):
        raise Problem(400, "invalid", "`status` must be active, archived or all.")
    classification = _text(params.get("classification", ""))
    if classification:
        rows = rows.filter(classification=classification)
    return rows


def _contact_filters(rows: QuerySet[Any], params: Any) -> QuerySet[Any]:
    search = _text(params.get("search", ""))
    if search:
        rows = rows.filter(
            Q(first_name__icontains=search)
            | Q(last_name__icontains=search)
            | Q(email__icontains=search)
        )
    account = _text(params.get("account", ""), 64)
    if account:
        rows = rows.filter(account_zywave_id=account)
    status = params.get("status", "")
    if status == "active":
        rows = rows.filter(is_active=True, is_archived=False)
    elif status == "archived":
        rows = rows.filter(is_archived=True)
    elif status not in ("", "all"):
        raise Problem(400, "invalid", "`status` must be active, archived or all.")
    return rows


COMMON_HEAD = [Field("id", "zywave_id", str, description="Zywave's id of the record.")]
COMMON_TAIL = [
    Field(
        "updated_at",
        "updated_at_zywave",
        datetime,
        nullable=True,
        description="When Zywave last updated the record.",
    ),
    Field(
        "changed_at",
        "changed_at",
        datetime,
        description="When the portal's copy last changed: the cursor of incremental pulls.",
    ),
]


@dataclass(frozen=True)
class Resource:
    name: str  # the endpoint and the mirror's name for it
    model: type[Model]
    fields: list[Field]
    filters: Callable[[QuerySet[Any], Any], QuerySet[Any]]
    filter_params: dict[str, str]  # query parameter -> description (for the schema)

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


_PK = "\x00pk"  # the row's key travels with the record to the cursor, never to the caller


ACCOUNTS = Resource(
    "accounts",
    Account,
    [
        *COMMON_HEAD,
        Field("name", "name", str),
        Field("classification", "classification", str),
        Field("lines_of_business", "lines_of_business", str),
        Field("client_size", "client_size", str),
        Field("number_of_employees", "number_of_employees", int, nullable=True),
        Field("is_active", "is_active", bool),
        Field("is_archived", "is_archived", bool),
        Field("city", "city", str),
        Field("state", "state", str),
        *COMMON_TAIL,
    ],
    _account_filters,
    {
        "search": "Part of the account's name (case-insensitive).",
        "status": "`active` (active and not archived), `archived`, or `all` (the default).",
        "classification": "Exactly this classification (Client, Prospect, ...).",
    },
)

CONTACTS = Resource(
    "contacts",
    Contact,
    [
        *COMMON_HEAD,
        Field("account_id", "account_zywave_id", str, description="Zywave's id of its account."),
        Field("first_name", "first_name", str),
        Field("last_name", "last_name", str),
        Field("email", "email", str),
        Field("title", "title", str),
        Field("work_phone", "work_phone", str),
        Field("mobile_phone", "mobile_phone", str),
        Field("is_primary", "is_primary", bool),
        Field("is_active", "is_active", bool),
        Field("is_archived", "is_archived", bool),
        *COMMON_TAIL,
    ],
    _contact_filters,
    {
        "search": "Part of the first name, last name or email (case-insensitive).",
        "account": "Only the contacts of this account (Zywave's account id).",
        "status": "`active` (active and not archived), `archived`, or `all` (the default).",
    },
)


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
