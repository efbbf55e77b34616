"""Benchmark of log redaction: what `portal.logs.redact` costs per KB of ordinary text and of
each pattern's worst-case input, at 8 KB and 64 KB.

    .venv/bin/python tests/bench/bench_logs.py [--rounds 10]

Measured side by side in one run: each input is redacted `--rounds` times and the least CPU
time kept. Linear patterns cost about the same per KB at 8 KB and at 64 KB, and the worst cases
about what ordinary text costs. A "before" row times the URL-credential pattern as it was
(matched from every `\\b`) on the 8 KB Host header alone, to show what the fix removed.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Callable

from common import REPO_ROOT  # noqa: F401 (puts the repository on sys.path)

KB = 1024
SIZES = (8 * KB, 64 * KB)
PLAIN = (
    "GET /dashboard/?page=2 200 host=portal.example.com user_id=3 "
    "Sync run 4 of connection 2 succeeded: 3 pages, 300 records\n"
)
# One worst case per pattern (the same shapes as tests/portal/test_logs.py), cut to size.
WORST_CASES = {
    "url: Host header a.a.a.": "a.",
    "url: a.a.a. then ://user: without @": "a.",  # the tail is added below
    "url: password of colons": ":",
    "url: a@a@a@": "a@",
    "bearer: every word": "Bearer ",
    "profile: no token": "Profile: ",
    "secret names: no separator": '"access_token" password\t',
    "token: no equals sign": "'token' token ",
    "encoded names: nested %25": "%26token%2525",
    "code: no equals sign": "?code&amp;code",
    "encoded code: nested %25": "%253Fcode%25",
    "encoded code: value of %25": "%25",
}
HEADS = {"url: password of colons": "redis://user", "encoded code: value of %25": "?code%3D"}
TAILS = {"url: a.a.a. then ://user: without @": "://user:" + "p" * 64}
# The URL-credential pattern as it was, for the "before" row.
OLD_URL_PATTERN = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/\s@]*:)[^@\s/]+(@)", re.IGNORECASE)


def sized(name: str, size: int) -> str:
    head, tail = HEADS.get(name, ""), TAILS.get(name, "")
    unit = WORST_CASES[name]
    body = size - len(head) - len(tail)
    return head + (unit * (body // len(unit) + 1))[:body] + tail


def best_of(rounds: int, work: Callable[[], object]) -> float:
    """The least CPU time of `rounds` runs: CPU, not wall time, so that other processes on a
    shared machine count as little as they can."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    # Settings as a fresh machine has them, so redact() also searches for our literal secrets.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from portal.logs import redact

    def per_kb(text: str) -> float:
        """Microseconds per KB of redact(text)."""
        return best_of(args.rounds, lambda: redact(text)) * 1e6 / (len(text) / KB)

    plain = {size: per_kb((PLAIN * (size // len(PLAIN) + 1))[:size]) for size in SIZES}
    rows = [("plain: an ordinary log line repeated", plain[8 * KB], plain[64 * KB])]
    for name in WORST_CASES:
        rows.append((name, per_kb(sized(name, 8 * KB)), per_kb(sized(name, 64 * KB))))
    host = sized("url: Host header a.a.a.", 8 * KB)
    old = best_of(1, lambda: OLD_URL_PATTERN.sub(r"\1***\2", host)) * 1e6 / 8

    print("\nLog redaction: redact() in µs per KB, and the ratio to plain text of the same size\n")
    print("| input | 8 KB µs/KB | ratio | 64 KB µs/KB | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for name, small, large in rows:
        print(
            f"| {name} | {small:.1f} | {small / plain[8 * KB]:.2f} "
            f"| {large:.1f} | {large / plain[64 * KB]:.2f} |"
        )
    print(
        f"| before: the old URL pattern alone, Host header a.a.a. | {old:,.0f} "
        f"| {old / plain[8 * KB]:,.0f} | (not run) | |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
