"""Error pages for production (DEBUG off). They are rendered without a request context: the
context processors read the session and the user, which need the database that may be the
thing that failed. Under /api/ the same answers are problem+json (integrations.api.problems):
no API client is ever handed an HTML page."""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.views import defaults

from integrations.api import problems

# How long a database restart or failover takes, as told to people and to clients.
RETRY_AFTER_SECONDS = problems.DATABASE_RETRY_AFTER


def server_error(request: HttpRequest) -> HttpResponse:
    """500; or 503 with Retry-After when the database cannot be reached (a restart, a
    failover): the person is told to try again in a moment, and a proxy or client that it may
    retry. Django calls this inside its `except` block, so `sys.exc_info()` is the error."""
    unreachable = isinstance(sys.exc_info()[1], OperationalError | InterfaceError)
    if problems.is_api(request):
        if unreachable:
            return problems.unavailable(request, RETRY_AFTER_SECONDS)
        return problems.server_error(request)
    if unreachable:
        response = HttpResponse(render_to_string("503.html"), status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
    return HttpResponse(render_to_string("500.html"), status=500)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """400 for what Django refuses to read (SuspiciousOperation: a Host not in ALLOWED_HOSTS,
    too many fields, a body over DATA_UPLOAD_MAX_MEMORY_SIZE)."""
    if problems.is_api(request):
        return problems.bad_request(request, exception)
    return defaults.bad_request(request, exception)
