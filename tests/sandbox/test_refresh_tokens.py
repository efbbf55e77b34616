"""Refresh tokens: rotation, reuse, revocation, absolute lifetime, races; access-token expiry."""

from __future__ import annotations

import threading
from collections import Counter

import requests

from tests.sandbox.conftest import call, refresh
from tests.sandboxserver import Sandbox

DAY = 24 * 3600


def test_a_refresh_returns_a_new_refresh_token(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens()
    response = refresh(sandbox_clean, tokens["refresh_token"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["refresh_token"] != tokens["refresh_token"]
    assert body["access_token"] != tokens["access_token"]
    assert body["scope"] == tokens["scope"]


def test_a_rotated_refresh_token_is_invalid_grant(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens()
    assert refresh(sandbox_clean, tokens["refresh_token"]).status_code == 200
    again = refresh(sandbox_clean, tokens["refresh_token"])
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_reusing_a_rotated_refresh_token_revokes_the_whole_grant(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens()
    newer = refresh(sandbox_clean, tokens["refresh_token"]).json()
    assert refresh(sandbox_clean, tokens["refresh_token"]).status_code == 400
    assert refresh(sandbox_clean, newer["refresh_token"]).json()["error"] == "invalid_grant"
    assert (
        call(sandbox_clean, newer["access_token"], "/industries/v3.0/industries").status_code == 401
    )


def test_without_reuse_detection_the_newest_refresh_token_survives_a_reuse(
    sandbox_clean: Sandbox,
) -> None:
    sandbox_clean.control("POST", "settings", reuse_revokes_grant=False)
    tokens = sandbox_clean.obtain_tokens()
    newer = refresh(sandbox_clean, tokens["refresh_token"]).json()
    assert refresh(sandbox_clean, tokens["refresh_token"]).status_code == 400
    assert refresh(sandbox_clean, newer["refresh_token"]).status_code == 200


def test_in_reuse_mode_the_same_refresh_token_works_again(sandbox_clean: Sandbox) -> None:
    sandbox_clean.control("POST", "settings", refresh_mode="reuse")
    tokens = sandbox_clean.obtain_tokens()
    first = refresh(sandbox_clean, tokens["refresh_token"])
    second = refresh(sandbox_clean, tokens["refresh_token"])
    assert first.status_code == 200 and second.status_code == 200, second.text
    assert first.json()["refresh_token"] == tokens["refresh_token"]
    assert second.json()["access_token"] != first.json()["access_token"]


def test_within_the_grace_period_a_rotated_token_is_still_accepted(sandbox_clean: Sandbox) -> None:
    sandbox_clean.control("POST", "settings", refresh_grace_seconds=60)
    tokens = sandbox_clean.obtain_tokens()
    assert refresh(sandbox_clean, tokens["refresh_token"]).status_code == 200
    assert refresh(sandbox_clean, tokens["refresh_token"]).status_code == 200


def test_a_revoked_refresh_token_is_invalid_grant(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens()
    revoked = requests.post(
        f"{sandbox_clean.url}/connect/revocation",
        data={
            "token": tokens["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": "portal-dev",
            "client_secret": "portal-dev-secret",
        },
        timeout=30,
    )
    assert revoked.status_code == 200
    assert refresh(sandbox_clean, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    status = sandbox_clean.control("GET", f"tokens/{tokens['refresh_token']}")
    assert status["active"] is False


def test_the_refresh_lifetime_is_absolute_from_the_login(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens()
    sandbox_clean.control("POST", "clock", offset_seconds=29 * DAY)
    newer = refresh(sandbox_clean, tokens["refresh_token"])
    assert newer.status_code == 200, newer.text  # day 29: still within 30 days
    sandbox_clean.control("POST", "clock", offset_seconds=30 * DAY + 60)
    late = refresh(sandbox_clean, newer.json()["refresh_token"])
    assert late.status_code == 400  # a refresh on day 29 did not extend the lifetime
    assert late.json()["error"] == "invalid_grant"


def test_an_access_token_expires_after_its_lifetime(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens()
    path = "/industries/v3.0/industries"
    assert call(sandbox_clean, tokens["access_token"], path).status_code == 200
    sandbox_clean.control("POST", "clock", offset_seconds=3601)
    expired = call(sandbox_clean, tokens["access_token"], path)
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]


def test_the_access_token_lifetime_is_a_runtime_setting(sandbox_clean: Sandbox) -> None:
    sandbox_clean.control("POST", "settings", access_token_lifetime=120)
    tokens = sandbox_clean.obtain_tokens()
    assert tokens["expires_in"] == 120
    sandbox_clean.control("POST", "clock", offset_seconds=121)
    assert (
        call(sandbox_clean, tokens["access_token"], "/industries/v3.0/industries").status_code
        == 401
    )


def test_racing_refreshes_of_one_token_give_exactly_one_success(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens()
    barrier = threading.Barrier(8)
    outcomes: list[tuple[int, str]] = []

    def attempt() -> None:
        barrier.wait()
        response = refresh(sandbox_clean, tokens["refresh_token"])
        error = "" if response.status_code == 200 else response.json().get("error", "")
        outcomes.append((response.status_code, error))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert Counter(outcomes) == Counter({(200, ""): 1, (400, "invalid_grant"): 7})


def test_revoking_a_user_ends_refresh_and_api_access(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens(username="solo@example.com")
    sandbox_clean.control("POST", "users/solo@example.com/revoke")
    assert refresh(sandbox_clean, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert (
        call(sandbox_clean, tokens["access_token"], "/industries/v3.0/industries").status_code
        == 401
    )


def test_expiring_a_users_access_tokens_leaves_refresh_working(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens(username="solo@example.com")
    sandbox_clean.control("POST", "users/solo@example.com/expire-access-tokens")
    assert (
        call(sandbox_clean, tokens["access_token"], "/industries/v3.0/industries").status_code
        == 401
    )
    renewed = refresh(sandbox_clean, tokens["refresh_token"])
    assert renewed.status_code == 200
    assert call(sandbox_clean, renewed.json()["access_token"], "/industries/v3.0/industries").ok


def test_introspection_tells_live_from_revoked_tokens(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens()

    def introspect(token: str) -> dict:
        return requests.post(
            f"{sandbox_clean.url}/connect/introspect",
            data={"token": token},
            auth=("portal-dev", "portal-dev-secret"),
            timeout=30,
        ).json()

    assert introspect(tokens["access_token"])["active"] is True
    assert introspect(tokens["refresh_token"])["active"] is True
    refresh(sandbox_clean, tokens["refresh_token"])
    assert introspect(tokens["refresh_token"]) == {"active": False}
    assert introspect(tokens["access_token"]) == {"active": False}
