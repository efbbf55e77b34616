"""Compile the OData tree of odata.py into Django Q objects, so filtering runs in SQL.

Each list route describes its properties in a `Fields` map (zywave.resources): the API's
camelCase name, the model field behind it and its kind. String comparisons are
case-insensitive, as Zywave's are (docs/zywave.md §4): `iexact` / `istartswith` / ... and, for
ordering comparisons, `Lower()`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet
from django.db.models.functions import Lower
from django.db.models.lookups import GreaterThan, GreaterThanOrEqual, LessThan, LessThanOrEqual

from sandbox.zywave import odata

# API property name -> (model field, kind). The kinds a filter and an ordering take are
# FILTERABLE; "list" (linesOfBusiness, naicsCodes) is written in records but takes neither, as
# if the property were unknown.
Fields = dict[str, tuple[str, str]]
FILTERABLE = {"int", "str", "bool", "datetime", "date", "decimal"}
KINDS = FILTERABLE | {"list"}

RANGE_LOOKUPS = {"gt": "gt", "ge": "gte", "lt": "lt", "le": "lte"}
LOWERED_LOOKUPS = {
    "gt": GreaterThan,
    "ge": GreaterThanOrEqual,
    "lt": LessThan,
    "le": LessThanOrEqual,
}
FUNCTION_LOOKUPS = {"startswith": "istartswith", "endswith": "iendswith", "contains": "icontains"}


def resolve(fields: Fields, name: str, position: int) -> tuple[str, str]:
    # Property names are matched case-insensitively: clients differ in how they spell them.
    for api_name, target in fields.items():
        if api_name.lower() == name.lower() and target[1] in FILTERABLE:
            return target
    raise odata.ODataError(f"Unknown property {name!r} at position {position + 1}")


def coerce(value: odata.Value, kind: str, name: str, position: int) -> Any:
    where = f"for {name!r} at position {position + 1}"
    if value is None:
        return None
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    number = isinstance(value, int | Decimal) and not isinstance(value, bool)
    if kind == "int" and number:
        # A fraction goes in as a float, which Django's integer lookups round the right way
        # (`id ge 20.5` is `id >= 21`); an int or a Decimal would be cut to 20.
        return float(value) if isinstance(value, Decimal) else value
    if kind == "decimal" and number:
        return value
    if kind == "datetime":
        if isinstance(value, datetime):
            return value
        if isinstance(value, date):  # a bare date: its midnight, UTC
            return datetime.combine(value, time(), UTC)
        if isinstance(value, str) and (parsed := odata.parse_datetime(value)):
            return parsed
    if kind == "date":
        # A date-time is not a date (OData keeps Edm.Date and Edm.DateTimeOffset apart).
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        if isinstance(value, str) and (day := odata.parse_date(value)):
            return day
    shown = value.isoformat() if isinstance(value, date) else repr(value)
    if isinstance(value, Decimal):
        shown = str(value)
    raise odata.ODataError(f"Expected a {kind} value {where}, got {shown}")


def compile_filter(node: odata.Node, fields: Fields) -> Q:
    if isinstance(node, odata.And):
        return compile_filter(node.left, fields) & compile_filter(node.right, fields)
    if isinstance(node, odata.Or):
        return compile_filter(node.left, fields) | compile_filter(node.right, fields)
    if isinstance(node, odata.Not):
        return ~compile_filter(node.operand, fields)
    if isinstance(node, odata.Function):
        field, kind = resolve(fields, node.field, node.position)
        if kind != "str" or not isinstance(node.value, str):
            raise odata.ODataError(
                f"{node.name}() needs a text property and a text literal "
                f"at position {node.position + 1}"
            )
        return Q(**{f"{field}__{FUNCTION_LOOKUPS[node.name]}": node.value})
    field, kind = resolve(fields, node.field, node.position)
    value = coerce(node.value, kind, node.field, node.position)
    if value is None:
        if node.op not in {"eq", "ne"}:
            raise odata.ODataError(
                f"Only eq and ne compare with null, at position {node.position + 1}"
            )
        return Q(**{f"{field}__isnull": node.op == "eq"})
    if node.op in {"eq", "ne"}:
        lookup = "iexact" if kind == "str" else "exact"
        q = Q(**{f"{field}__{lookup}": value})
        return q if node.op == "eq" else ~q
    if kind == "bool":
        raise odata.ODataError(
            f"Booleans only compare with eq or ne, at position {node.position + 1}"
        )
    if kind == "str":
        return Q(LOWERED_LOOKUPS[node.op](Lower(field), value.lower()))
    return Q(**{f"{field}__{RANGE_LOOKUPS[node.op]}": value})


def order_by(keys: list[tuple[str, bool]], fields: Fields) -> list[str]:
    """Model ordering for `$orderby`, always ending with the primary key so that paging with
    $skip/$top visits every record exactly once even when the keys tie."""
    ordering: list[str] = []
    for name, descending in keys:
        field, _kind = resolve(fields, name, 0)
        ordering.append(f"-{field}" if descending else field)
    if not any(item.lstrip("-") == "id" for item in ordering):
        # Same direction as the last key, so that an (agency, key, id) index serves it.
        ordering.append("-id" if keys and keys[-1][1] else "id")
    return ordering


def apply(
    queryset: QuerySet[Any], fields: Fields, filter_text: str, orderby_text: str
) -> QuerySet[Any]:
    """Filter and order `queryset` by the request's `$filter` and `$orderby` (may be empty)."""
    if filter_text.strip():
        queryset = queryset.filter(compile_filter(odata.parse_filter(filter_text), fields))
    keys = odata.parse_orderby(orderby_text) if orderby_text.strip() else []
    return queryset.order_by(*order_by(keys, fields))
