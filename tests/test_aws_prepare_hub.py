"""Make before break in AWS mode (EBS), end to end: a real hub configured by
``configs/aws.py``, a moto server and the instance emulator with delays
(launch -> running 2 s, boot 1 s, attach and detach 1 s each; see
``tests/aws/emulator.py`` for how each is emulated).

A switch launches the target instance in the volume's zone while the old
server keeps answering; the cut-over (stop, detach, attach, spec) starts the
server on the prepared instance. A capacity error while preparing fails the
switch with the reason and leaves the old server alone; an instance not
ready within ``c.DSComputeService.prepare_timeout`` is terminated.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime
from pathlib import Path

import boto3
import pytest
import requests
from aws.emulator import InstanceEmulator
from aws.motoserver import MotoServer
from conftest import hub_workdir
from hubtest import free_port, wait_for
from test_aws_hub import HUB_EXTRA_CONFIG as AWS_HUB_CONFIG
from test_aws_hub import (  # noqa: F401 (HUB_ENV's siblings)
    AttachmentWatch,
    check_accounting,
    live_instances,
    read,
    service,
    write,
)

pytestmark = [
    pytest.mark.ec2,
    pytest.mark.hub,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the instance emulator needs root (namespaces, loop devices)"
    ),
]

MOTO_PORT = free_port()
HUB_ID = "hubtest"  # test_aws_hub's helpers find volumes by it (this module has its own moto)
AWS_ENV = {
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{MOTO_PORT}",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}
HUB_ENV = dict(
    AWS_ENV,
    DS_COMPUTE_AWS_AMI="ami-12c6146b",
    DS_COMPUTE_AWS_ZONE="us-east-1a",
    DS_COMPUTE_AWS_VOLUME_SIZE="1",
    DS_COMPUTE_AWS_HUB_ID=HUB_ID,
)
PREPARE_TIMEOUT = 25
#: an instance's bootstrap waits this long for its spec, then shuts itself down
SPEC_TIMEOUT = 30
HUB_EXTRA_CONFIG = (
    AWS_HUB_CONFIG
    + f"c.DSComputeService.prepare_timeout = {PREPARE_TIMEOUT}\n"
    + f"c.EC2Backend.spec_timeout = {SPEC_TIMEOUT}\n"
    + "c.DSComputeService.cutover_hold_timeout = 120\n"
)
LAUNCH_DELAY, BOOT_DELAY, ATTACH_DELAY, DETACH_DELAY = 2.0, 1.0, 1.0, 1.0


@pytest.fixture(scope="module", autouse=True)
def aws_world():
    workdir = Path(hub_workdir("aws-prepare-world"))
    moto = MotoServer(MOTO_PORT, str(workdir / "moto.log")).start()
    moto.set_delays(attach=ATTACH_DELAY, detach=DETACH_DELAY)
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    emulator = InstanceEmulator(
        AWS_ENV["AWS_ENDPOINT_URL"], workdir / "instances", launch_delay=LAUNCH_DELAY, boot_delay=BOOT_DELAY
    ).start()
    yield moto, emulator
    emulator.stop()
    moto.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def moto(aws_world):
    return aws_world[0]


@pytest.fixture(scope="module")
def emulator(aws_world):
    return aws_world[1]


@pytest.fixture(scope="module")
def ec2(aws_world):
    return boto3.client("ec2", region_name="us-east-1")


@pytest.fixture(autouse=True)
def _no_faults(moto):
    moto.reset()
    yield
    moto.reset()


class Answering:
    """Polls the user's server every 50 ms: when it answered, when it did not."""

    def __init__(self, hub, user, token):
        self.url = f"{hub.url}/user/{user}/api/status"
        self.headers = {"Authorization": f"token {token}"}
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with requests.Session() as s:
            while not self._stop.is_set():
                t = time.time()
                try:
                    ok = (
                        s.get(self.url, headers=self.headers, timeout=2, allow_redirects=False).status_code
                        == 200
                    )
                except requests.RequestException:
                    ok = False
                self.samples.append((t, ok))
                self._stop.wait(0.05)

    def answered_between(self, t0, t1):
        inside = [ok for t, ok in self.samples if t0 <= t <= t1]
        return bool(inside) and all(inside)

    def longest_gap(self):
        longest, since = 0.0, None
        for t, ok in self.samples:
            if not ok and since is None:
                since = t
            elif ok and since is not None:
                longest, since = max(longest, t - since), None
        return longest

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def request(hub, token, profile):
    r = service(hub, "POST", "api/switches", token, json={"profile": profile})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def outcome(hub, token, sid, timeout=180):
    def final():
        rec = service(hub, "GET", f"api/switches/{sid}", token).json()
        return rec if rec.get("state") in ("succeeded", "rolled_back", "failed") else None

    return wait_for(final, timeout, interval=0.3, message=f"switch {sid}")


def steps(rec):
    return {s["name"]: s for s in rec["steps"]}


def ts(iso):
    return datetime.fromisoformat(iso).timestamp()


def test_ebs_switch_prepares_before_stopping_in_the_volume_zone(hub, ec2, moto, emulator):
    user = hub.create_user("aws-mbb-ebs")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"}, timeout=180)
    _, old = check_accounting(ec2, user, "small")
    write(hub, user, token, "notes.txt", "written on small")
    with AttachmentWatch(user) as watch, Answering(hub, user, token) as answering:
        moto.clear_calls()
        sid = request(hub, token, "gpu")

        def preparing():
            gpu = [i for i in live_instances(ec2, user) if i["InstanceType"] == "g5.xlarge"]
            return gpu[0] if gpu else None

        prepared = wait_for(preparing, 60, interval=0.2, message="the gpu instance launched")
        # launched next to the volume, while the old instance runs and holds it
        assert prepared["Placement"]["AvailabilityZone"] == "us-east-1a"
        assert {i["InstanceId"] for i in live_instances(ec2, user)} == {
            old["InstanceId"],
            prepared["InstanceId"],
        }
        rec = outcome(hub, token, sid)
        calls = moto.stats()["callers"]["hub"]
    assert rec["state"] == "succeeded", rec
    s = steps(rec)
    assert s["prepare"]["status"] == "done", s["prepare"]
    assert prepared["InstanceId"] in s["prepare"]["message"], s["prepare"]
    # prepared first, then the old server stopped
    assert ts(s["prepare"]["finished"]) <= ts(s["stop"]["started"])
    # the wait followed the emulated launch and boot (moto itself is instant)
    assert s["prepare"]["duration"] >= LAUNCH_DELAY + BOOT_DELAY, s["prepare"]
    # the old server answered all along the prepare step
    assert answering.answered_between(ts(s["prepare"]["started"]) + 0.5, ts(s["prepare"]["finished"]))
    assert answering.longest_gap() < rec_duration(rec) - s["prepare"]["duration"] + 1
    # the switched server runs on the instance prepared for it; one launch in all
    vol, inst = check_accounting(ec2, user, "gpu")
    assert inst["InstanceId"] == prepared["InstanceId"]
    assert calls.get("RunInstances") == 1, calls
    assert read(hub, user, token, "notes.txt") == "written on small"
    assert hub.server_api(user, "ds-compute/api/status", token).json()["tier"]["slug"] == "gpu"
    assert watch.max_attached == 1
    assert "formatting" not in emulator.console(inst["InstanceId"])
    hub.stop_server(user, timeout=120)
    check_accounting(ec2, user, None)
    assert not emulator.errors, emulator.errors


def rec_duration(rec):
    return ts(rec["steps"][-1]["finished"]) - ts(rec["steps"][0]["started"])


def test_capacity_error_while_preparing_fails_and_leaves_the_old_server(hub, ec2, moto):
    user = hub.create_user("aws-mbb-ice")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"}, timeout=180)
    _, old = check_accounting(ec2, user, "small")
    moto.arm(
        action="RunInstances",
        error="InsufficientInstanceCapacity",
        status=500,
        match={"InstanceType": "g5.xlarge"},
    )
    with Answering(hub, user, token) as answering:
        rec = outcome(hub, token, request(hub, token, "gpu"))
    moto.reset()
    assert rec["state"] == "failed", rec
    assert "InsufficientInstanceCapacity" in rec["error"] and "not touched" in rec["error"], rec["error"]
    assert steps(rec)["stop"]["status"] == "skipped"
    assert answering.longest_gap() == 0.0 and answering.samples
    _, inst = check_accounting(ec2, user, "small")
    assert inst["InstanceId"] == old["InstanceId"]
    assert hub.server_api(user, "ds-compute/api/status", token).json()["tier"]["slug"] == "small"
    hub.stop_server(user, timeout=120)
    check_accounting(ec2, user, None)


def test_instance_not_ready_in_prepare_timeout_is_terminated(hub, ec2, emulator):
    user = hub.create_user("aws-mbb-slow")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"}, timeout=180)
    _, old = check_accounting(ec2, user, "small")
    emulator.launch_delay = 3600  # the next instance never gets an address (never "runs")
    try:
        sid = request(hub, token, "manycore")
        prepared = wait_for(
            lambda: [i for i in live_instances(ec2, user) if i["InstanceType"] == "c6i.4xlarge"],
            60,
            interval=0.2,
            message="the manycore instance launched",
        )[0]
        rec = outcome(hub, token, sid, timeout=PREPARE_TIMEOUT + 60)
    finally:
        emulator.launch_delay = LAUNCH_DELAY
    assert rec["state"] == "failed", rec
    assert f"not ready within {PREPARE_TIMEOUT}s" in rec["error"] and "not touched" in rec["error"], rec
    # released: the instance launched for it is terminated, the old server serves on
    wait_for(
        lambda: prepared["InstanceId"] not in {i["InstanceId"] for i in live_instances(ec2, user)},
        30,
        message="the unused instance terminated",
    )
    _, inst = check_accounting(ec2, user, "small")
    assert inst["InstanceId"] == old["InstanceId"]
    assert hub.server_api(user, "ds-compute/api/status", token).status_code == 200
    hub.stop_server(user, timeout=120)
    check_accounting(ec2, user, None)


def test_prepared_instance_of_a_hub_that_died_shuts_itself_down(hub, ec2, emulator):
    """Killed with the hub mid-switch (prepared, the cut-over held), the prepared
    instance gets no spec: its bootstrap shuts it down after spec_timeout, and
    the hub, started again, still has the old server."""
    user = hub.create_user("aws-mbb-orphan")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"}, timeout=180)
    _, old = check_accounting(ec2, user, "small")
    r = service(hub, "POST", "api/switches", token, json={"profile": "gpu", "hold_cutover": True})
    assert r.status_code == 202, r.text
    sid = r.json()["id"]
    wait_for(
        lambda: service(hub, "GET", f"api/switches/{sid}", token).json()["phase"] == "ready",
        90,
        interval=0.3,
        message="prepared and held",
    )
    (prepared,) = [i for i in live_instances(ec2, user) if i["InstanceId"] != old["InstanceId"]]
    os.killpg(hub.proc.pid, 9)  # the hub and its service, at once
    hub.proc.wait(10)
    hub._kill_proxy()
    hub.proc = None
    wait_for(
        lambda: prepared["InstanceId"] not in {i["InstanceId"] for i in live_instances(ec2, user)},
        SPEC_TIMEOUT + 30,
        interval=0.5,
        message="the orphaned prepared instance shut itself down",
    )
    assert "no launch spec arrived; shutting down" in emulator.console(prepared["InstanceId"])
    hub.start()
    rec = outcome(hub, token, sid, timeout=120)
    assert rec["state"] in ("failed", "rolled_back"), rec
    _, inst = check_accounting(ec2, user, "small")
    assert inst["InstanceId"] == old["InstanceId"]
    hub.stop_server(user, timeout=120)
    check_accounting(ec2, user, None)
