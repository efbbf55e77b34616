"""Reliability drills against real processes: `python tests/drills/run_drills.py` (`make drills`).

Starts the stack (tests/drills/stack.py: the sandbox, gunicorn, two Celery workers, beat when a
drill needs it, PostgreSQL database `portal_drills`, Redis DB 13, all on 127.0.0.1 and free
ports), runs each drill (tests/drills/tokens.py, sync.py, infrastructure.py, webhooks.py,
hooks.py, load.py, secrets_sweep.py, scan.py; helpers.py is what they share), writes the
figures to `var/drills/results.json` and renders `docs/reliability.md` from them. Last, the compose
drill (tests/drills/compose_drill.py: the image built and docker/compose.yaml run on an engine of
its own) adds its section; `DRILLS_ONLY` without `compose` leaves it out.

`--short` runs the small versions that `make test` runs through pytest
(tests/drills/test_drills_short.py), into another database and without touching the report.
Every loop is bounded in count and time; every process started is stopped, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
# Run as a script, Python puts this directory first on sys.path, where a module named like a
# standard one (sync.py, tokens.py) could shadow it: everything here is imported from the
# repository root instead (`tests.drills.sync`).
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.drills import (  # noqa: E402
    fleet,
    hooks,
    infrastructure,
    load,
    scan,
    secrets_sweep,
    sync,
    tokens,
    webhooks,
)
from tests.drills.helpers import FULL, SHORT, Result, Scale  # noqa: E402
from tests.drills.ssrf import drill_ssrf  # noqa: E402
from tests.drills.stack import Stack, redis_server, stop_process  # noqa: E402
from tests.sandboxserver import free_port  # noqa: E402

RESULTS = REPO_ROOT / "var" / "drills" / "results.json"
COMPOSE_RESULTS = RESULTS.with_name("compose-results.json")  # tests/drills/compose_drill.py
REPORT = REPO_ROOT / "docs" / "reliability.md"
START = time.monotonic()


def say(message: str) -> None:
    print(f"[drills {time.monotonic() - START:6.1f}s] {message}", flush=True)


def plan(scale: Scale) -> dict[str, Any]:
    """Which drill users each drill uses. Three end in re-authorization (the invalid_grant
    victim and the two lost refreshes), so no later drill uses them."""
    if scale.name == "full":
        return {
            "outage": 21,
            "rate": [31, 32, 33, 34, 35],
            "victim": 36,
            "others": [37, 38],
            "refresh": 39,
            "hang": [40, 41, 42],
            "lost": 43,
            "redis": [44, 45, 46, 47],
            "overdue": 48,
            "postgres": [17, 18, 19],
            "proxy": 52,
            "webhooks": 49,
            # Zywave's webhooks in: A (a 250-account book no later drill checks), B (whose
            # records A must not see; no connection needed)
            "hooks": [16, 50],
            "soak": list(range(101, 101 + scale.soak_connections)),
        }
    return {
        "outage": 4,
        "rate": [7, 8, 9],
        "victim": 10,
        "others": [4, 5],
        "refresh": 6,
        "hang": [7, 8],
        "lost": 11,
        "redis": [1, 2, 3, 5],
        "overdue": 9,
        "postgres": [1, 2, 3],
        "proxy": 12,
        "webhooks": 9,
        "hooks": [9, 10],
        "soak": [i for i in range(1, scale.soak_connections + 3) if i not in (10, 11)][
            : scale.soak_connections
        ],
    }


def run_all(
    scale: Scale, tmp: Path, database: str, redis_url: str | None = None
) -> tuple[list[dict[str, Any]], float]:
    stack = Stack(tmp, database, users=scale.users, big=scale.big, log=say, redis_url=redis_url)
    rows: list[dict[str, Any]] = []
    p = plan(scale)
    try:
        stack.start()
        setup = time.monotonic() - START
        say(f"stack up in {setup:.1f}s")
        steps: list[tuple[str, Callable[[], Result | tuple[Result, ...]]]] = [
            ("connect burst", lambda: load.drill_connect_burst(stack, scale)),
            ("token outage", lambda: tokens.drill_token_outage(stack, scale, p["outage"])),
            (
                "invalid_grant",
                lambda: tokens.drill_invalid_grant(stack, scale, p["victim"], p["others"]),
            ),
            ("429", lambda: sync.drill_rate_limit(stack, scale, p["rate"])),
            ("worker kills", lambda: sync.drill_worker_kills(stack, scale)),
            ("kill in refresh", lambda: tokens.drill_kill_in_refresh(stack, scale, p["refresh"])),
            ("hang", lambda: tokens.drill_hang(stack, scale, p["hang"], p["lost"])),
            ("lost answer", lambda: tokens.drill_lost_answer(stack, scale, p["proxy"])),
            ("partition", lambda: infrastructure.drill_partition(stack, scale)),
            ("ssrf", lambda: drill_ssrf(stack, scale)),
            (
                "redis restart",
                lambda: infrastructure.drill_redis_restart(stack, scale, p["redis"], p["overdue"]),
            ),
            (
                "postgres restart",
                lambda: infrastructure.drill_postgres_restart(stack, scale, p["postgres"]),
            ),
            ("webhooks", lambda: webhooks.drill_webhooks(stack, scale, p["webhooks"])),
            ("hooks", lambda: hooks.drill_hooks(stack, scale, *p["hooks"])),
            ("soak", lambda: load.drill_soak(stack, scale, p["soak"])),
            ("fleet", lambda: fleet.drill_fleet(stack, scale)),
            ("scanner", lambda: scan.drill_scanner(stack, scale)),
            ("secrets", lambda: secrets_sweep.drill_secrets(stack, scale)),
        ]
        only = os.environ.get("DRILLS_ONLY", "")
        for name, step in steps:
            if only and name != "connect burst" and name not in only.split(","):
                continue
            say(f"drill: {name}")
            began = time.monotonic()
            try:
                outcome = step()
                results = outcome if isinstance(outcome, tuple) else (outcome,)
            except Exception as exc:  # noqa: BLE001 (one broken drill must not hide the others)
                traceback.print_exc()
                failed = Result(name, "", "", error=f"{type(exc).__name__}: {exc}"[:500])
                failed.measured = f"the drill itself failed: {failed.error}"
                results = (failed,)
            for result in results:
                result.seconds = time.monotonic() - began
                rows.append(result.as_dict())
                say(f"  {result.verdict}: {result.measured}")
    finally:
        say("stopping everything")
        stack.stop()
    return rows, setup if rows else 0.0


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# The bad-input suite's figures: each is asserted by its test in `make test` (tests/security).
BAD_INPUT = [
    {
        "suite": "Open redirects",
        "where": "32 return URLs (27 off-site, 5 encoded) on login POST and GET, logout, admin "
        "login, the whole connect flow, the profile picker GET and POST; 400 Hypothesis inputs "
        "on `safe_next`: off-site redirects **0**",
        "verdict": "pass",
    },
    {
        "suite": "CSRF and safe methods",
        "where": "POST without a token to every route of the URL configuration (portal and an "
        "admin set), as staff and admin: not refused **0**; GET of every walked URL as "
        "anonymous, staff and admin: tables whose row count changed **0**",
        "verdict": "pass",
    },
    {
        "suite": "Object access",
        "where": "two people against every object-scoped URL and method (account page, list, "
        "search, dashboard, picker, sync, status, disconnect, admin as non-staff): cross-user "
        "successes **0**",
        "verdict": "pass",
    },
    {
        "suite": "OAuth state and iss",
        "where": "state tampered (8 ways), missing, replayed in another session, expired, "
        "callbacks replayed, codes swapped; `iss` mismatched (RFC 9207): connections created "
        "**0**, token requests from them **0**",
        "verdict": "pass",
    },
    {
        "suite": "Profile ids and header values",
        "where": "CR/LF, NUL, 10 kB, non-ASCII and path tricks, submitted and planted in "
        "Zywave's list: refused 15/15, headers injected upstream **0**",
        "verdict": "pass",
    },
    {
        "suite": "Zywave responses fuzzed",
        "where": "Hypothesis on the envelope parser, key lowering, the JSON reader and the row "
        "builders; 19 malformed pages in real syncs (incl. 10,000 records on a page of 100): "
        "unnamed errors **0**, 5xx **0**",
        "verdict": "pass",
    },
    {
        "suite": "Secrets",
        "where": "a connection's whole life (connect, profile, sync, refresh, disconnect); "
        "database (raw SQL), sessions, Redis, DEBUG logs, mail, pages and the admin CSV "
        "searched for every token issued and the client secret: hits **0**",
        "verdict": "pass",
    },
    {
        "suite": "Security headers",
        "where": "every HTML page of a staff and an admin walk with production settings: pages "
        "missing HSTS, CSP, X-Frame-Options, nosniff, Referrer-Policy or COOP **0**; the "
        "authenticated crawl by a web vulnerability scanner is the drill row *Web "
        "vulnerability scanner* above, with its figures",
        "verdict": "pass",
    },
]


# What the outside review found and what now prevents each (hardening issue); kept here so that
# a re-rendered docs/reliability.md keeps them.
REVIEW_FINDINGS = [
    "**One refresh per API call with short-lived tokens** (1,326 refreshes in 180 s with "
    "5-second tokens): the margin is now the smaller of 5 minutes and a quarter of the "
    "lifetime (`tokens.margin_for`); `make bench` measures 31 refreshes in 121 s, 1.00 per "
    "token generation (`tests/integrations/test_tokens.py`, `tests/bench/bench_short_tokens.py`).",
    "**Client authentication was body-only**: `ZYWAVE_TOKEN_AUTH_METHOD` "
    "(`client_secret_post` | `client_secret_basic`) drives the code exchange, the refresh and "
    "the revocation; the sandbox's `token_auth_method` refuses the other method "
    "(`tests/integrations/test_backends.py`).",
    "**The ID token was ignored**: with `openid` granted it is validated (RS256 signature "
    "from the JWKS, `iss`, `aud`, `exp`, the nonce sent, `sub` equal to userinfo's) before "
    "anything is stored; discovery is read on connect and refresh only, with the documented "
    "paths as fallback and a foreign `issuer` refused; every test process refuses any address "
    "outside loopback (`tests/integrations/test_backends.py`, `test_discovery.py`, "
    "`tests/netguard`).",
    "**Zywave answers were read whole, with no cap** (a 196 MB page grew a worker by 426 MB): "
    "bodies are streamed with `ZYWAVE_MAX_RESPONSE_BYTES` and a per-call deadline, so a server "
    "dripping bytes cannot hold a task (`tests/integrations/test_client.py`, against the "
    "sandbox's `endless` and `drip` faults).",
    "**Choosing a profile during a disconnect brought the ProfileToken back** (`save()` "
    "re-inserted the deleted row): the choice re-checks status and identity under the lock and "
    "stores with a conditional UPDATE; a re-fetched token is stored only for the profile still "
    "chosen (`tests/integrations/test_profiles.py`, the interleaving produced exactly).",
    "**A sync lease had no owner**, so after a slow page two workers advanced one run: every "
    "write is conditional on the claim's `lease_owner`; two real workers and a page held past "
    "the lease (`tests/integrations/test_sync.py`: 12 list requests without the fix where 6 "
    "pages need at most 9).",
    "**A reconnect left the old grant live at Zywave** for 30 days: it is revoked after the "
    "commit, recorded as `old_grant_revoked` (`tests/integrations/test_connect.py`).",
    "**The log redaction's URL pattern was quadratic** (0.7 s of CPU for an 8 KB Host "
    "header): every pattern is linear (possessive, anchored to a run's start); 1 MB of each "
    "worst case under a 10 s timeout (`tests/portal/test_logs.py`); cost per KB in `make bench`.",
    "**An account id with `/` turned the accounts page into a 500**, and ids were cut to 64 "
    "characters (two long ids collided): ids must match `client.SAFE_ID`; others are skipped "
    "and counted on the run, a run that skipped everything fails, and the URL converter "
    "matches exactly what is stored (`tests/integrations/test_mirror.py`, `test_sync.py`).",
    "**A list route answering 404 made every run fail**, so deletions were never removed: the "
    "resource is unavailable for that connection for a day, the others succeed and remove "
    "what Zywave deleted (`tests/integrations/test_sync.py`).",
    "**The authorization code reached the access log URL-encoded**, and `token=` was not "
    "masked: encoded, double-encoded and `&amp;` forms are masked (`tests/portal/test_logs.py`).",
    "**The `.env.example` placeholder `SECRET_KEY` was accepted**: every shipped placeholder "
    "(found with `git grep` by the test) and low-variety keys are refused with DEBUG off; the "
    "Dockerfile's build-only values work for `collectstatic` only "
    "(`tests/portal/test_settings.py`).",
    "**An unset DEBUG meant debug on in the image**: its entrypoint starts web, worker and "
    "beat only with `DEBUG=false` (or `PORTAL_ALLOW_DEBUG=true`) and runs `check --deploy` "
    "(`tests/portal/test_production.py`).",
    "**`/health/` waited 2 s on a Celery ping for every request while workers were down**: "
    "one shared probe, failures cached for a few seconds (`tests/portal/test_health.py`: 50 "
    "requests, 1 broadcast).",
    "**gunicorn trusted `X-Forwarded-*` from anyone**: `FORWARDED_ALLOW_IPS` defaults to "
    "127.0.0.1, ports publish on 127.0.0.1, a direct client's forged header changes nothing "
    "(tested through real gunicorn).",
    "**Disconnect left the social-auth link behind**, so nobody else could link that Zywave "
    "identity: disconnect removes it, and the admin can remove a stale one, audited "
    "(`tests/integrations/test_connect.py`, `test_admin.py`).",
    "**Behind a proxy the login lockout was per username** (anyone could lock anyone out): "
    "django-axes keys on the trusted proxy's client address, with a per-username ceiling far "
    "above the per-pair limit (tested through real gunicorn).",
    "**The profile picker's GET changed things** (listed profiles, chose one, queued a "
    "sync): the OAuth callback does that now, and GET only reads "
    "(`tests/integrations/test_profiles.py`).",
    "**A worker with a wrong encryption key started anyway** (Celery swallows exceptions from "
    "`worker_init` handlers): it exits through SystemExit (`tests/portal/test_startup.py`).",
    "**`/\\n//0` passed the same-site redirect check**: any control character, space or "
    "backslash is refused (`tests/security/test_redirects.py`).",
]


def render(data: dict[str, Any]) -> str:
    rows = data["drills"]
    lines = [
        "# Reliability: what the portal survives, in figures",
        "",
        "Generated by `make drills` (`tests/drills/run_drills.py`) from "
        "`var/drills/results.json`; do not edit by hand. Every row is a drill run against real "
        "processes on 127.0.0.1: the portal under gunicorn (2 workers × 8 threads, `DEBUG` off), "
        "two Celery worker processes (prefork, 2 children each), beat where the drill says so, "
        "a private PostgreSQL cluster, Redis, and the sandbox (the emulated Zywave, gunicorn) "
        "with injected faults. "
        "Figures come from the portal's database, the sandbox's counters, request times "
        "recorded by the drill runner, and /proc; the verdict is computed from them.",
        "",
        f"Run: {data['finished']} on {data['machine']}, {data['runtime_seconds']:.0f} s in all "
        f"(stack start {data['setup_seconds']:.0f} s). Settings for the drills: "
        f"{', '.join(f'`{k}={v}`' for k, v in data['settings'].items())}.",
        "",
        "| drill | injected | expected | measured | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {cell(row['drill'])} | {cell(row['injected'])} | {cell(row['expected'])} | "
            f"{cell(row['measured'])} | {cell(row['verdict'])} |"
        )
    if COMPOSE_RESULTS.exists():
        from tests.drills.compose_drill import render_section

        lines += ["", render_section(json.loads(COMPOSE_RESULTS.read_text())).rstrip("\n")]
    lines += [
        "",
        "## Bad input",
        "",
        "Each row is a test in `tests/security/` that asserts its figure, so `make test` fails if "
        "one is ever above 0.",
        "",
        "| suite | injected, and what was measured | verdict |",
        "| --- | --- | --- |",
    ]
    bad_input = data.get("bad_input") or BAD_INPUT
    for row in bad_input:
        lines.append(f"| {cell(row['suite'])} | {cell(row['where'])} | {cell(row['verdict'])} |")
    lines += [
        "",
        "## Findings while building the drills",
        "",
        "Observed in earlier runs of these drills and traced in the logs; the table above is "
        "the latest run, whatever it shows.",
        "",
        "- **A refresh whose worker dies after Zywave rotated the token ends the grant.** When "
        "the drill stopped the workers with SIGTERM to every process of the group (what "
        "systemd's `KillMode=control-group` does; `docker stop` signals only the main process), "
        "pool children died inside `refresh_connection` after the sandbox had rotated the "
        "refresh token and before the portal committed it. `reject_on_worker_lost` redelivered "
        "the task, which presented the consumed token: `invalid_grant`, and 2 healthy "
        "connections ended in re-authorization. One-time refresh tokens make a lost answer "
        "unrecoverable (the hanging-token row measures the same with a timeout); workers should "
        "be stopped warm (SIGTERM to the main process only), as the drills now do.",
        "- **Fixed: beat's token upkeep refreshed every connection on every run** when Zywave's "
        "access tokens live one hour: it refreshed tokens expiring within the next hour, which "
        "a fresh one-hour token always is (about six refreshes per connection per hour instead "
        "of one). It now refreshes a token only when it would fall under the 5-minute margin "
        "before the next upkeep run (`integrations.tasks.upkeep_horizon`).",
        "- **Fixed: a run queued for a connection that could no longer sync stayed queued**, "
        "re-sent by the reconciler every 5 minutes for ever. `claim` now ends such runs "
        "(`re-authorization needed` / `no profile chosen`).",
        "- **Fixed: gunicorn's `max_requests` recycling cut keep-alive requests** (82 of 18,649 "
        "pages got a reset instead of an answer while workers were recycled; a proxy would have "
        "shown 502s). Recycling is off (`portal/gunicorn.conf.py`).",
        "- **Fixed: a webhook receiver that was down got a request per new event, not per "
        "retry step.** Due deliveries were sent by `next_attempt_at`, so when a pause ended an "
        "event written during it went before the retry that had paused the subscription, "
        "failed, and paused it for the schedule's first step again: with events arriving "
        "faster than that step the schedule never advanced, and events reached the receiver "
        "out of order (the short outage drill: 7 requests in 10 s where the schedule allows 4). "
        "The oldest (by sequence) goes first now "
        "(`tests/integrations/test_webhook_retry_order.py`).",
        "- **Fixed: an event written while Redis was down failed its writer.** The drain task "
        "was sent with `delay_on_commit`, which raised after the caller's commit: a sync page, a "
        "disconnect or the OAuth pipeline failed with its change made, and the caller's later "
        "on-commit callbacks were skipped (the Redis restart drill: 3 of 3 emits raised). A "
        "refused send is logged now and the reconciler sends the event "
        "(`tests/integrations/test_webhook_broker_down.py`).",
        "- **Fixed: a deletion notified by Zywave could stop its record type's notifications for "
        "a day.** After a 404 for one record the portal probed one live record of the mirror to "
        "tell a deleted record from a missing route for one record; when that record had been "
        "deleted in the same batch (an account and its contacts, two accounts together) the "
        "route was taken for missing, every notification of that type queued a sync for a day "
        "and the deleted records stayed live, an incremental sync not seeing deletions (the "
        "short delivery-faults drill: 7 sync runs where none may run, 3 records wrong). A route "
        "that answered with a record is remembered, and three live records are probed "
        "(`tests/integrations/test_hooks_probe.py`).",
        "- **Fixed: a record's fetch that met PostgreSQL down was not tried again.** "
        "`refetch_record` retried Zywave's 429s, 5xx and timeouts only, so the fetches a worker "
        "ran while the database restarted ended in OperationalError, and their notifications, "
        "answered 202 to Zywave, waited for the next poll (the short PostgreSQL restart drill: "
        "3 of 28 left queued). It retries with backoff now "
        "(`tests/integrations/test_hooks_database_down.py`, a real worker behind a proxy that "
        "is cut).",
        "",
        "## Findings of the outside review and the independent identity server",
        "",
        "Defects found by an outside review and by running the portal against a strict OpenID "
        "Connect server and a PascalCase, bare-array, OData-envelope API. Each is fixed, and "
        "the test named after it fails without the fix.",
        "",
        *[f"- {finding}" for finding in REVIEW_FINDINGS],
        "",
        "## How to read the figures",
        "",
        "- *Syncs lost*: sync runs queued during the drill that did not end `succeeded` once "
        "the drill drained (the reconciler runs every 2 s in the fault drills, beat in the "
        "soak). *Duplicates*: (connection, Zywave id) pairs held more than once in the mirror; "
        "each mirror is also compared with the sandbox's book for that person.",
        "- *Refreshes per token generation*: refresh requests Zywave received divided by the "
        "distinct refresh tokens the portal replaced (each `refreshed` event names the token it "
        "used). 1.00 means every expiring token was refreshed once, never twice, whichever of "
        "beat's upkeep and the syncs needed it first.",
        "- *Another user's data*: every drill user has their own Zywave agency whose account "
        "and contact names carry their number; a page showing another number counts.",
        "- Connect flows start from a logged-in session (created server-side, as `force_login` "
        "does) so that the load measures connecting rather than password hashing.",
        "- *Webhook events lost*: a subscription's deliveries (sequence 1..N) that its "
        "receiver never answered 200 to, counted at the receiver; *sequence complete*: the "
        "deliveries' numbers are exactly 1..N; a duplicate is a second request for one sequence "
        "number, allowed only with the same webhook-id. Every request's signature is checked "
        "with svix. The webhook drills run on workers of their own (a Redis of their own, "
        + ", ".join(f"`{k}={v}`" for k, v in webhooks.WEBHOOK_SETTINGS.items())
        + "), `reconcile_webhooks` called by the drill every "
        f"{webhooks.WEBHOOK_SETTINGS['WEBHOOKS_RECONCILE_SECONDS']} s as beat would.",
        "- *Zywave's webhooks in*: the sandbox delivers to a gunicorn of the portal of its own "
        "on a Redis of its own (the one the Redis row restarts), with two workers on it "
        "consuming every queue (`refetch` included); its retry schedule "
        f"`webhook_retry_schedule={hooks.SANDBOX_SETTINGS['webhook_retry_schedule']}` s. "
        "*Mirror exact*: person A's accounts and contacts in the mirror are the sandbox's book, "
        "read from its database (ids, names, archived flags), and every other row of A's is a "
        "tombstone; *no sync meanwhile*: no sync run queued for A between the drill's start "
        "and the comparison, so only the receiver and its fetches changed the mirror.",
        "- *SSRF*: everything that could send (a Celery worker, a gunicorn serving the API, the "
        "process calling the webhook functions, their Redis and the receivers) runs in a network "
        "namespace of its own (`unshare --net`) with only loopback up and no route out; "
        "93.184.215.14 (a global address, so one the portal accepts) exists only on that "
        "loopback, for the public receiver. *Connects* are every `connect` of every process in "
        "it, recorded by tests/netguard (`NETGUARD_LOG`) before the guard lets it through or "
        "refuses it; names resolve from its stub (`NETGUARD_HOSTS`), never DNS.",
        "- The short versions of these drills run in `make test` "
        "(`tests/drills/test_drills_short.py`) and assert the same correctness figures.",
        "",
    ]
    return "\n".join(lines)


def interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the small versions (make test)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the figures")
    parser.add_argument("--no-report", action="store_true", help="leave docs/reliability.md")
    parser.add_argument(
        "--render", action="store_true", help="only re-render the report from the results"
    )
    args = parser.parse_args()
    if args.render:
        REPORT.write_text(render(json.loads((args.out or RESULTS).read_text())))
        return 0
    scale = SHORT if args.short else FULL
    out = args.out or (RESULTS.with_name("results-short.json") if args.short else RESULTS)
    database = "portal_drills_short" if args.short else "portal_drills"
    tmp = Path(tempfile.mkdtemp(prefix=f"portal-drills-{scale.name}-"))
    say(f"{scale.name} drills; logs under {tmp / 'logs'}")
    # SIGTERM (a CI timeout) unwinds like Ctrl-C, so that every process started is stopped.
    signal.signal(signal.SIGTERM, interrupted)
    # The short run (make test) brings its own Redis, so that it never takes the tasks of a
    # full run (Redis DB 13) or of anything else going on at the same time.
    own_redis = None
    redis_url = None
    if args.short:
        port = free_port()
        own_redis = redis_server(port, tmp / "redis-main")
        redis_url = f"redis://127.0.0.1:{port}/0"
    try:
        rows, setup = run_all(scale, tmp, database, redis_url)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        print(f"DRILLS FAILED to run: {exc}; logs: {tmp / 'logs'}", file=sys.stderr)
        return 2
    finally:
        if own_redis is not None:
            stop_process(own_redis)
    from tests.drills.stack import DRILL_SETTINGS

    data = {
        "scale": scale.name,
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "runtime_seconds": round(time.monotonic() - START, 1),
        "setup_seconds": round(setup, 1),
        "settings": DRILL_SETTINGS,
        "drills": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=str))
    if not args.short and not args.no_report:
        REPORT.write_text(render(data))
        say(f"wrote {REPORT.relative_to(REPO_ROOT)}")
    failed = [r["drill"] for r in rows if r["verdict"] != "pass"]
    only = os.environ.get("DRILLS_ONLY", "")
    if not args.short and (not only or "compose" in only.split(",")):
        # The compose drill last: its engine and images would slow the drills above. It
        # writes its own section of the report (and render() keeps it there).
        say("drill: compose (tests/drills/compose_drill.py)")
        compose = subprocess.run(
            [sys.executable, str(REPO_ROOT / "tests" / "drills" / "compose_drill.py")]
            + (["--no-report"] if args.no_report else []),
            cwd=REPO_ROOT,
            check=False,
        )
        if compose.returncode != 0:
            failed.append("compose")
    say(f"done in {time.monotonic() - START:.1f}s; not passing: {failed or 'none'}")
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        say(f"logs kept under {tmp / 'logs'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
