"""Logs: the redaction filter masks real secrets wherever they are; JSON lines carry the ids."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.request import HttpHeaders
from django.test import Client
from django.test.utils import override_settings
from django.urls import path

from portal import logs

ACCESS = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLXBhcnQtMTIz"
REFRESH = "rt-8f3a2b9c4d5e6f708192a3b4c5d6e7f8"
PROFILE_TOKEN = "pt_Zm9vYmFyYmF6cXV4LXByb2ZpbGUtdG9rZW4"
CLIENT_SECRET = "portal-client-secret-0f9e8d7c6b5a"


@pytest.fixture
def captured(settings) -> Iterator[io.StringIO]:  # type: ignore[no-untyped-def]
    """The configured console handler (filter and formatter from LOGGING), into a buffer."""
    settings.ZYWAVE_CLIENT_SECRET = CLIENT_SECRET
    config = dict(settings.LOGGING)
    buffer = io.StringIO()
    config["handlers"] = {
        "console": {**config["handlers"]["console"], "formatter": "json", "stream": buffer}
    }
    logging.config.dictConfig(config)
    try:
        yield buffer
    finally:
        logging.config.dictConfig(settings.LOGGING)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


SECRETS = (ACCESS, REFRESH, PROFILE_TOKEN, CLIENT_SECRET)


@pytest.mark.parametrize(
    "message",
    [
        f"GET /accounts with headers {{'Authorization': 'Bearer {ACCESS}'}}",
        f"Authorization: bearer {ACCESS}",
        f"POST /connect/token body grant_type=refresh_token&refresh_token={REFRESH}&x=1",
        f"callback /oauth/complete/zywave/?access_token={ACCESS}&state=abc",
        f'token response {{"access_token": "{ACCESS}", "refresh_token": "{REFRESH}"}}',
        f"token response {{'access_token': '{ACCESS}', 'refresh_token': '{REFRESH}'}}",
        f'escaped {{\\"access_token\\": \\"{ACCESS}\\"}}',
        f"headers {{'Profile': 'Token {PROFILE_TOKEN}'}}",
        f"Profile: Token {PROFILE_TOKEN}",
        f'profile {{"ProfileToken": "{PROFILE_TOKEN}", "Name": "Summit"}}',
        f"client_secret={CLIENT_SECRET}&client_id=portal",
        f"the secret is {CLIENT_SECRET} in plain words",
    ],
)
def test_it_redacts_a_secret_in_the_message(captured: io.StringIO, message: str) -> None:
    logging.getLogger("integrations.client").warning(message)
    (line,) = lines(captured)
    event = str(line["event"])
    assert not any(secret in event for secret in SECRETS), event
    assert logs.REDACTED in event


def test_it_redacts_secrets_passed_as_arguments(captured: io.StringIO) -> None:
    logging.getLogger("integrations.tokens").info(
        "Refreshed with %s and %r", f"Bearer {ACCESS}", {"refresh_token": REFRESH}
    )
    output = captured.getvalue()
    assert ACCESS not in output and REFRESH not in output
    assert "Refreshed with Bearer [redacted]" in output


def test_it_redacts_the_exception_text(captured: io.StringIO) -> None:
    try:
        raise RuntimeError(f"Zywave refused Profile: Token {PROFILE_TOKEN} with {CLIENT_SECRET}")
    except RuntimeError:
        logging.getLogger("integrations.sync").exception("Sync failed")
    (line,) = lines(captured)
    assert "RuntimeError" in str(line["error"])
    assert PROFILE_TOKEN not in captured.getvalue() and CLIENT_SECRET not in captured.getvalue()


def test_it_redacts_extra_fields(captured: io.StringIO) -> None:
    logging.getLogger("integrations").info(
        "Token answer", extra={"response": {"access_token": ACCESS}, "connection_id": 7}
    )
    (line,) = lines(captured)
    assert ACCESS not in captured.getvalue()
    assert line["connection_id"] == 7


def test_it_redacts_the_plain_format_too(settings) -> None:  # type: ignore[no-untyped-def]
    settings.ZYWAVE_CLIENT_SECRET = CLIENT_SECRET
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(logs.RedactFilter())
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test_logs.plain")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("secret %s bearer %s", CLIENT_SECRET, ACCESS)
    finally:
        logger.removeHandler(handler)
    assert buffer.getvalue() == "secret [redacted] bearer [redacted]\n"


def test_it_masks_passwords_in_urls_and_leaves_ordinary_text_alone() -> None:
    assert logs.redact("postgres://portal:hunter2pass@db:5432/portal") == (
        "postgres://portal:***@db:5432/portal"
    )
    ordinary = "Sync run 4 of connection 2 succeeded: 3 pages, 300 records"
    assert logs.redact(ordinary) == ordinary


CODE = "ac_Hq2LmN9pQ4rS8tU1vW3xY5z7"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (  # the callback URL in `next`, encoded once
            f"GET /login/?next=/oauth/complete/zywave/%3Fcode%3D{CODE}%26state%3Ds1 302",
            "GET /login/?next=/oauth/complete/zywave/%3Fcode%3D[redacted]%26state%3Ds1 302",
        ),
        (  # ... and twice, through a second login redirect
            f"GET /login/?next=/login/%3Fnext%3D/oauth/complete/zywave/%253Fcode%253D{CODE}"
            "%2526state%253Ds1",
            "GET /login/?next=/login/%3Fnext%3D/oauth/complete/zywave/%253Fcode%253D[redacted]"
            "%2526state%253Ds1",
        ),
        (  # an escaped link in a rendered page
            f'<a href="/oauth/complete/zywave/?state=s1&amp;code={CODE}">',
            '<a href="/oauth/complete/zywave/?state=s1&amp;code=[redacted]">',
        ),
        (  # any case, the hex digits too
            f"GET /oauth/complete/zywave/?STATE=s1&Code%3d{CODE}",
            "GET /oauth/complete/zywave/?STATE=s1&Code%3d[redacted]",
        ),
        (  # RFC 7009 revocation
            f"POST /connect/revocation token={REFRESH}&token_type_hint=refresh_token",
            "POST /connect/revocation token=[redacted]&token_type_hint=refresh_token",
        ),
        (
            f"revocation body token%3D{REFRESH}%26token_type_hint%3Drefresh_token",
            "revocation body token%3D[redacted]%26token_type_hint%3Drefresh_token",
        ),
        (
            f"next=/revoke/%3Fx%3D1%2526TOKEN%253D{REFRESH}",
            "next=/revoke/%3Fx%3D1%2526TOKEN%253D[redacted]",
        ),
        (f"revocation data {{'token': '{REFRESH}'}}", "revocation data {'token': '[redacted]'}"),
        (
            f"next=/oauth/complete/zywave/%3Fstate%3Ds1%26access_token%3D{ACCESS}",
            "next=/oauth/complete/zywave/%3Fstate%3Ds1%26access_token%3D[redacted]",
        ),
    ],
)
def test_it_redacts_encoded_codes_and_the_revocation_token(
    captured: io.StringIO, message: str, expected: str
) -> None:
    logging.getLogger("django.server").info(message)
    (line,) = lines(captured)
    assert line["event"] == expected
    assert CODE not in captured.getvalue() and REFRESH not in captured.getvalue()


def test_it_leaves_the_word_token_and_other_parameters_alone() -> None:
    ordinary = (
        "Without offline_access Zywave gives no refresh token: once the access token ends, "
        "status code: 401, token_type_hint=refresh_token, /accounts/?page=2&codes=3&x=%3D"
    )
    assert logs.redact(ordinary) == ordinary


MB = 1 << 20


def _same(text: str) -> tuple[str, str]:
    return text, text


def _megabyte(unit: str) -> str:
    return unit * (MB // len(unit))


def _each(unit: str, redacted: str) -> tuple[str, str]:
    """1 MB of `unit`, and what each copy must become."""
    return _megabyte(unit), redacted * (MB // len(unit))


# One worst case for each pattern, 1 MB each, built when its test runs: text the pattern can
# begin to match almost anywhere and then scan far without finishing. The URL pattern as it was
# needs from half an hour to hours for the first two (0.1 to 0.7 s for 8 KB, and 16,000 times
# that for 1 MB).
WORST_CASES: dict[str, Callable[[], tuple[str, str]]] = {
    "url: a Host header of a.a.a.": lambda: _same("Host: " + _megabyte("a.")),
    "url: a.a.a.://user: with no @": lambda: _same(_megabyte("a.") + "://user:" + "p" * MB),
    "url: a password of colons with no @": lambda: _same("redis://user" + _megabyte(":")),
    "url: a@a@a@": lambda: _same(_megabyte("a@")),
    "bearer: every word": lambda: _each("Bearer Bearer ", "Bearer [redacted] "),
    "profile: no token": lambda: _same(_megabyte("Profile: ")),
    "secret names: no separator": lambda: _same(_megabyte('"access_token" password\t')),
    "token: no equals sign": lambda: _same(_megabyte("'token' token ")),
    "encoded names: nested %25 with no =": lambda: _same(_megabyte("%26token%2525")),
    "code: no equals sign": lambda: _same(_megabyte("?code&amp;code")),
    "encoded code: nested %25 with no =": lambda: _same(_megabyte("%253Fcode%25")),
    "encoded code: a value of %25%25%25": lambda: (
        "?code%3D" + _megabyte("%25") + "%26state%3Ds1",
        "?code%3D[redacted]%26state%3Ds1",
    ),
    "api key: prefixes with no secret": lambda: _same(_megabyte("zwk_abcdefgh")),
    "api key: a secret of one character each": lambda: _each(
        "zwk_abcdefgh_x ", "zwk_abcdefgh_[redacted] "
    ),
    "webhook secret: prefixes with no secret": lambda: _same(_megabyte("whsec_ ")),
    "webhook secret: one %25 after another with no end": lambda: _same("whsec_%" + _megabyte("25")),
    "webhook secret: a secret of one character each": lambda: _each(
        "whsec_x ", "whsec_[redacted] "
    ),
}


@pytest.mark.timeout(10)  # no clock in the assertion: a quadratic pattern would run for hours
@pytest.mark.parametrize("case", list(WORST_CASES))
def test_it_redacts_a_megabyte_of_each_worst_case(case: str) -> None:
    text, expected = WORST_CASES[case]()
    assert logs.redact(text) == expected


def test_a_json_line_has_time_level_event_and_bound_ids(captured: io.StringIO) -> None:
    with logs.bind(connection_id=3, sync_run_id=9):
        logging.getLogger("integrations.sync").info("Sync run %s started", 9)
    (line,) = lines(captured)
    assert line["level"] == "INFO"
    assert line["event"] == "Sync run 9 started"
    assert line["logger"] == "integrations.sync"
    assert str(line["time"]).endswith("+00:00")
    assert (line["connection_id"], line["sync_run_id"]) == (3, 9)


def test_a_celery_task_binds_its_id_and_connection(captured: io.StringIO) -> None:
    from celery import shared_task

    @shared_task(name="tests.log_inside_a_task")
    def log_inside(connection_id: int) -> None:
        logging.getLogger("integrations.tasks").info("working")

    with override_settings(CELERY_TASK_ALWAYS_EAGER=True):
        log_inside.apply(args=(42,), task_id="task-abc")
    working = [line for line in lines(captured) if line["event"] == "working"]
    assert working[0]["task_id"] == "task-abc"
    assert working[0]["connection_id"] == 42
    assert "task_id" not in logs.context()


def test_a_request_binds_its_id_and_the_user_id(
    captured: io.StringIO,
    client: Client,
    staff,  # type: ignore[no-untyped-def]
) -> None:
    client.force_login(staff)
    with override_settings(ROOT_URLCONF="tests.portal.test_logs"):
        client.get("/log-something/", HTTP_X_REQUEST_ID="req-12345678")
    (line,) = [line for line in lines(captured) if line["event"] == "inside a view"]
    assert line["user_id"] == staff.pk
    assert line["request_id"] == "req-12345678"
    assert "user_id" not in logs.context()


def test_a_logged_error_response_carries_the_user_id(
    captured: io.StringIO,
    client: Client,
    staff,  # type: ignore[no-untyped-def]
) -> None:
    client.force_login(staff)
    client.get("/no-such-page/")
    (line,) = [line for line in lines(captured) if line["logger"] == "django.request"]
    assert line["user_id"] == staff.pk


def _view_that_logs(request: HttpRequest) -> HttpResponse:
    logging.getLogger("integrations.views").info("inside a view")
    return HttpResponse("ok")


urlpatterns = [path("log-something/", _view_that_logs)]


def test_every_handler_filters_and_django_logs_through_it() -> None:
    config: dict[str, Any] = settings.LOGGING
    assert all(handler["filters"] == ["redact"] for handler in config["handlers"].values())
    assert config["loggers"]["django"]["handlers"] == ["console"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (
            "Authorization: Basic cG9ydGFsLWRldjpzM2NyM3Qtc2VjcmV0",
            "cG9ydGFsLWRldjpzM2NyM3Qtc2VjcmV0",
        ),
        ("{'Authorization': 'Basic cG9ydGFsOnNlY3JldHZhbHVl'}", "cG9ydGFsOnNlY3JldHZhbHVl"),
        ("profile_token=pt-0123456789abcdef&x=1", "pt-0123456789abcdef"),
        ("{'profile_token': 'pt-fedcba9876543210'}", "pt-fedcba9876543210"),
        ('{"nonce": "n-0123456789abcdefghij"}', "n-0123456789abcdefghij"),
    ],
)
def test_basic_credentials_profile_tokens_and_nonces_are_masked(text: str, secret: str) -> None:
    """HTTP Basic carries the client secret (ZYWAVE_TOKEN_AUTH_METHOD=client_secret_basic)."""
    masked = logs.redact(text)
    assert secret not in masked and logs.REDACTED in masked


# --- The portal's API keys -------------------------------------------------------------------

API_KEY = "zwk_k3y5pr3f_Q7mZ2xW9vB4nL6tR1yU8pA3sD5fG0hJ2"
MASKED_KEY = "zwk_k3y5pr3f_[redacted]"  # the prefix names the key, as on the admin's pages


@pytest.mark.parametrize(
    "message",
    [
        f"Refused the API key {API_KEY} for user 3",
        f"GET /api/v1/accounts?api_key={API_KEY}&page_size=10 401",
        f"GET /login/?next=/api/v1/accounts%3Fkey%3D{API_KEY}%26x%3D1",
        f"Not Found: /api/v1/{API_KEY}/accounts",
        f'body {{"key": "{API_KEY}", "name": "CRM import"}}',
        f"config API_KEY_{API_KEY} exported",
    ],
)
def test_an_api_key_in_a_log_line_is_masked_and_its_prefix_kept(
    captured: io.StringIO, message: str
) -> None:
    logging.getLogger("integrations.api").warning(message)
    (line,) = lines(captured)
    assert API_KEY not in captured.getvalue() and API_KEY[13:] not in captured.getvalue()
    assert MASKED_KEY in str(line["event"])


def test_an_api_key_in_an_exception_message_is_masked(captured: io.StringIO) -> None:
    try:
        raise ValueError(f"no such key: {API_KEY!r}")
    except ValueError:
        logging.getLogger("django.request").exception("Internal Server Error: /api/v1/syncs")
    (line,) = lines(captured)
    assert "ValueError" in str(line["error"]) and MASKED_KEY in str(line["error"])
    assert API_KEY not in captured.getvalue()


def test_an_api_key_in_a_repr_of_headers_is_masked(captured: io.StringIO) -> None:
    headers = HttpHeaders(
        {
            "HTTP_AUTHORIZATION": f"Bearer {API_KEY}",
            "HTTP_X_API_KEY": API_KEY,
            "HTTP_ACCEPT": "application/json",
        }
    )
    plain = {"Authorization": API_KEY, "Accept": "application/json"}  # no scheme: a caller's slip
    logging.getLogger("integrations.api").info("headers %r and %r", headers, plain)
    logging.getLogger("integrations.api").info("as extra", extra={"headers": dict(headers)})
    output = captured.getvalue()
    assert API_KEY not in output and API_KEY[13:] not in output
    assert output.count(MASKED_KEY) == 3  # the one after Bearer goes whole, prefix and all
    assert "application/json" in output


def test_text_about_a_key_by_its_prefix_is_left_alone() -> None:
    ordinary = "Revoked key zwk_k3y5pr3f… (CRM import) of dana; zwk_ keys start with zwk_"
    assert logs.redact(ordinary) == ordinary


# --- Webhook signing secrets -----------------------------------------------------------------

# A secret as integrations.webhooks.new_secret makes them, with each of base64's + / = in it.
WEBHOOK_SECRET = "whsec_K9+/Qm3vX2b7Lz0pR4tY8uWcE1nHs5aD6fGj0kMq4Zw="
MASKED_SECRET = "whsec_[redacted]"


def _url_encoded(text: str, times: int = 1) -> str:
    from urllib.parse import quote

    for _ in range(times):
        text = quote(text, safe="")
    return text


@pytest.mark.parametrize(
    "message",
    [
        f"Delivering with secret {WEBHOOK_SECRET} to https://hooks.example.test/in",
        f'subscription {{"id": 4, "secret": "{WEBHOOK_SECRET}", "state": "active"}}',
        f"Webhook({WEBHOOK_SECRET!r}) failed: bad signature",
        f"GET /settings/webhooks/?s={_url_encoded(WEBHOOK_SECRET)}&x=1 404",
        f"GET /login/?next={_url_encoded('/hook?s=' + WEBHOOK_SECRET, times=2)} 302",
        f'escaped json {{"secret":"{WEBHOOK_SECRET.replace("/", chr(92) + "/")}"}}',
    ],
)
def test_a_webhook_signing_secret_in_a_log_line_is_masked_whole(
    captured: io.StringIO, message: str
) -> None:
    logging.getLogger("integrations.webhooks").warning(message)
    (line,) = lines(captured)
    output = captured.getvalue()
    # Not the secret, nor its base64 part, nor any long piece of it.
    body = WEBHOOK_SECRET.removeprefix("whsec_")
    assert all(body[i : i + 8] not in output for i in range(len(body) - 8))
    assert MASKED_SECRET in str(line["event"])


def test_a_webhook_secret_in_an_exception_or_an_extra_field_is_masked(
    captured: io.StringIO,
) -> None:
    try:
        raise ValueError(f"cannot sign with {WEBHOOK_SECRET}")
    except ValueError:
        logging.getLogger("integrations.tasks").exception(
            "deliver_webhooks failed", extra={"secrets": [WEBHOOK_SECRET]}
        )
    (line,) = lines(captured)
    assert WEBHOOK_SECRET not in captured.getvalue()
    assert MASKED_SECRET in str(line["error"]) and MASKED_SECRET in str(line["secrets"])


def test_a_real_new_secret_is_masked_and_text_about_secrets_left_alone() -> None:
    from integrations.webhooks import new_secret

    secret = new_secret()
    assert logs.redact(f"rotated to {secret}.") == f"rotated to {MASKED_SECRET}."
    ordinary = "Signing secrets start with whsec_ (Standard Webhooks); subscription 4 rotated"
    assert logs.redact(ordinary) == ordinary
