"""Warm pools on EC2 against a real moto server (HTTP on 127.0.0.1): the keeper
fills a tier's pool to ``warm_pool`` booted instances (pool tags, no user),
a start or a switch takes one (retagged to its server, nothing launched for
it) and the keeper replenishes; two concurrent takers get different
instances; no server's leftover logic ends a pool instance; a volume in
another zone does not take one (the start launches as before).

No instance emulator here: the bootstrap's ``.waiting`` report is written
by the test (standing in for the instances)."""

from __future__ import annotations

import asyncio
import types

import boto3
import pytest
import pytest_asyncio
from aws.harness import FakeSpawner, moto_server
from test_aws_unit import instances, make_config

from jupyter_ds_compute import catalogue, tiers
from jupyter_ds_compute.backends import aws
from jupyter_ds_compute.backends.ec2 import EC2Backend
from jupyter_ds_compute.backends.ec2pool import POOL_TAG, WarmPool
from jupyter_ds_compute.volumes.ebs import EBSVolume

pytestmark = pytest.mark.ec2

PREFIX = "/ds-compute/launch/"
HUB_ID = "pool-hub"


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


def ssm():
    return boto3.client("ssm", region_name="us-east-1")


def gpu(n=1):
    return types.SimpleNamespace(slug="gpu", display_name="GPU", extra={}, warm_pool=n)


def small():
    return types.SimpleNamespace(slug="small", display_name="Small", extra={}, warm_pool=0)


def config(subnets, **over):
    return make_config(
        subnets,
        AWS__hub_id=HUB_ID,
        EC2Backend__warm_pool_interval=0.3,
        EC2Backend__warm_pool_lifetime=600,
        **over,
    )


def make(user, subnets, **over):
    spawner = FakeSpawner(user, config=config(subnets, **over))
    spawner.volume = EBSVolume(spawner)
    return spawner, EC2Backend(spawner), spawner.volume


def pool_instances(ec2, states=("pending", "running")):
    r = ec2.describe_instances(
        Filters=[
            {"Name": "tag:ds-compute:hub", "Values": [HUB_ID]},
            {"Name": "tag-key", "Values": [POOL_TAG]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )
    found = [i for res in r["Reservations"] for i in res["Instances"]]
    return [i for i in found if aws.tag_dict(i["Tags"]).get(POOL_TAG)]


async def bootstraps(ec2):
    """Stand in for every instance's bootstrap: once it runs, it says it waits for its spec."""
    done = set()
    while True:
        r = ec2.describe_instances(
            Filters=[
                {"Name": "tag:ds-compute:hub", "Values": [HUB_ID]},
                {"Name": "instance-state-name", "Values": ["running"]},
            ]
        )
        for i in (i for res in r["Reservations"] for i in res["Instances"]):
            if i["InstanceId"] not in done:
                ssm().put_parameter(
                    Name=f"{PREFIX}{i['InstanceId']}.waiting", Value="1", Type="String", Overwrite=True
                )
                done.add(i["InstanceId"])
        await asyncio.sleep(0.2)


async def until(predicate, timeout=30, what="it"):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def run_instances(moto):
    return moto.stats()["callers"]["hub"].get("RunInstances", 0)


@pytest_asyncio.fixture(loop_scope="function")
async def world(moto, ec2, subnets):
    """A pool keeper for ``gpu`` (started by the test), the bootstrap stand-in; at the end
    the keeper closed and every instance of the hub terminated."""
    moto.reset()
    stand_in = asyncio.ensure_future(bootstraps(ec2))
    pools = []

    def start(n=1, **over):
        parent = FakeSpawner("pool-parent", config=config(subnets, **over))
        pool = WarmPool.start(parent, [gpu(n)])
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        await pool.close()
    stand_in.cancel()
    r = ec2.describe_instances(Filters=[{"Name": "tag:ds-compute:hub", "Values": [HUB_ID]}])
    ids = [i["InstanceId"] for res in r["Reservations"] for i in res["Instances"]]
    if ids:
        ec2.terminate_instances(InstanceIds=ids)
    moto.reset()


# -- the tier key ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, "1", True, 1.5, None])
def test_warm_pool_must_be_a_whole_number_naming_tier_and_key(bad):
    with pytest.raises(tiers.TierConfigError, match=r"tier 'gpu': field 'warm_pool' must be an integer >= 0"):
        tiers.tiers_of([{"display_name": "GPU", "slug": "gpu", "warm_pool": bad}])


def test_warm_pool_defaults_to_zero_and_reaches_the_catalogue():
    profiles = [{"display_name": "S", "slug": "small"}, {"display_name": "G", "slug": "gpu", "warm_pool": 2}]
    assert [t.warm_pool for t in tiers.tiers_of(profiles)] == [0, 2]
    assert [p.get("warm_pool", 0) for p in catalogue.catalogue(profiles)["profiles"]] == [0, 2]


# -- the keeper ------------------------------------------------------------------------


async def test_pool_fills_to_n_booted_instances_with_pool_tags_in_the_pool_zone(world, ec2, moto):
    pool = world(2)
    await until(lambda: pool.count("gpu") == 2, what="two ready pool instances")
    found = pool_instances(ec2)
    assert len(found) == 2 and run_instances(moto) == 2
    for inst in found:
        tags = aws.tag_dict(inst["Tags"])
        assert tags[POOL_TAG] == "gpu" and tags["ds-compute:hub"] == HUB_ID
        assert "ds-compute:user" not in tags and "ds-compute:server" not in tags
        assert inst["InstanceType"] == "g5.xlarge"
        assert inst["Placement"]["AvailabilityZone"] == "us-east-1a"  # the first subnet's zone
        assert inst.get("InstanceInitiatedShutdownBehavior", "terminate") == "terminate"
    # full: a few more rounds launch nothing
    await asyncio.sleep(1.5)
    assert run_instances(moto) == 2 and pool.count() == 2


async def test_a_start_takes_a_pool_instance_retagged_and_the_keeper_replenishes(world, ec2, moto, subnets):
    pool = world(1)
    await until(lambda: pool.count("gpu") == 1, what="a ready pool instance")
    (pooled,) = pool_instances(ec2)
    spawner, backend, volume = make("pool-taker", subnets)
    await volume.ensure()
    host = await backend.prepare(gpu(1))
    assert host.id == pooled["InstanceId"] and host.zone == "us-east-1a"
    # nothing was launched for the start: the user's only instance is the pool's
    assert [POOL_TAG in aws.tag_dict(i["Tags"]) for i in instances(ec2, "pool-taker")] == [True]
    tags = aws.tag_dict(instances(ec2, "pool-taker")[0]["Tags"])
    assert (
        tags["ds-compute:user"] == "pool-taker" and tags[POOL_TAG] == "" and tags["ds-compute:tier"] == "gpu"
    )
    assert backend.is_ours(tags, spawner)
    await volume.attach(host)
    await backend.start(gpu(1), ["jupyterhub-singleuser"], {"DS_COMPUTE_SERVER_KEY": "k"}, "/home/jovyan")
    assert ssm().get_parameter(Name=f"{PREFIX}{host.id}", WithDecryption=True)["Parameter"]["Value"]
    await until(lambda: pool.count("gpu") == 1, what="the pool replenished")
    (refill,) = pool_instances(ec2)
    assert refill["InstanceId"] != host.id
    # the taken instance is the server's: its stop ends it, the pool's stays
    await backend.stop(now=True)
    await volume.detach()
    await backend.release()
    assert instances(ec2, "pool-taker") == []
    assert [i["InstanceId"] for i in pool_instances(ec2)] == [refill["InstanceId"]]


async def test_two_concurrent_takers_get_different_instances(world, ec2, moto, subnets):
    pool = world(2)
    await until(lambda: pool.count("gpu") == 2, what="two ready pool instances")
    pooled = {i["InstanceId"] for i in pool_instances(ec2)}
    (_, a, va), (_, b, vb) = make("pool-a", subnets), make("pool-b", subnets)
    await asyncio.gather(va.ensure(), vb.ensure())
    ha, hb = await asyncio.gather(
        a.prepare_ahead(gpu(2), ["x"], {}, "/home/jovyan", "ka"),
        b.prepare_ahead(gpu(2), ["x"], {}, "/home/jovyan", "kb"),
    )
    assert ha.id != hb.id and {ha.id, hb.id} == pooled
    assert [i["InstanceId"] for i in instances(ec2, "pool-a")] == [ha.id]
    assert [i["InstanceId"] for i in instances(ec2, "pool-b")] == [hb.id]
    # prepared, not started: released like any prepared instance
    for backend in (a, b):
        await backend.stop(now=True)
        await backend.release()
    assert instances(ec2, "pool-a") == instances(ec2, "pool-b") == []


async def test_leftover_logic_spares_pool_instances(world, ec2, moto, subnets):
    pool = world(1)
    await until(lambda: pool.count("gpu") == 1, what="a ready pool instance")
    (pooled,) = pool_instances(ec2)
    spawner, backend, volume = make("pool-leftovers", subnets)
    await volume.ensure()
    abandoned = EC2Backend(spawner)  # an earlier start a hub lost
    await abandoned.prepare(small())
    host = await backend.prepare(small())  # its leftover check ends the abandoned one only
    live = {i["InstanceId"] for i in instances(ec2, "pool-leftovers", ("pending", "running"))}
    assert live == {host.id}
    assert [i["InstanceId"] for i in pool_instances(ec2)] == [pooled["InstanceId"]]
    assert pool.count("gpu") == 1
    await backend.stop(now=True)
    await backend.release()


async def test_a_volume_in_another_zone_takes_nothing_and_launches(world, ec2, moto, subnets):
    pool = world(1)
    await until(lambda: pool.count("gpu") == 1, what="a ready pool instance")
    (pooled,) = pool_instances(ec2)
    spawner, backend, volume = make("pool-zone-b", subnets, EBSVolume__availability_zone="us-east-1b")
    await volume.ensure()
    assert volume.zone() == "us-east-1b"
    before = run_instances(moto)
    host = await backend.prepare(gpu(1))
    assert host.id != pooled["InstanceId"] and host.zone == "us-east-1b"
    assert run_instances(moto) == before + 1
    assert pool.take("gpu", "us-east-1b", "g5.xlarge") is None
    assert [e["id"] for e in pool.ready[("gpu", "us-east-1a")]] == [pooled["InstanceId"]]
    assert aws.tag_dict(pool_instances(ec2)[0]["Tags"])[POOL_TAG] == "gpu"
    await backend.stop(now=True)
    await backend.release()


async def test_pool_instances_a_previous_hub_left_are_terminated_at_start(world, ec2, moto):
    pool = world(1)
    await until(lambda: pool.count("gpu") == 1, what="a ready pool instance")
    (old,) = pool_instances(ec2)
    await pool.close()  # the hub process is gone; its instance waits on
    pool = world(1)
    await until(lambda: pool.count("gpu") == 1, what="the new keeper's instance")
    live = {i["InstanceId"] for i in pool_instances(ec2)}
    assert old["InstanceId"] not in live and len(live) == 1
