"""Live updates from Zywave, in a real browser: a staff member connects, reads the receiver URL
on the dashboard, registers it at the sandbox's stand-in for Zywave's admin tool (which checks
it with the challenge), and a change made at Zywave appears on the accounts page without Sync
being pressed: the sandbox delivers to the live portal, a real worker fetches the record."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from integrations import hooks
from integrations.models import Account, Connection, SyncRun, ZywaveNotification
from tests.e2e.conftest import SCREENSHOTS, assert_accessible
from tests.e2e.test_journeys import connect_and_choose
from tests.integrations.workers import Worker, wait_for
from tests.sandboxserver import Sandbox

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DEADLINE = 20.0  # seconds for the change to show on the page, reloading


def revised(name: str) -> str:
    """The name the sandbox gives an account it changes with `field=name`."""
    match = re.fullmatch(r"(.*) \(rev (\d+)\)", name)
    base, rev = (match.group(1), int(match.group(2))) if match else (name, 1)
    return f"{base} (rev {rev + 1})"


def test_a_change_made_in_zywave_appears_on_the_accounts_page_without_pressing_sync(
    page: Any, portal: str, zywave: Sandbox, staff: User, worker: Worker, settings: Any
) -> None:
    settings.PORTAL_URL = portal  # the receiver URL the dashboard shows is the live server's
    connect_and_choose(page, portal, zywave, profile_index=0)
    conn = Connection.objects.get(user=staff)
    wait_for(
        lambda: SyncRun.objects.filter(connection=conn, state="succeeded").exists(),
        what="the first sync",
    )
    runs = SyncRun.objects.filter(connection=conn).count()

    # The dashboard shows the receiver URL and that Zywave has delivered nothing yet.
    page.goto(f"{portal}/")
    panel = page.locator("section[aria-labelledby=hooks-heading]")
    expect(panel.get_by_role("heading")).to_have_text("Live updates from Zywave")
    url = panel.get_by_label("Receiver URL for Zywave's webhooks").input_value()
    assert url == hooks.receiver_url(conn) and url.startswith(f"{portal}/hooks/zywave/")
    expect(panel).to_contain_text("none yet")
    panel.get_by_text("How to register it at Zywave").click()
    expect(panel).to_contain_text("challenge")

    # Registered at Zywave's admin tool (the sandbox's stand-in), as its owner would.
    page.goto(f"{zywave.url}/admin/webhooks")
    if page.locator("input[name=password]").count():  # the connect's sign-in has lapsed
        page.fill("input[name=username]", "agent@example.com")
        page.fill("input[name=password]", "sandbox")
        page.locator("form button[type=submit], form input[type=submit]").first.click()
        page.goto(f"{zywave.url}/admin/webhooks")
    expect(page.get_by_label("User")).to_have_value("agent@example.com")
    page.get_by_label("Event type").select_option("account.updated")
    page.get_by_label("URI").fill(url)
    page.get_by_role("button", name="Add webhook").click()
    expect(page.get_by_role("status")).to_contain_text("added")
    row = page.locator("tbody tr").filter(has_text="account.updated")
    expect(row).to_contain_text(url)  # the portal answered the challenge: the sandbox kept it

    # The accounts page, searched for the account Zywave will change next (the least recently
    # updated), shows its name as the mirror has it now.
    assert conn.chosen_profile is not None
    names = dict(Account.objects.filter(connection=conn).values_list("zywave_id", "name"))
    oldest = Account.objects.filter(connection=conn).order_by("updated_at_zywave").first()
    assert oldest is not None
    page.goto(f"{portal}/zywave/accounts/")
    page.get_by_label("Name contains").fill(oldest.name)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody")).to_contain_text(oldest.name)

    # The change at Zywave; the page is reloaded (never Sync) until it shows it.
    (changed,) = zywave.control(
        "POST", "accounts/change", profile_id=conn.chosen_profile.zywave_id, field="name"
    )["ids"]
    new_name = revised(names[str(changed)])
    if str(changed) != oldest.zywave_id:  # a tie on the update time: search for that one
        page.get_by_label("Name contains").fill(names[str(changed)])
        page.get_by_role("button", name="Filter").click()
    started = time.monotonic()
    link = page.locator("tbody").get_by_role("link", name=new_name, exact=True)
    while not link.count():
        assert time.monotonic() - started < DEADLINE, "the change never showed on the page"
        time.sleep(0.5)
        page.reload()
    took = time.monotonic() - started
    assert_accessible(page)
    assert SyncRun.objects.filter(connection=conn).count() == runs  # no sync brought it
    assert ZywaveNotification.objects.filter(
        connection=conn, record_id=str(changed), state="applied"
    ).exists()
    print(f"\nchange at Zywave -> on the accounts page: {took:.1f} s")

    # Back on the dashboard: Zywave is delivering, so the scheduled syncs are relaxed.
    page.goto(f"{portal}/")
    expect(panel).to_contain_text("1 delivery")
    expect(panel).to_contain_text("relaxed")
    expect(panel).not_to_contain_text("none yet")
    assert_accessible(page)
    # The picture for the docs, without this run's receiver token (a secret like any other).
    token = url.rstrip("/").rsplit("/", 1)[1]
    field = panel.get_by_label("Receiver URL for Zywave's webhooks")
    field.evaluate("(el, shown) => { el.value = shown; }", url.replace(token, "•" * 16))
    assert token not in field.input_value()
    panel.get_by_text("How to register it at Zywave").click()  # opened, for the reader
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    panel.screenshot(path=str(SCREENSHOTS / "zywave-webhooks.png"))
