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
from tests.integrations.workers import database_url
from tests.sandboxserver import Sandbox

ROOT = Path(__file__).resolve().parents[2]


def expired(user: User, sandbox: Sandbox) -> Connection:
    """The cast's connection through the sandbox as connecting leaves it (no profile yet), its
    access token expired from the portal's point of view so the next use must refresh."""
    past = timezone.now() - timedelta(minutes=1)
    return connection(user, sandbox, profile=False, access_token_expires_at=past)


def token_counts(sandbox: Sandbox) -> dict[str, int]:
    return dict(sandbox.counters()["token"])


TOKEN_IN_ANOTHER_PROCESS = """
import sys, time, django
django.setup()
from integrations.models import Connection
from integrations.tokens import access_token_for
pk, start = int(sys.argv[1]), float(sys.argv[2])
while time.time() < start:
    time.sleep(0.002)
print(access_token_for(Connection.objects.get(pk=pk)))
"""


@pytest.mark.django_db(transaction=True)
def test_eight_threads_and_two_processes_cause_exactly_one_refresh(
    staff: User, zywave: Sandbox
) -> None:
    conn = expired(staff, zywave)
    old = conn.access_token
    zywave.control("POST", "counters/reset")
    start = time.time() + 3.0
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "ZYWAVE_AUTH_URL": zywave.url,
        "ZYWAVE_API_URL": zywave.url,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TOKEN_IN_ANOTHER_PROCESS, str(conn.pk), str(start)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results: list[Any] = []

    def one_caller() -> None:
        try:
            while time.time() < start:
                time.sleep(0.002)
            results.append(access_token_for(Connection.objects.get(pk=conn.pk)))
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            results.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=one_caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        results.append(out.strip())
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


def test_a_lost_refresh_answer_ends_in_reauth_not_a_loop(staff: User, zywave: Sandbox) -> None:
    # The sandbox rotates the token, but answers after our read timeout: the answer is lost.
    conn = expired(staff, zywave)
    zywave.control("POST", "counters/reset")
    inject_fault(zywave, "^/connect/token", delay_ms=4500)
    with pytest.raises(RefreshFailed):
        access_token_for(conn)
    time.sleep(2)  # the retry comes later, after the sandbox finished the lost request
    with pytest.raises(ReauthRequired):
        access_token_for(Connection.objects.get(pk=conn.pk))
    with pytest.raises(ReauthRequired):
        access_token_for(Connection.objects.get(pk=conn.pk))
    counts = token_counts(zywave)
    assert sum(counts.values()) == 2  # the consumed token was presented once more, no more
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
    landed = dana.get(response["Location"])
    assert landed.status_code == 302 and landed["Location"] == "/zywave/profiles/?x=1"
    conn = Connection.objects.get(user=dana.user)
    assert conn.status == Connection.Status.ACTIVE
    assert conn.chosen_profile is not None and conn.chosen_profile.zywave_id == profile_id
    assert b"Zywave needs you to sign in again" not in dana.get("/").content
