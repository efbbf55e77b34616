"""CSRF and safe methods, by walking the URL configuration: a POST without a token is refused
everywhere, and no GET changes any table."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import resolve

from portal.celery import app
from tests.conftest import Person
from tests.security.cast import (
    PORTAL_URLS,
    account_ids,
    admin_urls,
    own_data,
    portal_urls,
    route_names,
    row_counts,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_worker_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # /health/ pings Celery workers (two seconds without one): none runs in these tests.
    monkeypatch.setattr(app.control, "ping", lambda timeout: [{"w@test": {"ok": "pong"}}])


@pytest.fixture
def csrf_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The CSRF check's log lines (`django` does not propagate to caplog's root handler)."""
    logger = logging.getLogger("django.security.csrf")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="django.security.csrf")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.fixture
def their_data(staff: User, other_staff: User) -> None:
    own_data(staff)
    own_data(other_staff)


def every_url(user: User) -> list[str]:
    """The walk as `user` (who has an account of their own) sees it."""
    return portal_urls(account_ids(user)[1]) + admin_urls()


def test_the_walk_covers_every_route_of_the_portal() -> None:
    # A new route must be added to the walk (PORTAL_URLS), or this fails.
    assert route_names() == set(PORTAL_URLS)


# Zywave posts its notifications here with no CSRF token to give: the random token in the URL
# is what authenticates a delivery (tests/integrations/test_hooks.py).
CSRF_EXEMPT = {"zywave_hook"}


def test_the_only_route_without_csrf_is_zywaves_receiver() -> None:
    exempt = {
        name
        for name, url in PORTAL_URLS.items()
        if getattr(resolve(url.format(account="1")).func, "csrf_exempt", False)
    }
    assert exempt == CSRF_EXEMPT


def refused_for_csrf(
    client: Client, urls: list[str], caplog: pytest.LogCaptureFixture
) -> dict[str, Any]:
    """The URLs whose token-less POST was not refused by the CSRF check (status, or 'no log')."""
    missed: dict[str, Any] = {}
    exempt = {PORTAL_URLS[name] for name in CSRF_EXEMPT}
    for url in urls:
        if url in exempt:
            continue
        caplog.clear()
        response = client.post(url, {"action": "sync_now", "_selected_action": "1"})
        csrf_logged = any(
            r.name == "django.security.csrf" and "CSRF" in r.getMessage() for r in caplog.records
        )
        if response.status_code != 403 or not csrf_logged:
            missed[url] = (response.status_code, csrf_logged)
    return missed


@pytest.mark.usefixtures("their_data")
def test_every_post_without_a_csrf_token_is_refused_for_staff(
    staff: User, csrf_log: pytest.LogCaptureFixture
) -> None:
    urls = every_url(staff)
    client = Person(staff, enforce_csrf_checks=True)
    before = row_counts()
    assert refused_for_csrf(client, urls, csrf_log) == {}
    assert row_counts() == before


@pytest.mark.usefixtures("their_data")
def test_every_post_without_a_csrf_token_is_refused_for_an_admin(
    staff: User, admin_user: User, csrf_log: pytest.LogCaptureFixture
) -> None:
    urls = every_url(staff)
    client = Person(admin_user, enforce_csrf_checks=True)
    before = row_counts()
    assert refused_for_csrf(client, urls, csrf_log) == {}
    assert row_counts() == before


@pytest.mark.usefixtures("their_data")
def test_the_same_post_with_a_token_gets_past_the_csrf_check(
    staff: User, csrf_log: pytest.LogCaptureFixture
) -> None:
    # So the refusals above are the CSRF check's and not something else's.
    client = Person(staff, enforce_csrf_checks=True)
    client.get("/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post("/zywave/sync/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert not [r for r in csrf_log.records if r.name == "django.security.csrf"]


@pytest.mark.usefixtures("their_data")
@pytest.mark.parametrize("who", ["anonymous", "staff", "admin"])
def test_no_get_changes_any_table(who: str, staff: User, admin_user: User) -> None:
    # Logging in writes the session: before the snapshot.
    user = {"anonymous": None, "staff": staff, "admin": admin_user}[who]
    client = Client() if user is None else Person(user)
    urls = every_url(staff)
    before = row_counts()
    statuses = {url: client.get(url).status_code for url in urls}
    after = row_counts()
    assert {t: (before[t], after[t]) for t in before if before[t] != after[t]} == {}
    assert {url: status for url, status in statuses.items() if status >= 500} == {}
    # The walk reached real pages, not only login redirects.
    ok = [url for url, status in statuses.items() if status == 200]
    assert len(ok) >= {"anonymous": 2, "staff": 7, "admin": 20}[who], statuses
