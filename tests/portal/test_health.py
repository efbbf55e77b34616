"""/health/: JSON and a status a load balancer can act on; nothing secret for anonymous callers.

A worker answering is the one thing patched here (`app.control.ping`): the smoke run
(tests/smoke/run_smoke.py) checks /health/ against a real worker.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet
from django.db import connections
from django.test import Client

from integrations.checks import ensure_canary
from portal import health
from portal.celery import app


@pytest.fixture(autouse=True)
def forget_the_last_ping() -> Iterator[None]:
    health._worker_probe = None
    yield
    health._worker_probe = None


@pytest.fixture
def worker_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.control, "ping", lambda timeout: [{"w@host": {"ok": "pong"}}])


@pytest.fixture
def no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.control, "ping", lambda timeout: [])


@pytest.fixture
def real_redis(settings) -> str:  # type: ignore[no-untyped-def]
    """The broker pointed at the Redis this run uses (tests/services.py gives every `make test`
    one), so the Redis check really pings a server."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"the health check's Redis test needs a Redis at {url}: {exc}")
    settings.CELERY_BROKER_URL = url
    return url


def test_it_answers_200_when_every_check_passes(  # type: ignore[no-untyped-def]
    client: Client, db: None, worker_answers, real_redis
) -> None:
    ensure_canary()
    response = client.get("/health/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok", "worker": "ok", "encryption": "ok"},
    }
    assert "no-cache" in response["Cache-Control"]


def test_it_answers_503_when_no_worker_answers(client: Client, db: None, no_worker) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/health/")
    assert response.status_code == 503
    assert response.json()["status"] == "fail"
    assert response.json()["checks"]["worker"] == "fail"
    assert response.json()["checks"]["database"] == "ok"


def test_it_answers_503_when_the_key_cannot_decrypt_the_canary(
    client: Client,
    db: None,
    worker_answers,  # type: ignore[no-untyped-def]
    settings,  # type: ignore[no-untyped-def]
) -> None:
    ensure_canary()
    settings.FIELD_ENCRYPTION_KEY = [Fernet.generate_key().decode()]
    response = client.get("/health/")
    assert response.status_code == 503
    assert response.json()["checks"]["encryption"] == "fail"


def test_it_answers_503_when_redis_does_not_answer(
    client: Client,
    db: None,
    worker_answers,  # type: ignore[no-untyped-def]
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.CELERY_BROKER_URL = "redis://:hunter2-broker-pass@127.0.0.1:1/0"
    response = client.get("/health/")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] == "fail"


def test_it_answers_503_when_the_database_fails(
    client: Client,
    db: None,
    worker_answers,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.db import OperationalError

    def broken() -> None:
        raise OperationalError("could not connect to server at db.internal:5432")

    monkeypatch.setitem(health.CHECKS, "database", broken)
    response = client.get("/health/")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "fail"
    assert b"db.internal" not in response.content


def test_anonymous_callers_see_no_reasons_hosts_or_versions(
    client: Client,
    db: None,
    no_worker,  # type: ignore[no-untyped-def]
    settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.CELERY_BROKER_URL = "redis://:hunter2-broker-pass@127.0.0.1:1/0"
    response = client.get("/health/")
    body = response.json()
    assert set(body) == {"status", "checks"}
    text = response.content.decode()
    for leak in ("hunter2", "127.0.0.1", "redis://", "Django", "5.2", "ConnectionError"):
        assert leak not in text


def test_staff_also_see_why_a_check_failed(
    client: Client,
    admin_user,  # type: ignore[no-untyped-def]
    no_worker,  # type: ignore[no-untyped-def]
) -> None:
    client.force_login(admin_user)
    body = client.get("/health/").json()
    assert "no Celery worker answered" in body["errors"]["worker"]
    assert "database" not in body["errors"]


def test_a_successful_ping_is_remembered_briefly(
    client: Client,
    db: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[float] = []

    def ping(timeout: float) -> list[dict[str, object]]:
        calls.append(timeout)
        return [{"w@host": {"ok": "pong"}}]

    monkeypatch.setattr(app.control, "ping", ping)
    client.get("/health/")
    client.get("/health/")
    assert len(calls) == 1
    assert calls[0] <= 2.0


def test_health_only_answers_get(client: Client, db: None) -> None:
    assert client.post("/health/").status_code == 405


def test_it_says_the_redis_check_was_skipped_on_the_file_broker(  # type: ignore[no-untyped-def]
    client: Client, db: None, worker_answers, settings
) -> None:
    ensure_canary()
    settings.CELERY_BROKER_URL = "filesystem://"
    response = client.get("/health/")
    assert response.status_code == 200
    assert response.json()["checks"]["redis"] == "skipped"


def test_a_burst_of_health_requests_while_workers_are_down_costs_one_broadcast(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50 anonymous requests at once, no worker up. `app.control.ping` is a counting stand-in
    for Celery's broadcast: like the real one when no worker answers, it answers nothing after
    a wait (0.5 s here, TIMEOUT in production), which is when unshared probes would pile up."""
    calls: list[float] = []

    def ping(timeout: float) -> list[dict[str, object]]:
        calls.append(timeout)
        time.sleep(0.5)
        return []

    monkeypatch.setattr(app.control, "ping", ping)
    burst = threading.Barrier(50)

    def probe(_: int) -> Any:
        burst.wait()
        try:
            return Client().get("/health/")
        finally:
            connections.close_all()  # this thread's own database connection

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(probe, range(50)))
    assert len(calls) == 1
    assert {response.status_code for response in responses} == {503}
    assert {response.json()["checks"]["worker"] for response in responses} == {"fail"}


def test_a_failed_ping_is_remembered_only_for_a_few_seconds(
    client: Client, db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers: list[list[dict[str, object]]] = [[], [{"w@host": {"ok": "pong"}}]]
    calls: list[float] = []

    def ping(timeout: float) -> list[dict[str, object]]:
        calls.append(timeout)
        return answers[len(calls) - 1]

    monkeypatch.setattr(app.control, "ping", ping)
    assert client.get("/health/").json()["checks"]["worker"] == "fail"
    assert client.get("/health/").json()["checks"]["worker"] == "fail"
    assert len(calls) == 1  # the failure was remembered
    assert health.WORKER_FAIL_SECONDS <= 5
    ended, reason = health._worker_probe  # type: ignore[misc]
    health._worker_probe = (ended - health.WORKER_FAIL_SECONDS, reason)  # its seconds are up
    assert client.get("/health/").json()["checks"]["worker"] == "ok"  # the worker is back
    assert len(calls) == 2


def test_a_broker_that_cannot_be_reached_is_a_remembered_failure(
    client: Client, db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []

    def ping(timeout: float) -> list[dict[str, object]]:
        calls.append(timeout)
        raise ConnectionRefusedError("redis://:secret@broker.internal:6379")

    monkeypatch.setattr(app.control, "ping", ping)
    responses = [client.get("/health/") for _ in range(3)]
    assert [r.json()["checks"]["worker"] for r in responses] == ["fail"] * 3
    assert len(calls) == 1
    assert b"broker.internal" not in responses[0].content


# --- Warnings: settings that work but weaken the deployment -------------------------------


def test_staff_are_told_when_private_webhook_endpoints_are_allowed_in_production(
    client: Client,
    admin_user,  # type: ignore[no-untyped-def]
    worker_answers,  # type: ignore[no-untyped-def]
    real_redis,  # type: ignore[no-untyped-def]
    settings,  # type: ignore[no-untyped-def]
) -> None:
    ensure_canary()
    settings.DEBUG = False
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    anonymous = client.get("/health/")
    client.force_login(admin_user)
    staff = client.get("/health/")
    # A warning, not a failure: the probe still passes, and every check reads as before.
    assert anonymous.status_code == staff.status_code == 200
    assert staff.json()["status"] == "ok" and staff.json()["checks"] == anonymous.json()["checks"]
    warning = staff.json()["warnings"]["webhooks"]
    assert "WEBHOOKS_ALLOW_PRIVATE is on with DEBUG off" in warning
    assert "169.254.169.254" in warning and "plain HTTP" in warning
    # Anonymous callers see the same answer as ever: an attacker learns nothing of it.
    assert set(anonymous.json()) == {"status", "checks"}
    assert b"WEBHOOKS" not in anonymous.content and b"webhooks" not in anonymous.content


def test_there_is_no_warning_when_the_webhook_rules_hold_or_in_development(
    client: Client,
    admin_user,  # type: ignore[no-untyped-def]
    worker_answers,  # type: ignore[no-untyped-def]
    settings,  # type: ignore[no-untyped-def]
) -> None:
    client.force_login(admin_user)
    settings.DEBUG = False
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    assert "warnings" not in client.get("/health/").json()
    settings.DEBUG = True
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    assert "warnings" not in client.get("/health/").json()
