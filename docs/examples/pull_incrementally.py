"""A background job that keeps a copy of the portal's accounts current: pull what changed.

    PORTAL_URL=https://portal.example.com PORTAL_API_KEY=zwk_... \\
        python pull_incrementally.py [--state pull-state.json] [--db accounts.sqlite3]

Run it as often as you like (cron, a scheduler). Each run walks `GET /api/v1/accounts` with
`updated_since=<the newest changed_at the last complete walk saw>`, following `next` until it is
null, and applies each page to your copy: a record replaces the one with its `id`, a tombstone
(`"deleted": true`) removes it. The first run starts from the beginning of time, so it pulls
everything (and any tombstone still kept, harmlessly).

State lives in a small JSON file, replaced atomically after each page is applied:

    {"updated_since": "2026-12-01T10:00:00.123456Z" | null,   # where the next walk starts
     "next": "<the next page's URL>" | null,                  # set while a walk is under way
     "newest": "<newest changed_at seen by that walk>" | null}

A run that is killed or fails part-way leaves `next` behind, and the next run resumes there.
A crash between applying a page and saving the state applies that page again on resume, so
applying must be idempotent (here: an upsert by `id` in SQLite). Replace `apply_page` with
what your system does.

429 and 503 are waited out as `Retry-After` says; other 5xx answers and network errors are
retried a few times with backoff. 401 and 403 stop the job (a revoked key, a missing scope).
The key is only ever sent to PORTAL_URL's origin. Needs `requests`; nothing else.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

BEGINNING = "1970-01-01T00:00:00Z"
TIMEOUT = (5, 60)  # seconds to connect, to read a page
RETRIES = 5  # attempts per page on a 5xx answer or a network error
MAX_WAIT = 300  # the longest Retry-After honoured, in seconds


class JobFailed(Exception):
    """The run stops; the state file keeps where it got to."""


# --- State ------------------------------------------------------------------------------------


def load_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"updated_since": None, "next": None, "newest": None}
    return dict(json.loads(path.read_text()))


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a new file and rename it over the old one: a crash leaves one or the other."""
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False
    ) as out:
        json.dump(state, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(out.name, path)


def newer(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return a if datetime.fromisoformat(a) >= datetime.fromisoformat(b) else b


# --- Your system: here, a SQLite table ---------------------------------------------------------


def open_store(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE IF NOT EXISTS accounts "
        "(id TEXT PRIMARY KEY, name TEXT, changed_at TEXT, record TEXT)"
    )
    return db


def apply_page(db: sqlite3.Connection, records: list[dict[str, Any]]) -> tuple[int, int]:
    """Apply one page in one transaction: (records written, records deleted). Idempotent."""
    written = deleted = 0
    with db:
        for record in records:
            if record["deleted"]:
                db.execute("DELETE FROM accounts WHERE id = ?", (record["id"],))
                deleted += 1
            else:
                db.execute(
                    "INSERT INTO accounts (id, name, changed_at, record) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                    "changed_at = excluded.changed_at, record = excluded.record",
                    (record["id"], record["name"], record["changed_at"], json.dumps(record)),
                )
                written += 1
    return written, deleted


# --- The API ----------------------------------------------------------------------------------


def retry_after(response: requests.Response) -> float:
    """Seconds to wait: `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3)."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        seconds = float(value)
    elif value:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            seconds = 1.0
    else:
        seconds = 1.0
    return min(max(seconds, 0.5), MAX_WAIT)


def get_page(session: requests.Session, url: str) -> dict[str, Any]:
    """One page, waiting out 429/503 and retrying 5xx and network errors with backoff."""
    failures = 0
    while True:
        try:
            response = session.get(url, timeout=TIMEOUT)
        except requests.RequestException as exc:
            problem = type(exc).__name__
        else:
            if response.status_code == 200:
                return dict(response.json())
            if response.status_code in (429, 503):
                wait = retry_after(response)
                print(
                    f"{response.status_code}: waiting {wait:.1f} s as Retry-After says", flush=True
                )
                time.sleep(wait)
                continue
            problem = f"{response.status_code} {response.text[:200]}"
            if response.status_code < 500:
                raise JobFailed(f"the portal refused the request: {problem}")
        failures += 1
        if failures >= RETRIES:
            raise JobFailed(f"giving up after {failures} attempts: {problem}")
        time.sleep(2**failures)


def on_portal(portal_url: str, url: str) -> str:
    """`url`'s path and query on PORTAL_URL's origin: the key goes nowhere else, whatever a
    stored or received `next` says."""
    origin = urlsplit(portal_url)
    target = urlsplit(url)
    return f"{origin.scheme}://{origin.netloc}{target.path}?{target.query}"


def pull(
    portal_url: str, key: str, state_path: Path, db: sqlite3.Connection, page_size: int
) -> dict[str, int]:
    """One walk to the end (or from where the last run stopped): counts of what it did."""
    state = load_state(state_path)
    if state["next"]:
        url = on_portal(portal_url, state["next"])
        print("resuming the walk the last run did not finish", flush=True)
    else:
        query = {"page_size": page_size, "updated_since": state["updated_since"] or BEGINNING}
        url = f"{portal_url.rstrip('/')}/api/v1/accounts?{urlencode(query)}"
        state["newest"] = None
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {key}", "Accept": "application/json"})
    totals = {"pages": 0, "written": 0, "deleted": 0}
    while True:
        body = get_page(session, url)
        written, deleted = apply_page(db, body["results"])
        for record in body["results"]:
            state["newest"] = newer(state["newest"], record["changed_at"])
        totals["pages"] += 1
        totals["written"] += written
        totals["deleted"] += deleted
        if body["next"]:
            state["next"] = body["next"]
        else:  # the walk is complete: the next one starts after the newest change it saw
            state["next"] = None
            state["updated_since"] = state["newest"] or state["updated_since"]
        save_state(state_path, state)
        print(f"page {totals['pages']}: {written} written, {deleted} deleted", flush=True)
        if not body["next"]:
            return totals
        url = on_portal(portal_url, body["next"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=Path("pull-state.json"))
    parser.add_argument("--db", type=Path, default=Path("accounts.sqlite3"))
    parser.add_argument("--page-size", type=int, default=500, help="1 to 500")
    args = parser.parse_args()
    portal_url, key = os.environ.get("PORTAL_URL"), os.environ.get("PORTAL_API_KEY")
    if not portal_url or not key:
        print("Set PORTAL_URL and PORTAL_API_KEY.", file=sys.stderr)
        return 2
    db = open_store(args.db)
    try:
        totals = pull(portal_url, key, args.state, db, args.page_size)
    except JobFailed as exc:
        print(f"stopped: {exc}; the next run resumes from {args.state}", file=sys.stderr)
        return 1
    finally:
        db.close()
    since = load_state(args.state)["updated_since"]
    print(
        f"done: {totals['written']} written, {totals['deleted']} deleted in "
        f"{totals['pages']} page(s); the next run asks for changes after {since}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
