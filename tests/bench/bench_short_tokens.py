"""Short-lived access tokens: how many refreshes does a busy connection cost?

    .venv/bin/python tests/bench/bench_short_tokens.py [--seconds 120] [--lifetime 5]

The sandbox issues 5-second access tokens (one-time refresh tokens). For `--seconds`, three
processes call `integrations.tokens.access_token_for` on one connection in a loop, and a fourth
runs one sync after another (one at a time, as the invariant allows). Side by side in one run:
the portal's margin (`margin_for`: the smaller of 5 minutes and a quarter of the lifetime) and,
for a shorter stretch, the fixed 5-minute margin it replaced. Reported: refreshes, refreshes per
token generation (how many times one refresh token was spent: must be 1.00), the bound
ceil(elapsed / (lifetime - margin)) + 1, failed uses and the runs that did not succeed.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from common import bench_database, linked_connection, setup_django

from tests.sandboxserver import start_sandbox, stop_sandbox


def user(kind: str, pk: int, until: float, env: dict[str, str], fixed: bool, out: Any) -> None:
    os.environ.update(env)
    import django

    django.setup()
    from integrations import tokens
    from integrations.models import Connection

    if fixed:  # the margin before the fix, for the comparison row
        tokens.margin_for = lambda connection: tokens.MARGIN  # type: ignore[assignment]
    done: Counter[str] = Counter()
    while time.time() < until:
        try:
            if kind == "caller":
                tokens.access_token_for(Connection.objects.get(pk=pk))
                done["uses"] += 1
            else:
                from integrations.sync import sync_now

                run = sync_now(Connection.objects.get(pk=pk))
                done["runs"] += 1
                if run is None or run.state != "succeeded":
                    done["runs_not_succeeded"] += 1
        except Exception:  # noqa: BLE001  (counted: a failed use is what this measures)
            done["failed"] += 1
            time.sleep(0.05)
    out.put(dict(done))


def load(pk: int, seconds: float, env: dict[str, str], fixed: bool) -> tuple[float, Counter[str]]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    start = time.time()
    until = start + seconds
    kinds = ["caller", "caller", "caller", "syncer"]
    processes = [
        context.Process(target=user, args=(kind, pk, until, env, fixed, out)) for kind in kinds
    ]
    for process in processes:
        process.start()
    totals: Counter[str] = Counter()
    for _ in processes:
        totals.update(out.get(timeout=seconds + 600))
    for process in processes:
        process.join(timeout=60)
    return time.time() - start, totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--fixed-seconds", type=float, default=30)
    parser.add_argument("--lifetime", type=int, default=5)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="short-token-bench-") as tmp:
        var_dir = Path(tmp)
        sandbox, process = start_sandbox(var_dir / "sandbox", accounts=200)
        try:
            sandbox.ensure_test_redirect_uri()
            setup_django(bench_database("portal_bench_short", var_dir), sandbox.url, var_dir)
            from integrations.models import Connection, ConnectionEvent
            from integrations.tokens import MARGIN, margin_for

            sandbox.control("POST", "settings", access_token_lifetime=args.lifetime)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(sys.path)
            for label, seconds, fixed in (
                ("portal (`margin_for`)", args.seconds, False),
                ("fixed 5-minute margin (before)", args.fixed_seconds, True),
            ):
                conn = linked_connection(sandbox, f"short-{int(fixed)}", "50003")
                margin = MARGIN if fixed else margin_for(conn)
                assert conn.access_token_lifetime == args.lifetime
                elapsed, totals = load(conn.pk, seconds, env, fixed)
                refreshed = ConnectionEvent.objects.filter(
                    connection=conn, kind=ConnectionEvent.Kind.REFRESHED
                )
                spent = Counter(event.detail["used"] for event in refreshed)
                usable = args.lifetime - margin.total_seconds()
                bound = math.ceil(elapsed / usable) + 1 if usable > 0 else None
                conn.refresh_from_db()
                rows.append(
                    {
                        "label": label,
                        "seconds": elapsed,
                        "refreshes": sum(spent.values()),
                        "per_generation": sum(spent.values()) / max(len(spent), 1),
                        "bound": bound,
                        "margin": margin,
                        "uses": totals["uses"],
                        "failed": totals["failed"],
                        "runs": totals["runs"],
                        "runs_not_succeeded": totals["runs_not_succeeded"],
                        "status": conn.status,
                    }
                )
                Connection.objects.filter(pk=conn.pk).delete()
        finally:
            stop_sandbox(process)

    print(
        f"\nShort-lived tokens: {args.lifetime}-second access tokens, one connection, three "
        "processes calling access_token_for and one sync at a time\n"
    )
    print(
        "| margin | seconds | refreshes | refreshes per generation | bound "
        "ceil(t/(lifetime-margin))+1 | uses | failed uses | syncs (not succeeded) | status |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        kept: timedelta = r["margin"]
        bound = "none (never fresh)" if r["bound"] is None else str(r["bound"])
        print(
            f"| {r['label']}: {kept.total_seconds():g} s | {r['seconds']:.0f} | "
            f"{r['refreshes']} | {r['per_generation']:.2f} | {bound} | {r['uses']} | "
            f"{r['failed']} | {r['runs']} ({r['runs_not_succeeded']}) | {r['status']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
