"""Secrets: after a whole life of a connection through the sandbox (connect, choose a profile,
sync on a real Celery worker through Redis, "Sync now", refresh, a revoked grant and its
re-authorization email, disconnect), no token Zywave issued and not the client secret appears in
the database, the run's Redis, the logs (the worker's included), the emails or the pages; and
each of those five searches is shown to find a string known to be there.

API keys likewise: after keys were used on every endpoint, refused every way and a sync was
started through the API and run on the worker, no key (nor its secret part, nor anything shaped
like a key) is in the database outside `hashed_key`, Redis, the logs, the Celery messages the
portal sent, the API's answers (problem bodies included), or the pages and admin pages.

Webhook signing secrets likewise: after a subscription's life (made and rotated through the API,
deliveries by the worker, disabled and enabled by an admin), neither its secret nor the previous
one, whole or without `whsec_`, is anywhere but in the two answers that show it once.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from celery.signals import before_task_publish
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core import mail
from django.db import connection as db
from django.test import Client
from django.utils import timezone
from svix.webhooks import Webhook as SvixWebhook

from integrations import webhooks
from integrations.api.keys import KEY_PATTERN, hash_key
from integrations.backends import ZywaveOAuth2
from integrations.models import Account, ApiKey, Connection, SyncRun, WebhookSubscription
from integrations.tasks import heartbeat
from integrations.tokens import ReauthRequired, access_token_for, refresh
from portal.celery import app
from tests.api.callers import System, problem, system_of
from tests.conftest import connection
from tests.integrations.flows import connect
from tests.integrations.workers import TEST_BROKER, Worker, wait_for
from tests.sandboxserver import Sandbox
from tests.security.cast import admin_urls, own_data

pytestmark = pytest.mark.django_db
# The lives of a connection and of keys are transactional: the on-commit Celery messages and the
# on-commit email really go out.
LIFE = pytest.mark.django_db(transaction=True)

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


@LIFE
@pytest.mark.slow
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


# --- API keys ------------------------------------------------------------------------------


@pytest.fixture
def published() -> Iterator[list[str]]:
    """Every Celery message this process publishes during the test, as JSON text: its body
    (the task's args and kwargs), its headers (`argsrepr`, `kwargsrepr`, ...) and properties,
    taken from Celery's own hook just before the message is sent."""
    sent: list[str] = []

    def record(sender: Any = None, body: Any = None, **message: Any) -> None:
        fields = {k: message.get(k) for k in ("headers", "properties", "routing_key")}
        sent.append(json.dumps({"task": sender, "body": body, **fields}, default=str))

    before_task_publish.connect(record, weak=False)
    try:
        yield sent
    finally:
        before_task_publish.disconnect(record)


def key_of(system: System) -> ApiKey:
    assert system.key is not None
    return ApiKey.objects.get(prefix=system.key.split("_")[1])


def secret_of(key: str) -> str:
    """The part of a key that is never stored (`zwk_<prefix>_<secret>`)."""
    return key.rsplit("_", 1)[1]


def text_of(response: Any) -> str:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return f"{response.status_code} {dict(response.headers)}\n{body.decode(errors='replace')}"


def key_hits(places: dict[str, str], keys: list[str]) -> set[tuple[str, str]]:
    """(place, prefix) for each key whose secret is found in a place, and (place, `shape`) for
    anything there shaped like a key at all (a key this test does not know of counts too)."""
    hits = {
        (place, key.split("_")[1])
        for place, text in places.items()
        for key in keys
        if secret_of(key) in text
    }
    return hits | {(place, "shape") for place, text in places.items() if KEY_PATTERN.search(text)}


def admin_pages(admin: Client) -> dict[str, str]:
    """Every admin page of the walk (tests.security.cast.admin_urls), the keys' list and a
    search of it, by URL; logout left out, it would end the session."""
    urls = [url for url in admin_urls() if url != "/admin/logout/"]
    first = ApiKey.objects.order_by("pk").first()
    urls += [
        "/admin/integrations/apikey/",
        f"/admin/integrations/apikey/?q={first and first.prefix}",
    ]
    return {url: text_of(admin.get(url)) for url in urls}


def test_no_page_or_admin_page_shows_a_key_after_it_was_made(staff: User, admin_user: User) -> None:
    own_data(staff)
    systems = [
        system_of(staff, "read"),
        system_of(staff, "sync", expires_at=timezone.now() + timedelta(days=3)),
        system_of(staff, "proxy"),
    ]
    key_of(systems[2]).revoke(admin_user)
    keys = [system.key for system in systems if system.key]
    dana, root = Client(), Client()
    dana.force_login(staff)
    root.force_login(admin_user)
    keys_page = text_of(dana.get("/settings/api-keys/"))
    admin = admin_pages(root)
    assert key_hits({"keys page": keys_page, "admin": "\n".join(admin.values())}, keys) == set()
    # The search saw the keys: each is listed by its prefix on the owner's page and the admin's.
    listing = admin["/admin/integrations/apikey/"]
    for key in keys:
        assert key.split("_")[1] in keys_page and key.split("_")[1] in listing
    assert keys_page.startswith("200") and listing.startswith("200")


@LIFE
@pytest.mark.slow
def test_no_api_key_is_found_anywhere_after_keys_were_used(
    staff: User,
    other_staff: User,
    admin_user: User,
    zywave: Sandbox,
    worker: Worker,
    every_log: pytest.LogCaptureFixture,
    published: list[str],
    settings: Any,
) -> None:
    settings.ZYWAVE_SYNC_BACKOFF_SECONDS = 0
    conn = connection(staff, zywave)
    connection(other_staff)
    # Choosing the profile may have queued the first sync: the API's own comes after it.
    wait_for(
        lambda: not SyncRun.objects.active().filter(connection=conn).exists(),
        timeout=120,
        what="no active sync run",
    )
    full = system_of(staff)
    reader = system_of(staff, "read")
    lapsing = system_of(staff, "read")
    expired = system_of(staff, "read", expires_at=timezone.now() - timedelta(seconds=1))
    omars = system_of(other_staff, "read")
    assert full.key is not None
    answers: list[str] = []

    def api(system: Client, method: str, path: str, body: Any = None, **extra: Any) -> Any:
        data = "" if body is None else json.dumps(body)
        response = system.generic(method, path, data, content_type="application/json", **extra)
        answers.append(text_of(response))
        return response

    for path in ("/api/v1/connection", "/api/v1/accounts", "/api/v1/contacts", "/api/v1/syncs"):
        assert api(reader, "GET", path).status_code == 200
    # A sync started through the API: a Celery message through Redis, run by the worker.
    started = api(full, "POST", "/api/v1/syncs", {"full": False})
    assert started.status_code == 202, started.content
    run_id = started.json()["id"]
    wait_for(
        lambda: not SyncRun.objects.filter(pk=run_id).active().exists(),
        timeout=120,
        what="the API's sync run",
    )
    assert SyncRun.objects.get(pk=run_id).state == SyncRun.State.SUCCEEDED, worker.log_tail()
    assert api(full, "GET", f"/api/v1/syncs/{run_id}").status_code == 200
    account = Account.objects.filter(connection=conn).values_list("zywave_id", flat=True)[0]
    assert api(full, "GET", f"/api/v1/accounts/{account}").status_code == 200
    assert api(full, "GET", "/api/v1/zywave/profiles/V2.0/Profile/B").status_code == 200
    # Refused every way, each answered with a problem body.
    problem(api(reader, "POST", "/api/v1/syncs", {"full": True}), 403)
    problem(api(reader, "GET", "/api/v1/no-such-endpoint"), 404)
    problem(api(omars, "GET", f"/api/v1/syncs/{run_id}"), 404)
    problem(api(expired, "GET", "/api/v1/accounts"), 401)
    assert api(lapsing, "GET", "/api/v1/accounts").status_code == 200
    assert key_of(lapsing).revoke(admin_user)
    problem(api(lapsing, "GET", "/api/v1/accounts"), 401)
    changed = full.key[:-1] + ("a" if full.key[-1] != "a" else "b")
    anonymous = System(None)
    basic = "Basic " + base64.b64encode(f"{full.key}:".encode()).decode()
    for header in (f"Bearer {changed}", basic, full.key, f"Token {full.key}"):
        problem(api(anonymous, "GET", "/api/v1/accounts", HTTP_AUTHORIZATION=header), 401)
    assert api(full, "DELETE", "/api/v1/accounts").status_code in {403, 405}

    dana, admin = Client(), Client()
    dana.force_login(staff)
    admin.force_login(admin_user)
    pages = [text_of(dana.get(url)) for url in ("/", "/zywave/accounts/", "/settings/api-keys/")]
    pages += admin_pages(admin).values()
    worker_log = worker.log_path.read_text(errors="replace")
    places = {
        "database": database_text(),
        "redis": redis_text(),
        "logs": "\n".join(
            [every_log.text, "\n".join(str(r.__dict__) for r in every_log.records), worker_log]
        ),
        "celery": "\n".join(published),
        "answers": "\n".join(answers),
        "pages": "\n".join(pages),
    }
    keys = [s.key for s in (full, reader, lapsing, expired, omars) if s.key] + [changed]
    assert key_hits(places, keys) == set()

    # Each search saw what it looks through. Database: every key's prefix, and its SHA-256 in
    # `hashed_key` only (once).
    for key in keys[:-1]:
        assert key.split("_")[1] in places["database"]
        assert places["database"].count(hash_key(key)) == 1
    # Celery: the API's sync message, sent to the broker, received and run by the worker.
    assert any('"integrations.tasks.sync_connection"' in m for m in published), published
    assert f"[{conn.pk}, false]" in places["celery"]
    assert "_kombu.binding.sync" in places["redis"]
    assert worker_log.count("integrations.tasks.sync_connection[") >= 1
    # Logs: the refusals were logged (django.request), with the ids of their requests.
    assert "Forbidden: /api/v1/syncs" in places["logs"]
    assert "Unauthorized: /api/v1/accounts" in places["logs"]
    # Answers: the refusals' problem bodies, each saying why.
    for reason in ("revoked", "expired", "`sync`", "not known", "Bearer zwk_"):
        assert reason in places["answers"], reason
    # Pages: the owner's keys page and the admin list each key by its prefix.
    for key in keys[:-2]:  # omar's key is not on dana's page
        assert places["pages"].count(key.split("_")[1]) >= 2


# --- Webhook signing secrets ---------------------------------------------------------------


class Receiver:
    """A webhook endpoint on 127.0.0.1 (the test settings allow private endpoints, in this
    process and the worker's): answers 200 and keeps each request."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"thanks")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/in"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    try:
        yield started
    finally:
        started.stop()


def webhook_secret_hits(places: dict[str, str], secrets: list[str]) -> set[tuple[str, int]]:
    """(place, which secret) for each secret found in a place whole, or its base64 part alone
    (what a verifier library is given), or anything shaped like a signing secret."""
    hits = {
        (place, number)
        for place, text in places.items()
        for number, secret in enumerate(secrets)
        if secret in text or secret.removeprefix("whsec_") in text
    }
    return hits | {(place, -1) for place, text in places.items() if SIGNING_SECRET.search(text)}


# What webhooks.new_secret makes: whsec_ and the base64 of 32 bytes.
SIGNING_SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")


@LIFE
@pytest.mark.slow
def test_no_webhook_signing_secret_is_found_anywhere_after_a_subscriptions_life(
    staff: User,
    admin_user: User,
    zywave: Sandbox,
    worker: Worker,
    receiver: Receiver,
    every_log: pytest.LogCaptureFixture,
    published: list[str],
) -> None:
    """Subscribed and rotated through the API (the two answers that show a secret, by design,
    are kept apart), events delivered by the worker and verified with both secrets of the
    rotation, a test event, disabled and enabled again by an admin (the owner emailed), the
    owner's pages and every admin page read: no secret in the database (outside its encrypted
    columns), Redis, the logs, the Celery messages, the mail, the other answers or the pages."""
    connection(staff)
    system = system_of(staff, "webhooks")
    shown_once: list[str] = []  # the answers that carry a secret: creation and rotation
    answers: list[str] = []

    def api(method: str, path: str, body: Any = None, keep: list[str] = answers) -> Any:
        data = "" if body is None else json.dumps(body)
        response = system.generic(method, path, data, content_type="application/json")
        keep.append(text_of(response))
        return response

    made = api(
        "POST",
        "/api/v1/webhooks",
        {"url": receiver.url, "events": ["sync.succeeded"]},
        keep=shown_once,
    )
    assert made.status_code == 201, made.content
    first = made.json()["secret"]
    subscription = WebhookSubscription.objects.get(pk=made.json()["id"])
    base = f"/api/v1/webhooks/{subscription.pk}"
    webhooks.emit(staff.pk, "sync.succeeded", {"sync": {"id": 1}})  # committed: the worker sends
    wait_for(lambda: len(receiver.received) == 1, timeout=60, what="the first delivery")
    rotated = api("POST", f"{base}/rotate-secret", {}, keep=shown_once)
    assert rotated.status_code == 200, rotated.content
    second = rotated.json()["secret"]
    assert api("POST", f"{base}/test", {}).status_code == 202
    wait_for(lambda: len(receiver.received) == 2, timeout=60, what="the test delivery")
    SvixWebhook(first).verify(receiver.received[0][1], receiver.received[0][0])
    for secret in (first, second):  # both sign during the overlap; verify raises otherwise
        SvixWebhook(secret).verify(receiver.received[1][1], receiver.received[1][0])

    # An admin disables it (the owner is emailed), events are held, an admin enables it again.
    admin = Client()
    admin.force_login(admin_user)
    changelist = "/admin/integrations/webhooksubscription/"
    for action in ("disable_selected", "enable_selected"):
        if action == "enable_selected":
            webhooks.emit(staff.pk, "sync.succeeded", {"sync": {"id": 2}})  # held
        response = admin.post(
            changelist, {"action": action, ACTION_CHECKBOX_NAME: [subscription.pk], "index": 0}
        )
        assert response.status_code == 302
    wait_for(
        lambda: list(subscription.deliveries.values_list("state", flat=True)) == ["delivered"] * 3,
        timeout=60,
        what="the held delivery",
    )
    assert len(receiver.received) == 3
    assert any(message.to == [staff.email] for message in mail.outbox)
    for path in ("/api/v1/webhooks", base, f"{base}/deliveries"):
        assert api("GET", path).status_code == 200, path

    dana = Client()
    dana.force_login(staff)
    pages = [
        text_of(dana.get(url))
        for url in ("/settings/webhooks/", f"/settings/webhooks/{subscription.pk}/")
    ]
    delivery = subscription.deliveries.order_by("pk").first()
    assert delivery is not None
    pages += admin_pages(admin).values()
    pages += [
        text_of(admin.get(url))
        for url in (
            f"{changelist}{subscription.pk}/change/",
            f"/admin/integrations/webhookdelivery/{delivery.pk}/change/",
            "/admin/integrations/webhookdelivery/",
        )
    ]
    worker_log = worker.log_path.read_text(errors="replace")
    places = {
        "database": database_text(),
        "redis": redis_text(),
        "logs": "\n".join(
            [every_log.text, "\n".join(str(r.__dict__) for r in every_log.records), worker_log]
        ),
        "celery": "\n".join(published),
        "mail": mail_text(),
        "answers": "\n".join(answers),
        "pages": "\n".join(pages),
    }
    assert webhook_secret_hits(places, [first, second]) == set()

    # Each search saw what it looks through. The two answers that show a secret do show it.
    assert webhook_secret_hits({"shown once": "\n".join(shown_once)}, [first, second]) == {
        ("shown once", 0),
        ("shown once", 1),
        ("shown once", -1),
    }
    # Database: the subscription's row (its URL) and its ciphertext, decrypting to the secret.
    subscription.refresh_from_db()
    assert subscription.secret == second and subscription.previous_secret == first
    assert receiver.url in places["database"]
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT secret FROM integrations_webhooksubscription WHERE id = %s", [subscription.pk]
        )
        (ciphertext,) = cursor.fetchone()
    assert ciphertext in places["database"] and ciphertext != second
    # Celery: the delivery tasks this process queued, and the worker ran them.
    task = '"task": "integrations.tasks.deliver_webhooks"'
    assert f'{task}, "body": [[{subscription.pk}], {{}}' in places["celery"]
    assert places["celery"].count(task) >= 3
    assert worker_log.count("integrations.tasks.deliver_webhooks[") >= 3
    assert "_kombu.binding.webhooks" in places["redis"]
    # Mail, answers and pages: the disabled email, the delivery log, the subscription's URL.
    assert receiver.url in places["mail"] and "stopped sending" in places["mail"]
    assert '"sequence":3,"state":"delivered"' in places["answers"]
    assert '"type":"webhook.test","sequence":2' in places["answers"]
    assert places["pages"].count(receiver.url) >= 3


def test_no_receiver_token_is_found_anywhere_but_its_owners_dashboard(
    staff: User, admin_user: User, django_capture_on_commit_callbacks: Any
) -> None:
    """The receiver URL's token authenticates Zywave's deliveries: shown to its owner on the
    dashboard, encrypted at rest, and nowhere else after deliveries of every kind (taken,
    refused, to an old token after a rotation). Logs: tests/portal/test_hook_token_logs.py
    reads them through the project's redaction filter, which this test's capture bypasses."""
    from integrations import hooks

    own_data(staff)
    conn = Connection.objects.get(user=staff)
    old = hooks.rotate_token(conn)
    token = hooks.rotate_token(conn)
    zywave = Client()
    body = {"eventType": "account.updated", "eventDateTime": "2026-12-01T10:00:00Z"}
    with django_capture_on_commit_callbacks(execute=False):
        answers = [
            zywave.post(
                f"/hooks/zywave/{token}/",
                {**body, "recordType": "Account", "recordId": "1"},
                content_type="application/json",
            ).status_code,
            zywave.post(
                f"/hooks/zywave/{token}/", {"x": 1}, content_type="application/json"
            ).status_code,
            zywave.post(f"/hooks/zywave/{old}/", body, content_type="application/json").status_code,
            zywave.get(f"/hooks/zywave/{token}/", {"challenge": "c"}).status_code,
        ]
    assert answers == [202, 400, 404, 200]
    owner = Client()
    owner.force_login(staff)
    assert token in owner.get("/").content.decode()  # the one place it is shown
    admin = Client()
    admin.force_login(admin_user)
    places = {
        "database": database_text(),
        "redis": redis_text(),
        "mail": mail_text(),
        **admin_pages(admin),
        "admin connection": text_of(admin.get(f"/admin/integrations/connection/{conn.pk}/change/")),
    }
    assert {place for place, text in places.items() if token in text or old in text} == set()
