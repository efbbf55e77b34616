"""The people's journeys, in a real browser, with real processes behind it."""

from __future__ import annotations

import csv
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import expect

from integrations.api.keys import KEY_PATTERN
from integrations.mirror import upsert
from integrations.models import ApiKey, Connection, SyncRun
from tests.conftest import SCOPES, connection
from tests.e2e.conftest import AXE, assert_accessible, screenshot
from tests.integrations.flows import inject_fault
from tests.integrations.workers import Worker, wait_for
from tests.sandboxserver import Sandbox

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def log_in(page: Any, portal: str, username: str, password: str, path: str = "/login/") -> None:
    page.goto(f"{portal}{path}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.get_by_role("button", name="Log in").click()


def zywave_sign_in(page: Any, allow: bool = True, email: str = "agent@example.com") -> None:
    """At the sandbox: log in if asked, then answer the consent page."""
    page.wait_for_selector("input[name=password], button[name=allow]")
    if page.locator("input[name=password]").count():
        page.fill("input[name=username]", email)
        page.fill("input[name=password]", "sandbox")
        page.locator("form").filter(has=page.locator("input[name=password]")).locator(
            "button[type=submit], input[type=submit]"
        ).first.click()
    page.locator("button[name=allow]" if allow else "button[name=deny]").click()


def connect_and_choose(page: Any, portal: str, sandbox: Sandbox, profile_index: int = 1) -> str:
    """Journey 1's steps; returns the chosen profile's name."""
    log_in(page, portal, "dana", "dana-password")
    page.get_by_role("button", name="Connect Zywave").click()
    zywave_sign_in(page)
    page.wait_for_url(re.compile(r"/zywave/profiles/"))
    chosen = sandbox.profiles()[profile_index]
    page.locator(f"input[name=profile][value='{chosen['id']}']").check()
    page.get_by_role("button", name="Use this profile").click()
    page.wait_for_url(f"{portal}/")
    return str(chosen["name"])


def test_a_staff_member_connects_and_chooses_a_profile(
    page: Any, portal: str, zywave: Sandbox, staff: User
) -> None:
    log_in(page, portal, "dana", "dana-password")
    assert_accessible(page)
    page.get_by_role("button", name="Connect Zywave").click()
    zywave_sign_in(page)
    page.wait_for_url(re.compile(r"/zywave/profiles/"))
    assert page.locator("input[name=profile]").count() == 3
    assert_accessible(page)
    screenshot(page, "profile-picker")
    chosen = zywave.profiles()[1]
    page.locator(f"input[name=profile][value='{chosen['id']}']").check()
    page.get_by_role("button", name="Use this profile").click()
    page.wait_for_url(f"{portal}/")
    assert chosen["name"] in page.content()
    assert "Connected as" in page.content()
    conn = Connection.objects.get(user=staff)
    assert conn.chosen_profile is not None and conn.chosen_profile.zywave_id == chosen["id"]


def test_sync_now_shows_progress_and_the_accounts_match_the_sandbox(
    page: Any, portal: str, zywave: Sandbox, staff: User, worker: Worker
) -> None:
    connect_and_choose(page, portal, zywave, profile_index=0)
    conn = Connection.objects.get(user=staff)
    wait_for(
        lambda: SyncRun.objects.filter(connection=conn, state="succeeded").exists(),
        what="the first sync",
    )
    # Slow the pages down so the bar can be watched.
    inject_fault(zywave, r"^/accounts/v2\.0/(account|contact)$", count=12, delay_ms=400)
    page.goto(f"{portal}/")
    page.get_by_role("button", name="Full resync").click()
    progress = page.locator("#sync-progress")
    # expect() waits 5 s unless told: these wait on the worker, so allow what it may need.
    expect(progress).to_be_visible(timeout=20_000)
    # Only while the bar shows: after the run the page reloads itself without it.
    text = page.locator("#sync-progress:not([hidden]) #sync-text")
    first = text.inner_text().split(" ")[0]
    # The numbers move while we watch: the count the page was served with gives way to
    # another one, written by the page's own polling (static/sync.js).
    expect(text).to_have_text(
        re.compile(rf"^(?!{re.escape(first)} )\d+ records so far"), timeout=30_000
    )
    # The run ends and the page reloads itself to show it.
    expect(progress).to_be_hidden(timeout=60_000)
    resync = SyncRun.objects.filter(connection=conn, full=True).latest("queued_at")
    assert resync.state == "succeeded", resync.error
    expect(page.locator("#sync-panel")).to_contain_text(
        f"succeeded, {resync.records_done} record", timeout=20_000
    )
    assert_accessible(page)
    screenshot(page, "dashboard")
    assert conn.chosen_profile is not None
    counts = zywave.control("GET", "accounts/count", profile_id=conn.chosen_profile.zywave_id)
    page.goto(f"{portal}/zywave/accounts/")
    assert f"{counts['accounts']} accounts" in page.locator("main").inner_text()
    assert_accessible(page)
    screenshot(page, "accounts")
    known = conn.accounts.order_by("name").first()
    assert known is not None
    page.fill("#q", known.name)
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("link", name=known.name).first.click()
    assert_accessible(page)
    for contact in conn.contacts.filter(account_zywave_id=known.zywave_id):
        assert contact.last_name in page.content()


def test_a_revoked_grant_asks_to_reconnect_and_reconnecting_keeps_the_profile(
    page: Any, portal: str, zywave: Sandbox, staff: User, worker: Worker, mailbox: Path
) -> None:
    name = connect_and_choose(page, portal, zywave)
    conn = Connection.objects.get(user=staff)
    wait_for(
        lambda: not SyncRun.objects.filter(connection=conn).active().exists(), what="the first sync"
    )
    zywave.control("POST", "users/agent@example.com/revoke")
    page.goto(f"{portal}/")
    page.get_by_role("button", name="Sync now").click()
    wait_for(
        lambda: Connection.objects.get(pk=conn.pk).status == "reauth_required",
        what="the failed sync",
    )
    page.goto(f"{portal}/zywave/accounts/")
    banner = page.get_by_role("alert").filter(has_text="Zywave needs you to sign in again")
    assert banner.is_visible()
    assert_accessible(page)
    wait_for(lambda: any(mailbox.iterdir()), what="the email")
    mail = "".join(p.read_text() for p in mailbox.iterdir())
    assert "Please reconnect your Zywave account" in mail
    banner.get_by_role("button", name="Reconnect").click()
    zywave_sign_in(page)
    page.wait_for_url(f"{portal}/zywave/accounts/")
    conn.refresh_from_db()
    assert conn.status == "active" and conn.chosen_profile is not None
    assert conn.chosen_profile.name == name
    assert "sign in again" not in page.content()


def test_declining_consent_connects_nothing(
    page: Any, portal: str, zywave: Sandbox, staff: User
) -> None:
    log_in(page, portal, "dana", "dana-password")
    page.get_by_role("button", name="Connect Zywave").click()
    zywave_sign_in(page, allow=False)
    page.wait_for_url(re.compile(r"/oauth/complete/zywave/"))
    assert "You declined access at Zywave" in page.content()
    assert_accessible(page)
    assert not Connection.objects.exists()


def test_disconnecting_revokes_at_zywave_and_offers_connect_again(
    page: Any, portal: str, zywave: Sandbox, staff: User
) -> None:
    connect_and_choose(page, portal, zywave)
    conn = Connection.objects.get(user=staff)
    tokens = [conn.access_token, conn.refresh_token]
    page.get_by_role("link", name="Disconnect…").click()
    assert_accessible(page)
    page.get_by_role("button", name="Disconnect").click()
    page.wait_for_url(f"{portal}/")
    assert page.get_by_role("button", name="Connect Zywave").is_visible()
    for token in tokens:
        assert zywave.control("GET", f"tokens/{token}")["active"] is False


def test_an_admin_finds_the_user_and_refreshes_the_token(
    page: Any, portal: str, zywave: Sandbox, staff: User, admin_user: User
) -> None:
    connect_and_choose(page, portal, zywave)
    page.context.clear_cookies()
    log_in(page, portal, "root", "root-password", path="/admin/login/?next=/admin/")
    assert_accessible(page)
    screenshot(page, "admin-overview")
    page.goto(f"{portal}/admin/integrations/connection/?q=dana")
    assert_accessible(page)
    row = page.locator("#result_list tbody tr").filter(has_text="dana")
    assert row.count() == 1
    assert "active" in row.inner_text().lower()
    zywave.control("POST", "counters/reset")
    row.locator("input[name=_selected_action]").check()
    page.select_option("select[name=action]", label="Refresh token now")
    page.get_by_role("button", name="Go").click()
    page.locator(".messagelist").wait_for()
    assert zywave.counters()["token"].get("refresh_token:success") == 1
    conn = Connection.objects.get(user=staff)
    page.goto(f"{portal}/admin/integrations/connection/{conn.pk}/change/")
    assert_accessible(page)
    assert "root" in page.locator("body").inner_text()
    assert conn.events.filter(kind="refreshed").exists()


def test_a_staff_member_makes_an_api_key_uses_it_and_revokes_it(
    page: Any, live_server: Any, staff: User
) -> None:
    portal = str(live_server.url)
    log_in(page, portal, "dana", "dana-password")
    page.get_by_role("link", name="API keys").click()
    page.wait_for_url(f"{portal}/settings/api-keys/")
    assert_accessible(page)
    page.fill("#id_name", "Nightly report")
    page.get_by_label(re.compile(r"^read:")).check()
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("alert")).to_contain_text("it will not be shown again")
    key = page.locator("#new-key").input_value()
    assert KEY_PATTERN.fullmatch(key)
    assert_accessible(page)
    # Shown once: the page itself, opened again, has only the prefix.
    page.goto(f"{portal}/settings/api-keys/")
    row = page.locator("tbody tr").filter(has_text="Nightly report")
    expect(row).to_contain_text(f"zwk_{key[4:12]}_…")
    assert key not in page.content() and page.locator("#new-key").count() == 0
    # Another system, with a real HTTP client.
    api = f"{portal}/api/v1/connection"
    headers = {"Authorization": f"Bearer {key}"}
    answer = requests.get(api, headers=headers, timeout=10)
    assert answer.status_code == 200 and answer.json()["status"] == "not_connected"
    row.get_by_text("Revoke…").click()
    row.get_by_role("button", name="Revoke “Nightly report”").click()
    expect(page.get_by_role("status")).to_contain_text("is revoked")
    expect(page.locator("tbody tr").filter(has_text="Nightly report")).to_contain_text("revoked")
    assert_accessible(page)
    refused = requests.get(api, headers=headers, timeout=10)
    assert refused.status_code == 401
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert "revoked" in refused.json()["detail"]
    assert ApiKey.objects.get(owner=staff).revoked_by == staff


def assert_no_axe_violation(page: Any) -> None:
    """Stricter than `assert_accessible`: axe finds no violation at all, whatever its impact."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    assert [(v["impact"], v["id"], v["nodes"][0]["target"]) for v in result["violations"]] == []


def test_a_staff_member_finds_the_renewals_of_a_carrier_and_downloads_them(
    page: Any, live_server: Any, staff: User, tmp_path: Path
) -> None:
    portal = str(live_server.url)
    conn = connection(staff, granted_scopes=f"{SCOPES} api.policies:read")
    upsert(
        "accounts",
        conn.pk,
        1,
        [{"id": "A1", "name": "Acme Roofing"}, {"id": "A2", "name": "Beta Bakery"}],
    )
    upsert(
        "contacts",
        conn.pk,
        1,
        [
            {
                "id": "c1",
                "accountId": "A1",
                "firstName": "Ada",
                "lastName": "Ng",
                "emailAddress": "ada@acme.test",
                "isPrimaryContact": True,
            },
            {
                "id": "c2",
                "accountId": "A2",
                "firstName": "Ben",
                "lastName": "Ode",
                "emailAddress": "ben@beta.test",
                "isPrimaryContact": True,
            },
        ],
    )
    today = timezone.localdate()

    def policy(
        number: str,
        days: int,
        line: str,
        carrier: str,
        account: str,
        premium: str,
        archived: bool = False,
    ) -> dict[str, Any]:
        expires = today + timedelta(days=days)
        return {
            "id": number,
            "accountId": account,
            "policyNumber": number,
            "lineOfBusiness": line,
            "carrierName": carrier,
            "effectiveDate": str(expires - timedelta(days=365)),
            "expirationDate": str(expires),
            "premium": premium,
            "isActive": True,
            "isArchived": archived,
            "updatedDateTime": "2026-11-01T10:00:00Z",
        }

    upsert(
        "policies",
        conn.pk,
        1,
        [
            policy("R1", 10, "Property", "Acme Mutual", "A1", "1234.50"),
            policy("R2", 20, "Auto", "Beacon Insurance", "A2", "870"),
            policy("R3", 45, "Property", "Beacon Insurance", "A1", "15000.00"),
            policy("R4", 75, "Cyber", "Beacon Insurance", "A2", "2400.10"),
            policy("R5", 85, "Auto", "Acme Mutual", "A2", "500.00"),
            policy("R6", 120, "Auto", "Beacon Insurance", "A1", "1.00"),  # beyond 90 days
            policy("R7", 15, "Auto", "Beacon Insurance", "A1", "2.00", archived=True),
        ],
    )
    rows = page.locator("main tbody tr")

    log_in(page, portal, "dana", "dana-password")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Renewals").click()
    page.wait_for_url(f"{portal}/zywave/renewals/")
    expect(rows).to_have_count(2)  # 30 days by default: R1 and R2
    assert_no_axe_violation(page)

    page.get_by_label("Expiring within").select_option("90")
    page.get_by_role("button", name="Show").click()
    expect(rows).to_have_count(5)
    # The carriers of the 90-day window are offered now.
    page.get_by_label("Carrier").select_option("Beacon Insurance")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r"carrier=Beacon"))
    expect(rows.locator("th")).to_have_text(["R2", "R3", "R4"])
    r3 = rows.filter(has_text="R3")
    expect(r3).to_contain_text("Property")
    expect(r3).to_contain_text("$15,000.00")
    expect(r3).to_contain_text("Ada Ng")
    expect(r3).to_contain_text("ada@acme.test")
    assert_no_axe_violation(page)
    filtered = page.url

    r3.get_by_role("link", name="Acme Roofing").click()
    page.wait_for_url(f"{portal}/zywave/accounts/A1/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Acme Roofing")
    expect(page.locator("#policies-heading + table")).to_contain_text("R3")
    page.go_back()
    page.wait_for_url(filtered)
    expect(rows.locator("th")).to_have_text(["R2", "R3", "R4"])

    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == f"renewals-90-days-{today:%Y%m%d}.csv"
    with saved.open(newline="") as lines:
        exported = list(csv.reader(lines))
    assert exported[0][:7] == [
        "policy number",
        "line of business",
        "carrier",
        "effective date",
        "expiration date",
        "days left",
        "premium",
    ]
    assert [(row[0], row[2], row[5], row[6], row[8], row[9]) for row in exported[1:]] == [
        ("R2", "Beacon Insurance", "20", "870.00", "Beta Bakery", "Ben Ode"),
        ("R3", "Beacon Insurance", "45", "15000.00", "Acme Roofing", "Ada Ng"),
        ("R4", "Beacon Insurance", "75", "2400.10", "Beta Bakery", "Ben Ode"),
    ]
