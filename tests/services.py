"""PostgreSQL and Redis for a test run, wherever it runs: `python -m tests.services -- CMD ...`.

`make test` and `make smoke` run their commands through this, so the PostgreSQL-only code
paths (the `jsonb_to_recordset` upsert, `select_for_update`) and the Celery tests run on every
machine, not only in CI:

* PostgreSQL: `DATABASE_URL` when it is set (CI sets it); else the server on 127.0.0.1:5432
  when one answers, with a database named for this run; else a private cluster of Debian's
  `postgresql` package (initdb on a free port, removed afterwards; `make deps` installs it).
* Redis: the server of `REDIS_URL` when it is set, else 127.0.0.1:6379 when one answers, else
  a private `redis-server` on a free port. On it, this run takes a database number of its own
  (1 to 12, claimed with a lock key in database 0 so that two runs on one machine never share
  one; 13 and 14 belong to the drills and the smoke run's history) and flushes it at the start
  and the end, so an aborted run leaves nothing for a later worker to consume.

The command gets `DATABASE_URL`, `REDIS_URL` and `PORTAL_TEST_PG_ADMIN` (a URL of the
server's `postgres` database, for tools that create databases of their own) in its environment,
and `tests/netguard` first on `PYTHONPATH`: its `sitecustomize` makes every Python process of
the run (workers and subprocesses included) refuse any address outside loopback before
connecting, so no test reaches a real Zywave host by accident.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis

NETGUARD = Path(__file__).resolve().parent / "netguard"
# The partition drill's veth pair (tests/drills/netfaults.py): a network that exists only on
# this machine, for as long as the drill runs.
NETGUARD_ALLOW = "10.213.0.0/16"
RUN_DATABASES = range(1, 13)
LOCK_SECONDS = 3 * 3600


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(what: str, probe: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if probe():  # type: ignore[operator]
                return
        time.sleep(0.2)
    raise ServiceError(f"{what} did not start within {timeout:.0f}s")


def postgres_bindir() -> Path:
    """The newest PostgreSQL server installed (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3])
    )
    if not found:
        raise ServiceError(
            "No PostgreSQL answers on 127.0.0.1:5432 and no server is installed to start one: "
            "run `make deps` as root (Debian's postgresql package), or set DATABASE_URL."
        )
    return found[-1].parent


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """A throwaway cluster (trust auth, user postgres) on a free port; yields its admin URL.

    initdb and the server refuse to run as root: as root they run as the `postgres` user."""
    bindir = postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="portal-test-pg-"))
    owner: dict[str, Any] = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
    if owner:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust",
         "-E", "UTF8", "--no-locale", "--no-sync"],
        check=True, capture_output=True, cwd=root, timeout=120, **owner,
    )  # fmt: skip
    with open(root / "postgres.log", "ab") as log:
        server = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(root / "data"), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
             "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, **owner,
        )  # fmt: skip
    admin = f"postgres://postgres@127.0.0.1:{port}/postgres"
    try:
        wait_for("the private PostgreSQL", lambda: psycopg.connect(admin, connect_timeout=2))
        yield admin
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        raise ServiceError(
            "No Redis answers on 127.0.0.1:6379 and redis-server is not installed: run "
            "`make deps` as root (Debian's redis-server package), or set REDIS_URL."
        )
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="portal-test-redis-"))
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}"
    try:
        wait_for("the private Redis", lambda: redis.Redis.from_url(url).ping())
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, str]]:
    """(DATABASE_URL, admin URL) for this run."""
    given = os.environ.get("DATABASE_URL")
    if given:
        parts = urlsplit(given)
        yield given, parts._replace(path="/postgres").geturl()
        return
    name = f"portal_run_{os.getpid()}"
    if answers("127.0.0.1", 5432):
        admin = "postgres://postgres@127.0.0.1:5432/postgres"
        yield f"postgres://postgres@127.0.0.1:5432/{name}", admin
        return
    with private_postgres() as admin:
        yield admin.rsplit("/", 1)[0] + f"/{name}", admin


@contextlib.contextmanager
def redis_database() -> Iterator[str]:
    """A Redis database number of this run's own, flushed at the start and the end."""
    given = os.environ.get("REDIS_URL") or os.environ.get("CELERY_BROKER_URL")
    with contextlib.ExitStack() as stack:
        if given:
            parts = urlsplit(given)
            server = parts._replace(path="").geturl()
        elif answers("127.0.0.1", 6379):
            server = "redis://127.0.0.1:6379"
        else:
            server = stack.enter_context(private_redis())
        locks = redis.Redis.from_url(f"{server}/0", socket_timeout=5)
        claim = f"{os.getpid()}@{socket.gethostname()}"
        for number in RUN_DATABASES:
            if locks.set(f"portal-tests:db:{number}", claim, nx=True, ex=LOCK_SECONDS):
                break
        else:
            raise ServiceError(f"every test database 1-12 on {server} is taken by another run")
        url = f"{server}/{number}"
        run_db = redis.Redis.from_url(url, socket_timeout=5)
        run_db.flushdb()
        try:
            yield url
        finally:
            with contextlib.suppress(redis.RedisError):
                run_db.flushdb()
                if locks.get(f"portal-tests:db:{number}") == claim.encode():
                    locks.delete(f"portal-tests:db:{number}")


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if not argv:
        print("usage: python -m tests.services -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    with postgres() as (database_url, admin), redis_database() as redis_url:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PORTAL_TEST_PG_ADMIN": admin,
            "REDIS_URL": redis_url,
            "PYTHONPATH": os.pathsep.join(
                [str(NETGUARD), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "NETGUARD_ALLOW": os.environ.get("NETGUARD_ALLOW", NETGUARD_ALLOW),
        }
        env.pop("CELERY_BROKER_URL", None)  # REDIS_URL is the broker: one source of truth
        print(f"tests.services: database {urlsplit(database_url).path[1:]}, Redis {redis_url}")
        return subprocess.call(argv, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
