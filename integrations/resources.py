"""What the portal mirrors: one declaration per Zywave resource, read by everything else.

A `Mirrored` entry names the resource's Zywave list route, its model (a `MirrorRecord`), the
row builder that turns a Zywave record into the model's columns, the scopes that allow it, its
label, and the resource it hangs under. Sync (`sync.py`) pages through them in order, the
mirror (`mirror.py`) writes and tombstones them, the API serves each at `/api/v1/<name>`, the
dashboard counts them, the admin links to them. Adding a resource is its model, its migration
and one entry here (with its row builder); nothing else names it.

Records arrive in camelCase or PascalCase (any key case is accepted: docs/zywave.md §4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from .client import ACCOUNTS as ACCOUNTS_PATH
from .client import CONTACTS as CONTACTS_PATH
from .client import POLICIES as POLICIES_PATH
from .client import MalformedResponse, lower_keys, safe_id
from .models import Account, Contact, MirrorRecord, Policy


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


class UnusableId(MalformedResponse):
    """A record whose id the mirror cannot key on: missing, or not a safe id (`client.SAFE_ID`:
    a `/`, a space, over 64 characters...). The record is skipped and counted, not the page."""


def _zywave_id(record: dict[str, Any], resource: str) -> str:
    value = record.get("id")
    if value is None or value == "":
        raise UnusableId(f"a {resource} record without an id")
    zywave_id = safe_id(value)
    if zywave_id is None:
        raise UnusableId(f"a {resource} record with an unusable id")
    return zywave_id


RowBuilder = Callable[[int, int | None, dict[str, Any], datetime], dict[str, Any]]


def row_builder(kind: str, columns: Callable[[dict[str, Any]], dict[str, Any]]) -> RowBuilder:
    """A resource's row builder: (connection id, run id, Zywave record, now) -> the mirror
    columns (field name -> value). `columns` reads the resource's own columns from the record
    with its keys lower-cased; Zywave's id, its update time, the raw record and the run's marks
    are the same for every resource."""

    def build(
        connection_id: int, run_id: int | None, record: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        r = lower_keys(record)
        return {
            "connection_id": connection_id,
            "zywave_id": _zywave_id(r, kind),
            **columns(r),
            "updated_at_zywave": _when(r, "updateddatetime"),
            "raw": record,
            "seen_in_run": run_id,
            "synced_at": now,
            "changed_at": now,
            "deleted_at": None,
        }

    build.__name__ = build.__qualname__ = f"{kind}_row"
    return build


def _account_id(r: dict[str, Any]) -> str:
    """Zywave's id of the account a record hangs under ("" when missing or unusable)."""
    return safe_id(r.get("accountid")) or ""


account_row = row_builder(
    "account",
    lambda r: {
        "name": _text(r, "name", 255),
        "classification": _text(r, "classification", 100),
        "lines_of_business": _text(r, "linesofbusiness", 500),
        "client_size": _text(r, "clientsize", 50),
        "number_of_employees": _int(r, "numberofemployees"),
        "is_active": _bool(r, "isactive", True),
        "is_archived": _bool(r, "isarchived", False),
        "city": _text(r, "city", 100),
        "state": _text(r, "state", 50),
    },
)

contact_row = row_builder(
    "contact",
    lambda r: {
        "account_zywave_id": _account_id(r),
        "first_name": _text(r, "firstname", 100),
        "last_name": _text(r, "lastname", 100),
        "email": _text(r, "emailaddress", 254),
        "title": _text(r, "title", 150),
        "work_phone": _text(r, "workphonenumber", 50),
        "mobile_phone": _text(r, "mobilephonenumber", 50),
        "is_primary": _bool(r, "isprimarycontact", False),
        "is_active": _bool(r, "isactive", True),
        "is_archived": _bool(r, "isarchived", False),
    },
)


def _date(record: dict[str, Any], key: str) -> date | None:
    """A date (`2026-12-01`), or the date of a date-time Zywave may send instead."""
    value = record.get(key)
    if not isinstance(value, str):
        return None
    try:
        return parse_date(value[:10])
    except ValueError:
        return None


def _decimal(record: dict[str, Any], key: str, places: int = 2, digits: int = 14) -> Decimal | None:
    """A money amount as a Decimal, never through a float: from a JSON number (read as its
    shortest text, exact for every amount a person types) or a numeric string."""
    value = record.get(key)
    if isinstance(value, bool) or value is None:
        return None
    try:
        amount = Decimal(str(value)) if isinstance(value, int | float | str) else None
        if amount is None or not amount.is_finite() or amount.adjusted() >= digits - places:
            return None  # not a number, or more whole digits than the column holds
        return amount.quantize(Decimal(1).scaleb(-places))
    except InvalidOperation:
        return None


policy_row = row_builder(
    "policy",
    lambda r: {
        "account_zywave_id": _account_id(r),
        "policy_number": _text(r, "policynumber", 100),
        "line_of_business": _text(r, "lineofbusiness", 100),
        "carrier_name": _text(r, "carriername", 200),
        "effective_date": _date(r, "effectivedate"),
        "expiration_date": _date(r, "expirationdate"),
        "premium": _decimal(r, "premium"),
        "is_active": _bool(r, "isactive", True),
        "is_archived": _bool(r, "isarchived", False),
    },
)


@dataclass(frozen=True)
class Mirrored:
    """One mirrored resource (see the module's docstring)."""

    name: str  # "accounts": the sync's resource, the API's endpoint, the event type's prefix
    label: str  # "Accounts", for people
    path: str  # Zywave's list route
    model: type[MirrorRecord]
    row: RowBuilder
    # Any one of these granted allows the resource; the first is the one a connect asks for.
    scopes: tuple[str, ...]
    parent: str | None = None  # the resource this one hangs under ("accounts")
    parent_column: str = ""  # its column holding the parent's Zywave id
    # The API: columns `search` looks in (case-insensitive), and exact filters (param -> column).
    search: tuple[str, ...] = ()
    filters: dict[str, str] = field(default_factory=dict)

    def live(self, connection_id: int) -> QuerySet[Any]:
        """The connection's live records (`objects`: no tombstone)."""
        return self.model._default_manager.filter(connection_id=connection_id)  # type: ignore[misc]

    def granted(self, scopes: set[str]) -> bool:
        return any(scope in scopes for scope in self.scopes)


REGISTRY: dict[str, Mirrored] = {}


def register(resource: Mirrored) -> Mirrored:
    """Add a resource (parents before their children: the sync walks them in this order)."""
    if resource.parent is not None and resource.parent not in REGISTRY:
        raise ValueError(f"{resource.name} hangs under {resource.parent}, not registered yet")
    REGISTRY[resource.name] = resource
    return resource


def unregister(name: str) -> None:
    """Remove a resource (tests that register one of their own)."""
    REGISTRY.pop(name, None)


def resources() -> list[Mirrored]:
    return list(REGISTRY.values())


def children_of(name: str) -> list[Mirrored]:
    return [resource for resource in REGISTRY.values() if resource.parent == name]


def not_granted(scopes: set[str]) -> list[Mirrored]:
    """The resources a connection with `scopes` cannot sync (a reconnect may grant them)."""
    return [resource for resource in REGISTRY.values() if not resource.granted(scopes)]


ACCOUNTS = register(
    Mirrored(
        "accounts",
        "Accounts",
        ACCOUNTS_PATH,
        Account,
        account_row,
        ("api.accounts:read", "api.accounts"),
        search=("name",),
        filters={"classification": "classification"},
    )
)
CONTACTS = register(
    Mirrored(
        "contacts",
        "Contacts",
        CONTACTS_PATH,
        Contact,
        contact_row,
        ("api.accounts:read", "api.accounts"),
        parent="accounts",
        parent_column="account_zywave_id",
        search=("first_name", "last_name", "email"),
        filters={"account": "account_zywave_id"},
    )
)
POLICIES = register(
    Mirrored(
        "policies",
        "Policies",
        POLICIES_PATH,
        Policy,
        policy_row,
        ("api.policies:read", "api.policies"),
        parent="accounts",
        parent_column="account_zywave_id",
        search=("policy_number", "carrier_name"),
        filters={
            "account": "account_zywave_id",
            "line_of_business": "line_of_business",
            "carrier": "carrier_name",
        },
    )
)
