"""docs/examples/pull_incrementally.py run as a job runs it: a separate process with an API key,
against the live test server, its mirror written by `mirror.upsert`. So the example cannot rot."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import Max

from integrations import mirror
from integrations.api import keys, views
from integrations.api.keys import issue
from integrations.models import Account
from tests.conftest import connection

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "pull_incrementally.py"


def accounts(count: int, **changes: dict[str, Any]) -> list[dict[str, Any]]:
    """`count` accounts shaped as the sandbox sends them; `changes` by id replace fields."""
    return [
        {
            "id": str(1000 + n),
            "name": f"Account {n:03}",
            "classification": "Client",
            "isActive": True,
            "isArchived": False,
            "city": "Milwaukee",
            "state": "WI",
            "updatedDateTime": "2026-11-01T00:00:00Z",
            **changes.get(str(1000 + n), {}),
        }
        for n in range(count)
    ]


class Job:
    """The example as a background job: its state file and its SQLite copy in `tmp_path`."""

    def __init__(self, tmp_path: Path, portal: str, key: str) -> None:
        self.state_path = tmp_path / "pull-state.json"
        self.db_path = tmp_path / "accounts.sqlite3"
        self.env = {**os.environ, "PORTAL_URL": portal, "PORTAL_API_KEY": key}
        self.command = [
            sys.executable,
            str(EXAMPLE),
            "--state",
            str(self.state_path),
            "--db",
            str(self.db_path),
            "--page-size",
            "5",
        ]

    def run(self) -> list[str]:
        """One run to its end: its output lines (it must succeed)."""
        done = subprocess.run(
            self.command, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (done.stdout, done.stderr)
        return done.stdout.splitlines()

    def start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def stored(self) -> dict[str, str]:
        with sqlite3.connect(self.db_path) as db:
            return dict(db.execute("SELECT id, name FROM accounts").fetchall())

    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.state_path.read_text()))


def written(lines: list[str]) -> int:
    """Records the pages of a run's output say it wrote."""
    return sum(int(line.split()[2]) for line in lines if line.startswith("page "))


def newest_change() -> str:
    newest = Account.all_rows.aggregate(Max("changed_at"))["changed_at__max"]
    return newest.isoformat().replace("+00:00", "Z")


def walk_complete() -> dict[str, Any]:
    """The state after a complete walk: no `next`, and the newest change is where the next
    walk starts."""
    return {"updated_since": newest_change(), "next": None, "newest": newest_change()}


@pytest.fixture
def portal(live_server: Any, settings: Any) -> str:
    """The live server's URL on 127.0.0.1 (where it listens), accepted as a host name."""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "127.0.0.1"]
    return str(live_server.url).replace("//localhost:", "//127.0.0.1:")


@pytest.fixture
def job(staff: User, portal: str, tmp_path: Path) -> Job:
    _key, secret = issue(staff, "nightly pull", ["read"])
    return Job(tmp_path, portal, secret)


def test_the_first_run_pulls_everything_and_the_next_only_the_change_and_the_tombstone(
    staff: User, job: Job
) -> None:
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, accounts(12))

    first = job.run()
    assert first[-1].startswith("done: 12 written, 0 deleted in 3 page(s)")
    assert job.stored() == {str(1000 + n): f"Account {n:03}" for n in range(12)}
    assert job.state() == walk_complete()

    # A full sync: one record changed, one gone at Zywave (a tombstone), the rest unchanged.
    mirror.upsert("accounts", conn.pk, 2, accounts(11, **{"1003": {"name": "Renamed"}}))
    mirror.remove_unseen(conn.pk, 2)
    second = job.run()
    assert second == [
        "page 1: 1 written, 1 deleted",
        f"done: 1 written, 1 deleted in 1 page(s); the next run asks for changes after "
        f"{newest_change()}",
    ]
    stored = job.stored()
    assert len(stored) == 11 and stored["1003"] == "Renamed" and "1011" not in stored

    assert job.run()[0] == "page 1: 0 written, 0 deleted"  # nothing changed since


def hold_page(number: int) -> tuple[Callable[..., Any], threading.Event, threading.Event]:
    """A stand-in for the list view that holds the `number`th request until released."""
    original = views.RecordList.get
    reached, release = threading.Event(), threading.Event()
    calls = []

    def get(self: Any, request: Any) -> Any:
        calls.append(request)
        if len(calls) == number:
            reached.set()
            release.wait(30)
        return original(self, request)

    return get, reached, release


def test_a_run_killed_mid_walk_resumes_without_losing_or_repeating_a_record(
    staff: User, job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, accounts(23))  # 5 pages of 5
    held, reached, release = hold_page(3)
    monkeypatch.setattr(views.RecordList, "get", held)

    process = job.start()
    try:
        assert reached.wait(30), "the job never asked for its third page"
        process.kill()  # while its third page is on the way: SIGKILL, no clean-up
        out, _err = process.communicate(timeout=30)
    finally:
        release.set()
    killed = out.splitlines()
    assert killed == ["page 1: 5 written, 0 deleted", "page 2: 5 written, 0 deleted"]
    assert job.state()["next"] and "cursor=" in job.state()["next"]
    assert len(job.stored()) == 10

    monkeypatch.undo()
    resumed = job.run()
    assert resumed[0] == "resuming the walk the last run did not finish"
    assert written(killed) + written(resumed) == 23  # each record exactly once
    assert job.stored() == {str(1000 + n): f"Account {n:03}" for n in range(23)}
    assert job.state() == walk_complete()


def test_it_waits_out_a_429_as_retry_after_says_and_carries_on(
    staff: User, job: Job, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, accounts(30))  # 6 pages: some second asks thrice
    # The real throttle, made quick: 2 requests per key per second.
    settings.API_RATE_LIMIT = 2
    monkeypatch.setattr(keys.KeyThrottle, "window", 1)

    lines = job.run()
    assert any(line.startswith("429: waiting") for line in lines), lines
    assert written(lines) == 30 and len(job.stored()) == 30
