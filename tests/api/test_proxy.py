"""The profiled proxy, through the real sandbox: what goes out, what comes back, what is
refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User

from integrations.models import Connection
from tests.api.callers import System, problem, system_of
from tests.conftest import connection
from tests.integrations.flows import inject_fault
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.slow

ACCOUNTS = "/api/v1/zywave/accounts/v2.0/account"
INDUSTRIES = "/api/v1/zywave/industries/v3.0/industries"


def refreshes(sandbox: Sandbox) -> int:
    return int(sandbox.counters()["token"].get("refresh_token:success", 0))


@pytest.fixture
def linked(staff: User, zywave: Sandbox) -> Connection:
    conn = connection(staff, zywave)
    zywave.control("POST", "counters/reset")
    return conn


@pytest.fixture
def system(linked: Connection) -> System:
    return system_of(linked.user, "proxy", "proxy:write")


def test_v2_routes_get_the_profile_and_v3_none(system: System, zywave: Sandbox) -> None:
    accounts = system.get(ACCOUNTS, {"$top": "2", "$orderby": "id"})
    assert accounts.status_code == 200, accounts.content[:300]
    assert accounts["Content-Type"].startswith("application/json")
    assert len(json.loads(accounts.content)["items"]) == 2
    profiles = system.get("/api/v1/zywave/profiles/V2.0/Profile/B")
    assert profiles.status_code == 200
    industries = system.get(INDUSTRIES)
    assert industries.status_code == 200 and json.loads(industries.content)["items"]
    seen = zywave.received_headers()
    assert "profile" in seen["/accounts/v2.0/account"]
    assert "profile" in seen["/profiles/V2.0/Profile/B"]
    assert "profile" not in seen.get("/industries/v3.0/industries", [])


def test_the_callers_own_credentials_and_other_headers_stay_behind(
    system: System, zywave: Sandbox
) -> None:
    answer = system.get(
        INDUSTRIES,
        HTTP_PROFILE="Token forged",
        HTTP_COOKIE="sessionid=abc",
        HTTP_X_FORWARDED_FOR="10.0.0.1",
        HTTP_X_CUSTOM="1",
        HTTP_ACCEPT_LANGUAGE="en",
    )
    # The key itself is not the bearer Zywave saw: the sandbox accepted its own token.
    assert answer.status_code == 200
    assert zywave.received_headers()["/industries/v3.0/industries"] == ["accept-language"]


def test_a_401_refreshes_once_and_asks_again(system: System, zywave: Sandbox) -> None:
    inject_fault(zywave, "^/accounts/v2.0/account$", status=401)
    assert system.get(ACCOUNTS, {"$top": "1"}).status_code == 200
    assert refreshes(zywave) == 1


def test_a_second_401_is_a_problem_not_a_challenge(system: System, zywave: Sandbox) -> None:
    inject_fault(zywave, "^/accounts/v2.0/account$", status=401, count=2)
    body = problem(system.get(ACCOUNTS), 502)
    assert body["code"] == "zywave_refused_token"
    assert refreshes(zywave) == 1


def test_429_and_retry_after_pass_through(system: System, zywave: Sandbox) -> None:
    inject_fault(zywave, "^/accounts/v2.0/account$", status=429, retry_after="7")
    answer = system.get(ACCOUNTS)
    assert answer.status_code == 429 and answer["Retry-After"] == "7"


@pytest.mark.parametrize(
    "path",
    [
        "connect/userinfo",  # Zywave, but not its API
        "_sandbox/counters",
        "accounts/../_sandbox/counters",
        "accounts/v2.0/./account",
        "accounts/v2.0/..;/account",  # read as `..` by some servers
        "accounts/.../v2.0/account",
        "accounts//v2.0/account",
        "accounts/v2.0/account%252F..",  # percent-encoded twice
        "accounts%2F..%2F_sandbox/counters",  # an encoded slash, decoded once by the server
        "accounts/v2.0/account%3Fx=1",  # a decoded `?` would end the path
        "accounts\\..\\_sandbox",
        "",
    ],
)
def test_paths_outside_the_allow_list_or_not_canonical_are_refused(
    system: System, zywave: Sandbox, path: str
) -> None:
    answer = system.get(f"/api/v1/zywave/{path}")
    assert problem(answer, answer.status_code)["status"] in (400, 403)
    assert sum(zywave.counters()["api"].values()) == 0
    assert "_sandbox" not in json.dumps(zywave.counters()["api"])


def test_the_allow_list_is_a_setting(system: System, zywave: Sandbox, settings: Any) -> None:
    settings.ZYWAVE_PROXY_ALLOW = ["industries/"]
    assert problem(system.get(ACCOUNTS), 403)["code"] == "path_not_allowed"
    assert system.get(INDUSTRIES).status_code == 200


def test_a_body_over_the_cap_is_refused_before_zywave(
    system: System, zywave: Sandbox, settings: Any
) -> None:
    settings.ZYWAVE_PROXY_MAX_REQUEST_BYTES = 1024
    body = problem(system.post(ACCOUNTS, "x" * 2048, content_type="application/json"), 413)
    assert body["code"] == "request_too_large"
    assert sum(zywave.counters()["api"].values()) == 0


def test_an_answer_over_the_cap_is_refused(system: System, zywave: Sandbox, settings: Any) -> None:
    settings.ZYWAVE_MAX_RESPONSE_BYTES = 65536
    big = json.dumps({"items": ["x" * 70000]})
    inject_fault(
        zywave, "^/accounts/v2.0/account$", status=200, body=big, content_type="application/json"
    )
    assert problem(system.get(ACCOUNTS), 502)["code"] == "response_too_large"


def test_write_methods_are_forwarded_with_their_body(system: System, zywave: Sandbox) -> None:
    # The sandbox's accounts route is read-only: its 405 (an empty body) comes back as a
    # problem with Zywave's status, which proves the method reached Zywave.
    answer = system.post(ACCOUNTS, json.dumps({"name": "New"}), content_type="application/json")
    assert problem(answer, 405)["zywave_status"] == 405
    assert zywave.counters()["api"] == {"/accounts/v2.0/account:405": 1}


def test_zywave_json_errors_come_back_as_they_came(system: System, zywave: Sandbox) -> None:
    detail = system.get("/api/v1/zywave/accounts/v2.0/account/999999999")
    assert detail.status_code == 404
    assert detail["Content-Type"].startswith("application/problem+json")
    assert json.loads(detail.content)["status"] == 404


def test_an_html_error_page_of_zywave_becomes_a_problem(system: System, zywave: Sandbox) -> None:
    inject_fault(
        zywave,
        "^/accounts/v2.0/account$",
        status=502,
        body="<html>Bad gateway</html>",
        content_type="text/html",
    )
    body = problem(system.get(ACCOUNTS), 502)
    assert body["zywave_status"] == 502 and "<html>" not in json.dumps(body)


def test_zywave_unreachable_is_502(system: System, settings: Any) -> None:
    settings.ZYWAVE_API_URL = "http://127.0.0.1:9"  # the discard port: nothing listens
    assert problem(system.get(ACCOUNTS), 502)["code"] == "zywave_unreachable"


def test_zywave_too_slow_is_504(system: System, zywave: Sandbox) -> None:
    inject_fault(zywave, "^/accounts/v2.0/account$", delay_ms=4500)
    assert problem(system.get(ACCOUNTS), 504)["code"] == "zywave_timeout"


def test_a_connection_needing_reauthorization_is_409_with_the_action(
    system: System, linked: Connection, zywave: Sandbox
) -> None:
    Connection.objects.filter(pk=linked.pk).update(status=Connection.Status.REAUTH_REQUIRED)
    body = problem(system.get(ACCOUNTS), 409)
    assert body["action"] == "reconnect"
    assert sum(zywave.counters()["api"].values()) == 0


def test_v2_without_a_profile_is_409_and_v3_still_works(other_staff: User, zywave: Sandbox) -> None:
    connection(other_staff, zywave, profile=False)
    system = system_of(other_staff, "proxy")
    assert problem(system.get(ACCOUNTS), 409)["action"] == "choose_profile"
    assert system.get(INDUSTRIES).status_code == 200


def test_get_needs_proxy_and_other_methods_proxy_write(linked: Connection) -> None:
    reader = system_of(linked.user, "proxy")
    assert problem(reader.post(ACCOUNTS, "{}", content_type="application/json"), 403)
    writer = system_of(linked.user, "proxy:write")
    assert problem(writer.get(ACCOUNTS), 403)


def test_profile_tokens_never_reach_the_caller(system: System, zywave: Sandbox) -> None:
    """Zywave's profile detail carries the ProfileToken: the proxy takes it out, in any key
    case, so a `proxy` key cannot read what the portal keeps encrypted."""
    listed = system.get("/api/v1/zywave/profiles/V2.0/Profile/B")
    assert listed.status_code == 200
    ids = [profile["id"] for profile in zywave.profiles()]
    answers = [listed.content]
    for key_case in ("pascal", "camel"):
        zywave.control("POST", "settings", key_case=key_case)
        for profile_id in ids:
            detail = system.get(f"/api/v1/zywave/profiles/V2.0/Profile/B/{profile_id}")
            assert detail.status_code == 200 and json.loads(detail.content)
            answers.append(detail.content)
    text = b"".join(answers).decode()
    assert "profiletoken" not in text.lower()
    tokens = [profile["profile_token"] for profile in zywave.profiles()]
    assert tokens and all(token not in text for token in tokens)


def test_a_retry_after_on_an_error_without_json_still_reaches_the_caller(
    system: System, zywave: Sandbox
) -> None:
    inject_fault(
        zywave, "^/accounts/v2.0/account$", status=429, retry_after="7", body="",
        content_type="text/plain",
    )  # fmt: skip
    answer = system.get(ACCOUNTS)
    assert problem(answer, 429)["zywave_status"] == 429
    assert answer["Retry-After"] == "7"


def test_a_spent_rate_budget_is_a_429_with_retry_after_and_nothing_sent(
    system: System, zywave: Sandbox
) -> None:
    from integrations import ratelimit

    # Zywave paused the app for 30 s (a 429 seen by any process): a caller waiting on the
    # proxy is told when to come back instead of being held for 30 s.
    ratelimit.pause(30)
    answer = system.get(ACCOUNTS, {"$top": "1"})
    body = problem(answer, 429)
    assert body["code"] == "rate_budget_spent"
    assert 29 <= int(answer["Retry-After"]) <= 30
    assert not any(key.startswith("/accounts/") for key in zywave.counters().get("api", {}))
