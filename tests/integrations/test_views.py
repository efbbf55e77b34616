"""The staff pages: the dashboard, Sync now and its progress, disconnecting, and the mirror's
list and account pages. Each is also asked by an anonymous visitor, with the wrong method and
for another person's data. (Connecting is in test_connect.py, the profile picker in
test_profiles.py; the systematic leak and CSRF walks are in tests/security/.)"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.db import connection as db
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations.models import Account, Connection, Contact, SyncRun
from tests.conftest import Person, connection
from tests.integrations.flows import inject_fault
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db


def messages_of(response: Any) -> list[str]:
    """The flash messages the request that gave `response` left for the person."""
    return [str(message) for message in get_messages(response.wsgi_request)]


def account(conn: Connection, zywave_id: str, name: str, **fields: Any) -> Account:
    return Account.objects.create(connection=conn, zywave_id=zywave_id, name=name, raw={}, **fields)


def to_login(response: Any) -> bool:
    return response.status_code == 302 and response["Location"].startswith("/login/?next=")


# --- The dashboard -------------------------------------------------------------------------


def test_the_dashboard_sends_anonymous_visitors_to_the_login(client: Client) -> None:
    assert to_login(client.get("/"))


def test_the_dashboard_refuses_a_post(dana: Person) -> None:
    assert dana.post("/").status_code == 405


def test_the_dashboard_offers_to_connect_someone_never_connected(olga: Person) -> None:
    page = olga.get("/").content.decode()
    assert "Your Zywave account is not connected" in page and "Connect Zywave" in page


def test_the_dashboard_shows_the_zywave_identity_and_the_profile_in_use(dana: Person) -> None:
    connection(dana.user)
    page = dana.get("/").content.decode()
    assert "Connected as <strong>dana@zywave.test</strong>" in page
    assert "<strong>Agency dana</strong> (Org dana)" in page


def test_the_dashboard_asks_for_a_profile_when_none_is_chosen(dana: Person) -> None:
    connection(dana.user, profile=False)
    assert b"<strong>Choose a profile.</strong>" in dana.get("/").content


def test_the_dashboard_tells_a_person_whose_grant_ended_to_reconnect(dana: Person) -> None:
    connection(dana.user, status=Connection.Status.REAUTH_REQUIRED, last_error="grant revoked")
    page = dana.get("/").content.decode()
    assert "Zywave needs you to sign in again (grant revoked)" in page
    assert "Syncing is paused until you reconnect" in page


def test_sync_buttons_are_enabled_for_a_connection_that_can_sync(dana: Person) -> None:
    connection(dana.user)
    page = dana.get("/").content.decode()
    assert ">Sync now</button>" in page and "disabled>Sync now" not in page


def test_sync_buttons_are_disabled_without_a_profile(dana: Person) -> None:
    connection(dana.user, profile=False)
    page = dana.get("/").content.decode()
    assert "disabled>Sync now" in page and "disabled>Full resync" in page


def test_sync_buttons_are_disabled_while_a_run_is_active(dana: Person) -> None:
    SyncRun.objects.create(connection=connection(dana.user), state=SyncRun.State.RUNNING)
    page = dana.get("/").content.decode()
    assert "disabled>Sync now" in page and "disabled>Full resync" in page


def test_the_dashboard_shows_the_last_finished_run_with_its_error(dana: Person) -> None:
    now = timezone.now()
    SyncRun.objects.create(
        connection=connection(dana.user),
        state=SyncRun.State.FAILED,
        records_done=12,
        error="Zywave kept failing: 503",
        queued_at=now,
        finished_at=now,
    )
    page = dana.get("/").content.decode()
    assert "<strong>failed</strong>,\n    12 records" in page
    assert '<span class="error">Zywave kept failing: 503</span>' in page


def test_the_dashboard_lists_the_six_most_recent_runs(dana: Person) -> None:
    conn = connection(dana.user)
    now = timezone.now()
    for minutes in range(8):
        SyncRun.objects.create(
            connection=conn,
            state=SyncRun.State.SUCCEEDED,
            records_done=1000 + minutes,
            queued_at=now - timedelta(minutes=minutes),
            finished_at=now,
        )
    table = dana.get("/").content.decode().split("<caption>Recent syncs</caption>")[1]
    shown = [n for n in range(1000, 1008) if f"<td>{n}</td>" in table]
    assert shown == [1000, 1001, 1002, 1003, 1004, 1005]


def test_the_dashboard_shows_nothing_of_another_persons_connection(
    dana: Person, olga: Person
) -> None:
    conn = connection(dana.user)
    SyncRun.objects.create(connection=conn, state=SyncRun.State.FAILED, error="error of dana")
    page = olga.get("/").content.decode()
    assert "Your Zywave account is not connected" in page
    assert "Agency dana" not in page and "error of dana" not in page


# --- Sync now -------------------------------------------------------------------------------


def test_sync_sends_anonymous_visitors_to_the_login_and_queues_nothing(
    client: Client, staff: User
) -> None:
    connection(staff)
    assert to_login(client.post("/zywave/sync/"))
    assert not SyncRun.objects.exists()


def test_sync_refuses_a_get_and_queues_nothing(dana: Person) -> None:
    connection(dana.user)
    assert dana.get("/zywave/sync/").status_code == 405
    assert not SyncRun.objects.exists()


def test_sync_without_a_profile_queues_nothing_and_says_why(dana: Person) -> None:
    connection(dana.user, profile=False)
    response = dana.post("/zywave/sync/")
    assert response["Location"] == "/"
    assert messages_of(response) == ["Connect Zywave and choose a profile before syncing."]
    assert not SyncRun.objects.exists()


def test_sync_for_someone_never_connected_queues_nothing(olga: Person) -> None:
    response = olga.post("/zywave/sync/")
    assert messages_of(response) == ["Connect Zywave and choose a profile before syncing."]
    assert not SyncRun.objects.exists()


def test_sync_now_queues_a_run_and_sends_its_task_after_commit(
    dana: Person, django_capture_on_commit_callbacks: Any
) -> None:
    conn = connection(dana.user)
    # Not executed: the task would go to a broker. What matters here is that it is sent once,
    # after the run is committed, for this connection (test_sync.py runs it on a real worker).
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = dana.post("/zywave/sync/")
    assert response["Location"] == "/" and messages_of(response) == ["Sync started."]
    run = SyncRun.objects.get()
    assert (run.connection_id, run.state, run.full, run.trigger) == (
        conn.pk,
        SyncRun.State.QUEUED,
        False,
        "person",
    )
    # To the interactive queue, naming its run: never behind the scheduled backlog.
    assert len(callbacks) == 1
    assert callbacks[0].args == ("sync_connection", conn.pk, False)
    assert callbacks[0].keywords == {"countdown": None, "queue": "interactive", "run_id": run.pk}


def test_full_resync_queues_a_full_run(dana: Person) -> None:
    connection(dana.user)
    response = dana.post("/zywave/sync/", {"full": "1"})
    assert messages_of(response) == ["Full resync started."]
    assert SyncRun.objects.get().full


def test_sync_now_while_a_run_is_queued_adds_none_and_says_so(dana: Person) -> None:
    connection(dana.user)
    dana.post("/zywave/sync/", follow=True)  # the dashboard shows "Sync started."
    response = dana.post("/zywave/sync/")
    assert messages_of(response) == [
        "A sync is already running; it will bring everything up to date."
    ]
    assert SyncRun.objects.count() == 1


def test_sync_now_by_another_person_queues_nothing_for_this_one(dana: Person, omar: Person) -> None:
    mine = connection(dana.user)
    connection(omar.user)
    omar.post("/zywave/sync/")
    assert not SyncRun.objects.filter(connection=mine).exists()


# --- Sync progress (JSON for the progress bar) ------------------------------------------------


def test_sync_status_sends_anonymous_visitors_to_the_login(client: Client) -> None:
    assert to_login(client.get("/zywave/sync/status/"))


def test_sync_status_refuses_a_post(dana: Person) -> None:
    connection(dana.user)
    assert dana.post("/zywave/sync/status/").status_code == 405


def test_sync_status_is_empty_before_any_run(dana: Person) -> None:
    connection(dana.user)
    assert dana.get("/zywave/sync/status/").json() == {"state": None}


def test_sync_status_reports_the_latest_runs_progress(dana: Person) -> None:
    conn = connection(dana.user)
    earlier = timezone.now() - timedelta(hours=1)
    SyncRun.objects.create(connection=conn, state=SyncRun.State.FAILED, queued_at=earlier)
    run = SyncRun.objects.create(
        connection=conn,
        state=SyncRun.State.RUNNING,
        full=True,
        pages_done=2,
        records_done=150,
        total_reported=300,
    )
    assert dana.get("/zywave/sync/status/").json() == {
        "id": run.pk,
        "state": "running",
        "active": True,
        "full": True,
        "pages": 2,
        "records": 150,
        "total": 300,
        "percent": 50,
        "error": "",
    }


def test_sync_status_reports_none_of_another_persons_runs(dana: Person, omar: Person) -> None:
    SyncRun.objects.create(connection=connection(dana.user), state=SyncRun.State.RUNNING)
    connection(omar.user)
    assert omar.get("/zywave/sync/status/").json() == {"state": None}


# --- Disconnect ---------------------------------------------------------------------------------


def token_active(sandbox: Sandbox, token: str | None) -> bool:
    assert token
    return bool(sandbox.control("GET", f"tokens/{token}")["active"])


def test_disconnect_sends_anonymous_visitors_to_the_login_and_changes_nothing(
    client: Client, staff: User
) -> None:
    conn = connection(staff)
    assert to_login(client.post("/zywave/disconnect/"))
    conn.refresh_from_db()
    assert conn.status == Connection.Status.ACTIVE and conn.refresh_token


@pytest.mark.parametrize("method", ["put", "delete", "patch"])
def test_disconnect_refuses_methods_other_than_get_and_post(dana: Person, method: str) -> None:
    conn = connection(dana.user)
    assert getattr(dana, method)("/zywave/disconnect/").status_code == 405
    assert Connection.objects.get(pk=conn.pk).status == Connection.Status.ACTIVE


def test_disconnect_asks_for_confirmation_first_and_changes_nothing(
    dana: Person, zywave: Sandbox
) -> None:
    conn = connection(dana.user, zywave)
    page = dana.get("/zywave/disconnect/")
    assert page.status_code == 200 and b"Disconnect Zywave?" in page.content
    conn.refresh_from_db()
    assert conn.status == Connection.Status.ACTIVE
    assert token_active(zywave, conn.access_token) and token_active(zywave, conn.refresh_token)


def test_disconnect_revokes_the_tokens_at_zywave_then_deletes_them(
    dana: Person, zywave: Sandbox
) -> None:
    conn = connection(dana.user, zywave)
    tokens = [conn.access_token, conn.refresh_token]
    response = dana.post("/zywave/disconnect/")
    assert response["Location"] == "/"
    assert messages_of(response) == ["Zywave is disconnected and the portal's access was revoked."]
    assert not any(token_active(zywave, token) for token in tokens)
    conn.refresh_from_db()
    assert conn.status == Connection.Status.DISCONNECTED
    assert (conn.access_token, conn.refresh_token) == (None, None)
    event = conn.events.get(kind="disconnected")
    assert event.detail["revoked"] is True and event.actor == dana.user


def test_disconnect_deletes_the_profiles_and_the_mirror_and_stops_the_running_sync(
    dana: Person, omar: Person, zywave: Sandbox
) -> None:
    conn = connection(dana.user, zywave)
    account(conn, "a1", "Acme")
    Contact.objects.create(connection=conn, zywave_id="c1", account_zywave_id="a1", raw={})
    now = timezone.now()
    done = SyncRun.objects.create(
        connection=conn, state=SyncRun.State.SUCCEEDED, queued_at=now - timedelta(hours=1)
    )
    running = SyncRun.objects.create(
        connection=conn,
        state=SyncRun.State.RUNNING,
        pages_done=1,
        lease_until=now + timedelta(minutes=5),
    )
    others = connection(omar.user)
    account(others, "a1", "Omar's client")
    others_run = SyncRun.objects.create(connection=others, state=SyncRun.State.RUNNING)
    dana.post("/zywave/disconnect/")
    assert not conn.profiles.exists()
    assert not conn.accounts.exists() and not conn.contacts.exists()
    running.refresh_from_db()
    assert (running.state, running.error, running.lease_until) == ("failed", "disconnected", None)
    assert running.finished_at is not None
    assert SyncRun.objects.get(pk=done.pk).state == SyncRun.State.SUCCEEDED  # history kept
    # Another person's mirror and sync are untouched.
    assert others.accounts.count() == 1
    assert SyncRun.objects.get(pk=others_run.pk).state == SyncRun.State.RUNNING


def test_disconnect_still_deletes_the_tokens_when_zywave_does_not_confirm(
    dana: Person, zywave: Sandbox
) -> None:
    conn = connection(dana.user, zywave)
    inject_fault(zywave, "^/connect/revocation", count=5, status=503)
    response = dana.post("/zywave/disconnect/")
    (message,) = messages_of(response)
    assert "did not confirm the revocation" in message
    conn.refresh_from_db()
    assert conn.status == Connection.Status.DISCONNECTED and conn.refresh_token is None
    assert conn.events.get(kind="disconnected").detail["revoked"] is False


def test_disconnect_by_someone_never_connected_changes_nothing(
    dana: Person, olga: Person, zywave: Sandbox
) -> None:
    conn = connection(dana.user, zywave)
    response = olga.post("/zywave/disconnect/")
    assert messages_of(response) == ["You have no Zywave account connected."]
    conn.refresh_from_db()
    assert conn.status == Connection.Status.ACTIVE and token_active(zywave, conn.refresh_token)


# --- The mirror: account list -------------------------------------------------------------


def test_the_account_list_sends_anonymous_visitors_to_the_login(client: Client) -> None:
    assert to_login(client.get("/zywave/accounts/"))


def test_the_account_list_refuses_a_post(dana: Person) -> None:
    connection(dana.user)
    assert dana.post("/zywave/accounts/").status_code == 405


def test_the_account_list_sends_someone_never_connected_to_the_dashboard(olga: Person) -> None:
    response = olga.get("/zywave/accounts/")
    assert response["Location"] == "/"
    assert messages_of(response) == ["Connect your Zywave account first."]


def listed(person: Person, **params: str) -> list[str]:
    """The names on the account list, in order."""
    response = person.get("/zywave/accounts/", params)
    assert response.status_code == 200
    return [a.name for a in response.context["page"].object_list]


def test_the_account_list_searches_names_ignoring_case(dana: Person) -> None:
    conn = connection(dana.user)
    account(conn, "1", "Acme Roofing")
    account(conn, "2", "Beta Bakery")
    assert listed(dana, q="acme") == ["Acme Roofing"]


def test_the_account_list_shows_archived_accounts_only_when_asked(dana: Person) -> None:
    conn = connection(dana.user)
    account(conn, "1", "Open")
    account(conn, "2", "Stored", is_archived=True)
    assert listed(dana, status="archived") == ["Stored"]


def test_the_active_filter_leaves_out_inactive_and_archived_accounts(dana: Person) -> None:
    conn = connection(dana.user)
    account(conn, "1", "Open")
    account(conn, "2", "Stored", is_archived=True)
    account(conn, "3", "Dormant", is_active=False)
    assert listed(dana, status="active") == ["Open"]


def test_the_account_list_filters_by_classification(dana: Person) -> None:
    conn = connection(dana.user)
    account(conn, "1", "Client one", classification="Client")
    account(conn, "2", "Prospect one", classification="Prospect")
    assert listed(dana, classification="Prospect") == ["Prospect one"]


def test_the_account_list_pages_by_fifty_in_name_order(dana: Person) -> None:
    conn = connection(dana.user)
    for n in reversed(range(60)):
        account(conn, str(n), f"Account {n:02d}")
    first, second = listed(dana), listed(dana, page="2")
    assert first == [f"Account {n:02d}" for n in range(50)]
    assert second == [f"Account {n:02d}" for n in range(50, 60)]


def test_the_next_page_link_keeps_the_filters(dana: Person) -> None:
    conn = connection(dana.user)
    for n in range(60):
        account(conn, str(n), f"Account {n:02d}")
    page = dana.get("/zywave/accounts/", {"q": "Account", "page": "1"}).content.decode()
    assert 'href="?q=Account&amp;page=2">Next</a>' in page


def fill_mirror(conn: Connection, n: int, prefix: str) -> None:
    Account.objects.bulk_create(
        [
            Account(connection=conn, zywave_id=f"{prefix}{i}", name=f"{prefix} {i}", raw={})
            for i in range(n)
        ],
        batch_size=1000,
    )


def test_the_account_list_runs_the_same_queries_at_10_and_5000_records(dana: Person) -> None:
    conn = connection(dana.user)
    fill_mirror(conn, 10, "A")
    with CaptureQueriesContext(db) as small:
        assert dana.get("/zywave/accounts/", {"status": "active"}).status_code == 200
    fill_mirror(conn, 4990, "B")
    with CaptureQueriesContext(db) as large:
        assert dana.get("/zywave/accounts/", {"status": "active"}).status_code == 200
    assert len(small) == len(large)


def test_the_account_list_shows_none_of_another_persons_accounts(
    dana: Person, omar: Person
) -> None:
    account(connection(dana.user), "1", "Dana's client")
    account(connection(omar.user), "2", "Omar's client")
    assert listed(dana) == ["Dana's client"]


# --- The mirror: an account's page ---------------------------------------------------------


def test_an_account_page_sends_anonymous_visitors_to_the_login(client: Client) -> None:
    assert to_login(client.get("/zywave/accounts/1/"))


def test_an_account_page_refuses_a_post(dana: Person) -> None:
    account(connection(dana.user), "1", "Acme")
    assert dana.post("/zywave/accounts/1/").status_code == 405


def test_an_account_page_lists_the_accounts_contacts_only(dana: Person) -> None:
    conn = connection(dana.user)
    account(conn, "1", "Acme")
    for zywave_id, account_id, last_name in (
        ("c1", "1", "Ng"),
        ("c2", "1", "Ode"),
        ("c3", "2", "Pik"),
    ):
        Contact.objects.create(
            connection=conn,
            zywave_id=zywave_id,
            account_zywave_id=account_id,
            last_name=last_name,
            raw={},
        )
    response = dana.get("/zywave/accounts/1/")
    assert response.status_code == 200 and b"<h1>Acme</h1>" in response.content
    assert [c.last_name for c in response.context["contacts"]] == ["Ng", "Ode"]


def test_another_persons_account_is_not_found(dana: Person, omar: Person) -> None:
    connection(dana.user)
    account(connection(omar.user), "omar-1", "Omar's client")
    assert dana.get("/zywave/accounts/omar-1/").status_code == 404


def test_an_account_page_for_someone_never_connected_is_not_found(
    dana: Person, olga: Person
) -> None:
    account(connection(dana.user), "1", "Acme")
    assert olga.get("/zywave/accounts/1/").status_code == 404
