"""The scanner drill: a bounded, authenticated crawl of the portal by a web vulnerability scanner.

wapiti (pinned in `scanner-requirements.txt`) runs from a venv of its own under
`var/scanner-venv`, which the drill creates on first use (CI starts from a clean clone), and
crawls and attacks the stack's portal as a logged-in staff member with production settings.

Bounded in every direction: the portal's own origin only (`--scope folder` on its URL, so the
sandbox on another port of 127.0.0.1 is out), a scan time, a time per attack module, links per
page, pages per directory, depth, and a subprocess timeout. The scan must leave the stack as it
found it for the drills after it, so:

- it logs in as a drill user that no later drill uses (`SCAN_USER`), with the right password
  (django-axes counts failed logins per username and address; the brute-force module is off);
- the scanner submits every form it finds, with default values, while crawling: the endpoints
  that change state (log out, disconnect, sync, choose a profile, connect) are excluded, so the
  session survives and no token, profile or run changes under the later drills;
- the session cookie goes in a `Cookie` header on every request (`-C`), which wins over the
  scanner's cookie jar: Django's cookies are `Secure`, which a cookie jar never sends over the
  plain HTTP of 127.0.0.1, and a jar would drop the session at the first `Set-Cookie`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.drills.helpers import Result, Scale, models
from tests.drills.stack import REPO_ROOT, DrillError, Stack
from tests.smoke.run_smoke import Browser, csrf_from

REQUIREMENTS = Path(__file__).with_name("scanner-requirements.txt")
VENV = REPO_ROOT / "var" / "scanner-venv"
MARKER = VENV / ".installed"

# Modules that fit a server-rendered Django app behind a login: injections (xss, stored xss,
# sql, exec, file, crlf), open redirects, forms without CSRF protection, unusual methods, and
# the passive checks of headers, cookies and the CSP. Left out: brute_login_form (it would lock
# users out), the path brute-forcers (buster, backup, nikto: minutes of 404s), timesql (seconds
# per request), ssrf, xxe and log4shell (they need the scanner's public callback server, which
# is unreachable here), ssl and https_redirect (no TLS on 127.0.0.1: TLS is the proxy's job in
# production), and the fingerprinting and CMS modules (nothing to learn; they download data).
MODULES = [
    "xss",
    "permanentxss",
    "sql",
    "exec",
    "file",
    "crlf",
    "redirect",
    "csrf",
    "methods",
    "http_headers",
    "cookieflags",
    "csp",
]

LEVELS = {0: "info", 1: "low", 2: "medium", 3: "high", 4: "critical"}

# Pages only a logged-in person with a synced connection sees: the crawl counts as
# authenticated only if it reached them (the list and at least one account's page).
AUTHENTICATED_PAGES = ["/zywave/accounts/", "/zywave/sync/status/"]
ACCOUNT_PAGE = re.compile(r"^/zywave/accounts/[^/]+/$")

# Pages no link leads a non-staff person to: the sync status (fetched by the dashboard's
# script), the login pages (the admin's answers a non-staff session with its login form) and
# /health/.
START_PATHS = ["/zywave/sync/status/", "/admin/", "/login/", "/health/"]

# Low findings understood, by wapiti category: why each is not a weakness of the portal.
# Anything else at low is listed as unexplained (the drill still passes: low is the bar).
EXPLAINED_LOWS = {
    "HttpOnly Flag cookie": "only `csrftoken`: Django's CSRF cookie is readable by design "
    "(CSRF_COOKIE_HTTPONLY off; the same token is in every form, so HttpOnly would protect "
    "nothing); the session cookie is HttpOnly",
    # Plain HTTP on 127.0.0.1: production runs behind a TLS proxy that sets X-Forwarded-Proto
    # (SECURE_PROXY_SSL_HEADER), and SecurityMiddleware sends HSTS only on requests it sees as
    # HTTPS, as RFC 6797 asks. wapiti 3.2.3 checks HSTS only on https URLs, so it is not
    # reported here; should a later version report it, this is why.
    "HTTP Strict Transport Security (HSTS)": "an artefact of the drill's plain HTTP on "
    "127.0.0.1: HSTS is sent only over HTTPS (RFC 6797 §7.2), which production has at its "
    "proxy",
    "Unencrypted Channels": "an artefact of the drill's plain HTTP on 127.0.0.1; production "
    "is HTTPS-only (SECURE_SSL_REDIRECT, HSTS)",
}
# Cookie findings count as explained only for the cookie the explanation names.
COOKIE_CATEGORIES = {"HttpOnly Flag cookie"}


@dataclass
class Budget:
    scan_seconds: int
    attack_seconds: int
    links_per_page: int
    files_per_dir: int
    depth: int
    min_urls: int


# wapiti's --max-scan-time bounds the crawl only; each attack module then gets up to
# --max-attack-time, so the worst case is crawl + modules x attack (short 51 s, full 180 s).
BUDGETS = {
    "short": Budget(
        scan_seconds=15, attack_seconds=3, links_per_page=20, files_per_dir=6, depth=4, min_urls=15
    ),
    "full": Budget(
        scan_seconds=60,
        attack_seconds=10,
        links_per_page=60,
        files_per_dir=25,
        depth=6,
        min_urls=25,
    ),
}

# A drill user the connect burst connected and whom no drill leaves disconnected or in
# re-authorization (see run_drills.plan: short 9 is only in the 429 drill and synced as the
# Redis drill's overdue one, full 100 in none);
# the scanner runs last, so its session and its requests are in no other drill's figures.
SCAN_USER = {"short": 9, "full": 100}


def without_network_guard() -> dict[str, str]:
    """The environment minus tests/netguard (which refuses every address outside loopback):
    installing the scanner is not a test, and the package registry is the one outside host
    this project may reach. Only pip runs this way; wapiti itself runs guarded."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and "netguard" not in p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def install_scanner() -> tuple[Path, float]:
    """The wapiti executable, installed into its own venv unless the marker says the pinned
    version is already there. Returns (path, seconds spent installing)."""
    wanted = REQUIREMENTS.read_text()
    wapiti = VENV / "bin" / "wapiti"
    if wapiti.exists() and MARKER.exists() and MARKER.read_text() == wanted:
        return wapiti, 0.0
    began = time.monotonic()
    shutil.rmtree(VENV, ignore_errors=True)
    # The same interpreter as the portal's venv (venv resolves it to its base Python).
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
    pip = subprocess.run(
        [
            str(VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=without_network_guard(),
    )
    if pip.returncode != 0 or not wapiti.exists():
        raise DrillError(f"installing the scanner failed: {pip.stdout[-1500:]}{pip.stderr[-1500:]}")
    MARKER.write_text(wanted)
    return wapiti, time.monotonic() - began


def scanner_version(wapiti: Path) -> str:
    done = subprocess.run(
        [str(wapiti), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "unknown"


def log_in(portal: str, username: str, password: str) -> Browser:
    """A browser logged in through the login form, as a person does."""
    browser = Browser()
    page = browser.get(f"{portal}/login/", timeout=30)
    answer = browser.post(
        f"{portal}/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": csrf_from(page.text),
        },
        timeout=30,
    )
    if answer.status_code != 200 or answer.url.rstrip("/") != portal:
        raise DrillError(f"logging in as {username} landed on {answer.url} ({answer.status_code})")
    return browser


def still_logged_in(browser: Browser, portal: str) -> bool:
    page = browser.get(f"{portal}/zywave/accounts/", allow_redirects=False, timeout=30)
    return page.status_code == 200


def wapiti_command(
    wapiti: Path, portal: str, cookie: str, budget: Budget, work: Path, report: Path
) -> list[str]:
    excluded = [
        "/logout/*",
        "/zywave/disconnect/*",
        "/zywave/sync/",  # POST queues a sync (its status page stays in)
        "/zywave/profiles/*",  # POST changes the profile and replaces the mirror
        "/oauth/*",  # connecting leaves the portal for Zywave
    ]
    command = [
        str(wapiti),
        "--url",
        f"{portal}/",
        "--scope",
        "folder",
        "--module",
        ",".join(MODULES),
        "--cookie-value",
        cookie,
        "--depth",
        str(budget.depth),
        "--max-links-per-page",
        str(budget.links_per_page),
        "--max-files-per-dir",
        str(budget.files_per_dir),
        "--max-scan-time",
        str(budget.scan_seconds),
        "--max-attack-time",
        str(budget.attack_seconds),
        "--tasks",
        "4",  # gunicorn has 2 workers x 8 threads on a 2-core machine shared with the drills
        "--timeout",
        "10",
        "--flush-session",
        "--store-session",
        str(work / "session"),
        "--store-config",
        str(work / "config"),
        "--no-bugreport",
        "--format",
        "json",
        "--detailed-report",
        "1",  # lists the crawled pages in the report
        "--output",
        str(report),
        "--verbose",
        "1",
    ]
    for path in excluded:
        command += ["--exclude", f"{portal}{path}"]
    for path in START_PATHS:
        command += ["--start", f"{portal}{path}"]
    return command


def redact(command: list[str]) -> str:
    shown = [
        "<session cookie>" if i and command[i - 1] == "--cookie-value" else a
        for i, a in enumerate(command)
    ]
    shown[0] = "wapiti"
    return " ".join(shown)


def findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every vulnerability and anomaly of the report, flattened, with its severity name."""
    found = []
    for kind in ("vulnerabilities", "anomalies"):
        for category, items in (report.get(kind) or {}).items():
            for item in items:
                found.append(
                    {
                        "kind": "anomaly" if kind == "anomalies" else "vulnerability",
                        "category": category,
                        "severity": LEVELS.get(int(item.get("level", 0)), "unknown"),
                        "method": item.get("method"),
                        "path": item.get("path"),
                        "parameter": item.get("parameter"),
                        "info": str(item.get("info", ""))[:200],
                        "module": item.get("module"),
                    }
                )
    return found


def locked_users() -> int:
    """Drill users django-axes would refuse now (failures at or above the limit)."""
    from axes.models import AccessAttempt
    from django.conf import settings

    return int(
        AccessAttempt.objects.filter(
            username__startswith="staff", failures_since_start__gte=settings.AXES_FAILURE_LIMIT
        ).count()
    )


def access_log(web_log: Path, offset: int) -> tuple[int, int]:
    """(requests, 5xx answers) in gunicorn's access log after `offset` bytes."""
    requests_seen = server_errors = 0
    with open(web_log, "rb") as log:
        log.seek(offset)
        for line in log:
            if b'"gunicorn.access"' not in line:
                continue
            requests_seen += 1
            if re.search(rb'HTTP/[0-9.]+\\?" 5\d\d ', line):
                server_errors += 1
    return requests_seen, server_errors


def drill_scanner(stack: Stack, scale: Scale) -> Result:
    """Install the scanner if needed, log in, scan once within the budget, read the report."""
    from django.contrib.auth.models import User

    budget = BUDGETS[scale.name]
    username = f"staff{SCAN_USER[scale.name]:03d}"
    result = Result(
        "Web vulnerability scanner",
        f"wapiti crawls and attacks the portal (production settings) as {username}, logged in "
        f"through /login/, connected and synced; modules {', '.join(MODULES)}; scope the "
        f"portal's origin, crawl {budget.scan_seconds} s, {budget.attack_seconds} s per module, "
        "state-changing endpoints excluded",
        f"findings above low 0, 5xx 0, at least {budget.min_urls} URLs crawled including pages "
        "only a logged-in person sees, session and connection intact, no drill user locked out",
    )
    wapiti, install_seconds = install_scanner()
    version = scanner_version(wapiti)
    usable = models().Connection.objects.filter(
        status="active", chosen_profile__isnull=False, user__username__startswith="staff"
    )
    # Should an earlier drill ever end this user's grant, any connected drill user will do.
    conn = usable.filter(user__username=username).first() or usable.order_by("-pk").first()
    if conn is None:
        raise DrillError("no drill user is connected with a profile: nothing to log in as")
    username = conn.user.username
    # The stack creates no admin; if one is ever added, scan its pages too (see the report).
    admins = list(User.objects.filter(is_staff=True).values_list("username", flat=True))
    browser = log_in(stack.portal, username, stack.staff_password)
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)

    work = stack.tmp / "scanner"
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / "report.json"
    command = wapiti_command(wapiti, stack.portal, cookie, budget, work, report_path)
    web_log = stack.logs / "web.log"
    offset = web_log.stat().st_size
    began = time.monotonic()
    with open(stack.logs / "scanner.log", "wb") as log:
        # Once more when wapiti itself crashed before writing its report: it keeps its crawl
        # in a SQLite file of its own and, on a loaded machine, has died on that file's lock
        # ("database is locked", seen in CI). The portal's answers are not in question then;
        # scanner.log says the scan was run again.
        for attempt in (1, 2):
            scan = subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=budget.scan_seconds + len(MODULES) * budget.attack_seconds + 60,
                env={**os.environ, "HOME": str(work)},
                check=False,
            )
            if report_path.exists() or attempt == 2:
                break
            log.write(b"\n--- wapiti wrote no report: running it once more ---\n")
            log.flush()
            offset = web_log.stat().st_size
            began = time.monotonic()
    scan_seconds = time.monotonic() - began
    if not report_path.exists():
        raise DrillError(f"wapiti wrote no report (exit {scan.returncode}); see scanner.log")
    sent, server_errors = access_log(web_log, offset)
    report = json.loads(report_path.read_text())
    infos = report.get("infos", {})
    paths = {urlsplit(page["request"]["url"]).path for page in infos.get("crawled_pages", [])}
    found = findings(report)
    by_severity = dict.fromkeys(LEVELS.values(), 0)
    lows: dict[str, int] = {}
    for item in found:
        by_severity[item["severity"]] = by_severity.get(item["severity"], 0) + 1
        if item["severity"] == "low":
            category = item["category"]
            if category in COOKIE_CATEGORIES and not item["info"].endswith(": csrftoken"):
                category += f" ({item['info']})"  # another cookie: not the explained case
            lows[category] = lows.get(category, 0) + 1
    above_low = [x for x in found if x["severity"] not in ("info", "low")]
    conn.refresh_from_db()
    f = result.figures
    f.update(
        scanner=f"wapiti {version}",
        command=redact(command),
        install_seconds=round(install_seconds, 1),
        scan_seconds=round(scan_seconds, 1),
        exit_code=scan.returncode,
        urls_crawled=int(infos.get("crawled_pages_nbr", len(paths))),
        requests=sent,
        server_errors=server_errors,
        authenticated_pages=[p for p in AUTHENTICATED_PAGES if p in paths],
        account_pages=sum(1 for p in paths if ACCOUNT_PAGE.match(p)),
        admin_pages=sorted(p for p in paths if p.startswith("/admin/")),
        admins_in_stack=admins,
        findings_by_severity=by_severity,
        above_low=above_low,
        low_by_category=lows,
        lows_explained={k: EXPLAINED_LOWS[k] for k in lows if k in EXPLAINED_LOWS},
        lows_unexplained=sorted(k for k in lows if k not in EXPLAINED_LOWS),
        session_survived=still_logged_in(browser, stack.portal),
        connection_status=conn.status,
        locked_drill_users=locked_users(),
    )
    result.checks = {
        "scanner ran": scan.returncode == 0,
        "no finding above low": not above_low,
        "no 5xx": server_errors == 0,
        "enough URLs crawled": f["urls_crawled"] >= budget.min_urls,
        "authenticated pages crawled": f["authenticated_pages"] == AUTHENTICATED_PAGES
        and f["account_pages"] > 0,
        "session survived": f["session_survived"],
        "connection intact": conn.status == "active",
        "no drill user locked out": f["locked_drill_users"] == 0,
    }
    low_text = "; ".join(
        f"{n} {k} ({EXPLAINED_LOWS.get(k, 'not explained: see the figures')})"
        for k, n in lows.items()
    )
    result.measured = (
        f"wapiti {version}: {f['urls_crawled']} URLs crawled as {username} (incl. "
        f"{', '.join(f['authenticated_pages']) or 'no authenticated page'} and "
        f"{f['account_pages']} account pages), {sent} requests, {server_errors} 5xx, in "
        f"{scan_seconds:.0f} s; findings critical {by_severity['critical']}, high "
        f"{by_severity['high']}, medium {by_severity['medium']}, low {by_severity['low']}"
        f"{': ' + low_text if low_text else ''}"
    )
    if not admins:
        result.measured += "; the stack has no admin, so no admin session was scanned"
    return result
