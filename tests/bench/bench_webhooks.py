"""Benchmark of outbound webhooks (issue 18) on PostgreSQL, with Redis as the broker.

    .venv/bin/python tests/bench/bench_webhooks.py [--accounts 20000] [--rounds 7] [--events 2000]

Measured side by side in one run:
1. what the outbox costs a sync: a full sync of a profile holding `--accounts` accounts, with one
   subscription (`accounts.changed` + `sync.succeeded`, to a receiver on 127.0.0.1) against the
   same sync with none, alternated (none, with, none, with, ..., none, after one sync to warm
   up); each sync with the subscription is compared with the average of the two without it
   around it, and the median round is shown (target: at least 0.9 of the rate). The deliveries
   it wrote are counted in the database (target: at most pages + 2). The connection syncs
   accounts only (its other resources are marked as lists Zywave does not offer), and the
   mirror is emptied before each sync, so every page is a page of 100 created accounts with its
   event: the outbox's whole cost falls on the pages measured (`--every-resource` syncs
   contacts and policies too, pages no subscription listens to). Timed is the sync as a worker
   runs it, including what the outbox adds to each page's transaction (the owner's
   subscriptions read and locked, the event, the sequence number, the delivery row) and the
   delivery tasks queued to Redis on commit (counted: one a sync, as the first delivery is still
   due when the later pages commit). Not timed is sending: no worker consumes during the syncs
   (with one sending meanwhile, a page whose predecessor was already delivered queues a task
   again, about 1 ms). Also measured in place: a page's time in the outbox
   (`webhooks.emit_changes`, and `queueing.send` for the tasks), which the load of a shared
   machine moves less than the rates.
2. delivery: `--events` events across `--subscriptions` subscriptions (one owner each, 100
   changes an event, as a sync page's) committed one transaction each as fast as this process
   can, while one Celery worker of `--workers` processes on the `webhooks` queue sends them to a
   receiver on 127.0.0.1 (a process of its own, recording when each request has arrived):
   deliveries/s from the first event's `created_at` to the last arrival, and the time from an
   event's `created_at` to its arrival (p50, p95, max, and the least and most p50 of one
   subscription); then the same at a steady rate of half that throughput, which shows the
   latency without a backlog. `created_at` is taken in the transaction, just before its commit.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import redis
from common import REPO_ROOT, bench_database, free_port, linked_connection, setup_django

from tests.sandboxserver import start_sandbox, stop_sandbox
from tests.services import redis_database

PROFILE = "50001"  # Summit Ridge Insurance: 40% of the seeded accounts (as in bench_sync)
SHARE = 0.4
EVENTS = ["accounts.changed", "sync.succeeded"]


# --- The receiver (a process of its own) -----------------------------------------------------


def receive(port: int, path: Path) -> None:
    """Answer every POST with 204 and append `<webhook-id> <arrival time>` to `path`."""
    lock = threading.Lock()
    out = path.open("a", buffering=1)

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrived = time.time()
            with lock:
                out.write(f"{self.headers.get('webhook-id')} {arrived:.6f}\n")
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    out.close()


class Arrivals:
    """The receiver process and what it recorded."""

    def __init__(self, var_dir: Path) -> None:
        self.path = var_dir / "arrivals.txt"
        self.path.touch()
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--receive", str(self.port), str(self.path)],
            cwd=Path(__file__).parent,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the receiver did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def read(self) -> list[tuple[str, float]]:
        lines = self.path.read_text().splitlines()
        return [(i, float(t)) for i, t in (line.split() for line in lines if line.count(" ") == 1)]

    def clear(self) -> None:
        self.path.write_text("")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- 1. The sync with and without a subscription ---------------------------------------------


def accounts_only(conn: Any) -> None:
    """The sync then has accounts pages only: the connection's other resources are marked as
    Zywave marks a list it does not offer (a 404, skipped for a day). Contacts share the
    accounts' scopes, so a narrower grant cannot do it."""
    from integrations.resources import resources
    from integrations.sync import skipped_now

    for resource in resources():
        if resource.name != "accounts":
            conn.set_resource_available(resource.name, False)
    assert [r.name for r in resources() if not skipped_now(conn, r.name)] == ["accounts"]


def full_sync(conn: Any) -> tuple[Any, float]:
    """A full sync into an empty mirror, timed. The rows deleted before it are vacuumed away
    first (untimed), so that no sync of the comparison pays for autovacuum cleaning up after
    another."""
    from django.db import connection as db

    from integrations.models import Account, WebhookDelivery, WebhookEvent
    from integrations.sync import sync_now

    Account.all_rows.filter(connection=conn).delete()
    with db.cursor() as cursor:
        for model in (Account, WebhookEvent, WebhookDelivery):
            cursor.execute(f"VACUUM (ANALYZE) {db.ops.quote_name(model._meta.db_table)}")
    started = time.perf_counter()
    run = sync_now(conn, full=True)
    elapsed = time.perf_counter() - started
    assert run is not None and run.state == "succeeded", run and run.error
    return run, elapsed


def with_subscription(conn: Any, url: str, broker: redis.Redis) -> tuple[Any, float, Written]:
    """One full sync with a subscription: the run, its seconds, and the deliveries it wrote by
    event type with the delivery tasks it queued. The subscription and its events are deleted
    afterwards (and the tasks: no worker consumes them)."""
    from django.db.models import Count

    from integrations import webhooks
    from integrations.models import WebhookEvent

    subscription, _secret = webhooks.subscribe(conn.user, url, EVENTS)
    broker.delete("webhooks")
    try:
        run, elapsed = full_sync(conn)
        written = Written(
            dict(
                subscription.deliveries.order_by()
                .values_list("event__type")
                .annotate(n=Count("id"))
                .values_list("event__type", "n")
            ),
            int(broker.llen("webhooks")),
        )
    finally:
        broker.delete("webhooks")
        subscription.delete()
        WebhookEvent.objects.filter(owner_id=conn.user_id).delete()
    return run, elapsed, written


class Written(NamedTuple):
    deliveries: dict[str, int]  # by event type
    tasks: int  # delivery tasks queued to the broker


class OutboxClock:
    """The seconds a sync spends in the outbox, measured in place: `webhooks.emit_changes` (a
    page's event, in the page's transaction; without a subscription, the lookup that finds
    none) and `queueing.send` (a delivery task sent after a commit)."""

    def __init__(self) -> None:
        from integrations import queueing, webhooks

        self.seconds = 0.0
        webhooks.emit_changes = self.timed(webhooks.emit_changes)
        queueing.send = self.timed(queueing.send)

    def timed(self, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed

    def per_page(self, run: Any, since: float) -> float:
        """Milliseconds a page since `since` seconds on the clock."""
        return 1000 * (self.seconds - since) / run.pages_done


class Comparison(NamedTuple):
    rounds: list[tuple[float, float]]  # (rate without: the two syncs around, rate with)
    outbox_ms: tuple[float, float]  # a page's time in the outbox: medians without, with
    page_ms: float  # a page's time without a subscription: median
    run: Any  # the last sync with the subscription
    written: Written  # what it wrote


def sync_comparison(conn: Any, url: str, rounds: int, broker: redis.Redis) -> Comparison:
    """Syncs without and with a subscription, alternated, each timed."""
    from integrations.models import WebhookDelivery

    clock = OutboxClock()
    full_sync(conn)  # warm-up: not counted
    outbox: dict[bool, list[float]] = {False: [], True: []}
    pages: list[float] = []

    def without() -> float:
        since = clock.seconds
        run, elapsed = full_sync(conn)
        assert not WebhookDelivery.objects.exists()
        outbox[False].append(clock.per_page(run, since))
        pages.append(1000 * elapsed / run.pages_done)
        return float(run.records_done / elapsed)

    before = without()
    results: list[tuple[float, float]] = []
    run: Any = None
    written = Written({}, 0)
    for _ in range(rounds):
        since = clock.seconds
        run, elapsed, written = with_subscription(conn, url, broker)
        outbox[True].append(clock.per_page(run, since))
        rate_with = run.records_done / elapsed
        after = without()
        results.append(((before + after) / 2, rate_with))
        before = after
    medians = (statistics.median(outbox[False]), statistics.median(outbox[True]))
    return Comparison(results, medians, statistics.median(pages), run, written)


# --- 2. Delivery throughput and latency ------------------------------------------------------


def start_worker(var_dir: Path, processes: int) -> subprocess.Popen[bytes]:
    """One Celery worker on the `webhooks` queue, `processes` prefork pool processes, the same
    environment as this process (database, keys, broker, WEBHOOKS_ALLOW_PRIVATE)."""
    from integrations.tasks import heartbeat

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests" / "netguard"), str(REPO_ROOT)]),
    }
    with (var_dir / "worker.log").open("ab") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "--queues",
                "webhooks",
                "--pool",
                "prefork",
                "--concurrency",
                str(processes),
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "WARNING",
                "--hostname",
                f"bench-webhooks-{os.getpid()}@%h",
            ],  # fmt: skip
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the stop reaches the pool
        )
    try:
        heartbeat.apply_async(queue="webhooks").get(timeout=60)
    except BaseException:
        stop_worker(worker)
        raise
    return worker


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is not None:
        return
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


def page_event() -> dict[str, Any]:
    """What a sync page's event carries: 100 changes and the cursor."""
    return {
        "resource": "accounts",
        "changes": [{"id": str(100000 + n), "kind": "created"} for n in range(100)],
        "updated_since": "2026-12-01T12:00:00.000000Z",
    }


def emit_one(owner_id: int, data: dict[str, Any]) -> None:
    from django.db import transaction

    from integrations import webhooks

    with transaction.atomic():
        webhooks.emit(owner_id, "accounts.changed", data)


def wait_arrivals(arrivals: Arrivals, count: int, timeout: float) -> list[tuple[str, float]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = arrivals.read()
        if len({i for i, _ in got}) >= count:
            return got
        time.sleep(0.1)
    raise RuntimeError(f"only {len(arrivals.read())} of {count} deliveries arrived in {timeout}s")


def latencies(got: list[tuple[str, float]]) -> tuple[dict[int, list[float]], float, float, int]:
    """Seconds from each event's created_at to its first arrival, by owner (one subscription
    each); the first created_at, the last arrival, and how many requests were duplicates."""
    from integrations.models import WebhookEvent

    first: dict[str, float] = {}
    for event_id, at in got:
        first[event_id] = min(at, first.get(event_id, at))
    events = WebhookEvent.objects.filter(id__in=list(first)).values_list(
        "id", "owner_id", "created_at"
    )
    waits: dict[int, list[float]] = {}
    start = float("inf")
    for event_id, owner_id, created_at in events:
        waits.setdefault(owner_id, []).append(first[event_id] - created_at.timestamp())
        start = min(start, created_at.timestamp())
    assert sum(map(len, waits.values())) == len(first), "a request for no event of this run"
    return waits, start, max(first.values()), len(got) - len(first)


def summary(waits: dict[int, list[float]]) -> dict[str, float]:
    """p50, p95 and max over every event, and the least and the most p50 of a subscription."""
    every = [w for owner in waits.values() for w in owner]
    medians = [percentile(owner, 0.50) for owner in waits.values()]
    return {
        "p50": percentile(every, 0.50),
        "p95": percentile(every, 0.95),
        "max": max(every),
        "least_p50": min(medians),
        "most_p50": max(medians),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def delivery(
    arrivals: Arrivals, var_dir: Path, events: int, subscriptions: int, processes: int
) -> dict[str, Any]:
    from django.contrib.auth.models import User

    from integrations import webhooks
    from integrations.models import WebhookDelivery, WebhookSubscription

    owners = [User.objects.create_user(f"hooks-{n}").pk for n in range(subscriptions)]
    for owner in owners:
        webhooks.subscribe(User(pk=owner), arrivals.url, ["accounts.changed"])
    data = page_event()
    worker = start_worker(var_dir, processes)
    try:
        for owner in owners * 2:  # warm-up: every pool process has its database connection
            emit_one(owner, data)
        wait_arrivals(arrivals, 2 * len(owners), 60)
        arrivals.clear()

        # A burst: every event committed as fast as this process can, the workers sending.
        started = time.time()
        for n in range(events):
            emit_one(owners[n % len(owners)], data)
        committed = time.time() - started
        waits, first_created, last_arrival, duplicates = latencies(
            wait_arrivals(arrivals, events, 300)
        )
        burst = {
            "events": events,
            "commit_rate": events / committed,
            "rate": events / (last_arrival - first_created),
            **summary(waits),
            "duplicates": duplicates,
        }
        arrivals.clear()

        # A steady rate of half that throughput, for about 10 seconds.
        rate = burst["rate"] / 2
        count = max(len(owners), int(rate * 10))
        started = time.monotonic()
        for n in range(count):
            pause = started + n / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            emit_one(owners[n % len(owners)], data)
        waits, _first, _last, steady_duplicates = latencies(wait_arrivals(arrivals, count, 120))
        steady = {
            "events": count,
            "rate": rate,
            **summary(waits),
            "duplicates": steady_duplicates,
        }
    finally:
        stop_worker(worker)
    undelivered = WebhookDelivery.objects.exclude(state=WebhookDelivery.State.DELIVERED).count()
    retried = WebhookDelivery.objects.filter(attempts__gt=1).count()
    gaps = sum(
        s.last_sequence - s.deliveries.count()
        for s in WebhookSubscription.objects.filter(owner_id__in=owners)
    )
    return {"burst": burst, "steady": steady, "undelivered": undelivered, "retried": retried,
            "gaps": gaps}  # fmt: skip


# --- Report ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20_000, help="accounts in the profile")
    parser.add_argument("--rounds", type=int, default=7, help="syncs with a subscription")
    parser.add_argument("--events", type=int, default=2_000, help="events delivered")
    parser.add_argument("--subscriptions", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument(
        "--every-resource", action="store_true", help="sync contacts and policies too"
    )
    parser.add_argument("--receive", nargs=2, metavar=("PORT", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receive:
        receive(int(args.receive[0]), Path(args.receive[1]))
        return 0
    from common import require_postgres

    require_postgres("bench_webhooks")
    rows: list[tuple[str, str, str]] = []
    began = time.monotonic()
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    # A Redis database of this run's own (claimed as a test run claims one, flushed at the
    # start and the end), and a directory for the sandbox, the receiver and the worker's log.
    with redis_database() as broker, tempfile.TemporaryDirectory(prefix="webhooks-bench-") as tmp:
        var_dir = Path(tmp)
        sandbox, process = start_sandbox(var_dir / "sandbox", accounts=int(args.accounts / SHARE))
        arrivals = Arrivals(var_dir)
        try:
            sandbox.ensure_test_redirect_uri()
            setup_django(
                bench_database("portal_bench_webhooks", var_dir),
                sandbox.url,
                var_dir,
                CELERY_BROKER_URL=broker,
                WEBHOOKS_ALLOW_PRIVATE="true",
            )
            conn = linked_connection(sandbox, "bench", PROFILE)
            if not args.every_resource:
                accounts_only(conn)
            compared = sync_comparison(
                conn, arrivals.url, args.rounds, redis.Redis.from_url(broker)
            )
            delivered = delivery(arrivals, var_dir, args.events, args.subscriptions, args.workers)
        finally:
            arrivals.stop()
            stop_sandbox(process)

    results, run, written = compared.rounds, compared.run, compared.written
    ratios = [with_ / without for without, with_ in results]
    without, with_ = sorted(results, key=lambda r: r[1] / r[0])[len(results) // 2]
    spread = ", ".join(f"{r:.2f}" for r in ratios)
    total = sum(written.deliveries.values())
    by_type = ", ".join(f"{n} {t}" for t, n in sorted(written.deliveries.items()))
    rows.append(("full sync without a subscription (records/s)", f"{without:,.0f}", ""))
    rows.append(
        (
            "full sync with one subscription (records/s)",
            f"{with_:,.0f}",
            f"**{with_ / without:.2f}** of without (target ≥ 0.90); median of "
            f"{len(results)} rounds: {spread}",
        )
    )
    outbox_without, outbox_with = compared.outbox_ms
    rows.append(
        (
            "a page's time in the outbox (emit_changes + tasks queued), without / with (ms)",
            f"{outbox_without:.2f} / {outbox_with:.2f}",
            f"+{outbox_with - outbox_without:.2f} ms a page of {compared.page_ms:.1f} ms (medians)",
        )
    )
    rows.append(
        (
            f"deliveries written by one sync of {run.pages_done} pages",
            f"{total} ({by_type}); delivery tasks queued: {written.tasks}",
            f"**pages + {total - run.pages_done}** (target ≤ pages + 2)",
        )
    )
    burst, steady = delivered["burst"], delivered["steady"]
    rows.append(
        (
            f"burst: {burst['events']:,} events across {args.subscriptions} subscriptions "
            f"(committed at {burst['commit_rate']:,.0f}/s), {args.workers} worker processes",
            f"{burst['rate']:,.0f} deliveries/s",
            f"created → received p50 {burst['p50']:.2f} s, p95 {burst['p95']:.2f} s, "
            f"max {burst['max']:.2f} s; p50 by subscription {burst['least_p50']:.2f}–"
            f"{burst['most_p50']:.2f} s",
        )
    )
    rows.append(
        (
            f"steady: {steady['events']:,} events at {steady['rate']:,.0f}/s (half the burst's "
            "throughput)",
            f"p95 {1000 * steady['p95']:,.0f} ms",
            f"created → received p50 {1000 * steady['p50']:,.0f} ms, "
            f"max {1000 * steady['max']:,.0f} ms; p50 by subscription "
            f"{1000 * steady['least_p50']:,.0f}–{1000 * steady['most_p50']:,.0f} ms",
        )
    )
    rows.append(
        (
            "after both: undelivered, retried, duplicate requests, sequence gaps",
            f"{delivered['undelivered']}, {delivered['retried']}, "
            f"{burst['duplicates'] + steady['duplicates']}, {delivered['gaps']}",
            "",
        )
    )
    print(
        f"\nWebhooks benchmark: a profile with {args.accounts:,} accounts, sandbox under "
        f"gunicorn, Redis broker ({time.monotonic() - began:.0f} s; load average "
        f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)\n"
    )
    print("| measure | value | comparison |")
    print("| --- | --- | --- |")
    for measure, value, ratio in rows:
        print(f"| {measure} | {value} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
