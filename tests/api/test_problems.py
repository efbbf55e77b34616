"""Every error under /api/ is `application/problem+json` (RFC 9457), never HTML and never a
redirect: REST framework's own refusals, unknown routes, the per-key throttle, and what Django
answers itself (a crash, an unreachable database, a request it will not read)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import OperationalError
from django.test import Client

from integrations.api import keys, views
from tests.api.callers import System, problem, system_of
from tests.conftest import connection

pytestmark = pytest.mark.django_db

METHODS = ["get", "post", "put", "patch", "delete", "head", "options"]


@pytest.fixture
def reader(staff: User) -> System:
    return system_of(staff, "read")


@pytest.fixture
def production(settings: Any) -> Client:
    """Django's own error handlers answer, as with DEBUG off (the test client re-raises a
    view's exception by default)."""
    settings.DEBUG = False
    client = Client(enforce_csrf_checks=True)
    client.raise_request_exception = False
    return client


def assert_problem_head(response: Any, status: int) -> None:
    """A HEAD answer: the problem's status and media type, no body."""
    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path",
    [
        "/api",
        "/api/",
        "/api/v1",
        "/api/v1/",
        "/api/v2/accounts",
        "/api/v1/nothing",
        "/api/v1/accounts/",
        "/api/v1/accounts/A1/",
        "/api/v1/syncs/",
        "/api/v1/syncs/x",
        "/api/v1/connection/",
        "/api/schema",
        "/api/v1/accounts/a%2Fb",
        "/api/v1/zywave",
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_an_unknown_route_is_a_404_problem_for_every_method(
    production: Client, path: str, method: str
) -> None:
    """Never APPEND_SLASH's redirect, which would turn a POST into a GET (or, with DEBUG on,
    into a 500), and never the CSRF page: the client enforces CSRF as a browser would."""
    response = getattr(production, method)(path)
    if method == "head":
        assert_problem_head(response, 404)
    else:
        assert problem(response, 404)["code"] == "not_found"


def test_a_trailing_slash_is_answered_with_the_path_meant(reader: System) -> None:
    assert (
        "Did you mean /api/v1/accounts?" in problem(reader.get("/api/v1/accounts/"), 404)["detail"]
    )
    assert "Did you mean /api/docs/?" in problem(reader.get("/api/docs"), 404)["detail"]
    assert "Did you mean" not in problem(reader.get("/api/v1/nothing"), 404)["detail"]


def test_a_post_with_a_trailing_slash_is_not_redirected_with_append_slash_on(
    production: Client, settings: Any, reader: System
) -> None:
    settings.APPEND_SLASH = True
    settings.DEBUG = True  # where Django would raise rather than redirect a POST
    for client in (production, reader):
        response = client.post("/api/v1/syncs/", "{}", content_type="application/json")
        assert problem(response, 404)["code"] == "not_found"


def test_a_wrong_method_is_405_with_allow(staff: User) -> None:
    response = system_of(staff).delete("/api/v1/syncs")  # a key with every scope
    assert problem(response, 405)["code"] == "method_not_allowed"
    assert set(response["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert "DELETE" not in response["Allow"]


def test_a_wrong_method_on_the_docs_pages_is_405_with_allow(client: Client) -> None:
    for page in ("/api/docs/", "/api/redoc/", "/api/schema/"):
        response = client.delete(page)
        assert problem(response, 405)["code"] == "method_not_allowed"
        assert "GET" in response["Allow"] and "DELETE" not in response["Allow"]


def test_the_api_answers_json_whatever_accept_asks(reader: System) -> None:
    for accept in ("text/html", "application/xml", "image/png", "*/*;q=0"):
        answer = reader.get("/api/v1/connection", HTTP_ACCEPT=accept)
        assert answer.status_code == 200 and answer["Content-Type"] == "application/json"
        error = reader.get("/api/v1/accounts", {"page_size": "0"}, HTTP_ACCEPT=accept)
        problem(error, 400)


def test_the_schema_answers_406_for_what_it_cannot_render(client: Client) -> None:
    body = problem(client.get("/api/schema/", HTTP_ACCEPT="text/html"), 406)
    assert body["code"] == "not_acceptable"


def test_a_body_of_another_media_type_is_415(staff: User) -> None:
    system = system_of(staff, "sync")
    connection(staff)
    for kind in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        body = problem(system.post("/api/v1/syncs", "full=true", content_type=kind), 415)
        assert body["code"] == "unsupported_media_type"


def test_a_body_that_is_not_json_is_400(staff: User) -> None:
    system = system_of(staff, "sync")
    body = problem(system.post("/api/v1/syncs", "{", content_type="application/json"), 400)
    assert body["code"] == "parse_error"


def test_a_body_over_the_upload_limit_is_413_before_it_is_read(staff: User, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    system = system_of(staff, "sync")
    connection(staff)
    big = json.dumps({"full": False, "pad": "x" * 1000})
    body = problem(system.post("/api/v1/syncs", big, content_type="application/json"), 413)
    assert body["code"] == "request_too_large" and "1000 bytes" in body["detail"]
    small = system.post(
        "/api/v1/syncs", json.dumps({"full": False}), content_type="application/json"
    )
    assert small.status_code == 202


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer zwk_short",
        f"Bearer zwk_{'a' * 8}_{'b' * 32}",
    ],
)
def test_a_missing_or_bad_key_is_401_with_a_bearer_challenge(
    staff: User, authorization: str | None
) -> None:
    extra = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = Client().get("/api/v1/connection", **extra)  # type: ignore[arg-type]
    body = problem(response, 401)
    assert body["code"] in {"not_authenticated", "authentication_failed"}
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_a_key_without_the_scope_is_403(staff: User) -> None:
    body = problem(system_of(staff, "read").post("/api/v1/syncs"), 403)
    assert body["code"] == "permission_denied" and "`sync`" in body["detail"]


def test_the_per_key_throttle_is_429_with_retry_after(
    staff: User, other_staff: User, settings: Any
) -> None:
    settings.API_RATE_LIMIT = 3
    system = system_of(staff, "read")
    answers = [system.get("/api/v1/connection") for _ in range(5)]
    refused = [a for a in answers if a.status_code == 429]
    # Three a minute: the 4th and 5th are refused (or only the 5th, if a minute turned).
    assert len(refused) in (1, 2) and answers[0].status_code == 200
    body = problem(refused[-1], 429)
    assert body["code"] == "throttled"
    assert 1 <= int(refused[-1]["Retry-After"]) <= 60
    assert f"{refused[-1]['Retry-After']} s" in body["detail"]
    # The count is the key's: another key (of the same person, or not) is not refused.
    assert system_of(staff, "read").get("/api/v1/connection").status_code == 200
    assert system_of(other_staff, "read").get("/api/v1/connection").status_code == 200


def test_a_crash_inside_a_view_is_a_500_problem_that_tells_nothing(
    production: Client, staff: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(request: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(views, "connection_of", crash)
    _key, secret = keys.issue(staff, "crash", ["read", "sync"])
    for answer in (
        production.get("/api/v1/connection", HTTP_AUTHORIZATION=f"Bearer {secret}"),
        production.post(
            "/api/v1/syncs",
            "{}",
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {secret}",
        ),
    ):
        body = problem(answer, 500)
        assert body["code"] == "server_error"
        assert "secret internals" not in answer.content.decode()
        assert "Retry-After" not in answer


def test_an_unreachable_database_is_a_503_problem_with_retry_after(
    production: Client, staff: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database cannot be made unreachable inside a test's transaction, so the key's lookup
    # fails as it does then (the drill "PostgreSQL restarted" stops a real server).
    def unreachable(self: Any, request: Any) -> None:
        raise OperationalError("connection to server at 10.0.0.5 failed")

    monkeypatch.setattr(keys.ApiKeyAuthentication, "authenticate", unreachable)
    response = production.get("/api/v1/accounts", HTTP_AUTHORIZATION="Bearer zwk_x")
    body = problem(response, 503)
    assert body["code"] == "unavailable" and response["Retry-After"] == "30"
    assert "10.0.0.5" not in response.content.decode()


def test_a_host_not_allowed_is_a_400_problem_under_the_api(production: Client) -> None:
    response = production.get("/api/v1/connection", HTTP_HOST="evil.example")
    body = problem(response, 400)
    assert body["code"] == "bad_request" and "Host" in body["detail"]
    assert "evil.example" not in response.content.decode()


def test_too_many_parameters_is_a_400_problem(
    production: Client, staff: User, settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    _key, secret = keys.issue(staff, "many", ["read"])
    query = "&".join(f"p{n}=1" for n in range(11))
    response = production.get(f"/api/v1/accounts?{query}", HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = problem(response, 400)
    assert body["code"] == "bad_request" and "parameters" in body["detail"]


def test_the_same_refusals_outside_the_api_stay_html(production: Client) -> None:
    bad_host = production.get("/login/", HTTP_HOST="evil.example")
    assert bad_host.status_code == 400 and bad_host["Content-Type"].startswith("text/html")
    missing = production.get("/no/such/page/")
    assert missing.status_code == 404 and missing["Content-Type"].startswith("text/html")
