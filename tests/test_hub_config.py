"""The embedded default as an operator meets it: a broken profile_list stops
the hub at start with a message naming the tier and field; GPU devices are
handed out from the configured list; spawn progress names its steps; the
service is in the hub's Services menu."""

import json
import subprocess
import threading

import pytest
import requests
from conftest import hub_workdir, server_processes
from hubtest import HUB_CONFIG, VENV_BIN, Hub, wait_for

pytestmark = pytest.mark.hub

HUB_ENV = {"DS_COMPUTE_GPU_DEVICES": "0,1"}


@pytest.mark.parametrize(
    "tiers, expected",
    [
        ('[{"display_name": "Small", "cpu": 1, "mem": "1G", "hourly_cost": -1}]', ["Small", "hourly_cost"]),
        (
            '[{"display_name": "A", "slug": "a", "cpu": 1, "mem": "1G", "hourly_cost": 1},'
            ' {"display_name": "B", "slug": "a", "cpu": 1, "mem": "1G", "hourly_cost": 1}]',
            ["'a'", "slug"],
        ),
        ('[{"display_name": "Small", "cpu": 1, "mem": "1G", "hourly_cost": 1, "colour": "red"}]', ["colour"]),
        ("[]", ["tier"]),
    ],
)
def test_broken_profile_list_stops_the_hub(tiers, expected):
    hub = Hub(hub_workdir("broken-config"), extra_config=f"c.DSComputeSpawner.profile_list = {tiers}\n")
    hub.write_config()
    proc = subprocess.run(
        [str(VENV_BIN / "jupyterhub"), "-f", str(HUB_CONFIG)],
        env=hub.env,
        cwd=hub.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "bad c.DSComputeSpawner.profile_list" in output
    for word in expected:
        assert word in output, output[-2000:]
    assert "Traceback" not in output


def test_progress_names_its_steps(hub):
    user = hub.create_user("progress")
    # the POST waits up to slow_spawn_timeout; follow the progress meanwhile
    poster = threading.Thread(target=hub.spawn, args=(user, {"profile": "gpu"}), kwargs={"wait": False})
    poster.start()
    wait_for(
        lambda: (hub.server_model(user) or {}).get("pending") == "spawn",
        timeout=30,
        interval=0.02,
        message="spawn pending",
    )
    messages = []
    with requests.get(
        f"{hub.url}/hub/api/users/{user}/server/progress",
        headers={"Authorization": f"token {hub.admin_token}"},
        stream=True,
        timeout=60,
    ) as events:
        for line in events.iter_lines(decode_unicode=True):
            if line.startswith("data:"):
                event = json.loads(line[5:])
                messages.append(event.get("message", ""))
                if event.get("ready") or event.get("failed"):
                    break
    poster.join()
    hub.wait_ready(user)
    text = "\n".join(messages)
    for step in ("Preparing volume", "Attaching volume", "Starting the server", "Waiting for the server"):
        assert step in text, text
    hub.stop_server(user)


def test_gpu_tier_gets_its_devices(hub):
    user = hub.create_user("gpuuser")
    hub.spawn(user, {"profile": "gpu"})
    (_, env), *_ = server_processes(user).items()
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    hub.stop_server(user)
    hub.spawn(user, {"profile": "small"})
    (_, env), *_ = server_processes(user).items()
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    hub.stop_server(user)


def test_service_in_services_menu_and_login_banner(hub):
    s = hub.login("menuuser")
    home = s.get(f"{hub.url}/hub/home")
    assert home.status_code == 200
    assert "/services/ds-compute/" in home.text
    # the login the embedded default prints works, and is printed
    log = hub.log_path.read_text()
    assert f"password: {hub.password}" in log
