"""Policies over HTTP (an assumed API, docs/zywave.md §4): fields, dates and decimals, OData
filtering, ordering and paging, profile scoping, scopes, envelopes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.sandbox.conftest import AGENT_PROFILES, SOLO_PROFILE, all_items, call
from tests.sandboxserver import Sandbox

POLICIES = "/policies/v2.0/policy"
ACCOUNTS = "/accounts/v2.0/account"
PROFILE = f"B {AGENT_PROFILES[0]}"
POLICY_KEYS = [
    "id", "accountId", "policyNumber", "lineOfBusiness", "carrierName", "effectiveDate",
    "expirationDate", "premium", "isActive", "isArchived", "updatedDateTime",
]  # fmt: skip
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
# A premium as the answer's text spells it: a bare JSON number (not a string), two decimals.
PREMIUM_TEXT = re.compile(r'"premium": (-?\d+\.\d{2})[,}]')


@pytest.fixture(scope="module")
def reader(sandbox: Sandbox) -> str:
    """A token for the whole module (these tests change nothing), with the default scopes:
    `api.policies:read` among them."""
    sandbox.reset(restore=True)  # the active profile as seeded, for the implicit case
    return str(sandbox.obtain_tokens(username="agent@example.com")["access_token"])


@pytest.fixture(scope="module")
def everything(sandbox: Sandbox, reader: str) -> list[dict[str, Any]]:
    """Every policy of the first agency, unfiltered, premiums read as Decimals: the oracle."""
    items: list[dict[str, Any]] = []
    while True:
        response = call(sandbox, reader, POLICIES, PROFILE, **{"$skip": len(items)})
        assert response.status_code == 200, response.text
        page = json.loads(response.text, parse_float=Decimal)
        items += page["items"]
        if not page["hasMoreResults"]:
            return items


def test_policies_have_exactly_the_assumed_fields_in_order(sandbox: Sandbox, reader: str) -> None:
    item = call(sandbox, reader, POLICIES, PROFILE, **{"$top": 1}).json()["items"][0]
    assert list(item) == POLICY_KEYS
    assert ISO_DATE.match(item["effectiveDate"]) and ISO_DATE.match(item["expirationDate"])
    assert ISO_Z.match(item["updatedDateTime"])
    assert isinstance(item["premium"], float | int)  # a JSON number, not a string
    single = call(sandbox, reader, f"{POLICIES}/{item['id']}", PROFILE)
    assert single.status_code == 200 and single.json() == item


def test_premiums_are_json_numbers_with_exactly_the_stored_digits(
    sandbox: Sandbox, reader: str, everything: list[dict[str, Any]]
) -> None:
    text = call(sandbox, reader, POLICIES, PROFILE, **{"$orderby": "premium", "$top": 100}).text
    written = PREMIUM_TEXT.findall(text)
    assert len(written) == 100  # every premium of the page, each with exactly two decimals
    # Whole-dollar premiums keep their ".00": through a float they would read "1234.0".
    assert any(premium.endswith(".00") for premium in written)
    assert written == [str(p["premium"]) for p in sorted(everything, key=premium_and_id)[:100]]
    # The text is the Decimal's own: the same digits select the same policies again.
    sample = written[len(written) // 2]
    found = call(sandbox, reader, POLICIES, PROFILE, **{"$filter": f"premium eq {sample}"})
    assert found.status_code == 200
    assert PREMIUM_TEXT.findall(found.text) == [p for p in written if p == sample]


def premium_and_id(policy: dict[str, Any]) -> tuple[Decimal, int]:
    return policy["premium"], policy["id"]


def test_one_policys_answer_writes_its_premium_exactly_too(
    sandbox: Sandbox, reader: str, everything: list[dict[str, Any]]
) -> None:
    policy = next(p for p in everything if str(p["premium"]).endswith(".00"))
    text = call(sandbox, reader, f"{POLICIES}/{policy['id']}", PROFILE).text
    assert PREMIUM_TEXT.findall(text) == [str(policy["premium"])]


def median(values: list[Any]) -> Any:
    return sorted(values)[len(values) // 2]


def filters(everything: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict], bool]]]:
    """Expressions and their oracles, with literals taken from the data (the seed's dates are
    around the day it ran)."""
    end = median([p["expirationDate"] for p in everything])
    start = median([p["effectiveDate"] for p in everything])
    premium = median([p["premium"] for p in everything])
    exact = everything[len(everything) // 3]["premium"]
    year = f"-{everything[0]['policyNumber'].split('-')[1]}-"
    return [
        (f"expirationDate ge {end}", lambda p: p["expirationDate"] >= end),
        (f"expirationDate lt '{end}'", lambda p: p["expirationDate"] < end),
        (f"effectiveDate eq {start}", lambda p: p["effectiveDate"] == start),
        (
            f"expirationDate gt {start} and expirationDate le {end}",
            lambda p: start < p["expirationDate"] <= end,
        ),
        (f"premium gt {premium}", lambda p: p["premium"] > premium),
        (f"premium le {premium}", lambda p: p["premium"] <= premium),
        (f"premium eq {exact}", lambda p: p["premium"] == exact),
        (f"premium ne {exact}", lambda p: p["premium"] != exact),
        (
            "premium ge 1000.5 and premium lt 5000",
            lambda p: Decimal("1000.5") <= p["premium"] < 5000,
        ),
        ("lineOfBusiness eq 'cyber'", lambda p: p["lineOfBusiness"] == "Cyber"),
        ("startswith(carrierName,'the')", lambda p: p["carrierName"].lower().startswith("the")),
        (f"contains(policyNumber,'{year}')", lambda p: year in p["policyNumber"]),
        ("isActive eq false", lambda p: not p["isActive"]),
        ("accountId le 20", lambda p: p["accountId"] <= 20),
    ]


def test_a_filter_on_dates_decimals_and_text_selects_exactly_the_matching_policies(
    sandbox: Sandbox, reader: str, everything: list[dict[str, Any]]
) -> None:
    for expression, expected in filters(everything):
        found = all_items(sandbox, reader, POLICIES, PROFILE, **{"$filter": expression})
        wanted = [p["id"] for p in everything if expected(p)]
        assert 0 < len(wanted) < len(everything), expression  # the filter is not trivial
        assert sorted(p["id"] for p in found) == sorted(wanted), expression


@pytest.mark.parametrize(
    "expression",
    [
        "effectiveDate gt 2026-12-01T00:00:00Z",
        "expirationDate eq 'next week'",
        "expirationDate eq 2026-02-30",
        "premium eq '1250.50'",
        "premium gt true",
        "contains(premium,'1')",
        "carrierName eq 5",
    ],
)
def test_a_filter_of_the_wrong_kind_answers_400_saying_where(
    sandbox: Sandbox, reader: str, expression: str
) -> None:
    response = call(sandbox, reader, POLICIES, PROFILE, **{"$filter": expression})
    assert response.status_code == 400
    assert "position" in response.json()["detail"]


def test_paging_by_expiration_visits_every_policy_once_in_order(
    sandbox: Sandbox, reader: str, everything: list[dict[str, Any]]
) -> None:
    seen = all_items(
        sandbox,
        reader,
        POLICIES,
        PROFILE,
        **{"$orderby": "expirationDate, premium desc", "$top": 9},
    )
    assert sorted(p["id"] for p in seen) == sorted(p["id"] for p in everything)
    keys = [(p["expirationDate"], -Decimal(str(p["premium"]))) for p in seen]
    assert keys == sorted(keys)


def test_top_defaults_to_100_with_the_total(
    sandbox: Sandbox, reader: str, everything: list[dict[str, Any]]
) -> None:
    assert len(everything) > 100
    body = call(sandbox, reader, POLICIES, PROFILE).json()
    assert (len(body["items"]), body["totalCount"], body["hasMoreResults"]) == (
        100,
        len(everything),
        True,
    )
    assert call(sandbox, reader, POLICIES, PROFILE, **{"$top": "101"}).status_code == 400


def test_terms_run_a_year_around_today_some_lapsed_some_renewing(
    everything: list[dict[str, Any]],
) -> None:
    # The sandbox was seeded today (or, just after midnight, the day before).
    today = datetime.now(UTC).date()
    ends = [date.fromisoformat(p["expirationDate"]) for p in everything]
    for policy, end in zip(everything, ends, strict=True):
        start = date.fromisoformat(policy["effectiveDate"])
        assert (start.year, start.month) == (end.year - 1, end.month)
        assert start.day == end.day or (end.month, end.day, start.day) == (2, 29, 28)
    assert any(end < today - timedelta(days=1) for end in ends)  # lapsed
    for days in (30, 60, 90):  # some in each month of a renewals page's 30/60/90-day choice
        window = (today + timedelta(days=days - 30), today + timedelta(days=days))
        assert any(window[0] < end <= window[1] for end in ends), days


def test_policies_are_the_profiles_agencys_only(
    sandbox: Sandbox, reader: str, everything: list[dict[str, Any]]
) -> None:
    mine = {a["id"] for a in all_items(sandbox, reader, ACCOUNTS, PROFILE)}
    assert {p["accountId"] for p in everything} <= mine
    other = all_items(sandbox, reader, POLICIES, f"B {AGENT_PROFILES[1]}")
    assert other and not {p["id"] for p in other} & {p["id"] for p in everything}
    # Without a Profile header, the active profile (the first) decides.
    implicit = call(sandbox, reader, POLICIES, None, **{"$top": 5}).json()["items"]
    assert [p["id"] for p in implicit] == [p["id"] for p in everything[:5]]


def test_another_agencys_policy_is_not_found(sandbox: Sandbox, reader: str) -> None:
    theirs = call(sandbox, reader, POLICIES, f"B {AGENT_PROFILES[1]}", **{"$top": 1}).json()
    policy_id = theirs["items"][0]["id"]
    response = call(sandbox, reader, f"{POLICIES}/{policy_id}", PROFILE)
    assert response.status_code == 404
    assert response.json()["detail"] == f"No policy {policy_id}"
    assert call(sandbox, reader, f"{POLICIES}/999999999", PROFILE).status_code == 404


def test_someone_elses_profile_sees_no_policy(sandbox: Sandbox, reader: str) -> None:
    assert call(sandbox, reader, POLICIES, f"B {SOLO_PROFILE}").status_code == 403


def test_an_accounts_policies_belong_to_it(
    sandbox: Sandbox, reader: str, everything: list[dict[str, Any]]
) -> None:
    account_id = everything[0]["accountId"]
    response = call(sandbox, reader, f"{ACCOUNTS}/{account_id}/policies", PROFILE)
    assert response.status_code == 200
    items = response.json()["items"]
    assert [p["id"] for p in items] == [p["id"] for p in everything if p["accountId"] == account_id]
    lines = call(sandbox, reader, f"{ACCOUNTS}/{account_id}", PROFILE).json()["linesOfBusiness"]
    assert [p["lineOfBusiness"] for p in items] == lines
    # OData applies under the account too.
    some = call(
        sandbox, reader, f"{ACCOUNTS}/{account_id}/policies", PROFILE, **{"$filter": "premium lt 0"}
    )
    assert some.json()["items"] == []


def test_another_agencys_accounts_policies_are_not_found(sandbox: Sandbox, reader: str) -> None:
    theirs = call(sandbox, reader, ACCOUNTS, f"B {AGENT_PROFILES[1]}", **{"$top": 1}).json()
    account_id = theirs["items"][0]["id"]
    response = call(sandbox, reader, f"{ACCOUNTS}/{account_id}/policies", PROFILE)
    assert response.status_code == 404
    assert response.json()["detail"] == f"No account {account_id}"


@pytest.mark.parametrize("path", [POLICIES, f"{POLICIES}/1", f"{ACCOUNTS}/1/policies"])
def test_every_policies_route_needs_a_policies_scope(sandbox_clean: Sandbox, path: str) -> None:
    accounts_only = sandbox_clean.obtain_tokens(scope="openid api.profiles api.accounts")
    response = call(sandbox_clean, accounts_only["access_token"], path, PROFILE)
    assert response.status_code == 403
    challenge = response.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="api.policies api.policies:read"' in challenge


def test_the_read_only_policies_scope_is_enough_to_read(sandbox_clean: Sandbox) -> None:
    token = sandbox_clean.obtain_tokens(scope="api.policies:read")["access_token"]
    assert call(sandbox_clean, token, POLICIES, PROFILE).status_code == 200
    # It reads policies, not accounts.
    assert call(sandbox_clean, token, ACCOUNTS, PROFILE).status_code == 403


@pytest.mark.parametrize(
    ("shape", "items"),
    [
        ("value", lambda body: body["value"]),
        ("array", lambda body: body),
    ],
)
def test_the_list_envelope_setting_applies_to_policies_with_exact_premiums(
    sandbox: Sandbox, reader: str, shape: str, items: Callable[[Any], list[Any]]
) -> None:
    sandbox.control("POST", "settings", envelope=shape)
    try:
        response = call(sandbox, reader, POLICIES, PROFILE, **{"$top": 3})
    finally:
        sandbox.reset()
    assert len(items(response.json())) == 3
    assert len(PREMIUM_TEXT.findall(response.text)) == 3


def test_policy_calls_are_counted_by_path_and_status(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    sandbox_clean.control("POST", "counters/reset")
    call(sandbox_clean, agent_token, POLICIES, PROFILE)
    call(sandbox_clean, agent_token, f"{POLICIES}/999999999", PROFILE)
    assert sandbox_clean.counters()["api"] == {f"{POLICIES}:200": 1, f"{POLICIES}/999999999:404": 1}
