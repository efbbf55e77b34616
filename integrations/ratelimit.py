"""One Zywave rate budget for the whole app, kept in Redis, and the cap on syncs at once.

Zywave limits how fast one registered app may call it, whatever the number of processes and
machines calling: every Zywave API call of every web process and worker (sync pages, profile
calls, proxied calls, webhook re-fetches) draws on one budget of `ZYWAVE_RATE_LIMIT` requests
per second, and on its connection's `ZYWAVE_RATE_LIMIT_PER_CONNECTION`. The token endpoint has
a budget of its own (`ZYWAVE_TOKEN_RATE_LIMIT`): it is another server (the identity server),
and a refresh must never wait behind a backlog of syncs.

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one number: the
time at which the bucket would be full again), run by one Lua script per call so that the check
and the reservation are one atomic step in Redis, with Redis's clock as the one clock of every
machine. Each caller reserves the next free slot and sleeps until it, so callers are served in
turn without polling. Why not the `limits` package: its Redis strategies answer "allowed or
not" and would have every waiting worker poll; a reservation answers "go in 37 ms", costs one
round trip per call, and needs no dependency.

Priorities: a background caller (a scheduled sync) may run `BACKGROUND_LEAD` seconds ahead of
the schedule (enough to make up for a process that woke late, so the budget is used whole), an
interactive one (Sync now, the API, the proxy, a profile change) `INTERACTIVE_LEAD`, so it goes
ahead of the background slots already reserved, however deep the scheduled backlog is. Zywave's
webhooks re-fetch in between. Over any window the budget is kept: at most R x (window + lead)
requests, which a Zywave that allows a second's burst (a token bucket of R) accepts.

A 429 from Zywave pauses the whole app through a shared key for its `Retry-After` (1 s when it
gives none): every reservation starts after the pause.

When Redis cannot be reached the limiter fails safe: each process limits itself to
`ZYWAVE_RATE_LIMIT_FALLBACK` requests per second (default a tenth of the budget), logs it once a
minute, and `/health/` shows a warning. It never runs unlimited and never raises.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

log = logging.getLogger(__name__)

BACKGROUND = "background"
REFETCH = "refetch"
INTERACTIVE = "interactive"
# Seconds ahead of the schedule each class may go (its burst tolerance).
BACKGROUND_LEAD = 0.1
INTERACTIVE_LEAD = 0.5
LEADS = {BACKGROUND: BACKGROUND_LEAD, REFETCH: 0.3, INTERACTIVE: INTERACTIVE_LEAD}
# How long one call waits for its slot before giving up (`Busy`, which the client raises as a
# RateLimited): a person's request is answered with a 429 rather than kept waiting; a sync waits
# in its own retry loop, which renews its lease (a sync's lease is 120 s: this stays well under).
MAX_WAIT = {BACKGROUND: 30.0, REFETCH: 30.0, INTERACTIVE: 5.0}
# The pause when Zywave answers 429 without Retry-After, and the longest pause obeyed.
DEFAULT_PAUSE = 1.0
MAX_PAUSE = 300.0
# After Redis failed, how long this process uses its local limit before asking Redis again.
RETRY_REDIS_SECONDS = 5.0
# Redis calls must not hold a Zywave call up: the limiter gives up on Redis quickly.
REDIS_TIMEOUT = 0.5

PREFIX = "zywave:rate:"
PAUSE_KEY = PREFIX + "pause"
# The token endpoint's budget never waits on the API's pause (a 429 of the API says nothing of
# the identity server): its reservations read this key, which nothing sets.
TOKEN_PAUSE_KEY = PREFIX + "token-pause"
SYNCS_KEY = PREFIX + "syncs"

_priority: contextvars.ContextVar[str] = contextvars.ContextVar(
    "zywave_priority", default=BACKGROUND
)


class Busy(Exception):
    """The next slot is further away than the caller may wait: `wait` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"Zywave's rate budget is spent for the next {wait:.1f} s")
        self.wait = wait


@contextlib.contextmanager
def priority(name: str) -> Iterator[None]:
    """Calls made inside this block draw on the budget as `name` (BACKGROUND, REFETCH or
    INTERACTIVE). Helper threads do not inherit it: `client.pages` passes it on."""
    token = _priority.set(name)
    try:
        yield
    finally:
        _priority.reset(token)


def current_priority() -> str:
    return _priority.get()


def on_request_started(**kwargs: object) -> None:
    _priority.set(INTERACTIVE)


def on_task_started(**kwargs: object) -> None:
    _priority.set(BACKGROUND)


# --- The shared state in Redis ------------------------------------------------------------------

# KEYS: pause key, then one key per budget. ARGV: the longest wait allowed (µs), then per budget
# its emission interval and its tolerance (µs). Returns {reserved (1 or 0), wait (µs)}.
# Times are microseconds of Redis's clock, written with %.0f (Lua's tostring keeps 14 digits).
RESERVE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local at = now
local pause = tonumber(redis.call('GET', KEYS[1]) or '0')
if pause > at then at = pause end
local tats = {}
for i = 2, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  tats[i] = tat
  local tolerance = tonumber(ARGV[2 * i - 1])
  if tat - tolerance > at then at = tat - tolerance end
end
local wait = at - now
if wait > tonumber(ARGV[1]) then return {0, string.format('%.0f', wait)} end
for i = 2, #KEYS do
  local interval = tonumber(ARGV[2 * i - 2])
  local tat = tats[i]
  if at > tat then tat = at end
  tat = tat + interval
  local ttl = math.ceil((tat - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', ttl)
end
return {1, string.format('%.0f', wait)}
"""

# KEYS: pause key. ARGV: pause length (µs). The pause only ever grows.
PAUSE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local untl = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if untl > current then
  local ttl = math.ceil(tonumber(ARGV[1]) / 1000) + 1
  redis.call('SET', KEYS[1], string.format('%.0f', untl), 'PX', ttl)
end
return string.format('%.0f', math.max(untl, current) - now)
"""

# KEYS: the set of syncs running. ARGV: member, lease (ms), cap, and 1 to renew only. Returns
# 1 when the member took a slot now, 2 when it held one already (renewed), 0 when none is free.
SLOT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held and (ARGV[4] == '1' or redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3])) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < lease + 1000 then redis.call('PEXPIRE', KEYS[1], lease + 1000) end
if held then return 2 end
return 1
"""


@dataclass
class _Shared:
    pid: int
    url: str
    client: Any  # redis.Redis and its registered scripts
    reserve: Any
    pause: Any
    slot: Any


_state_lock = threading.Lock()
_shared: _Shared | None = None
_redis_down_until = 0.0
_last_warning = 0.0


def redis_url() -> str | None:
    url = settings.CELERY_BROKER_URL
    return url if urlsplit(url).scheme in {"redis", "rediss"} else None


def _redis() -> _Shared | None:
    """This process's Redis client and scripts (recreated after a fork), or None when the
    deployment has no Redis (development's file broker) or Redis failed a moment ago."""
    global _shared
    if time.monotonic() < _redis_down_until:
        return None
    url = redis_url()
    if url is None:
        return None
    shared = _shared
    if shared is None or shared.pid != os.getpid() or shared.url != url:
        import redis

        with _state_lock:
            client = redis.Redis.from_url(
                url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
            )
            shared = _shared = _Shared(
                os.getpid(),
                url,
                client,
                client.register_script(RESERVE),
                client.register_script(PAUSE),
                client.register_script(SLOT),
            )
    return shared


def _redis_failed(exc: Exception) -> None:
    """Use the local limits for a while; say so at most once a minute (never the URL)."""
    global _redis_down_until, _last_warning
    now = time.monotonic()
    _redis_down_until = now + RETRY_REDIS_SECONDS
    if now - _last_warning > 60:
        _last_warning = now
        log.warning(
            "Zywave's shared rate budget is unreachable (%s): this process limits itself to "
            "%s requests/s until Redis answers",
            type(exc).__name__,
            fallback_rate(),
        )


def degraded() -> bool:
    """This process is on its local limit because Redis failed a moment ago."""
    return time.monotonic() < _redis_down_until


def health_warning() -> str | None:
    """What `/health/` tells staff when the shared budget is not in force here: Redis failed
    a moment ago in this process, or does not answer now."""
    if settings.ZYWAVE_RATE_LIMIT <= 0:
        return None
    local = (
        "each process limits itself to "
        f"{fallback_rate():g} Zywave requests/s instead of sharing ZYWAVE_RATE_LIMIT"
    )
    if redis_url() is None:
        return None if settings.DEBUG else f"no Redis broker: {local}"
    shared = _redis()
    if shared is None:
        return f"Redis failed a moment ago: {local}"
    try:
        shared.client.ping()
    except Exception as exc:  # noqa: BLE001
        _redis_failed(exc)
        return f"Redis does not answer: {local}"
    return None


# --- The local fallback -----------------------------------------------------------------------


class _LocalBucket:
    """GCRA in this process's memory: the same rule, one process's share."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tats: dict[str, float] = {}

    def reserve(
        self, budgets: list[tuple[str, float, float]], max_wait: float, not_before: float = 0.0
    ) -> float:
        with self.lock:
            now = time.monotonic()
            at = max([now, not_before] + [self.tats.get(k, 0.0) - lead for k, _, lead in budgets])
            wait = at - now
            if wait > max_wait:
                raise Busy(wait)
            for key, interval, _ in budgets:
                self.tats[key] = max(self.tats.get(key, 0.0), at) + interval
            if len(self.tats) > 10_000:  # connections come and go: forget the idle ones
                self.tats = {key: tat for key, tat in self.tats.items() if tat > now}
            return wait


_local = _LocalBucket()
_local_pause_until = 0.0


def fallback_rate(rate: float | None = None) -> float:
    """This process's own share of `rate` (the app's budget) while Redis is unreachable:
    ZYWAVE_RATE_LIMIT_FALLBACK, else a tenth (at least one a second). No limit stays none."""
    rate = settings.ZYWAVE_RATE_LIMIT if rate is None else rate
    if rate <= 0:
        return 0.0
    configured = float(settings.ZYWAVE_RATE_LIMIT_FALLBACK)
    return min(rate, configured) if configured > 0 else max(1.0, rate / 10)


# --- What callers use --------------------------------------------------------------------------


def _interval(rate: float) -> float:
    return 1.0 / rate if rate > 0 else 0.0


def _budgets(connection_id: int | None, token: bool, local: bool) -> list[tuple[str, float, float]]:
    """(key, seconds between calls, lead) of each budget a call draws on."""
    lead = LEADS[current_priority()]
    if token:
        rate = settings.ZYWAVE_TOKEN_RATE_LIMIT
        return [(PREFIX + "token", _interval(fallback_rate(rate) if local else rate), lead)]
    app = fallback_rate() if local else settings.ZYWAVE_RATE_LIMIT
    budgets = [(PREFIX + "app", _interval(app), lead)]
    per_connection = settings.ZYWAVE_RATE_LIMIT_PER_CONNECTION
    if connection_id is not None and per_connection > 0:
        budgets.append((f"{PREFIX}connection:{connection_id}", _interval(per_connection), lead))
    return [budget for budget in budgets if budget[1] > 0]


def reserve(connection_id: int | None = None, *, token: bool = False) -> float:
    """Reserve the next slot of the budgets this call draws on; the seconds to wait for it.

    Raises Busy when that is longer than the caller's class may wait (the slot is not taken).
    """
    max_wait = MAX_WAIT[current_priority()]
    shared = _redis()
    if shared is not None:
        # No budget (ZYWAVE_RATE_LIMIT=0) still waits out a pause Zywave asked for.
        budgets = _budgets(connection_id, token, local=False)
        args: list[float] = [max_wait * 1e6]
        for _, interval, lead in budgets:
            args += [interval * 1e6, lead * 1e6]
        try:
            pause_key = TOKEN_PAUSE_KEY if token else PAUSE_KEY
            reserved, wait = shared.reserve(
                keys=[pause_key, *(key for key, _, _ in budgets)], args=args
            )
        except Exception as exc:  # noqa: BLE001 (any Redis failure: fail safe, locally)
            _redis_failed(exc)
        else:
            if not int(reserved):
                raise Busy(int(wait) / 1e6)
            return int(wait) / 1e6
    not_before = 0.0 if token else _local_pause_until
    return _local.reserve(_budgets(connection_id, token, local=True), max_wait, not_before)


def wait_for_slot(connection_id: int | None = None, *, token: bool = False) -> float:
    """Reserve a slot and sleep until it: the seconds waited. Busy when it is further away than
    the caller's class may wait (a long pause): the caller decides, a sync in its retry loop,
    which keeps its lease, a person with a 429."""
    wait = reserve(connection_id, token=token)
    if wait > 0:
        time.sleep(wait)
    return wait


def pause(seconds: float | None) -> float:
    """Zywave answered 429: every caller of the app waits `seconds` (its Retry-After, else
    DEFAULT_PAUSE, at most MAX_PAUSE). Returns the pause in force, in seconds."""
    global _local_pause_until
    length = min(max(seconds if seconds is not None else DEFAULT_PAUSE, 0.0), MAX_PAUSE)
    shared = _redis()
    if shared is not None:
        try:
            return int(shared.pause(keys=[PAUSE_KEY], args=[length * 1e6])) / 1e6
        except Exception as exc:  # noqa: BLE001
            _redis_failed(exc)
    _local_pause_until = max(_local_pause_until, time.monotonic() + length)
    return _local_pause_until - time.monotonic()


def paused_for() -> float:
    """Seconds left of the app-wide pause (0 when none, or when Redis cannot say)."""
    shared = _redis()
    if shared is None:
        return max(0.0, _local_pause_until - time.monotonic())
    try:
        left = shared.client.pttl(PAUSE_KEY)
    except Exception:  # noqa: BLE001
        return 0.0
    return max(0.0, int(left) / 1000)


def forget() -> None:
    """Drop every budget, pause and sync slot, shared and local (tests start from nothing)."""
    global _local_pause_until, _redis_down_until
    _local.tats.clear()
    _local_slots.clear()
    _local_pause_until = _redis_down_until = 0.0
    _priority.set(BACKGROUND)
    shared = _redis()
    if shared is not None:
        with contextlib.suppress(Exception):  # nothing shared to forget without Redis
            keys = list(shared.client.scan_iter(match=PREFIX + "*", count=1000))
            if keys:
                shared.client.delete(*keys)


# --- The cap on syncs running at once -----------------------------------------------------------

_local_slots: set[int] = set()


TAKEN, HELD = 1, 2


def take_sync_slot(connection_id: int, lease_seconds: float, renew_only: bool = False) -> int:
    """One of ZYWAVE_MAX_CONCURRENT_SYNCS slots for this connection's sync, held for
    `lease_seconds` unless renewed: TAKEN when taken now, HELD when the connection held it
    already (renewed: another message of a connection that is syncing), 0 when none is free.
    Only the taker releases it. TAKEN when no cap is set. Without Redis each process allows one
    sync at a time, which a worker process does anyway."""
    cap = settings.ZYWAVE_MAX_CONCURRENT_SYNCS
    if cap <= 0:
        return TAKEN
    shared = _redis()
    if shared is not None:
        lease = math.ceil(lease_seconds * 1000)
        try:
            return int(
                shared.slot(keys=[SYNCS_KEY], args=[connection_id, lease, cap, int(renew_only)])
            )
        except Exception as exc:  # noqa: BLE001
            _redis_failed(exc)
    with _state_lock:
        if connection_id in _local_slots:
            return HELD
        if _local_slots or renew_only:
            return 0
        _local_slots.add(connection_id)
        return TAKEN


def renew_sync_slot(connection_id: int, lease_seconds: float) -> None:
    """Keep a slot this connection holds for another `lease_seconds` (a long sync renews it with
    every page), by Redis's clock; nothing when it holds none (an interactive run takes none)."""
    take_sync_slot(connection_id, lease_seconds, renew_only=True)


def release_sync_slot(connection_id: int) -> None:
    _local_slots.discard(connection_id)
    if settings.ZYWAVE_MAX_CONCURRENT_SYNCS <= 0:
        return
    shared = _redis()
    if shared is not None:
        try:
            shared.client.zrem(SYNCS_KEY, connection_id)
        except Exception as exc:  # noqa: BLE001
            _redis_failed(exc)


def syncs_running() -> int | None:
    """How many sync slots are held now (None without Redis)."""
    shared = _redis()
    if shared is None:
        return None
    try:
        client = shared.client
        client.zremrangebyscore(SYNCS_KEY, "-inf", time.time() * 1000)
        return int(client.zcard(SYNCS_KEY))
    except Exception:  # noqa: BLE001
        return None


# --- Scheduling: each connection's phase within the interval -----------------------------------


def phase(connection_id: int, interval_seconds: float) -> float:
    """Where in every interval a connection's scheduled sync falls: spread evenly by a hash of
    its id (CRC32: neighbouring ids land far apart), the same on every machine and every beat."""
    return zlib.crc32(str(connection_id).encode()) / 2**32 * interval_seconds


# The least time between two scheduled runs of a connection, as a share of the interval.
MIN_GAP = 0.1


def latest_phase(connection_id: int, now: float, interval: float) -> float:
    """The connection's most recent phase time at or before `now` (epoch seconds)."""
    return now - (now - phase(connection_id, interval)) % interval


def is_due(connection_id: int, last_queued: float | None, now: float, interval: float) -> bool:
    """A connection (times in epoch seconds) is due once its phase has come round at least a
    tenth of an interval after its last run. Scheduled runs fall on the phase, so 10,000
    connections synced in one minute are spread over the next interval, not all due again 15
    minutes later; a run by hand just before the phase does not bring a scheduled one at once.
    Two runs are never more than 1.1 intervals apart (a run just before its phase waits for
    the next one)."""
    if last_queued is None:
        return True
    gap = interval * MIN_GAP
    if now - last_queued < gap:
        return False
    return latest_phase(connection_id, now, interval) >= last_queued + gap
