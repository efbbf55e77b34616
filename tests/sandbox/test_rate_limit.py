"""The sandbox's app-wide rate limit (runtime settings `rate_limit`, `rate_limit_burst`)."""

from __future__ import annotations

import threading
import time

import requests

from tests.sandbox.conftest import AGENT_PROFILES, call, refresh
from tests.sandboxserver import Sandbox, SandboxError

ACCOUNTS = "/accounts/v2.0/account"
PROFILE = f"B {AGENT_PROFILES[0]}"


def test_without_a_limit_the_api_never_answers_429(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    assert sandbox_clean.control("GET", "settings")["rate_limit"] == 0
    statuses = {call(sandbox_clean, agent_token, ACCOUNTS, PROFILE).status_code for _ in range(30)}
    assert statuses == {200}
    assert "limiter" not in sandbox_clean.counters()


def test_a_burst_beyond_the_limit_is_answered_429_with_retry_after(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    # One request every 5 s, bursts of 3: three go through, the next ones wait about 5 s.
    sandbox_clean.control("POST", "settings", rate_limit=0.2, rate_limit_burst=3)
    answers = [call(sandbox_clean, agent_token, ACCOUNTS, PROFILE) for _ in range(6)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429, 429]
    refused = answers[3]
    assert refused.headers["Retry-After"] == "5"  # 4.9... seconds, rounded up
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json()["status"] == 429
    assert sandbox_clean.control("GET", "rate-limit") == {
        "rate_limit": 0.2,
        "rate_limit_burst": 3,
        "allowed": 3,
        "limited": 3,
    }
    counters = sandbox_clean.counters()
    assert counters["limiter"] == {"allowed": 3, "limited": 3}
    assert counters["api"] == {f"{ACCOUNTS}:200": 3, f"{ACCOUNTS}:429": 3}


def test_retry_after_is_whole_seconds_and_at_least_one(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    # 20 a second, bursts of one: the next slot is 50 ms away, told as 1 s.
    sandbox_clean.control("POST", "settings", rate_limit=20, rate_limit_burst=1)
    waits = set()
    for _ in range(10):
        answer = call(sandbox_clean, agent_token, ACCOUNTS, PROFILE)
        if answer.status_code == 429:
            waits.add(answer.headers["Retry-After"])
    assert waits == {"1"}


def test_the_limit_holds_for_all_the_servers_processes_together(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    """Eight clients hammer the API for 3 s, one new connection per request, so that both of
    gunicorn's worker processes (they share the listening socket) answer. At 10 a second with
    bursts of 10, at most 10 + 10 x elapsed may go through in all: a limit counted per process
    would let through nearly twice that."""
    sandbox_clean.control("POST", "settings", rate_limit=10, rate_limit_burst=10)
    statuses: list[int] = []
    lock = threading.Lock()
    started = time.monotonic()
    ends = started + 3

    def hammer() -> None:
        while time.monotonic() < ends:
            status = call(sandbox_clean, agent_token, ACCOUNTS, PROFILE).status_code
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - started
    allowed = statuses.count(200)
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > allowed  # it was pushed well past the limit
    assert 10 + 10 * 3 * 0.9 <= allowed <= 10 + 10 * elapsed + 1
    assert sandbox_clean.control("GET", "rate-limit")["limited"] == statuses.count(429)


def test_the_token_endpoint_and_the_control_api_are_not_limited(
    sandbox_clean: Sandbox, agent: dict
) -> None:
    sandbox_clean.control("POST", "settings", rate_limit=0.1, rate_limit_burst=1)
    assert call(sandbox_clean, agent["access_token"], ACCOUNTS, PROFILE).status_code == 200
    assert call(sandbox_clean, agent["access_token"], ACCOUNTS, PROFILE).status_code == 429
    refreshed = refresh(sandbox_clean, agent["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    for _ in range(5):
        sandbox_clean.counters()  # the control API answers (SandboxError otherwise)
    assert sandbox_clean.counters()["token"]["refresh_token:success"] == 1


def test_reset_lifts_the_limit_and_clears_its_counts(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    sandbox_clean.control("POST", "settings", rate_limit=0.1, rate_limit_burst=1)
    call(sandbox_clean, agent_token, ACCOUNTS, PROFILE)
    assert call(sandbox_clean, agent_token, ACCOUNTS, PROFILE).status_code == 429
    settings = sandbox_clean.reset()["settings"]
    assert (settings["rate_limit"], settings["rate_limit_burst"]) == (0, 0)
    assert call(sandbox_clean, agent_token, ACCOUNTS, PROFILE).status_code == 200
    assert sandbox_clean.control("GET", "rate-limit")["limited"] == 0


def test_a_negative_or_huge_limit_is_refused(sandbox_clean: Sandbox) -> None:
    for setting in ({"rate_limit": -1}, {"rate_limit": 10**6}, {"rate_limit_burst": -2}):
        try:
            sandbox_clean.control("POST", "settings", **setting)
        except SandboxError as error:
            assert "400" in str(error)
        else:
            raise AssertionError(f"{setting} was accepted")
    assert requests.get(f"{sandbox_clean.url}/.well-known/openid-configuration", timeout=30).ok
