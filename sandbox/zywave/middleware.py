"""Request-wide sandbox behaviour: injected faults and request counters.

Both keep their state in the database (zywave.models.Fault, Counter) because gunicorn's worker
processes share nothing else.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from sandbox.zywave.models import Counter, Fault

Handler = Callable[[HttpRequest], HttpResponse]

API_PATH = re.compile(r"^/(profiles|accounts|industries)/", re.IGNORECASE)
CONTROL_PATH = "/_sandbox/"


def counters(get_response: Handler) -> Handler:
    """Count token requests by grant type and outcome, API requests by path and status."""

    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        if request.path.lower() == "/connect/token" and request.method == "POST":
            grant_type = request.POST.get("grant_type", "") or "none"
            Counter.bump("token", f"{grant_type}:{token_outcome(response)}")
        elif API_PATH.match(request.path):
            Counter.bump("api", f"{request.path}:{response.status_code}")
        return response

    return middleware


def token_outcome(response: HttpResponse) -> str:
    if response.status_code == 200:
        return "success"
    if response.status_code not in {400, 401}:
        return str(response.status_code)  # an injected fault, not an OAuth error
    try:
        return str(json.loads(response.content)["error"])
    except (ValueError, KeyError, TypeError):
        return str(response.status_code)


def faults(get_response: Handler) -> Handler:
    """Answer (or delay) the requests a fault set through POST /_sandbox/faults matches."""

    def middleware(request: HttpRequest) -> HttpResponse:
        if request.path.startswith(CONTROL_PATH):
            return get_response(request)
        fault = Fault.claim_for(request.method or "GET", request.path)
        if fault is None:
            return get_response(request)
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
