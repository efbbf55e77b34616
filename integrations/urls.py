from __future__ import annotations

from django.urls import path, register_converter

from . import renewals, views, webhook_pages
from .api import pages as api_pages
from .client import SAFE_ID


class ZywaveIdConverter:
    """Exactly the ids the mirror stores (`client.SAFE_ID`), so `{% url 'account' id %}` works
    for every stored record and a URL can name nothing else."""

    regex = r"[A-Za-z0-9._-]{1,64}"

    def to_python(self, value: str) -> str:
        if not SAFE_ID.fullmatch(value):  # only dots: ValueError means "no match" to Django
            raise ValueError(value)
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ZywaveIdConverter, "zywave_id")

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("zywave/profiles/", views.profiles, name="profiles"),
    path("zywave/disconnect/", views.disconnect, name="disconnect"),
    path("zywave/sync/", views.sync, name="sync"),
    path("zywave/sync/status/", views.sync_status, name="sync_status"),
    path("zywave/hooks/rotate/", views.rotate_hook, name="rotate_hook"),
    path("zywave/accounts/", views.accounts, name="accounts"),
    path("zywave/accounts/<zywave_id:zywave_id>/", views.account_detail, name="account"),
    path("zywave/renewals/", renewals.renewals, name="renewals"),
    path("settings/api-keys/", api_pages.api_keys, name="api_keys"),
    path("settings/api-keys/<int:key_id>/revoke/", api_pages.api_key_revoke, name="api_key_revoke"),
    path("settings/webhooks/", webhook_pages.subscriptions, name="webhooks"),
    path("settings/webhooks/<int:subscription_id>/", webhook_pages.subscription, name="webhook"),
    path(
        "settings/webhooks/<int:subscription_id>/test/",
        webhook_pages.send_test,
        name="webhook_test",
    ),
    path(
        "settings/webhooks/<int:subscription_id>/rotate-secret/",
        webhook_pages.rotate_secret,
        name="webhook_rotate_secret",
    ),
    path(
        "settings/webhooks/<int:subscription_id>/enable/",
        webhook_pages.enable,
        name="webhook_enable",
    ),
    path(
        "settings/webhooks/<int:subscription_id>/delete/",
        webhook_pages.delete,
        name="webhook_delete",
    ),
    path(
        "settings/webhooks/<int:subscription_id>/replay/",
        webhook_pages.replay_range,
        name="webhook_replay_range",
    ),
    path(
        "settings/webhooks/<int:subscription_id>/deliveries/<int:delivery_id>/replay/",
        webhook_pages.replay,
        name="webhook_replay",
    ),
]

# social-auth reverses "social:complete" to build the redirect URI: keep these names.
oauth_patterns = (
    [
        path("login/<str:backend>/", views.connect_begin, name="begin"),
        path("complete/<str:backend>/", views.connect_complete, name="complete"),
    ],
    "social",
)
