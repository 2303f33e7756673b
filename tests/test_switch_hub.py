"""The switch end to end on the embedded default: Lab's path (server
extension → hub service → hub API → DSComputeSpawner) and the magic's path
(a real kernel running ``%ds_compute``), with rollback and reconcile."""

import os
import signal
import threading

import pytest
import requests
from conftest import server_processes
from hubtest import wait_for
from kernelclient import execute, start_kernel

pytestmark = pytest.mark.hub

FINAL = ("succeeded", "rolled_back", "failed")


def tier_of(hub, user):
    model = hub.server_model(user)
    return model and model.get("ready") and model["user_options"].get("profile")


def main_server_pid(user):
    for pid in server_processes(user):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"jupyterhub-singleuser" in f.read():
                    return pid
        except OSError:
            continue
    return None


def request_switch(hub, user, token, profile, **extra):
    return hub.server_api(
        user, "ds-compute/api/switch", token, method="POST", json=dict(extra, profile=profile)
    )


def switch_record(hub, token, switch_id):
    r = requests.get(
        f"{hub.url}/services/ds-compute/api/switches/{switch_id}",
        headers={"Authorization": f"token {token}"},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()


def wait_switch(hub, token, switch_id, timeout=180):
    return wait_for(
        lambda: (lambda rec: rec if rec["state"] in FINAL else None)(switch_record(hub, token, switch_id)),
        timeout=timeout,
        interval=0.3,
        message=f"switch {switch_id} to finish",
    )


def write_file(hub, user, token, name, content):
    r = hub.server_api(
        user, f"api/contents/{name}", token, method="PUT",
        json={"type": "file", "format": "text", "content": content},
    )  # fmt: skip
    assert r.status_code in (200, 201), r.text


def read_file(hub, user, token, name):
    r = hub.server_api(user, f"api/contents/{name}", token)
    assert r.status_code == 200, r.text
    return r.json()["content"]


def test_switch_round_trip_through_server_extension(hub):
    user = hub.create_user("switcher")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    write_file(hub, user, token, "model.txt", "trained weights v1")
    status = hub.server_api(user, "ds-compute/api/status", token).json()
    assert status["tier"]["slug"] == "small"
    for target in ("gpu", "manycore", "small"):
        r = request_switch(hub, user, token, target, next=f"/user/{user}/lab/tree/model.txt")
        assert r.status_code == 202, r.text
        answer = r.json()
        assert answer["progress_url"].startswith("/services/ds-compute/switches/")
        record = wait_switch(hub, token, answer["id"])
        assert record["state"] == "succeeded", record
        assert record["from_profile"] != target and record["to_profile"] == target
        assert [s["status"] for s in record["steps"]].count("failed") == 0
        assert tier_of(hub, user) == target
        # the new server sees its tier, and the file followed
        (_, env), *_ = server_processes(user).items()
        assert env["DS_COMPUTE_TIER"] == target
        status = hub.server_api(user, "ds-compute/api/status", token).json()
        assert status["tier"]["slug"] == target
        assert read_file(hub, user, token, "model.txt") == "trained weights v1"
    hub.stop_server(user)


def test_switch_through_the_magic_in_a_real_kernel(hub):
    user = hub.create_user("magician")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    kernel = start_kernel(hub, user, token)
    # autoloaded: no %load_ext needed in kernels the hub starts
    out, err = execute(hub, user, token, kernel, "%ds_compute status")
    assert err is None, err
    assert "Small" in out
    out, err = execute(hub, user, token, kernel, "%ds_compute switch gpu --yes")
    assert err is None, err
    assert "Switching to GPU" in out
    wait_for(lambda: tier_of(hub, user) == "gpu", timeout=180, interval=0.3, message="server on gpu")
    hub.stop_server(user)


def test_unknown_tier_is_400_and_nothing_stops(hub):
    user = hub.create_user("typo")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    # the server process itself (short-lived helpers of the server may come and go)
    server_pid = main_server_pid(user)
    r = request_switch(hub, user, token, "gpuu")
    assert r.status_code == 400, r.text
    assert "profile" in r.json()["message"]
    assert tier_of(hub, user) == "small"
    assert main_server_pid(user) == server_pid
    hub.stop_server(user)


def test_non_owner_and_shared_user_are_refused(hub):
    owner = hub.create_user("owner")
    stranger = hub.create_user("stranger")
    friend = hub.create_user("friend")
    hub.spawn(owner, {"profile": "small"})
    # a stranger's token does not even reach the owner's server
    r = request_switch(hub, owner, hub.user_token(stranger), "gpu")
    assert r.status_code == 403, r.text
    # a user the server is shared with reaches it, but may not switch it
    share = hub.api("POST", f"/shares/{owner}/", json={"user": friend})
    assert share.status_code in (200, 201), share.text
    friend_token = hub.user_token(friend)
    assert hub.server_api(owner, "api/status", friend_token).status_code == 200
    r = request_switch(hub, owner, friend_token, "gpu")
    assert r.status_code == 403, r.text
    # nor through the service directly
    r = requests.post(
        f"{hub.url}/services/ds-compute/api/switches",
        json={"user": owner, "server_name": "", "profile": "gpu"},
        headers={"Authorization": f"token {friend_token}"},
        timeout=10,
    )
    assert r.status_code == 403, r.text
    assert tier_of(hub, owner) == "small"
    hub.stop_server(owner)


def test_two_concurrent_switches_one_409(hub):
    user = hub.create_user("racer")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    answers = []
    barrier = threading.Barrier(2)

    def go(profile):
        barrier.wait()
        answers.append(request_switch(hub, user, token, profile))

    threads = [threading.Thread(target=go, args=(p,)) for p in ("gpu", "manycore")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in answers)
    assert codes == [202, 409], [r.text for r in answers]
    accepted = next(r for r in answers if r.status_code == 202).json()
    record = wait_switch(hub, token, accepted["id"])
    assert record["state"] == "succeeded"
    hub.stop_server(user)


def test_failed_start_rolls_back_to_previous_tier(hub):
    user = hub.create_user("unlucky")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    write_file(hub, user, token, "keep.txt", "still here")
    r = request_switch(hub, user, token, "broken")
    assert r.status_code == 202, r.text
    record = wait_switch(hub, token, r.json()["id"])
    assert record["state"] == "rolled_back", record
    assert record["error"], record
    assert tier_of(hub, user) == "small"
    assert read_file(hub, user, token, "keep.txt") == "still here"
    hub.stop_server(user)


def _service_pid(hub):
    # the service of this hub: it calls this hub's API port
    marker = f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub.env['DS_COMPUTE_HUB_PORT']}/".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if any(e.startswith(marker) for e in env) and b"jupyter_ds_compute.service" in cmdline:
            return int(pid)
    return None


@pytest.mark.slow
def test_service_killed_mid_switch_is_reconciled(hub):
    user = hub.create_user("phoenix")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    pid = _service_pid(hub)
    assert pid, "service process not found"
    r = request_switch(hub, user, token, "gpu")
    assert r.status_code == 202, r.text
    switch_id = r.json()["id"]
    os.kill(pid, signal.SIGKILL)
    # the hub restarts its managed service (at its next poll); the service
    # picks the switch up again and finishes it
    wait_for(
        lambda: _service_pid(hub) not in (None, pid), timeout=120, interval=1, message="service restarted"
    )
    record = wait_switch(hub, token, switch_id, timeout=240)
    assert record["state"] in ("succeeded", "rolled_back"), record
    expected = "gpu" if record["state"] == "succeeded" else "small"
    wait_for(lambda: tier_of(hub, user) == expected, timeout=120, message=f"server on {expected}")
    hub.stop_server(user)
