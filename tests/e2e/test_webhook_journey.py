"""A person subscribes their own system to webhooks in a real browser: the page's secret, a test
event delivered by a real Celery worker to a receiver on 127.0.0.1, the delivery log, a replay
received with the same webhook-id and a signature that verifies (svix)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from integrations.models import WebhookDelivery, WebhookSubscription
from tests.e2e.conftest import assert_accessible, screenshot
from tests.e2e.test_journeys import log_in
from tests.integrations.receivers import Receiver, receiver
from tests.integrations.workers import Worker, use_test_broker, wait_for
from tests.sandboxserver import Sandbox

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def hook(settings: Any) -> Iterator[Receiver]:
    """The agency's system: a receiver on 127.0.0.1 over HTTP, which the portal (this process,
    the live server) and its worker accept only with WEBHOOKS_ALLOW_PRIVATE."""
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    with receiver("/portal-events") as started:
        yield started


@pytest.fixture
def webhook_worker(zywave: Sandbox, tmp_path: Path) -> Iterator[Worker]:
    """A real worker that delivers webhooks (the `webhooks` queue) to 127.0.0.1."""
    use_test_broker()
    started = Worker(zywave, tmp_path / "worker.log", WEBHOOKS_ALLOW_PRIVATE="true").start()
    try:
        yield started
    finally:
        started.stop()


def test_a_staff_member_subscribes_sends_a_test_event_and_replays_it(
    page: Any, live_server: Any, staff: User, hook: Receiver, webhook_worker: Worker
) -> None:
    portal = str(live_server.url)
    log_in(page, portal, "dana", "dana-password")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Webhooks").click()
    page.wait_for_url(f"{portal}/settings/webhooks/")
    expect(page.get_by_text("You have no webhook subscriptions yet.")).to_be_visible()
    assert_accessible(page)

    page.get_by_label("Endpoint URL").fill(hook.url)
    page.get_by_label("sync.succeeded").check()
    page.get_by_label("connection.reauth_required").check()
    page.get_by_role("button", name="Subscribe").click()
    expect(page.locator("#new-secret-panel").get_by_role("alert")).to_contain_text(
        "it will not be shown again"
    )
    # Copy the secret as the hint says: select the field, Ctrl+C, and read the clipboard.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=portal)
    field = page.locator("#new-secret")
    field.select_text()
    page.keyboard.press("Control+C")
    secret = page.evaluate("() => navigator.clipboard.readText()")
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret) and secret == field.input_value()
    assert_accessible(page)
    sub = WebhookSubscription.objects.get(owner=staff)
    assert sub.events == ["connection.reauth_required", "sync.succeeded"]

    # Shown once: the list, opened again, does not have it.
    page.goto(f"{portal}/settings/webhooks/")
    row = page.locator("tbody tr").filter(has_text=hook.url)
    expect(row).to_contain_text("active")
    assert secret not in page.content() and page.locator("#new-secret").count() == 0

    row.get_by_role("link", name=hook.url).click()
    page.wait_for_url(f"{portal}/settings/webhooks/{sub.pk}/")
    page.get_by_role("button", name="Send test event").click()
    expect(page.get_by_role("status")).to_contain_text("is on its way")
    wait_for(lambda: len(hook.got()) == 1, timeout=30, what="the test event at the receiver")
    wait_for(
        lambda: WebhookDelivery.objects.filter(subscription=sub, state="delivered").exists(),
        what="the delivery marked delivered",
    )
    page.reload()
    delivery = page.locator(".delivery").filter(has_text="webhook.test")
    expect(delivery).to_contain_text("delivered")
    expect(delivery.locator("tbody tr")).to_have_count(1)
    expect(delivery.locator("tbody tr")).to_contain_text("HTTP 200")
    (first,) = hook.got()
    expect(delivery).to_contain_text(first.headers["webhook-id"])

    delivery.get_by_role("button", name="Replay #1").click()
    expect(page.get_by_role("status")).to_contain_text("Delivery #1 is sent again.")
    wait_for(lambda: len(hook.got()) == 2, timeout=30, what="the replay at the receiver")
    wait_for(
        lambda: WebhookDelivery.objects.filter(subscription=sub, state="delivered").exists(),
        what="the replay marked delivered",
    )
    page.reload()
    delivery = page.locator(".delivery").filter(has_text="webhook.test")
    expect(delivery.locator("tbody tr")).to_have_count(2)
    expect(delivery.locator("tbody tr").nth(1)).to_contain_text("HTTP 200")

    first, again = hook.got()
    assert first.path == again.path == "/portal-events"
    assert first.headers["webhook-id"] == again.headers["webhook-id"]
    assert first.headers["webhook-id"].startswith("msg_") and first.body == again.body
    # The secret copied from the page verifies both (svix, not the library that signs).
    first.verify(secret)
    again.verify(secret)
    assert_accessible(page)
    screenshot(page, "webhooks")
