"""The portal's registry (integrations/resources.py), proved with a fourth, test-only resource:
claims (tests/registry/claims: a model, its migration and one registry entry, nothing else),
synced through a real sandbox that serves them (sandbox/testapps/claims).

Not collected by the suite (not `test_*.py`): it needs the claims app installed, which cannot
happen inside a running process. tests/registry/test_fourth_resource.py runs it in a pytest
process of its own with `--ds=tests.registry.settings` and a database of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from integrations import mirror
from integrations.models import Connection, SyncRun
from integrations.resources import REGISTRY
from integrations.sync import sync_now
from tests.api.callers import System, system_of
from tests.conftest import Person, connection
from tests.integrations.flows import mirrored_total, sandbox_counts
from tests.registry.claims.models import Claim
from tests.sandbox.conftest import call
from tests.sandboxserver import Sandbox, start_sandbox, stop_sandbox

CLAIMS = "/claims/v2.0/claim"

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """tests.sandboxserver's `sandbox` (so `sandbox_clean` and `zywave` use it), started with the
    sandbox's test-only claims app."""
    var_dir = Path(tmp_path_factory.mktemp("sandbox-claims"))
    handle, process = start_sandbox(var_dir, env={"SANDBOX_EXTRA_APPS": "sandbox.testapps.claims"})
    try:
        handle.ensure_test_redirect_uri()
        handle.take_baseline()
        yield handle
    finally:
        stop_sandbox(process)


def sync(conn: Connection, full: bool) -> SyncRun:
    run = sync_now(conn, full=full)
    assert run is not None
    assert run.state == SyncRun.State.SUCCEEDED, run.error
    return run


def zywave_claims(sandbox: Sandbox, conn: Connection) -> dict[str, dict[str, Any]]:
    """Every claim of the connection's profile as the sandbox serves it (amounts as Decimals
    read from the JSON text), by Zywave id."""
    profile = conn.chosen_profile
    assert profile is not None
    token = str(sandbox.obtain_tokens()["access_token"])
    items: list[dict[str, Any]] = []
    while True:
        response = call(
            sandbox,
            token,
            CLAIMS,
            f"{profile.type_code} {profile.zywave_id}",
            **{"$skip": len(items)},
        )
        assert response.status_code == 200, response.text
        page = json.loads(response.text, parse_float=Decimal)
        items += page["items"]
        if not page["hasMoreResults"]:
            return {str(item["id"]): item for item in items}


def assert_mirrors(conn: Connection, zywave: dict[str, dict[str, Any]]) -> None:
    """The connection's live claims are exactly Zywave's, column by column."""
    mirrored = {claim.zywave_id: claim for claim in Claim.objects.filter(connection=conn)}
    assert len(mirrored) == len(zywave) > 100
    assert set(mirrored) == set(zywave)
    for zywave_id, record in zywave.items():
        claim = mirrored[zywave_id]
        assert claim.account_zywave_id == str(record["accountId"])
        assert claim.claim_number == record["claimNumber"]
        assert claim.loss_date == date.fromisoformat(record["lossDate"])
        # Exact: the same value and the same digits (a float on the way would show in either).
        assert claim.amount is not None and str(claim.amount) == str(record["amount"])
        assert (claim.is_active, claim.is_archived) == (record["isActive"], record["isArchived"])
        assert claim.updated_at_zywave == datetime.fromisoformat(record["updatedDateTime"])


def pull(system: System, url: str) -> list[dict[str, Any]]:
    """Every record of an API list, following `next`; numbers with a fraction as Decimals."""
    seen: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        response = system.get(next_url)
        assert response.status_code == 200, response.content[:300]
        body = json.loads(response.content, parse_float=Decimal)
        seen += body["results"]
        next_url = body["next"]
    return seen


def accounts_with_claims(zywave: dict[str, dict[str, Any]], count: int) -> list[str]:
    """`count` accounts that have claims, none archived: the ones the test changes."""
    accounts = sorted(
        {str(c["accountId"]) for c in zywave.values() if not c["isArchived"]}, key=int
    )
    assert len(accounts) >= count
    return accounts[:count]


def test_the_claims_entry_is_registered_after_the_portals_own() -> None:
    assert list(REGISTRY) == ["accounts", "contacts", "policies", "claims"]
    assert REGISTRY["claims"].model is Claim


def test_a_full_sync_mirrors_every_claim_exactly(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave)
    assert REGISTRY["claims"].granted(conn.scopes)
    run = sync(conn, full=True)
    counts = sandbox_counts(zywave, conn)
    claims = zywave_claims(zywave, conn)
    assert counts["claims"] == len(claims)
    assert_mirrors(conn, claims)
    assert run.records_done == mirrored_total(counts)
    assert (
        run.marks["claims"]
        == max(datetime.fromisoformat(c["updatedDateTime"]) for c in claims.values()).isoformat()
    )
    # The API serves them: every live claim, its decimal and date as Zywave sent them.
    served = {r["id"]: r for r in pull(system_of(staff, "read"), "/api/v1/claims?page_size=500")}
    assert set(served) == set(claims)
    for zywave_id, record in served.items():
        assert record["deleted"] is False
        assert record["amount"] == claims[zywave_id]["amount"]
        assert record["loss_date"] == claims[zywave_id]["lossDate"]
        assert record["account_id"] == str(claims[zywave_id]["accountId"])
        assert record["raw"]["claimNumber"] == record["claim_number"]


def test_an_incremental_sync_brings_only_changed_claims_and_a_full_one_their_deletions(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    sync(conn, full=True)
    before = zywave_claims(zywave, conn)
    changed_at = dict(Claim.objects.filter(connection=conn).values_list("zywave_id", "changed_at"))
    system = system_of(staff, "read")
    mark = pull(system, "/api/v1/claims?page_size=500")[-1]["changed_at"]
    assert conn.chosen_profile is not None
    profile_id = conn.chosen_profile.zywave_id
    archived, deleted = accounts_with_claims(before, 2)
    # The control API changes no claim by itself: archiving an account archives its claims
    # (bumping their updatedDateTime), deleting one deletes its claims with it.
    zywave.control("POST", "accounts/archive", profile_id=profile_id, ids=[archived], count=1)
    zywave.control("POST", "accounts/delete", profile_id=profile_id, ids=[deleted], count=1)
    after = zywave_claims(zywave, conn)
    changed = {i for i, c in after.items() if c != before[i]}
    gone = set(before) - set(after)
    assert changed == {i for i, c in before.items() if str(c["accountId"]) == archived} != set()
    assert gone == {i for i, c in before.items() if str(c["accountId"]) == deleted} != set()

    zywave.control("POST", "counters/reset")
    incremental = sync(conn, full=False)
    assert not incremental.full
    # Asked with the mark: only what changed since came back, not every claim again.
    assert incremental.records_done < len(before) // 4
    now_at = dict(Claim.objects.filter(connection=conn).values_list("zywave_id", "changed_at"))
    assert {i for i in now_at if now_at[i] != changed_at[i]} == changed
    for claim in Claim.objects.filter(connection=conn, zywave_id__in=changed):
        assert claim.is_archived and not claim.is_active
    # An incremental run cannot see a deletion: the deleted account's claims are still live.
    assert gone <= set(now_at)
    since = pull(system, f"/api/v1/claims?updated_since={mark}")
    assert {r["id"] for r in since} == changed
    assert all(r["is_archived"] and not r["deleted"] for r in since)

    mark = max(r["changed_at"] for r in since)
    full = sync(conn, full=True)
    assert full.full
    assert_mirrors(conn, after)
    # (django-stubs types the base's manager with the base's fields only)
    tombstones = Claim.all_rows.filter(connection=conn, deleted_at__isnull=False)  # type: ignore[misc]
    assert set(tombstones.values_list("zywave_id", flat=True)) == gone
    assert all(t.raw == {} and t.amount is None and t.loss_date is None for t in tombstones)
    since = pull(system, f"/api/v1/claims?updated_since={mark}")
    assert {r["id"] for r in since} == gone
    assert all(r == {"id": r["id"], "deleted": True, "changed_at": r["changed_at"]} for r in since)
    assert all(r["changed_at"] > mark for r in since)


def test_the_api_schema_describes_the_claims_endpoint_by_rule(client: Any) -> None:
    schema = client.get("/api/schema/?format=json").json()
    assert "/api/v1/claims" in schema["paths"]
    assert list(schema["components"]["schemas"]["Claim"]["properties"]) == [
        "id", "account_id", "claim_number", "loss_date", "amount", "is_active", "is_archived",
        "updated_at", "changed_at", "deleted", "raw",
    ]  # fmt: skip


# --- What still names the portal's own resources instead of reading the registry --------------
# Strict: when the portal reads the registry there too, these pass and say to drop the mark.


def one_claim(conn: Connection) -> None:
    record = {"id": 7, "accountId": 1, "claimNumber": "CL-7", "lossDate": "2026-11-02",
              "amount": 1234.5, "updatedDateTime": "2026-11-02T00:00:00Z"}  # fmt: skip
    mirror.upsert("claims", conn.pk, 1, [record])
    assert Claim.objects.get(connection=conn).amount == Decimal("1234.50")


def test_disconnecting_deletes_the_mirrored_claims_too(staff: User) -> None:
    conn = connection(staff)
    one_claim(conn)
    conn.clear_mirror()
    assert not Claim.all_rows.filter(connection=conn).exists()  # type: ignore[misc]


def test_the_admin_connection_page_works_with_a_resource_that_has_no_admin(
    staff: User, root: Person
) -> None:
    """Claims have an entry and no ModelAdmin: the page links the resources it can."""
    conn = connection(staff)
    one_claim(conn)
    page = root.get(f"/admin/integrations/connection/{conn.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "mirrored policies" in text and "mirrored claims" not in text
