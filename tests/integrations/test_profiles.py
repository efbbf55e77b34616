"""The profile picker: list, choose (checked against Zywave's list), and keep it safe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection as db
from django.test import Client

from integrations.client import ZywaveClient
from integrations.models import Connection, Profile
from integrations.profiles import (
    ConnectionChanged,
    choose_profile,
    refetch_profile_token,
    refresh_profiles,
)
from integrations.tokens import client_for, revoke_and_disconnect
from tests.conftest import Person, connection
from tests.integrations.flows import connect, inject_fault
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db


def connected(client: Client, sandbox: Sandbox, username: str = "agent@example.com") -> str:
    response = connect(client, sandbox, username)
    assert response.status_code == 302, response.content
    return response["Location"]


def pick(client: Client, zywave_id: str, **extra: str) -> Any:
    return client.post("/zywave/profiles/", {"action": "choose", "profile": zywave_id, **extra})


def test_the_picker_lists_the_three_profiles_and_hints_the_active_one(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    page = dana.get(connected(dana, zywave))
    assert page.status_code == 200
    expected = zywave.profiles("agent@example.com")
    assert len(expected) == 3
    html = page.content.decode()
    for profile in expected:
        assert profile["name"] in html and profile["organization_name"] in html
    active = next(p for p in expected if p["active"])
    conn = Connection.objects.get(user=staff)
    assert conn.profiles.get(is_current=True).zywave_id == active["id"]
    assert "active in Zywave now" in html
    assert conn.chosen_profile is None and conn.needs_profile


def test_choosing_stores_the_profile_token_encrypted_and_the_api_accepts_it(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    dana.get(connected(dana, zywave))
    target = zywave.profiles()[1]
    response = pick(dana, target["id"])
    assert response.status_code == 302 and response["Location"] == "/"
    conn = Connection.objects.get(user=staff)
    assert conn.chosen_profile is not None
    assert conn.chosen_profile.profile_token == target["profile_token"]
    with db.cursor() as cursor:
        cursor.execute("SELECT profile_token FROM integrations_profile")
        assert target["profile_token"] not in str(cursor.fetchall())
    assert conn.events.filter(kind="profile_chosen").count() == 1
    assert target["name"].encode() in dana.get("/").content
    body = client_for(conn).get("/accounts/v2.0/account", {"$top": 1})
    assert (
        body["totalCount"]
        == zywave.control("GET", "accounts/count", profile_id=target["id"])["accounts"]
    )


def test_the_id_form_of_the_profile_header_works_too(
    dana: Person, staff: User, zywave: Sandbox, settings
) -> None:
    dana.get(connected(dana, zywave))
    target = zywave.profiles()[2]
    pick(dana, target["id"])
    settings.ZYWAVE_PROFILE_HEADER = "id"
    conn = Connection.objects.get(user=staff)
    assert conn.profile_header() == f"B {target['id']}"
    body = client_for(conn).get("/accounts/v2.0/account", {"$top": 1})
    count = zywave.control("GET", "accounts/count", profile_id=target["id"])["accounts"]
    assert body["totalCount"] == count


def test_one_profile_is_chosen_automatically_and_the_person_is_told(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    # The callback lists the profiles and chooses the only one: straight home, first sync queued.
    assert connected(dana, zywave, "solo@example.com") == "/"
    conn = Connection.objects.get(user=staff)
    assert conn.chosen_profile is not None
    assert conn.sync_runs.filter(full=True, trigger="profile").count() == 1
    assert b"Zywave offers you one profile" in dana.get("/").content


def test_a_get_of_the_picker_changes_nothing_even_when_its_list_is_stale(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    """GET only reads: no call to Zywave, no choice, no sync, even for one stale profile."""
    conn = connection(staff, zywave, zywave_user="solo@example.com", chosen_profile=None)
    Connection.objects.filter(pk=conn.pk).update(profiles_listed_at=None)
    conn.sync_runs.all().delete()
    zywave.control("POST", "counters/reset")
    page = dana.get("/zywave/profiles/")
    assert page.status_code == 200
    assert b"has not been read yet" in page.content and b"Refresh list from Zywave" in page.content
    assert zywave.counters()["api"] == {}
    conn.refresh_from_db()
    assert conn.chosen_profile_id is None and conn.profiles_listed_at is None
    assert not conn.sync_runs.exists()
    # The refresh is a POST, answered by a redirect back to the picker (which still reads only).
    assert dana.post("/zywave/profiles/", {"action": "refresh"})["Location"] == "/zywave/profiles/"
    conn.refresh_from_db()
    assert conn.profiles_listed_at is not None and conn.chosen_profile_id is None


def test_no_profile_explains_whom_to_ask_and_syncing_stays_off(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    page = dana.get(connected(dana, zywave, "none@example.com"))
    assert b"Zywave lists no profile for your account" in page.content
    conn = Connection.objects.get(user=staff)
    assert conn.needs_profile and conn.profile_header() is None


@pytest.mark.parametrize("forged", ["999999", "B 1", "1\r\nX-Evil: 1", ""])
def test_a_forged_profile_id_is_refused_and_changes_nothing(
    dana: Person, staff: User, zywave: Sandbox, forged: str
) -> None:
    dana.get(connected(dana, zywave))
    response = pick(dana, forged)
    assert response.status_code == 302
    assert Connection.objects.get(user=staff).chosen_profile is None
    assert b"not one Zywave lists" in dana.get(response["Location"]).content


def test_another_users_profile_id_is_refused(
    dana: Person, staff: User, omar: Person, zywave: Sandbox
) -> None:
    dana.get(connected(dana, zywave))
    omar.get(connected(omar, zywave, "solo@example.com"))  # auto-chosen
    solo_profile = zywave.profiles("solo@example.com")[0]["id"]
    pick(dana, solo_profile)
    assert Connection.objects.get(user=staff).chosen_profile is None


def test_choosing_needs_post_and_csrf(dana: Person, staff: User, zywave: Sandbox) -> None:
    dana.get(connected(dana, zywave))
    browser = Person(staff, enforce_csrf_checks=True)
    target = zywave.profiles()[0]["id"]
    browser.get(f"/zywave/profiles/?action=choose&profile={target}")
    assert (
        browser.post("/zywave/profiles/", {"action": "choose", "profile": target}).status_code
        == 403
    )
    assert Connection.objects.get(user=staff).chosen_profile is None


def test_changing_the_profile_asks_for_confirmation_first(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    dana.get(connected(dana, zywave))
    first, second = zywave.profiles()[0]["id"], zywave.profiles()[1]["id"]
    pick(dana, first)
    page = pick(dana, second)
    assert page.status_code == 200 and b"Change profile?" in page.content
    assert Connection.objects.get(user=staff).chosen_profile.zywave_id == first  # type: ignore[union-attr]
    pick(dana, second, confirm="yes")
    assert Connection.objects.get(user=staff).chosen_profile.zywave_id == second  # type: ignore[union-attr]


def test_a_chosen_profile_that_disappears_marks_the_connection(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    dana.get(connected(dana, zywave))
    target = zywave.profiles()[0]
    pick(dana, target["id"])
    zywave.control("POST", f"users/agent@example.com/profiles/{target['id']}/remove")
    try:
        page = dana.post("/zywave/profiles/", {"action": "refresh"}, follow=True)
    finally:  # the sandbox outlives the test: give the profile back
        zywave.control("POST", f"users/agent@example.com/profiles/{target['id']}/add")
        if target["active"]:
            zywave.control(
                "POST", "users/agent@example.com/active-profile", profile_id=target["id"]
            )
    assert b"no longer offers the profile" in page.content
    conn = Connection.objects.get(user=staff)
    assert conn.needs_profile
    assert conn.events.filter(kind="profile_lost").exists()
    assert b"Choose a profile" in dana.get("/").content
    assert conn.profiles.count() == 2


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 503},
        {"delay_ms": 4500},
        {"status": 200, "body": "{not json", "content_type": "application/json"},
        {"status": 200, "body": '{"unexpected": true}', "content_type": "application/json"},
        {"status": 401, "count": 2},
    ],
)
def test_zywave_failing_while_listing_keeps_the_previous_choice(
    dana: Person, staff: User, zywave: Sandbox, fault: dict[str, Any]
) -> None:
    dana.get(connected(dana, zywave))
    chosen = zywave.profiles()[0]["id"]
    pick(dana, chosen)
    inject_fault(zywave, r"^/profiles/V2\.0/Profile/B$", **fault)
    page = dana.post("/zywave/profiles/", {"action": "refresh"}, follow=True)
    # Each is Zywave misbehaving, not the grant ending (a 401 twice: refreshed once, then
    # refused again): the one message says the list was not read and the choice stands.
    assert b"Your previous choice is kept; please try again shortly." in page.content
    assert b"sign in again" not in page.content
    conn = Connection.objects.get(user=staff)
    assert conn.status == Connection.Status.ACTIVE
    assert conn.chosen_profile is not None and conn.chosen_profile.zywave_id == chosen
    assert conn.profiles.count() == 3


def test_a_401_while_listing_refreshes_once_and_succeeds(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    dana.get(connected(dana, zywave))
    zywave.control("POST", "counters/reset")
    inject_fault(zywave, r"^/profiles/V2\.0/Profile/B$", status=401)
    dana.post("/zywave/profiles/", {"action": "refresh"})
    assert zywave.counters()["token"].get("refresh_token:success") == 1
    assert Connection.objects.get(user=staff).profiles.count() == 3


def test_camel_case_profile_keys_are_read_too(dana: Person, staff: User, zywave: Sandbox) -> None:
    zywave.control("POST", "settings", key_case="camel")
    dana.get(connected(dana, zywave))
    names = set(Profile.objects.values_list("name", flat=True))
    assert names == {p["name"] for p in zywave.profiles()}


def test_a_refused_profile_token_is_fetched_again_once(
    dana: Person, staff: User, zywave: Sandbox
) -> None:
    dana.get(connected(dana, zywave))
    target = zywave.profiles()[0]
    pick(dana, target["id"])
    Profile.objects.filter(zywave_id=target["id"]).update(profile_token="stale-token")
    conn = Connection.objects.get(user=staff)
    zywave.control("POST", "counters/reset")
    body = client_for(conn).get("/accounts/v2.0/account", {"$top": 1})
    assert body["items"]
    # Refused once with the stale token, the profile detail read once, then asked again.
    assert zywave.counters()["api"] == {
        "/accounts/v2.0/account:403": 1,
        f"/profiles/V2.0/Profile/B/{target['id']}:200": 1,
        "/accounts/v2.0/account:200": 1,
    }
    assert Profile.objects.get(zywave_id=target["id"]).profile_token == target["profile_token"]


def test_the_picker_needs_a_login(client: Client) -> None:
    assert client.get("/zywave/profiles/")["Location"].startswith("/login/")


def test_the_picker_sends_someone_never_connected_to_the_dashboard(olga: Person) -> None:
    assert olga.get("/zywave/profiles/")["Location"] == "/"


# --- Races with a disconnect (hardening item 4) -------------------------------------------------


class DuringTheProfileCall:
    """The real client, with `work` run after Zywave answered the profile call and before the
    portal stores anything: the interleaving of two requests (choose, disconnect) that no
    timing can produce reliably, produced exactly."""

    def __init__(self, client: ZywaveClient, work: Callable[[], object]) -> None:
        self.client, self.work = client, work

    def profile(self, type_code: str, zywave_id: str) -> dict[str, Any]:
        answer = self.client.profile(type_code, zywave_id)
        self.work()
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_disconnect_while_a_profile_is_fetched_brings_no_profile_token_back(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    second = zywave.profiles()[1]["id"]
    meanwhile = DuringTheProfileCall(
        client_for(conn), lambda: revoke_and_disconnect(conn, actor=staff)
    )
    with pytest.raises(ConnectionChanged):
        choose_profile(conn, meanwhile, second, actor=staff)  # type: ignore[arg-type]
    conn.refresh_from_db()
    assert conn.status == Connection.Status.DISCONNECTED
    assert conn.chosen_profile_id is None
    assert not Profile.objects.filter(connection=conn).exists()  # no row came back
    stored = Profile.objects.exclude(profile_token_fingerprint="").count()
    assert stored == 0


def test_a_profile_token_fetched_again_is_stored_only_for_the_profile_still_chosen(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    first = conn.chosen_profile
    assert first is not None
    other = zywave.profiles()[1]["id"]

    def person_chooses_another() -> None:
        choose_profile(Connection.objects.get(pk=conn.pk), client_for(conn), other, actor=staff)

    meanwhile = DuringTheProfileCall(client_for(conn), person_chooses_another)
    assert refetch_profile_token(conn, meanwhile) is None  # type: ignore[arg-type]
    first.refresh_from_db()
    assert first.profile_token is None and first.profile_token_fingerprint == ""
    conn.refresh_from_db()
    assert conn.chosen_profile is not None and conn.chosen_profile.zywave_id == other


class DuringTheListCall(DuringTheProfileCall):
    """The same, around the list call."""

    def profiles(self, type_code: str) -> list[dict[str, Any]]:
        answer = self.client.profiles(type_code)
        self.work()
        return answer


def test_a_profile_list_read_for_one_identity_is_not_stored_after_a_relink_to_another(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    kept = set(conn.profiles.values_list("pk", flat=True))

    def relinked_meanwhile() -> None:  # disconnected and connected again as someone else
        Connection.objects.filter(pk=conn.pk).update(zywave_subject="another-identity")

    meanwhile = DuringTheListCall(client_for(conn), relinked_meanwhile)
    with pytest.raises(ConnectionChanged):
        refresh_profiles(conn, meanwhile)  # type: ignore[arg-type]
    assert set(Profile.objects.filter(connection=conn).values_list("pk", flat=True)) == kept
