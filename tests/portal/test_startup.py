"""A wrong encryption key stops the web process and the workers at start (the README's promise):
`portal/wsgi.py` and Celery's `worker_init` run `integrations.checks.run_startup_checks`,
because neither gunicorn nor a Celery worker runs Django's system checks. Each process is
started for real, against a database whose canary another key wrote."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from integrations.fields import key_fingerprint

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def environment(tmp_path: Path, key: str) -> dict[str, str]:
    """Development settings on a database of the test's own; no broker server needed."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not re.match(r"(DEBUG|FIELD_ENCRYPTION|DATABASE_|REDIS_|CELERY_|PORTAL_)", k)
    }
    env.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        PORTAL_VAR_DIR=str(tmp_path / "var"),
        CELERY_BROKER_URL="filesystem://",
        FIELD_ENCRYPTION_KEY=key,
    )
    return env


@pytest.fixture
def keys(tmp_path: Path) -> tuple[str, str]:
    """(the key the database was written with, another key)."""
    written, other = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    migrated = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input"],
        cwd=ROOT,
        env=environment(tmp_path, written),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrated.returncode == 0, migrated.stderr  # migrate writes the canary
    return written, other


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a server command; one that starts serving is stopped after 20 s (TimeoutExpired)."""
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )


def gunicorn(tmp_path: Path, key: str) -> list[str]:
    return [
        str(BIN / "gunicorn"), "portal.wsgi", "--bind", f"127.0.0.1:{free_port()}",
        "--workers", "1", "--preload",
    ]  # fmt: skip


def worker() -> list[str]:
    return [str(BIN / "celery"), "-A", "portal", "worker", "--pool", "solo", "--loglevel", "INFO"]


def test_the_web_process_refuses_to_start_with_a_wrong_key_naming_both_fingerprints(
    tmp_path: Path, keys: tuple[str, str]
) -> None:
    written, wrong = keys
    result = start(gunicorn(tmp_path, wrong), environment(tmp_path, wrong))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "integrations.E001" in output
    assert key_fingerprint(written) in output and key_fingerprint(wrong) in output
    assert wrong not in output and written not in output  # fingerprints, never keys


def test_the_web_process_starts_with_the_right_key(tmp_path: Path, keys: tuple[str, str]) -> None:
    written, _wrong = keys
    with pytest.raises(subprocess.TimeoutExpired) as serving:  # still serving after 20 s
        start(gunicorn(tmp_path, written), environment(tmp_path, written))
    assert b"integrations.E001" not in (serving.value.stderr or b"")


def test_a_worker_refuses_to_start_with_a_wrong_key_naming_both_fingerprints(
    tmp_path: Path, keys: tuple[str, str]
) -> None:
    written, wrong = keys
    result = start(worker(), environment(tmp_path, wrong))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "integrations.E001" in output
    assert key_fingerprint(written) in output and key_fingerprint(wrong) in output
    assert "ready" not in output.split("integrations.E001")[0]  # refused before consuming


def test_a_worker_starts_with_the_right_key(tmp_path: Path, keys: tuple[str, str]) -> None:
    written, _wrong = keys
    with pytest.raises(subprocess.TimeoutExpired) as running:
        start(worker(), environment(tmp_path, written))
    assert b"ready" in (running.value.stderr or b"") + (running.value.stdout or b"")
