"""Error pages with DEBUG off: a database that cannot be reached is a 503 that says to retry,
anything else a 500; neither needs the database to render."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.db import OperationalError
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture
def production(settings: Any, client: Client, staff: User) -> Client:
    settings.DEBUG = False
    client.raise_request_exception = False
    client.force_login(staff)
    return client


def failing_session(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    # A database cannot be made unreachable inside a test's transaction, so the session read
    # is made to fail as it does then (the drill "PostgreSQL restarted" stops a real server
    # and counts the 503s).
    def load(self: SessionStore) -> dict[str, Any]:
        raise error

    monkeypatch.setattr(SessionStore, "load", load)


def test_an_unreachable_database_answers_503_with_retry_after(
    production: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_session(monkeypatch, OperationalError("connection to server failed"))
    response = production.get("/zywave/accounts/")
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    page = response.content.decode()
    assert "Back in a moment" in page and "connection to server" not in page


def test_any_other_error_is_a_plain_500_page(
    production: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing_session(monkeypatch, RuntimeError("something internal"))
    response = production.get("/zywave/accounts/")
    assert response.status_code == 500
    assert "Retry-After" not in response
    page = response.content.decode()
    assert "Something went wrong" in page and "something internal" not in page
