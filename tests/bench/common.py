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


def setup_django(database_url: str, sandbox_url: str, var_dir: Path) -> None:
    """Production settings (DEBUG off): with DEBUG on, Django keeps every query, with its
    parameters, in memory, which is not what a production worker does."""
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
        PORTAL_VAR_DIR=str(var_dir),
    )
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
