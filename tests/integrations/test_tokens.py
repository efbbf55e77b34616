"""Token lifetime against the sandbox: one refresh under contention, each failure class,
re-authorization for people, and the 30-day deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.db import connection as db
from django.utils import timezone

from integrations.models import Connection
from integrations.tokens import ReauthRequired, RefreshFailed, access_token_for
from tests.conftest import Person, connection
from tests.integrations.flows import connect, inject_fault
from tests.integrations.workers import database_url, wait_for
from tests.sandboxserver import Sandbox

ROOT = Path(__file__).resolve().parents[2]


def expired(user: User, sandbox: Sandbox) -> Connection:
    """The cast's connection through the sandbox as connecting leaves it (no profile yet), its
    access token expired from the portal's point of view so the next use must refresh."""
    past = timezone.now() - timedelta(minutes=1)
    return connection(user, sandbox, profile=False, access_token_expires_at=past)


def token_counts(sandbox: Sandbox) -> dict[str, int]:
    return dict(sandbox.counters()["token"])


# A caller in another process: it reports "ready" once set up, waits for the test's "go" on
# stdin, reports "calling" just before it asks for a token, then prints the token.
TOKEN_IN_ANOTHER_PROCESS = """
import sys, django
django.setup()
from integrations.models import Connection
from integrations.tokens import access_token_for
connection = Connection.objects.get(pk=int(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
print("calling", flush=True)
print(access_token_for(connection), flush=True)
"""

# How long the sandbox holds the one refresh it answers: the window in which every other caller
# must be seen waiting for it. Far longer than they need to get there (milliseconds), far
# shorter than the read timeout (30 s here) and SQLite's lock timeout (20 s).
HOLD_MS = 5000


def waiting_on_a_lock() -> int:
    """Backends of this database blocked on a lock (PostgreSQL): callers at the row lock."""
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_eight_threads_and_two_processes_cause_exactly_one_refresh(
    staff: User, zywave: Sandbox, settings: Any
) -> None:
    """All ten callers are released at once; the sandbox holds the first refresh, and the test
    sees the other nine inside `access_token_for` (on PostgreSQL: blocked on the row lock) while
    it is held. So they did race, and still only one refresh reached Zywave."""
    settings.ZYWAVE_HTTP_TIMEOUT = (2.0, 30.0)  # the held refresh must not time out
    conn = expired(staff, zywave)
    old = conn.access_token
    zywave.control("POST", "counters/reset")
    inject_fault(zywave, "^/connect/token", delay_ms=HOLD_MS)
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "ZYWAVE_AUTH_URL": zywave.url,
        "ZYWAVE_API_URL": zywave.url,
        "ZYWAVE_READ_TIMEOUT": "30",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TOKEN_IN_ANOTHER_PROCESS, str(conn.pk)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    ready = threading.Barrier(8 + 1)  # the threads and the test
    go = threading.Event()
    calling: list[str] = []
    results: list[Any] = []

    def one_caller() -> None:
        try:
            mine = Connection.objects.get(pk=conn.pk)
            ready.wait(timeout=60)
            go.wait(timeout=60)
            calling.append(threading.current_thread().name)
            results.append(access_token_for(mine))
        except Exception as exc:  # noqa: BLE001  (reported by the assertions below)
            results.append(exc)
        finally:
            db.close()

    def reported(process: subprocess.Popen[str], line: str) -> None:
        assert process.stdout is not None
        if process.stdout.readline().strip() != line:
            process.kill()
            raise AssertionError(f"a process did not report {line!r}: {process.communicate()}")

    threads = [threading.Thread(target=one_caller) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        ready.wait(timeout=60)
        for process in processes:
            reported(process, "ready")
        go.set()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            reported(process, "calling")
        wait_for(lambda: len(calling) == 8, what="every thread to call")
        # One refresh is at the sandbox, held; its answer has not been sent (the sandbox counts
        # a token request once it answers it).
        wait_for(
            lambda: zywave.control("GET", "faults")["faults"][0]["remaining"] == 0,
            what="the first refresh to reach the sandbox",
        )
        if db.vendor == "postgresql":  # SQLite has no view of who waits for its lock
            wait_for(lambda: waiting_on_a_lock() == 9, what="nine callers blocked on the row lock")
        assert token_counts(zywave) == {}, "the held refresh was answered before the race was seen"
        assert results == []  # nobody has a token yet: all ten are in flight together
        for thread in threads:
            thread.join(timeout=60)
        for process in processes:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err
            results.append(out.strip())
    finally:
        go.set()
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert len(results) == 10
    assert len(set(results)) == 1, results
    new = results[0]
    assert isinstance(new, str) and new != old
    assert token_counts(zywave) == {"refresh_token:success": 1}
    conn.refresh_from_db()
    assert conn.status == Connection.Status.ACTIVE and conn.access_token == new
    assert conn.events.filter(kind="refreshed").count() == 1


pytestmark = pytest.mark.django_db


def test_a_fresh_token_is_used_without_calling_zywave(staff: User, zywave: Sandbox) -> None:
    conn = expired(staff, zywave)
    conn.access_token_expires_at = timezone.now() + timedelta(hours=1)
    conn.save()
    zywave.control("POST", "counters/reset")
    assert access_token_for(conn) == conn.access_token
    assert token_counts(zywave) == {}


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 500, "body": '{"error": "server_error"}', "content_type": "application/json"},
        {"status": 503},
        {"status": 200, "body": "{broken", "content_type": "application/json"},
    ],
)
def test_a_transient_failure_keeps_the_tokens_and_the_connection_active(
    staff: User, zywave: Sandbox, fault: dict[str, Any]
) -> None:
    conn = expired(staff, zywave)
    before = (conn.access_token, conn.refresh_token)
    inject_fault(zywave, "^/connect/token", **fault)
    with pytest.raises(RefreshFailed):
        access_token_for(conn)
    conn.refresh_from_db()
    assert (conn.access_token, conn.refresh_token) == before
    assert conn.status == Connection.Status.ACTIVE and not conn.last_error_permanent
    assert conn.events.filter(kind="refresh_failed").count() == 1
    assert access_token_for(conn) != before[0]  # the next attempt succeeds with the kept token


def test_a_rate_limited_refresh_carries_the_delay(staff: User, zywave: Sandbox) -> None:
    conn = expired(staff, zywave)
    inject_fault(zywave, "^/connect/token", status=429, retry_after="7")
    with pytest.raises(RefreshFailed) as caught:
        access_token_for(conn)
    assert caught.value.retry_after == 7
    assert Connection.objects.get(pk=conn.pk).status == Connection.Status.ACTIVE


def test_a_lost_refresh_answer_ends_in_reauth_not_a_loop(
    staff: User, zywave: Sandbox, settings: Any
) -> None:
    """The sandbox rotates the token but answers ten times later than our read timeout: the
    answer is lost, recorded as a timeout, and the tokens kept. The retry, once the sandbox has
    finished the lost request, presents the consumed token once and ends in reauth_required
    instead of a loop."""
    conn = expired(staff, zywave)
    zywave.control("POST", "counters/reset")
    usual = settings.ZYWAVE_HTTP_TIMEOUT
    settings.ZYWAVE_HTTP_TIMEOUT = (usual[0], 0.5)
    inject_fault(zywave, "^/connect/token", delay_ms=5000)
    started = time.monotonic()
    with pytest.raises(RefreshFailed, match=r"^token refresh failed \(timeout\)$"):
        access_token_for(conn)
    assert time.monotonic() - started < 5.0  # coarse: it gave up before the answer came
    failure = conn.events.get(kind="refresh_failed")
    assert failure.detail["reason"] == "token refresh failed (timeout)"
    assert failure.detail["refresh_token"] == conn.refresh_token_fingerprint  # the kept token
    settings.ZYWAVE_HTTP_TIMEOUT = usual
    wait_for(
        lambda: token_counts(zywave) == {"refresh_token:success": 1},
        what="the sandbox to finish the lost refresh",
    )
    with pytest.raises(ReauthRequired):
        access_token_for(Connection.objects.get(pk=conn.pk))
    with pytest.raises(ReauthRequired):
        access_token_for(Connection.objects.get(pk=conn.pk))
    # The consumed token was presented once more, no more.
    assert token_counts(zywave) == {"refresh_token:success": 1, "refresh_token:invalid_grant": 1}
    assert Connection.objects.get(pk=conn.pk).status == Connection.Status.REAUTH_REQUIRED


def test_a_revoked_grant_needs_reauth_with_one_email_and_a_banner(
    dana: Person, zywave: Sandbox, django_capture_on_commit_callbacks: Any
) -> None:
    conn = expired(dana.user, zywave)
    zywave.control("POST", "users/agent@example.com/revoke")
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(ReauthRequired):
            access_token_for(conn)
        with pytest.raises(ReauthRequired):
            access_token_for(Connection.objects.get(pk=conn.pk))
    conn.refresh_from_db()
    assert conn.status == Connection.Status.REAUTH_REQUIRED and conn.last_error_permanent
    assert token_counts(zywave).get("refresh_token:invalid_grant") == 1
    assert len(mail.outbox) == 1
    assert "reconnect" in mail.outbox[0].subject.lower()
    assert conn.refresh_token not in mail.outbox[0].body
    page = dana.get("/").content.decode()
    assert "Zywave needs you to sign in again" in page and "Reconnect" in page


def test_past_the_absolute_deadline_the_refresh_ends_the_grant(
    staff: User, zywave: Sandbox
) -> None:
    conn = expired(staff, zywave)
    zywave.control("POST", "clock", offset_seconds=31 * 24 * 3600)
    with pytest.raises(ReauthRequired):
        access_token_for(conn)
    assert Connection.objects.get(pk=conn.pk).status == Connection.Status.REAUTH_REQUIRED


def test_reconnecting_starts_a_new_deadline_and_clears_its_warning(
    dana: Person, zywave: Sandbox
) -> None:
    # The warning itself (sent once by upkeep) is tested with the task, in test_tasks.py.
    connect(dana, zywave)
    Connection.objects.filter(user=dana.user).update(
        authorized_at=timezone.now() - timedelta(days=24), deadline_warned_at=timezone.now()
    )
    connect(dana, zywave)
    conn = Connection.objects.get(user=dana.user)
    assert conn.deadline_warned_at is None
    assert conn.refresh_deadline and conn.refresh_deadline > timezone.now() + timedelta(days=29)


def test_reconnect_from_the_banner_returns_active_with_the_same_profile(
    dana: Person, zywave: Sandbox
) -> None:
    dana.get(connect(dana, zywave)["Location"])
    profile_id = zywave.profiles()[0]["id"]
    dana.post("/zywave/profiles/", {"action": "choose", "profile": profile_id})
    zywave.control("POST", "users/agent@example.com/revoke")
    Connection.objects.filter(user=dana.user).update(access_token_expires_at=timezone.now())
    with pytest.raises(ReauthRequired):
        access_token_for(Connection.objects.get(user=dana.user))
    response = connect(dana, zywave, next_url="/zywave/profiles/?x=1")
    # The profile is still offered: the callback keeps it and goes straight to `next`.
    assert response.status_code == 302 and response["Location"] == "/zywave/profiles/?x=1"
    conn = Connection.objects.get(user=dana.user)
    assert conn.status == Connection.Status.ACTIVE
    assert conn.chosen_profile is not None and conn.chosen_profile.zywave_id == profile_id
    assert b"Zywave needs you to sign in again" not in dana.get("/").content


# --- The refresh margin follows the token's lifetime (hardening item 1) ------------------------


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [(3600, timedelta(minutes=5)), (1200, timedelta(minutes=5)), (300, timedelta(seconds=75)),
     (5, timedelta(seconds=1.25)), (None, timedelta(minutes=5))],
)  # fmt: skip
def test_the_margin_is_the_smaller_of_five_minutes_and_a_quarter_of_the_lifetime(
    staff: User, lifetime: int | None, margin: timedelta
) -> None:
    from integrations.tokens import margin_for

    conn = connection(staff)
    conn.access_token_lifetime = lifetime
    assert margin_for(conn) == margin


def test_a_short_lived_token_is_handed_out_until_three_quarters_of_its_life(
    staff: User, zywave: Sandbox
) -> None:
    """With 60-second tokens (a fixed 5-minute margin made such a token never fresh, so every
    call refreshed), calls in the first 45 seconds reuse the token: one refresh, no more."""
    zywave.control("POST", "settings", access_token_lifetime=60)
    conn = connection(staff, zywave)
    assert conn.access_token_lifetime == 60
    zywave.control("POST", "counters/reset")
    first = access_token_for(conn)
    for _ in range(20):
        assert access_token_for(Connection.objects.get(pk=conn.pk)) == first
    assert zywave.counters()["token"] == {}
    # Past three quarters of its life (aged in the database: no test waits 45 s), one refresh.
    Connection.objects.filter(pk=conn.pk).update(
        access_token_expires_at=timezone.now() + timedelta(seconds=14)
    )
    second = access_token_for(Connection.objects.get(pk=conn.pk))
    assert second != first
    assert access_token_for(Connection.objects.get(pk=conn.pk)) == second
    assert zywave.counters()["token"] == {"refresh_token:success": 1}


def test_an_absurd_expires_in_is_clamped_to_what_the_column_holds(staff: User) -> None:
    """A PositiveIntegerField: PostgreSQL refuses more than 2**31 - 1 (SQLite would not)."""
    conn = connection(staff)
    conn.set_tokens({"access_token": "a", "expires_in": 10**12})
    assert conn.access_token_lifetime == 2**31 - 1
    conn.save()
    conn.refresh_from_db()
    assert conn.access_token_lifetime == 2**31 - 1
