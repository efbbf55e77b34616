"""Benchmark of the sandbox: time to seed 100,000 accounts, and pages of 100 accounts served
per second under gunicorn.

    .venv/bin/python tests/bench/bench_sandbox.py [--accounts 100000] [--seconds 10]

Seeds a temporary database, starts the sandbox as `make sandbox` would (gunicorn, 2 workers),
then pages through the first agency's accounts with one keep-alive session ($orderby, $skip,
$top=100) for about `--seconds`, and prints a short table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.sandboxserver import (  # noqa: E402
    Sandbox,
    sandbox_env,
    start_sandbox,
    stop_sandbox,
)


def seed_time(var_dir: Path, accounts: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "sandbox", "seed", "--accounts", str(accounts)],
        cwd=REPO_ROOT,
        env=sandbox_env(var_dir),
        check=True,
        capture_output=True,
        timeout=600,
    )
    return time.perf_counter() - started


def pages_per_second(sandbox: Sandbox, seconds: float, orderby: str) -> tuple[int, float, int]:
    """Page through the agent's first agency until `seconds` pass; returns
    (pages, elapsed seconds, records)."""
    token = sandbox.obtain_tokens()["access_token"]
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {token}", "Profile": "B 50001"})
    url = f"{sandbox.url}/accounts/v2.0/account"
    pages = records = skip = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        response = session.get(
            url, params={"$orderby": orderby, "$skip": str(skip), "$top": "100"}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        pages += 1
        records += len(body["items"])
        skip = skip + 100 if body["hasMoreResults"] else 0
    return pages, time.perf_counter() - started, records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        var_dir = Path(tmp)
        # First run migrates; time the seed on its own.
        subprocess.run(
            [sys.executable, "-m", "sandbox", "migrate", "-v0"],
            cwd=REPO_ROOT,
            env=sandbox_env(var_dir),
            check=True,
            timeout=300,
        )
        seeded = seed_time(var_dir, args.accounts)
        # start_sandbox seeds again (idempotent); keep the benchmark's size.
        sandbox, process = start_sandbox(var_dir, accounts=args.accounts)
        try:
            sandbox.ensure_test_redirect_uri()
            rows = []
            for orderby in ["id", "updatedDateTime desc", "name asc, city desc"]:
                pages, elapsed, records = pages_per_second(sandbox, args.seconds / 3, orderby)
                rows.append((orderby, pages, elapsed, records))
        finally:
            stop_sandbox(process)

    print(f"\nSandbox benchmark ({args.accounts:,} accounts, gunicorn 2 workers x 4 threads)")
    print(f"{'measure':<52} {'value':>12}")
    print(f"{'seed ' + format(args.accounts, ',') + ' accounts (s)':<52} {seeded:>12.1f}")
    for orderby, pages, elapsed, _records in rows:
        label = f"pages/s, $top=100, $orderby={orderby}"
        print(f"{label:<52} {pages / elapsed:>12.1f}")
    total_pages = sum(row[1] for row in rows)
    total_time = sum(row[2] for row in rows)
    print(f"{'pages/s overall (one keep-alive session)':<52} {total_pages / total_time:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
