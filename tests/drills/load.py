"""Drills that load the portal: a burst of connect flows, a sync soak with pages browsed
during it.
"""

from __future__ import annotations

import random
import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import redis
import requests

from tests.drills.helpers import (
    Result,
    Scale,
    clear_faults,
    conn_ids,
    conn_of,
    connect_flow,
    duplicates,
    expire_tokens,
    logged_in,
    mirror_mismatches,
    models,
    percentile,
    queue_syncs,
    wait_idle,
)
from tests.drills.stack import DrillError, Stack


def tokens_belong_to_owners(stack: Stack, indexes: list[int]) -> tuple[int, int]:
    """(checked, wrong): each connection's access token, asked at Zywave's userinfo, names the
    connection's own Zywave identity; refresh tokens are all distinct."""
    wrong = 0
    refresh_tokens = set()
    session = requests.Session()
    for i in indexes:
        conn = conn_of(i)
        info = session.get(
            f"{stack.zywave.url}/connect/userinfo",
            headers={"Authorization": f"Bearer {conn.access_token}"},
            timeout=30,
        )
        email = info.json().get("email") if info.ok else None
        if email != stack.email(i) or conn.zywave_email != stack.email(i):
            wrong += 1
        refresh_tokens.add(conn.refresh_token)
    wrong += len(indexes) - len(refresh_tokens)
    return len(indexes), wrong


def drill_connect_burst(stack: Stack, scale: Scale) -> Result:
    result = Result(
        "Load: connect burst",
        f"{scale.concurrency} concurrent clients, {scale.flows} complete connect flows (portal "
        "dashboard, Connect, sandbox login and consent, callback, profile picker, choice)",
        f"failures 0, 5xx 0, connections {scale.flows}, distinct state and PKCE challenges "
        f"{scale.flows}, tokens held by their owner only",
    )
    indexes = list(range(1, scale.flows + 1))
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=scale.concurrency) as pool:
        flows = list(pool.map(lambda i: connect_flow(stack, i), indexes))
    wall = time.monotonic() - start
    failures = [f for f in flows if not f["ok"]]
    server_errors = sum(1 for f in flows for s in f["statuses"] if s >= 500)
    times = [f["seconds"] for f in flows if f["ok"]]
    connections = models().Connection.objects.filter(status="active").count()
    checked, wrong = tokens_belong_to_owners(stack, indexes)
    f = result.figures
    f.update(
        flows=len(flows),
        failures=len(failures),
        server_errors=server_errors,
        connections=connections,
        distinct_state=len({x.get("state") for x in flows if x.get("state")}),
        distinct_pkce=len({x.get("challenge") for x in flows if x.get("challenge")}),
        pkce_s256=sum(1 for x in flows if x.get("method") == "S256"),
        wrong_owner=wrong,
        p50=round(statistics.median(times), 2) if times else None,
        p95=round(percentile(times, 0.95), 2),
        wall=round(wall, 1),
        first_errors=[x.get("error") for x in failures[:3]],
    )
    result.checks = {
        "no failures": not failures,
        "no 5xx": server_errors == 0,
        "a connection per flow": connections == scale.flows,
        "distinct state": f["distinct_state"] == scale.flows,
        "distinct PKCE": f["distinct_pkce"] == scale.flows == f["pkce_s256"],
        "tokens with their owner": wrong == 0 and checked == scale.flows,
    }
    result.measured = (
        f"{len(failures)} failures, {server_errors} 5xx, {connections} connections, "
        f"{f['distinct_state']} distinct state, {f['distinct_pkce']} distinct PKCE challenges "
        f"(S256), {wrong} tokens with another user; flow p50 {f['p50']} s, p95 {f['p95']} s "
        f"({len(flows)} flows in {f['wall']} s)"
    )
    # Choosing a profile queued a full sync per connection: let the workers finish them.
    wait_idle(None, timeout=300)
    return result


def page_user(
    stack: Stack,
    i: int,
    until: float,
    samples: list[tuple[float, int]],
    wrong: list[str],
    wrong_errors: list[str],
) -> None:
    browser = logged_in(stack, i)
    own = f"{i:03d}"
    pattern = re.compile(r"(?:Drill|drill)(\d{3})")
    paths = ["/", "/zywave/accounts/", f"/zywave/accounts/?q=Account+{random.randint(0, 9)}"]
    n = 0
    while time.monotonic() < until and n < 2000:
        path = paths[n % len(paths)]
        n += 1
        start = time.monotonic()
        try:
            response = browser.get(f"{stack.portal}{path}", timeout=30)
        except requests.RequestException as exc:
            samples.append((time.monotonic() - start, 0))
            wrong_errors.append(type(exc).__name__)
            continue
        samples.append((time.monotonic() - start, response.status_code))
        others = {m for m in pattern.findall(response.text) if m != own}
        if others:
            wrong.append(f"staff{own} saw {sorted(others)[:3]} on {path}")
        time.sleep(0.2)


def web_restarts(stack: Stack) -> int:
    """gunicorn's max_requests recycling, counted in its log."""
    path = stack.logs / "web.log"
    return path.read_text(errors="replace").count("Autorestarting worker") if path.exists() else 0


def drill_soak(stack: Stack, scale: Scale, indexes: list[int]) -> tuple[Result, Result]:
    m = models()
    ids = conn_ids(indexes)
    lifetime = 330  # the portal refreshes 5 minutes ahead: a token is "fresh" for 30 s
    soak = Result(
        "Load: sync soak",
        f"{len(ids)} connections, access tokens living {lifetime} s (fresh for 30 s given the "
        f"portal's 5-minute margin: a refresh per use after that), beat (syncs due every "
        f"minute, token upkeep every minute), plus the upkeep task every "
        f"{5 if scale.name == 'short' else 20} s and Sync now for idle connections every "
        f"{5 if scale.name == 'short' else 10} s, for {scale.soak_seconds:.0f} s, two workers",
        "syncs lost 0, duplicates 0, refreshes per token generation 1.00, invalid_grant 0",
    )
    pages = Result(
        "Load: pages during the soak",
        f"{scale.page_users} logged-in users browsing the dashboard and accounts (list, search) "
        "during the soak, 0.2 s between pages",
        "5xx 0, another user's data shown 0",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    stack.zywave.control("POST", "settings", access_token_lifetime=lifetime)
    broker = redis.Redis.from_url(stack.redis_url)
    memory_start = {
        "workers_kib": sum(w.rss_kib() for w in stack.workers),
        "redis_used_kib": int(broker.info("memory")["used_memory"]) // 1024,
    }
    expire_tokens(ids)
    started = datetime.now(UTC)
    beat = stack.start_beat()
    samples: list[tuple[float, int]] = []
    wrong: list[str] = []
    connection_errors: list[str] = []
    restarts_before = web_restarts(stack)
    until = time.monotonic() + scale.soak_seconds
    threads = [
        threading.Thread(
            target=page_user, args=(stack, i, until, samples, wrong, connection_errors), daemon=True
        )
        for i in indexes[: scale.page_users]
    ]
    for thread in threads:
        thread.start()
    from integrations.tasks import keep_tokens_alive

    upkeep_every = 5.0 if scale.name == "short" else 20.0
    sync_every = 5.0 if scale.name == "short" else 10.0
    last_upkeep = last_sync = 0.0
    while time.monotonic() < until:
        # Beat runs each of its entries once a minute; between its runs the drill adds what
        # people and a hotter schedule would: the upkeep task and "Sync now" for idle ones.
        if time.monotonic() - last_upkeep >= upkeep_every:
            keep_tokens_alive.delay()
            last_upkeep = time.monotonic()
        if time.monotonic() - last_sync >= sync_every:
            busy = set(
                m.SyncRun.objects.active()
                .filter(connection_id__in=ids)
                .values_list("connection_id", flat=True)
            )
            queue_syncs([pk for pk in ids if pk not in busy])
            last_sync = time.monotonic()
        time.sleep(min(1.0, max(0.0, until - time.monotonic())))
        if not beat.alive():
            raise DrillError(f"beat exited:\n{beat.tail()}")
    for thread in threads:
        thread.join(timeout=60)
    memory_end = {
        "workers_kib": sum(w.rss_kib() for w in stack.workers),
        "redis_used_kib": int(broker.info("memory")["used_memory"]) // 1024,
    }
    beat.stop()
    stack.processes.remove(beat)
    stack.beat = None
    drain = wait_idle(ids, timeout=120)
    counters = clear_faults(stack)["token"]
    runs = m.SyncRun.objects.filter(connection_id__in=ids, queued_at__gte=started)
    states: dict[str, int] = {}
    for state in runs.values_list("state", flat=True):
        states[state] = states.get(state, 0) + 1
    lost = sum(n for s, n in states.items() if s != "succeeded")
    # Every refresh since the start (the upkeep task refreshes every connection, not only
    # the soak's), against every refresh Zywave answered.
    events = m.ConnectionEvent.objects.filter(kind="refreshed", at__gte=started)
    used = [e.detail.get("used") for e in events]
    generations = len(set(used))
    refreshes = counters.get("refresh_token:success", 0)
    attempts = sum(counters.values())
    per_generation = round(attempts / generations, 2) if generations else 0.0
    dupes = duplicates()
    mismatched = mirror_mismatches(stack, indexes)
    synced = runs.filter(state="succeeded").values("connection_id").distinct().count()
    f = soak.figures
    f.update(
        connections=len(ids),
        seconds=scale.soak_seconds,
        runs=sum(states.values()),
        states=states,
        connections_synced=synced,
        syncs_lost=lost,
        duplicates=dupes,
        mirror_mismatches=mismatched,
        token_requests=attempts,
        refreshes_at_zywave=refreshes,
        refreshed_events=len(used),
        token_generations_replaced=generations,
        refreshes_per_generation=per_generation,
        invalid_grant=counters.get("refresh_token:invalid_grant", 0),
        reauth=m.Connection.objects.filter(pk__in=ids).exclude(status="active").count(),
        memory_start=memory_start,
        memory_end=memory_end,
        drain_seconds=round(drain, 1),
    )
    soak.checks = {
        "syncs lost 0": lost == 0 and synced == len(ids),
        "duplicates 0": dupes == 0 and not mismatched,
        "one refresh per generation": per_generation == 1.0
        and refreshes == len(used) == generations
        and generations >= len(ids),
        "no grant lost": f["invalid_grant"] == 0 and f["reauth"] == 0,
    }
    soak.measured = (
        f"{f['runs']} sync runs over {len(ids)} connections ({states}); syncs lost {lost}; "
        f"duplicates {dupes}; {refreshes} refreshes for {generations} token generations = "
        f"{per_generation:.2f} per generation, invalid_grant {f['invalid_grant']}; worker memory "
        f"{memory_start['workers_kib'] // 1024} → {memory_end['workers_kib'] // 1024} MiB, Redis "
        f"used_memory {memory_start['redis_used_kib'] // 1024} → "
        f"{memory_end['redis_used_kib'] // 1024} MiB (the shared server)"
    )
    times = [t for t, s in samples if s]
    errors = sum(1 for _, s in samples if s >= 500)
    restarts = web_restarts(stack) - restarts_before
    pf = pages.figures
    pf.update(
        users=scale.page_users,
        pages=len(samples),
        server_errors=errors,
        connection_errors=len(connection_errors),
        connection_error_kinds=sorted(set(connection_errors)),
        gunicorn_worker_restarts=restarts,
        other_users_data=len(wrong),
        first_wrong=wrong[:3],
        p50=round(statistics.median(times), 3) if times else None,
        p95=round(percentile(times, 0.95), 3),
        max=round(max(times), 3) if times else None,
    )
    pages.checks = {
        "5xx 0": errors == 0 and len(samples) > 0,
        "no other user's data": not wrong,
        "every page answered": not connection_errors,
        "all answered 200": all(s == 200 for _, s in samples if s),
    }
    pages.measured = (
        f"{len(samples)} pages by {scale.page_users} users: {errors} 5xx, {len(wrong)} showing "
        f"another user's data; {len(connection_errors)} requests cut off without an answer "
        f"({', '.join(sorted(set(connection_errors))) or 'none'}; gunicorn recycled a worker "
        f"{restarts} times meanwhile, max_requests); p50 {pf['p50']} s, p95 {pf['p95']} s, "
        f"max {pf['max']} s"
    )
    return soak, pages
