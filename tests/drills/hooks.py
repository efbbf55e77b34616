"""Drills for Zywave's webhooks in (issue 19): the sandbox delivering notifications over HTTP to
a portal that re-fetches each record, while deliveries are duplicated, shuffled, delayed and
burst, while Redis and PostgreSQL restart, while the receiver URL is rotated, and about a record
the receiver's owner may not see.

The drills share one setup (`drill_hooks`): a Redis of our own (so that one drill can restart
it), a gunicorn of the portal on it (the receiver the sandbox delivers to; the stack's own web
uses the stack's Redis) and the stack's two Celery workers swapped for two on it, consuming
every queue (`refetch` included). The sandbox (the stack's) has person A's webhooks registered
for every account and contact event type, pointing at A's receiver URL, with its retry schedule
compressed (`SANDBOX_SETTINGS`). Records change through the sandbox's control API (names,
creations, archives, deletions of accounts and contacts), which queues the deliveries.

What is compared: the mirror of A against the sandbox's book, read from the sandbox's own
database (every account and contact of A's agency: id, name, archived flag), and the mirror's
rows the book no longer has must be tombstones. No sync runs for A between a drill's baseline
and its comparison (checked: no SyncRun queued for A since), so whatever the mirror shows came
through the receiver and the re-fetch. Figures also come from the sandbox's delivery log (each
delivery's attempts: when, status or error) and the portal's ZywaveNotification rows.

The receiver URL is a secret: it is never put in a figure or a message here.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from tests.drills.helpers import (
    Result,
    Scale,
    active_runs,
    conn_of,
    duplicates,
    logged_in,
    models,
    queue_syncs,
)
from tests.drills.infrastructure import connect_missing, use_broker
from tests.drills.stack import (
    BIN,
    DrillError,
    Group,
    Stack,
    redis_server,
    stop_process,
    wait_until,
)
from tests.sandboxserver import free_port
from tests.smoke.run_smoke import csrf_from

# The sandbox's webhook settings for these drills: Zywave's "growing waits" compressed into about
# 70 s, so that a few seconds of Redis or PostgreSQL down are retried within a drill.
SANDBOX_SETTINGS: dict[str, Any] = {
    "webhook_retry_schedule": "0.5,1,2,3,4,6,8,10,15,20",
    "webhook_timeout": 3,
}
FAULTS_OFF: dict[str, Any] = {
    "webhook_duplicates": False,
    "webhook_out_of_order": False,
    "webhook_delay_seconds": 0,
    "webhook_burst": 0,
    "webhook_foreign": False,
}
EVENT_TYPES = [
    f"{noun}.{action}"
    for noun in ("account", "contact")
    for action in ("created", "updated", "archived", "deleted")
]
COALESCE_SECONDS = 2  # ZYWAVE_WEBHOOK_COALESCE_SECONDS, the default (the drills leave it)
DETAIL_PATHS = ("/accounts/v2.0/account/", "/accounts/v2.0/contact/")
# The fault rounds cycle through these (every fault alone and all of them together).
FAULT_ROUNDS: list[dict[str, Any]] = [
    {"webhook_duplicates": True},
    {"webhook_out_of_order": True, "webhook_burst": 4},
    {"webhook_delay_seconds": 2, "webhook_duplicates": True},
    {
        "webhook_duplicates": True,
        "webhook_out_of_order": True,
        "webhook_delay_seconds": 1,
        "webhook_burst": 3,
    },
]


@dataclass(frozen=True)
class Sizes:
    rounds: int  # fault rounds, each a dozen changes
    down_seconds: float  # Redis, then PostgreSQL, down this long
    change_every: float  # one change this often in the streams
    rotation_seconds: float  # the stream around the rotation lasts this long
    foreign: int  # another agency's records changed (and as many hand-made deliveries)


SIZES = {
    "full": Sizes(rounds=12, down_seconds=8, change_every=0.25, rotation_seconds=18, foreign=10),
    "short": Sizes(rounds=4, down_seconds=3, change_every=0.3, rotation_seconds=6, foreign=3),
}


# --- The sandbox's book and the mirror --------------------------------------------------------


def book(stack: Stack, i: int) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Every account and contact of drill user i's agency in the sandbox's own database, read
    only: {"accounts": {id: (name, archived)}, "contacts": {id: (first, last, archived)}}."""
    path = stack.tmp / "sandbox" / "sandbox.sqlite3"
    agency = 900000 + i
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        accounts = {
            str(pk): (name, bool(archived))
            for pk, name, archived in db.execute(
                "SELECT id, name, is_archived FROM zywave_account WHERE agency_id = ?", (agency,)
            )
        }
        contacts = {
            str(pk): (first, last, bool(archived))
            for pk, first, last, archived in db.execute(
                "SELECT id, first_name, last_name, is_archived FROM zywave_contact "
                "WHERE agency_id = ?",
                (agency,),
            )
        }
    return {"accounts": accounts, "contacts": contacts}


def mirror(conn_id: int) -> dict[str, dict[str, tuple[Any, ...]]]:
    """The same of the portal's mirror, tombstones included: {id: (fields..., deleted)}."""
    m = models()
    accounts = {
        zywave_id: (name, archived, deleted is not None)
        for zywave_id, name, archived, deleted in m.Account.all_rows.filter(
            connection_id=conn_id
        ).values_list("zywave_id", "name", "is_archived", "deleted_at")
    }
    contacts = {
        zywave_id: (first, last, archived, deleted is not None)
        for zywave_id, first, last, archived, deleted in m.Contact.all_rows.filter(
            connection_id=conn_id
        ).values_list("zywave_id", "first_name", "last_name", "is_archived", "deleted_at")
    }
    return {"accounts": accounts, "contacts": contacts}


def snapshot(conn_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """Every column that matters of every mirror row of the connection, to compare before and
    after: a notification that changes nothing leaves this identical."""
    m = models()
    columns = ("zywave_id", "raw", "updated_at_zywave", "changed_at", "deleted_at")
    return {
        name: sorted(
            (z, json.dumps(raw, sort_keys=True), *rest)
            for z, raw, *rest in model.all_rows.filter(connection_id=conn_id).values_list(*columns)
        )
        for name, model in (("accounts", m.Account), ("contacts", m.Contact))
    }


def compare(stack: Stack, i: int, conn_id: int, skip: set[str] | None = None) -> dict[str, Any]:
    """The mirror against the book: ids missing, rows whose name or archived flag differ, rows
    still live that the book no longer has (should be tombstones); `skip` leaves ids out."""
    skip = skip or set()
    expected, held = book(stack, i), mirror(conn_id)
    wrong: dict[str, list[str]] = {"missing": [], "stale": [], "not_tombstoned": []}
    for kind in ("accounts", "contacts"):
        for zywave_id, fields in expected[kind].items():
            if zywave_id in skip:
                continue
            row = held[kind].get(zywave_id)
            if row is None or row[-1]:
                wrong["missing"].append(f"{kind[:-1]} {zywave_id}")
            elif row[:-1] != fields:
                wrong["stale"].append(f"{kind[:-1]} {zywave_id}")
        for zywave_id, row in held[kind].items():
            if zywave_id not in expected[kind] and zywave_id not in skip and not row[-1]:
                wrong["not_tombstoned"].append(f"{kind[:-1]} {zywave_id}")
    return {
        "exact": not any(wrong.values()),
        **{k: v[:10] for k, v in wrong.items()},
        "wrong": sum(len(v) for v in wrong.values()),
        "accounts": len(expected["accounts"]),
        "contacts": len(expected["contacts"]),
        "archived": sum(1 for kind in expected.values() for f in kind.values() if f[-1]),
        "tombstones": sum(1 for kind in held.values() for row in kind.values() if row[-1]),
    }


def deleted_tombstoned(stack: Stack, conn_id: int, deleted: dict[str, set[str]]) -> list[int]:
    """Of the ids the drill deleted that the mirror held live: [tombstoned, held]."""
    held = mirror(conn_id)
    live_before = [(k, z) for k, ids in deleted.items() for z in ids if z in held[k]]
    return [sum(1 for k, z in live_before if held[k][z][-1]), len(live_before)]


# --- Changes at the sandbox -----------------------------------------------------------------------


class Changer:
    """Record changes in one drill user's agency through the sandbox's control API, each logged
    with its time; deletions pick records that still exist."""

    def __init__(self, stack: Stack, i: int, profile: int, seed: int) -> None:
        self.zywave = stack.zywave
        self.i = i
        self.profile = profile
        self.rng = random.Random(seed)
        self.log: list[tuple[float, str, list[str]]] = []
        self.deleted: dict[str, set[str]] = {"accounts": set(), "contacts": set()}
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.made = 0
        self.refresh(stack)

    def refresh(self, stack: Stack) -> None:
        found = book(stack, self.i)
        self.accounts = sorted(found["accounts"])
        self.contacts = sorted(found["contacts"])

    def call(self, kind: str, path: str, **payload: Any) -> list[str]:
        try:
            answer = self.zywave.control("POST", path, profile_id=self.profile, **payload)
        except Exception as exc:  # noqa: BLE001 (a refused change is a figure)
            self.errors.append(f"{kind}: {type(exc).__name__}: {exc}"[:200])
            return []
        ids = [str(x) for x in answer.get("ids", [])]
        with self.lock:
            self.log.append((time.time(), kind, ids))
        return ids

    def label(self) -> str:
        with self.lock:
            self.made += 1
            return f"Drill{self.i:03d} Hooks {self.made:04d}"

    def delete_one(self, resource: str, noun: str, made: list[str]) -> list[str]:
        """Delete one of the records this drill `made` that is not deleted yet, at random."""
        live = [r for r in made if r not in self.deleted[resource]]
        if not live:
            return []
        pick = self.rng.choice(live)
        ids = self.call(f"{noun}.deleted", f"{resource}/delete", ids=[int(pick)])
        self.deleted[resource].update(ids)
        return ids

    def change_accounts(self, count: int = 1, ids: list[str] | None = None) -> list[str]:
        extra: dict[str, Any] = {"ids": ids} if ids else {"count": count}
        return self.call("account.updated", "accounts/change", field="name", **extra)

    def create_account(self) -> list[str]:
        ids = self.call("account.created", "accounts/create", name=self.label())
        self.accounts += ids
        return ids

    def archive_account(self) -> list[str]:
        return self.call("account.archived", "accounts/archive", count=1)

    def delete_account(self) -> list[str]:
        return self.delete_one("accounts", "account", self.accounts)

    def change_contacts(self, count: int = 1) -> list[str]:
        return self.call("contact.updated", "contacts/change", field="last_name", count=count)

    def create_contact(self) -> list[str]:
        ids = self.call("contact.created", "contacts/create", last_name=self.label())
        self.contacts += ids
        return ids

    def archive_contact(self) -> list[str]:
        return self.call("contact.archived", "contacts/archive", count=1)

    def delete_contact(self) -> list[str]:
        return self.delete_one("contacts", "contact", self.contacts)

    def any_change(self) -> list[str]:
        """One change of a random kind (updates most often, as in a working agency)."""
        kinds: list[tuple[Callable[[], list[str]], int]] = [
            (lambda: self.change_accounts(self.rng.randint(1, 3)), 5),
            (lambda: self.change_contacts(self.rng.randint(1, 2)), 3),
            (self.create_account, 2),
            (self.create_contact, 2),
            (self.archive_account, 1),
            (self.archive_contact, 1),
            (self.delete_account, 1),
            (self.delete_contact, 1),
        ]
        chosen = self.rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
        return chosen()

    def kinds(self, since: float = 0.0) -> dict[str, int]:
        with self.lock:
            return dict(Counter(kind for at, kind, _ in self.log if at >= since))

    def last_change(self) -> float:
        with self.lock:
            return max((at for at, _, _ in self.log), default=0.0)


class Stream:
    """`make()` every `every` seconds in a thread until stopped (never touching the portal's
    database, so that it goes on while PostgreSQL is down)."""

    def __init__(self, make: Callable[[], Any], every: float) -> None:
        self.make = make
        self.every = every
        self.stop_event = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop_event.is_set() and self.count < 10000:
            self.make()
            self.count += 1
            self.stop_event.wait(max(0.0, started + self.count * self.every - time.monotonic()))

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)


# --- The setup ----------------------------------------------------------------------------------


@dataclass
class Hooked:
    stack: Stack
    scale: Scale
    sizes: Sizes
    env: dict[str, str]
    redis_port: int
    redis: Any
    web: Group
    portal: str  # our gunicorn's origin
    a: int
    b: int
    conn: Any  # A's connection
    changer: Changer
    b_profile: int
    subscriptions: dict[str, int] = field(default_factory=dict)  # event type -> sandbox id
    baseline: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def token(self) -> str:
        self.conn.refresh_from_db(fields=["hook_token", "hook_token_hash"])
        return str(self.conn.hook_token)

    def receiver(self, token: str | None = None) -> str:
        return f"{self.portal}/hooks/zywave/{token or self.token}/"


def subscribe_all(hk: Hooked, token: str) -> dict[str, int]:
    """A's webhooks for every event type, to the receiver URL of `token` (the sandbox checks it
    with the challenge first)."""
    email = hk.stack.email(hk.a)
    return {
        event_type: int(
            hk.stack.zywave.subscribe_webhook(hk.receiver(token), event_type, user=email)["id"]
        )
        for event_type in EVENT_TYPES
    }


def unsubscribe(hk: Hooked, ids: list[int]) -> None:
    for webhook_id in ids:
        with contextlib.suppress(Exception):
            hk.stack.zywave.unsubscribe_webhook(webhook_id)


def sandbox_settings(hk: Hooked, **values: Any) -> None:
    hk.stack.zywave.control("POST", "settings", **{**SANDBOX_SETTINGS, **FAULTS_OFF, **values})


def deliveries(hk: Hooked, ids: list[int], since: float = 0.0) -> list[dict[str, Any]]:
    """The sandbox's delivery log for these webhooks, deliveries queued since `since`, with
    their attempts; the URI (it holds the token) is dropped at once."""
    found = []
    for webhook_id in ids:
        for row in hk.stack.zywave.webhook_deliveries(subscription=webhook_id, limit=100000):
            row.pop("uri", None)
            row.pop("body", None)
            if datetime.fromisoformat(row["created"]).timestamp() >= since - 1:
                found.append(row)
    return found


def pending(hk: Hooked, ids: list[int]) -> int:
    rows = hk.stack.zywave.webhook_deliveries(state="pending", limit=100000)
    return sum(1 for row in rows if row["subscription"] in ids)


def notifications(hk: Hooked, since: datetime) -> Any:
    return models().ZywaveNotification.objects.filter(
        connection_id=hk.conn.pk, received_at__gte=since
    )


# How often `settle` runs the refetch reconciler, as beat does in production (every 60 s; these
# drills run no beat). It re-sends the fetch of a notification acknowledged but never applied,
# e.g. a coalesced fetch whose message a restarted Redis (no persistence) took with it.
RECONCILE_EVERY = 10.0


def settle(hk: Hooked, ids: list[int], since: datetime, timeout: float) -> dict[str, Any]:
    """Wait until none of these webhooks' deliveries is pending at the sandbox and none of A's
    notifications since `since` waits for its fetch (the reconciler run as beat would); what
    was left when the time ran out."""
    from integrations.tasks import reconcile_refetches

    start = time.monotonic()
    reconciled = start
    left = {"pending": -1, "queued": -1}
    while time.monotonic() - start < timeout:
        if time.monotonic() - reconciled >= RECONCILE_EVERY:
            reconcile_refetches()
            reconciled = time.monotonic()
        left["pending"] = pending(hk, ids)
        if left["pending"] == 0:
            left["queued"] = notifications(hk, since).filter(state="queued").count()
            if left["queued"] == 0:
                break
        time.sleep(0.3)
    return {
        **left,
        "settled": left == {"pending": 0, "queued": 0},
        "waited": time.monotonic() - start,
    }


def runs_since(hk: Hooked, since: datetime) -> int:
    return int(
        models().SyncRun.objects.filter(connection_id=hk.conn.pk, queued_at__gte=since).count()
    )


def fetches(hk: Hooked, only: set[str] | None = None) -> Counter[str]:
    """The sandbox's count of single-record GETs (the portal's re-fetches), by status; with
    `only`, of those record ids only."""
    counted: Counter[str] = Counter()
    for key, n in hk.stack.zywave.counters().get("api", {}).items():
        path, _, status = key.rpartition(":")
        if path.startswith(DETAIL_PATHS) and (only is None or path.rsplit("/", 1)[1] in only):
            counted[status] += int(n)
    return counted


def wait_runs(ids: list[int], timeout: float) -> None:
    """Until no run of `ids` is queued or running (without the reconciler, which would queue
    every drill user's scheduled sync)."""
    wait_until("the runs to end", lambda: not active_runs(ids), timeout=timeout, interval=0.3)


def rebaseline(hk: Hooked) -> dict[str, Any]:
    """Make A's mirror exact with a full sync if it is not (a drill before failed), then start
    the no-sync window: from here on only notifications may change A's mirror."""
    found = compare(hk.stack, hk.a, hk.conn.pk)
    if not found["exact"]:
        queue_syncs([hk.conn.pk], full=True)
        wait_runs([hk.conn.pk], timeout=300)
        found = compare(hk.stack, hk.a, hk.conn.pk)
    if not found["exact"]:
        raise DrillError(f"A's mirror is not exact even after a full sync: {found}")
    hk.changer.refresh(hk.stack)
    hk.changer.deleted = {"accounts": set(), "contacts": set()}  # this drill's deletions
    # A trailing fetch (one coalescing window after a notification) may still be due: let it
    # run before the window opens.
    last = notifications(hk, datetime.fromtimestamp(0, UTC)).order_by("-received_at").first()
    if last is not None:
        wait = last.received_at.timestamp() + COALESCE_SECONDS + 1 - time.time()
        time.sleep(max(0.0, wait))
    hk.baseline = datetime.now(UTC)
    return found


def attempts_summary(rows: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """Deliveries retried (more than one attempt), attempts whose POST began between `start` and
    `end` by what they got (a status, or `refused` / `error` with no answer), and the rest."""

    def outcome(attempt: dict[str, Any]) -> str:
        if attempt["status"] is not None:
            return str(attempt["status"])
        return "refused" if "refused" in attempt["error"].lower() else "no answer"

    during: Counter[str] = Counter()
    for row in rows:
        for attempt in row["attempts"]:
            if start <= datetime.fromisoformat(attempt["at"]).timestamp() <= end:
                during[outcome(attempt)] += 1
    retried = [row for row in rows if len(row["attempts"]) > 1]
    return {
        "deliveries": len(rows),
        "delivered": sum(1 for row in rows if row["state"] == "delivered"),
        "given_up": sum(1 for row in rows if row["state"] == "failed"),
        "retried": len(retried),
        "max_attempts": max((len(row["attempts"]) for row in rows), default=0),
        "attempts_while_down": dict(during),
    }


def taken_at(row: dict[str, Any]) -> float | None:
    """When the delivery's first 2xx attempt began, or None."""
    for attempt in row["attempts"]:
        if attempt["status"] is not None and 200 <= attempt["status"] < 300:
            return datetime.fromisoformat(attempt["at"]).timestamp()
    return None


def overtaken(rows: list[dict[str, Any]]) -> int:
    """Deliveries taken after one about the same record with a later event time: what a
    receiver that trusted the order would get wrong."""
    by_record: dict[tuple[str, str], list[tuple[float, datetime]]] = {}
    for row in rows:
        taken = taken_at(row)
        if taken is not None:
            key = (row["record_type"], row["record_id"])
            by_record.setdefault(key, []).append((taken, datetime.fromisoformat(row["event_time"])))
    count = 0
    for items in by_record.values():
        latest: datetime | None = None
        for _, event_time in sorted(items, key=lambda item: item[0]):
            if latest is not None and event_time < latest:
                count += 1
            latest = event_time if latest is None else max(latest, event_time)
    return count


def guarded(name: str, drill: Callable[[Hooked], Result], hk: Hooked) -> Result:
    """One drill's row, or a row saying how it failed (the others still run); the sandbox's
    faults lifted after it whatever happened."""
    began = time.monotonic()
    try:
        result = drill(hk)
        result.figures["drill_seconds"] = round(time.monotonic() - began, 1)
        return result
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        failed = Result(name, "", "", error=f"{type(exc).__name__}: {exc}"[:500])
        failed.measured = f"the drill itself failed: {failed.error}"
        return failed
    finally:
        with contextlib.suppress(Exception):
            sandbox_settings(hk)


def drill_hooks(stack: Stack, scale: Scale, a: int, b: int) -> tuple[Result, ...]:
    """The five drills of Zywave's webhooks in, on a web and workers of their own."""
    sizes = SIZES[scale.name]
    connect_missing(stack, [a])
    wait_until("every run to end", lambda: not active_runs(None), timeout=300, interval=0.5)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    own = redis_server(port, stack.tmp / "redis-hooks")
    web_port = free_port()
    portal = f"http://127.0.0.1:{web_port}"
    env = {
        **stack.env,
        "REDIS_URL": url,
        "GUNICORN_BIND": f"127.0.0.1:{web_port}",
        "PORTAL_URL": portal,
    }
    web = Group(
        "hooks-web",
        [str(BIN / "gunicorn"), "-c", "portal/gunicorn.conf.py", "portal.wsgi:application"],
        env,
        stack.logs,
    )
    stack.processes.append(web)
    hk: Hooked | None = None
    results: list[Result] = []
    try:
        stack.swap_workers(env)
        use_broker(url)
        stack.wait_workers(timeout=90)
        conn = conn_of(a)
        profile = int(conn.chosen_profile.zywave_id)
        b_profile = int(stack.zywave.profiles(stack.email(b))[0]["id"])
        hk = Hooked(
            stack, scale, sizes, env, port, own, web, portal, a, b, conn,
            Changer(stack, a, profile, seed=19), b_profile,
        )  # fmt: skip
        wait_until(
            "our web to answer the challenge",
            lambda: requests.get(hk.receiver(), params={"challenge": "up"}, timeout=5).text == "up",
            timeout=90,
        )
        stack.zywave.reset()
        sandbox_settings(hk)
        hk.subscriptions = subscribe_all(hk, hk.token)
        drills: list[tuple[str, Callable[[Hooked], Result]]] = [
            (FAULTS_ROW, drill_faults),
            (REDIS_ROW, drill_redis_restart),
            (POSTGRES_ROW, drill_postgres_restart),
            (FOREIGN_ROW, drill_foreign),
            (ROTATION_ROW, drill_rotation),  # last: it changes the URL and ends with a sync
        ]
        for name, drill in drills:
            results.append(guarded(name, drill, hk))
    finally:
        if hk is not None:
            own = hk.redis  # a drill restarted it
            unsubscribe(hk, list(hk.subscriptions.values()))
        with contextlib.suppress(Exception):
            for webhook in stack.zywave.webhooks(user=stack.email(a)):
                stack.zywave.unsubscribe_webhook(int(webhook["id"]))
        with contextlib.suppress(Exception):
            stack.zywave.reset()
        web.stop()
        stack.processes.remove(web)
        use_broker(stack.redis_url)
        stack.restore_workers()
        stop_process(own)
    stack.wait_workers(timeout=60)
    return tuple(results)


# --- 1. Duplicates, out of order, delays, bursts --------------------------------------------------

FAULTS_ROW = "Zywave webhooks in: duplicates, out of order, delays, bursts"


def drill_faults(hk: Hooked) -> Result:
    sizes, changer = hk.sizes, hk.changer
    result = Result(
        FAULTS_ROW,
        f"{sizes.rounds} rounds of changes at the sandbox to person A's accounts and contacts "
        "(names, creations, archives, deletions), each round under other delivery faults: every "
        "delivery sent twice; each change's deliveries shuffled and burst into 4 for one "
        "record; all held 2 s and sent twice; all of them at once (held 1 s, burst 3); after "
        "each round the same accounts changed again with no fault, so that the newer change's "
        "delivery overtakes the held older one",
        "the mirror exact against the sandbox's book afterwards (ids, names, archived flags; "
        "deleted records tombstoned), with no sync run meanwhile; duplicate rows 0",
    )
    rebaseline(hk)
    began, since = time.time(), hk.baseline
    fetched_before = fetches(hk)
    for k in range(sizes.rounds):
        sandbox_settings(hk, **FAULT_ROUNDS[k % len(FAULT_ROUNDS)])
        changed = changer.change_accounts(3)
        changer.create_account()
        changer.archive_account()
        changer.change_contacts(2)
        changer.create_contact()
        changer.archive_contact()
        changer.delete_account()
        changer.delete_contact()
        sandbox_settings(hk)
        if changed:
            changer.change_accounts(ids=changed)
    last_change = changer.last_change()
    ids = list(hk.subscriptions.values())
    left = settle(hk, ids, since, timeout=120)
    exact_at = time.time()
    found = compare(hk.stack, hk.a, hk.conn.pk)
    runs = runs_since(hk, since)
    rows = deliveries(hk, ids, began)
    marks: Counter[str] = Counter(mark for row in rows for mark in row["faults"])
    fetched = fetches(hk) - fetched_before
    kept = notifications(hk, since)
    tombstoned, held = deleted_tombstoned(hk.stack, hk.conn.pk, changer.deleted)
    f = result.figures
    f.update(
        changes=changer.kinds(began),
        change_errors=changer.errors[:5],
        deliveries=len(rows),
        deliveries_by_fault=dict(marks),
        taken_after_a_later_change=overtaken(rows),
        delivered=sum(1 for row in rows if row["state"] == "delivered"),
        notifications=kept.count(),
        notifications_by_state=dict(Counter(kept.values_list("state", flat=True))),
        fetches=sum(fetched.values()),
        fetches_by_status=dict(fetched),
        settled=left,
        exact_after_last_change_seconds=round(exact_at - last_change, 1),
        mirror=found,
        deleted_tombstoned=tombstoned,
        deleted_that_were_mirrored=held,
        sync_runs_meanwhile=runs,
        duplicates=duplicates(),
    )
    result.checks = {
        "the faults were real": all(
            marks[mark] > 0 for mark in ("duplicate", "out_of_order", "delayed", "burst")
        )
        and len(rows) > sum(f["changes"].values())
        and f["taken_after_a_later_change"] > 0,
        "every delivery taken": left["settled"] and f["delivered"] == len(rows),
        "mirror exact": found["exact"] and tombstoned == held and held > 0,
        "no sync meanwhile": runs == 0,
        "no duplicate rows": f["duplicates"] == 0,
    }
    result.measured = (
        f"{sum(f['changes'].values())} changes ({f['changes']}) became {len(rows)} deliveries "
        f"({dict(marks)}), {f['taken_after_a_later_change']} of them taken after a delivery "
        f"about a later change of the same record; all taken ({f['delivered']} answered 2xx); "
        f"{f['notifications']} "
        f"notifications, {f['fetches']} fetches ({dict(fetched)}); the mirror exact "
        f"{f['exact_after_last_change_seconds']} s after the last change: {found['exact']} "
        f"({found['accounts']} accounts, {found['contacts']} contacts, {found['archived']} "
        f"archived, {tombstoned}/{held} deleted ones tombstoned, wrong {found['wrong']}); sync "
        f"runs meanwhile {runs}, duplicate rows {f['duplicates']}"
    )
    return result


# --- 2. Redis and PostgreSQL restarted while deliveries arrive -----------------------------------

REDIS_ROW = "Zywave webhooks in: Redis restarted"
POSTGRES_ROW = "Zywave webhooks in: PostgreSQL restarted"


def outage(
    hk: Hooked, result: Result, stop: Callable[[], None], start: Callable[[], None]
) -> Result:
    """A stream of changes from 1 s before `stop()` to 1 s after `start()`, `down_seconds`
    apart; then every delivery must end taken and every change in the mirror."""
    sizes, changer = hk.sizes, hk.changer
    rebaseline(hk)
    began, since = time.time(), hk.baseline
    ids = list(hk.subscriptions.values())
    with Stream(changer.any_change, sizes.change_every) as stream:
        time.sleep(1.0)
        down = time.time()
        stop()
        time.sleep(sizes.down_seconds)
        start()
        up = time.time()
        time.sleep(1.0)
    last_change = changer.last_change()
    schedule = [float(x) for x in SANDBOX_SETTINGS["webhook_retry_schedule"].split(",")]
    # The retries, then the reconciler's STRANDED_AFTER (60 s) for a fetch a restart lost.
    left = settle(hk, ids, since, timeout=sum(schedule) + 60 + 70)
    exact_at = time.time()
    found = compare(hk.stack, hk.a, hk.conn.pk)
    runs = runs_since(hk, since)
    rows = deliveries(hk, ids, began)
    attempts = attempts_summary(rows, down, up)
    kept = notifications(hk, since)
    tombstoned, held = deleted_tombstoned(hk.stack, hk.conn.pk, changer.deleted)
    f = result.figures
    f.update(
        changes=changer.kinds(began),
        change_errors=changer.errors[-5:],
        stream_changes=stream.count,
        down_seconds=round(up - down, 1),
        **attempts,
        notifications=kept.count(),
        notifications_by_state=dict(Counter(kept.values_list("state", flat=True))),
        settled=left,
        exact_after_back_seconds=round(exact_at - up, 1),
        exact_after_last_change_seconds=round(exact_at - last_change, 1),
        mirror=found,
        deleted_tombstoned=tombstoned,
        deleted_that_were_mirrored=held,
        sync_runs_meanwhile=runs,
        duplicates=duplicates(),
    )
    failed_while_down = sum(n for k, n in attempts["attempts_while_down"].items() if k != "202")
    result.checks = {
        "the outage was real": failed_while_down >= 1 and attempts["retried"] >= 1,
        "the sandbox retried and every delivery was taken": left["pending"] == 0
        and attempts["given_up"] == 0
        and attempts["delivered"] == attempts["deliveries"],
        "every change applied": left["settled"]
        and f["notifications_by_state"].get("failed", 0) == 0
        and found["exact"]
        and tombstoned == held,
        "no sync meanwhile": runs == 0,
        "no duplicate rows": f["duplicates"] == 0,
    }
    result.measured = (
        f"{stream.count} changes in {up - down + 2:.0f} s ({f['changes']}), down "
        f"{f['down_seconds']} s; {attempts['deliveries']} deliveries, attempts while down: "
        f"{attempts['attempts_while_down']}; the sandbox retried {attempts['retried']} "
        f"deliveries (at most {attempts['max_attempts']} attempts), gave up on "
        f"{attempts['given_up']}, {attempts['delivered']} taken; notifications "
        f"{f['notifications_by_state']}, left waiting {left['queued']}; the mirror exact "
        f"{f['exact_after_back_seconds']} s after it was back: {found['exact']} (wrong "
        f"{found['wrong']}, {tombstoned}/{held} deleted ones tombstoned); sync runs meanwhile "
        f"{runs}, duplicate rows {f['duplicates']}"
    )
    return result


def drill_redis_restart(hk: Hooked) -> Result:
    result = Result(
        REDIS_ROW,
        f"a change to person A's records every {hk.sizes.change_every} s at the sandbox while "
        f"the Redis of the receiver's web and the workers (broker and cache; no persistence) is "
        f"stopped for {hk.sizes.down_seconds:.0f} s and started again; the sandbox's retry "
        f"schedule {SANDBOX_SETTINGS['webhook_retry_schedule']} s",
        "while down, deliveries refused (5xx); the sandbox retries them; every delivery taken "
        "and every change applied: the mirror exact against the book, no sync run meanwhile",
    )

    def stop() -> None:
        stop_process(hk.redis)

    def start() -> None:
        hk.redis = redis_server(hk.redis_port, hk.stack.tmp / "redis-hooks")

    outage(hk, result, stop, start)
    result.figures["first_task_after_restart_seconds"] = round(hk.stack.wait_workers(timeout=90), 2)
    return result


def drill_postgres_restart(hk: Hooked) -> Result:
    from django.db import connections

    assert hk.stack.postgres is not None
    postgres = hk.stack.postgres
    result = Result(
        POSTGRES_ROW,
        f"a change to person A's records every {hk.sizes.change_every} s at the sandbox while "
        f"the portal's PostgreSQL is stopped (fast shutdown) for "
        f"{hk.sizes.down_seconds:.0f} s and started again; the sandbox's retry schedule "
        f"{SANDBOX_SETTINGS['webhook_retry_schedule']} s",
        "while down, deliveries answered 503 (nothing kept, so nothing acknowledged); the "
        "sandbox retries them; every delivery taken and every change applied: the mirror exact "
        "against the book, no sync run meanwhile",
    )

    def start() -> None:
        postgres.start()
        connections.close_all()  # this process's connection died with the server

    outage(hk, result, postgres.stop, start)
    return result


# --- 3. Another agency's record -------------------------------------------------------------------

FOREIGN_ROW = "Zywave webhooks in: another agency's record"


def drill_foreign(hk: Hooked) -> Result:
    m = models()
    stack, sizes = hk.stack, hk.sizes
    result = Result(
        FOREIGN_ROW,
        f"{sizes.foreign} changes to person B's accounts and contacts at the sandbox with the "
        f"`webhook_foreign` fault (delivered to A's webhooks too, which may not see them), and "
        f"{sizes.foreign} hand-made deliveries to A's webhooks about B's record ids "
        "(`send_webhook`)",
        "A's receiver takes them (202) and the re-fetch under A's profile is refused (404): "
        "A's mirror unchanged row for row, no record of B in it, no outbound event for A",
    )
    rebaseline(hk)
    began, since = time.time(), hk.baseline
    before = snapshot(hk.conn.pk)
    events_before = m.WebhookEvent.objects.filter(owner_id=hk.conn.user_id).count()
    other = Changer(stack, hk.b, hk.b_profile, seed=20)
    fetched_before = fetches(hk, {*other.accounts, *other.contacts})
    sandbox_settings(hk, webhook_foreign=True)
    kinds: list[Callable[[], list[str]]] = [
        other.change_accounts,
        other.change_contacts,
        other.archive_account,
        other.create_account,
    ]
    for k in range(sizes.foreign):
        kinds[k % len(kinds)]()
    sandbox_settings(hk)
    other.refresh(stack)
    b_ids = {"accounts": set(other.accounts), "contacts": set(other.contacts)}
    every_b_id = b_ids["accounts"] | b_ids["contacts"]
    for k in range(sizes.foreign):
        kind = "accounts" if k % 2 == 0 else "contacts"
        event = "account.updated" if kind == "accounts" else "contact.updated"
        stack.zywave.send_webhook(hk.subscriptions[event], sorted(b_ids[kind])[k])
    ids = list(hk.subscriptions.values())
    left = settle(hk, ids, since, timeout=120)
    rows = deliveries(hk, ids, began)
    foreign = [row for row in rows if "foreign" in row["faults"] or "manual" in row["faults"]]
    answered: Counter[str] = Counter(
        str(attempt["status"]) for row in foreign for attempt in row["attempts"]
    )
    kept = notifications(hk, since)
    about_b = kept.filter(record_id__in=[*b_ids["accounts"], *b_ids["contacts"]])
    after = snapshot(hk.conn.pk)
    fetched = fetches(hk, every_b_id) - fetched_before
    b_rows = sum(
        model.all_rows.filter(connection_id=hk.conn.pk, zywave_id__in=b_ids[name]).count()
        for name, model in (("accounts", m.Account), ("contacts", m.Contact))
    )
    found = compare(stack, hk.a, hk.conn.pk)
    events = m.WebhookEvent.objects.filter(owner_id=hk.conn.user_id).count() - events_before
    runs = runs_since(hk, since)
    f = result.figures
    f.update(
        changes_of_b=other.kinds(began),
        change_errors=other.errors[:5],
        deliveries_to_a_about_b=len(foreign),
        deliveries_by_fault=dict(Counter(mark for row in foreign for mark in row["faults"])),
        answered=dict(answered),
        notifications_about_b=about_b.count(),
        notification_outcomes=dict(Counter(about_b.values_list("state", "outcome"))),
        fetches_by_status=dict(fetched),
        settled=left,
        mirror_rows_changed=sum(
            len(set(before[k]) ^ set(after[k])) for k in ("accounts", "contacts")
        ),
        rows_of_b_in_a_mirror=b_rows,
        outbound_events_for_a=events,
        mirror=found,
        sync_runs_meanwhile=runs,
    )
    f["notification_outcomes"] = {
        f"{s}: {o}": n for (s, o), n in f["notification_outcomes"].items()
    }
    result.checks = {
        "the deliveries were real": len(foreign) >= 2 * sizes.foreign
        and set(answered) == {"202"}
        and about_b.count() >= len(foreign),
        "re-fetches refused under A's profile": fetched.get("404", 0) >= 1
        and set(fetched) <= {"404"},
        "A's mirror unchanged": before == after and b_rows == 0 and found["exact"],
        "no outbound event": events == 0,
        "no sync meanwhile": runs == 0,
    }
    result.measured = (
        f"{len(foreign)} deliveries to A about B's records ({f['deliveries_by_fault']}), "
        f"answered {dict(answered)}; {about_b.count()} notifications kept "
        f"({f['notification_outcomes']}); re-fetches under A's profile {dict(fetched)}; A's "
        f"mirror rows changed {f['mirror_rows_changed']}, rows of B in it {b_rows}, still exact: "
        f"{found['exact']}; outbound events for A {events}; sync runs meanwhile {runs}"
    )
    return result


# --- 4. The receiver URL rotated mid-stream -------------------------------------------------------

ROTATION_ROW = "Zywave webhooks in: receiver URL rotated mid-stream"


def rotate_from_dashboard(hk: Hooked) -> float:
    """Person A presses *Make a new URL* on the dashboard (our web); returns when it answered."""
    browser = logged_in(hk.stack, hk.a)
    page = browser.get(f"{hk.portal}/", timeout=30)
    answer = browser.post(
        f"{hk.portal}/zywave/hooks/rotate/",
        data={"csrfmiddlewaretoken": csrf_from(page.text)},
        allow_redirects=False,
        timeout=30,
    )
    if answer.status_code != 302:
        raise DrillError(f"rotating the receiver URL answered {answer.status_code}")
    return time.time()


def drill_rotation(hk: Hooked) -> Result:
    stack, sizes, changer = hk.stack, hk.sizes, hk.changer
    third = sizes.rotation_seconds / 3
    result = Result(
        ROTATION_ROW,
        f"an account created at the sandbox every {sizes.change_every} s for "
        f"{sizes.rotation_seconds:.0f} s; after {third:.0f} s person A makes a new receiver URL "
        f"on the dashboard (the old one stays registered at the sandbox); {third:.0f} s later "
        f"the new URL is registered at the sandbox for every event type",
        "from the rotation on the old URL answers 404 (the sandbox's log: every attempt after "
        "it 404, none taken, no notification kept from it); before it, deliveries taken; the "
        "new URL verified by the challenge and taken; what only the old URL was told of is "
        "caught by the next sync",
    )
    rebaseline(hk)
    began, since = time.time(), hk.baseline
    old_token = hk.token
    old_ids = list(hk.subscriptions.values())
    with Stream(changer.create_account, sizes.change_every) as stream:
        time.sleep(third)
        rotated = rotate_from_dashboard(hk)
        time.sleep(third)
        new_token = hk.token
        registered_at = time.time()
        new = subscribe_all(hk, new_token)
        registered = time.time()
        time.sleep(third)
    hk.subscriptions = new
    old_url = hk.receiver(old_token)
    probe_get = requests.get(old_url, params={"challenge": "x"}, timeout=10).status_code
    probe_post = requests.post(
        old_url,
        json={
            "eventType": "account.updated",
            "eventDateTime": datetime.now(UTC).isoformat(),
            "recordType": "Account",
            "recordId": changer.accounts[0],
        },
        timeout=10,
    ).status_code
    # Every delivery to the old URL attempted once at least (the new ones taken), then the old
    # webhooks go, as an administrator would remove them at Zywave.
    wait_until(
        "every delivery to the old URL to be tried",
        lambda: all(row["attempts"] for row in deliveries(hk, old_ids, began)),
        timeout=60,
        interval=0.5,
    )
    old_rows = deliveries(hk, old_ids, began)
    unsubscribe(hk, old_ids)
    left = settle(hk, list(new.values()), since, timeout=120)
    new_rows = deliveries(hk, list(new.values()), began)

    def at(attempt: dict[str, Any]) -> float:
        return datetime.fromisoformat(attempt["at"]).timestamp()

    old_after: Counter[str] = Counter(
        str(a["status"]) for row in old_rows for a in row["attempts"] if at(a) > rotated
    )
    old_before: Counter[str] = Counter(
        str(a["status"]) for row in old_rows for a in row["attempts"] if at(a) <= rotated
    )
    taken_old = {
        row["record_id"] for row in old_rows if any(a["status"] == 202 for a in row["attempts"])
    }
    taken_new = {
        row["record_id"] for row in new_rows if any(a["status"] == 202 for a in row["attempts"])
    }
    created = [
        z
        for when, kind, ids in changer.log
        if kind == "account.created" and when >= began
        for z in ids
    ]
    told_nobody = [z for z in created if z not in taken_old and z not in taken_new]
    kept = notifications(hk, since)
    from_old_after = kept.filter(
        received_at__gt=datetime.fromtimestamp(rotated, UTC),
        received_at__lt=datetime.fromtimestamp(registered_at, UTC),
    ).count()
    before_sync = compare(stack, hk.a, hk.conn.pk, skip=set(told_nobody))
    missing_before_sync = compare(stack, hk.a, hk.conn.pk)
    runs = runs_since(hk, since)
    # The safety net: the next scheduled (incremental) sync brings in what no URL delivered.
    queue_syncs([hk.conn.pk])
    wait_runs([hk.conn.pk], timeout=120)
    after_sync = compare(stack, hk.a, hk.conn.pk)
    f = result.figures
    f.update(
        accounts_created=len(created),
        change_errors=changer.errors[-5:],
        stream_changes=stream.count,
        old_url_attempts_before_rotation=dict(old_before),
        old_url_attempts_after_rotation=dict(old_after),
        old_url_probe_after=[probe_get, probe_post],
        notifications_between_rotation_and_registration=from_old_after,
        new_url_registration_seconds=round(registered - registered_at, 2),
        new_url_deliveries=len(new_rows),
        new_url_taken=sum(1 for row in new_rows if row["state"] == "delivered"),
        taken_through_old=len(taken_old),
        taken_through_new=len(taken_new),
        told_only_the_old_url=len(told_nobody),
        settled=left,
        mirror_without_those=before_sync,
        missing_before_sync=missing_before_sync["wrong"],
        sync_runs_meanwhile=runs,
        mirror_after_sync=after_sync,
    )
    result.checks = {
        "mid-stream": old_before.get("202", 0) >= 1 and sum(old_after.values()) >= 1,
        "the old URL answers 404 from then on": set(old_after) == {"404"}
        and from_old_after == 0
        and probe_get == probe_post == 404,
        "the new URL works": left["settled"]
        and len(new_rows) >= 1
        and f["new_url_taken"] == len(new_rows)
        and before_sync["exact"],
        "no sync meanwhile": runs == 0,
        "the next sync catches up": after_sync["exact"],
    }
    result.measured = (
        f"{len(created)} accounts created; the old URL's attempts before the rotation "
        f"{dict(old_before)}, after it {dict(old_after)} (a GET and a POST to it after: "
        f"{probe_get}, {probe_post}), notifications kept from it after the rotation "
        f"{from_old_after}; the new URL verified and registered for 8 event types in "
        f"{f['new_url_registration_seconds']} s, {f['new_url_taken']}/{len(new_rows)} "
        f"deliveries taken; {len(told_nobody)} accounts only the old URL was told of, missing "
        f"until the next sync, everything else exact: {before_sync['exact']} (sync runs "
        f"meanwhile {runs}); after one incremental sync the mirror exact: {after_sync['exact']}"
    )
    return result
