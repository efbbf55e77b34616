"""The Renewals page: a person's own policies coming up for renewal, and their CSV export.

The policies expiring within the chosen window (30, 60 or 90 days from today, today and the
window's last day included), active and not archived, from the person's own mirror, each with
its account and the account's primary contact. Policies hold the account's Zywave id, not a
foreign key: the account's name and the contact's name and email come as correlated subqueries
in the one SELECT, so a page (or the whole export) costs the same queries however big the book.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from .admin_views import csv_cell
from .models import Account, Connection, Contact, Policy
from .resources import POLICIES
from .views import connection_for

WINDOWS = (30, 60, 90)
DEFAULT_WINDOW = 30
PER_PAGE = 50


def window_of(value: str | None) -> int:
    """The window asked for in days, when it is one offered; the default otherwise."""
    return int(value) if value in {str(days) for days in WINDOWS} else DEFAULT_WINDOW


def expiring(connection: Connection, today: date, days: int) -> QuerySet[Policy]:
    """The connection's live, active, unarchived policies expiring in [today, today + days]."""
    return Policy.objects.filter(
        connection=connection,
        is_active=True,
        is_archived=False,
        expiration_date__gte=today,
        expiration_date__lte=today + timedelta(days=days),
    )


def with_account_and_contact(policies: QuerySet[Policy]) -> QuerySet[Policy]:
    """Annotate `account_name` (None when the account is not in the mirror) and the primary
    contact's `contact_first_name`, `contact_last_name` and `contact_email`. Live records only
    (`objects`); an unarchived primary contact before an archived one."""
    account = Account.objects.filter(
        connection_id=OuterRef("connection_id"), zywave_id=OuterRef("account_zywave_id")
    )
    primary = Contact.objects.filter(
        connection_id=OuterRef("connection_id"),
        account_zywave_id=OuterRef("account_zywave_id"),
        is_primary=True,
    ).order_by("is_archived", "-is_active", "last_name", "first_name", "zywave_id")
    # `raw` is the record as Zywave sent it: nothing here shows it, and an export reads many.
    return policies.defer("raw").annotate(
        account_name=Subquery(account.values("name")[:1]),
        contact_first_name=Subquery(primary.values("first_name")[:1]),
        contact_last_name=Subquery(primary.values("last_name")[:1]),
        contact_email=Subquery(primary.values("email")[:1]),
    )


def _choice(request: HttpRequest, name: str) -> str:
    # PostgreSQL refuses NUL in a lookup: drop it from what the URL carries.
    return request.GET.get(name, "").replace("\x00", "").strip()[:200]


@require_GET
@login_required
def renewals(request: HttpRequest) -> HttpResponseBase:
    """The page (`?days=30|60|90&line=...&carrier=...&page=N`), or its CSV (`&format=csv`)."""
    connection = connection_for(request.user)
    if connection is None:
        messages.info(request, "Connect your Zywave account first.")
        return redirect("dashboard")
    if not POLICIES.granted(connection.scopes):
        # Sync skips policies without the scope; a reconnect asks for it when the portal does.
        asked = any(scope in settings.ZYWAVE_SCOPES for scope in POLICIES.scopes)
        return render(
            request, "integrations/renewals.html", {"granted": False, "on_reconnect": asked}
        )
    today = timezone.localdate()
    days = window_of(request.GET.get("days"))
    line, carrier = _choice(request, "line"), _choice(request, "carrier")
    window = expiring(connection, today, days)
    rows = window
    if line:
        rows = rows.filter(line_of_business=line)
    if carrier:
        rows = rows.filter(carrier_name=carrier)
    rows = with_account_and_contact(rows).order_by("expiration_date", "policy_number", "zywave_id")
    if request.GET.get("format") == "csv":
        return _csv(rows, today, days)
    # The select lists: every line and carrier of the window, whatever else is chosen (one query).
    pairs = set(window.order_by().values_list("line_of_business", "carrier_name").distinct())
    page = Paginator(rows, PER_PAGE).get_page(request.GET.get("page"))
    for policy in page.object_list:
        policy.days_left = days_left(policy, today)  # type: ignore[attr-defined]
    keep = request.GET.copy()
    keep.pop("page", None)
    keep.pop("format", None)
    return render(
        request,
        "integrations/renewals.html",
        {
            "granted": True,
            "page": page,
            "today": today,
            "until": today + timedelta(days=days),
            "days": days,
            "windows": WINDOWS,
            "line": line,
            "carrier": carrier,
            "lines": sorted({lob for lob, _ in pairs if lob}),
            "carriers": sorted({name for _, name in pairs if name}),
            "querystring": keep.urlencode(),
        },
    )


def days_left(policy: Policy, today: date) -> int | None:
    return (policy.expiration_date - today).days if policy.expiration_date else None


def _contact_name(policy: Any) -> str:
    return f"{policy.contact_first_name or ''} {policy.contact_last_name or ''}".strip()


def _csv(rows: QuerySet[Policy], today: date, days: int) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        csv_lines(rows.iterator(chunk_size=500), today), content_type="text/csv; charset=utf-8"
    )
    name = f"renewals-{days}-days-{today:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


# Text cells go through `csv_cell` (Zywave's text may start with = + - @). The numbers (days
# left, the premium as its exact Decimal text) are written as they are: they are ours, never
# a formula, and a quote before a negative premium would turn it into text in a spreadsheet.
CSV_COLUMNS: list[tuple[str, Callable[[Any, date], Any], bool]] = [
    ("policy number", lambda p, today: p.policy_number, True),
    ("line of business", lambda p, today: p.line_of_business, True),
    ("carrier", lambda p, today: p.carrier_name, True),
    ("effective date", lambda p, today: p.effective_date, True),
    ("expiration date", lambda p, today: p.expiration_date, True),
    ("days left", days_left, False),
    ("premium", lambda p, today: p.premium, False),
    ("account id", lambda p, today: p.account_zywave_id, True),
    ("account", lambda p, today: p.account_name, True),
    ("primary contact", lambda p, today: _contact_name(p), True),
    ("primary contact email", lambda p, today: p.contact_email, True),
]


class _Echo:
    """A file for csv.writer that hands each line back instead of keeping it."""

    def write(self, value: str) -> str:
        return value


def _cell(value: Any, text: bool) -> str:
    if text:
        return csv_cell(value)
    return "" if value is None else str(value)


def csv_lines(rows: Iterable[Policy], today: date) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow([name for name, _, _ in CSV_COLUMNS])
    for row in rows:
        yield writer.writerow([_cell(column(row, today), text) for _, column, text in CSV_COLUMNS])
