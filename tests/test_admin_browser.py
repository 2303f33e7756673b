"""The admin panel in a real browser (Debian's Chromium through Playwright):
an admin logs in, opens *Compute admin*, filters, stops a server; a
screenshot of the panel is kept in the test artifacts."""

import pytest
from browser import in_browser, login
from conftest import ARTIFACTS
from hubtest import wait_for

pytestmark = [pytest.mark.hub, pytest.mark.browser]


def test_admin_panel_in_a_browser(hub):
    user = hub.create_user("browsed")
    hub.spawn(user, {"profile": "gpu"})
    try:
        in_browser(lambda browser: _admin_scenario(hub, browser, user))
    finally:
        if hub.server_model(user) is not None:
            hub.stop_server(user)


def _admin_scenario(hub, browser, user):
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page = context.new_page()
    try:
        login(page, hub, "admin", hub.admin_password, wait=True)
        page.goto(f"{hub.url}/services/ds-compute/admin")
        row = page.locator(f"tr[data-user='{user}']")
        row.wait_for(timeout=30_000)
        assert row.get_attribute("data-tier") == "gpu"
        assert row.get_attribute("data-state") == "running"
        assert "browsed" in row.locator(".ds-volume").inner_text()
        page.screenshot(path=str(ARTIFACTS / "admin-panel.png"), full_page=True)

        # filter by tier
        page.select_option("#filter-tier", "gpu")
        page.click("#ds-admin-filters button[type=submit]")
        page.wait_for_url("**admin?**tier=gpu**")
        assert page.locator("#ds-admin-table tbody tr").count() == 1

        # stop it from the panel (a cookie POST with the panel's xsrf token)
        row = page.locator(f"tr[data-user='{user}']")
        row.locator("button[value=stop]").click()
        page.locator("[data-testid=admin-message]").wait_for(timeout=30_000)
        assert "Stopping" in page.locator("[data-testid=admin-message]").inner_text()
        wait_for(lambda: hub.server_model(user) is None, timeout=60, message="stopped from the panel")
        page.goto(f"{hub.url}/services/ds-compute/admin/audit")
        page.locator("#ds-audit-table").wait_for()
        assert page.locator("tr[data-event='admin:stop']").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "admin-audit.png"), full_page=True)
    finally:
        context.close()


def test_non_admin_sees_403_page(hub):
    in_browser(lambda browser: _non_admin_scenario(hub, browser))


def _non_admin_scenario(hub, browser):
    context = browser.new_context()
    page = context.new_page()
    try:
        login(page, hub, "visitor", hub.password, wait=True)
        response = page.goto(f"{hub.url}/services/ds-compute/admin")
        assert response.status == 403
        assert "admins only" in page.content()
    finally:
        context.close()
