"""Query strings and path parts with NUL, CR/LF, 10 kB or non-ASCII: answered, never a 500."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from django.contrib.auth.models import User

from tests.conftest import Person
from tests.security.cast import own_data

pytestmark = pytest.mark.django_db

NASTY = ["\x00", "a\x00b", "\r\nX-Injected: yes", "9" * 10_000, "pr\u00f3file \u202e", "%00", "'\""]


@pytest.fixture(autouse=True)
def her_data(staff: User) -> None:
    own_data(staff)


def test_the_mirror_answers_nasty_search_filter_and_page_values(staff: User) -> None:
    client = Person(staff, raise_request_exception=False)  # count 500s instead of raising
    errors = {}
    for value in NASTY:
        for name in ("q", "classification", "status", "page"):
            response = client.get("/zywave/accounts/", {name: value})
            if response.status_code >= 500 or "X-Injected" in response:
                errors[(name, value[:10])] = response.status_code
        response = client.get(f"/zywave/accounts/{quote(value, safe='')}/")
        if response.status_code not in {404}:
            errors[("account", value[:10])] = response.status_code
    assert errors == {}


def test_the_admin_answers_nasty_search_values(admin_user: User) -> None:
    client = Person(admin_user, raise_request_exception=False)  # count 500s instead of raising
    errors = {}
    for value in NASTY:
        for model in ("connection", "account", "contact", "syncrun", "connectionevent"):
            response = client.get(f"/admin/integrations/{model}/", {"q": value})
            if response.status_code >= 500:
                errors[(model, value[:10])] = response.status_code
        response = client.get(f"/admin/integrations/connection/{quote(value, safe='')}/change/")
        if response.status_code >= 500:
            errors[("change", value[:10])] = response.status_code
    assert errors == {}
