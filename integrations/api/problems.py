"""Every API error as `application/problem+json` (RFC 9457): `type`, `title`, `status`,
`detail`, and where it helps a member more (`code`, `action`, `run`, `errors`).

REST framework's errors pass through `exception_handler`; an unknown route under `/api/` is
`not_found`; what Django itself answers, a crash (`server_error`, or `unavailable` when the
database cannot be reached) and a request it refuses to read (`bad_request`: a bad Host, too
many fields), `portal.errors` hands over for `/api/` paths (`is_api`). No API answer is ever
HTML.
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import (
    DisallowedHost,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/problem+json"
# Seconds a client is told to wait while the database is unreachable (a restart, a failover).
DATABASE_RETRY_AFTER = 30
TYPE_BASE = "urn:zywave-portal:problem:"


class Problem(exceptions.APIException):
    """An API error of our own, with a code (the `type`'s last part) and extra members."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **members: Any,
    ) -> None:
        super().__init__(detail=detail)
        self.status_code = status
        self.problem_code = code
        self.headers = headers or {}
        self.members = members


def problem(status: int, code: str, detail: str, **members: Any) -> HttpResponse:
    body = {
        "type": f"{TYPE_BASE}{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **members,
    }
    return HttpResponse(orjson.dumps(body), status=status, content_type=CONTENT_TYPE)


# REST framework's exceptions, by the code each problem carries.
_CODES: list[tuple[type[Exception], str]] = [
    (exceptions.NotAuthenticated, "not_authenticated"),
    (exceptions.AuthenticationFailed, "authentication_failed"),
    (exceptions.PermissionDenied, "permission_denied"),
    (exceptions.NotFound, "not_found"),
    (exceptions.MethodNotAllowed, "method_not_allowed"),
    (exceptions.NotAcceptable, "not_acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported_media_type"),
    (exceptions.Throttled, "throttled"),
    (exceptions.ParseError, "parse_error"),
    (exceptions.ValidationError, "invalid"),
]


def exception_handler(exc: Exception, context: dict[str, Any]) -> HttpResponse | None:
    """REST framework's handler, re-dressed as a problem; None (a 500) for anything else."""
    # Imported here: rest_framework.views reads DEFAULT_CONTENT_NEGOTIATION_CLASS (JSONOnly,
    # below) as it loads, which fails while this module is still loading (portal.urls
    # imports it before anything has loaded rest_framework.views).
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        # A crash: answered here, not by Django, whose DEBUG page would be HTML. Logged with
        # its traceback (through the redaction filter, like every log line).
        request = context.get("request")
        if isinstance(exc, SuspiciousOperation):  # what Django itself answers with 400
            log.warning("Refused a malformed request: %s", type(exc).__name__)
            return bad_request(request, exc)
        path = request.path if request is not None else "?"
        log.error("Unhandled error answering %s", path, exc_info=exc)
        if isinstance(exc, OperationalError | InterfaceError):
            return unavailable(request, DATABASE_RETRY_AFTER)
        return server_error(request)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    members: dict[str, Any] = {}
    if isinstance(exc, Problem):
        code = exc.problem_code
        members = dict(exc.members)
    else:
        code = next((name for kind, name in _CODES if isinstance(exc, kind)), "error")
    detail = getattr(exc, "detail", "")
    if isinstance(detail, dict | list):
        members["errors"] = detail
        detail = "The request is not valid: see `errors`."
    retry_after = None
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        # Whole seconds, rounded up (REST framework's header rounds down, to 0 under a second).
        retry_after = str(max(1, math.ceil(exc.wait)))
        detail = f"Too many requests for this API key; try again in {retry_after} s."
    answer = problem(response.status_code, code, str(detail), **members)
    for header in ("WWW-Authenticate", "Retry-After", "Allow"):
        if header in response:
            answer[header] = response[header]
    if retry_after is not None:
        answer["Retry-After"] = retry_after
    if isinstance(exc, Problem):
        for name, value in exc.headers.items():
            answer[name] = value
    return answer


class JSONOnly(BaseContentNegotiation):
    """The API speaks JSON whatever the Accept header asks (a browser asks for HTML).

    A body is read only up to DATA_UPLOAD_MAX_MEMORY_SIZE: REST framework reads the request
    stream itself, past the check Django makes when `request.body` is read, so the limit is
    applied here, before the parser reads anything (no Content-Length, no body: WSGI)."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:  # as REST framework reads it (`Request._load_stream`)
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if limit is not None and declared > limit:
            raise Problem(
                413, "request_too_large", f"The API reads request bodies of at most {limit} bytes."
            )
        content_type = request.content_type.split(";")[0].strip().lower()
        return next((p for p in parsers if p.media_type == content_type), None)

    def select_renderer(
        self, request: Request, renderers: list[Any], format_suffix: str | None = None
    ) -> tuple[Any, str]:
        return renderers[0], renderers[0].media_type


def is_api(request: HttpRequest) -> bool:
    """Whether Django's own answers to `request` (crash, refusal) are the API's to give."""
    return request.path_info == "/api" or request.path_info.startswith("/api/")


@csrf_exempt  # a POST to a wrong path is a 404 like any other, not a CSRF page
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """Any path under /api/ that names no endpoint (a trailing slash too: never a redirect,
    which would turn a POST into a GET; the detail names the path the caller may have meant)."""
    detail = f"No API endpoint at {request.path}."
    path = request.path_info
    meant = path.removesuffix("/") if path.endswith("/") else f"{path}/"
    try:
        if resolve(meant).func is not not_found:
            detail += f" Did you mean {request.path.removesuffix(path)}{meant}?"
    except Resolver404:
        pass
    return problem(404, "not_found", detail)


# What Django refuses to read (handler400), by the exception it raised: the messages are
# Django's own words for its logs, so callers get these instead.
_BAD_REQUESTS: list[tuple[type[Exception], str]] = [
    (DisallowedHost, "The Host header does not name this portal."),
    (RequestDataTooBig, "The request body is larger than the portal reads."),
    (TooManyFieldsSent, "The request has more parameters than the portal reads."),
    (TooManyFilesSent, "The request has more files than the portal reads."),
]


def bad_request(request: HttpRequest | None, exception: Exception | None = None) -> HttpResponse:
    detail = next(
        (text for kind, text in _BAD_REQUESTS if isinstance(exception, kind)),
        "The request is malformed.",
    )
    return problem(400, "bad_request", detail)


def server_error(request: HttpRequest | None) -> HttpResponse:
    return problem(500, "server_error", "The portal failed to answer; the error is logged.")


def unavailable(request: HttpRequest | None, retry_after: int) -> HttpResponse:
    answer = problem(503, "unavailable", "The portal's database is unavailable; retry shortly.")
    answer["Retry-After"] = str(retry_after)
    return answer
