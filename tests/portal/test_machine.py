"""The machine path (portal/machine.py): /hooks/zywave/ and /api/ through the short
PORTAL_MACHINE_MIDDLEWARE, every other path through MIDDLEWARE, as `portal.wsgi.application`
serves them in production.

Django's test client builds its own handler from MIDDLEWARE, so it never takes the machine
path: here a fresh process with production settings (DEBUG off, HTTPS redirect, HSTS, JSON
logs, Redis as the shared cache) calls the WSGI application itself with the environs gunicorn
would hand it, and the same requests through a handler of the full MIDDLEWARE (what every path
went through before): what each answers is compared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from portal.machine import MACHINE_CSP, is_machine_path
from tests.portal.test_production import production_env, run

SCRIPT = r"""
import io, json, sys, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
call_command("collectstatic", verbosity=0, interactive=False)
from django.contrib.auth.models import User
from django.core.handlers.wsgi import WSGIHandler
from integrations import hooks
from integrations.api import views
from integrations.api.keys import issue
from integrations.models import Connection
from portal.wsgi import application

user = User.objects.create_user("machine")
conn = Connection.objects.create(user=user, zywave_subject="sub-m", zywave_email="m@agency.test")
token = hooks.rotate_token(conn)
_key, key = issue(user, "m", ["read"])

def crash(self, request):
    raise RuntimeError("a crash in the view")
views.SyncList.get = crash  # a 500 under /api/, in both handlers

pages = WSGIHandler()
NOTIFICATION = (b'{"eventType": "account.updated", "recordType": "Account", "recordId": "7", '
                b'"eventDateTime": "2026-01-01T00:00:00Z"}')

def environ(method, path, query="", body=b"", scheme="https", host="portal.example.com", **h):
    env = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": query,
           "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
           "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": host, "wsgi.url_scheme": scheme,
           "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
           "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False}
    if body:
        env.update(CONTENT_LENGTH=str(len(body)), CONTENT_TYPE="application/json")
    env.update({f"HTTP_{name}": value for name, value in h.items()})
    return env

def call(app, env):
    seen = {}
    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = int(status.split()[0]), headers
    body = b"".join(app(env, start_response))
    headers = {}
    for name, value in seen["headers"]:
        headers.setdefault(name, []).append(value)
    return {"status": seen["status"], "headers": headers, "body": body.decode(errors="replace")}

auth = {"AUTHORIZATION": f"Bearer {key}"}
requests = {
    "api": ("GET", "/api/v1/connection", {**auth}),
    "api list": ("GET", "/api/v1/accounts", {"query": "page_size=500", **auth}),
    "api no key": ("GET", "/api/v1/connection", {}),
    "api 404": ("GET", "/api/v1/no-such-thing", {**auth}),
    "api root 404": ("GET", "/api", {}),
    "api 405": ("DELETE", "/api/v1/connection", {**auth}),
    "api 500": ("GET", "/api/v1/syncs", {**auth, "X_REQUEST_ID": "machine-test-request-0001"}),
    "api bad host": ("GET", "/api/v1/connection", {"host": "evil.example.org", **auth}),
    "api plain http": ("GET", "/api/v1/connection", {"scheme": "http", **auth}),
    "api schema": ("GET", "/api/schema/", {}),
    "hook": ("POST", f"/hooks/zywave/{token}/", {"body": NOTIFICATION}),
    "hook challenge": ("GET", f"/hooks/zywave/{token}/", {"query": "challenge=abc"}),
    "hook unknown": ("POST", "/hooks/zywave/no-such-token/", {"body": NOTIFICATION}),
    "hook bad host": ("POST", f"/hooks/zywave/{token}/", {"body": NOTIFICATION,
                                                         "host": "evil.example.org"}),
    "hook plain http": ("POST", f"/hooks/zywave/{token}/", {"body": NOTIFICATION,
                                                           "scheme": "http"}),
    "docs": ("GET", "/api/docs/", {}),
    "redoc": ("GET", "/api/redoc/", {}),
    "login": ("GET", "/login/", {}),
}
out = {}
for name, (method, path, options) in requests.items():
    options = dict(options)
    kwargs = {k: options.pop(k) for k in ("query", "body", "scheme", "host") if k in options}
    out[name] = {
        "machine": call(application, environ(method, path, **kwargs, **options)),
        "pages": call(pages, environ(method, path, **kwargs, **options)),
    }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp_path: Path = tmp_path_factory.mktemp("machine")
    env = production_env(tmp_path, REDIS_URL=os.environ["REDIS_URL"], LOG_FORMAT="json")
    result = run(env, "-c", SCRIPT)
    assert result.returncode == 0, result.stderr[-3000:]
    answers: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    answers["_log"] = result.stderr
    return answers


MACHINE = [
    "api",
    "api list",
    "api no key",
    "api 404",
    "api root 404",
    "api 405",
    "api 500",
    "api bad host",
    "api plain http",
    "api schema",
    "hook",
    "hook challenge",
    "hook unknown",
    "hook bad host",
    "hook plain http",
]
PAGES = ["docs", "redoc", "login"]
# Where the two answers may differ, and how: the fixed policy in place of the pages' one, and no
# `Vary: Cookie` (the page middleware read the session to find the user for the log; an API
# answer never depends on a cookie).
DIFFERENT = {"Content-Security-Policy", "Vary"}


def test_machine_paths_are_sorted_from_pages() -> None:
    for path in ("/api", "/api/", "/api/v1/accounts", "/api/schema/", "/hooks/zywave/x/"):
        assert is_machine_path(path), path
    for path in (
        "/api/docs/",
        "/api/redoc/",
        "/metrics",
        "/",
        "/login/",
        "/admin/",
        "/health/",
        "/apis",
        "/hooks/other/",
        "/static/x.css",
        "/settings/api-keys/",
    ):
        assert not is_machine_path(path), path


def test_the_machine_handler_answers_its_paths_and_the_pages_keep_theirs(
    answers: dict[str, Any],
) -> None:
    for name in MACHINE:
        if answers[name]["machine"]["status"] in (301, 400):  # before the CSP middleware
            continue
        assert answers[name]["machine"]["headers"]["Content-Security-Policy"] == [MACHINE_CSP]
    for name in PAGES:
        machine = answers[name]["machine"]
        assert machine == answers[name]["pages"] or machine["status"] == 200, name
        assert "default-src 'self'" in machine["headers"]["Content-Security-Policy"][0], name


def test_each_machine_answer_is_the_one_the_page_middleware_gave(
    answers: dict[str, Any],
) -> None:
    for name in MACHINE:
        machine, pages = answers[name]["machine"], answers[name]["pages"]
        assert machine["status"] == pages["status"], name
        if name != "hook":  # the same notification kept twice: the same 202, no body
            assert machine["body"] == pages["body"], name
        same = {h: v for h, v in machine["headers"].items() if h not in DIFFERENT}
        assert same == {h: v for h, v in pages["headers"].items() if h not in DIFFERENT}, name
        assert "Cookie" not in ",".join(machine["headers"].get("Vary", [])), name
        assert "Set-Cookie" not in machine["headers"], name


def test_the_statuses_are_what_each_request_deserves(answers: dict[str, Any]) -> None:
    statuses = {name: answers[name]["machine"]["status"] for name in MACHINE}
    assert statuses == {
        "api": 200,
        "api list": 200,
        "api no key": 401,
        "api 404": 404,
        "api root 404": 404,
        "api 405": 405,
        "api 500": 500,
        "api bad host": 400,
        "api plain http": 301,
        "api schema": 200,
        "hook": 202,
        "hook challenge": 200,
        "hook unknown": 404,
        "hook bad host": 400,
        "hook plain http": 301,
    }


def test_machine_answers_carry_the_security_headers(answers: dict[str, Any]) -> None:
    for name in MACHINE:
        headers = answers[name]["machine"]["headers"]
        if answers[name]["machine"]["status"] == 301:
            assert headers["Location"][0].startswith("https://portal.example.com/"), name
            continue
        assert headers["X-Content-Type-Options"] == ["nosniff"], name
        assert headers["Referrer-Policy"] == ["same-origin"], name
        assert headers["Cross-Origin-Opener-Policy"] == ["same-origin"], name
        assert headers["Strict-Transport-Security"] == [
            "max-age=31536000; includeSubDomains; preload"
        ], name
        if answers[name]["machine"]["status"] != 400:
            assert headers["X-Frame-Options"] == ["DENY"], name


def test_api_errors_on_the_machine_path_are_problem_json(answers: dict[str, Any]) -> None:
    for name in ("api no key", "api 404", "api root 404", "api 405", "api 500", "api bad host"):
        answer = answers[name]["machine"]
        assert answer["headers"]["Content-Type"] == ["application/problem+json"], name
        assert json.loads(answer["body"])["status"] == answer["status"], name
    assert "Host" in json.loads(answers["api bad host"]["machine"]["body"])["detail"]


def test_the_receiver_takes_a_post_without_csrf_on_the_machine_path(
    answers: dict[str, Any],
) -> None:
    assert answers["hook"]["machine"]["status"] == 202
    assert answers["hook challenge"]["machine"]["body"] == "abc"


def test_machine_requests_log_with_their_request_id(answers: dict[str, Any]) -> None:
    lines = [json.loads(line) for line in answers["_log"].splitlines() if line.startswith("{")]
    crashes = [line for line in lines if "Unhandled error answering" in line.get("event", "")]
    # One from each handler, both bound to the id the caller sent.
    assert len(crashes) == 2
    assert {line.get("request_id") for line in crashes} == {"machine-test-request-0001"}
