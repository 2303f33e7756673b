"""The ds-compute service end to end: a real JupyterHub (subprocess), the pip
configurable-http-proxy, real single-user servers and the service started by
the hub as a managed service.

The hub here runs its own small config (SimpleLocalProcessSpawner; the
"broken" tier gets a command that exits at once through a pre_spawn_hook) so
these tests do not depend on the spawner; it runs in the shared harness
(``hubtest.Hub`` with ``config_file``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import textwrap
import threading
from pathlib import Path

import pytest
import requests
from conftest import ARTIFACTS, hub_workdir
from hubtest import REPO, VENV_BIN, Hub, wait_for

pytestmark = pytest.mark.hub

TIERS = [
    {"display_name": "Small", "slug": "small", "default": True, "cpu": 1, "mem": "1G", "hourly_cost": 0.05},
    {"display_name": "GPU", "slug": "gpu", "cpu": 2, "mem": "2G", "gpu": 1, "hourly_cost": 1.2},
    {"display_name": "Broken", "slug": "broken", "cpu": 1, "mem": "1G", "hourly_cost": 0.01},
    {
        "display_name": "Restricted",
        "slug": "restricted",
        "cpu": 1,
        "mem": "1G",
        "hourly_cost": 3.0,
        "allowed_groups": ["gpu-team"],
    },
]

CONFIG = """
import json, os, sys
c = get_config()
E = os.environ
c.JupyterHub.bind_url = E["DS_COMPUTE_BIND_URL"]
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(E["DS_COMPUTE_HUB_PORT"])
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:" + E["DS_COMPUTE_PROXY_API_PORT"]
c.ConfigurableHTTPProxy.command = [E["T_PROXY"]]
c.JupyterHub.db_url = "sqlite:///jupyterhub.sqlite"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}
c.JupyterHub.spawner_class = "simple"
c.Spawner.cmd = ["jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"
if os.geteuid() == 0:
    c.Spawner.args = ["--allow-root"]
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 30

def pre_spawn_hook(spawner):
    # stands in for the real tier overrides of the spawner
    if spawner.user_options.get("profile") == "broken":
        spawner.cmd = ["/bin/sh", "-c", "echo 'boom: no such machine' >&2; exit 3"]
    else:
        spawner.cmd = ["jupyterhub-singleuser"]

c.Spawner.pre_spawn_hook = pre_spawn_hook

c.JupyterHub.services = [
    {"name": "test-admin", "api_token": E["DS_COMPUTE_TEST_ADMIN_TOKEN"]},
    {
        "name": "ds-compute",
        "url": "http://127.0.0.1:" + E["DS_COMPUTE_SERVICE_PORT"],
        "command": [sys.executable, "-m", "jupyter_ds_compute.service"],
        "oauth_no_confirm": True,
        "environment": {
            # the service's one config channel (hubconfig.service_environment writes the same)
            "DS_COMPUTE_SERVICE_CONFIG": json.dumps({"DSComputeService": {
                "profile_list": json.loads(E["T_TIERS"]),
                "data_dir": os.path.abspath("ds-compute"),
                "stop_timeout": 60,
                "start_timeout": 90,
            }}),
        },
    },
]
c.JupyterHub.load_roles = [
    {"name": "test-admin", "scopes": ["admin:users", "admin:servers", "admin:groups", "tokens"],
     "services": ["test-admin"]},
    {"name": "ds-compute", "scopes": ["servers", "read:users:groups"], "services": ["ds-compute"]},
]
c.JupyterHub.extra_user_scopes = {"access:services!service=ds-compute"}
c.Spawner.server_token_scopes = [
    "users:activity!user", "access:servers!server", "access:services!service=ds-compute",
]
"""


def _proxy():
    """JupyterHub's proxy: ./dev.sh installs it into the checkout's node_modules."""
    for where in (REPO / "node_modules" / ".bin", VENV_BIN):
        if (where / "configurable-http-proxy").exists():
            return str(where / "configurable-http-proxy")
    return str(VENV_BIN / "configurable-http-proxy")


@pytest.fixture(scope="module")
def svc_hub():
    workdir = Path(hub_workdir("test_service_hub"))
    (workdir / "jupyterhub_config.py").write_text(textwrap.dedent(CONFIG))
    env = dict(
        T_PROXY=_proxy(),
        T_TIERS=json.dumps(TIERS),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        CONFIGPROXY_AUTH_TOKEN=secrets.token_hex(16),
    )
    h = Hub(workdir, env=env, config_file=workdir / "jupyterhub_config.py")
    h.start()
    yield h
    h.stop()
    shutil.copy(h.log_path, ARTIFACTS / "test_service_hub-hub.log")


def start_server(hub, user, profile):
    """The user's default server on ``profile``, once ready."""
    return hub.spawn(user, {"user_options": {"profile": profile}}, timeout=90)


def test_switch_with_user_token(svc_hub):
    user = svc_hub.create_user("sw-alice")
    token = svc_hub.user_token(user)
    start_server(svc_hub, user, "small")
    r = svc_hub.service(
        "POST", "api/switches", token, json={"profile": "gpu", "next": f"/user/{user}/lab/tree/a.ipynb"}
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["progress_url"].startswith(f"/services/ds-compute/switches/{body['id']}")
    rec = svc_hub.wait_switch(body["id"], token)
    assert rec["state"] == "succeeded", rec
    assert [s["status"] for s in rec["steps"]] == ["done"] * 7
    assert rec["from_profile"] == "small" and rec["to_profile"] == "gpu"
    assert rec["next"] == f"/user/{user}/lab/tree/a.ipynb"
    model = svc_hub.server_model(user)
    assert model["ready"] and model["user_options"]["profile"] == "gpu"
    # the record is listed for its owner, and the audit trail is complete
    listed = svc_hub.service("GET", "api/switches", token).json()["switches"]
    assert [s["id"] for s in listed] == [body["id"]]
    # switching to the tier it is on is refused, nothing stopped
    r = svc_hub.service("POST", "api/switches", token, json={"profile": "gpu"})
    assert r.status_code == 400 and "already on tier GPU" in r.json()["message"]
    assert svc_hub.server_model(user)["ready"]


def test_server_token_and_tiers(svc_hub):
    """A kernel's own $JUPYTERHUB_API_TOKEN reaches the service (server token scopes)."""
    user = svc_hub.create_user("sw-kernel")
    start_server(svc_hub, user, "small")
    # read the server's token from its process environment, like a kernel would
    pid = wait_for(lambda: _server_pid(svc_hub, user), 30, message="server process")
    env = dict(
        kv.split("=", 1)
        for kv in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
        if "=" in kv
    )
    token = env["JUPYTERHUB_API_TOKEN"]
    tiers = svc_hub.service("GET", "api/tiers", token)
    assert tiers.status_code == 200, tiers.text
    by_slug = {t["slug"]: t for t in tiers.json()["tiers"]}
    assert by_slug["small"]["default"] and by_slug["small"]["allowed"]
    assert not by_slug["restricted"]["allowed"] and "gpu-team" in by_slug["restricted"]["reason"]
    # group-limited tier: 403 before anything is stopped
    r = svc_hub.service("POST", "api/switches", token, json={"profile": "restricted"})
    assert r.status_code == 403, r.text
    r = svc_hub.service("POST", "api/switches", token, json={"profile": "gpu"})
    assert r.status_code == 202, r.text
    rec = svc_hub.wait_switch(r.json()["id"], svc_hub.user_token(user))
    assert rec["state"] == "succeeded", rec


def _server_pid(hub, user):
    """The pid of ``user``'s server of this hub (other hubs may run an ``user`` too)."""
    api_url = f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub.env['DS_COMPUTE_HUB_PORT']}/".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"jupyterhub-singleuser" in cmd and f"JUPYTERHUB_USER={user}\0".encode() in env and api_url in env:
            return int(entry)
    return None


def test_refusals_leave_the_server_running(svc_hub):
    alice = svc_hub.create_user("sw-owner")
    bob = svc_hub.create_user("sw-other")
    start_server(svc_hub, alice, "small")
    bob_token = svc_hub.user_token(bob)
    alice_token = svc_hub.user_token(alice)
    # not the owner
    r = svc_hub.service("POST", "api/switches", bob_token, json={"user": alice, "profile": "gpu"})
    assert r.status_code == 403, r.text
    # unknown tier
    r = svc_hub.service("POST", "api/switches", alice_token, json={"profile": "nope"})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "profile" and "nope" in r.json()["message"]
    # no token
    r = requests.post(f"{svc_hub.url}/services/ds-compute/api/switches", json={"profile": "gpu"}, timeout=10)
    assert r.status_code == 403
    # bob has no server
    r = svc_hub.service("POST", "api/switches", bob_token, json={"profile": "gpu"})
    assert r.status_code in (404, 409), r.text
    assert svc_hub.server_model(alice)["ready"]
    assert svc_hub.server_model(alice)["user_options"]["profile"] == "small"


def test_concurrent_switches_one_409(svc_hub):
    user = svc_hub.create_user("sw-race")
    start_server(svc_hub, user, "small")
    token = svc_hub.user_token(user)
    results = []
    barrier = threading.Barrier(2)

    def go():
        barrier.wait()
        results.append(svc_hub.service("POST", "api/switches", token, json={"profile": "gpu"}))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(r.status_code for r in results)
    assert codes == [202, 409], [r.text for r in results]
    accepted = next(r for r in results if r.status_code == 202).json()
    refused = next(r for r in results if r.status_code == 409).json()
    assert refused["message"]
    if "id" in refused:
        assert refused["id"] == accepted["id"]
    assert svc_hub.wait_switch(accepted["id"], token)["state"] == "succeeded"


def test_failed_start_rolls_back(svc_hub):
    user = svc_hub.create_user("sw-broken")
    start_server(svc_hub, user, "small")
    token = svc_hub.user_token(user)
    r = svc_hub.service("POST", "api/switches", token, json={"profile": "broken"})
    assert r.status_code == 202, r.text
    rec = svc_hub.wait_switch(r.json()["id"], token)
    assert rec["state"] == "rolled_back", rec
    assert "Spawn failed" in rec["error"], rec["error"]
    assert "previous tier small" in rec["error"]
    steps = {s["name"]: s for s in rec["steps"]}
    assert steps["rollback"]["status"] == "done"
    model = svc_hub.server_model(user)
    assert model["ready"] and model["user_options"]["profile"] == "small"


def test_progress_page_through_oauth(svc_hub):
    user = svc_hub.create_user("sw-browser")
    other = svc_hub.create_user("sw-snoop")
    start_server(svc_hub, user, "small")
    token = svc_hub.user_token(user)
    r = svc_hub.service(
        "POST", "api/switches", token, json={"profile": "gpu", "next": "https://evil.example/x"}
    )
    assert r.status_code == 202, r.text
    progress_url = svc_hub.url + r.json()["progress_url"]
    s = _browser(svc_hub, user)
    page = s.get(progress_url, timeout=30)
    assert page.status_code == 200, page.text[:500]
    assert "Switching" in page.text and "components/bootstrap/dist/css/bootstrap.min.css" in page.text
    # no open redirect: the page goes back to the user's own Lab
    assert f'data-next-url="/user/{user}/lab"' in page.text
    # the page's own polling call works with the OAuth cookie
    rec = s.get(f"{svc_hub.url}/services/ds-compute/api/switches/{r.json()['id']}", timeout=10)
    assert rec.status_code == 200 and rec.json()["user"] == user
    # another user sees 403
    snoop = _browser(svc_hub, other)
    assert snoop.get(progress_url, timeout=30).status_code == 403
    assert svc_hub.wait_switch(r.json()["id"], token)["state"] == "succeeded"


def _browser(hub, user):
    s = requests.Session()
    s.get(f"{hub.url}/hub/login", timeout=10)
    r = s.post(
        f"{hub.url}/hub/login",
        data={"username": user, "password": "any", "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 302, r.text[:300]
    return s


def test_service_killed_mid_switch_reconciles(svc_hub):
    user = svc_hub.create_user("sw-killed")
    start_server(svc_hub, user, "small")
    token = svc_hub.user_token(user)
    pid = svc_hub.service_pid()
    assert pid
    r = svc_hub.service("POST", "api/switches", token, json={"profile": "gpu"})
    assert r.status_code == 202, r.text
    switch_id = r.json()["id"]
    # kill it as soon as the stop is under way
    wait_for(
        lambda: (lambda m: m is None or m["pending"] == "stop" or m["stopped"])(svc_hub.server_model(user)),
        30,
        interval=0.02,
        message="stop under way",
    )
    os.kill(pid, signal.SIGKILL)
    # the hub notices the exit at its next poll and starts the service again
    new_pid = wait_for(
        lambda: (p := svc_hub.service_pid()) and p != pid and svc_hub.service_health() and p,
        120,
        interval=0.5,
        message="service restarted by the hub",
    )
    assert new_pid != pid
    rec = svc_hub.wait_switch(switch_id, token)
    assert rec["state"] == "succeeded", rec
    model = svc_hub.server_model(user)
    assert model["ready"] and model["user_options"]["profile"] == "gpu"
    # the new service process picked the switch up (the killed one cannot have finished it)
    assert f"Reconciling switch {switch_id}" in svc_hub.log_path.read_text(errors="replace")
    assert all(s["status"] == "done" for s in rec["steps"]), rec["steps"]
