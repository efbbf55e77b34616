"""What the admin shows and does beyond plain ModelAdmins: the formatters shared by the
lists, the pages and the CSV export; the CSV export itself; and the custom admin views (an
action on one connection from its page, the disconnect confirmation, the action report).

`admin.py` keeps the ModelAdmins plain and calls into here; `overview.py` holds the data of
the admin's front page.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, cast

from django.contrib import messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from .models import Connection, DoctorReport, SyncRun

EMPTY = "–"


def when(value: datetime | None) -> str:
    """Dates as 2026-11-28 14:05 (local time): short enough for a list with many of them."""
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M") if value else EMPTY


def duration(seconds: float | None) -> str:
    if seconds is None:
        return EMPTY
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def change_url(obj_or_model: Any, pk: Any) -> str:
    meta = obj_or_model._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[pk])


def user_link(user: Any) -> str:
    """A portal user as a link to their admin page, with their email address."""
    return format_html(
        '<a href="{}">{}</a> {}',
        change_url(user, user.pk),
        user.get_username(),
        f"<{user.email}>" if user.email else "",
    )


def changelist_url(model: Any, **params: Any) -> str:
    meta = model._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
    return url + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")


# --- What each column says, shared by the list, the page and the CSV ----------------------


def health_label(connection: Connection) -> str:
    return str(Connection.Health(connection.health).label)  # type: ignore[attr-defined]


def last_sync_duration(connection: Any) -> float | None:
    started, finished = connection.last_sync_started_at, connection.last_sync_finished_at
    return (finished - started).total_seconds() if started and finished else None


def last_refresh_text(connection: Connection) -> str:
    if connection.last_error:
        kind = "grant ended" if connection.last_error_permanent else "failing"
        return f"{kind} {when(connection.last_error_at)}: {connection.last_error}"
    if connection.last_refreshed_at:
        return f"ok {when(connection.last_refreshed_at)}"
    return "never refreshed"


def last_sync_text(connection: Any) -> str:
    if connection.last_sync_id is None:
        return "never synced"
    at = (
        connection.last_sync_finished_at
        or connection.last_sync_started_at
        or connection.last_sync_queued_at
    )
    text = f"{SyncRun.State(connection.last_sync_state).label} {when(at)}"
    text += f", {connection.last_sync_records} records"
    if (seconds := last_sync_duration(connection)) is not None:
        text += f" in {duration(seconds)}"
    if connection.last_sync_error:
        text += f": {connection.last_sync_error}"
    return text


def profile_text(connection: Connection) -> str:
    profile = connection.chosen_profile
    if profile is None:
        return EMPTY
    return f"{profile.name or profile.zywave_id} ({profile.type_code} {profile.zywave_id})"


def event_summary(detail: Any) -> str:
    if not isinstance(detail, dict):
        return json.dumps(detail)
    return ", ".join(f"{key}: {value}" for key, value in detail.items())


# --- Custom admin views --------------------------------------------------------------------


def act_on_one(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponseBase:
    """An action on one object (a connection, a webhook subscription), from its page; back to
    the page afterwards."""
    if not model_admin.has_act_permission(request):
        raise PermissionDenied
    action = model_admin.get_actions(request).get(request.POST.get("action", ""))
    if action is None:
        raise PermissionDenied
    queryset = model_admin.get_queryset(request).filter(pk=object_id)
    if not queryset.exists():
        raise Http404
    response = cast(HttpResponseBase | None, action[0](model_admin, request, queryset))
    return response or redirect(change_url(model_admin.model, object_id))


def confirm_disconnect(
    model_admin: Any, request: HttpRequest, connections: list[Connection]
) -> TemplateResponse:
    request.current_app = model_admin.admin_site.name
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Disconnect Zywave?",
        "subtitle": None,
        "opts": model_admin.model._meta,
        "media": model_admin.media,
        "connections": connections,
        "connected": [c for c in connections if c.is_connected],
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(
        request, "admin/integrations/connection/disconnect_confirmation.html", context
    )


OUTCOMES = {
    "refreshed": "refreshed",
    "reauth_required": "need re-authorization (Zywave ended the grant)",
    "refresh_failed": "failed for now (tokens kept; try again later)",
    "not_active": "skipped (not active)",
    "queued": "queued",
    "already_queued": "already had a sync queued or running",
    "cannot_sync": "skipped (not active, or no profile chosen)",
    "sent": "sent",
    "no_address": "skipped (no email address)",
    "send_failed": "could not be sent",
    "revoked": "disconnected and revoked at Zywave",
    "not_revoked": "disconnected here, but Zywave did not confirm the revocation",
    "already_disconnected": "already disconnected",
    "error": "failed unexpectedly (see the log)",
    "link_removed": "link removed",
    "still_connected": "skipped (still connected: disconnect first)",
    "webhook_disabled": "disabled (events are held; the owner is emailed)",
    "webhook_already_disabled": "already disabled",
    "webhook_enabled": "enabled",
    "webhook_already_active": "already active (left alone)",
    "doctor_queued": "queued (the report's page shows it)",
    "doctor_not_connected": "skipped (disconnected: no tokens to diagnose with)",
}
GOOD_OUTCOMES = {
    "refreshed",
    "queued",
    "already_queued",
    "sent",
    "revoked",
    "link_removed",
    "webhook_disabled",
    "webhook_already_disabled",
    "webhook_enabled",
    "webhook_already_active",
    "doctor_queued",
}


def report(model_admin: Any, request: HttpRequest, what: str, outcomes: Counter[str]) -> None:
    """One message for a whole action: how many objects ended which way."""
    level = messages.SUCCESS if set(outcomes) <= GOOD_OUTCOMES else messages.WARNING
    parts = "; ".join(f"{n} {OUTCOMES[outcome]}" for outcome, n in sorted(outcomes.items()))
    model_admin.message_user(request, f"{what}: {parts}." if parts else f"{what}: nothing.", level)


def run_doctor(
    model_admin: Any, request: HttpRequest, connections: list[Connection]
) -> HttpResponseBase | None:
    """Queue a doctor report for each connection (audited, `doctor.request_report`); for one,
    go to its report's page, which follows the worker's progress."""
    from .doctor import request_report
    from .tasks import run_doctor as task

    outcomes: Counter[str] = Counter()
    reports = []
    for connection in connections:
        if not connection.is_connected:
            outcomes["doctor_not_connected"] += 1
            continue
        queued = request_report(connection, actor=request.user)
        task.delay_on_commit(queued.pk)
        reports.append(queued)
        outcomes["doctor_queued"] += 1
    report(model_admin, request, "Zywave doctor", outcomes)
    if len(reports) == 1 and len(connections) == 1:
        return redirect(change_url(DoctorReport, reports[0].pk))
    return None


def doctor_context(object_id: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    """A doctor report's page: its checks, their counts, and whether to reload while it runs."""
    found = DoctorReport.objects.filter(pk=object_id).first() if object_id.isdigit() else None
    context = dict(extra or {})
    if found is not None:
        checks = found.report.get("checks", []) if isinstance(found.report, dict) else []
        context.update(
            {
                "checks": checks,
                "counts": {v: sum(c.get("verdict") == v for c in checks) for v in VERDICTS},
                "reload_seconds": 0 if found.is_finished else 2,
                "has_shapes": bool(found.shapes),
            }
        )
    return context


VERDICTS = ("ok", "warn", "fail")


def doctor_shapes(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponseBase:
    """The shapes a report recorded, as the file `zywave_doctor --record` writes."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    found = DoctorReport.objects.filter(pk=object_id).first() if object_id.isdigit() else None
    if found is None or not found.shapes:
        raise Http404
    response = HttpResponse(
        json.dumps(found.shapes, indent=2) + "\n", content_type="application/json"
    )
    response["Content-Disposition"] = f'attachment; filename="zywave-shapes-{found.pk}.json"'
    return response


# --- CSV export ----------------------------------------------------------------------------


def export_connections(model_admin: Any, request: HttpRequest) -> HttpResponseBase:
    """The connection list as CSV, with the list's current filters, search and order."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    try:
        changelist = model_admin.get_changelist_instance(request)
    except IncorrectLookupParameters:
        return redirect(changelist_url(Connection))
    rows = changelist.queryset.iterator(chunk_size=500)
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    response = StreamingHttpResponse(csv_lines(rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="zywave-connections-{stamp}.csv"'
    return response


CSV_COLUMNS: list[tuple[str, Callable[[Any], Any]]] = [
    ("portal user", lambda c: c.user.get_username()),
    ("portal email", lambda c: c.user.email),
    ("Zywave email", lambda c: c.zywave_email),
    ("Zywave subject", lambda c: c.zywave_subject),
    ("status", health_label),
    ("chosen profile", profile_text),
    ("granted scopes", lambda c: c.granted_scopes),
    ("access token expires", lambda c: c.access_token_expires_at),
    ("30-day deadline", lambda c: c.refresh_deadline),
    ("last refreshed", lambda c: c.last_refreshed_at),
    ("last refresh error", lambda c: c.last_error),
    ("last sync state", lambda c: c.last_sync_state),
    ("last sync queued", lambda c: c.last_sync_queued_at),
    ("last sync finished", lambda c: c.last_sync_finished_at),
    ("last sync records", lambda c: c.last_sync_records),
    ("last sync seconds", last_sync_duration),
    ("last sync error", lambda c: c.last_sync_error),
]


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    # Names come from Zywave: a leading =, +, - or @ would run as a formula in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_lines(rows: Iterable[Any]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow([name for name, _ in CSV_COLUMNS])
    for row in rows:
        yield writer.writerow([csv_cell(column(row)) for _, column in CSV_COLUMNS])
