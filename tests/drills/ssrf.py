"""The SSRF drill (issue 18): webhook endpoints at private addresses, with production settings.

Subscriptions through the API and through `integrations.webhooks` to 127.0.0.1, 10.0.0.1,
169.254.169.254, [::1], `localhost` and a name resolving to 10.0.0.1 are refused; deliveries
to the same targets (subscriptions planted in the database, as one made before a DNS change
would be, and a name that resolved to a public address when it was subscribed and resolves to
127.0.0.1 when the worker delivers: DNS rebinding) are refused at the worker's re-check; a
public endpoint answering a redirect to 10.0.0.1, 169.254.169.254 or 127.0.0.1 is not followed.
Requests attempted to any of those addresses: 0.

Everything that could send runs inside a private network namespace (`unshare --net`, as root:
the partition drill needs root too) where only loopback is up: a Celery worker, a gunicorn
serving the API, the process calling the webhook functions, their Redis, and the receivers. A
bug could not put a packet on a real network there: there is no interface but `lo` and no
route out. On that loopback the namespace also holds 93.184.215.14 (example.com's address,
so a global one, which the portal accepts with WEBHOOKS_ALLOW_PRIVATE off) for the public
receiver (HTTPS, with a certificate from a CA made for the drill and trusted through
SSL_CERT_FILE), and 10.0.0.1 and 169.254.169.254 with listeners that count any connection, as
127.0.0.1 and ::1 do on ports 443 and 80. The portal's database is reached through the
PostgreSQL cluster's Unix socket, which a network namespace does not cut.

Names resolve from a stub, never DNS: tests/netguard's NETGUARD_HOSTS (`rebind.drill.test`
is public for the subscribing process and 127.0.0.1 for the worker and the web process);
`localhost` through the system's own hosts file. Every connect of every process in the
namespace is recorded by tests/netguard (NETGUARD_LOG), before it is made or refused: the
figures count them per address. A control subscription to the public receiver is delivered,
so that the zeros cannot come from nothing being sent at all.

The host side (`drill_ssrf`) starts the namespace's process (`python -m tests.drills.ssrf
--inside DIR`) and computes the verdict from what it wrote and from the connect log.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.drills.helpers import Result, Scale
from tests.drills.netfaults import can_partition
from tests.drills.stack import BIN, DrillError, Group, Stack, redis_server, stop_process
from tests.sandboxserver import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

# A global address, held only by the namespace's loopback (example.com's, from IANA).
PUBLIC = "93.184.215.14"
# Addresses with a listener counting connections (a request attempted would reach one).
TRAPS = [
    ("127.0.0.1", 443),
    ("127.0.0.1", 80),
    ("::1", 443),
    ("::1", 80),
    ("10.0.0.1", 443),
    ("10.0.0.1", 80),
    ("169.254.169.254", 443),
    ("169.254.169.254", 80),
]
# What each process resolves (tests/netguard's stub): the process subscribing sees
# rebind.drill.test public; the worker and the web process see it at 127.0.0.1.
NAMES_HERE = {
    "ok.drill.test": PUBLIC,
    "moved.drill.test": PUBLIC,
    "rebind.drill.test": PUBLIC,
    "intranet.drill.test": "10.0.0.1",
}
NAMES_THERE = {**NAMES_HERE, "rebind.drill.test": "127.0.0.1"}
# The private targets, by what the figures call them.
TARGETS = {
    "127.0.0.1": "https://127.0.0.1/hooks",
    "10.0.0.1": "https://10.0.0.1/hooks",
    "169.254.169.254": "https://169.254.169.254/latest/meta-data/",
    "[::1]": "https://[::1]/hooks",
    "localhost": "https://localhost/hooks",
    "name -> 10.0.0.1": "https://intranet.drill.test/hooks",
}
REBIND = "https://rebind.drill.test/hooks"
CONTROL = "https://ok.drill.test/hooks"
# The public receiver's redirects: path -> (status, Location).
REDIRECTS = {
    "/to-private": (302, "http://10.0.0.1/hooks"),
    "/to-metadata": (302, "http://169.254.169.254/latest/meta-data/"),
    "/to-loopback": (307, "https://127.0.0.1/hooks"),
}
EVENTS = ["sync.succeeded"]
# The drill's own settings: production's, with one retry a second later (so that each
# delivery ends `failed`, its subscription disabled, within seconds).
SETTINGS = {
    "DEBUG": "false",
    "WEBHOOKS_ALLOW_PRIVATE": "false",
    "WEBHOOKS_RETRY_SCHEDULE": "1",
    "WEBHOOKS_TIMEOUT_SECONDS": "5",
}
OWNER = "ssrf-drill"


def hosts(names: dict[str, str]) -> str:
    return " ".join(f"{name}={address}" for name, address in names.items())


# --- The host side ---------------------------------------------------------------------------


def drill_ssrf(stack: Stack, scale: Scale) -> Result:
    result = Result(
        "SSRF: webhooks to private addresses",
        "with production settings (DEBUG and WEBHOOKS_ALLOW_PRIVATE off), in a network "
        "namespace with only loopback: subscriptions through the API and the webhook functions "
        f"to {', '.join(TARGETS)}; deliveries by a Celery worker to the same targets "
        "(subscriptions planted in the database), to a name that resolved public when "
        "subscribed and 127.0.0.1 when delivered (DNS rebinding), and to a public HTTPS "
        "receiver answering redirects to 10.0.0.1, 169.254.169.254 and 127.0.0.1; a control "
        "subscription to the public receiver",
        "every subscription refused, every delivery refused at the worker's re-check or failed "
        "on its 3xx; connections attempted to a private address 0 (every connect of every "
        "process recorded), none refused by the socket guard, traps reached 0; the control "
        "delivered",
    )
    reason = can_partition()
    if reason:
        raise DrillError(reason)
    if stack.postgres is None:
        raise DrillError("the stack has no PostgreSQL of its own")
    work = stack.tmp / "ssrf"
    work.mkdir(parents=True, exist_ok=True)
    log, out = work / "netguard.jsonl", work / "figures.json"
    log.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    socket_dir = str(stack.postgres.root).replace("/", "%2F")
    env = {
        **stack.env,
        **SETTINGS,
        # The stack's cluster through its Unix socket: the namespace has no route to the
        # host's 127.0.0.1.
        "DATABASE_URL": f"postgres://postgres@{socket_dir}:{stack.postgres.port}/{stack.database}",
        "NETGUARD_ALLOW": f"{PUBLIC}/32",
        "NETGUARD_LOG": str(log),
        "NETGUARD_HOSTS": hosts(NAMES_HERE),
        "SSL_CERT_FILE": str(work / "ca.pem"),
    }
    env.pop("REDIS_URL", None)  # the namespace's own Redis (set inside)
    with (stack.logs / "ssrf.log").open("ab") as output:
        child = subprocess.Popen(
            [
                "unshare",
                "--net",
                "--",
                sys.executable,
                "-m",
                "tests.drills.ssrf",
                "--inside",
                str(work),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            child.wait(timeout=240)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGTERM)  # the inside stops what it started, then exits
            try:
                child.wait(timeout=40)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)
            raise DrillError("the namespace's run did not end in 240 s (logs/ssrf.log)") from None
    if not out.exists():
        raise DrillError(f"the namespace's run wrote no figures (exit {child.returncode})")
    inside = json.loads(out.read_text())
    if inside.get("error"):
        raise DrillError(f"inside the namespace: {inside['error']}")
    connects = read_log(log)
    return verdict(result, inside, connects)


def read_log(path: Path) -> dict[str, Any]:
    """tests/netguard's record of every process in the namespace, counted."""
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    to_private: list[str] = []
    refused: list[str] = []
    public: Counter[str] = Counter()
    loopback_ports: Counter[int] = Counter()
    for row in rows:
        where = f"{row['call']} {row['host']}:{row['port']}"
        if not row["allowed"]:
            refused.append(where)
            continue
        try:
            address = ipaddress.ip_address(str(row["host"]).split("%", 1)[0])
        except ValueError:
            continue
        mapped = getattr(address, "ipv4_mapped", None) or address
        if str(mapped) == PUBLIC:
            public[str(row["port"])] += 1
        elif mapped.is_loopback and int(row["port"]) not in (80, 443):
            loopback_ports[int(row["port"])] += 1  # the namespace's Redis and web process
        else:
            to_private.append(where)  # a private target's address, or one of its ports
    return {
        "recorded": len(rows),
        "processes": len({row["pid"] for row in rows}),
        "to_private": to_private,
        "refused_by_guard": refused,
        "to_public_receiver": dict(public),
        "loopback_service_ports": sorted(loopback_ports),
    }


def verdict(result: Result, inside: dict[str, Any], connects: dict[str, Any]) -> Result:
    api = inside["api"]
    functions = inside["functions"]
    deliveries = inside["deliveries"]
    bad = {k: v for k, v in deliveries.items() if k != "control"}
    redirects = {k: v for k, v in bad.items() if k.startswith("redirect")}
    refused_at_worker = {k: v for k, v in bad.items() if not k.startswith("redirect")}
    control = deliveries["control"]
    first_hops = sum(v["attempts"] for v in redirects.values())
    result.figures = {
        "settings": inside["settings"],
        "namespace": inside["namespace"],
        "api_built": api["built"],
        "api_statuses": api["statuses"],
        "api_created": api["created"],
        "api_patches_refused": api["patches_refused"],
        "functions_refused": functions["refused"],
        "functions_total": functions["total"],
        "functions_created": functions["created"],
        "deliveries": deliveries,
        "trap_connections": inside["traps"],
        "receiver_requests": inside["receiver"],
        "connects": connects,
    }
    api_ok = not api["built"] or (
        all(status == 400 for status in api["statuses"].values())
        and api["created"] == 0
        and api["patches_refused"] == len(TARGETS)
        and api["codes"] == ["invalid_url"]
    )
    result.checks = {
        "production settings": inside["settings"]
        == {"DEBUG": False, "WEBHOOKS_ALLOW_PRIVATE": False},
        "only loopback in the namespace": inside["namespace"]["links"] == ["lo"]
        and not inside["namespace"]["default_route"],
        "API refused every private target": api_ok,
        "functions refused every private target": functions["refused"] == functions["total"]
        and functions["created"] == 0,
        "worker refused every private target": all(
            v["attempts"] >= 1
            and all(e.startswith("refused: ") for e in v["errors"])
            and v["state"] == "failed"
            for v in refused_at_worker.values()
        ),
        "redirects not followed": all(
            v["attempts"] >= 1 and set(v["statuses"]) <= {302, 307} and v["state"] == "failed"
            for v in redirects.values()
        )
        and inside["receiver"]["redirects"] == first_hops,
        "control delivered": control["state"] == "delivered" and inside["receiver"]["control"] == 1,
        "0 connects to a private address": connects["to_private"] == [],
        "0 connects refused by the guard": connects["refused_by_guard"] == [],
        "0 connections at the traps": sum(inside["traps"].values()) == 0,
        # The log saw what was sent (the control and each redirect's first hop, nothing
        # else), and every other connect went to the namespace's Redis or web process.
        "every connect accounted for": connects["to_public_receiver"] == {"443": first_hops + 1}
        and set(connects["loopback_service_ports"]) <= set(inside["service_ports"]),
    }
    worker_attempts = sum(v["attempts"] for v in refused_at_worker.values())
    result.measured = (
        f"API: {api_summary(api)}; functions: {functions['refused']}/{functions['total']} "
        f"refused, {functions['created']} created; worker: {worker_attempts} attempts to "
        f"{len(refused_at_worker)} private targets (incl. the rebinding name) all refused at the "
        f"re-check, each delivery failed and its subscription disabled; redirects: "
        f"{first_hops} attempts answered {redirect_statuses(redirects)}, not followed; control "
        f"delivered ({inside['receiver']['control']} request). Connects recorded in "
        f"{connects['processes']} processes: "
        f"{connects['recorded']} in all, to a private address {len(connects['to_private'])}, "
        f"refused by the guard {len(connects['refused_by_guard'])}, to the public receiver "
        f"{connects['to_public_receiver'].get('443', 0)}; trap connections "
        f"{sum(inside['traps'].values())}; namespace links {inside['namespace']['links']}"
    )
    return result


def redirect_statuses(redirects: dict[str, Any]) -> list[int]:
    return sorted({status for v in redirects.values() for status in v["statuses"]})


def api_summary(api: dict[str, Any]) -> str:
    if not api["built"]:
        return "not built yet (no /api/v1/webhooks route)"
    statuses = sorted(set(api["statuses"].values()))
    return (
        f"{len(api['statuses'])} POSTs answered {statuses} ({', '.join(api['codes'])}), "
        f"{api['patches_refused']}/{len(TARGETS)} PATCHes refused, {api['created']} created"
    )


# --- Inside the namespace --------------------------------------------------------------------


def namespace() -> dict[str, Any]:
    """Bring loopback up with the drill's addresses, after making sure it is alone."""
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if line]
    if names != ["lo"]:
        raise DrillError(f"not in a namespace of our own: interfaces {names}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in (PUBLIC, "10.0.0.1", "169.254.169.254"):
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    default = subprocess.run(
        ["ip", "route", "show", "default"], capture_output=True, text=True, check=True
    ).stdout.strip()
    default6 = subprocess.run(
        ["ip", "-6", "route", "show", "default"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {"links": names, "default_route": bool(default or default6)}


class Traps:
    """A listener on each TRAPS address that counts the connections it accepts."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.sockets: list[socket.socket] = []
        for host, port in TRAPS:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=family)
            self.sockets.append(sock)
            threading.Thread(target=self.serve, args=(sock, f"{host}:{port}"), daemon=True).start()

    def serve(self, sock: socket.socket, name: str) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self.counts[name] += 1
            conn.close()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def certificates(work: Path) -> ssl.SSLContext:
    """A CA for the drill (written to ca.pem, which SSL_CERT_FILE names) and the public
    receiver's certificate from it, for ok.drill.test and moved.drill.test."""
    from tests.tls import Authority

    authority = Authority.new("SSRF drill CA")
    (work / "ca.pem").write_bytes(authority.pem())
    return authority.server_context(work, "ok.drill.test", "moved.drill.test")


class PublicReceiver:
    """HTTPS on PUBLIC:443: 204 on /hooks (the control), the REDIRECTS elsewhere."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.hits: Counter[str] = Counter()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.hits[self.path] += 1
                status, location = REDIRECTS.get(self.path, (204, ""))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer((PUBLIC, 443), Handler)
        self.server.daemon_threads = True
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(what: str, probe: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if probe():
                return
        time.sleep(0.2)
    raise DrillError(f"timed out after {timeout:.0f}s waiting for {what}")


def inside(work: Path) -> dict[str, Any]:
    """The drill itself, in the namespace: servers up, then subscriptions and deliveries."""
    figures: dict[str, Any] = {"namespace": namespace()}
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    traps = Traps()
    receiver = PublicReceiver(certificates(work))
    redis_port, web_port = free_port(), free_port()
    own_redis = redis_server(redis_port, work / "redis")
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    there = {
        **os.environ,
        "NETGUARD_HOSTS": hosts(NAMES_THERE),
        "GUNICORN_BIND": f"127.0.0.1:{web_port}",
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": "2",
    }
    processes = [
        Group(
            "ssrf-web",
            [str(BIN / "gunicorn"), "-c", "portal/gunicorn.conf.py", "portal.wsgi:application"],
            there,
            logs,
        ),
        Group(
            "ssrf-worker",
            [
                str(BIN / "celery"), "-A", "portal", "--quiet", "worker",
                "--queues", "celery,webhooks", "--concurrency", "1",
                "--hostname", f"ssrf-drill-{os.getpid()}@%h",
                "--without-gossip", "--without-mingle", "--loglevel", "INFO",
            ],
            there,
            logs,
        ),
    ]  # fmt: skip
    try:
        import django

        django.setup()
        from django.conf import settings

        figures["settings"] = {
            "DEBUG": settings.DEBUG,
            "WEBHOOKS_ALLOW_PRIVATE": settings.WEBHOOKS_ALLOW_PRIVATE,
        }
        from integrations.tasks import heartbeat

        heartbeat.delay().get(timeout=90)
        wait_for("the web process", lambda: answers(web_port), timeout=90)
        figures["service_ports"] = sorted([redis_port, web_port])
        figures.update(scenario(f"http://127.0.0.1:{web_port}", receiver))
        figures["traps"] = dict(traps.counts)
        figures["receiver"] = {
            "control": receiver.hits["/hooks"],
            "redirects": sum(receiver.hits[path] for path in REDIRECTS),
            "by_path": dict(receiver.hits),
        }
    finally:
        for process in processes:
            process.stop(timeout=20)
        stop_process(own_redis)
        receiver.close()
        traps.close()
    return figures


def answers(port: int) -> bool:
    import requests

    return requests.get(f"http://127.0.0.1:{port}/api/v1/connection", timeout=5).status_code in (
        401,
        403,
    )


def scenario(web: str, receiver: PublicReceiver) -> dict[str, Any]:
    import requests
    from django.contrib.auth.models import User
    from django.urls import Resolver404, resolve

    from integrations import webhooks
    from integrations.api import keys
    from integrations.models import WebhookSubscription

    User.objects.filter(username=OWNER).delete()  # a run before this one that was cut short
    owner = User.objects.create_user(OWNER, f"{OWNER}@agency.test")
    try:
        built = resolve("/api/v1/webhooks").url_name == "webhooks"
    except Resolver404:
        built = False
    api: dict[str, Any] = {
        "built": built,
        "statuses": {},
        "codes": [],
        "created": 0,
        "patches_refused": 0,
    }
    session = requests.Session()
    planted: dict[str, WebhookSubscription] = {}
    try:
        control: WebhookSubscription | None = None
        if built:
            _key, secret_key = keys.issue(owner, "SSRF drill", ["webhooks"])
            session.headers["Authorization"] = f"Bearer {secret_key}"
            codes: set[str] = set()
            for name, url in TARGETS.items():
                answer = session.post(
                    f"{web}/api/v1/webhooks", json={"url": url, "events": EVENTS}, timeout=30
                )
                api["statuses"][name] = answer.status_code
                codes.add(str(answer.json().get("code")))
            api["created"] = WebhookSubscription.objects.filter(owner=owner).count()
            made = session.post(
                f"{web}/api/v1/webhooks", json={"url": CONTROL, "events": EVENTS}, timeout=30
            )
            if made.status_code != 201:
                raise DrillError(f"the control subscription: {made.status_code} {made.text[:200]}")
            control = WebhookSubscription.objects.get(pk=made.json()["id"])
            for url in TARGETS.values():
                patched = session.patch(
                    f"{web}/api/v1/webhooks/{control.pk}", json={"url": url}, timeout=30
                )
                codes.add(str(patched.json().get("code")))
                api["patches_refused"] += int(patched.status_code == 400)
            control.refresh_from_db()
            if control.url != CONTROL:
                raise DrillError(f"a refused PATCH changed the URL to {control.url}")
            api["codes"] = sorted(codes)

        if control is None:
            control, _ = webhooks.subscribe(owner, CONTROL, EVENTS)
        functions: dict[str, Any] = {"total": 0, "refused": 0, "reasons": {}}
        before = WebhookSubscription.objects.filter(owner=owner).count()
        for name, url in TARGETS.items():
            functions["total"] += 1
            try:
                webhooks.subscribe(owner, url, EVENTS)
            except webhooks.InvalidSubscription as exc:
                functions["refused"] += 1
                functions["reasons"][name] = exc.message
        for url in TARGETS.values():
            functions["total"] += 1
            try:
                webhooks.change(control, owner, url=url)
            except webhooks.InvalidSubscription:
                functions["refused"] += 1
        control.refresh_from_db()
        after = WebhookSubscription.objects.filter(owner=owner).count()
        functions["created"] = after - before + int(control.url != CONTROL)

        # Deliveries: the targets planted (no check), the rebinding name and the redirects
        # subscribed (they pass the check here), then one test event each.
        for name, url in TARGETS.items():
            planted[name] = WebhookSubscription.objects.create(
                owner=owner, url=url, events=EVENTS, secret=webhooks.new_secret()
            )
        planted["rebinding name"], _ = webhooks.subscribe(owner, REBIND, EVENTS)
        for path in REDIRECTS:
            planted[f"redirect {path}"], _ = webhooks.subscribe(
                owner, f"https://moved.drill.test{path}", EVENTS
            )
        planted["control"] = control
        for subscription in planted.values():
            if built:
                sent = session.post(f"{web}/api/v1/webhooks/{subscription.pk}/test", timeout=30)
                if sent.status_code != 202:
                    raise DrillError(f"test event: {sent.status_code} {sent.text[:200]}")
            else:
                webhooks.send_test(subscription)
        wait_for("every delivery to end", lambda: settled(planted.values()), timeout=90)
        return {
            "api": api,
            "functions": functions,
            "deliveries": {name: delivery_figures(s) for name, s in planted.items()},
        }
    finally:
        User.objects.filter(username=OWNER).delete()  # subscriptions, events, keys with it


def settled(subscriptions: Any) -> bool:
    from integrations.models import WebhookDelivery

    ids = [s.pk for s in subscriptions]
    return not WebhookDelivery.objects.filter(subscription_id__in=ids, state="pending").exists()


def delivery_figures(subscription: Any) -> dict[str, Any]:
    from integrations.models import WebhookAttempt, WebhookDelivery

    subscription.refresh_from_db()
    delivery = WebhookDelivery.objects.get(subscription=subscription)
    attempts = list(WebhookAttempt.objects.filter(delivery=delivery).order_by("at"))
    return {
        "url": subscription.url,
        "state": delivery.state,
        "subscription": subscription.state,
        "attempts": len(attempts),
        "statuses": [a.status for a in attempts if a.status is not None],
        "errors": sorted({a.error for a in attempts if a.error}),
    }


def interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds through `inside`, which stops what it started


def main() -> int:
    parser = argparse.ArgumentParser(description="the SSRF drill, inside its namespace")
    parser.add_argument("--inside", type=Path, required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, interrupted)
    out = args.inside / "figures.json"
    try:
        figures = inside(args.inside)
    except BaseException as exc:  # noqa: BLE001 (the host side reports it)
        traceback.print_exc()
        figures = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    out.write_text(json.dumps(figures, indent=2, default=str))
    return 0 if "error" not in figures else 1


if __name__ == "__main__":
    sys.exit(main())
