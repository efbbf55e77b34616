"""Browser tests: Playwright driving Debian's Chromium against the portal as a live server, the
sandbox as its own server process, and a real Celery worker through Redis."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integrations.workers import Worker, use_test_broker
from tests.sandboxserver import Sandbox

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError("Chromium is missing: `apt-get install chromium` (.ci/run does it)")
    if not AXE.exists():
        raise RuntimeError("axe-core is missing: `npm ci --prefix tests/e2e` (make test does it)")
    # Playwright's sync API keeps an event loop in this thread; the ORM calls the tests make
    # between page steps are ordinary synchronous calls. (Processes that other tests start
    # drop this variable; `check --deploy` warns about it.)
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # The CSP forbids inline scripts; axe-core is injected by the test, so let it through.
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def portal(live_server: Any, zywave: Sandbox, settings: Any) -> str:
    """The portal's live URL, registered at the sandbox as the client's redirect URI."""
    zywave.register_client(
        "portal-dev",
        "portal-dev-secret",
        [
            f"{live_server.url}/oauth/complete/zywave/",
            "http://testserver/oauth/complete/zywave/",
        ],
    )
    settings.ZYWAVE_HTTP_TIMEOUT = (3.0, 10.0)
    return str(live_server.url)


@pytest.fixture
def mailbox(tmp_path: Path) -> Path:
    path = tmp_path / "mail"
    path.mkdir()
    return path


@pytest.fixture
def worker(zywave: Sandbox, tmp_path: Path, mailbox: Path) -> Iterator[Worker]:
    use_test_broker()
    started = Worker(
        zywave,
        tmp_path / "worker.log",
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(mailbox),
    ).start()
    try:
        yield started
    finally:
        started.stop()


def assert_accessible(page: Any) -> None:
    """axe-core finds no serious or critical violation on the current page."""
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    bad = [v for v in result["violations"] if v["impact"] in {"serious", "critical"}]
    assert not bad, "\n".join(
        f"{v['impact']}: {v['id']} ({v['help']}) at {[n['target'] for n in v['nodes']][:3]}"
        for v in bad
    )


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
