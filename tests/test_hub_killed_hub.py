"""Issue 12 §4: the hub SIGKILLed at each step of a switch, then started again.

Only the hub process is killed (its managed ds-compute service and the proxy
survive it, as they do in production); the harness then starts a new hub.
After that, whatever step the switch was at:

- the switch record reaches a final state;
- exactly one server process runs for the user, on the tier the record says
  (its ``DS_COMPUTE_TIER`` and the hub's ``user_options``);
- the volume is held once (one live server carries it, one attachment record);
- the old hub's service is gone: one service process for this hub;
- the service's pages answer through OAuth (no 500 from ``oauth_callback``).
"""

import json
import os
import signal
import time

import pytest
import requests
from conftest import TEST_TIERS_CONFIG, _current_hub, hub_workdir, server_processes
from hubtest import Hub, wait_for
from test_switch_hub import request_switch, switch_record, tier_of, wait_switch

pytestmark = [pytest.mark.hub, pytest.mark.slow]


def kill_hub_only(hub):
    """SIGKILL the hub process alone (``Hub.stop`` would end its whole process group)."""
    os.kill(hub.proc.pid, signal.SIGKILL)
    hub.proc.wait(10)
    hub.proc = None


def _cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def service_processes(hub):
    """pids of ds-compute service processes talking to this hub's API port."""
    marker = f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub.env['DS_COMPUTE_HUB_PORT']}/".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            cmdline = _cmdline(pid)
            with open(f"/proc/{pid}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            continue
        if not zombie and b"jupyter_ds_compute.service" in cmdline and any(e.startswith(marker) for e in env):
            found.append(int(pid))
    return sorted(found)


def main_servers(user):
    """``{pid: env}`` of the user's jupyterhub-singleuser processes (not kernels or helpers)."""
    out = {}
    for pid, env in server_processes(user).items():
        try:
            if b"jupyterhub-singleuser" in _cmdline(pid):
                out[pid] = env
        except OSError:
            continue
    return out


def running_step(record):
    for s in record["steps"]:
        if s["status"] == "running":
            return s["name"]
    return None


ORDER = ["stop", "patch-options", "start", "wait-ready", "verify"]


def kill_moment(hub, token, switch_id, user, step, target):
    """Wait until ``step`` runs (for ``start``: until the new server's process
    exists, so that the hub dies holding a half-started server); return the
    step that was running when the moment came (a later one if ``step`` was
    too short to be seen)."""

    def reached():
        rec = switch_record(hub, token, switch_id)
        current = running_step(rec)
        if current is None:
            if rec["state"] in ("succeeded", "rolled_back", "failed"):
                raise AssertionError(f"the switch finished before step {step}: {rec}")
            return None
        if ORDER.index(current) < ORDER.index(step):
            return None
        if current == "start" and step == "start":
            if not any(env.get("DS_COMPUTE_TIER") == target for env in main_servers(user).values()):
                return None
        return current

    return wait_for(reached, timeout=120, interval=0.02, message=f"step {step} of switch {switch_id}")


STEPS = ["stop", "patch-options", "start", "wait-ready"]


@pytest.fixture(scope="module")
def slow_spawn_hub():
    """A hub whose start POST answers 202 at once (``slow_spawn_timeout = 0``):
    the service then waits for the server in its own ``wait-ready`` step, which
    lasts the whole server start instead of the few ms it takes when the POST
    already waited (and so can be caught reliably on a loaded machine)."""
    hub = Hub(
        hub_workdir("killed-slow-spawn"),
        extra_config=TEST_TIERS_CONFIG + "c.JupyterHub.slow_spawn_timeout = 0\n",
    )
    saved = dict(_current_hub)
    _current_hub["api_port"] = hub.env["DS_COMPUTE_HUB_PORT"]  # server_processes() looks at this hub
    hub.start()
    yield hub
    hub.stop()
    _current_hub.clear()
    _current_hub.update(saved)


@pytest.mark.parametrize("step", STEPS)
def test_hub_killed_mid_switch_leaves_one_server(request, step):
    hub = request.getfixturevalue("slow_spawn_hub" if step == "wait-ready" else "hub")
    user = hub.create_user(f"killed-{step}")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    (old_service,) = service_processes(hub)
    target = "gpu"
    r = request_switch(hub, user, token, target)
    assert r.status_code == 202, r.text
    switch_id = r.json()["id"]
    killed_at = kill_moment(hub, token, switch_id, user, step, target)
    kill_hub_only(hub)
    print(f"hub killed during step {killed_at} (asked for {step})")
    assert ORDER.index(killed_at) >= ORDER.index(step)
    if step == "start":
        # the case of the issue: a server process the new hub never hears of
        assert killed_at == "start"
        assert any(env.get("DS_COMPUTE_TIER") == target for env in main_servers(user).values())
    t0 = time.monotonic()
    hub.start()

    record = wait_switch(hub, token, switch_id, timeout=240)
    assert record["state"] in ("succeeded", "rolled_back"), record
    expected = target if record["state"] == "succeeded" else "small"
    print(f"switch {record['state']} {time.monotonic() - t0:.1f}s after the restart: {record['error']}")
    model = hub.server_model(user)
    assert model and model["ready"], model
    assert model["user_options"].get("profile") == expected, model
    assert tier_of(hub, user) == expected

    # exactly one server process, on the recorded tier
    servers = main_servers(user)
    assert len(servers) == 1, {pid: env.get("DS_COMPUTE_SERVER_KEY") for pid, env in servers.items()}
    (env,) = servers.values()
    assert env["DS_COMPUTE_TIER"] == expected
    # that server is the one the hub tracks (its own marker), no other process carries the user's key
    keys = {e.get("DS_COMPUTE_SERVER_KEY") for e in server_processes(user).values()}
    assert keys == {env["DS_COMPUTE_SERVER_KEY"]}, keys

    # the volume is held once: one live server carries it, and the record names that server
    volume_id = env["DS_COMPUTE_VOLUME_ID"]
    holders = [p for p, e in server_processes("").items() if e.get("DS_COMPUTE_VOLUME_ID") == volume_id]
    assert set(holders) <= set(server_processes(user)), holders
    record_file = hub.data / "volumes" / ".attachments" / f"{volume_id}.json"
    assert json.loads(record_file.read_text())["server"] in (user, f"{user}:")  # the spawner's log name

    # the old hub's service is gone; one service runs for the new hub
    services = wait_for(
        lambda: (lambda s: s if len(s) == 1 else None)(service_processes(hub)),
        timeout=30,
        interval=0.5,
        message="exactly one ds-compute service",
    )
    assert services != [old_service], services

    # the service's pages answer through the hub's OAuth (oauth_callback is no 500)
    session = hub.login(user)
    page = session.get(f"{hub.url}/services/ds-compute/switches/{switch_id}", timeout=30)
    assert page.status_code == 200, (page.status_code, page.url, page.text[:300])
    assert all(h.status_code < 500 for h in page.history), [(h.status_code, h.url) for h in page.history]
    assert any(
        "oauth_callback" in h.headers.get("Location", "") or "oauth_callback" in h.url for h in page.history
    )
    api = requests.get(
        f"{hub.url}/services/ds-compute/api/switches/{switch_id}",
        headers={"Authorization": f"token {token}"},
        timeout=10,
    )
    assert api.status_code == 200 and api.json()["state"] == record["state"]
    hub.stop_server(user)
