"""API keys made and revoked by people: the page, the command and the admin. A key is shown
once, where it is made, and never again: not on a page, in the admin or in the audit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.db import connection as db
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations.api.keys import KEY_PATTERN, hash_key, issue
from integrations.api.pages import SESSION_FORM_IDS
from integrations.models import ApiKey, ConnectionEvent
from tests.api.callers import System, problem
from tests.conftest import Person

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
PAGE = "/settings/api-keys/"
ADMIN = "/admin/integrations/apikey/"
CONNECTION = "/api/v1/connection"


def revoke_url(key: ApiKey) -> str:
    return f"{PAGE}{key.pk}/revoke/"


def create(person: Client, **fields: Any) -> Any:
    """Send the page's form, as the browser would after loading the page."""
    form_id = person.get(PAGE).context["form"]["form_id"].value()
    data = {"name": "CRM import", "scopes": ["read"], "expires_on": "", "form_id": form_id}
    return person.post(PAGE, {**data, **fields})


def shown_keys(response: Any) -> list[str]:
    return re.findall(r"zwk_[a-z0-9]{8}_[A-Za-z0-9]{32}", response.content.decode())


def audit_text() -> str:
    return json.dumps(list(ConnectionEvent.objects.values_list("detail", flat=True)))


# --- The page: who sees what ------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_log_in(staff: User, client: Client) -> None:
    key, _secret = issue(staff, "mine", ["read"])
    for response in (
        client.get(PAGE),
        client.post(PAGE, {"name": "x", "scopes": ["read"]}),
        client.post(revoke_url(key)),
    ):
        assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert ApiKey.objects.get().revoked_at is None


def test_the_page_lists_the_persons_own_keys_only(
    dana: Person, staff: User, other_staff: User
) -> None:
    mine, _ = issue(staff, "Nightly report", ["read", "sync"])
    theirs, _ = issue(other_staff, "Omar's quoting tool", ["proxy"])
    response = dana.get(PAGE)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Nightly report" in page and f"zwk_{mine.prefix}_…" in page and "read, sync" in page
    assert "quoting tool" not in page and theirs.prefix not in page
    assert revoke_url(mine) in page and revoke_url(theirs) not in page
    assert mine.hashed_key not in page


def test_each_key_shows_whether_it_is_active_expired_or_revoked(dana: Person, staff: User) -> None:
    issue(staff, "fresh", ["read"])
    issue(staff, "old", ["read"], expires_at=timezone.now() - timedelta(minutes=1))
    gone, _ = issue(staff, "gone", ["read"])
    gone.revoke(staff)
    rows = dict(
        re.findall(
            r"<tr>\s*<td>(\w+)</td>.*?class=\"badge[^\"]*\">(\w+)</span>",
            dana.get(PAGE).content.decode(),
            flags=re.S,
        )
    )
    assert rows == {"fresh": "active", "old": "expired", "gone": "revoked"}


def test_the_navigation_links_to_the_page(dana: Person) -> None:
    assert f'href="{PAGE}"' in dana.get("/").content.decode()


def test_the_page_runs_the_same_queries_for_one_key_or_many(dana: Person, staff: User) -> None:
    issue(staff, "first", ["read"])
    with CaptureQueriesContext(db) as one:
        assert dana.get(PAGE).status_code == 200
    for n in range(20):
        key, _ = issue(staff, f"key {n}", ["read"])
        if n % 2:
            key.revoke(staff)
    with CaptureQueriesContext(db) as many:
        assert dana.get(PAGE).status_code == 200
    assert len(many) == len(one)


# --- Creating a key: shown once -------------------------------------------------------------


def test_a_new_key_is_shown_once_in_the_answer_and_works(dana: Person, staff: User) -> None:
    response = create(dana, name="CRM import", scopes=["read", "sync"])
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    (secret,) = set(shown_keys(response))
    assert "it will not be shown again" in response.content.decode()
    key = ApiKey.objects.get(owner=staff)
    assert key.name == "CRM import" and key.scopes == ["read", "sync"] and key.expires_at is None
    assert key.hashed_key == hash_key(secret) and secret.startswith(f"zwk_{key.prefix}_")
    assert System(secret).get(CONNECTION).status_code == 200
    # Nowhere to be found afterwards: not on a reload, in the session, a message or the audit.
    again = dana.get(PAGE)
    assert shown_keys(again) == [] and f"zwk_{key.prefix}_…" in again.content.decode()
    assert not list(again.context["messages"])
    assert secret not in json.dumps(dict(dana.session.items()))
    assert secret not in audit_text() and key.hashed_key not in audit_text()
    event = ConnectionEvent.objects.get(kind=ConnectionEvent.Kind.API_KEY_CREATED)
    assert event.actor == staff and event.detail["key"] == key.prefix


def test_sending_the_same_form_again_makes_no_second_key_and_shows_none(
    dana: Person, staff: User
) -> None:
    form_id = dana.get(PAGE).context["form"]["form_id"].value()
    data = {"name": "CRM import", "scopes": ["read"], "form_id": form_id}
    assert len(shown_keys(dana.post(PAGE, data))) == 1
    again = dana.post(PAGE, data, follow=True)  # a reload of the answer re-sends the form
    assert again.redirect_chain == [(PAGE, 302)]
    assert shown_keys(again) == [] and "already sent" in again.content.decode()
    assert ApiKey.objects.filter(owner=staff).count() == 1
    forged = dana.post(PAGE, {**data, "form_id": "made-up"})
    assert forged.status_code == 302 and ApiKey.objects.count() == 1
    assert len(dana.session[SESSION_FORM_IDS]) <= 10


def test_a_key_needs_a_name_and_a_known_scope(dana: Person) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "   "}, "Give the key a name."),
        ({"scopes": []}, "Choose at least one scope."),
        ({"scopes": ["read", "admin"]}, "Select a valid choice."),
        ({"name": "x" * 101}, "at most 100 characters"),
    ]
    for fields, error in cases:
        response = create(dana, **fields)
        assert response.status_code == 400, fields
        assert error in response.content.decode(), fields
        assert shown_keys(response) == []
    assert not ApiKey.objects.exists()


def test_the_expiry_date_is_the_last_day_the_key_works(dana: Person, staff: User) -> None:
    day = timezone.localdate() + timedelta(days=3)
    create(dana, expires_on=day.isoformat())
    key = ApiKey.objects.get(owner=staff)
    assert key.expires_at is not None and key.is_usable
    expires = timezone.localtime(key.expires_at)
    assert expires.date() == day and (expires.hour, expires.minute) == (23, 59)
    for past_or_far in (timezone.localdate() - timedelta(days=1), day.replace(year=day.year + 11)):
        response = create(dana, expires_on=past_or_far.isoformat())
        assert response.status_code == 400 and shown_keys(response) == []
    assert ApiKey.objects.count() == 1


# --- Revoking a key ---------------------------------------------------------------------------


def test_revoking_a_key_refuses_it_from_its_next_request(dana: Person, staff: User) -> None:
    key, secret = issue(staff, "CRM import", ["read"])
    system = System(secret)
    assert system.get(CONNECTION).status_code == 200
    response = dana.post(revoke_url(key), follow=True)
    assert response.redirect_chain == [(PAGE, 302)]
    assert "is revoked" in response.content.decode()
    assert "revoked" in problem(system.get(CONNECTION), 401)["detail"]
    key.refresh_from_db()
    assert key.state == "revoked" and key.revoked_by == staff
    event = ConnectionEvent.objects.get(kind=ConnectionEvent.Kind.API_KEY_REVOKED)
    assert event.actor == staff and event.user == staff and secret not in audit_text()
    # Revoked once: a second press changes nothing and says so.
    revoked_at = key.revoked_at
    assert "already revoked" in dana.post(revoke_url(key), follow=True).content.decode()
    key.refresh_from_db()
    assert key.revoked_at == revoked_at
    assert ConnectionEvent.objects.filter(kind=ConnectionEvent.Kind.API_KEY_REVOKED).count() == 1


def test_another_persons_key_cannot_be_revoked(dana: Person, other_staff: User) -> None:
    theirs, secret = issue(other_staff, "Omar's tool", ["read"])
    assert dana.post(revoke_url(theirs)).status_code == 404
    assert dana.post(f"{PAGE}{theirs.pk + 1000}/revoke/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    assert System(secret).get(CONNECTION).status_code == 200


def test_the_pages_answer_only_their_methods(dana: Person, staff: User) -> None:
    key, _ = issue(staff, "mine", ["read"])
    assert dana.get(revoke_url(key)).status_code == 405
    assert dana.put(PAGE).status_code == 405
    assert dana.delete(revoke_url(key)).status_code == 405
    key.refresh_from_db()
    assert key.revoked_at is None


def test_posts_without_a_csrf_token_are_refused(staff: User) -> None:
    key, _ = issue(staff, "mine", ["read"])
    browser = Person(staff, enforce_csrf_checks=True)
    form_id = browser.get(PAGE).context["form"]["form_id"].value()
    made = browser.post(PAGE, {"name": "sneaky", "scopes": ["read"], "form_id": form_id})
    assert made.status_code == 403 and shown_keys(made) == []
    assert browser.post(revoke_url(key)).status_code == 403
    assert list(ApiKey.objects.values_list("name", "revoked_at")) == [("mine", None)]


# --- The command ------------------------------------------------------------------------------


def run_command(*args: str) -> list[str]:
    out = StringIO()
    call_command("create_api_key", *args, stdout=out)
    return out.getvalue().splitlines()


def test_the_command_prints_a_working_key_alone_on_its_last_line(staff: User) -> None:
    lines = run_command("dana", "--name", "nightly job", "--scope", "read", "--scope", "sync")
    secret = lines[-1]
    assert KEY_PATTERN.fullmatch(secret) and len(lines) >= 2
    assert "dana" in lines[0] and secret not in "\n".join(lines[:-1])
    key = ApiKey.objects.get(owner=staff)
    assert key.name == "nightly job" and key.scopes == ["read", "sync"] and key.expires_at is None
    answer = System(secret).get(CONNECTION)
    assert answer.status_code == 200 and answer.json()["status"] == "not_connected"
    assert secret not in audit_text()


def test_the_command_sets_an_expiry_in_days(staff: User) -> None:
    run_command("dana", "--name", "short", "--scope", "read", "--expires-days", "7")
    key = ApiKey.objects.get()
    assert key.expires_at is not None
    assert abs(key.expires_at - (timezone.now() + timedelta(days=7))) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody", "--name", "x", "--scope", "read"], "no portal user is named 'nobody'"),
        (["dana", "--name", "x", "--scope", "admin"], "unknown scope 'admin'"),
        (["dana", "--name", "x"], "give at least one --scope"),
        (["dana", "--name", "  ", "--scope", "read"], "--name must not be empty"),
        (["dana", "--name", "x", "--scope", "read", "--expires-days", "0"], "--expires-days"),
    ],
)
def test_the_command_refuses_bad_input_clearly(staff: User, args: list[str], message: str) -> None:
    out = StringIO()
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("create_api_key", *args, stdout=out)
    assert "zwk_" not in out.getvalue() and not ApiKey.objects.exists()


def test_the_command_refuses_a_deactivated_user(staff: User) -> None:
    staff.is_active = False
    staff.save()
    with pytest.raises(CommandError, match="deactivated"):
        run_command("dana", "--name", "x", "--scope", "read")


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    """`python manage.py ...` in a shell, on this test's database."""
    url = urlsplit(os.environ["DATABASE_URL"])
    test_db = urlunsplit(url._replace(path=f"/{db.settings_dict['NAME']}"))
    return subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": test_db},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith("postgres"),
    reason="a second process needs the test database on a server",
)
def test_in_a_shell_the_key_is_the_last_line_and_bad_input_exits_non_zero(staff: User) -> None:
    made = manage("create_api_key", "dana", "--name", "shell", "--scope", "read")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.splitlines()[-1]
    assert KEY_PATTERN.fullmatch(secret), made.stdout
    assert System(secret).get(CONNECTION).status_code == 200
    for args, message in [
        (["nobody", "--name", "x", "--scope", "read"], "no portal user is named 'nobody'"),
        (["dana", "--name", "x", "--scope", "admin"], "unknown scope 'admin'"),
    ]:
        refused = manage("create_api_key", *args)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
        assert "zwk_" not in refused.stdout
    assert ApiKey.objects.count() == 1


# --- The admin --------------------------------------------------------------------------------


def revoke_in_admin(client: Client, *keys: ApiKey) -> Any:
    data = {"action": "revoke_selected", ACTION_CHECKBOX_NAME: [k.pk for k in keys], "index": 0}
    return client.post(ADMIN, data, follow=True)


def test_the_admin_lists_keys_by_prefix_and_never_shows_a_key_or_its_hash(
    root: Person, staff: User
) -> None:
    key, secret = issue(staff, "CRM import", ["read", "proxy"])
    listing = root.get(ADMIN)
    assert listing.status_code == 200
    text = listing.content.decode()
    for shown in ("dana", "CRM import", f"zwk_{key.prefix}_…", "read proxy", "active"):
        assert shown in text, shown
    detail = root.get(f"{ADMIN}{key.pk}/change/")
    assert detail.status_code == 200 and f"zwk_{key.prefix}_…" in detail.content.decode()
    events = root.get("/admin/integrations/connectionevent/")
    for response in (listing, detail, events):
        assert secret not in response.content.decode()
        assert key.hashed_key not in response.content.decode()
        assert "hashed" not in response.content.decode()


def test_the_admin_finds_keys_by_owner_name_and_prefix_and_filters_by_state(
    root: Person, staff: User, other_staff: User
) -> None:
    mine, _ = issue(staff, "Nightly report", ["read"])
    theirs, _ = issue(other_staff, "Quoting tool", ["read"])
    gone, _ = issue(other_staff, "Old import", ["read"])
    gone.revoke(other_staff)

    def found(**params: str) -> set[str]:
        response = root.get(ADMIN, params)
        return {key.name for key in response.context["cl"].result_list}

    assert found(q="dana") == {"Nightly report"}
    assert found(q="omar@agency.test") == {"Quoting tool", "Old import"}
    assert found(q="quoting") == {"Quoting tool"}
    assert found(q=theirs.prefix) == {"Quoting tool"}
    assert found(state="revoked") == {"Old import"}
    assert found(state="active") == {"Nightly report", "Quoting tool"}
    mine.expires_at = timezone.now() - timedelta(seconds=1)
    mine.save()
    assert found(state="expired") == {"Nightly report"}
    assert found(state="active") == {"Quoting tool"}


def test_the_admin_revokes_selected_keys_audited(
    root: Person, admin_user: User, staff: User, other_staff: User
) -> None:
    mine, my_secret = issue(staff, "CRM import", ["read"])
    theirs, their_secret = issue(other_staff, "Quoting tool", ["read"])
    theirs.revoke(other_staff)
    response = revoke_in_admin(root, mine, theirs)
    assert "Revoke: 1 key revoked; 1 already revoked." in response.content.decode()
    mine.refresh_from_db()
    assert mine.state == "revoked" and mine.revoked_by == admin_user
    problem(System(my_secret).get(CONNECTION), 401)
    event = ConnectionEvent.objects.get(kind=ConnectionEvent.Kind.API_KEY_REVOKED, user=staff)
    assert event.actor == admin_user and event.detail == {"key": mine.prefix, "name": "CRM import"}
    for secret in (my_secret, their_secret):
        assert secret not in response.content.decode() and secret not in audit_text()


def test_revoking_in_the_admin_needs_the_change_permission(
    staff: User, sam: Person, client: Client
) -> None:
    key, secret = issue(staff, "CRM import", ["read"])
    # Support staff may view every model of the app (by rule), keys too, and act on none.
    listed = sam.get(ADMIN)
    assert listed.status_code == 200 and key.prefix in listed.content.decode()
    assert secret not in listed.content.decode()
    revoke_in_admin(sam, key)  # the action is not even offered without the change permission
    key.refresh_from_db()
    assert key.state == "active"
    viewer = User.objects.create_user("viewer", "viewer@agency.test", "x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    client.force_login(viewer)
    listing = client.get(ADMIN)
    assert listing.status_code == 200 and key.name in listing.content.decode()
    assert "revoke_selected" not in listing.content.decode()
    revoke_in_admin(client, key)
    key.refresh_from_db()
    assert key.revoked_at is None and System(secret).get(CONNECTION).status_code == 200
    assert not ConnectionEvent.objects.filter(kind=ConnectionEvent.Kind.API_KEY_REVOKED).exists()


def test_nobody_adds_edits_or_deletes_a_key_in_the_admin(root: Person, staff: User) -> None:
    key, _ = issue(staff, "CRM import", ["read"])
    assert root.get(f"{ADMIN}add/").status_code == 403
    assert root.post(f"{ADMIN}{key.pk}/change/", {"name": "renamed"}).status_code == 403
    assert root.post(f"{ADMIN}{key.pk}/delete/", {"post": "yes"}).status_code == 403
    data = {"action": "delete_selected", ACTION_CHECKBOX_NAME: [key.pk], "post": "yes"}
    root.post(ADMIN, data)
    assert list(ApiKey.objects.values_list("name", flat=True)) == ["CRM import"]
