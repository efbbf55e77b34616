"""The compose drill: `python tests/drills/compose_drill.py` (`make compose-drill`, also run by
`make drills`).

On an engine of its own (tests/drills/engine.py: installed when missing, its own socket and
data directory, torn down at the end with whatever it installed), it builds the images, then
runs docker/compose.yaml (copied unchanged next to a generated .env) with this machine's
override (tests/drills/compose/machine.yaml: host networking, 127.0.0.1, ports of its own) and
the sandbox profile, and does what an operator would: migrate, create a superuser, connect a
person through the web container to the sandbox container, choose a profile, sync through the
worker container, let beat schedule the next sync, read /health/. Then it breaks things
(restarts, a stopped worker mid-refresh), backs up and restores the database, starts it with a
wrong key, and rotates the key under load. Each step is a row in docs/reliability.md
("The Docker Compose stack"), its figures in var/drills/compose-results.json.

This process is also the portal (the stack's PostgreSQL and Redis are on 127.0.0.1): it reads
the database and sends tasks, as the other drills do, to measure and to drive load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # as run_drills.py: tests/drills/sync.py must not shadow anything
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import requests  # noqa: E402
from cryptography.fernet import Fernet, InvalidToken  # noqa: E402

from tests.drills.engine import (  # noqa: E402
    HERE,
    PORTAL_WITH_CERTS,
    Engine,
    EngineError,
    extra_ca_bodies,
    out,
    quiet,
)
from tests.drills.helpers import (  # noqa: E402
    API_PAGES,
    Result,
    connect_flow,
    duplicates,
    expire_tokens,
    mirror_mismatches,
    queue_syncs,
    wait_idle,
)
from tests.drills.stack import (  # noqa: E402
    CALLER_SETTINGS,
    DRILL_SETTINGS,
    PORTAL_SETUP,
    SANDBOX_SETUP,
    DrillError,
    wait_until,
)
from tests.sandboxserver import Sandbox, SandboxError, free_port  # noqa: E402
from tests.smoke.run_smoke import connect_and_sync  # noqa: E402

RESULTS = REPO_ROOT / "var" / "drills" / "compose-results.json"
REPORT = REPO_ROOT / "docs" / "reliability.md"
SECTION = "## The Docker Compose stack"
PROJECT = "portaldrill"
PORTAL_IMAGE = "zywave-portal:latest"
CLIENT_ID = "portal-compose-drill"
TOKEN_PATH = r"^/connect/token$"
USERS = 12  # drill people (staff001..): the first BIG with 250 accounts, the rest 10
BIG = 4
START = time.monotonic()


def say(message: str) -> None:
    print(f"[compose {time.monotonic() - START:6.1f}s] {message}", flush=True)


def pick_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class ComposeStack:
    """docker/compose.yaml plus the machine override, on the drill's engine.

    Duck-types the `Stack` of the other drills where their helpers need it (`portal`,
    `zywave`, `email`, `sandbox_book`)."""

    def __init__(self, engine: Engine, tmp: Path) -> None:
        self.engine = engine
        self.tmp = tmp
        self.dir = tmp / "docker"
        self.dir.mkdir(parents=True)
        # The customer's file, byte for byte, next to the .env this run writes.
        shutil.copy(REPO_ROOT / "docker" / "compose.yaml", self.dir / "compose.yaml")
        pg, rd, web, sbx = pick_ports(4)
        self.ports = {"postgres": pg, "redis": rd, "web": web, "sandbox": sbx}
        self.portal = f"http://127.0.0.1:{web}"
        self.control_key = secrets.token_urlsafe(24)
        self.client_secret = secrets.token_urlsafe(32)
        self.key = Fernet.generate_key().decode()
        self.next_key = Fernet.generate_key().decode()
        password = secrets.token_urlsafe(18)
        self.values: dict[str, str] = {
            "COMPOSE_PROJECT_NAME": PROJECT,
            "PORTAL_IMAGE": PORTAL_IMAGE,
            "DRILL_POSTGRES_PORT": str(pg),
            "DRILL_REDIS_PORT": str(rd),
            "DRILL_WEB_PORT": str(web),
            "DRILL_SANDBOX_PORT": str(sbx),
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "127.0.0.1",
            "PORTAL_URL": self.portal,
            "FIELD_ENCRYPTION_KEY": self.key,
            "POSTGRES_DB": "portal",
            "POSTGRES_USER": "portal",
            "POSTGRES_PASSWORD": password,
            "DATABASE_URL": f"postgres://portal:{password}@127.0.0.1:{pg}/portal",
            "REDIS_URL": f"redis://127.0.0.1:{rd}/0",
            "ZYWAVE_AUTH_URL": f"http://127.0.0.1:{sbx}",
            "ZYWAVE_API_URL": f"http://127.0.0.1:{sbx}",
            "ZYWAVE_CLIENT_ID": CLIENT_ID,
            "ZYWAVE_CLIENT_SECRET": self.client_secret,
            # Plain HTTP on loopback: no TLS proxy in front here.
            "SECURE_SSL_REDIRECT": "false",
            "SOCIAL_AUTH_REDIRECT_IS_HTTPS": "false",
            "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend",
            "LOG_FORMAT": "json",
            "SANDBOX_CONTROL_KEY": self.control_key,
            "CELERY_CONCURRENCY": "4",
            **DRILL_SETTINGS,
        }
        self.write_env()
        self.zywave = Sandbox(
            f"http://127.0.0.1:{sbx}", self.control_key, tmp / "sandbox", tmp / "sandbox.log"
        )
        self.secrets = [self.control_key, self.client_secret, self.key, self.next_key, password]

    def write_env(self, **changes: str) -> None:
        self.values.update(changes)
        lines = [f"{name}={value}" for name, value in self.values.items()]
        (self.dir / ".env").write_text("\n".join(lines) + "\n")
        self.resolved: Path | None = None

    def resolve(self) -> Path:
        """docker/compose.yaml merged with the override by docker-compose itself (`config`),
        less the `ports:` of the services on the host's network: the engine would discard
        them there, but docker-compose 1.29 refuses the combination, and an override cannot
        remove a list entry. Everything else is what `config` printed."""
        import yaml

        if self.resolved is not None:
            return self.resolved
        printed = self.run_compose(
            ["-f", str(self.dir / "compose.yaml"), "-f", str(HERE / "machine.yaml"), "config"]
        ).stdout
        config = yaml.safe_load(printed)
        for service in config["services"].values():
            if service.get("network_mode") == "host":
                service.pop("ports", None)
        path = self.dir / "resolved.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.resolved = path
        return path

    def compose(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 600,
        stdin: Any = None,
        stdout: Any = None,
    ) -> subprocess.CompletedProcess[str]:
        """docker-compose on the drill's engine; `stdin`/`stdout` files make it binary."""
        return self.run_compose(
            ["-f", str(self.resolve()), *args],
            check=check,
            timeout=timeout,
            stdin=stdin,
            stdout=stdout,
        )

    def run_compose(
        self,
        args: list[str],
        check: bool = True,
        timeout: float = 600,
        stdin: Any = None,
        stdout: Any = None,
    ) -> subprocess.CompletedProcess[str]:
        argv = ["docker-compose", "--project-directory", str(self.dir), "--profile", "sandbox"]
        argv += args
        binary = stdin is not None or stdout is not None
        done = subprocess.run(
            argv,
            cwd=self.dir,
            env=self.engine.env,
            stdin=stdin,
            stdout=stdout or subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=not binary,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            message = f"docker-compose {' '.join(args[2:5])}: {out(done.stderr)[-1500:]}"
            for secret in getattr(self, "secrets", []):
                message = message.replace(secret, "<secret>")
            raise DrillError(message)
        return done

    def exec_with_secret(self, service: str, secret: str, command: str) -> None:
        """`exec -T service sh -c command` with `secret` on its stdin as $SECRET (never in an
        argument list, where ps, errors and reports would show it)."""
        source = self.tmp / "stdin"
        source.write_text(secret + "\n")
        source.chmod(0o600)
        with open(source, "rb") as stdin:
            self.compose(
                "exec", "-T", service, "sh", "-c", f"read -r SECRET; export SECRET; {command}",
                stdin=stdin,
            )  # fmt: skip
        source.unlink()

    def images(self) -> list[str]:
        """Every image `up` would start (docker-compose config: the services of no profile and
        of the sandbox profile; the metrics profile's prometheus is not started here)."""
        import yaml

        services = yaml.safe_load(self.resolve().read_text())["services"].values()
        return sorted(
            {
                service["image"]
                for service in services
                if not service.get("profiles") or "sandbox" in service["profiles"]
            }
        )

    def missing_images(self) -> list[str]:
        return self.missing_in(self.engine, self.images())

    @staticmethod
    def missing_in(engine: Engine, images: list[str]) -> list[str]:
        return [
            image
            for image in images
            if engine.docker("image", "inspect", image, check=False).returncode != 0
        ]

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def health(self, container: str) -> str:
        state = json.loads(self.engine.docker("inspect", container).stdout)[0]["State"]
        if "Health" in state:
            return str(state["Health"]["Status"])
        return "running" if state["Running"] else f"exited {state['ExitCode']}"

    def services_health(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for service in ("postgres", "redis", "web", "worker", "live", "beat", "sandbox"):
            for n, container in enumerate(self.containers(service), start=1):
                found[f"{service}{'' if n == 1 else f'_{n}'}"] = self.health(container)
        return found

    def wait_healthy(self, timeout: float = 300) -> float:
        """Seconds until every service's healthcheck says healthy."""
        return wait_until(
            "every healthcheck to turn healthy",
            lambda: all(s == "healthy" for s in self.services_health().values()),
            timeout=timeout,
            interval=2,
        )

    def health_page(self) -> dict[str, Any]:
        response = requests.get(f"{self.portal}/health/", timeout=10)
        return {**response.json(), "http": response.status_code}

    def page_ok(self) -> bool:
        page = self.health_page()
        return page["http"] == 200 and all(v == "ok" for v in page["checks"].values())

    def logs(self, *services: str) -> str:
        return out(self.compose("logs", "--no-color", *services, check=False).stdout)

    def email(self, i: int) -> str:
        return f"drill{i:03d}@example.com"

    def sandbox_book(self, i: int) -> int:
        return 250 if i <= BIG else 10

    def configure_here(self) -> None:
        """This process as the portal: the stack's settings (both keys, so that it can read
        whatever the rotation leaves), then django.setup()."""
        for key in list(os.environ):
            if re.match(CALLER_SETTINGS, key):
                del os.environ[key]
        env = {k: v for k, v in self.values.items() if not k.startswith(("DRILL_", "COMPOSE_"))}
        env["FIELD_ENCRYPTION_KEY"] = f"{self.key},{self.next_key}"
        env["DJANGO_SETTINGS_MODULE"] = "portal.settings"
        os.environ.update(env)
        import django

        django.setup()


# --- Measures -----------------------------------------------------------------------------


def models() -> Any:
    from integrations import models as m

    return m


def fresh_db() -> None:
    from django.db import connections

    for conn in connections.all():
        conn.close()


def undecryptable(keys: list[str]) -> tuple[int, int]:
    """(values, values no key of `keys` decrypts) over every encrypted column, read raw."""
    from django.db import connection

    from integrations.management.commands.rotate_encryption_key import encrypted_columns

    fernets = [Fernet(k) for k in keys]
    total = failed = 0
    fresh_db()
    with connection.cursor() as cursor:
        for model, column in encrypted_columns():
            cursor.execute(
                f"SELECT {column} FROM {model._meta.db_table} WHERE {column} <> ''"  # noqa: S608
            )
            for (value,) in cursor.fetchall():
                total += 1
                for fernet in fernets:
                    try:
                        fernet.decrypt(value.encode())
                        break
                    except InvalidToken:
                        continue
                else:
                    failed += 1
    return total, failed


def token_digest() -> dict[int, str]:
    """Each connection's refresh token, as a digest (compared across a backup and restore)."""
    import hashlib

    fresh_db()
    return {
        c.pk: hashlib.sha256(c.refresh_token.encode()).hexdigest()
        for c in models().Connection.objects.all()
    }


def refresh_figures(started: datetime, counters: dict[str, int]) -> dict[str, Any]:
    events = models().ConnectionEvent.objects.filter(kind="refreshed", at__gte=started)
    used = [e.detail.get("used") for e in events]
    generations = len(set(used))
    attempts = sum(counters.values())
    return {
        "refreshes_at_zywave": counters.get("refresh_token:success", 0),
        "token_requests": attempts,
        "refreshed_events": len(used),
        "token_generations_replaced": generations,
        "refreshes_per_generation": round(attempts / generations, 2) if generations else 0.0,
        "invalid_grant": counters.get("refresh_token:invalid_grant", 0),
    }


def token_counters(stack: ComposeStack) -> dict[str, int]:
    counters = stack.zywave.counters().get("token", {})
    return {k: v for k, v in counters.items() if k.startswith("refresh_token")}


def runs_since(ids: list[int], started: datetime) -> dict[str, int]:
    states: dict[str, int] = {}
    fresh_db()
    runs = models().SyncRun.objects.filter(connection_id__in=ids, queued_at__gte=started)
    for state in runs.values_list("state", flat=True):
        states[state] = states.get(state, 0) + 1
    return states


def lost(states: dict[str, int]) -> int:
    return sum(n for state, n in states.items() if state != "succeeded")


def conn_pks(indexes: list[int]) -> list[int]:
    found = dict(
        models()
        .Connection.objects.filter(user__username__in=[f"staff{i:03d}" for i in indexes])
        .values_list("user__username", "pk")
    )
    return [found[f"staff{i:03d}"] for i in indexes]


def reauth(ids: list[int]) -> int:
    fresh_db()
    return int(models().Connection.objects.filter(pk__in=ids).exclude(status="active").count())


# --- The drill's steps --------------------------------------------------------------------


def build_images(engine: Engine, stack: ComposeStack | None = None) -> Result:
    result = Result(
        "Compose: images built here",
        "no registry: a Debian bookworm base from mmdebstrap, stand-ins for python:3.11-slim, "
        "postgres:16 and redis:7 built on it, the portal from docker/Dockerfile (BASE_IMAGE the "
        "stand-in plus this machine's CA bundle and pip configuration in a layer of their own, "
        "stripped from the image afterwards)",
        "every image builds; the portal runs as a non-root user; no machine certificate, pip "
        "configuration or build argument in any layer or in docker history",
    )
    timings = engine.build_all(PORTAL_IMAGE)
    needles = {
        **extra_ca_bodies(),
        "BASE_IMAGE value": engine.certs_base.encode(),
        "the build's temporary directory": str(engine.root).encode(),
    }
    control = engine.scan_image(PORTAL_WITH_CERTS, needles)
    scan = engine.scan_image(PORTAL_IMAGE, needles)
    engine.discard_build_only()
    config = engine.inspect(PORTAL_IMAGE)["Config"]
    uid = engine.docker(
        "run", "--rm", "--network", "none", "--entrypoint", "id", PORTAL_IMAGE, "-u"
    ).stdout.strip()
    sizes = {
        image: round(engine.inspect(image)["Size"] / 1e6)
        for image in ("python:3.11-slim", "postgres:16", "redis:7", PORTAL_IMAGE)
    }
    layers = len(engine.inspect(PORTAL_IMAGE)["RootFS"]["Layers"])
    history = engine.history(PORTAL_IMAGE)
    build_only = [line for line in history if "build-only" in line]
    hits = {name: found for name, found in scan["hits"].items() if found}
    control_hits = sorted(name for name, found in control["hits"].items() if found)
    f = result.figures
    f.update(
        seconds={k: round(v, 1) for k, v in timings.items()},
        sizes_mb=sizes,
        portal_layers=layers,
        user=config.get("User"),
        uid=uid,
        files_scanned=scan["files"],
        bytes_scanned=scan["bytes"],
        hits=hits,
        control_hits=control_hits,
        build_only_history_steps=len(build_only),
    )
    build_seconds = sum(v for k, v in timings.items() if k not in ("install", "engine start"))
    result.checks = {
        "non-root": config.get("User") == "portal" and uid == "10001",
        "nothing machine-specific in the image": not hits,
        "the scan finds them where they are": len(control_hits) >= 2,
    }
    portal_seconds = timings.get("portal image (docker/Dockerfile)", 0)
    result.measured = (
        f"built in {build_seconds:.0f} s (base "
        f"{timings['base: mmdebstrap minbase bookworm']:.0f} s "
        f"+ import {timings['base: docker import']:.0f} s; python:3.11-slim "
        f"{timings['stand-in python:3.11-slim']:.0f} s, postgres:16 "
        f"{timings['stand-in postgres:16']:.0f} s, redis:7 {timings['stand-in redis:7']:.0f} s; "
        f"portal {portal_seconds:.0f} s, certificates layer stripped in "
        f"{timings['certificates layer stripped']:.0f} s); sizes "
        + ", ".join(f"{k} {v} MB" for k, v in sizes.items())
        + f"; portal runs as {config.get('User')} (uid {uid}); {scan['files']:,} files "
        f"({scan['bytes'] / 1e6:.0f} MB) in {layers} layers and the history searched for the "
        f"machine's {len(extra_ca_bodies())} extra CA certificates, the pip configuration and "
        f"the build arguments: hits **{sum(len(v) for v in hits.values())}** (the same scan of "
        f"the unstripped build finds {', '.join(control_hits) or 'nothing'}); the Dockerfile's "
        f"own build-only placeholders appear in {len(build_only)} history step (collectstatic; "
        "refused at start)"
    )
    return result


def bring_up(stack: ComposeStack) -> Result:
    result = Result(
        "Compose: an operator's first start",
        "docker/compose.yaml with the machine override and the sandbox profile: up -d, "
        "createsuperuser, a person connects through the web container to the sandbox container "
        "and chooses a profile, a sync through the worker container, beat's next one",
        "every image local before up; migrate exits 0; every healthcheck healthy; connect, "
        "profile and sync succeed; beat queues the next sync; /health/ 200 with every check ok",
    )
    missing = stack.missing_images()
    if missing:
        raise DrillError(
            f"images missing locally: {', '.join(missing)} (up would try a registry); build "
            "them first (tests/drills/engine.py)"
        )
    began = time.monotonic()
    stack.compose("up", "-d", timeout=900)
    up = time.monotonic() - began
    healthy = stack.wait_healthy()
    migrate = stack.compose("ps", "-a", "-q", "migrate").stdout.split()
    migrate_exit = (
        json.loads(stack.engine.docker("inspect", migrate[0]).stdout)[0]["State"]["ExitCode"]
        if migrate
        else None
    )
    admin_password = secrets.token_urlsafe(16)
    stack.secrets.append(admin_password)
    # `exec` where docker/README.md says `run --rm`: docker-compose 1.29 links a one-off
    # container to its service, which host networking refuses (compose v2 does not).
    stack.exec_with_secret(
        "web",
        admin_password,
        "DJANGO_SUPERUSER_PASSWORD=$SECRET exec python manage.py createsuperuser --no-input "
        "--username admin --email admin@example.com",
    )
    admin_ok = admin_login(stack.portal, admin_password)
    smoke_password = secrets.token_urlsafe(16)
    stack.secrets.append(smoke_password)
    stack.exec_with_secret(
        "web",
        smoke_password,
        'exec python manage.py shell -c "import os; from django.contrib.auth.models import '
        "User; User.objects.create_user('smoke', password=os.environ['SECRET'])\"",
    )
    stack.zywave.register_client(
        CLIENT_ID, stack.client_secret, [f"{stack.portal}/oauth/complete/zywave/"]
    )
    stack.configure_here()
    connected = time.monotonic()
    import tests.smoke.run_smoke as smoke

    smoke.DEADLINE = time.monotonic() + 300  # the smoke run's own deadline counts from its import
    status = connect_and_sync(stack.portal, stack.zywave, smoke_password)
    synced = time.monotonic() - connected
    m = models()
    conn = m.Connection.objects.get(user__username="smoke")
    first = m.SyncRun.objects.filter(connection=conn).order_by("queued_at").first()
    scheduled = wait_until(
        "beat to queue the next sync",
        lambda: m.SyncRun.objects.filter(
            connection=conn, trigger="schedule", queued_at__gt=first.queued_at
        ).exists(),
        timeout=200,
        interval=2,
    )
    page = stack.health_page()
    f = result.figures
    f.update(
        up_seconds=round(up, 1),
        healthy_seconds=round(healthy, 1),
        migrate_exit=migrate_exit,
        services=stack.services_health(),
        admin_login=admin_ok,
        sync=status,
        connect_and_sync_seconds=round(synced, 1),
        next_sync_seconds=round(scheduled, 1),
        health=page,
    )
    result.checks = {
        "migrate 0": migrate_exit == 0,
        "healthy": all(s == "healthy" for s in f["services"].values()),
        "admin": admin_ok,
        "synced": status.get("state") == "succeeded" and bool(status.get("records")),
        "beat": scheduled < 200,
        "health 200": page["http"] == 200 and all(v == "ok" for v in page["checks"].values()),
    }
    result.measured = (
        f"up -d {up:.0f} s, every healthcheck healthy {healthy:.0f} s later "
        f"({len(f['services'])} containers); migrate exit {migrate_exit}; superuser logs in to "
        f"the admin: {'yes' if admin_ok else 'no'}; connect, profile and sync in {synced:.1f} s "
        f"({status.get('records')} records); beat queued the next sync {scheduled:.0f} s after; "
        f"/health/ {page['http']} {page['checks']}"
    )
    return result


def admin_login(portal: str, password: str) -> bool:
    from tests.smoke.run_smoke import Browser, csrf_from

    http = Browser()
    page = http.get(f"{portal}/admin/login/", timeout=10)
    answer = http.post(
        f"{portal}/admin/login/?next=/admin/",
        data={
            "username": "admin",
            "password": password,
            "csrfmiddlewaretoken": csrf_from(page.text),
            "next": "/admin/",
        },
        timeout=10,
    )
    return answer.status_code == 200 and "/admin/logout/" in answer.text


def seed_people(stack: ComposeStack) -> list[int]:
    """The drill's people at the sandbox (its own shell, in its container) and in the portal,
    each connected through the web container. Returns their connection ids."""
    setup = stack.compose(
        "exec", "-T", "-e", f"DRILL_USERS=[{USERS}, {BIG}, 250, 10]", "sandbox",
        "python", "-m", "sandbox", "shell", "-c", SANDBOX_SETUP,
    )  # fmt: skip
    say(f"  sandbox people, accounts, contacts: {setup.stdout.strip().splitlines()[-1]}")
    password = secrets.token_urlsafe(12)
    previous = dict(os.environ)
    os.environ.update(DRILL_USERS=f"[{USERS}]", DRILL_PASSWORD=password)
    try:
        exec(PORTAL_SETUP, {})  # noqa: S102 (the drills' own setup script, in this process)
    finally:
        os.environ.clear()
        os.environ.update(previous)
    flows = [connect_flow(stack, i) for i in range(1, USERS + 1)]  # type: ignore[arg-type]
    failed = [flow for flow in flows if not flow["ok"]]
    if failed:
        raise DrillError(f"connecting failed: {failed[:2]}")
    ids = conn_pks(list(range(1, USERS + 1)))
    wait_idle(ids, timeout=240)
    return ids


def restart_worker_mid_sync(stack: ComposeStack, ids: list[int]) -> Result:
    result = Result(
        "Compose: docker-compose restart worker mid-sync",
        f"full syncs of {BIG} connections with 250 accounts each, pages slowed by 400 ms; "
        "`docker-compose restart worker` once they are writing pages",
        "syncs lost 0, duplicates 0, every mirror exact",
    )
    stack.zywave.reset()
    big = ids[:BIG]
    stack.zywave.add_fault(API_PAGES, count=100000, delay_ms=400)
    started = datetime.now(UTC)
    queue_syncs(big, full=True)
    wait_until(
        "runs to write pages",
        lambda: models()
        .SyncRun.objects.filter(connection_id__in=big, state="running", pages_done__gt=0)
        .exists(),
        timeout=90,
    )
    running = models().SyncRun.objects.filter(connection_id__in=big, state="running").count()
    began = time.monotonic()
    stack.compose("restart", "worker", timeout=300)
    restart = time.monotonic() - began
    stack.zywave.reset()
    drain = wait_idle(big, timeout=300)
    states = runs_since(big, started)
    dupes = duplicates()
    wrong = mirror_mismatches(stack, list(range(1, BIG + 1)))  # type: ignore[arg-type]
    result.figures.update(
        running_at_restart=running,
        restart_seconds=round(restart, 1),
        drain_seconds=round(drain, 1),
        states=states,
        duplicates=dupes,
        mismatches=wrong,
    )
    result.checks = {
        "mid-sync": running > 0,
        "syncs lost 0": lost(states) == 0 and states.get("succeeded", 0) >= len(big),
        "duplicates 0": dupes == 0 and not wrong,
    }
    result.measured = (
        f"{running} runs writing pages when restarted; the restart took {restart:.0f} s (warm "
        f"shutdown), runs {states}; syncs lost {lost(states)}, duplicates {dupes}, mirrors "
        f"wrong {len(wrong)}; drained {drain:.0f} s after"
    )
    return result


def stop_worker_mid_refresh(stack: ComposeStack, ids: list[int]) -> Result:
    from integrations.tasks import refresh_connection

    hold = 3000
    chosen = ids[BIG : BIG + 3]
    result = Result(
        "Compose: docker stop of a worker mid-refresh",
        f"{len(chosen)} expired tokens refreshed while the token endpoint holds each request "
        f"{hold / 1000:.0f} s; `docker stop --time 60` of the worker container (the compose "
        "file's grace period) once Zywave has them all; the worker started again",
        "every refresh completes once (warm shutdown): tokens lost 0, refreshes per token "
        "generation 1.00, invalid_grant 0",
    )
    wait_idle(None, timeout=120)
    stack.zywave.reset()
    stack.zywave.add_fault(TOKEN_PATH, count=len(chosen), delay_ms=hold, method="POST")
    expire_tokens(chosen)
    started = datetime.now(UTC)
    for pk in chosen:
        refresh_connection.delay(pk)
    wait_until(
        "Zywave to hold every refresh",
        lambda: sum(f["remaining"] for f in stack.zywave.control("GET", "faults")["faults"]) == 0,
        timeout=60,
    )
    container = stack.containers("worker")[0]
    began = time.monotonic()
    stack.engine.docker("stop", "--time", "60", container, timeout=120)
    stopped = time.monotonic() - began
    exit_code = json.loads(stack.engine.docker("inspect", container).stdout)[0]["State"]["ExitCode"]
    stack.compose("up", "-d", "worker", timeout=300)
    fresh_db()
    wait_until(
        "the tokens to be fresh",
        lambda: models()
        .Connection.objects.filter(
            pk__in=chosen, access_token_expires_at__gt=datetime.now(UTC) + timedelta(minutes=5)
        )
        .count()
        == len(chosen),
        timeout=90,
    )
    figures = refresh_figures(started, token_counters(stack))
    gone = reauth(chosen)
    result.figures.update(stop_seconds=round(stopped, 1), exit_code=exit_code, tokens_lost=gone)
    result.figures.update(figures)
    result.checks = {
        "tokens lost 0": gone == 0 and figures["invalid_grant"] == 0,
        "one refresh per generation": figures["refreshes_per_generation"] == 1.0
        and figures["token_generations_replaced"] == len(chosen),
    }
    result.measured = (
        f"docker stop returned after {stopped:.1f} s (exit {exit_code}: the held refreshes "
        f"finished first); tokens lost {gone}; {figures['token_requests']} refresh requests for "
        f"{figures['token_generations_replaced']} token generations = "
        f"{figures['refreshes_per_generation']:.2f} per generation; invalid_grant "
        f"{figures['invalid_grant']}"
    )
    return result


def restart_service(stack: ComposeStack, ids: list[int], service: str) -> Result:
    from integrations.tasks import heartbeat

    result = Result(
        f"Compose: docker-compose restart {service}",
        f"`docker-compose restart {service}` while the stack is idle, then a sync of 3 connections",
        "recovers by itself: /health/ 200 again, the workers answer, the syncs succeed",
    )
    chosen = ids[BIG : BIG + 3]
    began = time.monotonic()
    stack.compose("restart", service, timeout=300)
    restarted = time.monotonic() - began
    fresh_db()
    back = wait_until("/health/ 200 with every check ok", stack.page_ok, timeout=180, interval=1)
    answered = time.monotonic()
    heartbeat.delay().get(timeout=60)
    answered = time.monotonic() - answered
    started = datetime.now(UTC)
    fresh_db()
    queue_syncs(chosen)
    drain = wait_idle(chosen, timeout=180)
    states = runs_since(chosen, started)
    healthy = stack.wait_healthy(timeout=240)
    result.figures.update(
        restart_seconds=round(restarted, 1),
        health_back_seconds=round(back, 1),
        states=states,
        sync_seconds=round(drain, 1),
        healthchecks_seconds=round(healthy, 1),
    )
    result.checks = {
        "health back": back < 180 and answered < 60,
        "syncs succeed": lost(states) == 0 and states.get("succeeded", 0) == len(chosen),
    }
    result.measured = (
        f"restarted in {restarted:.0f} s; /health/ 200 with every check ok {back:.0f} s after; "
        f"syncs {states} in {drain:.0f} s; every healthcheck healthy again after {healthy:.0f} s"
    )
    return result


def backup_restore(stack: ComposeStack, ids: list[int]) -> Result:
    result = Result(
        "Compose: pg_dump while syncs run; database destroyed; restored",
        f"docker/README.md's backup (`exec -T postgres pg_dump --format=custom`) while {BIG} "
        "full syncs run (pages slowed by 800 ms); the portal stopped, the postgres container "
        "and its volume removed, a new one started, the dump restored with pg_restore, `up -d`",
        "every token decrypts (and is the one backed up), the interrupted syncs resume and "
        "succeed, duplicates 0, every mirror exact",
    )
    big = ids[:BIG]
    wait_idle(None, timeout=120)
    stack.zywave.reset()
    stack.zywave.add_fault(API_PAGES, count=100000, delay_ms=800)
    started = datetime.now(UTC)
    queue_syncs(big, full=True)
    wait_until(
        "runs to write pages",
        lambda: models()
        .SyncRun.objects.filter(connection_id__in=big, state="running", pages_done__gt=0)
        .exists(),
        timeout=90,
    )
    dump = stack.tmp / "portal.dump"
    # pg_dump's snapshot is taken as it starts: these runs are mid-sync in the backup.
    running_in_dump = (
        models().SyncRun.objects.filter(connection_id__in=big, state="running").count()
    )
    began = time.monotonic()
    with open(dump, "wb") as sink:
        stack.compose(
            "exec", "-T", "postgres",
            "sh", "-c", 'pg_dump -U "$POSTGRES_USER" -d "$POSTGRES_DB" --format=custom',
            stdout=sink, timeout=300,
        )  # fmt: skip
    dumped = time.monotonic() - began
    before_tokens = token_digest()
    refreshes_before = token_counters(stack).get("refresh_token:success", 0)
    stack.zywave.reset()
    wait_idle(big, timeout=300)
    # Restore as docker/README.md says: the portal stopped first.
    stack.compose("stop", "web", "worker", "live", "beat", timeout=300)
    began = time.monotonic()
    stack.compose("rm", "-s", "-f", "postgres", timeout=120)
    stack.engine.docker("volume", "rm", f"{PROJECT}_postgres-data")
    stack.compose("up", "-d", "postgres", timeout=300)
    wait_until(
        "the new postgres to be healthy",
        lambda: stack.health(stack.containers("postgres")[0]) == "healthy",
        timeout=120,
        interval=1,
    )
    with open(dump, "rb") as source:
        stack.compose(
            "exec", "-T", "postgres",
            "sh", "-c", 'pg_restore -U "$POSTGRES_USER" -d "$POSTGRES_DB" --clean --if-exists',
            stdin=source, timeout=300,
        )  # fmt: skip
    restore_seconds = time.monotonic() - began
    stack.compose("up", "-d", timeout=600)
    healthy = stack.wait_healthy()
    fresh_db()
    resumed_runs = models().SyncRun.objects.filter(connection_id__in=big, state="running").count()
    total, failed = undecryptable([stack.values["FIELD_ENCRYPTION_KEY"]])
    after_tokens = token_digest()
    drain = wait_idle(big, timeout=300)
    states = runs_since(big, started)
    dupes = duplicates()
    wrong = mirror_mismatches(stack, list(range(1, BIG + 1)))  # type: ignore[arg-type]
    f = result.figures
    f.update(
        dump_bytes=dump.stat().st_size,
        dump_seconds=round(dumped, 1),
        runs_running_in_dump=running_in_dump,
        runs_running_after_restore=resumed_runs,
        refreshes_during_the_window=refreshes_before,
        restore_seconds=round(restore_seconds, 1),
        healthy_seconds=round(healthy, 1),
        encrypted_values=total,
        undecryptable=failed,
        tokens_as_backed_up=after_tokens == before_tokens,
        states=states,
        duplicates=dupes,
        mismatches=wrong,
        drain_seconds=round(drain, 1),
    )
    result.checks = {
        "mid-sync dump": running_in_dump > 0,
        "tokens decrypt": failed == 0 and total > 0 and after_tokens == before_tokens,
        "syncs resume": lost(states) == 0 and states.get("succeeded", 0) >= len(big),
        "duplicates 0": dupes == 0 and not wrong,
    }
    result.measured = (
        f"dump {dump.stat().st_size / 1e6:.1f} MB in {dumped:.1f} s with {running_in_dump} runs "
        f"mid-sync; destroyed and restored in {restore_seconds:.0f} s, healthy {healthy:.0f} s "
        f"after up; {total} encrypted values, undecryptable **{failed}**, every refresh token "
        f"the one backed up: {'yes' if after_tokens == before_tokens else 'no'}; the "
        f"interrupted runs resumed: {states}; duplicates {dupes}, mirrors wrong {len(wrong)}"
    )
    return result


def wrong_key(stack: ComposeStack) -> Result:
    result = Result(
        "Compose: restored database, wrong FIELD_ENCRYPTION_KEY",
        "FIELD_ENCRYPTION_KEY in docker/.env replaced by another valid key; `up -d web worker` "
        "(migrate first, as compose.yaml orders it), then `up -d --no-deps web worker`",
        "fails closed at start: migrate, web and worker refuse (the canary, integrations.E001) "
        "with a message naming the fix; nothing is written; the right key starts everything",
    )
    right = stack.values["FIELD_ENCRYPTION_KEY"]
    stack.compose("stop", "web", "worker", "live", "beat", timeout=300)
    before = raw_tokens()
    stack.write_env(FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode())
    up = stack.compose("up", "-d", "web", "worker", check=False, timeout=600)
    migrate_log = stack.logs("migrate")
    stack.compose("up", "-d", "--no-deps", "web", "worker", check=False, timeout=600)
    wait_until(
        "web and worker to refuse",
        lambda: "integrations.E001" in stack.logs("web")
        and "integrations.E001" in stack.logs("worker"),
        timeout=240,
        interval=3,
    )
    web_log = stack.logs("web")
    worker_log = stack.logs("worker")
    answered = True
    try:
        requests.get(f"{stack.portal}/health/", timeout=5)
    except requests.RequestException:
        answered = False
    line = (
        next((ln for ln in web_log.splitlines() if "cannot decrypt the data" in ln), "")
        .split("|", 1)[-1]
        .strip()
    )
    names_fix = "Restore the right key" in web_log and "rotate_encryption_key" in web_log
    stack.compose("stop", "web", "worker", timeout=300)
    unchanged = raw_tokens() == before
    stack.write_env(FIELD_ENCRYPTION_KEY=right)
    stack.compose("up", "-d", timeout=600)
    healthy = stack.wait_healthy()
    f = result.figures
    f.update(
        up_refused=up.returncode != 0,
        migrate_refused="integrations.E001" in migrate_log,
        web_refused="integrations.E001" in web_log,
        worker_refused="integrations.E001" in worker_log,
        portal_answered=answered,
        message=line[:400],
        names_fix=names_fix,
        stored_values_unchanged=unchanged,
        right_key_healthy_seconds=round(healthy, 1),
    )
    result.checks = {
        "fails closed": f["web_refused"] and f["worker_refused"] and not answered,
        "names the fix": names_fix,
        "nothing written": unchanged,
    }
    result.measured = (
        f"`up -d web worker` {'refused' if f['up_refused'] else 'went on'} (migrate "
        f"{'refused with integrations.E001' if f['migrate_refused'] else 'ran'}); with "
        f"--no-deps web and worker refused (E001): {f['web_refused']} and "
        f'{f["worker_refused"]}; the port answered: {answered}; the message: "{line[:300]}"; '
        f"stored tokens unchanged: {'yes' if unchanged else 'no'}; with the right key every "
        f"healthcheck healthy in {healthy:.0f} s"
    )
    return result


def raw_tokens() -> list[tuple[Any, ...]]:
    from django.db import connection

    fresh_db()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, access_token, refresh_token FROM integrations_connection ORDER BY id"
        )
        return list(cursor.fetchall())


def rotate_under_load(stack: ComposeStack, ids: list[int]) -> Result:
    from integrations.tasks import refresh_connection

    result = Result(
        "Compose: key rotation under live load",
        "two worker containers on sync and tokens (`--scale worker=2`) while every 2 s tokens "
        "expire, refreshes are asked and syncs queued; docker/README.md's rotation: the new key "
        "put first, `up -d`, `rotate_encryption_key` (exec in web), the old key removed, "
        "`up -d` (everything restarted)",
        "tokens lost 0, decrypt failures 0 (every value on the new key alone), refreshes per "
        "token generation 1.00, syncs lost 0",
    )
    old, new = stack.key, stack.next_key
    small = ids[BIG:]
    wait_idle(None, timeout=180)
    stack.zywave.reset()
    stack.compose("up", "-d", "--scale", "worker=2", timeout=600)
    stack.wait_healthy()
    started = datetime.now(UTC)
    stop = threading.Event()
    errors: list[str] = []
    rounds = [0]

    def load() -> None:
        rng = random.Random(21)
        while not stop.is_set():
            try:
                fresh_db()
                expiring = rng.sample(small, 3)
                expire_tokens(expiring)
                for pk in expiring[:2]:
                    refresh_connection.delay(pk)
                busy = set(
                    models()
                    .SyncRun.objects.active()
                    .filter(connection_id__in=small)
                    .values_list("connection_id", flat=True)
                )
                queue_syncs([pk for pk in small if pk not in busy])
                rounds[0] += 1
            except Exception as exc:  # noqa: BLE001 (a failed round is a figure)
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            stop.wait(2)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    steps: dict[str, float] = {}
    try:
        time.sleep(8)
        began = time.monotonic()
        stack.write_env(FIELD_ENCRYPTION_KEY=f"{new},{old}")
        stack.compose("up", "-d", "--scale", "worker=2", timeout=600)
        steps["new key first, up -d"] = time.monotonic() - began
        time.sleep(8)
        began = time.monotonic()
        # `exec` into the restarted web (which has both keys) where docker/README.md says
        # `run --rm web manage`: see bring_up.
        rotated = stack.compose("exec", "-T", "web", "python", "manage.py", "rotate_encryption_key")
        steps["rotate_encryption_key"] = time.monotonic() - began
        time.sleep(5)
        began = time.monotonic()
        stack.write_env(FIELD_ENCRYPTION_KEY=new)
        stack.compose("up", "-d", "--scale", "worker=2", timeout=600)
        steps["old key removed, up -d"] = time.monotonic() - began
        time.sleep(10)
    finally:
        stop.set()
        thread.join(timeout=60)
    healthy = stack.wait_healthy()
    drain = wait_idle(small, timeout=300)
    time.sleep(3)
    counters = token_counters(stack)
    figures = refresh_figures(started, counters)
    total, failed = undecryptable([new])
    logs = stack.logs("web", "worker", "live", "beat")
    decrypt_errors = logs.count("cannot be decrypted")
    states = runs_since(small, started)
    gone = reauth(ids)
    done_line = next((ln for ln in out(rotated.stdout).splitlines() if ln.startswith("Done")), "")
    f = result.figures
    f.update(figures)
    f.update(
        load_rounds=rounds[0],
        load_errors=errors[:5],
        steps={k: round(v, 1) for k, v in steps.items()},
        rotate_output=re.sub(r"key \S+", "key <fingerprint>", done_line),
        encrypted_values=total,
        undecryptable_with_new_key_alone=failed,
        decrypt_errors_in_logs=decrypt_errors,
        states=states,
        tokens_lost=gone,
        healthy_seconds=round(healthy, 1),
        drain_seconds=round(drain, 1),
    )
    result.checks = {
        "tokens lost 0": gone == 0 and figures["invalid_grant"] == 0,
        "decrypt failures 0": failed == 0 and decrypt_errors == 0 and total > 0,
        "one refresh per generation": figures["refreshes_per_generation"] == 1.0
        and figures["token_generations_replaced"] > 0,
        "syncs lost 0": lost(states) == 0 and not errors,
    }
    result.measured = (
        f"{rounds[0]} load rounds over {len(small)} connections and two worker containers; "
        f"steps {f['steps']} s; {done_line.split(' with key')[0]}; tokens lost {gone}; "
        f"decrypt failures {failed} of {total} values on the new key alone, {decrypt_errors} in "
        f"the logs; {figures['token_requests']} refresh requests for "
        f"{figures['token_generations_replaced']} token generations = "
        f"{figures['refreshes_per_generation']:.2f} per generation, invalid_grant "
        f"{figures['invalid_grant']}; runs {states}"
    )
    return result


def secrets_in_logs(stack: ComposeStack) -> list[str]:
    """Which of the run's secrets appear in any container's log (pip's index lines aside)."""
    logs = stack.logs("postgres", "redis", "migrate", "web", "worker", "live", "beat")
    return [f"secret #{n}" for n, value in enumerate(stack.secrets) if value in logs]


# --- The run ------------------------------------------------------------------------------


def render_section(data: dict[str, Any]) -> str:
    from tests.drills.run_drills import cell

    lines = [
        SECTION,
        "",
        "Generated by `make compose-drill` (`tests/drills/compose_drill.py`, also run by `make "
        "drills`) from `var/drills/compose-results.json`. The images built here on an engine of "
        "the drill's own (Debian's docker.io, vfs, host networking; no registry reachable, so "
        "stand-ins of python:3.11-slim, postgres:16 and redis:7 built from Debian bookworm), "
        "then `docker/compose.yaml` unchanged plus `tests/drills/compose/machine.yaml` (every "
        "service on 127.0.0.1, ports of its own) with the sandbox profile, run with Debian's "
        "docker-compose 1.29. Not run here: a TLS proxy in front, the real Zywave, the real "
        "base images, Compose v2.",
        "",
        f"Run: {data['finished']} on {data['machine']}, {data['runtime_seconds']:.0f} s in all. "
        f"Torn down after: {data.get('removed') or 'nothing'}.",
        "",
        "| drill | injected | expected | measured | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in data["drills"]:
        lines.append(
            f"| {cell(row['drill'])} | {cell(row['injected'])} | {cell(row['expected'])} | "
            f"{cell(row['measured'])} | {cell(row['verdict'])} |"
        )
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Put the section into docs/reliability.md: in place of the last one, or before
    "## Bad input"."""
    report = REPORT.read_text()
    pattern = re.compile(re.escape(SECTION) + r"\n.*?(?=^## )", re.DOTALL | re.MULTILINE)
    if pattern.search(report):
        report = pattern.sub(lambda _: text + "\n", report, count=1)
    else:
        report = report.replace("## Bad input", text + "\n## Bad input", 1)
    REPORT.write_text(report)


def run(keep_packages: bool, data: Path | None) -> tuple[list[dict[str, Any]], list[str]]:
    engine = Engine(say, keep_packages=keep_packages, data=data)
    tmp = Path(tempfile.mkdtemp(prefix="portal-compose-drill-"))
    rows: list[dict[str, Any]] = []
    removed: list[str] = []
    stack: ComposeStack | None = None

    def step(name: str, action: Callable[[], Result]) -> Result | None:
        say(f"drill: {name}")
        began = time.monotonic()
        try:
            result = action()
        except Exception as exc:  # noqa: BLE001 (one broken step must not hide the others)
            traceback.print_exc()
            result = Result(name, "", "", error=f"{type(exc).__name__}: {exc}"[:500])
            result.measured = f"the drill itself failed: {quiet(result.error)}"
        result.seconds = time.monotonic() - began
        rows.append(result.as_dict())
        say(f"  {result.verdict}: {result.measured}")
        return result

    try:
        installed = engine.install()
        say(f"installed: {', '.join(installed) or 'nothing (all present)'}")
        engine.start()
        say(f"engine up on {engine.socket}")
        reuse = data is not None and not ComposeStack.missing_in(engine, [PORTAL_IMAGE])
        if not reuse:
            built = step("images", lambda: build_images(engine))
            if built is None or built.error:
                return rows, removed
        stack = ComposeStack(engine, tmp)
        first = step("first start", lambda: bring_up(stack))
        if first is None or first.error:
            return rows, removed
        ids = seed_people(stack)
        step("restart worker", lambda: restart_worker_mid_sync(stack, ids))
        step("stop worker mid-refresh", lambda: stop_worker_mid_refresh(stack, ids))
        step("restart redis", lambda: restart_service(stack, ids, "redis"))
        step("restart postgres", lambda: restart_service(stack, ids, "postgres"))
        step("backup and restore", lambda: backup_restore(stack, ids))
        step("wrong key", lambda: wrong_key(stack))
        step("key rotation", lambda: rotate_under_load(stack, ids))
        leaked = secrets_in_logs(stack)
        sweep = Result(
            "Compose: secrets in the containers' logs",
            "every portal container's log (and PostgreSQL's, Redis's) after all of the above",
            "none of the run's secrets (keys, passwords, client secret, control key)",
        )
        sweep.figures["found"] = leaked
        sweep.checks = {"none": not leaked}
        sweep.measured = f"secrets found in the logs: **{len(leaked)}** of {len(stack.secrets)}"
        rows.append(sweep.as_dict())
    finally:
        say("tearing down: the stack, the engine, what was installed")
        if stack is not None:
            (tmp / "logs.txt").write_text(quiet(stack.logs()))
            stack.compose("down", "-v", "--timeout", "60", check=False, timeout=300)
        removed.extend(engine.stop())  # the list returned, also from an early return above
        if rows and all(row["verdict"] == "pass" for row in rows):
            shutil.rmtree(tmp, ignore_errors=True)  # its .env holds the run's secrets
            say(f"removed: {', '.join(removed) or 'nothing'}")
        else:
            say(f"removed: {', '.join(removed) or 'nothing'}; logs kept in {tmp}")
    return rows, removed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-packages",
        action="store_true",
        default=os.environ.get("COMPOSE_DRILL_KEEP_PACKAGES") == "1",
        help="leave docker.io, mmdebstrap and docker-compose installed",
    )
    parser.add_argument("--no-report", action="store_true", help="leave docs/reliability.md")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="(working on the drill) the engine's data directory, kept: built once, reused",
    )
    args = parser.parse_args()
    import platform

    try:
        rows, removed = run(args.keep_packages, args.data)
    except (EngineError, DrillError, SandboxError) as exc:
        print(f"COMPOSE DRILL FAILED to run: {quiet(str(exc))}", file=sys.stderr)
        return 2
    data = {
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "runtime_seconds": round(time.monotonic() - START, 1),
        "removed": ", ".join(removed),
        "drills": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2, default=str))
    if not args.no_report:
        write_section(render_section(data))
        say(f"wrote {REPORT.relative_to(REPO_ROOT)}")
    failed = [r["drill"] for r in rows if r["verdict"] != "pass"]
    say(f"done in {time.monotonic() - START:.0f}s; not passing: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
