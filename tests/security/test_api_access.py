"""The integration API's door: every endpoint, in one table, against every way a caller can be
wrong (no key, a malformed header, a revoked or expired key, a deactivated owner, a key without
the scope, a wrong method) and against another person's key, which must get that person's own
data and nothing of anyone else's. A new endpoint is one row of ENDPOINTS.

Each refusal is checked whole: its status, a problem+json body (`tests.api.callers.problem`),
`WWW-Authenticate` on a 401, `Allow` on a 405, no table changed, and no echo of what was sent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from django.contrib.auth.models import User
from django.db import connection as db
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.utils import timezone

from integrations import webhooks
from integrations.api.keys import SCOPES
from integrations.models import ApiKey, Connection, SyncRun, WebhookSubscription
from tests.api.callers import System, problem, system_of
from tests.conftest import connection
from tests.security import cast
from tests.security.cast import SHARED_ID, account_ids, row_counts

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Endpoint:
    """One endpoint and method. `path` may name an object of the data's owner: `{account}`
    (an account id only they have), `{run}` (their sync run), `{webhook}` (their webhook
    subscription) or `{delivery}` (its delivery)."""

    method: str
    path: str
    scope: str  # the scope the key needs
    allowed: int  # the status for the owner's own key with the scope
    wrong_method: str  # a method the path refuses with 405
    body: Any = None  # a JSON body to send
    theirs: int | None = None  # the status when the path names another person's object
    zywave: bool = False  # answered by Zywave (the proxy): connections linked via the sandbox

    def url(self, owner: User) -> str:
        run = SyncRun.objects.filter(connection__user=owner).values_list("pk", flat=True).first()
        hook = WebhookSubscription.objects.filter(owner=owner).order_by("pk").first()
        delivery = hook.deliveries.values_list("event_id", flat=True).first() if hook else None
        # Once deleted (a row's first call), an id no one has: still this endpoint's route.
        return self.path.format(
            account=account_ids(owner)[1],
            run=run,
            webhook=hook.pk if hook else 0,
            delivery=delivery or "msg_none",
        )


HOOK = "/api/v1/webhooks/{webhook}"
# A subscription to a local address (allowed in these tests: `local_receivers`).
NEW_HOOK = {"url": "http://127.0.0.1:9/hooks/new", "events": ["sync.failed"]}
ANY_TIME = {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}

# Zywave's API (the sandbox's, as Zywave's) serves GET only: a write through the proxy reaches
# it and comes back as Zywave's 405, which is how these rows show the key was let through.
ZYWAVE_PATH = "/api/v1/zywave/profiles/V2.0/Profile/B"

ENDPOINTS = [
    pytest.param(Endpoint("GET", "/api/v1/connection", "read", 200, "POST"), id="GET connection"),
    pytest.param(Endpoint("GET", "/api/v1/accounts", "read", 200, "POST"), id="GET accounts"),
    pytest.param(
        Endpoint("GET", "/api/v1/accounts/{account}", "read", 200, "DELETE", theirs=404),
        id="GET accounts/{id}",
    ),
    pytest.param(Endpoint("GET", "/api/v1/contacts", "read", 200, "PUT"), id="GET contacts"),
    pytest.param(Endpoint("GET", "/api/v1/policies", "read", 200, "POST"), id="GET policies"),
    pytest.param(Endpoint("GET", "/api/v1/syncs", "read", 200, "DELETE"), id="GET syncs"),
    pytest.param(
        Endpoint("POST", "/api/v1/syncs", "sync", 202, "PATCH", body={"full": False}),
        id="POST syncs",
    ),
    pytest.param(
        Endpoint("GET", "/api/v1/syncs/{run}", "read", 200, "POST", theirs=404),
        id="GET syncs/{id}",
    ),
    pytest.param(
        Endpoint("GET", ZYWAVE_PATH, "proxy", 200, "TRACE", zywave=True), id="GET zywave/{path}"
    ),
    pytest.param(
        Endpoint("POST", ZYWAVE_PATH, "proxy:write", 405, "TRACE", body={}, zywave=True),
        id="POST zywave/{path}",
    ),
    pytest.param(
        Endpoint("PUT", ZYWAVE_PATH, "proxy:write", 405, "TRACE", body={}, zywave=True),
        id="PUT zywave/{path}",
    ),
    pytest.param(
        Endpoint("PATCH", ZYWAVE_PATH, "proxy:write", 405, "TRACE", body={}, zywave=True),
        id="PATCH zywave/{path}",
    ),
    pytest.param(
        Endpoint("DELETE", ZYWAVE_PATH, "proxy:write", 405, "TRACE", zywave=True),
        id="DELETE zywave/{path}",
    ),
    pytest.param(Endpoint("GET", "/api/v1/webhooks", "webhooks", 200, "PUT"), id="GET webhooks"),
    pytest.param(
        Endpoint("POST", "/api/v1/webhooks", "webhooks", 201, "DELETE", body=NEW_HOOK),
        id="POST webhooks",
    ),
    pytest.param(
        Endpoint("GET", "/api/v1/webhooks/event-types", "webhooks", 200, "POST"),
        id="GET webhooks/event-types",
    ),
    pytest.param(
        Endpoint("GET", HOOK, "webhooks", 200, "POST", theirs=404), id="GET webhooks/{id}"
    ),
    pytest.param(
        Endpoint(
            "PATCH", HOOK, "webhooks", 200, "PUT", body={"events": ["sync.failed"]}, theirs=404
        ),
        id="PATCH webhooks/{id}",
    ),
    pytest.param(
        Endpoint("DELETE", HOOK, "webhooks", 204, "POST", theirs=404), id="DELETE webhooks/{id}"
    ),
    pytest.param(
        Endpoint("POST", f"{HOOK}/test", "webhooks", 202, "GET", theirs=404),
        id="POST webhooks/{id}/test",
    ),
    pytest.param(
        Endpoint("POST", f"{HOOK}/rotate-secret", "webhooks", 200, "GET", theirs=404),
        id="POST webhooks/{id}/rotate-secret",
    ),
    pytest.param(
        Endpoint("POST", f"{HOOK}/enable", "webhooks", 200, "DELETE", theirs=404),
        id="POST webhooks/{id}/enable",
    ),
    pytest.param(
        Endpoint("GET", f"{HOOK}/deliveries", "webhooks", 200, "POST", theirs=404),
        id="GET webhooks/{id}/deliveries",
    ),
    pytest.param(
        Endpoint(
            "POST", f"{HOOK}/deliveries/{{delivery}}/replay", "webhooks", 202, "GET", theirs=404
        ),
        id="POST webhooks/{id}/deliveries/{delivery}/replay",
    ),
    pytest.param(
        Endpoint("POST", f"{HOOK}/replay", "webhooks", 202, "PUT", body=ANY_TIME, theirs=404),
        id="POST webhooks/{id}/replay",
    ),
]


@pytest.fixture(autouse=True)
def local_receivers(settings: Any) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = True  # NEW_HOOK's http://127.0.0.1


def own_data(user: User) -> Connection:
    """`user`'s data of tests.security.cast, and a webhook subscription of theirs (marked with
    the username) with one delivery in its log."""
    conn = cast.own_data(user)
    WebhookSubscription.objects.create(
        owner=user,
        url=f"http://127.0.0.1:9/hooks-of-{user.username}",
        events=["sync.failed"],
        secret=webhooks.new_secret(),
    )
    webhooks.emit(user.pk, "sync.failed", {"sync": {"error": f"error-of-{user.username}"}})
    return conn


def secrets(user: User) -> list[str]:
    """Strings of `user`'s only: tests.security.cast's, their subscriptions' URLs and secrets."""
    hooks = WebhookSubscription.objects.filter(owner=user)
    return [
        *cast.secrets(user),
        f"hooks-of-{user.username}",
        *[secret for hook in hooks for secret in hook.secrets_now()],
    ]


def snapshot(user: User) -> dict[str, object]:
    """tests.security.cast's snapshot, and the person's subscriptions and their logs."""
    hooks = WebhookSubscription.objects.filter(owner=user).order_by("pk")
    return {
        **cast.snapshot(user),
        "webhooks": [
            (h.pk, h.url, h.events, h.state, h.secret, h.previous_secret, h.last_sequence)
            for h in hooks
        ],
        "deliveries": [
            list(h.deliveries.values_list("event_id", "state", "attempts", "next_attempt_at"))
            for h in hooks
        ],
    }


def endpoint_of(row: Any) -> Endpoint:
    """The Endpoint of a row of ENDPOINTS (a pytest.param)."""
    endpoint = row.values[0]
    assert isinstance(endpoint, Endpoint)
    return endpoint


# Zywave logins of the cast's connections on `zywave` rows: two people, two Zywave identities.
ZYWAVE_LOGINS = {"dana": "agent@example.com", "omar": "solo@example.com"}


def prepare(endpoint: Endpoint, request: pytest.FixtureRequest, *people: User) -> None:
    """Each person's own data: their mirror in the database, or for rows answered by Zywave
    their connection linked through the sandbox."""
    if endpoint.zywave:
        zywave = request.getfixturevalue("zywave")
        for person in people:
            connection(person, zywave, zywave_user=ZYWAVE_LOGINS[person.username])
    else:
        for person in people:
            own_data(person)


def call(
    client: Client, endpoint: Endpoint, owner: User, method: str | None = None, **extra: Any
) -> Any:
    """`endpoint` as `client`, on `owner`'s objects; `method` instead of the row's."""
    method = method or endpoint.method
    body = "" if endpoint.body is None or method != endpoint.method else json.dumps(endpoint.body)
    return client.generic(
        method,
        endpoint.url(owner),
        body,
        content_type="application/json" if body else "application/octet-stream",
        **extra,
    )


def key_of(system: System) -> ApiKey:
    assert system.key is not None
    return ApiKey.objects.get(prefix=system.key.split("_")[1])


def refused(response: Any, status: int, sent: str = "") -> dict[str, Any]:
    """The problem body of a refusal, with the header its status calls for; nothing of the
    credential that was sent comes back."""
    body = problem(response, status)
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer"), response.headers
    if sent:
        assert sent.encode() not in response.content
        assert all(sent not in value for value in response.headers.values())
    return body


# --- The table covers the API -----------------------------------------------------------------

# Routes under /api/ that are documentation, not endpoints: open to all, no key.
DOCUMENTATION = {"api:schema", "api:docs", "api:redoc"}
METHODS = ("get", "post", "put", "patch", "delete")


def api_routes() -> dict[str, Any]:
    """Every named route of the `api` namespace, with its view class."""
    found: dict[str, Any] = {}

    def walk(patterns: list[URLPattern | URLResolver], namespace: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
                walk(entry.url_patterns, inner)
            elif entry.name and namespace == "api:":
                found[f"api:{entry.name}"] = getattr(entry.callback, "view_class", None)

    walk(get_resolver().url_patterns, "")
    return found


def test_the_table_has_a_row_for_every_endpoint_and_method_of_the_api(
    staff: User, other_staff: User
) -> None:
    own_data(staff)
    table: set[tuple[str, str]] = set()
    for endpoint in map(endpoint_of, ENDPOINTS):
        table.add((resolve(urlsplit(endpoint.url(staff)).path).view_name, endpoint.method))
    served = {
        (name, method.upper())
        for name, view in api_routes().items()
        if name not in DOCUMENTATION
        for method in METHODS
        if hasattr(view, method)
    }
    assert served - table == set()  # an endpoint without a row of ENDPOINTS
    assert table - served == set()  # a row of ENDPOINTS the API does not serve


# --- Who is refused -------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_no_key_is_401_with_a_challenge(endpoint: Endpoint, staff: User) -> None:
    own_data(staff)
    before = row_counts()
    body = refused(call(System(None), endpoint, staff), 401)
    assert body["code"] == "not_authenticated"
    assert row_counts() == before


def _changed(key: str, index: int) -> str:
    """`key` with the character at `index` replaced by another of the same kind."""
    new = "a" if key[index] != "a" else "b"
    return key[:index] + new + key[index + 1 :]


def _basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


# A key reads zwk_<8-character prefix>_<32-character secret>: index 4 is in the prefix.
MALFORMED: dict[str, Callable[[str], str]] = {
    "Bearer nonsense": lambda key: "Bearer nonsense",
    "Basic with a login": lambda key: _basic("dana:dana-password"),
    "Basic with the key": lambda key: _basic(f"{key}:"),
    "the key with no scheme": lambda key: key,
    "another scheme": lambda key: f"Token {key}",
    "Bearer and nothing": lambda key: "Bearer ",
    "one character of the secret changed": lambda key: f"Bearer {_changed(key, -1)}",
    "one character of the prefix changed": lambda key: f"Bearer {_changed(key, 4)}",
    "the key cut short": lambda key: f"Bearer {key[:-1]}",
    "the key and one more character": lambda key: f"Bearer {key}a",
    "two keys": lambda key: f"Bearer {key} {key}",
    "the secret alone": lambda key: f"Bearer {key.rsplit('_', 1)[1]}",
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_malformed_authorization_header_is_401(endpoint: Endpoint, staff: User) -> None:
    """Each of MALFORMED, made from a valid key of the owner's (one test per endpoint, not per
    header: each test's cast costs a password hash)."""
    own_data(staff)
    valid = system_of(staff)
    assert valid.key is not None
    before = row_counts()
    wrong: dict[str, str] = {}
    for name, malformed in MALFORMED.items():
        header = malformed(valid.key)
        response = call(System(None), endpoint, staff, HTTP_AUTHORIZATION=header)
        credential = header.partition(" ")[2] or header
        try:
            body = refused(response, 401, sent=credential if len(credential) > 8 else "")
            assert body["code"] == "authentication_failed", body
        except AssertionError as failure:
            wrong[name] = str(failure)[:300]
    assert wrong == {}
    assert row_counts() == before
    assert key_of(valid).last_used_at is None


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_revoked_key_is_401(endpoint: Endpoint, staff: User, admin_user: User) -> None:
    own_data(staff)
    system = system_of(staff)
    assert key_of(system).revoke(admin_user)
    before = row_counts()
    body = refused(call(system, endpoint, staff), 401, sent=system.key or "")
    assert "revoked" in body["detail"]
    assert row_counts() == before
    assert key_of(system).last_used_at is None


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_expired_key_is_401(endpoint: Endpoint, staff: User) -> None:
    own_data(staff)
    system = system_of(staff, expires_at=timezone.now() - timedelta(seconds=1))
    before = row_counts()
    body = refused(call(system, endpoint, staff), 401, sent=system.key or "")
    assert "expired" in body["detail"]
    assert row_counts() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_the_key_of_a_deactivated_owner_is_401(endpoint: Endpoint, staff: User) -> None:
    own_data(staff)
    system = system_of(staff)
    staff.is_active = False
    staff.save(update_fields=["is_active"])
    before = row_counts()
    body = refused(call(system, endpoint, staff), 401, sent=system.key or "")
    assert "deactivated" in body["detail"]
    assert row_counts() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_key_without_the_scope_is_403(endpoint: Endpoint, staff: User) -> None:
    own_data(staff)
    system = system_of(staff, *[scope for scope in SCOPES if scope != endpoint.scope])
    before = row_counts()
    response = call(system, endpoint, staff)
    body = refused(response, 403, sent=system.key or "")
    assert body["code"] == "permission_denied"
    assert f"`{endpoint.scope}`" in body["detail"]
    assert "WWW-Authenticate" not in response  # the key is good; only its scope falls short
    assert row_counts() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_wrong_method_is_405_even_for_a_key_with_every_scope(
    endpoint: Endpoint, staff: User
) -> None:
    own_data(staff)
    system = system_of(staff)  # every scope: the 405 is not a 403 in disguise
    before = row_counts()
    response = call(system, endpoint, staff, method=endpoint.wrong_method)
    body = refused(response, 405, sent=system.key or "")
    assert body["code"] == "method_not_allowed"
    allow = {method.strip() for method in response["Allow"].split(",")}
    assert endpoint.method in allow and endpoint.wrong_method not in allow
    assert row_counts() == before


# --- Who is let in, and to what ----------------------------------------------------------------

# The codes of the API's own refusals: a row let in answers none of them.
DOOR = {"not_authenticated", "authentication_failed", "permission_denied", "method_not_allowed"}


def not_refused_at_the_door(response: Any) -> bool:
    if response["Content-Type"] != "application/problem+json":
        return True
    return json.loads(response.content).get("code") not in DOOR


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_the_owners_key_with_only_the_scope_is_let_in(
    endpoint: Endpoint, staff: User, request: pytest.FixtureRequest
) -> None:
    # So the refusals above are the door's, and not of a route that never answers.
    prepare(endpoint, request, staff)
    system = system_of(staff, endpoint.scope)
    response = call(system, endpoint, staff)
    assert response.status_code == endpoint.allowed, response.content[:500]
    assert not_refused_at_the_door(response), response.content[:500]
    assert system.key is not None and system.key.encode() not in response.content


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("lapse", ["revoked", "expired", "owner deactivated"])
def test_a_key_that_lapses_between_two_calls_is_refused_on_the_next(
    endpoint: Endpoint, lapse: str, staff: User, request: pytest.FixtureRequest
) -> None:
    prepare(endpoint, request, staff)
    system = system_of(staff)
    assert call(system, endpoint, staff).status_code == endpoint.allowed
    key = key_of(system)
    if lapse == "revoked":
        assert key.revoke(actor=staff)
    elif lapse == "expired":
        ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now())
    else:
        User.objects.filter(pk=staff.pk).update(is_active=False)
    body = refused(call(system, endpoint, staff), 401, sent=system.key or "")
    assert lapse.split()[-1] in body["detail"]


def test_a_revoked_key_stays_refused_and_the_owners_other_keys_still_work(
    staff: User, admin_user: User
) -> None:
    own_data(staff)
    first, second = system_of(staff, "read"), system_of(staff, "read")
    assert first.get("/api/v1/accounts").status_code == 200
    assert key_of(first).revoke(admin_user)
    assert not key_of(first).revoke(admin_user)  # once
    for _ in range(3):
        refused(first.get("/api/v1/accounts"), 401)
    assert second.get("/api/v1/accounts").status_code == 200


@pytest.mark.parametrize(
    "endpoint",
    [row for row in ENDPOINTS if endpoint_of(row).method == "GET" and not endpoint_of(row).zywave],
)
def test_head_is_let_in_like_get(endpoint: Endpoint, staff: User) -> None:
    own_data(staff)
    system = system_of(staff, endpoint.scope)
    response = call(system, endpoint, staff, method="HEAD")
    assert response.status_code == endpoint.allowed, response.content[:300]


# --- Another person's key -----------------------------------------------------------------


def leaked(response: Any, other: User) -> list[str]:
    """`other`'s strings in a response: their data's (tests.security.cast.secrets), the account
    ids only they have, and their connection's subject."""
    text = response.content.decode(errors="replace") + str(dict(response.headers))
    marks = [*secrets(other), *account_ids(other)[1:], f"sub-{other.username}"]
    return [mark for mark in marks if mark in text]


@pytest.fixture
def outbound(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[requests.PreparedRequest]]:
    """Every HTTP request this process sends (the portal's calls to Zywave among them)."""
    sent: list[requests.PreparedRequest] = []
    send = requests.Session.send

    def spy(self: requests.Session, prepared: requests.PreparedRequest, **kwargs: Any) -> Any:
        sent.append(prepared)
        return send(self, prepared, **kwargs)

    monkeypatch.setattr(requests.Session, "send", spy)
    yield sent


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_another_persons_key_gets_only_its_owners_data(
    endpoint: Endpoint,
    staff: User,
    other_staff: User,
    request: pytest.FixtureRequest,
) -> None:
    """Omar's key on every endpoint, and on dana's objects where the path names one: nothing of
    dana's comes back and nothing of hers changes; the proxy calls Zywave as omar only."""
    prepare(endpoint, request, staff, other_staff)
    omars = system_of(other_staff)
    before = snapshot(staff)
    sent = request.getfixturevalue("outbound")
    response = call(omars, endpoint, staff)
    expected = endpoint.theirs or endpoint.allowed
    assert response.status_code == expected, response.content[:500]
    assert leaked(response, staff) == []
    assert snapshot(staff) == before
    danas, his = Connection.objects.get(user=staff), Connection.objects.get(user=other_staff)
    to_zywave = [r for r in sent if not urlsplit(r.url or "").path.startswith("/_sandbox/")]
    if endpoint.zywave:
        assert to_zywave, "the proxy did not call Zywave"
        assert {r.headers.get("Authorization") for r in to_zywave} == {f"Bearer {his.access_token}"}
        assert all(danas.access_token not in str(r.headers) for r in to_zywave)
        dana_profiles = {profile["name"] for profile in danas.profiles.values("name")}
        text = response.content.decode(errors="replace")
        assert [name for name in dana_profiles if name in text] == []
    else:
        assert to_zywave == []


@pytest.fixture
def their_data(staff: User, other_staff: User) -> None:
    own_data(staff)
    own_data(other_staff)


def ids(response: Any) -> list[Any]:
    assert response.status_code == 200, response.content[:300]
    return sorted(record["id"] for record in response.json()["results"])


@pytest.mark.usefixtures("their_data")
def test_omars_key_lists_omars_accounts_only_however_he_searches(other_staff: User) -> None:
    omars = system_of(other_staff, "read")
    assert ids(omars.get("/api/v1/accounts")) == sorted(account_ids(other_staff))
    for query in ("dana", "Account", "Account dana"):
        found = ids(omars.get("/api/v1/accounts", {"search": query}))
        assert set(found) <= set(account_ids(other_staff))
    assert ids(omars.get("/api/v1/accounts", {"updated_since": "2000-01-01T00:00:00Z"})) == sorted(
        account_ids(other_staff)
    )


@pytest.mark.usefixtures("their_data")
def test_omars_key_lists_omars_contacts_only(other_staff: User) -> None:
    omars = system_of(other_staff, "read")
    expected = sorted(f"c-{zywave_id}" for zywave_id in account_ids(other_staff))
    assert ids(omars.get("/api/v1/contacts")) == expected
    assert ids(omars.get("/api/v1/contacts", {"search": "dana"})) == []


@pytest.mark.usefixtures("their_data")
def test_an_account_id_both_have_is_omars_own_account_for_omars_key(
    staff: User, other_staff: User
) -> None:
    omars = system_of(other_staff, "read")
    response = omars.get(f"/api/v1/accounts/{SHARED_ID}")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "Account omar 0"
    assert [contact["id"] for contact in body["contacts"]] == [f"c-{SHARED_ID}"]
    assert leaked(response, staff) == []
    for zywave_id in account_ids(staff)[1:]:  # ids only dana has
        problem(omars.get(f"/api/v1/accounts/{zywave_id}"), 404)


@pytest.mark.usefixtures("their_data")
def test_danas_sync_run_is_404_for_omars_key_and_his_own_is_found(
    staff: User, other_staff: User
) -> None:
    omars = system_of(other_staff, "read")
    danas_run = SyncRun.objects.get(connection__user=staff)
    his_run = SyncRun.objects.get(connection__user=other_staff)
    body = problem(omars.get(f"/api/v1/syncs/{danas_run.pk}"), 404)
    assert "error-of-dana" not in json.dumps(body)
    assert omars.get(f"/api/v1/syncs/{his_run.pk}").json()["id"] == his_run.pk
    assert ids(omars.get("/api/v1/syncs")) == [his_run.pk]


@pytest.mark.usefixtures("their_data")
def test_posting_a_sync_with_omars_key_queues_omars_run_only(
    staff: User, other_staff: User
) -> None:
    omars = system_of(other_staff, "sync")
    before, runs = snapshot(staff), SyncRun.objects.count()
    response = omars.post_json("/api/v1/syncs", {"full": True})
    assert response.status_code == 202
    run = SyncRun.objects.get(pk=response.json()["id"])
    assert run.connection.user == other_staff and run.state == SyncRun.State.QUEUED
    assert SyncRun.objects.count() == runs + 1
    assert snapshot(staff) == before


@pytest.mark.usefixtures("their_data")
def test_omars_key_reads_omars_connection(staff: User, other_staff: User) -> None:
    response = system_of(other_staff, "read").get("/api/v1/connection")
    assert response.json()["zywave_subject"] == "sub-omar"
    assert leaked(response, staff) == []


# --- last_used_at -----------------------------------------------------------------------------


def key_writes(queries: CaptureQueriesContext) -> int:
    return sum(
        1
        for query in queries.captured_queries
        if query["sql"].lstrip().upper().startswith("UPDATE")
        and "integrations_apikey" in query["sql"]
    )


def test_last_used_is_written_at_most_once_a_minute_per_key(staff: User) -> None:
    connection(staff)
    first, second = system_of(staff, "read"), system_of(staff, "read")
    with CaptureQueriesContext(db) as queries:
        for _ in range(5):
            assert first.get("/api/v1/connection").status_code == 200
            assert second.get("/api/v1/connection").status_code == 200
    assert key_writes(queries) == 2  # once for each key
    used = key_of(first).last_used_at
    assert used is not None and timezone.now() - used < timedelta(seconds=30)

    # Within the minute: no write. A minute on: one write again, for that key only.
    ApiKey.objects.filter(pk=key_of(first).pk).update(last_used_at=used - timedelta(seconds=59))
    with CaptureQueriesContext(db) as queries:
        first.get("/api/v1/connection")
    assert key_writes(queries) == 0
    ApiKey.objects.filter(pk=key_of(first).pk).update(last_used_at=used - timedelta(seconds=61))
    with CaptureQueriesContext(db) as queries:
        for _ in range(3):
            first.get("/api/v1/connection")
            second.get("/api/v1/connection")
    assert key_writes(queries) == 1
    assert key_of(first).last_used_at > used  # type: ignore[operator]
