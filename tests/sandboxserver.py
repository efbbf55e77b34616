"""A pytest plugin that runs the Zywave sandbox as a real server for the whole session.

Declare it with `pytest_plugins = ["tests.sandboxserver"]` in the top-level conftest. The
session-scoped `sandbox` fixture migrates and seeds a small dataset into a temporary
directory, starts gunicorn (2 workers, a few threads) on a free port of 127.0.0.1 and yields
a `Sandbox` handle; `sandbox_clean` resets faults, counters, clock and runtime settings first, and
puts back seeded data and registered clients that an earlier test changed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlparse

import pytest
import requests

from sandbox.scopes import PORTAL_SCOPES

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTROL_KEY = "test-sandbox-control-key"
SEED_ACCOUNTS = 300
DEFAULT_REDIRECT_URI = "http://testserver/oauth/complete/zywave/"
# The sandbox's own list (a Django-free module): what portal-dev is registered for.
DEFAULT_SCOPE = PORTAL_SCOPES


class SandboxError(RuntimeError):
    pass


class FormParser(HTMLParser):
    """Collect the forms of a page: action, method and input / button name-value pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append({"action": attributes.get("action", ""), "fields": {}, "buttons": {}})
        elif self.forms and tag in {"input", "button"} and attributes.get("name"):
            kind = attributes.get("type", "submit" if tag == "button" else "text")
            target = "buttons" if kind == "submit" else "fields"
            self.forms[-1][target][attributes["name"]] = attributes.get("value", "")


def parse_forms(html: str) -> list[dict[str, Any]]:
    parser = FormParser()
    parser.feed(html)
    return parser.forms


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return verifier, challenge


class Sandbox:
    """A handle on the running sandbox server."""

    def __init__(self, url: str, control_key: str, var_dir: Path, log_path: Path) -> None:
        self.url = url
        self.control_key = control_key
        self.var_dir = var_dir
        self.log_path = log_path
        self.http = requests.Session()
        # No keep-alive for the harness: gunicorn closes idle connections after 2 s, and a
        # request sent on one at that instant fails with "connection reset" (seen in CI).
        self.http.headers["Connection"] = "close"

    # Control API -------------------------------------------------------------------------

    def control(self, method: str, path: str, /, **payload: Any) -> Any:
        """Call the control API (`path` relative to /_sandbox/) and return its JSON.

        Positional-only, so that a payload may itself have a `path` (faults do)."""
        url = f"{self.url}/_sandbox/{path.lstrip('/')}"
        kwargs: dict[str, Any] = {"headers": {"X-Sandbox-Key": self.control_key}, "timeout": 30}
        if method.upper() == "GET":
            kwargs["params"] = payload
        else:
            kwargs["json"] = payload
        response = self.http.request(method.upper(), url, **kwargs)
        if not response.ok:
            raise SandboxError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def reset(self, restore: bool = False) -> Any:
        """Faults, counters, clock and runtime settings cleared; with `restore`, also seeded
        data (if a control call changed it) and registered clients put back as the baseline
        has them (what `sandbox_clean` does before every test)."""
        return self.control("POST", "reset", restore=restore)

    def take_baseline(self) -> Any:
        """The registered clients as they are now become what every reset restores."""
        return self.control("POST", "baseline")

    def counters(self) -> Any:
        return self.control("GET", "counters")

    def received_headers(self) -> dict[str, list[str]]:
        """The request header names beyond the ordinary ones (see the sandbox's
        `received_headers`) that reached each API path since the last reset, lower-cased."""
        seen: dict[str, list[str]] = {}
        for key in self.counters().get("headers", {}):
            path, _, names = key.rpartition(":")
            seen.setdefault(path, [])
            seen[path] = sorted({*seen[path], *names.split(",")})
        return seen

    def register_client(
        self,
        client_id: str,
        client_secret: str,
        redirect_uris: list[str],
        allowed_scopes: str = DEFAULT_SCOPE,
    ) -> Any:
        return self.control(
            "POST",
            "clients",
            client_id=client_id,
            client_secret=client_secret,
            redirect_uris=redirect_uris,
            allowed_scopes=allowed_scopes,
        )

    def add_fault(self, path: str, count: int = 1, **options: Any) -> Any:
        """The next `count` requests matching the regex `path` get `status` (with optional
        `retry_after`, `body`, `content_type`, `method`) or are delayed by `delay_ms`."""
        return self.control("POST", "faults", path=path, count=count, **options)

    def profiles(self, email: str = "agent@example.com") -> list[dict[str, Any]]:
        return self.control("GET", f"users/{email}/profiles")["profiles"]

    # Webhooks (docs/zywave.md §6) --------------------------------------------------------

    def subscribe_webhook(
        self, uri: str, event_type: str = "account.updated", user: str = "agent@example.com"
    ) -> dict[str, Any]:
        """Register a webhook as Zywave's admin tool would; the sandbox first checks that `uri`
        echoes `GET ?challenge=...` (SandboxError with the reason when it does not)."""
        return dict(self.control("POST", "webhooks", user=user, event_type=event_type, uri=uri))

    def webhooks(self, user: str | None = None) -> list[dict[str, Any]]:
        return list(self.control("GET", "webhooks", **({"user": user} if user else {}))["webhooks"])

    def unsubscribe_webhook(self, webhook_id: int) -> Any:
        return self.control("POST", f"webhooks/{webhook_id}/delete")

    def send_webhook(self, webhook_id: int, record_id: str) -> dict[str, Any]:
        """Queue one delivery to the webhook about any record id, visible to its user or not."""
        return dict(self.control("POST", f"webhooks/{webhook_id}/send", record_id=record_id))

    def webhook_deliveries(self, **filters: Any) -> list[dict[str, Any]]:
        """The delivery log, oldest first (filters: subscription, state, event_type,
        record_id, limit); each delivery with its `attempts` (at, status, error, duration_ms)."""
        return list(self.control("GET", "webhooks/deliveries", **filters)["deliveries"])

    def drain_webhooks(self, timeout: float = 30) -> dict[str, Any]:
        """Wait until no delivery is pending (delivered or given up); SandboxError (408) when
        some still are after `timeout` seconds. Returns the counts by state."""
        response = self.http.post(
            f"{self.url}/_sandbox/webhooks/drain",
            json={"timeout": timeout},
            headers={"X-Sandbox-Key": self.control_key},
            timeout=timeout + 30,  # the sandbox answers after at most `timeout`
        )
        if not response.ok:
            raise SandboxError(f"POST webhooks/drain: {response.status_code} {response.text[:500]}")
        return dict(response.json())

    # OAuth helpers -----------------------------------------------------------------------

    def authorize_url(
        self,
        client_id: str = "portal-dev",
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        scope: str = DEFAULT_SCOPE,
        state: str = "test-state",
        code_challenge: str | None = None,
        **extra: str,
    ) -> str:
        params = {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": scope,
            "state": state,
            "nonce": "test-nonce",
            **extra,
        }
        if code_challenge is not None:
            params["code_challenge"] = code_challenge
            params["code_challenge_method"] = "S256"
        return f"{self.url}/connect/authorize?" + requests.compat.urlencode(params)

    def walk_authorize(
        self,
        authorize_url: str,
        username: str = "agent@example.com",
        password: str = "sandbox",
        allow: bool = True,
    ) -> str:
        """Walk the sandbox's login and consent pages like a person would and return the final
        redirect Location (the client's callback with `code` and `state`, or `error`) without
        following it. Raises SandboxError when the sandbox shows an error page instead."""
        browser = requests.Session()
        response = browser.get(authorize_url, allow_redirects=False, timeout=30)
        for _step in range(6):
            if response.is_redirect:
                location = urljoin(response.url, response.headers["Location"])
                if not location.startswith(self.url):
                    return location  # left the sandbox: the client's callback
                response = browser.get(location, allow_redirects=False, timeout=30)
                continue
            if response.status_code != 200:
                raise SandboxError(f"{response.status_code} at {response.url}: {response.text}")
            forms = parse_forms(response.text)
            login = next((f for f in forms if "password" in f["fields"]), None)
            consent = next((f for f in forms if "allow" in f["buttons"]), None)
            if login is not None:
                data = {**login["fields"], "username": username, "password": password}
                target = urljoin(response.url, login["action"] or response.url)
                response = browser.post(target, data=data, allow_redirects=False, timeout=30)
                if response.status_code == 200:
                    raise SandboxError(f"Login failed for {username}")
            elif consent is not None:
                data = dict(consent["fields"])
                data.update({"allow": "Authorize"} if allow else {"deny": "Deny"})
                target = urljoin(response.url, consent["action"] or response.url)
                response = browser.post(target, data=data, allow_redirects=False, timeout=30)
            else:
                raise SandboxError(f"No login or consent form at {response.url}: {response.text}")
        raise SandboxError("Too many steps walking the authorize pages")

    def obtain_tokens(
        self,
        username: str = "agent@example.com",
        password: str = "sandbox",
        scope: str = DEFAULT_SCOPE,
        client_id: str = "portal-dev",
        client_secret: str = "portal-dev-secret",
        redirect_uri: str = DEFAULT_REDIRECT_URI,
    ) -> dict[str, Any]:
        """A whole PKCE authorization-code flow; returns the token endpoint's JSON."""
        if redirect_uri == DEFAULT_REDIRECT_URI and client_id == "portal-dev":
            self.ensure_test_redirect_uri()
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(8)
        url = self.authorize_url(client_id, redirect_uri, scope, state, code_challenge=challenge)
        location = self.walk_authorize(url, username=username, password=password)
        query = parse_qs(urlparse(location).query)
        if "code" not in query or query.get("state") != [state]:
            raise SandboxError(f"No code in the callback: {location}")
        response = self.http.post(
            f"{self.url}/connect/token",
            data={
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
                "client_id": client_id,
                "client_secret": client_secret,
            },
            timeout=30,
        )
        if response.status_code != 200:
            raise SandboxError(f"Token exchange failed: {response.status_code} {response.text}")
        return response.json()

    def ensure_test_redirect_uri(self) -> None:
        """portal-dev also accepts the test server's callback (Django's test client host)."""
        self.register_client(
            "portal-dev",
            "portal-dev-secret",
            [
                "http://127.0.0.1:8000/oauth/complete/zywave/",
                "http://localhost:8000/oauth/complete/zywave/",
                DEFAULT_REDIRECT_URI,
            ],
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sandbox_env(var_dir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SANDBOX_") and key != "DJANGO_SETTINGS_MODULE"
    }
    env.update(
        {
            "SANDBOX_VAR_DIR": str(var_dir),
            "SANDBOX_CONTROL_KEY": CONTROL_KEY,
            "SANDBOX_ISSUED_TOKENS_FILE": str(var_dir / "issued-tokens.txt"),
            "DJANGO_SETTINGS_MODULE": "sandbox.settings",
            # tests/netguard first: its sitecustomize refuses any address outside loopback.
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests" / "netguard"), str(REPO_ROOT)]),
        }
    )
    return env


def start_sandbox(
    var_dir: Path,
    accounts: int = SEED_ACCOUNTS,
    host: str = "127.0.0.1",
    wrap: Callable[[list[str]], list[str]] = list,
    env: dict[str, str] | None = None,
    workers: int = 2,
) -> tuple[Sandbox, subprocess.Popen]:
    """Seed `var_dir` and start gunicorn (`workers` processes of 4 threads) on a free port;
    returns once it answers.

    `host` and `wrap` are for the partition drill, which serves the sandbox from a network
    namespace: the address inside it, and the command that runs gunicorn there. `env` adds to
    the sandbox's environment (`SANDBOX_EXTRA_APPS` for a test-only resource)."""
    env = {**sandbox_env(var_dir), **(env or {})}
    log_path = var_dir / "sandbox.log"
    seeded = subprocess.run(
        [sys.executable, "-m", "sandbox", "seed", "--accounts", str(accounts)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if seeded.returncode != 0:
        raise SandboxError(f"Seeding the sandbox failed:\n{seeded.stdout}\n{seeded.stderr}")
    for _attempt in range(3):
        port = free_port()
        url = f"http://{host}:{port}"
        log = open(log_path, "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            wrap(
                [
                    sys.executable,
                    "-m",
                    "sandbox",
                    "serve",
                    "--bind",
                    f"{host}:{port}",
                    "--workers",
                    str(workers),
                    "--threads",
                    "4",
                ]
            ),
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        handle = Sandbox(url, CONTROL_KEY, var_dir, log_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(f"{url}/.well-known/openid-configuration", timeout=2).ok:
                    return handle, process
            except requests.RequestException:
                pass
            time.sleep(0.2)
        stop_sandbox(process)  # port taken in between, or a crash: try again on another port
    raise SandboxError(f"The sandbox did not start. Log tail:\n{handle.log_tail()}")


def stop_sandbox(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The sandbox running as a real server (gunicorn) for the whole test session."""
    with tempfile.TemporaryDirectory(prefix="sandbox-") as tmp:
        handle, process = start_sandbox(Path(tmp))
        try:
            handle.ensure_test_redirect_uri()
            handle.take_baseline()
            yield handle
        finally:
            stop_sandbox(process)


@pytest.fixture
def sandbox_clean(sandbox: Sandbox) -> Sandbox:
    """The sandbox with faults, counters, clock and runtime settings reset, and the seeded
    data and registered clients as the session started with them."""
    sandbox.reset(restore=True)
    return sandbox
