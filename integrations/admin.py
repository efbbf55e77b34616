"""Admin for connections. Tokens appear only as fingerprints, never as values."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from social_django.models import Association, Nonce, UserSocialAuth

from .models import Connection, ConnectionEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Connection)
class ConnectionAdmin(ReadOnlyAdmin):
    list_display = [
        "user",
        "zywave_email",
        "status",
        "granted_scopes",
        "access_token_expires_at",
        "authorized_at",
    ]
    list_filter = ["status"]
    list_select_related = ["user"]
    search_fields = ["user__username", "zywave_email", "zywave_subject"]
    fields = readonly_fields = (
        "user",
        "status",
        "zywave_subject",
        "zywave_email",
        "zywave_name",
        "access_token_state",
        "refresh_token_state",
        "granted_scopes",
        "authorized_at",
        "last_refreshed_at",
        "last_error",
        "last_error_at",
    )

    @admin.display(description="Access token")
    def access_token_state(self, obj: Connection) -> str:
        if not obj.access_token_fingerprint:
            return "not set"
        expires = obj.access_token_expires_at
        return f"set, fingerprint {obj.access_token_fingerprint}, expires {expires:%Y-%m-%d %H:%M}"

    @admin.display(description="Refresh token")
    def refresh_token_state(self, obj: Connection) -> str:
        if not obj.refresh_token_fingerprint:
            return "not set"
        deadline = obj.refresh_deadline
        return f"set, fingerprint {obj.refresh_token_fingerprint}, deadline {deadline:%Y-%m-%d}"


@admin.register(ConnectionEvent)
class ConnectionEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "user", "kind", "actor"]
    list_filter = ["kind"]
    list_select_related = ["user", "actor"]
    search_fields = ["user__username"]


# social-auth's stock admin shows and edits raw extra_data: replace it with a read-only list.
for model in (UserSocialAuth, Nonce, Association):
    if admin.site.is_registered(model):
        admin.site.unregister(model)


@admin.register(UserSocialAuth)
class UserSocialAuthAdmin(ReadOnlyAdmin):
    list_display = ["user", "provider", "uid", "created", "modified"]
    list_select_related = ["user"]
    search_fields = ["user__username", "uid"]
    fields = readonly_fields = ("user", "provider", "uid", "created", "modified")
