"""Browser tests: a real ``jupyter lab`` driven by Playwright through Debian's
chromium-headless-shell (never a browser Playwright downloads). Every test starts its own
server and browser, and afterwards nothing of its runs may be left (the integration suite's
check)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.conftest import nothing_left_behind, private_tmpdir  # noqa: F401  (autouse fixtures)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "e2e"  # screenshots; gitignored
CHROMIUM = "/usr/bin/chromium-headless-shell"  # Debian's package (make setup installs it)
# As root Chromium needs --no-sandbox; the rest keeps it from calling out anywhere: everything
# but loopback (which Chromium never proxies) goes to a proxy port where nothing listens.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--proxy-server=http://127.0.0.1:9"]
TIMEOUT_MS = 120_000  # two shared cores: generous, and every wait is on a condition in the page


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: make setup installs chromium-headless-shell"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 640})
    context.set_default_timeout(TIMEOUT_MS)
    return context.new_page()


@pytest.fixture
def lab_page(browser):
    """``lab_page(server)`` -> a Playwright page for that server."""
    pages = []

    def make(server):
        page = open_page(browser)
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.context.close()
