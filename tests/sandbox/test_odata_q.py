"""OData kinds compiled into Q objects (sandbox/zywave/odata_q.py), without a database: what each
kind of property accepts as a literal, and what it becomes in the lookup."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.db.models import Q

from sandbox.zywave.odata import ODataError, parse_filter
from sandbox.zywave.odata_q import compile_filter, order_by

FIELDS = {
    "id": ("id", "int"),
    "name": ("name", "str"),
    "isActive": ("is_active", "bool"),
    "updatedDateTime": ("updated", "datetime"),
    "effectiveDate": ("effective_date", "date"),
    "premium": ("premium", "decimal"),
    "linesOfBusiness": ("lines_of_business", "list"),
}


def compiled(text: str) -> Q:
    return compile_filter(parse_filter(text), FIELDS)


@pytest.mark.parametrize(
    ("text", "lookup"),
    [
        ("effectiveDate ge 2026-12-01", Q(effective_date__gte=date(2026, 12, 1))),
        ("effectiveDate lt '2026-12-01'", Q(effective_date__lt=date(2026, 12, 1))),
        ("effectiveDate eq null", Q(effective_date__isnull=True)),
        ("premium eq 1250.50", Q(premium__exact=Decimal("1250.50"))),
        ("premium gt 1000", Q(premium__gt=1000)),
        ("premium le -0.01", Q(premium__lte=Decimal("-0.01"))),
        # As before the date kind: a bare date against a date-time is its midnight, UTC.
        ("updatedDateTime gt 2024-07-01", Q(updated__gt=datetime(2024, 7, 1, tzinfo=UTC))),
        # As before: a fraction against an integer is a float, which Django rounds the right way.
        ("id ge 20.5", Q(id__gte=20.5)),
    ],
)
def test_each_kind_compiles_its_literals(text: str, lookup: Q) -> None:
    assert compiled(text) == lookup


def test_a_decimal_literal_reaches_the_lookup_with_its_digits() -> None:
    child = compiled("premium eq 1250.50").children[0]
    assert isinstance(child, tuple) and child[0] == "premium__exact"
    assert isinstance(child[1], Decimal) and str(child[1]) == "1250.50"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("effectiveDate gt 2026-12-01T00:00:00Z", "Expected a date value"),
        ("effectiveDate gt 'soon'", "Expected a date value"),
        ("effectiveDate eq 5", "Expected a date value"),
        ("premium eq '1250.50'", "Expected a decimal value"),
        ("premium eq true", "Expected a decimal value"),
        ("startswith(premium,'1')", "needs a text property"),
        # A list is written in records but is no filter property, as before it had a kind.
        ("linesOfBusiness eq 'Cyber'", "Unknown property 'linesOfBusiness'"),
    ],
)
def test_a_literal_of_the_wrong_kind_is_refused_saying_where(text: str, message: str) -> None:
    with pytest.raises(ODataError, match=message) as raised:
        compiled(text)
    assert "position" in str(raised.value)


def test_dates_and_decimals_order_and_a_list_does_not() -> None:
    assert order_by([("effectiveDate", False), ("premium", True)], FIELDS) == [
        "effective_date",
        "-premium",
        "-id",
    ]
    with pytest.raises(ODataError, match="Unknown property"):
        order_by([("linesOfBusiness", False)], FIELDS)
