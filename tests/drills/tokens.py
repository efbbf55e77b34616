"""Drills that break token lifetime: the token endpoint failing, hanging or losing its answer,
a revoked grant, a worker killed inside a refresh.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from tests.drills.helpers import (
    RequestLog,
    Result,
    Scale,
    ask,
    clear_faults,
    conn_ids,
    conn_of,
    expire_tokens,
    finished,
    models,
    queue_syncs,
    reconcile,
    wait_idle,
)
from tests.drills.netfaults import CuttingProxy
from tests.drills.stack import Stack, wait_until

TOKEN_PATH = r"^/connect/token$"


def fault_remaining(stack: Stack) -> int:
    return sum(f["remaining"] for f in stack.zywave.control("GET", "faults")["faults"])


def drill_token_outage(stack: Stack, scale: Scale, first: int) -> Result:
    """The token endpoint answers 500 for a window while syncs and refreshes need it."""
    m = models()
    window = scale.outage_seconds
    indexes = list(range(first, first + scale.outage_connections))
    ids = conn_ids(indexes)
    retries = int(stack.env["ZYWAVE_SYNC_MAX_RETRIES"])
    result = Result(
        "Token endpoint 500s",
        f"/connect/token answers 500 for {window:.0f} s; {len(ids)} connections with expired "
        "access tokens are synced and refreshed meanwhile",
        "tokens lost 0, wrongly marked for re-authorization 0, refresh attempts per connection "
        f"within {retries + 1} per sync run plus 1 per refresh task, all healthy after recovery",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    before = {c.pk: c.refresh_token for c in m.Connection.objects.filter(pk__in=ids)}
    started = datetime.now(UTC)
    stack.zywave.add_fault(TOKEN_PATH, count=100000, status=500, method="POST")
    expire_tokens(ids)
    queue_syncs(ids)
    from integrations.tasks import refresh_connection

    for pk in ids:
        refresh_connection.delay(pk)
    end = time.monotonic() + window
    while time.monotonic() < end:
        time.sleep(min(5.0, max(0.0, end - time.monotonic())))
        reconcile()
    conns = list(m.Connection.objects.filter(pk__in=ids))
    wrongly_reauth = sum(1 for c in conns if c.status != "active")
    lost = sum(1 for c in conns if not c.refresh_token or c.refresh_token != before[c.pk])
    live = 0
    for c in conns:
        status = stack.zywave.control("GET", f"tokens/{c.refresh_token}")
        live += bool(status.get("active"))
    counters = clear_faults(stack)  # the recovery: the token endpoint answers again
    recovered_at = datetime.now(UTC)
    attempts = counters["token"].get("refresh_token:500", 0)
    events = m.ConnectionEvent.objects.filter(
        connection_id__in=ids, kind="refresh_failed", at__gte=started
    )
    per_conn = [events.filter(connection_id=pk).count() for pk in ids]
    runs_in_window = [
        m.SyncRun.objects.filter(connection_id=pk, queued_at__gte=started).count() for pk in ids
    ]
    over_bound = sum(
        1 for n, runs in zip(per_conn, runs_in_window, strict=True) if n > runs * (retries + 1) + 1
    )

    def healthy() -> bool:
        reconcile()
        good = m.Connection.objects.filter(
            pk__in=ids,
            status="active",
            last_error="",
            access_token_expires_at__gt=datetime.now(UTC) + timedelta(minutes=5),
        ).count()
        synced = (
            m.SyncRun.objects.filter(
                connection_id__in=ids, state="succeeded", finished_at__gte=recovered_at
            )
            .values("connection_id")
            .distinct()
            .count()
        )
        return good == len(ids) and synced == len(ids)

    recovery = wait_until("every connection healthy and synced", healthy, timeout=150, interval=2)
    f = result.figures
    f.update(
        window_seconds=window,
        connections=len(ids),
        token_requests_answered_500=attempts,
        refresh_failed_events=sum(per_conn),
        attempts_per_connection_max=max(per_conn),
        attempts_per_connection_mean=round(sum(per_conn) / len(per_conn), 2),
        sync_runs_in_window=sum(runs_in_window),
        connections_over_bound=over_bound,
        tokens_lost=lost,
        refresh_tokens_still_live=live,
        wrongly_reauth=wrongly_reauth,
        healthy_after_seconds=round(recovery, 1),
    )
    result.checks = {
        "tokens lost 0": lost == 0 and live == len(ids),
        "wrongly reauth 0": wrongly_reauth == 0,
        "attempts within bound": over_bound == 0 and attempts > 0,
        "all healthy after recovery": True,
    }
    result.measured = (
        f"{attempts} refresh requests answered 500 over {len(ids)} connections (max "
        f"{max(per_conn)}, mean {f['attempts_per_connection_mean']} per connection, "
        f"{sum(runs_in_window)} sync runs; {over_bound} over the bound); tokens lost {lost} "
        f"({live}/{len(ids)} refresh tokens still live at Zywave); wrongly marked for "
        f"re-authorization {wrongly_reauth}; all {len(ids)} refreshed and synced "
        f"{recovery:.1f} s after recovery"
    )
    return result


def drill_invalid_grant(stack: Stack, scale: Scale, victim: int, others: list[int]) -> Result:
    m = models()
    result = Result(
        "invalid_grant",
        f"the grant of one person (drill{victim:03d}) revoked at Zywave; their access token and "
        f"those of {len(others)} others expire; syncs and refreshes asked for all, then again",
        "re-authorization flagged after exactly one refresh attempt, that refresh token never "
        "presented again, the others refreshed and synced",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    victim_id = conn_ids([victim])[0]
    other_ids = conn_ids(others)
    started = datetime.now(UTC)
    stack.zywave.control("POST", f"users/{stack.email(victim)}/revoke")
    expire_tokens([victim_id, *other_ids])
    queue_syncs([victim_id, *other_ids])
    wait_idle([victim_id, *other_ids], timeout=60)
    first = stack.zywave.counters()["token"]
    # Everything that could use the token again: beat, "Sync now", the upkeep task.
    from integrations.tasks import keep_tokens_alive, refresh_connection

    sent = [
        *queue_syncs([victim_id], keep_results=True),
        ask(refresh_connection, victim_id),
        ask(keep_tokens_alive),
    ]
    reconcile()
    # The victim's tasks find nothing to sync or refresh, so no run or event marks their end:
    # wait for a worker to have ended each of them.
    finished(sent, timeout=60)
    wait_idle([victim_id, *other_ids], timeout=60)
    after = clear_faults(stack)["token"]
    victim_conn = m.Connection.objects.get(pk=victim_id)
    others_ok = m.Connection.objects.filter(pk__in=other_ids, status="active").count()
    others_synced = (
        m.SyncRun.objects.filter(
            connection_id__in=other_ids, state="succeeded", finished_at__gte=started
        )
        .values("connection_id")
        .distinct()
        .count()
    )
    reauth_events = m.ConnectionEvent.objects.filter(
        connection_id=victim_id, kind="reauth_required", at__gte=started
    ).count()
    others_refreshed = (
        m.ConnectionEvent.objects.filter(
            connection_id__in=other_ids, kind="refreshed", at__gte=started
        )
        .values("connection_id")
        .distinct()
        .count()
    )
    emails = m.ConnectionEvent.objects.filter(connection_id=victim_id, at__gte=started).count()
    f = result.figures
    f.update(
        victim_status=victim_conn.status,
        invalid_grant_first=first.get("refresh_token:invalid_grant", 0),
        invalid_grant_total=after.get("refresh_token:invalid_grant", 0),
        refresh_successes=after.get("refresh_token:success", 0),
        reauth_events=reauth_events,
        victim_events=emails,
        others_active=others_ok,
        others_synced=others_synced,
        others_refreshed=others_refreshed,
    )
    result.checks = {
        "flagged": victim_conn.status == "reauth_required" and reauth_events == 1,
        "exactly one attempt": f["invalid_grant_first"] == 1,
        "never presented again": f["invalid_grant_total"] == 1,
        "others unaffected": others_ok == len(others) == others_synced == others_refreshed,
    }
    result.measured = (
        f"victim {victim_conn.status} after {f['invalid_grant_first']} refresh attempt "
        f"(invalid_grant); after more syncs, a refresh task and the upkeep task: "
        f"{f['invalid_grant_total']} invalid_grant in all; {reauth_events} re-authorization "
        f"event; others {others_ok}/{len(others)} active, {others_refreshed} refreshed, "
        f"{others_synced} synced"
    )
    return result


def lock_is_free(pk: int) -> bool:
    from django.db import DatabaseError, transaction

    try:
        with transaction.atomic():
            models().Connection.objects.select_for_update(nowait=True).filter(pk=pk).first()
        return True
    except DatabaseError:
        return False


def drill_kill_in_refresh(stack: Stack, scale: Scale, i: int) -> Result:
    m = models()
    pk = conn_ids([i])[0]
    result = Result(
        "Worker SIGKILL inside a token refresh",
        "the token endpoint holds a refresh for 4 s (then would answer 503); both workers are "
        "SIGKILLed while one holds the connection's row lock and waits for it; new workers "
        "start and the refresh is asked again",
        "no stuck lock, exactly one successful refresh, connection active",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    stack.zywave.add_fault(TOKEN_PATH, count=1, status=503, delay_ms=4000, method="POST")
    expire_tokens([pk])
    started = datetime.now(UTC)
    from integrations.tasks import refresh_connection

    refresh_connection.delay(pk)
    # The refresh takes the row lock before it calls Zywave: once the fault has taken the
    # request, the lock is held for the fault's 4 s.
    wait_until("the refresh to reach Zywave", lambda: fault_remaining(stack) == 0, timeout=30)
    held = not lock_is_free(pk)
    killed_at = time.monotonic()
    for worker in list(stack.workers):
        stack.replace_worker(worker)
    free_after = wait_until("the row lock to be released", lambda: lock_is_free(pk), timeout=60)
    free_after = max(free_after, time.monotonic() - killed_at - free_after)
    stack.wait_workers()
    # The sandbox counts a request once it has answered it: here the 503, to nobody.
    wait_until(
        "the held refresh to be answered (to nobody)",
        lambda: any(key.endswith(":503") for key in stack.zywave.counters()["token"]),
        timeout=30,
    )
    refresh_connection.delay(pk)
    wait_until(
        "the refresh",
        lambda: m.Connection.objects.filter(
            pk=pk, access_token_expires_at__gt=datetime.now(UTC) + timedelta(minutes=5)
        ).exists(),
        timeout=60,
    )
    counters = clear_faults(stack)["token"]
    conn = m.Connection.objects.get(pk=pk)
    refreshed = m.ConnectionEvent.objects.filter(
        connection_id=pk, kind="refreshed", at__gte=started
    ).count()
    f = result.figures
    f.update(
        lock_held_before_kill=held,
        lock_free_seconds_after_kill=round(time.monotonic() - killed_at, 1)
        if not held
        else round(free_after, 2),
        refresh_successes=counters.get("refresh_token:success", 0),
        refresh_503=counters.get("refresh_token:503", 0),
        invalid_grant=counters.get("refresh_token:invalid_grant", 0),
        refreshed_events=refreshed,
        status=conn.status,
    )
    result.checks = {
        "lock held, then released": held and free_after < 30,
        "one refresh": f["refresh_successes"] == 1 == refreshed and f["invalid_grant"] == 0,
        "active": conn.status == "active",
    }
    result.measured = (
        f"row lock held at the kill: {held}; free {f['lock_free_seconds_after_kill']} s after "
        f"it; {f['refresh_successes']} successful refresh at Zywave ({refreshed} recorded), "
        f"{f['invalid_grant']} invalid_grant; connection {conn.status}"
    )
    return result


def after_a_lost_refresh(stack: Stack, lost: Any) -> dict[str, int]:
    """Every chance to loop after a refresh whose answer never arrived: the refresh retried on
    a worker, then a sync, the upkeep task and another refresh. Returns the token endpoint's
    counters since the last reset, and clears the faults."""
    from integrations.tasks import keep_tokens_alive, refresh_connection

    m = models()
    refresh_connection.delay(lost.pk)
    wait_until(
        "the retried refresh",
        lambda: m.Connection.objects.get(pk=lost.pk).status != "active"
        or m.Connection.objects.filter(
            pk=lost.pk, access_token_expires_at__gt=datetime.now(UTC)
        ).exists(),
        timeout=30,
    )
    sent = [
        *queue_syncs([lost.pk], keep_results=True),
        ask(keep_tokens_alive),
        ask(refresh_connection, lost.pk),
    ]
    finished(sent, timeout=30)
    wait_idle([lost.pk], timeout=30)
    counters = clear_faults(stack)["token"]
    lost.refresh_from_db()
    return dict(counters)


def drill_lost_answer(stack: Stack, scale: Scale, i: int) -> Result:
    """A refresh whose answer is lost on the way back, by a proxy that resets the portal's
    connection after Zywave answered (and so rotated the refresh token)."""
    from django.conf import settings

    from integrations.tokens import RefreshFailed, refresh

    result = Result(
        "Lost refresh response through a proxy",
        "a reverse proxy between the portal and /connect/token forwards one refresh, reads "
        "Zywave's answer (the refresh token rotated) and resets the portal's connection "
        "instead of passing it on; then a retry on a worker, a sync, the upkeep task and "
        "another refresh",
        "no loop, the consumed token presented at most once more, the connection classified "
        "as needing re-authorization",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    upstream = urlsplit(stack.zywave.url)
    proxy = CuttingProxy((upstream.hostname or "127.0.0.1", upstream.port or 80), cuts=1)
    lost = conn_of(i)
    expire_tokens([lost.pk])
    lost.refresh_from_db()
    direct = settings.ZYWAVE_AUTH_URL
    settings.ZYWAVE_AUTH_URL = proxy.url  # this process only: its refresh goes through it
    began = time.monotonic()
    try:
        refresh(lost)
        outcome = "refreshed"
    except RefreshFailed as exc:
        outcome = f"RefreshFailed ({exc})"
    finally:
        settings.ZYWAVE_AUTH_URL = direct
        proxy.close()
    call = time.monotonic() - began
    lost.refresh_from_db()
    status_after_loss = lost.status
    counters = after_a_lost_refresh(stack, lost)
    f = result.figures
    f.update(
        answers_cut=len(proxy.cut_statuses),
        zywave_answered=proxy.cut_statuses,
        call_seconds=round(call, 2),
        outcome=outcome,
        status_after_the_loss=status_after_loss,
        rotated_at_zywave_unseen=counters.get("refresh_token:success", 0),
        consumed_token_presented_again=counters.get("refresh_token:invalid_grant", 0),
        token_requests_total=sum(counters.values()),
        connection_status=lost.status,
    )
    result.checks = {
        "the answer was lost after the rotation": proxy.cut_statuses == [200]
        and f["rotated_at_zywave_unseen"] == 1
        and outcome.startswith("RefreshFailed"),
        "a lost answer is not yet a lost grant": status_after_loss == "active",
        "no loop, classified": f["consumed_token_presented_again"] == 1
        and f["token_requests_total"] == 2
        and lost.status == "reauth_required",
    }
    result.measured = (
        f"Zywave answered {proxy.cut_statuses} and rotated; the portal saw a reset after "
        f"{call:.2f} s ({outcome.split(' (')[0]}) and kept the connection {status_after_loss}; "
        f"the consumed token was presented {f['consumed_token_presented_again']} more time, "
        f"{f['token_requests_total']} token requests in all (then a sync, the upkeep task and "
        f"a refresh: no further use); connection {lost.status}"
    )
    return result


def ended_as(log: RequestLog, path: str) -> list[Any]:
    """How each request to `path` ended: the requests exception's name, or the status."""
    return [row.get("error") or row["status"] for row in log.rows if row["path"] == path]


def read_timed_out_once(ends: list[Any]) -> bool:
    """The last request ended in the read timeout and no other did (a timeout is not retried;
    a keep-alive connection found closed may be, before it)."""
    return ends[-1:] == ["ReadTimeout"] and ends.count("ReadTimeout") == 1


def drill_hang(stack: Stack, scale: Scale, indexes: list[int], lost_one: int) -> Result:
    """The API and the token endpoint hang past the read timeout."""
    from integrations.tokens import RefreshFailed, client_for, refresh

    m = models()
    read_timeout = float(stack.env["ZYWAVE_READ_TIMEOUT"])
    hang_ms = int((read_timeout + 4) * 1000)
    result = Result(
        "API and token endpoint hanging",
        f"the accounts API and /connect/token answer only after {hang_ms / 1000:.0f} s (read "
        f"timeout {read_timeout:.0f} s): one call timed here, then {len(indexes)} syncs on the "
        "workers; a refresh whose answer comes after the timeout (Zywave rotated the token, "
        "the portal never saw it)",
        "every call ends at its timeout, no worker stuck, no task lost; the lost refresh: "
        "no loop, the consumed token presented at most once more, re-authorization flagged",
    )
    wait_idle(None, timeout=60)
    stack.zywave.reset()
    ids = conn_ids(indexes)
    # One call here, timed.
    stack.zywave.add_fault(r"^/accounts/v2\.0/account$", count=1, delay_ms=hang_ms)
    conn = conn_of(indexes[0])
    client = client_for(conn)
    call_start = time.monotonic()
    outcome = "answered"
    with RequestLog().recording() as sent_here:
        try:
            next(iter(client.pages("/accounts/v2.0/account")))
        except Exception as exc:  # noqa: BLE001
            outcome = type(exc).__name__
    api_call = time.monotonic() - call_start
    # Which timeout fired, as requests raised it under the client's ZywaveTimeout.
    api_errors = ended_as(sent_here, "/accounts/v2.0/account")
    # Syncs on the workers, each meeting one hang.
    stack.zywave.add_fault(
        r"^/accounts/v2\.0/account$", count=len(ids), delay_ms=hang_ms, method="GET"
    )
    started = datetime.now(UTC)
    queue_syncs(ids, full=True)
    sync_time = wait_idle(ids, timeout=120)
    succeeded = m.SyncRun.objects.filter(
        connection_id__in=ids, state="succeeded", finished_at__gte=started
    ).count()
    heartbeat = stack.wait_workers(timeout=30)
    # The token endpoint: a refresh that times out here while Zywave rotates the token.
    lost = conn_of(lost_one)
    stack.zywave.add_fault(TOKEN_PATH, count=1, delay_ms=hang_ms, method="POST")
    expire_tokens([lost.pk])
    lost.refresh_from_db()
    answered_before = sum(stack.zywave.counters()["token"].values())
    token_started = datetime.now(UTC)
    token_start = time.monotonic()
    token_outcome = "refreshed"
    with RequestLog().recording() as sent_here:
        try:
            refresh(lost)
        except RefreshFailed as exc:
            token_outcome = f"RefreshFailed ({exc})"
    token_call = time.monotonic() - token_start
    token_errors = ended_as(sent_here, "/connect/token")
    # What the refresh recorded: a transient failure, the timeout named (integrations/tokens.py).
    timeout_recorded = m.ConnectionEvent.objects.filter(
        connection_id=lost.pk,
        kind="refresh_failed",
        at__gte=token_started,
        detail__reason__endswith="(timeout)",
    ).exists()
    # Zywave finishes the held request meanwhile (and rotates the token): the sandbox counts a
    # token request once it has answered it.
    wait_until(
        "Zywave to answer the held refresh (to nobody)",
        lambda: sum(stack.zywave.counters()["token"].values()) > answered_before,
        timeout=hang_ms / 1000 + 30,
    )
    middle = stack.zywave.counters()["token"]
    counters = after_a_lost_refresh(stack, lost)
    f = result.figures
    f.update(
        api_call_seconds=round(api_call, 2),
        api_call_outcome=outcome,
        worker_syncs=len(ids),
        worker_syncs_succeeded=succeeded,
        worker_syncs_seconds=round(sync_time, 1),
        heartbeat_after_seconds=round(heartbeat, 2),
        token_call_seconds=round(token_call, 2),
        token_call_outcome=token_outcome,
        api_call_request_errors=api_errors,
        token_call_request_errors=token_errors,
        token_timeout_recorded=timeout_recorded,
        rotated_at_zywave_unseen=middle.get("refresh_token:success", 0),
        consumed_token_presented_again=counters.get("refresh_token:invalid_grant", 0),
        token_requests_total=sum(counters.values()),
        lost_connection_status=lost.status,
    )
    # The mechanism says the call ended at its timeout: requests' ReadTimeout, once (a timeout
    # is not retried), named by the portal's own error. The clock only checks that it waited
    # at least the timeout, and, as a coarse guard a loaded CI machine cannot trip, that it
    # did not hang far beyond it.
    ceiling = read_timeout * 3 + 10
    result.checks = {
        "API call ends at its timeout": outcome == "ZywaveTimeout"
        and read_timed_out_once(api_errors)
        and read_timeout - 0.5 <= api_call <= ceiling,
        "token call ends at its timeout": token_outcome.startswith("RefreshFailed")
        and read_timed_out_once(token_errors)
        and timeout_recorded
        and read_timeout - 0.5 <= token_call <= ceiling,
        "no task lost": succeeded == len(ids),
        "no worker stuck": heartbeat < 10,
        "lost refresh classified, no loop": lost.status == "reauth_required"
        and f["consumed_token_presented_again"] == 1,
    }
    result.measured = (
        f"API call ended after {api_call:.2f} s ({outcome}); token call after "
        f"{token_call:.2f} s ({token_outcome.split(' (')[0]}); {succeeded}/{len(ids)} syncs on "
        f"the workers succeeded in {sync_time:.1f} s; workers answered a heartbeat in "
        f"{heartbeat:.2f} s; lost refresh: Zywave rotated ({f['rotated_at_zywave_unseen']}), "
        f"the consumed token was presented {f['consumed_token_presented_again']} more time "
        f"(then a sync, the upkeep task and a refresh task: no further use), connection "
        f"{lost.status}"
    )
    return result
