"""The OpenAPI schema at /api/schema/, held to what the server does.

The schema is valid OpenAPI 3, and every response it documents, (path, method, status) for
every endpoint, is produced here by the real server code and its body validated against the
documented schema (strictly: no member the schema does not name, none it names missing). The
list of documented responses is read from the schema itself: a new endpoint, or a new status
of an old one, fails `test_every_documented_response` until a case below produces it. 401, 403
and 429 are produced the same way for every operation (`GENERIC`); everything else has a case
of its own (`@case`), with the fixtures it needs. The documentation pages' server side is here
too; the browser's view of them is tests/e2e/test_api_docs.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_schema_validator import validate as validate_instance
from openapi_spec_validator import validate as validate_spec

from integrations import mirror, webhooks
from integrations.api.keys import SCOPES, scope_for
from integrations.models import Connection, SyncRun, WebhookSubscription
from tests.api.callers import System, system_of
from tests.conftest import connection
from tests.integrations.flows import inject_fault
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db

JSON = "application/json"
PROBLEM = "application/problem+json"


@cache
def served() -> dict[str, Any]:
    """The schema as /api/schema/ serves it (read once, by the first test that needs it)."""
    response = Client().get("/api/schema/", HTTP_ACCEPT=JSON)
    assert response.status_code == 200, response.content[:300]
    return dict(json.loads(response.content))


@cache
def generated() -> dict[str, Any]:
    """The schema the view serves, built the view's way when the module is collected (no
    request can be made then), to list the documented responses as parameters."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return dict(json.loads(OpenApiJsonRenderer().render(schema)))


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in {"get", "put", "post", "delete", "options", "head", "patch", "trace"}:
                yield path, method, operation


def documented(schema: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (path, method, status)
        for path, method, operation in operations(schema)
        for status in operation["responses"]
    ]


# --- Validation against the schema ----------------------------------------------------------


def strict(schema: Any) -> Any:
    """`schema` where every object with named properties allows no other member.

    And `{"allOf": [X], "nullable": true}`, drf-spectacular's OpenAPI 3.0 spelling of "X or
    null" (3.0 has no null type), read as that (as Swagger UI, Redoc and client generators
    do): a validator of the letter of 3.0.3 would refuse null there."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        if schema.get("nullable") and "allOf" in schema and "type" not in schema:
            schema.pop("nullable")
            return {"anyOf": [schema, {"enum": [None]}]}
        return schema
    if isinstance(schema, list):
        return [strict(value) for value in schema]
    return schema


def media_type(response: Any) -> str:
    return str(response.get("Content-Type", "")).split(";")[0].strip().lower()


def assert_documented(path: str, method: str, status: str, response: Any) -> None:
    """`response` is what the schema says `method path` answers with `status`: that status,
    a media type it lists, and a body its schema accepts (every `$ref` resolved)."""
    assert response.status_code == int(status), (response.status_code, response.content[:500])
    documented = served()["paths"][path][method]["responses"][status]
    content = documented.get("content")
    if not content:
        assert response.content == b"", "the schema documents no body"
        return
    kind = media_type(response)
    if kind not in content:
        # Only a wildcard may stand for it: the proxy's "Zywave's answer, as it came", bytes.
        wildcards = {f"{kind.split('/')[0]}/*", "*/*"} & set(content)
        assert wildcards, f"{kind!r} is not among the documented {sorted(content)}"
        return
    body = json.loads(response.content)
    schema = strict({**content[kind]["schema"], "components": served()["components"]})
    validate_instance(
        body,
        schema,
        cls=OAS30Validator,
        format_checker=oas30_format_checker,
        enforce_properties_required=True,
    )


# --- The cases --------------------------------------------------------------------------------


@dataclass
class Call:
    """One documented response to produce: `method` on the path template `path`, with the
    test's fixtures at hand (`fixture`)."""

    path: str
    method: str
    request: pytest.FixtureRequest

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def url(self, **values: str) -> str:
        """The template with its parameters filled (`1` for any not given)."""
        return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "1"), self.path)

    def send(self, system: Client, url: str | None = None, **extra: Any) -> Any:
        return getattr(system, self.method)(url or self.url(), **extra)


Exercise = Callable[[Call], Any]  # a response, or a list of them (each must match)


@dataclass(frozen=True)
class Case:
    exercise: Exercise
    slow: bool = False  # needs the sandbox server


CASES: dict[tuple[str, str, str], Case] = {}


def case(path: str, methods: str, *statuses: int, slow: bool = False) -> Any:
    """Registers the decorated function as producing `statuses` for each of `methods`."""

    def register(exercise: Exercise) -> Exercise:
        for method in methods.split():
            for status in statuses:
                key = (path, method, str(status))
                assert key not in CASES, f"two cases for {key}"
                CASES[key] = Case(exercise, slow)
        return exercise

    return register


def scope_needed(call: Call) -> str:
    view = resolve(call.url()).func.view_class  # type: ignore[attr-defined]
    needed = scope_for(view, call.method)
    assert needed is not None, f"{call.method} {call.path} declares no scope"
    return needed


def no_key(call: Call) -> list[Any]:
    call.fixture("staff")
    return [
        call.send(System(None)),
        call.send(System("zwk_notakey")),
        call.send(System(f"zwk_{'a' * 8}_{'b' * 32}")),
    ]


def scope_missing(call: Call) -> Any:
    needed = scope_needed(call)
    return call.send(system_of(call.fixture("staff"), *[s for s in SCOPES if s != needed]))


def throttled(call: Call) -> Any:
    """The first 429 of three calls at one a minute (two, unless a minute turns between)."""
    call.fixture("settings").API_RATE_LIMIT = 1
    system = system_of(call.fixture("staff"))
    answers = [call.send(system) for _ in range(3)]
    return next((a for a in answers if a.status_code == 429), answers[-1])


GENERIC: dict[str, Case] = {
    "401": Case(no_key),
    "403": Case(scope_missing),
    "429": Case(throttled),
}


def records(count: int, prefix: str = "A") -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}{n}",
            "name": f"Account {n}",
            "classification": "Client",
            "numberOfEmployees": n,
            "updatedDateTime": "2026-11-01T00:00:00Z",
        }
        for n in range(count)
    ]


def contacts(count: int, account: str = "A0") -> list[dict[str, Any]]:
    return [
        {"id": f"C{n}", "accountId": account, "firstName": f"First {n}", "isPrimary": n == 0}
        for n in range(count)
    ]


def policies(count: int, account: str = "A0") -> list[dict[str, Any]]:
    return [
        {
            "id": f"P{n}",
            "accountId": account,
            "policyNumber": f"POL-{n}",
            "carrierName": "Acme Mutual",
            "expirationDate": "2027-01-15",
            "premium": 1234.5 + n,
        }
        for n in range(count)
    ]


@pytest.fixture
def mirrored(staff: User) -> Connection:
    """Dana's connection: three accounts (A0 with four contacts), a tombstone of each kind,
    and a finished run."""
    conn = connection(staff)
    mirror.upsert("accounts", conn.pk, 1, records(4))
    mirror.upsert("contacts", conn.pk, 1, contacts(5))
    mirror.upsert("accounts", conn.pk, 2, records(3))
    mirror.upsert("contacts", conn.pk, 2, contacts(4))
    mirror.upsert("policies", conn.pk, 1, policies(4))
    mirror.upsert("policies", conn.pk, 2, policies(3))
    mirror.remove_unseen(conn.pk, 2)
    SyncRun.objects.create(
        connection=conn,
        full=True,
        state=SyncRun.State.SUCCEEDED,
        started_at=timezone.now(),
        finished_at=timezone.now(),
        records_done=9,
    )
    return conn


@case("/api/v1/connection", "get", 200)
def connection_states(call: Call) -> list[Any]:
    staff, other = call.fixture("staff"), call.fixture("other_staff")
    call.fixture("mirrored")
    answers = [call.send(system_of(staff, "read"))]
    assert json.loads(answers[0].content)["last_sync"]["records"] == 9
    answers.append(call.send(system_of(other, "read")))  # not connected
    assert json.loads(answers[-1].content)["action"] == "connect"
    connection(other, profile=False, status=Connection.Status.REAUTH_REQUIRED)
    answers.append(call.send(system_of(other, "read")))
    assert json.loads(answers[-1].content)["profile"] is None
    return answers


def record_pages(call: Call, **extra: str) -> list[Any]:
    call.fixture("mirrored")
    system = system_of(call.fixture("staff"), "read")
    first = call.send(system, data={"page_size": "2", **extra})
    body = json.loads(first.content)
    assert body["next"] and len(body["results"]) == 2
    since = call.send(system, data={"updated_since": "2000-01-01T00:00:00Z", "page_size": "500"})
    assert any(r["deleted"] for r in json.loads(since.content)["results"]), "a tombstone"
    nobody = call.send(system_of(call.fixture("other_staff"), "read"))
    return [first, call.send(system, body["next"]), since, nobody]


@case("/api/v1/accounts", "get", 200)
def account_pages(call: Call) -> list[Any]:
    return record_pages(call, search="Account", status="active", classification="Client")


@case("/api/v1/contacts", "get", 200)
def contact_pages(call: Call) -> list[Any]:
    return record_pages(call, search="First", status="all", account="A0")


@case("/api/v1/policies", "get", 200)
def policy_pages(call: Call) -> list[Any]:
    return record_pages(call, search="POL", status="active", carrier="Acme Mutual")


@case("/api/v1/accounts", "get", 400)
@case("/api/v1/contacts", "get", 400)
@case("/api/v1/policies", "get", 400)
def bad_parameters(call: Call) -> list[Any]:
    call.fixture("mirrored")
    system = system_of(call.fixture("staff"), "read")
    return [
        call.send(system, data=bad)
        for bad in (
            {"page_size": "501"},
            {"page_size": "ten"},
            {"cursor": "not-a-cursor"},
            {"updated_since": "yesterday"},
            {"updated_since": "2026-12-01T10:00:00"},  # no offset
            {"status": "deleted"},
        )
    ]


@case("/api/v1/accounts/{zywave_id}", "get", 200)
def account_with_contacts(call: Call) -> list[Any]:
    call.fixture("mirrored")
    system = system_of(call.fixture("staff"), "read")
    with_contacts = call.send(system, call.url(zywave_id="A0"))
    assert len(json.loads(with_contacts.content)["contacts"]) == 4
    return [with_contacts, call.send(system, call.url(zywave_id="A1"))]


@case("/api/v1/accounts/{zywave_id}", "get", 404)
def account_not_in_the_mirror(call: Call) -> list[Any]:
    call.fixture("mirrored")
    system = system_of(call.fixture("staff"), "read")
    return [
        call.send(system, call.url(zywave_id="nope")),
        call.send(system, call.url(zywave_id="A3")),  # a tombstone
        call.send(system_of(call.fixture("other_staff"), "read"), call.url(zywave_id="A0")),
    ]


@case("/api/v1/syncs", "get", 200)
def recent_runs(call: Call) -> list[Any]:
    conn = call.fixture("mirrored")
    SyncRun.objects.create(connection=conn, state=SyncRun.State.QUEUED)
    return [
        call.send(system_of(call.fixture("staff"), "read")),
        call.send(system_of(call.fixture("other_staff"), "read")),
    ]


@case("/api/v1/syncs", "post", 202)
def a_sync_starts(call: Call) -> list[Any]:
    connection(call.fixture("staff"))
    connection(call.fixture("other_staff"))
    return [
        call.fixture("staff_sync").post_json(call.path, {"full": True}),
        system_of(call.fixture("other_staff"), "sync").post(call.path, content_type=JSON),  # none
    ]


@pytest.fixture
def staff_sync(staff: User) -> System:
    return system_of(staff, "sync")


@case("/api/v1/syncs", "post", 400)
def a_sync_request_that_is_not_valid(call: Call) -> list[Any]:
    connection(call.fixture("staff"))
    system = call.fixture("staff_sync")
    return [
        system.post_json(call.path, [True]),
        system.post_json(call.path, {"full": "yes"}),
        system.post(call.path, "{not json", content_type=JSON),
    ]


@case("/api/v1/syncs", "post", 409)
def a_sync_that_cannot_start(call: Call) -> list[Any]:
    system = call.fixture("staff_sync")
    nothing = system.post_json(call.path, {})
    assert json.loads(nothing.content)["action"] == "connect"
    connection(call.fixture("staff"))
    system.post_json(call.path, {})
    running = system.post_json(call.path, {})
    assert json.loads(running.content)["run"]["state"] == "queued"
    return [nothing, running]


@case("/api/v1/syncs", "post", 413)
def a_sync_request_too_large(call: Call) -> Any:
    call.fixture("settings").DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    return call.fixture("staff_sync").post_json(call.path, {"full": False, "pad": "x" * 2048})


@case("/api/v1/syncs", "post", 415)
def a_sync_request_not_in_json(call: Call) -> list[Any]:
    system = call.fixture("staff_sync")
    return [
        system.post(call.path, "full=true", content_type="application/x-www-form-urlencoded"),
        system.post(call.path, "full", content_type="text/plain"),
    ]


@case("/api/v1/syncs/{run_id}", "get", 200)
def one_run(call: Call) -> Any:
    run = SyncRun.objects.get(connection=call.fixture("mirrored"))
    return call.send(system_of(call.fixture("staff"), "read"), call.url(run_id=str(run.pk)))


@case("/api/v1/syncs/{run_id}", "get", 404)
def a_run_that_is_not_yours(call: Call) -> list[Any]:
    run = SyncRun.objects.get(connection=call.fixture("mirrored"))
    return [
        call.send(system_of(call.fixture("other_staff"), "read"), call.url(run_id=str(run.pk))),
        call.send(system_of(call.fixture("staff"), "read"), call.url(run_id=str(run.pk + 1000))),
    ]


# The proxy: what it refuses itself needs no Zywave; what Zywave answers comes from the sandbox.
PROXY = "/api/v1/zywave/{path}"
WRITES = "post put patch delete"


def proxy_send(call: Call, system: System, path: str, body: bytes | None = None) -> Any:
    if call.method == "get":
        return system.get(call.url(path=path))
    return call.send(system, call.url(path=path), data=body or b"{}", content_type=JSON)


@pytest.fixture
def proxy_system(staff: User) -> System:
    return system_of(staff, "proxy", "proxy:write")


@case(PROXY, f"get {WRITES}", 200, slow=True)
def zywave_answers(call: Call) -> Any:
    sandbox: Sandbox = call.fixture("zywave")
    connection(call.fixture("staff"), sandbox)
    if call.method == "get":
        return proxy_send(call, call.fixture("proxy_system"), "industries/v3.0/industries")
    # The sandbox's routes are read-only; a fault gives the write the answer Zywave would.
    inject_fault(sandbox, "^/accounts/v2.0/account$", status=200, body="{}", content_type=JSON)
    return proxy_send(call, call.fixture("proxy_system"), "accounts/v2.0/account")


@case(PROXY, f"get {WRITES}", 400)
def a_path_not_canonical(call: Call) -> list[Any]:
    system = call.fixture("proxy_system")
    return [
        proxy_send(call, system, "accounts/v2.0/./account"),
        proxy_send(call, system, "accounts//v2.0/account"),
    ]


@case(PROXY, f"get {WRITES}", 403)
def a_path_outside_the_allow_list_or_a_scope_missing(call: Call) -> list[Any]:
    return [
        proxy_send(call, call.fixture("proxy_system"), "_sandbox/counters"),
        scope_missing(call),
    ]


@case(PROXY, f"get {WRITES}", 409)
def a_connection_that_needs_the_person(call: Call) -> list[Any]:
    system = call.fixture("proxy_system")
    nothing = proxy_send(call, system, "accounts/v2.0/account")
    connection(call.fixture("staff"), status=Connection.Status.REAUTH_REQUIRED)
    return [nothing, proxy_send(call, system, "accounts/v2.0/account")]


@case(PROXY, WRITES, 413)
def a_proxied_body_too_large(call: Call) -> Any:
    call.fixture("settings").ZYWAVE_PROXY_MAX_REQUEST_BYTES = 1024
    return proxy_send(call, call.fixture("proxy_system"), "accounts/v2.0/account", b"x" * 2048)


@case(PROXY, f"get {WRITES}", 502)
def zywave_unreachable(call: Call) -> Any:
    connection(call.fixture("staff"))
    call.fixture("settings").ZYWAVE_API_URL = "http://127.0.0.1:9"  # discard: nothing listens
    return proxy_send(call, call.fixture("proxy_system"), "accounts/v2.0/account")


@case(PROXY, f"get {WRITES}", 504, slow=True)
def zywave_too_slow(call: Call) -> Any:
    sandbox: Sandbox = call.fixture("zywave")
    connection(call.fixture("staff"), sandbox)
    call.fixture("settings").ZYWAVE_HTTP_TIMEOUT = (2.0, 0.5)
    inject_fault(sandbox, "^/industries/v3.0/industries$", count=3, delay_ms=1500)
    return proxy_send(call, call.fixture("proxy_system"), "industries/v3.0/industries")


# Webhook subscriptions: dana's, built in the database, with one delivery in its log.
HOOKS = "/api/v1/webhooks"
HOOK = HOOKS + "/{subscription_id}"
ANY_TIME = {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}


@pytest.fixture
def danas_hook(staff: User, settings: Any) -> WebhookSubscription:
    settings.WEBHOOKS_ALLOW_PRIVATE = True  # subscriptions to http://127.0.0.1 below
    subscription, _secret = webhooks.subscribe(staff, "http://127.0.0.1:9/hooks", ["sync.failed"])
    webhooks.emit(staff.pk, "sync.failed", {"sync": {"state": "failed"}})
    return subscription


@pytest.fixture
def staff_hooks(staff: User) -> System:
    return system_of(staff, "webhooks")


def hook_url(call: Call, subscription: WebhookSubscription | None = None) -> str:
    subscription = subscription or call.fixture("danas_hook")
    delivery = subscription.deliveries.values_list("event_id", flat=True).first() or "msg_x"
    return call.url(subscription_id=str(subscription.pk), delivery_id=delivery)


def hook_send(call: Call, body: Any = None, url: str | None = None, **extra: Any) -> Any:
    """`call` with a JSON body (POST and PATCH) on dana's subscription."""
    url = url or hook_url(call)
    if body is None:
        return call.send(call.fixture("staff_hooks"), url, **extra)
    return call.send(call.fixture("staff_hooks"), url, data=json.dumps(body), content_type=JSON)


@case(HOOKS, "get", 200)
def subscriptions_listed(call: Call) -> list[Any]:
    call.fixture("danas_hook")
    return [hook_send(call), call.send(system_of(call.fixture("other_staff"), "webhooks"))]


@case(HOOKS, "post", 201)
def a_subscription_made(call: Call) -> Any:
    call.fixture("settings").WEBHOOKS_ALLOW_PRIVATE = True
    return hook_send(call, {"url": "http://127.0.0.1:9/new", "events": ["accounts.changed"]})


@case(HOOKS, "post", 400)
@case(HOOK, "patch", 400)
def a_subscription_body_not_valid(call: Call) -> list[Any]:
    settings = call.fixture("settings")
    call.fixture("danas_hook")
    answers = [
        hook_send(call, {"url": "http://127.0.0.1:9/x", "events": ["nope.changed"]}),
        hook_send(call, {"url": "http://127.0.0.1:9/x", "events": ["sync.failed"], "x": 1}),
        hook_send(call, ["not", "an", "object"]),
        call.send(call.fixture("staff_hooks"), hook_url(call), data="{not json", content_type=JSON),
    ]
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    answers.append(hook_send(call, {"url": "https://10.0.0.1/x", "events": ["sync.failed"]}))
    return answers


@case(HOOKS, "post", 413)
@case(HOOK, "patch", 413)
@case(HOOK + "/replay", "post", 413)
def a_webhook_body_too_large(call: Call) -> Any:
    call.fixture("danas_hook")
    call.fixture("settings").DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    return hook_send(call, {"url": "x" * 2048, "events": []})


@case(HOOKS, "post", 415)
@case(HOOK, "patch", 415)
@case(HOOK + "/replay", "post", 415)
def a_webhook_body_not_in_json(call: Call) -> Any:
    call.fixture("danas_hook")
    return hook_send(call, data="url=x", content_type="application/x-www-form-urlencoded")


@case(HOOK, "get", 200)
def one_subscription(call: Call) -> list[Any]:
    subscription = call.fixture("danas_hook")
    first = hook_send(call)
    webhooks.rotate_secret(subscription, None)
    webhooks.disable(subscription, "the receiver was down")
    return [first, hook_send(call)]  # with previous_secret_until and disabled_at set


@case(HOOK, "patch", 200)
def a_subscription_changed(call: Call) -> list[Any]:
    call.fixture("danas_hook")
    return [
        hook_send(call, {"events": ["sync.failed", "contacts.changed"]}),
        hook_send(call, {"url": "http://127.0.0.1:9/moved"}),
    ]


@case(HOOK, "delete", 204)
def a_subscription_deleted(call: Call) -> Any:
    return hook_send(call)


@case(HOOK, "get patch delete", 404)
@case(HOOK + "/test", "post", 404)
@case(HOOK + "/rotate-secret", "post", 404)
@case(HOOK + "/enable", "post", 404)
@case(HOOK + "/deliveries", "get", 404)
@case(HOOK + "/deliveries/{delivery_id}/replay", "post", 404)
@case(HOOK + "/replay", "post", 404)
def a_subscription_that_is_not_yours(call: Call) -> list[Any]:
    url = hook_url(call)
    omar = system_of(call.fixture("other_staff"), "webhooks")
    body = {"data": json.dumps({"events": ["sync.failed"], **ANY_TIME}), "content_type": JSON}
    extra = body if call.method in {"post", "patch"} else {}
    answers = [call.send(omar, url, **extra), call.send(omar, call.url(), **extra)]
    if "{delivery_id}" in call.path:  # dana's own subscription, a delivery it does not have
        other = call.url(subscription_id=str(call.fixture("danas_hook").pk))
        answers.append(call.send(call.fixture("staff_hooks"), other))
    return answers


@case(HOOK + "/test", "post", 202)
def a_test_event_queued(call: Call) -> Any:
    return hook_send(call)


@case(HOOK + "/test", "post", 409)
@case(HOOK + "/deliveries/{delivery_id}/replay", "post", 409)
@case(HOOK + "/replay", "post", 409)
def a_disabled_subscription_sends_nothing(call: Call) -> Any:
    url = hook_url(call)
    webhooks.disable(call.fixture("danas_hook"), "down")
    return hook_send(call, ANY_TIME if call.path == HOOK + "/replay" else None, url=url)


@case(HOOK + "/rotate-secret", "post", 200)
def a_secret_rotated(call: Call) -> Any:
    return hook_send(call)


@case(HOOK + "/enable", "post", 200)
def a_subscription_enabled(call: Call) -> list[Any]:
    active = hook_send(call)
    webhooks.disable(call.fixture("danas_hook"), "down")
    return [active, hook_send(call)]


@case(HOOK + "/deliveries", "get", 200)
def the_delivery_log(call: Call) -> list[Any]:
    subscription = call.fixture("danas_hook")
    call.fixture("settings").WEBHOOKS_RETRY_SCHEDULE = [3600.0]  # no retry queued
    webhooks.drain(subscription.pk)  # nothing listens on :9: an attempt with an error
    webhooks.send_test(subscription)  # held: the subscription waits after that failure
    first = hook_send(call, data={"page_size": "1"})
    second = hook_send(call, url=json.loads(first.content)["next"])
    assert json.loads(second.content)["results"][0]["attempt_log"], "an attempt"
    return [first, second]


@case(HOOK + "/deliveries", "get", 400)
def a_delivery_log_parameter_not_valid(call: Call) -> list[Any]:
    return [
        hook_send(call, data=bad)
        for bad in ({"state": "lost"}, {"since": "today"}, {"cursor": "x"}, {"page_size": "501"})
    ]


@case(HOOK + "/deliveries/{delivery_id}/replay", "post", 202)
def a_delivery_replayed(call: Call) -> Any:
    return hook_send(call)


@case(HOOK + "/replay", "post", 202)
def a_range_replayed(call: Call) -> Any:
    return hook_send(call, ANY_TIME)


@case(HOOK + "/replay", "post", 400)
def a_range_not_valid(call: Call) -> list[Any]:
    return [
        hook_send(call, {"since": "2000-01-01T00:00:00Z"}),
        hook_send(call, {"since": ANY_TIME["until"], "until": ANY_TIME["since"]}),
        hook_send(call, {**ANY_TIME, "limit": 5}),
        hook_send(call, "2000"),
    ]


@case(HOOKS + "/event-types", "get", 200)
def the_event_types(call: Call) -> Any:
    return call.send(call.fixture("staff_hooks"))


# --- The tests --------------------------------------------------------------------------------


def test_the_served_schema_is_valid_openapi_3() -> None:
    validate_spec(served())
    assert served()["openapi"].startswith("3.")


def test_the_responses_checked_below_are_the_served_ones() -> None:
    assert documented(generated()) == documented(served())


def test_the_schema_is_yaml_by_default_and_json_when_asked(client: Client) -> None:
    yaml = client.get("/api/schema/")
    assert yaml.status_code == 200 and media_type(yaml) == "application/vnd.oai.openapi"
    assert yaml.content.startswith(b"openapi: 3.")
    for asked in ({"HTTP_ACCEPT": JSON}, {"data": {"format": "json"}}):
        answer = client.get("/api/schema/", **asked)  # type: ignore[arg-type]
        assert answer.status_code == 200 and json.loads(answer.content) == served()


def test_the_schema_needs_no_key(client: Client) -> None:
    assert client.get("/api/schema/", HTTP_AUTHORIZATION="Bearer zwk_wrong").status_code == 200


def test_every_error_is_documented_as_problem_json() -> None:
    for path, method, status in documented(served()):
        if int(status) >= 400:
            content = served()["paths"][path][method]["responses"][status]["content"]
            assert list(content) == [PROBLEM], (path, method, status)


def api_v1_patterns() -> Iterator[URLPattern]:
    (api,) = [
        p
        for p in get_resolver().url_patterns
        if isinstance(p, URLResolver) and p.namespace == "api"
    ]
    for pattern in api.url_patterns:
        if isinstance(pattern, URLPattern) and str(pattern.pattern).lstrip("^").startswith("v1/"):
            yield pattern


def test_every_endpoint_under_v1_is_in_the_schema() -> None:
    """What the exhaustive check below can see is all there is: no v1 view hides from it."""
    documented_views = {
        (resolve(re.sub(r"\{\w+\}", "1", path)).func.view_class, method)  # type: ignore[attr-defined]
        for path, method, _ in operations(served())
    }
    for pattern in api_v1_patterns():
        view = pattern.callback.view_class  # type: ignore[attr-defined]
        methods = [m for m in view.http_method_names if m != "options" and hasattr(view, m)]
        assert methods, pattern
        for method in methods:
            assert (view, method) in documented_views, f"{method.upper()} {pattern.pattern}"


def test_every_case_documents_what_it_produces() -> None:
    """A case for a response the schema no longer lists is a stale case (or a schema gap)."""
    stale = set(CASES) - set(documented(served()))
    assert not stale, sorted(stale)


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        pytest.param(
            *key,
            id=f"{key[1].upper()} {key[0]} {key[2]}",
            marks=[pytest.mark.slow] if key in CASES and CASES[key].slow else [],
        )
        for key in documented(generated())
    ],
)
def test_every_documented_response(
    path: str, method: str, status: str, request: pytest.FixtureRequest
) -> None:
    found = CASES.get((path, method, status)) or GENERIC.get(status)
    if found is None:
        pytest.fail(
            f"{method.upper()} {path} documents {status}, and no case in this module produces "
            "it: add one (@case) that does, against the real server code"
        )
    answers = found.exercise(Call(path, method, request))
    for answer in answers if isinstance(answers, list) else [answers]:
        assert_documented(path, method, status, answer)
        if int(status) >= 400:
            assert json.loads(answer.content)["status"] == int(status)


# --- The documentation pages, server side -------------------------------------------------


def test_the_docs_pages_are_html_served_from_our_own_static_files(client: Client) -> None:
    for page in ("/api/docs/", "/api/redoc/"):
        answer = client.get(page)
        assert answer.status_code == 200 and media_type(answer) == "text/html"
        html = answer.content.decode()
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sources and all(s.startswith(("/", "data:")) for s in sources), sources
        # No inline script or style: every <script> has a src, there is no <style> at all.
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
        assert "<style" not in html and " style=" not in html


def test_swagger_uis_start_up_script_is_a_file_of_its_own(client: Client) -> None:
    script = client.get("/api/docs/", {"script": ""})
    assert script.status_code == 200 and media_type(script) == "application/javascript"
    assert b'url: "/api/schema/"' in script.content


def test_only_redoc_gets_a_nonce_and_a_new_one_each_time(client: Client) -> None:
    first, second = client.get("/api/redoc/"), client.get("/api/redoc/")
    nonces = [
        re.search(r"'nonce-([^']+)'", a["Content-Security-Policy"]).group(1)  # type: ignore[union-attr]
        for a in (first, second)
    ]
    assert nonces[0] != nonces[1]
    assert f'nonce="{nonces[0]}"'.encode() in first.content
    for other in ("/api/docs/", "/api/schema/", "/api/v1/connection", "/"):
        assert "nonce-" not in client.get(other)["Content-Security-Policy"]


def test_the_docs_pages_refuse_other_methods_as_problems(client: Client) -> None:
    for page in ("/api/docs/", "/api/redoc/", "/api/schema/"):
        answer = client.post(page)
        assert answer.status_code == 405 and media_type(answer) == PROBLEM


def test_the_schema_has_no_html_version(client: Client) -> None:
    answer = client.get("/api/schema/", HTTP_ACCEPT="text/html")
    assert answer.status_code == 406 and media_type(answer) == PROBLEM


def test_strict_validation_refuses_a_member_the_schema_does_not_name() -> None:
    """The check above is as strict as it says (a self-test of `strict`)."""
    from jsonschema.exceptions import ValidationError

    problem = {"type": "t", "title": "t", "status": 400, "detail": "d", "code": "c"}
    schema = strict({"$ref": "#/components/schemas/Problem", "components": served()["components"]})
    validate_instance(problem, schema, cls=OAS30Validator)
    with pytest.raises(ValidationError):
        validate_instance({**problem, "secret": "x"}, schema, cls=OAS30Validator)
    with pytest.raises(ValidationError):
        validate_instance(
            {k: v for k, v in problem.items() if k != "code"},
            schema,
            cls=OAS30Validator,
            enforce_properties_required=True,
        )
