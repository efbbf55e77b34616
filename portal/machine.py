"""Two Django handlers behind one WSGI application: pages, and machine endpoints.

The portal serves two kinds of caller. People get pages: a session, CSRF, messages, the login
throttle (axes), a Content-Security-Policy for HTML. Machines get JSON: Zywave posts its
notifications to `/hooks/zywave/<token>/` (authenticated by the token in the URL) and other
systems call `/api/` (authenticated by an API key in `Authorization`); neither ever has a
session or a cookie, so what the page middleware does for them is only cost: on a flood of
deliveries it was a third of each request's CPU.

`application` sends each request to one of two handlers by its path, before any middleware
runs. Both are Django's own WSGI handler with the same URLconf, the same error handlers
(`handler400`, `handler500`), the same signals and database handling; they differ in their
middleware only:

* `MIDDLEWARE` for every page (and for `/api/docs/` and `/api/redoc/`, which are HTML pages
  under the CSP, and `/metrics`, which its middleware answers first in either list);
* `PORTAL_MACHINE_MIDDLEWARE` for `/hooks/zywave/` and the rest of `/api/`: metrics, the
  security middleware (HTTPS redirect, HSTS, nosniff, referrer and opener policies), the host
  check (CommonMiddleware: ALLOWED_HOSTS, a 400 that is problem+json under /api/), request ids
  in the logs, X-Frame-Options, and a fixed Content-Security-Policy (`MachineCSP`).

A path is sorted as Django will resolve it (PATH_INFO, after SCRIPT_NAME), so a request sent to
the machine handler can only reach a view under `api/` or the receiver, never a page. Django's
test client builds its own handler from MIDDLEWARE: tests of the machine path call
`application` itself (tests/portal/test_machine.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

MACHINE_PREFIXES = ("/hooks/zywave/", "/api/")
# HTML pages under /api/: they keep the page middleware (CSP with Redoc's nonce).
PAGES_UNDER_API = ("/api/docs/", "/api/redoc/")
# A response that is JSON (or nothing) loads nothing and may be framed by nobody.
MACHINE_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def is_machine_path(path: str) -> bool:
    if path == "/api":
        return True
    return path.startswith(MACHINE_PREFIXES) and not path.startswith(PAGES_UNDER_API)


class MachineHandler(WSGIHandler):
    """Django's WSGI handler with PORTAL_MACHINE_MIDDLEWARE instead of MIDDLEWARE.

    `BaseHandler.load_middleware` reads `settings.MIDDLEWARE` by name, so the chain is built
    here the same way for a synchronous server: each middleware wrapped around the next, every
    layer turning an exception into a response (`convert_exception_to_response`), and their
    `process_view` / `process_exception` hooks collected as Django collects them."""

    def load_middleware(self, is_async: bool = False) -> None:
        if is_async:
            raise RuntimeError("MachineHandler serves WSGI only")
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        handler = convert_exception_to_response(self._get_response)  # type: ignore[attr-defined]
        for path in reversed(settings.PORTAL_MACHINE_MIDDLEWARE):
            instance = import_string(path)(handler)
            if hasattr(instance, "process_view"):
                self._view_middleware.insert(0, instance.process_view)
            if hasattr(instance, "process_template_response"):
                self._template_response_middleware.append(instance.process_template_response)
            if hasattr(instance, "process_exception"):
                self._exception_middleware.append(instance.process_exception)
            handler = convert_exception_to_response(instance)
        self._middleware_chain = handler


class MachineCSP:
    """A fixed Content-Security-Policy on machine answers, in place of django-csp's per-request
    policy for pages: a JSON answer opened in a browser may load nothing and be framed by
    nobody."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", MACHINE_CSP)
        return response


def dispatcher(pages: WSGIHandler, machines: WSGIHandler) -> Callable[..., Iterable[bytes]]:
    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        handler = machines if is_machine_path(environ.get("PATH_INFO", "")) else pages
        return handler(environ, start_response)

    return application
