"""Network faults the sandbox cannot make by itself: an answer lost on the way back (a proxy
that cuts the connection after Zywave answered), and a partition (network namespaces and a
veth pair, taken down and up).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.drills.stack import DrillError


def read_message(sock: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message (head and a Content-Length body) and what was read after it;
    None when the peer closed before a whole message arrived."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"transfer-encoding":
            raise DrillError("the proxy reads Content-Length bodies only")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


@dataclass
class CuttingProxy:
    """A reverse proxy on 127.0.0.1 in front of the sandbox, passing everything through,
    except the next `cuts` requests starting with `cut_prefix` (token requests by default):
    those it forwards, reads Zywave's whole answer, and then resets the portal's connection
    without passing the answer on."""

    upstream: tuple[str, int]
    cuts: int = 0
    cut_prefix: bytes = b"POST /connect/token "  # the start of the requests that are cut
    cut_statuses: list[int] = field(default_factory=list)  # what Zywave answered, unseen
    passed: int = 0

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self.relay, args=(client,), daemon=True).start()

    def relay(self, client: socket.socket) -> None:
        buffered = b""
        with client, socket.create_connection(self.upstream, timeout=30) as upstream:
            while True:
                request = read_message(client, buffered)
                if request is None:
                    return
                message, buffered = request
                upstream.sendall(message)
                answer = read_message(upstream)
                if answer is None:
                    return
                with self.lock:
                    cut = message.startswith(self.cut_prefix) and self.cuts > 0
                    if cut:
                        self.cuts -= 1
                        self.cut_statuses.append(int(answer[0].split(b" ", 2)[1]))
                    else:
                        self.passed += 1
                if cut:
                    # RST instead of FIN: the portal sees the connection reset mid-request.
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                client.sendall(answer[0])

    def close(self) -> None:
        self.listener.close()


# --- Partition ------------------------------------------------------------------------------


def can_partition() -> str:
    """Empty when this process may create network namespaces, else why not."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "iproute2 (`ip`) is not installed"
    return ""


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise DrillError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Partition:
    """A network namespace joined to this one by a veth pair on a private /30 (the pair only
    exists on this machine). What runs in the namespace is reached at `inside`; `cut()` takes
    the namespace's end of the pair down, so packets are dropped (timeouts, not refusals), and
    `heal()` brings it up again."""

    name: str
    inside: str = "10.213.7.2"
    outside: str = "10.213.7.1"

    def __post_init__(self) -> None:
        self.host_end = f"{self.name}h"[:15]
        self.ns_end = f"{self.name}n"[:15]

    def create(self) -> None:
        self.remove()
        ip("netns", "add", self.name)
        ip("link", "add", self.host_end, "type", "veth", "peer", "name", self.ns_end)
        ip("link", "set", self.ns_end, "netns", self.name)
        ip("addr", "add", f"{self.outside}/30", "dev", self.host_end)
        ip("link", "set", self.host_end, "up")
        ip("-n", self.name, "addr", "add", f"{self.inside}/30", "dev", self.ns_end)
        ip("-n", self.name, "link", "set", self.ns_end, "up")
        ip("-n", self.name, "link", "set", "lo", "up")

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        ip("-n", self.name, "link", "set", self.ns_end, "down")

    def heal(self) -> None:
        ip("-n", self.name, "link", "set", self.ns_end, "up")

    def remove(self) -> None:
        with contextlib.suppress(DrillError):
            ip("link", "del", self.host_end)
        if Path(f"/run/netns/{self.name}").exists():
            with contextlib.suppress(DrillError):
                ip("netns", "del", self.name)


@contextlib.contextmanager
def partition(name: str, inside: str, outside: str) -> Iterator[Partition]:
    part = Partition(name, inside, outside)
    part.create()
    try:
        yield part
    finally:
        part.remove()
