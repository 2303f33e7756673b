"""EC2 backend, EBS and EFS volumes against a real moto server (HTTP on
127.0.0.1) with fault injection: the checks moto does not make, the
failures it does not simulate, and the accounting of what we create."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys

import boto3
import pytest
from aws.harness import FakeSpawner, moto_server, tier
from traitlets.config import Config

from jupyter_ds_compute.backends import aws
from jupyter_ds_compute.backends.base import BackendError, HostInfo
from jupyter_ds_compute.backends.ec2 import EC2Backend, render_user_data, script_from_user_data
from jupyter_ds_compute.volumes.base import VolumeError
from jupyter_ds_compute.volumes.ebs import EBSVolume
from jupyter_ds_compute.volumes.efs import EFSVolume

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
    """{az: subnet id} of moto's default VPC."""
    return {s["AvailabilityZone"]: s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}


@pytest.fixture(autouse=True)
def _reset_faults(moto):
    moto.reset()
    yield
    moto.reset()


def make_config(subnets, **over):
    c = Config()
    c.AWS.hub_id = "unit-hub"
    c.AWS.tags = {"Project": "ds-test"}
    c.EC2Backend.ami_id = "ami-12c6146b"
    c.EC2Backend.subnet_ids = [subnets["us-east-1a"], subnets["us-east-1b"]]
    c.EC2Backend.capacity_backoff = 0.05
    c.EC2Backend.poll_interval = 0
    c.EBSVolume.availability_zone = "us-east-1a"
    c.EBSVolume.size = 1
    c.EBSVolume.attach_timeout = 2
    for key, value in over.items():
        cls, _, trait = key.partition("__")
        c[cls][trait] = value
    return c


def make(user, subnets, name="", volume_cls=EBSVolume, **over):
    spawner = FakeSpawner(user, name, config=make_config(subnets, **over))
    spawner.volume = volume_cls(spawner)
    return spawner, EC2Backend(spawner), spawner.volume


def instances(ec2, user, states=("pending", "running", "stopping", "stopped")):
    r = ec2.describe_instances(
        Filters=[
            {"Name": "tag:ds-compute:user", "Values": [user]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )
    return [i for res in r["Reservations"] for i in res["Instances"]]


def attachments(ec2, volume_id):
    vol = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    return [a["InstanceId"] for a in vol["Attachments"] if a["State"] in ("attaching", "attached")]


async def start_host(spawner, backend, volume, slug="small"):
    await volume.ensure()
    host = await backend.prepare(tier(slug))
    path = await volume.attach(host)
    return host, path


async def stop_host(backend, volume):
    await backend.stop(now=True)
    await volume.detach()
    await backend.release()


# -- plumbing -------------------------------------------------------------------


def test_boto3_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ImportError, match=r"pip install jupyter-ds-compute\[aws\]"):
        aws.boto3()


def test_user_data_quotes_values_and_round_trips():
    script = render_user_data(
        region="us-east-1", spec_prefix="/p/$(reboot)/", spec_timeout=5, python="/usr/bin/python3"
    )
    assert "DS_SPEC_PREFIX='/p/$(reboot)/'" in script
    assert not re.search(r"@@[A-Z_]+@@", script)
    from jupyter_ds_compute.backends.ec2 import user_data_mime

    mime = user_data_mime(script)
    assert "scripts-user, always" in mime  # the bootstrap runs at every boot
    assert script_from_user_data(mime) == script


async def test_throttled_call_is_retried_with_jitter(moto):
    """botocore's adaptive retries absorb the throttling; the caller hears of it."""
    moto.rate({"DescribeRegions": [1, 2]})
    c = aws.client("ec2", "us-east-1", max_attempts=10)
    heard = []
    results = await asyncio.gather(
        *(aws.call(c.describe_regions, timeout=60, on_throttle=lambda *a: heard.append(a)) for _ in range(6))
    )
    assert all(r["Regions"] for r in results)
    assert moto.stats()["faults"].get("RequestLimitExceeded", 0) > 0
    assert heard and all(op == "DescribeRegions" for op, _ in heard)


# -- EBS ------------------------------------------------------------------------------


async def test_ebs_volume_created_once_encrypted_gp3_tagged(ec2, subnets):
    spawner, _, volume = make("ebs-create", subnets)
    vid = await volume.ensure()
    assert await volume.ensure() == vid
    vol = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
    assert vol["Encrypted"] and vol["VolumeType"] == "gp3" and vol["Size"] == 1
    assert vol["AvailabilityZone"] == "us-east-1a"
    tags = aws.tag_dict(vol["Tags"])
    assert tags["ds-compute:user"] == "ebs-create" and tags["ds-compute:hub"] == "unit-hub"
    assert tags["Project"] == "ds-test"
    # the state round-trips; a lost state finds the same volume by its tags
    state = volume.get_state()
    again = EBSVolume(spawner)
    again.load_state(state)
    assert await again.ensure() == vid
    fresh = EBSVolume(spawner)
    assert await fresh.ensure() == vid
    # a named server has its own volume
    _, _, other = make("ebs-create", subnets, name="box")
    assert await other.ensure() != vid


async def test_ebs_attach_detach_and_start_stop(ec2, subnets):
    spawner, backend, volume = make("ebs-cycle", subnets)
    host, path = await start_host(spawner, backend, volume)
    assert path == "/home/jovyan"
    assert host.kind == "ec2" and host.zone == "us-east-1a"
    assert attachments(ec2, volume.volume_id) == [host.id]
    assert host.extra["mount"]["volume_id"] == volume.volume_id
    (inst,) = instances(ec2, "ebs-cycle")
    assert inst["InstanceType"] == "t3.medium"
    tags = aws.tag_dict(inst["Tags"])
    assert tags["ds-compute:tier"] == "small" and tags["Project"] == "ds-test"
    # the launch spec goes to SSM, never into user-data
    await backend.start(tier("small"), ["jupyterhub-singleuser"], {"JUPYTERHUB_API_TOKEN": "s3cret"}, path)
    ud = ec2.describe_instance_attribute(InstanceId=host.id, Attribute="userData")["UserData"]["Value"]
    assert "s3cret" not in base64.b64decode(ud).decode()
    ssm = boto3.client("ssm", region_name="us-east-1")
    param = ssm.get_parameter(Name=backend.spec_parameter, WithDecryption=True)["Parameter"]
    assert param["Type"] == "SecureString"
    assert json.loads(param["Value"])["env"]["JUPYTERHUB_API_TOKEN"] == "s3cret"
    assert await backend.poll() is None
    await stop_host(backend, volume)
    assert instances(ec2, "ebs-cycle") == []
    assert attachments(ec2, volume.volume_id) == []
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=f"/ds-compute/launch/{host.id}")
    assert await backend.poll() == 0


async def test_ebs_refuses_volume_attached_elsewhere(ec2, subnets):
    spawner, backend, volume = make("ebs-twice", subnets)
    first, _ = await start_host(spawner, backend, volume)
    # another server's instance (a second start of this very server would end
    # the first as a leftover, see tests/test_leftovers_aws.py)
    other = FakeSpawner("ebs-twice", "other", config=spawner.config, volume=volume)
    second_backend = EC2Backend(other)
    second = await second_backend.prepare(tier("gpu"))
    with pytest.raises(VolumeError, match=f"attached to instance {first.id}"):
        await volume.attach(second)
    assert attachments(ec2, volume.volume_id) == [first.id]
    await second_backend.stop(now=True)
    await stop_host(backend, volume)


async def test_ebs_refuses_other_zone(ec2, subnets):
    spawner, _, volume = make("ebs-zone", subnets)
    await volume.ensure()
    r = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=subnets["us-east-1b"],
        TagSpecifications=[{"ResourceType": "instance", "Tags": aws.tag_list(volume.owner_tags(spawner))}],
    )  # fmt: skip
    iid = r["Instances"][0]["InstanceId"]
    with pytest.raises(VolumeError, match="us-east-1a but instance .* is in us-east-1b"):
        await volume.attach(HostInfo(kind="ec2", id=iid, zone="us-east-1b"))
    assert attachments(ec2, volume.volume_id) == []
    ec2.terminate_instances(InstanceIds=[iid])


async def test_ebs_refuses_busy_device(ec2, subnets):
    spawner, backend, volume = make("ebs-dev", subnets, EBSVolume__device_names=["/dev/sdf"])
    await volume.ensure()
    host = await backend.prepare(tier("small"))
    squatter = ec2.create_volume(Size=1, AvailabilityZone="us-east-1a")["VolumeId"]
    ec2.attach_volume(VolumeId=squatter, InstanceId=host.id, Device="/dev/xvdf")
    with pytest.raises(VolumeError, match="No free device name"):
        await volume.attach(host)
    assert attachments(ec2, volume.volume_id) == []
    await backend.stop(now=True)
    await backend.release()
    ec2.delete_volume(VolumeId=squatter)


async def test_ebs_refuses_instance_not_ours_or_not_running(ec2, subnets):
    spawner, backend, volume = make("ebs-owner", subnets)
    await volume.ensure()
    stranger = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=subnets["us-east-1a"]
    )
    sid = stranger["Instances"][0]["InstanceId"]
    with pytest.raises(VolumeError, match="does not belong to this server"):
        await volume.attach(HostInfo(kind="ec2", id=sid, zone="us-east-1a"))
    # another user's instance is not ours either
    _, other_backend, _ = make("ebs-owner-2", subnets)
    other = await other_backend.prepare(tier("small"))
    with pytest.raises(VolumeError, match="does not belong to this server"):
        await volume.attach(other)
    host = await backend.prepare(tier("small"))
    ec2.stop_instances(InstanceIds=[host.id])
    with pytest.raises(VolumeError, match="not running"):
        await volume.attach(host)
    assert attachments(ec2, volume.volume_id) == []
    for b in (backend, other_backend):
        await b.stop(now=True)
    ec2.terminate_instances(InstanceIds=[sid])


async def test_ebs_attach_stuck_in_attaching_is_undone(ec2, subnets, moto):
    spawner, backend, volume = make("ebs-stuck", subnets)
    await volume.ensure()
    host = await backend.prepare(tier("small"))
    moto.arm(action="DescribeVolumes", rewrite="attaching", volume_id=volume.volume_id)
    with pytest.raises(VolumeError, match="stuck attaching"):
        await volume.attach(host)
    moto.reset()
    assert attachments(ec2, volume.volume_id) == []
    assert ec2.describe_volumes(VolumeIds=[volume.volume_id])["Volumes"][0]["State"] == "available"
    await backend.stop(now=True)


def volume_gone(ec2, vid):
    return ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [vid]}])["Volumes"] == []


def snapshots_of(ec2, vid):
    r = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [vid]}])
    return sorted(s["SnapshotId"] for s in r["Snapshots"])


async def test_ebs_delete_takes_our_snapshots_along(ec2, subnets):
    spawner, _, volume = make("ebs-snap", subnets)
    vid = await volume.ensure()
    ours = await volume.snapshot(reason="scheduled")
    # a snapshot someone else made of the same volume is not ours to delete
    theirs = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    result = await volume.delete()
    assert result == {"id": vid, "deleted": [f"snapshot {ours}", f"volume {vid}"], "kept": []}
    assert volume_gone(ec2, vid)
    assert snapshots_of(ec2, vid) == [theirs]
    assert volume.get_state() == {}
    assert await volume.delete() == {"id": "", "deleted": [], "kept": []}  # idempotent
    ec2.delete_snapshot(SnapshotId=theirs)


async def test_ebs_delete_keeps_a_final_snapshot_when_asked(ec2, subnets):
    spawner, _, volume = make("ebs-final", subnets, EBSVolume__snapshot_before_delete=True)
    vid = await volume.ensure()
    scheduled = await volume.snapshot(reason="scheduled")
    result = await volume.delete()
    (final,) = snapshots_of(ec2, vid)
    assert final != scheduled
    assert result["kept"] == [f"final snapshot {final}"] and f"snapshot {scheduled}" in result["deleted"]
    s = ec2.describe_snapshots(SnapshotIds=[final])["Snapshots"][0]
    assert aws.tag_dict(s["Tags"])["ds-compute:reason"] == "before-delete"
    assert volume_gone(ec2, vid)


async def test_ebs_delete_refused_while_attached_to_running_instance(ec2, subnets):
    spawner, backend, volume = make("ebs-busy", subnets)
    host, _ = await start_host(spawner, backend, volume)
    vid = volume.volume_id
    with pytest.raises(VolumeError, match=rf"{vid} is attached to instance {host.id} \(running\): not del"):
        await volume.delete()
    assert attachments(ec2, vid) == [host.id]
    await stop_host(backend, volume)
    assert (await volume.delete())["id"] == vid
    assert volume_gone(ec2, vid)


async def test_ebs_delete_refuses_a_volume_not_ours(ec2, subnets):
    spawner, _, volume = make("ebs-foreign", subnets)
    foreign = ec2.create_volume(Size=1, AvailabilityZone="us-east-1a")["VolumeId"]
    volume.load_state({"driver": "ebs", "id": foreign})
    with pytest.raises(VolumeError, match="not tagged as this server's"):
        await volume.delete()
    assert not volume_gone(ec2, foreign)
    ec2.delete_volume(VolumeId=foreign)


async def test_ebs_delete_finds_volume_by_tags_never_a_root_volume(ec2, subnets):
    spawner, _, volume = make("ebs-lost", subnets, name="box")
    # an instance's root volume carries the owner tags and a tier tag; it is older here
    root_tags = dict(volume.owner_tags(spawner), **{"ds-compute:tier": "small"})
    root = ec2.create_volume(
        Size=1, AvailabilityZone="us-east-1a",
        TagSpecifications=[{"ResourceType": "volume", "Tags": aws.tag_list(root_tags)}],
    )["VolumeId"]  # fmt: skip
    vid = await volume.ensure()
    assert vid != root
    # the user's default server has a volume too: not this named server's
    _, _, default = make("ebs-lost", subnets)
    other = await default.ensure()
    volume.load_state({})  # the hub lost the state
    assert (await volume.delete())["id"] == vid
    assert volume_gone(ec2, vid)
    assert not volume_gone(ec2, root) and not volume_gone(ec2, other)
    for v in (root, other):
        ec2.delete_volume(VolumeId=v)


async def test_volumes_never_created_delete_nothing_and_create_nothing(ec2, subnets):
    efs = boto3.client("efs", region_name="us-east-1")
    _, _, ebs_volume = make("never-ebs", subnets)
    assert await ebs_volume.delete() == {"id": "", "deleted": [], "kept": []}
    _, _, efs_volume = make("never-efs", subnets, volume_cls=EFSVolume, AWS__hub_id="no-such-hub")
    before = efs.describe_file_systems()["FileSystems"]
    assert await efs_volume.delete() == {"id": "", "deleted": [], "kept": []}
    assert efs.describe_file_systems()["FileSystems"] == before


# -- EC2 failures ----------------------------------------------------------------------


async def test_capacity_error_tries_again_then_succeeds(ec2, subnets, moto):
    spawner, backend, volume = make("ice-once", subnets, EBSVolume__move_across_zones=False)
    await volume.ensure()
    moto.arm(action="RunInstances", error="InsufficientInstanceCapacity", times=2, status=500)
    host = await backend.prepare(tier("gpu"))
    assert host.zone == "us-east-1a"  # never outside the volume's zone
    messages = []
    while not backend.events.empty():
        messages.append(backend.events.get_nowait())
    assert any("no g5.xlarge capacity in us-east-1a" in m for m in messages), messages
    await backend.stop(now=True)


async def test_capacity_error_fails_clearly_and_leaks_nothing(ec2, subnets, moto):
    spawner, backend, volume = make("ice-always", subnets, EC2Backend__capacity_retries=2)
    await volume.ensure()
    moto.arm(action="RunInstances", error="InsufficientInstanceCapacity", status=500)
    with pytest.raises(
        BackendError, match=r"no g5.xlarge capacity in us-east-1a, us-east-1b.*InsufficientInstanceCapacity"
    ):
        await backend.prepare(tier("gpu"))
    # two rounds over both zones (the volume could have moved to the other one)
    assert moto.stats()["faults"]["InsufficientInstanceCapacity"] == 4
    assert instances(ec2, "ice-always") == []
    assert backend.get_state() == {}


# -- a volume that moves to the zone with capacity ----------------------------------


def drain(backend):
    messages = []
    while not backend.events.empty():
        messages.append(backend.events.get_nowait())
    return messages


def volumes_of(ec2, user):
    r = ec2.describe_volumes(Filters=[{"Name": "tag:ds-compute:user", "Values": [user]}])
    return {
        v["VolumeId"]: v
        for v in r["Volumes"]
        if "ds-compute:tier" not in aws.tag_dict(v.get("Tags")) and v["State"] != "deleted"
    }


def our_snapshots(ec2, user):
    r = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "tag:ds-compute:user", "Values": [user]}])
    return {s["SnapshotId"]: s for s in r["Snapshots"]}


async def test_capacity_only_in_another_zone_launches_there_when_the_volume_can_move(ec2, subnets, moto):
    spawner, backend, volume = make("ice-zone", subnets)
    await volume.ensure()
    moto.arm(
        action="RunInstances", error="InsufficientInstanceCapacity", status=500,
        match={"SubnetId": subnets["us-east-1a"]},
    )  # fmt: skip
    host = await backend.prepare(tier("gpu"))
    assert host.zone == "us-east-1b" and volume.zone() == "us-east-1a"
    assert any("in us-east-1b instead (no capacity in us-east-1a)" in m for m in drain(backend))
    await backend.stop(now=True)
    await backend.release()
    # a volume that cannot move: the capacity error, nothing launched elsewhere
    _, fixed, fixed_volume = make("ice-zone-fixed", subnets, EBSVolume__move_across_zones=False)
    await fixed_volume.ensure()
    with pytest.raises(BackendError, match="no g5.xlarge capacity in us-east-1a right now"):
        await fixed.prepare(tier("gpu"))
    assert instances(ec2, "ice-zone-fixed") == []


async def test_ebs_move_copies_through_a_snapshot_and_keeps_the_original_until_finished(ec2, subnets):
    user = "move-ok"
    spawner, _, volume = make(user, subnets, EBSVolume__volume_type="io2", EBSVolume__iops=200)
    old = await volume.ensure()
    shown = []
    move = await volume.move_to_zone("us-east-1b", shown.append)
    new = volume.volume_id
    assert move["from"] == old and move["to"] == new != old and move["to_zone"] == "us-east-1b"
    assert volume.zone() == "us-east-1b"
    vols = volumes_of(ec2, user)
    assert set(vols) == {old, new}  # the original stays until the server is up
    copy = vols[new]
    assert copy["AvailabilityZone"] == "us-east-1b" and copy["SnapshotId"] == move["via"]
    assert copy["Encrypted"] and copy["Size"] == 1 and copy["VolumeType"] == "io2" and copy["Iops"] == 200
    assert aws.tag_dict(copy["Tags"])["ds-compute:moved-from"] == old
    assert volume.is_ours(copy["Tags"], spawner)
    snap = our_snapshots(ec2, user)[move["via"]]
    assert aws.tag_dict(snap["Tags"])["ds-compute:reason"] == "zone-move"
    assert any("copying the volume to us-east-1b" in m for m in shown), shown
    # the pending move is in the state: a restarted hub knows both volumes
    state = volume.get_state()
    assert state["moved_from"]["volume_id"] == old and state["id"] == new
    again = EBSVolume(spawner)
    again.load_state(state)
    # and the hub that lost the state finds the copy, not the original
    lost = EBSVolume(spawner)
    assert await lost.ensure() == new
    result = await again.finish_move()
    assert result["deleted"] == [f"volume {old}", f"snapshot {move['via']}"]
    assert set(volumes_of(ec2, user)) == {new} and our_snapshots(ec2, user) == {}
    assert again.get_state()["moved_from"] is None
    assert await again.finish_move() is None  # idempotent
    await again.delete()


async def test_ebs_move_prepared_ahead_snapshots_the_volume_in_use_and_cleans_up(ec2, subnets, moto):
    """Make before break: a snapshot while the server runs (the cut-over's is then
    incremental); the server's attachment is untouched; both snapshots go at the end."""
    user = "move-ahead"
    spawner, backend, volume = make(user, subnets)
    host, _ = await start_host(spawner, backend, volume)
    old = volume.volume_id
    moto.set_delays(snapshot=1.0, snapshot_incremental=0.2)
    try:
        shown = []
        ahead = await volume.prepare_move("us-east-1b", shown.append)
        assert attachments(ec2, old) == [host.id]  # the server's volume is not touched
        assert any(m.startswith("Copy ahead done") for m in shown), shown
        assert aws.tag_dict(our_snapshots(ec2, user)[ahead]["Tags"])["ds-compute:reason"] == "zone-move-ahead"
        await stop_host(backend, volume)
        move = await volume.move_to_zone("us-east-1b", lambda m: None)
    finally:
        moto.set_delays()
    assert set(our_snapshots(ec2, user)) == {ahead, move["via"]}
    result = await volume.finish_move()
    assert result["deleted"] == [f"volume {old}", f"snapshot {move['via']}", f"snapshot {ahead}"]
    assert our_snapshots(ec2, user) == {} and set(volumes_of(ec2, user)) == {move["to"]}
    await volume.delete()


async def test_ebs_move_ahead_that_takes_too_long_goes_on_in_the_background(ec2, subnets, moto):
    user = "move-ahead-slow"
    _, _, volume = make(user, subnets, EBSVolume__prepare_move_wait=0.5)
    await volume.ensure()
    moto.set_delays(snapshot=5.0)
    try:
        shown = []
        ahead = await volume.prepare_move("us-east-1b", shown.append)
    finally:
        moto.set_delays()
    assert "The copy ahead goes on in the background" in shown[-1], shown
    assert ahead in our_snapshots(ec2, user)
    await volume.delete()
    assert our_snapshots(ec2, user) == {}


async def test_ebs_move_of_a_failed_start_is_undone_keeping_original_and_snapshot(ec2, subnets):
    user = "move-undo"
    _, _, volume = make(user, subnets)
    old = await volume.ensure()
    move = await volume.move_to_zone("us-east-1b", lambda m: None)
    undone = await volume.undo_move()
    assert undone == {
        "kept": [f"volume {old}", f"snapshot {move['via']}"],
        "deleted": [f"volume {move['to']}"],
    }
    assert volume.volume_id == old and volume.zone() == "us-east-1a" and volume.moved_from is None
    assert set(volumes_of(ec2, user)) == {old}
    assert set(our_snapshots(ec2, user)) == {move["via"]}
    assert await volume.undo_move() is None
    # a later deletion takes the kept snapshot along
    result = await volume.delete()
    assert f"snapshot {move['via']}" in result["deleted"] and our_snapshots(ec2, user) == {}


async def test_ebs_move_refused_while_attached_changes_nothing(ec2, subnets):
    user = "move-busy"
    spawner, backend, volume = make(user, subnets)
    host, _ = await start_host(spawner, backend, volume)
    with pytest.raises(VolumeError, match="only when detached. Nothing was changed."):
        await volume.move_to_zone("us-east-1b", lambda m: None)
    assert set(volumes_of(ec2, user)) == {volume.volume_id} and our_snapshots(ec2, user) == {}
    await stop_host(backend, volume)
    await volume.delete()


async def test_ebs_move_waits_for_the_snapshot_showing_its_progress(ec2, subnets, moto):
    user = "move-slow"
    _, _, volume = make(user, subnets)
    old = await volume.ensure()
    moto.set_delays(snapshot=2.5)
    try:
        # EC2 refuses a volume from a pending snapshot (the moto server too, now)
        snap = ec2.create_snapshot(VolumeId=old)["SnapshotId"]
        with pytest.raises(Exception, match="IncorrectState"):
            ec2.create_volume(AvailabilityZone="us-east-1b", SnapshotId=snap)
        ec2.delete_snapshot(SnapshotId=snap)
        shown = []
        move = await volume.move_to_zone("us-east-1c", shown.append)
    finally:
        moto.set_delays()
    progress = [m for m in shown if m.startswith(f"Snapshot {move['via']} of your volume: ")]
    assert progress and progress[-1] != "100%", shown
    assert volumes_of(ec2, user)[move["to"]]["AvailabilityZone"] == "us-east-1c"
    await volume.finish_move()
    await volume.delete()
    assert volumes_of(ec2, user) == {}


async def test_ebs_move_deletes_copies_an_interrupted_move_left(ec2, subnets):
    user = "move-stale"
    spawner, _, volume = make(user, subnets)
    old = await volume.ensure()
    # a hub stopped between the copy's creation and saving the state
    tags = dict(volume._tags(), **{"ds-compute:moved-from": old})
    stale = ec2.create_volume(
        Size=1, AvailabilityZone="us-east-1b",
        TagSpecifications=[{"ResourceType": "volume", "Tags": aws.tag_list(tags)}],
    )["VolumeId"]  # fmt: skip
    move = await volume.move_to_zone("us-east-1b", lambda m: None)
    assert set(volumes_of(ec2, user)) == {old, move["to"]} and stale != move["to"]
    await volume.finish_move()
    await volume.delete()


async def test_ebs_delete_with_a_move_pending_deletes_both_volumes(ec2, subnets):
    user = "move-delete"
    _, _, volume = make(user, subnets)
    old = await volume.ensure()
    move = await volume.move_to_zone("us-east-1b", lambda m: None)
    result = await volume.delete()
    assert result["id"] == move["to"]
    assert set(result["deleted"]) == {f"volume {old}", f"volume {move['to']}", f"snapshot {move['via']}"}
    assert volumes_of(ec2, user) == {} and our_snapshots(ec2, user) == {}


async def test_efs_volume_tries_next_zone_on_capacity_error(ec2, subnets, moto):
    spawner, backend, volume = make(
        "ice-efs",
        subnets,
        volume_cls=EFSVolume,
        EFSVolume__subnet_ids=[subnets["us-east-1a"], subnets["us-east-1b"]],
    )
    await volume.ensure()
    moto.arm(
        action="RunInstances",
        error="InsufficientInstanceCapacity",
        match={"SubnetId": subnets["us-east-1a"]},
        status=500,
    )
    host = await backend.prepare(tier("gpu"))
    assert host.zone == "us-east-1b"
    path = await volume.attach(host)
    assert host.extra["mount"]["access_point_id"] == volume.volume_id and path == "/home/jovyan"
    await stop_host(backend, volume)


async def test_run_instances_throttling_burst_all_launch(ec2, subnets, moto):
    moto.rate({"RunInstances": [2, 4]})
    # without the hub's own rate limit (test_aws_poll.py has it): botocore's retries absorb it
    pairs = [make(f"burst-{i}", subnets, AWS__rate_limits={"RunInstances": None}) for i in range(6)]
    for _, _, v in pairs:
        await v.ensure()
    hosts = await asyncio.gather(*(b.prepare(tier("small")) for _, b, _ in pairs))
    assert len({h.id for h in hosts}) == 6
    assert moto.stats()["faults"].get("RequestLimitExceeded", 0) > 0
    await asyncio.gather(*(b.stop(now=True) for _, b, _ in pairs))


async def test_address_never_published_fails_and_cleanup_terminates(ec2, subnets):
    spawner, backend, volume = make(
        "no-address", subnets, EC2Backend__address_source="tag:never-set", EC2Backend__launch_timeout=1
    )
    await volume.ensure()
    with pytest.raises(BackendError, match="never published its address"):
        await backend.prepare(tier("small"))
    # the spawner's cleanup path (stop, detach, release) leaves nothing behind
    await stop_host(backend, volume)
    assert instances(ec2, "no-address") == []


async def test_reuse_stopped_instance(ec2, subnets):
    spawner, backend, volume = make(
        "reuser", subnets, EC2Backend__on_stop="stop", EC2Backend__reuse_stopped=True
    )
    host, _ = await start_host(spawner, backend, volume)
    await stop_host(backend, volume)
    (kept,) = instances(ec2, "reuser")
    assert kept["State"]["Name"] == "stopped" and kept["InstanceId"] == host.id
    assert attachments(ec2, volume.volume_id) == []
    again, _ = await start_host(spawner, backend, volume)
    assert again.id == host.id
    assert attachments(ec2, volume.volume_id) == [host.id]
    backend.on_stop = "terminate"
    await stop_host(backend, volume)
    assert instances(ec2, "reuser") == []


# -- EFS -----------------------------------------------------------------------------------


async def test_efs_delete_access_point_refused_while_an_instance_runs(ec2, subnets):
    efs = boto3.client("efs", region_name="us-east-1")
    spawner, backend, volume = make(
        "efs-del", subnets, volume_cls=EFSVolume, EFSVolume__subnet_ids=[subnets["us-east-1a"]]
    )
    _, _, bob = make(
        "efs-del-bob", subnets, volume_cls=EFSVolume, EFSVolume__subnet_ids=[subnets["us-east-1a"]]
    )
    bob_ap = await bob.ensure()
    host, _ = await start_host(spawner, backend, volume)
    apid = volume.volume_id
    with pytest.raises(VolumeError, match=rf"{apid} may be mounted on instance {host.id} \(running\)"):
        await volume.delete()
    (ap,) = efs.describe_access_points(AccessPointId=apid)["AccessPoints"]
    await stop_host(backend, volume)
    volume.load_state({})  # found again by its tags
    result = await volume.delete()
    assert result["id"] == apid and result["deleted"] == [f"access point {apid}"]
    assert result["kept"][0].startswith(f"directory {ap['RootDirectory']['Path']} on {ap['FileSystemId']} (")
    with pytest.raises(Exception, match="AccessPointNotFound"):
        efs.describe_access_points(AccessPointId=apid)
    assert efs.describe_access_points(AccessPointId=bob_ap)["AccessPoints"]  # bob's stays
    await bob.delete()


async def test_efs_one_file_system_access_point_per_user(ec2, subnets):
    efs = boto3.client("efs", region_name="us-east-1")
    over = dict(volume_cls=EFSVolume, EFSVolume__subnet_ids=[subnets["us-east-1a"], subnets["us-east-1c"]])
    _, _, alice = make("efs-alice", subnets, **over)
    _, _, bob = make("efs-bob", subnets, EFSVolume__posix_ids=lambda s: (2001, 2001), **over)
    a = await alice.ensure()
    b = await bob.ensure()
    assert a != b and alice.file_system_id == bob.file_system_id
    assert await alice.ensure() == a
    fs = efs.describe_file_systems(FileSystemId=alice.file_system_id)["FileSystems"][0]
    assert fs["Encrypted"]
    mts = efs.describe_mount_targets(FileSystemId=alice.file_system_id)["MountTargets"]
    assert {m["AvailabilityZoneName"] for m in mts} >= {"us-east-1a", "us-east-1c"}
    ap = efs.describe_access_points(AccessPointId=b)["AccessPoints"][0]
    assert ap["PosixUser"]["Uid"] == 2001
    assert ap["RootDirectory"]["Path"] == "/ds-compute/efs-2dbob"  # names.safe_name: injective
    assert ap["RootDirectory"]["CreationInfo"]["Permissions"] == "750"
    # no mount target in the instance's zone: refused
    with pytest.raises(VolumeError, match="no mount target in us-east-1d"):
        await alice.attach(HostInfo(kind="ec2", id="i-0", zone="us-east-1d"))
