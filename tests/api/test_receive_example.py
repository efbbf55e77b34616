"""docs/examples/receive_webhooks.py run as a receiver runs: its own process, the secret the
portal showed, real deliveries signed by the portal, and the pull of what changed from the live
test server. So the README's receiver cannot rot."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from integrations import mirror, webhooks
from integrations.api.keys import issue
from integrations.models import WebhookAttempt
from tests.conftest import connection

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "receive_webhooks.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def started(port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "127.0.0.1", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"the example did not start: {process.communicate()[0]}")


def test_the_example_verifies_dedupes_and_pulls_what_changed(
    staff: User, live_server: Any, settings: Any
) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    conn = connection(staff)
    _, key = issue(staff, "receiver", ["read"])
    port = free_port()
    subscription, secret = webhooks.subscribe(
        staff, f"http://127.0.0.1:{port}/", ["accounts.changed"]
    )
    env = {
        **os.environ,
        "WEBHOOK_SECRET": secret,
        "PORTAL_API_KEY": key,
        "PORTAL_URL": live_server.url,
    }
    receiver = started(port, env)
    try:
        with transaction.atomic():
            written = mirror.upsert(
                "accounts", conn.pk, 1, [{"id": str(n), "name": f"A{n}"} for n in range(3)]
            )
            webhooks.emit_changes(
                staff.pk, conn.pk, "accounts", written.changes, written.changed_at
            )
        webhooks.drain(subscription.pk)
        delivery = subscription.deliveries.get()
        webhooks.replay(subscription.deliveries.all())  # the same webhook-id again
        webhooks.drain(subscription.pk)
        statuses = list(
            WebhookAttempt.objects.filter(delivery=delivery)
            .order_by("at")
            .values_list("status", flat=True)
        )
        assert statuses == [204, 204]
        # Signed with another secret: refused.
        webhooks.rotate_secret(subscription, staff)
        subscription.refresh_from_db()
        subscription.previous_secret_until = None
        subscription.save(update_fields=["previous_secret_until"])
        webhooks.send_test(subscription)
        webhooks.drain(subscription.pk)
        assert WebhookAttempt.objects.order_by("-at").values_list("status", flat=True)[0] == 401
    finally:
        receiver.terminate()
        output = receiver.communicate(timeout=10)[0]
    # Handled once (the replay was recognised by its webhook-id), all three records pulled.
    assert output.count("accounts.changed: 3 changes, pulled 3 records") == 1, output
