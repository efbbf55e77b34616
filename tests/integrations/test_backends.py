"""integrations/backends.py: the social-auth backend, through the real sandbox.

Client authentication at Zywave's token and revocation endpoints follows
ZYWAVE_TOKEN_AUTH_METHOD, for the code exchange, the refresh and the revocation alike. The
sandbox's `token_auth_method` setting makes it refuse the other method, as a strict identity
server would, so each test below fails if any of the three calls authenticates the wrong way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.sessions.models import Session
from django.core.cache import cache
from jwt.algorithms import RSAAlgorithm

from integrations.models import Connection
from integrations.tokens import RefreshFailed, refresh, revoke_tokens
from tests.conftest import Person
from tests.integrations.flows import begin, callback_path, connect, nothing_connected
from tests.integrations.test_connect import all_text_in_the_database
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


# --- The id_token, validated when openid is granted (hardening item 3) -------------------------


def last_id_token(sandbox: Sandbox) -> str:
    """The newest id_token the sandbox issued (its journal of issued tokens)."""
    issued = (sandbox.var_dir / "issued-tokens.txt").read_text().split()
    return [token for token in issued if token.count(".") == 2][-1]


def test_a_valid_id_token_connects_and_is_kept_nowhere(
    dana: Person, zywave: Sandbox, fresh_discovery: None
) -> None:
    authorize = begin(dana)
    sent = parse_qs(urlsplit(authorize).query)["nonce"][0]
    answer = dana.get(callback_path(zywave.walk_authorize(authorize)))
    assert answer.status_code == 302
    assert Connection.objects.filter(user=dana.user, status=Connection.Status.ACTIVE).exists()
    id_token = last_id_token(zywave)
    assert jwt.decode(id_token, options={"verify_signature": False})["nonce"] == sent
    sessions = "\n".join(str(s.get_decoded()) for s in Session.objects.all())
    assert id_token not in all_text_in_the_database() and id_token not in sessions
    assert sent not in sessions  # the nonce went with the state's transaction, used once


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("wrong_nonce", "nonce"),
        ("wrong_aud", "audience"),
        ("wrong_iss", "issuer"),
        ("wrong_sub", "sub differs"),
        ("expired", "expired"),
        ("bad_signature", "signature verification failed"),
    ],
)
def test_an_id_token_that_fails_validation_gives_a_clear_page_and_stores_nothing(
    fault: str,
    reason: str,
    dana: Person,
    zywave: Sandbox,
    fresh_discovery: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    zywave.control("POST", "settings", id_token_fault=fault)
    answer = connect(dana, zywave)
    assert answer.status_code == 400
    assert b"could not verify that this sign-in came from Zywave" in answer.content
    assert nothing_connected()
    assert reason in caplog.text.lower()  # refused for this reason, not another


def test_a_key_missing_from_the_cached_jwks_reads_the_jwks_again(
    dana: Person, zywave: Sandbox, fresh_discovery: None
) -> None:
    """Zywave rotated its keys since they were cached: the unknown `kid` re-reads the JWKS."""
    retired = RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(), as_dict=True
    )
    jwks_uri = f"{zywave.url}/.well-known/openid-configuration/jwks"
    cache.set(f"zywave:jwks:{jwks_uri}", {"keys": [{**retired, "kid": "retired"}]}, 600)
    assert connect(dana, zywave).status_code == 302
    assert Connection.objects.filter(user=dana.user).exists()
    kids = [key["kid"] for key in cache.get(f"zywave:jwks:{jwks_uri}")["keys"]]
    assert kids == [jwt.get_unverified_header(last_id_token(zywave))["kid"]]
