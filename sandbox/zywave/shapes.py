"""Answers in recorded shapes: the sandbox calibrated from what a real Zywave sent.

`SANDBOX_SHAPES_FILE` names a shapes file, as the portal's `manage.py zywave_doctor --record`
writes it (or as written by hand: tests/shapes/). For each route it holds the status, the
envelope, the body's shape (key names in their order and case, JSON types, nesting) and the
response's header names, never a value. With it, the profile routes and the list and detail
routes of the resources it names answer in that shape, with the sandbox's own data:

- a key of the shape is filled from the record's field of the same name in any case
  (`Id`, `id` and `ID` all take the record's `id`), converted to the shape's JSON type;
- a key the record does not have is filled with a synthetic value of its type (an object
  key from the record's fields again, so `address.city` takes the record's `city`);
- a field of the record that the shape lacks is left out (a missing optional field);
- an array recorded empty is written empty (nothing is known of its items);
- in a list envelope, the key holding an array of records holds the page, `totalCount` or
  `@odata.count` the total and `hasMoreResults` whether more follow;
- header names the answer lacks are added with synthetic values.

Errors, paging, `$filter`, scopes and profiles work as ever. Without the file, nothing here
runs and every answer is byte for byte what it always was.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse

# Headers the server or WSGI own: never added from a file.
NOT_ADDED = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-type",
    "date",
    "server",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
}
TOTALS = ("totalcount", "@odata.count")
MORE = "hasmoreresults"


@cache
def loaded() -> dict[str, Any] | None:
    """The shapes file's routes, or None when SANDBOX_SHAPES_FILE is unset."""
    name = str(getattr(settings, "SANDBOX_SHAPES_FILE", ""))  # a project without it: none
    if not name:
        return None
    try:
        document = json.loads(Path(name).read_text())
        routes = document["routes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImproperlyConfigured(
            f"SANDBOX_SHAPES_FILE {name}: not a shapes file ({exc})"
        ) from None
    if not isinstance(routes, dict):
        raise ImproperlyConfigured(f"SANDBOX_SHAPES_FILE {name}: `routes` is not an object")
    return routes


def entry(route: str) -> dict[str, Any] | None:
    routes = loaded()
    if routes is None:
        return None
    found = routes.get(route)
    return found if isinstance(found, dict) and isinstance(found.get("body"), dict) else None


def list_answer(
    route: str, records: list[dict[str, Any]], total: int, has_more: bool
) -> HttpResponse | None:
    """A page of `records` in the route's recorded shape; None without one."""
    found = entry(route)
    if found is None:
        return None
    rows = [lowered(record) for record in records]
    return answer(found, fill_list(found["body"], rows, total, has_more))


def one_answer(route: str, record: dict[str, Any]) -> HttpResponse | None:
    """One record in the route's recorded shape (a list route's: the shape of its items)."""
    found = entry(route)
    if found is None:
        return None
    shape = found["body"]
    if found.get("envelope") in ("items", "value", "array"):
        shape = item_shape(shape) or {"type": "object", "keys": {}}
    return answer(found, fill(shape, lowered(record)))


def answer(found: dict[str, Any], body: Any) -> HttpResponse:
    response = HttpResponse(json.dumps(body), content_type="application/json")
    for name in found.get("headers") or []:
        name = str(name).lower()
        if name not in NOT_ADDED and not response.has_header(name):
            response[name] = synthetic_header(name)
    return response


def synthetic_header(name: str) -> str:
    if "reset" in name or "retry" in name:
        return "60"
    if "limit" in name or "remaining" in name or "rate" in name:
        return "1000"
    return "synthetic"


def lowered(record: dict[str, Any]) -> dict[str, Any]:
    return {str(key).lower(): value for key, value in record.items()}


def item_shape(shape: dict[str, Any]) -> dict[str, Any] | None:
    """The shape of a list's records: an array's items, or those of an envelope's array."""
    if shape.get("type") == "array":
        items = shape.get("items")
        return items if isinstance(items, dict) else None
    for sub in (shape.get("keys") or {}).values():
        if sub.get("type") == "array" and sub.get("items", {}).get("type") == "object":
            return dict(sub["items"])
    return None


def fill_list(shape: dict[str, Any], rows: list[dict[str, Any]], total: int, has_more: bool) -> Any:
    if shape.get("type") == "array":
        items = shape.get("items")
        return [fill(items, row) if items else row for row in rows]
    keys: dict[str, Any] = shape.get("keys") or {}
    arrays = [key for key, sub in keys.items() if sub.get("type") == "array"]
    of_records = [key for key in arrays if keys[key].get("items", {}).get("type") == "object"]
    page = next(iter(of_records or arrays), None)
    body: dict[str, Any] = {}
    for key, sub in keys.items():
        if key == page:
            items = sub.get("items")
            body[key] = [fill(items, row) if items else row for row in rows]
        elif key.lower() in TOTALS:
            body[key] = convert(total, sub)
        elif key.lower() == MORE:
            body[key] = convert(has_more, sub)
        else:
            body[key] = synthetic(sub)
    return body


def fill(shape: dict[str, Any], row: dict[str, Any]) -> Any:
    """A record of `shape` from `row` (keys lower-cased)."""
    if shape.get("type") != "object":
        return synthetic(shape)
    record = {}
    for key, sub in (shape.get("keys") or {}).items():
        name = key.lower()
        if name in row:
            record[key] = convert(row[name], sub)
        elif sub.get("type") == "object":
            record[key] = fill(sub, row)
        else:
            record[key] = synthetic(sub)
    return record


def convert(value: Any, shape: dict[str, Any]) -> Any:
    """`value` as the shape's JSON type (a synthetic one when it cannot be)."""
    kind = shape.get("type")
    if kind == "null":
        return None
    if value is None:
        return synthetic(shape)
    if kind == "string":
        if isinstance(value, list):
            return ", ".join(str(item) for item in value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if kind == "integer":
        try:
            return int(value)
        except (TypeError, ValueError):
            return synthetic(shape)
    if kind == "number":
        try:
            return float(value)
        except (TypeError, ValueError):
            return synthetic(shape)
    if kind == "boolean":
        if isinstance(value, str):
            return value.lower() == "true"
        return bool(value)
    if kind == "array":
        items = shape.get("items")
        if not items:
            return []  # recorded empty: nothing is known of its items, so none are written
        values = value if isinstance(value, list) else [value]
        return [convert(item, items) for item in values]
    if kind == "object":
        return fill(shape, lowered(value) if isinstance(value, dict) else {})
    return value


def synthetic(shape: dict[str, Any]) -> Any:
    kind = shape.get("type")
    if kind == "string":
        now = datetime.now(UTC)
        if shape.get("format") == "date-time":
            return now.replace(microsecond=0).isoformat().replace("+00:00", "Z")
        if shape.get("format") == "date":
            return now.date().isoformat()
        return "synthetic"
    if kind == "integer":
        return 0
    if kind == "number":
        return 0.0
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    if kind == "object":
        return {key: synthetic(sub) for key, sub in (shape.get("keys") or {}).items()}
    return None
