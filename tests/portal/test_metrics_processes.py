"""Metrics across real processes: gunicorn's workers (portal/gunicorn.conf.py) and a Celery
worker's prefork pool write their counts into one directory per deployment and a scrape adds
them up; the worker node's exporter answers on 127.0.0.1 only; a web process whose database and
Redis are down still answers /metrics."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.integrations.workers import Worker, database_url, use_test_broker
from tests.sandboxserver import Sandbox, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOKEN = "metrics-token-for-process-tests-0123"

pytestmark = pytest.mark.slow


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def web_environment(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not re.match(r"(PROMETHEUS_|METRICS_|GUNICORN_|WEB_CONCURRENCY)", k)
    }
    env.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        # The test process's keys: the test database's canary was written with them.
        FIELD_ENCRYPTION_KEY=",".join(settings.FIELD_ENCRYPTION_KEY),
        METRICS_TOKEN=TOKEN,
        WEB_CONCURRENCY="2",
        GUNICORN_THREADS="1",
        **extra,
    )
    return env


class Web:
    """gunicorn as the image runs it (`-c portal/gunicorn.conf.py`), on a port of its own."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        env["GUNICORN_BIND"] = f"127.0.0.1:{self.port}"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "gunicorn"), "-c", "portal/gunicorn.conf.py", "portal.wsgi"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.log = log
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.get("/login/")
                return
            except OSError:
                assert self.process.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
        raise AssertionError(f"gunicorn did not answer:\n{log.read_text()[-3000:]}")

    def get(self, path: str, **headers: str) -> tuple[int, str, dict[str, str]]:
        """A request on a connection of its own (so that both workers take some)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request("GET", path, headers={"Host": "localhost", **headers})
            answer = conn.getresponse()
            return answer.status, answer.read().decode(), dict(answer.getheaders())
        finally:
            conn.close()

    def metrics(self) -> dict[Any, float]:
        status, body, headers = self.get("/metrics", Authorization=f"Bearer {TOKEN}")
        assert status == 200, body[:500]
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return scraped(body)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


@pytest.fixture
def web_with_database(tmp_path: Path, transactional_db: None) -> Iterator[Web]:
    env = web_environment(
        DATABASE_URL=database_url(), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom")
    )
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "counter_999999.db").write_bytes(b"stale")  # from an earlier run
    web = Web(env, tmp_path / "gunicorn.log")
    try:
        yield web
    finally:
        web.stop()


def per_process(directory: Path, route: str) -> dict[str, float]:
    """Each process's own count of answered GETs of `route`, read from its file alone."""
    counts = {}
    for path in sorted(directory.glob("counter_*.db")):
        total = 0.0
        for family in MultiProcessCollector.merge([str(path)]):
            for sample in family.samples:
                if (
                    sample.name == "portal_http_requests_total"
                    and sample.labels.get("route") == route
                ):
                    total += sample.value
        if total:
            counts[path.name] = total
    return counts


def test_two_gunicorn_workers_counts_add_up_in_one_scrape(
    web_with_database: Web, tmp_path: Path
) -> None:
    web = web_with_database
    # The stale file of an earlier run was removed at start: it would count for ever.
    assert not (tmp_path / "prom" / "counter_999999.db").exists()
    asked = 60
    for _ in range(asked):
        status, _, _ = web.get("/login/")
        assert status == 200
    counted = web.metrics()
    key = (
        "portal_http_requests_total",
        (("method", "GET"), ("route", "login/"), ("status", "200")),
    )
    # The requests made while waiting for gunicorn to answer count too: read the first scrape.
    processes = per_process(tmp_path / "prom", "login/")
    assert len(processes) == 2, processes  # both workers answered some
    assert counted[key] == sum(processes.values()) >= asked
    web.get("/login/")
    assert web.metrics()[key] == counted[key] + 1


def test_a_gunicorn_worker_that_dies_keeps_its_counts(
    web_with_database: Web, tmp_path: Path
) -> None:
    web = web_with_database
    for _ in range(20):
        web.get("/login/")
    key = (
        "portal_http_requests_total",
        (("method", "GET"), ("route", "login/"), ("status", "200")),
    )
    before = web.metrics()[key]
    pids = {int(p.stem.rsplit("_", 1)[1]) for p in (tmp_path / "prom").glob("counter_*.db")}
    children = {
        int(pid) for pid in subprocess.check_output(["pgrep", "-P", str(web.process.pid)]).split()
    }
    victim = sorted(pids & children)[0]
    os.kill(victim, signal.SIGKILL)  # gunicorn forks a new one; child_exit marks this one dead
    time.sleep(2)
    assert web.metrics()[key] == before  # the dead worker's requests still count


def test_metrics_answer_while_the_database_and_redis_are_down(tmp_path: Path) -> None:
    closed = free_port()
    env = web_environment(
        DATABASE_URL=f"postgres://portal@127.0.0.1:{closed}/portal",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    web = Web(env, tmp_path / "gunicorn.log")
    try:
        counted = web.metrics()
    finally:
        web.stop()
    assert counted[("portal_metrics_source_up", (("source", "database"),))] == 0
    assert counted[("portal_metrics_source_up", (("source", "redis"),))] == 0
    assert not [key for key in counted if key[0] in {"portal_connections", "portal_queue_depth"}]
    assert "zywave_token_refreshes_total" in {key[0] for key in counted}


@pytest.mark.django_db(transaction=True)
def test_a_worker_node_exports_its_pool_s_counts_on_127_0_0_1(
    zywave: Sandbox, tmp_path: Path
) -> None:
    from integrations.tasks import heartbeat

    use_test_broker()
    port = free_port()
    worker = Worker(
        zywave,
        tmp_path / "worker.log",
        METRICS_PORT=str(port),
        METRICS_TOKEN=TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
    ).start()
    try:
        results = [heartbeat.delay() for _ in range(30)]
        for result in results:
            result.get(timeout=30)
        url = f"http://127.0.0.1:{port}/metrics"
        assert requests.get(url, timeout=5).status_code == 401  # the token, when one is set
        deadline = time.monotonic() + 10
        while True:  # task_postrun runs just after the result is sent
            answer = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            counted = scraped(answer.text)
            key = (
                "portal_celery_tasks_total",
                (("state", "SUCCESS"), ("task", "integrations.tasks.heartbeat")),
            )
            if counted.get(key, 0) >= 31 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert counted[key] == 31  # the start's heartbeat and these, from the pool's processes
        # Bound to 127.0.0.1 only: another loopback address finds nothing listening.
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.2:{port}/metrics", timeout=5)
    finally:
        worker.stop()
