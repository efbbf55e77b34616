"""Production: check --deploy is clean, security headers, login throttling, whose forwarding
headers gunicorn and the portal believe (gunicorn run for real), the docker/ files."""

from __future__ import annotations

import http.client
import json
import os
import re
import runpy
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import User
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent


def production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A complete production environment, and nothing of the caller's configuration."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not re.match(
            r"(DEBUG|SECRET_KEY|ALLOWED_HOSTS|FIELD_ENCRYPTION|ZYWAVE_|DATABASE_|REDIS_|CELERY_|"
            r"PORTAL_|LOG_|SECURE_|SOCIAL_AUTH_|EMAIL_|AXES_|DJANGO_ALLOW_ASYNC_UNSAFE|"
            r"FORWARDED_ALLOW_IPS|GUNICORN_|WEB_CONCURRENCY|WEBHOOKS_)",
            k,
        )
    }
    env.update(
        DEBUG="false",
        SECRET_KEY="p" * 20 + "-production-secret-value-0123456789",
        ALLOWED_HOSTS="portal.example.com",
        FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        REDIS_URL="redis://127.0.0.1:1/0",  # nothing answers: the checks must not need it
        ZYWAVE_CLIENT_ID="portal",
        ZYWAVE_CLIENT_SECRET="a-client-secret-value",
        # Zywave's real hosts would be https://auth.zywave.com and https://api.zywave.com; tests
        # use names that can never resolve (and the network guard refuses any name anyway).
        ZYWAVE_AUTH_URL="https://auth.zywave.invalid",
        ZYWAVE_API_URL="https://api.zywave.invalid",
        DATABASE_URL=f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        PORTAL_VAR_DIR=str(tmp_path / "var"),
        DJANGO_SETTINGS_MODULE="portal.settings",
    )
    env.update(overrides)
    return env


def run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_in_production(tmp_path: Path) -> None:
    result = run(production_env(tmp_path), "manage.py", "check", "--deploy", "--fail-level", "INFO")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_notices_an_unsafe_production_setting(tmp_path: Path) -> None:
    env = production_env(tmp_path, SECURE_HSTS_SECONDS="0")
    result = run(env, "manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert "security.W004" in result.stderr + result.stdout


RESPONSES = """
import json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
call_command("collectstatic", verbosity=0, interactive=False)
from django.test import Client
from portal.celery import app
app.control.ping = lambda timeout: []
def show(response):
    return {"status": response.status_code, "headers": dict(response.items()),
            "cookies": {k: dict(v) for k, v in response.cookies.items()},
            "body": response.content.decode(errors="replace")}
http = Client(HTTP_HOST="portal.example.com")
from django.contrib.auth.models import User
User.objects.create_user("prod", "prod@agency.test", "prod-password")
login_page = show(http.get("/login/", secure=True))
signed_in = show(http.post(
    "/login/", {"username": "prod", "password": "prod-password"}, secure=True
))
print(json.dumps({
    "login": login_page,
    "signed_in": signed_in,
    "callback": show(http.get("/oauth/complete/zywave/?code=x&state=y", secure=True, follow=True)),
    "plain_login": show(http.get("/login/")),
    "plain_health": show(http.get("/health/")),
    "error": show(http.get("/no-such-page/", secure=True)),
}))
"""


@pytest.fixture(scope="module")
def responses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """Responses of a portal running with the production environment, in a fresh process."""
    tmp_path = tmp_path_factory.mktemp("production")
    result = run(production_env(tmp_path), "-c", RESPONSES)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_pages_send_the_security_headers(responses: dict[str, dict[str, object]]) -> None:
    headers = responses["login"]["headers"]
    assert isinstance(headers, dict)
    assert responses["login"]["status"] == 200
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"


def test_the_content_security_policy_allows_no_inline_script_or_third_party(
    responses: dict[str, dict[str, object]],
) -> None:
    headers = responses["login"]["headers"]
    assert isinstance(headers, dict)
    policy = dict(
        (part.strip().split(" ", 1) + [""])[:2]
        for part in headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["object-src"] == "'none'"
    assert "unsafe" not in headers["Content-Security-Policy"]
    # The one outside origin: the Connect form's redirect to Zywave's authorize page.
    assert policy["form-action"] == "'self' https://auth.zywave.invalid"


def test_the_oauth_callback_page_loads_nothing_third_party(
    responses: dict[str, dict[str, object]],
) -> None:
    page = responses["callback"]
    headers = page["headers"]
    assert isinstance(headers, dict)
    assert "Content-Security-Policy" in headers
    body = str(page["body"])
    sources = re.findall(r'(?:src|href)="([^"]+)"', body)
    assert sources, "the callback should land on a page"
    assert all(not re.match(r"(https?:)?//", source) for source in sources), sources


def test_cookies_are_secure_and_http_only(responses: dict[str, dict[str, object]]) -> None:
    assert responses["signed_in"]["status"] == 302  # signed in: the session cookie is set
    before, after = responses["login"]["cookies"], responses["signed_in"]["cookies"]
    assert isinstance(before, dict) and isinstance(after, dict)
    cookies = {**before, **after}
    assert {"sessionid", "csrftoken"} <= set(cookies)
    session, csrf = cookies["sessionid"], cookies["csrftoken"]
    # Both only over HTTPS; the session out of reach of scripts. The CSRF cookie is left
    # readable (CSRF_COOKIE_HTTPONLY is not set): Django's documented default, since the
    # token itself is in every form and a script reading it gains nothing.
    assert session["secure"] is True and session["httponly"] is True
    assert csrf["secure"] is True
    assert session["samesite"] == "Lax"


def test_plain_http_is_redirected_to_https_except_health(
    responses: dict[str, dict[str, object]],
) -> None:
    assert responses["plain_login"]["status"] == 301
    headers = responses["plain_login"]["headers"]
    assert isinstance(headers, dict)
    assert headers["Location"] == "https://portal.example.com/login/"
    # A load balancer probes over plain HTTP: /health/ answers (503 here: no worker, no Redis).
    assert responses["plain_health"]["status"] == 503


def test_production_error_pages_reveal_nothing(responses: dict[str, dict[str, object]]) -> None:
    page = responses["error"]
    assert page["status"] == 404
    assert "Traceback" not in str(page["body"]) and "DEBUG" not in str(page["body"])


def test_production_logs_are_json_lines(tmp_path: Path) -> None:
    script = "import django, logging; django.setup(); logging.getLogger('x').warning('hello %s', 1)"
    result = run(production_env(tmp_path), "-c", script)
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert (line["level"], line["logger"], line["event"]) == ("WARNING", "x", "hello 1")


# --- Login throttling ------------------------------------------------------------------------


def test_repeated_wrong_passwords_lock_the_login_with_a_clear_message(
    client: Client,
    staff: User,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(2):
        response = client.post("/login/", {"username": "dana", "password": "wrong"})
        assert response.status_code == 200
    locked = client.post("/login/", {"username": "dana", "password": "wrong"})
    assert locked.status_code == 429
    assert b"Too many login attempts" in locked.content
    assert b"try again in 15 minutes" in locked.content
    # Locked means locked: the right password is refused too, until the cool-off ends.
    right = client.post("/login/", {"username": "dana", "password": "dana-password"})
    assert right.status_code == 429
    assert client.get("/").status_code == 302


def test_the_lock_is_per_username_and_address(
    client: Client,
    staff: User,
    other_staff: User,
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.AXES_FAILURE_LIMIT = 2
    for _ in range(2):
        client.post("/login/", {"username": "dana", "password": "wrong"})
    response = client.post("/login/", {"username": "omar", "password": "omar-password"})
    assert response.status_code == 302
    colleague = Client(REMOTE_ADDR="10.0.0.9")
    assert (
        colleague.post("/login/", {"username": "dana", "password": "dana-password"}).status_code
        == 302
    )


# --- docker/ ---------------------------------------------------------------------------------


def test_the_compose_file_validates_against_the_compose_specification() -> None:
    result = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DOCKER / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_validation_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  web:\n    restart: sometimes\n    healthcheck: yes\n")
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0


def test_web_worker_and_beat_share_one_image_with_healthchecks_and_restarts() -> None:
    from ruamel.yaml import YAML  # installed with check-jsonschema

    compose = YAML(typ="safe").load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    images = {services[name]["image"] for name in ("web", "worker", "beat", "migrate")}
    assert len(images) == 1
    for name in ("postgres", "redis", "web", "worker", "beat"):
        assert "healthcheck" in services[name], name
        assert services[name]["restart"] == "unless-stopped", name
    assert services["sandbox"]["profiles"] == ["sandbox"]
    assert "postgres-data" in compose["volumes"]
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_image_is_slim_runs_as_a_user_and_collects_static_files() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert (
        dockerfile.startswith("#")
        and "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n" in dockerfile
    )
    assert re.search(r"^USER portal$", dockerfile, re.MULTILINE)
    assert "collectstatic" in dockerfile
    assert "-r requirements.txt -r sandbox/requirements.txt" in dockerfile


def _settings_the_code_reads() -> set[str]:
    """Every environment variable the portal's code, entrypoint and compose file read."""
    names: set[str] = set()
    sources = [
        *ROOT.glob("portal/**/*.py"),
        *(p for p in ROOT.glob("integrations/**/*.py") if "migrations" not in p.parts),
        *DOCKER.glob("*.py"),
    ]
    calls = re.compile(
        r"""(?:env\.get(?:_[a-z]+)?|os\.environ\.get|os\.getenv|"""
        r"""os\.environ\[)\(?\s*["']([A-Z][A-Z0-9_]+)["']"""
    )
    for path in sources:
        names |= set(calls.findall(path.read_text()))
    for path in (DOCKER / "entrypoint.sh", DOCKER / "compose.yaml"):
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", path.read_text()))
    # `NAME_FILE` is documented once, in .env.example's header, for every NAME.
    names = {n for n in names if not (n.endswith("_FILE") and n.removesuffix("_FILE") in names)}
    # Set by the image, not by an operator.
    return names - {"DJANGO_SETTINGS_MODULE"}


def test_every_setting_the_code_reads_is_in_env_example() -> None:
    read = _settings_the_code_reads()
    # The scan must see the settings we know of, or it proves nothing.
    assert {
        "SECRET_KEY",
        "FIELD_ENCRYPTION_KEY",
        "ZYWAVE_CLIENT_SECRET",
        "GUNICORN_BIND",
        "CELERY_CONCURRENCY",
        "POSTGRES_PASSWORD",
        "AXES_FAILURE_LIMIT",
        "AXES_USERNAME_FAILURE_LIMIT",
        "FORWARDED_ALLOW_IPS",
        "PORTAL_ALLOW_DEBUG",
        "PORTAL_BUILD_ONLY",
        "PORTAL_PUBLISH_ADDRESS",
    } <= read
    example = (DOCKER / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    assert read - listed == set()


def test_every_listed_setting_has_a_comment() -> None:
    lines = (DOCKER / ".env.example").read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^[A-Z][A-Z0-9_]+=", line):
            above = [text for text in lines[max(0, number - 3) : number] if text.startswith("#")]
            assert above, f"{line} has no comment"


def test_templates_have_no_inline_script_or_style() -> None:
    for path in (ROOT / "templates").rglob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path
        assert not re.search(r"\sstyle=", text), path
        assert not re.search(r"\son[a-z]+=", text), path


def test_the_defaults_lock_a_login_after_five_wrong_passwords_for_fifteen_minutes(
    client: Client, staff: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the shipped defaults (AXES_FAILURE_LIMIT 5, AXES_COOLOFF_MINUTES 15). The one
    stand-in: django-axes's clock (`axes.handlers.proxy.now`) is moved 15 minutes on, because
    no test can wait for a quarter of an hour."""
    from datetime import timedelta

    import axes.handlers.proxy
    from django.utils import timezone

    wrong = {"username": "dana", "password": "wrong"}
    assert [client.post("/login/", wrong).status_code for _ in range(4)] == [200] * 4
    assert client.post("/login/", wrong).status_code == 429
    right = {"username": "dana", "password": "dana-password"}
    assert client.post("/login/", right).status_code == 429  # locked means locked
    # Each attempt during the lock starts the 15 minutes again (django-axes's
    # AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT), so the lock ends 15 minutes after the
    # last attempt: still locked just before, open just after.
    last_attempt = timezone.now()
    almost = last_attempt + timedelta(minutes=14, seconds=50)
    monkeypatch.setattr(axes.handlers.proxy, "now", lambda: almost)
    assert client.post("/login/", right).status_code == 429
    after = almost + timedelta(minutes=15, seconds=10)
    monkeypatch.setattr(axes.handlers.proxy, "now", lambda: after)
    assert client.post("/login/", right).status_code == 302
    assert client.get("/").status_code == 200


def test_production_refuses_to_create_demo_users(tmp_path: Path) -> None:
    env = production_env(tmp_path)
    assert run(env, "manage.py", "migrate", "--no-input").returncode == 0
    result = run(env, "manage.py", "create_demo_users")
    assert result.returncode != 0
    assert "Demo users are for development only" in result.stderr
    users = run(
        env,
        "manage.py",
        "shell",
        "-c",
        "from django.contrib.auth.models import User; print(User.objects.count())",
    )
    assert users.stdout.strip().splitlines()[-1] == "0"


# --- Forwarding headers: gunicorn for real ---------------------------------------------------
#
# gunicorn with portal/gunicorn.conf.py and the production environment on 127.0.0.1, one worker,
# each on a copy of one migrated database. The test is the client, so the peer gunicorn sees is
# 127.0.0.1: a direct client when FORWARDED_ALLOW_IPS names another address (10.9.9.9, a proxy
# that is not us), the proxy when it names 127.0.0.1. Thresholds are lowered (2 failures per
# pair, 6 per username) so that a lockout takes a few requests.

HOST = "portal.example.com"
PASSWORD = {"dana": "dana-password", "omar": "omar-password"}


@pytest.fixture(scope="module")
def portal_database(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A migrated database with dana and omar, and the environment it needs (its key, and a
    PORTAL_VAR_DIR with the static files production's manifest storage asks for)."""
    tmp_path = tmp_path_factory.mktemp("forwarding")
    env = production_env(tmp_path)
    assert run(env, "manage.py", "migrate", "--no-input").returncode == 0
    assert run(env, "manage.py", "collectstatic", "--no-input", "-v0").returncode == 0
    script = "".join(
        f"User.objects.create_user({name!r}, password={password!r}); "
        for name, password in PASSWORD.items()
    )
    users = run(
        env, "manage.py", "shell", "-c", f"from django.contrib.auth.models import User; {script}"
    )
    assert users.returncode == 0, users.stderr
    return tmp_path / "portal.sqlite3", env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Portal:
    """A running gunicorn and its database."""

    def __init__(self, port: int, database: Path) -> None:
        self.port, self.database = port, database

    def request(
        self, method: str, path: str, headers: dict[str, str], body: str | None = None
    ) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request(method, path, body=body, headers={"Host": HOST, **headers})
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    def login(self, username: str, password: str, headers: dict[str, str]) -> int:
        """POST the login form as a browser would (its CSRF cookie sent by hand: it is a Secure
        cookie, which a client sends only over HTTPS); the answer's status."""
        page = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        page.request("GET", "/login/", headers={"Host": HOST, **headers})
        response = page.getresponse()
        html = response.read().decode()
        assert response.status == 200, response.status
        cookie = next(
            value.split(";", 1)[0]
            for value in response.headers.get_all("Set-Cookie") or []
            if value.startswith("csrftoken=")
        )
        page.close()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
        assert token
        form = urllib.parse.urlencode(
            {"username": username, "password": password, "csrfmiddlewaretoken": token.group(1)}
        )
        answer = self.request(
            "POST",
            "/login/",
            {
                **headers,
                "Cookie": cookie,
                "Content-Type": "application/x-www-form-urlencoded",
                "Referer": f"https://{HOST}/login/",
            },
            form,
        )
        return answer.status

    def attempts(self, username: str) -> dict[str, int]:
        """django-axes's record of failures for `username`: address -> failures."""
        with sqlite3.connect(self.database) as db:
            rows = db.execute(
                "SELECT ip_address, failures_since_start FROM axes_accessattempt "
                "WHERE username = ?",
                (username,),
            ).fetchall()
        return dict(rows)


@contextmanager
def gunicorn(
    tmp_path: Path, portal_database: tuple[Path, dict[str, str]], **env: str
) -> Iterator[Portal]:
    template, base = portal_database
    database = tmp_path / "portal.sqlite3"
    for part in template.parent.glob(template.name + "*"):  # with any -wal / -shm left
        shutil.copy(part, tmp_path / part.name)
    port = free_port()
    environment = {
        **base,
        "DATABASE_URL": f"sqlite:///{database}",
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "AXES_FAILURE_LIMIT": "2",
        "AXES_USERNAME_FAILURE_LIMIT": "6",
        **env,
    }
    log = tmp_path / "gunicorn.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "portal/gunicorn.conf.py", "portal.wsgi:application"],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        yield Portal(port, database)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_a_direct_clients_forged_https_header_changes_nothing(
    tmp_path: Path, portal_database: tuple[Path, dict[str, str]]
) -> None:
    """Each header gunicorn would take for HTTPS from a trusted proxy (its
    secure_scheme_headers)."""
    forgeries = [
        {"X-Forwarded-Proto": "https"},
        {"X-Forwarded-Ssl": "on"},
        {"X-Forwarded-Protocol": "ssl"},
    ]
    with gunicorn(tmp_path, portal_database, FORWARDED_ALLOW_IPS="10.9.9.9") as portal:
        for forged in forgeries:
            response = portal.request("GET", "/login/", forged)
            assert response.status == 301, forged  # still plain HTTP to the portal
            assert response.headers["Location"] == f"https://{HOST}/login/"
            assert "Strict-Transport-Security" not in response.headers


@pytest.mark.slow
def test_a_direct_clients_forged_address_is_not_what_throttling_counts(
    tmp_path: Path, portal_database: tuple[Path, dict[str, str]]
) -> None:
    """Plain HTTP allowed (as in the Docker demo), so that the login form is reached at all."""
    forged = {"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "https"}
    with gunicorn(
        tmp_path, portal_database, FORWARDED_ALLOW_IPS="10.9.9.9", SECURE_SSL_REDIRECT="false"
    ) as portal:
        page = portal.request("GET", "/login/", forged)
        assert page.status == 200
        assert "Strict-Transport-Security" not in page.headers  # not taken for HTTPS
        assert portal.login("dana", "wrong", forged) == 200
        assert portal.attempts("dana") == {"127.0.0.1": 1}


@pytest.mark.slow
def test_behind_the_trusted_proxy_each_client_is_locked_out_alone(
    tmp_path: Path, portal_database: tuple[Path, dict[str, str]]
) -> None:
    def via_proxy(client: str, forged: str = "") -> dict[str, str]:
        # What a proxy sends: X-Forwarded-For as the client wrote it, plus the client's address.
        return {
            "X-Forwarded-For": f"{forged}, {client}" if forged else client,
            "X-Forwarded-Proto": "https",
        }

    with gunicorn(tmp_path, portal_database, FORWARDED_ALLOW_IPS="127.0.0.1") as portal:
        page = portal.request("GET", "/login/", via_proxy("198.51.100.1"))
        assert page.status == 200  # the proxy's X-Forwarded-Proto is believed: no redirect
        assert "Strict-Transport-Security" in page.headers
        # The attacker names dana's address in the header it writes; only what the proxy
        # appended counts.
        attacker = via_proxy("198.51.100.66", forged="198.51.100.2")
        assert [portal.login("dana", "wrong", attacker) for _ in range(3)] == [200, 429, 429]
        assert portal.login("dana", "dana-password", attacker) == 429
        assert portal.attempts("dana") == {"198.51.100.66": 4}
        assert portal.login("dana", "dana-password", via_proxy("198.51.100.2")) == 302


@pytest.mark.slow
def test_behind_the_trusted_proxy_a_username_has_a_ceiling_one_address_cannot_reach(
    tmp_path: Path, portal_database: tuple[Path, dict[str, str]]
) -> None:
    """AXES_FAILURE_LIMIT 2 per pair, AXES_USERNAME_FAILURE_LIMIT 6: each address counts at most
    2 towards the ceiling, so it takes three addresses to lock omar for everyone."""

    def via_proxy(client: str) -> dict[str, str]:
        return {"X-Forwarded-For": client, "X-Forwarded-Proto": "https"}

    with gunicorn(tmp_path, portal_database, FORWARDED_ALLOW_IPS="127.0.0.1") as portal:
        one = via_proxy("203.0.113.10")
        assert [portal.login("omar", "wrong", one) for _ in range(8)] == [200] + [429] * 7
        assert portal.login("omar", "omar-password", via_proxy("203.0.113.20")) == 302
        for address in ("203.0.113.11", "203.0.113.12"):
            assert portal.login("omar", "wrong", via_proxy(address)) == 200
            assert portal.login("omar", "wrong", via_proxy(address)) == 429
        assert portal.login("omar", "omar-password", via_proxy("203.0.113.21")) == 429
        # Another username is untouched.
        assert portal.login("dana", "dana-password", via_proxy("203.0.113.21")) == 302


def test_gunicorn_believes_forwarding_headers_from_127_0_0_1_only_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    config = runpy.run_path(str(ROOT / "portal" / "gunicorn.conf.py"))
    assert config["forwarded_allow_ips"] == "127.0.0.1"


def test_compose_publishes_ports_on_the_loopback_only() -> None:
    from ruamel.yaml import YAML  # installed with check-jsonschema

    services = YAML(typ="safe").load((DOCKER / "compose.yaml").read_text())["services"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published
    for port in published:
        address = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(port)).rsplit(":", 2)[0]
        assert address == "127.0.0.1", port


# --- docker/entrypoint.sh --------------------------------------------------------------------


def entrypoint(tmp_path: Path, role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the image's entrypoint with `env`, gunicorn and celery replaced by stubs that only say
    they were started (`python`, for `check --deploy`, is the real one). No Docker needed."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in ("gunicorn", "celery"):
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "started {name} $*"\n')
        stub.chmod(0o755)
    return subprocess.run(
        ["sh", str(DOCKER / "entrypoint.sh"), role],
        cwd=ROOT,
        env={**env, "PATH": f"{stubs}:{BIN}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("role", ["web", "worker", "beat"])
@pytest.mark.parametrize("debug", [None, "", "true", "1"])
def test_the_entrypoint_refuses_to_serve_unless_debug_is_explicitly_false(
    tmp_path: Path, role: str, debug: str | None
) -> None:
    env = production_env(tmp_path)
    del env["DEBUG"]
    if debug is not None:
        env["DEBUG"] = debug
    result = entrypoint(tmp_path, role, env)
    assert result.returncode == 78
    assert f"refusing to start {role}: DEBUG is" in result.stderr
    assert "started" not in result.stdout


def test_the_entrypoint_reads_debug_from_a_file_as_the_settings_do(tmp_path: Path) -> None:
    (tmp_path / "debug").write_text("true\n")
    env = production_env(tmp_path, DEBUG_FILE=str(tmp_path / "debug"))  # DEBUG=false as well
    result = entrypoint(tmp_path, "web", env)
    assert result.returncode == 78
    assert "started" not in result.stdout


@pytest.mark.parametrize("role", ["web", "worker", "beat"])
def test_the_entrypoint_refuses_the_image_builds_marker(tmp_path: Path, role: str) -> None:
    result = entrypoint(tmp_path, role, production_env(tmp_path, PORTAL_BUILD_ONLY="1"))
    assert result.returncode == 78
    assert "PORTAL_BUILD_ONLY" in result.stderr
    assert "started" not in result.stdout


@pytest.mark.slow
def test_the_entrypoint_runs_check_deploy_then_serves_with_debug_false(tmp_path: Path) -> None:
    result = entrypoint(tmp_path, "web", production_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
    assert result.stdout.strip().endswith(
        "started gunicorn -c portal/gunicorn.conf.py portal.wsgi:application"
    )


@pytest.mark.slow
def test_a_failing_check_deploy_stops_the_start(tmp_path: Path) -> None:
    env = production_env(tmp_path, SECRET_KEY="change-me-to-a-long-random-value-of-at-least-32")
    result = entrypoint(tmp_path, "worker", env)
    assert result.returncode != 0
    assert "SECRET_KEY is a placeholder" in result.stderr
    assert "started" not in result.stdout


@pytest.mark.slow
def test_debug_on_starts_only_when_allowed_explicitly(tmp_path: Path) -> None:
    env = production_env(tmp_path, DEBUG="true", PORTAL_ALLOW_DEBUG="true")
    result = entrypoint(tmp_path, "beat", env)
    assert result.returncode == 0, result.stderr
    assert "started celery -A portal --quiet beat" in result.stdout
