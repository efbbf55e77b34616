"""Connecting a Zywave account: the code flow against the sandbox, tokens kept secret."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.db import connection as db
from django.test import Client
from social_django.models import UserSocialAuth

from integrations.models import Connection, ConnectionEvent
from integrations.pipeline import store_connection
from integrations.tokens import zywave_backend
from tests.conftest import Person
from tests.integrations.flows import begin, callback_path, connect, inject_fault
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db


def nothing_connected() -> bool:
    return not Connection.objects.exists() and not UserSocialAuth.objects.exists()


def test_the_authorize_redirect_carries_state_and_pkce_s256(dana: Person, zywave: Sandbox) -> None:
    url = begin(dana)
    assert url.startswith(f"{zywave.url}/connect/authorize?")
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["state"][0]) >= 20
    assert query["redirect_uri"] == ["http://testserver/oauth/complete/zywave/"]
    assert "offline_access" in query["scope"][0].split()
    assert "client_secret" not in query


def test_connecting_stores_an_active_connection_whose_tokens_work(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    response = connect(dana, zywave)
    assert response.status_code == 302
    assert response["Location"].startswith("/zywave/profiles/")
    conn = Connection.objects.get(user=staff)
    assert conn.status == Connection.Status.ACTIVE
    assert conn.zywave_email == "agent@example.com"
    assert conn.refresh_token and conn.authorized_at and conn.access_token_expires_at
    assert "api.accounts:read" in conn.scopes
    userinfo = requests.get(
        f"{zywave.url}/connect/userinfo",
        headers={"Authorization": f"Bearer {conn.access_token}"},
        timeout=10,
    )
    assert userinfo.status_code == 200
    assert userinfo.json()["sub"] == conn.zywave_subject
    assert UserSocialAuth.objects.get(user=staff).extra_data == {}
    assert list(conn.events.values_list("kind", flat=True)) == ["connected"]


def all_text_in_the_database() -> str:
    """Every text-like column of every table, read with raw SQL."""
    chunks: list[str] = []
    with db.cursor() as cursor:
        for table in db.introspection.table_names():
            columns = [
                col.name
                for col in db.introspection.get_table_description(cursor, table)
                if col.type_code is not None
            ]
            quoted = ", ".join(db.ops.quote_name(c) for c in columns)
            cursor.execute(f"SELECT {quoted} FROM {db.ops.quote_name(table)}")  # noqa: S608
            for row in cursor.fetchall():
                chunks.extend(str(value) for value in row if value is not None)
    return "\n".join(chunks)


def test_no_token_or_client_secret_is_stored_in_plaintext_anywhere(
    dana: Person, staff: User, zywave: Sandbox, caplog: pytest.LogCaptureFixture, settings
) -> None:
    caplog.set_level(logging.DEBUG)
    connect(dana, zywave)
    conn = Connection.objects.get(user=staff)
    secrets = [conn.access_token, conn.refresh_token, settings.ZYWAVE_CLIENT_SECRET]
    dumped = all_text_in_the_database()
    sessions = "\n".join(str(s.get_decoded()) for s in Session.objects.all())
    page = dana.get("/").content.decode()
    for secret in secrets:
        assert secret and secret not in dumped
        assert secret not in sessions
        assert secret not in caplog.text
        assert secret not in page
    assert conn.access_token_fingerprint in dumped  # the audit has a fingerprint instead


def test_begin_refuses_get_and_anonymous_visitors(client: Client, dana: Person) -> None:
    assert client.post("/oauth/login/zywave/")["Location"].startswith("/login/")
    assert dana.get("/oauth/login/zywave/").status_code == 405
    assert dana.post("/oauth/login/github/").status_code == 404
    assert nothing_connected()


def test_declined_consent_explains_and_connects_nothing(dana: Person, zywave: Sandbox) -> None:
    response = connect(dana, zywave, allow=False)
    assert response.status_code == 400
    assert b"You declined access at Zywave" in response.content
    assert nothing_connected()


def test_a_callback_without_state_is_refused(dana: Person, zywave: Sandbox) -> None:
    begin(dana)
    response = dana.get("/oauth/complete/zywave/?code=abc")
    assert response.status_code == 400
    assert b"incomplete" in response.content
    assert nothing_connected()
    assert zywave.counters()["token"] == {}


def test_a_callback_with_a_forged_state_is_refused(dana: Person, zywave: Sandbox) -> None:
    location = zywave.walk_authorize(begin(dana))
    forged = callback_path(location).replace("state=", "state=x")
    response = dana.get(forged)
    assert response.status_code == 400
    assert nothing_connected()
    assert zywave.counters()["token"] == {}


def test_a_replayed_callback_changes_nothing(dana: Person, staff: User, zywave: Sandbox) -> None:
    location = zywave.walk_authorize(begin(dana))
    assert dana.get(callback_path(location)).status_code == 302
    before = Connection.objects.get(user=staff).access_token
    replay = dana.get(callback_path(location))
    assert replay.status_code == 400
    assert Connection.objects.get(user=staff).access_token == before
    assert ConnectionEvent.objects.count() == 1


def test_a_callback_replayed_in_another_session_connects_nothing(
    dana: Person, omar: Person, zywave: Sandbox
) -> None:
    location = zywave.walk_authorize(begin(dana))
    assert omar.get(callback_path(location)).status_code == 400
    assert nothing_connected()


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"status": 500, "body": '{"error": "server_error"}'}, b"unavailable"),
        ({"status": 503}, b"unavailable"),
        ({"delay_ms": 4500}, b"did not answer in time"),
        (
            {"status": 200, "body": "<html>not json", "content_type": "text/html"},
            b"could not understand",
        ),
        (
            {
                "status": 400,
                "body": '{"error": "invalid_grant"}',
                "content_type": "application/json",
            },
            b"did not accept the sign-in code",
        ),
    ],
)
def test_a_failing_token_endpoint_gives_a_clear_page_and_saves_nothing(
    dana: Person, zywave: Sandbox, fault: dict[str, Any], message: bytes
) -> None:
    location = zywave.walk_authorize(begin(dana))
    inject_fault(zywave, "^/connect/token", **fault)
    response = dana.get(callback_path(location))
    assert response.status_code == 400
    assert message in response.content
    assert nothing_connected()


def test_an_identity_linked_to_another_portal_user_is_refused_kindly(
    dana: Person, omar: Person, zywave: Sandbox
) -> None:
    assert connect(dana, zywave).status_code == 302
    response = connect(omar, zywave)
    assert response.status_code == 409
    assert b"already linked to another portal user" in response.content
    assert not Connection.objects.filter(user=omar.user).exists()


def test_connecting_a_second_identity_asks_to_disconnect_first(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    connect(dana, zywave)
    response = connect(dana, zywave, username="solo@example.com")
    assert response.status_code == 409
    assert b"Disconnect it first" in response.content
    assert Connection.objects.get(user=staff).zywave_email == "agent@example.com"


def test_scopes_not_registered_at_zywave_get_an_admin_hint(
    dana: Person, staff: User, zywave: Sandbox, settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.ZYWAVE_SCOPES = [*settings.ZYWAVE_SCOPES, "api.policies"]
    response = connect(dana, zywave)
    assert response.status_code == 400
    assert b"ask your administrator to register" in response.content
    assert not Connection.objects.exists()
    event = ConnectionEvent.objects.get(user=staff, kind="connect_failed")
    assert event.detail["error"] == "invalid_scope"
    assert "api.policies" in event.detail["register_scopes"]
    assert "api.policies" in caplog.text


def test_fewer_scopes_granted_are_recorded_and_shown(dana: Person, settings) -> None:
    # The sandbox grants what is asked or refuses (invalid_scope); a narrower grant is a token
    # response Zywave may send, so the pipeline step is fed one directly.
    backend = zywave_backend()
    store_connection(
        backend,
        dana.user,
        "sub-1",
        {"access_token": "a", "expires_in": 3600, "scope": "openid api.profiles", "email": "x@y"},
    )
    conn = Connection.objects.get(user=dana.user)
    assert "offline_access" in conn.missing_scopes()
    assert not conn.can_refresh
    assert ConnectionEvent.objects.filter(kind="scopes_reduced").exists()
    assert b"Background sync cannot run" in dana.get("/").content


def test_reconnecting_updates_the_same_connection(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    connect(dana, zywave)
    first = Connection.objects.get(user=staff)
    connect(dana, zywave)
    again = Connection.objects.get(user=staff)
    assert again.pk == first.pk
    assert again.refresh_token != first.refresh_token
    assert list(again.events.order_by("at", "id").values_list("kind", flat=True)) == [
        "connected",
        "reconnected",
    ]


def test_the_return_target_after_connecting_is_same_site_only(
    dana: Person, zywave: Sandbox
) -> None:
    response = connect(dana, zywave, next_url="//evil.example/x")
    assert response.status_code == 302
    # Three profiles, none chosen yet: the picker, carrying no `next` (home, the default).
    assert response["Location"] == "/zywave/profiles/"
    assert "evil" not in response["Location"]


# --- Reconnecting revokes the grant it replaced (hardening item 6) -----------------------------


def test_reconnecting_revokes_the_grant_it_replaced_once_the_new_tokens_are_stored(
    dana: Person, zywave: Sandbox, django_capture_on_commit_callbacks: Any
) -> None:
    assert connect(dana, zywave).status_code == 302
    old = Connection.objects.get(user=dana.user).refresh_token
    assert zywave.control("GET", f"tokens/{old}")["active"] is True
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert connect(dana, zywave).status_code == 302
    assert callbacks  # the revocation ran after the commit, not inside the transaction
    conn = Connection.objects.get(user=dana.user)
    assert conn.refresh_token != old
    assert zywave.control("GET", f"tokens/{old}")["active"] is False  # no live 30-day grant
    assert zywave.control("GET", f"tokens/{conn.refresh_token}")["active"] is True
    event = conn.events.get(kind=ConnectionEvent.Kind.OLD_GRANT_REVOKED)
    assert event.detail["revoked"] is True and event.detail["reason"] == ""
    assert old not in str(event.detail)  # a fingerprint, never the token


def test_a_failed_revocation_of_the_replaced_grant_is_recorded_and_the_reconnect_stands(
    dana: Person, zywave: Sandbox, django_capture_on_commit_callbacks: Any
) -> None:
    assert connect(dana, zywave).status_code == 302
    inject_fault(zywave, r"^/connect/revocation$", count=1, status=503)
    with django_capture_on_commit_callbacks(execute=True):
        assert connect(dana, zywave).status_code == 302
    conn = Connection.objects.get(user=dana.user)
    assert conn.status == Connection.Status.ACTIVE
    event = conn.events.get(kind=ConnectionEvent.Kind.OLD_GRANT_REVOKED)
    assert event.detail["revoked"] is False and event.detail["reason"]


# --- Disconnect frees the identity (hardening item 16) -----------------------------------------


def test_after_a_disconnect_another_portal_user_can_link_the_same_zywave_identity(
    dana: Person, omar: Person, zywave: Sandbox
) -> None:
    assert connect(dana, zywave).status_code == 302
    subject = Connection.objects.get(user=dana.user).zywave_subject
    assert dana.post("/zywave/disconnect/").status_code == 302
    assert not UserSocialAuth.objects.filter(user=dana.user).exists()
    answer = connect(omar, zywave)  # the same sandbox login: a shared agency account
    assert answer.status_code == 302 and "/zywave/profiles/" in answer["Location"]
    assert Connection.objects.get(user=omar.user).zywave_subject == subject
    assert UserSocialAuth.objects.get(uid=subject).user == omar.user
