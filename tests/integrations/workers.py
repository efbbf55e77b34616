"""A real Celery worker process for integration tests: Redis broker, the test database, the
sandbox as Zywave."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from portal.celery import app
from tests.sandboxserver import Sandbox

ROOT = Path(__file__).resolve().parents[2]
TEST_BROKER = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


def database_url() -> str:
    config = settings.DATABASES["default"]
    if str(config["ENGINE"]).endswith("sqlite3"):
        return f"sqlite:///{config['NAME']}"
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    return (
        f"postgres://{config['USER']}{password}@{config['HOST'] or '127.0.0.1'}:"
        f"{config['PORT'] or 5432}/{config['NAME']}"
    )


def use_test_broker() -> None:
    """Send from this process to the tests' own Redis database, never a demo's."""
    if app.conf.broker_url == TEST_BROKER:
        return
    app.conf.broker_url = TEST_BROKER
    app.conf.result_backend = TEST_BROKER
    app.conf.broker_transport_options = {"visibility_timeout": 3600}
    # Celery's own reset after a fork: connection and producer pools are rebuilt from the new
    # URL on the next send, and so is the result backend.
    app._after_fork()
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


# Every queue the portal has (settings.CELERY_TASK_ROUTES and the interactive queue).
ALL_QUEUES = "interactive,refetch,sync,tokens,webhooks,celery"


class Worker:
    def __init__(
        self, sandbox: Sandbox, log_path: Path, queues: str = ALL_QUEUES, **env: str
    ) -> None:
        self.log_path = log_path
        self.queues = queues
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DATABASE_URL": database_url(),
            "CELERY_BROKER_URL": TEST_BROKER,
            "ZYWAVE_AUTH_URL": sandbox.url,
            "ZYWAVE_API_URL": sandbox.url,
            "ZYWAVE_SYNC_LEASE_SECONDS": "5",
            "ZYWAVE_SYNC_BACKOFF_SECONDS": "0",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed below; the child keeps its copy)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "--queues",
                self.queues,
                "--pool",
                "prefork",
                "--concurrency",
                "2",
                "--without-mingle",
                "--without-gossip",
                "--loglevel",
                "INFO",
                "--hostname",
                f"test-{uuid.uuid4().hex[:8]}@%h",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill reaches the pool children
        )
        log.close()
        from integrations.tasks import heartbeat

        try:
            heartbeat.delay().get(timeout=60)  # answers once the worker consumes
        except BaseException:
            self.stop()  # never leave a stray worker consuming the tests' queue
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once, as an OOM killer or a crash would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_for(condition: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
