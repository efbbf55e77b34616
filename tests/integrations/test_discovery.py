"""integrations/discovery.py through the real sandbox: the discovery document is read on connect
and on refresh (cached, with a timeout), the documented `/connect/*` paths serve when it is
unreachable, and a document naming another issuer is refused. And the network guard that keeps
every test process on loopback (tests/netguard/sitecustomize.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.cache import cache
from django.core.management import call_command

from integrations import discovery
from integrations.models import Connection
from integrations.tokens import RefreshFailed, refresh
from tests.conftest import Person, connection
from tests.integrations.flows import connect, inject_fault, nothing_connected
from tests.sandboxserver import Sandbox

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent.parent
DISCOVERY = r"^/\.well-known/openid-configuration/?$"  # not .../jwks
IMPOSTOR = "https://impostor.invalid"


def discovery_fault_remaining(sandbox: Sandbox) -> int:
    """How many firings the discovery fault has left: fewer than set means it was read."""
    faults = sandbox.control("GET", "faults")["faults"]
    return sum(f["remaining"] for f in faults if f["path"] == DISCOVERY)


def test_connecting_reads_the_discovery_document_once_and_caches_it(
    dana: Person, zywave: Sandbox, fresh_discovery: None
) -> None:
    assert connect(dana, zywave).status_code == 302
    cached = cache.get(f"zywave:discovery:{zywave.url}")
    assert cached["token_endpoint"] == f"{zywave.url}/connect/token"
    inject_fault(zywave, DISCOVERY, count=1, status=503)
    conn = Connection.objects.get(user=dana.user)
    refresh(conn, refused=conn.access_token)  # a refresh: the token endpoint from the cache
    assert discovery_fault_remaining(zywave) == 1


@pytest.mark.parametrize(
    "fault",
    [{"status": 503}, {"status": 404}, {"delay_ms": 2500}],  # the timeout is 2 s here
    ids=["503", "404", "timeout"],
)
def test_unreachable_discovery_falls_back_to_the_documented_paths_and_connects(
    fault: dict[str, Any], dana: Person, zywave: Sandbox, fresh_discovery: None
) -> None:
    inject_fault(zywave, DISCOVERY, count=5, **fault)
    answer = connect(dana, zywave)
    assert answer.status_code == 302
    assert Connection.objects.filter(user=dana.user, status=Connection.Status.ACTIVE).exists()
    assert discovery_fault_remaining(zywave) == 4  # asked once; the fallback is cached a while
    assert cache.get(f"zywave:discovery:{zywave.url}") == discovery.documented()


def test_a_discovery_document_naming_another_issuer_refuses_the_connect(
    dana: Person, zywave: Sandbox, fresh_discovery: None
) -> None:
    zywave.control("POST", "settings", issuer=IMPOSTOR)
    answer = connect(dana, zywave)
    assert answer.status_code == 400
    assert b"could not verify that this sign-in came from Zywave" in answer.content
    assert nothing_connected()
    assert zywave.counters()["token"] == {}  # refused before the code was exchanged
    zywave.control("POST", "settings", issuer="")
    assert connect(dana, zywave).status_code == 302  # a refusal is not cached


def test_a_refresh_refuses_a_discovery_document_naming_another_issuer_and_keeps_the_tokens(
    dana: Person, zywave: Sandbox, fresh_discovery: None
) -> None:
    assert connect(dana, zywave).status_code == 302
    conn = Connection.objects.get(user=dana.user)
    kept = conn.refresh_token
    cache.clear()
    zywave.control("POST", "settings", issuer=IMPOSTOR)
    with pytest.raises(RefreshFailed):
        refresh(conn, refused=conn.access_token)
    conn.refresh_from_db()
    assert conn.status == Connection.Status.ACTIVE and conn.refresh_token == kept
    assert zywave.counters()["token"] == {"authorization_code:success": 1}


def test_start_up_system_checks_and_pages_never_read_discovery(
    dana: Person, zywave: Sandbox, fresh_discovery: None
) -> None:
    inject_fault(zywave, DISCOVERY, count=1, status=503)
    env = {**os.environ, "ZYWAVE_AUTH_URL": zywave.url, "DJANGO_SETTINGS_MODULE": "portal.settings"}
    started = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, timeout=120
    )
    assert started.returncode == 0, started.stderr
    call_command("check")
    connection(dana.user)
    for path in ("/", "/zywave/profiles/", "/zywave/disconnect/"):
        assert dana.get(path).status_code == 200, path
    assert discovery_fault_remaining(zywave) == 1


# --- The network guard: tests stay on loopback --------------------------------------------------

# Each line of output: what was tried, then "refused" or "NOT REFUSED".
PROBE = textwrap.dedent(
    """
    import socket, sys

    # Without the guard the attempts below would send packets: never try them then.
    if not getattr(socket.socket.connect, "__netguard__", False):
        sys.exit("the guard is not installed in this process")
    attempts = {
        "connect 10.0.0.1": lambda: socket.socket().connect(("10.0.0.1", 9)),
        "resolve auth.zywave.invalid": lambda: socket.getaddrinfo("auth.zywave.invalid", 443),
        "create_connection auth.zywave.invalid": lambda: socket.create_connection(
            ("auth.zywave.invalid", 443), timeout=1
        ),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except PermissionError as exc:
            print(name, "refused" if "netguard" in str(exc) else exc)
        else:
            print(name, "NOT REFUSED")
    """
)


def guard_installed() -> bool:
    return bool(getattr(socket.socket.connect, "__netguard__", False))


@pytest.mark.parametrize("address", ["10.0.0.1", "93.184.215.14", "2001:db8::1", "::ffff:10.0.0.1"])
def test_the_guard_refuses_an_address_outside_loopback_before_connecting(address: str) -> None:
    assert guard_installed()  # else the lines below would send a packet
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as sock:
        with pytest.raises(PermissionError, match="netguard"):
            sock.connect((address, 9))
        with pytest.raises(PermissionError, match="netguard"):
            sock.connect_ex((address, 9))
    with pytest.raises(PermissionError, match="netguard"):
        socket.create_connection((address, 9), timeout=1)


def test_the_guard_refuses_to_resolve_any_name_but_localhost() -> None:
    assert guard_installed()
    with pytest.raises(PermissionError, match="netguard"):
        socket.getaddrinfo("auth.zywave.invalid", 443)
    with pytest.raises(requests.ConnectionError, match="netguard"):
        requests.get("https://auth.zywave.invalid/.well-known/openid-configuration", timeout=1)
    assert {info[4][0] for info in socket.getaddrinfo("localhost", 80)} <= {"127.0.0.1", "::1"}


def test_the_guard_holds_in_a_subprocess_started_with_the_runs_environment() -> None:
    assert guard_installed()
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == [
        "connect 10.0.0.1 refused",
        "resolve auth.zywave.invalid refused",
        "create_connection auth.zywave.invalid refused",
    ]
