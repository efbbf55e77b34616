"""integrations/backends.py: the social-auth backend, through the real sandbox.

Client authentication at Zywave's token and revocation endpoints follows
ZYWAVE_TOKEN_AUTH_METHOD, for the code exchange, the refresh and the revocation alike. The
sandbox's `token_auth_method` setting makes it refuse the other method, as a strict identity
server would, so each test below fails if any of the three calls authenticates the wrong way.
"""

from __future__ import annotations

from typing import Any

import pytest

from integrations.models import Connection
from integrations.tokens import RefreshFailed, refresh, revoke_tokens
from tests.conftest import Person
from tests.integrations.flows import connect
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db

METHODS = ["client_secret_post", "client_secret_basic"]


def other(method: str) -> str:
    return METHODS[1 - METHODS.index(method)]


@pytest.mark.parametrize("method", METHODS)
def test_the_code_exchange_refresh_and_revocation_all_use_the_configured_method(
    method: str, dana: Person, zywave: Sandbox, settings: Any
) -> None:
    settings.ZYWAVE_TOKEN_AUTH_METHOD = method
    zywave.control("POST", "settings", token_auth_method=method)
    zywave.control("POST", "counters/reset")
    assert connect(dana, zywave).status_code == 302
    conn = Connection.objects.get(user=dana.user)
    old_refresh = conn.refresh_token
    refresh(conn, refused=conn.access_token)
    conn.refresh_from_db()
    assert conn.refresh_token != old_refresh  # rotated: the refresh really happened
    assert revoke_tokens(conn) == (True, "")
    assert zywave.control("GET", f"tokens/{conn.refresh_token}")["active"] is False


@pytest.mark.parametrize("method", METHODS)
def test_a_server_that_requires_the_other_method_refuses_the_code_exchange(
    method: str, dana: Person, zywave: Sandbox, settings: Any
) -> None:
    settings.ZYWAVE_TOKEN_AUTH_METHOD = method
    zywave.control("POST", "settings", token_auth_method=other(method))
    answer = connect(dana, zywave)
    assert answer.status_code != 302 or "/zywave/profiles/" not in answer["Location"]
    assert not Connection.objects.filter(user=dana.user).exists()  # nothing half-saved


@pytest.mark.parametrize("method", METHODS)
def test_a_refresh_refused_for_client_authentication_keeps_the_grant(
    method: str, dana: Person, zywave: Sandbox, settings: Any
) -> None:
    """invalid_client is the portal's configuration, not the person's grant: the tokens are
    kept and the connection stays active, so fixing the setting is enough."""
    settings.ZYWAVE_TOKEN_AUTH_METHOD = method
    assert connect(dana, zywave).status_code == 302
    conn = Connection.objects.get(user=dana.user)
    kept = conn.refresh_token
    zywave.control("POST", "settings", token_auth_method=other(method))
    with pytest.raises(RefreshFailed):
        refresh(conn, refused=conn.access_token)
    conn.refresh_from_db()
    assert conn.status == Connection.Status.ACTIVE
    assert conn.refresh_token == kept
    assert zywave.control("GET", f"tokens/{kept}")["active"] is True


def test_the_sandbox_refuses_basic_when_it_requires_the_body_and_the_reverse(
    zywave: Sandbox,
) -> None:
    """The switch itself: each method is refused where the other is required."""
    tokens = zywave.obtain_tokens()
    secret = {"client_id": "portal-dev", "client_secret": "portal-dev-secret"}
    for required, auth, data in (
        ("client_secret_post", ("portal-dev", "portal-dev-secret"), {}),
        ("client_secret_basic", None, secret),
    ):
        zywave.control("POST", "settings", token_auth_method=required)
        answer = zywave.http.post(
            f"{zywave.url}/connect/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], **data},
            auth=auth,
            timeout=10,
        )
        assert answer.status_code == 401
        assert answer.json()["error"] == "invalid_client"
