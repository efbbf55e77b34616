"""Profile ids go into a request header (`Profile: B {id}`) and a URL path: ids with CR/LF, NUL,
10 kB or non-ASCII, whether a person submits them or Zywave lists them, are refused and never
reach Zywave."""

from __future__ import annotations

import json
from typing import Any

import pytest

from integrations.models import Connection, Profile
from tests.conftest import Person, connection
from tests.integrations.flows import inject_fault
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db

BAD_IDS = [
    "1\r\nX-Injected: yes",
    "1\nX-Injected: yes",
    "1\rX",
    "1\x00",
    "\x00",
    "9" * 10_000,
    "x" * 65,
    "pr\u00f3file",
    "\u202e1",
    "1 2",
    "../1",
    "1/../../accounts/v2.0/account",
    "1?$top=1",
    "1%0d%0aX-Injected:%20yes",
    "",
]


def api_requests(sandbox: Sandbox) -> dict[str, int]:
    return dict(sandbox.counters()["api"])


def test_a_submitted_bad_profile_id_is_refused_without_a_call_to_zywave(
    dana: Person, zywave: Sandbox
) -> None:
    conn = connection(dana.user, zywave)
    chosen = conn.chosen_profile_id
    before = api_requests(zywave)
    statuses = {}
    for bad in BAD_IDS:
        for extra in ({}, {"confirm": "yes"}):
            response = dana.post("/zywave/profiles/", {"action": "choose", "profile": bad, **extra})
            statuses[(bad[:20], bool(extra))] = response.status_code
    assert set(statuses.values()) == {302}, statuses
    assert api_requests(zywave) == before
    assert Connection.objects.get(pk=conn.pk).chosen_profile_id == chosen


def test_a_refused_id_gets_a_plain_message(dana: Person, zywave: Sandbox) -> None:
    connection(dana.user, zywave)
    response = dana.post(
        "/zywave/profiles/", {"action": "choose", "profile": BAD_IDS[0]}, follow=True
    )
    assert b"not one Zywave lists for your account" in response.content
    assert b"X-Injected" not in response.content


def planted(sandbox: Sandbox, good: dict[str, Any], bad_ids: list[str], **fields: str) -> None:
    """Zywave's profile list answers with the bad ids besides one real profile."""
    items = [{"id": bad, "typeCode": "B", "name": "Bad", **fields} for bad in bad_ids]
    items.append({"id": good["id"], "typeCode": "B", "name": good["name"]})
    inject_fault(
        sandbox,
        r"^/profiles/V2\.0/Profile/B$",
        status=200,
        body=json.dumps({"items": items, "totalCount": len(items), "hasMoreResults": False}),
        content_type="application/json",
    )


def test_bad_ids_listed_by_zywave_are_never_stored(dana: Person, zywave: Sandbox) -> None:
    conn = connection(dana.user, zywave)
    good = zywave.profiles()[0]
    # Before: the three profiles Zywave lists for agent@example.com, the first one chosen.
    before = dict(conn.profiles.values_list("zywave_id", "pk"))
    assert set(before) == {p["id"] for p in zywave.profiles()} and len(before) == 3
    assert conn.chosen_profile_id == before[good["id"]]
    planted(zywave, good, BAD_IDS)
    response = dana.post("/zywave/profiles/", {"action": "refresh"})
    assert response.status_code == 302
    after = Connection.objects.get(pk=conn.pk)
    # The refresh was read, not refused: the two profiles Zywave no longer lists are gone, no
    # bad id was stored, and the one good profile is kept as the same row, still chosen.
    stored = list(after.profiles.order_by("pk").values_list("pk", "zywave_id"))
    assert stored == [(before[good["id"]], good["id"])]
    assert after.chosen_profile_id == before[good["id"]]
    assert not Profile.objects.exclude(pk=before[good["id"]]).filter(connection=after).exists()


def test_bad_ids_listed_by_zywave_send_no_header_or_path_upstream(
    dana: Person, zywave: Sandbox
) -> None:
    connection(dana.user, zywave)
    good = zywave.profiles()[0]
    planted(zywave, good, BAD_IDS)
    dana.post("/zywave/profiles/", {"action": "refresh"})
    before = api_requests(zywave)
    for bad in BAD_IDS:
        dana.post("/zywave/profiles/", {"action": "choose", "profile": bad, "confirm": "yes"})
    after = api_requests(zywave)
    assert after == before
    assert not [path for path in after if "Injected" in path or "\r" in path or "\n" in path]


def test_control_characters_in_listed_names_do_not_break_the_picker(
    dana: Person, zywave: Sandbox
) -> None:
    """Names are shown, not sent: CR/LF, NUL and 10 kB of text in them still give a page."""
    conn = connection(dana.user, zywave)
    good = zywave.profiles()[0]
    planted(zywave, good, ["ok-id-1"], organizationName="Org\r\nX: y\x00" + "z" * 10_000)
    response = dana.post("/zywave/profiles/", {"action": "refresh"}, follow=True)
    assert response.status_code == 200
    names = Connection.objects.get(pk=conn.pk).profiles.values_list("organization", flat=True)
    assert all("\x00" not in name and len(name) <= 255 for name in names)
