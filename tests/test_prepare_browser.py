"""Make before break, seen by a user in a real browser: after *Switch* Lab
stays while the new machine is prepared (a notification says so), then the
progress page shows the phase in words and the browser lands back in Lab on
the new tier. What the user typed while the new machine was prepared is saved
before the cut-over (Lab holds it, saves, then says go).

Every text the user sees on the way is recorded as it appears (a
MutationObserver in each page, reporting to the test through
``expose_binding``), so a short phase is caught even after the page moved on.
"""

import os
import threading

import pytest
from browser import chromium, login
from conftest import ARTIFACTS, TEST_TIERS_CONFIG, _current_hub, hub_workdir
from hubtest import Hub

pytestmark = [pytest.mark.hub, pytest.mark.browser]

# reports what the page shows: the Lab notification toasts and the progress
# page's phase line and step labels, each time they change
WATCH = """
(() => {
  const report = (kind, text) => window.dsSeen && window.dsSeen(location.pathname, kind, text);
  const look = () => {
    for (const t of document.querySelectorAll('.Toastify__toast')) { report('toast', t.innerText); }
    const phase = document.getElementById('ds-phase');
    if (phase && !phase.classList.contains('d-none')) { report('phase', phase.textContent); }
    const prep = document.querySelector('tr[data-step=prepare] .ds-step-label');
    if (prep) { report('prepare-label', prep.textContent); }
  };
  const start = () => {
    look();
    new MutationObserver(look).observe(document.body, {childList: true, subtree: true, characterData: true});
  };
  if (document.body) { start(); } else { document.addEventListener('DOMContentLoaded', start); }
})();
"""


def test_switch_prepares_while_lab_stays(hub):
    user = hub.create_user("prepuser")
    hub.spawn(user, {"profile": "small"})
    with chromium() as browser:
        seen = _switch(hub, browser, user)
    toasts = [t for p, kind, t in seen if kind == "toast" and p.startswith(f"/user/{user}/")]
    phases = [t for p, kind, t in seen if kind == "phase" and "/services/ds-compute/switches/" in p]
    labels = {t for p, kind, t in seen if kind == "prepare-label"}
    # while the new machine was prepared, Lab stayed and said so
    assert any("Preparing the GPU machine" in t and "Keep working" in t for t in toasts), toasts
    # the progress page worded the phase it was in (the cut-over or the start)
    assert phases, seen
    assert set(phases) <= {
        "Cutting over \u2014 your server is briefly unavailable",
        "Starting on gpu",
        "Preparing the gpu machine \u2014 your server keeps running, keep working",
    }, phases
    assert labels == {"Prepare the new machine"}, labels
    record = hub.service("GET", f"api/switches/{_last_switch(hub, user)}", hub.user_token(user)).json()
    assert record["state"] == "succeeded" and record["phase"] == "done"
    prepare = next(s for s in record["steps"] if s["name"] == "prepare")
    assert prepare["status"] == "done", record["steps"]
    # Lab held the cut-over, saved (nothing open here) and said go
    assert any("Saving your work; moving to the GPU machine" in t for t in toasts), toasts
    assert "saved in" in prepare["message"], prepare


SLOW_PRELOAD = "import time\ntime.sleep(8)\n"


@pytest.fixture
def slow_prepare_hub():
    """A hub whose launchers take 8 s to preload (a slow import): time to type
    into a document while the new machine is prepared."""
    workdir = hub_workdir("prepare-browser-slow")
    mod_dir = os.path.join(workdir, "slowmods")
    os.makedirs(mod_dir)
    os.chmod(mod_dir, 0o755)
    with open(os.path.join(mod_dir, "ds_compute_slow_preload.py"), "w") as f:
        f.write(SLOW_PRELOAD)
    extra = TEST_TIERS_CONFIG + (
        'c.LocalBackend.launcher_preload = ["jupyterhub.singleuser", "ds_compute_slow_preload"]\n'
        f"c.Spawner.environment.update({{'PYTHONPATH': {mod_dir!r}}})\n"
    )
    hub = Hub(workdir, extra_config=extra)
    saved = dict(_current_hub)
    _current_hub["api_port"] = hub.env["DS_COMPUTE_HUB_PORT"]
    hub.start()
    yield hub
    hub.stop()
    _current_hub.clear()
    _current_hub.update(saved)


TYPED = " typed while the GPU machine was prepared"


def test_edits_made_while_preparing_are_saved(slow_prepare_hub):
    hub = slow_prepare_hub
    user = hub.create_user("prepsave")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    r = hub.server_api(
        user,
        "api/contents/notes.txt",
        token,
        method="PUT",
        json={"type": "file", "format": "text", "content": "first line"},
    )
    assert r.status_code in (200, 201), r.text

    def type_while_preparing(page):
        # still preparing: the old server serves, the document takes the edit
        editor = page.locator(".jp-FileEditor .cm-content")
        editor.click()
        page.keyboard.press("Control+End")
        page.keyboard.type(TYPED)
        page.locator(".lm-TabBar-tab.jp-mod-dirty", has_text="notes.txt").wait_for(timeout=10_000)
        record = hub.service("GET", f"api/switches/{_last_switch(hub, user)}", token).json()
        assert record["phase"] == "preparing", record  # typed (and unsaved) while preparing
        on_disk = hub.server_api(user, "api/contents/notes.txt", token).json()["content"]
        assert TYPED not in on_disk  # not saved yet: the save below is Lab's, before the cut-over
        page.screenshot(path=str(ARTIFACTS / "prepare-dirty-document.png"))

    on_gpu = {}

    def read_back(page):
        # the new server (on GPU) reads the file from the volume
        on_gpu["content"] = hub.server_api(user, "api/contents/notes.txt", token).json()["content"]

    with chromium() as browser:
        seen = _switch(
            hub,
            browser,
            user,
            path="lab/tree/notes.txt",
            while_preparing=type_while_preparing,
            after_switch=read_back,
        )
    toasts = [t for p, kind, t in seen if kind == "toast" and p.startswith(f"/user/{user}/")]
    assert on_gpu["content"] == "first line" + TYPED, on_gpu
    assert any("Saving your work; moving to the GPU machine" in t for t in toasts), toasts
    assert not any("Could not save" in t for t in toasts), toasts
    record = hub.service("GET", f"api/switches/{_last_switch(hub, user)}", token).json()
    assert record["state"] == "succeeded", record
    assert record["cutover"] is None  # over: no hold left
    prepare = next(s for s in record["steps"] if s["name"] == "prepare")
    assert "saved in" in prepare["message"], prepare


def _last_switch(hub, user):
    r = hub.service("GET", f"api/switches?user={user}&limit=1", hub.user_token(user))
    return r.json()["switches"][0]["id"]


def _switch(hub, browser, user, path="lab", while_preparing=None, after_switch=None):
    seen = []
    lock = threading.Lock()

    def on_seen(source, path, kind, text):
        with lock:
            if not seen or seen[-1] != (path, kind, text):
                seen.append((path, kind, text))

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.expose_binding("dsSeen", on_seen)
    context.add_init_script(WATCH)
    page = context.new_page()
    try:
        login(page, hub, user)
        page.goto(f"{hub.url}/user/{user}/{path}")
        page.locator("[data-testid=ds-compute-status]").wait_for(timeout=60_000)
        page.wait_for_function(
            "document.querySelector('[data-testid=ds-compute-status]').textContent.includes('Small')",
            timeout=30_000,
        )
        page.locator(".lm-MenuBar-item", has_text="Compute").click()
        page.locator("li[data-command='jupyter-ds-compute:switch-machine']").click()
        page.locator("[data-testid=ds-compute-tier-gpu]").click()
        page.locator("[data-testid=ds-compute-next]").click()
        page.locator("[data-testid=ds-compute-confirm]").wait_for(timeout=10_000)
        page.locator("[data-testid=ds-compute-switch]").click()

        # Lab stays while the GPU machine is prepared: the notification shows in Lab
        page.get_by_text("Preparing the GPU machine").first.wait_for(timeout=30_000)
        assert f"/user/{user}/lab" in page.url
        page.screenshot(path=str(ARTIFACTS / "prepare-lab-notification.png"))
        if while_preparing:
            while_preparing(page)

        page.wait_for_url("**/services/ds-compute/switches/**", timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "prepare-progress.png"))
        # back in the same Lab, now on GPU
        page.wait_for_url(f"**/user/{user}/lab**", timeout=180_000)
        page.locator("[data-testid=ds-compute-status]").wait_for(timeout=60_000)
        page.wait_for_function(
            "document.querySelector('[data-testid=ds-compute-status]').textContent.includes('GPU')",
            timeout=60_000,
        )
        assert page.locator(".jp-Dialog").count() == 0  # no "server connection lost" on the way
        assert hub.server_model(user)["user_options"]["profile"] == "gpu"
        if after_switch:
            after_switch(page)
        with lock:
            return list(seen)
    finally:
        context.close()
        hub.stop_server(user)
