"""The mirror through the API: pages, cursors, incremental pulls and tombstones."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrations import mirror
from integrations.models import Account, Contact
from tests.api.callers import problem, system_of
from tests.conftest import connection

pytestmark = pytest.mark.django_db


def records(count: int, prefix: str = "A", **extra: object) -> list[dict[str, object]]:
    return [
        {
            "id": f"{prefix}{n}",
            "name": f"Account {n:04}",
            "updatedDateTime": "2026-11-01T00:00:00Z",
            **extra,
        }
        for n in range(count)
    ]


def pull(system, url: str) -> list[dict]:  # type: ignore[no-untyped-def]
    seen = []
    while url:
        response = system.get(url)
        assert response.status_code == 200, response.content[:300]
        assert response["Content-Type"] == "application/json"
        body = response.json()
        seen.extend(body["results"])
        url = body["next"]
    return seen


def test_pages_walk_every_record_once(staff):
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, records(250))
    system = system_of(staff, "read")
    seen = pull(system, "/api/v1/accounts?page_size=100")
    assert sorted(r["id"] for r in seen) == sorted(f"A{n}" for n in range(250))
    first = seen[0]
    assert first["deleted"] is False and first["raw"]["id"] == first["id"]
    assert set(first) >= {"id", "name", "updated_at", "changed_at", "raw", "is_archived"}


def test_unchanged_rows_keep_changed_at_and_changes_come_back_alone(staff):
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, records(30))
    system = system_of(staff, "read")
    mark = pull(system, "/api/v1/accounts?page_size=500")[-1]["changed_at"]
    later = records(30)
    later[3]["name"] = "Renamed"
    mirror.upsert("accounts", conn.pk, 2, later)  # 29 unchanged, one changed
    changed = pull(system, f"/api/v1/accounts?updated_since={mark}")
    assert [r["id"] for r in changed] == ["A3"] and changed[0]["name"] == "Renamed"


def test_a_record_gone_at_zywave_is_a_tombstone_for_incremental_pulls_only(staff):
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, records(5))
    system = system_of(staff, "read")
    mark = pull(system, "/api/v1/accounts")[-1]["changed_at"]
    mirror.upsert("accounts", conn.pk, 2, records(4))  # A4 not seen by full run 2
    mirror.remove_unseen(conn.pk, 2)
    assert [r["id"] for r in pull(system, "/api/v1/accounts")] == ["A0", "A1", "A2", "A3"]
    (gone,) = pull(system, f"/api/v1/accounts?updated_since={mark}")
    assert gone == {"id": "A4", "deleted": True, "changed_at": gone["changed_at"]}
    assert gone["changed_at"] > mark
    tomb = Account.all_rows.get(zywave_id="A4")
    assert tomb.name == "" and tomb.raw == {}
    assert not Account.objects.filter(zywave_id="A4").exists()
    # Coming back at Zywave revives it, changed.
    mirror.upsert("accounts", conn.pk, 3, records(5))
    assert Account.objects.filter(zywave_id="A4").exists()


def test_old_tombstones_are_purged(staff, settings):
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, records(2))
    mirror.remove_unseen(conn.pk, 2)
    Account.all_rows.update(
        deleted_at=timezone.now() - timedelta(days=settings.ZYWAVE_TOMBSTONE_DAYS + 1)
    )
    mirror.remove_unseen(conn.pk, 3)
    assert not Account.all_rows.exists()


def test_account_detail_has_its_contacts(staff):
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, records(2))
    mirror.upsert(
        "contacts",
        conn.pk,
        1,
        [{"id": "C1", "accountId": "A1", "firstName": "Ann"}, {"id": "C2", "accountId": "A0"}],
    )
    body = system_of(staff, "read").get("/api/v1/accounts/A1").json()
    assert body["id"] == "A1" and [c["id"] for c in body["contacts"]] == ["C1"]
    assert body["contacts"][0]["first_name"] == "Ann"
    assert Contact.objects.count() == 2


def test_bad_parameters_are_problems(staff):
    connection(staff)
    system = system_of(staff, "read")
    for query in (
        "page_size=501",
        "page_size=x",
        "cursor=nonsense",
        "updated_since=yesterday",
        "status=odd",
    ):
        problem(system.get(f"/api/v1/accounts?{query}"), 400)


def test_filtered_incremental_pulls_still_get_every_tombstone(staff):
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, records(3))
    system = system_of(staff, "read")
    mark = pull(system, "/api/v1/accounts")[-1]["changed_at"]
    mirror.upsert("accounts", conn.pk, 2, records(2))
    mirror.remove_unseen(conn.pk, 2)  # A2 gone
    found = pull(system, f"/api/v1/accounts?updated_since={mark}&search=Account")
    assert [(r["id"], r["deleted"]) for r in found] == [("A2", True)]


def test_the_database_built_page_is_the_python_built_page(staff):
    """PostgreSQL builds a page in SQL; SQLite (and the account page) in Python: the same JSON,
    times in UTC with Z, decimals exact, tombstones alike."""
    import json

    import orjson
    from django.db import connection as db

    from integrations.api.records import API, pk_of
    from integrations.mirror import exact_decimal

    if db.vendor != "postgresql":
        pytest.skip("the SQL-built page is PostgreSQL's")
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, records(5))
    mirror.upsert(
        "policies",
        conn.pk,
        1,
        [
            {"id": "P1", "accountId": "A1", "premium": 1234.5, "expirationDate": "2027-01-01"},
            {"id": "P2", "premium": "99.999", "updatedDateTime": "2026-01-01T00:00:00.5Z"},
        ],
    )
    mirror.upsert("accounts", conn.pk, 2, records(4))
    mirror.remove_unseen(conn.pk, 2)
    for name in ("accounts", "policies"):
        resource = API[name]
        rows = resource.rows(conn.pk).order_by("changed_at", "pk")
        by_sql = json.loads(resource.page(rows, 100).records)
        in_python = resource.render(rows)
        for record in in_python:
            pk_of(record)
        expected = json.loads(
            orjson.dumps(in_python, option=orjson.OPT_UTC_Z, default=exact_decimal)
        )
        assert by_sql == expected and by_sql


def test_a_model_field_the_api_cannot_serve_is_named_at_start():
    from django.db import models
    from django.test.utils import isolate_apps

    from integrations.api.records import fields_of
    from integrations.models import MirrorRecord

    with isolate_apps("integrations"):

        class Odd(MirrorRecord):
            notes = models.TextField()

            class Meta(MirrorRecord.Meta):
                app_label = "integrations"
                constraints = []  # type: ignore[var-annotated]
                indexes = []  # type: ignore[var-annotated]

        with pytest.raises(TypeError, match=r"Odd\.notes: the API serves no TextField"):
            fields_of(Odd)
