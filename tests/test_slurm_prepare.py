"""Make before break on Slurm, end to end: a real hub (``configs/slurm.py``)
and the one-node cluster of ``tests/slurm/setup.sh``. A switch submits the
target job while the old server serves; the cut-over hands the start to that
job (no second ``sbatch``); a target partition that is busy shows Slurm's
reason on the switch, and cancelling the pending job fails the switch with
the old server untouched.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from datetime import datetime

import pytest
from conftest import process_uid, system_uid
from hubtest import wait_for
from test_slurm import (  # noqa: F401 - slurm: the cluster fixture (autouse), HUB_EXTRA_CONFIG: the hub's
    HUB_EXTRA_CONFIG,
    block_gpus,
    jobs_of,
    main_server,
    show_job,
    slurm,
)
from test_switch_hub import request_switch, switch_record, tier_of, wait_switch

from jupyter_ds_compute.names import safe_name

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.hub,
    pytest.mark.skipif(os.geteuid() != 0, reason="starting munged, slurmctld and slurmd needs root"),
]

ENDED = ("CANCELLED", "COMPLETED", "COMPLETING", "FAILED", "TIMEOUT")


def steps_of(record):
    return {s["name"]: s for s in record["steps"]}


def when(iso):
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def slurm_time(value):
    """Slurm's local ``2026-12-01T11:10:27`` as a timestamp."""
    return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))


def live_jobs(user):
    return {j for j, f in jobs_of(user).items() if f.get("JobState") not in ENDED}


def spool_dir(hub, user):
    return os.path.join(hub.data, "slurm", safe_name(user, ""))


def test_switch_prepares_the_job_before_the_stop(hub):
    user = hub.create_user("slurm-mbb")
    token = hub.user_token(user)
    earlier = set(jobs_of(user))  # Slurm shows ended jobs for a while (MinJobAge): an earlier run's
    hub.spawn(user, {"profile": "small"})
    (first,) = live_jobs(user)
    r = hub.server_api(
        user, "api/contents/notes.txt", token, method="PUT",
        json={"type": "file", "format": "text", "content": "written on small"},
    )  # fmt: skip
    assert r.status_code in (200, 201), r.text
    t0 = time.time()
    r = request_switch(hub, user, token, "gpu")
    assert r.status_code == 202, r.text
    switch_id = r.json()["id"]
    # while preparing: the target job exists next to the old one, which serves
    answered, prepared = 0, None
    while True:
        record = switch_record(hub, token, switch_id)
        if steps_of(record)["prepare"]["status"] != "running":
            break
        others = live_jobs(user) - {first}
        prepared = prepared or next(iter(others), None)
        answered += hub.server_api(user, "api/status", token).status_code == 200
        time.sleep(0.1)
    record = wait_switch(hub, token, switch_id)
    assert record["state"] == "succeeded", record
    steps = steps_of(record)
    prepare, stop = steps["prepare"], steps["stop"]
    assert prepare["status"] == "done" and prepare["message"].startswith("ready on "), prepare
    assert when(stop["started"]) >= when(prepare["finished"])
    # the server on gpu runs in the job that was prepared (and running) before the stop began:
    # no second sbatch, the old job ended
    (second,) = live_jobs(user)
    assert set(jobs_of(user)) - earlier == {first, second}, jobs_of(user)
    assert prepared in (None, second)
    job = show_job(second)
    assert job["Partition"] == "gpu" and job["JobName"] == f"ds-compute-{safe_name(user, '')}"
    assert prepare["message"].startswith(f"ready on {job['NodeList']} in "), prepare
    assert slurm_time(job["StartTime"]) <= when(stop["started"]), (job["StartTime"], stop["started"])
    assert show_job(first)["JobState"] in ENDED
    # as the user, in the job (Slurm's job id and GPU), on the volume; /proc shows the server's
    # environment (the start's, with the token, which came through the start file), rewritten
    # over the one the job started with
    pid, env = main_server(user)
    assert env.get("JUPYTERHUB_API_TOKEN") and not [k for k in env if k.startswith("DS_COMPUTE_ENV_RESERVE")]
    assert process_uid(pid) == system_uid(user) != 0
    assert env["SLURM_JOB_ID"] == second and env.get("CUDA_VISIBLE_DEVICES") == "0"
    assert env["DS_COMPUTE_TIER"] == "gpu" and env["DS_COMPUTE_BACKEND"] == "slurm"
    assert env["DS_COMPUTE_VOLUME_PATH"] == job["WorkDir"]
    assert "jupyter_ds_compute.backends.slurm_launch" in open(f"/proc/{pid}/cmdline").read()
    # the start file (it carried the token) is gone; the spool dir is the user's alone
    spool = spool_dir(hub, user)
    assert not os.path.exists(os.path.join(spool, f"job-{second}.start"))
    st = os.stat(spool)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == system_uid(user)
    token = hub.user_token(user)
    r = hub.server_api(user, "api/contents/notes.txt", token)
    assert r.status_code == 200 and r.json()["content"] == "written on small", r.text
    assert tier_of(hub, user) == "gpu"
    assert hub.server_api(user, "ds-compute/api/status", token).json()["tier"]["slug"] == "gpu"
    whole = when(record["finished"]) - when(record["created"]) if record.get("created") else time.time() - t0
    cut_over = when(steps["verify"]["finished"]) - when(stop["started"])
    print(
        f"\nSlurm switch small -> gpu: whole {whole:.1f}s, prepare "
        f"{when(prepare['finished']) - when(prepare['started']):.1f}s, cut-over (stop..verify) "
        f"{cut_over:.1f}s; old server answered {answered} times while preparing"
    )
    hub.stop_server(user)
    wait_for(lambda: not live_jobs(user), timeout=30, message="the job ended")


def test_busy_partition_shows_the_reason_and_a_cancelled_job_fails_the_switch(hub):
    blocker = block_gpus()
    try:
        user = hub.create_user("slurm-mbb-busy")
        token = hub.user_token(user)
        hub.spawn(user, {"profile": "small"})
        (first,) = live_jobs(user)
        old_pid, _ = main_server(user)
        r = request_switch(hub, user, token, "gpu")
        assert r.status_code == 202, r.text
        switch_id = r.json()["id"]

        def pending():
            record = switch_record(hub, token, switch_id)
            message = steps_of(record)["prepare"]["message"] or ""
            return record if "pending (Resources)" in message else None

        record = wait_for(pending, timeout=60, interval=0.2, message="the prepare step shows Slurm's reason")
        assert record["state"] not in ("succeeded", "failed", "rolled_back")
        assert record["phase"] == "preparing"
        # the old server still serves
        r = hub.server_api(user, "api/status", token)
        assert r.status_code == 200, r.text
        (prepared,) = live_jobs(user) - {first}
        assert show_job(prepared)["JobState"] == "PENDING" and show_job(prepared)["Partition"] == "gpu"
        subprocess.run(["scancel", prepared], check=True)
        record = wait_switch(hub, token, switch_id, timeout=60)
        assert record["state"] == "failed", record
        assert f"Slurm job {prepared} ended before the server started" in record["error"], record["error"]
        assert "cancelled (scancel)" in record["error"] and "not touched" in record["error"], record["error"]
        assert steps_of(record)["stop"]["status"] == "skipped"
        # the old server is untouched: same job, same process, it answers; nothing else of it is left
        assert live_jobs(user) == {first}
        assert main_server(user)[0] == old_pid and tier_of(hub, user) == "small"
        assert hub.server_api(user, "api/status", token).status_code == 200
    finally:
        subprocess.run(["scancel", blocker], check=False)
    hub.stop_server(user)
    wait_for(lambda: not live_jobs(user), timeout=30, message="the job ended")


def test_prepared_job_gone_at_the_cut_over_starts_a_new_job(hub):
    """The prepared job ends between prepare and cut-over (held here, as JupyterLab
    holds it to save documents): the start submits a new job, the switch succeeds."""
    user = hub.create_user("slurm-mbb-gone")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    (first,) = live_jobs(user)
    r = hub.service("POST", "api/switches", token, json={"profile": "manycore", "hold_cutover": True})
    assert r.status_code == 202, r.text
    switch_id = r.json()["id"]
    wait_for(
        lambda: switch_record(hub, token, switch_id)["phase"] == "ready",
        timeout=60, interval=0.2, message="prepared, the cut-over held",
    )  # fmt: skip
    (prepared,) = live_jobs(user) - {first}
    subprocess.run(["scancel", prepared], check=True)
    wait_for(lambda: prepared not in live_jobs(user), timeout=20, message="the prepared job ended")
    assert hub.service("POST", f"api/switches/{switch_id}/go", token).status_code == 204
    record = wait_switch(hub, token, switch_id, timeout=90)
    assert record["state"] == "succeeded", record
    (third,) = live_jobs(user)
    assert third not in (first, prepared) and show_job(third)["Partition"] == "manycore"
    assert tier_of(hub, user) == "manycore"
    assert f"Prepared Slurm job {prepared} of {user} is ended" in hub.log_path.read_text(errors="replace")
    hub.stop_server(user)
    wait_for(lambda: not live_jobs(user), timeout=30, message="the job ended")
