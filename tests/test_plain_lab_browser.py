"""A plain ``jupyter lab`` (no JupyterHub) in a real browser: the ds-compute
extension stays quiet.

The server is started from the venv by hand, as a user would, with no
``JUPYTERHUB_*`` or ``DS_COMPUTE_*`` variables: its ``GET status`` answers
``"under_hub": false`` with null tier and volume. Lab must then show no
"null", no status-bar item, a disabled *Switch machine…* that says why, a
dialog (when the command is run anyway) that says there is nothing to switch
to, no errors, and one status call, then quiet.

Debian's Chromium driven by Playwright; screenshots go to the test artifacts
directory.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time

import pytest
import requests
from browser import in_browser
from conftest import ARTIFACTS
from hubtest import VENV_BIN, free_port, wait_for

pytestmark = [pytest.mark.browser]

NO_HUB_MESSAGE = "This JupyterLab is not running under JupyterHub: there are no machines to switch to."
#: how long the page is watched for polls after Lab has loaded
QUIET_SECONDS = 10
API_CALL = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE) /ds-compute/api/(\w+)")


class PlainLab:
    """``jupyter lab`` on 127.0.0.1 with a token, no hub in its environment."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "jupyter-lab.log"
        home = workdir / "home"
        root = workdir / "notebooks"
        home.mkdir()
        root.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "DS_COMPUTE_"))}
        env.update(HOME=str(home), JUPYTER_CONFIG_DIR=str(home / ".jupyter"))
        env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
        for key in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTERLAB_SETTINGS_DIR"):
            env.pop(key, None)  # a fresh user: settings and runtime files under the new HOME
        self.env = env
        self.argv = [
            str(VENV_BIN / "jupyter-lab"),
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            # the access log of 2xx API calls is at debug level: needed to count them
            "--ServerApp.log_level=DEBUG",
            # window.jupyterapp, to run the command the disabled menu entry cannot
            "--LabApp.expose_app_in_browser=True",
            # no network calls of Lab's own while the page is watched
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if os.geteuid() == 0:
            self.argv.append("--allow-root")
        self.proc = None

    def start(self):
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return requests.get(f"{self.url}/api/status", params={"token": self.token}, timeout=2).ok

        wait_for(up, timeout=60, message=f"jupyter lab on {self.url}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api_calls(self) -> list[str]:
        """The ds-compute API calls the server answered so far, e.g. ``GET status``."""
        return [f"{m.group(1)} {m.group(2)}" for m in API_CALL.finditer(self.log())]


@pytest.fixture
def plain_lab(tmp_path):
    lab = PlainLab(tmp_path)
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()
        (ARTIFACTS / "plain-lab.log").write_text(lab.log())


def test_status_answer_says_not_under_hub(plain_lab):
    """What the extension decides on: the server's own answer, without a hub."""
    r = requests.get(f"{plain_lab.url}/ds-compute/api/status", params={"token": plain_lab.token}, timeout=10)
    assert r.status_code == 200, r.text
    status = r.json()
    assert status["under_hub"] is False
    assert status["user"] is None and status["tier"] is None
    assert status["volume"]["id"] is None and status["volume"]["path"] is None


def test_plain_lab_stays_quiet(plain_lab):
    result = in_browser(lambda browser: _scenario(browser, plain_lab))

    # one status call while the page was watched, then nothing
    calls_after_load, calls_after_dialog = result["calls_after_load"], result["calls_after_dialog"]
    assert calls_after_load.count("GET status") == 1, calls_after_load
    assert len(calls_after_load) <= 2, calls_after_load
    # opening the dialog asks nothing more: the model already knows
    assert calls_after_dialog == calls_after_load, calls_after_dialog
    # ... and the browser agrees with the server's log
    assert result["browser_calls"] == [u for u in result["browser_calls"] if "/ds-compute/api/status" in u]
    assert len(result["browser_calls"]) == 1, result["browser_calls"]

    assert result["errors"] == [], result["errors"]
    assert "null" not in result["statusbar_text"].lower(), result["statusbar_text"]
    assert "null" not in result["statusbar_titles"].lower(), result["statusbar_titles"]
    # registered (the extension is loaded), but the status bar hides it
    assert result["status_item_count"] == 1
    assert not result["status_item_visible"], "the ds-compute status-bar item shows outside JupyterHub"
    assert "not running under JupyterHub" in result["menu_entry"], result["menu_entry"]
    assert result["menu_entry_disabled"], "Switch machine… is enabled outside JupyterHub"
    assert "Current: not running under JupyterHub" in result["menu_text"], result["menu_text"]
    assert "null" not in result["menu_text"].lower(), result["menu_text"]
    assert result["dialog_text"].strip() == NO_HUB_MESSAGE, result["dialog_text"]
    assert "No compute tiers" not in result["dialog_all"]
    assert "null" not in result["dialog_all"].lower(), result["dialog_all"]
    assert result["dialog_closed"]
    ours = [t for t in result["toasts"] if "compute" in t.lower() or "null" in t.lower()]
    assert not ours, result["toasts"]


def _scenario(browser, lab):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    browser_calls: list[str] = []

    def on_console(msg):
        if msg.type == "error":
            where = (msg.location or {}).get("url", "")
            text = msg.text
            # our extension's errors: from its bundle, or naming it or its API
            if "jupyter-ds-compute" in where or "ds-compute" in text or "ds_compute" in text:
                errors.append(f"console: {text} ({where})")

    def on_pageerror(exc):
        text = f"{exc}\n{getattr(exc, 'stack', '')}"
        if "ds-compute" in text or "ds_compute" in text:
            errors.append(f"pageerror: {text}")

    def on_response(resp):
        if "/ds-compute/" in resp.url:
            browser_calls.append(resp.url)
            if resp.status >= 400:
                errors.append(f"HTTP {resp.status} from {resp.url}")

    page.on("console", on_console)
    page.on("pageerror", on_pageerror)
    page.on("response", on_response)
    try:
        page.goto(f"{lab.url}/lab?token={lab.token}")
        page.locator("#jp-main-statusbar").wait_for(timeout=90_000)
        page.wait_for_function(
            "window.jupyterapp && window.jupyterapp.commands.hasCommand('jupyter-ds-compute:switch-machine')"
        )
        # the first status answer has come back (the menu label changes on it)
        page.wait_for_function(
            "window.jupyterapp.commands.label('jupyter-ds-compute:switch-machine').includes('not running under JupyterHub')",
            timeout=30_000,
        )
        time.sleep(QUIET_SECONDS)
        calls_after_load = lab.api_calls()

        statusbar = page.locator("#jp-main-statusbar")
        statusbar_text = statusbar.inner_text()
        statusbar_titles = page.evaluate(
            "Array.from(document.querySelectorAll('#jp-main-statusbar [title]'))"
            ".map(n => n.title).join('\\n')"
        )
        item = page.locator("[data-testid=ds-compute-status]")
        status_item_count = item.count()
        status_item_visible = status_item_count > 0 and item.first.is_visible()
        page.screenshot(path=str(ARTIFACTS / "plain-lab.png"))

        page.locator(".lm-MenuBar-item", has_text="Compute").click()
        entry = page.locator("li[data-command='jupyter-ds-compute:switch-machine']")
        entry.wait_for(timeout=10_000)
        menu_entry = entry.inner_text()
        menu_entry_disabled = "lm-mod-disabled" in (entry.get_attribute("class") or "") or (
            entry.get_attribute("aria-disabled") == "true"
        )
        menu_text = page.locator("#jp-mainmenu-ds-compute").inner_text()
        page.screenshot(path=str(ARTIFACTS / "plain-lab-menu.png"))
        # a disabled entry does nothing when clicked
        entry.click(force=True)
        page.wait_for_timeout(500)
        clicked_opened_dialog = page.locator(".jp-Dialog").count() > 0
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)

        # the command run anyway (palette, keyboard shortcut, another extension)
        page.evaluate("void window.jupyterapp.commands.execute('jupyter-ds-compute:switch-machine')")
        message = page.locator("[data-testid=ds-compute-no-hub]")
        message.wait_for(timeout=10_000)
        dialog_text = message.inner_text()
        dialog_all = page.locator(".jp-Dialog").inner_text()
        page.screenshot(path=str(ARTIFACTS / "plain-lab-dialog.png"))
        page.locator("[data-testid=ds-compute-close]").click()
        page.locator(".jp-Dialog").wait_for(state="detached", timeout=10_000)
        page.wait_for_timeout(1000)
        calls_after_dialog = lab.api_calls()
        toasts = page.locator(".Toastify__toast").all_inner_texts()
        return {
            "calls_after_load": calls_after_load,
            "calls_after_dialog": calls_after_dialog,
            "browser_calls": list(browser_calls),
            "errors": errors
            + (["a click on the disabled entry opened a dialog"] if clicked_opened_dialog else []),
            "statusbar_text": statusbar_text,
            "statusbar_titles": statusbar_titles,
            "status_item_count": status_item_count,
            "status_item_visible": status_item_visible,
            "menu_entry": menu_entry,
            "menu_entry_disabled": menu_entry_disabled,
            "menu_text": menu_text,
            "dialog_text": dialog_text,
            "dialog_all": dialog_all,
            "dialog_closed": page.locator(".jp-Dialog").count() == 0,
            "toasts": toasts,
        }
    finally:
        context.close()
