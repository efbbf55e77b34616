"""Secrets: after a whole life of a connection through the sandbox (connect, choose a profile,
sync, refresh, disconnect), no token Zywave issued and not the client secret appears in the
database, the Redis the tests use, the logs, the emails or the pages."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core import mail
from django.db import connection as db
from django.test import Client

from integrations.backends import ZywaveOAuth2
from integrations.models import Connection
from integrations.sync import sync_now
from integrations.tokens import refresh
from tests.integrations.flows import connect
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


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


def redis_text() -> str:
    """Every key and value of the tests' Redis database (shared: read only, never flushed)."""
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
        chunks.extend(v.decode(errors="replace") for v in values if isinstance(v, bytes))
    client.close()
    return "\n".join(chunks)


def mail_text() -> str:
    parts: list[str] = []
    for message in mail.outbox:
        parts += [str(message.subject), str(message.body)]
        parts += [str(content) for content, _ in getattr(message, "alternatives", [])]
    return "\n".join(parts)


def test_no_issued_token_or_client_secret_is_found_anywhere_after_a_connections_life(
    staff: User,
    admin_user: User,
    zywave: Sandbox,
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

    assert connect(dana, zywave).status_code == 302
    dana.get("/zywave/profiles/")
    chosen = zywave.profiles()[0]
    assert (
        dana.post("/zywave/profiles/", {"action": "choose", "profile": chosen["id"]}).status_code
        == 302
    )
    conn = Connection.objects.get(user=staff)
    run = sync_now(conn, full=True)
    assert run is not None and run.state == "succeeded"
    conn.refresh_from_db()
    refresh(conn, refused=conn.access_token)
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
    assert dana.post("/zywave/disconnect/").status_code == 302

    secrets = {settings.ZYWAVE_CLIENT_SECRET}
    for data in issued:
        secrets |= {
            str(data[k]) for k in ("access_token", "refresh_token", "id_token") if data.get(k)
        }
    secrets |= {p["profile_token"] for p in zywave.profiles() if p.get("profile_token")}
    # The test saw what it searches for: two exchanges' worth of tokens, and an id_token.
    assert len(issued) == 2 and any("id_token" in data for data in issued)
    assert len(secrets) >= 7

    places = {
        "database": database_text(),
        "redis": redis_text(),
        "logs": every_log.text + "\n".join(str(r.__dict__) for r in every_log.records),
        "mail": mail_text(),
        "pages": "\n".join(pages),
    }
    hits = {
        (place, secret[:8])
        for place, text in places.items()
        for secret in secrets
        if secret in text
    }
    assert hits == set()
    # The searches can find things: the logs were captured, and the audit's fingerprints (which
    # stand in for the tokens) are in the database dump.
    assert len(places["logs"]) > 1000
    assert conn.events.get(kind="connected").detail["access_token"] in places["database"]
