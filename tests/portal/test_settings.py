"""Settings: malformed values stop start-up with a message naming the variable; production
refuses every placeholder the repository ships; who is believed about the client's address."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.test import RequestFactory

from portal.settings import client_address

ROOT = Path(__file__).resolve().parents[2]
GOOD_SECRET = "x" * 20 + "-production-secret-value-0123456789"
GOOD_KEY = Fernet.generate_key().decode()
SETUP = ("-c", "import django; django.setup(); print('started')")


def start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh interpreter, as a starting process would."""
    return launch(tmp_path, SETUP, env)


def launch(
    tmp_path: Path, command: tuple[str, ...], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run `python *command` with `env` and nothing of the caller's configuration."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "FIELD_ENCRYPTION", "ZYWAVE", "PORTAL_")
        )
        and k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "EMAIL_HOST_PASSWORD"}
        and k not in {"FORWARDED_ALLOW_IPS", "AXES_FAILURE_LIMIT", "AXES_USERNAME_FAILURE_LIMIT"}
    }
    clean.update(PORTAL_VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="portal.settings")
    clean.update(env)
    return subprocess.run(
        [sys.executable, *command],
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
        ({"FORWARDED_ALLOW_IPS": "10.0.0.0/8"}, "FORWARDED_ALLOW_IPS must list IP addresses"),
        ({"AXES_USERNAME_FAILURE_LIMIT": "4"}, "AXES_USERNAME_FAILURE_LIMIT must be at least 5"),
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
        ({"SECRET_KEY": "abcd" * 12}, "SECRET_KEY is a development or default"),
        (
            {"FIELD_ENCRYPTION_KEY": base64.urlsafe_b64encode(bytes(range(8)) * 4).decode()},
            "FIELD_ENCRYPTION_KEY: key #1 is not random",
        ),
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


# --- Placeholders and the image build's values -----------------------------------------------

# Settings that carry a secret or a registration: any value the repository ships for one is
# public, so a placeholder.
SECRET_SETTINGS = (
    "SECRET_KEY",
    "FIELD_ENCRYPTION_KEY",
    "ZYWAVE_CLIENT_ID",
    "ZYWAVE_CLIENT_SECRET",
    "DATABASE_URL",
    "EMAIL_HOST_PASSWORD",
)
# The exception: the emulated Zywave's own client, which the Docker demo (docker/README.md) uses
# with DEBUG off. A credential of the sandbox, worthless against Zywave.
SANDBOX_DEMO = {("ZYWAVE_CLIENT_ID", "portal-dev"), ("ZYWAVE_CLIENT_SECRET", "portal-dev-secret")}


def shipped_values() -> list[tuple[str, str]]:
    """Every value docker/ and the Markdown files give a secret setting, found by `git grep` so
    that a placeholder added later is tried too (the Dockerfile's: `build_values` below)."""
    found = subprocess.run(
        [
            "git",
            "grep",
            "-h",
            "-o",
            "-E",
            rf"\b({'|'.join(SECRET_SETTINGS)})=[^[:space:]`\"')]+",
            "--",
            "docker",
            "*.md",
            ":!docker/Dockerfile",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    pairs = {tuple(line.split("=", 1)) for line in found}
    return sorted((name, value) for name, value in pairs if (name, value) not in SANDBOX_DEMO)


def build_values() -> dict[str, str]:
    """The environment of the Dockerfile's collectstatic step, read from the Dockerfile."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    step = re.search(
        r"^RUN (DEBUG=false.*?)python manage\.py collectstatic", dockerfile, re.S | re.M
    )
    assert step, "the Dockerfile's collectstatic step"
    return dict(re.findall(r"([A-Z][A-Z0-9_]+)=(\S+)", step.group(1)))


def test_the_scans_see_the_placeholders_we_know_of() -> None:
    shipped = shipped_values()
    assert ("SECRET_KEY", "change-me-to-a-long-random-value-of-at-least-32-characters") in shipped
    assert {"SECRET_KEY", "DATABASE_URL", "ZYWAVE_CLIENT_SECRET"} <= {name for name, _ in shipped}
    build = build_values()
    assert build["PORTAL_BUILD_ONLY"] == "1"
    assert {"SECRET_KEY", "FIELD_ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL"} <= set(build)


@pytest.mark.parametrize(("name", "value"), shipped_values())
def test_production_refuses_every_placeholder_the_repository_ships(
    tmp_path: Path, name: str, value: str
) -> None:
    result = start(tmp_path, **production(**{name: value}))
    assert result.returncode != 0, f"{name}={value} was accepted"
    assert name in result.stderr
    assert value not in result.stderr  # the value may be a real secret: never echoed


def test_a_real_secret_with_angle_brackets_is_not_taken_for_a_placeholder(
    tmp_path: Path,
) -> None:
    """Only `<a word or two>` is a placeholder: a vendor-issued secret may contain `<...>`."""
    result = start(tmp_path, **production(ZYWAVE_CLIENT_SECRET="Zq<7#Kp>v9T!x2"))
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


@pytest.mark.parametrize(
    ("name", "value"),
    [(k, v) for k, v in build_values().items() if k not in {"DEBUG", "PORTAL_BUILD_ONLY"}],
)
def test_production_refuses_each_build_only_value_without_the_build_marker(
    tmp_path: Path, name: str, value: str
) -> None:
    result = start(tmp_path, **production(**{name: value}))
    assert result.returncode != 0, f"{name}={value} was accepted"
    assert name in result.stderr


def test_the_build_values_are_good_for_collectstatic(tmp_path: Path) -> None:
    command = ("manage.py", "collectstatic", "--no-input", "--dry-run", "--verbosity", "0")
    result = launch(tmp_path, command, build_values())
    assert result.returncode == 0, result.stderr


def test_the_build_marker_refuses_anything_but_collectstatic(tmp_path: Path) -> None:
    result = start(tmp_path, **build_values())
    assert result.returncode != 0
    assert "PORTAL_BUILD_ONLY is set" in result.stderr
    migrate = launch(tmp_path, ("manage.py", "migrate", "--no-input"), build_values())
    assert migrate.returncode != 0
    assert "PORTAL_BUILD_ONLY is set" in migrate.stderr


# --- The client's address (login throttling) -------------------------------------------------


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        # A client talking to gunicorn directly: its X-Forwarded-For is not read.
        (["127.0.0.1"], "203.0.113.9", "198.51.100.1", "203.0.113.9"),
        (["10.0.0.2"], "127.0.0.1", "198.51.100.1", "127.0.0.1"),
        # Through the trusted proxy: the address it appended, never what the client wrote.
        (["127.0.0.1"], "127.0.0.1", "198.51.100.1", "198.51.100.1"),
        (["127.0.0.1"], "127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),
        (["127.0.0.1", "10.0.0.2"], "127.0.0.1", "6.6.6.6, 198.51.100.1, 10.0.0.2", "198.51.100.1"),
        (["*"], "10.1.1.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),
        (["::1"], "::1", "2001:db8::7", "2001:db8::7"),
        # Nothing usable: the peer.
        (["127.0.0.1"], "127.0.0.1", "", "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1", "not-an-address", "127.0.0.1"),
    ],
)
def test_the_client_address_comes_from_the_trusted_proxy_only(
    settings,  # type: ignore[no-untyped-def]
    trusted: list[str],
    peer: str,
    forwarded: str,
    client: str,
) -> None:
    settings.FORWARDED_ALLOW_IPS = trusted
    request = RequestFactory().post("/login/", REMOTE_ADDR=peer)
    if forwarded:
        request.META["HTTP_X_FORWARDED_FOR"] = forwarded
    assert client_address(request) == client
