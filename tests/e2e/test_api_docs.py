"""The API's documentation pages in a real browser, under the portal's real Content-Security-
Policy (no `bypass_csp`, unlike the journeys): Swagger UI and Redoc render every operation from
the project's own static files, the browser reports no policy violation and no console error,
and no request leaves the portal's origin (no CDN, no web fonts)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from playwright.sync_api import expect

from integrations import mirror
from integrations.api.keys import issue
from tests.conftest import connection

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Collects what the page's policy refused, from the first byte the page runs.
WATCH_POLICY = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const where = `${event.sourceFile}:${event.lineNumber}`;
  window.__violations.push(`${event.effectiveDirective} refused ${event.blockedURI} at ${where}`);
});
"""


@dataclass
class Visit:
    page: Any
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def violations(self) -> list[str]:
        return list(self.page.evaluate("window.__violations"))


@pytest.fixture
def visit(browser: Any) -> Iterator[Visit]:
    """A page that enforces the policy the portal sends, and records what the page asked for,
    logged as an error, or threw."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    context.add_init_script(WATCH_POLICY)
    page = context.new_page()
    seen = Visit(page)
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on(
        "console",
        lambda message: (
            seen.console_errors.append(message.text) if message.type == "error" else None
        ),
    )
    page.on("pageerror", lambda error: seen.page_errors.append(str(error)))
    yield seen
    context.close()


def directives(policy: str) -> dict[str, str]:
    parts = (part.strip().partition(" ") for part in policy.split(";") if part.strip())
    return {name: value for name, _, value in parts}


def assert_clean(visit: Visit, origin: str) -> None:
    assert visit.violations() == []
    assert visit.console_errors == []
    assert visit.page_errors == []
    outside = [url for url in visit.requests if not url.startswith(f"{origin}/")]
    assert outside == [], "requests outside the portal's origin"


@cache
def summaries() -> list[str]:
    """Every operation's summary, as the schema the pages read states them. Read before a
    page loads: drf-spectacular's first schema, built in two threads at once (this one and the
    live server's), can fail as its extensions load."""
    schema = json.loads(Client().get("/api/schema/", HTTP_ACCEPT="application/json").content)
    found = [op["summary"] for item in schema["paths"].values() for op in item.values()]
    assert "List accounts" in found
    return found


def test_swagger_ui_renders_the_operations_under_the_strict_policy(
    visit: Visit, live_server: Any
) -> None:
    expected = summaries()
    response = visit.page.goto(f"{live_server.url}/api/docs/")
    assert response is not None and response.status == 200
    policy = directives(response.headers["content-security-policy"])
    assert policy["script-src"] == policy["style-src"] == "'self'"
    assert "unsafe" not in str(policy) and "nonce-" not in str(policy)
    for summary in expected:
        expect(visit.page.get_by_text(summary, exact=True).first).to_be_visible()
    # An operation opens: its parameters come from the schema as the browser parsed it.
    visit.page.get_by_text("List accounts", exact=True).first.click()
    expect(visit.page.get_by_text("updated_since", exact=True).first).to_be_visible()
    assert f"{live_server.url}/api/docs/?script=" in visit.requests
    assert_clean(visit, live_server.url)


def test_swagger_ui_tries_an_operation_out_with_a_key(
    visit: Visit, live_server: Any, staff: User
) -> None:
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, [{"id": "A1", "name": "Harbour Bakery"}])
    _row, key = issue(staff, "docs page", ["read"])
    page = visit.page
    page.goto(f"{live_server.url}/api/docs/")
    page.get_by_role("button", name="Authorize").first.click()
    page.locator("#auth-bearer-value").fill(key)
    page.get_by_role("button", name="Apply credentials").click()
    page.get_by_role("button", name="Close").click()
    page.get_by_text("List accounts", exact=True).first.click()
    page.get_by_role("button", name="Try it out").click()
    page.get_by_role("button", name="Execute").click()
    live = page.locator(".live-responses-table")
    expect(live.locator("tbody .response-col_status")).to_have_text("200")
    expect(live).to_contain_text("Harbour Bakery")
    assert_clean(visit, live_server.url)


def test_redoc_renders_the_operations_with_a_nonce_for_its_styles_only(
    visit: Visit, live_server: Any
) -> None:
    expected = summaries()
    response = visit.page.goto(f"{live_server.url}/api/redoc/")
    assert response is not None and response.status == 200
    policy = directives(response.headers["content-security-policy"])
    assert policy["script-src"] == "'self'" and "unsafe" not in str(policy)
    nonce = re.fullmatch(
        r"'self' 'nonce-([A-Za-z0-9+/=]{22,})'( 'sha256-[A-Za-z0-9+/=]+')*", policy["style-src"]
    )
    assert nonce is not None, policy["style-src"]
    for summary in expected:
        # Each operation's heading: its anchor link, then its summary.
        heading = re.compile(rf"{re.escape(summary)}$")
        expect(visit.page.get_by_role("heading", name=heading)).to_be_visible()
    # Redoc's look comes from the <style> element styled-components wrote, with the nonce.
    styled = visit.page.evaluate("document.querySelector('style[data-styled]').nonce")
    assert styled == nonce.group(1)
    assert_clean(visit, live_server.url)


def test_each_load_of_redoc_gets_a_fresh_nonce(visit: Visit, live_server: Any) -> None:
    first = visit.page.goto(f"{live_server.url}/api/redoc/")
    second = visit.page.goto(f"{live_server.url}/api/redoc/")
    assert first is not None and second is not None
    policies = {r.headers["content-security-policy"] for r in (first, second)}
    assert len(policies) == 2
