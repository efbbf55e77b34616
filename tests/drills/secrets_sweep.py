"""The secrets sweep, after every other drill: no token, no client secret and no API key
anywhere the portal keeps or writes things.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import sqlite3
import subprocess
from typing import Any

import redis

from tests.drills.helpers import Result, Scale
from tests.drills.stack import Stack

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


def drill_secrets(stack: Stack, scale: Scale) -> Result:
    """After every other drill: the portal's database dump, its Redis, every log and every
    email searched for every token the sandboxes issued, every profile token, the client
    secret and any API key."""
    assert stack.postgres is not None
    result = Result(
        "Secrets after all drills",
        "every token the sandboxes issued during the run (their journal), every profile token, "
        "the client secret and anything shaped like an API key (zwk_...), searched for in a "
        "pg_dump of the portal's database, every key and message in its Redis (Celery bodies "
        "decoded), every process log and every email",
        "hits 0",
    )
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
    )
    result.checks = {
        "searched for real": len(issued) >= 2 * scale.flows
        and f["found_in_the_journals"] >= len(issued)
        and len(dump) > 0,
        "hits 0": not any(places.values()) and not any(api_keys.values()),
    }
    result.measured = (
        f"{len(issued)} issued tokens, {len(profile_tokens)} profile tokens and the client "
        f"secret, in a {f['database_dump_mb']} MB database dump, Redis, {len(logs)} logs "
        f"({f['log_mb']} MB) and {len(mails)} emails: hits {sum(places.values())} "
        f"({', '.join(f'{k} {v}' for k, v in places.items())}); API keys anywhere: "
        f"{sum(api_keys.values())}"
    )
    return result
