"""Request and approve in a real browser (Debian's Chromium through
Playwright): a user opens Compute → Switch machine…, sees what each tier
costs against their budget, asks for the restricted tier with a reason
(a duration over the tier's max_grant is refused next to the field); an
admin approves on the service's admin page (an xsrf-checked form); the
user sees the approval as a Lab notification, its *Switch machine…*
action opens the dialog showing "Granted until …", and the switch to the
tier succeeds. Screenshots are kept in the test artifacts directory.
"""

import pytest
from browser import in_browser, login
from conftest import ARTIFACTS
from hubtest import wait_for

pytestmark = [pytest.mark.hub, pytest.mark.browser]

HUB_EXTRA_CONFIG = """
c.DSComputeSpawner.profile_list = list(c.DSComputeSpawner.profile_list) + [
    {"display_name": "Granted", "slug": "granted", "cpu": 1, "mem": "1G", "hourly_cost": 2.0,
     "allowed_groups": ["grant-team"], "max_grant": "1h", "idle_downshift_after": 1800},
]
c.DSComputeService.budgets = {"users": {"lab-asker": 50.0}}
c.DSComputeService.accounting_interval = 1
"""

STATUS = "[data-testid=ds-compute-status]"
USER = "lab-asker"


def test_request_approve_and_switch_in_lab(hub):
    hub.api("POST", "/groups/grant-team")
    user = hub.create_user(USER)
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    try:
        in_browser(lambda browser: _scenario(hub, browser, user, token))
        assert hub.server_model(user)["user_options"]["profile"] == "granted"
    finally:
        if hub.server_model(user) is not None:
            hub.stop_server(user)


def _open_dialog(page):
    page.locator(".lm-MenuBar-item", has_text="Compute").click()
    page.locator("li[data-command='jupyter-ds-compute:switch-machine']").click()
    page.locator("[data-testid=ds-compute-tier-granted]").wait_for(timeout=15_000)


def _scenario(hub, browser, user, token):
    context = browser.new_context(viewport={"width": 1400, "height": 950})
    page = context.new_page()
    admin_context = browser.new_context(viewport={"width": 1500, "height": 900})
    admin_page = admin_context.new_page()
    try:
        login(page, hub, user)
        page.goto(f"{hub.url}/user/{user}/lab")
        page.locator(STATUS).wait_for(timeout=60_000)
        page.wait_for_function(
            f"document.querySelector('{STATUS}').textContent.includes('Small')", timeout=30_000
        )
        _open_dialog(page)

        # the cost of each tier against the budget ($50 a month)
        card = page.locator("[data-testid=ds-compute-tier-granted]")
        assert card.locator(".jp-DSCompute-tierPrice").inner_text() == "$2.00/h"
        granted_cost = page.locator("[data-testid=ds-compute-tier-cost-granted]").inner_text()
        assert "Budget: $" in granted_cost, granted_cost
        assert "left this month" in granted_cost and "on this tier" in granted_cost, granted_cost
        assert "Idle: moved to your default tier after 30 min" in granted_cost, granted_cost
        small_cost = page.locator("[data-testid=ds-compute-tier-cost-small]").inner_text()
        assert "Budget: $" in small_cost and "Idle: never moved down" in small_cost, small_cost
        assert "jp-mod-refused" in card.get_attribute("class")
        page.screenshot(path=str(ARTIFACTS / "request-dialog.png"))

        # Request access…: the form, a duration over max_grant refused next to its field
        page.locator("[data-testid=ds-compute-request-granted]").click()
        form = page.locator("[data-testid=ds-compute-request-form]")
        form.wait_for(timeout=10_000)
        duration = page.locator("[data-testid=ds-compute-request-duration]")
        assert duration.input_value() == "1h"  # the tier's max_grant by default
        duration.fill("2h")
        page.locator("[data-testid=ds-compute-request-reason]").fill("train the activity model")
        page.locator("[data-testid=ds-compute-send-request]").click()
        error = page.locator("[data-testid=ds-compute-request-error-duration]")
        error.wait_for(timeout=10_000)
        assert "At most 1 h" in error.inner_text()
        # the reason was kept
        assert (
            page.locator("[data-testid=ds-compute-request-reason]").input_value()
            == "train the activity model"
        )
        page.locator("[data-testid=ds-compute-request-duration]").fill("30m")
        page.screenshot(path=str(ARTIFACTS / "request-form.png"))
        page.locator("[data-testid=ds-compute-send-request]").click()

        # the picker again: the request is pending
        pending = page.locator("[data-testid=ds-compute-tier-pending-granted]")
        pending.wait_for(timeout=15_000)
        assert "Request pending (30 min asked)" in pending.inner_text()
        assert page.locator("[data-testid=ds-compute-request-granted]").count() == 0
        page.screenshot(path=str(ARTIFACTS / "request-pending.png"))
        page.locator("[data-testid=ds-compute-cancel]").click()
        requests = hub.service("GET", "api/requests", token).json()["requests"]
        assert [(r["profile"], r["state"], r["duration"], r["reason"]) for r in requests] == [
            ("granted", "pending", 1800, "train the activity model")
        ]
        request_id = requests[0]["id"]

        # an admin approves on the admin page (a cookie POST with the page's xsrf token)
        login(admin_page, hub, "admin", hub.admin_password, wait=True)
        admin_page.goto(f"{hub.url}/services/ds-compute/admin")
        row = admin_page.locator(f"tr[data-request='{request_id}']")
        row.wait_for(timeout=30_000)
        assert "train the activity model" in row.inner_text()
        row.locator("input[name=reason]").fill("go ahead")
        row.locator("button[value=approve]").click()
        admin_page.wait_for_load_state()
        assert "Approved lab-asker" in admin_page.content()
        assert "grant-team" in hub.api("GET", f"/users/{user}").json()["groups"]

        # the user's server passes the notice on (its policy cache expires), Lab shows it
        wait_for(
            lambda: any(
                n["kind"] == "request-approved"
                for n in hub.server_api(user, "ds-compute/api/status", token).json().get("notices") or []
            ),
            timeout=60,
            interval=1,
            message="the approval notice in the server's status",
        )
        page.reload()
        page.locator(STATUS).wait_for(timeout=60_000)
        toast = page.locator(".Toastify__toast", has_text="is approved until")
        try:
            toast.first.wait_for(timeout=30_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "request-approved-notice-missing.png"))
            raise
        assert "go ahead" in toast.first.inner_text()
        page.wait_for_timeout(800)  # the toast's slide-in
        page.screenshot(path=str(ARTIFACTS / "request-approved-notice.png"))
        # its action opens the switch dialog: the tier is granted now, until a local time
        toast.first.get_by_text("Switch machine…").click()
        page.locator("[data-testid=ds-compute-tier-granted]").wait_for(timeout=15_000)
        grant = page.locator("[data-testid=ds-compute-tier-grant-granted]")
        grant.wait_for(timeout=10_000)
        assert grant.inner_text().startswith("Granted until ")
        card = page.locator("[data-testid=ds-compute-tier-granted]")
        assert "jp-mod-refused" not in card.get_attribute("class")
        card.click()
        page.locator("[data-testid=ds-compute-next]").click()
        confirm = page.locator("[data-testid=ds-compute-confirm]")
        confirm.wait_for(timeout=10_000)
        confirm_cost = page.locator("[data-testid=ds-compute-confirm-cost]").inner_text()
        assert "Price: $2.00/h" in confirm_cost and "left this month" in confirm_cost, confirm_cost
        assert page.locator("[data-testid=ds-compute-budget-warning]").count() == 0  # $50 lasts > 1 h
        page.screenshot(path=str(ARTIFACTS / "request-confirm.png"))
        page.locator("[data-testid=ds-compute-switch]").click()

        page.wait_for_url("**/services/ds-compute/switches/**", timeout=30_000)
        page.wait_for_url(f"**/user/{user}/lab**", timeout=180_000)
        page.locator(STATUS).wait_for(timeout=60_000)
        page.wait_for_function(
            f"document.querySelector('{STATUS}').textContent.includes('Granted')", timeout=60_000
        )
        page.screenshot(path=str(ARTIFACTS / "request-switched.png"))
    finally:
        admin_context.close()
        context.close()
