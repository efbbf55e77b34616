"""The authorization-code flow with PKCE over HTTP, and each of its RFC 6749 errors."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from tests.sandboxserver import (
    DEFAULT_REDIRECT_URI,
    Sandbox,
    SandboxError,
    pkce_pair,
)

TOKEN_FIELDS = {"access_token", "token_type", "expires_in", "scope", "refresh_token", "id_token"}


def query(location: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlparse(location).query).items()}


def exchange(sandbox: Sandbox, code: str, verifier: str | None, **overrides: str):
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": DEFAULT_REDIRECT_URI,
        "client_id": "portal-dev",
        "client_secret": "portal-dev-secret",
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    data.update(overrides)
    return requests.post(f"{sandbox.url}/connect/token", data=data, timeout=30)


def authorize(sandbox: Sandbox, **params: str) -> tuple[str, str]:
    """Walk authorize with a fresh PKCE pair; returns (code, verifier)."""
    verifier, challenge = pkce_pair()
    location = sandbox.walk_authorize(sandbox.authorize_url(code_challenge=challenge, **params))
    assert location.startswith(DEFAULT_REDIRECT_URI), location
    return query(location)["code"], verifier


def test_the_code_flow_returns_access_refresh_and_id_tokens(sandbox_clean: Sandbox) -> None:
    code, verifier = authorize(sandbox_clean, state="xyz")
    response = exchange(sandbox_clean, code, verifier)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= TOKEN_FIELDS
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert "api.accounts" in body["scope"].split(" ")
    assert len(body["refresh_token"]) == 64
    int(body["refresh_token"], 16)  # hex


def test_the_callback_carries_the_state(sandbox_clean: Sandbox) -> None:
    _verifier, challenge = pkce_pair()
    url = sandbox_clean.authorize_url(state="keep-me", code_challenge=challenge)
    location = sandbox_clean.walk_authorize(url)
    assert query(location)["state"] == "keep-me"
    assert "code" in query(location)


def test_without_offline_access_there_is_no_refresh_token(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens(scope="openid api.accounts")
    assert "refresh_token" not in tokens
    assert "id_token" in tokens


def test_without_openid_there_is_no_id_token(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens(scope="offline_access api.accounts")
    assert "id_token" not in tokens
    assert "refresh_token" in tokens


def test_the_client_may_authenticate_with_http_basic(sandbox_clean: Sandbox) -> None:
    code, verifier = authorize(sandbox_clean)
    basic = base64.b64encode(b"portal-dev:portal-dev-secret").decode()
    response = requests.post(
        f"{sandbox_clean.url}/connect/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": DEFAULT_REDIRECT_URI,
            "code_verifier": verifier,
        },
        headers={"Authorization": f"Basic {basic}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_a_missing_code_challenge_redirects_with_invalid_request(sandbox_clean: Sandbox) -> None:
    location = sandbox_clean.walk_authorize(sandbox_clean.authorize_url(state="s1"))
    assert location.startswith(DEFAULT_REDIRECT_URI)
    assert query(location)["error"] == "invalid_request"
    assert query(location)["state"] == "s1"


def test_a_plain_code_challenge_is_refused(sandbox_clean: Sandbox) -> None:
    url = sandbox_clean.authorize_url(state="s2", code_challenge="x" * 43).replace(
        "code_challenge_method=S256", "code_challenge_method=plain"
    )
    location = sandbox_clean.walk_authorize(url)
    assert query(location)["error"] == "invalid_request"


def test_a_wrong_code_verifier_is_invalid_grant(sandbox_clean: Sandbox) -> None:
    code, _verifier = authorize(sandbox_clean)
    response = exchange(sandbox_clean, code, pkce_pair()[0])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert response.json()["error_description"]


def test_a_missing_code_verifier_is_refused(sandbox_clean: Sandbox) -> None:
    code, _verifier = authorize(sandbox_clean)
    response = exchange(sandbox_clean, code, None)
    assert response.status_code == 400
    assert response.json()["error"] in {"invalid_request", "invalid_grant"}


def test_an_unregistered_redirect_uri_shows_an_error_instead_of_redirecting(
    sandbox_clean: Sandbox,
) -> None:
    _verifier, challenge = pkce_pair()
    url = sandbox_clean.authorize_url(
        redirect_uri="http://testserver/oauth/complete/zywave/extra", code_challenge=challenge
    )
    response = requests.get(url, allow_redirects=False, timeout=30)
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_a_redirect_uri_differing_only_by_port_is_not_accepted(sandbox_clean: Sandbox) -> None:
    _verifier, challenge = pkce_pair()
    url = sandbox_clean.authorize_url(
        redirect_uri="http://127.0.0.1:8002/oauth/complete/zywave/", code_challenge=challenge
    )
    response = requests.get(url, allow_redirects=False, timeout=30)
    assert response.status_code == 400


def test_a_different_redirect_uri_at_the_token_endpoint_is_invalid_grant(
    sandbox_clean: Sandbox,
) -> None:
    code, verifier = authorize(sandbox_clean)
    response = exchange(
        sandbox_clean,
        code,
        verifier,
        redirect_uri="http://127.0.0.1:8000/oauth/complete/zywave/",
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_a_code_used_twice_is_invalid_grant(sandbox_clean: Sandbox) -> None:
    code, verifier = authorize(sandbox_clean)
    assert exchange(sandbox_clean, code, verifier).status_code == 200
    again = exchange(sandbox_clean, code, verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_a_wrong_client_secret_is_invalid_client(sandbox_clean: Sandbox) -> None:
    code, verifier = authorize(sandbox_clean)
    response = exchange(sandbox_clean, code, verifier, client_secret="not-the-secret")
    assert response.status_code in {400, 401}
    assert response.json()["error"] == "invalid_client"


def test_an_unknown_grant_type_is_unsupported(sandbox_clean: Sandbox) -> None:
    response = requests.post(
        f"{sandbox_clean.url}/connect/token",
        data={"grant_type": "urn:example:magic", "client_id": "portal-dev"},
        timeout=30,
    )
    assert response.status_code in {400, 401}
    assert response.json()["error"] == "unsupported_grant_type"


def test_a_scope_not_registered_for_the_client_redirects_with_invalid_scope(
    sandbox_clean: Sandbox,
) -> None:
    _verifier, challenge = pkce_pair()
    url = sandbox_clean.authorize_url(
        scope="openid api.policies", state="s3", code_challenge=challenge
    )
    location = sandbox_clean.walk_authorize(url)
    assert location.startswith(DEFAULT_REDIRECT_URI)
    assert query(location) == {"error": "invalid_scope", "state": "s3"} | {
        k: v for k, v in query(location).items() if k == "error_description"
    }


def test_a_client_registered_with_fewer_scopes_cannot_ask_for_more(
    sandbox_clean: Sandbox,
) -> None:
    sandbox_clean.register_client(
        "narrow-client", "narrow-secret", [DEFAULT_REDIRECT_URI], allowed_scopes="openid"
    )
    _verifier, challenge = pkce_pair()
    url = sandbox_clean.authorize_url(
        client_id="narrow-client", scope="openid api.accounts", code_challenge=challenge
    )
    assert query(sandbox_clean.walk_authorize(url))["error"] == "invalid_scope"


def test_denying_consent_redirects_with_access_denied_and_the_state(
    sandbox_clean: Sandbox,
) -> None:
    _verifier, challenge = pkce_pair()
    url = sandbox_clean.authorize_url(state="s4", code_challenge=challenge)
    location = sandbox_clean.walk_authorize(url, allow=False)
    assert query(location)["error"] == "access_denied"
    assert query(location)["state"] == "s4"


def test_a_wrong_password_does_not_get_past_the_login_page(sandbox_clean: Sandbox) -> None:
    _verifier, challenge = pkce_pair()
    url = sandbox_clean.authorize_url(code_challenge=challenge)
    with pytest.raises(SandboxError, match="Login failed"):
        sandbox_clean.walk_authorize(url, password="wrong")


def test_the_consent_page_names_the_application_and_the_scopes(sandbox_clean: Sandbox) -> None:
    browser = requests.Session()
    _verifier, challenge = pkce_pair()
    url = sandbox_clean.authorize_url(code_challenge=challenge)
    login_page = browser.get(url, timeout=30)
    assert "Zywave sandbox" in login_page.text
    csrf = browser.cookies.get("zywave_sandbox_csrftoken")
    consent = browser.post(
        login_page.url,
        data={
            "username": "solo@example.com",
            "password": "sandbox",
            "csrfmiddlewaretoken": csrf,
            "next": parse_qs(urlparse(login_page.url).query)["next"][0],
        },
        timeout=30,
    )
    assert "Authorize Zywave portal (local development)" in consent.text
    assert "Read accounts and contacts" in consent.text
    assert 'name="allow"' in consent.text and 'name="deny"' in consent.text


def test_userinfo_answers_the_identity_claims(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens(username="solo@example.com")
    response = requests.get(
        f"{sandbox_clean.url}/connect/userinfo",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        timeout=30,
    )
    assert response.status_code == 200
    claims = response.json()
    assert claims["email"] == "solo@example.com"
    assert {"sub", "name", "given_name", "family_name"} <= set(claims)


def test_discovery_names_the_zywave_endpoints(sandbox_clean: Sandbox) -> None:
    config = requests.get(f"{sandbox_clean.url}/.well-known/openid-configuration", timeout=30)
    body = config.json()
    assert body["issuer"] == sandbox_clean.url
    assert body["token_endpoint"] == f"{sandbox_clean.url}/connect/token"
    assert body["code_challenge_methods_supported"] == ["S256"]
    jwks = requests.get(body["jwks_uri"], timeout=30).json()
    assert jwks["keys"][0]["kty"] == "RSA"
