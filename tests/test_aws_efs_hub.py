"""AWS mode with EFS home directories, end to end: a real hub configured by
``configs/aws.py`` (``DS_COMPUTE_AWS_VOLUME=efs``), a moto server and the
instance emulator (access points are bind mounts here). A switch through
the ds-compute service keeps the files, and, EFS being reachable from every
zone, a tier with no capacity in the first zone lands in the next one; then
deleting the user deletes their access point and leaves nothing running."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from aws.emulator import InstanceEmulator
from aws.motoserver import MotoServer
from conftest import hub_workdir
from hubtest import free_port
from test_aws_hub import HUB_EXTRA_CONFIG, live_instances, read, switch, write  # noqa: F401

pytestmark = [
    pytest.mark.ec2,
    pytest.mark.hub,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the instance emulator needs root (namespaces, loop devices)"
    ),
]

MOTO_PORT = free_port()
HUB_ID = "hubtest-efs"
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
    DS_COMPUTE_AWS_VOLUME="efs",
)


@pytest.fixture(scope="module", autouse=True)
def aws_world():
    """moto server + instance emulator, before the hub (autouse: set up first)."""
    workdir = Path(hub_workdir("aws-efs-world"))
    moto = MotoServer(MOTO_PORT, str(workdir / "moto.log")).start()
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    emulator = InstanceEmulator(AWS_ENV["AWS_ENDPOINT_URL"], workdir / "instances").start()
    yield moto, emulator
    emulator.stop()
    moto.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def tags(thing):
    return {t["Key"]: t["Value"] for t in thing.get("Tags", [])}


def access_points(user):
    efs = boto3.client("efs", region_name="us-east-1")
    (fs,) = [f for f in efs.describe_file_systems()["FileSystems"] if tags(f).get("ds-compute:hub") == HUB_ID]
    return [
        ap
        for ap in efs.describe_access_points(FileSystemId=fs["FileSystemId"])["AccessPoints"]
        if tags(ap).get("ds-compute:user") == user
    ]


def test_efs_switch_keeps_files_crosses_zones_and_user_deletion_cleans_up(hub, aws_world):
    moto, emulator = aws_world
    ec2 = boto3.client("ec2", region_name="us-east-1")
    subnets = {s["AvailabilityZone"]: s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}
    user = hub.create_user("aws-efs-erin")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"}, timeout=180)
    (inst,) = live_instances(ec2, user)
    assert inst["Placement"]["AvailabilityZone"] == "us-east-1a"
    status = hub.server_api(user, "ds-compute/api/status", token).json()
    assert status["volume"]["driver"] == "efs" and status["volume"]["path"] == "/home/jovyan"
    (ap,) = access_points(user)
    write(hub, user, token, "notes.txt", "written on small in 1a")

    # no g5.xlarge in us-east-1a: the gpu server starts in us-east-1b, on the same home
    moto.arm(
        action="RunInstances",
        error="InsufficientInstanceCapacity",
        status=500,
        match={"InstanceType": "g5.xlarge", "SubnetId": subnets["us-east-1a"]},
    )
    rec = switch(hub, user, token, "gpu", timeout=240)
    moto.reset()
    assert rec["state"] == "succeeded", rec
    (inst,) = live_instances(ec2, user)
    assert inst["InstanceType"] == "g5.xlarge"
    assert inst["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert read(hub, user, token, "notes.txt") == "written on small in 1a"
    write(hub, user, token, "gpu.txt", "written on gpu in 1b")
    assert [a["AccessPointId"] for a in access_points(user)] == [ap["AccessPointId"]]
    log = hub.log_path.read_text(errors="replace")
    assert "AWS has no g5.xlarge capacity in us-east-1a right now" in log

    # and back: the file written in 1b is there in 1a
    rec = switch(hub, user, token, "small", timeout=240)
    assert rec["state"] == "succeeded", rec
    (inst,) = live_instances(ec2, user)
    assert inst["Placement"]["AvailabilityZone"] == "us-east-1a"
    assert read(hub, user, token, "gpu.txt") == "written on gpu in 1b"

    # deleting the user (server running): the server stops, the access point goes
    r = hub.api("DELETE", f"/users/{user}", timeout=180)
    assert r.status_code == 204, r.text
    assert live_instances(ec2, user) == []
    assert access_points(user) == []
    log = hub.log_path.read_text(errors="replace")
    assert f"Deleting {user}: deleted efs volume {ap['AccessPointId']} (" in log
    # nothing of the user's left in SSM either (launch specs, exit reports)
    ssm = boto3.client("ssm", region_name="us-east-1")
    names = [p["Name"] for p in ssm.describe_parameters()["Parameters"]]
    assert not [n for n in names if n.startswith("/ds-compute/launch/") and not n.endswith(".exit")], names
    assert not emulator.errors, emulator.errors
