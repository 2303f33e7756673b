""" "Keep my variables" in the Lab dialog (issue 15), in a real browser: the
checkbox sends keep_state, and Lab shows what came back after the switch."""

import pytest
from browser import chromium, login
from conftest import ARTIFACTS
from kernelclient import execute

pytestmark = [pytest.mark.hub, pytest.mark.browser]


def test_keep_my_variables_checkbox_and_notice(hub):
    user = hub.create_user("labkeeper")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    r = hub.server_api(
        user, "api/sessions", token, method="POST",
        json={"path": "keep.ipynb", "name": "keep.ipynb", "type": "notebook", "kernel": {"name": "python3"}},
    )  # fmt: skip
    r.raise_for_status()
    out, err = execute(hub, user, token, r.json()["kernel"]["id"], "x = 42\nprint('ready')")
    assert "ready" in out, (out, err)
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        try:
            login(page, hub, user)
            page.goto(f"{hub.url}/user/{user}/lab")
            page.wait_for_function(
                "document.querySelector('[data-testid=ds-compute-status]')?.textContent.includes('Small')",
                timeout=60_000,
            )
            page.locator(".lm-MenuBar-item", has_text="Compute").click()
            page.locator("li[data-command='jupyter-ds-compute:switch-machine']").click()
            page.locator("[data-testid=ds-compute-tier-gpu]").click()
            page.locator("[data-testid=ds-compute-next]").click()
            box = page.locator("[data-testid=ds-compute-keep-state]")
            box.wait_for(timeout=10_000)
            assert not box.is_checked()  # opt-in
            box.check()
            page.screenshot(path=str(ARTIFACTS / "state-confirm.png"))
            page.locator("[data-testid=ds-compute-switch]").click()
            page.wait_for_url(f"**/user/{user}/lab**", timeout=180_000)
            notice = page.get_by_text("keep.ipynb: restored 1 variable")
            notice.wait_for(timeout=90_000)
            page.screenshot(path=str(ARTIFACTS / "state-restored-notice.png"))
        finally:
            context.close()
    sessions = hub.server_api(user, "api/sessions", token).json()
    assert [s["path"] for s in sessions] == ["keep.ipynb"]
    out, err = execute(hub, user, token, sessions[0]["kernel"]["id"], "print(x + 1)")
    assert err is None and "43" in out, (out, err)
    hub.stop_server(user)
