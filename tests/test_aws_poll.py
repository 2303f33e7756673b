"""Fewer AWS calls (issue 16 §2), against a real moto server (HTTP on 127.0.0.1):
the hub-wide instance poller, the calls one switch makes, and the shared
client-side token bucket under EC2-like throttling."""

from __future__ import annotations

import asyncio
import json
import time

import boto3
import pytest
from aws.harness import FakeSpawner, moto_server, tier
from traitlets.config import Config

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


@pytest.fixture(autouse=True)
def _reset(moto):
    moto.reset()
    aws.InstancePoller._shared.clear()
    aws._buckets.clear()
    yield
    moto.reset()


def config(subnets, **over):
    c = Config()
    c.AWS.hub_id = "poll-hub"
    c.EC2Backend.ami_id = "ami-12c6146b"
    c.EC2Backend.subnet_ids = [subnets["us-east-1a"]]
    c.EBSVolume.availability_zone = "us-east-1a"
    c.EBSVolume.size = 1
    for key, value in over.items():
        cls, _, trait = key.partition("__")
        c[cls][trait] = value
    return c


def test_token_bucket_queues_callers_fifo_at_the_rate():
    b = aws.TokenBucket(5, 2.0)
    waits = [b.reserve() for _ in range(8)]
    # one token of the burst is kept in reserve: 4 at once, then one every 0.5 s
    assert waits[:4] == [0, 0, 0, 0]
    assert waits[4:] == pytest.approx([0.5, 1.0, 1.5, 2.0], abs=0.01)


def test_rate_limits_merge_over_the_defaults_and_none_turns_one_off():
    assert aws.bucket("r", "e", "RunInstances", {}).rate == 2.0
    assert aws.bucket("r", "e", "RunInstances", {"RunInstances": (20, 5)}).burst == 20
    assert aws.bucket("r", "e", "RunInstances", {"RunInstances": None}) is None
    assert aws.bucket("r", "e", "DescribeVolumes", {"RunInstances": (20, 5)}).rate == 20.0
    assert aws.bucket("r", "e", "GetParametersByPath", {}) is None


async def test_one_describe_per_interval_for_all_servers(ec2, subnets, moto):
    n = 20
    r = ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=n,
        MaxCount=n,
        SubnetId=subnets["us-east-1a"],
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "ds-compute:hub", "Value": "poll-hub"}]}
        ],
    )
    ids = [i["InstanceId"] for i in r["Instances"]]
    c = config(subnets, EC2Backend__poll_interval=30.0)
    backends = []
    for k, iid in enumerate(ids):
        b = EC2Backend(FakeSpawner(f"poller-{k}", config=c))
        b.load_state({"instance_id": iid})
        backends.append(b)
    moto.clear_calls()
    assert await asyncio.gather(*(b.poll() for b in backends)) == [None] * n
    calls = moto.stats()["calls"]
    assert calls.get("DescribeInstances") == 1, calls
    assert calls.get("GetParametersByPath") == 1, calls
    assert "GetParameter" not in calls
    # within the interval: no call at all
    assert await asyncio.gather(*(b.poll() for b in backends)) == [None] * n
    assert sum(moto.stats()["calls"].values()) == 2
    # a server that exited (its bootstrap's report) and an instance that ended
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(
        Name=f"/ds-compute/launch/{ids[3]}.exit", Type="String", Value=json.dumps({"status": 3, "tail": "x"})
    )
    ec2.terminate_instances(InstanceIds=[ids[5]])
    for b in backends:
        b.poll_interval = 0
    answers = await asyncio.gather(*(b.poll() for b in backends))
    assert answers[3] == 3 and answers[5] == 0
    assert [a for k, a in enumerate(answers) if k not in (3, 5)] == [None] * (n - 2)
    ssm.delete_parameter(Name=f"/ds-compute/launch/{ids[3]}.exit")
    ec2.terminate_instances(InstanceIds=ids)


async def test_poll_of_an_instance_the_hub_wide_answer_does_not_name(ec2, subnets, moto):
    """Another hub id on the instance (or a launch not yet visible to filters): asked by id."""
    r = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=subnets["us-east-1a"])
    iid = r["Instances"][0]["InstanceId"]
    b = EC2Backend(FakeSpawner("untagged", config=config(subnets)))
    b.load_state({"instance_id": iid})
    assert await b.poll() is None
    ec2.terminate_instances(InstanceIds=[iid])
    b.poll_interval = 0
    assert await b.poll() == 0


class Server:
    def __init__(self, user, cfg):
        self.spawner = FakeSpawner(user, config=cfg)
        self.spawner.volume = EBSVolume(self.spawner)
        self.backend = None

    async def start(self, slug):
        self.backend = EC2Backend(self.spawner)
        await self.spawner.volume.ensure()
        host = await self.backend.prepare(tier(slug))
        path = await self.spawner.volume.attach(host)
        await self.backend.start(tier(slug), ["jupyterhub-singleuser"], {}, path)

    async def stop(self):
        await self.backend.stop()
        await self.spawner.volume.detach()
        await self.backend.release()


async def test_a_switch_makes_at_most_ten_calls(ec2, subnets, moto):
    srv = Server("switcher", config(subnets))
    await srv.start("small")
    first = srv.backend.instance_id
    moto.clear_calls()
    await srv.stop()
    await srv.start("gpu")
    calls = moto.stats()["calls"]
    assert sum(calls.values()) <= 10, calls
    assert calls["RunInstances"] == 1 and calls["AttachVolume"] == 1 and calls["PutParameter"] == 1
    assert "DescribeSubnets" not in calls  # zones of subnets are cached
    # nothing skipped that matters: the old instance is gone, the volume is on the new one
    old = ec2.describe_instances(InstanceIds=[first])["Reservations"][0]["Instances"][0]
    assert old["State"]["Name"] in ("shutting-down", "terminated")
    vol = ec2.describe_volumes(VolumeIds=[srv.spawner.volume.volume_id])["Volumes"][0]
    assert [a["InstanceId"] for a in vol["Attachments"]] == [srv.backend.instance_id]
    await srv.stop()
    assert (
        ec2.describe_volumes(VolumeIds=[srv.spawner.volume.volume_id])["Volumes"][0]["State"] == "available"
    )


async def test_shared_bucket_keeps_a_herd_of_launches_unthrottled(ec2, subnets, moto):
    n = 8
    moto.rate({"RunInstances": [3, 4]})
    c = config(subnets, AWS__rate_limits={"RunInstances": (3, 4)})
    backends = []
    for k in range(n):
        spawner = FakeSpawner(f"herd-{k}", config=c)
        spawner.volume = EBSVolume(spawner)
        await spawner.volume.ensure()
        backends.append(EC2Backend(spawner))
    t0 = time.monotonic()
    hosts = await asyncio.gather(*(b.prepare(tier("small")) for b in backends))
    elapsed = time.monotonic() - t0
    assert len({h.id for h in hosts}) == n
    stats = moto.stats()
    assert stats["faults"].get("RequestLimitExceeded", 0) == 0, stats
    assert stats["calls"]["RunInstances"] == n
    # 2 at once (one token in reserve), then 4 per second
    assert elapsed >= (n - 2) / 4 - 0.1
    moto.rate({})
    await asyncio.gather(*(b.stop(now=True) for b in backends))


def test_the_hub_policy_allows_the_batched_exit_read_on_the_launch_path_only():
    from jupyter_ds_compute.aws import iam

    doc = iam.hub_policy(region="us-east-1", account="1", partition="aws")
    assert iam.allows(doc, "ssm:GetParametersByPath", "arn:aws:ssm:us-east-1:1:parameter/ds-compute/launch")
    assert not iam.allows(doc, "ssm:GetParametersByPath", "arn:aws:ssm:us-east-1:1:parameter/ds-compute")
    assert not iam.allows(doc, "ssm:GetParametersByPath", "arn:aws:ssm:us-east-1:1:parameter/other")
