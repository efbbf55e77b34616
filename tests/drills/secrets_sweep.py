"""The secrets sweep, after every other drill: no token, no client secret, no API key and no
webhook signing secret anywhere the portal keeps or writes things.

Webhook secrets to look for: every subscription's `secret` and `previous_secret` still in the
database, every secret written to the run's journal (`journal_webhook_secrets`: a drill that
deletes its subscriptions records their secrets there first), and those of the subscription
this drill makes itself (`webhook_life`), so that there is always one to look for.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import sqlite3
import subprocess
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import requests

from tests.drills.helpers import Result, Scale, conn_of, queue_syncs, wait_idle
from tests.drills.infrastructure import connect_missing
from tests.drills.stack import Stack, wait_until

SECRET_RUN = re.compile(r"[A-Za-z0-9_\-.~+/=]+")
# Anything shaped like one of the portal's API keys (integrations.api.keys.KEY_PATTERN, the
# prefix in any case): the database keeps only their prefix and hash, the logs mask them, so
# any whole key anywhere is a leak, whichever key it is.
API_KEY_SHAPE = re.compile(r"zwk_[A-Za-z0-9]{8}_[A-Za-z0-9]{32}")


def secret_hits(text: str, secrets: set[str]) -> int:
    """How many times any of `secrets` occurs in `text`. Tokens are made of URL-safe, base64
    and JWT characters: only runs of those are searched, window by window."""
    lengths = sorted({len(secret) for secret in secrets})
    found = 0
    for run in SECRET_RUN.findall(text):
        for length in lengths:
            if length > len(run):
                break
            found += sum(run[i : i + length] in secrets for i in range(len(run) - length + 1))
    return found


def key_shapes(text: str) -> int:
    """How many API keys (any key: the sweep cannot know every key a drill made) `text` holds."""
    return len(API_KEY_SHAPE.findall(text))


def webhook_journal(stack: Stack) -> Path:
    return stack.tmp / "webhook-secrets.txt"


def journal_webhook_secrets(stack: Stack, secrets: Iterable[str]) -> None:
    """Record webhook secrets for the sweep (a drill calls it before deleting subscriptions)."""
    with webhook_journal(stack).open("a") as journal:
        journal.writelines(f"{secret}\n" for secret in secrets if secret)


def webhook_secrets(stack: Stack) -> set[str]:
    """Every webhook signing secret known: in the database (decrypted here, with the portal's
    key) and in the journal; each also without its `whsec_` prefix (what a verifier is given)."""
    from integrations.models import WebhookSubscription

    found: set[str] = set()
    for secret, previous in WebhookSubscription.objects.values_list("secret", "previous_secret"):
        found |= {secret, previous or ""}
    if webhook_journal(stack).exists():
        found |= set(webhook_journal(stack).read_text().splitlines())
    found.discard("")
    return found | {secret.removeprefix("whsec_") for secret in found}


class Receiver:
    """A webhook endpoint on 127.0.0.1 in this process: answers 200, keeps what it got."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/sweep"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def private_webhooks_here() -> Iterator[None]:
    """This process may subscribe a 127.0.0.1 endpoint (the workers get it in their env)."""
    from django.conf import settings

    kept = settings.WEBHOOKS_ALLOW_PRIVATE
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    try:
        yield
    finally:
        settings.WEBHOOKS_ALLOW_PRIVATE = kept


def webhook_life(stack: Stack, index: int) -> dict[str, Any]:
    """A subscription's life with real processes, so that the sweep has secrets to look for
    where they would leak: made here, its secret rotated through the API (the new secret in
    gunicorn's answer), a test event sent through the API and a `sync.succeeded` from a sync,
    both delivered by workers allowed private endpoints (then the stack's own workers again),
    signed with the new and the old secret during the overlap. The API's answers are kept, for
    the sweep to show that it finds a secret where one is."""
    from svix.webhooks import Webhook as SvixWebhook

    from integrations import webhooks
    from integrations.api.keys import issue

    connect_missing(stack, [index])
    conn = conn_of(index)
    receiver = Receiver()
    answers: list[str] = []
    try:
        stack.swap_workers({**stack.env, "WEBHOOKS_ALLOW_PRIVATE": "true"})
        stack.wait_workers(timeout=90)
        with private_webhooks_here():
            subscription, first = webhooks.subscribe(
                conn.user, receiver.url, ["sync.succeeded", "accounts.changed"]
            )
        journal_webhook_secrets(stack, [first])
        _key, api_key = issue(conn.user, "secrets sweep", ["webhooks"])
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {api_key}"
        base = f"{stack.portal}/api/v1/webhooks/{subscription.pk}"
        rotated = api.post(f"{base}/rotate-secret", json={}, timeout=30)
        answers.append(rotated.text)
        if rotated.status_code != 200:
            raise AssertionError(f"rotate-secret answered {rotated.status_code}: {rotated.text}")
        second = rotated.json()["secret"]
        journal_webhook_secrets(stack, [second])
        tested = api.post(f"{base}/test", json={}, timeout=30)
        answers.append(tested.text)
        if tested.status_code != 202:
            raise AssertionError(f"test answered {tested.status_code}: {tested.text}")
        queue_syncs([conn.pk])
        wait_idle([conn.pk], timeout=180)
        wait_until("2 webhook deliveries", lambda: len(receiver.received) >= 2, timeout=90)
        verified = 0
        for headers, body in receiver.received:
            for secret in (first, second):  # each raises on a signature it cannot verify
                SvixWebhook(secret).verify(body, headers)
            verified += 1
        types = sorted(json.loads(body)["type"] for _, body in receiver.received)
    finally:
        receiver.stop()
        stack.restore_workers()
    stack.wait_workers(timeout=60)
    return {
        "received": len(receiver.received),
        "verified_with_both_secrets": verified,
        "types": types,
        "answers": "\n".join(answers),
        "url": receiver.url,
    }


def redis_dump(url: str) -> str:
    """Every key and value of a Redis database as text, Celery's base64 message bodies
    decoded (a token in a task's arguments would be there)."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    values: list[Any] = []
    for key in client.scan_iter(count=1000):
        values.append(key)
        kind = client.type(key)
        if kind == b"string":
            values.append(client.get(key) or b"")
        elif kind == b"list":
            values += client.lrange(key, 0, -1)
        elif kind == b"hash":
            values += [v for pair in client.hgetall(key).items() for v in pair]
        elif kind in (b"set", b"zset"):
            values += list(client.smembers(key) if kind == b"set" else client.zrange(key, 0, -1))
    client.close()
    chunks = []
    for value in values:
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        chunks.append(text)
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(text)
            if message.get("properties", {}).get("body_encoding") == "base64":
                chunks.append(base64.b64decode(message["body"]).decode(errors="replace"))
    return "\n".join(chunks)


def drill_secrets(stack: Stack, scale: Scale, webhook_user: int = 3) -> Result:
    """After every other drill (and a webhook subscription's life, `webhook_life`): the
    portal's database dump, its Redis, every log and every email searched for every token the
    sandboxes issued, every profile token, the client secret, any API key and every webhook
    signing secret."""
    assert stack.postgres is not None
    result = Result(
        "Secrets after all drills",
        "every token the sandboxes issued during the run (their journal), every profile token, "
        "the client secret, anything shaped like an API key (zwk_...) and every webhook signing "
        "secret (current and previous, with and without whsec_; a subscription rotated through "
        "the API and delivered to by workers first), searched for in a pg_dump of the portal's "
        "database, every key and message in its Redis (Celery bodies decoded), every process "
        "log and every email",
        "hits 0",
    )
    life = webhook_life(stack, webhook_user)
    signing = webhook_secrets(stack)
    issued: set[str] = set()
    journals = ""
    for journal in stack.tmp.glob("sandbox*/issued-tokens.txt"):
        journals += journal.read_text()
    issued.update(line for line in journals.splitlines() if line)
    profile_tokens: set[str] = set()
    for database in stack.tmp.glob("sandbox*/sandbox.sqlite3"):
        with contextlib.closing(sqlite3.connect(database)) as sandbox_db:
            rows = sandbox_db.execute("SELECT token FROM zywave_profile").fetchall()
        profile_tokens.update(token for (token,) in rows)
    secrets = issued | profile_tokens | {stack.env["ZYWAVE_CLIENT_SECRET"]}
    dump = subprocess.run(
        [
            str(stack.postgres.bindir / "pg_dump"),
            "--data-only",
            stack.postgres.url(stack.database),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    logs = {
        path.name: path.read_text(errors="replace")
        for path in stack.logs.glob("*.log")
        if not path.name.startswith("sandbox")  # Zywave's own log, not the portal's
    }
    mails = [path.read_text(errors="replace") for path in (stack.tmp / "mail").glob("*")]
    redis_text = redis_dump(stack.redis_url)
    places = {
        "database": secret_hits(dump, secrets),
        "redis": secret_hits(redis_text, secrets),
        "logs": sum(secret_hits(text, secrets) for text in logs.values()),
        "mail": sum(secret_hits(text, secrets) for text in mails),
    }
    api_keys = {
        "database": key_shapes(dump),
        "redis": key_shapes(redis_text),
        "logs": sum(key_shapes(text) for text in logs.values()),
        "mail": sum(key_shapes(text) for text in mails),
    }
    webhook_hits = {
        "database": secret_hits(dump, signing),
        "redis": secret_hits(redis_text, signing),
        "logs": sum(secret_hits(text, signing) for text in logs.values()),
        "mail": sum(secret_hits(text, signing) for text in mails),
    }
    f = result.figures
    f.update(
        # The search itself, on the journals: it must find every token there.
        found_in_the_journals=secret_hits(journals, secrets),
        tokens_issued=len(issued),
        profile_tokens=len(profile_tokens),
        database_dump_mb=round(len(dump) / 1e6, 1),
        log_files=len(logs),
        log_mb=round(sum(len(t) for t in logs.values()) / 1e6, 1),
        emails=len(mails),
        hits=places,
        api_key_hits=api_keys,
        # Webhook secrets: how many were looked for (each also without whsec_), that the search
        # finds one where it is (the API's answer to the rotation), and the deliveries made.
        webhook_secrets=sum(secret.startswith("whsec_") for secret in signing),
        webhook_secret_found_in_the_api_answer=secret_hits(life["answers"], signing),
        webhook_subscription_in_the_dump=life["url"] in dump,
        webhook_deliveries_received=life["received"],
        webhook_deliveries_verified=life["verified_with_both_secrets"],
        webhook_event_types=life["types"],
        webhook_hits=webhook_hits,
    )
    result.checks = {
        "searched for real": len(issued) >= 2 * scale.flows
        and f["found_in_the_journals"] >= len(issued)
        and len(dump) > 0,
        "webhook secrets searched for real": f["webhook_secrets"] >= 2
        and f["webhook_secret_found_in_the_api_answer"] >= 1
        and f["webhook_subscription_in_the_dump"]
        and f["webhook_deliveries_verified"] >= 2,
        "hits 0": not any(places.values())
        and not any(api_keys.values())
        and not any(webhook_hits.values()),
    }
    result.measured = (
        f"{len(issued)} issued tokens, {len(profile_tokens)} profile tokens and the client "
        f"secret, in a {f['database_dump_mb']} MB database dump, Redis, {len(logs)} logs "
        f"({f['log_mb']} MB) and {len(mails)} emails: hits {sum(places.values())} "
        f"({', '.join(f'{k} {v}' for k, v in places.items())}); API keys anywhere: "
        f"{sum(api_keys.values())}; {f['webhook_secrets']} webhook signing secrets (after "
        f"{life['received']} deliveries signed with both secrets of a rotation), anywhere: "
        f"{sum(webhook_hits.values())}"
    )
    return result
