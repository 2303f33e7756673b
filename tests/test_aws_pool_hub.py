"""Warm pools end to end: a real hub configured by ``configs/aws.py`` with the
``gpu`` tier's ``warm_pool: 1``, a moto server and the instance emulator with
delays (launch -> running 2 s, boot 1 s, attach and detach 1 s each).

The hub's keeper boots one gpu instance that waits with pool tags; a switch
to gpu takes it (no instance is launched for the user: the only launch during
the switch is the keeper's replacement), the keeper replenishes the pool,
and the service shows the pool on the admin page and in its metrics.
"""

from __future__ import annotations

import os

import boto3
import pytest
import test_aws_prepare_hub as prepare_hub
from hubtest import wait_for
from test_aws_hub import check_accounting, live_instances, read, service, write
from test_aws_prepare_hub import BOOT_DELAY, HUB_ENV, LAUNCH_DELAY, outcome, request, steps

from jupyter_ds_compute.backends.ec2pool import POOL_TAG

pytestmark = [
    pytest.mark.ec2,
    pytest.mark.hub,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the instance emulator needs root (namespaces, loop devices)"
    ),
]

# one moto + emulator world per module, as test_aws_prepare_hub has it
aws_world = prepare_hub.aws_world
moto, emulator, ec2, _no_faults = (
    prepare_hub.moto,
    prepare_hub.emulator,
    prepare_hub.ec2,
    prepare_hub._no_faults,
)
HUB_EXTRA_CONFIG = prepare_hub.HUB_EXTRA_CONFIG + (
    "c.DSComputeSpawner.profile_list = [dict(p, warm_pool=1) if p['slug'] == 'gpu' else p"
    " for p in c.DSComputeSpawner.profile_list]\n"
    "c.EC2Backend.warm_pool_interval = 1\n"
    "c.EC2Backend.warm_pool_lifetime = 600\n"
)
HUB_ID = HUB_ENV["DS_COMPUTE_AWS_HUB_ID"]


def pool_ready(client):
    """Running gpu pool instances whose bootstrap waits for a spec."""
    r = client.describe_instances(
        Filters=[
            {"Name": "tag:ds-compute:hub", "Values": [HUB_ID]},
            {"Name": f"tag:{POOL_TAG}", "Values": ["gpu"]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )
    found = [i for res in r["Reservations"] for i in res["Instances"]]
    ssm = boto3.client("ssm", region_name="us-east-1")
    waiting = []
    for inst in found:
        try:
            ssm.get_parameter(Name=f"/ds-compute/launch/{inst['InstanceId']}.waiting")
        except ssm.exceptions.ParameterNotFound:
            continue
        waiting.append(inst)
    return waiting


def pool_launched(client):
    """Every instance ever launched with the pool tag (a taken one keeps the key, empty)."""
    r = client.describe_instances(
        Filters=[
            {"Name": "tag:ds-compute:hub", "Values": [HUB_ID]},
            {"Name": "tag-key", "Values": [POOL_TAG]},
        ]
    )
    return {i["InstanceId"] for res in r["Reservations"] for i in res["Instances"]}


def test_switch_onto_a_warm_pool_tier_launches_nothing_and_the_pool_refills(hub, ec2, moto, emulator):
    user = hub.create_user("aws-pool")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"}, timeout=180)  # its spawner starts the keeper
    _, old = check_accounting(ec2, user, "small")
    write(hub, user, token, "notes.txt", "written on small")
    (pooled,) = wait_for(lambda: pool_ready(ec2), 90, interval=0.3, message="a booted gpu pool instance")
    assert pooled["InstanceType"] == "g5.xlarge" and pooled["Placement"]["AvailabilityZone"] == "us-east-1a"
    launched_before = pool_launched(ec2)
    moto.clear_calls()
    rec = outcome(hub, token, request(hub, token, "gpu"))
    calls = moto.stats()["callers"]["hub"]
    assert rec["state"] == "succeeded", rec
    s = steps(rec)
    # nothing launched for the user: the server runs on the pool's instance, and the only
    # launches during the switch are the keeper's replacements (pool-tagged)
    vol, inst = check_accounting(ec2, user, "gpu")
    assert inst["InstanceId"] == pooled["InstanceId"]
    new_pool = pool_launched(ec2) - launched_before
    assert calls.get("RunInstances", 0) == len(new_pool) <= 1, (calls, new_pool)
    assert {i["InstanceId"] for i in live_instances(ec2, user)} == {pooled["InstanceId"]}
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["ds-compute:user"] == user and tags[POOL_TAG] == ""
    # the prepare step waited for no launch or boot
    assert s["prepare"]["status"] == "done", s["prepare"]
    assert s["prepare"]["duration"] < LAUNCH_DELAY + BOOT_DELAY, s["prepare"]
    assert pooled["InstanceId"] in s["prepare"]["message"], s["prepare"]
    assert read(hub, user, token, "notes.txt") == "written on small"
    assert hub.server_api(user, "ds-compute/api/status", token).json()["tier"]["slug"] == "gpu"
    # replenished: a new instance waits in the pool
    (refill,) = wait_for(
        lambda: [i for i in pool_ready(ec2) if i["InstanceId"] != pooled["InstanceId"]] or None,
        90,
        interval=0.3,
        message="the pool replenished",
    )
    assert refill["InstanceId"] in pool_launched(ec2) - launched_before
    # the service shows the pool and its idle cost (the operator's)
    hub.create_user("admin")
    admin = hub.user_token("admin")

    def reported():
        text = service(hub, "GET", "metrics", admin).text
        return text if 'ds_compute_warm_pool_machines{tier="gpu"} 1.0' in text else None

    text = wait_for(reported, 90, interval=1, message="the pool reported to the service")
    line = next(
        x for x in text.splitlines() if x.startswith('ds_compute_warm_pool_idle_cost_total{tier="gpu"}')
    )
    assert float(line.split()[-1]) > 0, line
    page = service(hub, "GET", "admin", admin)
    assert page.status_code == 200 and 'data-testid="warm-pools"' in page.text, page.text[:500]
    hub.stop_server(user, timeout=120)
    check_accounting(ec2, user, None)
    # the pool instance outlives the user's server: it is the pool's
    assert [i["InstanceId"] for i in pool_ready(ec2)] == [refill["InstanceId"]]
    assert not emulator.errors, emulator.errors
