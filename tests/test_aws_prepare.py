"""Make before break on the EC2 backend against a real moto server (HTTP on
127.0.0.1): ``prepare_ahead`` launches the target instance in the volume's
zone while the old instance keeps its volume, waits for its bootstrap, and
the start that takes it launches nothing; what moto accepts and AWS refuses
(an EBS volume attached twice, or across zones) is refused by our code; the
leftover logic ends an abandoned prepared instance but never the one being
taken or the old server's; an unused prepared instance is terminated.

No instance emulator here: the bootstrap's ``.waiting`` report is written
by the test (standing in for the instance)."""

from __future__ import annotations

import asyncio

import boto3
import pytest
from aws.harness import moto_server, tier
from test_aws_unit import attachments, instances, make, start_host, stop_host

from jupyter_ds_compute.backends.base import BackendError
from jupyter_ds_compute.backends.ec2 import EC2Backend
from jupyter_ds_compute.volumes.base import VolumeError
from jupyter_ds_compute.volumes.efs import EFSVolume

pytestmark = pytest.mark.ec2

PREFIX = "/ds-compute/launch/"


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


@pytest.fixture(autouse=True)
def _reset_faults(moto):
    moto.reset()
    yield
    moto.reset()


def ssm():
    return boto3.client("ssm", region_name="us-east-1")


async def bootstrap_waits(known, ec2, user, delay=0.3):
    """Stand in for the instance: once an instance of ``user`` besides the ``known`` ones runs,
    write its ``.waiting`` report (what ec2_userdata.sh does when it waits for its spec)."""
    while True:
        await asyncio.sleep(delay)
        new = [i["InstanceId"] for i in instances(ec2, user, ("running",)) if i["InstanceId"] not in known]
        if new:
            ssm().put_parameter(Name=f"{PREFIX}{new[0]}.waiting", Value="1", Type="String", Overwrite=True)
            return new[0]


async def prepare_ahead(backend, ec2, user, slug="gpu"):
    known = {i["InstanceId"] for i in instances(ec2, user)}  # before the launch
    stand_in = asyncio.ensure_future(bootstrap_waits(known, ec2, user))
    try:
        host = await backend.prepare_ahead(tier(slug), ["jupyterhub-singleuser"], {}, "/home/jovyan", "k")
    finally:
        stand_in.cancel()
    return host


def fresh(spawner):
    """A fresh backend object on the same (old) spawner, as the hub makes one for a switch."""
    return EC2Backend(spawner)


async def test_prepare_ahead_in_volume_zone_old_untouched_start_launches_nothing(ec2, subnets, moto):
    user = "mbb-ebs"
    spawner, old, volume = make(user, subnets)
    old_host, _ = await start_host(spawner, old, volume, "small")
    new = fresh(spawner)
    moto.clear_calls()
    host = await prepare_ahead(new, ec2, user)
    calls = moto.stats()["callers"]["hub"]
    assert calls.get("RunInstances") == 1 and "TerminateInstances" not in calls, calls
    assert host.zone == "us-east-1a" and host.id != old_host.id
    # the old instance still runs and holds the volume: the prepare did not touch it
    live = {i["InstanceId"]: i for i in instances(ec2, user)}
    assert live[old_host.id]["State"]["Name"] == "running"
    assert live[host.id]["InstanceType"] == "g5.xlarge"
    assert attachments(ec2, volume.volume_id) == [old_host.id]
    # AWS would refuse a second attachment; moto would not: our code does
    with pytest.raises(VolumeError, match=f"is attached to instance {old_host.id}"):
        await volume.attach(host)
    assert attachments(ec2, volume.volume_id) == [old_host.id]
    # the cut-over: the old server stops, the start takes the prepared instance
    await stop_host(old, volume)
    moto.clear_calls()
    taken = await new.prepare(tier("gpu"))
    assert taken.id == host.id
    path = await volume.attach(taken)
    await new.start(tier("gpu"), ["jupyterhub-singleuser"], {"DS_COMPUTE_SERVER_KEY": "k"}, path)
    calls = moto.stats()["callers"]["hub"]
    assert "RunInstances" not in calls and "TerminateInstances" not in calls, calls
    assert calls.get("PutParameter") == 1
    assert attachments(ec2, volume.volume_id) == [host.id]
    assert [i["InstanceId"] for i in instances(ec2, user)] == [host.id]
    await stop_host(new, volume)
    assert instances(ec2, user) == []
    names = [p["Name"] for p in ssm().describe_parameters()["Parameters"]]
    assert not [n for n in names if host.id in n], names


async def test_prepared_instance_in_another_zone_is_refused(ec2, subnets):
    """An instance prepared anywhere (EFS-like, no zone) cannot take an EBS volume in
    another zone that may not move: the take refuses, and so does the volume's attach
    (moto would attach). (A volume that may move is copied there: test_aws_hub.py.)"""
    user = "mbb-zone"
    spawner, _, volume = make(
        user, subnets, EC2Backend__subnet_ids=[subnets["us-east-1b"]], EBSVolume__move_across_zones=False
    )
    await volume.ensure()
    assert volume.zone() == "us-east-1a"
    spawner.volume = type(
        "NoZone", (), {"zone": lambda self: None, "volume_id": "", "moves_across_zones": False}
    )()
    new = fresh(spawner)
    host = await prepare_ahead(new, ec2, user)
    assert host.zone == "us-east-1b"
    spawner.volume = volume
    with pytest.raises(BackendError, match="is in us-east-1b, but your volume is in us-east-1a"):
        await new.prepare(tier("gpu"))
    with pytest.raises(VolumeError, match="cannot cross zones"):
        await volume.attach(host)
    assert attachments(ec2, volume.volume_id) == []
    # the spawner's cleanup of a failed start: the untaken instance is terminated
    await new.stop(now=True)
    await new.release()
    assert instances(ec2, user) == []


async def test_efs_prepares_in_any_zone(ec2, subnets, moto):
    user = "mbb-efs"
    spawner, old, volume = make(
        user,
        subnets,
        volume_cls=EFSVolume,
        EFSVolume__subnet_ids=[subnets["us-east-1a"], subnets["us-east-1b"]],
    )
    old_host, _ = await start_host(spawner, old, volume, "small")
    moto.arm(
        action="RunInstances",
        error="InsufficientInstanceCapacity",
        match={"SubnetId": subnets["us-east-1a"]},
        status=500,
    )
    new = fresh(spawner)
    host = await prepare_ahead(new, ec2, user)
    assert host.zone == "us-east-1b" and old_host.zone == "us-east-1a"
    await stop_host(old, volume)
    taken = await new.prepare(tier("gpu"))
    path = await volume.attach(taken)
    assert taken.extra["mount"]["access_point_id"] == volume.volume_id and path == "/home/jovyan"
    await stop_host(new, volume)
    assert instances(ec2, user) == []


async def test_capacity_error_while_preparing_names_it_and_leaves_the_old(ec2, subnets, moto):
    user = "mbb-ice"
    spawner, old, volume = make(user, subnets, EC2Backend__capacity_retries=2)
    old_host, _ = await start_host(spawner, old, volume, "small")
    moto.arm(
        action="RunInstances",
        error="InsufficientInstanceCapacity",
        status=500,
        match={"InstanceType": "g5.xlarge"},
    )
    new = fresh(spawner)
    with pytest.raises(
        BackendError, match=r"no g5.xlarge capacity in us-east-1a.*InsufficientInstanceCapacity"
    ):
        await new.prepare_ahead(tier("gpu"), ["x"], {}, "/home/jovyan", "k")
    await new.stop(now=True)
    await new.release()
    assert [i["InstanceId"] for i in instances(ec2, user)] == [old_host.id]
    assert attachments(ec2, volume.volume_id) == [old_host.id]
    await stop_host(old, volume)


async def test_unused_prepared_instance_is_terminated_even_with_on_stop_stop(ec2, subnets):
    user = "mbb-unused"
    spawner, old, volume = make(user, subnets, EC2Backend__on_stop="stop")
    old_host, _ = await start_host(spawner, old, volume, "small")
    new = fresh(spawner)
    host = await prepare_ahead(new, ec2, user)
    await new.stop(now=True)
    await new.release()
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for i in instances(
            ec2, user, ("pending", "running", "stopping", "stopped", "shutting-down", "terminated")
        )
    }
    assert states[host.id] in ("shutting-down", "terminated")
    assert states[old_host.id] == "running"
    await stop_host(old, volume)


async def test_taking_start_ends_an_abandoned_prepared_instance_never_its_own(ec2, subnets):
    """A hub restarted mid-switch prepared twice: the start that takes the second
    one ends the first (found by tags), keeps its own."""
    user = "mbb-stale"
    spawner, old, volume = make(user, subnets)
    old_host, _ = await start_host(spawner, old, volume, "small")
    abandoned = await prepare_ahead(fresh(spawner), ec2, user)  # the hub that prepared it is gone
    new = fresh(spawner)
    host = await prepare_ahead(new, ec2, user)
    live = {i["InstanceId"] for i in instances(ec2, user)}
    assert live == {old_host.id, abandoned.id, host.id}  # preparing ended nothing
    await stop_host(old, volume)
    taken = await new.prepare(tier("gpu"))
    assert taken.id == host.id
    await volume.attach(taken)
    live = {i["InstanceId"] for i in instances(ec2, user, ("pending", "running"))}
    assert live == {host.id}
    await stop_host(new, volume)


async def test_prepared_instance_that_dies_while_booting_fails_clearly(ec2, subnets):
    user = "mbb-dies"
    spawner, _, volume = make(user, subnets, EC2Backend__launch_timeout=20)
    await volume.ensure()
    new = fresh(spawner)

    async def kill():
        while not new.instance_id:
            await asyncio.sleep(0.1)
        ec2.terminate_instances(InstanceIds=[new.instance_id])

    killer = asyncio.ensure_future(kill())
    with pytest.raises(BackendError, match="ended while"):
        await new.prepare_ahead(tier("small"), ["x"], {}, "/home/jovyan", "k")
    await killer
    await new.stop(now=True)
    await new.release()
    assert instances(ec2, user) == []
