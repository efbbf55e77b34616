"""The short versions of the reliability drills (`make drills` runs the full ones).

One run of `tests/drills/run_drills.py --short` (its own processes: the sandbox, gunicorn, two
Celery workers, beat; database `portal_drills_short`, a Redis server of its own on a free port)
feeds every test here; each test asserts one drill's correctness figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(660)]


@pytest.fixture(scope="module")
def drills(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("drills") / "results.json"
    run = subprocess.run(
        [sys.executable, "tests/drills/run_drills.py", "--short", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if not out.exists():
        pytest.fail(f"the drills did not run:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    rows = json.loads(out.read_text())["drills"]
    return {row["drill"]: row for row in rows}


def figures(drills: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    row = drills.get(name)
    assert row is not None, f"no row for {name}: {sorted(drills)}"
    assert not row["error"], row["error"]
    failed = [check for check, ok in row["checks"].items() if not ok]
    assert not failed, f"{name}: {failed}; {row['measured']}"
    return dict(row["figures"])


def test_connect_burst(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Load: connect burst")
    assert f["failures"] == 0 and f["server_errors"] == 0 and f["wrong_owner"] == 0
    assert f["connections"] == f["flows"] == f["distinct_state"] == f["distinct_pkce"]


def test_token_endpoint_outage(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Token endpoint 500s")
    assert f["tokens_lost"] == 0 and f["wrongly_reauth"] == 0
    assert f["connections_over_bound"] == 0


def test_invalid_grant(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "invalid_grant")
    assert f["victim_status"] == "reauth_required"
    assert f["invalid_grant_first"] == f["invalid_grant_total"] == 1


def test_rate_limits(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "429 with Retry-After")
    assert f["early_requests"] == 0 and f["worker_syncs_succeeded"] == f["worker_syncs"]


def test_worker_kills(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Worker SIGKILL mid-sync")
    assert f["syncs_lost"] == 0 and f["duplicates"] == 0 and not f["mirror_mismatches"]


def test_kill_inside_a_refresh(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Worker SIGKILL inside a token refresh")
    assert f["refresh_successes"] == 1 and f["invalid_grant"] == 0


def test_hanging_endpoints(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "API and token endpoint hanging")
    # Each call ended because its read timeout fired, not because the clock says so.
    assert f["api_call_outcome"] == "ZywaveTimeout"
    assert f["api_call_request_errors"][-1] == f["token_call_request_errors"][-1] == "ReadTimeout"
    assert f["token_timeout_recorded"] is True
    assert f["worker_syncs_succeeded"] == f["worker_syncs"]
    assert f["consumed_token_presented_again"] == 1


def test_lost_refresh_answer_through_a_proxy(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Lost refresh response through a proxy")
    assert f["zywave_answered"] == [200] and f["status_after_the_loss"] == "active"
    assert f["consumed_token_presented_again"] == 1 and f["token_requests_total"] == 2
    assert f["connection_status"] == "reauth_required"


def test_network_partition(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Network partition")
    assert f["sync_retries"].get("ZywaveTimeout", 0) >= 1
    assert f["refreshes_while_cut"] and all(
        outcome.endswith(("(timeout)", "(connection_failed)"))
        for _, outcome in f["refreshes_while_cut"]
    )
    # The connect timeout fired, or the connection was refused: never a read timeout.
    assert set(f["refresh_requests_while_cut"]) <= {"ConnectTimeout", "ConnectionError"}
    assert f["connections_synced"] == f["connections"] and not f["mirror_mismatches"]
    assert f["wrongly_reauth"] == 0 and f["tokens_lost"] == 0 and f["duplicates"] == 0


def test_redis_restart(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Redis restarted mid-run")
    assert f["runs_lost"] == 0


def test_postgres_restart(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "PostgreSQL restarted")
    assert f["runs_running_at_stop"] >= 1 and f["non_200_while_down"] >= 1
    assert set(f["statuses_while_down"]) <= {"200", "503"}
    assert f["server_errors_after"] == 0 and f["requests_after"] >= 5
    assert f["runs_lost"] == 0 and f["duplicates"] == 0 and not f["mirror_mismatches"]


def test_webhook_receiver_outage(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Webhook receiver 503s")
    # Events of real syncs: a page's accounts.changed and the run's sync.succeeded.
    assert f["events_by_type"].get("accounts.changed", 0) >= 1
    assert f["events_by_type"].get("sync.succeeded", 0) >= 1
    # A dead endpoint is retried by the schedule, not once per new event.
    assert 2 <= f["requests_while_down"] <= f["requests_allowed_by_the_schedule"]
    assert f["lost"] == 0 and f["sequence_complete"] and f["delivered_in_db"] == f["events"]
    assert f["duplicates_with_another_id"] == [] and f["signatures_bad"] == 0
    assert f["state_after"] == "active"


def test_webhook_worker_kill_and_redis_restart(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Webhook worker SIGKILL and Redis restart")
    assert f["lost"] == 0 and f["sequence_complete"] and f["events"] == f["events_emitted"]
    # The request the worker died in is sent again, with its webhook-id.
    assert f["held_sequence"] == 1 and 1 in f["received_twice_or_more"]
    assert f["duplicates_with_another_id"] == []
    assert f["first_request_after_lease_expiry_seconds"] >= 0
    assert f["reconciler_requeued_after_kill_seconds"]
    assert f["emit_errors_redis_down"] == [] and f["events_written_while_redis_down"] > 0


def test_webhook_receiver_hanging(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Webhook receiver hanging")
    assert f["attempts_while_hanging"] >= 2 and set(f["attempt_errors"]) == {"timed out"}
    assert f["hanging"]["lost"] == 0 and f["healthy"]["lost"] == 0
    assert f["healthy"]["sequence_complete"] and f["healthy_delay_p95"] <= 2.0


def test_sync_soak(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Load: sync soak")
    assert f["syncs_lost"] == 0 and f["duplicates"] == 0
    assert f["refreshes_per_generation"] == 1.0 and f["invalid_grant"] == 0


def test_pages_under_load(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Load: pages during the soak")
    assert f["server_errors"] == 0 and f["other_users_data"] == 0


def test_fleet_drain_under_the_apps_rate_limit(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Fleet drain under the app's rate limit")
    assert f["synced"] == f["connections"] == 30
    assert f["share_429"] <= 0.005
    assert f["sync_now"]["asked"] >= 1 and f["sync_now"]["started"] == f["sync_now"]["asked"]
    assert f["sync_now"]["p95"] < 5


def test_scanner(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Web vulnerability scanner")
    severities = f["findings_by_severity"]
    assert severities["medium"] == severities["high"] == severities["critical"] == 0
    assert f["above_low"] == [] and f["server_errors"] == 0
    assert f["urls_crawled"] >= 15 and f["account_pages"] > 0
    assert "/zywave/accounts/" in f["authenticated_pages"]
    assert f["session_survived"] and f["locked_drill_users"] == 0


def test_no_secret_anywhere_after_the_drills(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Secrets after all drills")
    assert f["tokens_issued"] >= 24 and f["log_files"] >= 4
    assert f["found_in_the_journals"] >= f["tokens_issued"]  # the search finds what is there
    assert f["hits"] == {"database": 0, "redis": 0, "logs": 0, "mail": 0}
    assert f["api_key_hits"] == {"database": 0, "redis": 0, "logs": 0, "mail": 0}
    # Webhook signing secrets: a subscription made, rotated through the API, delivered to by
    # workers (signed with both secrets), and neither secret anywhere.
    assert f["webhook_secrets"] >= 2 and f["webhook_secret_found_in_the_api_answer"] >= 1
    assert f["webhook_deliveries_verified"] >= 2 and "sync.succeeded" in f["webhook_event_types"]
    assert f["webhook_hits"] == {"database": 0, "redis": 0, "logs": 0, "mail": 0}


def test_ssrf(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "SSRF: webhooks to private addresses")
    assert f["settings"] == {"DEBUG": False, "WEBHOOKS_ALLOW_PRIVATE": False}
    assert f["namespace"] == {"links": ["lo"], "default_route": False}
    assert f["functions_refused"] == f["functions_total"] == 12 and f["functions_created"] == 0
    assert f["api_created"] == 0 and f["api_patches_refused"] == (6 if f["api_built"] else 0)
    assert not f["api_built"] or list(f["api_statuses"].values()) == [400] * 6
    refused = {
        k: v for k, v in f["deliveries"].items() if k != "control" and not k.startswith("redirect")
    }
    assert len(refused) == 7 and all(v["state"] == "failed" for v in refused.values())
    redirects = [v for k, v in f["deliveries"].items() if k.startswith("redirect")]
    assert len(redirects) == 3 and all(v["state"] == "failed" for v in redirects)
    assert f["deliveries"]["control"]["state"] == "delivered"
    # Requests attempted to a private address, as every process's socket layer recorded them.
    assert f["connects"]["to_private"] == [] and f["connects"]["refused_by_guard"] == []
    assert sum(f["trap_connections"].values()) == 0


def test_zywave_hooks_under_delivery_faults(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Zywave webhooks in: duplicates, out of order, delays, bursts")
    assert all(f["deliveries_by_fault"].get(m, 0) > 0 for m in ("duplicate", "out_of_order"))
    assert all(f["deliveries_by_fault"].get(m, 0) > 0 for m in ("delayed", "burst"))
    assert f["delivered"] == f["deliveries"] > sum(f["changes"].values())
    # Exact against the sandbox's book with no sync run: only the receiver changed the mirror.
    assert f["mirror"]["exact"] and f["sync_runs_meanwhile"] == 0 and f["duplicates"] == 0
    assert f["deleted_tombstoned"] == f["deleted_that_were_mirrored"] > 0


@pytest.mark.parametrize(
    "row", ["Zywave webhooks in: Redis restarted", "Zywave webhooks in: PostgreSQL restarted"]
)
def test_zywave_hooks_through_a_restart(drills: dict[str, dict[str, Any]], row: str) -> None:
    f = figures(drills, row)
    refused = {k: n for k, n in f["attempts_while_down"].items() if k != "202"}
    assert refused and f["retried"] >= 1  # the sandbox had to retry
    if "PostgreSQL" in row:
        assert set(refused) <= {"503", "refused"}  # never a 500
    assert f["given_up"] == 0 and f["delivered"] == f["deliveries"]
    assert f["settled"]["settled"] and f["notifications_by_state"].get("failed", 0) == 0
    assert f["mirror"]["exact"] and f["sync_runs_meanwhile"] == 0


def test_zywave_hooks_about_another_agencys_record(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Zywave webhooks in: another agency's record")
    assert set(f["answered"]) == {"202"} and f["notifications_about_b"] >= 2
    assert f["deliveries_by_fault"].get("foreign", 0) >= 1
    assert f["deliveries_by_fault"].get("manual", 0) >= 1
    assert set(f["fetches_by_status"]) == {"404"}
    assert f["mirror_rows_changed"] == 0 and f["rows_of_b_in_a_mirror"] == 0
    assert f["outbound_events_for_a"] == 0 and f["mirror"]["exact"]


def test_zywave_hooks_receiver_rotated_mid_stream(drills: dict[str, dict[str, Any]]) -> None:
    f = figures(drills, "Zywave webhooks in: receiver URL rotated mid-stream")
    assert f["old_url_attempts_before_rotation"].get("202", 0) >= 1
    assert set(f["old_url_attempts_after_rotation"]) == {"404"}
    assert f["old_url_probe_after"] == [404, 404]
    assert f["notifications_between_rotation_and_registration"] == 0
    assert f["new_url_taken"] == f["new_url_deliveries"] >= 1
    assert f["mirror_without_those"]["exact"] and f["sync_runs_meanwhile"] == 0
    assert f["mirror_after_sync"]["exact"]
