"""The sandbox's URLs: Zywave's own paths, plus the control API under /_sandbox/.

Zywave's paths are matched case-insensitively (its docs spell them `V2.0/Profile` and
`v2.0/account` alike). An inline `(?i)` flag would break reverse() for every URL, so `ci()`
spells each letter as a character class instead (zywave_path).
"""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth.views import LogoutView
from django.urls import URLPattern, include, path, re_path
from oauth2_provider import views as oauth2_views

from sandbox.zywave import admin_tool, api, control, oauth
from sandbox.zywave.resources import RESOURCES


def either_case(letter: re.Match[str]) -> str:
    return f"[{letter.group().lower()}{letter.group().upper()}]"


def zywave_path(route: str, view: Any) -> URLPattern:
    """A case-insensitive route: `{type_code}` is a type code, any other `{name}` a numeric id,
    the rest literal text matched in any letter case, with an optional trailing slash."""
    regex = "^"
    for part in re.split(r"(\{\w+\})", route):
        if part == "{type_code}":
            regex += r"(?P<type_code>[A-Za-z0-9]+)"
        elif part.startswith("{"):
            regex += rf"(?P<{part[1:-1]}>\d+)"
        else:
            regex += re.sub(r"[a-zA-Z]", either_case, re.escape(part))
    return re_path(regex + "/?$", view)


def resource_patterns() -> list[URLPattern]:
    """The routes of every resource of the registry (zywave.resources): its list, its detail
    and its list under a parent record, each where declared."""
    patterns = []
    for resource in RESOURCES:
        patterns.append(zywave_path(resource.route, api.list_view(resource)))
        if resource.detail_route:
            patterns.append(zywave_path(resource.detail_route, api.detail_view(resource)))
        if resource.nested_route:
            patterns.append(zywave_path(resource.nested_route, api.nested_view(resource)))
    return patterns


control_patterns = [
    path("reset", control.reset),
    path("baseline", control.baseline),
    path("clients", control.register_client),
    path("settings", control.runtime_settings),
    path("clock", control.clock),
    path("faults", control.faults),
    path("counters", control.counters),
    path("counters/reset", control.counters_reset),
    path("rate-limit", control.rate_limit),
    path("fleet", control.fleet),
    path("users/<str:email>/revoke", control.user_revoke),
    path("users/<str:email>/expire-access-tokens", control.user_expire_access_tokens),
    path("users/<str:email>/active-profile", control.user_active_profile),
    path("users/<str:email>/profiles", control.user_profiles),
    path("users/<str:email>/profiles/<str:profile_id>/remove", control.user_profile_remove),
    path("users/<str:email>/profiles/<str:profile_id>/add", control.user_profile_add),
    path("accounts/change", control.accounts_change),
    path("accounts/archive", control.accounts_archive),
    path("accounts/delete", control.accounts_delete),
    path("accounts/count", control.accounts_count),
    path("accounts/create", control.accounts_create),
    path("contacts/create", control.contacts_create),
    path("contacts/change", control.contacts_change),
    path("contacts/archive", control.contacts_archive),
    path("contacts/delete", control.contacts_delete),
    path("webhooks", control.webhooks_collection),
    path("webhooks/deliveries", control.webhook_deliveries),
    path("webhooks/drain", control.webhooks_drain),
    path("webhooks/<int:webhook_id>", control.webhook_detail),
    path("webhooks/<int:webhook_id>/delete", control.webhook_delete),
    path("webhooks/<int:webhook_id>/send", control.webhook_send),
    path("tokens/<str:token>", control.token_status),
]

urlpatterns = [
    # Identity server
    zywave_path("connect/authorize", oauth.SandboxAuthorizationView.as_view()),
    zywave_path("connect/token", oauth.token),
    zywave_path("connect/revocation", oauth.revocation),
    zywave_path("connect/introspect", oauth.introspect),
    zywave_path("connect/userinfo", oauth2_views.UserInfoView.as_view()),
    zywave_path(".well-known/openid-configuration", oauth.discovery),
    zywave_path(".well-known/openid-configuration/jwks", oauth2_views.JwksInfoView.as_view()),
    path("account/login", oauth.LoginView.as_view(), name="login"),
    path("account/logout", LogoutView.as_view(next_page="/account/login"), name="logout"),
    # Profiles API
    zywave_path("profiles/V2.0/Profile/{type_code}", api.profiles),
    zywave_path("profiles/V2.0/Profile/{type_code}/{profile_id}", api.profile_detail),
    zywave_path("profiles/V2.1/Profile/{type_code}/current", api.profile_current),
    # Accounts API and every other resource of the registry
    *resource_patterns(),
    # A v3 API (no profile)
    zywave_path("industries/v3.0/industries", api.industries),
    # The toolkit's own routes, unused by clients: its views reverse() these names.
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("_sandbox/", include(control_patterns)),
    # The stand-in for Zywave's admin tool, where webhooks are registered (docs/zywave.md §6).
    re_path(r"^admin/webhooks/?$", admin_tool.webhooks, name="admin-webhooks"),
    path("", oauth.home),
]
