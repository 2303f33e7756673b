"""EBS and EFS volumes record their owner in tags: ``ensure()`` refuses,
changing nothing, a volume in the state that is tagged for someone else
(against a real moto server)."""

from __future__ import annotations

import boto3
import pytest
from aws.harness import FakeSpawner, moto_server
from traitlets.config import Config

from jupyter_ds_compute.volumes.ebs import EBSVolume
from jupyter_ds_compute.volumes.efs import EFSVolume
from jupyter_ds_compute.volumes.local import VolumeOwnedError

pytestmark = pytest.mark.ec2


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    with moto_server(str(tmp_path_factory.mktemp("moto"))) as server:
        yield server


@pytest.fixture(scope="module")
def subnets(moto):
    ec2 = boto3.client("ec2", region_name="us-east-1")
    return {s["AvailabilityZone"]: s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}


def make(cls, user, server="", subnets=None):
    c = Config()
    c.AWS.hub_id = "owner-hub"
    c.AWS.region = "us-east-1"
    c.EBSVolume.availability_zone = "us-east-1a"
    c.EBSVolume.size = 1
    if subnets:
        c.EFSVolume.subnet_ids = [subnets["us-east-1a"]]
    return cls(FakeSpawner(user, server, config=c))


async def test_ebs_refuses_a_volume_tagged_for_someone_else(moto):
    ec2 = boto3.client("ec2", region_name="us-east-1")
    alice = make(EBSVolume, "a--b")
    vid = await alice.ensure()
    # "a"'s server "b" had the same key as user "a--b" before; now its own volume
    other = make(EBSVolume, "a", "b")
    assert await other.ensure() != vid
    # a state pointing at alice's volume is refused, and the volume is untouched
    mallory = make(EBSVolume, "a", "b")
    mallory.load_state({"driver": "ebs", "id": vid})
    before = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
    with pytest.raises(VolumeOwnedError, match="belongs to someone else .*ds-compute:user='a--b'") as e:
        await mallory.ensure()
    assert e.value.status_code == 403
    after = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
    assert (after["State"], after["Tags"], after.get("Attachments")) == (
        before["State"], before["Tags"], before.get("Attachments")
    )  # fmt: skip
    # its owner still gets it
    again = make(EBSVolume, "a--b")
    again.load_state({"driver": "ebs", "id": vid})
    assert await again.ensure() == vid


async def test_efs_refuses_an_access_point_tagged_for_someone_else(moto, subnets):
    alice = make(EFSVolume, "a:b", subnets=subnets)
    ap = await alice.ensure()
    bob = make(EFSVolume, "a", "b", subnets=subnets)
    assert await bob.ensure() != ap
    mallory = make(EFSVolume, "a", "b", subnets=subnets)
    mallory.load_state({"driver": "efs", "id": ap, "file_system_id": alice.file_system_id})
    with pytest.raises(VolumeOwnedError, match="ds-compute:user='a:b'"):
        await mallory.ensure()
    efs = boto3.client("efs", region_name="us-east-1")
    paths = {a["RootDirectory"]["Path"] for a in efs.describe_access_points()["AccessPoints"]}
    assert {"/ds-compute/a-3ab", "/ds-compute/a--b"} <= paths
