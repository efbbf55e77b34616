"""The API client on its own: list envelopes and key case, paging, one retry of a GET whose
connection was lost, one refresh after a 401, each error status mapped to a named exception,
and Retry-After. Against the sandbox over HTTP; the answers Zywave might send malformed are
fuzzed in tests/security/test_zywave_responses.py."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from django.contrib.auth.models import User
from requests.adapters import HTTPAdapter

from integrations.client import (
    ACCOUNTS,
    CONTACTS,
    PAGE_SIZE,
    PREFETCH_PAGES,
    PROFILES,
    BadRequest,
    Forbidden,
    MalformedResponse,
    NoProfileChosen,
    NotFound,
    RateLimited,
    ResponseTooLarge,
    ServerError,
    Unauthorized,
    ZywaveClient,
    ZywaveError,
    ZywaveTimeout,
    lower_keys,
    parse_envelope,
    parse_retry_after,
    read_chunk,
    session,
)
from integrations.models import Connection
from integrations.tokens import client_for
from tests.conftest import connection
from tests.drills.netfaults import CuttingProxy
from tests.integrations.flows import inject_fault
from tests.sandboxserver import Sandbox, free_port

pytestmark = pytest.mark.django_db

# The profile list: asked without a Profile header, so a fault on it meets no profile re-fetch.
LIST = PROFILES.format(type_code="B")
LIST_PATTERN = r"^/profiles/V2\.0/Profile/B$"


def token_counts(sandbox: Sandbox) -> dict[str, int]:
    return dict(sandbox.counters()["token"])


def api_requests(sandbox: Sandbox, path: str) -> int:
    return sum(n for key, n in sandbox.counters()["api"].items() if key.startswith(f"{path}:"))


def sandbox_counts(sandbox: Sandbox, conn: Connection) -> dict[str, int]:
    assert conn.chosen_profile is not None
    return sandbox.control("GET", "accounts/count", profile_id=conn.chosen_profile.zywave_id)


# --- Reading answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "read"),
    [
        ({"items": [{"id": 1}], "totalCount": 7, "hasMoreResults": True}, ([{"id": 1}], 7, True)),
        ({"Items": [{"id": 1}], "TotalCount": 7, "HasMoreResults": False}, ([{"id": 1}], 7, False)),
        ({"value": [{"id": 1}], "@odata.count": 7}, ([{"id": 1}], 7, None)),
        ([{"id": 1}], ([{"id": 1}], None, None)),
        ({"items": [], "totalCount": True, "hasMoreResults": "no"}, ([], None, None)),
    ],
    ids=["items", "pascal-case", "odata-value", "bare-array", "unusable-total-and-more"],
)
def test_each_list_envelope_zywave_sends_is_read(body: Any, read: tuple[Any, ...]) -> None:
    assert parse_envelope(body, ACCOUNTS) == read


def test_an_unknown_envelope_is_refused_naming_the_path() -> None:
    with pytest.raises(MalformedResponse, match="/accounts/v2.0/account: not a list envelope"):
        parse_envelope({"data": []}, ACCOUNTS)


def test_keys_are_read_in_any_case() -> None:
    assert lower_keys({"Id": 1, "typeCode": "B", "NAME": "x"}) == {
        "id": 1,
        "typecode": "B",
        "name": "x",
    }


def test_a_record_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(MalformedResponse, match="expected a JSON object, got list"):
        lower_keys([1, 2])


@pytest.mark.parametrize("key_case", ["pascal", "camel"])
def test_profiles_are_read_whichever_key_case_zywave_uses(
    staff: User, zywave: Sandbox, key_case: str
) -> None:
    conn = connection(staff, zywave, profile=False)
    zywave.control("POST", "settings", key_case=key_case)
    listed = client_for(conn).profiles("B")
    assert {(p["id"], p["name"]) for p in listed} == {
        (p["id"], p["name"]) for p in zywave.profiles()
    }


def test_nul_and_lone_surrogates_in_an_answer_become_replacement_characters(
    staff: User, zywave: Sandbox
) -> None:
    # PostgreSQL's text and jsonb refuse both; U+FFFD keeps an id from turning into another.
    conn = connection(staff, zywave, profile=False)
    body = '{"items": [{"id": "a\\u0000b", "name": "c\\ud800d"}]}'
    inject_fault(zywave, LIST_PATTERN, status=200, body=body, content_type="application/json")
    (record,) = client_for(conn).get(LIST, v2=False)["items"]
    assert record["id"] == "a\ufffdb"
    assert record["name"][0] + record["name"][-1] == "cd"
    assert set(record["name"][1:-1]) == {"\ufffd"}  # the surrogate's bytes, each replaced


@pytest.mark.parametrize("number", ["1e999", "NaN", "-Infinity"])
def test_a_number_no_column_can_hold_is_refused_as_malformed(
    staff: User, zywave: Sandbox, number: str
) -> None:
    conn = connection(staff, zywave, profile=False)
    body = f'{{"items": [{{"id": 1, "count": {number}}}]}}'
    inject_fault(zywave, LIST_PATTERN, status=200, body=body, content_type="application/json")
    with pytest.raises(MalformedResponse, match="without JSON"):
        client_for(conn).get(LIST, v2=False)


# --- Paging ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "in_flight"),
    [("items", PREFETCH_PAGES), ("value", PREFETCH_PAGES), ("array", 1)],
)
def test_pages_are_asked_ahead_only_when_zywave_says_they_exist(
    staff: User, zywave: Sandbox, monkeypatch: pytest.MonkeyPatch, shape: str, in_flight: int
) -> None:
    """With a total in the envelope, PREFETCH_PAGES requests run at once and none goes past the
    last page; a bare array has no total, so only the next page is asked, one at a time.

    Pages 2 and 3 of each list wait for each other at a barrier before they are sent. With a
    total both are asked together, so the barrier is met with both in flight. Without one,
    page 3 is asked only once page 2 is read: page 2 waits alone and the barrier breaks, after
    half a second in which a page 3 asked with it would have arrived."""
    assert PREFETCH_PAGES == 2  # the barrier below pairs two pages
    conn = connection(staff, zywave)
    zywave.control("POST", "settings", envelope=shape)
    zywave.control("POST", "counters/reset")
    expected = sandbox_counts(zywave, conn)
    counts = {ACCOUNTS: expected["accounts"], CONTACTS: expected["contacts"]}
    wait = 10.0 if in_flight > 1 else 0.5
    barriers = {
        path: threading.Barrier(2, timeout=wait)
        for path, count in counts.items()
        if count > 2 * PAGE_SIZE
    }
    assert barriers, counts  # else no list has a page 3, and nothing below runs at once
    met: list[str] = []
    busy, most = 0, 0
    lock = threading.Lock()
    send = ZywaveClient._send

    def counting_send(
        self: ZywaveClient, path: str, params: dict[str, Any], *args: Any
    ) -> requests.Response:
        # A spy on our own client (not a mock): it counts requests in flight, then sends.
        nonlocal busy, most
        with lock:
            busy += 1
            most = max(most, busy)
        try:
            if path in barriers and params["$skip"] in (PAGE_SIZE, 2 * PAGE_SIZE):
                try:
                    barriers[path].wait()
                    met.append(path)
                except threading.BrokenBarrierError:
                    pass
            return send(self, path, params, *args)
        finally:
            with lock:
                busy -= 1

    monkeypatch.setattr(ZywaveClient, "_send", counting_send)
    client = client_for(conn)
    for path, count in counts.items():
        records = [item["id"] for page in client.pages(path) for item in page.items]
        assert len(records) == len(set(records)) == count
        pages = -(-count // PAGE_SIZE)
        # Without a total, a last page that happens to be full needs one empty page after it.
        extra = 1 if shape == "array" and count % PAGE_SIZE == 0 else 0
        assert api_requests(zywave, path) == pages + extra
    if in_flight > 1:
        assert sorted(met) == sorted([*barriers] * 2)  # pages 2 and 3 were in flight at once
    else:
        assert met == []  # page 2 waited alone: no page 3 came while it was in flight
    assert most == in_flight


def test_paging_starts_at_the_given_skip(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave)
    total = sandbox_counts(zywave, conn)["accounts"]
    pages = list(client_for(conn).pages(ACCOUNTS, skip=total - 30))
    assert [page.skip for page in pages] == [total - 30]
    assert len(pages[0].items) == 30 and pages[0].total == total


def test_paging_sends_the_filter_and_a_stable_order(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave)
    pages = list(client_for(conn).pages(ACCOUNTS, odata_filter="isArchived eq true"))
    ids = [item["id"] for page in pages for item in page.items]
    assert all(item["isArchived"] for page in pages for item in page.items)
    assert len(ids) == sandbox_counts(zywave, conn)["archived"]
    assert ids == sorted(ids)


def test_a_v2_call_without_a_chosen_profile_is_refused_before_asking_zywave(
    staff: User, zywave: Sandbox
) -> None:
    conn = connection(staff, zywave, profile=False)
    zywave.control("POST", "counters/reset")
    with pytest.raises(NoProfileChosen):
        client_for(conn).get(ACCOUNTS)
    with pytest.raises(NoProfileChosen):
        next(client_for(conn).pages(ACCOUNTS))
    assert zywave.counters()["api"] == {}


# --- Retries ------------------------------------------------------------------------------


@pytest.mark.parametrize("cuts", [1, 2])
def test_a_get_whose_connection_drops_is_asked_once_more_and_only_once(
    staff: User, zywave: Sandbox, settings: Any, cuts: int
) -> None:
    """A proxy resets the connection after Zywave answered (what a keep-alive connection
    closed as it is reused looks like): the GET is sent again once, on a new connection."""
    conn = connection(staff, zywave)
    upstream = urlsplit(zywave.url)
    proxy = CuttingProxy(
        (upstream.hostname or "127.0.0.1", upstream.port or 80),
        cuts=cuts,
        cut_prefix=b"GET /profiles/",
    )
    settings.ZYWAVE_API_URL = proxy.url
    try:
        profiles = client_for(conn).profiles("B")
        outcome = f"{len(profiles)} profiles"
    except ZywaveTimeout as exc:
        outcome = str(exc)
    finally:
        proxy.close()
    assert proxy.cut_statuses == [200] * cuts  # Zywave answered; the answers were lost
    if cuts == 1:
        assert outcome == f"{len(zywave.profiles())} profiles" and proxy.passed == 1
    else:
        assert "could not be reached (ConnectionError)" in outcome and proxy.passed == 0


def test_a_401_refreshes_the_token_once_and_asks_again(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave, profile=False)
    zywave.control("POST", "counters/reset")
    inject_fault(zywave, "^/connect/userinfo", status=401)
    body = client_for(conn).get("/connect/userinfo", v2=False)
    assert body["email"] == "agent@example.com"
    assert token_counts(zywave) == {"refresh_token:success": 1}


def test_a_second_401_is_reported(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave, profile=False)
    inject_fault(zywave, "^/connect/userinfo", status=401, count=2)
    with pytest.raises(Unauthorized):
        client_for(conn).get("/connect/userinfo", v2=False)
    assert token_counts(zywave).get("refresh_token:success") == 1


def test_a_timeout_is_not_asked_again(staff: User, zywave: Sandbox) -> None:
    # The read timeout is 3 s here (the zywave fixture); the sandbox answers after 4.5 s. A
    # request takes its fault when it arrives, so a second one would leave none remaining.
    conn = connection(staff, zywave, profile=False)
    inject_fault(zywave, LIST_PATTERN, count=2, delay_ms=4500)
    with pytest.raises(ZywaveTimeout, match="did not answer in time"):
        client_for(conn).get(LIST, v2=False)
    assert [f["remaining"] for f in zywave.control("GET", "faults")["faults"]] == [1]


def test_an_unreachable_zywave_is_reported_as_a_timeout(
    staff: User, zywave: Sandbox, settings: Any
) -> None:
    conn = connection(staff, zywave, profile=False)
    settings.ZYWAVE_API_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ZywaveTimeout, match="could not be reached"):
        client_for(conn).get(LIST, v2=False)


# --- Size cap and deadline ------------------------------------------------------------------


@pytest.fixture
def bytes_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each piece of a body the client read (a spy on `read_chunk`: it reads on)."""
    sizes: list[int] = []

    def counting(response: requests.Response, most: int) -> bytes:
        chunk = read_chunk(response, most)
        sizes.append(len(chunk))
        return chunk

    monkeypatch.setattr("integrations.client.read_chunk", counting)
    return sizes


def test_an_endless_answer_is_refused_one_byte_past_the_cap(
    staff: User, zywave: Sandbox, settings: Any, bytes_read: list[int]
) -> None:
    """The sandbox sends the body without end and without Content-Length, so only the cap can
    end the call before its deadline (cut short here, so a missing cap fails as a timeout)."""
    settings.ZYWAVE_HTTP_DEADLINE_SECONDS = 10
    cap = settings.ZYWAVE_MAX_RESPONSE_BYTES  # the shipped default: the cap as deployed
    conn = connection(staff, zywave, profile=False)
    inject_fault(zywave, LIST_PATTERN, status=200, stream="endless", body='{"items": [{}, ')
    bytes_read.clear()  # of the calls that linked the connection
    with pytest.raises(ResponseTooLarge) as caught:
        client_for(conn).get(LIST, v2=False)
    assert str(caught.value) == (
        f"{LIST}: Zywave's answer is larger than ZYWAVE_MAX_RESPONSE_BYTES ({cap})"
    )
    assert (caught.value.path, caught.value.status) == (LIST, 200)
    assert sum(bytes_read) == cap + 1  # read up to the first byte too many, then hung up


def test_an_answer_whose_content_length_is_over_the_cap_is_refused_unread(
    staff: User, zywave: Sandbox, settings: Any, bytes_read: list[int]
) -> None:
    # The sandbox's own pages carry a Content-Length; a page of 100 accounts is over 1 KiB.
    conn = connection(staff, zywave)
    settings.ZYWAVE_MAX_RESPONSE_BYTES = 1024
    bytes_read.clear()  # of the calls that linked the connection
    with pytest.raises(ResponseTooLarge, match=r"\d+ bytes \(its Content-Length\) is larger"):
        next(client_for(conn).pages(ACCOUNTS))
    assert bytes_read == []


def test_an_answer_dripping_bytes_is_cut_at_the_deadline(
    staff: User, zywave: Sandbox, settings: Any, bytes_read: list[int]
) -> None:
    """A byte every 0.2 s, each well inside the 3 s read timeout, 60 s for the whole body:
    no read times out, and only the call's deadline (2 s here) ends it."""
    settings.ZYWAVE_HTTP_DEADLINE_SECONDS = 2
    conn = connection(staff, zywave, profile=False)
    inject_fault(zywave, LIST_PATTERN, status=200, stream="drip", delay_ms=200, body=" " * 300)
    bytes_read.clear()  # of the calls that linked the connection
    started = time.monotonic()
    with pytest.raises(ZywaveTimeout) as caught:
        client_for(conn).get(LIST, v2=False)
    assert str(caught.value) == (
        f"{LIST}: Zywave's answer took longer than ZYWAVE_HTTP_DEADLINE_SECONDS (2 s)"
    )
    # Each byte was read as it came (the deadline is checked between reads).
    assert len(bytes_read) >= 3 and set(bytes_read) == {1}
    assert time.monotonic() - started < 20  # a coarse guard only: the drip alone lasts 60 s


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"stream": "drip", "delay_ms": 200, "body": " " * 300}, ZywaveTimeout),
        ({"stream": "endless", "body": '{"items": [{}, '}, ResponseTooLarge),
    ],
    ids=["drip", "endless"],
)
def test_pages_asked_ahead_obey_the_cap_and_the_deadline(
    staff: User,
    zywave: Sandbox,
    settings: Any,
    fault: dict[str, Any],
    error: type[ZywaveError],
) -> None:
    """The first page is served as it is (a 1 ms delay takes the first request); the pages
    asked ahead with it, in the helper threads, meet the fault."""
    settings.ZYWAVE_HTTP_DEADLINE_SECONDS = 2
    conn = connection(staff, zywave)
    inject_fault(zywave, r"^/accounts/v2\.0/account$", delay_ms=1)
    inject_fault(zywave, r"^/accounts/v2\.0/account$", count=2, status=200, **fault)
    pages = client_for(conn).pages(ACCOUNTS)
    assert len(next(pages).items) == PAGE_SIZE
    with pytest.raises(error):
        next(pages)


def test_a_page_within_the_cap_is_read_whole_and_its_connection_kept(
    staff: User, zywave: Sandbox, settings: Any, bytes_read: list[int]
) -> None:
    conn = connection(staff, zywave)
    client = client_for(conn)
    total = sandbox_counts(zywave, conn)["accounts"]
    client.get(ACCOUNTS, {"$top": 1})  # this thread's connection to the sandbox, opened
    adapter = session().get_adapter(zywave.url)
    assert isinstance(adapter, HTTPAdapter)
    pool = adapter.poolmanager.connection_from_url(zywave.url)
    opened = pool.num_connections
    bytes_read.clear()
    for _ in range(3):
        items, listed, _ = parse_envelope(client.get(ACCOUNTS))
        assert len(items) == PAGE_SIZE and listed == total
    # Read as a stream; the default cap is over a hundred such pages (see portal/settings.py).
    page = sum(bytes_read) // 3
    assert 0 < page * 100 < settings.ZYWAVE_MAX_RESPONSE_BYTES, page
    # Each body was read to its end, so its connection went back to the pool and was reused.
    assert pool.num_connections == opened


# --- Errors, named ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequest),
        (403, Forbidden),
        (404, NotFound),
        (409, BadRequest),
        (429, RateLimited),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
    ],
)
def test_each_error_status_raises_its_named_error_with_the_path_and_status(
    staff: User, zywave: Sandbox, status: int, error: type[ZywaveError]
) -> None:
    conn = connection(staff, zywave, profile=False)
    inject_fault(zywave, LIST_PATTERN, status=status)
    with pytest.raises(error) as caught:
        client_for(conn).get(LIST, v2=False)
    assert type(caught.value) is error
    assert (caught.value.path, caught.value.status) == (LIST, status)
    assert f"({status})" in str(caught.value)


def test_a_2xx_answer_without_json_is_malformed(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave, profile=False)
    inject_fault(zywave, LIST_PATTERN, status=200, body="<html>maintenance</html>")
    with pytest.raises(MalformedResponse, match="answered 200 without JSON"):
        client_for(conn).get(LIST, v2=False)


@pytest.mark.parametrize(("status", "error"), [(429, RateLimited), (503, ServerError)])
def test_retry_after_is_carried_on_the_error(
    staff: User, zywave: Sandbox, status: int, error: type[RateLimited | ServerError]
) -> None:
    conn = connection(staff, zywave, profile=False)
    inject_fault(zywave, LIST_PATTERN, status=status, retry_after="7")
    with pytest.raises(error) as caught:
        client_for(conn).get(LIST, v2=False)
    assert isinstance(caught.value, RateLimited | ServerError)
    assert caught.value.retry_after == 7.0


def test_a_503_without_retry_after_carries_none(staff: User, zywave: Sandbox) -> None:
    conn = connection(staff, zywave, profile=False)
    inject_fault(zywave, LIST_PATTERN, status=503)
    with pytest.raises(ServerError) as caught:
        client_for(conn).get(LIST, v2=False)
    assert caught.value.retry_after is None


# --- Retry-After (RFC 9110 §10.2.3) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"), [("7", 7.0), (" 120 ", 120.0), ("0", 0.0), ("", None), (None, None)]
)
def test_retry_after_in_seconds_is_read(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date_is_the_seconds_until_then() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    seconds = parse_retry_after(later)
    assert seconds is not None and 80 <= seconds <= 90


def test_retry_after_as_a_past_http_date_is_no_wait() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("value", ["soon", "-5", "1.5", "Mon, 99 Foo 2015"])
def test_an_unreadable_retry_after_is_none(value: str) -> None:
    assert parse_retry_after(value) is None


# --- The session ----------------------------------------------------------------------------


def test_each_thread_reuses_its_own_pooled_session() -> None:
    mine = session()
    theirs: list[requests.Session] = []
    worker = threading.Thread(target=lambda: theirs.append(session()))
    worker.start()
    worker.join()
    assert session() is mine and theirs[0] is not mine


def test_the_shared_session_keeps_no_cookie() -> None:
    """One session serves every connection of a process: a cookie Zywave (or a load
    balancer) set for one must never go out with another's calls."""
    import http.cookiejar
    import urllib.request

    from integrations.client import session

    cookie = http.cookiejar.Cookie(
        0, "ARRAffinity", "abc", None, False, "127.0.0.1", True, False, "/", True, False,
        None, False, None, None, {},
    )  # fmt: skip
    policy = session().cookies._policy  # type: ignore[attr-defined]
    assert not policy.set_ok(cookie, urllib.request.Request("http://127.0.0.1/"))


def test_the_environment_proxies_are_read_once_per_origin_with_no_proxy_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from integrations.client import environ_proxies

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    environ_proxies.cache_clear()
    try:
        assert environ_proxies("http://127.0.0.1:8001")["http"] == "http://127.0.0.1:9"
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert environ_proxies("http://127.0.0.1:8001")["http"] == "http://127.0.0.1:9"  # once
        environ_proxies.cache_clear()
        assert "http" not in environ_proxies("http://127.0.0.1:8001")  # NO_PROXY applies
    finally:
        environ_proxies.cache_clear()
