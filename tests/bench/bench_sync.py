"""Benchmark of the background sync against the sandbox under gunicorn.

    .venv/bin/python tests/bench/bench_sync.py [--accounts 20000] [--large 100000]

Measured side by side in one run, for one profile holding `--accounts` accounts (and their
contacts):
1. full sync rate (records/s) against a baseline that fetches the same pages with one keep-alive
   session and parses them without touching the database (target: at least 0.8 of it); the
   median of `--rounds` rounds, each sync between two baseline runs;
2. one page written as a bulk upsert against per-row `update_or_create` (target: 20x faster);
3. an incremental sync with nothing changed: requests per resource (target 1) and its time as a
   share of the full sync's (target under 2%);
4. peak memory of a sync process at `--accounts` and at `--large` accounts (target: within 50 MB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from common import REPO_ROOT, bench_database, linked_connection, setup_django

from tests.sandboxserver import start_sandbox, stop_sandbox  # noqa: E402

PROFILE = "50001"  # Summit Ridge Insurance: 40% of the seeded accounts
SHARE = 0.4


def baseline(sandbox_url: str, token: str) -> tuple[int, float]:
    """Fetch every page of every mirrored resource (the registry's: accounts, contacts,
    policies) with one keep-alive session; parse only."""
    from integrations.resources import resources

    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {token}", "Profile": f"B {PROFILE}"})
    records = 0
    started = time.perf_counter()
    for resource in resources():
        skip = 0
        while True:
            body = session.get(
                f"{sandbox_url}{resource.path}",
                params={"$top": "100", "$skip": str(skip), "$orderby": "id"},
                timeout=30,
            ).json()
            records += len(body["items"])
            skip += len(body["items"])
            if not body["hasMoreResults"] or not body["items"]:
                break
    return records, time.perf_counter() - started


def full_sync(conn: Any) -> tuple[int, float]:
    from integrations.resources import resources
    from integrations.sync import sync_now

    for resource in resources():
        resource.model.all_rows.filter(connection=conn).delete()  # type: ignore[attr-defined,misc]
    started = time.perf_counter()
    run = sync_now(conn, full=True)
    elapsed = time.perf_counter() - started
    assert run is not None and run.state == "succeeded", run and run.error
    return run.records_done, elapsed


def mirrored(conn: Any) -> str:
    """What the connection's mirror holds, resource by resource."""
    from integrations.resources import resources

    return " + ".join(
        f"{resource.live(conn.pk).count():,} {resource.name}" for resource in resources()
    )


def upsert_against_update_or_create(conn: Any, sandbox_url: str) -> tuple[float, float]:
    """Seconds per page of 100 accounts: one bulk upsert, and 100 update_or_create calls."""
    from django.db import transaction
    from django.utils import timezone

    from integrations.mirror import account_row, upsert
    from integrations.models import Account

    page = requests.get(
        f"{sandbox_url}/accounts/v2.0/account",
        params={"$top": "100", "$orderby": "id"},
        headers={"Authorization": f"Bearer {conn.access_token}", "Profile": f"B {PROFILE}"},
        timeout=30,
    ).json()["items"]
    bulk = []
    for _ in range(20):
        started = time.perf_counter()
        with transaction.atomic():
            upsert("accounts", conn.pk, 0, page)
        bulk.append(time.perf_counter() - started)
    per_row = []
    for _ in range(3):
        started = time.perf_counter()
        with transaction.atomic():
            for record in page:
                row = account_row(conn.pk, 0, record, timezone.now())
                key = {"connection_id": row.pop("connection_id"), "zywave_id": row.pop("zywave_id")}
                Account.objects.update_or_create(**key, defaults=row)
        per_row.append(time.perf_counter() - started)
    return statistics.median(bulk), statistics.median(per_row)


def incremental(conn: Any, sandbox: Any) -> tuple[float, dict[str, int]]:
    from integrations.sync import sync_now

    sandbox.control("POST", "counters/reset")
    started = time.perf_counter()
    run = sync_now(conn)
    elapsed = time.perf_counter() - started
    assert run is not None and run.state == "succeeded" and not run.full
    from integrations.resources import resources

    api = sandbox.counters()["api"]
    requests_per = {
        resource.name: sum(n for key, n in api.items() if key.startswith(f"{resource.path}:"))
        for resource in resources()
    }
    return elapsed, requests_per


def peak_memory_mb(username: str, env: dict[str, str]) -> float:
    """Peak RSS of a separate process running one full sync (as a worker would)."""
    process = subprocess.Popen(
        [sys.executable, "manage.py", "sync_zywave", "--user", username, "--full"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)
    assert status == 0, f"sync_zywave exited {status}"
    return usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20_000, help="accounts in the profile")
    parser.add_argument("--large", type=int, default=100_000, help="accounts for the memory run")
    parser.add_argument("--rounds", type=int, default=3, help="sync/baseline rounds (median)")
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []

    with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
        var_dir = Path(tmp)
        sandbox, process = start_sandbox(var_dir / "sandbox", accounts=int(args.accounts / SHARE))
        try:
            sandbox.ensure_test_redirect_uri()
            setup_django(bench_database("portal_bench", var_dir), sandbox.url, var_dir)

            conn = linked_connection(sandbox, "bench", PROFILE)
            token = conn.access_token
            # Rounds of baseline, sync, baseline: each sync is compared with the baselines run
            # just before and after it, so a slower minute of the machine hits both sides.
            base_records, base_time = baseline(sandbox.url, token)
            rounds: list[tuple[float, float, float]] = []  # (baseline rate, sync rate, sync s)
            for _ in range(args.rounds):
                sync_records, sync_time = full_sync(conn)
                records_after, time_after = baseline(sandbox.url, token)
                assert sync_records == base_records == records_after
                base_rate = 2 * base_records / (base_time + time_after)
                rounds.append((base_rate, sync_records / sync_time, sync_time))
                base_time = time_after
            base_rate, sync_rate, sync_time = sorted(rounds, key=lambda r: r[1] / r[0])[
                len(rounds) // 2
            ]
            spread = ", ".join(f"{s / b:.2f}" for b, s, _ in rounds)
            rows.append(("baseline fetch + parse (records/s)", f"{base_rate:,.0f}", ""))
            rows.append(
                (
                    "full sync (records/s)",
                    f"{sync_rate:,.0f}",
                    f"{sync_rate / base_rate:.2f} of baseline (target ≥ 0.80); "
                    f"median of {len(rounds)} rounds: {spread}",
                )
            )
            bulk, per_row = upsert_against_update_or_create(conn, sandbox.url)
            rows.append(("bulk upsert, one page of 100 (ms)", f"{bulk * 1000:.1f}", ""))
            rows.append(
                (
                    "update_or_create x 100 (ms)",
                    f"{per_row * 1000:.1f}",
                    f"bulk is {per_row / bulk:.0f}x faster (target ≥ 20x)",
                )
            )
            inc_time, inc_requests = incremental(conn, sandbox)
            rows.append(
                (
                    "incremental, nothing changed (s)",
                    f"{inc_time:.3f}",
                    f"{100 * inc_time / sync_time:.2f}% of full (target < 2%)",
                )
            )
            rows.append(
                (
                    f"incremental requests ({', '.join(inc_requests)})",
                    ", ".join(str(n) for n in inc_requests.values()),
                    "target 1 each",
                )
            )
            env = {**os.environ}
            small_mb = peak_memory_mb("bench", env)
            mirrored_small = mirrored(conn)
        finally:
            stop_sandbox(process)

        sandbox, process = start_sandbox(
            var_dir / "sandbox-large", accounts=int(args.large / SHARE)
        )
        try:
            sandbox.ensure_test_redirect_uri()
            os.environ.update(ZYWAVE_AUTH_URL=sandbox.url, ZYWAVE_API_URL=sandbox.url)
            from django.conf import settings

            settings.ZYWAVE_AUTH_URL = settings.ZYWAVE_API_URL = sandbox.url
            conn = linked_connection(sandbox, "bench-large", PROFILE)
            large_mb = peak_memory_mb("bench-large", {**os.environ})
            mirrored_large = mirrored(conn)
        finally:
            stop_sandbox(process)

    rows.append(
        (
            f"peak RSS, {mirrored_small} (MB)",
            f"{small_mb:.0f}",
            "",
        )
    )
    rows.append(
        (
            f"peak RSS, {mirrored_large} (MB)",
            f"{large_mb:.0f}",
            f"difference {large_mb - small_mb:+.0f} MB (target within 50)",
        )
    )
    print(f"\nSync benchmark: profile with {args.accounts:,} accounts, sandbox under gunicorn\n")
    print("| measure | value | ratio |")
    print("| --- | --- | --- |")
    for measure, value, ratio in rows:
        print(f"| {measure} | {value} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
