"""The pure-Python OData parser (sandbox/zywave/odata.py), without Django or a server."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from sandbox.zywave.odata import (
    And,
    Comparison,
    Function,
    Not,
    ODataError,
    Or,
    parse_filter,
    parse_orderby,
)

VALID = [
    ("name eq 'Acme'", Comparison("name", "eq", "Acme")),
    ("name eq 'O''Brien'", Comparison("name", "eq", "O'Brien")),
    ("id gt 5", Comparison("id", "gt", 5)),
    ("id le -2", Comparison("id", "le", -2)),
    ("score ge 2.5", Comparison("score", "ge", Decimal("2.5"))),
    ("premium eq 1250.50", Comparison("premium", "eq", Decimal("1250.50"))),
    ("premium lt 1e3", Comparison("premium", "lt", Decimal("1E+3"))),
    ("effectiveDate ge 2026-12-01", Comparison("effectiveDate", "ge", date(2026, 12, 1))),
    ("isArchived eq true", Comparison("isArchived", "eq", True)),
    ("isArchived ne FALSE", Comparison("isArchived", "ne", False)),
    ("numberOfEmployees eq null", Comparison("numberOfEmployees", "eq", None)),
    (
        "updatedDateTime gt 2024-07-01T12:30:00Z",
        Comparison("updatedDateTime", "gt", datetime(2024, 7, 1, 12, 30, tzinfo=UTC)),
    ),
    (
        "updatedDateTime lt 2024-07-01T12:30:00.250+02:00",
        Comparison("updatedDateTime", "lt", datetime(2024, 7, 1, 10, 30, 0, 250000, tzinfo=UTC)),
    ),
    ("5 lt id", Comparison("id", "gt", 5)),
    ("startswith(name,'blue')", Function("startswith", "name", "blue")),
    ("endswith( name , 'LLC' )", Function("endswith", "name", "LLC")),
    ("contains(name,'ridge')", Function("contains", "name", "ridge")),
    ("tolower(name) eq 'acme'", Comparison("name", "eq", "acme")),
    ("isArchived", Comparison("isArchived", "eq", True)),
    (
        "a eq 1 and b eq 2 or c eq 3",
        Or(And(Comparison("a", "eq", 1), Comparison("b", "eq", 2)), Comparison("c", "eq", 3)),
    ),
    (
        "a eq 1 and (b eq 2 or c eq 3)",
        And(Comparison("a", "eq", 1), Or(Comparison("b", "eq", 2), Comparison("c", "eq", 3))),
    ),
    ("not a eq 1", Not(Comparison("a", "eq", 1))),
    (
        "not (a eq 1 or b eq 2)",
        Not(Or(Comparison("a", "eq", 1), Comparison("b", "eq", 2))),
    ),
    ("NAME EQ 'x' AND id GT 1", And(Comparison("NAME", "eq", "x"), Comparison("id", "gt", 1))),
]


def strip_positions(node: Any) -> Any:
    """Positions are for error messages; compare the trees without them."""
    if isinstance(node, Comparison):
        return Comparison(node.field, node.op, node.value)
    if isinstance(node, Function):
        return Function(node.name, node.field, node.value)
    if isinstance(node, And | Or):
        return type(node)(strip_positions(node.left), strip_positions(node.right))
    if isinstance(node, Not):
        return Not(strip_positions(node.operand))
    return node


@pytest.mark.parametrize(("text", "tree"), VALID, ids=[text for text, _ in VALID])
def test_a_valid_filter_parses_to_the_expected_tree(text: str, tree: object) -> None:
    assert strip_positions(parse_filter(text)) == tree


MALFORMED = [
    ("", "Empty expression"),
    ("name eq", "Expected a property or a literal"),
    ("name 'x'", "Expected a comparison operator"),
    ("name eq 'x", "Unterminated string"),
    ("(name eq 'x'", "Expected ')'"),
    ("name eq 'x')", "Unexpected ')'"),
    ("name eq 'x' and", "Expected a property or a literal"),
    ("name eq 'x' or or id eq 1", "Expected a property or a literal"),
    ("startswith(name)", "Expected ','"),
    ("startswith('x', name)", "needs a property first"),
    ("frobnicate(name, 'x')", "Unknown function"),
    ("name eq 'a' # x", "Unexpected character"),
    ("name eq name", "one property and one literal"),
    ("updatedDateTime gt 2024-13-45T00:00:00Z", "Invalid date-time"),
    ("effectiveDate eq 2026-02-30", "Invalid date literal"),
]


@pytest.mark.parametrize(("text", "message"), MALFORMED, ids=[text for text, _ in MALFORMED])
def test_a_malformed_filter_raises_an_error_naming_the_position(text: str, message: str) -> None:
    with pytest.raises(ODataError, match=re.escape(message)) as raised:
        parse_filter(text)
    assert "position" in str(raised.value)


def test_a_number_with_a_fraction_keeps_the_digits_written() -> None:
    # A Decimal, never a float: 1250.50 stays 1250.50 (a float would be 1250.5), and 0.1 is
    # exactly one tenth.
    for text in ["1250.50", "0.1", "-0.00", "99999999999.99"]:
        node = parse_filter(f"premium eq {text}")
        assert isinstance(node, Comparison) and isinstance(node.value, Decimal)
        assert str(node.value) == text


def test_a_bare_date_is_a_date_and_a_date_time_is_not() -> None:
    day = parse_filter("d eq 2026-12-01")
    moment = parse_filter("d eq 2026-12-01T00:00:00Z")
    assert isinstance(day, Comparison) and type(day.value) is date
    assert isinstance(moment, Comparison) and type(moment.value) is datetime


def test_an_error_points_at_the_offending_token() -> None:
    with pytest.raises(ODataError) as raised:
        parse_filter("name eq 'x' and id zz 3")
    assert raised.value.position == len("name eq 'x' and id ")


def test_orderby_parses_several_keys_with_directions() -> None:
    assert parse_orderby("name, updatedDateTime desc ,id ASC") == [
        ("name", False),
        ("updatedDateTime", True),
        ("id", False),
    ]


@pytest.mark.parametrize("text", ["", "name sideways", "name asc extra", "name,,id", "1abc"])
def test_a_malformed_orderby_raises(text: str) -> None:
    with pytest.raises(ODataError):
        parse_orderby(text)


def test_the_parser_module_does_not_import_django() -> None:
    import ast
    from pathlib import Path

    import sandbox.zywave.odata as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert "django" not in imported
