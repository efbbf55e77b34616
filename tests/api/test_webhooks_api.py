"""Webhook subscriptions through the API (`integrations/api/webhooks.py`): subscribing, the
secret shown once, test events and replays that reach a real receiver on 127.0.0.1 (sent by
calling `webhooks.drain` as the worker's task would), the delivery log, and the refusals."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from svix.webhooks import Webhook as Verifier

from integrations import webhooks
from integrations.models import (
    ConnectionEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)
from tests.api.callers import System, problem, system_of
from tests.conftest import connection

pytestmark = pytest.mark.django_db

JSON = "application/json"


class Receiver:
    """An endpoint on 127.0.0.1 that records what it is sent and answers `status`."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"thanks from the receiver")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _headers, body in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    settings.WEBHOOKS_ALLOW_PRIVATE = True  # the receiver is http://127.0.0.1
    found = Receiver()
    yield found
    found.close()


@pytest.fixture
def hooks(staff: User) -> System:
    return system_of(staff, "webhooks")


def subscribe(system: System, url: str, events: list[str] | None = None) -> dict[str, Any]:
    response = system.post_json(
        "/api/v1/webhooks", {"url": url, "events": events or ["sync.succeeded"]}
    )
    assert response.status_code == 201, response.content[:500]
    assert response["Content-Type"] == JSON
    return dict(response.json())


def base(subscription_id: int) -> str:
    return f"/api/v1/webhooks/{subscription_id}"


def deliveries(system: System, subscription_id: int, **params: str) -> list[dict[str, Any]]:
    response = system.get(f"{base(subscription_id)}/deliveries", params)
    assert response.status_code == 200, response.content[:500]
    return list(response.json()["results"])


def emit(owner: User, count: int = 1) -> None:
    for n in range(count):
        webhooks.emit(owner.pk, "sync.succeeded", {"sync": {"n": n}})


# --- Subscribing ------------------------------------------------------------------------------


def test_subscribing_answers_201_with_the_secret_in_that_answer_only(
    hooks: System, staff: User, receiver: Receiver
) -> None:
    created = subscribe(hooks, receiver.url, ["sync.failed", "accounts.changed", "sync.failed"])
    secret = created.pop("secret")
    assert secret.startswith("whsec_")
    assert created["url"] == receiver.url and created["state"] == "active"
    assert created["events"] == ["accounts.changed", "sync.failed"]
    subscription = WebhookSubscription.objects.get(pk=created["id"])
    assert subscription.owner == staff and subscription.secret == secret
    assert ConnectionEvent.objects.filter(
        user=staff, kind=ConnectionEvent.Kind.WEBHOOK_SUBSCRIBED
    ).exists()
    read = hooks.get(base(created["id"]))
    listed = hooks.get("/api/v1/webhooks")
    assert read.json() == created
    assert listed.json() == {"results": [created], "next": None}
    for response in (read, listed):
        assert secret.encode() not in response.content and b'secret"' not in response.content


def test_the_answers_carrying_a_secret_are_never_stored_by_a_cache(
    hooks: System, receiver: Receiver
) -> None:
    """The 201 of a subscription and the 200 of a rotation hold the signing secret: no cache
    on the way (a proxy, the client's HTTP cache) may keep them."""
    created = hooks.post_json("/api/v1/webhooks", {"url": receiver.url, "events": ["sync.failed"]})
    rotated = hooks.post(f"{base(created.json()['id'])}/rotate-secret")
    for response, status in ((created, 201), (rotated, 200)):
        assert response.status_code == status and "secret" in response.json()
        directives = {d.strip() for d in response["Cache-Control"].split(",")}
        assert "no-store" in directives


def test_the_list_holds_the_key_owners_subscriptions_only(
    hooks: System, other_staff: User, receiver: Receiver
) -> None:
    mine = subscribe(hooks, receiver.url)
    subscribe(system_of(other_staff, "webhooks"), receiver.url + "/omar")
    assert [s["id"] for s in hooks.get("/api/v1/webhooks").json()["results"]] == [mine["id"]]


def test_the_event_types_are_the_cores_list(hooks: System) -> None:
    body = hooks.get("/api/v1/webhooks/event-types").json()
    assert {t["type"]: t["description"] for t in body["results"]} == webhooks.event_types()
    assert "accounts.changed" in webhooks.event_types()


# --- Test events, the log, replays ------------------------------------------------------------


def test_a_test_event_reaches_the_receiver_signed_and_shows_in_the_log(
    hooks: System, staff: User, receiver: Receiver
) -> None:
    created = subscribe(hooks, receiver.url)
    secret = created["secret"]
    queued = hooks.post(f"{base(created['id'])}/test")
    assert queued.status_code == 202, queued.content[:300]
    delivery = queued.json()
    assert delivery["type"] == "webhook.test" and delivery["state"] == "pending"
    assert delivery["id"].startswith("msg_") and delivery["attempt_log"] == []

    assert webhooks.drain(created["id"]) == "sent 1"
    ((headers, body),) = receiver.received
    Verifier(secret).verify(body, headers)  # raises on a bad signature
    assert headers["webhook-id"] == delivery["id"]
    assert json.loads(body)["data"]["sequence"] == delivery["sequence"]

    log = hooks.get(f"{base(created['id'])}/deliveries")
    (shown,) = log.json()["results"]
    assert shown["id"] == delivery["id"] and shown["state"] == "delivered"
    assert shown["attempts"] == 1 and shown["last_status"] == 200
    assert shown["delivered_at"] and shown["next_attempt_at"] is None
    (attempt,) = shown["attempt_log"]
    assert attempt["status"] == 200 and attempt["error"] == ""
    assert attempt["response_excerpt"] == "thanks from the receiver"
    assert attempt["duration_ms"] >= 0 and attempt["at"]
    assert secret.encode() not in log.content and secret.encode() not in queued.content


def test_replaying_one_delivery_sends_it_again_with_the_same_webhook_id(
    hooks: System, receiver: Receiver
) -> None:
    created = subscribe(hooks, receiver.url)
    delivery = hooks.post(f"{base(created['id'])}/test").json()
    webhooks.drain(created["id"])
    replayed = hooks.post(f"{base(created['id'])}/deliveries/{delivery['id']}/replay")
    assert replayed.status_code == 202, replayed.content[:300]
    again = replayed.json()
    assert again["state"] == "pending" and again["attempts"] == 0
    assert len(again["attempt_log"]) == 1  # the first attempt stays in the log
    assert webhooks.drain(created["id"]) == "sent 1"
    first, second = receiver.received
    assert first[0]["webhook-id"] == second[0]["webhook-id"] == delivery["id"]
    assert first[1] == second[1]  # the same body
    Verifier(created["secret"]).verify(second[1], second[0])
    (shown,) = deliveries(hooks, created["id"])
    assert shown["state"] == "delivered" and len(shown["attempt_log"]) == 2


def test_replaying_a_time_range_sends_the_deliveries_created_in_it(
    hooks: System, staff: User, receiver: Receiver
) -> None:
    created = subscribe(hooks, receiver.url)
    emit(staff, 4)
    webhooks.drain(created["id"])
    assert len(receiver.received) == 4
    now = timezone.now()
    rows = list(WebhookDelivery.objects.filter(subscription_id=created["id"]).order_by("sequence"))
    for hours, row in zip([30, 20, 10, 1], rows, strict=True):  # hours ago
        WebhookDelivery.objects.filter(pk=row.pk).update(created_at=now - timedelta(hours=hours))
    answer = hooks.post_json(
        f"{base(created['id'])}/replay",
        {
            "since": (now - timedelta(hours=25)).isoformat(),
            "until": (now - timedelta(hours=5)).isoformat(),
        },
    )
    assert answer.status_code == 202, answer.content[:300]
    assert answer.json()["replayed"] == 2
    assert webhooks.drain(created["id"]) == "sent 2"
    again = [b["data"]["sequence"] for b in receiver.bodies()[4:]]
    assert again == [rows[1].sequence, rows[2].sequence]


def test_the_log_pages_newest_first_and_filters(
    hooks: System, staff: User, receiver: Receiver
) -> None:
    created = subscribe(hooks, receiver.url)
    emit(staff, 5)
    seen: list[int] = []
    url: str | None = f"{base(created['id'])}/deliveries?page_size=2"
    while url:
        body = hooks.get(url).json()
        assert len(body["results"]) <= 2
        seen += [d["sequence"] for d in body["results"]]
        url = body["next"]
    assert seen == [5, 4, 3, 2, 1]

    WebhookDelivery.objects.filter(subscription_id=created["id"], sequence__lte=2).update(
        state=WebhookDelivery.State.DELIVERED, created_at=timezone.now() - timedelta(days=2)
    )
    assert [d["sequence"] for d in deliveries(hooks, created["id"], state="delivered")] == [2, 1]
    assert [d["sequence"] for d in deliveries(hooks, created["id"], state="pending")] == [5, 4, 3]
    day_ago = (timezone.now() - timedelta(days=1)).isoformat()
    assert len(deliveries(hooks, created["id"], since=day_ago)) == 3
    assert len(deliveries(hooks, created["id"], until=day_ago)) == 2
    for bad in ({"state": "lost"}, {"since": "yesterday"}, {"cursor": "x"}, {"page_size": "0"}):
        problem(hooks.get(f"{base(created['id'])}/deliveries", bad), 400)


# --- Secret rotation, enable, change, delete ----------------------------------------------------


def test_rotating_the_secret_shows_the_new_one_once_and_both_sign_for_a_while(
    hooks: System, receiver: Receiver
) -> None:
    created = subscribe(hooks, receiver.url)
    old = created["secret"]
    rotated = hooks.post(f"{base(created['id'])}/rotate-secret")
    assert rotated.status_code == 200, rotated.content[:300]
    body = rotated.json()
    new = body["secret"]
    assert new.startswith("whsec_") and new != old
    until = body["previous_secret_until"]
    assert until and datetime.fromisoformat(until) > timezone.now() + timedelta(hours=23)
    assert old.encode() not in rotated.content
    hooks.post(f"{base(created['id'])}/test")
    webhooks.drain(created["id"])
    ((headers, payload),) = receiver.received
    assert headers["webhook-signature"].count("v1,") == 2
    Verifier(old).verify(payload, headers)
    Verifier(new).verify(payload, headers)
    for response in (
        hooks.get(base(created["id"])),
        hooks.get("/api/v1/webhooks"),
        hooks.get(f"{base(created['id'])}/deliveries"),
    ):
        assert old.encode() not in response.content and new.encode() not in response.content


def test_enabling_a_disabled_subscription_sends_what_it_held(
    hooks: System, staff: User, receiver: Receiver
) -> None:
    created = subscribe(hooks, receiver.url)
    subscription = WebhookSubscription.objects.get(pk=created["id"])
    assert webhooks.disable(subscription, "the receiver was down")
    assert hooks.get(base(created["id"])).json()["state"] == "disabled"
    emit(staff, 3)
    assert webhooks.drain(created["id"]) == "busy"  # a disabled subscription sends nothing
    assert receiver.received == []
    enabled = hooks.post(f"{base(created['id'])}/enable")
    assert enabled.status_code == 200, enabled.content[:300]
    assert enabled.json()["replayed"] == 3 and enabled.json()["state"] == "active"
    assert webhooks.drain(created["id"]) == "sent 3"
    assert [b["data"]["sequence"] for b in receiver.bodies()] == [1, 2, 3]
    # Already active: nothing to do, and nothing backing off is hurried.
    assert hooks.post(f"{base(created['id'])}/enable").json()["replayed"] == 0


def test_a_disabled_subscription_refuses_tests_and_replays_with_409(
    hooks: System, staff: User, receiver: Receiver
) -> None:
    created = subscribe(hooks, receiver.url)
    emit(staff)
    (delivery,) = deliveries(hooks, created["id"])
    webhooks.disable(WebhookSubscription.objects.get(pk=created["id"]), "down")
    refusals = [
        hooks.post(f"{base(created['id'])}/test"),
        hooks.post(f"{base(created['id'])}/deliveries/{delivery['id']}/replay"),
        hooks.post_json(
            f"{base(created['id'])}/replay",
            {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"},
        ),
    ]
    for response in refusals:
        assert problem(response, 409)["code"] == "subscription_disabled"
    assert WebhookDelivery.objects.filter(subscription_id=created["id"]).count() == 1


def test_patch_changes_the_url_and_the_events(hooks: System, receiver: Receiver) -> None:
    created = subscribe(hooks, receiver.url)
    changed = hooks.patch(
        base(created["id"]),
        json.dumps({"events": ["sync.failed", "contacts.changed"]}),
        content_type=JSON,
    )
    assert changed.status_code == 200, changed.content[:300]
    assert changed.json()["events"] == ["contacts.changed", "sync.failed"]
    assert changed.json()["url"] == receiver.url
    moved = hooks.patch(
        base(created["id"]), json.dumps({"url": receiver.url + "/v2"}), content_type=JSON
    )
    assert moved.json()["url"] == receiver.url + "/v2"
    subscription = WebhookSubscription.objects.get(pk=created["id"])
    assert subscription.url == receiver.url + "/v2"
    assert subscription.events == ["contacts.changed", "sync.failed"]
    assert subscription.secret == created["secret"]  # a change keeps the secret


def test_delete_answers_204_and_the_subscription_and_its_log_are_gone(
    hooks: System, staff: User, receiver: Receiver
) -> None:
    created = subscribe(hooks, receiver.url)
    emit(staff, 2)
    deleted = hooks.delete(base(created["id"]))
    assert deleted.status_code == 204 and deleted.content == b""
    assert not WebhookSubscription.objects.filter(pk=created["id"]).exists()
    assert not WebhookDelivery.objects.filter(subscription_id=created["id"]).exists()
    problem(hooks.get(base(created["id"])), 404)
    problem(hooks.delete(base(created["id"])), 404)


# --- Refusals ---------------------------------------------------------------------------------


def test_a_key_without_the_webhooks_scope_is_403(staff: User, receiver: Receiver) -> None:
    created = subscribe(system_of(staff, "webhooks"), receiver.url)
    other_scopes = system_of(staff, "read", "sync", "proxy", "proxy:write")
    for response in (
        other_scopes.get("/api/v1/webhooks"),
        other_scopes.post_json(
            "/api/v1/webhooks", {"url": receiver.url, "events": ["sync.failed"]}
        ),
        other_scopes.get(base(created["id"])),
        other_scopes.delete(base(created["id"])),
        other_scopes.post(f"{base(created['id'])}/rotate-secret"),
    ):
        body = problem(response, 403)
        assert "`webhooks`" in body["detail"]
    assert WebhookSubscription.objects.count() == 1
    assert WebhookSubscription.objects.get().secret == created["secret"]


def test_another_persons_subscription_is_404_everywhere_and_stays_as_it_was(
    hooks: System, other_staff: User, receiver: Receiver
) -> None:
    danas = subscribe(hooks, receiver.url)
    hooks.post(f"{base(danas['id'])}/test")
    (delivery,) = deliveries(hooks, danas["id"])
    omar = system_of(other_staff)  # every scope
    path = base(danas["id"])
    answers = [
        omar.get(path),
        omar.patch(path, json.dumps({"events": ["sync.failed"]}), content_type=JSON),
        omar.delete(path),
        omar.post(f"{path}/test"),
        omar.post(f"{path}/rotate-secret"),
        omar.post(f"{path}/enable"),
        omar.get(f"{path}/deliveries"),
        omar.post(f"{path}/deliveries/{delivery['id']}/replay"),
        omar.post_json(
            f"{path}/replay", {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}
        ),
    ]
    missing = problem(omar.get(f"/api/v1/webhooks/{danas['id'] + 1000}"), 404)
    for answer in answers:
        body = problem(answer, 404)
        assert body == missing  # the same answer as for no subscription at all
        assert receiver.url.encode() not in answer.content
    subscription = WebhookSubscription.objects.get(pk=danas["id"])
    assert subscription.secret == danas["secret"] and subscription.previous_secret is None
    assert subscription.events == ["sync.succeeded"]
    assert WebhookDelivery.objects.filter(subscription=subscription).count() == 1
    assert omar.get("/api/v1/webhooks").json()["results"] == []


def test_a_delivery_of_another_subscription_is_404(hooks: System, receiver: Receiver) -> None:
    first, second = subscribe(hooks, receiver.url), subscribe(hooks, receiver.url + "/2")
    delivery = hooks.post(f"{base(first['id'])}/test").json()
    problem(hooks.post(f"{base(second['id'])}/deliveries/{delivery['id']}/replay"), 404)
    problem(hooks.post(f"{base(first['id'])}/deliveries/msg_nothing/replay"), 404)
    problem(hooks.post(f"{base(first['id'])}/deliveries/{'m' * 500}/replay"), 404)
    problem(hooks.get(base(10**30)), 404)  # past any integer column: no such id, not a 500


def test_a_body_that_is_not_json_or_not_an_object_is_400(hooks: System, receiver: Receiver) -> None:
    created = subscribe(hooks, receiver.url)
    sent = [
        ("/api/v1/webhooks", "{not json", "parse_error"),
        ("/api/v1/webhooks", '["a list"]', "invalid"),
        ("/api/v1/webhooks", '{"url": "x", "events": [], "secret": "mine"}', "invalid"),
        (f"{base(created['id'])}/replay", "{not json", "parse_error"),
        (f"{base(created['id'])}/replay", '{"since": "2026-12-01T00:00:00Z"}', "invalid"),
        (f"{base(created['id'])}/replay", '{"since": 5, "until": 6}', "invalid"),
        (
            f"{base(created['id'])}/replay",
            '{"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}',
            "invalid",
        ),
    ]
    for path, body, code in sent:
        assert problem(hooks.post(path, body, content_type=JSON), 400)["code"] == code, body
    for body, code in [
        ("{not json", "parse_error"),
        ("{}", "invalid"),
        ('{"event": ["sync.failed"]}', "invalid"),
        ("[]", "invalid"),
        ('{"url": null}', "invalid_url"),
        ('{"events": null}', "invalid_events"),
    ]:
        answer = hooks.patch(base(created["id"]), body, content_type=JSON)
        assert problem(answer, 400)["code"] == code, body
    form = hooks.post("/api/v1/webhooks", "url=x", content_type="application/x-www-form-urlencoded")
    assert problem(form, 415)["code"] == "unsupported_media_type"
    assert WebhookSubscription.objects.count() == 1


def test_unknown_or_no_event_types_are_400_naming_events(hooks: System, receiver: Receiver) -> None:
    for events in (["accounts.changed", "accounts.deleted"], [], "sync.failed", None, [7]):
        answer = hooks.post_json("/api/v1/webhooks", {"url": receiver.url, "events": events})
        body = problem(answer, 400)
        assert body["code"] == "invalid_events" and body["field"] == "events", body
    body = problem(
        hooks.post_json("/api/v1/webhooks", {"url": receiver.url, "events": ["webhook.test"]}),
        400,
    )
    assert "webhook.test" in body["detail"]  # sent by POST .../test, not subscribed to
    created = subscribe(hooks, receiver.url)
    answer = hooks.patch(
        base(created["id"]), json.dumps({"events": ["nope.changed"]}), content_type=JSON
    )
    assert problem(answer, 400)["code"] == "invalid_events"
    assert WebhookSubscription.objects.get().events == ["sync.succeeded"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hooks",  # not HTTPS
        "https://127.0.0.1/hooks",
        "https://2130706433/hooks",  # 127.0.0.1 as a number
        "https://[::ffff:127.0.0.1]/hooks",
        "https://10.0.0.1/hooks",
        "https://169.254.169.254/latest/meta-data",
        "https://user:pass@8.8.8.8/hooks",
        "not a url",
        "",
    ],
)
def test_an_unsafe_url_is_400_naming_url_with_production_settings(
    hooks: System, settings: Any, url: str
) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    answer = hooks.post_json("/api/v1/webhooks", {"url": url, "events": ["sync.failed"]})
    body = problem(answer, 400)
    assert body["code"] == "invalid_url" and body["field"] == "url", body
    assert not WebhookSubscription.objects.exists()


def test_changing_to_an_unsafe_url_is_400_and_keeps_the_old_one(
    hooks: System, receiver: Receiver, settings: Any
) -> None:
    created = subscribe(hooks, receiver.url)
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    answer = hooks.patch(
        base(created["id"]), json.dumps({"url": "https://127.0.0.1/x"}), content_type=JSON
    )
    assert problem(answer, 400)["code"] == "invalid_url"
    assert WebhookSubscription.objects.get().url == receiver.url


def test_the_receivers_failure_is_in_the_log_without_any_secret(
    hooks: System, staff: User, receiver: Receiver, settings: Any
) -> None:
    """A 4xx from the receiver (retried later, this delivery only): logged with its excerpt."""
    connection(staff)
    # Retries beyond the reconciler's horizon: no task is queued for a worker to pick up.
    settings.WEBHOOKS_RETRY_SCHEDULE = [3600.0, 3600.0]
    created = subscribe(hooks, receiver.url)
    receiver.status = 410
    hooks.post(f"{base(created['id'])}/test")
    webhooks.drain(created["id"])
    log = hooks.get(f"{base(created['id'])}/deliveries")
    (shown,) = log.json()["results"]
    assert shown["state"] == "pending" and shown["attempts"] == 1
    assert shown["last_status"] == 410 and shown["last_error"] == "HTTP 410"
    assert shown["next_attempt_at"] > shown["created_at"]
    assert shown["attempt_log"][0]["response_excerpt"] == "thanks from the receiver"
    assert created["secret"].encode() not in log.content
    assert WebhookAttempt.objects.count() == 1
