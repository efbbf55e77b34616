"""Shared helpers of the sandbox tests: a fresh token per test, and an API caller."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.sandboxserver import Sandbox

AGENT_PROFILES = ["50001", "50002", "50003"]
SOLO_PROFILE = "50004"


def call(
    sandbox: Sandbox,
    token: str | None,
    path: str,
    profile: str | None = None,
    **params: Any,
) -> requests.Response:
    """GET an API path with a bearer token and, when given, a raw `Profile` header."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if profile is not None:
        headers["Profile"] = profile
    return requests.get(f"{sandbox.url}{path}", headers=headers, params=params, timeout=30)


def refresh(sandbox: Sandbox, refresh_token: str, **extra: str) -> requests.Response:
    data = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": "portal-dev",
        "client_secret": "portal-dev-secret",
        **extra,
    }
    return requests.post(f"{sandbox.url}/connect/token", data=data, timeout=30)


def all_items(sandbox: Sandbox, token: str, path: str, profile: str | None, **params: Any) -> list:
    """Every record of a list route, paging with $skip/$top."""
    items: list = []
    while True:
        response = call(sandbox, token, path, profile, **params, **{"$skip": len(items)})
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        if not page["hasMoreResults"]:
            return items


@pytest.fixture
def agent(sandbox_clean: Sandbox) -> dict[str, Any]:
    """Fresh tokens of agent@example.com (three profiles) with every portal scope."""
    return sandbox_clean.obtain_tokens()


@pytest.fixture
def agent_token(agent: dict[str, Any]) -> str:
    return str(agent["access_token"])
