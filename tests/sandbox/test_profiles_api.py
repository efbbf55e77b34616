"""Profiles API, profile resolution on v2 calls, scope checks and the v3 example."""

from __future__ import annotations

from typing import Any

from tests.sandbox.conftest import AGENT_PROFILES, SOLO_PROFILE, call
from tests.sandboxserver import Sandbox

PROFILE_KEYS = {
    "Id",
    "TypeCode",
    "Name",
    "OrganizationId",
    "OrganizationName",
    "BrokerId",
    "Email",
    "GivenName",
    "Surname",
}
ACCOUNTS = "/accounts/v2.0/account"


def first_account_ids(sandbox: Sandbox, token: str, profile: str | None) -> list[int]:
    response = call(sandbox, token, ACCOUNTS, profile, **{"$top": 5})
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_profiles_lists_the_callers_profiles_of_the_type(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    response = call(sandbox_clean, agent_token, "/profiles/V2.0/Profile/B")
    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["Id"] for item in items] == AGENT_PROFILES
    assert all(set(item) == PROFILE_KEYS for item in items)
    assert len({item["OrganizationId"] for item in items}) == 3


def test_profiles_of_another_type_are_an_empty_list(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    response = call(sandbox_clean, agent_token, "/profiles/V2.0/Profile/Z")
    assert response.json()["items"] == []


def test_one_profile_includes_its_profile_token(sandbox_clean: Sandbox, agent_token: str) -> None:
    response = call(sandbox_clean, agent_token, f"/profiles/V2.0/Profile/B/{AGENT_PROFILES[1]}")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == PROFILE_KEYS | {"ProfileToken"}
    expected = sandbox_clean.profiles()[1]["profile_token"]
    assert body["ProfileToken"] == expected


def test_another_users_profile_is_forbidden(sandbox_clean: Sandbox, agent_token: str) -> None:
    response = call(sandbox_clean, agent_token, f"/profiles/V2.0/Profile/B/{SOLO_PROFILE}")
    assert response.status_code == 403


def test_the_key_case_is_a_runtime_setting(sandbox_clean: Sandbox, agent_token: str) -> None:
    sandbox_clean.control("POST", "settings", key_case="camel")
    body = call(sandbox_clean, agent_token, f"/profiles/V2.0/Profile/B/{AGENT_PROFILES[0]}").json()
    assert body["id"] == AGENT_PROFILES[0]
    assert "profileToken" in body and "Id" not in body


def test_api_paths_match_in_any_letter_case(sandbox_clean: Sandbox, agent_token: str) -> None:
    assert call(sandbox_clean, agent_token, "/PROFILES/v2.0/profile/b").status_code == 200
    assert call(sandbox_clean, agent_token, "/Accounts/V2.0/Account").status_code == 200


def test_the_profile_header_by_type_and_id_selects_that_agency(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    first = first_account_ids(sandbox_clean, agent_token, f"B {AGENT_PROFILES[0]}")
    second = first_account_ids(sandbox_clean, agent_token, f"B {AGENT_PROFILES[1]}")
    assert first and second and not set(first) & set(second)


def test_the_profile_header_by_token_selects_the_same_data_as_by_id(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    token = sandbox_clean.profiles()[2]["profile_token"]
    by_token = first_account_ids(sandbox_clean, agent_token, f"Token {token}")
    by_id = first_account_ids(sandbox_clean, agent_token, f"B {AGENT_PROFILES[2]}")
    assert by_token == by_id


def test_a_foreign_profile_header_is_forbidden(sandbox_clean: Sandbox, agent_token: str) -> None:
    assert call(sandbox_clean, agent_token, ACCOUNTS, f"B {SOLO_PROFILE}").status_code == 403
    solo_token = sandbox_clean.profiles("solo@example.com")[0]["profile_token"]
    assert call(sandbox_clean, agent_token, ACCOUNTS, f"Token {solo_token}").status_code == 403


def test_an_unknown_or_malformed_profile_header_is_forbidden(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    for header in ["Token nope", "B 99999", "B", "gibberish", f"X {AGENT_PROFILES[0]}"]:
        assert call(sandbox_clean, agent_token, ACCOUNTS, header).status_code == 403, header


def test_without_a_profile_header_the_active_profile_is_used(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    sandbox_clean.control(
        "POST", "users/agent@example.com/active-profile", profile_id=AGENT_PROFILES[1]
    )
    implicit = first_account_ids(sandbox_clean, agent_token, None)
    assert implicit == first_account_ids(sandbox_clean, agent_token, f"B {AGENT_PROFILES[1]}")
    current = call(sandbox_clean, agent_token, "/profiles/V2.1/Profile/B/current").json()
    assert current["Id"] == AGENT_PROFILES[1]


def test_switching_the_active_profile_changes_implicit_results(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    activate = "users/agent@example.com/active-profile"
    sandbox_clean.control("POST", activate, profile_id=AGENT_PROFILES[0])
    before = first_account_ids(sandbox_clean, agent_token, None)
    sandbox_clean.control("POST", activate, profile_id=AGENT_PROFILES[2])
    after = first_account_ids(sandbox_clean, agent_token, None)
    sandbox_clean.control("POST", activate, profile_id=AGENT_PROFILES[0])
    assert before != after


def test_a_removed_profile_is_forbidden_and_no_longer_listed(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens(username="solo@example.com")
    token = tokens["access_token"]
    sandbox_clean.control("POST", f"users/solo@example.com/profiles/{SOLO_PROFILE}/remove")
    try:
        assert call(sandbox_clean, token, ACCOUNTS, f"B {SOLO_PROFILE}").status_code == 403
        assert call(sandbox_clean, token, ACCOUNTS).status_code == 403
        assert call(sandbox_clean, token, "/profiles/V2.0/Profile/B").json()["items"] == []
    finally:
        sandbox_clean.control("POST", f"users/solo@example.com/profiles/{SOLO_PROFILE}/add")
        sandbox_clean.control(
            "POST", "users/solo@example.com/active-profile", profile_id=SOLO_PROFILE
        )


def test_a_user_without_profiles_gets_403_on_v2_data(sandbox_clean: Sandbox) -> None:
    token = sandbox_clean.obtain_tokens(username="none@example.com")["access_token"]
    assert call(sandbox_clean, token, "/profiles/V2.0/Profile/B").json()["items"] == []
    assert call(sandbox_clean, token, ACCOUNTS).status_code == 403


def test_account_reads_need_an_accounts_scope(sandbox_clean: Sandbox) -> None:
    token = sandbox_clean.obtain_tokens(scope="openid api.profiles")["access_token"]
    response = call(sandbox_clean, token, ACCOUNTS, f"B {AGENT_PROFILES[0]}")
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_the_read_only_accounts_scope_is_enough_to_read(sandbox_clean: Sandbox) -> None:
    token = sandbox_clean.obtain_tokens(scope="api.accounts:read")["access_token"]
    assert call(sandbox_clean, token, ACCOUNTS, f"B {AGENT_PROFILES[0]}").status_code == 200


def test_profile_calls_need_the_profiles_scope(sandbox_clean: Sandbox) -> None:
    token = sandbox_clean.obtain_tokens(scope="api.accounts")["access_token"]
    assert call(sandbox_clean, token, "/profiles/V2.0/Profile/B").status_code == 403


def test_a_missing_or_unknown_token_is_401_invalid_token(sandbox_clean: Sandbox) -> None:
    for token in [None, "not-a-token"]:
        response = call(sandbox_clean, token, ACCOUNTS)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


def test_the_v3_call_needs_its_scope_and_ignores_the_profile(sandbox_clean: Sandbox) -> None:
    with_scope = sandbox_clean.obtain_tokens(scope="api.industries")["access_token"]
    response = call(sandbox_clean, with_scope, "/industries/v3.0/industries", "B 99999")
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.json()["items"]
    assert {"code": "52", "name": "Finance and Insurance"} in items
    without = sandbox_clean.obtain_tokens(scope="api.accounts")["access_token"]
    assert call(sandbox_clean, without, "/industries/v3.0/industries").status_code == 403
