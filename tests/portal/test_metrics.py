"""`/metrics` on the web port (portal/metrics.py, integrations/metrics.py): only with the bearer
token, in Prometheus's text format, never cached; the domain's gauges read at scrape time in a
bounded number of queries, soft when Redis is down; the counters moved by a real sync, refresh
and re-authorization against the sandbox; and no secret in what it shows.

The processes (gunicorn's workers added up, a worker node's exporter, a database that is down)
are in test_metrics_processes.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import connection as db
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from integrations import metrics
from integrations.models import Account, Connection, SyncRun
from integrations.resources import REGISTRY
from integrations.sync import sync_now
from integrations.tokens import ReauthRequired, access_token_for
from tests.conftest import connection, member
from tests.sandboxserver import Sandbox, free_port

TOKEN = "metrics-token-for-tests-0123456789"


@pytest.fixture
def scraper(settings: Any) -> Client:
    settings.METRICS_TOKEN = TOKEN
    return Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(scraper: Client) -> dict[Any, float]:
    response = scraper.get("/metrics")
    assert response.status_code == 200, response.content[:300]
    return samples(response.content)


# --- Who may read it --------------------------------------------------------------------------


def test_metrics_does_not_exist_without_a_token(client: Client, settings: Any) -> None:
    settings.METRICS_TOKEN = None
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything")
    assert response.status_code == 404


@pytest.mark.parametrize(
    "header",
    ["", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer "],
)
def test_metrics_refuses_a_missing_or_wrong_token(settings: Any, header: str) -> None:
    settings.METRICS_TOKEN = TOKEN
    response = Client().get("/metrics", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "no-store" in response["Cache-Control"]
    assert b"portal_" not in response.content and b"zywave_" not in response.content


@pytest.mark.django_db
def test_metrics_answers_the_token_in_prometheus_text_never_cached(scraper: Client) -> None:
    response = scraper.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "no-store" in response["Cache-Control"] and "max-age=0" in response["Cache-Control"]
    assert "Set-Cookie" not in response  # outside sessions and CSRF
    assert "zywave_token_refreshes_total" in response.content.decode()


@pytest.mark.django_db
def test_metrics_refuses_other_methods_with_the_token(scraper: Client) -> None:
    assert scraper.post("/metrics").status_code == 405


# --- Read at scrape time ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_fresh_database_already_shows_the_domain(scraper: Client) -> None:
    scraped = scrape(scraper)
    for status in Connection.Status.values:
        assert (("portal_connections", (("status", status),))) in scraped
        assert value(scraped, "portal_connections", status=status) == 0
    assert value(scraped, "portal_metrics_source_up", source="database") == 1
    assert value(scraped, "zywave_sync_lag_intervals") == 0
    assert value(scraped, "zywave_sync_interval_seconds") == (
        django_settings.ZYWAVE_SYNC_INTERVAL_MINUTES * 60
    )
    assert value(scraped, "portal_encryption_canary_ok") == 1
    if str(django_settings.CELERY_BROKER_URL).startswith("redis"):
        assert value(scraped, "portal_metrics_source_up", source="redis") == 1
        for queue in metrics.QUEUES:
            assert ("portal_queue_depth", (("queue", queue),)) in scraped


@pytest.mark.django_db
def test_connections_by_status_and_the_sync_lag_count_what_is_there(
    scraper: Client, staff: User, other_staff: User
) -> None:
    late = timezone.now() - timedelta(minutes=3 * django_settings.ZYWAVE_SYNC_INTERVAL_MINUTES)
    connection(staff, authorized_at=late)
    connection(other_staff, status=Connection.Status.REAUTH_REQUIRED)
    scraped = scrape(scraper)
    assert value(scraped, "portal_connections", status="active") == 1
    assert value(scraped, "portal_connections", status="reauth_required") == 1
    # Never synced since it connected three intervals ago; the other cannot sync.
    assert 2.9 < value(scraped, "zywave_sync_lag_intervals") < 3.1
    SyncRun.objects.create(
        connection=staff.zywave_connection,
        state=SyncRun.State.SUCCEEDED,
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    assert value(scrape(scraper), "zywave_sync_lag_intervals") < 0.1


@pytest.mark.django_db
def test_the_scrape_costs_the_same_queries_for_two_connections_or_twenty(
    scraper: Client,
) -> None:
    def queries() -> int:
        with CaptureQueriesContext(db) as captured:
            scrape(scraper)
        return len(captured)

    for n in range(2):
        connection(member(f"few{n}"))
    few = queries()
    for n in range(18):
        connection(member(f"many{n}"))
    assert queries() == few
    assert 4 <= few <= 6  # connections, lag, the canary (two), of the database


@pytest.mark.django_db
def test_redis_down_leaves_out_the_queues_and_says_so_never_a_500(
    scraper: Client, settings: Any
) -> None:
    # A real refusal: nothing listens on this port.
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    scraped = scrape(scraper)
    assert value(scraped, "portal_metrics_source_up", source="redis") == 0
    assert not [key for key in scraped if key[0] == "portal_queue_depth"]
    assert value(scraped, "portal_metrics_source_up", source="database") == 1


@pytest.mark.django_db
def test_the_canary_gauge_is_0_when_the_keys_cannot_decrypt_it(
    scraper: Client, settings: Any
) -> None:
    from cryptography.fernet import Fernet

    assert value(scrape(scraper), "portal_encryption_canary_ok") == 1
    settings.FIELD_ENCRYPTION_KEY = [Fernet.generate_key().decode()]  # what check_canary reads
    assert value(scrape(scraper), "portal_encryption_canary_ok") == 0


# --- Counted where it happens -----------------------------------------------------------------


@pytest.mark.django_db
def test_web_requests_are_counted_by_route_pattern_not_path(scraper: Client) -> None:
    before = scrape(scraper)
    Client().get("/login/")
    Client().get("/no/such/page/12345/")
    after = scrape(scraper)
    key = {"method": "GET", "route": "login/", "status": "200"}
    assert value(after, "portal_http_requests_total", **key) == (
        value(before, "portal_http_requests_total", **key) + 1
    )
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "portal_http_requests_total", **unmatched) >= 1
    assert not [key for key in after if "12345" in str(key)]


@pytest.mark.django_db
def test_a_real_sync_moves_the_sync_request_and_record_counters(
    scraper: Client, staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave)
    before = scrape(scraper)
    run = sync_now(conn, full=True)
    assert run is not None and run.state == SyncRun.State.SUCCEEDED and run.records_done > 0
    after = scrape(scraper)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("zywave_sync_runs_total", outcome="succeeded") == 1
    assert moved("zywave_sync_duration_seconds_count", outcome="succeeded") == 1
    mirrored = sum(moved("zywave_records_mirrored_total", resource=name) for name in REGISTRY)
    assert mirrored == run.records_done
    assert moved("zywave_requests_total", route="/accounts/v2.0/account", status="200") >= 1
    assert moved("zywave_request_duration_seconds_count", route="/accounts/v2.0/account") >= 1
    # Label values are templates: no Zywave id, profile id or query reaches a label.
    assert conn.chosen_profile is not None
    ids = [conn.chosen_profile.zywave_id, *Account.objects.values_list("zywave_id", flat=True)]
    routes = {dict(labels).get("route", "") for name, labels in after if "zywave_req" in name}
    assert "/profiles/V2.0/Profile/{type_code}/{id}" in routes
    assert not [r for r in routes if "?" in r or set(ids) & set(r.split("/"))]


@pytest.mark.django_db
def test_refreshes_and_reauth_are_counted_by_outcome(
    scraper: Client, staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave, access_token_expires_at=timezone.now())
    before = scrape(scraper)
    access_token_for(conn)  # expired: one refresh
    zywave.control("POST", "users/agent@example.com/revoke")
    Connection.objects.filter(pk=conn.pk).update(access_token_expires_at=timezone.now())
    with pytest.raises(ReauthRequired):
        access_token_for(Connection.objects.get(pk=conn.pk))
    after = scrape(scraper)
    for outcome, moved in (("succeeded", 1), ("invalid_grant", 1), ("failed", 0)):
        key = {"outcome": outcome}
        assert (
            value(after, "zywave_token_refreshes_total", **key)
            - value(before, "zywave_token_refreshes_total", **key)
            == moved
        ), outcome
    assert (
        value(after, "zywave_reauth_required_total") - value(before, "zywave_reauth_required_total")
        == 1
    )
    assert value(after, "portal_connections", status="reauth_required") == 1


@pytest.mark.django_db
def test_no_secret_is_in_the_scrape(scraper: Client, staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave)
    sync_now(conn, full=True)
    conn.refresh_from_db()
    body = scraper.get("/metrics").content.decode()
    assert conn.chosen_profile is not None
    secrets = [
        TOKEN,
        conn.access_token,
        conn.refresh_token,
        conn.chosen_profile.profile_token,
        django_settings.SECRET_KEY,
        *django_settings.FIELD_ENCRYPTION_KEY,
        django_settings.ZYWAVE_CLIENT_SECRET,
    ]
    assert all(secrets)
    for secret in secrets:
        assert secret not in body


def test_rate_limit_functions_feed_their_metrics() -> None:
    # The rate limiter calls these; what they count is read back from the registry.
    from prometheus_client import REGISTRY

    def read(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    waited, limited = (
        read("zywave_rate_limit_wait_seconds_count"),
        read("zywave_rate_limited_total"),
    )
    metrics.rate_limit_waited(0.2)
    metrics.rate_limited()
    assert read("zywave_rate_limit_wait_seconds_count") == waited + 1
    assert read("zywave_rate_limited_total") == limited + 1


# --- Route templates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/accounts/v2.0/account", "/accounts/v2.0/account"),
        ("/accounts/v2.0/account/8d1f-22", "/accounts/v2.0/account/{id}"),
        ("/accounts/v2.0/account/ABCDEF", "/accounts/v2.0/account/{id}"),
        ("/accounts/v2.0/account/7/contact/9", "/accounts/v2.0/account/{id}/contact/{id}"),
        ("/profiles/V2.0/Profile/B", "/profiles/V2.0/Profile/{type_code}"),
        ("/profiles/V2.0/Profile/B/1234", "/profiles/V2.0/Profile/{type_code}/{id}"),
        ("/profiles/V2.1/Profile/B/current", "/profiles/V2.1/Profile/{type_code}/current"),
        ("/policies/v3/policy?$skip=100", "/policies/v3/policy"),
        ("/a/v1/b/1/c/2/d/3/e", "/a/v1/b/{id}/c/{id}/..."),
    ],
)
def test_a_route_is_labelled_by_its_template(path: str, template: str) -> None:
    assert metrics.route_template(path) == template


def test_routes_past_the_cap_are_labelled_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_routes", set())
    for n in range(metrics.MAX_ROUTES):
        assert metrics.route_template(f"/api{chr(97 + n % 26)}/v1/r{'x' * (n // 26)}") != "other"
    assert metrics.route_template("/another/v1/route") == "other"
    assert metrics.route_template("/apia/v1/r") == "/apia/v1/r"  # known ones still are


@pytest.mark.django_db
def test_production_answers_the_scrape_over_plain_http_under_any_host_name(
    scraper: Client, settings: Any
) -> None:
    # Prometheus scrapes web:8000 inside the network: no HTTPS redirect, no host check there,
    # while every other path still gets both.
    settings.DEBUG = False
    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["portal.example.com"]
    response = scraper.get("/metrics", HTTP_HOST="web:8000")
    assert response.status_code == 200
    assert scraper.get("/login/", HTTP_HOST="portal.example.com").status_code == 301
    assert scraper.get("/login/", HTTP_HOST="web:8000", secure=True).status_code == 400
