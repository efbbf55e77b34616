"""The OpenAPI description of each endpoint (drf-spectacular), built from the same field
lists `records.py` renders with. The serializers here describe; they never render."""

from __future__ import annotations

import threading
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    inline_serializer,
)
from drf_spectacular.views import SpectacularAPIView
from rest_framework import serializers
from rest_framework.response import Response

from .problems import CONTENT_TYPE
from .records import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Resource

_KINDS: dict[type, type[serializers.Field]] = {
    str: serializers.CharField,
    int: serializers.IntegerField,
    bool: serializers.BooleanField,
    datetime: serializers.DateTimeField,
    date: serializers.DateField,
}


def problem_media_type(result: dict[str, Any], **_: Any) -> dict[str, Any]:
    """A POSTPROCESSING_HOOKS step: every error answer is documented as `application/problem+json`,
    the media type it is sent with (drf-spectacular gives each one the renderer's, JSON)."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[:1] in "45" and "application/json" in content:
                    content[CONTENT_TYPE] = content.pop("application/json")
    return result


class Problem(serializers.Serializer):
    """RFC 9457 problem details: every error of the API."""

    type = serializers.CharField(help_text="urn:zywave-portal:problem:{code}")
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    code = serializers.CharField()


class ActionProblem(Problem):
    action = serializers.ChoiceField(
        choices=["connect", "reconnect", "choose_profile"],
        help_text="What the person must do on the portal before this can work.",
    )


class Tombstone(serializers.Serializer):
    """A record removed at Zywave (returned to `updated_since` pulls only)."""

    id = serializers.CharField()
    deleted = serializers.BooleanField(help_text="Always true.")
    changed_at = serializers.DateTimeField(help_text="When the portal learnt of the removal.")


def _record(resource: Resource, name: str) -> type[serializers.Serializer]:
    fields: dict[str, Any] = {}
    for field in resource.fields:
        options = {"allow_null": field.nullable, "help_text": field.description or None}
        if field.kind is Decimal:  # an exact JSON number (records.py writes its text)
            fields[field.name] = serializers.DecimalField(
                max_digits=None, decimal_places=None, coerce_to_string=False, **options
            )
        else:
            fields[field.name] = _KINDS[field.kind](**options)
    fields["deleted"] = serializers.BooleanField(help_text="Always false for a live record.")
    fields["raw"] = serializers.JSONField(help_text="The record exactly as Zywave sent it.")
    return type(name, (serializers.Serializer,), fields)


RECORDS: dict[str, type[serializers.Serializer]] = {}


def record_serializer(resource: Resource) -> type[serializers.Serializer]:
    if resource.name not in RECORDS:
        RECORDS[resource.name] = _record(resource, resource.model.__name__)
    return RECORDS[resource.name]


ERRORS = {
    401: OpenApiResponse(
        Problem, description="No key, or a malformed, unknown, revoked or expired one."
    ),
    403: OpenApiResponse(Problem, description="The key lacks the scope this request needs."),
    429: OpenApiResponse(Problem, description="Too many requests for this key (see Retry-After)."),
}


def _page_parameters(resource: Resource) -> list[OpenApiParameter]:
    return [
        OpenApiParameter(
            "page_size",
            int,
            description=f"Records per page, 1 to {MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE}).",
        ),
        OpenApiParameter("cursor", str, description="Given in `next`; do not build it yourself."),
        OpenApiParameter(
            "updated_since",
            OpenApiTypes.DATETIME,
            description="RFC 3339, exclusive: only records whose `changed_at` is later, "
            "tombstones included.",
        ),
        *[
            OpenApiParameter(name, str, description=text)
            for name, text in resource.filter_params.items()
        ],
    ]


def record_list(resource: Resource) -> Any:
    item = PolymorphicProxySerializer(
        component_name=f"{resource.model.__name__}OrTombstone",
        serializers=[record_serializer(resource), Tombstone],
        resource_type_field_name=None,
    )
    page = inline_serializer(
        f"{resource.name.title()}Page",
        {
            "results": serializers.ListField(child=item),
            "next": serializers.URLField(allow_null=True),
        },
    )
    return extend_schema(
        operation_id=f"{resource.name}_list",
        summary=f"List {resource.name}",
        description=f"The mirror's {resource.name}, oldest change first, one page at a time.",
        parameters=_page_parameters(resource),
        responses={
            200: page,
            400: OpenApiResponse(Problem, description="A bad parameter."),
            **ERRORS,
        },
        tags=["mirror"],
    )


_profile = inline_serializer(
    "ChosenProfile",
    {
        "id": serializers.CharField(),
        "type_code": serializers.CharField(),
        "name": serializers.CharField(),
    },
    allow_null=True,
)
_last_sync = inline_serializer(
    "LastSync",
    {
        "id": serializers.IntegerField(),
        "state": serializers.CharField(),
        "finished_at": serializers.DateTimeField(allow_null=True),
        "records": serializers.IntegerField(),
    },
    allow_null=True,
)
ConnectionStatus = inline_serializer(
    "ConnectionStatus",
    {
        "status": serializers.ChoiceField(
            choices=["not_connected", "active", "reauth_required", "disconnected"]
        ),
        "zywave_subject": serializers.CharField(allow_null=True),
        "zywave_email": serializers.CharField(allow_null=True),
        "profile": _profile,
        "scopes": serializers.ListField(child=serializers.CharField()),
        "refresh_deadline": serializers.DateTimeField(allow_null=True),
        "last_sync": _last_sync,
        "action": serializers.ChoiceField(
            choices=["connect", "reconnect", "choose_profile"], allow_null=True
        ),
    },
)

connection = extend_schema(
    operation_id="connection_read",
    summary="The connection's status",
    description="Whether the key owner's Zywave connection works, and if not what they must do.",
    responses={200: ConnectionStatus, **ERRORS},
    tags=["connection"],
)

SyncRunBody = inline_serializer(
    "SyncRun",
    {
        "id": serializers.IntegerField(),
        "state": serializers.ChoiceField(
            choices=["queued", "running", "succeeded", "partial", "failed"]
        ),
        "full": serializers.BooleanField(),
        "trigger": serializers.CharField(),
        "queued_at": serializers.DateTimeField(),
        "started_at": serializers.DateTimeField(allow_null=True),
        "finished_at": serializers.DateTimeField(allow_null=True),
        "records": serializers.IntegerField(),
        "records_skipped": serializers.IntegerField(),
        "error": serializers.CharField(),
        "url": serializers.URLField(),
    },
)
_in_progress = inline_serializer(
    "SyncInProgress",
    {
        "type": serializers.CharField(),
        "title": serializers.CharField(),
        "status": serializers.IntegerField(),
        "detail": serializers.CharField(),
        "code": serializers.CharField(),
        "run": SyncRunBody,
    },
)

sync_list = extend_schema(
    operation_id="syncs_list",
    summary="Recent sync runs",
    responses={
        200: inline_serializer(
            "SyncRunPage",
            {
                "results": serializers.ListField(child=SyncRunBody),
                "next": serializers.URLField(allow_null=True),
            },
        ),
        **ERRORS,
    },
    tags=["syncs"],
)
sync_start = extend_schema(
    operation_id="sync_start",
    summary="Start a sync",
    request=inline_serializer("SyncRequest", {"full": serializers.BooleanField(default=False)}),
    responses={
        202: SyncRunBody,
        400: OpenApiResponse(Problem, description="The body is not valid."),
        413: OpenApiResponse(Problem, description="The body is over DATA_UPLOAD_MAX_MEMORY_SIZE."),
        415: OpenApiResponse(Problem, description="The body is not `application/json`."),
        409: OpenApiResponse(
            PolymorphicProxySerializer(
                component_name="SyncConflict",
                serializers=[_in_progress, ActionProblem],
                resource_type_field_name=None,
            ),
            description="A sync is already queued or running (`run`), or the connection "
            "cannot sync until the person acts (`action`).",
        ),
        **ERRORS,
    },
    tags=["syncs"],
)
sync_detail = extend_schema(
    operation_id="sync_read",
    summary="One sync run",
    responses={
        200: SyncRunBody,
        404: OpenApiResponse(Problem, description="No such run."),
        **ERRORS,
    },
    tags=["syncs"],
)


def _account_detail() -> Any:
    from ..resources import children_of
    from .records import ACCOUNTS, API

    fields = dict(record_serializer(ACCOUNTS)().get_fields())
    for child in children_of("accounts"):
        fields[child.name] = serializers.ListField(child=record_serializer(API[child.name])())
    return extend_schema(
        operation_id="account_read",
        summary="One account, with its contacts and policies",
        responses={
            200: inline_serializer("AccountWithChildren", fields),
            404: OpenApiResponse(Problem, description="No such account in the mirror."),
            **ERRORS,
        },
        tags=["mirror"],
    )


account_detail = _account_detail()


def proxy(method: str) -> Any:
    write = method != "GET"
    return extend_schema(
        operation_id=f"zywave_proxy_{method.lower()}",
        summary=f"{method} through the profiled proxy",
        description=(
            "Forwards the request to Zywave's API as the key owner's connection: its bearer "
            "token, and on v2 routes its chosen profile's `Profile` header. Zywave's answer "
            "comes back as it was sent (status, body, headers other than hop-by-hop ones): its "
            "JSON errors, 429 with `Retry-After` included, are Zywave's own bodies; an error "
            "without a JSON body becomes a problem carrying `zywave_status`. Paths must "
            "fall under ZYWAVE_PROXY_ALLOW. Scope `proxy`" + (":write." if write else ".")
        ),
        parameters=[
            OpenApiParameter(
                "path",
                str,
                OpenApiParameter.PATH,
                description="Zywave's path, like accounts/v2.0/account.",
            )
        ],
        request=OpenApiTypes.BINARY if write else None,
        responses={
            (200, "*/*"): OpenApiResponse(
                OpenApiTypes.BINARY, description="Zywave's answer, as it came."
            ),
            400: OpenApiResponse(Problem, description="The path is not in canonical form."),
            403: OpenApiResponse(
                Problem,
                description="The key lacks the scope, or the path is outside ZYWAVE_PROXY_ALLOW.",
            ),
            409: OpenApiResponse(
                ActionProblem,
                description="The person must act first (reconnect, choose a profile).",
            ),
            **(
                {
                    413: OpenApiResponse(
                        Problem, description="The body is over ZYWAVE_PROXY_MAX_REQUEST_BYTES."
                    )
                }
                if write
                else {}
            ),
            502: OpenApiResponse(
                Problem,
                description="Zywave unreachable, refusing the token, or its answer over the cap.",
            ),
            504: OpenApiResponse(Problem, description="Zywave did not answer in time."),
            401: ERRORS[401],
            429: ERRORS[429],
        },
        tags=["proxy"],
    )


# --- Webhook subscriptions ------------------------------------------------------------------


class FieldProblem(Problem):
    field = serializers.ChoiceField(
        choices=["url", "events"], help_text="The member of the body that is not valid."
    )


def _subscription_fields() -> dict[str, Any]:
    # A new dict each time: a serializer's class takes its fields out of the dict it is given.
    return {
        "id": serializers.IntegerField(),
        "url": serializers.CharField(help_text="The endpoint deliveries are POSTed to."),
        "events": serializers.ListField(child=serializers.CharField()),
        "state": serializers.ChoiceField(
            choices=["active", "disabled"],
            help_text="A disabled subscription keeps its events, held until it is enabled.",
        ),
        "created_at": serializers.DateTimeField(),
        "disabled_at": serializers.DateTimeField(allow_null=True),
        "disabled_reason": serializers.CharField(),
        "previous_secret_until": serializers.DateTimeField(
            allow_null=True,
            help_text="After a rotation, the previous secret signs too (a second `v1,` signature) "
            "until this time.",
        ),
    }


_secret = serializers.CharField(help_text="`whsec_...`: shown in this answer only.")
Subscription = inline_serializer("WebhookSubscription", _subscription_fields())
SubscriptionWithSecret = inline_serializer(
    "WebhookSubscriptionWithSecret", {**_subscription_fields(), "secret": _secret}
)
_attempt = inline_serializer(
    "WebhookAttempt",
    {
        "at": serializers.DateTimeField(),
        "duration_ms": serializers.IntegerField(),
        "status": serializers.IntegerField(
            allow_null=True, help_text="The receiver's status; null when it gave no answer."
        ),
        "error": serializers.CharField(help_text="Why there was no answer (empty when one came)."),
        "response_excerpt": serializers.CharField(
            help_text="The start of the receiver's body (at most 300 characters), never headers."
        ),
    },
)
Delivery = inline_serializer(
    "WebhookDelivery",
    {
        "id": serializers.CharField(
            help_text="The event's id, `msg_...`: the `webhook-id` header, the same on retries."
        ),
        "type": serializers.CharField(),
        "sequence": serializers.IntegerField(help_text="Per subscription, without gaps."),
        "state": serializers.ChoiceField(choices=["pending", "delivered", "failed"]),
        "attempts": serializers.IntegerField(help_text="Attempts since it was last (re)queued."),
        "created_at": serializers.DateTimeField(),
        "delivered_at": serializers.DateTimeField(allow_null=True),
        "next_attempt_at": serializers.DateTimeField(
            allow_null=True, help_text="When it is tried next (pending only)."
        ),
        "last_status": serializers.IntegerField(allow_null=True),
        "last_error": serializers.CharField(),
        "attempt_log": serializers.ListField(child=_attempt, help_text="Newest first."),
    },
)
_url_and_events = {
    "url": serializers.CharField(help_text="HTTPS, to a public address."),
    "events": serializers.ListField(
        child=serializers.CharField(), help_text="Event types (`GET /api/v1/webhooks/event-types`)."
    ),
}
_invalid_body = OpenApiResponse(
    PolymorphicProxySerializer(
        component_name="WebhookBodyProblem",
        serializers=[FieldProblem, Problem],
        resource_type_field_name=None,
    ),
    description="Not JSON, not an object, an unknown member, or a `url` or `events` that is "
    "not valid (`invalid_url`, `invalid_events`, with `field`): a URL that is not HTTPS or "
    "reaches a private address, an unknown event type.",
)
_body_errors = {
    413: OpenApiResponse(Problem, description="The body is over DATA_UPLOAD_MAX_MEMORY_SIZE."),
    415: OpenApiResponse(Problem, description="The body is not `application/json`."),
}
_no_subscription = OpenApiResponse(Problem, description="No subscription of yours has this id.")
_disabled = OpenApiResponse(
    Problem, description="The subscription is disabled (`subscription_disabled`): enable it."
)
_ID = OpenApiParameter("subscription_id", int, OpenApiParameter.PATH)


def _webhooks(operation_id: str, summary: str, **options: Any) -> Any:
    return extend_schema(operation_id=operation_id, summary=summary, tags=["webhooks"], **options)


webhook_list = _webhooks(
    "webhooks_list",
    "Your webhook subscriptions",
    responses={
        200: inline_serializer(
            "WebhookSubscriptionPage",
            {
                "results": serializers.ListField(child=Subscription),
                "next": serializers.URLField(allow_null=True),
            },
        ),
        **ERRORS,
    },
)
webhook_create = _webhooks(
    "webhook_create",
    "Subscribe an endpoint",
    description="The answer carries the signing secret, this once.",
    request=inline_serializer("WebhookSubscribe", _url_and_events),
    responses={201: SubscriptionWithSecret, 400: _invalid_body, **_body_errors, **ERRORS},
)
webhook_read = _webhooks(
    "webhook_read",
    "One subscription",
    parameters=[_ID],
    responses={200: Subscription, 404: _no_subscription, **ERRORS},
)
webhook_update = _webhooks(
    "webhook_update",
    "Change a subscription's URL or events",
    parameters=[_ID],
    request=inline_serializer(
        "WebhookChange",
        {
            "url": serializers.CharField(required=False, help_text="HTTPS, to a public address."),
            "events": serializers.ListField(child=serializers.CharField(), required=False),
        },
    ),
    responses={
        200: Subscription,
        400: _invalid_body,
        404: _no_subscription,
        **_body_errors,
        **ERRORS,
    },
)
webhook_delete = _webhooks(
    "webhook_delete",
    "Delete a subscription and its delivery log",
    parameters=[_ID],
    responses={204: None, 404: _no_subscription, **ERRORS},
)
webhook_test = _webhooks(
    "webhook_test",
    "Send a test event",
    description="A `webhook.test` event to this subscription only, queued at once.",
    parameters=[_ID],
    request=None,
    responses={202: Delivery, 404: _no_subscription, 409: _disabled, **ERRORS},
)
webhook_rotate_secret = _webhooks(
    "webhook_rotate_secret",
    "Rotate the signing secret",
    description="The new secret, this once. The previous one keeps signing too (a second "
    "signature in `webhook-signature`) until `previous_secret_until`, 24 hours on.",
    parameters=[_ID],
    request=None,
    responses={200: SubscriptionWithSecret, 404: _no_subscription, **ERRORS},
)
webhook_enable = _webhooks(
    "webhook_enable",
    "Enable a disabled subscription",
    description="Sends everything it held or gave up on, oldest first; `replayed` is how "
    "many. An active subscription is left as it is (`replayed` 0).",
    parameters=[_ID],
    request=None,
    responses={
        200: inline_serializer(
            "WebhookEnabled",
            {
                **_subscription_fields(),
                "replayed": serializers.IntegerField(help_text="Deliveries that will be sent."),
            },
        ),
        404: _no_subscription,
        **ERRORS,
    },
)
webhook_deliveries = _webhooks(
    "webhook_deliveries_list",
    "The delivery log",
    description="Deliveries newest first (by sequence), each with its attempts.",
    parameters=[
        _ID,
        OpenApiParameter(
            "page_size",
            int,
            description=f"Deliveries per page, 1 to {MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE}).",
        ),
        OpenApiParameter("cursor", str, description="Given in `next`; do not build it yourself."),
        OpenApiParameter("state", str, enum=["pending", "delivered", "failed"]),
        OpenApiParameter(
            "since", OpenApiTypes.DATETIME, description="RFC 3339: created at or after."
        ),
        OpenApiParameter("until", OpenApiTypes.DATETIME, description="RFC 3339: created before."),
    ],
    responses={
        200: inline_serializer(
            "WebhookDeliveryPage",
            {
                "results": serializers.ListField(child=Delivery),
                "next": serializers.URLField(allow_null=True),
            },
        ),
        400: OpenApiResponse(Problem, description="A bad parameter."),
        404: _no_subscription,
        **ERRORS,
    },
)
webhook_delivery_replay = _webhooks(
    "webhook_delivery_replay",
    "Send one delivery again",
    description="The same `webhook-id` and body, with a fresh count of attempts.",
    parameters=[
        _ID,
        OpenApiParameter(
            "delivery_id", str, OpenApiParameter.PATH, description="The delivery's `id`, msg_..."
        ),
    ],
    request=None,
    responses={
        202: Delivery,
        404: OpenApiResponse(Problem, description="No such subscription of yours or delivery."),
        409: _disabled,
        **ERRORS,
    },
)
webhook_replay = _webhooks(
    "webhook_replay",
    "Send a time range of deliveries again",
    description="Every delivery created in [`since`, `until`), delivered or not.",
    parameters=[_ID],
    request=inline_serializer(
        "WebhookReplayRange",
        {"since": serializers.DateTimeField(), "until": serializers.DateTimeField()},
    ),
    responses={
        202: inline_serializer(
            "WebhookReplayed",
            {
                "replayed": serializers.IntegerField(),
                "since": serializers.DateTimeField(),
                "until": serializers.DateTimeField(),
            },
        ),
        400: OpenApiResponse(Problem, description="The body is not valid."),
        404: _no_subscription,
        409: _disabled,
        **_body_errors,
        **ERRORS,
    },
)
webhook_event_types = _webhooks(
    "webhook_event_types",
    "The event types a subscription can ask for",
    responses={
        200: inline_serializer(
            "WebhookEventTypes",
            {
                "results": serializers.ListField(
                    child=inline_serializer(
                        "WebhookEventType",
                        {"type": serializers.CharField(), "description": serializers.CharField()},
                    )
                ),
                "next": serializers.URLField(allow_null=True),
            },
        ),
        **ERRORS,
    },
)


class SchemaView(SpectacularAPIView):
    """`/api/schema/`, built once per process under a lock: it cannot change while the process
    runs, and drf-spectacular's first build is not safe in two threads at once (two first
    requests could each get a 500)."""

    _lock = threading.Lock()
    _built: dict[str, Any] | None = None

    def _get_schema_response(self, request: Any) -> Response:
        with SchemaView._lock:
            if SchemaView._built is None:
                generator = self.generator_class(urlconf=self.urlconf, patterns=self.patterns)
                SchemaView._built = generator.get_schema(request=request, public=self.serve_public)
        filename = self._get_filename(request, None)  # type: ignore[no-untyped-call]
        return Response(
            data=SchemaView._built,
            headers={"Content-Disposition": f'inline; filename="{filename}"'},
        )
