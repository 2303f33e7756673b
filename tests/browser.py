"""Debian's Chromium through Playwright, for the browser tests."""

import concurrent.futures
import contextlib
import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium():
    """A fresh Chromium, opened and closed inside a test: Playwright's sync
    API runs its own event loop in this thread."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: ./dev.sh test installs it (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def in_browser(scenario):
    """Run ``scenario(browser)`` with a fresh Chromium in its own thread, which
    keeps Playwright's event loop apart from pytest-asyncio's."""

    def run():
        with chromium() as b:
            return scenario(b)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def login(page, hub, user, password=None, wait=False):
    """Log in through the hub's login form."""
    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password or hub.password)
    page.click("#login_submit, input[type=submit], button[type=submit]")
    if wait:
        page.wait_for_url("**/hub/**", timeout=30_000)
