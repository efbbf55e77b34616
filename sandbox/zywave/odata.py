"""A parser for the OData 4.01 subset Zywave's v2 list routes take (docs/zywave.md §4).

`$filter`: `eq ne gt ge lt le`, `and or not`, parentheses, `startswith(f,'x')`,
`endswith(f,'x')`, `contains(f,'x')`, `tolower(f)` / `toupper(f)` (no-ops: string comparison
is case-insensitive anyway), string literals in single quotes (`''` escapes a quote), numbers,
`true` / `false`, `null`, ISO-8601 date-times (bare, as OData writes them, or quoted) and bare
dates (`2026-12-01`). A number with a fraction or an exponent is a Decimal, never a float, so
that `premium eq 1250.10` compares the digits written.
`$orderby`: `field [asc|desc]`, comma separated.

Pure Python on purpose (no Django): it is unit-tested directly, and odata_q.py compiles its tree
into Django Q objects so that filtering runs in SQL. A malformed expression raises ODataError,
whose message says where.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}
FUNCTIONS = {"startswith", "endswith", "contains"}
PASSTHROUGH_FUNCTIONS = {"tolower", "toupper"}
MIRRORED = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}

Value = str | int | Decimal | bool | datetime | date | None


class ODataError(ValueError):
    def __init__(self, message: str, text: str = "", position: int | None = None) -> None:
        if position is not None:
            near = text[position : position + 20] or "end of input"
            message = f"{message} at position {position + 1} (near {near!r})"
        super().__init__(message)
        self.position = position


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str  # one of COMPARISONS
    value: Value
    position: int = 0


@dataclass(frozen=True)
class Function:
    name: str  # one of FUNCTIONS
    field: str
    value: Value
    position: int = 0


@dataclass(frozen=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    operand: Node


Node = Comparison | Function | And | Or | Not


@dataclass(frozen=True)
class Property:
    name: str


@dataclass(frozen=True)
class Literal:
    value: Value


@dataclass(frozen=True)
class Token:
    kind: str  # "name", "string", "number", "datetime", "date", "(", ")", ",", "end"
    text: str
    position: int
    value: Value = None


DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})?)?"
)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_./]*")


def parse_datetime(text: str) -> datetime | None:
    """An ISO-8601 date or date-time as an aware UTC datetime (naive means UTC)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_date(text: str) -> date | None:
    """An ISO-8601 calendar date (`2026-12-01`), or None."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char in "(),":
            tokens.append(Token(char, char, i))
            i += 1
        elif char == "'":
            start, i, chunks = i, i + 1, []
            while True:
                end = text.find("'", i)
                if end == -1:
                    raise ODataError("Unterminated string literal", text, start)
                chunks.append(text[i:end])
                if text.startswith("''", end):  # '' is an escaped quote
                    chunks.append("'")
                    i = end + 2
                else:
                    i = end + 1
                    break
            tokens.append(Token("string", text[start:i], start, "".join(chunks)))
        elif (match := DATETIME.match(text, i)) and re.match(r"\d{4}-", text[i:]):
            literal = match.group()
            if "T" in literal:
                value = parse_datetime(literal)
                if value is None:
                    raise ODataError("Invalid date-time literal", text, i)
                tokens.append(Token("datetime", literal, i, value))
            else:
                day = parse_date(literal)
                if day is None:
                    raise ODataError("Invalid date literal", text, i)
                tokens.append(Token("date", literal, i, day))
            i = match.end()
        elif match := NUMBER.match(text, i):
            literal = match.group()
            number = Decimal(literal) if any(c in literal for c in ".eE") else int(literal)
            tokens.append(Token("number", literal, i, number))
            i = match.end()
        elif match := NAME.match(text, i):
            tokens.append(Token("name", match.group(), i))
            i = match.end()
        else:
            raise ODataError(f"Unexpected character {char!r}", text, i)
    tokens.append(Token("end", "", len(text)))
    return tokens


class Parser:
    """Recursive descent: or < and < not < comparison / function / parentheses."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def is_keyword(self, word: str) -> bool:
        return self.current.kind == "name" and self.current.text.lower() == word

    def error(self, message: str, token: Token | None = None) -> ODataError:
        token = token or self.current
        return ODataError(message, self.text, token.position)

    def expect(self, kind: str, what: str) -> Token:
        if self.current.kind != kind:
            found = self.current.text or "end of input"
            raise self.error(f"Expected {what}, found {found!r}")
        return self.advance()

    def parse(self) -> Node:
        if self.current.kind == "end":
            raise self.error("Empty expression")
        node = self.parse_or()
        if self.current.kind != "end":
            raise self.error(f"Unexpected {self.current.text!r}")
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.is_keyword("or"):
            self.advance()
            node = Or(node, self.parse_and())
        return node

    def parse_and(self) -> Node:
        node = self.parse_not()
        while self.is_keyword("and"):
            self.advance()
            node = And(node, self.parse_not())
        return node

    def parse_not(self) -> Node:
        if self.is_keyword("not"):
            self.advance()
            return Not(self.parse_not())
        return self.parse_primary()

    def parse_primary(self) -> Node:
        if self.current.kind == "(":
            self.advance()
            node = self.parse_or()
            self.expect(")", "')'")
            return node
        if (
            self.current.kind == "name"
            and self.current.text.lower() in FUNCTIONS
            and self.tokens[self.index + 1].kind == "("
        ):
            return self.parse_function()
        return self.parse_comparison()

    def parse_function(self) -> Node:
        name_token = self.advance()
        self.expect("(", "'('")
        field = self.parse_operand()
        self.expect(",", "','")
        value = self.parse_operand()
        self.expect(")", "')'")
        if not isinstance(field, Property):
            raise self.error(f"{name_token.text}() needs a property first", name_token)
        if isinstance(value, Property):
            raise self.error(f"{name_token.text}() needs a literal second", name_token)
        return Function(name_token.text.lower(), field.name, value.value, name_token.position)

    def parse_comparison(self) -> Node:
        start = self.current
        left = self.parse_operand()
        if not (self.current.kind == "name" and self.current.text.lower() in COMPARISONS):
            if isinstance(left, Property) and self.current.kind in {"end", ")"}:
                # A bare boolean property, as OData allows: `isArchived` means `eq true`.
                return Comparison(left.name, "eq", True, start.position)
            found = self.current.text or "end of input"
            raise self.error(f"Expected a comparison operator (eq, ne, gt, ...), found {found!r}")
        op = self.advance().text.lower()
        right = self.parse_operand()
        if isinstance(left, Property) and isinstance(right, Literal):
            return Comparison(left.name, op, right.value, start.position)
        if isinstance(left, Literal) and isinstance(right, Property):
            return Comparison(right.name, MIRRORED[op], left.value, start.position)
        raise ODataError(
            "A comparison needs one property and one literal", self.text, start.position
        )

    def parse_operand(self) -> Property | Literal:
        token = self.current
        if token.kind in {"string", "number", "datetime", "date"}:
            self.advance()
            return Literal(token.value)
        if token.kind == "name":
            word = token.text.lower()
            if word in {"true", "false"}:
                self.advance()
                return Literal(word == "true")
            if word == "null":
                self.advance()
                return Literal(None)
            if word in COMPARISONS | {"and", "or", "not"}:
                raise self.error(f"Expected a property or a literal, found {token.text!r}")
            self.advance()
            if word in PASSTHROUGH_FUNCTIONS and self.current.kind == "(":
                self.advance()
                inner = self.parse_operand()
                self.expect(")", "')'")
                return inner
            if self.current.kind == "(":
                raise self.error(f"Unknown function {token.text!r}", token)
            return Property(token.text)
        found = token.text or "end of input"
        raise self.error(f"Expected a property or a literal, found {found!r}")


def parse_filter(text: str) -> Node:
    """Parse a `$filter` expression into a tree of Comparison / Function / And / Or / Not."""
    return Parser(text).parse()


def parse_orderby(text: str) -> list[tuple[str, bool]]:
    """Parse `$orderby` into (property, descending) pairs."""
    keys: list[tuple[str, bool]] = []
    position = 0
    for part in text.split(","):
        words = part.split()
        if not words or len(words) > 2 or not NAME.fullmatch(words[0]):
            raise ODataError("Expected 'property [asc|desc]'", text, position)
        direction = words[1].lower() if len(words) == 2 else "asc"
        if direction not in {"asc", "desc"}:
            raise ODataError(f"Expected asc or desc, found {words[1]!r}", text, position)
        keys.append((words[0], direction == "desc"))
        position += len(part) + 1
    return keys
