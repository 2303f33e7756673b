"""A start ends the instances an earlier start of the same server left
running without the hub knowing (a hub killed mid-launch), against a real
moto server: only this server's (hub, user and server tags), never another
server's, user's or hub's; one holding the server's EBS volume is stopped
and the volume detached before it is terminated (issue 12 §4)."""

from __future__ import annotations

import boto3
import pytest
from aws.harness import FakeSpawner, moto_server, tier
from test_aws_unit import make, make_config, stop_host

from jupyter_ds_compute.backends import aws
from jupyter_ds_compute.backends.ec2 import EC2Backend
from jupyter_ds_compute.volumes.ebs import EBSVolume

pytestmark = pytest.mark.ec2


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    with moto_server(str(tmp_path_factory.mktemp("moto"))) as server:
        yield server


@pytest.fixture(scope="module")
def ec2(moto):
    return boto3.client("ec2", region_name="us-east-1")


@pytest.fixture(scope="module")
def subnets(ec2):
    return {s["AvailabilityZone"]: s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}


def stray(ec2, subnets, user, server="", hub="unit-hub"):
    """An instance tagged as ``user``'s server ``server`` that no state names
    (what a launch whose hub died leaves behind)."""
    tags = {"ds-compute:hub": hub, "ds-compute:user": user, "ds-compute:server": server}
    tags["ds-compute:tier"] = "small"
    r = ec2.run_instances(
        ImageId="ami-12c6146b",
        InstanceType="t3.medium",
        MinCount=1,
        MaxCount=1,
        SubnetId=subnets["us-east-1a"],
        TagSpecifications=[{"ResourceType": "instance", "Tags": aws.tag_list(tags)}],
    )
    return r["Instances"][0]["InstanceId"]


def state(ec2, iid):
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


async def test_stray_of_this_server_is_terminated_others_untouched(ec2, subnets, caplog):
    mine = stray(ec2, subnets, "left-alice")
    named = stray(ec2, subnets, "left-alice", "gpu")  # another server of the same user
    other_user = stray(ec2, subnets, "left-bob")
    other_hub = stray(ec2, subnets, "left-alice", hub="another-hub")
    spawner, backend, volume = make("left-alice", subnets)
    await volume.ensure()
    caplog.set_level("WARNING")
    host = await backend.prepare(tier("small"))
    assert host.id not in (mine, named, other_user, other_hub)
    assert state(ec2, mine) in ("shutting-down", "terminated")
    for iid in (named, other_user, other_hub):
        assert state(ec2, iid) == "running", iid
    assert any(mine in r.getMessage() and "left-alice" in r.getMessage() for r in caplog.records)
    # exactly one server of left-alice's default server runs: the new one
    live = ec2.describe_instances(
        Filters=[
            {"Name": "tag:ds-compute:hub", "Values": ["unit-hub"]},
            {"Name": "tag:ds-compute:user", "Values": ["left-alice"]},
            {"Name": "tag:ds-compute:server", "Values": [""]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    assert [i["InstanceId"] for res in live["Reservations"] for i in res["Instances"]] == [host.id]
    await stop_host(backend, volume)
    ec2.terminate_instances(InstanceIds=[named, other_user, other_hub])


async def test_stray_holding_the_volume_is_stopped_detached_then_terminated(ec2, subnets):
    # an earlier start got as far as attaching the volume, then the hub died
    spawner, backend, volume = make("left-carol", subnets)
    first, _ = await start_host_lost(backend, volume)
    # the restarted hub knows nothing of it: a fresh backend, empty state
    spawner2 = FakeSpawner("left-carol", config=make_config(subnets))
    spawner2.volume = EBSVolume(spawner2)
    backend2 = EC2Backend(spawner2)
    await spawner2.volume.ensure()
    assert spawner2.volume.volume_id == volume.volume_id
    calls = []

    def record(model, **kwargs):
        calls.append(model.name)

    ec2_client = backend2.aws_client("ec2")
    ec2_client.meta.events.register("before-call.ec2", record)
    try:
        host = await backend2.prepare(tier("small"))
    finally:
        ec2_client.meta.events.unregister("before-call.ec2", record)
    assert state(ec2, first) in ("shutting-down", "terminated")
    order = [c for c in calls if c in ("StopInstances", "DetachVolume", "TerminateInstances")]
    assert order[:3] == ["StopInstances", "DetachVolume", "TerminateInstances"], order
    vol = ec2.describe_volumes(VolumeIds=[volume.volume_id])["Volumes"][0]
    assert vol["State"] == "available" and not vol["Attachments"]
    # the new instance gets the volume
    await spawner2.volume.attach(host)
    vol = ec2.describe_volumes(VolumeIds=[volume.volume_id])["Volumes"][0]
    assert [a["InstanceId"] for a in vol["Attachments"]] == [host.id]
    await stop_host(backend2, spawner2.volume)


async def start_host_lost(backend, volume):
    await volume.ensure()
    host = await backend.prepare(tier("small"))
    await volume.attach(host)
    return host.id, host
