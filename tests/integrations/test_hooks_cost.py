"""What a flood of deliveries costs: the queries of its every request, and the fetches its
notifications make (tests/bench/bench_hooks.py measures the whole of it)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from django.contrib.auth.models import User
from django.db import connection as db
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations import hooks
from integrations.models import Connection, ZywaveNotification
from tests.conftest import connection

pytestmark = pytest.mark.django_db


def deliver(token: str, record_id: str) -> int:
    body = {
        "eventType": "account.updated",
        "eventDateTime": "2026-12-01T10:00:00Z",
        "recordType": "Account",
        "recordId": record_id,
    }
    answer = Client().post(
        f"/hooks/zywave/{token}/", data=orjson.dumps(body), content_type="application/json"
    )
    return answer.status_code


def test_a_delivery_reads_no_token_and_touches_the_connection_only_when_due(
    staff: User, django_capture_on_commit_callbacks: Any
) -> None:
    conn = connection(staff)  # holds an access and a refresh token, both encrypted
    token = hooks.rotate_token(conn)
    Connection.objects.filter(pk=conn.pk).update(hook_last_delivery_at=None)
    with CaptureQueriesContext(db) as first, django_capture_on_commit_callbacks():
        assert deliver(token, "1") == 202
    sql = [q["sql"] for q in first.captured_queries]
    lookup = next(q for q in sql if "hook_token_hash" in q)
    assert "access_token" not in lookup and "refresh_token" not in lookup
    assert sum("hook_last_delivery_at =" in q for q in sql if q.startswith("UPDATE")) == 1
    touched = Connection.objects.values_list("hook_last_delivery_at", flat=True).get(pk=conn.pk)
    assert touched is not None

    # Touched a moment ago: the lookup read that, so the next delivery writes nothing to it.
    with CaptureQueriesContext(db) as second, django_capture_on_commit_callbacks():
        assert deliver(token, "2") == 202
    assert not [q for q in second.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(second.captured_queries) == len(first.captured_queries) - 1
    assert ZywaveNotification.objects.filter(connection=conn).count() == 2

    # Past TOUCH_EVERY the delivery touches it again.
    stale = timezone.now() - hooks.TOUCH_EVERY - timedelta(seconds=1)
    Connection.objects.filter(pk=conn.pk).update(hook_last_delivery_at=stale)
    with django_capture_on_commit_callbacks():
        assert deliver(token, "3") == 202
    touched = Connection.objects.values_list("hook_last_delivery_at", flat=True).get(pk=conn.pk)
    assert touched is not None and touched > stale


def test_a_stream_of_notifications_makes_one_fetch_per_window(
    staff: User, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """The fetch at a window's end opens the next window: a notification after it waits for
    that window's end too, instead of fetching at once just after (two fetches a window)."""
    import time

    from django.core.cache import cache

    settings.ZYWAVE_WEBHOOK_COALESCE_SECONDS = 1
    conn = connection(staff)
    key = f"zywave-refetch:{conn.pk}:accounts:77"
    cache.delete_many([key, f"{key}:again"])
    with django_capture_on_commit_callbacks() as queued:
        outcomes = [hooks.schedule_fetch(conn.pk, "accounts", "77") for _ in range(2)]
        time.sleep(1.2)  # the first window is over, its trailing fetch due
        outcomes += [hooks.schedule_fetch(conn.pk, "accounts", "77") for _ in range(2)]
    assert outcomes == ["now", "later", "later", "coalesced"]
    assert len(queued) == 3


def test_the_shared_cache_decides_coalescing_in_one_round_trip(
    staff: User, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    """On Redis (as the tests run) `schedule_fetch` is one command whatever it decides (a spy
    on the real client counts them: no other component can say how many were sent)."""
    import redis
    from django.core.cache import cache

    assert hasattr(cache, "coalesce"), "the suite's cache is the shared Redis cache"
    conn = connection(staff)
    key = f"zywave-refetch:{conn.pk}:accounts:78"
    cache.delete_many([key, f"{key}:again"])
    with django_capture_on_commit_callbacks():
        hooks.schedule_fetch(conn.pk, "accounts", "79")  # the script loaded into Redis
    sent: list[str] = []
    real = redis.Redis.execute_command

    def counted(self: Any, *args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return real(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", counted)
    with django_capture_on_commit_callbacks():
        outcomes = [hooks.schedule_fetch(conn.pk, "accounts", "78") for _ in range(3)]
    assert outcomes == ["now", "later", "coalesced"]
    assert [name.upper() for name in sent] == ["EVALSHA"] * 3
