"""Make before break in AWS mode with EFS homes, end to end (real hub, moto
server, instance emulator with a 2 s launch and a 1 s boot): the target
instance may be prepared in any zone (here the first has no capacity), the
old server answers meanwhile, and the cut-over only stops the old server
and hands the launch spec to the waiting instance."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from aws.emulator import InstanceEmulator
from aws.motoserver import MotoServer
from conftest import hub_workdir
from hubtest import free_port, wait_for
from test_aws_hub import HUB_EXTRA_CONFIG, live_instances, read, write  # noqa: F401
from test_aws_prepare_hub import BOOT_DELAY, LAUNCH_DELAY, Answering, outcome, request, steps, ts

pytestmark = [
    pytest.mark.ec2,
    pytest.mark.hub,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the instance emulator needs root (namespaces, loop devices)"
    ),
]

MOTO_PORT = free_port()
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
    DS_COMPUTE_AWS_HUB_ID="hubtest-efs-mbb",
    DS_COMPUTE_AWS_VOLUME="efs",
)


@pytest.fixture(scope="module", autouse=True)
def aws_world():
    workdir = Path(hub_workdir("aws-prepare-efs-world"))
    moto = MotoServer(MOTO_PORT, str(workdir / "moto.log")).start()
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


def test_efs_switch_prepares_in_another_zone_while_the_old_serves(hub, aws_world):
    moto, emulator = aws_world
    ec2 = boto3.client("ec2", region_name="us-east-1")
    subnets = {s["AvailabilityZone"]: s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}
    user = hub.create_user("aws-mbb-efs")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"}, timeout=180)
    (old,) = live_instances(ec2, user)
    write(hub, user, token, "notes.txt", "written on small in 1a")
    moto.arm(
        action="RunInstances",
        error="InsufficientInstanceCapacity",
        status=500,
        match={"InstanceType": "g5.xlarge", "SubnetId": subnets["us-east-1a"]},
    )
    with Answering(hub, user, token) as answering:
        sid = request(hub, token, "gpu")
        prepared = wait_for(
            lambda: [i for i in live_instances(ec2, user) if i["InstanceType"] == "g5.xlarge"],
            60,
            interval=0.2,
            message="the gpu instance launched",
        )[0]
        assert prepared["Placement"]["AvailabilityZone"] == "us-east-1b"
        rec = outcome(hub, token, sid)
    moto.reset()
    assert rec["state"] == "succeeded", rec
    s = steps(rec)
    assert prepared["InstanceId"] in s["prepare"]["message"], s["prepare"]
    assert ts(s["prepare"]["finished"]) <= ts(s["stop"]["started"])
    assert s["prepare"]["duration"] >= LAUNCH_DELAY + BOOT_DELAY, s["prepare"]
    assert answering.answered_between(ts(s["prepare"]["started"]) + 0.5, ts(s["prepare"]["finished"]))
    # the server was away only for the cut-over, well below the prepare it was spared
    assert 0 < answering.longest_gap() < s["prepare"]["duration"] + 5, answering.longest_gap()
    (inst,) = live_instances(ec2, user)
    assert inst["InstanceId"] == prepared["InstanceId"] and inst["InstanceId"] != old["InstanceId"]
    assert read(hub, user, token, "notes.txt") == "written on small in 1a"
    assert hub.server_api(user, "ds-compute/api/status", token).json()["tier"]["slug"] == "gpu"
    hub.stop_server(user, timeout=120)
    assert live_instances(ec2, user) == []
    assert not emulator.errors, emulator.errors
