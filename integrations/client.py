"""The one place that speaks HTTP to Zywave's API.

A pooled session per process and thread, connect and read timeouts on every call, a size cap
and a total deadline on every answer, the bearer token plus an explicit `Profile` header on v2
calls, validation of what comes back, and named exceptions that carry what the caller needs and
never a secret.
"""

from __future__ import annotations

import contextvars
import functools
import http.cookiejar
import json
import logging
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import requests
import urllib3
from django.conf import settings
from requests.adapters import HTTPAdapter

from . import metrics, ratelimit

if TYPE_CHECKING:
    from .models import Connection

# Route templates in one place: the list and search routes are not public (docs/zywave.md §4).
PROFILES = "/profiles/V2.0/Profile/{type_code}"
PROFILE = "/profiles/V2.0/Profile/{type_code}/{id}"
CURRENT_PROFILE = "/profiles/V2.1/Profile/{type_code}/current"
ACCOUNTS = "/accounts/v2.0/account"
CONTACTS = "/accounts/v2.0/contact"
# Assumed: the Policies API is public by name and scope only (docs/zywave.md §4).
POLICIES = "/policies/v2.0/policy"

log = logging.getLogger(__name__)

# Zywave: `$top` defaults to 100; treat 100 as the maximum page (docs/zywave.md §4).
PAGE_SIZE = 100
# Pages in flight while one is written (`ZywaveClient.pages`).
PREFETCH_PAGES = 2
# Methods sent once more when the connection was lost before an answer (`_send`).
IDEMPOTENT = {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}
# The most of a body asked of the socket at once (`read_chunk`).
READ_CHUNK = 64 * 1024


class ZywaveError(Exception):
    """A call to Zywave's API failed. Messages name the path and status, never a token."""

    def __init__(self, message: str, *, path: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.status = status


class Unauthorized(ZywaveError):
    """401: the access token is missing, expired or revoked."""


class Forbidden(ZywaveError):
    """403: a scope is missing or the profile cannot be resolved. Not retried."""


class NotFound(ZywaveError):
    """404: no such id."""


class BadRequest(ZywaveError):
    """400: Zywave refused the request (e.g. bad OData)."""


class RateLimited(ZywaveError):
    """429: slow down; `retry_after` is the number of seconds Zywave asked us to wait."""

    def __init__(self, message: str, *, retry_after: float | None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class OverBudget(RateLimited):
    """The app's shared Zywave rate budget (`ratelimit`) has no slot within the caller's wait:
    not sent. `retry_after` says when one is free."""


class ServerError(ZywaveError):
    """5xx: Zywave failed; retry later. 503 may carry `retry_after`."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ZywaveTimeout(ZywaveError):
    """Zywave did not connect or answer within the configured timeout, or was unreachable."""


class ZywaveUnreachable(ZywaveTimeout):
    """No answer at all: the connection was refused or lost."""


class MalformedResponse(ZywaveError):
    """Zywave answered 2xx with something we cannot read."""


class ResponseTooLarge(MalformedResponse):
    """Zywave's answer is larger than ZYWAVE_MAX_RESPONSE_BYTES, refused once that is known."""


# Zywave's ids go into request headers, URLs and our unique keys: accept only what cannot
# inject anything and fits the column whole (an over-long id is refused, never cut: two cut
# ids could collide). Not only dots either: `/zywave/accounts/../` is not a path to a record.
SAFE_ID = re.compile(r"(?!\.+\Z)[A-Za-z0-9._-]{1,64}")


def safe_id(value: object) -> str | None:
    """Zywave's id as the text the portal stores, or None when it is unusable."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    return text if SAFE_ID.fullmatch(text) else None


class NoProfileChosen(ZywaveError):
    """A v2 call needs an explicit profile and the connection has none."""


_local = threading.local()


def session() -> requests.Session:
    """A pooled, keep-alive session for this process and thread (recreated after a fork)."""
    current = getattr(_local, "session", None)
    if current is None or getattr(_local, "pid", None) != os.getpid():
        current = requests.Session()
        # No cookie is ever kept: the session serves every connection of the process (the
        # proxy's callers too), so a cookie Zywave or a load balancer set for one would go
        # out with the next one's calls. Authentication is by header alone.
        current.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        current.mount("http://", adapter)
        current.mount("https://", adapter)
        current.headers["Accept"] = "application/json"
        # requests reads the proxy and CA-bundle variables of the environment on every call
        # (about a millisecond of the proxy's overhead); they are read once instead: the CA
        # bundle here, the proxies per origin by `environ_proxies` (NO_PROXY still applies).
        current.trust_env = False
        current.verify = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
        _local.session, _local.pid = current, os.getpid()
    return current


@functools.lru_cache(maxsize=64)
def environ_proxies(origin: str) -> dict[str, str]:
    """The proxies the environment names for `origin` (scheme://host[:port]), with NO_PROXY
    applied, as requests would find them: read once per origin and process."""
    return dict(requests.utils.get_environ_proxies(origin + "/"))


def read_chunk(response: requests.Response, most: int) -> bytes:
    """Up to `most` bytes of a streamed body, as soon as any arrive; b"" at its end.

    `read1` makes at most one socket read, where `iter_content` waits until a whole chunk has
    come: a server dripping bytes inside one chunk would never let the deadline be checked.
    urllib3's errors become the requests errors `_send` maps (as `iter_content` does), except
    that a read timeout stays a timeout, never taken for a lost connection and asked again.
    """
    try:
        data: bytes = response.raw.read1(most, decode_content=True)
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.ReadTimeout(exc) from None
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from None
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.SSLError) as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from None
    return data


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _finite(text: str) -> float:
    """JSON numbers only: `1e999` would be read as infinity, which no column or jsonb holds."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's reader accepts NaN and Infinity


# NUL and lone UTF-16 surrogates are valid JSON escapes that PostgreSQL's text and jsonb refuse.
UNSTORABLE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _storable(value: Any) -> Any:
    """The parsed answer with NUL and lone surrogates replaced by U+FFFD (not dropped: an id
    must not turn into another id, and one with U+FFFD is refused where ids are checked)."""
    if isinstance(value, str):
        text = value.replace("\x00", "\ufffd").encode("utf-8", "surrogatepass")
        return text.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value


def lower_keys(record: Any) -> dict[str, Any]:
    """Zywave's keys may be PascalCase or camelCase (docs/zywave.md §3): read them in any case."""
    if not isinstance(record, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(record).__name__}")
    return {str(key).lower(): value for key, value in record.items()}


@dataclass
class Page:
    items: list[dict[str, Any]]
    total: int | None
    has_more: bool | None
    skip: int


def parse_envelope(body: Any, path: str = "") -> tuple[list[Any], int | None, bool | None]:
    """The list envelope in any of its shapes (docs/zywave.md §4, not public):
    `{"items", "totalCount", "hasMoreResults"}`, OData's `{"value": [...]}`, or a bare array.
    """
    if isinstance(body, list):
        return body, None, None
    if isinstance(body, dict):
        keys = lower_keys(body)
        items = keys.get("items", keys.get("value"))
        if isinstance(items, list):
            total = keys.get("totalcount", keys.get("@odata.count"))
            more = keys.get("hasmoreresults")
            return (
                items,
                total if isinstance(total, int) and not isinstance(total, bool) else None,
                more if isinstance(more, bool) else None,
            )
    raise MalformedResponse(f"{path}: not a list envelope Zywave is known to send", path=path)


@dataclass
class ZywaveClient:
    """Calls Zywave's API as one connection, under its chosen profile.

    `token` returns a valid access token; `refresh` is called once after a 401 with the token
    that was refused and returns a fresh one (see `tokens.py`).
    """

    connection: Connection
    token: Callable[[Connection], str]
    refresh: Callable[[Connection, str], str]
    profile_header: str | None = None
    # Called once when Zywave refuses the ProfileToken (403): returns a fresh header or None.
    refetch_profile: Callable[[], str | None] | None = None
    timeout: tuple[float, float] = field(default_factory=lambda: settings.ZYWAVE_HTTP_TIMEOUT)
    max_response_bytes: int = field(default_factory=lambda: settings.ZYWAVE_MAX_RESPONSE_BYTES)
    # Seconds one call may take in all, however steadily Zywave keeps sending.
    deadline: float = field(default_factory=lambda: settings.ZYWAVE_HTTP_DEADLINE_SECONDS)

    def get(self, path: str, params: dict[str, Any] | None = None, *, v2: bool = True) -> Any:
        """GET a JSON document. On a 401 it refreshes the token once and retries once."""
        headers = self._headers(path, v2)
        token = self.token(self.connection)
        return self._answer_after_retries(
            self._send(path, params, headers, token), path, params, headers, token
        )

    def forward(
        self,
        method: str,
        path: str,
        query: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        v2: bool,
    ) -> requests.Response:
        """Send a request as it came (the proxy's), whatever its method, with the bearer token
        and on v2 routes the `Profile` header. A 401 refreshes once and sends again; a 403 on
        v2 fetches the ProfileToken again once. The answer, of any status, is read whole under
        the size cap and within the deadline; nothing is retried on a lost connection unless
        the method is idempotent."""
        headers = {**headers, **self._headers(path, v2)}
        token = self.token(self.connection)
        options: dict[str, Any] = {"method": method, "data": body, "read_errors": True}
        response = self._send(path, query, headers, token, **options)
        if response.status_code == 401:
            token = self.refresh(self.connection, token)
            response = self._send(path, query, headers, token, **options)
        if response.status_code == 403 and "Profile" in headers and self.refetch_profile:
            header = self.refetch_profile()
            if header and header != headers["Profile"]:
                headers["Profile"] = self.profile_header = header
                response = self._send(path, query, headers, token, **options)
        return response

    def _headers(self, path: str, v2: bool) -> dict[str, str]:
        if not v2:
            return {}
        if not self.profile_header:
            raise NoProfileChosen("choose a Zywave profile first", path=path)
        return {"Profile": self.profile_header}

    def _answer_after_retries(
        self,
        response: requests.Response,
        path: str,
        params: dict[str, Any] | None,
        headers: dict[str, str],
        token: str,
    ) -> Any:
        """Read an answer, after one refresh-and-retry on 401 and one profile re-fetch on 403."""
        if response.status_code == 401:
            token = self.refresh(self.connection, token)
            response = self._send(path, params, headers, token)
        if response.status_code == 403 and "Profile" in headers and self.refetch_profile:
            # A ProfileToken can be refused (e.g. re-issued at Zywave): fetch it again once.
            header = self.refetch_profile()
            if header and header != headers["Profile"]:
                headers["Profile"] = self.profile_header = header
                response = self._send(path, params, headers, token)
        return self._read(response, path)

    def _send(
        self,
        path: str,
        params: dict[str, Any] | str | None,
        headers: dict[str, str],
        token: str,
        *,
        method: str = "GET",
        data: bytes | None = None,
        read_errors: bool = False,
    ) -> requests.Response:
        """GET `path` and read a 2xx body whole, under the size cap and within the deadline.
        (`method`, `data` and `read_errors`, the body of any status read too: the proxy's.)

        The answer comes back read and its connection back in the pool, so the helper threads
        of `pages` read bodies ahead under the same cap and deadline. A GET whose connection
        was lost is sent once more, within what is left of the same deadline. A call lasts at
        most the deadline plus one read timeout (the last wait for bytes that never came).
        """
        url = f"{settings.ZYWAVE_API_URL}{path}"
        proxies = environ_proxies(settings.ZYWAVE_API_URL)
        self._wait_for_budget(path)
        ends_at = time.monotonic() + self.deadline

        def send() -> requests.Response:
            left = ends_at - time.monotonic()
            if left <= 0:
                raise self._too_slow(path)
            connect, read = self.timeout
            response = session().request(
                method,
                url,
                params=params,
                data=data,
                # identity: a compressed body could decode to nothing for ever inside one
                # read, out of the deadline's reach; the cap counts what is really sent.
                headers={
                    **headers,
                    "Authorization": f"Bearer {token}",
                    "Accept-Encoding": "identity",
                },
                # No single wait outlasts the deadline, not even for the answer's head.
                timeout=(min(connect, left), min(read, left)),
                proxies=proxies,
                stream=True,
                # requests would read a redirect's body whole, outside the cap. Zywave's API is
                # not known to redirect (docs/zywave.md §4): a 3xx is an answer we cannot read.
                allow_redirects=False,
            )
            metrics.zywave_answered(path, response)
            if response.status_code == 429:
                # Everyone slows down, not only this caller (`ratelimit.pause`).
                ratelimit.pause(parse_retry_after(response.headers.get("Retry-After")))
                metrics.rate_limited()
            try:
                if 200 <= response.status_code < 300 or read_errors:
                    # What `response.content` holds when requests reads it, read here instead.
                    response._content = self._body(response, path, ends_at)
                    response.raw.release_conn()  # read to its end: the connection is reusable
                else:
                    response._content = b""  # no error is read from its body
            finally:
                response.close()  # and with it the connection of a body not read to its end
            return response

        try:
            try:
                return send()
            except requests.ConnectionError as exc:
                if isinstance(exc, requests.Timeout) or method not in IDEMPOTENT:
                    raise
                # Most often a keep-alive connection Zywave closed just as it was reused (the
                # connect-burst drill met it under load). A GET may be sent again: once, at
                # once, on a fresh connection. A timeout is not retried: it already cost its
                # whole wait.
                log.info("%s: connection lost (%s), asking once more", path, type(exc).__name__)
                self._wait_for_budget(path)
                return send()
        except requests.Timeout:
            metrics.zywave_failed(path, "timeout")
            raise ZywaveTimeout(f"{path}: Zywave did not answer in time", path=path) from None
        except requests.RequestException as exc:
            metrics.zywave_failed(path, "unreachable")
            raise ZywaveUnreachable(
                f"{path}: Zywave could not be reached ({type(exc).__name__})", path=path
            ) from None

    def _wait_for_budget(self, path: str) -> None:
        """Take this call's slot of the app's and the connection's rate budget, sleeping until
        it comes; OverBudget when it is further away than the caller's class may wait."""
        try:
            metrics.rate_limit_waited(ratelimit.wait_for_slot(self.connection.pk))
        except ratelimit.Busy as exc:
            raise OverBudget(
                f"{path}: the app's Zywave rate budget has no slot for {exc.wait:.1f} s",
                retry_after=exc.wait,
                path=path,
                status=429,
            ) from None

    def _body(self, response: requests.Response, path: str, ends_at: float) -> bytes:
        """A 2xx body as it arrives, refused past `max_response_bytes` (before any of it is
        read when its Content-Length says so) and cut when the call's deadline has passed.

        No read asks for more than one byte past the cap, so a body too large, however large
        or endless, costs at most cap + 1 bytes before it is refused.
        """
        cap, status = self.max_response_bytes, response.status_code
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > cap:
            raise ResponseTooLarge(
                f"{path}: Zywave's answer of {declared} bytes (its Content-Length) is larger "
                f"than ZYWAVE_MAX_RESPONSE_BYTES ({cap})",
                path=path,
                status=status,
            )
        body = bytearray()
        while chunk := read_chunk(response, min(READ_CHUNK, cap + 1 - len(body))):
            body += chunk
            if len(body) > cap:
                raise ResponseTooLarge(
                    f"{path}: Zywave's answer is larger than ZYWAVE_MAX_RESPONSE_BYTES ({cap})",
                    path=path,
                    status=status,
                )
            if time.monotonic() > ends_at:
                raise self._too_slow(path)
        return bytes(body)

    def _too_slow(self, path: str) -> ZywaveTimeout:
        return ZywaveTimeout(
            f"{path}: Zywave's answer took longer than ZYWAVE_HTTP_DEADLINE_SECONDS "
            f"({self.deadline:g} s)",
            path=path,
        )

    def _read(self, response: requests.Response, path: str) -> Any:
        status = response.status_code
        if status == 401:
            raise Unauthorized(
                f"{path}: Zywave refused the access token (401)", path=path, status=status
            )
        if status == 403:
            raise Forbidden(
                f"{path}: missing scope or profile not allowed (403)", path=path, status=status
            )
        if status == 404:
            raise NotFound(f"{path}: not found (404)", path=path, status=status)
        if status == 429:
            raise RateLimited(
                f"{path}: rate limited (429)",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                path=path,
                status=status,
            )
        if status >= 500:
            raise ServerError(
                f"{path}: Zywave failed ({status})",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                path=path,
                status=status,
            )
        if status >= 400:
            raise BadRequest(
                f"{path}: Zywave refused the request ({status})", path=path, status=status
            )
        try:
            body = json.loads(response.content, parse_float=_finite, parse_constant=_not_json)
        except ValueError:
            raise MalformedResponse(
                f"{path}: Zywave answered {status} without JSON", path=path, status=status
            ) from None
        return _storable(body) if UNSTORABLE.search(response.content) else body

    # --- Profiles (docs/zywave.md §3) ------------------------------------------------------

    def profiles(self, type_code: str) -> list[dict[str, Any]]:
        """The connection's profiles of a type. Asked without a Profile header: it is the
        call that tells us which profiles exist."""
        body = self.get(PROFILES.format(type_code=type_code), v2=False)
        items, _, _ = parse_envelope(body, PROFILES)
        return [lower_keys(item) for item in items]

    def profile(self, type_code: str, profile_id: str) -> dict[str, Any]:
        path = PROFILE.format(type_code=type_code, id=profile_id)
        return lower_keys(self.get(path, v2=False))

    def current_profile(self, type_code: str) -> dict[str, Any]:
        return lower_keys(self.get(CURRENT_PROFILE.format(type_code=type_code), v2=False))

    # --- Lists with OData paging (docs/zywave.md §4) -----------------------------------------

    def pages(
        self,
        path: str,
        *,
        odata_filter: str | None = None,
        orderby: str = "id",
        skip: int = 0,
        top: int = PAGE_SIZE,
    ) -> Iterator[Page]:
        """Yield pages of at most `top` records with a stable `$orderby` until the last one.

        Stops on `hasMoreResults: false`, on `skip >= totalCount`, or on a short or empty page,
        whichever envelope Zywave sends. Pages are requested ahead, in helper threads that only
        do HTTP (`_send`: sent and read under the same size cap and deadline), while the caller
        writes the current one: the next page always, and up to PREFETCH_PAGES when Zywave's
        `totalCount` shows they exist (so nothing is asked that a one-page answer would not
        need). Tokens, refreshes and retries stay in the calling thread.
        """
        top = min(top, PAGE_SIZE)
        headers = self._headers(path, v2=True)
        pending: deque[tuple[dict[str, Any], str, Future[requests.Response]]] = deque()
        asked = skip  # the `$skip` of the next request: every page before the last is full

        def ask() -> None:
            nonlocal asked
            params: dict[str, Any] = {"$top": top, "$skip": asked, "$orderby": orderby}
            if odata_filter:
                params["$filter"] = odata_filter
            token = self.token(self.connection)
            # The helper thread draws on the rate budget as this caller does (its priority).
            in_context = contextvars.copy_context().run
            sent = pool.submit(in_context, self._send, path, params, headers, token)
            pending.append((params, token, sent))
            asked += top

        with ThreadPoolExecutor(PREFETCH_PAGES, thread_name_prefix="zywave-prefetch") as pool:
            ask()
            while True:
                params, token, sent = pending.popleft()
                body = self._answer_after_retries(sent.result(), path, params, headers, token)
                items, total, has_more = parse_envelope(body, path)
                if not all(isinstance(item, dict) for item in items):
                    raise MalformedResponse(f"{path}: a list item is not a JSON object", path=path)
                if len(items) > top:
                    # Memory stays flat only if a page is what we asked for.
                    raise MalformedResponse(
                        f"{path}: {len(items)} records on a page of {top}", path=path
                    )
                page = Page(items, total, has_more, skip)
                skip += len(items)
                last = (
                    has_more is False
                    or not items
                    or len(items) < top
                    or (total is not None and skip >= total)
                )
                if last:
                    for _, _, extra in pending:  # asked on a total that has since shrunk
                        extra.cancel()
                else:
                    if not pending:
                        ask()
                    while len(pending) < PREFETCH_PAGES and total is not None and asked < total:
                        ask()
                yield page
                if last:
                    return
