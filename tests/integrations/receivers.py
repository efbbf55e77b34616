"""A webhook receiver for tests: a real HTTP server on 127.0.0.1 in a thread of the test's
process, keeping every request it gets and answering with the status it is told."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from svix.webhooks import Webhook


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case, as a Standard Webhooks verifier takes them
    body: bytes

    def verify(self, secret: str) -> None:
        """Raise unless the request is signed with `secret` (svix, an independent verifier of
        Standard Webhooks signatures: not the library that signs)."""
        Webhook(secret).verify(self.body, self.headers)


@dataclass
class Receiver:
    url: str
    status: int = 200
    answer: bytes = b'{"ok": true}'
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def got(self) -> list[Received]:
        with self.lock:
            return list(self.requests)


@contextmanager
def receiver(path: str = "/hook") -> Iterator[Receiver]:
    """A receiver at `http://127.0.0.1:<free port><path>`, stopped on exit."""
    box: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            into = box["receiver"]
            with into.lock:
                headers = {name.lower(): value for name, value in self.headers.items()}
                into.requests.append(Received(self.path, headers, body))
                status, answer = into.status, into.answer
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box["receiver"] = Receiver(f"http://127.0.0.1:{server.server_port}{path}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box["receiver"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
