"""Headers: every HTML page a staff member and an admin can GET (the same URL walk as the CSRF
tests) carries the production security headers, served with production settings.

`tests/portal/test_production.py` checks the login page, the OAuth callback and errors in a
production process; this runs the whole page list in one more such process, reusing its
environment and runner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.portal.test_production import production_env, run

CRAWL = """
import json, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
call_command("collectstatic", verbosity=0, interactive=False)
from portal.celery import app
app.control.ping = lambda timeout: []
from tests.conftest import Person, member
from tests.security.cast import account_ids, admin_urls, own_data, portal_urls
staff, root = member("dana"), member("root", admin=True)
own_data(staff)
urls = portal_urls(account_ids(staff)[1]) + admin_urls()
seen = {}
for who, user in (("staff", staff), ("admin", root)):
    http = Person(user, HTTP_HOST="portal.example.com")
    for url in urls:
        response = http.get(url, secure=True)
        seen[f"{who} {url}"] = {"status": response.status_code, "headers": dict(response.items())}
print(json.dumps(seen))
"""

EXPECTED = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains; preload",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp_path: Path = tmp_path_factory.mktemp("production-crawl")
    result = run(production_env(tmp_path), "-c", CRAWL)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def html_pages(crawled: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        page: answer["headers"]
        for page, answer in crawled.items()
        if answer["status"] == 200
        and answer["headers"].get("Content-Type", "").startswith("text/html")
    }


def test_the_crawl_reaches_the_pages_of_staff_and_admins(crawled: dict[str, Any]) -> None:
    pages = html_pages(crawled)
    assert len([p for p in pages if p.startswith("staff ")]) >= 6
    assert len([p for p in pages if p.startswith("admin ")]) >= 30


def test_every_html_page_carries_the_production_security_headers(
    crawled: dict[str, Any],
) -> None:
    missing = {
        page: {name for name, value in EXPECTED.items() if headers.get(name) != value}
        for page, headers in html_pages(crawled).items()
    }
    assert {page: names for page, names in missing.items() if names} == {}


def test_every_html_page_carries_a_content_security_policy_without_unsafe_sources(
    crawled: dict[str, Any],
) -> None:
    policies = {
        page: h.get("Content-Security-Policy", "") for page, h in html_pages(crawled).items()
    }
    bad = {
        page: policy
        for page, policy in policies.items()
        if "default-src 'self'" not in policy
        or "frame-ancestors 'none'" not in policy
        or "unsafe" in policy
    }
    assert bad == {}


def test_no_page_a_person_can_reach_fails_in_production(crawled: dict[str, Any]) -> None:
    # /health/ answers 503 here by design: this process has no Redis and no worker.
    failed = {page: a["status"] for page, a in crawled.items() if a["status"] >= 500}
    assert {page: status for page, status in failed.items() if "/health/" not in page} == {}


def test_every_answer_says_nosniff_and_pages_with_a_session_are_not_cached_publicly(
    crawled: dict[str, Any],
) -> None:
    sniffable = [
        p for p, a in crawled.items() if a["headers"].get("X-Content-Type-Options") != "nosniff"
    ]
    assert sniffable == []
    public = [
        page
        for page, headers in html_pages(crawled).items()
        if "public" in headers.get("Cache-Control", "")
    ]
    assert public == []
