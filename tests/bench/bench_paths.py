"""CPU per request of the machine endpoints, in process, where the time goes.

    .venv/bin/python -m tests.services -- .venv/bin/python tests/bench/bench_paths.py [-n 400]

Repeatable on a shared, noisy machine: the WSGI application (`portal.wsgi.application`, whatever
it dispatches to) is called directly with prepared environs, no socket and no server, and each
request is measured in CPU time of this process (`time.process_time`), which other processes
do not inflate; wall time is shown beside it (it adds the waits for PostgreSQL, Redis and, for
the proxy, the sandbox). Three requests, each `-n` times after a warm-up:

* `POST /hooks/zywave/<token>/` with a valid notification (Zywave's webhook in);
* `GET /api/v1/zywave/accounts/v2.0/account?$top=1` through the proxy, against a running
  sandbox (the connection holds real sandbox tokens and a chosen profile, as in bench_api.py);
* `GET /api/v1/accounts?page_size=500` (2,000 accounts mirrored).

Then where the time goes: a marker is put between every two middleware of each handler (the
time a middleware spends is its markers' difference, in CPU and wall), and a cProfile of the
same requests gives the parts inside the view (DRF's dispatch, the key lookup, the throttle,
the rate budget's Redis round trip, the view itself). Production settings (DEBUG off), Redis as
the shared cache and the broker (as bench_hooks.py), PostgreSQL.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import bench_database, linked_connection, require_postgres, setup_django

from tests.sandboxserver import start_sandbox, stop_sandbox
from tests.services import redis_database

PROFILE = "50001"  # Summit Ridge Insurance (sandbox/zywave/seed.py)
ACCOUNTS = 2000

# --- Markers between middleware ----------------------------------------------------------------

# Each marker appends (index, "in"/"out", cpu, wall) as the request passes it.
_marks: list[tuple[int, str, float, float]] = []


def _marker(index: int) -> type:
    class Mark:
        def __init__(self, get_response: Callable[[Any], Any]) -> None:
            self.get_response = get_response

        def __call__(self, request: Any) -> Any:
            _marks.append((index, "in", time.process_time(), time.perf_counter()))
            response = self.get_response(request)
            _marks.append((index, "out", time.process_time(), time.perf_counter()))
            return response

    Mark.__name__ = Mark.__qualname__ = f"Mark{index}"
    return Mark


def with_markers(middleware: list[str], base: int) -> list[str]:
    """`middleware` with a marker before the first and after each one (numbered from `base`:
    each handler's markers apart)."""
    marked = []
    for index in range(len(middleware) + 1):
        name = f"Mark{base + index}"
        setattr(sys.modules[__name__], name, _marker(base + index))
        marked.append(f"{__name__}.{name}")
        if index < len(middleware):
            marked.append(middleware[index])
    return marked


def split(
    marks: list[tuple[int, str, float, float]], names: list[str], base: int
) -> dict[str, list[float]]:
    """Per middleware (and `inside`: everything past the last one), (cpu, wall) seconds."""
    seen = {(index - base, side): (cpu, wall) for index, side, cpu, wall in marks}
    parts: dict[str, list[float]] = {}
    last = len(names)
    for index, name in enumerate(names):
        if (index + 1, "in") not in seen:  # answered by this middleware itself
            cpu = seen[(index, "out")][0] - seen[(index, "in")][0]
            wall = seen[(index, "out")][1] - seen[(index, "in")][1]
            parts[name] = [cpu, wall]
            for later in names[index + 1 :]:
                parts[later] = [0.0, 0.0]
            parts["inside"] = [0.0, 0.0]
            return parts
        cpu = (seen[(index + 1, "in")][0] - seen[(index, "in")][0]) + (
            seen[(index, "out")][0] - seen[(index + 1, "out")][0]
        )
        wall = (seen[(index + 1, "in")][1] - seen[(index, "in")][1]) + (
            seen[(index, "out")][1] - seen[(index + 1, "out")][1]
        )
        parts[name] = [cpu, wall]
    parts["inside"] = [
        seen[(last, "out")][0] - seen[(last, "in")][0],
        seen[(last, "out")][1] - seen[(last, "in")][1],
    ]
    return parts


# --- Requests --------------------------------------------------------------------------------


def environ(method: str, path: str, query: str = "", body: bytes = b"", **headers: str) -> Any:
    """A WSGI environ as gunicorn hands one over (plain HTTP from 127.0.0.1)."""

    def make() -> dict[str, Any]:
        env: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        if body:
            env["CONTENT_LENGTH"] = str(len(body))
            env["CONTENT_TYPE"] = "application/json"
        for name, value in headers.items():
            env[f"HTTP_{name.upper()}"] = value
        return env

    return make


def call(application: Any, make: Callable[[], dict[str, Any]]) -> tuple[str, bytes]:
    status: list[str] = []

    def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(line)
        return lambda data: None

    result = application(make(), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return status[0], body


def measure(
    application: Any, make: Callable[[], dict[str, Any]], n: int, expect: str
) -> dict[str, Any]:
    from django.db import connection as db
    from django.test.utils import CaptureQueriesContext

    for _ in range(max(10, n // 10)):  # warm-up: connections, caches, first-call imports
        line, body = call(application, make)
        assert line.startswith(expect), (line, body[:300])
    with CaptureQueriesContext(db) as captured:
        call(application, make)
    queries = [q["sql"][:90] for q in captured.captured_queries]
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(n):
        c0, w0 = time.process_time(), time.perf_counter()
        line, _ = call(application, make)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        assert line.startswith(expect), line
    return {"cpu": cpu, "wall": wall, "queries": queries}


def breakdown(
    application: Any, make: Callable[[], dict[str, Any]], n: int, lists: dict[str, list[str]]
) -> dict[str, tuple[float, float]]:
    """Mean (cpu, wall) seconds per middleware of whichever handler answers the request."""
    totals: dict[str, list[float]] = {}
    for _ in range(n):
        _marks.clear()
        call(application, make)
        base = _marks[0][0] // 100 * 100
        names = list(lists.values())[base // 100]
        for name, (cpu, wall) in split(_marks, names, base).items():
            total = totals.setdefault(name, [0.0, 0.0])
            total[0] += cpu
            total[1] += wall
    return {name: (cpu / n, wall / n) for name, (cpu, wall) in totals.items()}


# Functions whose cumulative time the profile reports, by (file ending, function name).
WATCHED = [
    ("django/core/handlers/base.py", "_get_response", "Django: resolve + view (all of it)"),
    ("rest_framework/views.py", "dispatch", "DRF dispatch (all of it)"),
    ("rest_framework/views.py", "initial", "DRF initial (auth, permission, throttle, negotiation)"),
    ("rest_framework/views.py", "perform_content_negotiation", "DRF content negotiation"),
    ("integrations/api/keys.py", "authenticate", "API key lookup (ApiKeyAuthentication)"),
    ("integrations/api/keys.py", "has_permission", "scope check (HasScope)"),
    ("integrations/api/keys.py", "allow_request", "per-key throttle (KeyThrottle)"),
    ("rest_framework/views.py", "finalize_response", "DRF finalize_response"),
    ("integrations/api/proxy.py", "_forward", "proxy view (_forward)"),
    ("integrations/client.py", "forward", "client.forward (Zywave call)"),
    ("integrations/client.py", "_wait_for_budget", "rate budget (client._wait_for_budget)"),
    ("integrations/ratelimit.py", "reserve", "rate budget: ratelimit.reserve (Redis)"),
    ("integrations/tokens.py", "client_for", "tokens.client_for"),
    ("requests/sessions.py", "request", "requests: the sandbox round trip"),
    ("integrations/api/views.py", "get", "list view get"),
    ("integrations/views.py", "zywave_hook", "hook view (zywave_hook)"),
    ("integrations/hooks.py", "connection_for", "hooks.connection_for (token lookup)"),
    ("integrations/hooks.py", "allow", "hooks.allow (per-receiver rate limit, Redis)"),
    ("integrations/hooks.py", "parse", "hooks.parse"),
    ("integrations/hooks.py", "receive", "hooks.receive (INSERT + schedule)"),
    ("integrations/hooks.py", "schedule_fetch", "hooks.schedule_fetch (coalescing, Redis)"),
    ("integrations/queueing.py", "after_commit", "queueing.after_commit (Celery send)"),
    ("django/db/backends/utils.py", "execute", "SQL (cursor.execute, all)"),
    ("django/db/backends/base/base.py", "close_if_health_check_failed", "CONN_HEALTH_CHECKS"),
    ("django/db/backends/base/base.py", "close_if_unusable_or_obsolete", "request end: conn"),
    ("django/core/handlers/wsgi.py", "__init__", "WSGIRequest()"),
    ("django/urls/resolvers.py", "resolve", "URL resolve"),
    ("django/dispatch/dispatcher.py", "send", "signals (request_started/finished)"),
    ("portal/metrics.py", "measured", "MetricsMiddleware.measured"),
    ("portal/logs.py", "__call__", "RequestContextMiddleware"),
]


def profile(application: Any, make: Callable[[], dict[str, Any]], n: int) -> list[str]:
    profiler = cProfile.Profile(time.process_time)  # CPU: the waits are in the wall column
    profiler.enable()
    for _ in range(n):
        call(application, make)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    lines = [f"    (under cProfile: {total / n * 1000:.2f} ms CPU per request in all)"]
    for (filename, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        for ending, name, label in WATCHED:
            if filename.endswith(ending) and function == name:
                cumulative = row[3]
                lines.append(f"    {cumulative / n * 1000:7.3f} ms  {label}")
    lines = sorted(lines, key=lambda text: -float(text.split()[0]) if "ms" in text[:14] else 1e9)
    if os.environ.get("BENCH_PATHS_TOP"):  # the functions costing most themselves, to dig in
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(
            int(os.environ["BENCH_PATHS_TOP"])
        )
        lines.append(out.getvalue())
    return lines


def report(label: str, result: dict[str, Any]) -> str:
    cpu = sorted(result["cpu"])
    wall = sorted(result["wall"])
    p = int(len(cpu) * 0.95)
    return (
        f"{label}: CPU median {statistics.median(cpu) * 1000:.3f} ms, p95 {cpu[p] * 1000:.3f}; "
        f"wall median {statistics.median(wall) * 1000:.3f} ms, p95 {wall[p] * 1000:.3f}; "
        f"{len(result['queries'])} SQL queries"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=400, help="requests measured per path")
    parser.add_argument("--profile", type=int, default=200, help="requests profiled per path")
    parser.add_argument("--only", default="", help="hook,proxy,list (default: all)")
    args = parser.parse_args()
    require_postgres("bench_paths.py")
    wanted = set(filter(None, args.only.split(","))) or {"hook", "proxy", "list"}

    with redis_database() as broker, tempfile.TemporaryDirectory(prefix="paths-bench-") as tmp:
        var_dir = Path(tmp)
        sandbox, sandbox_process = start_sandbox(var_dir / "sandbox", accounts=200)
        try:
            sandbox.ensure_test_redirect_uri()
            database = bench_database("portal_bench_paths", var_dir)
            setup_django(
                database,
                sandbox.url,
                var_dir,
                REDIS_URL=broker,
                CELERY_BROKER_URL=broker,
                SECURE_SSL_REDIRECT="false",  # as start_portal: plain HTTP, no TLS proxy
                API_RATE_LIMIT="1000000000",
            )
            from bench_api import mirrored
            from django.conf import settings
            from django.contrib.auth.models import User
            from django.db import transaction

            from integrations.api.keys import issue

            # Markers in every handler's list, before the application is built.
            lists = {"MIDDLEWARE": list(settings.MIDDLEWARE)}
            if hasattr(settings, "PORTAL_MACHINE_MIDDLEWARE"):
                lists["PORTAL_MACHINE_MIDDLEWARE"] = list(settings.PORTAL_MACHINE_MIDDLEWARE)
            for position, (setting, names) in enumerate(lists.items()):
                setattr(settings, setting, with_markers(names, 100 * position))

            from portal.wsgi import application

            conn = linked_connection(sandbox, "bench-paths", PROFILE)
            with transaction.atomic():
                _key, proxy_key = issue(User.objects.get(username="bench-paths"), "p", ["proxy"])
            from integrations import hooks

            token = hooks.rotate_token(conn)
            list_conn, list_key, _ = mirrored("bench-paths-list", ACCOUNTS, seed=2)
            del list_conn

            body = (
                b'{"eventType": "account.updated", "recordType": "Account", '
                b'"recordId": "1001", "eventDateTime": "2026-01-01T00:00:00Z"}'
            )
            paths = {
                "hook": (
                    "POST /hooks/zywave/<token>/",
                    environ("POST", f"/hooks/zywave/{token}/", body=body),
                    "202",
                ),
                "proxy": (
                    "GET /api/v1/zywave/accounts/v2.0/account?$top=1",
                    environ(
                        "GET",
                        "/api/v1/zywave/accounts/v2.0/account",
                        query="$top=1",
                        AUTHORIZATION=f"Bearer {proxy_key}",
                    ),
                    "200",
                ),
                "list": (
                    "GET /api/v1/accounts?page_size=500",
                    environ(
                        "GET",
                        "/api/v1/accounts",
                        query="page_size=500",
                        AUTHORIZATION=f"Bearer {list_key}",
                    ),
                    "200",
                ),
            }
            for name, (label, make, expect) in paths.items():
                if name not in wanted:
                    continue
                n = args.n if name != "list" else max(20, args.n // 10)
                result = measure(application, make, n, expect)
                print(report(label, result))
                for sql in result["queries"]:
                    print(f"    SQL: {sql}")
                print("  per middleware (CPU / wall, ms):")
                for part, (cpu, wall) in breakdown(application, make, n, lists).items():
                    print(f"    {cpu * 1000:7.3f} / {wall * 1000:7.3f}  {part.rsplit('.', 1)[-1]}")
                print("  profile (cumulative CPU, ms per request):")
                for line in profile(application, make, args.profile if name != "list" else 20):
                    print(line)
                print()
        finally:
            stop_sandbox(sandbox_process)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
