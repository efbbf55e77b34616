"""`/api/`: the versioned endpoints, the schema and its two documentation pages. Paths have no
trailing slash, and anything else under /api/ is a problem+json 404, never a redirect."""

from __future__ import annotations

from csp.constants import NONCE
from csp.decorators import csp_update
from django.urls import path, re_path
from drf_spectacular.views import (
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)
from rest_framework.negotiation import DefaultContentNegotiation

from ..urls import ZywaveIdConverter  # noqa: F401  (registers the zywave_id converter)
from . import proxy, schema, views, webhooks
from .problems import not_found
from .records import API

app_name = "api"

# The one <style> Redoc writes before `Redoc.init` can hand it the nonce: the bundle's copy of
# perfect-scrollbar's stylesheet, inserted empty and then filled as it loads (Redoc 2.3.9 in
# drf-spectacular-sidecar 2026.10.1). Allowed by the hashes of exactly those two contents; an
# upgrade that changes them shows as a violation in tests/e2e/test_api_docs.py.
REDOC_LOAD_STYLES = [
    "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",  # the empty element
    "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc='",  # perfect-scrollbar's rules
]

urlpatterns = [
    path("v1/connection", views.ConnectionView.as_view(), name="connection"),
    # One list endpoint per mirrored resource (integrations/resources.py).
    *[
        path(f"v1/{name}", views.list_view(resource).as_view(), name=name)
        for name, resource in API.items()
    ],
    path("v1/accounts/<zywave_id:zywave_id>", views.AccountDetail.as_view(), name="account"),
    path("v1/syncs", views.SyncList.as_view(), name="syncs"),
    path("v1/syncs/<int:run_id>", views.SyncDetail.as_view(), name="sync"),
    re_path(r"^v1/zywave/(?P<path>.*)$", proxy.ProxyView.as_view(), name="proxy"),
    path("v1/webhooks", webhooks.WebhookList.as_view(), name="webhooks"),
    path("v1/webhooks/event-types", webhooks.WebhookEventTypes.as_view(), name="webhook_events"),
    path("v1/webhooks/<int:subscription_id>", webhooks.WebhookDetail.as_view(), name="webhook"),
    path(
        "v1/webhooks/<int:subscription_id>/test",
        webhooks.WebhookTest.as_view(),
        name="webhook_test",
    ),
    path(
        "v1/webhooks/<int:subscription_id>/rotate-secret",
        webhooks.WebhookRotateSecret.as_view(),
        name="webhook_rotate_secret",
    ),
    path(
        "v1/webhooks/<int:subscription_id>/enable",
        webhooks.WebhookEnable.as_view(),
        name="webhook_enable",
    ),
    path(
        "v1/webhooks/<int:subscription_id>/deliveries",
        webhooks.WebhookDeliveries.as_view(),
        name="webhook_deliveries",
    ),
    path(
        "v1/webhooks/<int:subscription_id>/deliveries/<str:delivery_id>/replay",
        webhooks.WebhookDeliveryReplay.as_view(),
        name="webhook_delivery_replay",
    ),
    path(
        "v1/webhooks/<int:subscription_id>/replay",
        webhooks.WebhookReplay.as_view(),
        name="webhook_replay",
    ),
    # YAML, or JSON on `Accept: application/json` or `?format=json` (the API's own endpoints
    # speak JSON whatever is asked; the schema lets the caller choose, 406 for what it lacks).
    path(
        "schema/",
        schema.SchemaView.as_view(content_negotiation_class=DefaultContentNegotiation),
        name="schema",
    ),
    # The split view serves Swagger UI's start-up script as a file (`?script`): no inline
    # script under `script-src 'self'`.
    path(
        "docs/",
        SpectacularSwaggerSplitView.as_view(
            url_name="api:schema", template_name="api/swagger_ui.html"
        ),
        name="docs",
    ),
    # Redoc writes <style> elements: this page alone adds its nonce to style-src, and Redoc
    # puts the nonce on each of them (static/api/redoc.js). No 'unsafe-inline' anywhere.
    path(
        "redoc/",
        csp_update({"style-src": [NONCE, *REDOC_LOAD_STYLES]})(
            SpectacularRedocView.as_view(url_name="api:schema", template_name="api/redoc.html")
        ),
        name="redoc",
    ),
    re_path(r"", not_found),
]
