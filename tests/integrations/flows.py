"""Plain helpers for walking the connect flow: the portal through Django's test client, Zywave
(the sandbox) over real HTTP."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.test import Client

from integrations.models import Connection
from tests.sandboxserver import Sandbox


def begin(client: Client, next_url: str | None = None) -> str:
    """Press "Connect Zywave": returns the authorize URL the portal redirects to."""
    data = {"next": next_url} if next_url else {}
    response = client.post("/oauth/login/zywave/", data)
    assert response.status_code == 302, response.content
    return response["Location"]


def callback_path(location: str) -> str:
    parts = urlsplit(location)
    return f"{parts.path}?{parts.query}"


def connect(
    client: Client,
    sandbox: Sandbox,
    username: str = "agent@example.com",
    allow: bool = True,
    next_url: str | None = None,
) -> Any:
    """The whole connect flow; returns the portal's answer to Zywave's callback."""
    location = sandbox.walk_authorize(begin(client, next_url), username=username, allow=allow)
    return client.get(callback_path(location))


def connect_and_land(client: Client, sandbox: Sandbox, username: str = "agent@example.com") -> Any:
    """Connect and follow the portal's redirects (through the profile picker)."""
    response = connect(client, sandbox, username)
    assert response.status_code == 302, response.content
    return client.get(response["Location"], follow=True)


def inject_fault(sandbox: Sandbox, path: str, count: int = 1, **fault: Any) -> None:
    """The next `count` requests whose path matches `path` get the fault (see the sandbox)."""
    response = sandbox.http.post(
        f"{sandbox.url}/_sandbox/faults",
        json={"path": path, "count": count, **fault},
        headers={"X-Sandbox-Key": sandbox.control_key},
        timeout=10,
    )
    response.raise_for_status()


def sandbox_counts(sandbox: Sandbox, conn: Connection) -> dict[str, int]:
    assert conn.chosen_profile is not None
    return sandbox.control("GET", "accounts/count", profile_id=conn.chosen_profile.zywave_id)


def mirrored_total(counts: dict[str, int]) -> int:
    """The records a full sync mirrors, given the sandbox's counts: every registered resource."""
    from integrations.resources import resources

    return sum(counts[resource.name] for resource in resources())


def page_requests(sandbox: Sandbox) -> int:
    """List pages asked of Zywave, over every registered resource's route."""
    from integrations.resources import resources

    api = sandbox.counters()["api"]
    return sum(
        n
        for resource in resources()
        for key, n in api.items()
        if key.startswith(f"{resource.path}:")
    )


def api_requests(sandbox: Sandbox, resource: str) -> int:
    return sum(
        n
        for key, n in sandbox.counters()["api"].items()
        if key.startswith(f"/accounts/v2.0/{resource}:")
    )


def nothing_connected() -> bool:
    """No connection and no identity link anywhere: what a refused connect leaves."""
    from social_django.models import UserSocialAuth

    return not Connection.objects.exists() and not UserSocialAuth.objects.exists()
