"""The admin: every linked user's connection health and sync history, with audited actions.

Tokens appear only as "set, fingerprint ..., expires ...", never as values. The token fields
are in no form, list or export, and the admin's querysets do not even load them: a page that
never holds a token cannot show one (and a wrong encryption key cannot break the admin).

Nobody edits a connection here, superusers included: the change page is read-only for all,
Django's view permission shows everything (the `support` group), and the actions need the
change permission.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import flatten_fieldsets
from django.db.models import Count, Exists, IntegerField, Max, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST
from social_django.models import Association, Nonce, UserSocialAuth

from . import admin_views, hooks, webhooks
from .admin_views import (
    EMPTY,
    change_url,
    changelist_url,
    duration,
    event_summary,
    health_label,
    last_refresh_text,
    last_sync_text,
    profile_text,
    user_link,
    when,
)
from .checks import private_webhooks_allowed
from .models import (
    DEADLINE_NOTICE,
    Account,
    ApiKey,
    Connection,
    ConnectionEvent,
    ConnectionQuerySet,
    Contact,
    DoctorReport,
    Policy,
    SyncRun,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)
from .notify import send_reconnect_reminder
from .resources import resources
from .sync import start_interactive
from .tasks import refresh_connection
from .tokens import ReauthRequired, RefreshFailed, refresh, revoke_and_disconnect

log = logging.getLogger(__name__)

# Encrypted fields the admin never loads, on the connection and through relations to it.
TOKEN_FIELDS = ("access_token", "refresh_token", "hook_token", "chosen_profile__profile_token")
OWNER_TOKEN_FIELDS = (
    "connection__access_token",
    "connection__refresh_token",
    "connection__hook_token",
)
# Refreshing calls Zywave once per connection while the admin waits; beyond this many the
# refreshes are queued for the workers instead.
INLINE_REFRESH_LIMIT = 20
# Events and runs shown on a connection's page; the full history is one link away.
HISTORY_ROWS = 50
RUN_ROWS = 20


# --- Filters ---------------------------------------------------------------------------------


class HealthFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "health"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return Connection.Health.choices

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(health=self.value()) if self.value() else queryset


class ProfileChosenFilter(admin.SimpleListFilter):
    title = "profile"
    parameter_name = "profile"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return [("chosen", "Chosen"), ("none", "Not chosen")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ("chosen", "none"):
            return queryset.filter(chosen_profile__isnull=self.value() == "none")
        return queryset


class LastSyncFilter(admin.SimpleListFilter):
    title = "last sync"
    parameter_name = "last_sync"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return [("failed", "Failed"), ("never", "Never synced")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "failed":
            return queryset.filter(last_sync_state__in=SyncRun.FAILED_STATES)
        if self.value() == "never":
            return queryset.filter(last_sync_id__isnull=True)
        return queryset


class ZywaveHooksFilter(admin.SimpleListFilter):
    """Whether Zywave's webhooks reach the connection: those that never received one are the
    ones whose owners have not registered the receiver URL at Zywave (or whose URL is wrong)."""

    title = "Zywave webhooks"
    parameter_name = "zywave_hooks"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return [
            ("receiving", "Receiving (polling relaxed)"),
            ("stopped", "Stopped (polling back to normal)"),
            ("none", "None received"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        since = timezone.now() - timedelta(minutes=settings.ZYWAVE_WEBHOOK_POLL_MINUTES)
        if self.value() == "receiving":
            return queryset.filter(hook_last_delivery_at__gt=since)
        if self.value() == "stopped":
            return queryset.filter(hook_last_delivery_at__lte=since)
        if self.value() == "none":
            return queryset.filter(hook_last_delivery_at__isnull=True)
        return queryset


class DeadlineFilter(admin.SimpleListFilter):
    title = "30-day deadline"
    parameter_name = "deadline"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return [("soon", "Within 7 days"), ("passed", "Passed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        connections = cast(ConnectionQuerySet, queryset)
        if self.value() == "soon":
            return connections.refresh_deadline_between(now, now + DEADLINE_NOTICE)
        if self.value() == "passed":
            return connections.refresh_deadline_between(None, now)
        return queryset


# --- Read-only admins --------------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Seen, never written: history and mirror rows come from Zywave and the workers."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ActsFromItsPage(ReadOnlyAdmin):
    """A read-only admin whose object page carries the model's actions as buttons above the
    fields (posted to `<pk>/act/` and run on that one object by `admin_views.act_on_one`),
    for whoever `has_act_permission`. Subclasses add to the page through `page_context`."""

    def has_act_permission(self, request: HttpRequest) -> bool:
        raise NotImplementedError

    def page_context(self, request: HttpRequest, obj: Any) -> dict[str, Any]:
        return {}

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Any = None,
    ) -> Any:
        if obj is not None:
            context.update(self.page_context(request, obj))
            if self.has_act_permission(request):
                context["page_actions"] = [
                    (name, action[2])
                    for name, action in self.get_actions(request).items()
                    if action
                ]
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self) -> list[URLPattern]:
        meta = self.model._meta
        return [
            path(
                "<path:object_id>/act/",
                self.admin_site.admin_view(require_POST(self.act_view)),
                name=f"{meta.app_label}_{meta.model_name}_act",
            ),
            *super().get_urls(),
        ]

    def act_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        return admin_views.act_on_one(self, request, object_id)


class OwnedByConnection(ReadOnlyAdmin):
    """Rows that belong to a connection: shown with their owner, without loading tokens."""

    list_select_related = ["connection__user"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return (
            super()
            .get_queryset(request)
            .select_related("connection__user")
            .defer(*OWNER_TOKEN_FIELDS)
        )

    @admin.display(description="linked user", ordering="connection__user__username")
    def owner(self, obj: Any) -> str:
        return format_html(
            '<a href="{}">{}</a>',
            change_url(Connection, obj.connection_id),
            obj.connection.user.get_username(),
        )


class ConnectionAdmin(ActsFromItsPage):
    list_display = [
        "username",
        "zywave_identity",
        "health_badge",
        "profile",
        "scopes",
        "token_expires",
        "refresh_deadline",
        "last_refresh",
        "last_sync",
        "zywave_hooks",
    ]
    list_filter = [
        HealthFilter,
        ProfileChosenFilter,
        LastSyncFilter,
        DeadlineFilter,
        ZywaveHooksFilter,
    ]
    list_select_related = ["user", "chosen_profile"]
    list_per_page = 100
    search_fields = ["user__username", "user__email", "zywave_email", "zywave_subject"]
    search_help_text = "Username, email or Zywave subject."
    actions = [
        "refresh_tokens_now",
        "sync_now",
        "full_resync",
        "send_reconnect_reminder",
        "new_receiver_url",
        "run_doctor",
        "disconnect_selected",
    ]
    exclude = ["access_token", "refresh_token", "hook_token"]
    fieldsets = [
        (None, {"fields": ["person", "zywave_identity", "health_badge", "last_refresh"]}),
        (
            "Tokens",
            {
                "fields": [
                    "access_token_state",
                    "refresh_token_state",
                    "authorized_at",
                    "granted_scopes",
                    "missing_scopes",
                    "reauth_notified_at",
                    "deadline_warned_at",
                ]
            },
        ),
        ("Profile", {"fields": ["profile", "profile_token_state", "profiles_listed_at"]}),
        ("Sync", {"fields": ["last_sync", "unavailable", "history_links"]}),
        ("Zywave webhooks", {"fields": ["zywave_hooks", "hook_deliveries", "hook_refusals"]}),
        ("Record", {"fields": ["stored_status", "created_at", "updated_at"]}),
    ]
    readonly_fields = flatten_fieldsets(fieldsets)

    class Media:
        css = {"all": ["admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return (
            Connection.objects.with_health()
            .with_last_sync()
            .select_related("user", "chosen_profile")
            .defer(*TOKEN_FIELDS)
        )

    # Actions need the change permission; the page itself stays read-only for everyone.
    def has_act_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("integrations.change_connection")

    # --- Columns -----------------------------------------------------------------------------

    @admin.display(description="portal user", ordering="user__username")
    def username(self, obj: Connection) -> str:
        return obj.user.get_username()

    @admin.display(description="person")
    def person(self, obj: Connection) -> str:
        return user_link(obj.user)

    @admin.display(description="Zywave identity", ordering="zywave_email")
    def zywave_identity(self, obj: Connection) -> str:
        return format_html(
            '{}<br><span class="zw-quiet">{}</span>',
            obj.zywave_email or EMPTY,
            obj.zywave_subject,
        )

    @admin.display(description="status", ordering="health")
    def health_badge(self, obj: Connection) -> str:
        return format_html(
            '<span class="zw-badge zw-{}">{}</span>',
            obj.health,  # type: ignore[attr-defined]
            health_label(obj),
        )

    @admin.display(description="chosen profile", ordering="chosen_profile__name")
    def profile(self, obj: Connection) -> str:
        return profile_text(obj)

    @admin.display(description="granted scopes")
    def scopes(self, obj: Connection) -> str:
        # The full list is on the connection's page and in the CSV; the list says what matters.
        missing = obj.missing_scopes()
        if missing:
            return format_html('<span class="zw-warn">missing {}</span>', " ".join(missing))
        return format_html('<span title="{}">all requested</span>', obj.granted_scopes)

    @admin.display(description="access token expires", ordering="access_token_expires_at")
    def token_expires(self, obj: Connection) -> str:
        expires = obj.access_token_expires_at
        if expires is not None and expires < timezone.now():
            return format_html('<span class="zw-quiet">expired {}</span>', when(expires))
        return when(expires)

    @admin.display(description="stored status")
    def stored_status(self, obj: Connection) -> str:
        return obj.get_status_display()

    @admin.display(description="missing scopes")
    def missing_scopes(self, obj: Connection) -> str:
        return " ".join(obj.missing_scopes()) or EMPTY

    @admin.display(description="30-day deadline", ordering="authorized_at")
    def refresh_deadline(self, obj: Connection) -> str:
        deadline = obj.refresh_deadline
        if deadline is None:
            return EMPTY
        soon = obj.status == Connection.Status.ACTIVE and deadline < timezone.now() + (
            DEADLINE_NOTICE
        )
        return format_html('<span class="{}">{}</span>', "zw-warn" if soon else "", when(deadline))

    @admin.display(description="last refresh", ordering="last_refreshed_at")
    def last_refresh(self, obj: Connection) -> str:
        return last_refresh_text(obj)

    @admin.display(description="last sync", ordering="last_sync_queued_at")
    def last_sync(self, obj: Any) -> str:
        if obj.last_sync_id is None:
            return last_sync_text(obj)
        return format_html(
            '<a class="zw-sync zw-{}" href="{}">{}</a>',
            obj.last_sync_state,
            change_url(SyncRun, obj.last_sync_id),
            last_sync_text(obj),
        )

    @admin.display(description="Zywave webhooks", ordering="hook_last_delivery_at")
    def zywave_hooks(self, obj: Connection) -> str:
        last = obj.hook_last_delivery_at
        if last is None:
            return format_html('<span class="zw-quiet">{}</span>', "none received")
        state = "receiving" if hooks.relaxed(last) else "stopped"
        return format_html('<span class="zw-hooks-{}">{}: last {}</span>', state, state, when(last))

    @admin.display(description="deliveries in the last day")
    def hook_deliveries(self, obj: Connection) -> str:
        health = hooks.delivery_health(obj)
        rotated = when(obj.hook_token_rotated_at)
        return (
            f"{health['last_day']} (receiver URL made {rotated}; the URL itself is shown to its "
            "owner only)"
        )

    @admin.display(description="refused deliveries (last 7 days)")
    def hook_refusals(self, obj: Connection) -> str:
        counts = {reason: n for reason, n in hooks.refusals(obj.pk).items() if n}
        if not counts:
            return "none"
        return ", ".join(f"{reason.replace('_', ' ')}: {n}" for reason, n in counts.items())

    @admin.display(description="access token")
    def access_token_state(self, obj: Connection) -> str:
        if not obj.access_token_fingerprint:
            return "not set"
        return (
            f"set, fingerprint {obj.access_token_fingerprint}, "
            f"expires {when(obj.access_token_expires_at)}"
        )

    @admin.display(description="refresh token")
    def refresh_token_state(self, obj: Connection) -> str:
        if not obj.refresh_token_fingerprint:
            return "not set"
        return (
            f"set, fingerprint {obj.refresh_token_fingerprint}, "
            f"expires {when(obj.refresh_deadline)} (30-day deadline)"
        )

    @admin.display(description="profile token")
    def profile_token_state(self, obj: Connection) -> str:
        profile = obj.chosen_profile
        if profile is None or not profile.profile_token_fingerprint:
            return "not set"
        return f"set, fingerprint {profile.profile_token_fingerprint}"

    @admin.display(description="not offered by Zywave")
    def unavailable(self, obj: Connection) -> str:
        marks = obj.unavailable_resources
        if not marks:
            return EMPTY
        return "; ".join(
            f"{resource} (404 at {when(datetime.fromisoformat(seen))}, retried daily)"
            for resource, seen in sorted(marks.items())
        )

    @admin.display(description="history")
    def history_links(self, obj: Connection) -> SafeString:
        links = [
            (changelist_url(SyncRun, connection__id__exact=obj.pk), "all sync runs"),
            (changelist_url(ConnectionEvent, connection__id__exact=obj.pk), "all events"),
            (changelist_url(DoctorReport, connection__id__exact=obj.pk), "doctor reports"),
            *[
                (
                    changelist_url(resource.model, connection__id__exact=obj.pk),
                    f"mirrored {resource.label.lower()}",
                )
                for resource in resources()
                if admin.site.is_registered(resource.model)
            ],
        ]
        return format_html_join(" · ", '<a href="{}">{}</a>', links)

    # --- The connection's page: history below the fields, actions above ---------------------

    def page_context(self, request: HttpRequest, obj: Connection) -> dict[str, Any]:
        return {
            "events": obj.events.select_related("actor")[:HISTORY_ROWS],
            "runs": obj.sync_runs.all()[:RUN_ROWS],
            "history_rows": HISTORY_ROWS,
            "run_rows": RUN_ROWS,
            "events_url": changelist_url(ConnectionEvent, connection__id__exact=obj.pk),
            "runs_url": changelist_url(SyncRun, connection__id__exact=obj.pk),
        }

    def get_urls(self) -> list[URLPattern]:
        # Before the object URLs, which would take "export/" for an object's id.
        export = self.admin_site.admin_view(self.export_view)
        return [
            path("export/", export, name="integrations_connection_export"),
            *super().get_urls(),
        ]

    # --- Actions -------------------------------------------------------------------------

    def _each(self, queryset: QuerySet[Any]) -> list[Connection]:
        """Whole rows (tokens included) for an action to work on, in a stable order."""
        ids = queryset.values("pk")
        return list(Connection.objects.filter(pk__in=ids).select_related("user").order_by("pk"))

    def _guarded(self, connection: Connection, work: Callable[..., str], *args: Any) -> str:
        """Run one connection's part of an action. An unexpected failure of one connection
        must not stop a batch, nor reach an error page with tokens in the frame's locals: it
        is logged (through the redacting log filter) and reported as an error."""
        try:
            return work(connection, *args)
        except Exception:
            log.exception("Admin action failed for connection %s", connection.pk)
            return "error"

    @admin.action(description="Refresh token now", permissions=["act"])
    def refresh_tokens_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        connections = self._each(queryset)
        if len(connections) > INLINE_REFRESH_LIMIT:
            for connection in connections:
                refresh_connection.delay_on_commit(connection.pk)
                connection.record(
                    ConnectionEvent.Kind.REFRESH_REQUESTED, actor=request.user, result="queued"
                )
            self.message_user(
                request,
                f"Token refresh queued for {len(connections)} connections: each is refreshed by "
                "a worker if its access token ends within the hour. Refresh at most "
                f"{INLINE_REFRESH_LIMIT} at once to refresh them now.",
                messages.INFO,
            )
            return
        outcomes: Counter[str] = Counter()
        for connection in connections:
            result = self._guarded(connection, lambda c=connection: self._refresh(c))  # type: ignore[misc]
            connection.record(
                ConnectionEvent.Kind.REFRESH_REQUESTED, actor=request.user, result=result
            )
            outcomes[result] += 1
        admin_views.report(self, request, "Token refresh", outcomes)

    def _refresh(self, connection: Connection) -> str:
        if connection.status != Connection.Status.ACTIVE:
            return "not_active"
        try:
            # Naming the current token as refused forces one refresh, unless another process
            # replaced it meanwhile: then that newer token stands and Zywave is not called.
            refresh(connection, refused=connection.access_token or "")
        except ReauthRequired:
            return "reauth_required"
        except RefreshFailed:
            return "refresh_failed"
        return "refreshed"

    @admin.action(description="Sync now", permissions=["act"])
    def sync_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._queue_syncs(request, queryset, full=False)

    @admin.action(description="Full resync", permissions=["act"])
    def full_resync(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._queue_syncs(request, queryset, full=True)

    def _queue_syncs(self, request: HttpRequest, queryset: QuerySet[Any], full: bool) -> None:
        outcomes: Counter[str] = Counter()
        for connection in self._each(queryset):
            if not connection.can_sync:
                result = "cannot_sync"
            elif not start_interactive(connection, full=full, trigger="admin")[1]:
                result = "already_queued"  # queue_run made a waiting run full if asked
            else:
                result = "queued"
            connection.record(
                ConnectionEvent.Kind.SYNC_REQUESTED, actor=request.user, full=full, result=result
            )
            outcomes[result] += 1
        admin_views.report(self, request, "Full resync" if full else "Sync", outcomes)

    @admin.action(description="Make a new receiver URL for Zywave's webhooks", permissions=["act"])
    def new_receiver_url(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        outcomes: Counter[str] = Counter()
        for connection in self._each(queryset):
            hooks.rotate_token(connection, actor=request.user)  # audited
            outcomes["made"] += 1
        self.message_user(
            request,
            f"New receiver URLs made for {outcomes['made']} connection(s): the old ones answer "
            "404 from now on. Their owners see the new URL on their dashboard and must register "
            "it at Zywave.",
            messages.SUCCESS,
        )

    @admin.action(description="Send a reconnect reminder email", permissions=["act"])
    def send_reconnect_reminder(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        outcomes: Counter[str] = Counter()
        for connection in self._each(queryset):
            address = connection.owner_email
            if not address:
                result = "no_address"
            elif send_reconnect_reminder(address, connection):
                result = "sent"
            else:
                result = "send_failed"
            connection.record(ConnectionEvent.Kind.REMINDER_SENT, actor=request.user, result=result)
            outcomes[result] += 1
        admin_views.report(self, request, "Reconnect reminder", outcomes)

    @admin.action(description="Disconnect (revoke at Zywave, delete tokens)…", permissions=["act"])
    def disconnect_selected(
        self, request: HttpRequest, queryset: QuerySet[Any]
    ) -> TemplateResponse | None:
        connections = self._each(queryset)
        if request.POST.get("post") != "yes":
            return admin_views.confirm_disconnect(self, request, connections)
        outcomes: Counter[str] = Counter()
        for connection in connections:
            if not connection.is_connected:
                outcomes["already_disconnected"] += 1
                continue
            outcomes[
                self._guarded(connection, lambda c=connection: self._disconnect(c, request))
            ] += 1  # type: ignore[misc]
        admin_views.report(self, request, "Disconnect", outcomes)
        return None

    def _disconnect(self, connection: Connection, request: HttpRequest) -> str:
        revoked, _reason = revoke_and_disconnect(connection, actor=request.user)
        return "revoked" if revoked else "not_revoked"

    @admin.action(description="Run the Zywave doctor (read-only report)", permissions=["act"])
    def run_doctor(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponseBase | None:
        return admin_views.run_doctor(self, request, self._each(queryset))

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        return admin_views.export_connections(self, request)


class SyncRunAdmin(OwnedByConnection):
    list_display = [
        "id",
        "owner",
        "state",
        "full",
        "trigger",
        "queued_at",
        "started_at",
        "finished_at",
        "run_duration",
        "records_done",
        "records_skipped",
        "error",
    ]
    list_filter = ["state", "full", "trigger"]
    search_fields = ["connection__user__username", "connection__zywave_email"]
    list_per_page = 100

    @admin.display(description="duration")
    def run_duration(self, obj: SyncRun) -> str:
        elapsed = obj.duration
        return duration(elapsed.total_seconds() if elapsed else None)


class ConnectionEventAdmin(ReadOnlyAdmin):
    list_display = ["at", "user", "kind", "actor", "summary"]
    list_filter = ["kind"]
    list_select_related = ["user", "actor"]
    search_fields = ["user__username", "actor__username"]
    list_per_page = 100
    fields = ("at", "user", "connection_link", "kind", "actor", "summary")
    readonly_fields = fields

    @admin.display(description="connection")
    def connection_link(self, obj: ConnectionEvent) -> str:
        if obj.connection_id is None:
            return EMPTY
        return format_html('<a href="{}">{}</a>', change_url(Connection, obj.connection_id), "open")

    @admin.display(description="detail")
    def summary(self, obj: ConnectionEvent) -> str:
        return event_summary(obj.detail)


class MirrorAdmin(OwnedByConnection):
    """A mirrored resource: it can hold millions of rows, so no full count on every page."""

    list_per_page = 100
    show_full_result_count = False


class AccountAdmin(MirrorAdmin):
    list_display = [
        "name",
        "zywave_id",
        "owner",
        "classification",
        "city",
        "state",
        "is_active",
        "is_archived",
        "updated_at_zywave",
        "synced_at",
    ]
    list_filter = ["is_active", "is_archived"]
    search_fields = ["name", "zywave_id"]


class ContactAdmin(MirrorAdmin):
    list_display = [
        "__str__",
        "email",
        "title",
        "account_zywave_id",
        "owner",
        "is_primary",
        "is_active",
        "updated_at_zywave",
    ]
    list_filter = ["is_primary", "is_active", "is_archived"]
    search_fields = ["last_name", "first_name", "email", "zywave_id"]


class PolicyAdmin(MirrorAdmin):
    list_display = [
        "policy_number",
        "zywave_id",
        "owner",
        "account_zywave_id",
        "line_of_business",
        "carrier_name",
        "expiration_date",
        "premium",
        "is_active",
        "is_archived",
    ]
    list_filter = ["line_of_business", "is_active", "is_archived"]
    search_fields = ["policy_number", "carrier_name", "zywave_id", "account_zywave_id"]


class ApiKeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


class ApiKeyAdmin(ReadOnlyAdmin):
    """Keys are made by their owners (the page, the command) and only revoked here. The hash
    is in no column, field or search: the admin has nothing to show of a key but its prefix."""

    list_display = [
        "owner",
        "name",
        "shown_prefix",
        "scope_list",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
        "state_badge",
    ]
    list_filter = [ApiKeyStateFilter, "created_at", "last_used_at"]
    list_select_related = ["owner", "revoked_by"]
    search_fields = ["owner__username", "owner__email", "name", "prefix"]
    search_help_text = "Owner's username or email, key name, or prefix."
    list_per_page = 100
    fields = (
        "owner",
        "name",
        "shown_prefix",
        "scope_list",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
        "revoked_by",
        "state_badge",
    )
    readonly_fields = fields
    actions = ["revoke_selected"]

    class Media:
        css = {"all": ["admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).defer("hashed_key")

    def has_act_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("integrations.change_apikey")

    @admin.display(description="key", ordering="prefix")
    def shown_prefix(self, obj: ApiKey) -> str:
        return f"zwk_{obj.prefix}_…"

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return " ".join(obj.scopes) or EMPTY

    @admin.display(description="state")
    def state_badge(self, obj: ApiKey) -> str:
        return format_html('<span class="zw-badge zw-{}">{}</span>', obj.state, obj.state)

    @admin.action(description="Revoke selected keys", permissions=["act"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        revoked = already = 0
        for key in queryset.order_by("pk"):
            if key.revoke(request.user):  # audited as an api_key_revoked event
                revoked += 1
            else:
                already += 1
        parts = [f"{revoked} key{'s' if revoked != 1 else ''} revoked"]
        if already:
            parts.append(f"{already} already revoked")
        self.message_user(request, f"Revoke: {'; '.join(parts)}.", messages.SUCCESS)


# --- Outbound webhooks -----------------------------------------------------------------------

# The signing secrets are never loaded by these pages' querysets, on the subscription or through
# a delivery: a page that never holds a secret cannot show one (nor break on a wrong key).
SECRET_FIELDS = ("secret", "previous_secret")
DELIVERY_SECRET_FIELDS = ("subscription__secret", "subscription__previous_secret")
# Deliveries shown on a subscription's page; every one is a link away.
DELIVERY_ROWS = 20


def warn_if_private_webhooks(model_admin: admin.ModelAdmin, request: HttpRequest) -> None:
    """The webhook pages say so when WEBHOOKS_ALLOW_PRIVATE is on outside development."""
    problem = private_webhooks_allowed()
    if problem:
        model_admin.message_user(request, problem, messages.WARNING)


class WebhookPendingFilter(admin.SimpleListFilter):
    title = "deliveries"
    parameter_name = "deliveries"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        return [("pending", "Some pending"), ("failed", "Some failed"), ("none", "None pending")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        def held(state: str) -> Exists:
            return Exists(WebhookDelivery.objects.filter(subscription=OuterRef("pk"), state=state))

        if self.value() == "pending":
            return queryset.filter(held(WebhookDelivery.State.PENDING))
        if self.value() == "failed":
            return queryset.filter(held(WebhookDelivery.State.FAILED))
        if self.value() == "none":
            return queryset.exclude(held(WebhookDelivery.State.PENDING))
        return queryset


class WebhookAdmin(ReadOnlyAdmin):
    """The subscriptions' and the deliveries' admins: acted on with the permission to change
    subscriptions, and their lists warn while private receiver addresses are allowed."""

    def has_act_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("integrations.change_webhooksubscription")

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        if request.method == "GET":
            warn_if_private_webhooks(self, request)
        return super().changelist_view(request, extra_context)


class WebhookSubscriptionAdmin(WebhookAdmin, ActsFromItsPage):
    """Subscriptions are made and changed by their owners (the page, the API); here they are
    seen, disabled and enabled again. The secret is in no column, field, search or query."""

    list_display = [
        "owner_name",
        "url",
        "event_list",
        "state_badge",
        "created_at",
        "last_delivery",
        "pending",
        "disabled_reason",
    ]
    list_filter = ["state", WebhookPendingFilter, "created_at"]
    search_fields = ["owner__username", "owner__email", "url"]
    search_help_text = "Owner's username or email, or the endpoint's URL."
    list_per_page = 100
    actions = ["disable_selected", "enable_selected"]
    fieldsets = [
        (None, {"fields": ["owner_link", "url", "event_list", "state_badge", "created_at"]}),
        ("Signing secret", {"fields": ["secret_state"]}),
        (
            "Delivery",
            {
                "fields": [
                    "last_sequence",
                    "last_delivery",
                    "pending",
                    "paused_until",
                    "lease",
                    "disabled_at",
                    "disabled_reason",
                    "delivery_links",
                ]
            },
        ),
    ]
    readonly_fields = flatten_fieldsets(fieldsets)
    exclude = list(SECRET_FIELDS)

    class Media:
        css = {"all": ["admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        deliveries = WebhookDelivery.objects.filter(subscription=OuterRef("pk")).order_by()
        pending = (
            deliveries.filter(state=WebhookDelivery.State.PENDING)
            .values("subscription")
            .annotate(n=Count("pk"))
            .values("n")
        )
        delivered = (
            deliveries.filter(state=WebhookDelivery.State.DELIVERED)
            .values("subscription")
            .annotate(at=Max("delivered_at"))
            .values("at")
        )
        return (
            super()
            .get_queryset(request)
            .select_related("owner")
            .defer(*SECRET_FIELDS)
            .annotate(
                pending_count=Coalesce(Subquery(pending, output_field=IntegerField()), 0),
                last_delivered_at=Subquery(delivered),
            )
        )

    # --- Columns -----------------------------------------------------------------------------

    @admin.display(description="owner", ordering="owner__username")
    def owner_name(self, obj: WebhookSubscription) -> str:
        return obj.owner.get_username()

    @admin.display(description="owner")
    def owner_link(self, obj: WebhookSubscription) -> str:
        return user_link(obj.owner)

    @admin.display(description="events")
    def event_list(self, obj: WebhookSubscription) -> str:
        return ", ".join(obj.events) or EMPTY

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: WebhookSubscription) -> str:
        return format_html(
            '<span class="zw-badge zw-{}">{}</span>', obj.state, obj.get_state_display()
        )

    @admin.display(description="last delivered", ordering="last_delivered_at")
    def last_delivery(self, obj: Any) -> str:
        return when(obj.last_delivered_at) if obj.last_delivered_at else "never"

    @admin.display(description="pending", ordering="pending_count")
    def pending(self, obj: Any) -> str:
        if not obj.pending_count:
            return "0"
        return format_html(
            '<a href="{}">{}</a>',
            changelist_url(WebhookDelivery, subscription=obj.pk, state__exact="pending"),
            obj.pending_count,
        )

    @admin.display(description="signing secret")
    def secret_state(self, obj: WebhookSubscription) -> str:
        # The secret itself is deferred and never read: only when it was last rotated.
        text = "set (shown to its owner once, when made or rotated; never shown here)"
        until = obj.previous_secret_until
        if until is not None and until > timezone.now():
            text += f"; rotated: the previous secret also signs until {when(until)}"
        return text

    @admin.display(description="leased by a worker until")
    def lease(self, obj: WebhookSubscription) -> str:
        return when(obj.lease_until)

    @admin.display(description="deliveries")
    def delivery_links(self, obj: WebhookSubscription) -> SafeString:
        links = [
            (changelist_url(WebhookDelivery, subscription=obj.pk), "all deliveries"),
            (
                changelist_url(WebhookDelivery, subscription=obj.pk, state__exact="pending"),
                "pending",
            ),
            (
                changelist_url(WebhookDelivery, subscription=obj.pk, state__exact="failed"),
                "failed",
            ),
            (changelist_url(ConnectionEvent, user__id__exact=obj.owner_id), "owner's events"),
        ]
        return format_html_join(" · ", '<a href="{}">{}</a>', links)

    # --- The subscription's page: its actions above, its latest deliveries below ------------

    def page_context(self, request: HttpRequest, obj: WebhookSubscription) -> dict[str, Any]:
        warn_if_private_webhooks(self, request)
        deliveries = obj.deliveries.select_related("event").defer("event__data")
        return {
            "deliveries": deliveries[:DELIVERY_ROWS],
            "delivery_rows": DELIVERY_ROWS,
            "deliveries_url": changelist_url(WebhookDelivery, subscription=obj.pk),
        }

    # --- Actions -------------------------------------------------------------------------

    def _each(self, queryset: QuerySet[Any]) -> list[WebhookSubscription]:
        ids = queryset.values("pk")
        return list(
            WebhookSubscription.objects.filter(pk__in=ids).defer(*SECRET_FIELDS).order_by("pk")
        )

    @admin.action(description="Disable", permissions=["act"])
    def disable_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Stop sending (events are still recorded and held); audited by `webhooks.disable`,
        which also emails the owner."""
        reason = f"disabled by {request.user.get_username()} in the admin"
        outcomes: Counter[str] = Counter()
        for subscription in self._each(queryset):
            disabled = webhooks.disable(subscription, reason, actor=request.user)
            outcomes["webhook_disabled" if disabled else "webhook_already_disabled"] += 1
        admin_views.report(self, request, "Disable", outcomes)

    @admin.action(description="Enable (replay pending)", permissions=["act"])
    def enable_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Send again, starting with everything held or given up on; audited by
        `webhooks.enable` with the number replayed. An active subscription is left alone (its
        pending deliveries are already being sent on their retry schedule)."""
        outcomes: Counter[str] = Counter()
        replayed = 0
        for subscription in self._each(queryset):
            if subscription.is_active:
                outcomes["webhook_already_active"] += 1
                continue
            replayed += webhooks.enable(subscription, request.user)
            outcomes["webhook_enabled"] += 1
        admin_views.report(self, request, "Enable", outcomes)
        if replayed:
            self.message_user(
                request,
                f"{replayed} held or failed deliver{'ies' if replayed != 1 else 'y'} "
                "queued to be sent again, oldest first.",
                messages.INFO,
            )


class WebhookSubscriptionFilter(admin.SimpleListFilter):
    """By subscription, from one query that loads neither secrets nor whole rows (Django's
    related filter would load every subscription, decrypting its secret)."""

    title = "subscription"
    parameter_name = "subscription"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Iterable[tuple[str, str]]:
        rows = WebhookSubscription.objects.order_by("owner__username", "pk").values_list(
            "pk", "owner__username", "url"
        )
        return [(str(pk), f"{owner}: {url}") for pk, owner, url in rows]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = str(self.value() or "")  # the facet counts pass each lookup's int
        if value.isdigit():
            return queryset.filter(subscription_id=int(value))
        return queryset


class WebhookAttemptInline(admin.TabularInline):
    """A delivery's attempt log: when, how long, what the receiver answered (an excerpt of its
    body, never its headers)."""

    model = WebhookAttempt
    fields = ("attempted_at", "duration", "status", "error", "response_excerpt")
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name = "attempt"
    verbose_name_plural = "attempts (newest first)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="at")
    def attempted_at(self, obj: WebhookAttempt) -> str:
        return timezone.localtime(obj.at).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="duration")
    def duration(self, obj: WebhookAttempt) -> str:
        return f"{obj.duration_ms} ms"


class WebhookDeliveryAdmin(WebhookAdmin):
    """Each event for each subscription, where its delivery stands and every attempt; replayed
    from here (same webhook-id and body, a fresh attempt count)."""

    list_display = [
        "id",
        "subscription_link",
        "owner",
        "sequence",
        "event_type",
        "webhook_id",
        "state_badge",
        "attempts",
        "created_at",
        "next_attempt",
        "delivered_at",
        "last_result",
    ]
    list_filter = ["state", WebhookSubscriptionFilter, "created_at"]
    search_fields = ["=event__id", "subscription__url", "subscription__owner__username"]
    search_help_text = "Event id (msg_…, exact), the endpoint's URL or the owner's username."
    list_per_page = 100
    show_full_result_count = False  # a busy endpoint has many: no full count on every page
    ordering = ["-id"]
    fields = (
        "subscription_link",
        "owner",
        "sequence",
        "webhook_id",
        "event_type",
        "state_badge",
        "attempts",
        "created_at",
        "next_attempt",
        "delivered_at",
        "last_result",
        "body",
    )
    readonly_fields = fields
    inlines = [WebhookAttemptInline]
    actions = ["replay_selected"]

    class Media:
        css = {"all": ["admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return (
            super()
            .get_queryset(request)
            .select_related("subscription__owner", "event")
            .defer(*DELIVERY_SECRET_FIELDS, "event__data")
        )

    @admin.display(description="subscription", ordering="subscription__url")
    def subscription_link(self, obj: WebhookDelivery) -> str:
        return format_html(
            '<a href="{}">{}</a>',
            change_url(WebhookSubscription, obj.subscription_id),
            obj.subscription.url,
        )

    @admin.display(description="owner", ordering="subscription__owner__username")
    def owner(self, obj: WebhookDelivery) -> str:
        return obj.subscription.owner.get_username()

    @admin.display(description="event", ordering="event__type")
    def event_type(self, obj: WebhookDelivery) -> str:
        return obj.event.type

    @admin.display(description="webhook-id (event id)", ordering="event_id")
    def webhook_id(self, obj: WebhookDelivery) -> str:
        return obj.event_id

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj: WebhookDelivery) -> str:
        held = (
            obj.state == WebhookDelivery.State.PENDING
            and obj.subscription.state == WebhookSubscription.State.DISABLED
        )
        label = "Held (subscription disabled)" if held else obj.get_state_display()
        return format_html('<span class="zw-badge zw-{}">{}</span>', obj.state, label)

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, obj: WebhookDelivery) -> str:
        return when(obj.next_attempt_at) if obj.state == WebhookDelivery.State.PENDING else EMPTY

    @admin.display(description="last answer")
    def last_result(self, obj: WebhookDelivery) -> str:
        if obj.last_error and obj.last_status is None:
            return obj.last_error
        if obj.last_status is None:
            return EMPTY
        return f"HTTP {obj.last_status}" + (f": {obj.last_error}" if obj.last_error else "")

    @admin.display(description="body sent")
    def body(self, obj: WebhookDelivery) -> str:
        # What the receiver gets (ids and the sequence; no secret is in a body). The headers,
        # signatures included, are never shown.
        return format_html("<pre>{}</pre>", webhooks.body_of(obj).decode())

    @admin.action(description="Replay (send again, same webhook-id)", permissions=["act"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Reset the deliveries to pending and send them (`webhooks.replay`); recorded in each
        delivery's admin history. A disabled subscription's are held until it is enabled."""
        chosen = list(queryset.order_by("pk").values_list("pk", "subscription__state", named=True))
        ids = [row.pk for row in chosen]
        count = webhooks.replay(WebhookDelivery.objects.filter(pk__in=ids))
        LogEntry.objects.log_actions(
            user_id=cast(int, request.user.pk),  # the admin: a logged-in User
            queryset=WebhookDelivery.objects.filter(pk__in=ids),
            action_flag=CHANGE,
            change_message="Replayed from the admin",
        )
        held = sum(row.subscription__state == WebhookSubscription.State.DISABLED for row in chosen)
        text = f"Replay: {count} deliver{'ies' if count != 1 else 'y'} queued to be sent again"
        if held:
            text += f"; {held} held until their subscription is enabled"
        self.message_user(request, text + ".", messages.SUCCESS)


class DoctorReportAdmin(ReadOnlyAdmin):
    """The Zywave doctor's reports (integrations/doctor.py), run from a connection's page: its
    progress while a worker runs it (the page reloads itself), then every check and the shapes
    file to download. Nothing in a report is secret: verdicts, shapes, counts, header names."""

    list_display = [
        "id",
        "owner",
        "state",
        "worst_badge",
        "created_at",
        "finished_at",
        "requested_by",
    ]
    list_filter = ["state", "worst"]
    list_select_related = ["connection__user", "requested_by"]
    search_fields = ["connection__user__username"]
    list_per_page = 100
    fields = (
        "connection_link",
        "requested_by",
        "state",
        "progress",
        "worst_badge",
        "created_at",
        "started_at",
        "finished_at",
        "error",
    )
    readonly_fields = fields

    class Media:
        css = {"all": ["admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return (
            super()
            .get_queryset(request)
            .select_related("connection__user", "requested_by")
            .defer(*OWNER_TOKEN_FIELDS)
        )

    @admin.display(description="linked user", ordering="connection__user__username")
    def owner(self, obj: DoctorReport) -> str:
        return obj.connection.user.get_username()

    @admin.display(description="connection")
    def connection_link(self, obj: DoctorReport) -> str:
        return format_html(
            '<a href="{}">{}</a>',
            change_url(Connection, obj.connection_id),
            obj.connection.user.get_username(),
        )

    @admin.display(description="progress")
    def progress(self, obj: DoctorReport) -> str:
        if obj.is_finished:
            return "finished"
        if obj.state == DoctorReport.State.QUEUED:
            return "waiting for a worker"
        return f"step {obj.steps_done + 1} of {obj.steps_total}: {obj.step or 'starting'}"

    @admin.display(description="worst verdict", ordering="worst")
    def worst_badge(self, obj: DoctorReport) -> str:
        if not obj.worst:
            return EMPTY
        return format_html('<span class="zw-badge zw-verdict-{}">{}</span>', obj.worst, obj.worst)

    def get_urls(self) -> list[URLPattern]:
        shapes = self.admin_site.admin_view(self.shapes_view)
        return [
            path("<path:object_id>/shapes.json", shapes, name="integrations_doctorreport_shapes"),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        return super().change_view(
            request, object_id, form_url, admin_views.doctor_context(object_id, extra_context)
        )

    def shapes_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        return admin_views.doctor_shapes(self, request, object_id)


admin.site.register(Connection, ConnectionAdmin)
admin.site.register(SyncRun, SyncRunAdmin)
admin.site.register(ConnectionEvent, ConnectionEventAdmin)
admin.site.register(Account, AccountAdmin)
admin.site.register(Contact, ContactAdmin)
admin.site.register(Policy, PolicyAdmin)
admin.site.register(ApiKey, ApiKeyAdmin)
admin.site.register(WebhookSubscription, WebhookSubscriptionAdmin)
admin.site.register(WebhookDelivery, WebhookDeliveryAdmin)
admin.site.register(DoctorReport, DoctorReportAdmin)


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
    actions = ["remove_link"]

    def has_act_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("integrations.change_connection")

    @admin.action(description="Remove the link (after a disconnect)", permissions=["act"])
    def remove_link(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Free a Zywave identity for another portal user. A connected person must be
        disconnected first (that revokes the tokens and removes the link itself)."""
        outcomes: Counter[str] = Counter()
        for link in queryset.select_related("user"):
            connection = Connection.objects.filter(user_id=link.user_id).first()
            if connection is not None and connection.is_connected:
                outcomes["still_connected"] += 1
                continue
            link.delete()
            ConnectionEvent.objects.create(
                user_id=link.user_id,
                connection=connection,
                kind=ConnectionEvent.Kind.LINK_REMOVED,
                actor=cast(Any, request.user),  # the admin: a logged-in User
                detail={"uid": link.uid},
            )
            outcomes["link_removed"] += 1
        admin_views.report(self, request, "Remove link", outcomes)


admin.site.site_header = "Zywave portal administration"
admin.site.site_title = "Zywave portal admin"
admin.site.index_title = "Linked users and their connections"
