"""A task sent from one process is executed by a real Celery worker process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEND = (
    "import django; django.setup();"
    "from integrations.tasks import heartbeat;"
    "print(heartbeat.delay().get(timeout=60)['worker'])"
)


def run_worker_and_send(env: dict[str, str]) -> str:
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "portal",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        sent = subprocess.run(
            [sys.executable, "-c", SEND],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            out, _ = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
    assert sent.returncode == 0, f"{sent.stderr}\n--- worker ---\n{out}"
    return sent.stdout.strip()


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CELERY_BROKER_URL", "REDIS_URL"}}
    env.update(PORTAL_VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="portal.settings")
    # The worker checks the encryption canary; give it its own empty database.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'worker.sqlite3'}"
    return env


@pytest.mark.slow
def test_a_task_runs_on_a_real_worker_through_redis(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    assert run_worker_and_send(env)


@pytest.mark.slow
def test_a_task_runs_on_a_real_worker_through_the_filesystem_broker(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    env["CELERY_BROKER_URL"] = "filesystem://"
    assert run_worker_and_send(env)
    assert (tmp_path / "var" / "celery" / "queue").is_dir()
    assert not (ROOT / "control").exists()  # kombu's control files stay under var/ too
