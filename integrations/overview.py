"""The figures on the admin's front page: connection health and sync outcomes at a glance.

Every figure is an aggregate query, so the page costs the same few queries for ten linked
people or ten thousand.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from .models import DEADLINE_NOTICE, Connection, SyncRun

CHART_DAYS = 14
# The outcomes the chart stacks, bottom to top (colours by state in static/admin.css).
OUTCOMES = (
    (SyncRun.State.SUCCEEDED, "Succeeded"),
    (SyncRun.State.PARTIAL, "Partly done"),
    (SyncRun.State.FAILED, "Failed"),
)


@dataclass
class Bar:
    """One stacked segment of the chart, in SVG user units."""

    x: int
    y: int
    height: int
    state: str
    title: str


def health_counts() -> list[dict[str, Any]]:
    """Linked people by health, in `Connection.Health` order, zeros included."""
    counts = dict(
        Connection.objects.with_health()
        .values_list("health")
        .annotate(n=Count("pk"))
        .values_list("health", "n")
    )
    return [
        {"value": value, "label": label, "count": counts.get(value, 0)}
        for value, label in Connection.Health.choices
    ]


def figures(now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    day = SyncRun.objects.filter(finished_at__gte=now - timedelta(hours=24))
    last_day = day.aggregate(runs=Count("pk"), records=Sum("records_done"))
    return {
        "health": health_counts(),
        "last_sync_failed": Connection.objects.with_last_sync().last_sync_failed().count(),
        "deadlines_soon": Connection.objects.refresh_deadline_between(
            now, now + DEADLINE_NOTICE
        ).count(),
        "runs_24h": last_day["runs"],
        "failed_24h": day.filter(state__in=SyncRun.FAILED_STATES).count(),
        "records_24h": last_day["records"] or 0,
        "chart": sync_chart(now),
    }


def outcomes_per_day(now: datetime, days: int = CHART_DAYS) -> dict[date, dict[str, int]]:
    """Finished runs per local day and state, for the last `days` days (today included)."""
    today = timezone.localdate(now)
    first = today - timedelta(days=days - 1)
    start = timezone.make_aware(datetime.combine(first, datetime.min.time()))
    per_day: dict[date, dict[str, int]] = {
        first + timedelta(days=i): {state: 0 for state, _ in OUTCOMES} for i in range(days)
    }
    rows = (
        SyncRun.objects.filter(finished_at__gte=start, state__in=[state for state, _ in OUTCOMES])
        .annotate(day=TruncDate("finished_at"))
        .values("day", "state")
        .annotate(n=Count("pk"))
    )
    for row in rows:
        if row["day"] in per_day:
            per_day[row["day"]][row["state"]] = row["n"]
    return per_day


# Chart geometry (SVG user units; the SVG scales to its container).
WIDTH, HEIGHT, TOP, BOTTOM, LEFT = 560, 180, 12, 24, 36


def sync_chart(now: datetime) -> dict[str, Any]:
    """A stacked bar per day, ready for the template to draw as SVG (no JavaScript, no
    external chart service)."""
    per_day = outcomes_per_day(now)
    peak = max((sum(counts.values()) for counts in per_day.values()), default=0)
    scale_max = max(peak, 1)
    plot = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT) // len(per_day)
    bars: list[Bar] = []
    labels = []
    for i, (day, counts) in enumerate(per_day.items()):
        x = LEFT + i * slot + 3
        base = HEIGHT - BOTTOM
        for state, label in OUTCOMES:
            n = counts[state]
            if not n:
                continue
            height = max(1, round(plot * n / scale_max))
            base -= height
            bars.append(Bar(x, base, height, state, f"{day:%b %-d}: {n} {label.lower()}"))
        labels.append({"x": x + (slot - 6) // 2, "text": f"{day:%-d}", "title": f"{day:%b %-d}"})
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "bar_width": slot - 6,
        "bars": bars,
        "labels": labels,
        "label_y": HEIGHT - 8,
        "axis_y": HEIGHT - BOTTOM,
        "axis_x": LEFT,
        "peak": peak,
        "peak_y": TOP + 4,
        "legend": [{"state": state, "label": label} for state, label in OUTCOMES],
        "total": sum(sum(counts.values()) for counts in per_day.values()),
        "first": min(per_day),
        "last": max(per_day),
    }
