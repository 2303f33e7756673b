"""Slurm mode end to end: a real hub configured by ``configs/slurm.py``
submitting real batch jobs to the one-node cluster of ``tests/slurm/setup.sh``
(partitions small/gpu/manycore, two fake GPUs). The servers run on that node,
which is this machine, so their processes can be inspected here.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import process_uid, server_processes, system_uid
from hubtest import wait_for

from jupyter_ds_compute.accounts import account_name

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "tests" / "slurm" / "setup.sh"

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.hub,
    pytest.mark.skipif(os.geteuid() != 0, reason="starting munged, slurmctld and slurmd needs root"),
]

# the documented override file, then quicker polling for the tests
HUB_EXTRA_CONFIG = f"""
exec(compile(open({str(REPO / "configs" / "slurm.py")!r}).read(), "configs/slurm.py", "exec"))
c.Spawner.poll_interval = 2
c.SlurmBackend.squeue_interval = 1.0
c.SlurmBackend.stop_timeout = 20
"""


@pytest.fixture(scope="module", autouse=True)
def slurm():
    """The project's own one-node cluster (installed and started if needed)."""
    r = subprocess.run([str(SETUP), "install"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"tests/slurm/setup.sh install failed:\n{r.stdout}\n{r.stderr}"
    yield
    # jobs a failed test left behind must not hold the node for the next module
    subprocess.run(["scancel", "--name=ds-compute-blocker"], check=False)


def account(user):
    """The system account hub user ``user``'s jobs run as (the embedded
    default's ``jdc-<name>``)."""
    return account_name(user, "prefixed")


def jobs_of(user):
    """{job_id: {field: value}} of the user's jobs that Slurm still knows."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--user={account(user)}", "--format=%i"],
        capture_output=True,
        text=True,
    ).stdout
    return {jid: show_job(jid) for jid in out.split()}


def show_job(job_id):
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True
    ).stdout
    fields = {}
    for word in out.split():
        key, _, value = word.partition("=")
        fields[key] = value
    return fields


def running_job(user):
    running = {j: f for j, f in jobs_of(user).items() if f.get("JobState") == "RUNNING"}
    assert len(running) == 1, running
    return next(iter(running.items()))


def main_server(user):
    for pid, env in server_processes(user).items():
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if "jupyterhub-singleuser" in cmdline:
            return pid, env
    raise AssertionError(f"no server process of {user}")


def progress_messages(hub, user, timeout=120):
    """The spawn progress events (SSE) of ``user``'s pending server, as they come."""
    # straight from the hub (not through the proxy), unbuffered
    url = f"http://127.0.0.1:{hub.env['DS_COMPUTE_HUB_PORT']}/hub/api/users/{user}/server/progress"
    r = requests.get(url, headers={"Authorization": f"token {hub.admin_token}"}, stream=True, timeout=timeout)
    assert r.status_code == 200, r.text
    for line in r.iter_lines(chunk_size=1, decode_unicode=True):
        if line and line.startswith("data:"):
            event = json.loads(line[5:])
            yield event
            if event.get("ready") or event.get("failed"):
                return


def block_gpus():
    """A job holding both fake GPUs; returns its id once it runs."""
    blocker = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-J",
            "ds-compute-blocker",
            "-p",
            "gpu",
            "--gres=gpu:2",
            "-o",
            "/dev/null",
            "-D",
            "/tmp",
            "--wrap",
            "sleep 300",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    wait_for(lambda: show_job(blocker).get("JobState") == "RUNNING", timeout=30, message="blocker running")
    return blocker


def service(hub, method, path, token, **kw):
    return requests.request(
        method,
        f"{hub.url}/services/ds-compute/{path}",
        headers={"Authorization": f"token {token}"},
        timeout=30,
        **kw,
    )


@pytest.mark.parametrize(
    "slug, partition, cpus, mem, gpus",
    [
        ("small", "small", 1, "2G", 0),
        ("gpu", "gpu", 4, "16G", 1),
        ("manycore", "manycore", os.cpu_count(), "20G", 0),
    ],
)
def test_spawn_each_tier_as_a_job(hub, slug, partition, cpus, mem, gpus):
    user = hub.create_user(f"slurm-{slug}")
    model = hub.spawn(user, {"profile": slug})
    assert model["user_options"]["profile"] == slug
    job_id, job = running_job(user)
    assert job["Partition"] == partition
    assert job["NumCPUs"] == str(cpus) and job["CPUs/Task"] == str(cpus)
    assert job["MinMemoryNode"] == mem and f"mem={mem}" in job["TRES"]
    assert ("gres/gpu=1" in job["TRES"] or "gpu:1" in job.get("TresPerNode", "")) == bool(gpus), job
    assert job["TimeLimit"] == {"small": "08:00:00", "gpu": "04:00:00", "manycore": "08:00:00"}[slug]
    assert job["UserId"].startswith(f"{account(user)}(")
    # the server runs as the user, in the job, on the volume, with Slurm's GPU
    pid, env = main_server(user)
    assert process_uid(pid) == system_uid(user)
    assert env["SLURM_JOB_ID"] == job_id
    assert env["DS_COMPUTE_TIER"] == slug and env["DS_COMPUTE_BACKEND"] == "slurm"
    assert env["HOME"] == env["DS_COMPUTE_VOLUME_PATH"] == job["WorkDir"]
    assert env.get("CUDA_VISIBLE_DEVICES", "") == ("0" if gpus else "")
    token = hub.user_token(user)
    r = hub.server_api(user, "api/status", token)
    assert r.status_code == 200, r.text
    hub.stop_server(user)
    wait_for(lambda: server_processes(user) == {}, timeout=20, message="server processes gone")
    wait_for(
        lambda: all(f["JobState"] in ("CANCELLED", "COMPLETED") for f in jobs_of(user).values()),
        timeout=20,
        message="the job ended",
    )


def test_pending_reason_in_progress(hub):
    """Both fake GPUs taken: the GPU tier's job pends, the progress says why."""
    blocker = block_gpus()
    try:
        user = hub.create_user("slurm-waiter")
        r = hub.spawn(user, {"profile": "gpu"}, wait=False)
        assert r.status_code == 202, r.text
        seen = []
        for event in progress_messages(hub, user):
            seen.append(event.get("message", ""))
            if any("pending (Resources)" in m for m in seen):
                break
        assert any("Submitted Slurm job" in m and "partition gpu" in m for m in seen), seen
        assert any("pending (Resources)" in m for m in seen), seen
        assert hub.server_model(user)["pending"] == "spawn"
    finally:
        subprocess.run(["scancel", blocker], check=True)
    hub.wait_ready(user, timeout=60)
    hub.stop_server(user)


def test_job_ended_by_slurm_during_start_fails_with_reason(hub):
    """A pending job that Slurm ends (here: scancel) fails the spawn with the reason."""
    blocker = block_gpus()
    try:
        user = hub.create_user("slurm-unlucky")
        assert hub.spawn(user, {"profile": "gpu"}, wait=False).status_code in (201, 202, 500)
        # pending, not an ended job of an earlier run (Slurm shows those for MinJobAge)
        job_id = wait_for(
            lambda: next((j for j, f in jobs_of(user).items() if f.get("JobState") == "PENDING"), None),
            timeout=30,
            message="the user's job",
        )
        wait_for(lambda: show_job(job_id).get("Reason") == "Resources", timeout=30, message="job pending")
        subprocess.run(["scancel", job_id], check=True)
        wait_for(lambda: hub.server_model(user) is None, timeout=30, interval=0.5, message="spawn failed")
    finally:
        subprocess.run(["scancel", blocker], check=True)
    log = hub.log_path.read_text(errors="replace")
    assert f"Failed: Slurm job {job_id} ended before the server started: it was cancelled (scancel)" in log


def test_switch_between_tiers_file_follows(hub):
    user = hub.create_user("slurm-switcher")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    first, _ = running_job(user)
    r = hub.server_api(
        user, "api/contents/notes.txt", token, method="PUT",
        json={"type": "file", "format": "text", "content": "written on small"},
    )  # fmt: skip
    assert r.status_code in (200, 201), r.text
    r = service(hub, "POST", "api/switches", token, json={"profile": "gpu"})
    assert r.status_code == 202, r.text
    sid = r.json()["id"]

    def final():
        rec = service(hub, "GET", f"api/switches/{sid}", token).json()
        return rec if rec.get("state") in ("succeeded", "rolled_back", "failed") else None

    record = wait_for(final, timeout=180, interval=0.5, message="switch to gpu")
    assert record["state"] == "succeeded", record
    second, job = running_job(user)
    assert second != first and job["Partition"] == "gpu"
    assert show_job(first)["JobState"] in ("CANCELLED", "COMPLETED", "COMPLETING")
    token = hub.user_token(user)  # the old server's tokens went with it
    r = hub.server_api(user, "api/contents/notes.txt", token)
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "written on small"
    hub.stop_server(user)


@pytest.mark.parametrize(
    "options",
    [
        {"profile": "small", "req_partition": "gpu", "req_options": "--wrap=id"},
        {"profile": "small", "partition": "gpu"},
        {"profile": "small", "options": "--wrap=id", "cmd": ["id"]},
        {"profile": "small", "sbatch_lines": ["#SBATCH --partition=gpu"], "prologue": "id > /tmp/pwned"},
        {"profile": "small --partition=gpu"},
        {"profile": "small\n#SBATCH --partition=gpu"},
        {"profile": "tuned", "memory": "unlisted-choice", "memory--unlisted-choice": "1g\n#SBATCH --wrap=id"},
        {"profile": "tuned", "memory": "unlisted-choice", "memory--unlisted-choice": "$(id>/tmp/pwned)g"},
    ],
)
def test_user_options_never_reach_slurm(hub, options):
    user = hub.create_user("slurm-injector")
    before = set(jobs_of(user))
    r = hub.spawn(user, options, wait=False)
    assert r.status_code == 400, r.text
    time.sleep(0.5)
    assert set(jobs_of(user)) == before, "a job was submitted"
    assert hub.server_model(user) is None
    assert server_processes(user) == {}
    assert not os.path.exists("/tmp/pwned")


def test_scancel_of_running_server_is_detected(hub):
    user = hub.create_user("slurm-cancelled")
    hub.spawn(user, {"profile": "small"})
    job_id, _ = running_job(user)
    subprocess.run(["scancel", job_id], check=True)
    wait_for(
        lambda: hub.server_model(user) is None,
        timeout=30,
        interval=0.5,
        message="hub sees the server stopped",
    )
    log = hub.log_path.read_text(errors="replace")
    assert f"Slurm job {job_id} ended: it was cancelled (scancel)" in log
    wait_for(lambda: server_processes(user) == {}, timeout=20, message="server processes gone")
    # and it starts again normally
    hub.spawn(user, {"profile": "small"})
    hub.stop_server(user)


def test_hub_restart_keeps_running_jobs(hub):
    user = hub.create_user("slurm-survivor")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "manycore"})
    job_id, _ = running_job(user)
    pid, _ = main_server(user)
    hub.restart()
    model = hub.wait_ready(user)
    assert model["user_options"]["profile"] == "manycore"
    assert running_job(user)[0] == job_id and pid in server_processes(user)
    r = hub.server_api(user, "api/status", token)
    assert r.status_code == 200, r.text
    # batchspawner's port-report handler (setattr of any posted key) is not served
    assert hub.api("POST", "/batchspawner", json={"cmd": ["id"]}).status_code == 404
    hub.stop_server(user)
    wait_for(lambda: server_processes(user) == {}, timeout=20, message="server processes gone")
    wait_for(
        lambda: show_job(job_id)["JobState"] in ("CANCELLED", "COMPLETED"), timeout=20, message="job ended"
    )


def test_start_cancels_a_job_an_interrupted_start_left(hub):
    """A job of this server that the hub does not know (its start was
    interrupted before the state was saved) is cancelled by the next start:
    exactly one job of the server runs, the new one."""
    from jupyter_ds_compute.names import safe_name

    user = hub.create_user("slurm-leftover")
    hub.spawn(user, {"profile": "small"})  # the user's account exists from here on
    hub.stop_server(user)
    other = hub.create_user("slurm-neighbour")
    hub.spawn(other, {"profile": "small"})
    neighbour, _ = running_job(other)
    stray = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--job-name=ds-compute-{safe_name(user)}",
            f"--uid={account(user)}",
            "-p",
            "small",
            "-o",
            "/dev/null",
            "-D",
            "/tmp",
            "--wrap",
            "sleep 300",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    wait_for(lambda: show_job(stray).get("JobState") == "RUNNING", timeout=30, message="stray job running")
    try:
        hub.spawn(user, {"profile": "small"})
        job_id, _ = running_job(user)  # exactly one
        assert job_id != stray
        assert show_job(stray)["JobState"] in ("CANCELLED", "COMPLETING"), show_job(stray)
        log = hub.log_path.read_text(errors="replace")
        assert f"Cancelling Slurm jobs {stray}" in log and user in log
        # another user's server is untouched
        assert show_job(neighbour)["JobState"] == "RUNNING"
    finally:
        subprocess.run(["scancel", stray], check=False)
    hub.stop_server(user)
    hub.stop_server(other)
