"""Budgets and idle-downshift notices as a user sees them in Lab.

A real hub whose budgets run out in seconds and whose idle check runs every
second; Debian's Chromium (Playwright) opens Lab. Screenshots are kept in the
test artifacts directory.
"""

import pytest
import requests
from browser import chromium, login
from conftest import ARTIFACTS
from hubtest import wait_for

pytestmark = [pytest.mark.hub, pytest.mark.browser]

# Pricey costs 1 per second: a budget of 100 warns (at 3%) after 3 s and is
# spent only after 100 s, so the status bar is reliably in "warn" meanwhile.
# Dozy is idle-downshifted after 3 s (checked every second).
HUB_EXTRA_CONFIG = """
c.DSComputeSpawner.profile_list = list(c.DSComputeSpawner.profile_list) + [
    {"display_name": "Pricey", "slug": "pricey", "cpu": 1, "mem": "1G", "hourly_cost": 3600.0},
    {"display_name": "Dozy", "slug": "dozy", "cpu": 1, "mem": "1G", "hourly_cost": 0.5, "idle_downshift_after": 3},
]
c.DSComputeService.budgets = {"users": {"lab-spender": 100.0}}
c.DSComputeService.budget_warn_fraction = 0.03
c.DSComputeService.accounting_interval = 1
c.DSComputeService.idle_check_interval = 1
"""

STATUS = "[data-testid=ds-compute-status]"
BUDGET = "[data-testid=ds-compute-budget]"


def policy(hub, token):
    r = requests.get(
        f"{hub.url}/services/ds-compute/api/policy", headers={"Authorization": f"token {token}"}, timeout=10
    )
    r.raise_for_status()
    return r.json()


def open_lab(browser, hub, user):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    login(page, hub, user)
    page.goto(f"{hub.url}/user/{user}/lab")
    page.locator(STATUS).wait_for(timeout=60_000)
    # the first status answer is in (the tier's name replaces "ds-compute: …")
    page.wait_for_function(
        f"!document.querySelector('{STATUS}').textContent.includes('ds-compute: …')", timeout=30_000
    )
    return context, page


def test_budget_warning_in_status_bar(hub):
    user = hub.create_user("lab-spender")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "pricey"})
    try:
        # the service says "warn" before Lab asks (the server extension caches 30 s)
        wait_for(lambda: policy(hub, token)["budget"]["state"] == "warn", timeout=30, message="budget warn")
        with chromium() as browser:
            context, page = open_lab(browser, hub, user)
            try:
                budget = page.locator(BUDGET)
                budget.wait_for(state="visible", timeout=30_000)
                text = budget.inner_text()
                assert text.startswith("⚠ budget ") and text.endswith("% used"), text
                status = page.locator(STATUS)
                assert "Pricey" in status.inner_text()
                assert "jp-DSCompute-statusItem-budgetWarn" in status.get_attribute("class")
                tooltip = status.get_attribute("title")
                assert "Budget: $" in tooltip and "of $100.00 spent this month" in tooltip, tooltip
                assert "only your default tier" in tooltip
                page.screenshot(path=str(ARTIFACTS / "policy-budget-warning.png"))
                # the server is what Lab asked: its status carries the service's budget
                st = hub.server_api(user, "ds-compute/api/status", token).json()
                assert st["budget"]["state"] == "warn" and st["budget"]["budget"] == 100.0
            finally:
                context.close()
    finally:
        hub.stop_server(user)


def test_idle_downshift_notification(hub):
    user = hub.create_user("lab-dozer")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "dozy"})
    try:

        def moved():
            m = hub.server_model(user)
            return m and m["ready"] and m["user_options"].get("profile") == "small"

        wait_for(moved, timeout=60, interval=0.5, message="idle downshift to small")
        notices = policy(hub, token)["notices"]
        assert notices and notices[0]["kind"] == "idle-downshift", notices
        message = notices[0]["message"]
        assert "Dozy" in message and "Small" in message
        # the new server passes the notice on (its own token, its own server's notices)
        st = hub.server_api(user, "ds-compute/api/status", token).json()
        assert st["notices"] and st["notices"][0]["message"] == message, st

        with chromium() as browser:
            context, page = open_lab(browser, hub, user)
            try:
                assert "Small" in page.locator(STATUS).inner_text()
                toast = page.locator(".jp-Notification-Toast-warning, .Toastify__toast", has_text="idle for")
                try:
                    toast.first.wait_for(timeout=30_000)
                except Exception:
                    page.screenshot(path=str(ARTIFACTS / "policy-idle-downshift-notice-missing.png"))
                    raise
                assert message in toast.first.inner_text()
                page.wait_for_timeout(800)  # the toast's slide-in
                page.screenshot(path=str(ARTIFACTS / "policy-idle-downshift-notice.png"))
                # shown once: after a reload (same browser, localStorage) it stays away
                page.reload()
                page.locator(STATUS).wait_for(timeout=60_000)
                page.wait_for_function(
                    f"document.querySelector('{STATUS}').textContent.includes('Small')", timeout=30_000
                )
                page.wait_for_timeout(2000)
                assert page.get_by_text("idle for").count() == 0
            finally:
                context.close()
    finally:
        hub.stop_server(user)
