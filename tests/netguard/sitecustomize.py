"""The network guard of test runs: loopback only, refused before anything is sent.

tests/services.py puts this directory on PYTHONPATH, so every Python process of a run (pytest,
its workers, every subprocess that inherits the environment) imports this module at start-up,
as Python does with any `sitecustomize`; tests/conftest.py installs it in the pytest process
too. No test can then reach a real Zywave host (or anything else) by accident, whatever URL it
configures (tests use `.invalid` names for Zywave's real ones).

What is refused, with a PermissionError (an OSError, so HTTP clients report a connection
failure), before any packet leaves:

- connecting (`socket.connect`, `connect_ex`, `sendto`) to an IP address outside 127.0.0.0/8
  and ::1;
- resolving (`socket.getaddrinfo`, which `create_connection`, requests and redis use) any name
  but `localhost`: it is refused unresolved, since a DNS query is itself a packet out.

AF_UNIX and other local families pass. `NETGUARD_ALLOW` (comma-separated networks) adds
networks that exist only on this machine (the partition drill's veth pair). Sockets opened by C
libraries themselves (libpq) are not seen; DATABASE_URL is loopback in every run.

What a test can read (nothing here lets more through):

- `refused()`: every refusal of this process so far (the last 10,000), so that a test can
  assert that nothing tried to leave, not only that nothing left.
- `NETGUARD_LOG=<file>`: every connect of the process to an IP address, allowed or not, and
  every refused resolution, appended to the file as one JSON line each (`pid`, `call`, `host`,
  `port`, `allowed`): what a drill reads from the processes it starts.
- `NETGUARD_HOSTS="name=address[,address] ..."` (space- or `;`-separated): names answered
  from this list instead of a resolver (the drills' stub for names resolving to a chosen
  address, never DNS). The addresses are then connected to, or refused, like any other.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import json
import os
import socket
from collections.abc import Callable
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
MARK = "__netguard__"
HERE = os.path.dirname(os.path.abspath(__file__))
# The refusals are kept on the socket module, not here: this file is imported twice in a test
# run (as `sitecustomize` at start-up, as `tests.netguard.sitecustomize` by conftest), and only
# the first import installs the guard.
REFUSED_KEY = "__netguard_refused__"


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    extra = [n.strip() for n in os.environ.get("NETGUARD_ALLOW", "").split(",") if n.strip()]
    return [*LOOPBACK, *(ipaddress.ip_network(n, strict=False) for n in extra)]


def stub_hosts() -> dict[str, list[Address]]:
    """NETGUARD_HOSTS as {name: [address, ...]}."""
    found: dict[str, list[Address]] = {}
    for entry in os.environ.get("NETGUARD_HOSTS", "").replace(";", " ").split():
        name, _, addresses = entry.partition("=")
        found[name.lower().rstrip(".")] = [
            ipaddress.ip_address(a.strip()) for a in addresses.split(",") if a.strip()
        ]
    return found


def numeric(host: str) -> Address | None:
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_local_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def refused() -> list[dict[str, Any]]:
    """What this process was refused so far: one dict (`call`, `host`, `port`) per refusal."""
    return list(getattr(socket, REFUSED_KEY, ()))


def install() -> None:
    """Patch the socket module (once per process, however many times this is imported)."""
    if getattr(socket.socket.connect, MARK, False):
        return
    networks = allowed_networks()
    stubbed = stub_hosts()
    log_path = os.environ.get("NETGUARD_LOG", "")
    real_getaddrinfo = socket.getaddrinfo
    refusals: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)
    setattr(socket, REFUSED_KEY, refusals)

    def record(call: str, host: str, port: Any, allowed: bool) -> None:
        row = {"pid": os.getpid(), "call": call, "host": host, "port": port, "allowed": allowed}
        if not allowed:
            refusals.append({"call": call, "host": host, "port": port})
        if log_path:
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (json.dumps(row) + "\n").encode())  # one write: lines never mix
            finally:
                os.close(fd)

    def refuse(what: object) -> PermissionError:
        return PermissionError(f"netguard: {what!r} is outside loopback; tests stay on 127.0.0.1")

    def allowed(host: str) -> bool:
        address = numeric(host)
        if address is None:
            return is_local_name(host)
        return address.is_unspecified or any(address in n for n in networks)

    def text(host: Any) -> str | None:
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if not isinstance(host, str) or host == "":
            return None  # "" is INADDR_ANY
        return host

    def getaddrinfo(host: Any, port: Any = None, *args: Any, **kwargs: Any) -> Any:
        name = text(host)
        if name is not None and name.lower().rstrip(".") in stubbed:
            return answer(stubbed[name.lower().rstrip(".")], port, *args, **kwargs)
        if name is not None and not allowed(name):
            record("getaddrinfo", name, port, False)
            raise refuse(name)
        found = real_getaddrinfo(host, port, *args, **kwargs)
        if name is not None and numeric(name) is None:  # localhost: keep what is loopback
            found = [info for info in found if loopback(info)]
            if not found:
                record("getaddrinfo", name, port, False)
                raise refuse(host)
        return found

    def loopback(info: Any) -> bool:
        address = numeric(info[4][0])
        return address is not None and any(address in n for n in networks)

    def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(sock: socket.socket, *args: Any) -> Any:
            address = args[-1] if args else None
            if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
                host = text(address[0])
                if host is not None:
                    ok = allowed(host)
                    record(method.__name__, host, address[1], ok)
                    if not ok:
                        raise refuse(host)
            return method(sock, *args)

        setattr(wrapper, MARK, True)
        return wrapper

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket.socket.connect = guarded(socket.socket.connect)  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded(socket.socket.connect_ex)  # type: ignore[method-assign]
    socket.socket.sendto = guarded(socket.socket.sendto)  # type: ignore[method-assign]


def answer(
    addresses: list[Address],
    port: Any,
    family: int = 0,
    type: int = 0,  # noqa: A002 (getaddrinfo's own parameter names)
    proto: int = 0,
    flags: int = 0,
) -> list[tuple[Any, ...]]:
    """What getaddrinfo would return for a name with these addresses (NETGUARD_HOSTS)."""
    if port is None or port == "":
        number = 0
    elif isinstance(port, int) or str(port).isdigit():
        number = int(port)
    else:
        number = socket.getservbyname(str(port), "tcp")  # /etc/services: no packet
    kind = type or socket.SOCK_STREAM
    protocol = proto or (socket.IPPROTO_TCP if kind == socket.SOCK_STREAM else 0)
    found: list[tuple[Any, ...]] = []
    for address in addresses:
        if address.version == 4 and family in (0, socket.AF_INET):
            found.append((socket.AF_INET, kind, protocol, "", (str(address), number)))
        elif address.version == 6 and family in (0, socket.AF_INET6):
            found.append((socket.AF_INET6, kind, protocol, "", (str(address), number, 0, 0)))
    if not found:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return found


install()
