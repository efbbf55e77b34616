"""The drills' stack: the sandbox, PostgreSQL, Redis, gunicorn, two Celery workers and beat.

PostgreSQL is a private cluster (initdb on a free port, under a temporary directory), so that
the restart drill can restart it: the shared server on 5432 belongs to CI and other sessions.

Process handling comes from the smoke run (`tests/smoke/run_smoke.py`): its production
environment, its `Process` (log file, SIGTERM then kill) and its `Browser`. Workers run in their
own process group, so that a SIGKILL reaches the prefork pool children as an OOM kill would.

This process itself is configured as the portal (same environment as the workers): after
`Stack.start()` it may import the portal's models and call its code, e.g. the reconciler.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import psycopg
import redis
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.sandboxserver import (  # noqa: E402
    Sandbox,
    free_port,
    sandbox_env,
    start_sandbox,
    stop_sandbox,
)
from tests.smoke.run_smoke import (  # noqa: E402
    Process,
    manage,
    production_env,
    worker_command,
)

REDIS_DB = 13  # the drills' own database on the shared Redis (tests use 15, smoke 14)
BIN = Path(sys.executable).parent
CLIENT_ID = "portal-drills"
PASSWORD = "sandbox"  # the sandbox users' password (the sandbox's own demo password)

# Settings for the drills: short leases and timeouts so that faults resolve in seconds.
DRILL_SETTINGS = {
    "ZYWAVE_SYNC_LEASE_SECONDS": "5",
    "ZYWAVE_SYNC_REQUEUE_SECONDS": "20",
    "ZYWAVE_SYNC_BACKOFF_SECONDS": "1",
    "ZYWAVE_SYNC_MAX_RETRIES": "6",
    "ZYWAVE_SYNC_MAX_WAIT_SECONDS": "30",
    "ZYWAVE_SYNC_INTERVAL_MINUTES": "1",
    "ZYWAVE_CONNECT_TIMEOUT": "2",
    "ZYWAVE_READ_TIMEOUT": "4",
    "ZYWAVE_TOKEN_UPKEEP_MINUTES": "1",
    "CELERY_TASK_SOFT_TIME_LIMIT": "240",
    "CELERY_TASK_TIME_LIMIT": "300",
}


CALLER_SETTINGS = (
    r"(DEBUG|SECRET_KEY|ALLOWED_HOSTS|FIELD_ENCRYPTION|ZYWAVE_|DATABASE_|REDIS_|CELERY_|"
    r"SANDBOX_|PORTAL_|LOG_|GUNICORN_|WEB_CONCURRENCY|EMAIL_|SECURE_|SOCIAL_AUTH_|"
    r"DJANGO_SETTINGS_MODULE)"
)


class DrillError(Exception):
    pass


def wait_until(
    what: str, probe: Callable[[], bool], timeout: float, interval: float = 0.25
) -> float:
    """Seconds until `probe()` held; DrillError after `timeout` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if probe():
                return time.monotonic() - start
        except (requests.RequestException, OSError, redis.RedisError):
            pass
        time.sleep(interval)
    raise DrillError(f"timed out after {timeout:.0f}s waiting for {what}")


class Group(Process):
    """A `Process` in its own process group: SIGTERM and SIGKILL reach its children too."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the whole group at once, as an OOM killer or a lost machine would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)
        self.log.close()

    def stop(self, timeout: float = 30) -> int | None:
        if self.alive():
            # SIGTERM to the main process only, as `docker stop` does: a Celery worker then
            # shuts down warm, letting its pool finish the tasks in hand.
            self.popen.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
            code = None
        # Stray pool children of a killed parent: the group must be empty when we leave.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if not self.log.closed:
            self.log.close()
        return code

    def rss_kib(self) -> int:
        """Resident memory of the process and its children (KiB), from /proc."""
        total = 0
        for pid in [self.popen.pid, *children(self.popen.pid)]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            for child in text:
                found.append(int(child))
                found.extend(children(int(child)))
    except OSError:
        pass
    return found


# Sandbox users for the drills: each with its own agency (so that one person's data is
# recognisable on a page), two profiles on it (so that connecting asks for a choice), and
# accounts with one contact each. The first `big` users get multi-page books.
SANDBOX_SETUP = """
import json, os, random
from datetime import timedelta
from django.contrib.auth.models import User
from django.contrib.auth.hashers import make_password
from django.utils import timezone
from sandbox.zywave.models import Account, Agency, Contact, Person, Profile
n, big, big_size, small_size = json.loads(os.environ["DRILL_USERS"])
rng = random.Random(7)
password = make_password("sandbox")
now = timezone.now()
users = User.objects.bulk_create(
    [User(username=f"drill{i:03d}@example.com", email=f"drill{i:03d}@example.com",
          first_name="Drill", last_name=f"{i:03d}", password=password) for i in range(1, n + 1)]
)
users = list(User.objects.filter(username__startswith="drill").order_by("username"))
Person.objects.bulk_create([Person(user=u) for u in users])
accounts = []
for i, user in enumerate(users, start=1):
    agency = Agency.objects.create(id=900000 + i, name=f"Drill Agency {i:03d}")
    for k in (0, 1):
        Profile.objects.create(
            id=700000 + 2 * i + k, type_code="B", name=f"Drill {i:03d} profile {k}",
            agency=agency, user=user, broker_id=str(i), email=user.username,
            given_name="Drill", surname=f"{i:03d}")
    size = big_size if i <= big else small_size
    accounts += [Account(agency=agency, name=f"Drill{i:03d} Account {k:04d}", city="Testville",
                         state="WI", updated=now - timedelta(days=rng.randint(2, 300)))
                 for k in range(size)]
Account.objects.bulk_create(accounts, batch_size=2000)
contacts = [Contact(account=a, agency_id=a.agency_id, first_name="Pat",
                    last_name=f"Drill{a.agency_id - 900000:03d}", updated=a.updated)
            for a in Account.objects.filter(agency_id__gte=900000)]
Contact.objects.bulk_create(contacts, batch_size=2000)
print(len(users), len(accounts), len(contacts))
"""


def seed_drill_users(var_dir: Path, users: int, big: int, big_size: int, small_size: int) -> str:
    """SANDBOX_SETUP in the sandbox whose data is in `var_dir`; returns its counts."""
    setup = subprocess.run(
        [sys.executable, "-m", "sandbox", "shell", "-c", SANDBOX_SETUP],
        cwd=REPO_ROOT,
        env={
            **sandbox_env(var_dir),
            "DRILL_USERS": f"[{users}, {big}, {big_size}, {small_size}]",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    if setup.returncode != 0:
        raise DrillError(f"sandbox users: {setup.stdout}\n{setup.stderr}")
    return setup.stdout.strip().splitlines()[-1]


PORTAL_SETUP = """
import json, os
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
n = json.loads(os.environ["DRILL_USERS"])[0]
password = make_password(os.environ["DRILL_PASSWORD"])
User.objects.bulk_create([User(username=f"staff{i:03d}", password=password)
                          for i in range(1, n + 1)])
"""


class Stack:
    """Everything `make drills` runs, on 127.0.0.1 and free ports, stopped in `stop()`."""

    def __init__(
        self,
        tmp: Path,
        database: str,
        users: int,
        big: int,
        big_size: int = 250,
        small_size: int = 10,
        log: Callable[[str], None] = print,
        redis_url: str | None = None,
    ) -> None:
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.database = database
        self.users = users
        self.big = big
        self.sizes = (big_size, small_size)
        self.say = log
        self.processes: list[Group] = []
        self.workers: list[Group] = []
        self.beat: Group | None = None
        self.sandbox: Sandbox | None = None
        self.sandbox_process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.portal = ""
        self.redis_url = redis_url or f"redis://127.0.0.1:6379/{REDIS_DB}"
        self.worker_count = 0
        self.lock_key = f"portal-drills-lock-{database}"
        self.postgres: Postgres | None = None

    # Start and stop ----------------------------------------------------------------------

    def start(self) -> None:
        self.say("initdb and start a private PostgreSQL")
        self.postgres = Postgres(free_port(), self.logs)
        self.postgres.start()
        with psycopg.connect(self.postgres.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.database}")
        broker = redis.Redis.from_url(self.redis_url, socket_timeout=5)
        # Two drill runs on one Redis database would take each other's tasks.
        holder = broker.get(self.lock_key)
        owner = holder.decode() if isinstance(holder, bytes) else holder
        if owner is not None and owner != str(os.getpid()):
            raise DrillError(
                f"another drill run (pid {owner}) is using {self.redis_url}; wait for it to end"
            )
        broker.flushdb()
        broker.set(self.lock_key, str(os.getpid()), ex=1800)

        self.say("seeding and starting the sandbox")
        self.sandbox, self.sandbox_process = start_sandbox(self.tmp / "sandbox", accounts=300)
        seeded = seed_drill_users(self.tmp / "sandbox", self.users, self.big, *self.sizes)
        self.say(f"sandbox users, accounts, contacts: {seeded}")

        web_port = free_port()
        self.portal = f"http://127.0.0.1:{web_port}"
        client_secret = secrets.token_urlsafe(32)
        self.sandbox.register_client(
            CLIENT_ID, client_secret, [f"{self.portal}/oauth/complete/zywave/"]
        )
        env = production_env(self.tmp, web_port, self.sandbox, client_secret)
        env.update(
            DATABASE_URL=self.postgres.url(self.database),
            # Mail goes to files, so that the secrets sweep can read every message sent.
            EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
            EMAIL_FILE_PATH=str(self.tmp / "mail"),
            REDIS_URL=self.redis_url,
            ZYWAVE_CLIENT_ID=CLIENT_ID,
            WEB_CONCURRENCY="2",
            GUNICORN_THREADS="8",
            # The network guard (tests/netguard) lets these processes reach the partition
            # drill's sandbox, on a veth pair that exists only on this machine, and nothing else.
            NETGUARD_ALLOW="10.213.0.0/16",
            **DRILL_SETTINGS,
        )
        self.env = env
        self.staff_password = secrets.token_urlsafe(16)
        self.say("migrate, collectstatic, portal users")
        manage(env, "migrate", "--no-input")
        manage(env, "collectstatic", "--no-input", "--verbosity", "0")
        manage(
            {**env, "DRILL_USERS": f"[{self.users}]", "DRILL_PASSWORD": self.staff_password},
            "shell",
            "-c",
            PORTAL_SETUP,
        )
        self.configure_here()

        self.say("starting gunicorn and two Celery workers")
        web = Group(
            "web",
            [str(BIN / "gunicorn"), "-c", "portal/gunicorn.conf.py", "portal.wsgi:application"],
            env,
            self.logs,
        )
        self.processes.append(web)
        self.workers = [self.start_worker(), self.start_worker()]
        wait_until("/health/ to answer 200", self.healthy, timeout=90)
        self.wait_workers()

    def configure_here(self) -> None:
        """Make this process the portal: same settings as the workers, then django.setup()."""
        for key in list(os.environ):
            if re.match(CALLER_SETTINGS, key):
                del os.environ[key]  # as production_env does for the children
        os.environ.update(self.env)
        import django

        django.setup()

    def healthy(self) -> bool:
        for process in self.processes:
            if not process.alive():
                raise DrillError(f"{process.name} exited early:\n{process.tail()}")
        response = requests.get(f"{self.portal}/health/", timeout=10)
        return response.status_code == 200

    def start_worker(self, env: dict[str, str] | None = None) -> Group:
        self.worker_count += 1
        name = f"worker{self.worker_count}"
        worker = Group(
            name,
            worker_command(f"drills-{name}-{os.getpid()}@%h"),
            env or self.env,
            self.logs,
        )
        self.processes.append(worker)
        return worker

    def wait_workers(self, timeout: float = 60) -> float:
        """Seconds until a heartbeat task comes back (a worker consumes)."""
        from integrations.tasks import heartbeat

        start = time.monotonic()
        heartbeat.delay().get(timeout=timeout)
        return time.monotonic() - start

    def replace_worker(self, worker: Group) -> Group:
        worker.kill()
        self.workers.remove(worker)
        fresh = self.start_worker()
        self.workers.append(fresh)
        return fresh

    def swap_workers(self, env: dict[str, str]) -> list[Group]:
        """Stop the stack's workers (warm) and start two configured by `env` instead."""
        for worker in list(self.workers):
            worker.stop()
            self.workers.remove(worker)
        self.workers = [self.start_worker(env), self.start_worker(env)]
        return list(self.workers)

    def restore_workers(self) -> None:
        """Stop whatever workers run now and start two with the stack's own settings."""
        for worker in list(self.workers):
            worker.stop()
            self.workers.remove(worker)
        self.workers = [self.start_worker(), self.start_worker()]

    def start_beat(self) -> Group:
        self.beat = Group(
            "beat",
            [
                str(BIN / "celery"),
                "-A",
                "portal",
                "--quiet",
                "beat",
                "--schedule",
                str(self.tmp / "celerybeat-schedule"),
                "--loglevel",
                "INFO",
            ],
            self.env,
            self.logs,
        )
        self.processes.append(self.beat)
        return self.beat

    def stop(self) -> None:
        for process in reversed(self.processes):
            began = time.monotonic()
            try:
                process.stop(timeout=20)
            except Exception as exc:  # noqa: BLE001 (clean up the rest whatever happens)
                self.say(f"stopping {process.name}: {exc}")
            if time.monotonic() - began > 5:
                self.say(f"{process.name} took {time.monotonic() - began:.0f}s to stop")
        if self.sandbox_process is not None:
            stop_sandbox(self.sandbox_process)
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres.remove()
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(self.redis_url, socket_timeout=5).delete(self.lock_key)

    # Helpers for drills ------------------------------------------------------------------

    @property
    def zywave(self) -> Sandbox:
        assert self.sandbox is not None
        return self.sandbox

    def email(self, i: int) -> str:
        return f"drill{i:03d}@example.com"

    def sandbox_book(self, i: int) -> int:
        """Accounts (and as many contacts) the sandbox holds for drill user i."""
        return self.sizes[0] if i <= self.big else self.sizes[1]


def redis_server(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A Redis of our own, as production runs it (no persistence), on 127.0.0.1:port."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / f"redis-{port}.log", "ab")  # noqa: SIM115 (the child keeps its copy)
    process = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--dir",
            str(workdir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    wait_until("our Redis", lambda: bool(client.ping()), timeout=20)
    return process


# Terminate, wait, kill: the same for any child process as for the sandbox.
stop_process = stop_sandbox


class Postgres:
    """A private PostgreSQL cluster on 127.0.0.1:port (trust auth, user postgres).

    initdb and the server refuse to run as root: as root they run as the `postgres` system user,
    in a directory of their own (the drills' temporary directory is private to root).
    """

    def __init__(self, port: int, logs: Path) -> None:
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="portal-drills-pg-"))
        self.data = self.root / "data"
        self.log_path = logs / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.bindir = postgres_bindir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-locale", "--no-sync",
        )  # fmt: skip

    def owner(self) -> dict[str, Any]:
        """Popen arguments that run the child as `postgres` when we are root (no wrapper
        process in between, so that signals reach the server itself)."""
        return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}

    def run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
            **self.owner(),
        )
        if done.returncode != 0:
            raise DrillError(f"{tool} failed: {done.stdout}\n{done.stderr}")

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def start(self) -> float:
        """Start the server; seconds until it accepts connections."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.root}",
                    "-c",
                    "max_connections=300",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                **self.owner(),
            )
        return wait_until("our PostgreSQL", self.answers, timeout=60)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, transactions rolled back, as a restart
        by an operator or a failover would do."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def postgres_bindir() -> Path:
    """The newest PostgreSQL server installed (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3])
    )
    if not found:
        raise DrillError("no PostgreSQL server binaries under /usr/lib/postgresql")
    return found[-1].parent
