"""The webhook pages (integrations/webhook_pages.py): a person's subscriptions, the secret shown
once, the delivery log after real deliveries to a receiver on 127.0.0.1, the buttons, and the
banner of a disabled subscription. Every view is also asked anonymously, with the wrong method,
without CSRF and for another person's subscription."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.db import connection as db
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations import webhooks
from integrations.models import (
    ConnectionEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)
from integrations.webhook_pages import DELIVERIES_PER_PAGE, SESSION_FORM_IDS
from tests.conftest import Person
from tests.integrations.receivers import Receiver, receiver

pytestmark = pytest.mark.django_db

PAGE = "/settings/webhooks/"
# Nothing listens here: for subscriptions no test delivers to (nothing is sent without a drain).
NOWHERE = "http://127.0.0.1:9/hook"
SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{43}=")


def detail(sub: WebhookSubscription) -> str:
    return f"{PAGE}{sub.pk}/"


def action(sub: WebhookSubscription, name: str) -> str:
    return f"{PAGE}{sub.pk}/{name}/"


def replay_url(sub: WebhookSubscription, delivery: WebhookDelivery) -> str:
    return f"{PAGE}{sub.pk}/deliveries/{delivery.pk}/replay/"


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def shown_secrets(response: Any) -> list[str]:
    return SECRET.findall(response.content.decode())


def to_login(response: Any) -> bool:
    return response.status_code == 302 and response["Location"].startswith("/login/?next=")


def subscribe(person: Client, **fields: Any) -> Any:
    """Send the page's form, as the browser would after loading the page."""
    form_id = person.get(PAGE).context["form"]["form_id"].value()
    data = {"url": NOWHERE, "events": ["sync.succeeded"], "form_id": form_id}
    return person.post(PAGE, {**data, **fields})


def rotate(person: Client, sub: WebhookSubscription) -> Any:
    form_id = person.get(detail(sub)).context["rotate_form_id"]
    return person.post(action(sub, "rotate-secret"), {"form_id": form_id})


def audit_text() -> str:
    return json.dumps(list(ConnectionEvent.objects.values_list("detail", flat=True)))


def deliveries(sub: WebhookSubscription, count: int, attempts: int = 0) -> list[WebhookDelivery]:
    """`count` test events for `sub`, each with `attempts` logged failed attempts."""
    made = [webhooks.send_test(sub) for _ in range(count)]
    WebhookAttempt.objects.bulk_create(
        WebhookAttempt(delivery=d, duration_ms=12, status=503, response_excerpt="busy")
        for d in made
        for _ in range(attempts)
    )
    return made


@pytest.fixture
def private_ok(settings: Any) -> None:
    """Receivers on 127.0.0.1 over HTTP, as in development (WEBHOOKS_ALLOW_PRIVATE)."""
    settings.WEBHOOKS_ALLOW_PRIVATE = True


@pytest.fixture
def hook(private_ok: None) -> Iterator[Receiver]:
    with receiver() as started:
        yield started


@pytest.fixture
def mine(staff: User, private_ok: None) -> WebhookSubscription:
    sub, _secret = webhooks.subscribe(staff, NOWHERE, ["sync.succeeded", "sync.failed"])
    return sub


@pytest.fixture
def theirs(other_staff: User, private_ok: None) -> WebhookSubscription:
    sub, _secret = webhooks.subscribe(other_staff, NOWHERE, ["accounts.changed"])
    return sub


# --- Who may do what -------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_log_in(client: Client, mine: WebhookSubscription) -> None:
    delivery = webhooks.send_test(mine)
    gets = [PAGE, detail(mine)]
    posts = [
        PAGE,
        detail(mine),
        *(action(mine, name) for name in ("test", "rotate-secret", "enable", "delete", "replay")),
        replay_url(mine, delivery),
    ]
    for url in gets:
        assert to_login(client.get(url)), url
    for url in posts:
        assert to_login(client.post(url, {"url": NOWHERE, "events": ["sync.failed"]})), url
    secret = mine.secret
    mine.refresh_from_db()
    assert mine.secret == secret and mine.events == ["sync.failed", "sync.succeeded"]
    assert WebhookDelivery.objects.count() == 1


def test_another_persons_subscription_is_not_found(
    dana: Person, mine: WebhookSubscription, theirs: WebhookSubscription
) -> None:
    webhooks.disable(theirs, "their endpoint failed")
    their_delivery = webhooks.send_test(theirs)
    form_id = dana.get(detail(mine)).context["rotate_form_id"]
    audited = ConnectionEvent.objects.count()
    assert dana.get(detail(theirs)).status_code == 404
    assert dana.post(detail(theirs), {"url": NOWHERE, "events": ["sync.failed"]}).status_code == 404
    for name, data in [
        ("test", {}),
        ("rotate-secret", {"form_id": form_id}),
        ("enable", {}),
        ("replay", {"since": "2020-01-01T00:00", "until": "2030-01-01T00:00"}),
        ("delete", {}),
    ]:
        assert dana.post(action(theirs, name), data).status_code == 404, name
    assert dana.post(replay_url(theirs, their_delivery)).status_code == 404
    # Their delivery through my subscription's URL is not found either.
    assert dana.post(replay_url(mine, their_delivery)).status_code == 404
    assert dana.get(f"{PAGE}{theirs.pk + 1000}/").status_code == 404
    secret = theirs.secret
    theirs.refresh_from_db()
    assert theirs.secret == secret and theirs.state == "disabled"
    assert theirs.events == ["accounts.changed"] and theirs.deliveries.count() == 1
    assert ConnectionEvent.objects.count() == audited


def test_the_post_only_views_refuse_other_methods(dana: Person, mine: WebhookSubscription) -> None:
    delivery = webhooks.send_test(mine)
    for url in [
        *(action(mine, name) for name in ("test", "rotate-secret", "enable", "delete", "replay")),
        replay_url(mine, delivery),
    ]:
        assert dana.get(url).status_code == 405, url
    assert dana.put(PAGE).status_code == 405
    assert dana.delete(detail(mine)).status_code == 405
    assert WebhookSubscription.objects.filter(pk=mine.pk).exists()
    assert mine.deliveries.count() == 1


def test_posts_without_a_csrf_token_are_refused(staff: User, mine: WebhookSubscription) -> None:
    browser = Person(staff, enforce_csrf_checks=True)
    form_id = browser.get(PAGE).context["form"]["form_id"].value()
    made = browser.post(PAGE, {"url": NOWHERE, "events": ["sync.failed"], "form_id": form_id})
    assert made.status_code == 403 and shown_secrets(made) == []
    for name in ("test", "rotate-secret", "enable", "delete", "replay"):
        assert browser.post(action(mine, name)).status_code == 403, name
    assert browser.post(detail(mine), {"url": NOWHERE, "events": ["x"]}).status_code == 403
    assert list(WebhookSubscription.objects.values_list("pk", flat=True)) == [mine.pk]
    assert not mine.deliveries.exists()


# --- The list and subscribing ----------------------------------------------------------------


def test_the_list_shows_the_persons_own_subscriptions_with_their_deliveries(
    dana: Person, staff: User, mine: WebhookSubscription, theirs: WebhookSubscription
) -> None:
    failing, _ = webhooks.subscribe(staff, "http://127.0.0.1:10/failing", ["accounts.changed"])
    done = webhooks.send_test(mine)
    WebhookDelivery.objects.filter(pk=done.pk).update(state="delivered", last_status=204)
    for delivery in deliveries(failing, 2):
        WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=3, last_status=503)
    webhooks.disable(failing, "gave up")
    page = dana.get(PAGE).content.decode()
    rows = re.findall(r"<tr>\s*<td><a href=\"([^\"]+)\">(.*?)</a></td>(.*?)</tr>", page, re.S)
    assert [(href, url) for href, url, _ in rows] == [
        (detail(failing), failing.url),
        (detail(mine), NOWHERE),
    ]
    failing_row, mine_row = (cells for _, _, cells in rows)
    assert "accounts.changed" in failing_row and ">disabled<" in failing_row
    assert "webhook.test: pending (HTTP 503)" in failing_row
    assert re.search(r'class="number">2</td>', failing_row)
    assert "sync.failed, sync.succeeded" in mine_row and ">active<" in mine_row
    assert "webhook.test: delivered (HTTP 204)" in mine_row
    assert re.search(r'class="number">0</td>', mine_row)
    assert theirs.url not in page.replace(NOWHERE, "") and detail(theirs) not in page


def test_the_form_offers_every_event_type_with_what_it_means(dana: Person) -> None:
    page = dana.get(PAGE).content.decode()
    for name, description in webhooks.event_types().items():
        assert re.search(rf'<input type="checkbox" name="events" value="{re.escape(name)}"', page)
        assert description.replace("`", "") in page.replace("`", ""), name


def test_a_new_subscription_shows_its_secret_once(
    dana: Person, staff: User, hook: Receiver
) -> None:
    response = subscribe(dana, url=hook.url, events=["sync.succeeded", "accounts.changed"])
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    (secret,) = set(shown_secrets(response))
    page = response.content.decode()
    assert "it will not be shown again" in page and "Select the secret and copy it" in page
    sub = WebhookSubscription.objects.get(owner=staff)
    assert sub.secret == secret and sub.url == hook.url
    assert sub.events == ["accounts.changed", "sync.succeeded"] and sub.state == "active"
    # The secret the page showed signs what the endpoint gets.
    webhooks.send_test(sub)
    webhooks.drain(sub.pk)
    (got,) = hook.got()
    got.verify(secret)
    # Never again: not on the list, the subscription's page, in the session, a message or the
    # audit.
    for later in (dana.get(PAGE), dana.get(detail(sub))):
        assert secret not in later.content.decode() and shown_secrets(later) == []
        assert not list(later.context["messages"])
    assert secret not in json.dumps(dict(dana.session.items()))
    assert secret not in audit_text()
    event = ConnectionEvent.objects.get(kind=ConnectionEvent.Kind.WEBHOOK_SUBSCRIBED)
    assert event.actor == staff and event.detail["url"] == hook.url


def test_sending_the_same_form_again_makes_no_second_subscription(
    dana: Person, staff: User, private_ok: None
) -> None:
    form_id = dana.get(PAGE).context["form"]["form_id"].value()
    data = {"url": NOWHERE, "events": ["sync.failed"], "form_id": form_id}
    assert len(set(shown_secrets(dana.post(PAGE, data)))) == 1
    again = dana.post(PAGE, data, follow=True)  # a reload of the answer re-sends the form
    assert again.redirect_chain == [(PAGE, 302)]
    assert shown_secrets(again) == [] and "already sent" in again.content.decode()
    assert WebhookSubscription.objects.filter(owner=staff).count() == 1
    forged = dana.post(PAGE, {**data, "form_id": "made-up"})
    assert forged.status_code == 302 and WebhookSubscription.objects.count() == 1
    assert len(dana.session[SESSION_FORM_IDS]) <= 10


def field_error(response: Any, field: str) -> str:
    found = re.search(
        rf'<p class="error" id="id_{field}_error">(.*?)</p>', response.content.decode()
    )
    return found.group(1) if found else ""


def test_a_refused_url_is_shown_on_its_field_and_the_form_can_be_sent_again(
    dana: Person, staff: User, settings: Any
) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    for url, error in [
        ("https://127.0.0.1/hook", "127.0.0.1 is not a public address"),
        ("https://[::ffff:10.0.0.1]/hook", "is not a public address"),
        ("http://203.0.113.9/hook", "The URL must start with https://"),
        ("https://user:pw@203.0.113.9/hook", "may not carry a user name or password"),
    ]:
        response = subscribe(dana, url=url)
        assert response.status_code == 400, url
        assert error in field_error(response, "url"), (url, field_error(response, "url"))
        assert shown_secrets(response) == []
    assert not WebhookSubscription.objects.exists()
    # The refused form carries a fresh one-time id: corrected, it is accepted.
    refused = subscribe(dana, url="https://127.0.0.1/hook")
    form_id = refused.context["form"]["form_id"].value()
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    accepted = dana.post(PAGE, {"url": NOWHERE, "events": ["sync.failed"], "form_id": form_id})
    assert accepted.status_code == 200 and len(set(shown_secrets(accepted))) == 1
    assert WebhookSubscription.objects.get().url == NOWHERE


def test_the_events_must_be_chosen_among_the_known_types(dana: Person, private_ok: None) -> None:
    for events, error in [
        ([], "Choose at least one event type."),
        (["sync.succeeded", "payroll.changed"], "Select a valid choice."),
        (["webhook.test"], "Select a valid choice."),
    ]:
        response = subscribe(dana, events=events)
        assert response.status_code == 400
        assert error in field_error(response, "events"), events
    assert "Give the endpoint" in field_error(subscribe(dana, url="  "), "url")
    assert not WebhookSubscription.objects.exists()


def test_the_navigation_links_to_the_page_next_to_api_keys(dana: Person) -> None:
    page = dana.get("/").content.decode()
    assert re.search(
        r'href="/settings/api-keys/">API keys</a>\s*<a href="/settings/webhooks/">', page
    )


# --- A subscription's page -------------------------------------------------------------------


def test_the_subscriptions_page_shows_it_and_changes_its_events(
    dana: Person, staff: User, mine: WebhookSubscription
) -> None:
    response = dana.get(detail(mine))
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    page = response.content.decode()
    assert NOWHERE in page and ">active<" in page
    checked = re.findall(r'<input type="checkbox" name="events" value="([^"]+)"[^>]* checked', page)
    assert checked == ["sync.succeeded", "sync.failed"]
    changed = dana.post(detail(mine), {"url": NOWHERE, "events": ["accounts.changed"]})
    assert changed.status_code == 302 and changed["Location"] == detail(mine)
    assert "Saved" in messages_of(changed)[0]
    mine.refresh_from_db()
    assert mine.events == ["accounts.changed"]
    event = ConnectionEvent.objects.get(kind=ConnectionEvent.Kind.WEBHOOK_CHANGED)
    assert event.actor == staff and event.detail["fields"] == ["url", "events"]


def test_a_refused_change_is_shown_on_its_field_and_changes_nothing(
    dana: Person, mine: WebhookSubscription, settings: Any
) -> None:
    empty = dana.post(detail(mine), {"url": NOWHERE, "events": []})
    assert empty.status_code == 400
    assert "Choose at least one event type." in field_error(empty, "events")
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    refused = dana.post(detail(mine), {"url": "https://10.0.0.1/", "events": ["sync.failed"]})
    assert refused.status_code == 400
    assert "10.0.0.1 is not a public address" in field_error(refused, "url")
    assert "Nothing was changed" in refused.content.decode()
    mine.refresh_from_db()
    assert mine.url == NOWHERE and mine.events == ["sync.failed", "sync.succeeded"]
    assert not ConnectionEvent.objects.filter(kind=ConnectionEvent.Kind.WEBHOOK_CHANGED).exists()


def test_the_log_shows_each_attempt_after_real_deliveries(
    dana: Person, staff: User, hook: Receiver
) -> None:
    sub, secret = webhooks.subscribe(staff, hook.url, ["sync.succeeded"])
    sent = dana.post(action(sub, "test"))
    assert sent.status_code == 302 and sent["Location"] == detail(sub)
    assert "test event (webhook.test, #1) is on its way" in messages_of(sent)[0]
    (delivery,) = sub.deliveries.all()
    assert delivery.event.type == "webhook.test"
    webhooks.drain(sub.pk)
    hook.status, hook.answer = 503, b"<html>down for maintenance</html>"
    webhooks.send_test(sub)
    webhooks.drain(sub.pk)
    (first, second) = hook.got()
    first.verify(secret)
    second.verify(secret)
    page = dana.get(detail(sub)).content.decode()
    blocks = re.findall(r'<div class="delivery" id="delivery-\d+">(.*?)</div>', page, re.S)
    assert re.findall(r"<h3>#(\d+)", page) == ["2", "1"]
    newest, oldest = blocks
    assert "HTTP 200" in oldest and "{&quot;ok&quot;: true}" in oldest and ">delivered<" in oldest
    assert first.headers["webhook-id"] in oldest
    assert "HTTP 503" in newest and "down for maintenance" in newest
    assert re.search(r'class="number">\d+ ms</td>', newest)
    assert "attempt 2 at" in newest
    attempt = WebhookAttempt.objects.get(delivery__sequence=1)
    assert timezone.localtime(attempt.at).strftime("%H:%M:%S") in oldest
    # A receiver that is gone: the attempt's error is shown.
    hook.status = 200
    unreachable, _ = webhooks.subscribe(staff, "http://127.0.0.1:9/gone", ["sync.failed"])
    webhooks.send_test(unreachable)
    webhooks.drain(unreachable.pk)
    error = WebhookAttempt.objects.get(delivery__subscription=unreachable).error
    assert error and error in dana.get(detail(unreachable)).content.decode()
    assert secret not in page


def test_the_log_is_paged_newest_first(dana: Person, mine: WebhookSubscription) -> None:
    deliveries(mine, DELIVERIES_PER_PAGE + 3)
    first = dana.get(detail(mine)).content.decode()
    second = dana.get(detail(mine), {"page": 2}).content.decode()
    numbers = [int(n) for n in re.findall(r"<h3>#(\d+)", first)]
    assert numbers == list(range(DELIVERIES_PER_PAGE + 3, 3, -1))
    assert [int(n) for n in re.findall(r"<h3>#(\d+)", second)] == [3, 2, 1]
    assert "Page 1 of 2" in first and "?page=2" in first


def test_the_page_runs_the_same_queries_for_one_delivery_or_many(
    dana: Person, staff: User, mine: WebhookSubscription
) -> None:
    deliveries(mine, 1, attempts=1)
    with CaptureQueriesContext(db) as one:
        assert dana.get(detail(mine)).status_code == 200
    deliveries(mine, DELIVERIES_PER_PAGE + 10, attempts=4)
    with CaptureQueriesContext(db) as many:
        assert dana.get(detail(mine)).status_code == 200
    assert len(many) == len(one)
    with CaptureQueriesContext(db) as one_subscription:
        assert dana.get(PAGE).status_code == 200
    for n in range(8):
        other, _ = webhooks.subscribe(staff, f"http://127.0.0.1:9/{n}", ["sync.failed"])
        deliveries(other, 2, attempts=1)
    with CaptureQueriesContext(db) as many_subscriptions:
        assert dana.get(PAGE).status_code == 200
    assert len(many_subscriptions) == len(one_subscription)


# --- The buttons -----------------------------------------------------------------------------


def test_a_test_event_to_a_disabled_subscription_is_held(
    dana: Person, mine: WebhookSubscription
) -> None:
    webhooks.disable(mine, "the endpoint kept failing")
    sent = dana.post(action(mine, "test"))
    assert sent.status_code == 302 and "held until you enable it" in messages_of(sent)[0]
    (delivery,) = mine.deliveries.all()
    assert delivery.state == "pending" and delivery.attempts == 0
    page = dana.get(detail(mine)).content.decode()
    assert "held while the subscription is disabled" in page


def test_replaying_a_delivery_sends_the_same_event_again(
    dana: Person, staff: User, hook: Receiver
) -> None:
    sub, secret = webhooks.subscribe(staff, hook.url, ["sync.succeeded"])
    delivery = webhooks.send_test(sub)
    webhooks.drain(sub.pk)
    replayed = dana.post(replay_url(sub, delivery))
    assert replayed.status_code == 302 and replayed["Location"] == detail(sub)
    assert messages_of(replayed) == ["Delivery #1 is sent again."]
    delivery.refresh_from_db()
    assert delivery.state == "pending" and delivery.attempts == 0
    webhooks.drain(sub.pk)
    first, again = hook.got()
    assert first.headers["webhook-id"] == again.headers["webhook-id"] == delivery.event_id
    assert first.body == again.body
    first.verify(secret)
    again.verify(secret)
    delivery.refresh_from_db()
    assert delivery.state == "delivered" and delivery.attempt_log.count() == 2


def test_replaying_a_time_range_sends_only_what_was_made_in_it(
    dana: Person, mine: WebhookSubscription
) -> None:
    old, middle, recent = deliveries(mine, 3)
    now = timezone.now()
    for delivery, days in ((old, 10), (middle, 5), (recent, 1)):
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            state="delivered", attempts=1, created_at=now - timedelta(days=days)
        )
    since = timezone.localtime(now - timedelta(days=6)).strftime("%Y-%m-%dT%H:%M")
    until = timezone.localtime(now - timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M")
    replayed = dana.post(action(mine, "replay"), {"since": since, "until": until}, follow=True)
    assert replayed.redirect_chain == [(detail(mine), 302)]
    (said,) = (str(m) for m in replayed.context["messages"])
    assert re.fullmatch(r"2 deliveries from .* up to .* are sent again\.", said)
    states = dict(mine.deliveries.values_list("sequence", "state"))
    assert states == {1: "delivered", 2: "pending", 3: "pending"}
    empty = dana.post(
        action(mine, "replay"), {"since": "2001-01-01T00:00", "until": "2001-01-02T00:00"}
    )
    assert messages_of(empty)[0].startswith("No delivery was made from")
    backwards = dana.post(action(mine, "replay"), {"since": until, "until": since})
    assert backwards.status_code == 400
    assert "Choose a time after the start of the range." in backwards.content.decode()
    missing = dana.post(action(mine, "replay"), {"since": since})
    assert missing.status_code == 400 and "This field is required." in missing.content.decode()
    assert dict(mine.deliveries.values_list("sequence", "state")) == states


def test_rotating_shows_the_new_secret_once_and_the_old_one_keeps_signing(
    dana: Person, staff: User, hook: Receiver
) -> None:
    sub, old = webhooks.subscribe(staff, hook.url, ["sync.succeeded"])
    form_id = dana.get(detail(sub)).context["rotate_form_id"]
    rotated = dana.post(action(sub, "rotate-secret"), {"form_id": form_id})
    assert rotated.status_code == 200 and "no-store" in rotated["Cache-Control"]
    (new,) = set(shown_secrets(rotated))
    assert new != old and "keeps signing deliveries too for 24 hours" in rotated.content.decode()
    sub.refresh_from_db()
    assert sub.secret == new and sub.previous_secret == old
    # A reload of that answer re-sends the form: no second rotation (which would drop `old`).
    again = dana.post(action(sub, "rotate-secret"), {"form_id": form_id}, follow=True)
    assert again.redirect_chain == [(detail(sub), 302)]
    assert "not rotated again" in again.content.decode() and shown_secrets(again) == []
    sub.refresh_from_db()
    assert sub.secret == new and sub.previous_secret == old
    later = dana.get(detail(sub)).content.decode()
    assert new not in later and old not in later and "the previous one too until" in later
    assert new not in json.dumps(dict(dana.session.items())) and new not in audit_text()
    webhooks.send_test(sub)
    webhooks.drain(sub.pk)
    (got,) = hook.got()
    got.verify(new)
    got.verify(old)
    assert (
        ConnectionEvent.objects.filter(kind=ConnectionEvent.Kind.WEBHOOK_SECRET_ROTATED).count()
        == 1
    )


def test_enabling_says_how_many_are_replayed_and_sends_them(
    dana: Person, staff: User, hook: Receiver
) -> None:
    sub, secret = webhooks.subscribe(staff, hook.url, ["sync.succeeded"])
    held = deliveries(sub, 3)
    WebhookDelivery.objects.filter(pk=held[0].pk).update(state="failed", attempts=8)
    WebhookDelivery.objects.filter(pk=held[1].pk).update(state="delivered", attempts=1)
    webhooks.disable(sub, "delivery msg_x failed 8 times: HTTP 500")
    page = dana.get(detail(sub)).content.decode()
    assert ">disabled<" in page and "delivery msg_x failed 8 times: HTTP 500" in page
    assert "Enable and send 2 held deliveries" in page
    enabled = dana.post(action(sub, "enable"))
    assert enabled.status_code == 302 and enabled["Location"] == detail(sub)
    assert messages_of(enabled) == ["Enabled: 2 held deliveries are being sent now, oldest first."]
    sub.refresh_from_db()
    assert sub.state == "active" and sub.disabled_reason == ""
    webhooks.drain(sub.pk)
    assert sorted(r.headers["webhook-id"] for r in hook.got()) == sorted(
        [held[0].event_id, held[2].event_id]
    )
    for got in hook.got():
        got.verify(secret)
    assert "Enable and send" not in dana.get(detail(sub)).content.decode()
    # Pressed again (a second tab): nothing is reset.
    again = dana.post(action(sub, "enable"))
    assert messages_of(again) == ["The subscription is already active."]
    assert not sub.deliveries.exclude(state="delivered").exists()


def test_deleting_a_subscription_stops_it_and_goes_back_to_the_list(
    dana: Person, staff: User, mine: WebhookSubscription
) -> None:
    page = dana.get(detail(mine)).content.decode()
    assert "Delete…" in page and "This cannot be undone." in page
    deleted = dana.post(action(mine, "delete"))
    assert deleted.status_code == 302 and deleted["Location"] == PAGE
    assert messages_of(deleted) == [f"Deleted: nothing more is sent to {NOWHERE}."]
    assert not WebhookSubscription.objects.exists()
    event = ConnectionEvent.objects.get(kind=ConnectionEvent.Kind.WEBHOOK_DELETED)
    assert event.actor == staff and event.detail["subscription"] == mine.pk
    assert dana.post(action(mine, "delete")).status_code == 404


# --- The banner ------------------------------------------------------------------------------


def banner(response: Any) -> str:
    found = re.search(
        r'<div class="banner" role="alert" id="webhooks-disabled-banner">(.*?)</div>',
        response.content.decode(),
        re.S,
    )
    return found.group(1) if found else ""


def test_a_disabled_subscription_puts_a_banner_on_every_page_linking_to_it(
    dana: Person, mine: WebhookSubscription, theirs: WebhookSubscription, omar: Person
) -> None:
    assert banner(dana.get("/")) == ""
    webhooks.disable(theirs, "their endpoint failed")
    assert banner(dana.get("/")) == ""  # someone else's is not mine
    webhooks.disable(mine, "the endpoint kept failing")
    for url in ("/", "/settings/api-keys/", PAGE, detail(mine)):
        shown = banner(dana.get(url))
        assert f"Your webhook to {NOWHERE} is disabled." in shown, url
        assert f'<a href="{detail(mine)}">Review the webhook</a>' in shown, url
    assert f'href="{detail(theirs)}"' in banner(omar.get("/"))
    dana.post(action(mine, "enable"))
    assert banner(dana.get("/")) == ""


def test_several_disabled_subscriptions_are_each_linked(
    dana: Person, staff: User, mine: WebhookSubscription
) -> None:
    other, _ = webhooks.subscribe(staff, "http://127.0.0.1:9/other", ["sync.failed"])
    webhooks.disable(mine, "x")
    webhooks.disable(other, "y")
    shown = banner(dana.get("/"))
    assert "2 of your webhooks are disabled." in shown
    assert f'href="{detail(mine)}"' in shown and f'href="{detail(other)}"' in shown


def test_the_login_page_has_no_banner(client: Client, mine: WebhookSubscription) -> None:
    webhooks.disable(mine, "x")
    assert banner(client.get("/login/")) == ""
