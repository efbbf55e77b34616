"""The mirror's rows: Zywave records converted to columns, each page upserted in one statement,
and what a full run did not see removed. Against the real database (SQLite, or PostgreSQL with
DATABASE_URL); Zywave's answers are not needed here (test_sync.py runs whole syncs)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection as db
from django.test.utils import CaptureQueriesContext

from integrations.client import MalformedResponse
from integrations.mirror import (
    account_row,
    contact_row,
    page_json,
    policy_row,
    remove_unseen,
    upsert,
)
from integrations.models import Account, Contact
from tests.conftest import connection

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# An account as the sandbox sends it (camelCase; zywave-api.md §4).
ACCOUNT = {
    "id": 5001,
    "name": "Acme Roofing",
    "classification": "Client",
    "linesOfBusiness": "Commercial Auto",
    "clientSize": "Small",
    "isActive": True,
    "isArchived": False,
    "numberOfEmployees": 42,
    "city": "Madison",
    "state": "WI",
    "updatedDateTime": "2024-04-30T08:15:00Z",
}


# --- Records to columns ----------------------------------------------------------------------


def test_an_account_record_becomes_its_mirror_columns() -> None:
    assert account_row(3, 9, ACCOUNT, NOW) == {
        "connection_id": 3,
        "zywave_id": "5001",
        "name": "Acme Roofing",
        "classification": "Client",
        "lines_of_business": "Commercial Auto",
        "client_size": "Small",
        "number_of_employees": 42,
        "is_active": True,
        "is_archived": False,
        "city": "Madison",
        "state": "WI",
        "updated_at_zywave": datetime(2024, 4, 30, 8, 15, tzinfo=UTC),
        "raw": ACCOUNT,
        "seen_in_run": 9,
        "synced_at": NOW,
        "changed_at": NOW,
        "deleted_at": None,
    }


def test_a_contact_record_becomes_its_mirror_columns() -> None:
    record = {
        "id": "c-1",
        "accountId": 5001,
        "firstName": "Ada",
        "lastName": "Ng",
        "emailAddress": "ada@acme.test",
        "title": "Owner",
        "workPhoneNumber": "555-0100",
        "mobilePhoneNumber": "555-0101",
        "isPrimaryContact": True,
        "isActive": True,
        "isArchived": True,
        "updatedDateTime": "2024-04-30T08:15:00Z",
    }
    row = contact_row(3, 9, record, NOW)
    skip = {"raw", "synced_at", "updated_at_zywave", "changed_at", "deleted_at"}
    assert {k: v for k, v in row.items() if k not in skip} == {
        "connection_id": 3,
        "zywave_id": "c-1",
        "account_zywave_id": "5001",
        "first_name": "Ada",
        "last_name": "Ng",
        "email": "ada@acme.test",
        "title": "Owner",
        "work_phone": "555-0100",
        "mobile_phone": "555-0101",
        "is_primary": True,
        "is_active": True,
        "is_archived": True,
        "seen_in_run": 9,
    }


def test_keys_are_read_in_any_case() -> None:
    row = account_row(1, 1, {"ID": 7, "Name": "Pascal", "ISARCHIVED": True}, NOW)
    assert (row["zywave_id"], row["name"], row["is_archived"]) == ("7", "Pascal", True)


def test_missing_values_get_each_columns_default() -> None:
    row = account_row(1, 1, {"id": 1}, NOW)
    assert (row["name"], row["is_active"], row["is_archived"]) == ("", True, False)
    assert (row["number_of_employees"], row["updated_at_zywave"]) == (None, None)


def test_lines_of_business_sent_as_a_list_are_joined() -> None:
    row = account_row(1, 1, {"id": 1, "linesOfBusiness": ["Auto", "Home"]}, NOW)
    assert row["lines_of_business"] == "Auto, Home"


def test_text_longer_than_its_column_is_cut_to_fit_but_never_an_id() -> None:
    row = account_row(1, 1, {"id": "x" * 64, "name": "n" * 300, "state": "s" * 60}, NOW)
    assert (len(row["zywave_id"]), len(row["name"]), len(row["state"])) == (64, 255, 50)


@pytest.mark.parametrize(
    ("sent", "read"), [(False, False), ("false", False), ("TRUE", True), ("yes", True), (0, True)]
)
def test_a_flag_is_a_boolean_or_true_and_false_as_text_else_its_default(
    sent: Any, read: bool
) -> None:
    assert account_row(1, 1, {"id": 1, "isActive": sent}, NOW)["is_active"] is read


@pytest.mark.parametrize(
    ("sent", "read"),
    [(12, 12), ("12", 12), (-5, -5), (2**31, None), ("12x", None), (True, None)],
)
def test_an_employee_count_is_an_int32_or_left_empty(sent: Any, read: int | None) -> None:
    assert account_row(1, 1, {"id": 1, "numberOfEmployees": sent}, NOW)["number_of_employees"] == (
        read
    )


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ("2024-04-30T08:15:00Z", datetime(2024, 4, 30, 8, 15, tzinfo=UTC)),
        ("2024-04-30T08:15:00", datetime(2024, 4, 30, 8, 15, tzinfo=UTC)),  # naive: UTC
        ("2024-13-45T99:99:99", None),
        ("yesterday", None),
        (1714464900, None),
    ],
)
def test_an_update_time_is_read_as_an_aware_datetime_or_left_empty(
    sent: Any, read: datetime | None
) -> None:
    assert account_row(1, 1, {"id": 1, "updatedDateTime": sent}, NOW)["updated_at_zywave"] == read


@pytest.mark.parametrize("record", [{}, {"id": ""}, {"id": None}, {"id": True}, {"id": {"v": 1}}])
def test_a_record_without_a_usable_id_is_refused(record: dict[str, Any]) -> None:
    with pytest.raises(MalformedResponse, match="without an id|unusable id"):
        account_row(1, 1, record, NOW)


UNUSABLE_IDS = ["a/b", "a b", "x" * 65, "..", ".", "1\n", "é", "a%2Fb", "<1>"]


@pytest.mark.parametrize("bad", UNUSABLE_IDS)
def test_an_id_that_cannot_be_a_key_or_a_path_is_refused_never_cut(bad: str) -> None:
    with pytest.raises(MalformedResponse, match="unusable id"):
        account_row(1, 1, {"id": bad}, NOW)


def test_an_id_of_64_safe_characters_is_kept_whole() -> None:
    kept = "A-1." + "z" * 58 + "_9"
    assert len(kept) == 64
    assert account_row(1, 1, {"id": kept}, NOW)["zywave_id"] == kept
    assert account_row(1, 1, {"id": 123}, NOW)["zywave_id"] == "123"


def test_a_contacts_unusable_account_id_leaves_it_unlinked() -> None:
    row = contact_row(1, 1, {"id": "c1", "accountId": "a/b"}, NOW)
    assert (row["zywave_id"], row["account_zywave_id"]) == ("c1", "")


@pytest.mark.django_db
def test_a_page_skips_and_counts_records_with_unusable_ids_and_writes_the_rest(
    staff: User,
) -> None:
    conn = connection(staff)
    long_a, long_b = "x" * 64 + "a", "x" * 64 + "b"  # would collide if cut to 64
    records = [{"id": "ok-1"}, {"id": "a/b"}, {"id": long_a}, {"id": long_b}, {"id": "ok-2"}]
    written = upsert("accounts", conn.pk, 1, records)
    assert written[:3] == (2, None, 3)
    assert written.changes == (("ok-1", "created"), ("ok-2", "created"))
    stored = set(Account.objects.filter(connection=conn).values_list("zywave_id", flat=True))
    assert stored == {"ok-1", "ok-2"}


# --- Upserting a page ------------------------------------------------------------------------


def page(*ids: int, **fields: Any) -> list[dict[str, Any]]:
    return [{**ACCOUNT, "id": zywave_id, **fields} for zywave_id in ids]


@pytest.mark.django_db
def test_a_page_is_stored_with_the_run_that_saw_it(staff: User) -> None:
    conn = connection(staff)
    upsert("accounts", conn.pk, 7, page(1, 2))
    stored = Account.objects.filter(connection=conn).order_by("zywave_id")
    assert [(a.zywave_id, a.name, a.seen_in_run) for a in stored] == [
        ("1", "Acme Roofing", 7),
        ("2", "Acme Roofing", 7),
    ]


@pytest.mark.django_db
def test_upsert_returns_the_rows_written_and_the_newest_update_time(staff: User) -> None:
    conn = connection(staff)
    records: list[dict[str, Any]] = [
        {"id": 1, "updatedDateTime": "2024-04-01T00:00:00Z"},
        {"id": 2, "updatedDateTime": "2024-04-03T00:00:00Z"},
        {"id": 3},
    ]
    assert upsert("accounts", conn.pk, 1, records)[:3] == (3, datetime(2024, 4, 3, tzinfo=UTC), 0)


@pytest.mark.django_db
def test_a_record_seen_again_is_updated_in_place(staff: User) -> None:
    conn = connection(staff)
    upsert("accounts", conn.pk, 1, page(1))
    first = Account.objects.get(connection=conn)
    upsert("accounts", conn.pk, 2, page(1, name="Acme Roofing & Siding", isArchived=True))
    again = Account.objects.get(connection=conn)
    assert again.pk == first.pk
    assert (again.name, again.is_archived, again.seen_in_run) == ("Acme Roofing & Siding", True, 2)
    assert again.raw["name"] == "Acme Roofing & Siding"


@pytest.mark.django_db
def test_a_page_reports_what_changed_and_how(staff: User) -> None:
    conn = connection(staff)
    upsert("accounts", conn.pk, 1, [*page(1), {"id": 2, "name": "Two"}, {"id": 3, "name": "3"}])
    written = upsert(
        "accounts",
        conn.pk,
        2,
        [*page(1), {"id": 2, "name": "Two", "isArchived": True}, {"id": 4, "name": "Four"}],
    )
    # 1 unchanged (not reported), 2 archived, 4 new; 3 not on the page at all.
    assert sorted(written.changes) == [("2", "archived"), ("4", "created")]
    stored = Account.all_rows.get(connection=conn, zywave_id="4").changed_at
    assert written.changed_at == stored


@pytest.mark.django_db
def test_the_same_id_under_another_connection_is_another_row(
    staff: User, other_staff: User
) -> None:
    mine, theirs = connection(staff), connection(other_staff)
    upsert("accounts", mine.pk, 1, page(1, name="Mine"))
    upsert("accounts", theirs.pk, 2, page(1, name="Theirs"))
    upsert("accounts", mine.pk, 3, page(1, name="Mine, renamed"))
    assert Account.objects.get(connection=theirs).name == "Theirs"
    assert Account.objects.get(connection=mine).name == "Mine, renamed"


@pytest.mark.django_db
def test_a_page_repeating_an_id_keeps_the_last_copy(staff: User) -> None:
    conn = connection(staff)
    written = upsert(
        "accounts", conn.pk, 1, [{"id": 1, "name": "first"}, {"id": 1, "name": "last"}]
    )
    assert (written.rows, written.changes) == (1, (("1", "created"),))
    assert Account.objects.get(connection=conn).name == "last"


@pytest.mark.django_db
def test_an_empty_page_writes_nothing(staff: User) -> None:
    conn = connection(staff)
    with CaptureQueriesContext(db) as queries:
        assert upsert("accounts", conn.pk, 1, [])[:3] == (0, None, 0)
    assert len(queries) == 0


@pytest.mark.django_db
def test_contacts_are_upserted_into_the_contact_mirror(staff: User) -> None:
    conn = connection(staff)
    upsert("contacts", conn.pk, 1, [{"id": "c1", "accountId": 5001, "lastName": "Ng"}])
    upsert("contacts", conn.pk, 2, [{"id": "c1", "accountId": 5001, "lastName": "Ode"}])
    contact = Contact.objects.get(connection=conn)
    assert (contact.account_zywave_id, contact.last_name, contact.seen_in_run) == ("5001", "Ode", 2)
    assert not Account.objects.exists()


@pytest.mark.django_db
@pytest.mark.skipif(
    db.vendor != "postgresql",
    reason="SQLite: Django's bulk upsert splits a page into batches of 999 parameters",
)
def test_a_full_page_is_written_in_one_statement(staff: User) -> None:
    conn = connection(staff)
    with CaptureQueriesContext(db) as queries:
        upsert("accounts", conn.pk, 1, page(*range(100)))
    assert len(queries) == 1
    assert Account.objects.filter(connection=conn).count() == 100


@pytest.mark.django_db
def test_an_integer_beyond_64_bits_in_a_record_is_mirrored_whole(staff: User) -> None:
    conn = connection(staff)
    big = 123456789012345678901234567890
    upsert("accounts", conn.pk, 1, [{"id": "A-BIG", "name": "Big", "policyCount": big}])
    account = Account.objects.get(connection=conn, zywave_id="A-BIG")
    assert account.name == "Big" and account.raw["policyCount"] == big


# --- The page as JSON (PostgreSQL's upsert parameter) ---------------------------------------


def test_page_json_writes_datetimes_in_iso_8601() -> None:
    when = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert json.loads(page_json([{"synced_at": when}])) == [{"synced_at": when.isoformat()}]


def test_page_json_falls_back_to_the_standard_encoder_for_an_integer_beyond_64_bits() -> None:
    # orjson refuses such an integer; the standard encoder writes it, datetimes included.
    rows = [{"raw": {"policyCount": 2**70}, "synced_at": NOW}]
    assert json.loads(page_json(rows)) == [
        {"raw": {"policyCount": 2**70}, "synced_at": NOW.isoformat()}
    ]


def test_page_json_refuses_a_value_neither_encoder_can_write() -> None:
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        page_json([{"raw": {1, 2}}])


# --- After a full run --------------------------------------------------------------------------


@pytest.mark.django_db
def test_what_a_full_run_did_not_see_is_removed(staff: User) -> None:
    conn = connection(staff)
    upsert("accounts", conn.pk, 1, page(1, 2))
    upsert("contacts", conn.pk, 1, [{"id": "c1"}, {"id": "c2"}])
    upsert("accounts", conn.pk, 2, page(2))
    upsert("contacts", conn.pk, 2, [{"id": "c2"}])
    remove_unseen(conn.pk, 2)
    assert list(Account.objects.values_list("zywave_id", flat=True)) == ["2"]
    assert list(Contact.objects.values_list("zywave_id", flat=True)) == ["c2"]


@pytest.mark.django_db
def test_removing_unseen_records_leaves_other_connections_alone(
    staff: User, other_staff: User
) -> None:
    mine, theirs = connection(staff), connection(other_staff)
    upsert("accounts", theirs.pk, 1, page(1))
    upsert("accounts", mine.pk, 2, page(1))
    remove_unseen(mine.pk, 2)
    assert Account.objects.filter(connection=theirs).exists()


def test_the_default_scopes_ask_for_every_registered_resource() -> None:
    """A resource added to the registry is asked for by default: a new connection syncs it."""
    from django.conf import settings

    from integrations.resources import resources

    default = set(settings.ZYWAVE_SCOPES)
    for resource in resources():
        assert resource.granted(default), resource.name


@pytest.mark.parametrize(
    ("premium", "stored"),
    [
        (1234.5, Decimal("1234.50")),
        ("99.999", Decimal("100.00")),  # rounded to the column's cents
        (123456789012.34, Decimal("123456789012.34")),  # 14 digits: the column's most
        (1e12, None),  # more whole digits than the column holds: no premium, not a failed sync
        (1e30, None),
        ("NaN", None),
        (True, None),
        ("twelve", None),
    ],
)
def test_a_premium_is_exact_or_left_out_never_a_failed_page(premium: Any, stored: Any) -> None:
    row = policy_row(1, 1, {"id": "p1", "premium": premium}, NOW)
    assert row["premium"] == stored
