"""Operators bring their own config: a file layered over ours with
``load_subconfig``, ``jupyterhub --port``, a config of their own that calls
``configure(c)``, two hubs on one machine, and settings that must stop the
hub at start with one clear line."""

import os
import shutil
import socket
import subprocess
import textwrap

import pytest
import requests
from conftest import hub_workdir, server_processes
from hubtest import HUB_CONFIG, REPO, VENV_BIN, Hub, free_port
from test_switch_hub import request_switch, wait_switch

pytestmark = pytest.mark.hub

OPERATOR_TIERS = repr(
    [
        {"display_name": "Tiny", "slug": "tiny", "default": True, "cpu": 1, "mem": "1G", "hourly_cost": 0.01},
        {"display_name": "Big", "slug": "big", "cpu": 2, "mem": "2G", "hourly_cost": 0.2},
    ]
)


def server_env(user):
    envs = [env for env in server_processes(user).values() if env.get("DS_COMPUTE_SERVICE_URL")]
    assert envs, f"no server process of {user}"
    return envs[0]


def switch_and_wait(hub, user, token, profile):
    r = request_switch(hub, user, token, profile)
    assert r.status_code == 202, r.text
    return wait_switch(hub, token, r.json()["id"])


def start(hub):
    try:
        hub.start()
    except Exception:
        hub.stop()
        raise
    return hub


def test_own_file_layered_with_load_subconfig():
    """An operator's file loads ours, then moves the hub under /ops/ and
    brings its own tiers: servers reach the service at the real URL and the
    service validates switches against the operator's tiers."""
    workdir = hub_workdir("layered")
    port = free_port()
    operator = os.path.join(workdir, "operator_config.py")
    with open(operator, "w") as f:
        f.write(
            textwrap.dedent(f"""
            c = get_config()  # noqa
            load_subconfig({str(HUB_CONFIG)!r})
            # the operator's own lines, after ours
            c.JupyterHub.bind_url = "http://127.0.0.1:{port}/ops/"
            c.DSComputeSpawner.profile_list = {OPERATOR_TIERS}
            """)
        )
    hub = Hub(workdir, config_file=operator, base_path="/ops")
    hub.port, hub.url = port, f"http://127.0.0.1:{port}/ops"
    start(hub)
    try:
        user = hub.create_user("layered")
        token = hub.user_token(user)
        hub.spawn(user, {"profile": "tiny"})
        assert (
            server_env(user)["DS_COMPUTE_SERVICE_URL"] == f"http://127.0.0.1:{port}/ops/services/ds-compute/"
        )
        tiers = hub.server_api(user, "ds-compute/api/tiers", token)
        assert tiers.status_code == 200, tiers.text
        assert [t["slug"] for t in tiers.json()["tiers"]] == ["tiny", "big"]
        # the embedded default's tier is not the operator's: refused, nothing stops
        r = request_switch(hub, user, token, "gpu")
        assert r.status_code == 400, r.text
        assert "gpu" in r.text
        record = switch_and_wait(hub, user, token, "big")
        assert record["state"] == "succeeded", record
        assert hub.server_model(user)["user_options"]["profile"] == "big"
    finally:
        hub.stop()


def test_port_from_the_command_line():
    """``jupyterhub -f jupyterhub_config.py --port N``: the proxy listens on
    N and switches go to the service through it."""
    port = free_port()
    hub = Hub(hub_workdir("cli-port"), args=["--port", str(port)])
    hub.env.pop("DS_COMPUTE_BIND_URL")
    hub.port, hub.url = port, f"http://127.0.0.1:{port}"
    start(hub)
    try:
        assert f"starting at http://127.0.0.1:{port}/" in hub.log_tail(400)
        user = hub.create_user("porter")
        token = hub.user_token(user)
        hub.spawn(user, {"profile": "small"})
        assert server_env(user)["DS_COMPUTE_SERVICE_URL"] == f"http://127.0.0.1:{port}/services/ds-compute/"
        record = switch_and_wait(hub, user, token, "gpu")
        assert record["state"] == "succeeded", record
    finally:
        hub.stop()


def test_own_config_with_configure_only():
    """The README's own-config example: spawner, tiers, ``configure(c)``; no
    line of the embedded default. The proxy is found on $PATH."""
    workdir = hub_workdir("own-config")
    own = os.path.join(workdir, "own_config.py")
    hub = Hub(workdir, config_file=own)
    with open(own, "w") as f:
        f.write(
            textwrap.dedent(f"""
            import os
            from jupyter_ds_compute.hubconfig import configure

            c = get_config()  # noqa
            load_subconfig(os.path.join(os.path.dirname(__file__), "test_config.py"))  # the tests' admin token
            c.JupyterHub.bind_url = "http://127.0.0.1:{hub.port}"
            c.JupyterHub.hub_port = {free_port()}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
            c.JupyterHub.db_url = "sqlite:///" + os.path.join(os.path.dirname(__file__), "hub.sqlite")
            c.JupyterHub.cookie_secret_file = os.path.join(os.path.dirname(__file__), "cookie_secret")
            c.JupyterHub.authenticator_class = "shared-password"
            c.SharedPasswordAuthenticator.user_password = os.environ["DS_COMPUTE_PASSWORD"]
            c.Authenticator.allow_all = True
            c.JupyterHub.spawner_class = "ds-compute"
            c.DSComputeSpawner.profile_list = {OPERATOR_TIERS}
            c.LocalVolume.root = os.path.join(os.path.dirname(__file__), "volumes")
            c.LocalBackend.log_dir = os.path.join(os.path.dirname(__file__), "logs")
            c.LocalBackend.create_system_users = os.geteuid() == 0
            c.DSComputeService.data_dir = os.path.join(os.path.dirname(__file__), "service")
            configure(c)
            """)
        )
    # as an operator's machine: the proxy installed on $PATH
    hub.env["PATH"] = f"{REPO / 'node_modules' / '.bin'}{os.pathsep}{hub.env['PATH']}"
    start(hub)
    try:
        user = hub.create_user("opsuser")
        token = hub.user_token(user)
        hub.spawn(user, {"profile": "tiny"})
        record = switch_and_wait(hub, user, token, "big")
        assert record["state"] == "succeeded", record
    finally:
        hub.stop()


def test_two_hubs_on_one_machine_each_reach_their_own_service():
    """Default service ports are free ones: a second hub beside the first
    (staging beside production) answers its own users' switches."""
    hubs = []
    try:
        for name in ("first", "second"):
            hub = Hub(hub_workdir(f"two-hubs-{name}"))
            hub.env.pop("DS_COMPUTE_SERVICE_PORT")
            hubs.append(start(hub))
        for hub in hubs:
            user = hub.create_user("twin")
            token = hub.user_token(user)
            hub.spawn(user, {"profile": "small"})
            r = hub.server_api(user, "ds-compute/api/tiers", token)
            assert r.status_code == 200, r.text
    finally:
        for hub in hubs:
            hub.stop()


def run_to_exit(hub, timeout=60):
    hub.write_config()
    proc = subprocess.run(
        [str(VENV_BIN / "jupyterhub"), "-f", str(hub.config_file), *hub.args],
        env=hub.env,
        cwd=hub.workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "setting, words",
    [
        ('c.DSComputeService.idle_action = "nuke"', ["c.DSComputeService.idle_action", "nuke"]),
        ("c.DSComputeService.idle_actoin = 'stop'", ["c.DSComputeService.idle_actoin", "not a setting"]),
        ("c.DSComputeService.budgets = {'users': {'alice': -3}}", ["c.DSComputeService.budgets", "alice"]),
        ("c.DSComputeService.accounting_interval = 'often'", ["c.DSComputeService.accounting_interval"]),
    ],
)
def test_bad_service_setting_stops_the_hub_at_start(setting, words):
    hub = Hub(hub_workdir("bad-service-setting"), extra_config=setting + "\n")
    code, output = run_to_exit(hub)
    assert code != 0
    for word in words:
        assert word in output, output[-2000:]
    assert "Traceback" not in output
    assert "Log in with" not in output  # stopped before the banner


def test_taken_service_port_stops_the_hub_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hub = Hub(hub_workdir("taken-port"), env={"DS_COMPUTE_SERVICE_PORT": str(port)})
        code, output = run_to_exit(hub)
    assert code != 0
    assert f"port {port} is already in use" in output, output[-2000:]
    assert "Traceback" not in output
    assert "Log in with" not in output


def test_missing_proxy_stops_the_hub_before_the_banner():
    """A copy of the embedded config with no node_modules beside it and no
    proxy on $PATH: one line that says how to install it."""
    workdir = hub_workdir("no-proxy")
    copy = os.path.join(workdir, "jupyterhub_config.py")
    shutil.copy(HUB_CONFIG, copy)
    hub = Hub(workdir, config_file=copy)
    hub.env["PATH"] = os.pathsep.join([str(VENV_BIN), "/usr/bin", "/bin"])
    assert shutil.which("configurable-http-proxy", path=hub.env["PATH"]) is None
    code, output = run_to_exit(hub)
    assert code != 0
    lines = [
        line for line in output.splitlines() if "configurable-http-proxy" in line and "not found" in line
    ]
    assert len(lines) == 1, output[-2000:]
    assert "npm install" in lines[0]
    assert "Log in with" not in output
    assert "Traceback" not in output
    # nothing was started: no proxy or service answers
    with pytest.raises(requests.ConnectionError):
        requests.get(hub.url, timeout=2)
