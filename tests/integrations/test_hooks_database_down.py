"""A record's fetch that meets the database gone (a restart, a failover) is tried again, so a
notification Zywave was answered 202 for is never left unapplied. Found by the webhook drill
that restarts PostgreSQL while deliveries arrive (tests/drills/hooks.py): the fetches a worker
ran while the server was down raised OperationalError, which `refetch_record` did not retry, so
their notifications stayed queued and the changes waited for the next poll (up to an hour
while deliveries arrive, ZYWAVE_WEBHOOK_POLL_MINUTES).

A real worker reaches PostgreSQL through a TCP proxy of this test, which is cut (every
connection closed, new ones refused) and put back: the database goes away for that worker only,
as a restart does, while the test's own connection stays up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from integrations import hooks
from integrations.models import Account, ZywaveNotification
from integrations.sync import sync_now
from tests.conftest import connection
from tests.integrations.workers import Worker, database_url, use_test_broker, wait_for
from tests.sandboxserver import Sandbox, free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


class Proxy:
    """127.0.0.1:port -> the database server; `cut()` closes every connection and stops
    listening (connections refused), `restore()` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.listener = listener
        threading.Thread(target=self.accept, args=(listener,), daemon=True).start()

    def accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            server = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    def pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        assert self.listener is not None
        # shutdown first: a close alone leaves the thread blocked in accept() accepting.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.sockets.clear()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    config = settings.DATABASES["default"]
    if not str(config["ENGINE"]).endswith("postgresql"):
        pytest.skip("needs PostgreSQL (a server to reach through the proxy)")
    started = Proxy((str(config["HOST"] or "127.0.0.1"), int(str(config["PORT"] or 5432))))
    yield started
    started.cut()


def test_a_fetch_that_meets_the_database_down_is_tried_again_and_applied(
    staff: User, zywave: Sandbox, proxy: Proxy, tmp_path: Path
) -> None:
    conn = connection(staff, zywave)
    sync_now(conn)
    use_test_broker()
    direct = database_url()
    host_port = direct.split("@", 1)[1].split("/", 1)[0]
    worker = Worker(
        zywave,
        tmp_path / "worker.log",
        DATABASE_URL=direct.replace(host_port, f"127.0.0.1:{proxy.port}"),
    ).start()
    try:
        assert conn.chosen_profile is not None
        changed = str(
            zywave.control(
                "POST",
                "accounts/change",
                profile_id=conn.chosen_profile.zywave_id,
                count=1,
                field="name",
            )["ids"][0]
        )
        proxy.cut()  # the worker's database is gone; this process's is not
        cut_at = time.monotonic()
        hooks.receive(
            conn, hooks.Notification("account.updated", "accounts", changed, timezone.now())
        )
        kept = ZywaveNotification.objects.get(connection=conn, record_id=changed)
        time.sleep(3)  # the fetch runs meanwhile and finds no database
        assert "refetch_record" in worker.log_tail(200)
        assert ZywaveNotification.objects.get(pk=kept.pk).state == "queued"
        proxy.restore()
        wait_for(
            lambda: ZywaveNotification.objects.get(pk=kept.pk).state == "applied",
            timeout=60,
            what=f"the notification to be applied\n{worker.log_tail()}",
        )
        assert time.monotonic() - cut_at < 60
        assert "(rev" in Account.objects.get(connection=conn, zywave_id=changed).name
    finally:
        worker.stop()
