"""The registry proof (tests/registry/proof.py), run in a pytest process of its own: it needs
the test-only claims app installed (tests/registry/settings.py), and an app cannot be installed
inside this running suite. Its own database, named after this run's, so the two never collide;
this run's Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent


def registry_database_url(url: str | None, tmp_path: Path) -> str:
    """This run's DATABASE_URL with another database name (pytest-django then creates
    `test_<name>_registry`); a SQLite file of its own when the run has no DATABASE_URL."""
    if not url:
        return f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    name = parts.path.lstrip("/")
    return urlunsplit(parts._replace(path=f"/{name}_registry"))


def test_the_registry_database_is_another_one(tmp_path: Path) -> None:
    url = "postgres://u:p@127.0.0.1:5432/portal_run_7?sslmode=disable"
    assert registry_database_url(url, tmp_path) == (
        "postgres://u:p@127.0.0.1:5432/portal_run_7_registry?sslmode=disable"
    )
    assert registry_database_url(None, tmp_path).endswith("/registry.sqlite3")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fourth_resource_registered_by_a_test_syncs_through_the_real_sandbox(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": registry_database_url(os.environ.get("DATABASE_URL"), tmp_path),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    inner = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--ds=tests.registry.settings",
            "-q",
            str(HERE / "proof.py"),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert inner.returncode == 0, f"the proof failed:\n{inner.stdout}\n{inner.stderr}"
    assert " passed" in inner.stdout and "skipped" not in inner.stdout, inner.stdout
