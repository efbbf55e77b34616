"""Requests to addresses our users give us (webhook endpoints): checked, pinned, bounded.

An agency's user chooses a webhook's URL, so the URL may point anywhere: at the metadata service
of the cloud the portal runs in, at the database on the private network, at the portal itself.
Before a request is sent, every address the URL's host names is checked to be public (`check`),
and the request then connects to an address that was checked, never resolving the name again
(`post`): a name that resolves to a public address for the check and to 127.0.0.1 a moment later
(DNS rebinding) cannot get past. Nothing is sent to an address that was not checked, not even a
TCP handshake. The lookup has a deadline too (`resolve`): a name server that never answers
must not hold a worker past its lease on the subscription.

`WEBHOOKS_ALLOW_PRIVATE=true` waives the two rules (public addresses, HTTPS) for development and
the test suite, whose receivers listen on 127.0.0.1 over plain HTTP.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import idna
import urllib3
import urllib3.connection
from django.conf import settings
from urllib3.util.ssl_match_hostname import CertificateError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# What a refusal or a failure says: short, never the response's headers or a secret.
EXCERPT_BYTES = 300
# The most of a response body that is read at all (then the connection is dropped).
READ_CAP_BYTES = 4096


# The longest a lookup may take (at most WEBHOOKS_TIMEOUT_SECONDS, of which it is a part).
LOOKUP_SECONDS = 5.0


class UnsafeURL(ValueError):
    """The URL may not be used: what is wrong with it, in words for the person who gave it."""


class LookupTimedOut(UnsafeURL):
    """The resolver did not answer in time: nothing is known about the name (not a refusal)."""


@dataclass(frozen=True)
class Target:
    """A URL that passed the check, with the addresses it was checked against."""

    url: str
    scheme: str
    host: str  # ASCII: an international name in its IDNA form (Host, SNI, the certificate's)
    port: int
    path: str  # path and query, as sent in the request line (ASCII, non-ASCII percent-encoded)
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after: float | None
    excerpt: str
    duration_ms: int


class SendFailed(Exception):
    """No HTTP answer: the connection was refused, timed out, or TLS failed."""

    def __init__(self, reason: str, duration_ms: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.duration_ms = duration_ms


def allow_private() -> bool:
    return bool(settings.WEBHOOKS_ALLOW_PRIVATE)


def is_public(address: Address) -> bool:
    """A global unicast address, looking through the IPv6 forms that carry an IPv4 one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not is_public(embedded):
            return False
        if address.is_site_local:
            return False  # fec0::/10: deprecated (RFC 3879), yet `is_global` lets it through
    return address.is_global and not address.is_multicast and not address.is_reserved


# The well-known NAT64 prefix (RFC 6052): 64:ff9b::7f00:1 reaches 127.0.0.1 through a gateway.
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def numeric_host(host: str) -> Address | None:
    """The address a host written as a number stands for, in any spelling a resolver takes:
    `127.0.0.1`, `::ffff:127.0.0.1`, and the old forms `2130706433`, `0x7f.1`, `0177.0.0.1`."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def lookup_timeout() -> float:
    return min(LOOKUP_SECONDS, float(settings.WEBHOOKS_TIMEOUT_SECONDS))


def resolve(host: str, port: int, timeout: float | None = None) -> list[Address]:
    """Every address the name resolves to, or UnsafeURL; LookupTimedOut after `timeout`
    (`lookup_timeout()`) seconds. getaddrinfo has no deadline of its own (the system resolver
    retries for 30 s and more): it runs in a thread of its own, which a resolver that never
    answers keeps until the system gives up, while the caller goes on (tests stub
    socket.getaddrinfo: never DNS there)."""
    limit = lookup_timeout() if timeout is None else timeout
    answer: list[Any] = []
    done = threading.Event()
    threading.Thread(
        target=_lookup, args=(host, port, answer, done), name="egress-lookup", daemon=True
    ).start()
    if not done.wait(max(limit, 0.0)):
        raise LookupTimedOut(f"{host}: DNS did not answer in time")
    (infos,) = answer
    if isinstance(infos, OSError | UnicodeError):
        raise UnsafeURL(f"{host} does not resolve ({type(infos).__name__})")
    if isinstance(infos, BaseException):
        raise infos
    found: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise UnsafeURL(f"{host} does not resolve")
    return found


def _lookup(host: str, port: int, answer: list[Any], done: threading.Event) -> None:
    """getaddrinfo's answer, or what it raised, into `answer` (`resolve`'s thread)."""
    try:
        answer.append(
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        )
    except BaseException as exc:  # handed to the caller's thread, which raises it
        answer.append(exc)
    finally:
        done.set()


def check(url: str, *, resolve_host: bool = True, timeout: float | None = None) -> Target:
    """The URL as a target, or UnsafeURL. Every address it resolves to must be public (one bad
    address refuses the URL: the resolver may hand out any of them), and the scheme HTTPS.

    What is sent is ASCII, as HTTP and TLS need it (a non-ASCII URL that reached http.client
    raised UnicodeEncodeError at every attempt): an international host name in its IDNA form
    (UTS 46, as browsers map it; what does not encode is refused), non-ASCII in the path and
    query percent-encoded as UTF-8. Spaces and control characters are refused, not encoded:
    urlsplit drops tabs and newlines silently, so the URL checked would not be the URL shown.

    The lookup ends by `timeout` (`lookup_timeout()`): LookupTimedOut, an UnsafeURL."""
    url = url.strip()
    unprintable = _unprintable(url)
    if unprintable:
        raise UnsafeURL(f"the URL may not contain spaces or control characters ({unprintable})")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    private_ok = allow_private()
    if scheme != "https" and not (private_ok and scheme == "http"):
        raise UnsafeURL("the URL must start with https://")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("the URL may not carry a user name or password")
    host = ascii_host(parts.hostname or "")
    if port == 0:
        raise UnsafeURL("port 0 is not a port a receiver can listen on")
    path = _percent_encoded(parts.path or "/")
    if parts.query:
        path = f"{path}?{_percent_encoded(parts.query)}"
    if len(url) > 2000 or len(host) + len(path) > 2000:
        raise UnsafeURL("the URL is longer than 2000 characters")
    port = port or (443 if scheme == "https" else 80)
    literal = numeric_host(host)
    if literal is not None:
        addresses = [literal]
    elif resolve_host:
        addresses = resolve(host, port, timeout)
    else:
        addresses = []
    for address in addresses:
        if not private_ok and not is_public(address):
            named = f"{host} resolves to {address}, which" if literal is None else str(literal)
            raise UnsafeURL(f"{named} is not a public address")
    return Target(
        url=url,
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        addresses=tuple(str(a) for a in addresses),
    )


def ascii_host(hostname: str) -> str:
    """The host as it is resolved and named to the receiver: an international name in its
    IDNA form (`例え.jp` is `xn--r8jz45g.jp`; full-width `１２７．０．０．１` is 127.0.0.1, and
    checked as such). ASCII names are left as they are (a resolver takes `_` where IDNA does
    not); an IPv6 literal too."""
    host = hostname.rstrip(".")
    if host and not host.isascii() and ":" not in host:
        try:
            host = idna.encode(host, uts46=True).decode("ascii").rstrip(".")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise UnsafeURL(f"the host name {host} is not a valid domain name ({exc})") from None
    if not host:
        raise UnsafeURL("the URL has no host")
    return host


def _unprintable(url: str) -> str:
    """The first space or control (or invisible formatting) character in the URL, named."""
    for position, char in enumerate(url):
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zs", "Zl", "Zp"):
            return f"U+{ord(char):04X} at position {position + 1}"
    return ""


def _percent_encoded(text: str) -> str:
    """Non-ASCII characters as percent-encoded UTF-8 (RFC 3987 §3.1); ASCII, escapes already
    written included, as it is."""
    if text.isascii():
        return text
    return "".join(char if char.isascii() else quote(char, safe="") for char in text)


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    """POST to the first of the target's checked addresses that accepts the connection.

    No redirect is followed (a 3xx is an answer like any other), no retry is made here, and the
    whole attempt (connect, answer, the first READ_CAP_BYTES of the body) ends by `timeout`.
    """
    started = time.monotonic()
    deadline = started + timeout
    last_error = "no address to connect to"
    for address in target.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            last_error = "timed out"
            break
        conn = _connection(target, address, min(remaining, 5.0))
        watchdog = Watchdog(conn, remaining)
        try:
            try:
                conn.connect()
            except urllib3.exceptions.NewConnectionError as exc:
                last_error = _reason(exc)
                continue  # refused on this address: the next one, if any
            if conn.sock is not None:
                conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            conn.request(
                "POST",
                target.path,
                body=body,
                headers={**headers, "Host": target.host_header},
                preload_content=False,
            )
            response = conn.getresponse()
            if watchdog.fired:
                raise TimeoutError  # the status line or headers were cut short at the deadline
            excerpt = _read_capped(response, deadline)
        except (
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
            CertificateError,  # the certificate is not for the URL's host (a ValueError)
        ) as exc:
            reason = "timed out" if watchdog.fired else _reason(exc)
            raise SendFailed(reason, _ms_since(started)) from None
        finally:
            watchdog.cancel()
            conn.close()
        return Answer(
            status=response.status,
            retry_after=_retry_after(response.headers.get("Retry-After")),
            excerpt=excerpt.decode("utf-8", "replace")[:EXCERPT_BYTES],
            duration_ms=_ms_since(started),
        )
    raise SendFailed(last_error, _ms_since(started))


class Watchdog:
    """Shuts the connection's socket down at the deadline, ending whatever read or write is in
    progress. Socket timeouts bound each wait, not their sum: a receiver that sends its status
    line and headers a byte at a time, each in time, would otherwise hold the attempt (and the
    worker, past its lease on the subscription) for as long as it likes."""

    def __init__(self, conn: urllib3.connection.HTTPConnection, seconds: float) -> None:
        self.conn = conn
        self.fired = False
        self.timer = threading.Timer(seconds, self.fire)
        self.timer.daemon = True
        self.timer.start()

    def fire(self) -> None:
        self.fired = True
        sock = self.conn.sock
        if sock is not None:
            # The plain socket's shutdown, under TLS too (SSLSocket's own would drop its state
            # while the other thread reads).
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        self.timer.cancel()


def _connection(
    target: Target, address: str, connect_timeout: float
) -> urllib3.connection.HTTPConnection:
    """A connection to the checked address (never the name resolved again)."""
    if target.scheme == "https":
        # TLS still names and verifies the URL's host.
        return urllib3.connection.HTTPSConnection(
            address,
            target.port,
            timeout=connect_timeout,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
        )
    return urllib3.connection.HTTPConnection(address, target.port, timeout=connect_timeout)


def _read_capped(response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
    """At most READ_CAP_BYTES of the body, and only until the deadline: a receiver that sends
    a gigabyte, or a byte a second, ends the attempt on time all the same."""
    body = b""
    while len(body) < READ_CAP_BYTES and time.monotonic() < deadline:
        try:
            chunk = response.read1(READ_CAP_BYTES - len(body))  # type: ignore[attr-defined]
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError):
            if time.monotonic() < deadline:
                raise
            break  # cut at the deadline (`Watchdog`): the status came in time and stands
        if not chunk:
            break
        body += chunk
    return body


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (RFC 9110 §10.2.3 also allows a date: taken as unknown)."""
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    """What went wrong, without the URL (it may carry a token the receiver asked for)."""
    # First: urllib3's NewConnectionError (refused, unreachable) is also a ConnectTimeoutError.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "connection refused or unreachable"
    if isinstance(exc, urllib3.exceptions.TimeoutError | socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, urllib3.exceptions.SSLError | ssl.SSLError | CertificateError):
        return "TLS failed (certificate or handshake)"
    # Once connected, a reset or a closed connection is a broken answer, not a refusal.
    if isinstance(
        exc, urllib3.exceptions.ProtocolError | http.client.HTTPException | ConnectionError
    ):
        return "the connection broke (no valid HTTP answer)"
    return type(exc).__name__


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
