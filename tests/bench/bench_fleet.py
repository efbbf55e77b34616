"""Benchmark of the portal at fleet scale (issue 20): thousands of connections sharing one
Zywave rate limit, with people pressing Sync now while the scheduled backlog drains.

    FLEET_SIZES=1000,10000 .venv/bin/python tests/bench/bench_fleet.py

The stack, all on 127.0.0.1: PostgreSQL (a fresh database), a Redis of this run's own (broker,
cache and the rate budget: its memory is the portal's alone), the sandbox under gunicorn
(`FLEET_SANDBOX_WORKERS` processes, default 2) limiting the whole app to R requests a second
(its `rate_limit` setting), the portal under gunicorn (for the API's Sync now), beat and the
Procfile's two Celery workers of 2 processes each (`worker` and `live`, their queues read from
the Procfile; `FLEET_CONCURRENCY` processes each instead, for comparison). Measured in one run:

1. What the sandbox serves here: requests/s for a small accounts page (10 records) from 8
   keep-alive clients, without a limit. R is `FLEET_RATE`, by default 50 (the issue's figure;
   at most half of what the sandbox serves makes sense, or the sandbox itself is the limit).
2. For each size of `FLEET_SIZES` (the fleet grows from one to the next): the sandbox's fleet
   (`POST /_sandbox/fleet`: users with a profile, 10 accounts and 20 contacts each, live
   grants) and the portal's (`fleet.portal_fleet`: users, connections, chosen profiles in
   bulk). Every connection is then due at once (no run yet: the worst case, a new fleet or a
   restart after an outage): beat's scan runs here once, counted (time, queries), and queues
   them all; beat starts; the drain is sampled every 2 s until every connection has been
   synced once, while 20 Sync nows (POST /api/v1/syncs) are spread over it. Figures:
   `fleet.figures`. The section stays within `FLEET_BUDGET_SECONDS` (11.5 minutes): a drain
   that would not is cut short, and its time to drain projected from its pace.

The portal runs with ZYWAVE_RATE_LIMIT = R (the limit it was told; `FLEET_PORTAL_RATE` sets
another), ZYWAVE_SYNC_INTERVAL_MINUTES = `FLEET_INTERVAL_MINUTES` (default 15, production's: a
drain longer than half of it overlaps the next round, as in production), and whatever
ZYWAVE_MAX_CONCURRENT_SYNCS and
ZYWAVE_RATE_LIMIT_PER_CONNECTION the caller's environment sets. CPU seconds per process around
each drain (bench_hooks.cpu_seconds) show where the time goes.
The throughput and the backlog over time go to docs/fleet.svg.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
import requests
from bench_hooks import cpu_seconds, cpu_used, setup_portal, start_worker, stop_worker
from common import REPO_ROOT, bench_database, free_port, require_postgres, start_portal

from tests.bench.fleet import drain, make_fleet
from tests.drills.stack import redis_server, stop_process
from tests.sandboxserver import Sandbox, start_sandbox, stop_sandbox

SVG_PATH = REPO_ROOT / "docs" / "fleet.svg"
PROBE_USERS = 16
BUDGET = float(os.environ.get("FLEET_BUDGET_SECONDS", 11.5 * 60))  # the section's time


def procfile_queues() -> dict[str, str]:
    """The Celery workers of the Procfile and their queues (`worker`, `live`)."""
    queues = {}
    for line in (REPO_ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        found = re.search(r"--queues\s+(\S+)", command)
        if "celery" in command and " worker" in command and found:
            queues[name.strip()] = found.group(1)
    return queues


def capacity(sandbox: Sandbox, seconds: float = 6.0, clients: int = 8) -> float:
    """API requests/s the sandbox answers without a limit: `clients` keep-alive sessions, each
    as its own fleet user, asking for its 10 accounts (one small page) back to back."""
    probe = sandbox.control("POST", "fleet", users=PROBE_USERS, prefix="probe")["users"]
    served = [0] * clients
    ends = time.monotonic() + seconds

    def client(n: int) -> None:
        user = probe[n % len(probe)]
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {user['access_token']}"
        http.headers["Profile"] = f"Token {user['profile']['profile_token']}"
        while time.monotonic() < ends:
            if http.get(f"{sandbox.url}/accounts/v2.0/account", timeout=30).ok:
                served[n] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(served) / (time.monotonic() - started)


def beat_starter(var_dir: Path, env: dict[str, str]) -> Any:
    """A function that starts beat (a fresh schedule: every entry runs at once) and returns
    the function that stops it."""

    def start() -> Any:
        schedule = var_dir / f"beat-{time.monotonic_ns()}"
        log = open(var_dir / "beat.log", "ab")  # noqa: SIM115 (the child keeps its copy)
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "celery"),
                "-A",
                "portal",
                "beat",
                "--schedule",
                str(schedule),
                "--loglevel",
                "WARNING",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def stop() -> None:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=20)

        return stop

    return start


# --- The picture -------------------------------------------------------------------------------


def svg(results: list[dict[str, Any]], rate: float) -> str:
    """Throughput (requests/s between samples, from the sandbox's counters) and backlog (runs
    queued or running) over time, one panel per fleet size, drawn by hand."""
    width, height, pad = 760, 230, 56
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height * len(results) + 20}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for n, result in enumerate(results):
        top = n * height + 20
        samples = result["samples"]
        span = max(samples[-1]["t"], 1.0) if samples else 1.0
        backlog_top = max((s["queued"] + s["running"] for s in samples), default=1) or 1
        rate_top = max(rate * 1.25, 1.0)

        def x(t: float, span: float = span) -> float:
            return pad + (width - 2 * pad) * t / span

        def y(value: float, top_value: float, top: float = top) -> float:
            return top + (height - 60) * (1 - min(value, top_value) / top_value) + 10

        throughput = []
        for before, after in zip(samples, samples[1:], strict=False):
            dt = after["t"] - before["t"]
            if dt > 0:
                throughput.append((after["t"], (after["api"] - before["api"]) / dt))
        line = " ".join(f"{x(t):.1f},{y(v, rate_top):.1f}" for t, v in throughput)
        backlog = " ".join(
            f"{x(s['t']):.1f},{y(s['queued'] + s['running'], backlog_top):.1f}" for s in samples
        )
        bottom = y(0, 1)
        parts += [
            f'<text x="{pad}" y="{top + 2}" font-weight="bold">{result["connections"]:,} '
            f"connections: Zywave requests/s (blue, R = {rate:g} dashed) and backlog (orange: "
            f"runs queued or running, of {backlog_top:,})</text>",
            f'<line x1="{pad}" y1="{bottom:.1f}" x2="{width - pad}" y2="{bottom:.1f}" '
            'stroke="#999"/>',
            f'<line x1="{pad}" y1="{y(rate, rate_top):.1f}" x2="{width - pad}" '
            f'y2="{y(rate, rate_top):.1f}" stroke="#1f77b4" stroke-dasharray="4 3"/>',
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/>',
            f'<polyline fill="none" stroke="#ff7f0e" stroke-width="1.5" points="{backlog}"/>',
            f'<text x="{pad - 6}" y="{y(rate, rate_top) + 4:.1f}" text-anchor="end">'
            f"{rate:g}/s</text>",
            f'<text x="{pad - 6}" y="{bottom + 4:.1f}" text-anchor="end">0</text>',
            f'<text x="{width - pad + 6}" y="{y(backlog_top, backlog_top) + 4:.1f}">'
            f"{backlog_top:,}</text>",
            f'<text x="{width - pad}" y="{bottom + 16:.1f}" text-anchor="end">{span:.0f} s</text>',
            f'<text x="{pad}" y="{bottom + 16:.1f}">0 s</text>',
        ]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# --- The run -----------------------------------------------------------------------------------


def main() -> int:
    sizes = sorted(int(n) for n in os.environ.get("FLEET_SIZES", "1000,10000").split(","))
    require_postgres("bench_fleet")
    began = time.monotonic()
    results: list[dict[str, Any]] = []
    made: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        var_dir = Path(tmp)
        redis_port = free_port()
        redis_process = redis_server(redis_port, var_dir / "redis")
        broker = f"redis://127.0.0.1:{redis_port}/0"
        sandbox_workers = int(os.environ.get("FLEET_SANDBOX_WORKERS", "2"))
        sandbox, sandbox_process = start_sandbox(
            var_dir / "sandbox", accounts=300, workers=sandbox_workers
        )
        portal_process = None
        workers: dict[str, Any] = {}
        try:
            served = capacity(sandbox)
            rate = float(os.environ.get("FLEET_RATE") or 50)
            print(
                f"sandbox serves {served:.0f} requests/s ({sandbox_workers} processes): "
                f"R = {rate:g}"
            )
            portal_rate = int(os.environ.get("FLEET_PORTAL_RATE") or rate)
            setup_portal(
                bench_database("portal_bench_fleet", var_dir), sandbox.url, broker, var_dir
            )
            from integrations.resources import REGISTRY

            per_sync = len(REGISTRY)  # one page of each mirrored resource
            # The production default: the drain is compared with it (a drain longer than
            # half of it overlaps the second round, as it would in production).
            interval = int(os.environ.get("FLEET_INTERVAL_MINUTES") or 15)
            # For the workers, beat and the portal, started below; and this process's scan.
            # After setup_django, which sets a rate budget too high to wait for the benchmarks
            # of the portal's own speed: the portal is told Zywave's limit here
            # (FLEET_PORTAL_RATE: another, for comparison).
            os.environ["ZYWAVE_SYNC_INTERVAL_MINUTES"] = str(interval)
            os.environ["ZYWAVE_RATE_LIMIT"] = str(portal_rate)
            from django.conf import settings

            settings.ZYWAVE_SYNC_INTERVAL_MINUTES = interval
            settings.ZYWAVE_RATE_LIMIT = portal_rate
            sandbox.control("POST", "settings", rate_limit=rate)
            portal, portal_process = start_portal(var_dir)
            netguard = os.pathsep.join([str(REPO_ROOT / "tests" / "netguard"), str(REPO_ROOT)])
            env = {**os.environ, "PYTHONPATH": netguard}
            layout = procfile_queues()
            concurrency = int(os.environ.get("FLEET_CONCURRENCY", "2"))  # processes per worker
            workers = {
                name: start_worker(name, queues, var_dir, env, concurrency)
                for name, queues in layout.items()
            }
            from integrations.tasks import heartbeat

            heartbeat.delay().get(timeout=60)
            scope = " ".join(settings.ZYWAVE_SCOPES)
            roots = {
                "portal (gunicorn)": portal_process.pid,
                **{f"{name} worker": process.pid for name, process in workers.items()},
                "sandbox": sandbox_process.pid,
                "this process, beat": os.getpid(),
            }
            ids: list[int] = []
            for size in sizes:
                started = time.monotonic()
                ids += make_fleet(sandbox, size - len(ids), first=len(ids) + 1, scope=scope)
                made.append(time.monotonic() - started)
                print(f"{size:,} connections ready ({made[-1]:.0f} s to add them)")
                expected = size * per_sync / rate
                # The section stays within BUDGET: the last drain is cut short if need be
                # (its time to drain is then projected from its pace).
                left = BUDGET - (time.monotonic() - began) - 30
                before = cpu_seconds(roots)
                result = drain(
                    sandbox,
                    portal,
                    ids,
                    expected_seconds=expected,
                    timeout=min(expected * 2 + 120, left),
                    redis_client=redis.Redis.from_url(broker),
                    workers={name: process.pid for name, process in workers.items()},
                    start_beat=beat_starter(var_dir, env),
                )
                result["cpu_seconds"] = cpu_used(before, cpu_seconds(roots))
                print(
                    f"{size:,}: {result['synced']:,} synced in {result['drain']:.0f} s, "
                    f"{result['rate']:.1f} requests/s"
                )
                results.append(result)
        finally:
            for process in workers.values():
                stop_worker(process)
            if portal_process is not None:
                stop_sandbox(portal_process)
            stop_sandbox(sandbox_process)
            stop_process(redis_process)

    SVG_PATH.write_text(svg(results, rate))
    report(results, rate, served, sandbox_workers, interval, layout, concurrency, per_sync, made)
    print(
        f"\nwhole run {time.monotonic() - began:.0f} s; "
        f"picture in {SVG_PATH.relative_to(REPO_ROOT)}"
    )
    return 0


def drained(result: dict[str, Any], interval: int) -> str:
    if result["complete"]:
        seconds = result["drain"]
        return f"{seconds:.0f} ({seconds / (interval * 60):.2f} of {interval} min)"
    seconds = result["projected"]
    return (
        f"cut short: {result['synced']:,} synced; all ≈ {seconds:.0f} at that pace "
        f"({seconds / (interval * 60):.2f} of {interval} min)"
    )


def report(
    results: list[dict[str, Any]],
    rate: float,
    served: float,
    sandbox_workers: int,
    interval: int,
    layout: dict[str, str],
    concurrency: int,
    per_sync: int,
    made: list[float],
) -> None:
    from django.conf import settings

    header = " | ".join(f"{r['connections']:,} connections" for r in results)
    print(
        f"\nFleet: R = {rate:g} requests/s (the sandbox alone serves {served:.0f}/s with "
        f"{sandbox_workers} processes), {per_sync} requests a sync, workers "
        f"{', '.join(f'{n} ({q}, {concurrency} processes)' for n, q in layout.items())}, "
        f"ZYWAVE_RATE_LIMIT={settings.ZYWAVE_RATE_LIMIT}, "
        f"ZYWAVE_SYNC_INTERVAL_MINUTES={interval}, ZYWAVE_MAX_CONCURRENT_SYNCS="
        f"{getattr(settings, 'ZYWAVE_MAX_CONCURRENT_SYNCS', 'n/a')}\n"
    )
    print(f"| measure | {header} | target |")
    print("| --- |" + " --- |" * len(results) + " --- |")

    def row(label: str, cells: list[str], target: str = "") -> None:
        print(f"| {label} | {' | '.join(cells)} | {target} |")

    row("fleet made (sandbox + portal), s", [f"{m:.0f}" for m in made])
    row(
        "Zywave requests/s over the drain, all answers (share of R)",
        [f"{r['rate']:.1f} (**{r['rate'] / rate:.2f}**)" for r in results],
        "≥ 0.95",
    )
    row(
        "of which served (not 429), requests/s (share of R)",
        [f"{r['served_rate']:.1f} ({r['served_rate'] / rate:.2f})" for r in results],
    )
    row(
        "429s / requests",
        [f"{r['share_429']:.2%} ({r['limited']} of {r['requests']:,})" for r in results],
        "≤ 0.5%",
    )
    row(
        "every connection synced once (drain), s; vs the interval",
        [drained(r, interval) for r in results],
    )
    row(
        "wait from due to synced, p50 / max (spread max/p50)",
        [
            f"{r['waits']['p50']:.0f} / {r['waits']['max']:.0f} s ({r['spread'] or 0:.2f})"
            for r in results
        ],
    )
    row(
        "one sync's own time, p50 / p95",
        [f"{r['runs']['p50']:.2f} / {r['runs']['p95']:.2f} s" for r in results],
    )
    row(
        "Sync now → run started, p50 / **p95** / max",
        [
            f"{r['sync_now']['p50']:.2f} / **{r['sync_now']['p95']:.2f}** / "
            f"{r['sync_now']['max']:.2f} s ({r['sync_now']['started']} of {r['sync_now']['asked']})"
            for r in results
        ],
        "p95 < 5 s",
    )
    row(
        "beat's scan, all due: time, queries",
        [f"{r['scan']['seconds']:.2f} s, {r['scan']['queries']}" for r in results],
    )
    row("Redis used_memory, max", [f"{r['redis_max'] / 2**20:.1f} MiB" for r in results])
    row(
        f"worker RSS, max (each worker with its {concurrency} processes)",
        [
            ", ".join(f"{n} {kib / 1024:.0f} MiB" for n, kib in r["rss_max"].items())
            for r in results
        ],
    )
    row("token requests during the drain", [str(r["token_requests"]) for r in results])
    for r in results:
        used = ", ".join(f"{name} {sec:.0f}" for name, sec in r["cpu_seconds"].items())
        print(f"\nCPU seconds during the drain of {r['connections']:,}: {used}")
    details = [{k: v for k, v in r.items() if k != "samples"} for r in results]
    if os.environ.get("FLEET_SAMPLES"):
        Path(os.environ["FLEET_SAMPLES"]).write_text(
            json.dumps([r["samples"] for r in results], indent=1)
        )
    print("\nDetails:", json.dumps(details, default=str, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    raise SystemExit(main())
