"""The receiver token of Zywave's webhooks (integrations.hooks) is a secret: it is in the path of
every delivery, so neither Django's line for a refused one (400, 404, 413, 429) nor the access
log may carry it (found by tests/integrations/test_hooks_live.py, whose rotated-token deliveries
logged `Not Found: /hooks/zywave/<token>/`)."""

from __future__ import annotations

import io
import logging
import logging.config
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from integrations import hooks
from portal import logs
from tests.conftest import connection

pytestmark = pytest.mark.django_db


@pytest.fixture
def captured(settings: Any) -> Iterator[io.StringIO]:
    """The configured console handler (its filter and JSON formatter), into a buffer."""
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


def test_refused_deliveries_log_their_path_without_the_token(
    captured: io.StringIO, staff: User
) -> None:
    token = hooks.rotate_token(connection(staff))
    unknown = "u" * 43
    assert (
        Client().post(f"/hooks/zywave/{token}/", b"not json", "application/json").status_code == 400
    )
    assert Client().get(f"/hooks/zywave/{token}/").status_code == 400
    assert Client().post(f"/hooks/zywave/{unknown}/", b"{}", "application/json").status_code == 404
    text = captured.getvalue()
    # Each refusal's line names the path twice: its message, and the request's repr.
    assert text.count("/hooks/zywave/[redacted]/") == 6, text
    assert token not in text and unknown not in text


def test_the_access_log_line_of_a_delivery_is_masked() -> None:
    token = "AO4q9ixxEnEwolsplbHJ6U00QYdjLTGzpC895m2ZFpI"
    line = f'127.0.0.1 "POST /hooks/zywave/{token}/ HTTP/1.1" 202 0 3ms'
    assert logs.redact(line) == '127.0.0.1 "POST /hooks/zywave/[redacted]/ HTTP/1.1" 202 0 3ms'
    query = f"GET /hooks/zywave/{token}/?challenge=abc"
    assert logs.redact(query) == "GET /hooks/zywave/[redacted]/?challenge=abc"
    assert logs.redact("the receiver is /hooks/zywave/<token>/") == (
        "the receiver is /hooks/zywave/[redacted]/"
    )


@pytest.mark.timeout(10)  # a quadratic pattern would run for hours on a megabyte
def test_a_megabyte_of_receiver_paths_is_masked_in_linear_time() -> None:
    text = "/hooks/zywave/" * 80_000
    assert logs.redact(text) == text
    assert logs.redact("/hooks/zywave/x" * 70_000) == "/hooks/zywave/[redacted]" * 70_000
