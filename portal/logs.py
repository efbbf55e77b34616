"""Logs: one JSON object per line in production, the ids that matter, and no secrets.

* `RedactFilter` sits on every handler (see LOGGING in settings). It masks bearer tokens,
  `access_token` / `refresh_token` / `id_token` / `client_secret` / `token` / `code` values in
  query strings (also URL-encoded, once or more), form bodies, JSON and Python reprs, the
  `Profile: Token ...` header and `ProfileToken` values, passwords in URLs, the portal's API
  keys (`zwk_...`: only their prefix is left), and the literal values of our own secrets (the
  Zywave client secret, SECRET_KEY, the field encryption keys), webhook signing secrets
  (`whsec_...`: all of it, also URL-encoded), wherever they are in a record:
  the message, its arguments, the exception text, the stack and any `extra` field.
* `JsonFormatter` writes time, level, logger, event and the context ids: `user_id` and
  `request_id` (bound by `RequestContextMiddleware`), `task_id`, `task` and `connection_id`
  (bound for each Celery task), and anything else bound with `bind()` or passed as `extra=`.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from celery.signals import setup_logging, task_postrun, task_prerun
from django.http import HttpRequest, HttpResponse

REDACTED = "[redacted]"

# Every pattern must take time linear in the text: every log record goes through all of them,
# and a client chooses much of what is logged (paths, query strings, Host headers). So every
# unbounded repeat is possessive (`*+`, `++`: it never gives back what it took, and nothing after
# it could match what it gave back), each repeated piece matches a character in one way only, and
# a pattern that scans a run of characters starts at the run's beginning only, not again at
# every character inside it. tests/portal/test_logs.py runs them on 1 MB of each worst case.

# Names whose values are secrets, in `name=value` (query strings, form bodies), `"name": "value"`
# (JSON) and `'name': 'value'` (Python reprs of dicts).
_SECRET_NAMES = (
    r"access_token|refresh_token|id_token|client_secret|code_verifier|ProfileToken|"
    r"profile_token|nonce|password"
)
# URL-encoded delimiters at any depth: `=` is `%3D` encoded once and `%253D` twice (each level
# turns `%` into `%25`), as in `/login/?next=/oauth/complete/zywave/%3Fcode%3D...`.
_ENCODED_EQUALS = r"%(?:25)*+3D"
_PARAMETER_START = r"(?:[?&](?:amp;)?+|%(?:25)*+(?:3F|26))"  # ? & &amp; and encoded ? &
_VALUE = r"""[^\s"'&,;}\\]++"""
# An encoded value also ends at an encoded space, quote, # or & (`...%26state%3D...`).
_ENCODED_VALUE = r"""(?:[^\s"'&#,;}\\%]++|%(?!(?:25)*+2[0236]))++"""
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization: Bearer <token>, also inside reprs of header dicts.
    (re.compile(r"(?i)\b(bearer\s++)[A-Za-z0-9\-._~+/]++=*+"), r"\1" + REDACTED),
    # Authorization: Basic <base64 of client id:secret> (ZYWAVE_TOKEN_AUTH_METHOD=basic).
    (re.compile(r"(?i)\b(basic\s++)[A-Za-z0-9+/]{8,}+=*+"), r"\1" + REDACTED),
    # Profile: Token <ProfileToken> (header line, dict repr, JSON).
    (
        re.compile(r"""(?i)(\bprofile\b["']?+\s*+[:=]\s*+["']?+token\s++)[^\s"',;}&]++"""),
        r"\1" + REDACTED,
    ),
    # "access_token": "value" / 'access_token': 'value' / access_token=value / access_token: value
    (
        re.compile(
            rf"""(?i)((?:\\?["'])?+\b(?:{_SECRET_NAMES})\b(?:\\?["'])?+\s*+[:=]\s*+(?:\\?["'])?+)"""
            + _VALUE
        ),
        r"\1" + REDACTED,
    ),
    # RFC 7009's form field (`token=...&token_type_hint=refresh_token`), also as `"token": ...`
    # and `{'token': ...}`; but not a bare `token: value`, which is prose ("no refresh token:
    # once the access token ends").
    (
        re.compile(
            r"""(?i)((?:\\?["']token\\?["']\s*+[:=]|\btoken\s*+=)\s*+(?:\\?["'])?+)""" + _VALUE
        ),
        r"\1" + REDACTED,
    ),
    # The same names URL-encoded, once or more: `%26refresh_token%3D...`, `token%253D...`.
    (
        re.compile(
            rf"(?i)((?:{_PARAMETER_START}|\b)(?:{_SECRET_NAMES}|token){_ENCODED_EQUALS})"
            + _ENCODED_VALUE
        ),
        r"\1" + REDACTED,
    ),
    # The authorization code in a callback URL: single use, but still. `?code=`, `&code=`,
    # `&amp;code=` (an escaped link), and the callback URL encoded in another URL's parameter.
    (re.compile(rf"""(?i)({_PARAMETER_START}code=)[^\s&#"']++"""), r"\1" + REDACTED),
    (
        re.compile(rf"(?i)({_PARAMETER_START}code{_ENCODED_EQUALS})" + _ENCODED_VALUE),
        r"\1" + REDACTED,
    ),
    # scheme://user:password@host (database and broker URLs). The scheme is matched from the
    # start of its run of scheme characters: matched from any `\b`, as it was, every `a` of a
    # `Host: a.a.a.…` header rescanned the rest of the run (0.1 to 0.7 s of CPU for 8 KB, and
    # 16,000 times that for 1 MB: the time grew with the square of the length). Starting after a
    # non-letter too (`-postgres://`) keeps every URL the `\b` version found.
    (
        re.compile(
            r"(?i)((?<![a-z0-9+.\-])[0-9+.\-]*+[a-z][a-z0-9+.\-]*+://[^:/\s@]*+:)[^@\s/]++(@)"
        ),
        r"\1***\2",
    ),
    # The portal's own API keys (`zwk_<prefix>_<secret>`, integrations.api.keys) wherever they
    # are: a query string, a path, an exception, a header not named Authorization (`Bearer
    # zwk_...` is already gone whole, above). The prefix is kept: it names the key on pages and
    # in the admin. The secret goes, and anything run on to it. No `\b` before `zwk_`: after an
    # encoded `=` (`%3Dzwk_...`) or an underscore there is no word boundary. Linear: a literal
    # start, two bounded repeats, then one possessive run that, once entered, always matches.
    (re.compile(r"(zwk_[A-Za-z0-9]{8}_)[A-Za-z0-9]++"), r"\1" + REDACTED),
    # Webhook signing secrets (`whsec_` and base64, integrations.webhooks.new_secret), whole:
    # nothing of one names it on a page, so nothing is kept. Base64's `+`, `/` and `=` may be
    # URL-encoded (`%2B`, `%252F`, ...) and `/` JSON-escaped (`\/`). Linear: a literal start,
    # then one possessive run whose alternatives each start with a different character.
    (
        re.compile(r"(whsec_)(?:[A-Za-z0-9+/=]|%(?:25)*+(?:2[BbFf]|3[Dd])|\\/)++"),
        r"\1" + REDACTED,
    ),
    # The receiver token of Zywave's webhooks (integrations.hooks), in the path of every
    # delivery: the access log's request line, django.request's line for a 4xx. Linear: a
    # literal start, then one possessive run that ends at the path's next delimiter.
    (re.compile(r"""(/hooks/zywave/)[^/\s?#"']++"""), r"\1" + REDACTED),
]

# Secrets shorter than this are not searched for literally: they would mask ordinary words.
_MIN_LITERAL = 8


def _literal_secrets() -> list[str]:
    """The values of our own secrets, read at call time (tests and rotation change them)."""
    from django.conf import settings

    from portal import env

    found: list[str] = []
    for name in ("ZYWAVE_CLIENT_SECRET", "SECRET_KEY", "EMAIL_HOST_PASSWORD"):
        try:
            found.append(env.get(name) or "")
        except Exception:  # noqa: BLE001, S112 (an unreadable *_FILE must not break logging)
            continue
    found.extend((env.get("FIELD_ENCRYPTION_KEY") or "").split(","))
    if settings.configured:
        found.append(getattr(settings, "ZYWAVE_CLIENT_SECRET", ""))
        found.append(getattr(settings, "SECRET_KEY", ""))
        found.extend(getattr(settings, "FIELD_ENCRYPTION_KEY", []))
    unique = {value.strip() for value in found if value and len(value.strip()) >= _MIN_LITERAL}
    return sorted(unique, key=len, reverse=True)  # longest first: no partial leftovers


def redact(text: str) -> str:
    """`text` with everything that looks like a token or one of our secrets masked."""
    for secret in _literal_secrets():
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_PLAIN = logging.Formatter()
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class RedactFilter(logging.Filter):
    """Mask secrets in a record before any handler formats it. Always lets the record through.

    The message is rendered with its arguments first (a token is most often an argument), the
    exception is rendered into `exc_text`, which formatters use instead of formatting the
    exception again."""

    def filter(self, record: logging.LogRecord) -> bool:
        _ids_from_request(record)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a broken format string: keep what we have)
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, _redact_value(value))
        return True


def _ids_from_request(record: logging.LogRecord) -> None:
    """django.request logs 4xx/5xx after the middleware has unbound the request's ids, but
    attaches the request itself: take the user's id from it.

    Only a user the request already loaded (`_cached_user`, set by Django's authentication
    middleware): reading `request.user` would query the session and the user table, and a log
    record must not touch the database, which may be what failed."""
    request = getattr(record, "request", None)
    user = getattr(request, "_cached_user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        record.user_id = user.pk


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(repr(value))


# --- Context ids ---------------------------------------------------------------------------

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "log_context", default=None
)


def context() -> dict[str, Any]:
    return dict(_context.get() or {})


@contextmanager
def bind(**ids: Any) -> Iterator[None]:
    """Add ids (e.g. `sync_run_id=run.pk`) to every log line written inside the block."""
    token = _context.set({**context(), **ids})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, context ids, extra fields, error."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(context())
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["error"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str)


class RequestContextMiddleware:
    """Bind the request id and the user's id to every log line written for a request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        supplied = request.headers.get("X-Request-ID", "")
        request_id = supplied if re.fullmatch(r"[A-Za-z0-9\-]{8,64}", supplied) else None
        ids: dict[str, Any] = {"request_id": request_id or uuid.uuid4().hex}
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            ids["user_id"] = user.pk
        with bind(**ids):
            return self.get_response(request)


# --- Celery --------------------------------------------------------------------------------

_task_tokens: dict[str, contextvars.Token[dict[str, Any] | None]] = {}


@task_prerun.connect
def _bind_task(
    task_id: str | None = None,
    task: Any = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    """Bind the task's id and name, and its `connection_id` argument when it has one."""
    ids: dict[str, Any] = {"task_id": task_id, "task": getattr(task, "name", None)}
    try:
        bound = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {}))
        for name in ("connection_id", "sync_run_id"):
            if name in bound.arguments:
                ids[name] = bound.arguments[name]
    except (TypeError, ValueError, AttributeError):
        pass
    if task_id:
        _task_tokens[task_id] = _context.set({**context(), **ids})


@task_postrun.connect
def _unbind_task(task_id: str | None = None, **_: Any) -> None:
    token = _task_tokens.pop(task_id or "", None)
    if token is not None:
        try:
            _context.reset(token)
        except ValueError:  # set in another context (a thread pool): clear instead
            _context.set(None)


@setup_logging.connect
def _keep_django_logging(**_: Any) -> None:
    """Celery would otherwise add its own, unfiltered handlers: Django's LOGGING rules."""


def logging_config(
    fmt: str, root_level: str | None, loggers: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The one logging configuration (Django's LOGGING and gunicorn's logconfig_dict): a console
    handler in `fmt` ("json" or "plain") behind the redaction filter, and the given loggers."""
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "portal.logs.RedactFilter"}},
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
            "json": {"()": "portal.logs.JsonFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": fmt,
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": loggers,
    }
    if root_level:
        config["root"] = {"handlers": ["console"], "level": root_level}
    return config
