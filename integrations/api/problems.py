"""Every API error as `application/problem+json` (RFC 9457): `type`, `title`, `status`,
`detail`, and where it helps a member more (`code`, `action`, `run`, `errors`).

REST framework's errors pass through `exception_handler`; an unknown route under `/api/` is
`not_found`; a crash is `server_error` (called by `portal.errors` for `/api/` paths). No API
answer is ever HTML.
"""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any

import orjson
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from rest_framework import exceptions
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.views import exception_handler as drf_exception_handler

CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "urn:zywave-portal:problem:"


class Problem(exceptions.APIException):
    """An API error of our own, with a code (the `type`'s last part) and extra members."""

    def __init__(self, status: int, code: str, detail: str, **members: Any) -> None:
        super().__init__(detail=detail)
        self.status_code = status
        self.problem_code = code
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
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
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
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        detail = f"Too many requests for this API key; try again in {math.ceil(exc.wait)} s."
    answer = problem(response.status_code, code, str(detail), **members)
    for header in ("WWW-Authenticate", "Retry-After", "Allow"):
        if header in response:
            answer[header] = response[header]
    return answer


class JSONOnly(BaseContentNegotiation):
    """The API speaks JSON whatever the Accept header asks (a browser asks for HTML)."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        content_type = request.content_type.split(";")[0].strip().lower()
        return next((p for p in parsers if p.media_type == content_type), None)

    def select_renderer(
        self, request: Request, renderers: list[Any], format_suffix: str | None = None
    ) -> tuple[Any, str]:
        return renderers[0], renderers[0].media_type


def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """Any path under /api/ that names no endpoint (a trailing slash too: never a redirect)."""
    return problem(404, "not_found", f"No API endpoint at {request.path}.")


def server_error(request: HttpRequest) -> HttpResponse:
    return problem(500, "server_error", "The portal failed to answer; the error is logged.")


def unavailable(request: HttpRequest, retry_after: int) -> HttpResponse:
    answer = problem(503, "unavailable", "The portal's database is unavailable; retry shortly.")
    answer["Retry-After"] = str(retry_after)
    return answer
