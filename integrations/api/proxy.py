"""`/api/v1/zywave/{path}`: Zywave's API, called as the key owner's connection.

The caller sends what it would send to Zywave, minus everything about OAuth and profiles: the
portal adds the connection's bearer token and, on v2 routes, the chosen profile's `Profile`
header (v3 routes get none: docs/zywave.md §3), refreshes once on a 401, and hands Zywave's
answer back as it came, status and body, 429 and `Retry-After` included.

What is forwarded is narrow on purpose. Only paths under ZYWAVE_PROXY_ALLOW, and only in their
canonical form: a path with `.` or `..` segments, repeated slashes, or anything still
percent-encoded after the server decoded it once is refused, not normalised, so that what was
checked is what Zywave receives. Only an allow-list of request headers goes out (never the
caller's Authorization, Profile or Cookie); hop-by-hop headers and cookies do not come back.
Bodies are capped both ways.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import quote, unquote

import orjson
from django.conf import settings
from django.http import HttpResponse
from rest_framework.request import Request
from rest_framework.views import APIView

from ..client import (
    OverBudget,
    ResponseTooLarge,
    ZywaveError,
    ZywaveTimeout,
    ZywaveUnreachable,
)
from ..tokens import ReauthRequired, RefreshFailed, client_for
from . import schema
from .problems import Problem
from .views import connection_of, require_usable

# Request headers a caller may send on to Zywave.
FORWARDED_REQUEST_HEADERS = (
    "Accept",
    "Accept-Language",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
    "Prefer",
)
# Answer headers never passed back: hop-by-hop (RFC 9110 §7.6.1), what the portal's own server
# sets (length, date, server), cookies of Zywave's, and its authentication challenge (a 401
# from the proxy would read as "your API key" to the caller).
DROPPED_RESPONSE_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-encoding",
    "date",
    "server",
    "set-cookie",
    "www-authenticate",
    "alt-svc",
    "strict-transport-security",
}
# What a path segment may hold once decoded: RFC 3986's unreserved characters and the
# sub-delimiters OData uses, nothing that could end the path (?, #) or change its meaning (%, \).
SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")
V2 = re.compile(r"[Vv]2(?:\.\d+)*")


def canonical(path: str) -> str:
    """The path as Zywave will receive it, or a 400 problem when it is not in canonical form."""
    segments = path.split("/")
    if path != unquote(path) or not all(SEGMENT.fullmatch(s) for s in segments):
        raise Problem(
            400,
            "path_not_canonical",
            "The Zywave path must be plain segments (no `.` or `..`, no empty segment, nothing "
            "percent-encoded twice, no `?`, `#`, `%` or `\\` once decoded).",
        )
    if any(segment.startswith("..") or not segment.strip(".") for segment in segments):
        # `..`, `.`, `...`, and `..;x`, which some servers read as `..`.
        raise Problem(400, "path_not_canonical", "The Zywave path may not hold `.` or `..`.")
    return path


def without_profile_tokens(body: bytes) -> bytes:
    """A profile answer without its `ProfileToken`s (any key case, at any depth): a token is
    the portal's to hold, in memory and encrypted, never the caller's to see (docs/zywave.md
    §3). What cannot be read as JSON is refused rather than passed on unread."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(502, "zywave_error", "Zywave's profile answer could not be read.") from exc

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if str(k).lower() != "profiletoken"}
        if isinstance(value, list):
            return [scrub(item) for item in value]
        return value

    return orjson.dumps(scrub(document))


def allowed(path: str) -> bool:
    lowered = path.lower() + "/"
    return any(
        lowered.startswith(prefix.lower().rstrip("/") + "/")
        for prefix in settings.ZYWAVE_PROXY_ALLOW
    )


def is_v2(path: str) -> bool:
    """A v2 route (`accounts/v2.0/...`, `profiles/V2.1/...`): the `Profile` header goes with it."""
    segments = path.split("/")
    return len(segments) > 1 and V2.fullmatch(segments[1]) is not None


class ProxyView(APIView):
    scopes = {"GET": "proxy", "HEAD": "proxy", "*": "proxy:write"}

    def _forward(self, request: Request, path: str) -> HttpResponse:
        path = canonical(path)
        if not allowed(path):
            raise Problem(
                403,
                "path_not_allowed",
                "The proxy forwards only paths under ZYWAVE_PROXY_ALLOW: "
                + ", ".join(settings.ZYWAVE_PROXY_ALLOW),
            )
        body = self._body(request)
        v2 = is_v2(path)
        connection = require_usable(connection_of(request), profile=v2)
        headers = {
            name: request.headers[name]
            for name in FORWARDED_REQUEST_HEADERS
            if name in request.headers
        }
        method = request.method or "GET"
        try:
            answer = client_for(connection).forward(
                method,
                "/" + quote(path, safe="/!$&'()*+,;=:@~"),
                request.META.get("QUERY_STRING", ""),
                body,
                headers,
                v2=v2,
            )
        except ReauthRequired as exc:
            raise Problem(
                409,
                "action_required",
                "The Zywave grant has ended: reconnect on the portal's dashboard.",
                action="reconnect",
            ) from exc
        except RefreshFailed as exc:
            raise Problem(
                502,
                "refresh_failed",
                "Zywave did not renew the connection's token; try again shortly.",
            ) from exc
        except ResponseTooLarge as exc:
            raise Problem(
                502,
                "response_too_large",
                "Zywave's answer is larger than the proxy passes on (ZYWAVE_MAX_RESPONSE_BYTES).",
            ) from exc
        except OverBudget as exc:
            # Not sent: the app's shared budget has no slot soon enough for a caller waiting.
            wait = max(1, math.ceil(exc.retry_after or 1))
            raise Problem(
                429,
                "rate_budget_spent",
                "The portal's Zywave rate budget is spent for the moment; try again shortly.",
                headers={"Retry-After": str(wait)},
            ) from exc
        except ZywaveUnreachable as exc:
            raise Problem(502, "zywave_unreachable", "Zywave could not be reached.") from exc
        except ZywaveTimeout as exc:
            raise Problem(504, "zywave_timeout", "Zywave did not answer in time.") from exc
        except ZywaveError as exc:
            raise Problem(502, "zywave_error", "Zywave's answer could not be passed on.") from exc
        if answer.status_code == 401:
            raise Problem(
                502,
                "zywave_refused_token",
                "Zywave refused the connection's token even after a refresh; the person may "
                "need to reconnect.",
            )
        content_type = answer.headers.get("Content-Type", "")
        if answer.status_code >= 400 and "json" not in content_type.lower():
            # An error page (a gateway's HTML, an empty 405): the API answers no HTML, ever.
            # Its Retry-After still reaches the caller (a 429 or 503 from a gateway).
            retry_after = answer.headers.get("Retry-After")
            raise Problem(
                answer.status_code,
                "zywave_error",
                f"Zywave answered {answer.status_code} without a JSON body.",
                headers={"Retry-After": retry_after} if retry_after else {},
                zywave_status=answer.status_code,
            )
        body = answer.content
        if path.lower().startswith("profiles/") and "json" in content_type.lower():
            body = without_profile_tokens(body)
        response = HttpResponse(body, status=answer.status_code)
        named_hop = {
            name.strip().lower() for name in answer.headers.get("Connection", "").split(",")
        }
        for name, value in answer.headers.items():
            if name.lower() not in DROPPED_RESPONSE_HEADERS and name.lower() not in named_hop:
                response[name] = value
        if "Content-Type" not in answer.headers:
            del response["Content-Type"]
        return response

    def _body(self, request: Request) -> bytes | None:
        cap = settings.ZYWAVE_PROXY_MAX_REQUEST_BYTES
        declared = request.META.get("CONTENT_LENGTH") or ""
        if declared.strip().isdigit() and int(declared) > cap:
            raise self._too_large(cap)
        body = request._request.read(cap + 1)
        if len(body) > cap:
            raise self._too_large(cap)
        return body or None

    def _too_large(self, cap: int) -> Problem:
        return Problem(
            413,
            "request_too_large",
            f"The proxy forwards bodies of at most {cap} bytes (ZYWAVE_PROXY_MAX_REQUEST_BYTES).",
        )

    @schema.proxy("GET")
    def get(self, request: Request, path: str) -> HttpResponse:
        return self._forward(request, path)

    @schema.proxy("POST")
    def post(self, request: Request, path: str) -> HttpResponse:
        return self._forward(request, path)

    @schema.proxy("PUT")
    def put(self, request: Request, path: str) -> HttpResponse:
        return self._forward(request, path)

    @schema.proxy("PATCH")
    def patch(self, request: Request, path: str) -> HttpResponse:
        return self._forward(request, path)

    @schema.proxy("DELETE")
    def delete(self, request: Request, path: str) -> HttpResponse:
        return self._forward(request, path)
