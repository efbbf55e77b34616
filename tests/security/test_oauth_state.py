"""The OAuth callback: a `state` that is tampered, missing, from another session, expired or
already used connects nothing and never reaches Zywave's token endpoint; a mismatched `iss`
(RFC 9207) is refused before the code is exchanged."""

from __future__ import annotations

import time
from unittest import mock
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from django.contrib.auth.models import User
from django.test import Client
from social_django.models import UserSocialAuth

from integrations.models import Connection
from tests.conftest import Person
from tests.integrations.flows import begin
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db


def token_requests(sandbox: Sandbox) -> int:
    return sum(sandbox.counters()["token"].values())


def connections() -> int:
    return Connection.objects.count() + UserSocialAuth.objects.count()


def walked(client: Client, sandbox: Sandbox) -> dict[str, str]:
    """Begin in `client`'s session and sign in at Zywave: the callback's query parameters."""
    location = sandbox.walk_authorize(begin(client))
    return dict(parse_qsl(urlsplit(location).query))


def callback(client: Client, params: dict[str, str]) -> object:
    return client.get(f"/oauth/complete/zywave/?{urlencode(params)}")


def refused(response: object, status: int = 400) -> bool:
    return getattr(response, "status_code", None) == status


def flip(value: str) -> str:
    """The same state with its last character changed (same length, same alphabet)."""
    return value[:-1] + ("A" if value[-1] != "A" else "B")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda q: {**q, "state": flip(q["state"])}, id="one-character-changed"),
        pytest.param(lambda q: {**q, "state": q["state"][:-4]}, id="truncated"),
        pytest.param(lambda q: {**q, "state": q["state"] + "x"}, id="extended"),
        pytest.param(lambda q: {**q, "state": ""}, id="empty"),
        pytest.param(lambda q: {k: v for k, v in q.items() if k != "state"}, id="missing"),
        pytest.param(lambda q: {**q, "state": "s" * 5000}, id="5000-characters"),
        pytest.param(lambda q: {**q, "state": q["state"] + "\r\nX: y"}, id="crlf"),
        pytest.param(lambda q: {**q, "state": q["state"].upper()}, id="case-changed"),
    ],
)
def test_a_tampered_or_missing_state_connects_nothing_and_asks_zywave_nothing(
    dana: Person, zywave: Sandbox, tamper: object
) -> None:
    params = walked(dana, zywave)
    assert callable(tamper)
    assert refused(callback(dana, tamper(params)))
    assert connections() == 0
    assert token_requests(zywave) == 0


def test_a_state_replayed_in_another_persons_session_connects_nothing(
    dana: Person, omar: Person, zywave: Sandbox
) -> None:
    params = walked(dana, zywave)
    assert refused(callback(omar, params))
    assert connections() == 0
    assert token_requests(zywave) == 0


def test_a_state_replayed_in_another_session_of_the_same_person_connects_nothing(
    dana: Person, zywave: Sandbox
) -> None:
    params = walked(dana, zywave)
    second_browser = Person(dana.user)
    assert refused(callback(second_browser, params))
    assert connections() == 0
    assert token_requests(zywave) == 0


def test_a_state_replayed_without_a_session_connects_nothing(dana: Person, zywave: Sandbox) -> None:
    params = walked(dana, zywave)
    response = callback(Client(), params)
    assert getattr(response, "status_code", None) == 302  # to the login page
    assert connections() == 0
    assert token_requests(zywave) == 0


def test_an_expired_state_connects_nothing_and_asks_zywave_nothing(
    dana: Person, zywave: Sandbox
) -> None:
    params = walked(dana, zywave)
    later = time.time() + 1801  # social-core's STATE_LIFETIME is 1800 seconds
    with mock.patch("social_core.backends.oauth._time", return_value=later):
        response = callback(dana, params)
    assert refused(response)
    assert b"expired" in getattr(response, "content", b"")
    assert connections() == 0
    assert token_requests(zywave) == 0


def test_a_replayed_callback_asks_zywave_nothing_more(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    params = walked(dana, zywave)
    assert callback(dana, params).status_code == 302  # type: ignore[attr-defined]
    tokens = Connection.objects.get(user=staff).refresh_token
    assert token_requests(zywave) == 1
    for _ in range(3):
        assert refused(callback(dana, params))
    assert token_requests(zywave) == 1
    assert Connection.objects.get(user=staff).refresh_token == tokens
    assert connections() == 2  # the one connection and its social-auth link


def test_a_code_from_another_sessions_flow_is_refused_by_pkce(
    dana: Person, omar: Person, zywave: Sandbox
) -> None:
    """A valid state with a code issued to another session's flow (another PKCE verifier)."""
    mine = walked(dana, zywave)
    theirs = walked(omar, zywave)
    assert refused(callback(dana, {**mine, "code": theirs["code"]}))
    assert connections() == 0
    assert zywave.counters()["token"] == {"authorization_code:invalid_grant": 1}


def test_a_foreign_iss_with_a_forged_state_connects_nothing(dana: Person, zywave: Sandbox) -> None:
    params = walked(dana, zywave)
    forged = {**params, "state": flip(params["state"]), "iss": "https://evil.example"}
    assert refused(callback(dana, forged))
    assert connections() == 0
    assert token_requests(zywave) == 0


@pytest.mark.parametrize("issuer", ["https://evil.example", "", "{zywave}/", "{zywave}.evil"])
def test_a_mismatched_iss_is_refused_before_the_code_is_exchanged(
    dana: Person, zywave: Sandbox, issuer: str
) -> None:
    """RFC 9207: when the authorization response names its issuer, it must be Zywave's."""
    params = walked(dana, zywave)
    if issuer == "{zywave}/":
        issuer = f"{zywave.url}//"  # not the same identifier, even if it looks close
    issuer = issuer.replace("{zywave}", zywave.url)
    assert refused(callback(dana, {**params, "iss": issuer}))
    assert connections() == 0
    assert token_requests(zywave) == 0


def test_a_matching_iss_connects(dana: Person, zywave: Sandbox) -> None:
    params = walked(dana, zywave)
    response = callback(dana, {**params, "iss": zywave.url})
    assert getattr(response, "status_code", None) == 302
    assert connections() == 2
