"""`/metrics` for Prometheus: the web's endpoint, the worker's exporter, multi-process plumbing.

The metrics themselves are defined in `integrations/metrics.py`. This module serves them:

* `MetricsMiddleware`, first in MIDDLEWARE: answers `/metrics` with
  `Authorization: Bearer $METRICS_TOKEN` (compared in constant time; 401 otherwise, and the
  path does not exist at all, a plain 404, while METRICS_TOKEN is unset) before sessions, CSRF,
  the HTTPS redirect and the host check (Prometheus scrapes `web:8000` over the internal
  network), and times and counts every other request.
* `start_worker_exporter`: a Celery worker node's metrics on METRICS_PORT (off when unset),
  bound to METRICS_BIND (127.0.0.1 by default), with the same token when one is set.
* Multi-process mode: gunicorn's workers and Celery's prefork children are separate processes,
  each with its own counters. With PROMETHEUS_MULTIPROC_DIR set before prometheus_client is
  imported, each writes its values to files there and a scrape adds them up
  (`MultiProcessCollector`). The directory is one per deployment (web, each worker node),
  emptied when that deployment starts (`wipe`: gunicorn's `on_starting`, Celery's
  `worker_init`), and a process that exits is marked dead (`child_exit`,
  `worker_process_shutdown`).
"""

from __future__ import annotations

import hmac
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

PATH = "/metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def wipe(path: str) -> None:
    """Empty a deployment's metrics directory as it starts: files of processes from an
    earlier run would otherwise be added to this run's counts for ever."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


def process_dead(pid: int) -> None:
    """A worker process exited: drop its live gauges (its counters stay: they still count)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def ensure_multiprocess(role: str, wanted: bool) -> None:
    """Before a multi-process deployment creates its processes: empty its metrics directory;
    when metrics are `wanted` and no directory was set, make one of its own (possible only
    while prometheus_client is not imported yet: the mode is chosen at its import)."""
    import sys

    if not multiprocess_dir():
        if not wanted:
            return  # nobody reads this deployment's metrics: each process keeps its own
        if "prometheus_client" in sys.modules:
            raise RuntimeError(
                f"METRICS_PORT is set but {MULTIPROC_ENV} is not: set it in the environment "
                f"to a directory of this {role}'s own (the image's entrypoint uses /tmp/metrics) "
                "so that the pool's processes add up"
            )
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix=f"portal-metrics-{role}-")
        _made.append(os.environ[MULTIPROC_ENV])
    wipe(os.environ[MULTIPROC_ENV])


_made: list[str] = []


def remove_own_dir() -> None:
    """At the deployment's exit: remove the directory `ensure_multiprocess` made, if it did."""
    import shutil

    while _made:
        shutil.rmtree(_made.pop(), ignore_errors=True)


def registry() -> CollectorRegistry:
    """What a scrape reads: every process's values (multi-process mode) or this process's."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined, path=path)
    return combined


def exposition(domain: bool) -> bytes:
    """The text format of every metric; with the domain's scrape-time gauges on the web."""
    from prometheus_client import CollectorRegistry, generate_latest

    from integrations.metrics import DomainCollector

    text = generate_latest(registry())
    if domain:
        scraped = CollectorRegistry(auto_describe=False)
        scraped.register(DomainCollector())
        text += generate_latest(scraped)
    return text


def token_matches(header: str, token: str) -> bool:
    """`Bearer <token>`, compared in constant time (on bytes: any character may be sent)."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


# --- The web ---------------------------------------------------------------------------------


class MetricsMiddleware:
    """First in MIDDLEWARE: serves `/metrics`, and measures every other request whole."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from django.conf import settings

        if request.path_info == PATH and settings.METRICS_TOKEN:
            return scrape(request, settings.METRICS_TOKEN)
        return self.measured(request)

    def measured(self, request: HttpRequest) -> HttpResponse:
        from django.conf import settings
        from django.db import connection

        from integrations import metrics

        started = time.perf_counter()
        with connection.execute_wrapper(timed_query):
            response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        if match is not None:
            route = match.route or "unnamed"
        elif request.path.startswith(settings.STATIC_URL):
            route = "static"
        else:
            route = "unmatched"
        method = request.method if request.method in _METHODS else "other"
        metrics.HTTP_REQUESTS.labels(method, route, str(response.status_code)).inc()
        metrics.HTTP_DURATION.labels(route).observe(time.perf_counter() - started)
        return response


def timed_query(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
) -> Any:
    from integrations import metrics

    started = time.perf_counter()
    try:
        result = execute(sql, params, many, context)
    except Exception:
        metrics.DB_QUERIES.labels("error").inc()
        raise
    finally:
        metrics.DB_DURATION.observe(time.perf_counter() - started)
    metrics.DB_QUERIES.labels("ok").inc()
    return result


def scrape(request: HttpRequest, token: str) -> HttpResponse:
    from django.http import HttpResponse
    from django.utils.cache import add_never_cache_headers
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as TEXT_FORMAT

    if not token_matches(request.headers.get("Authorization", ""), token):
        response = HttpResponse("401 Unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    elif request.method not in {"GET", "HEAD"}:
        response = HttpResponse(status=405, content_type="text/plain")
        response["Allow"] = "GET, HEAD"
    else:
        response = HttpResponse(exposition(domain=True), content_type=TEXT_FORMAT)
    add_never_cache_headers(response)
    return response


# --- A worker node ---------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass  # one line per scrape would drown the worker's log


def worker_app(token: str | None) -> Callable[..., Iterable[bytes]]:
    """The exporter's WSGI app: GET /metrics (any path answers the same, as Prometheus's own)."""
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as TEXT_FORMAT

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        never = ("Cache-Control", "no-store")
        if token and not token_matches(environ.get("HTTP_AUTHORIZATION", ""), token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer"), never],
            )
            return [b"401 Unauthorized\n"]
        body = exposition(domain=False)
        start_response("200 OK", [("Content-Type", TEXT_FORMAT), never])
        return [body]

    return app


def start_worker_exporter() -> WSGIServer | None:
    """On a worker node's main process once its pool runs (Celery's `worker_ready`): serve the
    node's metrics on METRICS_PORT, if set, in a thread of its own."""
    from django.conf import settings

    if not settings.METRICS_PORT:
        return None
    server = make_server(
        settings.METRICS_BIND,
        settings.METRICS_PORT,
        worker_app(settings.METRICS_TOKEN),
        server_class=_Server,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("Metrics on %s:%s%s", settings.METRICS_BIND, settings.METRICS_PORT, PATH)
    return server


# --- Celery tasks ----------------------------------------------------------------------------

_task_started: dict[str, float] = {}


def task_started(task_id: str) -> None:
    _task_started[task_id] = time.perf_counter()


def task_ended(task_id: str, name: str, state: str) -> None:
    from integrations import metrics

    metrics.TASKS.labels(name, state or "unknown").inc()
    started = _task_started.pop(task_id, None)
    if started is not None:
        metrics.TASK_DURATION.labels(name).observe(time.perf_counter() - started)
