"""The fleet drill (issue 20): a few hundred connections made in bulk, all due at once, drained
under the sandbox's app-wide rate limit while people press Sync now. The short version of
`make bench`'s fleet section (tests/bench/bench_fleet.py); both use tests/bench/fleet.py."""

from __future__ import annotations

from typing import Any

import redis

from tests.bench.fleet import drain, make_fleet
from tests.drills.helpers import Result, Scale
from tests.drills.stack import CLIENT_ID, Stack

SCAN_BATCH = 500  # integrations.tasks.SCAN_BATCH: the scan's queries are bounded per batch
QUERIES_PER_BATCH = 10


def drill_fleet(stack: Stack, scale: Scale) -> Result:
    from django.conf import settings

    size = 300 if scale.name == "full" else 30
    rate = float(settings.ZYWAVE_RATE_LIMIT)  # the portal's budget is Zywave's limit
    result = Result(
        "Fleet drain under the app's rate limit",
        f"{size} connections made in bulk (sandbox fleet + bulk_create), all due at once; the "
        f"sandbox limits the whole app to {rate:g} requests/s (429 with Retry-After); "
        "8 Sync nows through the API while the backlog drains",
        "every connection synced once; 429s at most 0.5% of requests; Sync now starts within "
        "5 s (p95); beat's scan a bounded number of queries",
    )
    zywave = stack.zywave
    zywave.reset()
    ids = make_fleet(
        zywave,
        size,
        prefix="dfleet",
        client_id=CLIENT_ID,
        scope=" ".join(settings.ZYWAVE_SCOPES),
    )
    zywave.control("POST", "settings", rate_limit=rate)
    per_sync = 3  # accounts, contacts, policies: one page each
    expected = size * per_sync / rate

    def start_beat() -> Any:
        if stack.beat is not None and stack.beat.alive():
            return None
        beat = stack.start_beat()

        def stop() -> None:
            beat.stop()
            stack.processes.remove(beat)
            stack.beat = None

        return stop

    try:
        figures = drain(
            zywave,
            stack.portal,
            ids,
            expected_seconds=expected,
            timeout=expected * 4 + 90,
            redis_client=redis.Redis.from_url(stack.redis_url),
            workers={worker.name: worker.popen.pid for worker in stack.workers},
            start_beat=start_beat,
            sync_nows=8,
            say=stack.say,
        )
    finally:
        zywave.reset()  # the limit off again for whatever comes next
    batches = -(-size // SCAN_BATCH)
    sync_now = figures["sync_now"]
    result.figures = {k: v for k, v in figures.items() if k != "samples"}
    result.checks = {
        "every connection synced once": figures["synced"] == size,
        "429s at most 0.5% of requests": figures["share_429"] <= 0.005,
        "Sync now p95 under 5 s": sync_now["started"] == sync_now["asked"] and sync_now["p95"] < 5,
        "the scan's queries bounded": figures["scan"]["queries"]
        <= QUERIES_PER_BATCH * batches + 10,
    }
    result.measured = (
        f"{figures['synced']} of {size} synced in {figures['drain'] or 0:.0f} s; "
        f"{figures['rate']:.1f} requests/s ({figures['rate'] / rate:.2f} of {rate:g}); "
        f"429s {figures['share_429']:.2%} of {figures['requests']}; Sync now → started p95 "
        f"{sync_now['p95']:.2f} s ({sync_now['started']} of {sync_now['asked']}); wait from due "
        f"p50 {figures['waits']['p50']:.0f} s, max {figures['waits']['max']:.0f} s; scan "
        f"{figures['scan']['seconds']:.2f} s, {figures['scan']['queries']} queries"
    )
    return result
