"""The registry (sandbox/zywave/resources.py), proved with a fourth, test-only resource: claims
(sandbox/testapps/claims: a model, its migration and one registry entry, nothing else), served
by a sandbox of its own started with `SANDBOX_EXTRA_APPS`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.conftest import AGENT_PROFILES, all_items, call
from tests.sandboxserver import Sandbox, start_sandbox, stop_sandbox

CLAIMS = "/claims/v2.0/claim"
ACCOUNTS = "/accounts/v2.0/account"
PROFILE = f"B {AGENT_PROFILES[0]}"
CLAIM_KEYS = [
    "id", "accountId", "claimNumber", "lossDate", "amount", "isActive", "isArchived",
    "updatedDateTime",
]  # fmt: skip


@pytest.fixture(scope="module")
def with_claims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    var_dir = Path(tmp_path_factory.mktemp("claims"))
    handle, process = start_sandbox(var_dir, env={"SANDBOX_EXTRA_APPS": "sandbox.testapps.claims"})
    try:
        handle.ensure_test_redirect_uri()
        handle.take_baseline()
        yield handle
    finally:
        stop_sandbox(process)


@pytest.fixture(scope="module")
def token(with_claims: Sandbox) -> str:
    return str(with_claims.obtain_tokens()["access_token"])


@pytest.fixture(scope="module")
def claims(with_claims: Sandbox, token: str) -> list[dict[str, Any]]:
    """Every claim of the first agency, amounts read as Decimals."""
    items: list[dict[str, Any]] = []
    while True:
        response = call(with_claims, token, CLAIMS, PROFILE, **{"$skip": len(items)})
        assert response.status_code == 200, response.text
        page = json.loads(response.text, parse_float=Decimal)
        items += page["items"]
        if not page["hasMoreResults"]:
            return items


def test_its_list_detail_and_nested_routes_serve_its_fields_in_order(
    with_claims: Sandbox, token: str, claims: list[dict[str, Any]]
) -> None:
    assert len(claims) > 100  # seeded, more than a page
    assert list(claims[0]) == CLAIM_KEYS
    detail = call(with_claims, token, f"{CLAIMS}/{claims[0]['id']}", PROFILE)
    assert json.loads(detail.text, parse_float=Decimal) == claims[0]
    account_id = claims[0]["accountId"]
    nested = call(with_claims, token, f"{ACCOUNTS}/{account_id}/claims", PROFILE).json()["items"]
    assert [c["id"] for c in nested] == [c["id"] for c in claims if c["accountId"] == account_id]


def test_its_date_and_decimal_fields_filter_and_order(
    with_claims: Sandbox, token: str, claims: list[dict[str, Any]]
) -> None:
    day = sorted(c["lossDate"] for c in claims)[len(claims) // 2]
    amount = sorted(c["amount"] for c in claims)[len(claims) // 2]
    expression = f"lossDate ge {day} and amount gt {amount}"
    found = all_items(with_claims, token, CLAIMS, PROFILE, **{"$filter": expression})
    wanted = [c["id"] for c in claims if c["lossDate"] >= day and c["amount"] > amount]
    assert wanted and sorted(c["id"] for c in found) == sorted(wanted)
    ordered = all_items(with_claims, token, CLAIMS, PROFILE, **{"$orderby": "amount desc"})
    assert [c["id"] for c in ordered] == [
        c["id"] for c in sorted(claims, key=lambda c: (-c["amount"], -c["id"]))
    ]
    text = call(with_claims, token, CLAIMS, PROFILE).text
    assert re.findall(r'"amount": (\d+\.\d{2})[,}]', text) == [
        str(c["amount"]) for c in claims[:100]
    ]


def test_its_rows_are_the_profiles_agencys_and_need_its_scopes(
    with_claims: Sandbox, token: str, claims: list[dict[str, Any]]
) -> None:
    theirs = call(with_claims, token, CLAIMS, f"B {AGENT_PROFILES[1]}", **{"$top": 1}).json()
    claim_id = theirs["items"][0]["id"]
    assert claim_id not in {c["id"] for c in claims}
    assert call(with_claims, token, f"{CLAIMS}/{claim_id}", PROFILE).status_code == 404
    policies_only = with_claims.obtain_tokens(scope="api.policies:read")["access_token"]
    assert call(with_claims, policies_only, CLAIMS, PROFILE).status_code == 403


def test_its_calls_are_counted_its_rows_counted_and_archived_with_their_account(
    with_claims: Sandbox, token: str
) -> None:
    with_claims.reset(restore=True)
    with_claims.control("POST", "counters/reset")
    assert call(with_claims, token, CLAIMS, PROFILE, **{"$top": 1}).status_code == 200
    assert with_claims.counters()["api"] == {f"{CLAIMS}:200": 1}
    try:
        counts = with_claims.control("GET", "accounts/count", profile_id=AGENT_PROFILES[0])
        total = call(with_claims, token, CLAIMS, PROFILE, **{"$top": 0}).json()["totalCount"]
        assert counts["claims"] == total > 0
        archived = with_claims.control(
            "POST", "accounts/archive", profile_id=AGENT_PROFILES[0], count=20
        )["ids"]
        under = [
            claim
            for account_id in archived
            for claim in all_items(with_claims, token, f"{ACCOUNTS}/{account_id}/claims", PROFILE)
        ]
        assert under and all(c["isArchived"] and not c["isActive"] for c in under)
    finally:
        with_claims.reset(restore=True)


def test_adding_it_changed_no_other_resources_data(
    sandbox_clean: Sandbox, with_claims: Sandbox, token: str
) -> None:
    # Both sandboxes were seeded today with the same count and seed: the same records, byte
    # for byte, but for the claims (drawn from their own random stream).
    sandbox = sandbox_clean
    plain = str(sandbox.obtain_tokens()["access_token"])
    for path in [ACCOUNTS, "/accounts/v2.0/contact", "/policies/v2.0/policy"]:
        pages: list[dict[str, Any]] = [{}, {"$skip": 100}, {"$orderby": "updatedDateTime desc"}]
        for params in pages:
            before = call(sandbox, plain, path, PROFILE, **params)
            after = call(with_claims, token, path, PROFILE, **params)
            assert (before.status_code, before.text) == (after.status_code, after.text), path
    counts = with_claims.control("GET", "accounts/count", profile_id=AGENT_PROFILES[0])
    assert counts.pop("claims") > 0
    assert counts == sandbox.control("GET", "accounts/count", profile_id=AGENT_PROFILES[0])


def test_without_its_app_the_sandbox_has_no_such_resource(sandbox_clean: Sandbox) -> None:
    plain = str(sandbox_clean.obtain_tokens()["access_token"])
    assert call(sandbox_clean, plain, CLAIMS, PROFILE).status_code == 404
    counts = sandbox_clean.control("GET", "accounts/count", profile_id=AGENT_PROFILES[0])
    assert "claims" not in counts
