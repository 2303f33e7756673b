"""AWS mode, deleting a user through a real hub (``configs/aws.py``, moto
server, instance emulator): the EBS volume or the EFS access point goes
with them (``delete_volume``'s default for cloud volumes)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import boto3
import pytest
from aws.emulator import InstanceEmulator
from aws.motoserver import MotoServer
from conftest import ARTIFACTS, TEST_TIERS_CONFIG, _current_hub, hub_workdir
from hubtest import Hub, free_port
from test_aws_hub import HUB_EXTRA_CONFIG, HUB_ID, live_instances, user_volumes, write

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


@pytest.fixture(scope="module", autouse=True)
def aws_world():
    workdir = Path(hub_workdir("aws-delete-world"))
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


@pytest.fixture(scope="module")
def ec2(aws_world):
    return boto3.client("ec2", region_name="us-east-1")


@pytest.fixture(scope="module", params=["ebs", "efs"])
def hub(request, aws_world):
    """A hub in AWS mode, with EBS or EFS volumes."""
    name = f"{request.module.__name__}-{request.param}"
    env = dict(
        AWS_ENV,
        DS_COMPUTE_AWS_AMI="ami-12c6146b",
        DS_COMPUTE_AWS_ZONE="us-east-1a",
        DS_COMPUTE_AWS_VOLUME_SIZE="1",
        DS_COMPUTE_AWS_HUB_ID=HUB_ID,
        DS_COMPUTE_AWS_VOLUME=request.param,
    )
    h = Hub(hub_workdir(name), extra_config=TEST_TIERS_CONFIG + HUB_EXTRA_CONFIG, env=env)
    h.driver = request.param
    _current_hub["api_port"] = h.env["DS_COMPUTE_HUB_PORT"]
    h.start()
    yield h
    h.stop()
    _current_hub.clear()
    shutil.copy(h.log_path, ARTIFACTS / f"{name}-hub.log")


def test_deleting_user_deletes_cloud_volume(hub, ec2, aws_world):
    _, emulator = aws_world
    user = hub.create_user(f"awsdel-{hub.driver}")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"}, timeout=180)
    write(hub, user, token, "work.txt", "on the cloud volume")
    if hub.driver == "ebs":
        (vol,) = user_volumes(ec2, user)
        vid = vol["VolumeId"]
    else:
        efs = boto3.client("efs", region_name="us-east-1")
        (fs,) = [
            f
            for f in efs.describe_file_systems()["FileSystems"]
            if {t["Key"]: t["Value"] for t in f.get("Tags", [])}.get("ds-compute:hub") == HUB_ID
        ]
        aps = [
            ap
            for ap in efs.describe_access_points(FileSystemId=fs["FileSystemId"])["AccessPoints"]
            if {t["Key"]: t["Value"] for t in ap.get("Tags", [])}.get("ds-compute:user") == user
        ]
        (ap,) = aps
        vid = ap["AccessPointId"]
    hub.stop_server(user, timeout=120)
    assert live_instances(ec2, user) == []

    r = hub.api("DELETE", f"/users/{user}", timeout=120)
    assert r.status_code == 204, r.text
    log = hub.log_path.read_text(errors="replace")
    assert f"Deleting {user}: deleted {hub.driver} volume {vid} (" in log
    if hub.driver == "ebs":
        assert ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [vid]}])["Volumes"] == []
        assert user_volumes(ec2, user) == []
        # configs/aws.py keeps a final snapshot (c.EBSVolume.snapshot_before_delete = True)
        snaps = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [vid]}])[
            "Snapshots"
        ]
        (snap,) = snaps
        assert {t["Key"]: t["Value"] for t in snap["Tags"]}["ds-compute:reason"] == "before-delete"
        assert f"kept final snapshot {snap['SnapshotId']}" in log
    else:
        with pytest.raises(Exception, match="AccessPointNotFound"):
            efs.describe_access_points(AccessPointId=vid)
        assert "EFS has no API to delete files" in log
    assert not emulator.errors, emulator.errors
