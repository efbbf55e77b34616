"""A fleet of connected portal users made in bulk, for the fleet benchmark and drill (issue 20).

The sandbox makes the Zywave side (`POST /_sandbox/fleet`: users, profiles, small books and live
grants); `portal_fleet` stores its answer as the portal's OAuth callback and profile picker would
have: a user, a `Connection` holding the tokens and a chosen `Profile` holding its
ProfileToken, `CHUNK` users at a time, so that memory stays bounded whatever the fleet's size.

Encrypted fields are written only by `bulk_create` (each value goes through the field, so it
is encrypted): `bulk_update` and `.update(field=Value(...))` would store the expression's text
(docs/architecture.md, the encrypted fields' known failures). The one `.update()` here sets
`chosen_profile`, a plain foreign key.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

CHUNK = 2000  # users asked of the sandbox, and written to the portal, at once


def sandbox_fleet(
    sandbox: Any,
    users: int,
    prefix: str = "fleet",
    first: int = 1,
    accounts: int = 10,
    contacts: int = 20,
    client_id: str = "portal-dev",
    scope: str | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """The sandbox's fleet users `first` .. `first + users - 1`, a chunk of answers at a time
    (each the token response's fields, `subject`, `email` and `profile`)."""
    done = 0
    while done < users:
        size = min(CHUNK, users - done)
        options: dict[str, Any] = {
            "users": size,
            "first": first + done,
            "prefix": prefix,
            "accounts": accounts,
            "contacts": contacts,
            "client_id": client_id,
        }
        if scope:
            options["scope"] = scope
        response = sandbox.http.post(
            f"{sandbox.url}/_sandbox/fleet",
            json=options,
            headers={"X-Sandbox-Key": sandbox.control_key},
            timeout=300,
        )
        if response.status_code != 201:
            raise RuntimeError(f"fleet: {response.status_code} {response.text[:300]}")
        yield response.json()["users"]
        done += size


def portal_fleet(answers: list[dict[str, Any]], prefix: str = "fleet") -> list[int]:
    """Portal users, active connections and chosen profiles for one chunk of the sandbox's
    answers (usernames `{prefix}-{email's local part}`); returns the connections' ids. Four
    statements per CHUNK rows (users, connections, profiles, the choice) and no HTTP."""
    from django.conf import settings
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.db import transaction
    from django.db.models import OuterRef, Subquery
    from django.utils import timezone

    from integrations.fields import token_fingerprint
    from integrations.models import Connection, Profile

    now = timezone.now()
    requested = " ".join(settings.ZYWAVE_SCOPES)
    password = make_password(None)  # unusable: nobody logs in as a fleet user
    with transaction.atomic():
        users = User.objects.bulk_create(
            [
                User(
                    username=f"{prefix}-{answer['email'].split('@')[0]}",
                    email=answer["email"],
                    password=password,
                )
                for answer in answers
            ]
        )
        connections = []
        for user, answer in zip(users, answers, strict=True):
            conn = Connection(
                user=user,
                zywave_subject=answer["subject"],
                zywave_email=answer["email"],
                status=Connection.Status.ACTIVE,
                requested_scopes=requested,
                authorized_at=now,
                profiles_listed_at=now,
            )
            conn.set_tokens(answer, now=now)
            # What Connection.save() does for a new row, which bulk_create does not call.
            conn.set_hook_token(secrets.token_urlsafe(32))
            connections.append(conn)
        Connection.objects.bulk_create(connections)
        Profile.objects.bulk_create(
            [
                Profile(
                    connection=conn,
                    type_code=answer["profile"]["type_code"],
                    zywave_id=answer["profile"]["id"],
                    name=answer["profile"]["name"],
                    organization=answer["profile"]["organization_name"],
                    is_current=True,
                    profile_token=answer["profile"]["profile_token"],
                    profile_token_fingerprint=token_fingerprint(answer["profile"]["profile_token"]),
                    listed_at=now,
                )
                for conn, answer in zip(connections, answers, strict=True)
            ]
        )
        ids = [conn.pk for conn in connections]
        # Each connection's only profile is its choice: one UPDATE of a plain foreign key.
        Connection.objects.filter(pk__in=ids).update(
            chosen_profile=Subquery(
                Profile.objects.filter(connection=OuterRef("pk")).values("pk")[:1]
            )
        )
    return ids


def make_fleet(
    sandbox: Any, users: int, prefix: str = "fleet", first: int = 1, **options: Any
) -> list[int]:
    """`users` connected portal users (sandbox and portal sides), CHUNK at a time: the ids of
    their connections. `options` go to the sandbox (accounts, contacts, client_id, scope)."""
    ids: list[int] = []
    for answers in sandbox_fleet(sandbox, users, prefix=prefix, first=first, **options):
        ids += portal_fleet(answers, prefix=prefix)
    return ids


# --- Measuring a drain -------------------------------------------------------------------------


def api_counts(sandbox: Any) -> dict[str, int]:
    """API requests the sandbox answered so far (all, 429s, the limiter's own refusals) and
    token requests, from its counters."""
    counters = sandbox.counters()
    api = counters.get("api", {})
    return {
        "api": sum(api.values()),
        "429": sum(n for key, n in api.items() if key.endswith(":429")),
        "limited": counters.get("limiter", {}).get("limited", 0),
        "token": sum(counters.get("token", {}).values()),
    }


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children (KiB), from /proc."""
    from tests.drills.stack import children

    total = 0
    for one in [pid, *children(pid)]:
        try:
            for line in open(f"/proc/{one}/status").read().splitlines():  # noqa: SIM115, PTH123
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def fleet_runs(since: Any, ids: list[int]) -> Any:
    """The runs of the connections `ids` queued since `since`. By the range of their ids: a
    fleet made in bulk is one block of ids after every other connection, and a list of 10,000
    ids in every sample would cost the machine more than the drain it measures."""
    from integrations.models import SyncRun

    return SyncRun.objects.filter(
        queued_at__gte=since, connection_id__gte=min(ids), connection_id__lte=max(ids)
    )


def run_states(since: Any, ids: list[int]) -> dict[str, int]:
    """Runs of `ids` queued since `since`, by state (one GROUP BY)."""
    from django.db.models import Count

    rows = fleet_runs(since, ids).values("state").annotate(n=Count("id"))
    return {row["state"]: row["n"] for row in rows}


def synced_once(since: Any, ids: list[int]) -> int:
    """Connections of `ids` with a finished run queued since `since`."""
    finished = ["succeeded", "partial", "failed"]
    return (
        fleet_runs(since, ids).filter(state__in=finished).values("connection_id").distinct().count()
    )


def scan_once() -> dict[str, Any]:
    """Beat's scan (`sync_due_connections`) run here, once, with its queries counted: on a
    fleet that is all due, it queues the whole backlog."""
    import time

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from integrations.tasks import sync_due_connections

    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        result = sync_due_connections()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "queries": len(queries.captured_queries), "result": result}


def sync_now_candidate(since: Any, ids: list[int], taken: set[int]) -> int | None:
    """A connection whose scheduled run is still waiting (the newest queued: the back of the
    backlog), else any of `ids` not asked yet."""

    queued = (
        fleet_runs(since, ids)
        .filter(state="queued", trigger="schedule")
        .exclude(connection_id__in=taken)
        .order_by("-id")
        .values_list("connection_id", flat=True)
        .first()
    )
    if queued is not None:
        return int(queued)
    return next((pk for pk in reversed(ids) if pk not in taken), None)


def api_sync_now(portal: str, connection_id: int) -> tuple[float, int | None]:
    """What a person's system does for Sync now: POST /api/v1/syncs with a key of the
    connection's owner (made here). Returns when it was posted (epoch seconds) and the run."""
    import time

    import requests

    from integrations.api.keys import issue
    from integrations.models import Connection

    owner = Connection.objects.select_related("user").get(pk=connection_id).user
    _key, secret = issue(owner, "fleet bench", ["read", "sync"])
    posted = time.time()
    answer = requests.post(
        f"{portal}/api/v1/syncs",
        json={"full": False},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    body = answer.json() if answer.headers.get("Content-Type", "").endswith("json") else {}
    run = body.get("id") if answer.status_code == 202 else (body.get("run") or {}).get("id")
    return posted, run


def drain(
    sandbox: Any,
    portal: str,
    ids: list[int],
    expected_seconds: float,
    timeout: float,
    redis_client: Any,
    workers: dict[str, int],
    start_beat: Any = None,
    sync_nows: int = 20,
    every: float = 2.0,
    say: Any = print,
) -> dict[str, Any]:
    """Make every connection of `ids` due (their runs deleted: rows without secrets), run
    beat's scan here (it queues them all), start beat (`start_beat()`), and sample until each
    has been synced once: the sandbox's counters, the runs by state, Redis's memory and the
    workers' RSS every `every` s, and `sync_nows` Sync nows spread over `expected_seconds`.
    Returns the samples and the figures (see `figures`)."""
    import time

    from django.utils import timezone

    from integrations.models import SyncRun

    for start in range(0, len(ids), 5000):
        SyncRun.objects.filter(connection_id__in=ids[start : start + 5000]).delete()
    sandbox.control("POST", "counters/reset")
    since = timezone.now()
    began = time.time()
    scan = scan_once()
    say(f"scan: {scan['seconds']:.2f} s, {scan['queries']} queries, {scan['result']}")
    beat = start_beat() if start_beat else None
    samples: list[dict[str, Any]] = []
    asked: list[tuple[float, int | None]] = []
    taken: set[int] = set()
    spacing = max(1.0, 0.8 * min(expected_seconds, timeout) / max(1, sync_nows))
    # The first at once: a small fleet (the short drill's 30) may drain within one sample.
    next_ask = began
    done = 0
    try:
        while time.time() - began < timeout:
            now = time.time()
            counts = api_counts(sandbox)
            states = run_states(since, ids)
            done = synced_once(since, ids)
            samples.append(
                {
                    "t": now - began,
                    **counts,
                    "queued": states.get("queued", 0),
                    "running": states.get("running", 0),
                    "synced": done,
                    "redis": int(redis_client.info("memory")["used_memory"]),
                    "rss": {name: rss_kib(pid) for name, pid in workers.items()},
                }
            )
            if done >= len(ids):
                break
            if len(asked) < sync_nows and now >= next_ask:
                pick = sync_now_candidate(since, ids, taken)
                if pick is not None:
                    taken.add(pick)
                    asked.append(api_sync_now(portal, pick))
                next_ask += spacing
            time.sleep(max(0.0, min(every, spacing) - (time.time() - now)))
    finally:
        if beat is not None:
            beat()
    return figures(samples, asked, since, began, ids, scan)


def figures(
    samples: list[dict[str, Any]],
    asked: list[tuple[float, int | None]],
    since: Any,
    began: float,
    ids: list[int],
    scan: dict[str, Any],
) -> dict[str, Any]:
    """The drain's figures:

    - `drain`: seconds from the scan starting to the last connection's first run finishing
      (when the drain was cut short at its timeout, `projected`: at the pace so far);
    - `rate`: API requests the sandbox answered per second from the first run starting to the
      last finishing (its counters), `served_rate` those it did not refuse, `share_429` the
      429s among them;
    - `waits`: per connection, its first run's finished_at - queued_at (queued by the scan, so
      the time it became due): p50, max and max / p50, the spread of completion;
    - `runs`: its finished_at - started_at (p50, p95): how long a sync itself takes;
    - `sync_now`: the Sync nows' started_at - the time they were posted (p50, p95, max);
    - the largest Redis memory and worker RSS seen."""
    from integrations.models import SyncRun
    from tests.drills.helpers import percentile

    first: dict[int, tuple[Any, Any, Any]] = {}
    for conn, queued, started, finished in (
        fleet_runs(since, ids)
        .filter(finished_at__isnull=False)
        .order_by("connection_id", "finished_at")
        .values_list("connection_id", "queued_at", "started_at", "finished_at")
        .iterator(chunk_size=5000)
    ):
        first.setdefault(conn, (queued, started, finished))
    waits = [(f - q).total_seconds() for q, s, f in first.values()]
    runs = [(f - s).total_seconds() for q, s, f in first.values() if s]
    starts = [s.timestamp() for q, s, f in first.values() if s]
    ends = [f.timestamp() for q, s, f in first.values()]
    window = (max(ends) - min(starts)) if starts and ends else 0.0
    last = samples[-1] if samples else {"api": 0, "429": 0, "limited": 0, "token": 0}
    started_of = dict(
        SyncRun.objects.filter(pk__in=[run for _, run in asked if run]).values_list(
            "pk", "started_at"
        )
    )
    delays = [
        started_of[run].timestamp() - posted
        for posted, run in asked
        if run and started_of.get(run) is not None
    ]
    p50 = percentile(waits, 0.5)
    rss_names = list(samples[0]["rss"]) if samples else []
    elapsed = samples[-1]["t"] if samples else 0.0
    complete = len(first) >= len(ids)
    return {
        "connections": len(ids),
        "synced": len(first),
        "complete": complete,
        "drain": (max(ends) - began) if ends else None,
        # Cut short: how long all would have taken at the pace so far.
        "projected": elapsed * len(ids) / len(first) if first and not complete else None,
        "window": window,
        "requests": last["api"],
        "token_requests": last["token"],
        "rate": last["api"] / window if window else 0.0,
        "served_rate": (last["api"] - last["429"]) / window if window else 0.0,
        "share_429": last["429"] / last["api"] if last["api"] else 0.0,
        "limited": last["limited"],
        "waits": {"p50": p50, "max": max(waits, default=0.0)},
        "spread": max(waits, default=0.0) / p50 if p50 else None,
        "runs": {"p50": percentile(runs, 0.5), "p95": percentile(runs, 0.95)},
        "sync_now": {
            "asked": len(asked),
            "started": len(delays),
            "p50": percentile(delays, 0.5),
            "p95": percentile(delays, 0.95),
            "max": max(delays, default=0.0),
        },
        "scan": scan,
        "redis_max": max((s["redis"] for s in samples), default=0),
        "rss_max": {name: max(s["rss"][name] for s in samples) for name in rss_names},
        "samples": samples,
    }
