"""A production-like smoke run, without Docker: `python tests/smoke/run_smoke.py` (`make smoke`).

Starts the sandbox (the emulated Zywave), then gunicorn, a Celery worker and beat with DEBUG off
and production settings against PostgreSQL (database `portal_smoke`, created afresh) and Redis
(DB 14); checks /health/ and /login/; logs a portal user in over HTTP, connects Zywave through
the sandbox's login and consent pages, picks a profile, syncs and waits for the run to succeed;
then stops every process with SIGTERM and checks that each exited cleanly and that no secret
reached the logs. Every port is a free one on 127.0.0.1. Exit status 0 means it passed.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from tests.sandboxserver import (  # noqa: E402
    Sandbox,
    SandboxError,
    free_port,
    start_sandbox,
    stop_sandbox,
)

# `make smoke` runs this through tests/services.py, which names the PostgreSQL server and a
# Redis database of this run's own; run by hand, the shared servers on 127.0.0.1.
PG_ADMIN = os.environ.get("PORTAL_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = f"portal_smoke_{os.getpid()}"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
BIN = Path(sys.executable).parent
DEADLINE = time.monotonic() + 300  # the whole run, start to finish
STEP_TIMEOUT = 90


class SmokeFailed(Exception):
    pass


def choose_first_profile(
    http: requests.Session, picker: requests.Response, timeout: float
) -> tuple[requests.Response, str | None]:
    """Choose the first profile the picker page lists; (answer, id), or (picker, None)."""
    profile = re.search(r'name="profile" value="([^"]+)"', picker.text)
    if profile is None:
        return picker, None
    chosen = http.post(
        urljoin(picker.url, ""),
        data={
            "action": "choose",
            "profile": profile.group(1),
            "next": "",
            "csrfmiddlewaretoken": csrf_from(picker.text),
        },
        timeout=timeout,
    )
    return chosen, profile.group(1)


def worker_command(hostname: str) -> list[str]:
    """A production-like Celery worker: every queue, two pool processes, JSON logs."""
    return [
        str(BIN / "celery"),
        "-A",
        "portal",
        "--quiet",
        "worker",
        "--queues",
        "interactive,refetch,sync,tokens,webhooks,celery",
        "--concurrency",
        "2",
        "--hostname",
        hostname,
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    ]


def say(message: str) -> None:
    print(f"[smoke {time.monotonic() - START:6.1f}s] {message}", flush=True)


def wait_for(what: str, probe: Callable[[], bool], timeout: float = STEP_TIMEOUT) -> None:
    until = min(time.monotonic() + timeout, DEADLINE)
    while time.monotonic() < until:
        try:
            if probe():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.5)
    raise SmokeFailed(f"timed out waiting for {what}")


def fresh_database() -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")


def drop_database() -> None:
    """The run's database is named for the run: drop it, or every run would leave one."""
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    except psycopg.Error as exc:
        print(f"could not drop {DATABASE}: {exc}", file=sys.stderr)


def production_env(
    tmp: Path, web_port: int, sandbox: Sandbox, client_secret: str
) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # Nothing of the caller's configuration leaks in: only what a deployment would set.
        if not re.match(
            r"(DEBUG|SECRET_KEY|ALLOWED_HOSTS|FIELD_ENCRYPTION|ZYWAVE_|DATABASE_|"
            r"REDIS_|CELERY_|SANDBOX_|PORTAL_|LOG_|GUNICORN_|WEB_CONCURRENCY|EMAIL_|"
            r"SECURE_|SOCIAL_AUTH_|DJANGO_SETTINGS_MODULE)",
            key,
        )
    }
    env.update(
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1",
        FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        DATABASE_URL=PG_ADMIN.rsplit("/", 1)[0] + f"/{DATABASE}",
        REDIS_URL=REDIS_URL,
        ZYWAVE_AUTH_URL=sandbox.url,
        ZYWAVE_API_URL=sandbox.url,
        ZYWAVE_CLIENT_ID="portal-smoke",
        ZYWAVE_CLIENT_SECRET=client_secret,
        # Plain HTTP on localhost: no TLS proxy in front, so no redirect to https and a
        # redirect URI with http.
        SECURE_SSL_REDIRECT="false",
        SOCIAL_AUTH_REDIRECT_IS_HTTPS="false",
        PORTAL_URL=f"http://127.0.0.1:{web_port}",
        PORTAL_VAR_DIR=str(tmp / "var"),
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        LOG_FORMAT="json",
        GUNICORN_BIND=f"127.0.0.1:{web_port}",
        WEB_CONCURRENCY="2",
        DJANGO_SETTINGS_MODULE="portal.settings",
        # tests/netguard first: its sitecustomize refuses any address outside loopback.
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "tests" / "netguard"), str(REPO_ROOT)]),
    )
    return env


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
    )
    if result.returncode != 0:
        raise SmokeFailed(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, wait; the exit code, or None if it had to be killed."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)
            code = None
        self.log.close()
        return code


class Browser(requests.Session):
    """Sends Secure cookies over plain HTTP to 127.0.0.1, as browsers do for a local origin.

    requests never does (and rebuilds its cookie jar per request, so a cookie policy is lost):
    each request's Cookie header is rebuilt from the session's cookies with the flag cleared."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        for cookie in self.cookies:
            cookie.secure = False
        request.headers.pop("Cookie", None)
        request.prepare_cookies(self.cookies)
        return super().send(request, **kwargs)


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    if not match:
        raise SmokeFailed("no CSRF token on the page")
    return match.group(1)


def expect(response: requests.Response, status: int, what: str) -> requests.Response:
    if response.status_code != status:
        raise SmokeFailed(
            f"{what}: expected {status}, got {response.status_code}: {response.text[:400]}"
        )
    return response


def connect_and_sync(portal: str, sandbox: Sandbox, password: str) -> dict[str, Any]:
    http = Browser()
    login = expect(http.get(f"{portal}/login/", timeout=10), 200, "GET /login/")
    if "script-src 'self'" not in login.headers.get("Content-Security-Policy", ""):
        raise SmokeFailed("the login page has no Content-Security-Policy")
    response = http.post(
        f"{portal}/login/",
        data={
            "username": "smoke",
            "password": password,
            "csrfmiddlewaretoken": csrf_from(login.text),
        },
        allow_redirects=False,
        timeout=10,
    )
    expect(response, 302, "POST /login/")
    dashboard = expect(http.get(f"{portal}/", timeout=10), 200, "GET /")
    say("logged in; connecting Zywave")

    begin = http.post(
        f"{portal}/oauth/login/zywave/",
        data={"csrfmiddlewaretoken": csrf_from(dashboard.text)},
        allow_redirects=False,
        timeout=10,
    )
    expect(begin, 302, "POST /oauth/login/zywave/")
    authorize = begin.headers["Location"]
    if not authorize.startswith(f"{sandbox.url}/connect/authorize"):
        raise SmokeFailed(f"connect did not redirect to the authorize page: {authorize}")
    callback = sandbox.walk_authorize(authorize)
    if not callback.startswith(f"{portal}/oauth/complete/zywave/") or "code=" not in callback:
        raise SmokeFailed(f"the sandbox did not send the person back with a code: {callback}")
    landed = expect(http.get(callback, timeout=30), 200, "the OAuth callback")
    say(f"connected; landed on {urlsplit(landed.url).path}")

    if urlsplit(landed.url).path != "/zywave/profiles/":
        landed = expect(http.get(f"{portal}/zywave/profiles/", timeout=30), 200, "profiles")
    chosen, profile_id = choose_first_profile(http, landed, timeout=30)
    if profile_id is None:
        raise SmokeFailed("the profile picker lists no profile")
    expect(chosen, 200, "choosing a profile")
    say(f"profile {profile_id} chosen; syncing")

    page = expect(http.get(f"{portal}/", timeout=10), 200, "GET /")
    expect(
        http.post(
            f"{portal}/zywave/sync/",
            data={"csrfmiddlewaretoken": csrf_from(page.text)},
            timeout=10,
        ),
        200,
        "POST /zywave/sync/",
    )
    status: dict[str, Any] = {}

    def succeeded() -> bool:
        nonlocal status
        status = http.get(f"{portal}/zywave/sync/status/", timeout=10).json()
        if status.get("state") == "failed":
            raise SmokeFailed(f"the sync failed: {status}")
        return status.get("state") == "succeeded"

    wait_for("the sync to succeed", succeeded, timeout=120)
    if not status.get("records"):
        raise SmokeFailed(f"the sync succeeded but mirrored nothing: {status}")
    return status


def run(tmp: Path) -> None:
    logs = tmp / "logs"
    logs.mkdir()
    say("fresh database and Redis DB 14")
    try:
        fresh_database()
        broker = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        broker.flushdb()
    except (psycopg.OperationalError, redis.RedisError) as exc:
        raise SmokeFailed(
            f"PostgreSQL ({PG_ADMIN}) and Redis ({REDIS_URL}) must be "
            f"running; `.ci/run` starts them. {type(exc).__name__}: {exc}"
        ) from None

    say("starting the sandbox")
    sandbox, sandbox_process = start_sandbox(tmp / "sandbox", accounts=300)
    processes: list[Process] = []
    try:
        web_port = free_port()
        portal = f"http://127.0.0.1:{web_port}"
        client_secret = secrets.token_urlsafe(32)
        sandbox.register_client("portal-smoke", client_secret, [f"{portal}/oauth/complete/zywave/"])
        env = production_env(tmp, web_port, sandbox, client_secret)

        say("migrate, collectstatic, a portal user")
        manage(env, "migrate", "--no-input")
        manage(env, "collectstatic", "--no-input", "--verbosity", "0")
        password = secrets.token_urlsafe(16)
        # create_demo_users refuses production; an ordinary staff member, as an admin would add.
        manage(
            {**env, "SMOKE_PASSWORD": password},
            "shell",
            "-c",
            "import os; from django.contrib.auth.models import User; "
            "User.objects.create_user('smoke', password=os.environ['SMOKE_PASSWORD'])",
        )

        say("starting gunicorn, a Celery worker and beat")
        processes = [
            Process(
                "web",
                [str(BIN / "gunicorn"), "-c", "portal/gunicorn.conf.py", "portal.wsgi:application"],
                env,
                logs,
            ),
            Process(
                "worker",
                worker_command(f"smoke-{web_port}@%h"),
                env,
                logs,
            ),
            Process(
                "beat",
                [
                    str(BIN / "celery"),
                    "-A",
                    "portal",
                    "--quiet",
                    "beat",
                    "--schedule",
                    str(tmp / "celerybeat-schedule"),
                    "--loglevel",
                    "INFO",
                ],
                env,
                logs,
            ),
        ]

        def healthy() -> bool:
            for process in processes:
                if not process.alive():
                    raise SmokeFailed(f"{process.name} exited early:\n{process.tail()}")
            response = requests.get(f"{portal}/health/", timeout=10)
            return response.status_code == 200 and response.json()["status"] == "ok"

        wait_for("/health/ to answer 200", healthy)
        health = requests.get(f"{portal}/health/", timeout=10).json()
        say(f"/health/ ok: {health['checks']}")

        status = connect_and_sync(portal, sandbox, password)
        say(f"sync succeeded: {status['records']} records in {status['pages']} pages")

        say("stopping everything with SIGTERM")
        codes = {process.name: process.stop() for process in processes}
        unclean = {name: code for name, code in codes.items() if code != 0}
        if unclean:
            tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in processes if p.name in unclean)
            raise SmokeFailed(f"not stopped cleanly (exit codes {unclean}):\n{tails}")

        leaked = [
            p.name
            for p in processes
            for secret in (client_secret, env["SECRET_KEY"], env["FIELD_ENCRYPTION_KEY"], password)
            if secret in p.log_path.read_text(errors="replace")
        ]
        if leaked:
            raise SmokeFailed(f"a secret appears in the logs of {sorted(set(leaked))}")
        web_lines = [line for line in (logs / "web.log").read_text().splitlines() if line]
        if not web_lines or not all(line.startswith("{") for line in web_lines):
            raise SmokeFailed("gunicorn's log is not one JSON object per line")
    finally:
        for process in processes:
            if process.alive():
                process.stop(timeout=10)
        stop_sandbox(sandbox_process)
        if sandbox_process.returncode not in (0, None):
            say(f"the sandbox exited with {sandbox_process.returncode}")


START = time.monotonic()


def main() -> int:
    keep = os.environ.get("SMOKE_KEEP_TMP") == "1"
    tmp = Path(tempfile.mkdtemp(prefix="portal-smoke-"))
    try:
        run(tmp)
    except (SmokeFailed, SandboxError) as exc:
        print(f"SMOKE FAILED after {time.monotonic() - START:.1f}s: {exc}", file=sys.stderr)
        print(f"logs: {tmp / 'logs'}", file=sys.stderr)
        return 1
    finally:
        if not keep:
            drop_database()
    say(f"passed in {time.monotonic() - START:.1f}s")
    if not keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
