"""Benchmark of the integration API (`/api/v1/`) on PostgreSQL, the portal under gunicorn.

    .venv/bin/python tests/bench/bench_api.py [--accounts 100000] [--incremental 20000]

Measured side by side in one run, on mirror rows shaped like the sandbox's accounts (raw JSON
included) and written by `mirror.upsert` a page of 100 at a time, as a sync writes them:
1. paging: SQL queries per page of `GET /api/v1/accounts`, counted in this process
   (CaptureQueriesContext), with 10 accounts in the table and with `--accounts` (target: the
   same), and the time of a first and of a middle page at each size;
2. export: `--accounts` accounts through `GET /api/v1/accounts?page_size=500` following `next`
   over HTTP from the portal under gunicorn, against the same rows read with one SQL query and
   encoded with orjson in this process (target: at least 0.5 of its rate); the median of
   `--rounds` rounds, each export between two baseline runs;
3. incremental: after a full sync of `--incremental` accounts that changed 1% of them and no
   longer saw 0.1% (tombstones through `mirror.remove_unseen`), `updated_since=<the newest
   changed_at before that sync>` returns exactly those, in one or two pages of 500;
4. proxy: `GET /api/v1/zywave/accounts/v2.0/account?$top=1` against the same call made directly
   to the sandbox (same bearer token, same `Profile` header): the median over a direct call one
   request at a time (target: at most 3 ms more), then the sandbox's saturation on that route
   (20 clients as fast as they can), then p95 of both under 20 concurrent clients at fixed
   rates below that saturation (target: the proxy's p95 at most 1.3x the direct one's).

The portal runs with production settings (DEBUG off), gunicorn's default 2 workers x 4
threads, and API_RATE_LIMIT raised so the throttle counts every request but refuses none.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from common import bench_database, linked_connection, require_postgres, setup_django, start_portal

from tests.sandboxserver import start_sandbox, stop_sandbox

PAGE = 500  # the API's largest page
SYNC_PAGE = 100  # what a sync writes per statement

# The sandbox's vocabulary (sandbox/zywave/seed.py), enough for realistic names and sizes.
PREFIXES = ["Blue", "Granite", "Cedar", "Northern", "Silver", "Golden", "Red Rock", "Maple"]
CORES = ["Ridge", "Valley", "Creek", "Pine", "Bay", "Hill", "Point", "Field", "Stone"]
TRADES = [
    ("Logistics", "484110"), ("Dental", "621210"), ("Construction", "236220"),
    ("Bakery", "311811"), ("Consulting", "541611"), ("Roofing", "238160"),
    ("Veterinary Clinic", "541940"), ("Software", "541511"), ("Law Office", "541110"),
]  # fmt: skip
SUFFIXES = ["LLC", "Inc.", "Co.", "Group", "Partners", "Ltd.", ""]
CITIES = [
    ("Milwaukee", "WI", "532"), ("Chicago", "IL", "606"), ("Minneapolis", "MN", "554"),
    ("Denver", "CO", "802"), ("Austin", "TX", "787"), ("Nashville", "TN", "372"),
]  # fmt: skip
STREETS = ["Main St", "Oak Ave", "Lake Dr", "Market St", "2nd St", "Commerce Pkwy"]
LINES = ["Commercial Auto", "General Liability", "Workers Comp", "Property", "Cyber", "BOP"]
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def sandbox_account(rng: random.Random, account_id: int) -> dict[str, Any]:
    """One account as the sandbox's Accounts API answers it (`sandbox/zywave/api.py`)."""
    trade, naics = rng.choice(TRADES)
    city, state, zip_prefix = rng.choice(CITIES)
    archived = rng.random() < 0.05
    name_parts = (rng.choice(PREFIXES), rng.choice(CORES), trade, rng.choice(SUFFIXES))
    updated = EPOCH - timedelta(seconds=rng.randrange(365 * 86400))
    return {
        "id": account_id,
        "name": " ".join(part for part in name_parts if part),
        "classification": rng.choice(["Client", "Prospect", "Former Client"]),
        "linesOfBusiness": rng.sample(LINES, rng.randint(1, 3)),
        "clientSize": rng.choice(["Small", "Medium", "Large", "Enterprise"]),
        "isActive": not archived and rng.random() > 0.05,
        "isArchived": archived,
        "numberOfEmployees": rng.choice([None, rng.randint(1, 2000)]),
        "naicsCodes": [naics],
        "addressLine1": f"{rng.randint(1, 9999)} {rng.choice(STREETS)}",
        "city": city,
        "state": state,
        "postalCode": f"{zip_prefix}{rng.randrange(100):02d}",
        "primaryPhone": f"({rng.randrange(200, 999)}) 555-{rng.randrange(10000):04d}",
        "updatedDateTime": updated.isoformat().replace("+00:00", "Z"),
    }


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def mirrored(username: str, count: int, seed: int) -> tuple[Any, str, list[dict[str, Any]]]:
    """A portal user with a connection, `count` mirrored accounts (one full sync's run 1) and
    a `read` key: (connection, key, the records as Zywave sent them)."""
    from django.contrib.auth.models import User
    from django.db import transaction

    from integrations.api.keys import issue
    from integrations.models import Connection

    user = User.objects.create_user(username)
    conn = Connection.objects.create(
        user=user, zywave_subject=f"sub-{username}", zywave_email=f"{username}@agency.test"
    )
    rng = random.Random(seed)
    records = [sandbox_account(rng, n) for n in range(1, count + 1)]
    write(conn.pk, 1, records)
    with transaction.atomic():
        _key, secret = issue(user, "bench", ["read"])
    return conn, secret, records


def write(connection_id: int, run_id: int, records: list[dict[str, Any]]) -> None:
    """The records as a sync writes them: `mirror.upsert`, one transaction per page of 100."""
    from django.db import transaction

    from integrations.mirror import upsert

    for start in range(0, len(records), SYNC_PAGE):
        with transaction.atomic():
            upsert("accounts", connection_id, run_id, records[start : start + SYNC_PAGE])


def analyze() -> None:
    """Planner statistics for the rows just written, as autovacuum gathers them within a
    minute of a large write in production. (Without them, PostgreSQL guesses the connection
    holds a handful of rows, and sorts all of them for every page.)"""
    from django.db import connection as db

    with db.cursor() as cursor:
        cursor.execute("ANALYZE integrations_account")


# --- 1. Paging --------------------------------------------------------------------------------


class InProcess:
    """Django's test client calling the API in this process with a key, over "https" (the
    settings are production's: plain HTTP would be redirected)."""

    def __init__(self, key: str) -> None:
        from django.test import Client

        self.client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {key}")

    def get(self, url: str) -> dict[str, Any]:
        parts = urlsplit(url)
        response = self.client.get(f"{parts.path}?{parts.query}", secure=True)
        assert response.status_code == 200, (response.status_code, response.content[:300])
        return dict(orjson.loads(response.content))


def queries(api: InProcess, url: str) -> tuple[int, dict[str, Any]]:
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(db) as captured:
        body = api.get(url)
    return len(captured.captured_queries), body


def middle_cursor(connection_id: int) -> str:
    """The cursor of the record halfway through the connection's keyset order."""
    from integrations.api.records import encode_cursor
    from integrations.models import Account

    rows = Account.objects.filter(connection_id=connection_id).order_by("changed_at", "pk")
    half = rows.count() // 2
    changed_at, pk = rows.values_list("changed_at", "pk")[half]
    return encode_cursor(changed_at, pk)


def paging(key: str, connection_id: int, size: int) -> dict[str, Any]:
    """Queries of a first page and of the page after its `next`, and the median time of a
    first page and of a page from the middle of the keyset (20 of each), at page_size=100."""
    api = InProcess(key)
    first_url = "/api/v1/accounts?page_size=5"
    api.get(first_url)  # the key's once-a-minute last_used_at write happens here, not below
    first, body = queries(api, first_url)
    assert len(body["results"]) == 5 and body["next"], body
    second, body = queries(api, body["next"])
    assert len(body["results"]) == min(5, size - 5), body
    timed: dict[str, float] = {}
    for label, url in (
        ("first_ms", "/api/v1/accounts?page_size=100"),
        ("middle_ms", f"/api/v1/accounts?page_size=100&cursor={middle_cursor(connection_id)}"),
    ):
        times = []
        for _ in range(20):
            started = time.perf_counter()
            api.get(url)
            times.append(time.perf_counter() - started)
        timed[label] = statistics.median(times) * 1000
    return {"first": first, "second": second, **timed}


# --- 2. Export --------------------------------------------------------------------------------


def walk(
    session: requests.Session, url: str, on_page: Callable[[list[Any]], None] = lambda _: None
) -> tuple[int, int, int]:
    """Follow `next` from `url` to the end: (records, pages, bytes received)."""
    records = pages = received = 0
    next_url: str | None = url
    while next_url:
        response = session.get(next_url, timeout=60)
        assert response.status_code == 200, (response.status_code, response.text[:300])
        body = orjson.loads(response.content)
        records += len(body["results"])
        pages += 1
        received += len(response.content)
        on_page(body["results"])
        next_url = body["next"]
    return records, pages, received


def export(portal: str, key: str) -> tuple[int, float, int, int]:
    """Every account through the API with one keep-alive session: (records, seconds, pages,
    bytes)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    seen: set[str] = set()

    def check(results: list[Any]) -> None:
        seen.update(record["id"] for record in results)

    started = time.perf_counter()
    records, pages, received = walk(session, f"{portal}/api/v1/accounts?page_size={PAGE}", check)
    elapsed = time.perf_counter() - started
    assert len(seen) == records, "a record came twice"
    return records, elapsed, pages, received


def baseline(connection_id: int) -> tuple[int, float, int]:
    """The same records, one SQL query, encoded with orjson: (records, seconds, bytes)."""
    from django.db import connection as db

    from integrations.api.records import ACCOUNTS
    from integrations.models import Account

    names = [field.name for field in ACCOUNTS.fields]
    columns = ", ".join(
        str(Account._meta.get_field(field.column).column)  # type: ignore[union-attr]
        for field in ACCOUNTS.fields
    )
    sql = (
        f"SELECT {columns}, raw::text FROM integrations_account "  # noqa: S608
        "WHERE connection_id = %s AND deleted_at IS NULL ORDER BY changed_at, id"
    )
    started = time.perf_counter()
    with db.cursor() as cursor:
        cursor.execute(sql, [connection_id])
        rows = cursor.fetchall()
    records = []
    for *cells, raw in rows:
        record = dict(zip(names, cells, strict=True))
        record["deleted"] = False
        record["raw"] = orjson.Fragment(raw)
        records.append(record)
    body = orjson.dumps({"results": records, "next": None}, option=orjson.OPT_UTC_Z)
    return len(records), time.perf_counter() - started, len(body)


# --- 3. Incremental ---------------------------------------------------------------------------


def incremental(
    portal: str, conn: Any, key: str, records: list[dict[str, Any]], seed: int
) -> dict[str, Any]:
    """A second full sync changes 1% of the records and misses 0.1% (deleted at Zywave); the
    pull from the newest changed_at before it must return exactly those, once each."""
    from django.db.models import Max

    from integrations import mirror
    from integrations.models import Account

    mark = Account.all_rows.filter(connection=conn).aggregate(Max("changed_at"))["changed_at__max"]
    rng = random.Random(seed)
    ids = [record["id"] for record in records]
    changed = set(rng.sample(ids, len(ids) // 100))
    removed = set(rng.sample(sorted(set(ids) - changed), max(1, len(ids) // 1000)))
    now = rfc3339(datetime.now(UTC))
    second_sync = []
    for record in records:
        if record["id"] in removed:
            continue
        if record["id"] in changed:
            record = {**record, "name": record["name"] + " (renamed)", "updatedDateTime": now}
        second_sync.append(record)
    write(conn.pk, 2, second_sync)
    mirror.remove_unseen(conn.pk, 2)

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    pulled: list[dict[str, Any]] = []
    url = f"{portal}/api/v1/accounts?" + requests.compat.urlencode(
        {"page_size": PAGE, "updated_since": rfc3339(mark)}
    )
    started = time.perf_counter()
    _records, pages, _bytes = walk(session, url, pulled.extend)
    elapsed = time.perf_counter() - started
    again = []  # the same pull repeated: what a warm portal process takes
    for _ in range(5):
        started = time.perf_counter()
        walk(session, url)
        again.append(time.perf_counter() - started)

    live = [record for record in pulled if not record["deleted"]]
    tombstones = [record for record in pulled if record["deleted"]]
    exact = (
        len(pulled) == len({record["id"] for record in pulled})
        and {record["id"] for record in live} == {str(n) for n in changed}
        and all(record["name"].endswith(" (renamed)") for record in live)
        and {record["id"] for record in tombstones} == {str(n) for n in removed}
        and all(set(record) == {"id", "deleted", "changed_at"} for record in tombstones)
    )
    return {
        "accounts": len(records),
        "changed": len(changed),
        "removed": len(removed),
        "live": len(live),
        "tombstones": len(tombstones),
        "pages": pages,
        "seconds": elapsed,
        "again": statistics.median(again),
        "exact": exact,
    }


# --- 4. Proxy --------------------------------------------------------------------------------

PROFILE = "50001"  # Summit Ridge Insurance (sandbox/zywave/seed.py)
ROUTE = "accounts/v2.0/account?$top=1"
CLIENTS = 20


class Caller:
    """The same route, called directly at the sandbox as the portal calls it (the connection's
    bearer token and Profile header) or through the portal's proxy with an API key."""

    def __init__(self, sandbox_url: str, portal: str, conn: Any, key: str) -> None:
        from integrations.tokens import client_for

        self.urls = {"direct": f"{sandbox_url}/{ROUTE}", "proxy": f"{portal}/api/v1/zywave/{ROUTE}"}
        profile = client_for(conn).profile_header
        assert profile, "the bench connection has no profile chosen"
        self.headers = {
            "direct": {"Authorization": f"Bearer {conn.access_token}", "Profile": profile},
            "proxy": {"Authorization": f"Bearer {key}"},
        }

    def session(self, kind: str) -> requests.Session:
        session = requests.Session()
        session.headers.update(self.headers[kind])
        return session

    def call(self, session: requests.Session, kind: str) -> float:
        """Seconds for one call, checked: 200 and one account."""
        started = time.perf_counter()
        response = session.get(self.urls[kind], timeout=30)
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, (kind, response.status_code, response.text[:300])
        assert len(response.json()["items"]) == 1, response.text[:300]
        return elapsed


def one_at_a_time(caller: Caller, pairs: int) -> dict[str, list[float]]:
    """Direct and proxied calls alternately, one request at a time, keep-alive sessions."""
    sessions = {kind: caller.session(kind) for kind in ("direct", "proxy")}
    times: dict[str, list[float]] = {"direct": [], "proxy": []}
    for index in range(pairs + 50):
        for kind in ("direct", "proxy") if index % 2 else ("proxy", "direct"):
            elapsed = caller.call(sessions[kind], kind)
            if index >= 50:  # the first 50 warm pools, connections and caches up
                times[kind].append(elapsed)
    return times


def saturation(caller: Caller, seconds: float) -> float:
    """Requests/s the sandbox serves on the route to CLIENTS clients calling as fast as they
    can (closed loop), directly."""
    deadline = time.perf_counter() + seconds
    counts = [0] * CLIENTS

    def client(index: int) -> None:
        session = caller.session("direct")
        while time.perf_counter() < deadline:
            caller.call(session, "direct")
            counts[index] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def at_rate(caller: Caller, kind: str, rate: float, seconds: float) -> list[float]:
    """Latencies of calls at `rate` requests/s in all (open loop), spread over CLIENTS clients
    each on a fixed schedule. Measured from when each call was due, so a client held up by a
    slow answer counts the wait of the calls it sent late (no coordinated omission)."""
    period = CLIENTS / rate
    start = time.perf_counter() + 0.5
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]

    def client(index: int) -> None:
        session = caller.session(kind)
        due = start + index / rate
        while due < start + seconds:
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            response = session.get(caller.urls[kind], timeout=30)
            latencies[index].append(time.perf_counter() - due)
            assert response.status_code == 200, (kind, response.status_code, response.text[:300])
            due += period

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [latency for per_client in latencies for latency in per_client]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def proxy(
    caller: Caller, pairs: int, seconds: float, shares: list[float]
) -> tuple[dict[str, list[float]], float, list[tuple[float, dict[str, list[float]]]]]:
    sequential = one_at_a_time(caller, pairs)
    saturated = saturation(caller, seconds)
    loaded = []
    for share in shares:
        rate = share * saturated
        pooled: dict[str, list[float]] = {"direct": [], "proxy": []}
        # Two rounds of each, alternated, so a slower moment of the machine hits both.
        for kind in ("direct", "proxy", "proxy", "direct"):
            pooled[kind] += at_rate(caller, kind, rate, seconds / 2)
        loaded.append((rate, pooled))
    return sequential, saturated, loaded


# --- The run ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000, help="accounts to page/export")
    parser.add_argument("--incremental", type=int, default=20_000, help="accounts, incremental")
    parser.add_argument("--rounds", type=int, default=3, help="export/baseline rounds (median)")
    parser.add_argument("--pairs", type=int, default=500, help="proxy: direct/proxied pairs")
    parser.add_argument("--seconds", type=float, default=10, help="proxy: seconds per load run")
    parser.add_argument(
        "--shares",
        default="0.1,0.25,0.5",
        help="proxy: request rates to load at, as shares of the sandbox's saturation",
    )
    args = parser.parse_args()
    require_postgres("bench_api.py")
    rows: list[tuple[str, str, str]] = []

    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        var_dir = Path(tmp)
        sandbox, sandbox_process = start_sandbox(var_dir / "sandbox", accounts=1000)
        portal_process = None
        try:
            sandbox.ensure_test_redirect_uri()
            setup_django(bench_database("portal_bench_api", var_dir), sandbox.url, var_dir)

            # 1. Paging: 10 accounts in the whole table, then 100,000 more.
            small_conn, small_key, _ = mirrored("bench-small", 10, seed=1)
            small = paging(small_key, small_conn.pk, 10)
            big_conn, big_key, _ = mirrored("bench-export", args.accounts, seed=2)
            analyze()
            big = paging(big_key, big_conn.pk, args.accounts)
            same = small["first"] == big["first"] and small["second"] == big["second"]
            rows.append(
                (
                    "SQL queries per page: first page, page after `next` (10 accounts)",
                    f"{small['first']}, {small['second']}",
                    "",
                )
            )
            rows.append(
                (
                    f"SQL queries per page: first page, page after `next` "
                    f"({args.accounts:,} accounts)",
                    f"{big['first']}, {big['second']}",
                    f"{'the same ✓' if same else 'DIFFERENT ✗'} (target: the same)",
                )
            )
            rows.append(
                (
                    "one page of 100 in-process, first / middle of the keyset (ms), 10 accounts",
                    f"{small['first_ms']:.1f} / {small['middle_ms']:.1f}",
                    "",
                )
            )
            rows.append(
                (
                    f"one page of 100 in-process, first / middle of the keyset (ms), "
                    f"{args.accounts:,} accounts",
                    f"{big['first_ms']:.1f} / {big['middle_ms']:.1f}",
                    f"middle page {big['middle_ms'] / small['middle_ms']:.2f}x the small table's",
                )
            )

            inc_conn, inc_key, inc_records = mirrored("bench-incremental", args.incremental, 3)
            analyze()

            # One rate limit high enough never to refuse: every request still goes through it.
            portal, portal_process = start_portal(var_dir, API_RATE_LIMIT="1000000000")

            # 2. Export, in rounds of baseline, export, baseline.
            base_records, base_time, base_bytes = baseline(big_conn.pk)
            rounds: list[tuple[float, float, int, int]] = []
            for _ in range(args.rounds):
                records, export_time, pages, received = export(portal, big_key)
                records_after, time_after, _ = baseline(big_conn.pk)
                assert records == base_records == records_after == args.accounts, records
                base_rate = 2 * base_records / (base_time + time_after)
                rounds.append((base_rate, records / export_time, pages, received))
                base_time = time_after
            base_rate, export_rate, pages, received = sorted(rounds, key=lambda r: r[1] / r[0])[
                len(rounds) // 2
            ]
            spread = ", ".join(f"{e / b:.2f}" for b, e, _, _ in rounds)
            rows.append(
                (
                    f"baseline: one SQL query + orjson, {base_records:,} accounts (records/s)",
                    f"{base_rate:,.0f}",
                    f"{base_bytes / 1e6:.1f} MB of JSON",
                )
            )
            ratio = export_rate / base_rate
            rows.append(
                (
                    f"export over HTTP, page_size={PAGE}, {pages} pages (records/s)",
                    f"{export_rate:,.0f}",
                    f"**{ratio:.2f}** of the baseline {'✓' if ratio >= 0.5 else '✗'} "
                    f"(target ≥ 0.50); median of {len(rounds)} rounds: {spread}; "
                    f"{received / 1e6:.1f} MB received",
                )
            )

            # 3. Incremental.
            inc = incremental(portal, inc_conn, inc_key, inc_records, seed=4)
            ok = inc["exact"] and inc["pages"] <= 2
            rows.append(
                (
                    f"incremental pull after a sync changing 1% of {inc['accounts']:,} accounts "
                    f"and removing {inc['removed']}",
                    f"{inc['live']} changed + {inc['tombstones']} tombstones in "
                    f"{inc['pages']} page(s), {inc['seconds'] * 1000:.0f} ms "
                    f"(repeated: {inc['again'] * 1000:.0f} ms)",
                    f"{'exactly those ✓' if inc['exact'] else 'NOT exactly those ✗'} "
                    f"({inc['changed']} changed, {inc['removed']} removed); "
                    f"{'✓' if ok else '✗'} target 1 or 2 pages of {PAGE}",
                )
            )

            # 4. Proxy, on the connection's own sandbox grant and chosen profile.
            from django.contrib.auth.models import User
            from django.db import transaction

            from integrations.api.keys import issue

            proxy_conn = linked_connection(sandbox, "bench-proxy", PROFILE)
            with transaction.atomic():
                _key, proxy_key = issue(User.objects.get(username="bench-proxy"), "b", ["proxy"])
            caller = Caller(sandbox.url, portal, proxy_conn, proxy_key)
            shares = [float(share) for share in args.shares.split(",")]
            sequential, saturated, loaded = proxy(caller, args.pairs, args.seconds, shares)
            direct_ms = statistics.median(sequential["direct"]) * 1000
            proxied_ms = statistics.median(sequential["proxy"]) * 1000
            overhead = proxied_ms - direct_ms
            rows.append(
                (
                    f"`GET {ROUTE}`, one request at a time, median of {args.pairs}: "
                    "direct / through the proxy (ms)",
                    f"{direct_ms:.2f} / {proxied_ms:.2f}",
                    f"overhead **{overhead:.2f} ms** {'✓' if overhead <= 3 else '✗'} "
                    "(target ≤ 3 ms)",
                )
            )
            rows.append(
                (
                    f"sandbox saturation on that route, {CLIENTS} clients closed loop (req/s)",
                    f"{saturated:,.0f}",
                    "",
                )
            )
            for (rate, pooled), share in zip(loaded, shares, strict=True):
                direct_p95, proxy_p95 = p95(pooled["direct"]) * 1000, p95(pooled["proxy"]) * 1000
                ratio = proxy_p95 / direct_p95
                rows.append(
                    (
                        f"p95 at {rate:,.0f} req/s ({share:.0%} of saturation), {CLIENTS} "
                        f"clients, {len(pooled['proxy']):,} calls each: direct / proxy (ms)",
                        f"{direct_p95:.1f} / {proxy_p95:.1f}",
                        f"**{ratio:.2f}x** {'✓' if ratio <= 1.3 else '✗'} (target ≤ 1.3x); "
                        f"medians {statistics.median(pooled['direct']) * 1000:.1f} / "
                        f"{statistics.median(pooled['proxy']) * 1000:.1f}",
                    )
                )
        finally:
            if portal_process is not None:
                stop_sandbox(portal_process)
            stop_sandbox(sandbox_process)

    print("\nAPI benchmark: PostgreSQL, the portal under gunicorn (2 workers x 4 threads)\n")
    print("| measure | value | comparison |")
    print("| --- | --- | --- |")
    for measure, value, comparison in rows:
        print(f"| {measure} | {value} | {comparison} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
