"""The sandbox's app-wide rate limit: what Zywave does to a registered app that calls too fast.

One budget for every API request of the sandbox, across all of gunicorn's worker processes:
`rate_limit` requests a second (0: no limit, the default) with bursts of `rate_limit_burst`
(0: one second's worth). Over it, the API answers 429 with `Retry-After`.

The state is a GCRA (the generic cell rate algorithm: a token bucket kept as one timestamp, the
"theoretical arrival time" of the next request) in a 48-byte file under the sandbox's var dir,
read and written under an exclusive `fcntl` lock. The processes share nothing else but the
SQLite database, and a database write per request would be the limiter's own bottleneck; the
lock and the 48 bytes cost well under 0.1 ms. The file also holds the limit itself (the control
API writes it there when it stores the runtime setting), so a request reads nothing else, and the
count of requests allowed and refused while a limit was on, which the control API reports.
"""

from __future__ import annotations

import fcntl
import math
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

# rate (requests/s), burst (requests), tat (epoch seconds), allowed, limited, spare
LAYOUT = struct.Struct("<dddQQQ")


@dataclass
class State:
    rate: float = 0.0
    burst: int = 0
    tat: float = 0.0
    allowed: int = 0
    limited: int = 0

    def effective_burst(self) -> int:
        """`burst`, or one second's worth of requests when it is 0 (at least one)."""
        return self.burst if self.burst > 0 else max(1, math.ceil(self.rate))

    def as_json(self) -> dict[str, Any]:
        return {
            "rate_limit": self.rate,
            "rate_limit_burst": self.effective_burst() if self.rate else self.burst,
            "allowed": self.allowed,
            "limited": self.limited,
        }


def state_path() -> Path:
    return Path(settings.VAR_DIR) / "rate-limit.state"


def defaults() -> State:
    return State(
        rate=float(settings.SANDBOX_DEFAULTS["rate_limit"]),  # type: ignore[arg-type]
        burst=int(settings.SANDBOX_DEFAULTS["rate_limit_burst"]),  # type: ignore[call-overload]
    )


@contextmanager
def locked() -> Iterator[tuple[int, State]]:
    """The state file open and exclusively locked, with its contents (the defaults when it is
    new). The file is only ever written in place, never replaced: a process that has it open
    always locks the file the others lock."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, LAYOUT.size, 0)
        if len(raw) == LAYOUT.size:
            rate, burst, tat, allowed, limited, _spare = LAYOUT.unpack(raw)
            state = State(rate, int(burst), tat, allowed, limited)
        else:
            state = defaults()
        yield fd, state
    finally:
        os.close(fd)  # releases the lock


def write(fd: int, state: State) -> None:
    os.pwrite(
        fd,
        LAYOUT.pack(state.rate, float(state.burst), state.tat, state.allowed, state.limited, 0),
        0,
    )


def admit(now: float | None = None) -> int | None:
    """Take one request from the budget: None when it may go on, else the seconds (whole,
    rounded up, at least 1) the caller is told to wait in `Retry-After`.

    GCRA: each request moves the theoretical arrival time `tat` one emission interval
    (1 / rate) on from max(tat, now); a request that would push it more than `burst`
    intervals ahead of now is refused and moves nothing. Refused requests do not use the
    budget, so a client that keeps knocking is not punished beyond the limit itself."""
    path = state_path()
    if not path.exists() and not settings.SANDBOX_DEFAULTS["rate_limit"]:
        return None  # no limit was ever set: not even a lock
    with locked() as (fd, state):
        if state.rate <= 0:
            return None
        now = time.time() if now is None else now
        interval = 1.0 / state.rate
        tat = max(state.tat, now) + interval
        ahead = tat - now - state.effective_burst() * interval
        if ahead > 1e-9:
            state.limited += 1
            write(fd, state)
            return max(1, math.ceil(ahead))
        state.tat = tat
        state.allowed += 1
        write(fd, state)
        return None


def configure(rate: float, burst: int) -> State:
    """Set the limit (from the runtime settings): the bucket starts full, counts are kept."""
    if not state_path().exists() and (rate, burst) == (defaults().rate, defaults().burst):
        return defaults()  # nothing to remember: requests keep skipping the lock
    with locked() as (fd, state):
        if (state.rate, state.burst) != (rate, burst):
            state.rate, state.burst, state.tat = rate, burst, 0.0
            write(fd, state)
        return state


def reset_counts() -> State:
    if not state_path().exists():
        return defaults()
    with locked() as (fd, state):
        state.allowed = state.limited = 0
        write(fd, state)
        return state


def current() -> State:
    if not state_path().exists():
        return defaults()
    with locked() as (_fd, state):
        return state
