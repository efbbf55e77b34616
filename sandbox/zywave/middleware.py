"""Request-wide sandbox behaviour: request counters, the app-wide rate limit and injected faults.

Counters and faults keep their state in the database (zywave.models.Fault, Counter) because
gunicorn's worker processes share nothing else; the rate limit keeps its own in a locked file
(zywave.ratelimit), cheaper than a database write per request.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from sandbox.zywave import ratelimit
from sandbox.zywave.models import Counter, Fault
from sandbox.zywave.resources import api_roots

Handler = Callable[[HttpRequest], HttpResponseBase]

# /profiles/, /accounts/, /industries/, ...: every API the registry (and api.py) serves.
API_PATH = re.compile(rf"^/({'|'.join(map(re.escape, api_roots()))})/", re.IGNORECASE)
CONTROL_PATH = "/_sandbox/"

# Faults whose body is streamed (POST /_sandbox/faults with `stream`), without Content-Length:
# "drip" sends the body a byte at a time, each after `delay_ms`; "endless" repeats it until the
# client hangs up. The Fault model has no column for this, so the kind is kept in
# `content_type` as a reserved value that no answer is sent with (streamed answers are JSON).
STREAMS = {"drip": "x-sandbox-stream/drip", "endless": "x-sandbox-stream/endless"}
# However a client reads, a streamed answer ends: it must not hold a sandbox thread for ever.
STREAM_SECONDS = 120


def counters(get_response: Handler) -> Handler:
    """Count token requests by grant type and outcome, API requests by path and status."""

    def middleware(request: HttpRequest) -> HttpResponseBase:
        response = get_response(request)
        if request.path.lower() == "/connect/token" and request.method == "POST":
            grant_type = request.POST.get("grant_type", "") or "none"
            Counter.bump("token", f"{grant_type}:{token_outcome(response)}")
        elif API_PATH.match(request.path):
            Counter.bump("api", f"{request.path}:{response.status_code}")
            extra = received_headers(request)
            if extra:
                Counter.bump("headers", f"{request.path}:{','.join(extra)}")
        return response

    return middleware


# What every client sends; any other request header of an API call is recorded (kind
# "headers", key "path:name,name"), so a test sees that a Profile header reached a v2 route and
# none the v3 route, and that a proxy forwarded nothing it should not have.
ORDINARY_HEADERS = {
    "host",
    "authorization",
    "accept",
    "accept-encoding",
    "connection",
    "user-agent",
    "content-length",
    "content-type",
}


def received_headers(request: HttpRequest) -> list[str]:
    return sorted(name.lower() for name in request.headers if name.lower() not in ORDINARY_HEADERS)


def token_outcome(response: HttpResponseBase) -> str:
    if response.status_code == 200:
        return "success"
    if response.status_code not in {400, 401} or not isinstance(response, HttpResponse):
        return str(response.status_code)  # an injected fault, not an OAuth error
    try:
        return str(json.loads(response.content)["error"])
    except (ValueError, KeyError, TypeError):
        return str(response.status_code)


def rate_limit(get_response: Handler) -> Handler:
    """The app-wide limit (runtime settings `rate_limit`, `rate_limit_burst`) on the API routes:
    over it, 429 with `Retry-After` in whole seconds. The identity server and the control API
    are not limited (the portal's token calls are counted apart, as the issue asks)."""

    def middleware(request: HttpRequest) -> HttpResponseBase:
        if not API_PATH.match(request.path):
            return get_response(request)
        wait = ratelimit.admit()
        if wait is None:
            return get_response(request)
        response = JsonResponse(
            {
                "title": "Too Many Requests",
                "status": 429,
                "detail": "The app's rate limit is exceeded: retry after the time given",
            },
            status=429,
            content_type="application/problem+json",
        )
        response["Retry-After"] = str(wait)
        return response

    return middleware


def faults(get_response: Handler) -> Handler:
    """Answer (or delay) the requests a fault set through POST /_sandbox/faults matches."""

    def middleware(request: HttpRequest) -> HttpResponseBase:
        if request.path.startswith(CONTROL_PATH):
            return get_response(request)
        fault = Fault.claim_for(request.method or "GET", request.path)
        if fault is None:
            return get_response(request)
        if fault.status is not None and fault.content_type in STREAMS.values():
            return StreamingHttpResponse(
                streamed(fault), status=fault.status, content_type="application/json"
            )
        if fault.delay_ms:
            time.sleep(fault.delay_ms / 1000)
        if fault.status is None:
            return get_response(request)
        if fault.body is None:
            body = json.dumps({"error": "injected_fault", "status": fault.status})
            content_type = fault.content_type or "application/json"
        else:
            body = fault.body
            content_type = fault.content_type or "text/plain"
        response = HttpResponse(body, status=fault.status, content_type=content_type)
        if fault.retry_after:
            response["Retry-After"] = fault.retry_after
        return response

    return middleware


def streamed(fault: Fault) -> Iterator[bytes]:
    """A streamed fault's body: dripped byte by byte or repeated, for STREAM_SECONDS at most."""
    body = (fault.body or "").encode()
    ends_at = time.monotonic() + STREAM_SECONDS
    if fault.content_type == STREAMS["drip"]:
        for byte in body:
            time.sleep(fault.delay_ms / 1000)
            if time.monotonic() > ends_at:
                return
            yield bytes([byte])
        return
    piece = body * max(1, 65536 // len(body))  # big writes: a client reads as fast as it can
    while time.monotonic() < ends_at:
        yield piece
