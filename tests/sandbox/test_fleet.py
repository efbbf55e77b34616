"""POST /_sandbox/fleet: users, profiles, books and live grants made in bulk (zywave.fleet)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.sandbox.conftest import all_items, call, refresh
from tests.sandboxserver import Sandbox, SandboxError

ACCOUNTS = "/accounts/v2.0/account"
CONTACTS = "/accounts/v2.0/contact"
PORTAL_SCOPE = "openid profile email offline_access api.profiles api.accounts:read"


def make_fleet(sandbox: Sandbox, **options: Any) -> list[dict[str, Any]]:
    return list(sandbox.control("POST", "fleet", **options)["users"])


def test_each_user_of_a_fleet_holds_a_live_grant_and_a_profile_with_its_book(
    sandbox_clean: Sandbox,
) -> None:
    fleet = make_fleet(sandbox_clean, users=3, accounts=4, contacts=6, prefix="ftest")
    assert [user["email"] for user in fleet] == [
        "ftest00001@example.com",
        "ftest00002@example.com",
        "ftest00003@example.com",
    ]
    for user in fleet:
        token, profile = user["access_token"], user["profile"]
        assert user["token_type"] == "Bearer" and user["expires_in"] == 3600
        assert "offline_access" in user["scope"].split()
        by_token = f"Token {profile['profile_token']}"
        accounts = all_items(sandbox_clean, token, ACCOUNTS, by_token)
        contacts = all_items(sandbox_clean, token, CONTACTS, by_token)
        assert len(accounts) == 4 and len(contacts) == 6
        assert {c["accountId"] for c in contacts} == {a["id"] for a in accounts}
        # The profile is the user's only one, and the active one (no Profile header).
        listed = call(sandbox_clean, token, "/profiles/V2.0/Profile/B").json()["items"]
        assert [p["Id"] for p in listed] == [profile["id"]]
        detail = call(sandbox_clean, token, f"/profiles/V2.0/Profile/B/{profile['id']}").json()
        assert detail["ProfileToken"] == profile["profile_token"]
        assert len(all_items(sandbox_clean, token, ACCOUNTS, None)) == 4
        userinfo = call(sandbox_clean, token, "/connect/userinfo").json()
        assert (userinfo["sub"], userinfo["email"]) == (user["subject"], user["email"])


def test_a_fleet_users_refresh_token_rotates_and_its_reuse_is_refused(
    sandbox_clean: Sandbox,
) -> None:
    (user,) = make_fleet(sandbox_clean, users=1, prefix="frefresh")
    answer = refresh(sandbox_clean, user["refresh_token"])
    assert answer.status_code == 200, answer.text
    rotated = answer.json()
    assert rotated["refresh_token"] != user["refresh_token"]
    assert call(sandbox_clean, rotated["access_token"], ACCOUNTS).status_code == 200
    reused = refresh(sandbox_clean, user["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    # Reuse revokes the grant (the sandbox's default), as for a grant made by the pages.
    assert sandbox_clean.control("GET", f"tokens/{rotated['refresh_token']}")["active"] is False


def test_fleet_users_see_only_their_own_agency(sandbox_clean: Sandbox) -> None:
    first, second = make_fleet(sandbox_clean, users=2, prefix="fapart")
    foreign = f"Token {second['profile']['profile_token']}"
    assert call(sandbox_clean, first["access_token"], ACCOUNTS, foreign).status_code == 403
    names = {a["name"] for a in all_items(sandbox_clean, first["access_token"], ACCOUNTS, None)}
    assert names and all(name.startswith(first["profile"]["organization_name"]) for name in names)


def test_a_fleet_made_in_parts_goes_on_numbering_and_grants_the_scope_asked(
    sandbox_clean: Sandbox,
) -> None:
    make_fleet(sandbox_clean, users=2, prefix="fparts", accounts=1, contacts=0)
    later = make_fleet(
        sandbox_clean, users=2, prefix="fparts", first=3, accounts=1, contacts=0,
        scope=PORTAL_SCOPE,
    )  # fmt: skip
    assert [user["email"] for user in later] == [
        "fparts00003@example.com",
        "fparts00004@example.com",
    ]
    assert later[0]["scope"] == PORTAL_SCOPE
    assert call(sandbox_clean, later[0]["access_token"], CONTACTS).json()["items"] == []


def test_the_tokens_of_a_fleet_are_journaled_like_issued_ones(sandbox_clean: Sandbox) -> None:
    (user,) = make_fleet(sandbox_clean, users=1, prefix="fjournal")
    journal = (sandbox_clean.var_dir / "issued-tokens.txt").read_text().splitlines()
    assert user["access_token"] in journal and user["refresh_token"] in journal


@pytest.mark.parametrize(
    "options",
    [
        {"users": 0},
        {"users": 1, "client_id": "no-such-client"},
        {"users": 1, "scope": "openid api.everything"},
        {"users": 1, "accounts": 0, "contacts": 3},
        {"users": 1, "prefix": "a@b"},
    ],
)
def test_a_fleet_that_cannot_be_made_is_refused(
    sandbox_clean: Sandbox, options: dict[str, Any]
) -> None:
    with pytest.raises(SandboxError, match="400"):
        make_fleet(sandbox_clean, **options)


def test_a_fleet_of_existing_users_is_refused(sandbox_clean: Sandbox) -> None:
    make_fleet(sandbox_clean, users=1, prefix="ftwice")
    with pytest.raises(SandboxError, match="exist already"):
        make_fleet(sandbox_clean, users=1, prefix="ftwice")
