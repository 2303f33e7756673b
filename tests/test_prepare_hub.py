"""Make before break on a real hub (local backend): the target machine is
prepared while the old server keeps serving, the cut-over takes it, and a
preparation that fails or times out leaves the old server untouched and
nothing behind."""

import os
import signal
import threading
import time
from datetime import datetime

import pytest
from conftest import TEST_TIERS_CONFIG, _current_hub, hub_workdir, process_uid, server_processes, system_uid
from hubtest import Hub, wait_for
from kernelclient import execute, start_kernel
from test_switch_hub import main_server_pid, request_switch, switch_record, tier_of, wait_switch

pytestmark = pytest.mark.hub

LAUNCHER = b"jupyter_ds_compute.backends.launcher"


def launchers(user):
    """pids of prepared launchers (and servers they became) of ``user``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if LAUNCHER in cmdline and any(e.startswith(f"DS_COMPUTE_SERVER_KEY={user}/".encode()) for e in env):
            found.append(int(entry))
    return found


def steps_of(record):
    return {s["name"]: s for s in record["steps"]}


def test_kernel_keeps_answering_while_the_target_is_prepared(hub):
    user = hub.create_user("mbb")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    kernel = start_kernel(hub, user, token)
    assert execute(hub, user, token, kernel, "print(6 * 7)")[0].strip() == "42"
    old_pid = main_server_pid(user)

    answers, stop = [], threading.Event()

    def keep_asking():
        while not stop.is_set():
            try:
                out, err = execute(hub, user, token, kernel, "print('alive')", timeout=5)
                if err is None and out.strip() == "alive":
                    answers.append(time.time())
            except Exception:
                pass  # the old server is gone once the cut-over begins
            time.sleep(0.02)

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    try:
        time.sleep(0.3)
        r = request_switch(hub, user, token, "gpu")
        assert r.status_code == 202, r.text
        record = wait_switch(hub, token, r.json()["id"])
    finally:
        stop.set()
        asker.join(10)
    assert record["state"] == "succeeded", record
    prepare = steps_of(record)["prepare"]
    assert prepare["status"] == "done" and prepare["message"].startswith("ready"), prepare
    assert steps_of(record)["stop"]["started"] >= prepare["finished"]
    started = datetime.fromisoformat(prepare["started"].replace("Z", "+00:00")).timestamp()
    finished = datetime.fromisoformat(prepare["finished"].replace("Z", "+00:00")).timestamp()
    during = [t for t in answers if started <= t <= finished + 0.05]
    assert during, f"no kernel answer while preparing ({started:.2f}..{finished:.2f}): {answers[-5:]}"
    # the server on the new tier is the prepared launcher, and it is the only one
    assert tier_of(hub, user) == "gpu"
    new_pid = main_server_pid(user)
    assert new_pid != old_pid
    assert launchers(user) == [new_pid]
    # as the user's own account (the embedded default: jdc-<name>), never root
    assert process_uid(new_pid) == system_uid(user) != 0
    status = hub.server_api(user, "ds-compute/api/status", token).json()
    assert status["tier"]["slug"] == "gpu"
    # /proc/<pid>/environ (leftover and volume checks, ps e) shows the server's real
    # environment, not the launcher's first one
    env = server_processes(user)[new_pid]
    assert env["DS_COMPUTE_TIER"] == "gpu" and env.get("JUPYTERHUB_API_TOKEN")
    assert float(env["DS_COMPUTE_STARTED_AT"]) == pytest.approx(status["started_at"])
    assert not [k for k in env if k.startswith("DS_COMPUTE_ENV_RESERVE")]
    # the next switch prepares again; the estimate now has a sample
    r = request_switch(hub, user, token, "small")
    record = wait_switch(hub, token, r.json()["id"])
    assert record["state"] == "succeeded", record
    again = switch_record(hub, token, record["id"])
    assert again["phase"] == "done"
    assert tier_of(hub, user) == "small"
    assert len(launchers(user)) == 1
    hub.stop_server(user)
    wait_for(lambda: launchers(user) == [], timeout=15, message="no launcher left")


def test_failed_cut_over_after_prepare_rolls_back_and_releases(hub):
    """A tier whose command is not a Python script cannot be prepared: in order,
    then the failed start rolls back; no launcher is left."""
    user = hub.create_user("mbbroll")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    r = request_switch(hub, user, token, "broken")
    record = wait_switch(hub, token, r.json()["id"])
    assert record["state"] == "rolled_back", record
    assert "not a Python script" in steps_of(record)["prepare"]["message"]
    assert tier_of(hub, user) == "small"
    assert len(launchers(user)) <= 1  # the rolled-back server may be a launcher of a later switch: none here
    hub.stop_server(user)


SLOW_MODULE = "import time\ntime.sleep(60)\n"


@pytest.fixture(scope="module")
def slow_hub():
    """A hub whose launchers take a minute to preload (a slow import), and whose
    switches wait at most 8 s for it."""
    workdir = hub_workdir("prepare-slow")
    mod_dir = os.path.join(workdir, "slowmods")
    os.makedirs(mod_dir)
    os.chmod(mod_dir, 0o755)
    with open(os.path.join(mod_dir, "ds_compute_slow_preload.py"), "w") as f:
        f.write(SLOW_MODULE)
    extra = TEST_TIERS_CONFIG + (
        'c.LocalBackend.launcher_preload = ["jupyterhub.singleuser", "ds_compute_slow_preload"]\n'
        f"c.Spawner.environment.update({{'PYTHONPATH': {mod_dir!r}}})\n"
        "c.DSComputeService.prepare_timeout = 8\n"
    )
    hub = Hub(workdir, extra_config=extra)
    saved = dict(_current_hub)
    _current_hub["api_port"] = hub.env["DS_COMPUTE_HUB_PORT"]
    hub.start()
    yield hub
    hub.stop()
    _current_hub.clear()
    _current_hub.update(saved)


def test_launcher_killed_while_preparing_leaves_the_old_server(slow_hub):
    hub = slow_hub
    user = hub.create_user("mbbkill")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    old_pid = main_server_pid(user)
    r = request_switch(hub, user, token, "gpu")
    assert r.status_code == 202, r.text
    switch_id = r.json()["id"]
    (launcher,) = wait_for(lambda: launchers(user), timeout=30, message="a launcher preparing")
    record = switch_record(hub, token, switch_id)
    assert record["phase"] == "preparing" and steps_of(record)["prepare"]["status"] == "running", record
    # the old server serves meanwhile
    assert hub.server_api(user, "ds-compute/api/status", token).status_code == 200
    os.kill(launcher, signal.SIGKILL)
    record = wait_switch(hub, token, switch_id, timeout=60)
    assert record["state"] == "failed", record
    assert "Preparing the gpu machine failed" in record["error"], record["error"]
    assert "ended before it was ready" in record["error"] and "not touched" in record["error"]
    assert steps_of(record)["stop"]["status"] == "skipped"
    assert tier_of(hub, user) == "small"
    assert main_server_pid(user) == old_pid
    assert hub.server_api(user, "ds-compute/api/status", token).json()["tier"]["slug"] == "small"
    assert launchers(user) == []


def test_prepare_timeout_releases_the_launcher(slow_hub):
    hub = slow_hub
    user = hub.create_user("mbbslow")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    old_pid = main_server_pid(user)
    r = request_switch(hub, user, token, "manycore")
    switch_id = r.json()["id"]
    wait_for(lambda: launchers(user), timeout=30, message="a launcher preparing")
    record = wait_switch(hub, token, switch_id, timeout=60)
    assert record["state"] == "failed", record
    assert "not ready within 8s" in record["error"] and "not touched" in record["error"], record["error"]
    # released: the launcher is ended, nothing else changed
    wait_for(lambda: launchers(user) == [], timeout=15, message="the unused launcher ended")
    assert main_server_pid(user) == old_pid and tier_of(hub, user) == "small"


def test_held_cut_over_waits_for_the_go(hub):
    """Lab's order: prepared, then the cut-over waits until the requester saved and said go."""
    user = hub.create_user("mbbhold")
    other = hub.create_user("mbbother")
    token, other_token = hub.user_token(user), hub.user_token(other)
    hub.spawn(user, {"profile": "small"})
    api = "api/switches"
    r = hub.service("POST", api, token, json={"profile": "gpu", "hold_cutover": "yes"})
    assert r.status_code == 400 and r.json()["field"] == "hold_cutover", r.text
    r = hub.service("POST", api, token, json={"profile": "gpu", "hold_cutover": True})
    assert r.status_code == 202, r.text
    switch_id = r.json()["id"]
    record = wait_for(
        lambda: (lambda rec: rec if rec["phase"] == "ready" else None)(switch_record(hub, token, switch_id)),
        timeout=30,
        message="prepared and held",
    )
    assert record["cutover"] == {"held": True, "waiting": True, "timeout": 15.0}
    assert tier_of(hub, user) == "small"  # still serving
    assert hub.service("POST", f"{api}/{switch_id}/go", other_token).status_code == 403
    assert hub.service("POST", f"{api}/{switch_id}/go", token).status_code == 204
    record = wait_switch(hub, token, switch_id)
    assert record["state"] == "succeeded", record
    assert "saved in" in steps_of(record)["prepare"]["message"]
    assert hub.service("POST", f"{api}/{switch_id}/go", token).status_code == 409
    assert tier_of(hub, user) == "gpu"
    hub.stop_server(user)
