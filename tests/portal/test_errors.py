"""Error pages with DEBUG off: a database that cannot be reached is a 503 that says to retry,
anything else a 500; neither needs the database to render. Under /api/ the same answers, and
Django's 400, are problem+json (tests/api/test_problems.py drives them through real requests)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.core.exceptions import (
    DisallowedHost,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
)
from django.db import OperationalError
from django.test import Client, RequestFactory

from portal import errors

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


# --- Under /api/: the same answers as problem+json ----------------------------------------


def handled(handler: Any, path: str, error: Exception) -> Any:
    """What `handler` answers for `path` while `error` is being handled, as Django calls it."""
    request = RequestFactory().get(path)
    try:
        raise error
    except Exception:
        return handler(request)


@pytest.mark.parametrize("path", ["/api/v1/accounts", "/api/docs/", "/api/", "/api"])
def test_a_crash_under_the_api_is_a_500_problem(path: str) -> None:
    response = handled(errors.server_error, path, RuntimeError("something internal"))
    assert response.status_code == 500
    assert response["Content-Type"] == "application/problem+json"
    body = json.loads(response.content)
    assert body["code"] == "server_error" and "internal" not in response.content.decode()


def test_an_unreachable_database_under_the_api_is_a_503_problem_with_retry_after() -> None:
    response = handled(errors.server_error, "/api/v1/syncs", OperationalError("no server"))
    assert response.status_code == 503 and response["Retry-After"] == "30"
    assert json.loads(response.content)["code"] == "unavailable"


def test_only_paths_under_api_get_problems() -> None:
    for path in ("/apiary/", "/zywave/accounts/", "/apis"):
        response = handled(errors.server_error, path, RuntimeError("x"))
        assert response["Content-Type"].startswith("text/html"), path


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (DisallowedHost("Invalid HTTP_HOST header: 'evil.example'"), "Host header"),
        (RequestDataTooBig("too big"), "body"),
        (TooManyFieldsSent("too many"), "parameters"),
        (SuspiciousOperation("other"), "malformed"),
    ],
)
def test_a_request_django_refuses_is_a_400_problem_under_the_api(
    error: Exception, words: str
) -> None:
    response = errors.bad_request(RequestFactory().get("/api/v1/accounts"), error)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    body = json.loads(response.content)
    assert body["code"] == "bad_request" and words in body["detail"]
    assert "evil.example" not in response.content.decode()


def test_a_request_django_refuses_elsewhere_is_its_html_400_page() -> None:
    response = errors.bad_request(RequestFactory().get("/login/"), DisallowedHost("x"))
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
