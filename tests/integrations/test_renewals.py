"""The Renewals page (integrations/renewals.py): the window, what is left out, the order, the
filters, each row's account and primary contact, paging, constant queries, the CSV export,
a grant without policies, and another person's book never showing."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.db import connection as db
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations.mirror import upsert
from integrations.models import Account, Connection, Contact, Policy
from tests.conftest import SCOPES, Person, connection

pytestmark = pytest.mark.django_db

URL = "/zywave/renewals/"
RUN = 1


def book(user: User) -> Connection:
    """`user`'s connection, granted policies."""
    return connection(user, granted_scopes=f"{SCOPES} api.policies:read")


def record(
    zywave_id: str,
    expires_in: int,
    *,
    number: str | None = None,
    line: str = "Property",
    carrier: str = "Acme Mutual",
    premium: Any = "1000.00",
    account: str = "A1",
    active: bool = True,
    archived: bool = False,
    today: date | None = None,
) -> dict[str, Any]:
    """A Zywave policy record expiring `expires_in` days from today (the portal's today)."""
    expires = (today or timezone.localdate()) + timedelta(days=expires_in)
    return {
        "id": zywave_id,
        "accountId": account,
        "policyNumber": number or f"POL-{zywave_id}",
        "lineOfBusiness": line,
        "carrierName": carrier,
        "effectiveDate": (expires - timedelta(days=365)).isoformat(),
        "expirationDate": expires.isoformat(),
        "premium": premium,
        "isActive": active,
        "isArchived": archived,
        "updatedDateTime": "2026-11-01T10:00:00Z",
    }


def policies(conn: Connection, *records: dict[str, Any]) -> None:
    upsert("policies", conn.pk, RUN, list(records))


def account(conn: Connection, zywave_id: str, name: str) -> None:
    upsert("accounts", conn.pk, RUN, [{"id": zywave_id, "name": name}])


def contact(
    conn: Connection, zywave_id: str, account_id: str, first: str, last: str, **more: Any
) -> None:
    fields = {"emailAddress": f"{first.lower()}@client.test", "isPrimaryContact": True, **more}
    upsert(
        "contacts",
        conn.pk,
        RUN,
        [
            {
                "id": zywave_id,
                "accountId": account_id,
                "firstName": first,
                "lastName": last,
                **fields,
            }
        ],
    )


def listed(person: Person, **params: str) -> list[str]:
    """The policy numbers on the page, in order."""
    response = person.get(URL, params)
    assert response.status_code == 200
    return [p.policy_number for p in response.context["page"].object_list]


def exported(person: Person, **params: str) -> list[list[str]]:
    response = person.get(URL, {**params, "format": "csv"})
    assert response.status_code == 200
    assert response.streaming
    text = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    return list(csv.reader(io.StringIO(text)))


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


# --- Who may see it -------------------------------------------------------------------------


def test_the_page_sends_anonymous_visitors_to_the_login(client: Client) -> None:
    response = client.get(URL)
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")


def test_the_page_refuses_a_post(dana: Person) -> None:
    book(dana.user)
    assert dana.post(URL).status_code == 405


def test_the_page_sends_someone_never_connected_to_the_dashboard(olga: Person) -> None:
    response = olga.get(URL)
    assert response["Location"] == "/"
    assert messages_of(response) == ["Connect your Zywave account first."]


def test_another_persons_policies_are_never_shown(dana: Person, omar: Person) -> None:
    mine, theirs = book(dana.user), book(omar.user)
    policies(mine, record("1", 5, number="DANA-1"))
    # The same Zywave ids, account and contact under the other person's connection.
    policies(theirs, record("1", 5, number="OMAR-1", carrier="Omar Carrier", line="Omar Line"))
    account(theirs, "A1", "Omar's client")
    contact(theirs, "c1", "A1", "Olive", "Omarson")
    response = dana.get(URL, {"days": "90"})
    page = response.content.decode()
    assert [p.policy_number for p in response.context["page"].object_list] == ["DANA-1"]
    assert response.context["carriers"] == ["Acme Mutual"]
    assert response.context["lines"] == ["Property"]
    for theirs_only in ("OMAR-1", "Omar Carrier", "Omar Line", "Omar's client", "Omarson"):
        assert theirs_only not in page
    assert [row[0] for row in exported(dana, days="90")[1:]] == ["DANA-1"]
    assert listed(dana, carrier="Omar Carrier") == []


def test_a_grant_without_policies_says_they_are_not_synced_and_a_reconnect_grants_them(
    dana: Person,
) -> None:
    conn = connection(dana.user)  # the cast's scopes: accounts, no policies
    policies(conn, record("1", 5))  # left from an earlier grant, say: not the point here
    response = dana.get(URL)
    page = response.content.decode()
    assert response.status_code == 200
    assert "Policies are not synced" in page and "Reconnect Zywave to grant it" in page
    assert 'action="/oauth/login/zywave/"' in page
    assert "<table" not in page


def test_a_grant_without_policies_when_the_portal_does_not_ask_for_them_says_so(
    dana: Person, settings: Any
) -> None:
    connection(dana.user)
    settings.ZYWAVE_SCOPES = SCOPES.split()
    page = dana.get(URL).content.decode()
    assert "the portal does not ask Zywave for them" in page
    assert 'action="/oauth/login/zywave/"' not in page


# --- The window ----------------------------------------------------------------------------


@pytest.fixture
def spread(dana: Person) -> Connection:
    """Policies expiring yesterday, today and around each window's end."""
    conn = book(dana.user)
    policies(
        conn, *(record(f"p{n}", n, number=f"D{n:+03d}") for n in (-1, 0, 30, 31, 60, 61, 90, 91))
    )
    return conn


@pytest.mark.usefixtures("spread")
def test_the_default_window_is_30_days_today_and_its_last_day_included(dana: Person) -> None:
    assert listed(dana) == ["D+00", "D+30"]


@pytest.mark.usefixtures("spread")
@pytest.mark.parametrize(
    ("days", "numbers"),
    [
        ("30", ["D+00", "D+30"]),
        ("60", ["D+00", "D+30", "D+31", "D+60"]),
        ("90", ["D+00", "D+30", "D+31", "D+60", "D+61", "D+90"]),
    ],
)
def test_a_window_of_30_60_or_90_days_may_be_chosen(
    dana: Person, days: str, numbers: list[str]
) -> None:
    assert listed(dana, days=days) == numbers
    assert dana.get(URL, {"days": days}).context["days"] == int(days)


@pytest.mark.usefixtures("spread")
@pytest.mark.parametrize("days", ["", "45", "365", "0", "-30", "abc", "30.0", " 60", "9" * 40])
def test_any_other_window_falls_back_to_30_days(dana: Person, days: str) -> None:
    assert listed(dana, days=days) == ["D+00", "D+30"]


@pytest.mark.usefixtures("spread")
def test_a_policy_that_expired_yesterday_is_not_a_renewal(dana: Person) -> None:
    assert "D-01" not in listed(dana, days="90")


def test_today_is_the_portals_local_date(dana: Person, settings: Any) -> None:
    # UTC+14 and UTC-11: 25 hours apart, so their dates always differ.
    ahead, behind = "Pacific/Kiritimati", "Pacific/Pago_Pago"
    behind_today = datetime.now(ZoneInfo(behind)).date()
    policies(book(dana.user), record("1", 0, number="BEHIND-TODAY", today=behind_today))
    settings.TIME_ZONE = behind
    assert listed(dana) == ["BEHIND-TODAY"]
    settings.TIME_ZONE = ahead  # there, that day has already passed
    assert listed(dana) == []


def test_inactive_and_archived_policies_are_left_out(dana: Person) -> None:
    policies(
        book(dana.user),
        record("1", 5, number="LIVE"),
        record("2", 5, number="INACTIVE", active=False),
        record("3", 5, number="ARCHIVED", archived=True),
    )
    assert listed(dana) == ["LIVE"]
    assert [row[0] for row in exported(dana)[1:]] == ["LIVE"]


def test_tombstones_are_never_shown(dana: Person) -> None:
    conn = book(dana.user)
    policies(conn, record("1", 5, number="LIVE"), record("2", 5, number="GONE", carrier="Gone Co"))
    # A tombstone as the API keeps it, dates and all (mirror.tombstone clears them too).
    Policy.all_rows.filter(connection=conn, zywave_id="2").update(deleted_at=timezone.now())
    response = dana.get(URL)
    assert [p.policy_number for p in response.context["page"].object_list] == ["LIVE"]
    assert response.context["carriers"] == ["Acme Mutual"]
    assert [row[0] for row in exported(dana)[1:]] == ["LIVE"]


def test_policies_are_sorted_by_expiration_date_then_policy_number(dana: Person) -> None:
    policies(
        book(dana.user),
        record("1", 20, number="B-200"),
        record("2", 3, number="Z-900"),
        record("3", 20, number="A-100"),
        record("4", 11, number="M-500"),
    )
    assert listed(dana) == ["Z-900", "M-500", "A-100", "B-200"]


# --- The filters ---------------------------------------------------------------------------


@pytest.fixture
def mixed(dana: Person) -> Connection:
    conn = book(dana.user)
    policies(
        conn,
        record("1", 5, number="P1", line="Property", carrier="Acme Mutual"),
        record("2", 6, number="P2", line="Auto", carrier="Acme Mutual"),
        record("3", 7, number="P3", line="Property", carrier="Beacon Insurance"),
        record("4", 8, number="P4", line="Auto", carrier="Beacon Insurance"),
        record("5", 80, number="P5", line="Cyber", carrier="Far Away Re"),
    )
    return conn


@pytest.mark.usefixtures("mixed")
def test_the_list_filters_by_line_of_business(dana: Person) -> None:
    assert listed(dana, line="Auto") == ["P2", "P4"]


@pytest.mark.usefixtures("mixed")
def test_the_list_filters_by_carrier(dana: Person) -> None:
    assert listed(dana, carrier="Beacon Insurance") == ["P3", "P4"]


@pytest.mark.usefixtures("mixed")
def test_both_filters_together(dana: Person) -> None:
    assert listed(dana, line="Property", carrier="Beacon Insurance") == ["P3"]
    assert listed(dana, line="Cyber", carrier="Far Away Re") == []
    assert listed(dana, line="Cyber", carrier="Far Away Re", days="90") == ["P5"]


@pytest.mark.usefixtures("mixed")
def test_the_select_lists_hold_the_lines_and_carriers_of_the_window(dana: Person) -> None:
    context = dana.get(URL, {"carrier": "Acme Mutual"}).context
    # Of the whole window, whatever is chosen; not of the policies beyond it.
    assert context["lines"] == ["Auto", "Property"]
    assert context["carriers"] == ["Acme Mutual", "Beacon Insurance"]
    wider = dana.get(URL, {"days": "90"}).context
    assert wider["lines"] == ["Auto", "Cyber", "Property"]
    assert "Far Away Re" in wider["carriers"]


@pytest.mark.usefixtures("mixed")
def test_the_chosen_values_stay_selected(dana: Person) -> None:
    page = dana.get(URL, {"days": "60", "line": "Auto", "carrier": "Beacon Insurance"})
    html = page.content.decode()
    assert '<option value="60" selected>' in html
    assert "<option selected>Auto</option>" in html
    assert "<option selected>Beacon Insurance</option>" in html


@pytest.mark.usefixtures("mixed")
def test_a_nul_in_a_filter_is_dropped_not_sent_to_the_database(dana: Person) -> None:
    assert listed(dana, line="Au\x00to") == ["P2", "P4"]


# --- Each row ------------------------------------------------------------------------------


def test_each_row_shows_its_account_linked_and_the_primary_contact(dana: Person) -> None:
    conn = book(dana.user)
    policies(conn, record("1", 5, number="P1", account="A1", premium="1234.5"))
    account(conn, "A1", "Acme Roofing")
    contact(conn, "c1", "A1", "Ada", "Ng")
    contact(conn, "c2", "A1", "Bo", "Other", isPrimaryContact=False)
    contact(conn, "c3", "A2", "Cy", "Elsewhere")  # primary, of another account
    page = dana.get(URL).content.decode()
    assert '<a href="/zywave/accounts/A1/">Acme Roofing</a>' in page
    assert "Ada Ng" in page and 'href="mailto:ada@client.test"' in page
    assert "Bo Other" not in page and "Cy Elsewhere" not in page


def test_a_row_shows_its_dates_days_left_and_premium_with_two_places_and_grouping(
    dana: Person,
) -> None:
    conn = book(dana.user)
    policies(
        conn,
        record("1", 0, number="P1", premium="1234.5"),
        record("2", 7, number="P2", premium="123456789012.34"),
    )
    page = dana.get(URL).content.decode()
    expires = timezone.localdate() + timedelta(days=7)
    assert f"{expires:%b} {expires.day}, {expires.year}" in page
    assert '<td class="number">today</td>' in page and '<td class="number">7</td>' in page
    assert "$1,234.50" in page and "$123,456,789,012.34" in page


def test_a_policy_whose_account_is_not_mirrored_shows_its_id_unlinked(dana: Person) -> None:
    policies(book(dana.user), record("1", 5, account="A404"))
    page = dana.get(URL).content.decode()
    assert "A404" in page and "/zywave/accounts/A404/" not in page
    assert '<span class="muted">none</span>' in page


def test_a_tombstoned_account_or_contact_is_not_shown_with_the_policy(dana: Person) -> None:
    conn = book(dana.user)
    policies(conn, record("1", 5, account="A1"))
    account(conn, "A1", "Gone Roofing")
    contact(conn, "c1", "A1", "Gone", "Person")
    Account.all_rows.filter(connection=conn).update(deleted_at=timezone.now())
    Contact.all_rows.filter(connection=conn).update(deleted_at=timezone.now())
    page = dana.get(URL).content.decode()
    assert "Gone Roofing" not in page and "Gone Person" not in page


def test_an_unarchived_primary_contact_comes_before_an_archived_one(dana: Person) -> None:
    conn = book(dana.user)
    policies(conn, record("1", 5, account="A1"))
    contact(conn, "c1", "A1", "Aaron", "Archived", isArchived=True)
    contact(conn, "c2", "A1", "Zoe", "Current")
    page = dana.get(URL).content.decode()
    assert "Zoe Current" in page and "Aaron Archived" not in page


# --- Paging and queries ----------------------------------------------------------------------


def fill(conn: Connection, n: int, start: int = 0) -> None:
    """`n` policies, each with its own account and primary contact."""
    ids = range(start, start + n)
    upsert("accounts", conn.pk, RUN, [{"id": f"A{i}", "name": f"Account {i}"} for i in ids])
    upsert(
        "contacts",
        conn.pk,
        RUN,
        [
            {"id": f"c{i}", "accountId": f"A{i}", "lastName": f"L{i}", "isPrimaryContact": True}
            for i in ids
        ],
    )
    upsert(
        "policies",
        conn.pk,
        RUN,
        [
            record(f"{i}", i % 30, number=f"N{i:04d}", account=f"A{i}", carrier=f"C{i % 7}")
            for i in ids
        ],
    )


def test_the_list_pages_by_fifty_and_the_next_link_keeps_the_choices(dana: Person) -> None:
    fill(book(dana.user), 60)
    first, second = listed(dana, days="60"), listed(dana, days="60", page="2")
    assert len(first) == 50 and len(second) == 10
    assert not set(first) & set(second)
    page = dana.get(URL, {"days": "60", "carrier": "C1"}).content.decode()
    assert "Page 1 of 1" in page
    page = dana.get(URL, {"days": "60", "page": "1"}).content.decode()
    assert 'href="?days=60&amp;page=2">Next</a>' in page
    assert 'href="?days=60&amp;format=csv"' in page


def test_the_page_runs_the_same_queries_for_5_and_200_policies(dana: Person) -> None:
    conn = book(dana.user)
    fill(conn, 5)
    with CaptureQueriesContext(db) as small:
        assert dana.get(URL, {"days": "90"}).status_code == 200
    fill(conn, 195, start=5)
    with CaptureQueriesContext(db) as large:
        response = dana.get(URL, {"days": "90"})
    assert response.status_code == 200
    assert len(response.context["page"].object_list) == 50
    assert len(small) == len(large), [q["sql"] for q in large.captured_queries]
    assert response.content.decode().count('<a href="/zywave/accounts/A') == 50


def test_the_csv_runs_the_same_queries_for_5_and_200_policies(dana: Person) -> None:
    conn = book(dana.user)
    fill(conn, 5)
    with CaptureQueriesContext(db) as small:
        assert len(exported(dana)) == 1 + 5
    fill(conn, 195, start=5)
    with CaptureQueriesContext(db) as large:
        assert len(exported(dana)) == 1 + 200
    assert len(small) == len(large)


# --- The CSV ---------------------------------------------------------------------------------

HEADER = [
    "policy number",
    "line of business",
    "carrier",
    "effective date",
    "expiration date",
    "days left",
    "premium",
    "account id",
    "account",
    "primary contact",
    "primary contact email",
]


def test_the_csv_has_a_header_and_a_row_per_policy_in_the_pages_order(dana: Person) -> None:
    conn = book(dana.user)
    policies(
        conn,
        record("1", 9, number="P-B", premium="1234.50", line="Auto"),
        record("2", 2, number="P-A", premium="99", account="A2"),
    )
    account(conn, "A1", "Acme Roofing")
    contact(conn, "c1", "A1", "Ada", "Ng")
    today = timezone.localdate()
    rows = exported(dana)
    assert rows[0] == HEADER
    expires = today + timedelta(days=9)
    assert rows[1:] == [
        [
            "P-A",
            "Property",
            "Acme Mutual",
            str(today + timedelta(days=2 - 365)),
            str(today + timedelta(days=2)),
            "2",
            "99.00",
            "A2",
            "",
            "",
            "",
        ],
        [
            "P-B",
            "Auto",
            "Acme Mutual",
            str(expires - timedelta(days=365)),
            str(expires),
            "9",
            "1234.50",
            "A1",
            "Acme Roofing",
            "Ada Ng",
            "ada@client.test",
        ],
    ]


def test_the_csv_is_a_download_named_for_the_window(dana: Person) -> None:
    book(dana.user)
    response = dana.get(URL, {"days": "60", "format": "csv"})
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    stamp = timezone.localdate().strftime("%Y%m%d")
    assert response["Content-Disposition"] == (
        f'attachment; filename="renewals-60-days-{stamp}.csv"'
    )


def test_the_csv_holds_every_row_of_the_filtered_window_not_one_page(dana: Person) -> None:
    fill(book(dana.user), 120)
    rows = exported(dana, days="90", carrier="C3")[1:]
    assert len(rows) == len([i for i in range(120) if i % 7 == 3])
    assert {row[2] for row in rows} == {"C3"}
    assert len(exported(dana, days="90")) == 1 + 120


def test_the_csv_premiums_are_exact_decimals(dana: Person) -> None:
    policies(
        book(dana.user),
        record("1", 1, number="P1", premium="1234.5"),
        record("2", 2, number="P2", premium="123456789012.34"),
        record("3", 3, number="P3", premium=0.1),  # a JSON number, read as its text
        record("4", 4, number="P4", premium=None),
    )
    assert [row[6] for row in exported(dana)[1:]] == ["1234.50", "123456789012.34", "0.10", ""]


def test_the_csv_neutralises_cells_a_spreadsheet_would_run_as_formulas(dana: Person) -> None:
    conn = book(dana.user)
    policies(
        conn,
        record(
            "1",
            5,
            number='=HYPERLINK("http://evil.example")',
            line="+SUM(A1)",
            carrier="-2+3",
            account="A1",
            premium="-150.00",
        ),
    )
    account(conn, "A1", "@cmd")
    contact(conn, "c1", "A1", "=Eve", "X", emailAddress="+eve@client.test")
    (row,) = exported(dana)[1:]
    assert row[0] == '\'=HYPERLINK("http://evil.example")'
    assert row[1] == "'+SUM(A1)"
    assert row[2] == "'-2+3"
    assert row[8] == "'@cmd"
    assert row[9] == "'=Eve X"
    assert row[10] == "'+eve@client.test"
    # A number the portal wrote itself stays a number.
    assert row[6] == "-150.00"
