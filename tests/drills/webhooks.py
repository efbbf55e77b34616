"""Drills that break outbound webhooks: a receiver answering 503 for minutes, a worker killed
inside an attempt with Redis restarted behind it, a receiver that never answers.

The three share one setup (`drill_webhooks`): a Redis of our own (so that the second drill can
restart it), two Celery workers on it with the drills' webhook settings (`WEBHOOK_SETTINGS`:
a compressed retry schedule, 2-second attempts, private addresses allowed), receivers on
127.0.0.1 in this process (`Receiver`, which checks every signature with svix), and beat's
`reconcile_webhooks` called from a thread of this process every WEBHOOKS_RECONCILE_SECONDS
(`Reconciler`: beat itself would also queue the scheduled syncs of every drill user).

Events come from real changes where the drill can make them: in the outage drill, accounts
changed in the sandbox and incremental syncs on the workers (`accounts.changed` from the page's
transaction, `sync.succeeded` from the run's end); in the two others `webhooks.emit` in a
transaction of this process, against the same database, so that the drill decides when each
event exists.

Figures come from the receivers (what arrived, with which webhook-id, what was answered) and
the portal's tables (events, deliveries, attempts); a subscription's sequence numbers are
checked to be 1..N without a gap, and every duplicate to carry the webhook-id of the first copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.drills.helpers import (
    Result,
    Scale,
    conn_of,
    models,
    percentile,
    queue_syncs,
    wait_idle,
)
from tests.drills.infrastructure import connect_missing, use_broker
from tests.drills.stack import DrillError, Group, Stack, redis_server, stop_process, wait_until
from tests.sandboxserver import free_port

# The drills' webhook settings (workers and this process). A day of retries compressed to four
# minutes, so that the 2-minute outage ends inside it; attempts of 2 s, so that the lease is
# 22 s (WEBHOOKS_TIMEOUT_SECONDS + 20 s); the reconciler every 5 s; receivers on 127.0.0.1.
WEBHOOK_SETTINGS = {
    "WEBHOOKS_RETRY_SCHEDULE": "1,2,4,8,15,30,60,120",
    "WEBHOOKS_TIMEOUT_SECONDS": "2",
    "WEBHOOKS_RECONCILE_SECONDS": "5",
    "WEBHOOKS_ALLOW_PRIVATE": "true",
}
EVENTS = ["accounts.changed", "sync.failed", "sync.succeeded"]


@dataclass(frozen=True)
class Sizes:
    outage_seconds: float  # the receiver answers 503 this long
    sync_every: float  # a sandbox change and a sync this often meanwhile
    kill_batch: int  # events emitted before the kill, while the worker is dead, while Redis is
    hang_seconds: float  # the receiver never answers this long
    hang_every: float  # an event for both subscriptions this often meanwhile


SIZES = {
    "full": Sizes(outage_seconds=120, sync_every=5, kill_batch=10, hang_seconds=60, hang_every=0.5),
    "short": Sizes(outage_seconds=10, sync_every=2, kill_batch=3, hang_seconds=8, hang_every=0.5),
}


# --- Receivers ------------------------------------------------------------------------------------


@dataclass
class Hit:
    endpoint: str
    webhook_id: str
    sequence: int | None
    type: str
    received: float  # time.time() when the body was read
    peer_port: int
    verified: bool
    answered: int | None = None  # the status sent, None when nothing was (held, hung)


@dataclass
class Endpoint:
    """How one endpoint behaves: `ok` (200), `503`, `hold` (the next request is held unanswered
    until `release` is set; the endpoint answers 200 after it), `hang` (every request held
    unanswered until `release`, which only `Receiver.stop` sets: the client's timeout ends it)."""

    secret: str
    mode: str = "ok"
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    held_peer: int = 0


class Receiver:
    """Webhook endpoints at http://127.0.0.1:port/<name>, one per subscription."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                receiver.handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{name}"

    def add(self, name: str, secret: str, mode: str = "ok") -> Endpoint:
        self.endpoints[name] = Endpoint(secret=secret, mode=mode)
        return self.endpoints[name]

    def set_mode(self, name: str, mode: str) -> None:
        """What the next requests get; a request held already stays unanswered (until
        `release` is set, or the receiver stops)."""
        self.endpoints[name].mode = mode

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        from svix.webhooks import Webhook

        name = request.path.strip("/")
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in request.headers.items()}
        endpoint = self.endpoints.get(name)
        verified = False
        if endpoint is not None:
            try:
                Webhook(endpoint.secret).verify(body, headers)
                verified = True
            except Exception:  # noqa: BLE001 (a bad signature is a figure)
                verified = False
        try:
            payload = json.loads(body)
            sequence, kind = payload["data"].get("sequence"), str(payload.get("type"))
        except (ValueError, KeyError, AttributeError):
            sequence, kind = None, ""
        hit = Hit(
            endpoint=name,
            webhook_id=headers.get("webhook-id", ""),
            sequence=sequence,
            type=kind,
            received=time.time(),
            peer_port=int(request.client_address[1]),
            verified=verified,
        )
        with self.lock:
            self.hits.append(hit)
        mode = endpoint.mode if endpoint is not None else "404"
        if endpoint is not None and mode in ("hold", "hang"):
            if mode == "hold":
                endpoint.mode = "ok"  # the next request is answered
            endpoint.held_peer = hit.peer_port
            endpoint.held.set()
            endpoint.release.wait(timeout=300)
            request.close_connection = True
            return  # no answer at all: the client's timeout, or its death, ends it
        status = {"ok": 200, "503": 503}.get(mode, 404)
        try:
            request.send_response(status)
            request.send_header("Content-Length", "2")
            request.end_headers()
            request.wfile.write(b"ok")
            request.wfile.flush()
            hit.answered = status
        except OSError:
            pass

    def of(self, name: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.endpoint == name]

    def stop(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.release.set()
        self.server.shutdown()
        self.server.server_close()


# --- Beat's reconciler, from a thread of this process ---------------------------------------------


class Reconciler:
    """`reconcile_webhooks` every `every` seconds, as beat runs it; each call recorded with the
    subscriptions it found stranded (`webhooks.stranded()` just before) or the error it met."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.calls: list[dict[str, Any]] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        from django.db import connection

        from integrations import webhooks as core
        from integrations.tasks import reconcile_webhooks

        try:
            while not self.stop_event.wait(self.every):
                call: dict[str, Any] = {"at": time.time()}
                try:
                    call["stranded"] = core.stranded()
                    call["result"] = reconcile_webhooks()
                except Exception as exc:  # noqa: BLE001 (Redis down: a figure, not a crash)
                    call["error"] = type(exc).__name__
                self.calls.append(call)
        finally:
            connection.close()

    def requeued(self, subscription_id: int) -> list[float]:
        """When a call found the subscription stranded and sent its task."""
        return [
            c["at"]
            for c in self.calls
            if subscription_id in c.get("stranded", []) and "result" in c
        ]

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


# --- What the drills share ------------------------------------------------------------------------


def subscribe(receiver: Receiver, owner: Any, name: str, mode: str = "ok") -> Any:
    from integrations import webhooks as core

    subscription, secret = core.subscribe(owner, receiver.url(name), EVENTS)
    receiver.add(name, secret, mode)
    return subscription


def emit(conn: Any, k: int) -> tuple[str | None, str]:
    """One `accounts.changed` event in a transaction of this process, as a sync page writes it.
    Returns its id (None if it was not written) and the error the commit raised, if any."""
    from django.db import transaction

    from integrations import webhooks as core

    written: list[str] = []
    error = ""
    try:
        with transaction.atomic():
            event = core.emit(
                conn.user_id,
                "accounts.changed",
                {
                    "resource": "accounts",
                    "changes": [{"id": f"DRILL{k:05d}", "kind": "updated"}],
                    "updated_since": None,
                },
                connection_id=conn.pk,
            )
            if event is not None:
                written.append(event.id)
    except Exception as exc:  # noqa: BLE001 (what the emitter would see: a figure)
        error = f"{type(exc).__name__}: {exc}"[:200]
    return (written[0] if written else None), error


def deliveries(subscription: Any) -> Any:
    return models().WebhookDelivery.objects.filter(subscription_id=subscription.pk)


def all_delivered(subscription: Any) -> bool:
    return not deliveries(subscription).exclude(state="delivered").exists()


def wait_delivered(subscriptions: list[Any], timeout: float) -> float:
    return wait_until(
        "every delivery delivered",
        lambda: all(all_delivered(s) for s in subscriptions),
        timeout=timeout,
        interval=0.2,
    )


def completeness(receiver: Receiver, name: str, subscription: Any) -> dict[str, Any]:
    """What one subscription's receiver got against what the portal recorded: events lost,
    gaps in the sequence, duplicates and whether each kept its webhook-id, signatures."""
    rows = list(deliveries(subscription).values_list("sequence", "event_id", "state"))
    ids = {sequence: event_id for sequence, event_id, _ in rows}
    sequences = sorted(ids)
    expected = list(range(1, len(rows) + 1))
    hits = receiver.of(name)
    taken: dict[int, int] = {}
    ids_seen: dict[int, set[str]] = {}
    for hit in hits:
        if hit.sequence is None:
            continue
        ids_seen.setdefault(hit.sequence, set()).add(hit.webhook_id)
        if hit.answered == 200:
            taken[hit.sequence] = taken.get(hit.sequence, 0) + 1
    # A sequence number sent more than once: retried after a failed attempt, or sent again
    # after an attempt nobody saw end (the receiver may have acted on the first copy).
    copies = {s: sum(1 for h in hits if h.sequence == s) for s in ids_seen}
    return {
        "events": len(rows),
        "sequence_complete": sequences == expected,
        "delivered_in_db": sum(1 for _, _, state in rows if state == "delivered"),
        "taken_by_receiver": len(set(taken) & set(expected)),
        "lost": len(set(expected) - set(taken)),
        "received_twice_or_more": sorted(s for s, n in copies.items() if n > 1),
        "taken_twice_or_more": sorted(s for s, n in taken.items() if n > 1),
        "duplicates_with_another_id": sorted(
            s for s, seen in ids_seen.items() if seen != {ids.get(s)}
        ),
        "requests": len(hits),
        "signatures_bad": sum(1 for h in hits if not h.verified),
    }


def attempts_of(subscription: Any) -> list[tuple[float, int, int | None, str]]:
    """Every logged attempt: (time, duration ms, status, error), oldest first."""
    return [
        (at.timestamp(), duration, status, error)
        for at, duration, status, error in models()
        .WebhookAttempt.objects.filter(delivery__subscription_id=subscription.pk)
        .order_by("at")
        .values_list("at", "duration_ms", "status", "error")
    ]


def socket_owner(stack: Stack, peer_port: int, server_port: int) -> Group | None:
    """The worker whose process holds the TCP connection from 127.0.0.1:peer_port to the
    receiver (/proc/net/tcp gives the socket's inode, /proc/<pid>/fd who holds it)."""
    from tests.drills.stack import children

    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, remote = parts[1], parts[2]
        if int(local.split(":")[1], 16) == peer_port and int(remote.split(":")[1], 16) == (
            server_port
        ):
            inode = parts[9]
            break
    if not inode:
        return None
    wanted = f"socket:[{inode}]"
    for worker in stack.workers:
        for pid in [worker.popen.pid, *children(worker.popen.pid)]:
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd) == wanted:
                            return worker
    return None


@contextlib.contextmanager
def webhook_settings_here() -> Iterator[None]:
    """This process subscribes and emits with the workers' webhook settings."""
    from django.conf import settings

    values = {
        "WEBHOOKS_RETRY_SCHEDULE": [
            float(x) for x in WEBHOOK_SETTINGS["WEBHOOKS_RETRY_SCHEDULE"].split(",")
        ],
        "WEBHOOKS_TIMEOUT_SECONDS": int(WEBHOOK_SETTINGS["WEBHOOKS_TIMEOUT_SECONDS"]),
        "WEBHOOKS_RECONCILE_SECONDS": int(WEBHOOK_SETTINGS["WEBHOOKS_RECONCILE_SECONDS"]),
        "WEBHOOKS_ALLOW_PRIVATE": True,
    }
    saved = {key: getattr(settings, key) for key in values}
    for key, value in values.items():
        setattr(settings, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(settings, key, value)


@dataclass
class Setup:
    stack: Stack
    scale: Scale
    sizes: Sizes
    env: dict[str, str]
    redis_port: int
    redis: Any
    receiver: Receiver
    reconciler: Reconciler
    owner: Any
    conn: Any


def guarded(name: str, drill: Any, setup: Setup) -> Result:
    """One drill's row, or a row saying how the drill itself failed (the others still run)."""
    from integrations import webhooks as core

    began = time.monotonic()
    try:
        result: Result = drill(setup)
        result.figures["drill_seconds"] = round(time.monotonic() - began, 1)
        return result
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        failed = Result(name, "", "", error=f"{type(exc).__name__}: {exc}"[:500])
        failed.measured = f"the drill itself failed: {failed.error}"
        return failed
    finally:
        # Its subscriptions go (audited, as an owner's delete): the next drill's events are
        # for its own subscriptions only.
        for subscription in models().WebhookSubscription.objects.filter(owner=setup.owner):
            core.delete(subscription, None)


def drill_webhooks(stack: Stack, scale: Scale, index: int) -> tuple[Result, ...]:
    """The three webhook drills on workers of their own (webhook settings, a Redis of ours)."""
    sizes = SIZES[scale.name]
    connect_missing(stack, [index])
    wait_idle(None, timeout=300)  # e.g. the first syncs of a connect burst just before
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    own = redis_server(port, stack.tmp / "redis-webhooks")
    env = {**stack.env, "REDIS_URL": url, **WEBHOOK_SETTINGS}
    receiver = Receiver()
    setup: Setup | None = None
    results: list[Result] = []
    with webhook_settings_here():
        try:
            stack.swap_workers(env)
            use_broker(url)
            stack.wait_workers(timeout=90)
            conn = conn_of(index)
            reconciler = Reconciler(float(WEBHOOK_SETTINGS["WEBHOOKS_RECONCILE_SECONDS"]))
            setup = Setup(
                stack, scale, sizes, env, port, own, receiver, reconciler, conn.user, conn
            )
            results.append(guarded("Webhook receiver 503s", drill_receiver_outage, setup))
            results.append(
                guarded("Webhook worker SIGKILL and Redis restart", drill_kill_and_redis, setup)
            )
            results.append(guarded("Webhook receiver hanging", drill_receiver_hang, setup))
        finally:
            if setup is not None:
                setup.reconciler.stop()
                own = setup.redis  # the drill restarted it
            receiver.stop()
            stop_process(own)
            use_broker(stack.redis_url)
            stack.restore_workers()
    stack.wait_workers(timeout=60)
    return tuple(results)


# --- 1. The receiver answers 503 for minutes ------------------------------------------------------


def drill_receiver_outage(setup: Setup) -> Result:
    m = models()
    sizes, receiver, conn = setup.sizes, setup.receiver, setup.conn
    schedule = WEBHOOK_SETTINGS["WEBHOOKS_RETRY_SCHEDULE"]
    result = Result(
        "Webhook receiver 503s",
        f"the receiver answers 503 for {sizes.outage_seconds:.0f} s, then 200; meanwhile 3 "
        f"accounts change in the sandbox and an incremental sync runs on the workers every "
        f"{sizes.sync_every:.0f} s (accounts.changed from each page, sync.succeeded from each "
        f"run); retry schedule {schedule} s",
        "events lost 0, every event delivered, the sequence complete (1..N, no gaps; "
        "duplicates only with the same webhook-id), the subscription still active; while down "
        "about one request per retry step, not one per event",
    )
    subscription = subscribe(receiver, setup.owner, "outage", mode="503")
    ids = [conn.pk]
    profile = conn.chosen_profile.zywave_id
    started = time.time()
    syncs = 0
    while time.time() - started < sizes.outage_seconds:
        setup.stack.zywave.control(
            "POST", "accounts/change", profile_id=profile, count=3, field="name"
        )
        queue_syncs(ids)
        syncs += 1
        time.sleep(max(0.0, started + syncs * sizes.sync_every - time.time()))
        if time.time() - started >= sizes.outage_seconds:
            break
    # The last sync's events may be written after the window: wait for them, still down.
    wait_idle(ids, timeout=120)
    receiver.set_mode("outage", "ok")
    back = time.time()
    ceiling = sum(float(x) for x in schedule.split(",")) * 1.2 + 60
    wait_delivered([subscription], timeout=ceiling)
    done = time.time()
    figures = completeness(receiver, "outage", subscription)
    subscription.refresh_from_db()
    hits = receiver.of("outage")
    refused = [h for h in hits if h.answered == 503]
    attempts = attempts_of(subscription)
    last_delivered = max(
        d.timestamp()
        for d in m.WebhookDelivery.objects.filter(subscription=subscription).values_list(
            "delivered_at", flat=True
        )
    )
    by_type: dict[str, int] = {}
    for kind in m.WebhookEvent.objects.filter(deliveries__subscription=subscription).values_list(
        "type", flat=True
    ):
        by_type[kind] = by_type.get(kind, 0) + 1
    # A dead endpoint gets its first request, then one per step of the schedule that fits in
    # the time it was down (jitter and the reconciler only make the steps later, never sooner).
    down_for = back - refused[0].received if refused else 0.0
    waits = [float(x) for x in schedule.split(",")]
    steps = 1 + sum(1 for k in range(1, len(waits) + 1) if sum(waits[:k]) <= down_for)
    f = result.figures
    f.update(
        figures,
        syncs=syncs,
        events_by_type=by_type,
        requests_while_down=len(refused),
        down_seconds=round(down_for, 1),
        requests_allowed_by_the_schedule=steps,
        first_503_to_last_503_seconds=round(refused[-1].received - refused[0].received, 1)
        if refused
        else None,
        max_attempts=max(
            m.WebhookDelivery.objects.filter(subscription=subscription).values_list(
                "attempts", flat=True
            )
        ),
        attempts_logged=len(attempts),
        recovered_after_seconds=round(last_delivered - back, 1),
        drain_seconds=round(done - back, 1),
        state_after=subscription.state,
        reconciler_requeues=len(setup.reconciler.requeued(subscription.pk)),
    )
    result.checks = {
        "the outage was real": len(refused) >= 2 and figures["events"] >= syncs,
        "events lost 0": figures["lost"] == 0 and figures["delivered_in_db"] == figures["events"],
        "sequence complete": figures["sequence_complete"],
        "duplicates keep their webhook-id": not figures["duplicates_with_another_id"],
        "signatures valid": figures["signatures_bad"] == 0,
        "still active": subscription.state == "active",
        "one request per retry step while down": len(refused) <= steps,
    }
    result.measured = (
        f"{figures['events']} events from {syncs} syncs ({by_type}); while down "
        f"{len(refused)} requests in {down_for:.0f} s, all answered 503 (the schedule allows "
        f"{steps}); after: every event "
        f"delivered {f['recovered_after_seconds']} s after the receiver was back, lost "
        f"{figures['lost']}, sequence 1..{figures['events']} complete: "
        f"{figures['sequence_complete']}, answered 200 twice "
        f"{len(figures['taken_twice_or_more'])}, a copy with another webhook-id "
        f"{len(figures['duplicates_with_another_id'])}, bad signatures "
        f"{figures['signatures_bad']}; subscription {subscription.state}"
    )
    return result


# --- 2. A worker killed inside an attempt, Redis restarted ----------------------------------------


def drill_kill_and_redis(setup: Setup) -> Result:
    from integrations import webhooks as core

    m = models()
    stack, sizes, receiver, conn = setup.stack, setup.sizes, setup.receiver, setup.conn
    lease = float(WEBHOOK_SETTINGS["WEBHOOKS_TIMEOUT_SECONDS"]) + core.LEASE_MARGIN.seconds
    n = sizes.kill_batch
    result = Result(
        "Webhook worker SIGKILL and Redis restart",
        f"{n} events; the receiver holds the first request unanswered and the worker inside "
        f"that attempt (found by its socket) is SIGKILLed, parent and pool; {n} more events; "
        f"Redis (our own, no persistence) stopped, {n} events emitted while it is down, "
        f"started again, a new worker started; lease {lease:.0f} s "
        f"(WEBHOOKS_TIMEOUT_SECONDS + 20 s); reconcile_webhooks every "
        f"{WEBHOOK_SETTINGS['WEBHOOKS_RECONCILE_SECONDS']} s as beat",
        "events lost 0, sequence complete, every duplicate with the same webhook-id; nothing "
        "sent before the lease expired, recovery through the reconciler",
    )
    subscription = subscribe(receiver, setup.owner, "kill", mode="hold")
    endpoint = receiver.endpoints["kill"]
    emitted: list[str | None] = []
    errors: list[str] = []
    k = 0
    for _ in range(n):
        k += 1
        event_id, error = emit(conn, k)
        emitted.append(event_id)
        errors += [error] if error else []
    if not endpoint.held.wait(timeout=60):
        raise DrillError("no delivery reached the receiver")
    victim = socket_owner(stack, endpoint.held_peer, receiver.server.server_port)
    if victim is None:
        raise DrillError("no worker holds the held request's socket")
    subscription.refresh_from_db()
    lease_until = subscription.lease_until.timestamp() if subscription.lease_until else None
    victim.kill()
    killed = time.time()
    stack.workers.remove(victim)
    endpoint.release.set()
    for _ in range(n):
        k += 1
        event_id, error = emit(conn, k)
        emitted.append(event_id)
        errors += [error] if error else []
    # Redis goes away with whatever it held (the killed worker's unacknowledged message, the
    # tasks of the events above, turned away as "busy" while the dead worker's lease holds).
    stop_process(setup.redis)
    down_errors: list[str] = []
    try:
        for _ in range(n):
            k += 1
            event_id, error = emit(conn, k)
            emitted.append(event_id)
            down_errors += [error] if error else []
    finally:
        setup.redis = redis_server(setup.redis_port, stack.tmp / "redis-webhooks")
    redis_back = time.time()
    stack.workers.append(stack.start_worker(setup.env))
    first_task = stack.wait_workers(timeout=90)
    wait_delivered([subscription], timeout=lease + 90)
    figures = completeness(receiver, "kill", subscription)
    hits = receiver.of("kill")
    after_kill = [h for h in hits if h.received > killed]
    first_after = min((h.received for h in after_kill), default=None)
    requeued = [t for t in setup.reconciler.requeued(subscription.pk) if t > killed]
    last_delivered = max(
        d.timestamp()
        for d in m.WebhookDelivery.objects.filter(subscription=subscription).values_list(
            "delivered_at", flat=True
        )
    )
    held_sequence = next((h.sequence for h in hits if h.answered is None), None)
    f = result.figures
    f.update(
        figures,
        events_emitted=len([e for e in emitted if e]),
        victim=victim.name,
        held_sequence=held_sequence,
        emit_errors_redis_up=errors,
        emit_errors_redis_down=down_errors,
        events_written_while_redis_down=m.WebhookEvent.objects.filter(
            id__in=[e for e in emitted[2 * n :] if e]
        ).count(),
        lease_seconds=lease,
        lease_left_at_kill=round(lease_until - killed, 1) if lease_until else None,
        first_request_after_kill_seconds=round(first_after - killed, 1) if first_after else None,
        first_request_after_lease_expiry_seconds=round(first_after - lease_until, 1)
        if first_after and lease_until
        else None,
        reconciler_requeued_after_kill_seconds=[round(t - killed, 1) for t in requeued[:3]],
        first_task_after_redis_back_seconds=round(first_task, 2),
        redis_back_after_kill_seconds=round(redis_back - killed, 1),
        recovered_after_kill_seconds=round(last_delivered - killed, 1),
    )
    result.checks = {
        "the kill was inside an attempt": held_sequence == 1
        and not m.WebhookAttempt.objects.filter(
            delivery__subscription=subscription, at__lt=datetime.fromtimestamp(killed, UTC)
        ).exists(),
        "events lost 0": figures["lost"] == 0
        and figures["events"] == 3 * n
        and figures["delivered_in_db"] == 3 * n,
        "sequence complete": figures["sequence_complete"],
        "duplicates keep their webhook-id": not figures["duplicates_with_another_id"]
        and held_sequence in figures["received_twice_or_more"],
        "nothing sent before the lease expired": first_after is not None
        and lease_until is not None
        and first_after >= lease_until,
        "an emit while Redis is down fails nobody": not down_errors
        and f["events_written_while_redis_down"] == n,
        "recovered by the reconciler": bool(requeued)
        and first_after is not None
        and requeued[0] <= first_after,
        "signatures valid": figures["signatures_bad"] == 0,
    }
    result.measured = (
        f"{f['events_emitted']} events; {victim.name} SIGKILLed inside the attempt of #"
        f"{held_sequence} ({f['lease_left_at_kill']} s of lease left); Redis restarted "
        f"(emits while down: {len(down_errors)} raised after their commit, "
        f"{f['events_written_while_redis_down']}/{n} written); nothing sent until the lease "
        f"expired, the reconciler requeued it {f['reconciler_requeued_after_kill_seconds'][:1]} "
        f"s after the kill, first request {f['first_request_after_kill_seconds']} s after; "
        f"every event delivered {f['recovered_after_kill_seconds']} s after the kill: lost "
        f"{figures['lost']}, sequence 1..{figures['events']} complete: "
        f"{figures['sequence_complete']}; received twice: #"
        f"{', #'.join(map(str, figures['received_twice_or_more'])) or 'none'} (the held "
        f"request, then its resend), a copy with another webhook-id "
        f"{len(figures['duplicates_with_another_id'])}"
    )
    return result


# --- 3. A receiver that never answers -------------------------------------------------------------


def drill_receiver_hang(setup: Setup) -> Result:
    m = models()
    stack, sizes, receiver, conn = setup.stack, setup.sizes, setup.receiver, setup.conn
    timeout = float(WEBHOOK_SETTINGS["WEBHOOKS_TIMEOUT_SECONDS"])
    result = Result(
        "Webhook receiver hanging",
        f"one subscription's receiver takes each request and never answers, for "
        f"{sizes.hang_seconds:.0f} s; the same owner's second subscription answers at once; an "
        f"event for both every {sizes.hang_every} s meanwhile; WEBHOOKS_TIMEOUT_SECONDS "
        f"{timeout:.0f}, {len(stack.workers)} worker processes of 2 pool processes",
        "every attempt to the hanging one ends at the timeout, no worker stuck; the other "
        "subscription's deliveries arrive meanwhile, each within one attempt's time",
    )
    hanging = subscribe(receiver, setup.owner, "hang", mode="hang")
    healthy = subscribe(receiver, setup.owner, "healthy")
    started = time.time()
    k = 0
    while time.time() - started < sizes.hang_seconds:
        k += 1
        emit(conn, 1000 + k)
        time.sleep(max(0.0, started + k * sizes.hang_every - time.time()))
    wait_delivered([healthy], timeout=60)
    hang_ended = time.time()
    receiver.set_mode("hang", "ok")
    ceiling = sum(float(x) for x in WEBHOOK_SETTINGS["WEBHOOKS_RETRY_SCHEDULE"].split(","))
    wait_delivered([hanging], timeout=ceiling * 1.2 + 60)
    ping = stack.wait_workers(timeout=30)
    created = dict(
        m.WebhookDelivery.objects.filter(subscription=healthy).values_list(
            "sequence", "event__created_at"
        )
    )
    delays = [
        h.received - created[h.sequence].timestamp()
        for h in receiver.of("healthy")
        if h.answered == 200 and h.sequence in created
    ]
    hung = [a for a in attempts_of(hanging) if a[0] < hang_ended]
    hung_durations = [a[1] / 1000 for a in hung]
    healthy_figures = completeness(receiver, "healthy", healthy)
    hanging_figures = completeness(receiver, "hang", hanging)
    f = result.figures
    f.update(
        events=k,
        attempts_while_hanging=len(hung),
        attempt_errors={e: sum(1 for a in hung if a[3] == e) for e in {a[3] for a in hung}},
        attempt_seconds_min=round(min(hung_durations), 2) if hung_durations else None,
        attempt_seconds_max=round(max(hung_durations), 2) if hung_durations else None,
        healthy=healthy_figures,
        hanging=hanging_figures,
        healthy_delay_p50=round(percentile(delays, 0.5), 3),
        healthy_delay_p95=round(percentile(delays, 0.95), 3),
        healthy_delay_max=round(max(delays), 3) if delays else None,
        heartbeat_after_seconds=round(ping, 2),
    )
    result.checks = {
        "the hang was real": len(hung) >= 2,
        "every attempt ends at the timeout": all(
            a[3] == "timed out" and timeout - 0.1 <= a[1] / 1000 <= timeout + 1.0 for a in hung
        ),
        "no worker stuck": ping < 10 and hanging_figures["lost"] == 0,
        "other subscription unaffected": healthy_figures["lost"] == 0
        and healthy_figures["sequence_complete"]
        and len(delays) >= k
        and f["healthy_delay_p95"] <= timeout
        and (f["healthy_delay_max"] or 0) <= timeout + 1.0,
        "signatures valid": healthy_figures["signatures_bad"]
        == hanging_figures["signatures_bad"]
        == 0,
    }
    result.measured = (
        f"{k} events to both; the hanging receiver got {len(hung)} attempts, each ended at "
        f"{f['attempt_seconds_min']}-{f['attempt_seconds_max']} s ({f['attempt_errors']}), "
        f"then all {hanging_figures['events']} delivered once it answered (lost "
        f"{hanging_figures['lost']}); the other subscription's {healthy_figures['events']} "
        f"deliveries arrived meanwhile, delay p50 {f['healthy_delay_p50']} s, p95 "
        f"{f['healthy_delay_p95']} s, max {f['healthy_delay_max']} s, lost "
        f"{healthy_figures['lost']}; a heartbeat task answered {ping:.2f} s after"
    )
    return result
