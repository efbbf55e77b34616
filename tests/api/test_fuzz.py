"""Whatever a caller puts in the query or the path, the API answers 200 or a 400/404 problem,
never a 500: hypothesis throws the list endpoints' parameters (and names they do not have) and
path ids at the real views and the real database, with NUL bytes, huge values, unicode, and
bytes that are not UTF-8 at all."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integrations import mirror
from tests.api.callers import System, system_of
from tests.conftest import connection

pytestmark = pytest.mark.django_db

LISTS = ["/api/v1/accounts", "/api/v1/contacts"]
NAMES = ["page_size", "cursor", "updated_since", "search", "status", "classification", "account"]
FUZZ = settings(
    max_examples=150,
    deadline=None,
    # The same examples on every run, none remembered between runs: a suite that fails only
    # sometimes is worse than one that explores less (drop both to explore locally).
    derandomize=True,
    database=None,
    # The fixtures build one mirror that every example reads; nothing an example does writes.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text as a query can carry it: any code point but lone surrogates (not encodable as UTF-8).
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
huge = st.sampled_from(["9" * 5000, "1" + "0" * 30, "-" + "9" * 25, "x" * 20000, "1e309"])
number = st.integers(min_value=-(2**70), max_value=2**70).map(str)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# Cursors that decode, almost: base64 of JSON of any shape, of a time and a key, or of junk.
cursor = st.one_of(
    st.recursive(st.none() | st.booleans() | st.integers() | text, st.lists, max_leaves=4).map(
        lambda value: b64(json.dumps(value).encode())
    ),
    st.tuples(st.datetimes(timezones=st.timezones()), st.integers(-(2**70), 2**70)).map(
        lambda pair: b64(json.dumps([pair[0].isoformat(), pair[1]]).encode())
    ),
    st.binary(max_size=40).map(b64),
)
# Times that parse, almost: every offset, every year, seconds and fractions or not.
moment = st.one_of(
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S") + "+99:99"),
    st.from_regex(
        r"\A\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:?\d{2})?\Z"
    ),
)
value = st.one_of(
    text, huge, number, cursor, moment, st.sampled_from(["active", "archived", "all"])
)
name = st.one_of(st.sampled_from(NAMES), text)
# Raw query bytes: what a client may send that no UTF-8 string gives (%FF, a bare %).
raw = st.sampled_from(["%FF", "%C3%28", "%00", "%", "%zz", "&&", "==", ";", "+", "%E2%82"])


@st.composite
def queries(draw: Any) -> str:
    pairs = draw(st.lists(st.tuples(name, value), max_size=6))
    parts = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs]
    parts += draw(st.lists(st.tuples(name, raw).map(lambda p: f"{quote(p[0])}={p[1]}"), max_size=2))
    return "&".join(draw(st.permutations(parts)))


def assert_answered(response: Any, allowed: set[int]) -> None:
    assert response.status_code in allowed, (response.status_code, response.content[:300])
    if response.status_code == 200:
        assert response["Content-Type"] == "application/json"
        json.loads(response.content)
    else:
        assert response["Content-Type"] == "application/problem+json"
        body = json.loads(response.content)
        assert body["status"] == response.status_code and body["detail"]


@pytest.fixture
def system(staff: User, settings: Any) -> System:
    """Dana's key over a small mirror: accounts, contacts and tombstones, so that filters,
    cursors and incremental pulls all reach the database."""
    settings.API_RATE_LIMIT = 10**6
    conn = connection(staff)
    accounts = [
        {"id": f"A{n}", "name": f"Ünïcode Account {n} ☃", "classification": "Client"}
        for n in range(6)
    ]
    contacts = [{"id": f"C{n}", "accountId": "A0", "firstName": f"Zoë {n}"} for n in range(4)]
    mirror.upsert("accounts", conn.pk, 1, accounts)
    mirror.upsert("contacts", conn.pk, 1, contacts)
    mirror.upsert("accounts", conn.pk, 2, accounts[:4])
    mirror.upsert("contacts", conn.pk, 2, contacts[:3])
    mirror.remove_unseen(conn.pk, 2)
    return system_of(staff, "read")


@FUZZ
@given(endpoint=st.sampled_from(LISTS), query=queries())
def test_list_parameters_never_crash(system: System, endpoint: str, query: str) -> None:
    response = system.get(f"{endpoint}?{query}")
    assert_answered(response, {200, 400})
    if response.status_code == 200:
        page = json.loads(response.content)
        assert isinstance(page["results"], list) and (page["next"] is None or page["next"])


# Path ids: anything in a segment, percent-encoded or raw, numbers past any column's range.
segment = st.one_of(
    text.map(lambda t: quote(t, safe="")),
    text.map(lambda t: quote(t, safe="/.%")),
    number,
    huge,
    raw,
    st.sampled_from(["A0", "A5", "..", ".", "%2e%2e", "A0/", "A0%2F", "A0%00", "%20A0"]),
)


@FUZZ
@given(template=st.sampled_from(["/api/v1/accounts/{}", "/api/v1/syncs/{}"]), part=segment)
def test_path_ids_never_crash(system: System, template: str, part: str) -> None:
    response = system.get(template.format(part))
    assert_answered(response, {200, 400, 404})
