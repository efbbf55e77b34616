"""Zywave's webhooks in (integrations/hooks.py): the receiver URL, notifications kept and
answered 202, the record fetched again from the real sandbox and mirrored, coalescing, and every
refusal."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from integrations import hooks, ratelimit, webhooks
from integrations.models import Account, Connection, WebhookDelivery, ZywaveNotification
from integrations.sync import sync_now
from tests.conftest import connection
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db

NOW = "2026-12-01T10:00:00Z"


def notification(record_id: Any = "1", **overrides: Any) -> dict[str, Any]:
    return {
        "eventType": "account.updated",
        "eventDateTime": NOW,
        "recordType": "Account",
        "recordId": record_id,
        **overrides,
    }


def post(token: str, body: Any, **extra: Any) -> Any:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return Client().post(
        f"/hooks/zywave/{token}/", data=data, content_type="application/json", **extra
    )


@pytest.fixture
def hooked(staff: User) -> tuple[Connection, str]:
    conn = connection(staff)
    return conn, hooks.rotate_token(conn)


def test_every_connection_has_a_receiver_url_with_a_long_random_token(staff: User) -> None:
    conn = connection(staff)
    url = hooks.receiver_url(conn)
    assert url
    token = url.rstrip("/").rsplit("/", 1)[1]
    assert len(token) >= 32
    assert hooks.receiver_url(Connection.objects.get(pk=conn.pk)) == url
    stored = Connection.objects.filter(pk=conn.pk).values_list("hook_token_hash", flat=True).get()
    assert stored == hooks.digest(token) and token not in stored


def test_an_unknown_token_is_404_with_no_detail(hooked: tuple[Connection, str]) -> None:
    response = post("x" * 43, notification())
    assert (response.status_code, response.content) == (404, b"")
    assert Client().get("/hooks/zywave/nope/?challenge=abc").status_code == 404
    assert hooks.refusals(None)["unknown_token"] >= 1


def test_a_challenge_is_echoed_exactly_as_plain_text(hooked: tuple[Connection, str]) -> None:
    _, token = hooked
    response = Client().get(f"/hooks/zywave/{token}/", {"challenge": "a b+c/=é"})
    assert response.status_code == 200
    assert response.content.decode() == "a b+c/=é"
    assert response["Content-Type"].startswith("text/plain")


def test_a_get_without_challenge_is_400_and_other_methods_405(
    hooked: tuple[Connection, str],
) -> None:
    conn, token = hooked
    assert Client().get(f"/hooks/zywave/{token}/").status_code == 400
    assert Client().put(f"/hooks/zywave/{token}/").status_code == 405
    assert hooks.refusals(conn.pk)["bad_request"] == 1


def test_a_notification_is_kept_and_answered_202_without_calling_zywave(
    hooked: tuple[Connection, str], django_capture_on_commit_callbacks: Any
) -> None:
    conn, token = hooked
    with django_capture_on_commit_callbacks() as queued:
        response = post(token, notification("42"))
    assert response.status_code == 202
    kept = ZywaveNotification.objects.get(connection=conn)
    assert (kept.resource, kept.record_id, kept.state) == ("accounts", "42", "queued")
    assert kept.event_at.isoformat() == "2026-12-01T10:00:00+00:00"
    assert len(queued) == 1  # the fetch, queued once the notification is committed
    conn.refresh_from_db()
    assert conn.hook_last_delivery_at is not None


@pytest.mark.parametrize(
    "body",
    [
        {
            "EventType": "Account.Updated",
            "EventDateTime": NOW,
            "RecordType": "account",
            "RecordId": 7,
        },
        {"event_type": "x", "event_date_time": NOW, "record_type": "accounts", "record_id": "7"},
        {"eventType": "account.updated", "timestamp": NOW, "entityId": "7"},
        {"event": "contact.deleted", "occurredAt": "2026-12-01T10:00:00+02:00", "objectId": "7"},
    ],
)
def test_the_plausible_variants_of_the_body_are_read(body: dict[str, Any]) -> None:
    parsed = hooks.parse(orjson.dumps(body))
    assert parsed.record_id == "7"
    assert parsed.resource in ("accounts", "contacts")
    assert parsed.event_at.tzinfo is not None


@pytest.mark.parametrize(
    ("record_type", "resource"),
    [
        ("Account", "accounts"),
        ("contacts", "contacts"),
        ("Policy", "policies"),
        ("policies", "policies"),
    ],
)
def test_every_record_type_the_sandbox_sends_is_understood(record_type: str, resource: str) -> None:
    # The sandbox names a policy `Policy` (a plural in -ies): once refused with 400, which
    # Zywave retries until it gives up (found by tests/integrations/test_hooks_live.py).
    assert hooks.parse(orjson.dumps(notification(recordType=record_type))).resource == resource
    body = {"eventType": f"{record_type.lower()}.archived", "eventDateTime": NOW, "recordId": "7"}
    assert hooks.parse(orjson.dumps(body)).resource == resource


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (orjson.dumps(notification(recordType="Invoice")), "unknown record type"),
        (orjson.dumps(notification(record_id="../etc")), "record id"),
        (orjson.dumps(notification(record_id=True)), "record id"),
        (orjson.dumps(notification(eventDateTime="yesterday")), "event time"),
        (
            orjson.dumps({"recordType": "Account", "recordId": "1", "eventDateTime": NOW}),
            "event type",
        ),
    ],
)
def test_anything_else_is_400_saying_what_is_wrong(
    hooked: tuple[Connection, str], body: bytes, why: str
) -> None:
    conn, token = hooked
    response = post(token, body)
    assert response.status_code == 400
    assert why in response.content.decode()
    assert not ZywaveNotification.objects.filter(connection=conn).exists()


def test_a_body_over_the_cap_is_413(hooked: tuple[Connection, str]) -> None:
    conn, token = hooked
    response = post(token, notification(padding="x" * (hooks.MAX_BODY_BYTES + 1)))
    assert response.status_code == 413
    assert hooks.refusals(conn.pk)["too_large"] == 1


def test_a_flood_is_429_with_retry_after(hooked: tuple[Connection, str], settings: Any) -> None:
    conn, token = hooked
    settings.ZYWAVE_WEBHOOK_RATE_LIMIT = 3
    statuses = [post(token, notification(str(i))).status_code for i in range(5)]
    assert statuses == [202, 202, 202, 429, 429]
    response = post(token, notification())
    assert 1 <= int(response["Retry-After"]) <= 60
    assert ZywaveNotification.objects.filter(connection=conn).count() == 3
    assert hooks.refusals(conn.pk)["rate_limited"] == 3


def test_a_rotated_token_answers_404_from_then_on(hooked: tuple[Connection, str]) -> None:
    conn, old = hooked
    new = hooks.rotate_token(conn)
    assert post(old, notification()).status_code == 404
    assert post(new, notification()).status_code == 202


def test_a_disconnected_connection_has_no_receiver(hooked: tuple[Connection, str]) -> None:
    conn, token = hooked
    conn.disconnect(actor=None, revoked=True)
    assert post(token, notification()).status_code == 404


def test_notifications_close_together_coalesce_into_at_most_two_fetches(
    hooked: tuple[Connection, str], django_capture_on_commit_callbacks: Any
) -> None:
    conn, _ = hooked
    from django.core.cache import cache

    cache.delete_many(
        [f"zywave-refetch:{conn.pk}:accounts:9", f"zywave-refetch:{conn.pk}:accounts:9:again"]
    )
    with django_capture_on_commit_callbacks() as queued:
        outcomes = [hooks.schedule_fetch(conn.pk, "accounts", "9") for _ in range(50)]
    assert outcomes[:2] == ["now", "later"]
    assert set(outcomes[2:]) == {"coalesced"}
    assert len(queued) == 2
    # Another record is not held back by this one's window.
    assert hooks.schedule_fetch(conn.pk, "accounts", "10") == "now"


def test_polling_relaxes_while_zywave_delivers_and_returns_when_it_stops(
    hooked: tuple[Connection, str], settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, _ = hooked
    settings.ZYWAVE_SYNC_INTERVAL_MINUTES = 15
    settings.ZYWAVE_WEBHOOK_POLL_MINUTES = 60
    # The connection's phase (ratelimit.phase) 25 minutes ago: 10 minutes into the 15-minute
    # interval, 25 into the hour.
    at = timezone.now().timestamp() - 25 * 60
    monkeypatch.setattr(ratelimit, "phase", lambda pk, interval: at % interval)
    conn.sync_runs.create(queued_at=timezone.now() - timedelta(minutes=20), state="succeeded")
    due = lambda: Connection.objects.due_for_sync().filter(pk=conn.pk).exists()  # noqa: E731
    assert due()  # no delivery: polled every 15 minutes
    Connection.objects.filter(pk=conn.pk).update(hook_last_delivery_at=timezone.now())
    assert not due()  # deliveries arrive: 20 minutes is not yet 60
    Connection.objects.filter(pk=conn.pk).update(
        hook_last_delivery_at=timezone.now() - timedelta(minutes=61)
    )
    assert due()  # none for an hour: back to normal


# --- The fetch, against the real sandbox -------------------------------------------------------


@pytest.fixture
def mirrored(staff: User, zywave: Sandbox) -> Connection:
    conn = connection(staff, zywave)
    sync_now(conn)
    return conn


def first_account(conn: Connection) -> Account:
    return Account.objects.filter(connection=conn).order_by("zywave_id").first()  # type: ignore[return-value]


def test_a_changed_record_is_fetched_and_mirrored_with_its_event(
    mirrored: Connection, zywave: Sandbox, settings: Any
) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    webhooks.subscribe(mirrored.user, "http://127.0.0.1:9/", ["accounts.changed"])
    profile = mirrored.chosen_profile
    assert profile is not None
    changed = zywave.control(
        "POST", "accounts/change", profile_id=profile.zywave_id, count=1, field="name"
    )["ids"][0]
    ZywaveNotification.objects.create(
        connection=mirrored,
        event_type="account.updated",
        resource="accounts",
        record_id=str(changed),
        event_at=timezone.now(),
        received_at=timezone.now() - timedelta(seconds=1),
    )
    assert hooks.refetch(mirrored.pk, "accounts", str(changed)) == "updated"
    assert "(rev" in Account.objects.get(connection=mirrored, zywave_id=str(changed)).name
    assert ZywaveNotification.objects.get(connection=mirrored).state == "applied"
    event = WebhookDelivery.objects.get().event
    assert event.data["changes"] == [{"id": str(changed), "kind": "updated"}]
    # Fetched again with nothing new: nothing changes, no second event.
    assert hooks.refetch(mirrored.pk, "accounts", str(changed)) == "unchanged"
    assert WebhookDelivery.objects.count() == 1


def test_a_record_zywave_no_longer_shows_becomes_a_tombstone(
    mirrored: Connection, zywave: Sandbox
) -> None:
    profile = mirrored.chosen_profile
    assert profile is not None
    deleted = zywave.control("POST", "accounts/delete", profile_id=profile.zywave_id, count=1)[
        "ids"
    ][0]
    assert hooks.refetch(mirrored.pk, "accounts", str(deleted)) == "deleted"
    row = Account.all_rows.get(connection=mirrored, zywave_id=str(deleted))
    assert row.is_tombstone and row.raw == {}


def test_a_record_only_another_agency_may_see_changes_nothing(
    mirrored: Connection, zywave: Sandbox
) -> None:
    before = Account.objects.filter(connection=mirrored).count()
    # An id this profile never had (the sandbox answers 404 or 403 under this profile).
    assert hooks.refetch(mirrored.pk, "accounts", "999999999") == "unchanged"
    assert Account.all_rows.filter(connection=mirrored).count() == before
    assert not Account.all_rows.filter(connection=mirrored, zywave_id="999999999").exists()


def test_an_older_copy_never_replaces_a_newer_one(mirrored: Connection) -> None:
    account = first_account(mirrored)
    later = timezone.now() + timedelta(days=365)
    Account.objects.filter(pk=account.pk).update(updated_at_zywave=later, name="newer here")
    assert hooks.refetch(mirrored.pk, "accounts", account.zywave_id) == "unchanged"
    assert Account.objects.get(pk=account.pk).name == "newer here"


def test_a_fetch_for_a_connection_that_cannot_sync_fails_its_notifications(
    mirrored: Connection,
) -> None:
    ZywaveNotification.objects.create(
        connection=mirrored,
        event_type="account.updated",
        resource="accounts",
        record_id="1",
        event_at=timezone.now(),
        received_at=timezone.now() - timedelta(seconds=1),
    )
    Connection.objects.filter(pk=mirrored.pk).update(status=Connection.Status.REAUTH_REQUIRED)
    assert hooks.refetch(mirrored.pk, "accounts", "1") == "skipped"
    assert ZywaveNotification.objects.get().state == "failed"


# --- The dashboard ------------------------------------------------------------------------------


def test_the_dashboard_shows_the_receiver_url_and_whether_zywave_delivers(
    dana: Any, hooked: tuple[Connection, str]
) -> None:
    conn, token = hooked
    page = dana.get("/").content.decode()
    assert f"/hooks/zywave/{token}/" in page
    assert "none yet" in page
    post(token, notification())
    page = dana.get("/").content.decode()
    assert "1 delivery" in page and "relaxed" in page


def test_a_new_url_is_made_from_the_dashboard_by_post_only(
    dana: Any, omar: Any, hooked: tuple[Connection, str]
) -> None:
    conn, old = hooked
    assert dana.get("/zywave/hooks/rotate/").status_code == 405
    assert Client().post("/zywave/hooks/rotate/").status_code == 302  # to the login page
    assert omar.post("/zywave/hooks/rotate/").status_code == 404  # omar has no connection
    response = dana.post("/zywave/hooks/rotate/")
    assert response.status_code == 302
    assert post(old, notification()).status_code == 404
    conn.refresh_from_db()
    assert conn.hook_token and conn.hook_token != old
    assert conn.events.filter(kind="hook_token_rotated").count() == 2  # the fixture's, and this


def test_a_changed_contact_is_fetched_on_its_own_route_and_mirrored(
    mirrored: Connection, zywave: Sandbox
) -> None:
    from integrations.models import Contact

    profile = mirrored.chosen_profile
    assert profile is not None
    changed = zywave.control(
        "POST", "contacts/change", profile_id=profile.zywave_id, count=1, field="last_name"
    )["ids"][0]
    assert hooks.refetch(mirrored.pk, "contacts", str(changed)) == "updated"
    contact = Contact.objects.get(connection=mirrored, zywave_id=str(changed))
    assert contact.raw["lastName"] == contact.last_name
    assert hooks.refetch(mirrored.pk, "contacts", str(changed)) == "unchanged"


def test_without_a_route_for_one_record_a_404_queues_a_sync_instead_of_a_deletion(
    mirrored: Connection, zywave: Sandbox
) -> None:
    from django.core.cache import cache

    from integrations.models import Contact, SyncRun

    cache.delete(f"zywave-no-detail-route:{mirrored.pk}:contacts")
    first, second = Contact.objects.filter(connection=mirrored).values_list("zywave_id", flat=True)[
        :2
    ]
    # A Zywave without /accounts/v2.0/contact/{id} (assumed, docs/zywave.md §6): the record
    # asked and every record the mirror holds live that the portal probes are "not found".
    zywave.add_fault(r"^/accounts/v2\.0/contact/\d+", count=1 + hooks.PROBES, status=404)
    assert hooks.refetch(mirrored.pk, "contacts", first) == "sync queued"
    assert Contact.objects.filter(connection=mirrored, zywave_id=first).exists()
    assert SyncRun.objects.filter(connection=mirrored, trigger="webhook", state="queued").exists()
    # For a day, the next notification goes straight to a sync (absorbed: one is queued).
    assert hooks.refetch(mirrored.pk, "contacts", second) == "sync queued"
    assert Contact.objects.filter(connection=mirrored, zywave_id=second).exists()
    cache.delete(f"zywave-no-detail-route:{mirrored.pk}:contacts")


def test_a_404_while_the_route_answers_for_a_live_record_is_a_deletion(
    mirrored: Connection, zywave: Sandbox
) -> None:
    from integrations.models import Contact

    first = Contact.objects.filter(connection=mirrored).values_list("zywave_id", flat=True)[0]
    zywave.add_fault(r"^/accounts/v2\.0/contact/\d+", count=1, status=404)
    assert hooks.refetch(mirrored.pk, "contacts", first) == "deleted"
    assert Contact.all_rows.get(connection=mirrored, zywave_id=first).is_tombstone


# --- Review fixes: nothing acknowledged is lost, nothing live is deleted on a hiccup ----------


def test_the_reconciler_fetches_again_what_was_acknowledged_and_never_applied(
    hooked: tuple[Connection, str], django_capture_on_commit_callbacks: Any
) -> None:
    conn, _ = hooked
    now = timezone.now()

    def kept(record_id: str, age: timedelta, state: str = "queued") -> None:
        ZywaveNotification.objects.create(
            connection=conn,
            event_type="account.updated",
            resource="accounts",
            record_id=record_id,
            event_at=now - age,
            received_at=now - age,
            state=state,
        )

    kept("fresh", timedelta(seconds=1))  # its fetch may still be on its way: left alone
    kept("lost", timedelta(minutes=2))
    kept("lost", timedelta(minutes=3))  # the same record: one fetch
    kept("ancient", timedelta(hours=7))
    kept("done", timedelta(days=8), state="applied")
    with django_capture_on_commit_callbacks() as queued:
        outcome = hooks.reconcile()
    assert outcome == {"requeued": 1, "given_up": 1, "purged": 1}
    assert len(queued) == 2  # the lost record's fetch, and a sync for the ancient one
    assert conn.sync_runs.filter(trigger="webhook", state="queued").exists()
    states = dict(ZywaveNotification.objects.values_list("record_id", "state").order_by("id"))
    assert states == {"fresh": "queued", "lost": "queued", "ancient": "failed"}


@pytest.mark.parametrize(
    "body",
    [
        notification(eventDateTime="2026-13-01T10:00:00Z"),
        notification(eventDateTime="2026-12-01T10:00:00+25:00"),
        notification(eventType="account.updated\x00"),
    ],
)
def test_impossible_times_and_control_characters_are_400_not_500(
    hooked: tuple[Connection, str], body: dict[str, Any]
) -> None:
    _, token = hooked
    assert post(token, body).status_code == 400


def test_the_event_time_is_kept_in_utc(hooked: tuple[Connection, str]) -> None:
    conn, token = hooked
    post(token, notification(eventDateTime="2026-12-01T12:00:00+02:00"))
    kept = ZywaveNotification.objects.get(connection=conn)
    assert kept.event_at.isoformat() == "2026-12-01T10:00:00+00:00"


def test_without_the_shared_cache_the_receiver_answers_503_to_be_retried(
    hooked: tuple[Connection, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, token = hooked

    def down(*args: Any, **kwargs: Any) -> int:
        raise ConnectionError("Redis is restarting")

    # A mock: the run's Redis is shared by every test, so it cannot be stopped for this one.
    monkeypatch.setattr(hooks, "_count", down)
    response = post(token, notification())
    assert (response.status_code, response["Retry-After"]) == (503, "30")
    assert not ZywaveNotification.objects.filter(connection=conn).exists()


def test_a_probe_that_fails_asks_again_later_instead_of_deleting(
    mirrored: Connection, zywave: Sandbox
) -> None:
    from django.core.cache import cache

    from integrations.models import Contact

    for key in ("no-detail-route", "detail-route-works"):
        cache.delete(f"zywave-{key}:{mirrored.pk}:contacts")
    first = Contact.objects.filter(connection=mirrored).values_list("zywave_id", flat=True)[0]
    zywave.add_fault(r"^/accounts/v2\.0/contact/\d+", count=1, status=404)
    zywave.add_fault(r"^/accounts/v2\.0/contact/\d+", count=3, status=503)
    with pytest.raises(hooks.TryAgain):
        hooks.refetch(mirrored.pk, "contacts", first)
    assert Contact.objects.filter(connection=mirrored, zywave_id=first).exists()


def test_an_older_copy_does_not_bring_back_a_record_deleted_after_it_was_fetched(
    mirrored: Connection,
) -> None:
    from integrations import mirror

    account = first_account(mirrored)
    copy = dict(account.raw)
    fetched = timezone.now()
    mirror.tombstone(Account.objects.filter(pk=account.pk))  # another fetch saw it gone
    mirror.upsert("accounts", mirrored.pk, None, [copy], refetched=True, fetched_at=fetched)
    assert Account.all_rows.get(pk=account.pk).is_tombstone
    # A copy fetched after the deletion (the record is back at Zywave) revives it.
    mirror.upsert("accounts", mirrored.pk, None, [copy], refetched=True)
    assert not Account.all_rows.get(pk=account.pk).is_tombstone


@pytest.mark.django_db(transaction=True)
def test_a_delivery_never_waits_behind_a_lock_on_the_connection(staff: User) -> None:
    import threading

    from django.db import connection as db
    from django.db import transaction

    conn = connection(staff)
    token = hooks.rotate_token(conn)
    Connection.objects.filter(pk=conn.pk).update(hook_last_delivery_at=None)
    locked, release = threading.Event(), threading.Event()

    def refresh_holding_the_row() -> None:  # as tokens.refresh holds it across its HTTP call
        with transaction.atomic():
            Connection.objects.select_for_update(no_key=True).get(pk=conn.pk)
            locked.set()
            release.wait(10)
        db.close()

    holder = threading.Thread(target=refresh_holding_the_row)
    holder.start()
    try:
        assert locked.wait(5)
        started = timezone.now()
        assert post(token, notification()).status_code == 202
        assert (timezone.now() - started).total_seconds() < 2
    finally:
        release.set()
        holder.join()
    assert ZywaveNotification.objects.filter(connection=conn).count() == 1
