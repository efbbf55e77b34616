"""Staff login, logout and the dashboard's login requirement."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client


def test_the_dashboard_sends_anonymous_visitors_to_login(client: Client, db: None) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/"


def test_staff_log_in_and_see_the_zywave_panel(client: Client, staff: User) -> None:
    response = client.post("/login/", {"username": "dana", "password": "dana-password"})
    assert response.status_code == 302
    assert response["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert b"Your Zywave account is not connected." in page.content
    assert b"Connect Zywave" in page.content
    assert "<title>Dashboard · Zywave portal</title>" in page.content.decode()


def test_a_wrong_password_is_refused(client: Client, staff: User) -> None:
    response = client.post("/login/", {"username": "dana", "password": "wrong"})
    assert response.status_code == 200
    assert b"did not match" in response.content
    assert client.get("/").status_code == 302


def test_login_never_redirects_off_site(client: Client, staff: User) -> None:
    response = client.post(
        "/login/?next=//evil.example/", {"username": "dana", "password": "dana-password"}
    )
    assert response["Location"] == "/"


def test_logout_is_a_post_and_ends_the_session(client: Client, staff: User) -> None:
    client.force_login(staff)
    assert client.get("/logout/").status_code == 405
    assert client.post("/logout/")["Location"] == "/login/"
    assert client.get("/").status_code == 302


def test_the_login_page_is_styled_and_has_labels(client: Client, db: None) -> None:
    page = client.get("/login/").content.decode()
    assert '<label for="id_username">' in page
    assert "/static/portal.css" in page


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_an_overlong_username_is_refused_by_the_form_before_authentication(
    client: Client, staff: User, path: str
) -> None:
    """No account has a username over 150 characters; django-axes would record it in a
    varchar(255), which PostgreSQL refuses (a 500 the scanner drill found)."""
    from axes.models import AccessAttempt

    response = client.post(path, {"username": "a" * 300, "password": "x"})
    assert response.status_code == 200
    assert b"at most 150 characters" in response.content
    assert not AccessAttempt.objects.exists()  # authentication was never tried
    wrong = client.post(path, {"username": "dana", "password": "wrong"})
    assert wrong.status_code == 200
    assert AccessAttempt.objects.filter(username="dana").exists()  # normal failures still count
