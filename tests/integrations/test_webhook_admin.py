"""The webhook admin: subscriptions and deliveries seen (never a signing secret), disabled,
enabled and replayed by admins, audited; read-only for the support group; constant queries;
and the warning when WEBHOOKS_ALLOW_PRIVATE is on with DEBUG off.

Deliveries are sent for real, to a receiver on 127.0.0.1 (WEBHOOKS_ALLOW_PRIVATE is on in the
test settings), by `webhooks.drain` in this process or by a real Celery worker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.models import LogEntry
from django.contrib.admin.sites import site
from django.contrib.auth.models import User
from django.core import mail
from django.db import connection as db
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from svix.webhooks import Webhook as SvixWebhook

from integrations import webhooks
from integrations.checks import PRIVATE_WEBHOOKS
from integrations.models import (
    ConnectionEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)
from tests.conftest import Person
from tests.integrations.workers import Worker, wait_for

pytestmark = pytest.mark.django_db

SUBSCRIPTIONS = "/admin/integrations/webhooksubscription/"
DELIVERIES = "/admin/integrations/webhookdelivery/"


def page(subscription: WebhookSubscription) -> str:
    return f"{SUBSCRIPTIONS}{subscription.pk}/change/"


def delivery_page(delivery: WebhookDelivery) -> str:
    return f"{DELIVERIES}{delivery.pk}/change/"


def act(client: Client, url: str, action: str, *objects: Any) -> Any:
    """An admin action from a list, as the action bar's form posts it."""
    data = {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objects], "index": 0}
    return client.post(url, data)


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def text(response: Any) -> str:
    assert response.status_code == 200, response.status_code
    return str(response.content.decode())


# --- A receiver on 127.0.0.1 -----------------------------------------------------------------


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that answers each POST with `status` and keeps each
    request's headers and body."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(f"answered {receiver.status}".encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/in"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    try:
        yield started
    finally:
        started.stop()


def subscribed(owner: User, url: str, events: list[str] | None = None) -> WebhookSubscription:
    subscription, _secret = webhooks.subscribe(owner, url, events or ["sync.succeeded"])
    return subscription


def emit(owner: User, n: int = 1) -> list[WebhookEvent]:
    """`n` sync.succeeded events for `owner`'s subscriptions, as a sync's end writes them
    (sent by `drain`, or by a worker once committed)."""
    found = []
    for i in range(n):
        event = webhooks.emit(owner.pk, "sync.succeeded", {"sync": {"id": i}})
        assert event is not None
        found.append(event)
    return found


# --- Who may see and act -----------------------------------------------------------------------


def test_anonymous_visitors_and_plain_staff_see_nothing(
    staff: User, client: Client, dana: Person, receiver: Receiver
) -> None:
    subscription = subscribed(staff, receiver.url)
    emit(staff)
    delivery = subscription.deliveries.get()
    clerk = User.objects.create_user("clerk", "clerk@agency.test", "x", is_staff=True)
    clerk_client = Client()
    clerk_client.force_login(clerk)
    urls = (SUBSCRIPTIONS, page(subscription), DELIVERIES, delivery_page(delivery))
    for url in urls:
        for visitor in (client, dana):  # anonymous, and a portal user who is not staff
            response = visitor.get(url)
            assert response.status_code == 302, url
            assert response["Location"].startswith("/admin/login/")
        assert clerk_client.get(url).status_code == 403, url  # staff without view permission
    for visitor in (client, dana, clerk_client):
        act(visitor, SUBSCRIPTIONS, "disable_selected", subscription)
        visitor.post(f"{SUBSCRIPTIONS}{subscription.pk}/act/", {"action": "disable_selected"})
        act(visitor, DELIVERIES, "replay_selected", delivery)
    subscription.refresh_from_db()
    assert subscription.is_active
    assert not ConnectionEvent.objects.filter(kind="webhook_disabled").exists()
    assert WebhookDelivery.objects.get(pk=delivery.pk).state == WebhookDelivery.State.PENDING
    assert not LogEntry.objects.exists()


def test_the_support_role_sees_every_webhook_page_read_only_by_rule(
    staff: User, sam: Person, receiver: Receiver
) -> None:
    """The support group's view permissions come from the rule (integrations/support.py, every
    model of the app), not from a grant naming these models."""
    perms = set(sam.user.get_all_permissions())
    assert {
        "integrations.view_webhooksubscription",
        "integrations.view_webhookdelivery",
        "integrations.view_webhookattempt",
    } <= perms
    assert not {p for p in perms if p.startswith("integrations.") and ".view_" not in p}
    subscription = subscribed(staff, receiver.url)
    emit(staff)
    webhooks.drain(subscription.pk)
    delivery = subscription.deliveries.get()
    for url in (
        "/admin/",
        SUBSCRIPTIONS,
        page(subscription),
        DELIVERIES,
        delivery_page(delivery),
        f"{SUBSCRIPTIONS}{subscription.pk}/history/",
    ):
        assert sam.get(url).status_code == 200, url
    assert "Webhook subscriptions" in text(sam.get("/admin/"))
    for url in (SUBSCRIPTIONS, DELIVERIES):
        listing = text(sam.get(url))
        assert staff.username in listing and "action-select" not in listing
    for url in (page(subscription), delivery_page(delivery)):
        content = text(sam.get(url))
        assert 'name="action"' not in content and "zw-actions" not in content
        assert receiver.url in content
    # Acting is refused every way, and nothing changed.
    act(sam, SUBSCRIPTIONS, "disable_selected", subscription)
    response = sam.post(f"{SUBSCRIPTIONS}{subscription.pk}/act/", {"action": "disable_selected"})
    assert response.status_code == 403
    act(sam, DELIVERIES, "replay_selected", delivery)
    assert sam.post(page(subscription), {"url": "http://127.0.0.1:1/x"}).status_code == 403
    assert sam.get(f"{SUBSCRIPTIONS}add/").status_code == 403
    assert sam.get(f"{SUBSCRIPTIONS}{subscription.pk}/delete/").status_code == 403
    subscription.refresh_from_db()
    assert subscription.is_active and subscription.url == receiver.url
    assert WebhookDelivery.objects.get(pk=delivery.pk).state == WebhookDelivery.State.DELIVERED
    assert not LogEntry.objects.exists()


def test_no_admin_edits_adds_or_deletes_a_subscription(
    staff: User, root: Person, receiver: Receiver
) -> None:
    subscription = subscribed(staff, receiver.url)
    response = root.post(page(subscription), {"url": "http://127.0.0.1:1/evil", "events": "[]"})
    assert response.status_code == 403
    assert root.get(f"{SUBSCRIPTIONS}add/").status_code == 403
    assert root.get(f"{SUBSCRIPTIONS}{subscription.pk}/delete/").status_code == 403
    act(root, SUBSCRIPTIONS, "delete_selected", subscription)
    assert WebhookSubscription.objects.get(pk=subscription.pk).url == receiver.url


# --- Never a secret ----------------------------------------------------------------------------


def secret_pieces(*secrets: str) -> dict[str, str]:
    """Each secret whole, and its base64 part alone (what a verifier is given)."""
    pieces = {}
    for i, secret in enumerate(secrets):
        pieces[f"secret {i}"] = secret
        pieces[f"secret {i} without whsec_"] = secret.removeprefix("whsec_")
    return pieces


def test_no_webhook_admin_page_shows_a_signing_secret(
    staff: User, other_staff: User, root: Person, receiver: Receiver
) -> None:
    subscription, first = webhooks.subscribe(staff, receiver.url, ["sync.succeeded"])
    emit(staff)
    webhooks.drain(subscription.pk)
    second = webhooks.rotate_secret(subscription, staff)  # the first one is now the previous
    emit(staff)
    receiver.status = 503
    webhooks.drain(subscription.pk)
    others, third = webhooks.subscribe(other_staff, receiver.url + "?omar=1", ["sync.succeeded"])
    webhooks.disable(others, "disabled for the test", actor=None)
    subscription.refresh_from_db()
    assert subscription.secret == second and subscription.previous_secret == first
    delivered, failing = subscription.deliveries.order_by("sequence")
    assert failing.attempt_log.get().status == 503  # a page with attempts to show
    # No field of the change form is a secret: the page is read-only, and its form is empty.
    request = RequestFactory().get(page(subscription))
    request.user = root.user
    form = site._registry[WebhookSubscription].get_form(request, subscription)
    assert not {"secret", "previous_secret"} & set(form.base_fields)

    urls = [
        "/admin/",
        SUBSCRIPTIONS,
        f"{SUBSCRIPTIONS}?q=dana",
        f"{SUBSCRIPTIONS}?q=whsec_",
        f"{SUBSCRIPTIONS}?q={first[6:20]}",
        f"{SUBSCRIPTIONS}?state__exact=disabled",
        f"{SUBSCRIPTIONS}?deliveries=pending",
        f"{SUBSCRIPTIONS}?_facets=True",
        *[f"{SUBSCRIPTIONS}?o={column}" for column in range(1, 9)],
        page(subscription),
        page(others),
        f"{SUBSCRIPTIONS}{subscription.pk}/history/",
        DELIVERIES,
        f"{DELIVERIES}?subscription={subscription.pk}",
        f"{DELIVERIES}?state__exact=pending&_facets=True",
        f"{DELIVERIES}?q={delivered.event_id}",
        delivery_page(delivered),
        delivery_page(failing),
        "/admin/integrations/connectionevent/",
        *[
            f"/admin/integrations/connectionevent/{e.pk}/change/"
            for e in ConnectionEvent.objects.all()
        ],
    ]
    pages = {url: text(root.get(url)) for url in urls}
    pages["disable message"] = text(
        root.post(
            f"{SUBSCRIPTIONS}{subscription.pk}/act/", {"action": "disable_selected"}, follow=True
        )
    )
    pages["enable message"] = text(
        root.post(
            SUBSCRIPTIONS,
            {
                "action": "enable_selected",
                ACTION_CHECKBOX_NAME: [subscription.pk, others.pk],
                "index": 0,
            },
            follow=True,
        )
    )
    pages["replay message"] = text(
        root.post(
            DELIVERIES,
            {"action": "replay_selected", ACTION_CHECKBOX_NAME: [delivered.pk], "index": 0},
            follow=True,
        )
    )
    for where, content in pages.items():
        for name, piece in secret_pieces(first, second, third).items():
            assert piece not in content, f"{name} on {where}"
    # The pages did show these subscriptions and deliveries: their URLs, ids, attempts.
    assert receiver.url in pages[SUBSCRIPTIONS] and staff.username in pages[SUBSCRIPTIONS]
    assert "the previous secret also signs until" in pages[page(subscription)]
    assert (
        delivered.event_id in pages[DELIVERIES] and "answered 503" in pages[delivery_page(failing)]
    )
    assert "No delivery" not in pages[page(subscription)]
    # The searches by a secret's prefix or a piece of one found nothing: no search field.
    assert 'class="action-select"' in pages[SUBSCRIPTIONS]
    for query in ("whsec_", first[6:20]):
        assert 'class="action-select"' not in pages[f"{SUBSCRIPTIONS}?q={query}"]


def test_the_webhook_pages_never_load_a_secret(
    staff: User, root: Person, receiver: Receiver, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shown by a key that cannot decrypt them: reading a secret would raise (the fields fail
    closed), so pages that answer 200 never read one."""
    import encrypted_model_fields.fields as emf
    from cryptography.fernet import Fernet, MultiFernet

    from integrations.fields import DecryptionError

    subscription = subscribed(staff, receiver.url)
    emit(staff, 2)
    webhooks.drain(subscription.pk)
    delivery = subscription.deliveries.first()
    assert delivery is not None
    other_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEY = [other_key]
    monkeypatch.setattr(emf, "CRYPTER", MultiFernet([Fernet(other_key)]))
    with pytest.raises(DecryptionError):
        WebhookSubscription.objects.get(pk=subscription.pk)  # the key really is wrong
    for url in (
        SUBSCRIPTIONS,
        f"{SUBSCRIPTIONS}?q={staff.username}&deliveries=none",
        page(subscription),
        DELIVERIES,
        f"{DELIVERIES}?subscription={subscription.pk}",
        delivery_page(delivery),
    ):
        assert root.get(url).status_code == 200, url
    # Disabling reads no secret either (the owner's email, after commit, does: not run here).
    act(root, SUBSCRIPTIONS, "disable_selected", subscription)
    assert WebhookSubscription.objects.filter(pk=subscription.pk, state="disabled").exists()


# --- The lists -------------------------------------------------------------------------------


def test_the_list_shows_owner_url_events_state_last_delivery_pending_and_reason(
    staff: User, other_staff: User, root: Person, receiver: Receiver
) -> None:
    healthy = subscribed(staff, receiver.url, ["sync.succeeded", "sync.failed"])
    emit(staff)
    webhooks.drain(healthy.pk)
    held = subscribed(other_staff, receiver.url + "?held", ["sync.succeeded"])
    webhooks.disable(held, "delivery msg_x failed 8 times: HTTP 503")
    emit(other_staff, 3)  # recorded and held while disabled
    listing = text(root.get(SUBSCRIPTIONS))
    rows = [row.split("</tr>")[0] for row in listing.split("<tr")[1:]]
    (dana_row,) = [r for r in rows if receiver.url in r and "?held" not in r]
    (omar_row,) = [r for r in rows if "?held" in r]
    assert ">dana</a>" in dana_row
    assert "sync.failed, sync.succeeded" in dana_row
    assert "zw-badge zw-active" in dana_row and "Active" in dana_row
    delivered_at = healthy.deliveries.get().delivered_at
    assert delivered_at is not None
    assert timezone.localtime(delivered_at).strftime("%Y-%m-%d %H:%M") in dana_row
    assert '<td class="field-pending">0</td>' in dana_row
    assert ">omar</a>" in omar_row and "Disabled" in omar_row and "never" in omar_row
    assert "delivery msg_x failed 8 times: HTTP 503" in omar_row
    assert f'subscription={held.pk}&amp;state__exact=pending">3</a>' in omar_row


def test_the_list_filters_by_state_and_deliveries_and_searches_owner_and_url(
    staff: User, other_staff: User, root: Person, receiver: Receiver
) -> None:
    quiet = subscribed(staff, receiver.url + "?quiet")
    busy = subscribed(other_staff, receiver.url + "?busy")
    webhooks.disable(busy, "held for the test")
    emit(other_staff, 2)
    failed = busy.deliveries.first()
    assert failed is not None
    WebhookDelivery.objects.filter(pk=failed.pk).update(state=WebhookDelivery.State.FAILED)

    def shown(query: str) -> set[str]:
        content = text(root.get(SUBSCRIPTIONS + query))
        return {name for name, sub in (("quiet", quiet), ("busy", busy)) if sub.url in content}

    assert shown("") == {"quiet", "busy"}
    assert shown("?state__exact=disabled") == {"busy"}
    assert shown("?state__exact=active") == {"quiet"}
    assert shown("?deliveries=pending") == {"busy"}
    assert shown("?deliveries=failed") == {"busy"}
    assert shown("?deliveries=none") == {"quiet"}
    assert shown("?q=omar") == {"busy"}
    assert shown("?q=dana@agency.test") == {"quiet"}
    assert shown("?q=%3Fquiet") == {"quiet"}
    assert shown("?q=127.0.0.1") == {"quiet", "busy"}


def many_subscriptions(n: int) -> None:
    """`n` subscriptions, each of its own owner, with two events: one delivered, one pending
    after a 503, each with its attempt; in bulk."""
    users = User.objects.bulk_create(
        [User(username=f"owner{i:04d}", email=f"owner{i}@agency.test") for i in range(n)]
    )
    now = timezone.now()
    subscriptions = [
        WebhookSubscription(
            owner=user,
            url=f"https://hooks{i}.example.test/in",
            events=["sync.succeeded"],
            secret=webhooks.new_secret(),
            state=["active", "disabled"][i % 2],
            disabled_reason="" if i % 2 == 0 else "failed 8 times",
            last_sequence=2,
        )
        for i, user in enumerate(users)
    ]
    WebhookSubscription.objects.bulk_create(subscriptions)
    pairs = [
        (subscription, WebhookEvent(id=webhooks.new_event_id(), owner=subscription.owner))
        for subscription in subscriptions
        for _ in range(2)
    ]
    WebhookEvent.objects.bulk_create([event for _, event in pairs])
    deliveries = WebhookDelivery.objects.bulk_create(
        [
            WebhookDelivery(
                subscription=subscription,
                event=event,
                sequence=k % 2 + 1,
                state=["delivered", "pending"][k % 2],
                delivered_at=now if k % 2 == 0 else None,
                attempts=1,
                last_status=200 if k % 2 == 0 else 503,
            )
            for k, (subscription, event) in enumerate(pairs)
        ]
    )
    WebhookAttempt.objects.bulk_create(
        [
            WebhookAttempt(delivery=d, duration_ms=12, status=d.last_status, response_excerpt="ok")
            for d in deliveries
        ]
    )


@pytest.mark.parametrize(
    "url",
    [
        SUBSCRIPTIONS,
        f"{SUBSCRIPTIONS}?deliveries=pending&o=6",
        DELIVERIES,
        f"{DELIVERIES}?state__exact=pending&o=-3",
    ],
)
def test_the_lists_run_the_same_queries_for_1_and_30_rows(root: Person, url: str) -> None:
    many_subscriptions(1)
    with CaptureQueriesContext(db) as one:
        assert root.get(url).status_code == 200
    User.objects.filter(username__startswith="owner").delete()  # and their subscriptions
    many_subscriptions(30)
    with CaptureQueriesContext(db) as thirty:
        response = root.get(url)
    assert response.status_code == 200
    assert response.content.count(b'class="action-select"') >= 15  # the rows were listed
    assert len(thirty) == len(one), [q["sql"] for q in thirty.captured_queries]


# --- Disable, enable, replay -----------------------------------------------------------------


def test_disable_stops_delivery_audits_the_admin_and_emails_the_owner(
    staff: User,
    root: Person,
    receiver: Receiver,
    django_capture_on_commit_callbacks: Any,
) -> None:
    subscription = subscribed(staff, receiver.url)
    with django_capture_on_commit_callbacks(execute=True):
        response = act(root, SUBSCRIPTIONS, "disable_selected", subscription)
    assert response.status_code == 302
    subscription.refresh_from_db()
    assert subscription.state == WebhookSubscription.State.DISABLED
    assert subscription.disabled_reason == "disabled by root in the admin"
    event = ConnectionEvent.objects.get(kind=ConnectionEvent.Kind.WEBHOOK_DISABLED)
    assert event.actor == root.user and event.user == staff
    assert event.detail["subscription"] == subscription.pk
    assert event.detail["reason"] == "disabled by root in the admin"
    assert [m.to for m in mail.outbox] == [[staff.email]]
    # Events go on being recorded, and are held.
    emit(staff, 2)
    assert webhooks.drain(subscription.pk) == "busy"  # nothing claims a disabled subscription
    assert receiver.received == []
    assert subscription.deliveries.filter(state="pending").count() == 2
    # Disabling again changes nothing and says so.
    again = root.post(
        SUBSCRIPTIONS,
        {"action": "disable_selected", ACTION_CHECKBOX_NAME: [subscription.pk], "index": 0},
        follow=True,
    )
    assert "Disable: 1 already disabled." in messages_of(again)
    assert ConnectionEvent.objects.filter(kind="webhook_disabled").count() == 1
    assert len(mail.outbox) == 1


def test_enable_replays_what_was_held_and_audits_the_count(
    staff: User, root: Person, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    subscription, secret = webhooks.subscribe(staff, receiver.url, ["sync.succeeded"])
    webhooks.disable(subscription, "failed for a day")
    emit(staff, 3)
    given_up = subscription.deliveries.order_by("sequence").first()
    assert given_up is not None
    WebhookDelivery.objects.filter(pk=given_up.pk).update(state="failed", attempts=8)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = root.post(
            f"{SUBSCRIPTIONS}{subscription.pk}/act/", {"action": "enable_selected"}, follow=True
        )
    assert response.redirect_chain[-1][0] == page(subscription)
    assert "Enable: 1 enabled." in messages_of(response)
    assert any("3 held or failed deliveries queued" in m for m in messages_of(response))
    assert len(callbacks) == 1  # one delivery task for the subscription, after the commit
    subscription.refresh_from_db()
    assert subscription.is_active and subscription.disabled_reason == ""
    assert set(subscription.deliveries.values_list("state", "attempts")) == {("pending", 0)}
    event = ConnectionEvent.objects.get(kind=ConnectionEvent.Kind.WEBHOOK_ENABLED)
    assert event.actor == root.user and event.detail["replayed"] == 3
    # What that task does: everything held arrives, oldest first, signed with the secret.
    assert webhooks.drain(subscription.pk) == "sent 3"
    assert [b["data"]["sequence"] for b in receiver.bodies()] == [1, 2, 3]
    for headers, body in receiver.received:
        SvixWebhook(secret).verify(body, headers)  # raises on a bad signature
    # An active subscription is left alone.
    again = act(root, SUBSCRIPTIONS, "enable_selected", subscription)
    assert again.status_code == 302
    assert ConnectionEvent.objects.filter(kind="webhook_enabled").count() == 1


def test_replay_sends_a_delivery_again_with_the_same_webhook_id_recorded_in_its_history(
    staff: User, other_staff: User, root: Person, receiver: Receiver
) -> None:
    subscription, secret = webhooks.subscribe(staff, receiver.url, ["sync.succeeded"])
    emit(staff, 2)
    assert webhooks.drain(subscription.pk) == "sent 2"
    first, second = subscription.deliveries.order_by("sequence")
    held = subscribed(other_staff, receiver.url + "?held")
    emit(other_staff)
    webhooks.drain(held.pk)
    webhooks.disable(held, "paused for the test")
    held_delivery = held.deliveries.get()
    response = root.post(
        DELIVERIES,
        {
            "action": "replay_selected",
            ACTION_CHECKBOX_NAME: [first.pk, held_delivery.pk],
            "index": 0,
        },
        follow=True,
    )
    assert (
        "Replay: 2 deliveries queued to be sent again; 1 held until their subscription is enabled."
        in messages_of(response)
    )
    first.refresh_from_db()
    assert (first.state, first.attempts) == ("pending", 0)
    assert WebhookDelivery.objects.get(pk=second.pk).state == "delivered"
    history = LogEntry.objects.filter(object_id=str(first.pk)).get()
    assert history.user == root.user and history.change_message == "Replayed from the admin"
    assert LogEntry.objects.filter(object_id=str(held_delivery.pk)).exists()
    assert "Replayed from the admin" in text(root.get(f"{DELIVERIES}{first.pk}/history/"))
    before = len(receiver.received)
    assert webhooks.drain(subscription.pk) == "sent 1"
    headers, body = receiver.received[before]
    assert headers["webhook-id"] == first.event_id == receiver.received[0][0]["webhook-id"]
    assert body == receiver.received[0][1]  # the same bytes
    SvixWebhook(secret).verify(body, headers)


def test_a_delivery_page_shows_every_attempt_and_the_body_sent(
    staff: User, root: Person, receiver: Receiver, settings: Any
) -> None:
    subscription = subscribed(staff, receiver.url)
    (event,) = emit(staff)
    receiver.status = 500
    webhooks.drain(subscription.pk)  # the first retry is due later, the endpoint paused
    WebhookSubscription.objects.filter(pk=subscription.pk).update(paused_until=None)
    subscription.deliveries.update(next_attempt_at=timezone.now())  # ... and now it is due
    receiver.status = 200
    webhooks.drain(subscription.pk)
    delivery = subscription.deliveries.get()
    assert delivery.attempt_log.count() == 2
    content = text(root.get(delivery_page(delivery)))
    assert "Attempts (newest first)" in content
    assert "answered 500" in content and "answered 200" in content
    for attempt in delivery.attempt_log.all():
        assert f"{attempt.duration_ms} ms" in content
        assert timezone.localtime(attempt.at).strftime("%Y-%m-%d %H:%M:%S") in content
    statuses = [cell.split("</td>")[0].split() for cell in content.split('field-status">')[1:]]
    assert statuses == [["<p>200</p>"], ["<p>500</p>"]]  # newest first
    assert event.id in content and "&quot;sequence&quot;:1" in content
    assert "webhook-signature" not in content and "v1," not in content
    # And the subscription's page lists its latest deliveries, linking to each.
    subscription_page = text(root.get(page(subscription)))
    assert delivery_page(delivery) in subscription_page and event.id in subscription_page


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_delivers_what_was_held_once_an_admin_enables(
    staff: User, receiver: Receiver, worker: Worker, admin_user: User
) -> None:
    root = Client()
    root.force_login(admin_user)
    subscription, secret = webhooks.subscribe(staff, receiver.url, ["sync.succeeded"])
    assert act(root, SUBSCRIPTIONS, "disable_selected", subscription).status_code == 302
    emit(staff, 3)  # committed at once (no test transaction): queued for nobody, held
    assert receiver.received == []
    assert act(root, SUBSCRIPTIONS, "enable_selected", subscription).status_code == 302
    wait_for(lambda: len(receiver.received) >= 3, timeout=60, what="3 deliveries received")
    assert [b["data"]["sequence"] for b in receiver.bodies()] == [1, 2, 3]
    for headers, body in receiver.received:
        SvixWebhook(secret).verify(body, headers)
    wait_for(
        lambda: set(subscription.deliveries.values_list("state", flat=True)) == {"delivered"},
        timeout=30,
        what="the deliveries marked delivered",
    )


# --- WEBHOOKS_ALLOW_PRIVATE with DEBUG off ---------------------------------------------------


def test_the_webhook_pages_say_when_private_endpoints_are_allowed_in_production(
    staff: User, root: Person, receiver: Receiver, settings: Any
) -> None:
    subscription = subscribed(staff, receiver.url)
    urls = (SUBSCRIPTIONS, page(subscription), DELIVERIES)
    settings.DEBUG = False
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    for url in urls:
        response = root.get(url)
        assert PRIVATE_WEBHOOKS in messages_of(response), url
        assert "WEBHOOKS_ALLOW_PRIVATE is on with DEBUG off" in text(response)
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    for url in urls:
        assert "WEBHOOKS_ALLOW_PRIVATE" not in text(root.get(url)), url
    settings.DEBUG = True  # development: what it is for, nothing to say
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    assert "WEBHOOKS_ALLOW_PRIVATE" not in text(root.get(SUBSCRIPTIONS))
