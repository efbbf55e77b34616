"""Benchmark of Zywave's webhooks in (issue 19): how fast a change reaches the mirror under load,
and what a flood of notifications costs.

    .venv/bin/python tests/bench/bench_hooks.py [--changes 200] [--flood 5000] [--seconds 10]

The stack: PostgreSQL (a fresh database), Redis (a database of this run's own, as the broker and
the shared cache), the sandbox under gunicorn delivering its webhooks itself, the portal under
gunicorn (its defaults: 2 workers x 4 threads; production settings) and `make run`'s two Celery
workers of 2 processes each (one on `celery,sync,tokens`, one "live" on
`interactive,refetch,webhooks,celery`). Sandbox users are seeded in bulk as the drills seed them
(`seed_drill_users`: an agency, two profiles and `--book` accounts with a contact each per user);
each portal connection holds real sandbox tokens and one chosen profile (`linked_connection`).
CPU seconds per process (and PostgreSQL's and Redis's, shared with anything else running) are
read from /proc around each phase, to show where the time goes. Measured in one run:

1. Latency: `--connections` connections run full syncs back to back (queued again whenever one
   is idle, as the drills' soak does) and `--browsers` logged-in people load `/` and
   `/zywave/accounts/` (0.2 s between pages), while `--changes` record changes are made at the
   sandbox (`accounts/change`, 5 a second, round robin over the connections, each of which has
   subscribed its receiver URL to `account.updated`). Timed is the change call returning to the
   record's new version being in the mirror (the database polled every 20 ms), p50 / p95 / max,
   also from the record's `updatedDateTime`; side by side with the polling it replaces.
2. Flood: `--flood` deliveries in `--seconds` s about 50 records of one connection, posted to its
   receiver by this process (16 keep-alive connections, on a fixed schedule) with the bodies the
   sandbox sends, while the sandbox changes the 50 records four times: fetches per record per
   coalescing window (the sandbox's request counters), the receiver's answer times (and
   gunicorn's own, from its access log), 5xx, and whether the mirror then equals the sandbox's
   book, record for record (`raw`). Then a quarter as many in the same time, to another
   connection's receiver (each receiver has its own rate limit).
3. The latency again, half as many changes, with both workers on all six queues (the image's
   default `CELERY_QUEUES`), where a fetch waits for a slot among the syncs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from common import (
    REPO_ROOT,
    bench_database,
    linked_connection,
    require_postgres,
    setup_django,
    start_portal,
)

from tests.drills.helpers import percentile, queue_syncs
from tests.drills.stack import seed_drill_users
from tests.sandboxserver import Sandbox, start_sandbox, stop_sandbox
from tests.services import redis_database

PAGE_PAUSE = 0.2  # between a browsing person's pages (the drills' pace)
POLL = 0.02  # how often the mirror is looked at
FLOOD_RECORDS = 50
FLOOD_SENDERS = 16


def setup_portal(database_url: str, sandbox_url: str, broker: str, var_dir: Path) -> None:
    """Production settings (`common.setup_django`) with Redis as the broker and the shared
    cache (coalescing works across processes only there), and the pages' static manifest."""
    setup_django(database_url, sandbox_url, var_dir, REDIS_URL=broker, CELERY_BROKER_URL=broker)
    from django.core.management import call_command

    call_command("collectstatic", "--no-input", verbosity=0)  # the pages' manifest


def email(i: int) -> str:
    return f"drill{i:03d}@example.com"


def profile_of(i: int) -> str:
    return str(700000 + 2 * i)  # the first of drill user i's two profiles (SANDBOX_SETUP)


def connect(sandbox: Sandbox, indexes: list[int]) -> dict[int, Any]:
    """A linked connection per drill user, four at a time (the sandbox's login hashes the
    password: most of the time is there)."""

    def one(i: int) -> Any:
        from django.db import connection as db

        try:
            return linked_connection(sandbox, f"hooks{i:03d}", profile_of(i), email=email(i))
        finally:
            db.close()

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(indexes, pool.map(one, indexes), strict=True))


def receiver(portal: str, conn: Any) -> str:
    return f"{portal}/hooks/zywave/{conn.hook_token}/"


def session_cookie(user: Any) -> tuple[str, str]:
    """A logged-in session for `user` (what /login/ would store; the drills' `logged_in`)."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY

    store = import_module(settings.SESSION_ENGINE).SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return settings.SESSION_COOKIE_NAME, str(store.session_key)


# Make run's workers (Procfile): one for syncs and token upkeep, one "live" for the quick work,
# so that syncs never hold up a notification's fetch (docker/README.md says the same).
WORKERS = {"worker": "celery,sync,tokens", "live": "interactive,refetch,webhooks,celery"}
SHARED = "interactive,refetch,sync,tokens,webhooks,celery"  # the image's default CELERY_QUEUES


def start_worker(
    name: str, queues: str, var_dir: Path, env: dict[str, str], concurrency: int = 2
) -> Any:
    """A Celery worker of `concurrency` processes on `queues`, in its own process group."""
    log = open(var_dir / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps its copy)
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "celery"),
            "-A",
            "portal",
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"bench-{name}-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
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
    return process


def stop_worker(process: Any) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


# --- CPU: where the time goes ------------------------------------------------------------------


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process and its children, by every PostgreSQL
    and Redis server process on the machine (shared with whatever else runs), by other
    processes, and in interrupts (loopback traffic too) or stolen by the host."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    own: dict[int, float] = {}
    reaped: dict[int, float] = {}  # of its children that ended (PostgreSQL's backends)
    name_of: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        head, _, rest = stat.rpartition(")")
        fields = rest.split()
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        own[pid] = (int(fields[11]) + int(fields[12])) / tick
        reaped[pid] = (int(fields[13]) + int(fields[14])) / tick
        name_of[pid] = head.partition("(")[2]
    by_root = {pid: name for name, pid in roots.items()}

    def group(pid: int) -> str:
        ancestor: int | None = pid
        while ancestor and ancestor not in by_root:
            ancestor = parent.get(ancestor)
        if ancestor:
            return by_root[ancestor]
        for server in ("postgres", "redis"):
            if name_of[pid].startswith(server):
                return server
        return f"({name_of[pid]})"

    groups = {pid: group(pid) for pid in own}
    totals = dict.fromkeys([*roots, "postgres", "redis"], 0.0)
    others: dict[str, float] = {}
    for pid, seconds in own.items():
        # The children a group's top process reaped were the group's (a backend that ended).
        top = groups.get(parent[pid]) != groups[pid]
        if groups[pid] in totals:
            totals[groups[pid]] += seconds + (reaped[pid] if top else 0.0)
        else:
            others[groups[pid]] = others.get(groups[pid], 0.0) + seconds
    # The whole machine's time: processes' time that is not ours is another job's.
    cpu = [int(n) / tick for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    totals["other processes"] = cpu[0] + cpu[1] + cpu[2] - sum(totals.values())
    totals["interrupts, steal"] = cpu[5] + cpu[6] + cpu[7]
    return {**totals, **others}


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What each used in between; of the other processes (named in parentheses), the three
    that used most, if they used a second or more (another job's, or the kernel's threads)."""
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    named = {name: sec for name, sec in used.items() if not name.startswith("(")}
    busiest = sorted((n for n in used if n.startswith("(")), key=lambda n: -used[n])[:3]
    return {
        name: round(sec, 1)
        for name, sec in [*named.items(), *((n, used[n]) for n in busiest)]
        if not name.startswith("(") or sec >= 1
    }


# --- 1. Latency under load --------------------------------------------------------------------


class Browsing:
    """People loading the dashboard and their accounts page until `stop` is set."""

    def __init__(self, portal: str, users: list[Any]) -> None:
        self.portal = portal
        self.stop = threading.Event()
        self.samples: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.cookies = [session_cookie(user) for user in users]
        self.threads = [
            threading.Thread(target=self.browse, args=(cookie,), daemon=True)
            for cookie in self.cookies
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def browse(self, cookie: tuple[str, str]) -> None:
        http = requests.Session()
        http.cookies.set(*cookie, domain="127.0.0.1")
        paths = ["/", "/zywave/accounts/"]
        n = 0
        while not self.stop.is_set():
            path = paths[n % 2]
            n += 1
            started = time.monotonic()
            try:
                answer = http.get(f"{self.portal}{path}", timeout=30, allow_redirects=False)
                status = answer.status_code
            except requests.RequestException:
                status = 0
            with self.lock:
                self.samples.append((time.monotonic() - started, status))
            self.stop.wait(PAGE_PAUSE)

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


class Syncing:
    """Full syncs of `ids` back to back: every second, one is queued for each idle connection
    (`queue_syncs`, as the drills' soak asks for them)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.started_at = datetime.now(UTC)

    def loop(self) -> None:
        from django.db import connection as db

        from integrations.models import SyncRun

        try:
            while not self.stop.is_set():
                busy = set(
                    SyncRun.objects.active()
                    .filter(connection_id__in=self.ids)
                    .values_list("connection_id", flat=True)
                )
                queue_syncs([pk for pk in self.ids if pk not in busy], full=True)
                self.stop.wait(1.0)
        finally:
            db.close()

    def runs(self) -> dict[str, int]:
        from integrations.models import SyncRun

        states: dict[str, int] = {}
        for state in SyncRun.objects.filter(
            connection_id__in=self.ids, queued_at__gte=self.started_at
        ).values_list("state", flat=True):
            states[state] = states.get(state, 0) + 1
        return states


class Mirror:
    """Watches the mirror for the changes made: when each record's new version (its
    updatedDateTime) is first there, and whether a later look finds an older one again."""

    def __init__(self) -> None:
        self.expected: dict[tuple[int, str], datetime] = {}
        self.seen: dict[tuple[int, str], float] = {}
        self.reverted: set[tuple[int, str]] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def expect(self, key: tuple[int, str], version: datetime) -> None:
        with self.lock:
            self.expected[key] = version

    def loop(self) -> None:
        from django.db import connection as db

        from integrations.models import Account

        try:
            while not self.stop.is_set():
                with self.lock:
                    wanted = dict(self.expected)
                if wanted:
                    rows = Account.all_rows.filter(
                        connection_id__in={c for c, _ in wanted},
                        zywave_id__in={r for _, r in wanted},
                    ).values_list("connection_id", "zywave_id", "updated_at_zywave")
                    now = time.time()
                    for conn_id, record_id, version in rows:
                        key = (conn_id, record_id)
                        if key not in wanted:
                            continue
                        if version is not None and version >= wanted[key]:
                            self.seen.setdefault(key, now)
                        elif key in self.seen:
                            self.reverted.add(key)
                self.stop.wait(POLL)
        finally:
            db.close()

    def missing(self) -> int:
        with self.lock:
            return len(set(self.expected) - set(self.seen))


def latency(
    sandbox: Sandbox,
    portal: str,
    conns: dict[int, Any],
    changes: int,
    browsers: int,
    roots: dict[str, int],
) -> dict[str, Any]:
    from django.contrib.auth.models import User

    from integrations.models import ZywaveNotification

    known = {d["id"] for d in sandbox.webhook_deliveries(limit=100_000)}
    browsing = Browsing(
        portal,
        list(
            User.objects.filter(zywave_connection__in=list(conns.values())[:browsers]).order_by(
                "pk"
            )
        ),
    )
    syncing = Syncing([conn.pk for conn in conns.values()])
    mirror = Mirror()
    mirror.thread.start()
    syncing.thread.start()
    browsing.start()
    time.sleep(3)  # syncs and pages under way before the first change
    cpu_before = cpu_seconds(roots)
    made: list[tuple[int, str, float, datetime]] = []  # (connection, record, returned, version)
    order = list(conns)
    started = time.monotonic()
    for k in range(changes):
        due = started + k * 0.2
        time.sleep(max(0.0, due - time.monotonic()))
        i = order[k % len(order)]
        answer = sandbox.control(
            "POST", "accounts/change", profile_id=profile_of(i), count=1, field="name"
        )
        returned = time.time()
        version = datetime.fromisoformat(answer["updatedDateTime"])
        key = (conns[i].pk, str(answer["ids"][0]))
        mirror.expect(key, version)
        made.append((key[0], key[1], returned, version))
    deadline = time.monotonic() + 30
    while mirror.missing() and time.monotonic() < deadline:
        time.sleep(0.1)
    cpu = cpu_used(cpu_before, cpu_seconds(roots))
    time.sleep(1)  # a sync page written after its record's fetch would show now
    browsing.join()
    syncing.stop.set()
    syncing.thread.join(timeout=30)
    mirror.stop.set()
    mirror.thread.join(timeout=30)

    waits = [mirror.seen[(c, r)] - at for c, r, at, _ in made if (c, r) in mirror.seen]
    from_version = [
        mirror.seen[(c, r)] - v.timestamp() for c, r, _, v in made if (c, r) in mirror.seen
    ]
    # Which path brought each change: a re-fetch that wrote it ("updated"), or a sync page that
    # had it first (the re-fetch then found it "unchanged").
    outcomes: dict[str, int] = {}
    for conn_id, record_id, _, _ in made:
        for outcome in ZywaveNotification.objects.filter(
            connection_id=conn_id, resource="accounts", record_id=record_id
        ).values_list("outcome", flat=True):
            outcomes[outcome or "queued"] = outcomes.get(outcome or "queued", 0) + 1
    deliveries = [d for d in sandbox.webhook_deliveries(limit=100_000) if d["id"] not in known]
    attempts = [a for d in deliveries for a in d.get("attempts", [])]
    pages = [t for t, s in browsing.samples if s]
    return {
        "changes": len(made),
        "in_mirror": len(waits),
        "p50": statistics.median(waits) if waits else None,
        "p95": percentile(waits, 0.95),
        "max": max(waits) if waits else None,
        "p95_from_updated": percentile(from_version, 0.95),
        "p50_from_updated": statistics.median(from_version) if from_version else None,
        "outcomes": outcomes,
        "reverted": len(mirror.reverted),
        "deliveries": len(deliveries),
        "delivery_attempts_failed": sum(
            1 for a in attempts if not (a.get("status") and 200 <= a["status"] < 300)
        ),
        "sync_runs": syncing.runs(),
        "pages": len(browsing.samples),
        "pages_p50": statistics.median(pages) if pages else None,
        "pages_p95": percentile(pages, 0.95),
        "pages_5xx": sum(1 for _, s in browsing.samples if s >= 500),
        "pages_not_200": sum(1 for _, s in browsing.samples if s != 200),
        "seconds": time.monotonic() - started,
        "cpu_seconds": cpu,
    }


# --- 2. The flood ------------------------------------------------------------------------------


def body(record_id: str) -> bytes:
    """What the sandbox sends (sandbox/zywave/webhooks.py `body_of`), timed now."""
    when = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps(
        {
            "eventType": "account.updated",
            "eventDateTime": when,
            "recordType": "Account",
            "recordId": record_id,
        }
    ).encode()


def flood_sender(
    url: str,
    ids: list[str],
    mine: range,
    start: float,
    every: float,
    out: list[tuple[float, float, int]],
) -> None:
    """Send deliveries `mine` (each due at start + k * every) over one keep-alive connection;
    record (lateness, answer time, status) of each."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"Content-Type": "application/json", "User-Agent": "bench-hooks"}
    for k in mine:
        due = start + k * every
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        sent = time.monotonic()
        try:
            conn.request("POST", parts.path, body=body(ids[k % len(ids)]), headers=headers)
            answer = conn.getresponse()
            answer.read()
            status = answer.status
            if answer.getheader("Connection", "").lower() == "close":
                conn.close()
        except (OSError, http.client.HTTPException):
            status = 0
            conn.close()
        out.append((sent - due, time.monotonic() - sent, status))
    conn.close()


def sandbox_book(conn: Any) -> dict[str, Any]:
    """Every account the connection's profile shows at the sandbox, by id."""
    from integrations.tokens import client_for

    client = client_for(conn)
    book: dict[str, Any] = {}
    skip = 0
    while True:
        page = client.get(
            "/accounts/v2.0/account", {"$top": "100", "$skip": str(skip), "$orderby": "id"}
        )
        book.update({str(item["id"]): item for item in page["items"]})
        skip += len(page["items"])
        if not page["hasMoreResults"] or not page["items"]:
            return book


def flood(
    sandbox: Sandbox,
    portal: str,
    conn: Any,
    profile: str,
    deliveries: int,
    seconds: float,
    roots: dict[str, int],
    access_log: Path,
) -> dict[str, Any]:
    """`deliveries` in `seconds` about the connection's first FLOOD_RECORDS accounts."""
    from django.conf import settings

    from integrations.models import Account, ZywaveNotification

    ids = [
        str(i)
        for i in Account.objects.filter(connection=conn)
        .order_by("zywave_id")
        .values_list("zywave_id", flat=True)[:FLOOD_RECORDS]
    ]
    url = receiver(portal, conn)
    sandbox.control("POST", "counters/reset")
    every = seconds / deliveries
    results: list[list[tuple[float, float, int]]] = [[] for _ in range(FLOOD_SENDERS)]
    start = time.monotonic() + 0.5
    senders = [
        threading.Thread(
            target=flood_sender,
            args=(url, ids, range(n, deliveries, FLOOD_SENDERS), start, every, results[n]),
            daemon=True,
        )
        for n in range(FLOOD_SENDERS)
    ]
    logged_before = access_log.stat().st_size
    cpu_before = cpu_seconds(roots)
    for sender in senders:
        sender.start()
    changed = 0
    for at in (0.5, 3.5, 6.5, 9.5):  # the records change at the sandbox during the flood
        time.sleep(max(0.0, start + at * seconds / 10 - time.monotonic()))
        sandbox.control("POST", "accounts/change", profile_id=profile, ids=ids, field="name")
        changed += 1
    for sender in senders:
        sender.join(timeout=120)
    span = time.monotonic() - start
    cpu = cpu_used(cpu_before, cpu_seconds(roots))
    # The trailing fetches come a window after the last delivery: wait for every notification
    # to be settled (fetched or found unchanged).
    deadline = time.monotonic() + 30
    queued = ZywaveNotification.objects.filter(connection=conn, state="queued")
    while queued.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    api = sandbox.counters()["api"]
    fetches = {
        record_id: sum(
            n for key, n in api.items() if key.startswith(f"/accounts/v2.0/account/{record_id}:")
        )
        for record_id in ids
    }
    mirrored = dict(Account.objects.filter(connection=conn).values_list("zywave_id", "raw"))
    book = sandbox_book(conn)
    wrong = sorted(k for k in set(book) | set(mirrored) if book.get(k) != mirrored.get(k))
    changed_ok = sum(1 for i in ids if mirrored.get(i) == book.get(i) and "(rev" in book[i]["name"])
    rows = [r for per in results for r in per]
    answers = [t for _, t, s in rows if s]
    with access_log.open("rb") as log:  # gunicorn's own time for each (%(M)s, in ms)
        log.seek(logged_before)
        served = [
            int(found.group(1)) / 1000
            for line in log.read().decode(errors="replace").splitlines()
            if "POST /hooks/zywave/" in line
            and (found := re.search(r" (\d+)ms\b", line)) is not None
        ]
    window = float(settings.ZYWAVE_WEBHOOK_COALESCE_SECONDS)
    windows = span / window
    per_record = sorted(fetches.values())
    # One fetch at once, then one at the end of each window while deliveries keep coming.
    bound = math.ceil(windows) + 1
    return {
        "deliveries": len(rows),
        "span": span,
        "statuses": {
            s: sum(1 for _, _, x in rows if x == s) for s in sorted({x for *_, x in rows})
        },
        "server_errors": sum(1 for _, _, s in rows if s >= 500 or s == 0),
        "p50": statistics.median(answers) if answers else None,
        "p95": percentile(answers, 0.95),
        "max": max(answers) if answers else None,
        "late_p95": percentile([late for late, _, _ in rows], 0.95),
        "served_p50": statistics.median(served) if served else None,
        "served_p95": percentile(served, 0.95),
        "cpu_seconds": cpu,
        "bound": bound,
        "window": window,
        "windows": windows,
        "fetches": sum(per_record),
        "fetches_min": per_record[0],
        "fetches_max": per_record[-1],
        "per_window": sum(per_record) / len(per_record) / windows,
        "kept": ZywaveNotification.objects.filter(connection=conn).count(),
        "book": len(book),
        "wrong": len(wrong),
        "wrong_ids": wrong[:5],
        "changed_ok": changed_ok,
        "changes": changed,
    }


# --- The run ---------------------------------------------------------------------------------


def seconds_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20, help="connections syncing")
    parser.add_argument("--browsers", type=int, default=20, help="people browsing")
    parser.add_argument("--changes", type=int, default=200, help="record changes at the sandbox")
    parser.add_argument("--book", type=int, default=250, help="accounts per sandbox user")
    parser.add_argument("--flood", type=int, default=5000, help="deliveries in the flood")
    parser.add_argument("--seconds", type=float, default=10.0, help="the flood's length")
    parser.add_argument("--keep", type=Path, help="keep the logs here (default: removed)")
    args = parser.parse_args()
    require_postgres("bench_hooks")
    began = time.monotonic()

    with redis_database() as broker, tempfile.TemporaryDirectory(prefix="hooks-bench-") as tmp:
        var_dir = Path(tmp)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            var_dir = args.keep
        sandbox, sandbox_process = start_sandbox(var_dir / "sandbox", accounts=300)
        portal_process = None
        workers: list[Any] = []
        try:
            # The last two take the floods: one receiver each, so that the second does not
            # meet the first's rate limit (ZYWAVE_WEBHOOK_RATE_LIMIT a minute).
            users = args.connections + 2
            seeded = seed_drill_users(var_dir / "sandbox", users, users, args.book, args.book)
            sandbox.ensure_test_redirect_uri()
            setup_portal(
                bench_database("portal_bench_hooks", var_dir), sandbox.url, broker, var_dir
            )
            netguard = os.pathsep.join([str(REPO_ROOT / "tests" / "netguard"), str(REPO_ROOT)])
            portal, portal_process = start_portal(var_dir)  # 2 workers x 4 threads, the defaults
            env = {**os.environ, "PYTHONPATH": netguard}
            workers = [start_worker(n, q, var_dir, env) for n, q in WORKERS.items()]
            from integrations.tasks import heartbeat

            heartbeat.delay().get(timeout=60)  # a worker consumes
            conns = connect(sandbox, list(range(1, users + 1)))
            from integrations.sync import sync_now

            for conn in conns.values():  # each mirror complete before anything changes
                run = sync_now(conn, full=True)
                assert run is not None and run.state == "succeeded", run and run.error
            ready = time.monotonic() - began
            flood_conns = [conns.pop(users - 1), conns.pop(users)]
            roots = {
                "portal (gunicorn)": portal_process.pid,
                **{f"{n} worker": w.pid for n, w in zip(WORKERS, workers, strict=True)},
                "sandbox": sandbox_process.pid,
                "this process": os.getpid(),
            }
            for i, conn in conns.items():
                sandbox.subscribe_webhook(receiver(portal, conn), "account.updated", user=email(i))
            late = latency(sandbox, portal, conns, args.changes, args.browsers, roots)
            from tests.drills.helpers import wait_idle

            ids = [c.pk for c in conns.values()]
            wait_idle(ids, timeout=120)
            log = next(var_dir.glob("portal-*.log"))
            flooded = flood(
                sandbox,
                portal,
                flood_conns[0],
                profile_of(users - 1),
                args.flood,
                args.seconds,
                roots,
                log,
            )
            # A quarter of the rate: what the receiver answers below the machine's capacity.
            half = flood(
                sandbox,
                portal,
                flood_conns[1],
                profile_of(users),
                args.flood // 4,
                args.seconds,
                roots,
                log,
            )
            # The latency again with the image's default instead: every worker on all six
            # queues, so a fetch waits for a free slot among the syncs.
            for worker in workers:
                stop_worker(worker)
            workers = [start_worker(n, SHARED, var_dir, env) for n in WORKERS]
            heartbeat.delay().get(timeout=60)
            roots.update({f"{n} worker": w.pid for n, w in zip(WORKERS, workers, strict=True)})
            shared = latency(sandbox, portal, conns, args.changes // 2, args.browsers, roots)
            wait_idle(ids, timeout=120)
        finally:
            for worker in workers:
                stop_worker(worker)
            if portal_process is not None:
                stop_sandbox(portal_process)
            stop_sandbox(sandbox_process)

    from django.conf import settings

    interval = settings.ZYWAVE_SYNC_INTERVAL_MINUTES
    print(
        f"\nZywave webhooks in: sandbox users, accounts, contacts {seeded}; set up in "
        f"{ready:.0f} s, whole run {time.monotonic() - began:.0f} s\n"
    )
    print("| measure | value | comparison | target |")
    print("| --- | --- | --- | --- |")
    for figures, layout in ((late, "make run's workers"), (shared, "all queues on each worker")):
        print(
            f"| change at the sandbox → record in the mirror, {figures['changes']} changes while "
            f"{len(conns)} connections sync and {args.browsers} people browse ({layout}): "
            f"p50 / p95 / max | {seconds_text(figures['p50'])} / "
            f"**{seconds_text(figures['p95'])}** / {seconds_text(figures['max'])} "
            f"({figures['in_mirror']} of {figures['changes']} in the mirror; from updatedDateTime "
            f"p95 {seconds_text(figures['p95_from_updated'])}) | polling every {interval} min "
            f"(ZYWAVE_SYNC_INTERVAL_MINUTES): on average {interval / 2:g} min stale, at worst "
            f"{interval} min | p95 < 2 s "
            f"{'✓' if figures['p95'] < 2 and figures['in_mirror'] == figures['changes'] else '✗'} |"
        )
    for figures in (flooded, half):
        rate = figures["deliveries"] / figures["span"]
        print(
            f"| flood: {figures['deliveries']:,} deliveries due in {args.seconds:g} s about "
            f"{FLOOD_RECORDS} records, sent in {figures['span']:.1f} s ({rate:.0f}/s): the "
            f"receiver's answer, p50 / p95 / max | {ms(figures['p50'])} / "
            f"**{ms(figures['p95'])}** / {ms(figures['max'])} | gunicorn's own time (access "
            f"log): p50 {ms(figures['served_p50'])}, p95 {ms(figures['served_p95'])} | p95 < "
            f"50 ms {'✓' if figures['p95'] < 0.05 else '✗'} |"
        )
    print(
        f"| flood: fetches per record per {flooded['window']:g} s window "
        f"| **{flooded['per_window']:.2f}** ({flooded['fetches']} fetches: "
        f"{flooded['fetches_min']}–{flooded['fetches_max']} a record over "
        f"{flooded['windows']:.1f} windows) | one at once, then one a window: at most "
        f"{flooded['bound']} a record | about 1 "
        f"{'✓' if flooded['fetches_max'] <= flooded['bound'] else '✗'} |"
    )
    errors = flooded["server_errors"] + half["server_errors"]
    print(
        f"| flood: 5xx (or no answer) | {errors} (statuses {flooded['statuses']}, "
        f"{half['statuses']}) | | 0 {'✓' if not errors else '✗'} |"
    )
    exact = all(not f["wrong"] and f["changed_ok"] == FLOOD_RECORDS for f in (flooded, half))
    print(
        f"| flood: the mirror against the sandbox's book afterwards | {flooded['wrong']} and "
        f"{half['wrong']} of {flooded['book']} records differ; {flooded['changed_ok']} and "
        f"{half['changed_ok']} of {FLOOD_RECORDS} at their last version (each changed "
        f"{flooded['changes']} times during the flood) | | exact {'✓' if exact else '✗'} |"
    )
    phases = (
        ("latency, make run's workers", late),
        ("latency, all queues on each worker", shared),
        ("flood", flooded),
        ("flood at a quarter of the rate", half),
    )
    for phase, figures in phases:
        used = ", ".join(f"{name} {sec:.1f}" for name, sec in figures["cpu_seconds"].items())
        print(f"\nCPU seconds during the {phase}: {used}")
    details = {"latency": late, "latency_shared": shared, "flood": flooded, "half": half}
    print("\nDetails:", json.dumps(details, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    raise SystemExit(main())
