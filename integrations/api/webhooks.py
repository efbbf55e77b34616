"""The endpoints over the key owner's webhook subscriptions (`/api/v1/webhooks`, scope
`webhooks`): subscribe, change, delete, rotate the secret, send a test event, read the delivery
log and replay from it. The work is `integrations.webhooks`'; these views check what callers
send and say what happened.

A subscription's secret is in two answers only: the one that created it and the one that
rotated it. Every lookup is scoped to the key's owner (`subscription_of`): another person's
subscription is 404, as one that does not exist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Prefetch
from django.http import HttpResponse
from django.utils.cache import patch_cache_control
from django.utils.http import urlencode
from rest_framework.request import Request
from rest_framework.views import APIView

from .. import webhooks
from ..models import WebhookAttempt, WebhookDelivery, WebhookSubscription
from . import schema
from .problems import Problem
from .records import decode_cursor, encode_cursor, page_size, parse_time
from .views import json_response

SCOPE = "webhooks"
DELIVERY_STATES = [choice.value for choice in WebhookDelivery.State]


def subscription_of(request: Request, subscription_id: int) -> WebhookSubscription:
    """The key owner's subscription with this id; 404 for any other, whoever's it is."""
    found = WebhookSubscription.objects.filter(pk=subscription_id, owner_id=request.user.pk).first()
    if found is None:
        raise Problem(404, "not_found", "No webhook subscription with this id of yours.")
    return found


def require_active(subscription: WebhookSubscription) -> None:
    """A disabled subscription sends nothing: a test or replay would wait unseen until it is
    enabled, so it is refused and the caller told what to do instead."""
    if not subscription.is_active:
        raise Problem(
            409,
            "subscription_disabled",
            "This subscription is disabled: enable it first (POST .../enable), which also "
            "sends what it holds.",
        )


def body_object(request: Request, allowed: set[str], example: str) -> dict[str, Any]:
    """The request's JSON object, with no member outside `allowed` (a misspelt `event` must
    not be silently ignored)."""
    data = request.data if isinstance(request.data, dict) else None
    if data is None:
        raise Problem(400, "invalid", f"The body must be a JSON object, like {example}.")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise Problem(
            400,
            "invalid",
            f"Unknown member(s) {', '.join(map(repr, unknown))}: "
            f"the body takes {', '.join(sorted(allowed))}.",
        )
    return data


def invalid(exc: webhooks.InvalidSubscription) -> Problem:
    return Problem(400, f"invalid_{exc.field}", f"`{exc.field}`: {exc.message}.", field=exc.field)


def with_secret(body: dict[str, Any], status: int = 200) -> HttpResponse:
    """An answer that shows a secret (creation, rotation): no cache may store it."""
    response = json_response(body, status=status)
    patch_cache_control(response, no_store=True)
    return response


def subscription_body(subscription: WebhookSubscription) -> dict[str, Any]:
    """A subscription as the API shows it: never its secrets."""
    return {
        "id": subscription.pk,
        "url": subscription.url,
        "events": subscription.events,
        "state": subscription.state,
        "created_at": subscription.created_at,
        "disabled_at": subscription.disabled_at,
        "disabled_reason": subscription.disabled_reason,
        "previous_secret_until": subscription.previous_secret_until,
    }


def attempt_body(attempt: WebhookAttempt) -> dict[str, Any]:
    return {
        "at": attempt.at,
        "duration_ms": attempt.duration_ms,
        "status": attempt.status,
        "error": attempt.error,
        "response_excerpt": attempt.response_excerpt,
    }


def delivery_body(subscription: WebhookSubscription, delivery: WebhookDelivery) -> dict[str, Any]:
    """A delivery with its attempts, newest first (`attempt_log` prefetched or read here)."""
    next_at = None
    if delivery.state == WebhookDelivery.State.PENDING:
        # Nothing is sent while the receiver has asked the subscription to wait.
        next_at = max(
            delivery.next_attempt_at, subscription.paused_until or delivery.next_attempt_at
        )
    return {
        "id": delivery.event_id,
        "type": delivery.event.type,
        "sequence": delivery.sequence,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "created_at": delivery.created_at,
        "delivered_at": delivery.delivered_at,
        "next_attempt_at": next_at,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "attempt_log": [attempt_body(a) for a in delivery.attempt_log.all()],
    }


def deliveries_of(subscription: WebhookSubscription) -> Any:
    return subscription.deliveries.select_related("event").prefetch_related(
        Prefetch("attempt_log", queryset=WebhookAttempt.objects.order_by("-at", "-id"))
    )


def one_delivery(subscription: WebhookSubscription, delivery_id: str) -> WebhookDelivery:
    found = deliveries_of(subscription).filter(event_id=delivery_id[:40]).first()
    if found is None:
        raise Problem(404, "not_found", "No delivery with this id for this subscription.")
    return found  # type: ignore[no-any-return]


def time_of(data: dict[str, Any], name: str) -> datetime:
    value = data.get(name)
    if not isinstance(value, str):
        raise Problem(
            400, "invalid", f"`{name}` must be an RFC 3339 time, like 2026-12-01T10:00:00Z."
        )
    return parse_time(value, name)


class WebhookList(APIView):
    scopes = {"GET": SCOPE, "POST": SCOPE}

    @schema.webhook_list
    def get(self, request: Request) -> HttpResponse:
        subscriptions = WebhookSubscription.objects.filter(owner_id=request.user.pk)
        return json_response(
            {"results": [subscription_body(s) for s in subscriptions], "next": None}
        )

    @schema.webhook_create
    def post(self, request: Request) -> HttpResponse:
        data = body_object(
            request, {"url", "events"}, '{"url": "https://...", "events": ["accounts.changed"]}'
        )
        try:
            subscription, secret = webhooks.subscribe(
                request.user, data.get("url"), data.get("events"), actor=request.user
            )
        except webhooks.InvalidSubscription as exc:
            raise invalid(exc) from None
        return with_secret({**subscription_body(subscription), "secret": secret}, status=201)


class WebhookDetail(APIView):
    scopes = {"GET": SCOPE, "PATCH": SCOPE, "DELETE": SCOPE}

    @schema.webhook_read
    def get(self, request: Request, subscription_id: int) -> HttpResponse:
        return json_response(subscription_body(subscription_of(request, subscription_id)))

    @schema.webhook_update
    def patch(self, request: Request, subscription_id: int) -> HttpResponse:
        subscription = subscription_of(request, subscription_id)
        data = body_object(request, {"url", "events"}, '{"events": ["sync.failed"]}')
        if not data:
            raise Problem(400, "invalid", "Give `url`, `events` or both.")
        try:
            # `change` reads None as "leave as it is": a null sent is refused instead.
            if "url" in data and data["url"] is None:
                webhooks.clean_url(None)
            if "events" in data and data["events"] is None:
                webhooks.clean_events(None)
            webhooks.change(
                subscription, request.user, url=data.get("url"), events=data.get("events")
            )
        except webhooks.InvalidSubscription as exc:
            raise invalid(exc) from None
        return json_response(subscription_body(subscription))

    @schema.webhook_delete
    def delete(self, request: Request, subscription_id: int) -> HttpResponse:
        webhooks.delete(subscription_of(request, subscription_id), request.user)
        return HttpResponse(status=204)


class WebhookTest(APIView):
    scopes = {"POST": SCOPE}

    @schema.webhook_test
    def post(self, request: Request, subscription_id: int) -> HttpResponse:
        subscription = subscription_of(request, subscription_id)
        require_active(subscription)
        delivery = webhooks.send_test(subscription)
        return json_response(
            delivery_body(subscription, one_delivery(subscription, delivery.event_id)), status=202
        )


class WebhookRotateSecret(APIView):
    scopes = {"POST": SCOPE}

    @schema.webhook_rotate_secret
    def post(self, request: Request, subscription_id: int) -> HttpResponse:
        subscription = subscription_of(request, subscription_id)
        secret = webhooks.rotate_secret(subscription, request.user)
        return with_secret({**subscription_body(subscription), "secret": secret})


class WebhookEnable(APIView):
    scopes = {"POST": SCOPE}

    @schema.webhook_enable
    def post(self, request: Request, subscription_id: int) -> HttpResponse:
        subscription = subscription_of(request, subscription_id)
        # An active subscription is left as it is: enabling it again would cut short the
        # waits of deliveries backing off from a receiver that asked for them.
        replayed = 0
        if not subscription.is_active:
            replayed = webhooks.enable(subscription, request.user)
        return json_response({**subscription_body(subscription), "replayed": replayed})


class WebhookDeliveries(APIView):
    """The delivery log, newest first: keyset pages on the subscription's sequence, which is
    unique and only grows, so a page is stable while new deliveries are written ahead of it."""

    scopes = {"GET": SCOPE}

    @schema.webhook_deliveries
    def get(self, request: Request, subscription_id: int) -> HttpResponse:
        subscription = subscription_of(request, subscription_id)
        params = request.query_params
        size = page_size(params)
        rows = deliveries_of(subscription)
        state = params.get("state", "")
        if state:
            if state not in DELIVERY_STATES:
                raise Problem(400, "invalid", f"`state` must be {', '.join(DELIVERY_STATES)}.")
            rows = rows.filter(state=state)
        since, until = params.get("since"), params.get("until")
        if since:
            rows = rows.filter(created_at__gte=parse_time(since, "since"))
        if until:
            rows = rows.filter(created_at__lt=parse_time(until, "until"))
        cursor = params.get("cursor")
        if cursor:
            # The cursor carries (created_at, sequence) of the last row shown; the sequence
            # alone orders.
            _created_at, sequence = decode_cursor(cursor)
            rows = rows.filter(sequence__lt=sequence)
        page = list(rows.order_by("-sequence")[: size + 1])
        next_url = None
        if len(page) > size:
            page = page[:size]
            query = params.copy()
            query["cursor"] = encode_cursor(page[-1].created_at, page[-1].sequence)
            next_url = request.build_absolute_uri(f"{request.path}?{urlencode(query, doseq=True)}")
        return json_response(
            {"results": [delivery_body(subscription, d) for d in page], "next": next_url}
        )


class WebhookDeliveryReplay(APIView):
    scopes = {"POST": SCOPE}

    @schema.webhook_delivery_replay
    def post(self, request: Request, subscription_id: int, delivery_id: str) -> HttpResponse:
        subscription = subscription_of(request, subscription_id)
        delivery = one_delivery(subscription, delivery_id)
        require_active(subscription)
        webhooks.replay(WebhookDelivery.objects.filter(pk=delivery.pk))
        return json_response(
            delivery_body(subscription, one_delivery(subscription, delivery_id)), status=202
        )


class WebhookReplay(APIView):
    scopes = {"POST": SCOPE}

    @schema.webhook_replay
    def post(self, request: Request, subscription_id: int) -> HttpResponse:
        subscription = subscription_of(request, subscription_id)
        data = body_object(
            request,
            {"since", "until"},
            '{"since": "2026-12-01T00:00:00Z", "until": "2026-12-02T00:00:00Z"}',
        )
        since, until = time_of(data, "since"), time_of(data, "until")
        if since >= until:
            raise Problem(400, "invalid", "`since` must be before `until`.")
        require_active(subscription)
        replayed = webhooks.replay_range(subscription, since, until)
        return json_response({"replayed": replayed, "since": since, "until": until}, status=202)


class WebhookEventTypes(APIView):
    scopes = {"GET": SCOPE}

    @schema.webhook_event_types
    def get(self, request: Request) -> HttpResponse:
        types = webhooks.event_types()
        return json_response(
            {"results": [{"type": t, "description": d} for t, d in types.items()], "next": None}
        )
