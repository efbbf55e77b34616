"""Mirroring accounts and contacts: against the sandbox server, with a real Celery worker where
the behaviour depends on one (queueing, absorbing, surviving a killed worker)."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib.auth.models import User
from django.db.models import Count
from django.utils import timezone

from integrations.models import Account, Connection, Contact, Policy, SyncRun
from integrations.profiles import choose_profile
from integrations.resources import resources
from integrations.sync import claim, queue_run, run_sync, sync_now
from integrations.tasks import sync_due_connections
from integrations.tokens import client_for
from tests.conftest import Person, connection
from tests.integrations.flows import (
    api_requests,
    inject_fault,
    mirrored_total,
    page_requests,
    sandbox_counts,
)
from tests.integrations.workers import Worker, use_test_broker, wait_for
from tests.sandboxserver import Sandbox


@pytest.fixture(autouse=True)
def quick_retries(settings: Any) -> None:
    settings.ZYWAVE_SYNC_BACKOFF_SECONDS = 0
    settings.ZYWAVE_SYNC_LEASE_SECONDS = 5


def run(conn: Connection, full: bool = False) -> SyncRun:
    result = sync_now(conn, full=full)
    assert result is not None
    return result


pytestmark = pytest.mark.django_db


def test_a_full_sync_mirrors_exactly_the_chosen_profiles_data(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave)
    result = run(conn)
    assert result.state == SyncRun.State.SUCCEEDED and result.full
    expected = sandbox_counts(zywave, conn)
    assert Account.objects.filter(connection=conn).count() == expected["accounts"]
    assert Contact.objects.filter(connection=conn).count() == expected["contacts"]
    assert Account.objects.filter(connection=conn, is_archived=True).count() == expected["archived"]
    assert result.records_done == mirrored_total(expected)
    assert Policy.objects.filter(connection=conn).count() == expected["policies"] > 0
    # Premiums exact: the column holds the text of Zywave's JSON number, never a float's.
    for policy in Policy.objects.filter(connection=conn)[:50]:
        assert policy.premium is not None and policy.premium == Decimal(str(policy.raw["premium"]))
        assert policy.expiration_date is not None
    sample = Account.objects.filter(connection=conn).order_by("?").first()
    assert sample is not None
    assert conn.chosen_profile is not None
    live = requests.get(
        f"{zywave.url}/accounts/v2.0/account/{sample.zywave_id}",
        headers={"Authorization": f"Bearer {conn.access_token}", "Profile": conn.profile_header()},
        timeout=10,
    ).json()
    assert sample.raw == live
    assert (sample.name, sample.city, sample.is_archived) == (
        live["name"],
        live["city"],
        live["isArchived"],
    )
    # Nothing of the user's other profiles: their ids are not in the mirror.
    other = zywave.profiles()[1]
    other_ids = requests.get(
        f"{zywave.url}/accounts/v2.0/account",
        params={"$top": 100},
        headers={"Authorization": f"Bearer {conn.access_token}", "Profile": f"B {other['id']}"},
        timeout=10,
    ).json()["items"]
    assert not Account.objects.filter(
        connection=conn, zywave_id__in=[str(a["id"]) for a in other_ids]
    ).exists()


def test_changes_and_archivals_arrive_incrementally_and_deletions_with_a_full_sync(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    run(conn)
    profile = conn.chosen_profile
    assert profile is not None
    changed = zywave.control(
        "POST", "accounts/change", profile_id=profile.zywave_id, count=3, field="name"
    )["ids"]
    archived = zywave.control("POST", "accounts/archive", profile_id=profile.zywave_id, count=2)[
        "ids"
    ]
    deleted = zywave.control("POST", "accounts/delete", profile_id=profile.zywave_id, count=2)[
        "ids"
    ]
    zywave.control("POST", "counters/reset")
    incremental = run(conn)
    assert not incremental.full
    for zywave_id in changed:
        assert "(rev" in Account.objects.get(connection=conn, zywave_id=str(zywave_id)).name
    for zywave_id in archived:
        assert Account.objects.get(connection=conn, zywave_id=str(zywave_id)).is_archived
    assert (
        Account.objects.filter(connection=conn, zywave_id__in=[str(i) for i in deleted]).count()
        == 2
    )
    assert incremental.records_done < 50  # only what changed, not the whole book
    run(conn, full=True)
    assert not Account.objects.filter(
        connection=conn, zywave_id__in=[str(i) for i in deleted]
    ).exists()
    assert (
        Account.objects.filter(connection=conn).count() == sandbox_counts(zywave, conn)["accounts"]
    )


def test_an_unchanged_incremental_sync_asks_once_per_resource(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave)
    run(conn)
    zywave.control("POST", "counters/reset")
    result = run(conn)
    assert result.state == SyncRun.State.SUCCEEDED and not result.full
    assert api_requests(zywave, "account") == 1
    assert api_requests(zywave, "contact") == 1


def test_rate_limits_and_a_503_burst_are_waited_out(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave)
    inject_fault(zywave, r"^/accounts/v2\.0/contact$", status=429, retry_after="1")
    inject_fault(zywave, r"^/accounts/v2\.0/account$", count=3, status=503)
    waits: list[float] = []
    queue_run(conn, full=True)
    sync_run = claim(conn.pk)
    assert sync_run is not None

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    result = run_sync(sync_run, sleep=sleep)
    assert result.state == SyncRun.State.SUCCEEDED
    assert 1.0 in waits and len(waits) == 4
    expected = sandbox_counts(zywave, conn)
    assert result.records_done == mirrored_total(expected)
    assert Contact.objects.filter(connection=conn).count() == expected["contacts"]


def test_a_401_mid_run_refreshes_and_continues(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave)
    zywave.control("POST", "counters/reset")
    inject_fault(zywave, r"^/accounts/v2\.0/contact$", status=401)
    result = run(conn)
    assert result.state == SyncRun.State.SUCCEEDED
    assert zywave.counters()["token"] == {"refresh_token:success": 1}


def test_a_revoked_grant_stops_the_run_cleanly_keeping_its_pages(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    zywave.control("POST", "users/agent@example.com/revoke")
    Connection.objects.filter(pk=conn.pk).update(access_token_expires_at=timezone.now())
    result = run(conn)
    assert result.state == SyncRun.State.FAILED
    assert "reconnect" in result.error
    assert Connection.objects.get(pk=conn.pk).status == Connection.Status.REAUTH_REQUIRED
    assert claim(conn.pk) is None  # no further syncs for it


def test_a_bad_page_keeps_the_pages_before_it(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave)
    inject_fault(
        zywave,
        r"^/accounts/v2\.0/contact$",
        status=200,
        body='{"items": [1, 2]}',  # not records at all (one without an id is only skipped)
        content_type="application/json",
    )
    result = run(conn)
    assert result.state == SyncRun.State.PARTIAL
    assert (
        Account.objects.filter(connection=conn).count() == sandbox_counts(zywave, conn)["accounts"]
    )
    assert result.records_done == Account.objects.filter(connection=conn).count()


def test_syncs_skip_connections_needing_reauth_or_a_profile(
    staff: User, other_staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    waiting = queue_run(conn, trigger="test")  # queued just before the grant ended
    assert waiting is not None
    Connection.objects.filter(pk=conn.pk).update(status=Connection.Status.REAUTH_REQUIRED)
    assert claim(conn.pk) is None
    waiting.refresh_from_db()  # ended, not left queued for the reconciler to re-send for ever
    assert (waiting.state, waiting.error) == ("failed", "re-authorization needed")
    Connection.objects.filter(pk=conn.pk).update(
        status=Connection.Status.ACTIVE, chosen_profile=None
    )
    assert claim(conn.pk) is None
    assert sync_due_connections() == {"queued": 0, "resumed": 0}


# --- With a real Celery worker ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_sync_now_runs_on_a_real_worker_and_the_dashboard_shows_it(
    dana: Person, zywave: Sandbox, worker: Worker
) -> None:
    conn = connection(dana.user, zywave)
    SyncRun.objects.all().delete()  # choosing the profile queued one; start from "Sync now"
    assert dana.post("/zywave/sync/").status_code == 302
    wait_for(
        lambda: SyncRun.objects.filter(connection=conn, state="succeeded").exists(),
        what="the worker's sync",
    )
    status = dana.get("/zywave/sync/status/").json()
    assert status["state"] == "succeeded" and status["records"] > 0
    page = dana.get("/").content.decode()
    assert "Last sync" in page and "succeeded" in page


@pytest.mark.django_db(transaction=True)
def test_sync_now_twice_and_beat_at_once_give_one_run(
    dana: Person, zywave: Sandbox, worker: Worker
) -> None:
    conn = connection(dana.user, zywave)
    SyncRun.objects.all().delete()
    dana.post("/zywave/sync/")
    dana.post("/zywave/sync/")
    sync_due_connections()
    assert SyncRun.objects.filter(connection=conn).count() == 1
    wait_for(lambda: not SyncRun.objects.active().exists(), what="the run to finish")
    assert list(SyncRun.objects.values_list("state", flat=True)) == ["succeeded"]
    expected = sandbox_counts(zywave, conn)
    assert Account.objects.filter(connection=conn).count() == expected["accounts"]


@pytest.mark.django_db(transaction=True)
def test_a_queued_run_whose_message_was_lost_is_sent_again(
    staff: User, zywave: Sandbox, worker: Worker, settings: Any
) -> None:
    """A worker killed outright takes the messages it had reserved with it (Redis gives them
    back only after its visibility timeout, hours): the reconciler sends such a run again."""
    conn = connection(staff, zywave)
    SyncRun.objects.all().delete()
    run = queue_run(conn, trigger="test")  # queued, its message never sent: as if lost
    assert run is not None
    settings.ZYWAVE_SYNC_REQUEUE_SECONDS = 60
    assert sync_due_connections() == {"queued": 0, "resumed": 0}  # young: it may be on its way
    SyncRun.objects.filter(pk=run.pk).update(queued_at=timezone.now() - timedelta(seconds=61))
    assert sync_due_connections() == {"queued": 0, "resumed": 1}
    wait_for(lambda: SyncRun.objects.get(pk=run.pk).state == "succeeded", what="the run")


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_sync_loses_nothing_and_duplicates_nothing(
    staff: User, zywave: Sandbox, worker: Worker, tmp_path: Path
) -> None:
    conn = connection(staff, zywave)
    SyncRun.objects.all().delete()
    # Slow every page down so the kill lands mid-run.
    inject_fault(zywave, r"^/accounts/v2\.0/(account|contact)$", count=40, delay_ms=300)
    queue_run(conn, full=True, trigger="test")
    from integrations.tasks import sync_connection

    sync_connection.delay(conn.pk, True)
    wait_for(lambda: SyncRun.objects.filter(pages_done__gte=2).exists(), what="two pages")
    worker.kill()
    interrupted = SyncRun.objects.get()
    assert interrupted.state == "running" and interrupted.pages_done >= 2
    zywave.reset()
    # A new worker and beat's reconciler pick the run up again once its lease has expired.
    replacement = Worker(zywave, tmp_path / "worker2.log").start()
    try:
        # The dead worker's lease would lapse by itself in ZYWAVE_SYNC_LEASE_SECONDS: age it
        # instead of sleeping past it. Nobody renews it now.
        SyncRun.objects.filter(pk=interrupted.pk).update(
            lease_until=timezone.now() - timedelta(seconds=1)
        )
        assert sync_due_connections() == {"queued": 0, "resumed": 1}
        wait_for(
            lambda: SyncRun.objects.get().state == "succeeded",
            what="the resumed run",
        )
    finally:
        replacement.stop()
    resumed = SyncRun.objects.get()
    assert resumed.pk == interrupted.pk and resumed.pages_done > interrupted.pages_done
    expected = sandbox_counts(zywave, conn)
    assert Account.objects.filter(connection=conn).count() == expected["accounts"]
    assert Contact.objects.filter(connection=conn).count() == expected["contacts"]
    dupes = (
        Account.objects.values("connection", "zywave_id").annotate(n=Count("id")).filter(n__gt=1)
    )
    assert not dupes.exists()


HELD_PAGES = 50


def held_at_the_sandbox(sandbox: Sandbox) -> int:
    """Requests the one injected fault has claimed: held by its delay, or answered after it."""
    (fault,) = sandbox.control("GET", "faults")["faults"]
    return int(HELD_PAGES - fault["remaining"])


@pytest.mark.django_db(transaction=True)
def test_disconnecting_mid_sync_cancels_the_run_and_the_worker_writes_nothing_after(
    dana: Person, zywave: Sandbox, worker: Worker
) -> None:
    """The person disconnects while a worker is mid-run, a contact page on its way from Zywave:
    the run ends at once, the mirror is gone, and nothing that comes back after is written."""
    conn = connection(dana.user, zywave)
    SyncRun.objects.all().delete()
    # Accounts come at once; every contact page is held 5 s at the sandbox, so the run is
    # certainly in flight when the person disconnects.
    inject_fault(zywave, r"^/accounts/v2\.0/contact$", count=HELD_PAGES, delay_ms=5000)
    assert dana.post("/zywave/sync/").status_code == 302

    def mid_run() -> bool:
        run = SyncRun.objects.filter(connection=conn).first()
        running = run is not None and run.state == "running" and run.pages_done >= 1
        return running and held_at_the_sandbox(zywave) >= 1

    wait_for(mid_run, what="the worker's run past its accounts, a contact page asked")
    assert Account.objects.filter(connection=conn).exists()
    response = dana.post("/zywave/disconnect/")
    assert response.status_code == 302 and response["Location"] == "/"
    run = SyncRun.objects.get(connection=conn)
    assert (run.state, run.error, run.lease_until) == ("failed", "disconnected", None)
    assert not Account.objects.filter(connection=conn).exists()
    assert not Contact.objects.filter(connection=conn).exists()
    # The worker notices when the held page comes back; its task ends.
    ended = re.compile(r"sync_connection\[[0-9a-f-]+\] (succeeded|raised|failed)")
    try:
        wait_for(
            lambda: bool(ended.search(worker.log_path.read_text(errors="replace"))),
            what="the worker's sync task to end",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.log_tail()}") from None
    after = SyncRun.objects.get(pk=run.pk)
    assert after.pages_done == run.pages_done and after.records_done == run.records_done
    assert not Account.objects.exists() and not Contact.objects.exists()
    assert (after.state, after.error) == ("failed", "disconnected"), worker.log_tail()


def test_changing_the_profile_mid_run_stops_the_old_run_before_its_next_page(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    inject_fault(zywave, r"^/accounts/v2\.0/contact$", status=429, retry_after="0")
    queue_run(conn, full=True)
    old_run = claim(conn.pk)
    assert old_run is not None
    new_profile = zywave.profiles()[1]["id"]

    def person_changes_profile_meanwhile(seconds: float) -> None:
        choose_profile(conn, client_for(conn), new_profile, actor=staff)

    result = run_sync(old_run, sleep=person_changes_profile_meanwhile)
    assert result.state == SyncRun.State.FAILED and result.error == "profile changed"
    # The old profile's accounts were cleared with the change and no contact page followed.
    assert not Account.objects.filter(connection=conn).exists()
    assert not Contact.objects.filter(connection=conn).exists()


def test_the_operators_command_syncs_one_user_or_all(
    staff: User, other_staff: User, zywave: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    conn = connection(staff, zywave)
    connection(other_staff, status=Connection.Status.REAUTH_REQUIRED)
    call_command("sync_zywave", user="dana", full=True)
    out = capsys.readouterr().out
    assert "dana: succeeded" in out
    assert (
        Account.objects.filter(connection=conn).count() == sandbox_counts(zywave, conn)["accounts"]
    )
    call_command("sync_zywave", all=True)
    out = capsys.readouterr().out
    assert "omar: skipped (status reauth_required" in out and "dana: succeeded" in out
    with pytest.raises(CommandError, match="nobody has no Zywave connection"):
        call_command("sync_zywave", user="nobody")


# --- A list route that answers 404 (hardening item 10) ----------------------------------------

CONTACTS_ROUTE = r"^/accounts/v2\.0/contact$"


def test_a_resource_whose_list_answers_404_is_skipped_and_the_run_still_succeeds(
    dana: Person, zywave: Sandbox
) -> None:
    conn = connection(dana.user, zywave)
    inject_fault(zywave, CONTACTS_ROUTE, count=5, status=404)
    finished = run(conn, full=True)
    assert (finished.state, finished.error) == ("succeeded", "")
    expected = sandbox_counts(zywave, conn)
    assert Account.objects.filter(connection=conn).count() == expected["accounts"]
    conn.refresh_from_db()
    assert list(conn.unavailable_resources) == ["contacts"]
    page = dana.get("/").content.decode()
    assert "does not offer your contacts" in page


def test_an_unavailable_resource_is_not_asked_again_within_a_day_then_is(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    inject_fault(zywave, CONTACTS_ROUTE, count=1, status=404)
    assert run(conn, full=True).state == "succeeded"
    zywave.control("POST", "counters/reset")
    assert run(conn).state == "succeeded"
    assert api_requests(zywave, "contact") == 0  # skipped, not asked
    conn.refresh_from_db()
    aged = (timezone.now() - timedelta(days=1, minutes=1)).isoformat()
    Connection.objects.filter(pk=conn.pk).update(unavailable_resources={"contacts": aged})
    assert run(conn).state == "succeeded"
    assert api_requests(zywave, "contact") >= 1  # asked again after a day, and it answered
    conn.refresh_from_db()
    assert conn.unavailable_resources == {}
    assert (
        Contact.objects.filter(connection=conn).count() == sandbox_counts(zywave, conn)["contacts"]
    )


def test_a_full_run_with_a_resource_unavailable_keeps_its_rows_and_removes_deleted_accounts(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    assert run(conn, full=True).state == "succeeded"
    contacts = Contact.objects.filter(connection=conn).count()
    assert contacts > 0
    profile_id = conn.chosen_profile.zywave_id  # type: ignore[union-attr]
    deleted = zywave.control("POST", "accounts/delete", profile_id=profile_id, count=2)["ids"]
    inject_fault(zywave, CONTACTS_ROUTE, count=1, status=404)
    assert run(conn, full=True).state == "succeeded"
    remaining = set(Account.objects.filter(connection=conn).values_list("zywave_id", flat=True))
    assert not remaining & {str(i) for i in deleted}
    # Contacts were not asked, so nothing says they are gone: none is removed.
    assert Contact.objects.filter(connection=conn).count() == contacts


# --- The lease has an owner (hardening item 5) -------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_lease_lapsed_is_taken_over_and_the_slow_worker_stops_cleanly(
    staff: User, zywave: Sandbox, tmp_path: Path
) -> None:
    """Two real workers. The first page the first worker asks for is held by the sandbox past
    the lease (5 s for the tests' workers); the reconciler hands the run to the other worker,
    whose pages are slow too, so the first worker's page comes back while the second still
    runs. Only the lease's owner may write: the run's counts are exact, not one page too many,
    and the first worker says it stopped."""
    use_test_broker()
    conn = connection(staff, zywave)
    SyncRun.objects.all().delete()
    expected = sandbox_counts(zywave, conn)
    # Held 10 s (the lease is 5 s); every other page 2 s, so the second worker, which takes
    # over at about 6 s, is still running when the held page comes back.
    inject_fault(zywave, r"^/accounts/v2\.0/account$", count=1, delay_ms=10_000)
    inject_fault(zywave, r"^/accounts/v2\.0/(account|contact)$", count=200, delay_ms=2000)
    first = Worker(zywave, tmp_path / "first.log").start()
    zywave.control("POST", "counters/reset")
    second = None
    try:
        queue_run(conn, full=True, trigger="test")
        from integrations.tasks import sync_connection

        sync_connection.delay(conn.pk, True)
        wait_for(lambda: SyncRun.objects.filter(state="running").exists(), what="the claim")
        owner = SyncRun.objects.get().lease_owner
        second = Worker(zywave, tmp_path / "second.log").start()
        wait_for(
            lambda: (SyncRun.objects.get().lease_until or timezone.now()) < timezone.now(),
            timeout=30,
            what="the first worker's lease to lapse on its held page",
        )
        assert sync_due_connections()["resumed"] == 1
        wait_for(lambda: SyncRun.objects.get().lease_owner != owner, what="the takeover")
        wait_for(lambda: SyncRun.objects.get().state == "succeeded", timeout=120, what="the run")
        wait_for(
            lambda: "no longer ours"
            in first.log_path.read_text(errors="replace")
            + (second.log_path.read_text(errors="replace")),
            timeout=30,
            what="the first worker to give up its run",
        )
    finally:
        first.stop()
        if second is not None:
            second.stop()
    done = SyncRun.objects.get()
    # The first worker stopped at its first write after the takeover: beyond the pages the
    # run needs, only what it had in flight then (its held page and one asked ahead). Had it
    # gone on advancing the run beside the other worker, it would have asked for every page
    # again.
    pages = sum(-(-expected[resource.name] // 100) for resource in resources())
    asked = page_requests(zywave)
    assert pages <= asked <= pages + 3
    assert done.records_done == mirrored_total(expected)
    assert Account.objects.filter(connection=conn).count() == expected["accounts"]
    assert Contact.objects.filter(connection=conn).count() == expected["contacts"]


# --- Zywave ids the mirror cannot use (hardening item 9) ---------------------------------------


def accounts_page_answering(zywave: Sandbox, records: list[dict[str, Any]]) -> None:
    """The next accounts list page is this body (a stand-in page: the sandbox's own data has
    only good ids), in the envelope the sandbox uses by default."""
    import json

    inject_fault(
        zywave,
        r"^/accounts/v2\.0/account$",
        status=200,
        body=json.dumps({"items": records, "totalCount": len(records)}),
        content_type="application/json",
    )


def test_records_with_unusable_ids_are_skipped_counted_and_shown(
    dana: Person, zywave: Sandbox
) -> None:
    conn = connection(dana.user, zywave)
    accounts_page_answering(
        zywave, [{"id": "a/b", "name": "Slash"}, {"id": "x" * 70}, {"id": "ok-1", "name": "Ok"}]
    )
    finished = run(conn, full=True)
    assert finished.state == "succeeded"
    assert finished.records_skipped == 2
    assert Account.objects.filter(connection=conn, zywave_id="ok-1").exists()
    assert not Account.objects.filter(connection=conn, zywave_id__contains="/").exists()
    page = dana.get("/").content.decode()
    assert "2 records from Zywave had an id the portal cannot use" in page
    listing = dana.get("/zywave/accounts/?q=Ok")
    assert listing.status_code == 200  # every stored id has a URL
    assert dana.get("/zywave/accounts/ok-1/").status_code == 200


def test_a_run_that_could_mirror_no_record_at_all_is_not_succeeded(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    accounts_page_answering(zywave, [{"id": "a/b"}, {"id": ""}, {"name": "no id"}])
    for other in resources()[1:]:
        zywave.add_fault(f"^{re.escape(other.path)}$", status=200, body='{"items": []}',
                         content_type="application/json")  # fmt: skip
    finished = run(conn, full=True)
    assert finished.state == "failed"
    assert finished.error == "Zywave sent 3 records, none with a usable id"


def test_a_full_run_cancelled_after_its_last_page_removes_nothing(
    staff: User, zywave: Sandbox
) -> None:
    """The profile changes (the run is cancelled) between the last page and the removal of
    unseen rows: the removal must not run, or it would delete the rows of the run after it."""
    conn = connection(staff, zywave)
    queue_run(conn, full=True, trigger="test")
    sync_run = claim(conn.pk)
    assert sync_run is not None
    newer = Account.objects.create(connection=conn, zywave_id="newer-run", raw={})
    last = resources()[-1].name
    last_count = sandbox_counts(zywave, conn)[last]

    def cancelled_after_the_last_page(current: SyncRun) -> None:
        if current.resource == last and current.skip >= last_count:
            SyncRun.objects.filter(pk=current.pk).update(state=SyncRun.State.FAILED)

    result = run_sync(sync_run, on_page=cancelled_after_the_last_page)
    assert result.state == SyncRun.State.FAILED
    assert Account.objects.filter(pk=newer.pk).exists()


def test_a_resource_whose_scope_was_not_granted_is_skipped_not_failed(
    staff: User, zywave: Sandbox, dana: Any
) -> None:
    """A connection made before policies existed: it syncs what it can, and the dashboard says
    a reconnect grants the rest."""
    conn = connection(staff, zywave)
    conn.granted_scopes = " ".join(s for s in conn.granted_scopes.split() if "policies" not in s)
    conn.save()
    zywave.control("POST", "counters/reset")
    result = run(conn, full=True)
    assert result.state == SyncRun.State.SUCCEEDED
    expected = sandbox_counts(zywave, conn)
    assert result.records_done == expected["accounts"] + expected["contacts"]
    assert not Policy.objects.filter(connection=conn).exists()
    assert not any(key.startswith("/policies/") for key in zywave.counters()["api"])
    page = dana.get("/").content.decode()
    assert "Policies are not synced" in page and "Reconnect Zywave to grant it" in page


def test_a_full_sync_asked_while_an_incremental_one_runs_does_not_relabel_it(
    staff: User,
) -> None:
    """The running run keeps the kind it started as: relabelled full, it would end as a full
    run that never removed what Zywave deleted."""
    conn = connection(staff)
    running = SyncRun.objects.create(connection=conn, state=SyncRun.State.RUNNING, full=False)
    assert queue_run(conn, full=True) is None
    running.refresh_from_db()
    assert running.full is False
    running.state = SyncRun.State.QUEUED
    running.save()
    assert queue_run(conn, full=True) is None
    running.refresh_from_db()
    assert running.full is True  # a queued one, not yet started, does become full
