"""The control API: key, faults, counters, data changes, settings and reset."""

from __future__ import annotations

import threading
import time
from email.utils import formatdate
from typing import Any

import requests

from tests.sandbox.conftest import AGENT_PROFILES, call, refresh
from tests.sandboxserver import Sandbox

ACCOUNTS = "/accounts/v2.0/account"
POLICIES = "/policies/v2.0/policy"
PROFILE = f"B {AGENT_PROFILES[2]}"


def test_the_control_api_needs_the_key(sandbox_clean: Sandbox) -> None:
    for headers in [{}, {"X-Sandbox-Key": "wrong"}]:
        response = requests.post(f"{sandbox_clean.url}/_sandbox/reset", headers=headers, timeout=30)
        assert response.status_code == 403


def test_a_fault_fires_exactly_n_times_then_the_api_answers_normally(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    sandbox_clean.control(
        "POST", "faults", path="^/accounts/", count=2, status=503, retry_after="7"
    )
    answers = [call(sandbox_clean, agent_token, ACCOUNTS, PROFILE) for _ in range(4)]
    assert [r.status_code for r in answers] == [503, 503, 200, 200]
    assert answers[0].headers["Retry-After"] == "7"


def test_a_fault_fires_exactly_n_times_under_concurrency(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    sandbox_clean.control("POST", "faults", path="^/accounts/", count=5, status=429)
    statuses: list[int] = []
    barrier = threading.Barrier(12)

    def hit() -> None:
        barrier.wait()
        statuses.append(call(sandbox_clean, agent_token, ACCOUNTS, PROFILE).status_code)

    threads = [threading.Thread(target=hit) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [200] * 7 + [429] * 5


def test_a_fault_only_matches_its_path_and_method(sandbox_clean: Sandbox, agent_token: str) -> None:
    sandbox_clean.control("POST", "faults", path="/contact$", method="GET", count=1, status=500)
    assert call(sandbox_clean, agent_token, ACCOUNTS, PROFILE).status_code == 200
    assert call(sandbox_clean, agent_token, "/accounts/v2.0/contact", PROFILE).status_code == 500


def test_a_fault_can_answer_a_raw_body_and_an_http_date_retry_after(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    when = formatdate(time.time() + 30, usegmt=True)
    sandbox_clean.control(
        "POST",
        "faults",
        path="^/accounts/",
        count=1,
        status=503,
        retry_after=when,
        body="<html>down</html>",
        content_type="text/html",
    )
    response = call(sandbox_clean, agent_token, ACCOUNTS, PROFILE)
    assert response.text == "<html>down</html>"
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Retry-After"] == when


def test_a_delay_fault_delays_one_request_then_is_spent(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    fault = sandbox_clean.control("POST", "faults", path="^/accounts/", count=1, delay_ms=600)
    sandbox_clean.control("POST", "counters/reset")
    started = time.monotonic()
    slow = call(sandbox_clean, agent_token, ACCOUNTS, PROFILE)
    # A lower bound only: the delay happened. How fast an undelayed answer is belongs in
    # benchmarks, not here.
    assert time.monotonic() - started >= 0.6
    assert slow.status_code == 200
    # The delayed request took the fault's only firing, so the next request cannot meet it.
    (spent,) = sandbox_clean.control("GET", "faults")["faults"]
    assert spent["id"] == fault["id"] and spent["remaining"] == 0
    assert call(sandbox_clean, agent_token, ACCOUNTS, PROFILE).status_code == 200
    assert sandbox_clean.control("GET", "faults")["faults"][0]["remaining"] == 0
    # Both were served by the API itself, the delayed one after its delay.
    assert sandbox_clean.counters()["api"] == {f"{ACCOUNTS}:200": 2}


def test_a_drip_fault_sends_its_body_a_byte_at_a_time(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    body = '{"items": []}'
    sandbox_clean.control(
        "POST", "faults", path="^/accounts/", status=200, stream="drip", delay_ms=50, body=body
    )
    started = time.monotonic()
    with requests.get(
        f"{sandbox_clean.url}{ACCOUNTS}",
        headers={"Authorization": f"Bearer {agent_token}", "Profile": PROFILE},
        stream=True,
        timeout=30,
    ) as response:
        assert response.status_code == 200 and "Content-Length" not in response.headers
        chunks = list(response.iter_content(chunk_size=None))  # one per HTTP chunk
    assert b"".join(chunks) == body.encode() and {len(chunk) for chunk in chunks} == {1}
    assert time.monotonic() - started >= len(body) * 0.05  # a lower bound: it dripped
    assert call(sandbox_clean, agent_token, ACCOUNTS, PROFILE).json()["items"]  # spent


def test_an_endless_fault_repeats_its_body_for_as_long_as_it_is_read(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    body = '{"items": [{}, '
    sandbox_clean.control(
        "POST", "faults", path="^/accounts/", status=200, stream="endless", body=body
    )
    read = b""
    with requests.get(
        f"{sandbox_clean.url}{ACCOUNTS}",
        headers={"Authorization": f"Bearer {agent_token}", "Profile": PROFILE},
        stream=True,
        timeout=30,
    ) as response:
        assert response.status_code == 200 and "Content-Length" not in response.headers
        for chunk in response.iter_content(chunk_size=65536):
            read += chunk
            if len(read) > 4 * 1024 * 1024:  # more than any answer sent whole
                break
    whole = len(read) // len(body)
    assert read[: whole * len(body)] == body.encode() * whole
    assert call(sandbox_clean, agent_token, ACCOUNTS, PROFILE).json()["items"]  # spent


def test_a_stream_fault_needs_a_known_kind_a_status_and_a_body(sandbox_clean: Sandbox) -> None:
    for fault in [
        {"stream": "trickle", "status": 200, "body": "x"},
        {"stream": "drip", "delay_ms": 50, "body": "x"},
        {"stream": "endless", "status": 200},
        {"stream": "endless", "status": 200, "body": "x", "content_type": "text/plain"},
    ]:
        response = requests.post(
            f"{sandbox_clean.url}/_sandbox/faults",
            json={"path": "^/accounts/", **fault},
            headers={"X-Sandbox-Key": sandbox_clean.control_key},
            timeout=30,
        )
        assert response.status_code == 400, fault
    assert sandbox_clean.control("GET", "faults") == {"faults": []}


def test_a_fault_on_the_token_endpoint_answers_refreshes(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens()
    sandbox_clean.control("POST", "faults", path="^/connect/token$", count=1, status=503)
    assert refresh(sandbox_clean, tokens["refresh_token"]).status_code == 503
    # The fault answered before the token was used, so the token still works.
    assert refresh(sandbox_clean, tokens["refresh_token"]).status_code == 200


def test_counters_count_token_requests_by_grant_type_and_outcome(sandbox_clean: Sandbox) -> None:
    tokens = sandbox_clean.obtain_tokens()
    sandbox_clean.control("POST", "counters/reset")
    refresh(sandbox_clean, tokens["refresh_token"])
    refresh(sandbox_clean, tokens["refresh_token"])
    assert sandbox_clean.counters()["token"] == {
        "refresh_token:success": 1,
        "refresh_token:invalid_grant": 1,
    }


def test_counters_count_api_requests_by_path_and_status(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    sandbox_clean.control("POST", "counters/reset")
    sandbox_clean.control("POST", "faults", path="^/accounts/", count=1, status=503)
    for _ in range(3):
        call(sandbox_clean, agent_token, ACCOUNTS, PROFILE)
    call(sandbox_clean, None, ACCOUNTS)
    assert sandbox_clean.counters()["api"] == {
        f"{ACCOUNTS}:503": 1,
        f"{ACCOUNTS}:200": 2,
        f"{ACCOUNTS}:401": 1,
    }
    sandbox_clean.control("POST", "counters/reset")
    assert sandbox_clean.counters() == {"token": {}, "api": {}}


def test_changing_accounts_bumps_updated_date_time(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    changed = sandbox_clean.control(
        "POST", "accounts/change", profile_id=AGENT_PROFILES[2], count=3, field="name"
    )
    assert len(changed["ids"]) == 3
    recent = call(
        sandbox_clean,
        agent_token,
        ACCOUNTS,
        PROFILE,
        **{"$filter": "updatedDateTime gt 2025-06-01T00:00:00Z"},
    ).json()["items"]
    assert {a["id"] for a in recent} >= set(changed["ids"])
    assert all("(rev " in a["name"] for a in recent if a["id"] in changed["ids"])


def test_archiving_accounts_keeps_them_visible_as_archived(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    before = sandbox_clean.control("GET", "accounts/count", profile_id=AGENT_PROFILES[2])
    archived = sandbox_clean.control(
        "POST", "accounts/archive", profile_id=AGENT_PROFILES[2], count=2
    )["ids"]
    after = sandbox_clean.control("GET", "accounts/count", profile_id=AGENT_PROFILES[2])
    assert after["archived"] == before["archived"] + 2
    assert after["accounts"] == before["accounts"]
    for account_id in archived:
        body = call(sandbox_clean, agent_token, f"{ACCOUNTS}/{account_id}", PROFILE).json()
        assert body["isArchived"] is True


def test_deleting_accounts_removes_them_and_their_contacts(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    before = sandbox_clean.control("GET", "accounts/count", profile_id=AGENT_PROFILES[2])
    deleted = sandbox_clean.control(
        "POST", "accounts/delete", profile_id=AGENT_PROFILES[2], count=1
    )["ids"]
    after = sandbox_clean.control("GET", "accounts/count", profile_id=AGENT_PROFILES[2])
    assert after["accounts"] == before["accounts"] - 1
    assert after["contacts"] < before["contacts"]
    assert call(sandbox_clean, agent_token, f"{ACCOUNTS}/{deleted[0]}", PROFILE).status_code == 404


def test_archiving_accounts_archives_their_contacts_and_policies(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    archived = sandbox_clean.control(
        "POST", "accounts/archive", profile_id=AGENT_PROFILES[2], count=2
    )["ids"]

    def get(path: str) -> Any:
        return call(sandbox_clean, agent_token, path, PROFILE).json()

    for account_id in archived:
        account = get(f"{ACCOUNTS}/{account_id}")
        contacts = get(f"{ACCOUNTS}/{account_id}/contacts")["items"]
        policies = get(f"{ACCOUNTS}/{account_id}/policies")["items"]
        assert contacts and policies
        for record in contacts + policies:
            assert (record["isArchived"], record["isActive"]) == (True, False)
            # Bumped with the account, so that an incremental read sees the archiving.
            assert record["updatedDateTime"] == account["updatedDateTime"]


def test_deleting_accounts_removes_their_policies(sandbox_clean: Sandbox, agent_token: str) -> None:
    before = sandbox_clean.control("GET", "accounts/count", profile_id=AGENT_PROFILES[2])
    (account_id,) = sandbox_clean.control(
        "POST", "accounts/delete", profile_id=AGENT_PROFILES[2], count=1
    )["ids"]
    after = sandbox_clean.control("GET", "accounts/count", profile_id=AGENT_PROFILES[2])
    left = call(
        sandbox_clean,
        agent_token,
        POLICIES,
        PROFILE,
        **{"$filter": f"accountId eq {account_id}"},
    ).json()
    assert left["totalCount"] == 0
    assert 1 <= before["policies"] - after["policies"] <= 3


def test_the_counts_cover_every_resource_of_the_profiles_agency(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    counts = sandbox_clean.control("GET", "accounts/count", profile_id=AGENT_PROFILES[2])
    assert set(counts) == {"accounts", "contacts", "policies", "archived"}
    for name, path in [
        ("accounts", ACCOUNTS),
        ("contacts", "/accounts/v2.0/contact"),
        ("policies", POLICIES),
    ]:
        total = call(sandbox_clean, agent_token, path, PROFILE, **{"$top": 0}).json()["totalCount"]
        assert counts[name] == total, name


def test_reset_restores_settings_and_clears_faults(sandbox_clean: Sandbox) -> None:
    sandbox_clean.control("POST", "settings", envelope="array", refresh_mode="reuse")
    sandbox_clean.control("POST", "clock", offset_seconds=999)
    sandbox_clean.control("POST", "faults", path=".", count=5, status=500)
    settings = sandbox_clean.reset()["settings"]
    assert settings["envelope"] == "items"
    assert settings["refresh_mode"] == "one-time"
    assert settings["clock_offset"] == 0
    assert sandbox_clean.control("GET", "faults") == {"faults": []}


def test_an_unknown_setting_is_refused(sandbox_clean: Sandbox) -> None:
    response = requests.post(
        f"{sandbox_clean.url}/_sandbox/settings",
        json={"envelope": "xml"},
        headers={"X-Sandbox-Key": sandbox_clean.control_key},
        timeout=30,
    )
    assert response.status_code == 400


def test_registering_a_client_lets_it_run_the_code_flow(sandbox_clean: Sandbox) -> None:
    redirect_uri = "http://127.0.0.1:9999/oauth/complete/zywave/"
    sandbox_clean.register_client("live-client", "live-secret", [redirect_uri])
    tokens = sandbox_clean.obtain_tokens(
        client_id="live-client", client_secret="live-secret", redirect_uri=redirect_uri
    )
    assert tokens["token_type"] == "Bearer"


def test_reset_puts_back_the_seeded_data_and_the_clients_an_earlier_test_changed(
    sandbox_clean: Sandbox, agent_token: str
) -> None:
    sandbox = sandbox_clean
    profile_id = AGENT_PROFILES[2]

    def state() -> dict[str, object]:
        counts = sandbox.control("GET", f"accounts/count?profile_id={profile_id}")
        first_page = call(sandbox, agent_token, ACCOUNTS, PROFILE).json()
        return {
            "counts": counts,
            "first_page": first_page,
            "profiles": sandbox.profiles(),
            # Sends neither redirect URIs nor scopes, so it changes neither and reports both.
            "portal_dev": sandbox.control(
                "POST", "clients", client_id="portal-dev", client_secret="portal-dev-secret"
            ),
        }

    before = state()
    profiles = before["profiles"]
    assert isinstance(profiles, list) and any(p["active"] for p in profiles)
    # What tests do to the sandbox: delete, archive and change accounts, switch the active
    # profile, take a profile away, narrow the portal's client and register another one.
    sandbox.control("POST", "accounts/delete", profile_id=profile_id, count=3)
    sandbox.control("POST", "accounts/archive", profile_id=profile_id, count=2)
    sandbox.control("POST", "accounts/change", profile_id=profile_id, count=2, field="name")
    sandbox.control("POST", "users/agent@example.com/active-profile", profile_id=profile_id)
    sandbox.control("POST", f"users/agent@example.com/profiles/{AGENT_PROFILES[0]}/remove")
    sandbox.register_client("portal-dev", "portal-dev-secret", [], allowed_scopes="openid")
    sandbox.register_client("stray-client", "stray-secret", ["http://127.0.0.1:9/cb/"])
    changed = state()
    assert changed["counts"] != before["counts"]
    assert changed["profiles"] != before["profiles"]
    assert changed["portal_dev"] != before["portal_dev"]  # the oracle can tell them apart

    assert sandbox.reset()["reseeded"] is False  # a plain reset leaves data alone
    assert state()["counts"] == changed["counts"]
    assert sandbox.reset(restore=True)["reseeded"] is True
    after = state()
    assert after["counts"] == before["counts"]
    assert after["profiles"] == before["profiles"]
    assert after["portal_dev"] == before["portal_dev"]
    # Same records, same ids and content: the seed is deterministic.
    assert after["first_page"] == before["first_page"]
    # The stray client is gone: the control API cannot update it without a secret.
    answer = requests.post(
        f"{sandbox.url}/_sandbox/clients",
        json={"client_id": "stray-client"},
        headers={"X-Sandbox-Key": sandbox.control_key},
        timeout=30,
    )
    assert answer.status_code == 400 and "client_secret is required" in answer.text
    # And the portal's client still runs the code flow with its real secret.
    assert sandbox.obtain_tokens()["token_type"] == "Bearer"


def test_a_reset_after_no_data_change_does_not_reseed(sandbox_clean: Sandbox) -> None:
    assert sandbox_clean.reset(restore=True)["reseeded"] is False
