"""Object access: two people with their own data, every object-scoped URL and method. Neither
sees or changes the other's connection, profiles, mirror or sync runs; a person without staff
rights gets nothing from the admin."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from integrations.models import Connection, SyncRun
from tests.conftest import Person
from tests.sandboxserver import Sandbox
from tests.security.cast import account_ids, admin_urls, own_data, secrets, snapshot

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def their_data(staff: User, other_staff: User) -> None:
    own_data(staff)
    own_data(other_staff)


def leaked(response: Any, other: Person) -> list[str]:
    """The other person's strings that appear in a response (a page, JSON, or a redirect)."""
    text = response.content.decode(errors="replace") + response.get("Location", "")
    return [secret for secret in secrets(other.user) if secret in text]


def test_another_persons_account_page_is_not_found(dana: Person, omar: Person) -> None:
    before = snapshot(omar.user)
    for zywave_id in account_ids(omar.user)[1:]:  # ids only omar has
        response = dana.get(f"/zywave/accounts/{zywave_id}/")
        assert response.status_code == 404
        assert leaked(response, omar) == []
    assert snapshot(omar.user) == before


def test_an_id_both_people_have_shows_each_their_own_account(dana: Person, omar: Person) -> None:
    shared = account_ids(omar.user)[0]
    assert shared == account_ids(dana.user)[0]
    response = dana.get(f"/zywave/accounts/{shared}/")
    assert response.status_code == 200
    assert b"Account dana 0" in response.content
    assert leaked(response, omar) == []


def test_the_account_list_and_its_search_show_only_ones_own_mirror(
    dana: Person, omar: Person
) -> None:
    pages = [
        dana.get("/zywave/accounts/"),
        dana.get("/zywave/accounts/", {"q": "omar"}),
        dana.get("/zywave/accounts/", {"q": "Account"}),
        dana.get("/zywave/accounts/", {"classification": "Client", "status": "active"}),
    ]
    assert all(page.status_code == 200 for page in pages)
    assert b"Account dana 1" in pages[2].content  # the search works on one's own data
    assert [leaked(page, omar) for page in pages] == [[], [], [], []]


def test_the_dashboard_shows_only_ones_own_connection_and_runs(dana: Person, omar: Person) -> None:
    response = dana.get("/")
    assert response.status_code == 200 and b"Agency dana" in response.content
    assert leaked(response, omar) == []


def test_choosing_another_persons_profile_is_refused_and_changes_nothing(
    dana: Person, omar: Person
) -> None:
    theirs = Connection.objects.get(user=omar.user).chosen_profile
    assert theirs is not None
    before_omar, before_dana = snapshot(omar.user), snapshot(dana.user)
    for extra in ({}, {"confirm": "yes"}):
        data = {"action": "choose", "profile": theirs.zywave_id, **extra}
        response = dana.post("/zywave/profiles/", data, follow=True)
        assert b"not one Zywave lists for your account" in response.content
        assert leaked(response, omar) == []
    assert snapshot(omar.user) == before_omar
    assert snapshot(dana.user) == before_dana


def test_the_profile_picker_lists_only_ones_own_profiles(dana: Person, omar: Person) -> None:
    response = dana.get("/zywave/profiles/")
    assert response.status_code == 200 and b"Agency dana" in response.content
    assert leaked(response, omar) == []


def test_sync_now_queues_a_run_for_ones_own_connection_only(dana: Person, omar: Person) -> None:
    before = snapshot(omar.user)
    response = dana.post("/zywave/sync/", {"full": "1"})
    assert response.status_code == 302
    assert SyncRun.objects.filter(connection__user=dana.user, state="queued").count() == 1
    assert snapshot(omar.user) == before


def test_sync_status_reports_ones_own_run_only(dana: Person, omar: Person) -> None:
    mine = Connection.objects.get(user=dana.user)
    SyncRun.objects.filter(connection=mine).delete()
    response = dana.get("/zywave/sync/status/")
    assert response.json() == {"state": None}  # omar's run exists, dana has none
    run = SyncRun.objects.create(connection=mine, state="failed", error="mine")
    body = dana.get("/zywave/sync/status/").json()
    assert body["id"] == run.pk and body["error"] == "mine"
    assert leaked(dana.get("/zywave/sync/status/"), omar) == []


def test_someone_without_a_connection_cannot_disconnect_anyone(
    olga: Person, omar: Person, zywave: Sandbox
) -> None:
    before = snapshot(omar.user)
    assert olga.get("/zywave/disconnect/").status_code == 302
    assert olga.post("/zywave/disconnect/").status_code == 302
    assert snapshot(omar.user) == before


def test_disconnecting_ends_ones_own_connection_only(
    dana: Person, omar: Person, zywave: Sandbox
) -> None:
    before = snapshot(omar.user)
    page = dana.get("/zywave/disconnect/")
    assert page.status_code == 200 and leaked(page, omar) == []
    assert dana.post("/zywave/disconnect/").status_code == 302
    assert Connection.objects.get(user=dana.user).status == "disconnected"
    assert snapshot(omar.user) == before


def test_the_admin_gives_a_person_without_staff_rights_nothing(dana: Person, omar: Person) -> None:
    before = snapshot(omar.user), snapshot(dana.user)
    got: dict[str, Any] = {}
    # The login page is for everyone, and logging out would end this test's session.
    urls = [url for url in admin_urls() if url not in {"/admin/login/", "/admin/logout/"}]
    for url in urls:
        get = dana.get(url)
        post = dana.post(url, {"action": "disconnect_selected", "_selected_action": [1, 2]})
        for method, response in (("GET", get), ("POST", post)):
            refused = response.status_code in {302, 403, 404, 405} and (
                response.status_code != 302 or response["Location"].startswith("/admin/login/")
            )
            if not refused or leaked(response, omar):
                got[f"{method} {url}"] = response.status_code
    assert got == {}
    assert (snapshot(omar.user), snapshot(dana.user)) == before


def test_an_admin_action_posted_by_a_person_without_staff_rights_changes_nothing(
    dana: Person, omar: Person
) -> None:
    theirs = Connection.objects.get(user=omar.user)
    before = snapshot(omar.user)
    for action in ("refresh_tokens_now", "sync_now", "full_resync", "disconnect_selected"):
        dana.post(
            "/admin/integrations/connection/",
            {"action": action, "_selected_action": [theirs.pk], "post": "yes"},
        )
        dana.post(f"/admin/integrations/connection/{theirs.pk}/act/", {"action": action})
    assert snapshot(omar.user) == before
