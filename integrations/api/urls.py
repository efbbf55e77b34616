"""`/api/`: the versioned endpoints, the schema and its two documentation pages. Paths have no
trailing slash, and anything else under /api/ is a problem+json 404, never a redirect."""

from __future__ import annotations

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from ..urls import ZywaveIdConverter  # noqa: F401  (registers the zywave_id converter)
from . import proxy, views
from .problems import not_found

app_name = "api"

urlpatterns = [
    path("v1/connection", views.ConnectionView.as_view(), name="connection"),
    path("v1/accounts", views.AccountList.as_view(), name="accounts"),
    path("v1/accounts/<zywave_id:zywave_id>", views.AccountDetail.as_view(), name="account"),
    path("v1/contacts", views.ContactList.as_view(), name="contacts"),
    path("v1/syncs", views.SyncList.as_view(), name="syncs"),
    path("v1/syncs/<int:run_id>", views.SyncDetail.as_view(), name="sync"),
    re_path(r"^v1/zywave/(?P<path>.*)$", proxy.ProxyView.as_view(), name="proxy"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    re_path(r"", not_found),
]
