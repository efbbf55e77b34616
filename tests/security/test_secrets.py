"""Secrets: after a whole life of a connection through the sandbox (connect, choose a profile,
sync on a real Celery worker through Redis, "Sync now", refresh, a revoked grant and its
re-authorization email, disconnect), no token Zywave issued and not the client secret appears in
the database, the run's Redis, the logs (the worker's included), the emails or the pages; and
each of those five searches is shown to find a string known to be there."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core import mail
from django.db import connection as db
from django.test import Client
from django.utils import timezone

from integrations.backends import ZywaveOAuth2
from integrations.models import Account, Connection, SyncRun
from integrations.tasks import heartbeat
from integrations.tokens import ReauthRequired, access_token_for, refresh
from portal.celery import app
from tests.integrations.flows import connect
from tests.integrations.workers import TEST_BROKER, Worker, wait_for
from tests.sandboxserver import Sandbox

# Transactional: the on-commit Celery messages and the on-commit email really go out.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REDIS_URL = TEST_BROKER  # the run's own Redis database (tests/services.py), the worker's broker
PROBE_QUEUE = "secrets-probe"  # no worker consumes it: a message sent there stays in Redis


@pytest.fixture
def issued(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every token response the portal received from Zywave in this test."""
    seen: list[dict[str, Any]] = []
    exchange = ZywaveOAuth2.request_access_token
    renewal = ZywaveOAuth2.process_refresh_token_response

    def spy_exchange(self: Any, *args: Any, **kwargs: Any) -> Any:
        data = exchange(self, *args, **kwargs)
        seen.append(dict(data))
        return data

    def spy_renewal(self: Any, *args: Any, **kwargs: Any) -> Any:
        data = renewal(self, *args, **kwargs)
        seen.append(dict(data))
        return data

    monkeypatch.setattr(ZywaveOAuth2, "request_access_token", spy_exchange)
    monkeypatch.setattr(ZywaveOAuth2, "process_refresh_token_response", spy_renewal)
    return seen


@pytest.fixture
def every_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record at DEBUG, `django.*` included (it does not propagate to the root)."""
    django_logger = logging.getLogger("django")
    django_logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django")
    try:
        yield caplog
    finally:
        django_logger.removeHandler(caplog.handler)


def database_text() -> str:
    """Every column of every table as text, read with raw SQL; sessions decoded too."""
    chunks: list[str] = []
    with db.cursor() as cursor:
        for table in db.introspection.table_names():
            cursor.execute(f"SELECT * FROM {db.ops.quote_name(table)}")  # noqa: S608
            for row in cursor.fetchall():
                chunks.extend(str(value) for value in row if value is not None)
    chunks.extend(str(s.get_decoded()) for s in Session.objects.all())
    return "\n".join(chunks)


def celery_bodies(value: bytes) -> list[str]:
    """The decoded bodies of a Celery message kept in Redis (a queued message, or an unacked
    one as `[message, exchange, routing_key]`): kombu stores them base64-encoded."""
    try:
        data = json.loads(value)
    except ValueError:
        return []
    if isinstance(data, dict):
        messages = [data]
    elif isinstance(data, list):
        messages = [m for m in data if isinstance(m, dict)]
    else:
        return []
    bodies: list[str] = []
    for message in messages:
        body = message.get("body")
        properties = message.get("properties")
        if (
            isinstance(body, str)
            and isinstance(properties, dict)
            and properties.get("body_encoding") == "base64"
        ):
            bodies.append(base64.b64decode(body).decode(errors="replace"))
    return bodies


def redis_text() -> str:
    """Every key and value of the run's Redis database, Celery message bodies decoded (read
    only: tests/services.py flushes it at the run's start and end)."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    chunks: list[str] = []
    for key in client.scan_iter(count=500):
        kind = client.type(key)
        if kind == b"string":
            values: Any = [client.get(key)]
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"hash":
            values = [v for pair in client.hgetall(key).items() for v in pair]
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        else:
            values = []
        chunks.append(key.decode(errors="replace"))
        for value in values:
            if isinstance(value, bytes):
                chunks.append(value.decode(errors="replace"))
                chunks.extend(celery_bodies(value))
    client.close()
    return "\n".join(chunks)


def mail_text() -> str:
    parts: list[str] = []
    for message in mail.outbox:
        parts += [str(message.subject), str(message.body)]
        parts += [str(content) for content, _ in getattr(message, "alternatives", [])]
    return "\n".join(parts)


def wait_for_runs(conn: Connection, succeeded: int, worker: Worker) -> None:
    """Poll the SyncRun rows the worker writes until `succeeded` runs have succeeded and none is
    active (bounded); a failed run fails the test at once."""

    def done() -> bool:
        states = list(SyncRun.objects.filter(connection=conn).values_list("state", flat=True))
        assert SyncRun.State.FAILED not in states, (states, worker.log_tail())
        active = SyncRun.objects.active().filter(connection=conn).exists()
        return not active and states.count(SyncRun.State.SUCCEEDED) == succeeded

    try:
        wait_for(done, timeout=120, what=f"{succeeded} succeeded sync run(s)")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.log_tail()}") from None


def test_no_issued_token_or_client_secret_is_found_anywhere_after_a_connections_life(
    staff: User,
    admin_user: User,
    zywave: Sandbox,
    worker: Worker,
    issued: list[dict[str, Any]],
    every_log: pytest.LogCaptureFixture,
    settings: Any,
) -> None:
    settings.ZYWAVE_SYNC_BACKOFF_SECONDS = 0
    dana = Client()
    dana.force_login(staff)
    admin = Client()
    admin.force_login(admin_user)
    pages: list[str] = []

    def read_pages() -> None:
        for url in ("/", "/zywave/profiles/", "/zywave/accounts/", "/zywave/sync/status/"):
            pages.append(dana.get(url).content.decode(errors="replace"))
        for url in (
            f"/admin/integrations/connection/{conn.pk}/change/",
            "/admin/integrations/connection/export/",
            "/admin/integrations/connectionevent/",
            "/admin/social_django/usersocialauth/",
        ):
            response = admin.get(url)
            body = b"".join(response.streaming_content) if response.streaming else response.content  # type: ignore[attr-defined]
            pages.append(body.decode(errors="replace"))

    assert connect(dana, zywave).status_code == 302
    dana.get("/zywave/profiles/")
    chosen = zywave.profiles()[0]
    profile_tokens = {p["profile_token"] for p in zywave.profiles() if p.get("profile_token")}
    # Choosing the profile queues a full sync: a message through Redis, run by the worker.
    assert (
        dana.post("/zywave/profiles/", {"action": "choose", "profile": chosen["id"]}).status_code
        == 302
    )
    conn = Connection.objects.get(user=staff)
    wait_for_runs(conn, succeeded=1, worker=worker)
    # "Sync now": a second message, a second run on the worker.
    assert dana.post("/zywave/sync/").status_code == 302
    wait_for_runs(conn, succeeded=2, worker=worker)
    account_name = (
        Account.objects.filter(connection=conn).exclude(name="").values_list("name", flat=True)[0]
    )
    conn.refresh_from_db()
    refresh(conn, refused=conn.access_token)
    read_pages()

    # Re-authorization: the grant is revoked at Zywave, the access token has run out, and the
    # next use refreshes in this process, gets invalid_grant and emails the owner on commit.
    zywave.control("POST", "users/agent@example.com/revoke")
    Connection.objects.filter(pk=conn.pk).update(
        access_token_expires_at=timezone.now() - timedelta(minutes=1)
    )
    conn.refresh_from_db()
    with pytest.raises(ReauthRequired):
        access_token_for(conn)
    conn.refresh_from_db()
    assert conn.status == Connection.Status.REAUTH_REQUIRED
    assert len(mail.outbox) >= 1
    assert any(message.to == [conn.owner_email] for message in mail.outbox)
    assert any("Reconnect" in str(message.body) for message in mail.outbox)
    read_pages()
    assert dana.post("/zywave/disconnect/").status_code == 302

    secrets = {settings.ZYWAVE_CLIENT_SECRET} | profile_tokens
    for data in issued:
        secrets |= {
            str(data[k]) for k in ("access_token", "refresh_token", "id_token") if data.get(k)
        }
    # The test saw what it searches for: two exchanges' worth of tokens, and an id_token; and
    # no token was issued where the spies cannot see (the worker never refreshed).
    assert len(issued) == 2 and any("id_token" in data for data in issued)
    assert conn.events.filter(kind="refreshed").count() == 1
    assert len(secrets) >= 7

    # Known strings planted in each place, to show each search finds what is there.
    marker = f"planted-{uuid.uuid4().hex}"
    session = SessionStore()
    session["probe"] = f"{marker}-session"
    session.create()
    probe = app.send_task(
        "integrations.tasks.heartbeat", args=[f"{marker}-celery"], queue=PROBE_QUEUE
    )
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    client.set(f"{marker}-key", f"{marker}-string")
    client.rpush(f"{marker}-list", f"{marker}-item")
    logging.getLogger("integrations").warning("probe %s-log", marker)
    answer = heartbeat.delay()  # the worker logs its id as it receives and runs it
    answer.get(timeout=60)
    wait_for(lambda: answer.id in worker.log_path.read_text(errors="replace"), what="worker log")
    worker_log = worker.log_path.read_text(errors="replace")
    try:
        places = {
            "database": database_text(),
            "redis": redis_text(),
            "logs": "\n".join(
                [
                    every_log.text,
                    "\n".join(str(r.__dict__) for r in every_log.records),
                    worker_log,
                ]
            ),
            "mail": mail_text(),
            "pages": "\n".join(pages),
        }
    finally:
        client.delete(f"{marker}-key", f"{marker}-list", PROBE_QUEUE)
        client.delete(f"_kombu.binding.{PROBE_QUEUE}")
        client.close()
    hits = {
        (place, secret[:8])
        for place, text in places.items()
        for secret in secrets
        if secret in text
    }
    assert hits == set()

    # Database: a column as stored (the audit's fingerprints, which stand in for the tokens)
    # and a planted session, decoded.
    assert conn.events.get(kind="connected").detail["access_token"] in places["database"]
    assert f"{marker}-session" in places["database"]
    # Redis: planted plain values, a real Celery message's decoded body, and the broker and
    # result keys the worker used (so this is the Redis the flow's messages went through).
    assert f"{marker}-string" in places["redis"] and f"{marker}-item" in places["redis"]
    assert probe.id in places["redis"] and f"{marker}-celery" in places["redis"]
    assert "_kombu.binding.sync" in places["redis"]
    assert f"celery-task-meta-{answer.id}" in places["redis"]
    # Logs: this process's records and the worker's file, which received both sync messages.
    assert f"{marker}-log" in places["logs"] and answer.id in places["logs"]
    assert worker_log.count("integrations.tasks.sync_connection[") >= 2
    assert len(places["logs"]) > 1000
    # Mail: the re-authorization email is there and readable.
    assert f"{settings.PORTAL_URL}/" in places["mail"]
    assert "can no longer reach your Zywave account" in places["mail"]
    # Pages: what the portal showed (the chosen profile, the worker's mirrored account).
    assert chosen["name"] in places["pages"] and account_name in places["pages"]
