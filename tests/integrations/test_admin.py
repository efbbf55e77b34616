"""The admin: who may see and act, what every page shows (never a secret), constant queries,
and each action against the sandbox."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.sites import site
from django.contrib.auth.models import Group, User
from django.core import mail
from django.db import connection as db
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from social_django.models import UserSocialAuth

from integrations.models import (
    Account,
    Connection,
    ConnectionEvent,
    Contact,
    Profile,
    SyncRun,
)
from integrations.tasks import sync_connection
from tests.conftest import SCOPES, Person, connection
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/integrations/connection/"
EXPORT = "/admin/integrations/connection/export/"


def page(conn: Connection) -> str:
    return f"{CHANGELIST}{conn.pk}/change/"


def act_url(conn: Connection) -> str:
    return f"{CHANGELIST}{conn.pk}/act/"


def act(client: Client, action: str, *conns: Connection, **extra: Any) -> Any:
    """Run an admin action from the list, as the action bar's form posts it."""
    data = {"action": action, ACTION_CHECKBOX_NAME: [c.pk for c in conns], "index": 0, **extra}
    return client.post(CHANGELIST, data)


def confirm_disconnect(client: Client, *conns: Connection) -> Any:
    """The confirmation page's form: no `index`, `post=yes`."""
    data = {
        "action": "disconnect_selected",
        ACTION_CHECKBOX_NAME: [c.pk for c in conns],
        "post": "yes",
    }
    return client.post(CHANGELIST, data)


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- Who may see and act -----------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_the_admin_login(staff: User, client: Client) -> None:
    conn = connection(staff)
    for url in ("/admin/", CHANGELIST, page(conn), EXPORT, "/admin/integrations/syncrun/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    response = act(client, "sync_now", conn)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert client.post(act_url(conn), {"action": "sync_now"}).status_code == 302
    assert not SyncRun.objects.exists() and not conn.events.exists()


def test_portal_users_without_staff_rights_are_refused(dana: Person, other_staff: User) -> None:
    conn = connection(other_staff)
    for url in ("/admin/", CHANGELIST, page(conn), EXPORT):
        response = dana.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    act(dana, "sync_now", conn)
    dana.post(act_url(conn), {"action": "sync_now"})
    assert not SyncRun.objects.exists() and not conn.events.exists()


def test_staff_without_the_view_permission_cannot_see_connections(
    staff: User, client: Client
) -> None:
    conn = connection(staff)
    clerk = User.objects.create_user("clerk", "clerk@agency.test", "x", is_staff=True)
    client.force_login(clerk)
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(page(conn)).status_code == 403
    assert client.get(EXPORT).status_code == 403
    assert b"Zywave connections" not in client.get("/admin/").content


def test_the_support_group_holds_only_view_permissions(db: Any) -> None:
    """By rule: every model of the app, a view permission each, and nothing else."""
    codenames = set(
        Group.objects.get(name="support").permissions.values_list("codename", flat=True)
    )
    models = apps.get_app_config("integrations").get_models()
    assert codenames == {f"view_{model._meta.model_name}" for model in models}
    assert {"view_policy", "view_apikey", "view_account"} <= codenames


def test_the_support_role_sees_every_page(
    staff: User, sam: Person, django_assert_max_num_queries: Any
) -> None:
    conn = connection(staff)
    run = SyncRun.objects.create(connection=conn, state="succeeded", finished_at=timezone.now())
    event = conn.record(ConnectionEvent.Kind.CONNECTED)
    for url in (
        "/admin/",
        CHANGELIST,
        page(conn),
        EXPORT,
        f"/admin/integrations/syncrun/{run.pk}/change/",
        f"/admin/integrations/connectionevent/{event.pk}/change/",
        "/admin/integrations/account/",
        "/admin/integrations/contact/",
    ):
        assert sam.get(url).status_code == 200, url
    listing = sam.get(CHANGELIST).content.decode()
    assert staff.username in listing and "action-select" not in listing
    assert 'name="action"' not in sam.get(page(conn)).content.decode()


def test_the_support_role_can_run_no_action(staff: User, sam: Person) -> None:
    conn = connection(staff)
    for action in ("refresh_tokens_now", "sync_now", "full_resync", "send_reconnect_reminder"):
        act(sam, action, conn)
        assert sam.post(act_url(conn), {"action": action}).status_code == 403
    confirm_disconnect(sam, conn)
    conn.refresh_from_db()
    assert conn.status == Connection.Status.ACTIVE
    assert not SyncRun.objects.exists() and not conn.events.exists() and not mail.outbox


def test_no_admin_can_edit_a_connection_or_see_a_token_field(staff: User, root: Person) -> None:
    conn = connection(staff)
    response = root.post(page(conn), {"zywave_email": "x@evil.test", "status": "active"})
    assert response.status_code == 403
    assert Connection.objects.get(pk=conn.pk).zywave_email == conn.zywave_email
    request = RequestFactory().get(page(conn))
    request.user = root.user
    model_admin = site._registry[Connection]
    form = model_admin.get_form(request, conn)
    assert not {"access_token", "refresh_token"} & set(form.base_fields)
    # No column, field or export value carries a token: search the whole of every page.
    profile = conn.chosen_profile
    assert profile is not None
    tokens = {
        "access token": conn.access_token,
        "refresh token": conn.refresh_token,
        "profile token": profile.profile_token,
    }
    fingerprints = {
        "access token": conn.access_token_fingerprint,
        "refresh token": conn.refresh_token_fingerprint,
        "profile token": profile.profile_token_fingerprint,
    }
    assert all(tokens.values()) and all(fingerprints.values())
    pages = {url: body(root.get(url)) for url in (page(conn), CHANGELIST, EXPORT)}
    for url, content in pages.items():
        for name, token in tokens.items():
            assert str(token).encode() not in content, f"{name} on {url}"
    # The search finds what is there: the change page shows each token's fingerprint.
    for name, fingerprint in fingerprints.items():
        assert fingerprint.encode() in pages[page(conn)], f"{name} fingerprint"
    assert (
        conn.zywave_email.encode() in pages[CHANGELIST]
        and conn.zywave_email.encode() in (pages[EXPORT])
    )


def test_admins_cannot_delete_connections_around_the_revocation(staff: User, root: Person) -> None:
    conn = connection(staff)
    assert root.get(f"{CHANGELIST}{conn.pk}/delete/").status_code == 403
    act(root, "delete_selected", conn)
    assert Connection.objects.filter(pk=conn.pk).exists()


# --- No secret on any page -------------------------------------------------------------------


def body(response: Any) -> bytes:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)
    return bytes(response.content)


def test_no_admin_page_or_export_shows_a_token_or_the_client_secret(
    staff: User, other_staff: User, root: Person, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    assert conn.chosen_profile is not None
    secrets = {
        "access token": conn.access_token,
        "refresh token": conn.refresh_token,
        "profile token": conn.chosen_profile.profile_token,
        "client secret": django_settings.ZYWAVE_CLIENT_SECRET,
    }
    # A refresh from the admin rotates the tokens: the new ones must not show either.
    act(root, "refresh_tokens_now", conn)
    conn.refresh_from_db()
    secrets["new access token"] = conn.access_token
    secrets["new refresh token"] = conn.refresh_token
    assert all(secrets.values()) and len(set(secrets.values())) == len(secrets)

    connection(other_staff, profile=False, last_error="token refresh failed (503)")
    run = SyncRun.objects.create(
        connection=conn, state="failed", error="Zywave answered 503", finished_at=timezone.now()
    )
    account = Account.objects.create(connection=conn, zywave_id="a1", name="Acme", raw={"id": 1})
    contact = Contact.objects.create(connection=conn, zywave_id="c1", last_name="Doe", raw={})
    social = UserSocialAuth.objects.create(
        user=staff, provider="zywave", uid="agent@example.com", extra_data=dict(secrets)
    )
    urls = [
        "/admin/",
        CHANGELIST,
        f"{CHANGELIST}?_facets=True",
        f"{CHANGELIST}?q=agent",
        page(conn),
        EXPORT,
        f"{EXPORT}?health=active",
        "/admin/integrations/syncrun/",
        f"/admin/integrations/syncrun/{run.pk}/change/",
        "/admin/integrations/connectionevent/",
        f"/admin/integrations/connectionevent/?connection__id__exact={conn.pk}",
        "/admin/integrations/account/",
        f"/admin/integrations/account/{account.pk}/change/",
        "/admin/integrations/contact/",
        f"/admin/integrations/contact/{contact.pk}/change/",
        "/admin/social_django/usersocialauth/",
        f"/admin/social_django/usersocialauth/{social.pk}/change/",
        f"/admin/auth/user/{staff.pk}/change/",
    ]
    for name, _ in [("health", 0), ("profile", 0), ("last_sync", 0), ("deadline", 0)]:
        urls.append(
            f"{CHANGELIST}?{name}="
            + {"health": "active", "profile": "chosen"}.get(
                name, "failed" if name == "last_sync" else "soon"
            )
        )
    for column in range(1, 10):
        urls.append(f"{CHANGELIST}?o={column}")
    urls += [f"/admin/integrations/connectionevent/{e.pk}/change/" for e in conn.events.all()]
    pages = {}
    for url in urls:
        response = root.get(url)
        assert response.status_code == 200, url
        pages[url] = body(response)
    pages["disconnect confirmation"] = body(act(root, "disconnect_selected", conn))
    pages["refresh message"] = body(
        root.post(act_url(conn), {"action": "refresh_tokens_now"}, follow=True)
    )
    for where, content in pages.items():
        for name, secret in secrets.items():
            assert secret.encode() not in content, f"{name} on {where}"
    # The pages did show this connection: its fingerprint is there, its token is not.
    assert conn.refresh_token_fingerprint.encode() in pages[page(conn)]
    assert b"agent@example.com" in pages[EXPORT]


# --- The list ----------------------------------------------------------------------------------


def many_connections(n: int, start: int = 0) -> None:
    """`n` connections with a profile, runs and events, in bulk (no sandbox)."""
    users = User.objects.bulk_create(
        [
            User(username=f"user{i:05d}", email=f"user{i}@agency.test")
            for i in range(start, start + n)
        ]
    )
    now = timezone.now()
    conns = Connection.objects.bulk_create(
        [
            Connection(
                user=user,
                zywave_subject=f"sub{user.username}",
                zywave_email=f"{user.username}@zywave.test",
                granted_scopes=SCOPES,
                requested_scopes=SCOPES,
                authorized_at=now - timedelta(days=i % 40),
                access_token_expires_at=now + timedelta(minutes=i),
                status=["active", "reauth_required", "disconnected"][i % 3],
                last_error="" if i % 5 else "token refresh failed (503)",
            )
            for i, user in enumerate(users)
        ]
    )
    profiles = Profile.objects.bulk_create(
        [Profile(connection=c, type_code="B", zywave_id=str(c.pk), name=f"P{c.pk}") for c in conns]
    )
    for conn, profile in zip(conns, profiles, strict=True):
        conn.chosen_profile = profile
    Connection.objects.bulk_update(conns, ["chosen_profile"])
    SyncRun.objects.bulk_create(
        [
            SyncRun(
                connection=c,
                state=["succeeded", "failed", "partial"][i % 3],
                started_at=now - timedelta(minutes=5),
                finished_at=now,
                records_done=i,
            )
            for i, c in enumerate(conns)
            for _ in range(2)
        ]
    )


@pytest.mark.parametrize(
    "query", ["", "?health=refresh_failing", "?last_sync=failed&o=9", "?q=user0&deadline=soon"]
)
def test_the_connection_list_runs_the_same_queries_for_10_and_1000_connections(
    root: Person, query: str
) -> None:
    many_connections(10)
    with CaptureQueriesContext(db) as small:
        assert root.get(CHANGELIST + query).status_code == 200
    many_connections(990, start=10)
    with CaptureQueriesContext(db) as large:
        response = root.get(CHANGELIST + query)
        assert response.status_code == 200
    assert len(small) == len(large)
    assert len(large) < 15


def test_the_overview_runs_the_same_queries_for_10_and_1000_connections(
    root: Person,
) -> None:
    many_connections(10)
    with CaptureQueriesContext(db) as small:
        assert b"Zywave connections" in root.get("/admin/").content
    many_connections(990, start=10)
    with CaptureQueriesContext(db) as large:
        assert b"Zywave connections" in root.get("/admin/").content
    assert len(small) == len(large)


def test_the_list_shows_each_status_with_its_badge(
    staff: User, other_staff: User, root: Person
) -> None:
    a, b, c, d, e = (User.objects.create_user(name) for name in "abcde")
    connection(a)
    connection(b, last_error="token refresh failed (503)", last_error_at=timezone.now())
    connection(c, status="reauth_required", last_error="ended", last_error_permanent=True)
    connection(d, profile=False)
    connection(e, status="disconnected", profile=False)
    listing = root.get(CHANGELIST).content.decode()
    for health, label in Connection.Health.choices:
        assert f'<span class="zw-badge zw-{health}">{label}</span>' in listing
    for health, user in [
        ("active", a),
        ("refresh_failing", b),
        ("reauth_required", c),
        ("needs_profile", d),
        ("disconnected", e),
    ]:
        shown = root.get(CHANGELIST, {"health": health}).context["cl"].result_list
        assert [conn.user for conn in shown] == [user], health


def test_the_list_filters_failed_syncs_chosen_profiles_and_near_deadlines(
    staff: User, other_staff: User, root: Person
) -> None:
    now = timezone.now()
    failing = connection(staff, authorized_at=now - timedelta(days=25))
    fine = connection(other_staff, profile=False)
    SyncRun.objects.create(connection=failing, state="succeeded", queued_at=now - timedelta(2))
    SyncRun.objects.create(connection=failing, state="failed", queued_at=now - timedelta(1))
    SyncRun.objects.create(connection=fine, state="failed", queued_at=now - timedelta(2))
    SyncRun.objects.create(connection=fine, state="succeeded", queued_at=now - timedelta(1))

    def shown(**params: str) -> list[Connection]:
        return list(root.get(CHANGELIST, params).context["cl"].result_list)

    lapsed = connection(
        User.objects.create_user("lapsed"), authorized_at=now - timedelta(days=31), profile=False
    )
    assert shown(last_sync="failed") == [failing]
    assert shown(deadline="soon") == [failing]
    assert shown(deadline="passed") == [lapsed]
    assert shown(profile="chosen") == [failing]
    assert shown(profile="none") == [lapsed, fine]  # by username


def test_the_list_shows_which_connections_zywave_webhooks_reach(
    staff: User, other_staff: User, root: Person
) -> None:
    receiving = connection(staff, hook_last_delivery_at=timezone.now())
    silent = connection(other_staff)
    stopped = connection(
        User.objects.create_user("stopped"),
        hook_last_delivery_at=timezone.now() - timedelta(days=2),
    )

    def shown(value: str) -> list[Connection]:
        return list(root.get(CHANGELIST, {"zywave_hooks": value}).context["cl"].result_list)

    assert shown("receiving") == [receiving]
    assert shown("none") == [silent]
    assert shown("stopped") == [stopped]
    page_html = root.get(CHANGELIST).content.decode()
    assert "none received" in page_html and "receiving: last" in page_html


def test_the_connection_page_counts_deliveries_and_refusals_and_never_shows_the_receiver_url(
    staff: User, root: Person
) -> None:
    from integrations import hooks

    conn = connection(staff)
    token = hooks.rotate_token(conn)
    client = Client()
    client.post(f"/hooks/zywave/{token}/", data=b"nope", content_type="application/json")
    html = root.get(page(conn)).content.decode()
    assert "bad request: 1" in html
    assert token not in html
    assert hooks.digest(token) not in html


def test_a_new_receiver_url_from_the_admin_retires_the_old_one_audited(
    staff: User, root: Person
) -> None:
    from integrations import hooks

    conn = connection(staff)
    old = conn.hook_token
    assert old
    response = act(root, "new_receiver_url", conn)
    assert response.status_code == 302
    conn.refresh_from_db()
    assert conn.hook_token != old
    assert hooks.connection_for(old) is None
    event = conn.events.get(kind="hook_token_rotated", actor=root.user)
    assert old not in str(event.detail) and str(conn.hook_token) not in str(event.detail)


def test_search_finds_connections_by_username_email_and_zywave_subject(
    staff: User, other_staff: User, root: Person
) -> None:
    dana = connection(staff, zywave_subject="zw-7781", zywave_email="dana@broker.test")
    connection(other_staff)
    for term in ("dana", "dana@agency.test", "dana@broker.test", "zw-7781"):
        result = root.get(CHANGELIST, {"q": term}).context["cl"].result_list
        assert list(result) == [dana], term


def test_the_list_shows_the_last_sync_duration_and_records(staff: User, root: Person) -> None:
    now = timezone.now()
    conn = connection(staff)
    SyncRun.objects.create(
        connection=conn,
        state="succeeded",
        started_at=now - timedelta(seconds=75),
        finished_at=now,
        records_done=1234,
    )
    assert "1234 records in 1m 15s" in root.get(CHANGELIST).content.decode()


@pytest.mark.parametrize(
    "column, earliest_first",
    [
        ("token_expires", ["omar", "dana"]),
        ("refresh_deadline", ["dana", "omar"]),
        ("last_refresh", ["omar", "dana"]),
        ("last_sync", ["dana", "omar"]),
    ],
)
def test_the_list_sorts_by_each_date(
    staff: User, other_staff: User, root: Person, column: str, earliest_first: list[str]
) -> None:
    now = timezone.now()
    dana = connection(
        staff,
        access_token_expires_at=now + timedelta(hours=2),
        authorized_at=now - timedelta(days=5),
        last_refreshed_at=now - timedelta(minutes=1),
    )
    omar = connection(
        other_staff,
        access_token_expires_at=now + timedelta(minutes=5),
        authorized_at=now - timedelta(days=1),
        last_refreshed_at=now - timedelta(hours=1),
    )
    SyncRun.objects.create(connection=dana, queued_at=now - timedelta(hours=3), state="failed")
    SyncRun.objects.create(connection=omar, queued_at=now - timedelta(hours=1), state="failed")
    index = root.get(CHANGELIST).context["cl"].list_display.index(column)

    def usernames(order: str) -> list[str]:
        result = root.get(CHANGELIST, {"o": order}).context["cl"].result_list
        return [conn.user.username for conn in result]

    assert usernames(str(index)) == earliest_first
    assert usernames(f"-{index}") == earliest_first[::-1]


# --- The connection's page ---------------------------------------------------------------


def test_the_connection_page_shows_its_history_and_runs(staff: User, root: Person) -> None:
    conn = connection(staff, access_token_fingerprint="abc123def456")
    conn.record(ConnectionEvent.Kind.REFRESH_FAILED, reason="token refresh failed (503)")
    conn.record(ConnectionEvent.Kind.SYNC_REQUESTED, actor=root.user, full=True)
    SyncRun.objects.create(connection=conn, state="failed", error="Zywave answered 403")
    content = root.get(page(conn)).content.decode()
    assert "set, fingerprint abc123def456, expires" in content
    assert "token refresh failed (503)" in content and "Zywave answered 403" in content
    assert "Sync requested by an admin" in content and root.user.username in content
    assert f"connection__id__exact={conn.pk}" in content


# --- Actions against the sandbox ---------------------------------------------------------


def test_refresh_now_calls_zywave_once_and_records_the_admin(
    staff: User, root: Person, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    before = conn.access_token_fingerprint
    zywave.control("POST", "counters/reset")
    response = act(root, "refresh_tokens_now", conn)
    assert response.status_code == 302
    assert zywave.counters()["token"] == {"refresh_token:success": 1}
    conn.refresh_from_db()
    assert conn.access_token_fingerprint != before
    event = conn.events.get(kind=ConnectionEvent.Kind.REFRESH_REQUESTED)
    assert event.actor == root.user and event.detail == {"result": "refreshed"}
    assert "Token refresh: 1 refreshed." in messages_of(root.get(CHANGELIST))


def test_refreshing_a_revoked_grant_reports_that_reauthorization_is_needed(
    staff: User, root: Person, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    zywave.control("POST", "users/agent@example.com/revoke")
    response = act(root, "refresh_tokens_now", conn)
    assert Connection.objects.get(pk=conn.pk).status == Connection.Status.REAUTH_REQUIRED
    followed = root.get(response["Location"])
    assert any("need re-authorization" in m for m in messages_of(followed))
    assert conn.events.get(kind="refresh_requested").detail == {"result": "reauth_required"}


def test_sync_now_queues_a_run_that_a_worker_then_completes(
    staff: User,
    root: Person,
    zywave: Sandbox,
    django_capture_on_commit_callbacks: Any,
) -> None:
    conn = connection(staff, zywave)
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        act(root, "sync_now", conn)
    run = SyncRun.objects.get(connection=conn)
    assert (run.state, run.trigger, run.full) == ("queued", "admin", False)
    assert len(enqueued) == 1  # the task, sent after commit
    event = conn.events.get(kind=ConnectionEvent.Kind.SYNC_REQUESTED)
    assert event.actor == root.user and event.detail == {"full": False, "result": "queued"}
    # What the worker does with the task: the same run, taken and finished against Zywave.
    assert sync_connection(conn.pk) == SyncRun.State.SUCCEEDED
    assert SyncRun.objects.get(pk=run.pk).state == SyncRun.State.SUCCEEDED
    assert Account.objects.filter(connection=conn).exists()


def test_full_resync_queues_a_full_run_once(staff: User, root: Person, zywave: Sandbox) -> None:
    conn = connection(staff, zywave)
    act(root, "full_resync", conn)
    act(root, "full_resync", conn)
    assert SyncRun.objects.get(connection=conn).full
    results = [e.detail["result"] for e in conn.events.filter(kind="sync_requested")]
    assert sorted(results) == ["already_queued", "queued"]


def test_sync_skips_connections_that_cannot_sync(
    staff: User, other_staff: User, root: Person
) -> None:
    no_profile = connection(staff, profile=False)
    reauth = connection(other_staff, status="reauth_required")
    response = act(root, "sync_now", no_profile, reauth)
    assert not SyncRun.objects.exists()
    assert any("2 skipped" in m for m in messages_of(root.get(response["Location"])))


def test_a_reconnect_reminder_is_emailed_to_the_owner_and_recorded(
    staff: User, root: Person
) -> None:
    conn = connection(staff, status="reauth_required", access_token_fingerprint="f" * 12)
    act(root, "send_reconnect_reminder", conn)
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [staff.email] and "reconnect" in message.subject.lower()
    assert "Reconnect" in message.body and "f" * 12 not in message.body
    event = conn.events.get(kind=ConnectionEvent.Kind.REMINDER_SENT)
    assert event.actor == root.user and event.detail == {"result": "sent"}


def test_disconnect_asks_for_confirmation_first(staff: User, root: Person) -> None:
    conn = connection(staff)
    response = act(root, "disconnect_selected", conn)
    assert response.status_code == 200
    content = response.content.decode()
    assert "Disconnect Zywave?" in content and staff.username in content
    assert 'name="post" value="yes"' in content
    conn.refresh_from_db()
    assert conn.status == Connection.Status.ACTIVE and not conn.events.exists()


def test_disconnect_revokes_at_zywave_deletes_the_tokens_and_records_the_admin(
    staff: User, root: Person, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    access, refresh = conn.access_token, conn.refresh_token
    assert zywave.control("GET", f"tokens/{refresh}")["active"]
    response = confirm_disconnect(root, conn)
    assert response.status_code == 302
    assert not zywave.control("GET", f"tokens/{refresh}")["active"]
    assert not zywave.control("GET", f"tokens/{access}")["active"]
    conn.refresh_from_db()
    assert conn.status == Connection.Status.DISCONNECTED
    assert (conn.access_token, conn.refresh_token, conn.chosen_profile) == (None, None, None)
    assert not Profile.objects.filter(connection=conn).exists()
    event = conn.events.get(kind=ConnectionEvent.Kind.DISCONNECTED)
    assert event.actor == root.user and event.detail["revoked"] is True
    followed = root.get(response["Location"])
    assert "Disconnect: 1 disconnected and revoked at Zywave." in messages_of(followed)


def test_disconnect_deletes_the_mirror_and_stops_the_running_sync(
    staff: User, other_staff: User, root: Person, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    Account.objects.create(connection=conn, zywave_id="a1", name="Acme", raw={})
    Contact.objects.create(connection=conn, zywave_id="c1", account_zywave_id="a1", raw={})
    running = SyncRun.objects.create(
        connection=conn,
        state=SyncRun.State.RUNNING,
        pages_done=1,
        lease_until=timezone.now() + timedelta(minutes=5),
    )
    others = connection(other_staff)
    Account.objects.create(connection=others, zywave_id="a1", name="Omar's client", raw={})
    others_run = SyncRun.objects.create(connection=others, state=SyncRun.State.QUEUED)
    assert confirm_disconnect(root, conn).status_code == 302
    assert not Account.objects.filter(connection=conn).exists()
    assert not Contact.objects.filter(connection=conn).exists()
    running.refresh_from_db()
    assert (running.state, running.error, running.lease_until) == ("failed", "disconnected", None)
    assert running.finished_at is not None
    # The other connection, not selected, keeps its mirror and its queued run.
    assert Account.objects.filter(connection=others).count() == 1
    assert SyncRun.objects.get(pk=others_run.pk).state == SyncRun.State.QUEUED


def test_actions_from_a_connection_page_return_to_it(staff: User, root: Person) -> None:
    conn = connection(staff)
    page_content = root.get(page(conn)).content.decode()
    assert f'action="{act_url(conn)}"' in page_content and 'value="sync_now"' in page_content
    response = root.post(act_url(conn), {"action": "sync_now"})
    assert response.status_code == 302 and response["Location"] == page(conn)
    assert SyncRun.objects.filter(connection=conn, trigger="admin").exists()
    confirmation = root.post(act_url(conn), {"action": "disconnect_selected"})
    assert confirmation.status_code == 200 and b"Disconnect Zywave?" in confirmation.content
    assert root.get(act_url(conn)).status_code == 405
    assert root.post(act_url(conn), {"action": "nonsense"}).status_code == 403


# --- CSV and the overview ------------------------------------------------------------------


def test_the_csv_export_has_the_list_columns_and_follows_its_filters(
    staff: User, other_staff: User, root: Person
) -> None:
    connection(staff, status="reauth_required", last_error="=HYPERLINK(1)")
    connection(other_staff)
    response = root.get(EXPORT, {"health": "reauth_required"})
    assert response["Content-Type"].startswith("text/csv")
    lines = body(response).decode().splitlines()
    assert lines[0].startswith("portal user,portal email,Zywave email,Zywave subject,status")
    assert len(lines) == 2 and lines[1].startswith(f"{staff.username},")
    assert "Re-authorization needed" in lines[1] and "'=HYPERLINK(1)" in lines[1]
    assert reverse("admin:integrations_connection_export") in root.get(CHANGELIST).content.decode()


def test_the_overview_counts_statuses_and_draws_two_weeks_of_sync_outcomes(
    staff: User, other_staff: User, root: Person
) -> None:
    now = timezone.now()
    soon = connection(staff, authorized_at=now - timedelta(days=27))
    connection(other_staff, status="reauth_required")
    SyncRun.objects.create(connection=soon, state="succeeded", finished_at=now, records_done=40)
    SyncRun.objects.create(
        connection=soon, state="failed", finished_at=now - timedelta(days=3), records_done=2
    )
    SyncRun.objects.create(
        connection=soon, state="succeeded", finished_at=now - timedelta(days=20), records_done=9
    )
    response = root.get("/admin/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "Zywave connections" in content and "<svg" in content
    assert '<span class="zw-count">1</span>\n        <span class="zw-badge zw-active">' in content
    assert '<span class="zw-count">1</span> reaching the 30-day deadline' in content
    assert '<span class="zw-count">1</span> syncs finished in the last 24 hours' in content
    assert '<span class="zw-count">40</span> records mirrored' in content
    assert content.count('<rect class="zw-succeeded"') == 1  # the 20-day-old run is off the chart
    assert content.count('<rect class="zw-failed"') == 1
    assert "<script" not in content.split("zw-overview")[1].split("</section>")[0]


# --- Removing a stale identity link (hardening item 16) ----------------------------------------

LINKS = "/admin/social_django/usersocialauth/"


def test_an_admin_removes_a_stale_link_audited_but_not_a_connected_persons(
    root: Person, sam: Person, staff: User, other_staff: User
) -> None:
    gone = connection(staff, status=Connection.Status.DISCONNECTED)
    live = connection(other_staff)
    stale = UserSocialAuth.objects.create(user=staff, provider="zywave", uid="stale-subject")
    held = UserSocialAuth.objects.create(user=other_staff, provider="zywave", uid="live-subject")
    data = {"action": "remove_link", ACTION_CHECKBOX_NAME: [stale.pk, held.pk], "index": 0}
    # Support staff may look, not act.
    sam.post(LINKS, data)
    assert UserSocialAuth.objects.filter(pk=stale.pk).exists()
    answer = root.post(LINKS, data, follow=True)
    assert (
        "1 link removed; 1 skipped (still connected: disconnect first)" in answer.content.decode()
    )
    assert not UserSocialAuth.objects.filter(pk=stale.pk).exists()
    assert UserSocialAuth.objects.filter(pk=held.pk).exists()
    event = gone.events.get(kind=ConnectionEvent.Kind.LINK_REMOVED)
    assert (event.actor, event.detail) == (root.user, {"uid": "stale-subject"})
    assert not live.events.filter(kind=ConnectionEvent.Kind.LINK_REMOVED).exists()
