"""DSComputeSpawner end to end: a real hub, proxy and single-user servers
started from the repo's jupyterhub_config.py (with the test tiers)."""

import os
import time

import pytest
from conftest import process_uid, server_processes, system_uid
from hubtest import wait_for

pytestmark = pytest.mark.hub

IS_ROOT = os.geteuid() == 0


def _main_server(user):
    """(pid, env) of the user's jupyterhub-singleuser process."""
    procs = server_processes(user)
    for pid, env in procs.items():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if "jupyterhub-singleuser" in cmdline:
            return pid, env
    raise AssertionError(f"no server process for {user}: {procs.keys()}")


def _cgroup_limits(pid):
    """Memory limit and cpu quota of the cgroups ``pid`` is in (v1 or v2)."""
    limits = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.strip().split(":", 2)
            for ctl in controllers.split(",") if controllers else [""]:
                if ctl == "memory":
                    p = f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
                    limits["mem"] = int(open(p).read())
                elif ctl == "cpu":
                    p = f"/sys/fs/cgroup/cpu{path}/cpu.cfs_quota_us"
                    limits["cpu"] = int(open(p).read()) / 100_000
                elif ctl == "" and path.startswith("/ds-compute"):
                    base = f"/sys/fs/cgroup{path}"
                    if os.path.exists(f"{base}/memory.max"):
                        limits["mem"] = int(open(f"{base}/memory.max").read())
                        limits["cpu"] = int(open(f"{base}/cpu.max").read().split()[0]) / 100_000
    return limits


@pytest.mark.parametrize(
    "slug, cpu, mem",
    [("small", 1, 2 * 2**30), ("gpu", 4, 16 * 2**30), ("manycore", os.cpu_count(), 20 * 2**30)],
)
def test_spawn_each_tier_via_api(hub, slug, cpu, mem):
    user = hub.create_user(f"tier-{slug}")
    model = hub.spawn(user, {"profile": slug})
    assert model["user_options"]["profile"] == slug
    pid, env = _main_server(user)
    assert env["DS_COMPUTE_TIER"] == slug
    assert env["HOME"] == env["DS_COMPUTE_VOLUME_PATH"]
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # no GPUs configured on this machine
    if IS_ROOT:
        assert process_uid(pid) == system_uid(user)
        limits = _cgroup_limits(pid)
        assert limits.get("mem") == mem, limits
        assert limits.get("cpu") == pytest.approx(cpu), limits
    # the server answers through the proxy
    token = hub.user_token(user)
    r = hub.server_api(user, "api/status", token)
    assert r.status_code == 200, r.text
    hub.stop_server(user)
    leftover = {pid: open(f"/proc/{pid}/cmdline").read() for pid in server_processes(user)}
    assert leftover == {}


def test_default_tier_when_no_options(hub):
    user = hub.create_user("no-options")
    model = hub.spawn(user, {})
    assert model["user_options"]["profile"] == "small"
    hub.stop_server(user)


def test_spawn_through_the_form(hub):
    user = "formuser"
    s = hub.login(user)
    page = s.get(f"{hub.url}/hub/spawn")
    assert page.status_code == 200
    # every tier the user may use, with its resources and price; not the restricted one
    for name in ("Small", "GPU", "Many-core"):
        assert name in page.text
    assert "Restricted" not in page.text
    assert "$1.20/h" in page.text or "1.20" in page.text
    assert 'name="profile"' in page.text
    r = s.post(
        f"{hub.url}/hub/spawn",
        data={"profile": "gpu", "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False,
    )
    assert r.status_code in (302, 303), r.text[:500]
    model = hub.wait_ready(user)
    assert model["user_options"]["profile"] == "gpu"
    hub.stop_server(user)


def test_form_refuses_bad_choice(hub):
    user = "formbad"
    s = hub.login(user)
    s.get(f"{hub.url}/hub/spawn")
    r = s.post(
        f"{hub.url}/hub/spawn",
        data={
            "profile": "tuned",
            "profile-option-tuned--memory": "unlisted-choice",
            "profile-option-tuned--memory--unlisted-choice": "lots; rm -rf /",
            "_xsrf": s.cookies.get("_xsrf"),
        },
        allow_redirects=False,
    )
    # the form is shown again with the message naming the field
    assert r.status_code in (200, 400), r.status_code
    assert "memory" in r.text
    assert hub.server_model(user) is None


def test_file_follows_user_across_tiers(hub):
    user = hub.create_user("follower")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    r = hub.server_api(
        user,
        "api/contents/notes.txt",
        token,
        method="PUT",
        json={"type": "file", "format": "text", "content": "written on small"},
    )
    assert r.status_code in (200, 201), r.text
    hub.stop_server(user)
    model = hub.spawn(user, {"profile": "manycore"})
    assert model["user_options"]["profile"] == "manycore"
    r = hub.server_api(user, "api/contents/notes.txt", token)
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "written on small"
    hub.stop_server(user)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"profile": "nope"}, "profile"),
        ({"profile": "tuned", "memory": "huge"}, "memory"),
        ({"profile": "tuned", "memory": "unlisted-choice", "memory--unlisted-choice": "3 gigs"}, "memory"),
        ({"profile": "small", "cmd": "/bin/sh"}, "cmd"),
        ({"profile": 5}, "profile"),
    ],
)
def test_bad_user_options_are_400_and_start_nothing(hub, options, field):
    user = hub.create_user("badopts")
    # a good start first, so that "changes nothing" has something to keep
    hub.spawn(user, {"profile": "small"})
    hub.stop_server(user)
    r = hub.spawn(user, options, wait=False)
    assert r.status_code == 400, r.text
    assert field in r.json()["message"]
    assert "Traceback" not in r.text
    time.sleep(0.5)
    assert hub.server_model(user) is None
    assert server_processes(user) == {}
    # the refused options were not stored: the stopped server keeps the last good ones
    r = hub.api("GET", f"/users/{user}?include_stopped_servers=1")
    assert r.status_code == 200, r.text
    stopped = r.json()["servers"][""]
    assert stopped["stopped"] and not stopped["pending"]
    assert stopped["user_options"] == {"profile": "small"}


def test_unlisted_choice_substituted(hub):
    user = hub.create_user("tuner")
    hub.spawn(user, {"profile": "tuned", "memory": "unlisted-choice", "memory--unlisted-choice": "3g"})
    _, env = _main_server(user)
    assert env["TUNED_MEM"] == "3g"
    hub.stop_server(user)


def test_group_restricted_tier_is_403(hub):
    outsider = hub.create_user("outsider")
    r = hub.spawn(outsider, {"profile": "restricted"}, wait=False)
    assert r.status_code == 403, r.text
    assert "restricted" in r.json()["message"].lower() or "gpu-team" in r.json()["message"]
    assert hub.server_model(outsider) is None
    insider = hub.create_user("insider", groups=["gpu-team"])
    model = hub.spawn(insider, {"profile": "restricted"})
    assert model["user_options"]["profile"] == "restricted"
    hub.stop_server(insider)


def test_stop_ends_kernels_too(hub):
    user = hub.create_user("kernels")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    r = hub.server_api(user, "api/kernels", token, method="POST", json={"name": "python3"})
    assert r.status_code == 201, r.text
    wait_for(lambda: len(server_processes(user)) >= 2, timeout=30, message="kernel process")
    hub.stop_server(user)
    wait_for(lambda: server_processes(user) == {}, timeout=15, message="all processes gone")


def test_early_exit_gives_clear_error(hub):
    """A server that dies at start: the answer carries the tail of its log."""
    user = hub.create_user("crasher")
    r = hub.spawn(user, {"profile": "broken"}, wait=False)
    assert r.status_code == 500, r.text
    message = r.json()["message"]
    assert "exited during start" in message
    assert "boom: no such machine" in message
    assert hub.server_model(user) is None
    assert server_processes(user) == {}


def test_hub_restart_keeps_server_reachable_and_stoppable(hub):
    user = hub.create_user("survivor")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    pid, _ = _main_server(user)
    hub.restart()
    model = hub.wait_ready(user)
    assert model["user_options"]["profile"] == "small"
    r = hub.server_api(user, "api/status", token)
    assert r.status_code == 200, r.text
    assert pid in server_processes(user)
    hub.stop_server(user)
    wait_for(lambda: server_processes(user) == {}, timeout=15, message="processes gone after stop")
