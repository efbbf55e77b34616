"""Settings: malformed values stop start-up with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
GOOD_SECRET = "x" * 20 + "-production-secret-value-0123456789"
GOOD_KEY = Fernet.generate_key().decode()


def start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh interpreter, as a starting process would."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "FIELD_ENCRYPTION", "ZYWAVE"))
        and k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    }
    clean.update(PORTAL_VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="portal.settings")
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def production(**overrides: str) -> dict[str, str]:
    env = {
        "DEBUG": "false",
        "SECRET_KEY": GOOD_SECRET,
        "ALLOWED_HOSTS": "portal.example.com",
        "FIELD_ENCRYPTION_KEY": GOOD_KEY,
        "REDIS_URL": "redis://127.0.0.1:6379/15",
        "ZYWAVE_CLIENT_ID": "portal",
        "ZYWAVE_CLIENT_SECRET": "a-client-secret",
    }
    env.update(overrides)
    return env


def test_the_defaults_start_on_a_fresh_machine(tmp_path: Path) -> None:
    result = start(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "var" / "secret_key").exists()
    assert (tmp_path / "var" / "field_encryption_key").exists()


def test_a_complete_production_environment_starts(tmp_path: Path) -> None:
    result = start(tmp_path, **production())
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "var" / "secret_key").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({"DATABASE_URL": "nonsense://whatever"}, "DATABASE_URL is not a valid database URL"),
        ({"DATABASE_URL": "postgres://"}, "DATABASE_URL is not a valid database URL"),
        ({"FIELD_ENCRYPTION_KEY": f"{GOOD_KEY},not-a-key"}, "FIELD_ENCRYPTION_KEY: key #2"),
        ({"ZYWAVE_PROFILE_HEADER": "cookie"}, "ZYWAVE_PROFILE_HEADER must be one of token, id"),
        ({"ZYWAVE_AUTH_URL": "auth.zywave.com"}, "ZYWAVE_AUTH_URL must be an http(s) URL"),
        ({"CELERY_BROKER_URL": "amqp://x"}, "CELERY_BROKER_URL must be a redis://"),
        ({"ZYWAVE_READ_TIMEOUT": "soon"}, "ZYWAVE_READ_TIMEOUT must be a whole number"),
        ({"SECRET_KEY_FILE": "/nonexistent/secret"}, "SECRET_KEY_FILE points at"),
    ],
)
def test_a_malformed_value_names_its_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = start(tmp_path, **env)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY must be set when DEBUG is off"),
        ({"SECRET_KEY": "django-insecure-" + "y" * 40}, "SECRET_KEY is a development or default"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY is a development or default"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS must list"),
        ({"FIELD_ENCRYPTION_KEY": ""}, "FIELD_ENCRYPTION_KEY must be set when DEBUG is off"),
        ({"REDIS_URL": ""}, "REDIS_URL (or CELERY_BROKER_URL) must be set"),
        ({"ZYWAVE_CLIENT_SECRET": ""}, "ZYWAVE_CLIENT_SECRET must be set"),
    ],
)
def test_production_refuses_unsafe_values(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = start(tmp_path, **production(**env))
    assert result.returncode != 0
    assert message in result.stderr


def test_a_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(GOOD_SECRET + "\n")
    result = start(tmp_path, **production(SECRET_KEY="", SECRET_KEY_FILE=str(secret_file)))
    assert result.returncode == 0, result.stderr
