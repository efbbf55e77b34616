"""A 404 for one record after a deletion at Zywave is a deletion, also when the records the
portal probes (to tell a deleted record from a missing route for one record) were deleted in
the same batch. Found by the webhook drills (tests/drills/hooks.py): an account deleted with its
contacts, or two accounts deleted together, made the probe find nothing, so the portal took the
route for one record for missing, queued a sync for every notification of that resource for a
day, and left the deleted records live (an incremental sync does not see deletions)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache

from integrations import hooks
from integrations.models import Account, Connection, SyncRun
from integrations.sync import sync_now
from tests.conftest import connection
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db


@pytest.fixture
def mirrored(staff: User, zywave: Sandbox) -> Connection:
    conn = connection(staff, zywave)
    sync_now(conn)
    cache.delete(hooks._detail_ok_key(conn.pk, "accounts"))
    cache.delete(hooks._no_detail_key(conn.pk, "accounts"))
    return conn


def live_ids(conn: Connection) -> list[str]:
    """The mirror's live accounts in the order the probe takes them (the model's ordering)."""
    return list(
        Account.objects.filter(connection=conn)
        .order_by("name", "zywave_id")
        .values_list("zywave_id", flat=True)
    )


def delete_at_zywave(zywave: Sandbox, conn: Connection, ids: list[str]) -> None:
    assert conn.chosen_profile is not None
    deleted = zywave.control(
        "POST",
        "accounts/delete",
        profile_id=conn.chosen_profile.zywave_id,
        ids=[int(i) for i in ids],
    )["ids"]
    assert sorted(map(str, deleted)) == sorted(ids)


def test_a_deletion_after_a_found_record_is_a_tombstone_whatever_else_was_deleted(
    mirrored: Connection, zywave: Sandbox
) -> None:
    ids = live_ids(mirrored)
    # A notification about a record Zywave has: the route for one account answers.
    assert hooks.refetch(mirrored.pk, "accounts", ids[-1]) == "unchanged"
    # Then the first live accounts are deleted together, the probe's choices among them.
    delete_at_zywave(zywave, mirrored, ids[: hooks.PROBES + 1])
    assert hooks.refetch(mirrored.pk, "accounts", ids[0]) == "deleted"
    assert Account.all_rows.get(connection=mirrored, zywave_id=ids[0]).is_tombstone
    assert not SyncRun.objects.filter(connection=mirrored, trigger="webhook").exists()
    assert hooks.refetch(mirrored.pk, "accounts", ids[1]) == "deleted"


def test_with_no_record_found_yet_a_deleted_probe_is_not_taken_for_a_missing_route(
    mirrored: Connection, zywave: Sandbox
) -> None:
    ids = live_ids(mirrored)
    # The account notified and the probe's first choice deleted in one batch; the next live
    # one is still at Zywave, so the route answers and the 404 stands.
    delete_at_zywave(zywave, mirrored, ids[:2])
    assert hooks.refetch(mirrored.pk, "accounts", ids[0]) == "deleted"
    assert Account.all_rows.get(connection=mirrored, zywave_id=ids[0]).is_tombstone
    assert Account.objects.filter(connection=mirrored, zywave_id=ids[1]).exists()
    assert not SyncRun.objects.filter(connection=mirrored, trigger="webhook").exists()
    # Learnt from the probe: the next deletion needs no probe.
    assert hooks._detail_route_seen(mirrored.pk, "accounts")
    assert hooks.refetch(mirrored.pk, "accounts", ids[1]) == "deleted"
