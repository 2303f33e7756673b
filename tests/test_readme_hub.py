"""The README's first command as a new user meets it: the embedded default,
no password chosen, the login it prints works, and the server it starts
serves JupyterLab (with our extension in it)."""

import re
import time

import pytest
from conftest import hub_workdir
from hubtest import REPO, Hub, wait_for

pytestmark = pytest.mark.hub


def test_dev_sh_hub_runs_the_embedded_config():
    text = (REPO / "dev.sh").read_text()
    assert 'exec "$VENV/bin/jupyterhub" -f "$HERE/jupyterhub_config.py" "$@"' in text


def test_printed_login_starts_a_server_that_serves_lab():
    hub = Hub(hub_workdir("readme"))
    for key in ("DS_COMPUTE_PASSWORD", "DS_COMPUTE_ADMIN_PASSWORD"):
        hub.env.pop(key)
    hub.start()
    try:
        banner = wait_for(
            lambda: re.search(r"Log in with ANY user name and the password: (\S+)", hub.log_tail(400)),
            timeout=10,
            message="the login banner",
        )
        assert f"starting at {hub.url}/" in hub.log_tail(400)
        password = banner.group(1)
        session = hub.login("newcomer", password=password)
        # the spawn form, as a browser submits it
        form = session.get(f"{hub.url}/hub/spawn")
        assert form.status_code == 200 and 'value="small"' in form.text, form.text[:500]
        r = session.post(
            f"{hub.url}/hub/spawn",
            data={"profile": "small", "_xsrf": session.cookies.get("_xsrf", path="/hub/")},
            allow_redirects=False,
        )
        assert r.status_code == 302, r.text[:500]
        hub.wait_ready("newcomer")
        deadline = time.monotonic() + 60
        while True:
            lab = session.get(f"{hub.url}/user/newcomer/lab")
            if lab.status_code == 200 and "jupyter-config-data" in lab.text:
                break
            assert time.monotonic() < deadline, (lab.status_code, lab.url, lab.text[:300])
            time.sleep(0.5)
        assert "jupyter-ds-compute" in lab.text  # our Lab extension is in the page config
        assert lab.url.startswith(f"{hub.url}/user/newcomer/lab")
    finally:
        hub.stop()
