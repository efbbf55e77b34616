"""Accounts and contacts over HTTP: fields, OData filtering and paging, envelopes."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.sandbox.conftest import AGENT_PROFILES, all_items, call
from tests.sandboxserver import Sandbox

ACCOUNTS = "/accounts/v2.0/account"
CONTACTS = "/accounts/v2.0/contact"
PROFILE = f"B {AGENT_PROFILES[0]}"
ACCOUNT_KEYS = {
    "id", "name", "classification", "linesOfBusiness", "clientSize", "isActive", "isArchived",
    "numberOfEmployees", "naicsCodes", "addressLine1", "city", "state", "postalCode",
    "primaryPhone", "updatedDateTime",
}  # fmt: skip
CONTACT_KEYS = {
    "id", "accountId", "firstName", "lastName", "emailAddress", "title", "workPhoneNumber",
    "mobilePhoneNumber", "isPrimaryContact", "isActive", "isArchived", "updatedDateTime",
}  # fmt: skip
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@pytest.fixture(scope="module")
def reader(sandbox: Sandbox) -> str:
    """A read-only token for the whole module (these tests change nothing)."""
    sandbox.reset()
    return str(sandbox.obtain_tokens(username="agent@example.com")["access_token"])


@pytest.fixture(scope="module")
def everything(sandbox: Sandbox, reader: str) -> list[dict[str, Any]]:
    """Every account of the first agency, unfiltered: the oracle for the filter table."""
    return all_items(sandbox, reader, ACCOUNTS, PROFILE)


def employees(account: dict[str, Any]) -> int | None:
    return account["numberOfEmployees"]


FILTERS: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
    ("isArchived eq true", lambda a: a["isArchived"]),
    ("isArchived", lambda a: a["isArchived"]),
    ("not isArchived", lambda a: not a["isArchived"]),
    ("isActive ne true", lambda a: not a["isActive"]),
    ("startswith(name,'blue')", lambda a: a["name"].lower().startswith("blue")),
    ("endswith(name,'LLC')", lambda a: a["name"].endswith("LLC")),
    ("contains(name,'RIDGE')", lambda a: "ridge" in a["name"].lower()),
    ("contains(name,'o''brien')", lambda a: "o'brien" in a["name"].lower()),
    ("city eq 'milwaukee'", lambda a: a["city"] == "Milwaukee"),
    ("city ne 'Milwaukee'", lambda a: a["city"] != "Milwaukee"),
    (
        "(state eq 'WI' or state eq 'il') and clientSize ne 'small'",
        lambda a: a["state"] in {"WI", "IL"} and a["clientSize"] != "Small",
    ),
    ("name gt 'm'", lambda a: a["name"].lower() > "m"),
    ("name le 'C'", lambda a: a["name"].lower() <= "c"),
    ("numberOfEmployees gt 1000", lambda a: (employees(a) or 0) > 1000),
    ("numberOfEmployees eq null", lambda a: employees(a) is None),
    (
        "numberOfEmployees ne null and numberOfEmployees le 10",
        lambda a: 0 < (employees(a) or 0) <= 10,
    ),
    ("id le 20", lambda a: a["id"] <= 20),
    ("20 ge id", lambda a: a["id"] <= 20),
    (
        "updatedDateTime gt 2024-07-01T00:00:00Z",
        lambda a: a["updatedDateTime"] > "2024-07-01T00:00:00Z",
    ),
    (
        "updatedDateTime le '2024-07-01T00:00:00Z'",
        lambda a: a["updatedDateTime"] <= "2024-07-01T00:00:00Z",
    ),
    (
        "not (contains(name,'a') or contains(name,'e'))",
        lambda a: "a" not in a["name"].lower() and "e" not in a["name"].lower(),
    ),
    ("contains(name,'%') or contains(name,'_')", lambda a: False),
]


@pytest.mark.parametrize(("expression", "expected"), FILTERS, ids=[f for f, _ in FILTERS])
def test_a_filter_selects_exactly_the_matching_accounts(
    sandbox: Sandbox,
    reader: str,
    everything: list[dict[str, Any]],
    expression: str,
    expected: Callable[[dict[str, Any]], bool],
) -> None:
    found = all_items(sandbox, reader, ACCOUNTS, PROFILE, **{"$filter": expression})
    assert sorted(a["id"] for a in found) == sorted(a["id"] for a in everything if expected(a))


def test_the_filter_table_is_not_trivial(everything: list[dict[str, Any]]) -> None:
    # Each selective filter above must both match and miss something in the seed data.
    for expression, expected in FILTERS[:-1]:
        matches = sum(1 for account in everything if expected(account))
        assert 0 < matches < len(everything), expression


MALFORMED = [
    "name eq",
    "name eq 'x",
    "(isArchived",
    "nosuchfield eq 1",
    "name eq 5",
    "isArchived gt true",
    "contains(numberOfEmployees,'1')",
    "updatedDateTime gt 'yesterday'",
    "linesOfBusiness eq 'Cyber'",
]


@pytest.mark.parametrize("expression", MALFORMED)
def test_a_malformed_filter_answers_400_saying_where(
    sandbox: Sandbox, reader: str, expression: str
) -> None:
    response = call(sandbox, reader, ACCOUNTS, PROFILE, **{"$filter": expression})
    assert response.status_code == 400
    assert "position" in response.json()["detail"]


@pytest.mark.parametrize(
    "params",
    [{"$top": "101"}, {"$top": "-1"}, {"$skip": "x"}, {"$orderby": "name sideways"}],
)
def test_bad_paging_or_ordering_answers_400(
    sandbox: Sandbox, reader: str, params: dict[str, str]
) -> None:
    assert call(sandbox, reader, ACCOUNTS, PROFILE, **params).status_code == 400


def test_top_defaults_to_100(sandbox: Sandbox, reader: str, everything: list) -> None:
    assert len(everything) > 100  # the seed gives the first agency more than a page
    body = call(sandbox, reader, ACCOUNTS, PROFILE).json()
    assert len(body["items"]) == 100
    assert body["totalCount"] == len(everything)
    assert body["hasMoreResults"] is True


def test_paging_with_orderby_visits_every_record_exactly_once(
    sandbox: Sandbox, reader: str, everything: list[dict[str, Any]]
) -> None:
    seen = all_items(
        sandbox, reader, ACCOUNTS, PROFILE, **{"$orderby": "city desc, state", "$top": 7}
    )
    assert len(seen) == len(everything)
    assert sorted(a["id"] for a in seen) == sorted(a["id"] for a in everything)
    keys = [a["city"] for a in seen]
    assert keys == sorted(keys, reverse=True)


def test_orderby_several_keys_sorts_by_each_in_turn(sandbox: Sandbox, reader: str) -> None:
    items = call(
        sandbox, reader, ACCOUNTS, PROFILE, **{"$orderby": "isArchived desc, updatedDateTime asc"}
    ).json()["items"]
    pairs = [(not a["isArchived"], a["updatedDateTime"]) for a in items]
    assert pairs == sorted(pairs)


def test_accounts_have_exactly_the_contract_fields(sandbox: Sandbox, reader: str) -> None:
    item = call(sandbox, reader, ACCOUNTS, PROFILE, **{"$top": 1}).json()["items"][0]
    assert set(item) == ACCOUNT_KEYS
    assert ISO_Z.match(item["updatedDateTime"])
    single = call(sandbox, reader, f"{ACCOUNTS}/{item['id']}", PROFILE).json()
    assert single == item


def test_another_agencys_account_is_not_found(sandbox: Sandbox, reader: str) -> None:
    other = call(sandbox, reader, ACCOUNTS, f"B {AGENT_PROFILES[1]}", **{"$top": 1}).json()
    account_id = other["items"][0]["id"]
    assert call(sandbox, reader, f"{ACCOUNTS}/{account_id}", PROFILE).status_code == 404


def test_an_accounts_contacts_belong_to_it(sandbox: Sandbox, reader: str) -> None:
    account_id = call(sandbox, reader, ACCOUNTS, PROFILE, **{"$top": 1}).json()["items"][0]["id"]
    contacts = call(sandbox, reader, f"{ACCOUNTS}/{account_id}/contacts", PROFILE).json()["items"]
    assert 1 <= len(contacts) <= 5
    assert {c["accountId"] for c in contacts} == {account_id}
    assert set(contacts[0]) == CONTACT_KEYS
    assert sum(c["isPrimaryContact"] for c in contacts) == 1


def test_the_contact_list_filters_like_the_account_list(sandbox: Sandbox, reader: str) -> None:
    response = call(
        sandbox,
        reader,
        CONTACTS,
        PROFILE,
        **{"$filter": "startswith(lastName,'o''') and isPrimaryContact eq true"},
    )
    assert response.status_code == 200
    items = response.json()["items"]
    assert items and all(c["lastName"].startswith("O'") and c["isPrimaryContact"] for c in items)


@pytest.mark.parametrize(
    ("shape", "check"),
    [
        ("value", lambda body: isinstance(body["value"], list) and "@odata.count" in body),
        ("array", lambda body: isinstance(body, list) and len(body) == 3),
        ("items", lambda body: set(body) == {"items", "totalCount", "hasMoreResults"}),
    ],
)
def test_the_list_envelope_is_a_runtime_setting(
    sandbox: Sandbox, reader: str, shape: str, check: Callable[[Any], bool]
) -> None:
    sandbox.control("POST", "settings", envelope=shape)
    try:
        body = call(sandbox, reader, ACCOUNTS, PROFILE, **{"$top": 3}).json()
    finally:
        sandbox.reset()
    assert check(body)
