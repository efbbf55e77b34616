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
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
MARK = "__netguard__"
HERE = os.path.dirname(os.path.abspath(__file__))


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    extra = [n.strip() for n in os.environ.get("NETGUARD_ALLOW", "").split(",") if n.strip()]
    return [*LOOPBACK, *(ipaddress.ip_network(n, strict=False) for n in extra)]


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


def install() -> None:
    """Patch the socket module (once per process, however many times this is imported)."""
    if getattr(socket.socket.connect, MARK, False):
        return
    networks = allowed_networks()
    real_getaddrinfo = socket.getaddrinfo

    def refuse(what: object) -> PermissionError:
        return PermissionError(f"netguard: {what!r} is outside loopback; tests stay on 127.0.0.1")

    def check(host: Any) -> None:
        """Raise unless `host` (of an AF_INET/AF_INET6 address) is allowed."""
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if not isinstance(host, str) or host == "":
            return  # "" is INADDR_ANY
        address = numeric(host)
        if address is None:
            if not is_local_name(host):
                raise refuse(host)
        elif not address.is_unspecified and not any(address in n for n in networks):
            raise refuse(host)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        check(host)
        found = real_getaddrinfo(host, *args, **kwargs)
        if host is not None and numeric(str(host)) is None:  # localhost: keep what is loopback
            found = [info for info in found if loopback(info)]
            if not found:
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
                check(address[0])
            return method(sock, *args)

        setattr(wrapper, MARK, True)
        return wrapper

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket.socket.connect = guarded(socket.socket.connect)  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded(socket.socket.connect_ex)  # type: ignore[method-assign]
    socket.socket.sendto = guarded(socket.socket.sendto)  # type: ignore[method-assign]


install()
