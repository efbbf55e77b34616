"""Zywave's answers, fuzzed: the parsers either read them or raise a named `ZywaveError`, and a
sync fed malformed pages by the sandbox ends FAILED or PARTIAL with a named error, never with an
exception escaping the worker."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from integrations.client import (
    MalformedResponse,
    ZywaveClient,
    ZywaveError,
    lower_keys,
    parse_envelope,
)
from integrations.mirror import account_row, contact_row
from integrations.models import Account, Connection, Contact, SyncRun
from integrations.resources import resources
from integrations.sync import sync_now
from tests.conftest import Person, connection
from tests.integrations.flows import inject_fault
from tests.sandboxserver import Sandbox

FUZZ = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What the client hands on (`ZywaveClient._read` refuses NaN and infinities and drops NUL; the
# boundary is fuzzed on its own below).
TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=30)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    st.sampled_from(["true", "false", "2024-01-01T00:00:00Z", "2024-13-45T99:99:99", "1e999"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
FIELDS = [
    "id",
    "Id",
    "ID",
    "name",
    "classification",
    "linesOfBusiness",
    "clientSize",
    "numberOfEmployees",
    "isActive",
    "isArchived",
    "city",
    "state",
    "updatedDateTime",
    "accountId",
    "firstName",
    "lastName",
    "emailAddress",
    "title",
    "workPhoneNumber",
    "mobilePhoneNumber",
    "isPrimaryContact",
]
RECORDS = st.one_of(
    # Mostly records with a usable id, so that the rest of each record is read too.
    st.fixed_dictionaries(
        {"id": st.integers() | TEXT.filter(bool) | st.text("x", min_size=65, max_size=80)},
        optional=dict.fromkeys(FIELDS[3:], JSON),
    ),
    st.dictionaries(st.sampled_from(FIELDS) | TEXT, JSON, max_size=12),
)
ENVELOPES = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {},
        optional={
            "items": JSON | st.lists(RECORDS, max_size=3),
            "value": JSON,
            "totalCount": JSON,
            "TotalCount": JSON,
            "@odata.count": JSON,
            "hasMoreResults": JSON,
        },
    ),
)


def both_branches_taken(seen: Counter[str]) -> None:
    """The examples reached both the named error and the success branch: a fuzz test whose
    every example ended in the error would check nothing of what is read."""
    assert seen["error"] > 0 and seen["read"] > 0, dict(seen)


def test_parse_envelope_reads_a_list_or_raises_a_named_error() -> None:
    seen: Counter[str] = Counter()

    @given(body=ENVELOPES)
    @FUZZ
    def check(body: Any) -> None:
        try:
            items, total, more = parse_envelope(body, "/accounts/v2.0/account")
        except MalformedResponse:
            seen["error"] += 1
            return
        assert isinstance(items, list)
        assert total is None or (isinstance(total, int) and not isinstance(total, bool))
        assert more is None or isinstance(more, bool)
        seen["read"] += 1

    check()
    both_branches_taken(seen)


def test_lower_keys_reads_an_object_or_raises_a_named_error() -> None:
    seen: Counter[str] = Counter()

    @given(record=JSON)
    @FUZZ
    def check(record: Any) -> None:
        try:
            keys = lower_keys(record)
        except MalformedResponse:
            seen["error"] += 1
            return
        assert all(isinstance(key, str) and key == key.lower() for key in keys)
        seen["read"] += 1

    check()
    both_branches_taken(seen)


def answer(content: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code, response._content = 200, content
    return response


def reader() -> ZywaveClient:
    return ZywaveClient(connection=None, token=str, refresh=lambda c, t: t)  # type: ignore[arg-type]


# Bytes as Zywave might send them: JSON texts, JSON with the literals Python's reader accepts
# (NaN, Infinity, 1e999), NUL escapes, and any bytes at all.
ANSWERS = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.lists(
        st.sampled_from(
            ['{"items": [', "]", "}", "{", '"id": ', "1e999", "-1e400", "NaN", "Infinity", "1"]
            + ['"a\\u0000b"', '"\\u0000": 1', ", ", '"x": ', "[", "null", '"\\ud800"', '"']
        ),
        max_size=12,
    ).map(lambda parts: "".join(parts).encode()),
    st.binary(max_size=40),
)


def no_nan_or_nul(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return "\x00" not in value and value.encode("utf-8", "strict") is not None
    if isinstance(value, list):
        return all(map(no_nan_or_nul, value))
    if isinstance(value, dict):
        return all(no_nan_or_nul(k) and no_nan_or_nul(v) for k, v in value.items())
    return True


def test_the_client_reads_json_a_database_can_store_or_raises_a_named_error() -> None:
    seen: Counter[str] = Counter()

    @given(content=ANSWERS)
    @FUZZ
    def check(content: bytes) -> None:
        try:
            body = reader()._read(answer(content), "/accounts/v2.0/account")
        except MalformedResponse:
            seen["error"] += 1
            return
        assert no_nan_or_nul(body)
        json.dumps(body, allow_nan=False)
        seen["read"] += 1

    check()
    both_branches_taken(seen)


TEXT_LIMITS = {
    "name": 255,
    "classification": 100,
    "lines_of_business": 500,
    "client_size": 50,
    "city": 100,
    "state": 50,
    "account_zywave_id": 64,
    "first_name": 100,
    "last_name": 100,
    "email": 254,
    "title": 150,
    "work_phone": 50,
    "mobile_phone": 50,
    "zywave_id": 64,
}


def check_row(row: dict[str, Any]) -> None:
    """The row fits its columns: bounded text, int32 or None, real booleans, aware datetimes,
    and a `raw` that PostgreSQL's jsonb accepts."""
    for name, limit in TEXT_LIMITS.items():
        if name in row:
            assert isinstance(row[name], str) and len(row[name]) <= limit, name
            assert "\x00" not in row[name], name
    if "number_of_employees" in row:
        value = row["number_of_employees"]
        assert value is None or (type(value) is int and -(2**31) < value < 2**31)
    for name in ("is_active", "is_archived", "is_primary"):
        if name in row:
            assert type(row[name]) is bool
    when = row["updated_at_zywave"]
    assert when is None or (isinstance(when, datetime) and when.tzinfo is not None)
    json.dumps(row["raw"], allow_nan=False)


@pytest.mark.parametrize("build", [account_row, contact_row], ids=["account", "contact"])
def test_mirror_rows_fit_their_columns_or_raise_a_named_error(build: Any) -> None:
    seen: Counter[str] = Counter()

    @given(record=RECORDS)
    @FUZZ
    def check(record: dict[str, Any]) -> None:
        try:
            row = build(1, 1, record, datetime.now(UTC))
        except ZywaveError:
            seen["error"] += 1
            return
        check_row(row)
        seen["read"] += 1

    check()
    both_branches_taken(seen)


# --- The whole path: malformed pages from the sandbox during a real sync ----------------------

MALFORMED = {
    "not-json": ("{not json", "text/html"),
    "html": ("<html><body>Service</body></html>", "text/html"),
    "empty-body": ("", "application/json"),
    "a-string": ('"items"', "application/json"),
    "a-number": ("12345678901234567890123", "application/json"),
    "null": ("null", "application/json"),
    "items-an-object": ('{"items": {"id": 1}}', "application/json"),
    "items-of-numbers": ('{"items": [1, 2, 3], "totalCount": 3}', "application/json"),
    "items-of-strings": ('{"value": ["a", "b"]}', "application/json"),
    "unknown-envelope": ('{"data": {"accounts": []}}', "application/json"),
}

ODD_BUT_READABLE = {
    "wrong-types": {
        "items": [
            {
                "id": 77,
                "name": {"first": "x"},
                "isActive": "yes",
                "isArchived": "TRUE",
                "numberOfEmployees": "12x",
                "updatedDateTime": 5,
                "linesOfBusiness": [1, {"a": 2}],
            }
        ],
        "totalCount": "1",
        "hasMoreResults": "false",
    },
    "huge-numbers": '{"items": [{"id": 1, "numberOfEmployees": 1e999, "city": 10000000000000000000000000}], "hasMoreResults": false}',  # noqa: E501
    "nul-characters": {"items": [{"id": "n1", "name": "a\u0000b", "city": "\u0000"}]},
    "lone-surrogate": '{"items": [{"id": "s1", "name": "a\\ud800b"}], "hasMoreResults": false}',
    "nan": '{"items": [{"id": 2, "numberOfEmployees": NaN, "x": -Infinity}], "hasMoreResults": false}',  # noqa: E501
}


@pytest.fixture
def danas_connection(dana: Person, zywave: Sandbox, settings: Any) -> Connection:
    """Dana's connection through the sandbox, retrying a failed page once, without waiting."""
    settings.ZYWAVE_SYNC_BACKOFF_SECONDS = 0
    settings.ZYWAVE_SYNC_MAX_RETRIES = 1
    return connection(dana.user, zywave)


def plant(sandbox: Sandbox, body: Any, content_type: str = "application/json") -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    inject_fault(
        sandbox,
        r"^/accounts/v2\.0/account$",
        status=200,
        body=text,
        content_type=content_type,
    )


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_page_ends_the_sync_with_a_named_error(
    case: str, danas_connection: Connection, zywave: Sandbox, dana: Person
) -> None:
    body, content_type = MALFORMED[case]
    plant(zywave, body, content_type)
    run = sync_now(danas_connection, full=True)
    assert run is not None
    # The first page of the first resource was refused: nothing was written, so FAILED (not
    # PARTIAL), and the mirror holds no row at all.
    assert (run.state, run.pages_done, run.records_done) == (SyncRun.State.FAILED, 0, 0)
    assert run.error and "unexpected error" not in run.error
    assert run.error.startswith("/accounts/v2.0/account") or "account record" in run.error
    assert not Account.objects.filter(connection=danas_connection).exists()
    assert not Contact.objects.filter(connection=danas_connection).exists()
    assert dana.get("/").status_code == 200


# Records whose id the mirror cannot key on: each is skipped and counted, the page and the run
# go on (hardening item 9: a `/` in an id used to turn the accounts page into a 500).
UNUSABLE_ID_PAGES = {
    "record-without-id": '{"items": [{"name": "x"}], "totalCount": 1}',
    "nested-id": '{"items": [{"id": {"value": 1}}]}',
    "boolean-id": '{"items": [{"id": true}]}',
    "slash-id": '{"items": [{"id": "a/b"}]}',
    "overlong-id": '{"items": [{"id": "%s"}]}' % ("9" * 65),
}


@pytest.mark.parametrize("case", sorted(UNUSABLE_ID_PAGES))
def test_a_record_with_an_unusable_id_is_skipped_and_counted(
    case: str, danas_connection: Connection, zywave: Sandbox, dana: Person
) -> None:
    plant(zywave, UNUSABLE_ID_PAGES[case], "application/json")
    run = sync_now(danas_connection, full=True)
    assert run is not None
    assert (run.state, run.records_skipped) == (SyncRun.State.SUCCEEDED, 1)
    assert not Account.objects.filter(connection=danas_connection).exists()
    # Every other resource synced as usual.
    others = sum(
        resource.live(danas_connection.pk).count()
        for resource in resources()
        if resource.name != "accounts"
    )
    assert run.records_done == others > 0
    assert Contact.objects.filter(connection=danas_connection).exists()
    assert dana.get("/").status_code == 200
    assert dana.get("/zywave/accounts/").status_code == 200


# What each odd page comes to: read (the one account stored, as these columns) or refused as
# not JSON a database can hold (nothing stored).
READ_AS: dict[str, dict[str, Any] | None] = {
    "wrong-types": {
        "zywave_id": "77",
        "name": "{'first': 'x'}",
        "is_active": True,  # "yes" is no boolean: the default
        "is_archived": True,  # "TRUE" is read case-blind
        "number_of_employees": None,
        "updated_at_zywave": None,
        "lines_of_business": "1, {'a': 2}",
    },
    "huge-numbers": None,
    "nul-characters": {"zywave_id": "n1", "name": "a\ufffdb", "city": "\ufffd"},
    "lone-surrogate": {"zywave_id": "s1", "name": "a\ufffd\ufffd\ufffdb"},  # one per byte
    "nan": None,
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(ODD_BUT_READABLE))
def test_odd_values_in_a_page_are_read_or_end_the_sync_with_a_named_error(
    case: str, danas_connection: Connection, zywave: Sandbox
) -> None:
    plant(zywave, ODD_BUT_READABLE[case])
    run = sync_now(danas_connection, full=True)
    assert run is not None
    assert "unexpected error" not in run.error
    accounts = Account.objects.filter(connection=danas_connection)
    expected = READ_AS[case]
    if expected is None:
        assert (run.state, run.pages_done) == (SyncRun.State.FAILED, 0)
        assert "without JSON" in run.error
        assert not accounts.exists()
        assert not Contact.objects.filter(connection=danas_connection).exists()
        return
    assert (run.state, run.error) == (SyncRun.State.SUCCEEDED, "")
    # The mirror holds the one planted account, read as these columns (the sandbox's own
    # accounts were not on the page), and every contact the sandbox has.
    assert list(accounts.values(*expected)) == [expected]
    assert danas_connection.chosen_profile is not None
    counts = zywave.control(
        "GET", "accounts/count", profile_id=danas_connection.chosen_profile.zywave_id
    )
    assert Contact.objects.filter(connection=danas_connection).count() == counts["contacts"]


@pytest.mark.django_db
def test_a_page_far_bigger_than_asked_for_is_refused_as_malformed(
    danas_connection: Connection, zywave: Sandbox
) -> None:
    items = [{"id": f"big-{n}", "name": f"n{n}"} for n in range(10_000)]
    plant(zywave, {"items": items, "totalCount": 10_000, "hasMoreResults": False})
    run = sync_now(danas_connection, full=True)
    assert run is not None
    assert "unexpected error" not in run.error
    # Refused as malformed: a page is at most what was asked for, so memory stays flat.
    assert (run.state, run.pages_done) == (SyncRun.State.FAILED, 0)
    assert "records on a page of 100" in run.error
    assert not Account.objects.filter(connection=danas_connection).exists()
    assert not Contact.objects.filter(connection=danas_connection).exists()
