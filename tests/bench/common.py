"""Shared set-up for the portal's benchmarks: a portal database, Django pointed at a running
sandbox, and a connection with real sandbox tokens and a chosen profile."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


def bench_database(name: str, var_dir: Path) -> str:
    """A fresh PostgreSQL database when one answers locally (as in production), else SQLite."""
    if postgres_answers():
        for sql in (f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"):
            subprocess.run(
                ["psql", "-h", "127.0.0.1", "-U", "postgres", "-q", "-c", sql],
                check=True,
                capture_output=True,
            )
        return f"postgres://postgres@127.0.0.1:5432/{name}"
    return f"sqlite:///{var_dir / (name + '.sqlite3')}"


def setup_django(database_url: str, sandbox_url: str, var_dir: Path, **env: str) -> None:
    """Production settings (DEBUG off): with DEBUG on, Django keeps every query, with its
    parameters, in memory, which is not what a production worker does. `env` adds to them or
    replaces them (a benchmark that needs Redis as the broker)."""
    from cryptography.fernet import Fernet

    os.environ.update(
        DEBUG="false",
        SECRET_KEY="bench-" + "k" * 40,
        ALLOWED_HOSTS="127.0.0.1",
        FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        ZYWAVE_CLIENT_ID="portal-dev",
        ZYWAVE_CLIENT_SECRET="portal-dev-secret",
        DJANGO_SETTINGS_MODULE="portal.settings",
        DATABASE_URL=database_url,
        ZYWAVE_AUTH_URL=sandbox_url,
        ZYWAVE_API_URL=sandbox_url,
        LOG_LEVEL="WARNING",
        CELERY_BROKER_URL="filesystem://",
        # The shared rate budget stays in every call's path (its cost is measured), but so high
        # that it never makes a benchmark of the portal's own speed wait (the fleet's sets R).
        ZYWAVE_RATE_LIMIT="100000",
        PORTAL_VAR_DIR=str(var_dir),
    )
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def linked_connection(
    sandbox: Any, username: str, profile_id: str, email: str = "agent@example.com"
) -> Any:
    """A portal user whose connection holds real sandbox tokens and the given profile."""
    from django.contrib.auth.models import User
    from django.utils import timezone

    from integrations.models import Connection
    from integrations.profiles import choose_profile, refresh_profiles
    from integrations.tokens import client_for

    user, _ = User.objects.get_or_create(username=username)
    Connection.objects.filter(user=user).delete()
    tokens = sandbox.obtain_tokens(username=email)
    conn = Connection(user=user, zywave_subject=f"{email}#{username}", zywave_email=email)
    conn.set_tokens(tokens)
    conn.authorized_at = timezone.now()
    conn.save()
    refresh_profiles(conn, client_for(conn))
    choose_profile(conn, client_for(conn), profile_id, actor=None)
    conn.refresh_from_db()
    return conn


def require_postgres(name: str) -> None:
    """Benchmarks whose figures only mean something on PostgreSQL (as in production) stop here
    rather than quietly measure SQLite."""
    if not postgres_answers():
        raise SystemExit(f"{name} needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust).")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_portal(
    var_dir: Path, workers: int = 2, threads: int = 4, **env: str
) -> tuple[str, subprocess.Popen[bytes]]:
    """The portal under gunicorn (portal/gunicorn.conf.py) on a free port of 127.0.0.1, with
    the environment `setup_django` configured (same database, keys and sandbox) plus `env`;
    returns its URL once it answers. Plain HTTP: no TLS proxy in front, so no redirect to https.
    Stop it with `tests.sandboxserver.stop_sandbox` (a terminate, then a kill)."""
    import time

    import requests

    port = free_port()
    environment = {
        **os.environ,
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": str(workers),
        "GUNICORN_THREADS": str(threads),
        "SECURE_SSL_REDIRECT": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests" / "netguard"), str(REPO_ROOT)]),
        **env,
    }
    log_path = var_dir / f"portal-{port}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "-c",
                "portal/gunicorn.conf.py",
                "portal.wsgi:application",
            ],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            # Unauthenticated: the API's 401 says the whole stack (Django, database) is up.
            if requests.get(f"{url}/api/v1/connection", timeout=2).status_code == 401:
                return url, process
        except requests.RequestException:
            pass
        time.sleep(0.2)
    process.kill()
    tail = log_path.read_text(errors="replace").splitlines()[-30:]
    raise RuntimeError("The portal did not start under gunicorn:\n" + "\n".join(tail))
