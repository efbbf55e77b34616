"""integrations/egress.py: the SSRF rules of webhook endpoints (issue 18), proven.

- `check` with WEBHOOKS_ALLOW_PRIVATE off refuses every private, special or malformed target,
  in every spelling a resolver takes, and a name of which any one address is private; a name
  whose addresses are all public passes (the check resolves, it sends nothing).
- At delivery the URL is checked again: a name that resolved to a public address when it was
  subscribed and resolves to 127.0.0.1 now (DNS rebinding) is refused and logged, and not one
  connection is attempted.
- Pinning: the request goes to the address `check` resolved, under the URL's Host header and,
  over HTTPS, the URL's name for SNI and certificate verification; the name is resolved once
  per attempt, by `check`, never again by the connection. A redirect is an answer, not followed.
- Lookups end in time: a name server that never answers ends the check at the lookup timeout
  (the request's timeout, up to 5 s), and at delivery the lookup counts against the attempt's.

Nothing here uses DNS: `socket.getaddrinfo` is replaced by `Resolver` for every test (a stub,
since no real resolver can be told to answer 10.0.0.1 for a name, or to answer late or never
(its `Slow` answers), and tests/netguard refuses DNS anyway). Every connect of the process is
recorded (`connects`), and tests/netguard's own record of refusals must stay empty: nothing
even tried to reach an address outside loopback.
Receivers are real servers on loopback addresses; TLS uses certificates made by the test,
trusted through `SSL_CERT_FILE` (OpenSSL's default verify paths, which is what egress loads:
the system store in production), so egress needs no hook of its own for a CA bundle.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from integrations import egress, webhooks
from integrations.models import WebhookAttempt, WebhookDelivery, WebhookSubscription
from tests.netguard import sitecustomize as netguard
from tests.tls import Authority

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:4700::1"
EVENTS = ["sync.succeeded"]
EGRESS_FILE = egress.__file__


# --- What the tests stand on: a resolver stub, a connect recorder, receivers ----------------


@dataclass
class Lookup:
    host: str
    by_check: bool  # made from egress.resolve (inside check), not by the connection


@dataclass
class Slow:
    """An answer that takes `seconds` (a resolver that never answers: more than the test
    waits), then is `addresses`, or an unknown name when None."""

    seconds: float
    addresses: list[str] | None = None


@dataclass
class Resolver:
    """`socket.getaddrinfo` for the test: names answer what `names` says (a list, or one list
    per call in turn), numeric hosts themselves (what AI_NUMERICHOST does), anything else
    fails as an unknown name. Every call is recorded."""

    names: dict[str, list[list[str] | Slow]] = field(default_factory=dict)
    calls: list[Lookup] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)  # ends every Slow

    def answer(self, name: str, *answers: list[str] | Slow) -> None:
        """`name` resolves to answers[0] on the first lookup, answers[1] on the next, ...; the
        last one stays."""
        self.names[name] = list(answers)

    def name_lookups(self, name: str) -> list[Lookup]:
        return [call for call in self.calls if call.host == name]

    def __call__(
        self,
        host: Any,
        port: Any = None,
        family: int = 0,
        type: int = 0,  # noqa: A002 (getaddrinfo's own parameter names)
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        # egress.check looks names up in a thread of its own (`_lookup`, so that a resolver
        # that never answers does not hold the attempt): that frame tells its lookups apart.
        by_check = any(
            frame.name == "_lookup" and frame.filename == EGRESS_FILE
            for frame in traceback.extract_stack()
        )
        self.calls.append(Lookup(name, by_check))
        unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        try:
            addresses = [ipaddress.ip_address(name.strip("[]"))]
        except ValueError:
            answers = self.names.get(name.lower())
            if not answers:
                raise unknown from None
            current = answers.pop(0) if len(answers) > 1 else answers[0]
            if isinstance(current, Slow):
                self.released.wait(current.seconds)
                if current.addresses is None:
                    raise unknown from None
                current = current.addresses
            addresses = [ipaddress.ip_address(a) for a in current]
        return netguard.answer(addresses, port, family, type, proto, flags)


@pytest.fixture(autouse=True)
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Resolver]:
    stub = Resolver()
    monkeypatch.setattr(socket, "getaddrinfo", stub)
    yield stub
    stub.released.set()  # a slow lookup still out in egress's thread ends now


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every connect this process attempts to an IP address during the test, (host, port),
    recorded before tests/netguard's check and the connect itself (socket.create_connection
    and urllib3 both end in `socket.connect`)."""
    seen: list[tuple[str, int]] = []
    for name in ("connect", "connect_ex"):
        real = getattr(socket.socket, name)

        def wrapper(sock: socket.socket, address: Any, _real: Any = real) -> Any:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                seen.append((str(address[0]), int(address[1])))
            return _real(sock, address)

        monkeypatch.setattr(socket.socket, name, wrapper)
    return seen


@pytest.fixture(autouse=True)
def nothing_tried_to_leave(request: pytest.FixtureRequest) -> Iterator[None]:
    """tests/netguard refused nothing during the test: no connect outside loopback was even
    attempted (a refused one would have been a bug that the guard caught, not egress)."""
    before = len(netguard.refused())
    yield
    if not getattr(request.function, "expects_a_refusal", False):
        assert netguard.refused()[before:] == []


@pytest.fixture
def private_off(settings: Any) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = False


@pytest.fixture
def private_on(settings: Any) -> None:
    """What the test suite and development run with: 127.0.0.1 receivers over plain HTTP."""
    settings.WEBHOOKS_ALLOW_PRIVATE = True


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


class Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class Receiver:
    """A real HTTP(S) server on a loopback address, in a thread: answers `status` (with
    `headers`) to every POST and records each request and, over TLS, the SNI name asked for."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        status: int = 204,
        headers: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.status = status
        self.requests: list[Request] = []
        self.server_names: list[str | None] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append(Request(self.path, dict(self.headers.items()), body))
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = (Server6 if ":" in host else ThreadingHTTPServer)((host, 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: receiver.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.host, self.port = host, self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.close()


def start(receivers: list[Receiver], **options: Any) -> Receiver:
    receiver = Receiver(**options)
    receivers.append(receiver)
    return receiver


def delivery_to(owner: User, url: str) -> tuple[WebhookSubscription, WebhookDelivery]:
    """A subscription (checked as `subscribe` checks it) and a test event's delivery to it.
    No task is queued: the test's transaction never commits, and the test calls `attempt`."""
    subscription, _secret = webhooks.subscribe(owner, url, EVENTS)
    return subscription, webhooks.send_test(subscription)


def attempt(subscription: WebhookSubscription, delivery: WebhookDelivery) -> WebhookAttempt:
    webhooks.attempt(
        subscription, WebhookDelivery.objects.select_related("event").get(pk=delivery.pk)
    )
    return WebhookAttempt.objects.filter(delivery=delivery).latest("at")


# --- check: what is refused ------------------------------------------------------------------

REFUSED = {
    "plain http": ("http://93.184.215.14/", "must start with https://"),
    "loopback": ("https://127.0.0.1/", "127.0.0.1 is not a public address"),
    "loopback, short form": ("https://127.1/", "127.0.0.1 is not a public address"),
    "loopback, one decimal number": ("https://2130706433/", "127.0.0.1 is not a public"),
    "loopback, hexadecimal": ("https://0x7f000001/", "127.0.0.1 is not a public address"),
    "loopback, octal": ("https://0177.0.0.1/", "127.0.0.1 is not a public address"),
    "unspecified": ("https://0.0.0.0/", "0.0.0.0 is not a public address"),
    "IPv6 loopback": ("https://[::1]/", "::1 is not a public address"),
    "IPv6 unspecified": ("https://[::]/", ":: is not a public address"),
    "IPv4-mapped loopback": ("https://[::ffff:127.0.0.1]/", "is not a public address"),
    "IPv4-mapped, hex": ("https://[::ffff:7f00:1]/", "::ffff:7f00:1 is not a public address"),
    "unique local": ("https://[fc00::1]/", "fc00::1 is not a public address"),
    "link-local v6": ("https://[fe80::1]/", "fe80::1 is not a public address"),
    "site-local v6 (deprecated)": ("https://[fec0::1]/", "fec0::1 is not a public address"),
    "private 10/8": ("https://10.0.0.1/", "10.0.0.1 is not a public address"),
    "private 172.16/12": ("https://172.16.0.1/", "172.16.0.1 is not a public address"),
    "private 192.168/16": ("https://192.168.1.1/", "192.168.1.1 is not a public address"),
    "shared 100.64/10": ("https://100.64.0.1/", "100.64.0.1 is not a public address"),
    "cloud metadata": ("https://169.254.169.254/", "169.254.169.254 is not a public address"),
    "cloud metadata v6": ("https://[fd00:ec2::254]/", "fd00:ec2::254 is not a public"),
    "multicast": ("https://224.0.0.1/", "224.0.0.1 is not a public address"),
    "NAT64 of 10.0.0.1": ("https://[64:ff9b::a00:1]/", "64:ff9b::a00:1 is not a public"),
    "6to4 of 127.0.0.1": ("https://[2002:7f00:1::]/", "2002:7f00:1:: is not a public"),
    "user and password": ("https://user:pass@93.184.215.14/", "user name or password"),
    "user only": ("https://user@93.184.215.14/", "user name or password"),
    "no host": ("https:///hooks", "has no host"),
    "port out of range": ("https://93.184.215.14:99999/", "not a valid URL"),
    "port not a number": ("https://93.184.215.14:https/", "not a valid URL"),
    "port 0 (was taken as 443)": ("https://93.184.215.14:0/", "port 0 is not a port"),
    # International names are checked in their IDNA form: full-width digits and dots map to
    # the ASCII ones (UTS 46), so this is 127.0.0.1 and refused as such, without a lookup.
    "loopback in full-width digits": ("https://１２７．０．０．１/", "127.0.0.1 is not a public"),
    "a name IDNA cannot encode": ("https://ex_ample.例え.jp/", "is not a valid domain name"),
    "a label with a leading hyphen": ("https://-bad.例え.jp/", "is not a valid domain name"),
    "a space in the path": ("https://93.184.215.14/a b", "spaces or control characters"),
    "a space in the query": ("https://93.184.215.14/?a=b c", "spaces or control characters"),
    "a tab (urlsplit drops it)": ("https://93.184.215.14/a\tb", "U+0009 at position 24"),
    "a newline in the host": ("https://hooks.exa\nmple.com/", "spaces or control characters"),
    "a control character": ("https://93.184.215.14/\x07", "spaces or control characters"),
    "DEL": ("https://93.184.215.14/\x7f", "spaces or control characters"),
    "a zero-width space": ("https://hooks.example.com/\u200b", "U+200B at position 27"),
    "a no-break space": ("https://hooks.example.com/\u00a0x", "spaces or control characters"),
}


@pytest.mark.parametrize(("url", "says"), REFUSED.values(), ids=REFUSED.keys())
def test_check_refuses_a_private_special_or_malformed_target(
    private_off: None,
    resolver: Resolver,
    connects: list[tuple[str, int]],
    url: str,
    says: str,
) -> None:
    with pytest.raises(egress.UnsafeURL, match=re.escape(says)):
        egress.check(url)
    # Refused from the URL alone: nothing resolved, nothing connected.
    assert resolver.calls == [] and connects == []


MIXED = {
    "public v4 and 10.0.0.1": ([PUBLIC_V4, "10.0.0.1"], "10.0.0.1"),
    "public v6 and ::1": ([PUBLIC_V6, "::1"], "::1"),
    "public and IPv4-mapped loopback": ([PUBLIC_V4, "::ffff:127.0.0.1"], "::ffff:7f00:1"),
    "the metadata address last": ([PUBLIC_V4, PUBLIC_V6, "169.254.169.254"], "169.254.169.254"),
    "public and NAT64 of 10.0.0.1": ([PUBLIC_V4, "64:ff9b::a00:1"], "64:ff9b::a00:1"),
    "public and site-local fec0::/10": ([PUBLIC_V6, "fec0::a:1"], "fec0::a:1"),
    "only a private one": (["192.168.1.1"], "192.168.1.1"),
}


@pytest.mark.parametrize(("addresses", "private"), MIXED.values(), ids=MIXED.keys())
def test_a_name_with_any_private_address_is_refused(
    private_off: None,
    resolver: Resolver,
    connects: list[tuple[str, int]],
    addresses: list[str],
    private: str,
) -> None:
    """The resolver may hand the connection any of a name's addresses: one private address
    refuses the name, wherever it comes in the answer."""
    resolver.answer("hooks.example.com", addresses)
    with pytest.raises(egress.UnsafeURL) as refused:
        egress.check("https://hooks.example.com/in")
    assert str(refused.value) == (
        f"hooks.example.com resolves to {private}, which is not a public address"
    )
    assert [c.host for c in resolver.calls] == ["hooks.example.com"] and connects == []


def test_a_name_resolving_only_to_public_addresses_is_allowed_and_nothing_is_sent(
    private_off: None, resolver: Resolver, connects: list[tuple[str, int]]
) -> None:
    resolver.answer("hooks.example.com", [PUBLIC_V4, PUBLIC_V6])
    target = egress.check("https://Hooks.Example.com./in?x=1")
    assert (target.host, target.port, target.path) == ("hooks.example.com", 443, "/in?x=1")
    assert target.addresses == (PUBLIC_V4, PUBLIC_V6)
    assert target.host_header == "hooks.example.com"
    assert connects == []  # checking resolves; it connects to nothing


def test_non_ascii_in_the_path_and_query_is_percent_encoded_as_utf8(
    private_off: None, resolver: Resolver
) -> None:
    """What is sent must be ASCII (http.client raised UnicodeEncodeError on the request line at
    every attempt); escapes already written and reserved characters stay as they are."""
    resolver.answer("crm.example.com", [PUBLIC_V4])
    target = egress.check("https://crm.example.com/hooks/café/a%20b?who=Zoë&x=1+2#frag")
    assert target.path == "/hooks/caf%C3%A9/a%20b?who=Zo%C3%AB&x=1+2"
    assert target.host == "crm.example.com" and target.path.isascii()
    # The URL itself is kept as the owner wrote it (what is stored and shown).
    assert target.url == "https://crm.example.com/hooks/café/a%20b?who=Zoë&x=1+2#frag"


def test_an_international_host_is_resolved_and_named_in_its_idna_form(
    private_off: None, resolver: Resolver
) -> None:
    resolver.answer("xn--r8jz45g.jp", [PUBLIC_V4])
    resolver.answer("xn--fa-hia.de", [PUBLIC_V6])
    target = egress.check("https://例え.JP:8443/in")
    assert (target.host, target.host_header) == ("xn--r8jz45g.jp", "xn--r8jz45g.jp:8443")
    assert target.addresses == (PUBLIC_V4,)
    # Nontransitional UTS 46 (what browsers do today): ß stays ß, not "ss" (another name).
    assert egress.check("https://faß.de/").host == "xn--fa-hia.de"
    assert [c.host for c in resolver.calls] == ["xn--r8jz45g.jp", "xn--fa-hia.de"]


def test_an_international_host_resolving_to_a_private_address_is_refused(
    private_off: None, resolver: Resolver
) -> None:
    resolver.answer("xn--r8jz45g.jp", ["10.0.0.1"])
    with pytest.raises(egress.UnsafeURL, match="xn--r8jz45g.jp resolves to 10.0.0.1"):
        egress.check("https://例え.jp/")


def test_a_public_address_written_as_a_literal_is_allowed_without_a_lookup(
    private_off: None, resolver: Resolver
) -> None:
    assert egress.check(f"https://[{PUBLIC_V6}]:8443/").addresses == (PUBLIC_V6,)
    assert egress.check(f"https://{PUBLIC_V4}/").host_header == PUBLIC_V4
    assert resolver.calls == []


def test_a_name_that_does_not_resolve_is_refused(private_off: None) -> None:
    with pytest.raises(egress.UnsafeURL, match="nowhere.example.com does not resolve"):
        egress.check("https://nowhere.example.com/")


# --- Lookups end in time -----------------------------------------------------------------------


def test_a_resolver_that_never_answers_ends_the_check_at_the_lookup_timeout(
    private_off: None, settings: Any, staff: User, resolver: Resolver
) -> None:
    """getaddrinfo has no deadline (the system resolver retries for 30 s and more): a name
    server that never answers held the web request, or the worker past its lease."""
    settings.WEBHOOKS_TIMEOUT_SECONDS = 1
    resolver.answer("hooks.example.com", Slow(5))
    started = time.monotonic()
    with pytest.raises(egress.LookupTimedOut) as late:
        egress.check("https://hooks.example.com/in")
    assert 0.9 <= time.monotonic() - started < 2
    assert str(late.value) == "hooks.example.com: DNS did not answer in time"
    with pytest.raises(webhooks.InvalidSubscription, match="DNS did not answer in time"):
        webhooks.subscribe(staff, "https://hooks.example.com/in", EVENTS)
    assert not WebhookSubscription.objects.exists()


def test_the_lookup_timeout_is_the_request_timeout_up_to_five_seconds(settings: Any) -> None:
    settings.WEBHOOKS_TIMEOUT_SECONDS = 2
    assert egress.lookup_timeout() == 2
    settings.WEBHOOKS_TIMEOUT_SECONDS = 10
    assert egress.lookup_timeout() == 5


def test_at_delivery_a_lookup_that_never_answers_is_a_timed_out_attempt_and_the_drain_ends(
    private_off: None, settings: Any, staff: User, resolver: Resolver
) -> None:
    """The drain ends at the timeout, well inside the lease it renewed before the attempt
    (timeout + 20 s): no second worker takes the subscription while this one waits on DNS.
    Retried like no answer (the subscription waits), not refused."""
    settings.WEBHOOKS_TIMEOUT_SECONDS = 1
    settings.WEBHOOKS_RECONCILE_SECONDS = 1  # the retry is the reconciler's: nothing queued
    resolver.answer("hooks.example.com", [PUBLIC_V4], Slow(5))
    subscription, delivery = delivery_to(staff, "https://hooks.example.com/in")
    started = time.monotonic()
    assert webhooks.drain(subscription.pk) == "sent 0"
    assert time.monotonic() - started < 2
    (logged,) = WebhookAttempt.objects.filter(delivery=delivery)
    assert (logged.status, logged.error) == (None, "hooks.example.com: DNS did not answer in time")
    assert 900 <= logged.duration_ms < 2000
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("pending", 1)
    subscription.refresh_from_db()
    assert subscription.paused_until == delivery.next_attempt_at
    assert subscription.lease_owner == "" and subscription.state == "active"


def test_the_lookup_counts_against_the_attempts_timeout(
    private_on: None, settings: Any, staff: User, resolver: Resolver
) -> None:
    """A lookup of 1.5 s and a receiver that never answers: the attempt ends at the 2 s
    timeout, not 1.5 s after it (the lease would otherwise have to cover both)."""
    settings.WEBHOOKS_TIMEOUT_SECONDS = 2
    with socket.socket() as silent:  # accepts connections (the kernel does), answers nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        resolver.answer("receiver.test", ["127.0.0.1"], Slow(1.5, ["127.0.0.1"]))
        subscription, delivery = delivery_to(staff, f"http://receiver.test:{port}/in")
        started = time.monotonic()
        logged = attempt(subscription, delivery)
        elapsed = time.monotonic() - started
    assert (logged.status, logged.error) == (None, "timed out")
    assert 1.9 <= elapsed < 2.8


def test_subscribing_to_a_private_target_is_refused_with_the_reason(
    private_off: None, staff: User, resolver: Resolver
) -> None:
    resolver.answer("intranet.example.com", ["10.1.2.3"])
    for url, reason in [
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is not a public"),
        ("https://intranet.example.com/", "resolves to 10.1.2.3, which is not a public"),
    ]:
        with pytest.raises(webhooks.InvalidSubscription) as refused:
            webhooks.subscribe(staff, url, EVENTS)
        assert refused.value.field == "url" and reason in refused.value.message
    assert not WebhookSubscription.objects.exists()


# --- At delivery: checked again, and nothing connected when refused --------------------------


def test_dns_rebinding_after_subscribing_is_refused_at_delivery_with_no_connection(
    private_off: None, staff: User, resolver: Resolver, connects: list[tuple[str, int]]
) -> None:
    resolver.answer("hooks.example.com", [PUBLIC_V4], ["127.0.0.1"])
    subscription, delivery = delivery_to(staff, "https://hooks.example.com/in")
    # The name now resolves to 127.0.0.1 (the attacker's DNS answered public once).
    logged = attempt(subscription, delivery)
    assert logged.status is None and logged.duration_ms == 0
    assert logged.error == (
        "refused: hooks.example.com resolves to 127.0.0.1, which is not a public address"
    )
    delivery.refresh_from_db()
    assert delivery.state == WebhookDelivery.State.PENDING and delivery.attempts == 1
    assert delivery.last_error == logged.error
    assert [c.host for c in resolver.calls] == ["hooks.example.com"] * 2
    assert connects == []  # not a SYN: refused before any socket connected


def test_a_rebinding_to_several_addresses_one_private_is_refused_with_no_connection(
    private_off: None, staff: User, resolver: Resolver, connects: list[tuple[str, int]]
) -> None:
    resolver.answer("hooks.example.com", [PUBLIC_V4], [PUBLIC_V4, PUBLIC_V6, "10.0.0.1"])
    subscription, delivery = delivery_to(staff, "https://hooks.example.com/in")
    logged = attempt(subscription, delivery)
    assert "resolves to 10.0.0.1" in logged.error
    assert connects == []


# --- Pinning, proven on what the receiver sees -----------------------------------------------


def test_delivery_goes_to_the_checked_address_under_the_urls_host_name(
    private_on: None,
    staff: User,
    resolver: Resolver,
    connects: list[tuple[str, int]],
    receivers: list[Receiver],
) -> None:
    """receiver.test resolves to 127.0.0.1 for the check, and to 127.0.0.2 on any later
    lookup, where another server listens: a connection that resolved the name again would reach
    it. Each attempt looks the name up once, from `check`; the connection uses the address."""
    receiver = start(receivers)
    decoy = start(receivers, host="127.0.0.2")
    url = f"http://receiver.test:{receiver.port}/hooks?from=portal"
    resolver.answer("receiver.test", ["127.0.0.1"], ["127.0.0.1"], ["127.0.0.1"], ["127.0.0.2"])
    subscription, delivery = delivery_to(staff, url)  # lookup 1: subscribing
    for _attempt in range(2):  # lookups 2 and 3: one per attempt
        assert attempt(subscription, delivery).status == 204
        WebhookDelivery.objects.filter(pk=delivery.pk).update(state="pending")
    assert [r.path for r in receiver.requests] == ["/hooks?from=portal"] * 2
    assert {r.headers["Host"] for r in receiver.requests} == {f"receiver.test:{receiver.port}"}
    lookups = resolver.name_lookups("receiver.test")
    assert len(lookups) == 3 and all(lookup.by_check for lookup in lookups)
    # What else was looked up is the pinned address itself (urllib3 hands it to getaddrinfo,
    # which answers a numeric host without a resolver).
    assert {c.host for c in resolver.calls if c.host != "receiver.test"} == {"127.0.0.1"}
    assert connects == [("127.0.0.1", receiver.port)] * 2
    assert decoy.requests == []


def test_a_literal_ipv6_target_gets_a_bracketed_host_header(
    private_on: None, staff: User, receivers: list[Receiver], connects: list[tuple[str, int]]
) -> None:
    receiver = start(receivers, host="::1")
    subscription, delivery = delivery_to(staff, f"http://[::1]:{receiver.port}/")
    assert attempt(subscription, delivery).status == 204
    assert receiver.requests[0].headers["Host"] == f"[::1]:{receiver.port}"
    assert connects == [("::1", receiver.port)]


def test_a_non_ascii_path_is_delivered_percent_encoded(
    private_on: None, staff: User, receivers: list[Receiver]
) -> None:
    """It used to raise UnicodeEncodeError out of `attempt` (no attempt logged, the delivery
    pending with 0 attempts, first in line at every drain)."""
    receiver = start(receivers)
    subscription, delivery = delivery_to(
        staff, f"http://127.0.0.1:{receiver.port}/hooks/café?who=Zoë"
    )
    assert attempt(subscription, delivery).status == 204
    assert [r.path for r in receiver.requests] == ["/hooks/caf%C3%A9?who=Zo%C3%AB"]
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("delivered", 1)


# --- HTTPS: pinned to the address, verified for the name -------------------------------------


@pytest.fixture
def trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Authority:
    """An authority the process trusts for this test: its certificate as SSL_CERT_FILE, the
    file OpenSSL's default verify paths read (what `load_default_certs` loads)."""
    authority = Authority.new("Portal test CA")
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(authority.pem())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    return authority


def test_https_is_pinned_to_the_address_and_verified_for_the_urls_name(
    private_on: None,
    staff: User,
    resolver: Resolver,
    connects: list[tuple[str, int]],
    receivers: list[Receiver],
    trusted: Authority,
    tmp_path: Path,
) -> None:
    receiver = start(receivers, tls=trusted.server_context(tmp_path, "receiver.test"))
    resolver.answer("receiver.test", ["127.0.0.1"])
    subscription, delivery = delivery_to(staff, f"https://receiver.test:{receiver.port}/in")
    assert attempt(subscription, delivery).status == 204
    assert receiver.server_names == ["receiver.test"]  # SNI: the URL's name, not 127.0.0.1
    assert receiver.requests[0].headers["Host"] == f"receiver.test:{receiver.port}"
    assert connects == [("127.0.0.1", receiver.port)]
    assert all(c.by_check for c in resolver.name_lookups("receiver.test"))


def test_https_to_an_international_name_uses_its_idna_form_for_sni_host_and_certificate(
    private_on: None,
    staff: User,
    resolver: Resolver,
    connects: list[tuple[str, int]],
    receivers: list[Receiver],
    trusted: Authority,
    tmp_path: Path,
) -> None:
    """A certificate names an international host by its A-label; so do SNI and Host."""
    receiver = start(receivers, tls=trusted.server_context(tmp_path, "xn--r8jz45g.jp"))
    resolver.answer("xn--r8jz45g.jp", ["127.0.0.1"])
    subscription, delivery = delivery_to(staff, f"https://例え.jp:{receiver.port}/in/é")
    logged = attempt(subscription, delivery)
    assert (logged.status, logged.error) == (204, "")
    assert receiver.server_names == ["xn--r8jz45g.jp"]
    assert receiver.requests[0].headers["Host"] == f"xn--r8jz45g.jp:{receiver.port}"
    assert receiver.requests[0].path == "/in/%C3%A9"
    assert connects == [("127.0.0.1", receiver.port)]
    assert subscription.url == f"https://例え.jp:{receiver.port}/in/é"  # stored as written


def test_https_to_a_certificate_for_another_name_fails_with_tls_failed(
    private_on: None,
    staff: User,
    resolver: Resolver,
    receivers: list[Receiver],
    trusted: Authority,
    tmp_path: Path,
) -> None:
    """The certificate is valid and from a trusted authority, but for another.test: checking
    the name is what refuses it (pinning to 127.0.0.1 did not turn verification off)."""
    receiver = start(receivers, tls=trusted.server_context(tmp_path, "another.test"))
    resolver.answer("receiver.test", ["127.0.0.1"])
    subscription, delivery = delivery_to(staff, f"https://receiver.test:{receiver.port}/in")
    logged = attempt(subscription, delivery)
    assert logged.status is None
    assert logged.error == "TLS failed (certificate or handshake)"
    assert receiver.server_names == ["receiver.test"] and receiver.requests == []


def test_https_to_a_certificate_from_an_untrusted_authority_fails_with_tls_failed(
    private_on: None,
    staff: User,
    resolver: Resolver,
    receivers: list[Receiver],
    trusted: Authority,
    tmp_path: Path,
) -> None:
    stranger = Authority.new("Nobody's CA")
    receiver = start(receivers, tls=stranger.server_context(tmp_path, "receiver.test"))
    resolver.answer("receiver.test", ["127.0.0.1"])
    subscription, delivery = delivery_to(staff, f"https://receiver.test:{receiver.port}/in")
    assert attempt(subscription, delivery).error == "TLS failed (certificate or handshake)"
    assert receiver.requests == []


# --- Redirects are answers -------------------------------------------------------------------


def test_a_redirect_to_a_private_address_is_not_followed(
    private_on: None,
    staff: User,
    connects: list[tuple[str, int]],
    receivers: list[Receiver],
) -> None:
    """Even with private addresses allowed (where following would pass the check), a 302 is
    logged as the attempt's answer and nothing is sent to its Location: not to 10.0.0.1, nor to
    a loopback server that would have answered (tests/netguard would refuse the first; the
    second shows that no attempt was made at all)."""
    decoy = start(receivers, host="127.0.0.3")
    to_private = start(receivers, status=302, headers={"Location": "http://10.0.0.1/"})
    to_decoy = start(receivers, status=307, headers={"Location": f"http://127.0.0.3:{decoy.port}/"})
    for receiver in (to_private, to_decoy):
        subscription, delivery = delivery_to(staff, f"http://127.0.0.1:{receiver.port}/")
        logged = attempt(subscription, delivery)
        assert logged.status == receiver.status and logged.error == ""
        delivery.refresh_from_db()
        assert delivery.state == WebhookDelivery.State.PENDING
        assert delivery.last_error == f"HTTP {logged.status}"
        assert len(receiver.requests) == 1
    assert connects == [("127.0.0.1", to_private.port), ("127.0.0.1", to_decoy.port)]
    assert decoy.requests == []


# --- The socket guard these tests rely on ----------------------------------------------------


def test_the_guard_records_a_refused_connect_before_anything_is_sent() -> None:
    """The record the other tests read is not empty by construction: a connect to 198.51.100.7
    (TEST-NET-2, a documentation address) is refused before the SYN, and recorded."""
    before = len(netguard.refused())
    with socket.socket() as sock, pytest.raises(PermissionError, match="outside loopback"):
        sock.connect(("198.51.100.7", 9))
    assert netguard.refused()[before:] == [{"call": "connect", "host": "198.51.100.7", "port": 9}]


test_the_guard_records_a_refused_connect_before_anything_is_sent.expects_a_refusal = True  # type: ignore[attr-defined]


def test_the_guard_logs_every_connect_of_a_child_process_and_answers_stubbed_names(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    """What the SSRF drill reads from the processes it starts: NETGUARD_LOG holds every
    connect (allowed or refused) and refused lookup; NETGUARD_HOSTS answers names locally."""
    receiver = start(receivers)
    log = tmp_path / "netguard.jsonl"
    script = (
        "import socket\n"
        "print(sorted({i[4][0] for i in socket.getaddrinfo('hooks.drill.test', 443)}))\n"
        f"socket.create_connection(('other.test', {receiver.port})).close()\n"
        "for host in ('hooks.drill.test', 'example.com'):\n"
        "    try:\n"
        "        socket.create_connection((host, 443), timeout=1)\n"
        "    except PermissionError:\n"
        "        print('refused', host)\n"
    )
    env = {
        **os.environ,
        "NETGUARD_LOG": str(log),
        "NETGUARD_HOSTS": "hooks.drill.test=10.0.0.7,fd00::7 other.test=127.0.0.1",
        "PYTHONPATH": netguard.HERE,
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "['10.0.0.7', 'fd00::7']",
        "refused hooks.drill.test",
        "refused example.com",
    ]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    # A stubbed name's addresses are guarded like any other: both refused before connecting.
    assert [(r["call"], r["host"], r["port"], r["allowed"]) for r in rows] == [
        ("connect", "127.0.0.1", receiver.port, True),
        ("connect", "10.0.0.7", 443, False),
        ("connect", "fd00::7", 443, False),
        ("getaddrinfo", "example.com", 443, False),
    ]
