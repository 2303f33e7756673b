"""A real user in a real browser: log in, open Lab, Compute → Switch
machine…, pick GPU, watch the progress page, land back in Lab on GPU.

Debian's Chromium driven by Playwright; screenshots of the dialog and the
progress page are kept in the test artifacts directory.
"""

import pytest
from browser import chromium, login
from conftest import ARTIFACTS

pytestmark = [pytest.mark.hub, pytest.mark.browser]


def test_switch_from_the_lab_menu(hub):
    user = hub.create_user("labuser")
    hub.spawn(user, {"profile": "small"})
    with chromium() as browser:
        _switch_in_browser(hub, browser, user)


def _switch_in_browser(hub, browser, user):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        login(page, hub, user)
        page.goto(f"{hub.url}/user/{user}/lab")
        status = page.locator("[data-testid=ds-compute-status]")
        status.wait_for(timeout=60_000)
        page.wait_for_function(
            "document.querySelector('[data-testid=ds-compute-status]').textContent.includes('Small')",
            timeout=30_000,
        )
        # no "official Jupyter news" question on the embedded default
        page.wait_for_timeout(1500)
        assert page.get_by_text("official Jupyter news").count() == 0

        page.locator(".lm-MenuBar-item", has_text="Compute").click()
        page.locator("li[data-command='jupyter-ds-compute:switch-machine']").click()
        page.locator("[data-testid=ds-compute-tier-gpu]").wait_for(timeout=15_000)
        assert "jp-mod-current" in page.locator("[data-testid=ds-compute-tier-small]").get_attribute("class")
        page.locator("[data-testid=ds-compute-tier-gpu]").click()
        page.screenshot(path=str(ARTIFACTS / "switch-dialog.png"))
        page.locator("[data-testid=ds-compute-next]").click()
        page.locator("[data-testid=ds-compute-confirm]").wait_for(timeout=10_000)
        assert "restart" in page.locator("[data-testid=ds-compute-confirm]").inner_text().lower()
        page.screenshot(path=str(ARTIFACTS / "switch-confirm.png"))
        page.locator("[data-testid=ds-compute-switch]").click()

        page.wait_for_url("**/services/ds-compute/switches/**", timeout=30_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "switch-progress.png"))
        assert page.get_by_text("GPU").count() > 0

        # back in the same Lab, now on GPU
        page.wait_for_url(f"**/user/{user}/lab**", timeout=180_000)
        page.locator("[data-testid=ds-compute-status]").wait_for(timeout=60_000)
        page.wait_for_function(
            "document.querySelector('[data-testid=ds-compute-status]').textContent.includes('GPU')",
            timeout=60_000,
        )
        page.screenshot(path=str(ARTIFACTS / "switch-back-in-lab.png"))
        # no "server connection lost" dialog on the way
        assert page.locator(".jp-Dialog").count() == 0
        assert hub.server_model(user)["user_options"]["profile"] == "gpu"
    finally:
        context.close()
        hub.stop_server(user)
