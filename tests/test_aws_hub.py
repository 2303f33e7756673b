"""AWS mode end to end: a real hub configured by ``configs/aws.py``, a moto
server (real HTTP on 127.0.0.1) with fault injection, and the instance
emulator, so each "instance" runs its user-data here and a real
single-user server comes up on its EBS volume (a loop device).

Network: the hub only ever dials 127.0.0.1 (the emulator publishes each
instance's server address as the tag ``ds-compute:test-address``); moto's
fake instance addresses are never used.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from pathlib import Path

import boto3
import pytest
from aws.emulator import InstanceEmulator
from aws.motoserver import MotoServer
from conftest import hub_workdir
from hubtest import free_port, wait_for

pytestmark = [
    pytest.mark.ec2,
    pytest.mark.hub,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the instance emulator needs root (namespaces, loop devices)"
    ),
]

REPO = Path(__file__).resolve().parent.parent
MOTO_PORT = free_port()
MOTO_URL = f"http://127.0.0.1:{MOTO_PORT}"
HUB_ID = "hubtest"
AWS_ENV = {
    "AWS_ENDPOINT_URL": MOTO_URL,
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
)

# the documented override file, then what only the emulated instances need
HUB_EXTRA_CONFIG = f"""
import sys as _sys
_subnets = __import__("boto3").client("ec2").describe_subnets()["Subnets"]
os.environ["DS_COMPUTE_AWS_SUBNETS"] = ",".join(
    s["SubnetId"] for s in sorted(_subnets, key=lambda s: s["AvailabilityZone"])[:2]
)
exec(compile(open({str(REPO / "configs" / "aws.py")!r}).read(), "configs/aws.py", "exec"))
# emulated instances: this machine is the image; the hub dials 127.0.0.1 only
c.EC2Backend.address_source = "tag:ds-compute:test-address"
c.EC2Backend.instance_python = _sys.executable
c.DSComputeSpawner.cmd = [os.path.join(os.path.dirname(_sys.executable), "jupyterhub-singleuser")]
c.DSComputeSpawner.env_keep = ["PATH", "PYTHONPATH", "LANG"]
c.EC2Backend.capacity_retries = 2
c.EC2Backend.capacity_backoff = 0.2
c.EBSVolume.attach_timeout = 5
c.EBSVolume.snapshot_interval = 0
"""


@pytest.fixture(scope="module", autouse=True)
def aws_world():
    """moto server + instance emulator, before the hub (autouse: set up first)."""
    workdir = Path(hub_workdir("aws-world"))
    moto = MotoServer(MOTO_PORT, str(workdir / "moto.log")).start()
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    emulator = InstanceEmulator(MOTO_URL, workdir / "instances").start()
    yield moto, emulator
    emulator.stop()
    moto.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def moto(aws_world):
    return aws_world[0]


@pytest.fixture(scope="module")
def emulator(aws_world):
    return aws_world[1]


@pytest.fixture(scope="module")
def ec2(aws_world):
    return boto3.client("ec2", region_name="us-east-1")


@pytest.fixture(autouse=True)
def _no_faults(aws_world):
    aws_world[0].reset()
    yield
    aws_world[0].reset()


def live_instances(ec2, user):
    r = ec2.describe_instances(
        Filters=[
            {"Name": "tag:ds-compute:user", "Values": [user]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ]
    )
    return [i for res in r["Reservations"] for i in res["Instances"]]


def user_volumes(ec2, user):
    r = ec2.describe_volumes(
        Filters=[
            {"Name": "tag:ds-compute:user", "Values": [user]},
            {"Name": "tag:ds-compute:hub", "Values": [HUB_ID]},
        ]
    )
    # the root volumes of instances carry the user's tag too; ours have no tier tag
    return [v for v in r["Volumes"] if "ds-compute:tier" not in {t["Key"] for t in v.get("Tags", [])}]


def check_accounting(ec2, user, running_tier=None):
    """Exactly one user volume; attached to exactly the one live instance (or none)."""
    (vol,) = user_volumes(ec2, user)
    attached = [a["InstanceId"] for a in vol["Attachments"] if a["State"] in ("attaching", "attached")]
    live = live_instances(ec2, user)
    if running_tier is None:
        assert live == [] and attached == [], (live, attached)
        assert vol["State"] == "available"
        return vol, None
    (inst,) = live
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["ds-compute:tier"] == running_tier
    assert attached == [inst["InstanceId"]]
    return vol, inst


class AttachmentWatch:
    """Samples the user's volume all along: never attached to two instances."""

    def __init__(self, user):
        self.user = user
        self.max_attached = 0
        self.samples = 0
        self._stop = threading.Event()
        self._ec2 = boto3.client("ec2", region_name="us-east-1")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                for vol in user_volumes(self._ec2, self.user):
                    n = len([a for a in vol["Attachments"] if a["State"] in ("attaching", "attached")])
                    self.max_attached = max(self.max_attached, n)
                self.samples += 1
            except Exception:  # noqa: BLE001 - sampling only
                pass
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def write(hub, user, token, name, text):
    r = hub.server_api(
        user,
        f"api/contents/{name}",
        token,
        method="PUT",
        json={"type": "file", "format": "text", "content": text},
    )
    assert r.status_code in (200, 201), r.text


def read(hub, user, token, name):
    r = hub.server_api(user, f"api/contents/{name}", token)
    assert r.status_code == 200, r.text
    return r.json()["content"]


def service(hub, method, path, token, **kw):
    import requests

    return requests.request(
        method,
        f"{hub.url}/services/ds-compute/{path}",
        headers={"Authorization": f"token {token}"},
        timeout=30,
        **kw,
    )


def switch(hub, user, token, profile, timeout=180):
    r = service(hub, "POST", "api/switches", token, json={"profile": profile})
    assert r.status_code == 202, r.text
    sid = r.json()["id"]

    def final():
        rec = service(hub, "GET", f"api/switches/{sid}", token).json()
        return rec if rec.get("state") in ("succeeded", "rolled_back", "failed") else None

    return wait_for(final, timeout, interval=0.5, message=f"switch to {profile}")


def test_every_tier_file_follows_volume_never_double_attached(hub, ec2, emulator):
    user = hub.create_user("aws-alice")
    token = hub.user_token(user)
    with AttachmentWatch(user) as watch:
        model = hub.spawn(user, {"profile": "small"}, timeout=180)
        assert model["user_options"]["profile"] == "small"
        vol, inst = check_accounting(ec2, user, "small")
        assert inst["InstanceType"] == "t3.medium"
        assert vol["Encrypted"] and vol["VolumeType"] == "gp3" and vol["AvailabilityZone"] == "us-east-1a"
        # the server runs the spawner's environment, from the user-data, on the volume
        status = hub.server_api(user, "ds-compute/api/status", token).json()
        assert status["tier"]["slug"] == "small"
        assert status["volume"]["id"] == vol["VolumeId"] and status["volume"]["driver"] == "ebs"
        assert status["volume"]["path"] == "/home/jovyan"
        write(hub, user, token, "notes.txt", "written on small")
        console = emulator.console(inst["InstanceId"])
        assert "formatting ext4" in console  # the first start formats the empty volume
        hub.stop_server(user, timeout=120)
        check_accounting(ec2, user, None)

        for slug, itype in (("gpu", "g5.xlarge"), ("manycore", "c6i.4xlarge")):
            hub.spawn(user, {"profile": slug}, timeout=180)
            vol, inst = check_accounting(ec2, user, slug)
            assert inst["InstanceType"] == itype
            assert read(hub, user, token, "notes.txt") == "written on small"
            # never reformatted
            assert "formatting" not in emulator.console(inst["InstanceId"])
            write(hub, user, token, f"{slug}.txt", f"written on {slug}")
            hub.stop_server(user, timeout=120)
            check_accounting(ec2, user, None)

        # a switch through the ds-compute service
        hub.spawn(user, {"profile": "small"}, timeout=180)
        rec = switch(hub, user, token, "gpu")
        assert rec["state"] == "succeeded", rec
        check_accounting(ec2, user, "gpu")
        assert read(hub, user, token, "manycore.txt") == "written on manycore"
    assert watch.samples > 10
    assert watch.max_attached == 1
    # the launch spec (with the server's token) did not outlive the boot
    ssm = boto3.client("ssm", region_name="us-east-1")
    names = [p["Name"] for p in ssm.describe_parameters()["Parameters"]]
    assert not [n for n in names if not n.endswith(".exit")], names
    hub.stop_server(user, timeout=120)
    check_accounting(ec2, user, None)
    assert not emulator.errors, emulator.errors


@pytest.mark.parametrize(
    "fault, message",
    [
        # (a capacity error comes while the target is prepared, before anything is
        # stopped: the switch fails, nothing to roll back; test_aws_prepare_hub.py)
        (
            dict(action="DescribeVolumes", rewrite="attaching"),
            ("stuck in attaching", "was stuck attaching to"),
        ),
    ],
    ids=["attach-stuck"],
)
def test_failed_switch_rolls_back(hub, ec2, moto, fault, message):
    """The failure's record names the cause; the user saw the clear message; the
    instance prepared for the switch (and taken by its failed start) is terminated."""
    record_message, progress_message = message
    user = hub.create_user(f"aws-rb-{fault['action'].lower()}")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"}, timeout=180)
    write(hub, user, token, "keep.txt", "still here")
    with AttachmentWatch(user) as watch:
        moto.arm(**fault)
        r = service(hub, "POST", "api/switches", token, json={"profile": "gpu"})
        assert r.status_code == 202, r.text
        sid = r.json()["id"]

        def launched_or_final():
            rec = service(hub, "GET", f"api/switches/{sid}", token).json()
            if fault["action"] == "DescribeVolumes" and any(
                s["status"] == "failed" for s in rec.get("steps", [])
            ):
                moto.reset()  # let the rollback attach normally
            return rec if rec.get("state") in ("succeeded", "rolled_back", "failed") else None

        rec = wait_for(launched_or_final, 240, interval=0.5, message="switch outcome")
        moto.reset()
    assert rec["state"] == "rolled_back", rec
    assert record_message in (rec.get("error") or ""), rec
    assert progress_message in hub.log_path.read_text(errors="replace")
    model = hub.server_model(user)
    assert model["ready"] and model["user_options"]["profile"] == "small"
    check_accounting(ec2, user, "small")
    assert read(hub, user, token, "keep.txt") == "still here"
    assert watch.max_attached == 1
    # nothing leaked: the failed tier's instance is gone
    assert [i for i in live_instances(ec2, user) if i["InstanceType"] == "g5.xlarge"] == []
    hub.stop_server(user, timeout=120)
    check_accounting(ec2, user, None)


def test_throttled_concurrent_spawns_all_succeed(hub, ec2, moto):
    users = [hub.create_user(f"aws-burst-{i}") for i in range(3)]
    moto.rate({"RunInstances": [1, 0.2], "AttachVolume": [1, 0.5]})
    # all at once: a POST may wait for its spawn (slow_spawn_timeout), so
    # sequential requests would let the bucket refill in between
    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        answers = list(pool.map(lambda u: hub.spawn(u, {"profile": "small"}, wait=False), users))
    for r in answers:
        assert r.status_code in (201, 202), r.text
    for u in users:
        hub.wait_ready(u, timeout=180)
        check_accounting(ec2, u, "small")
    stats = moto.stats()
    assert stats["faults"].get("RequestLimitExceeded", 0) > 0, stats
    moto.reset()
    for u in users:
        hub.stop_server(u, timeout=120)
        check_accounting(ec2, u, None)


# -- a volume that moves to the zone with capacity ----------------------------------


def subnet_in(ec2, zone):
    (subnet,) = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s["AvailabilityZone"] == zone]
    return subnet


def user_snapshots(ec2, user):
    r = ec2.describe_snapshots(
        OwnerIds=["self"],
        Filters=[
            {"Name": "tag:ds-compute:user", "Values": [user]},
            {"Name": "tag:ds-compute:hub", "Values": [HUB_ID]},
        ],
    )
    return {s["SnapshotId"]: {t["Key"]: t["Value"] for t in s.get("Tags", [])} for s in r["Snapshots"]}


def audit_page(hub, user, needle):
    """The admin audit page of ``user``'s volume events, once it shows ``needle``
    (the spawner reports them in the background)."""
    admin = hub.login("admin", hub.admin_password)

    def page():
        r = admin.get(
            f"{hub.url}/services/ds-compute/admin/audit",
            params={"user": user, "event": "volume:"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.text if needle in r.text else None

    return wait_for(page, 30, message=f"{needle} in the audit log")


def test_no_capacity_in_the_volumes_zone_moves_the_volume_and_loses_nothing(hub, ec2, moto, emulator):
    """gpu has capacity only in us-east-1b: the switch launches there, snapshots
    the volume while the old server serves, copies it through a second
    (incremental) snapshot at the cut-over (progress shows it), the server comes
    up on the copy with every file, and then the original and the snapshots are
    deleted."""
    user = hub.create_user("aws-move")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"}, timeout=180)
    (original,) = user_volumes(ec2, user)
    assert original["AvailabilityZone"] == "us-east-1a"
    write(hub, user, token, "data.csv", "a,b\n1,2\n")
    moto.arm(
        action="RunInstances", error="InsufficientInstanceCapacity", status=500,
        match={"InstanceType": "g5.xlarge", "SubnetId": subnet_in(ec2, "us-east-1a")},
    )  # fmt: skip
    moto.set_delays(snapshot=2, snapshot_incremental=0.5)
    try:
        with AttachmentWatch(user) as watch:
            rec = switch(hub, user, token, "gpu", timeout=300)
    finally:
        moto.set_delays()
    assert rec["state"] == "succeeded", rec
    assert watch.max_attached == 1
    assert read(hub, user, token, "data.csv") == "a,b\n1,2\n"
    write(hub, user, token, "after.txt", "written in us-east-1b")

    def moved():
        vols = user_volumes(ec2, user)
        return vols if [v["VolumeId"] for v in vols] != [original["VolumeId"]] and len(vols) == 1 else None

    # the original goes once the server answers on the copy (in the background)
    (vol,) = wait_for(moved, 60, message="the original volume deleted")
    assert vol["AvailabilityZone"] == "us-east-1b" and vol["Encrypted"]
    assert {t["Key"]: t["Value"] for t in vol["Tags"]}["ds-compute:moved-from"] == original["VolumeId"]
    wait_for(lambda: user_snapshots(ec2, user) == {}, 30, message="the move's snapshot deleted")
    vol, inst = check_accounting(ec2, user, "gpu")
    assert inst["Placement"]["AvailabilityZone"] == "us-east-1b"
    log = hub.log_path.read_text(errors="replace")
    assert f"{user}: Moving your volume from us-east-1a to us-east-1b, where your GPU machine is" in log
    assert f"{user}: Launching a g5.xlarge in us-east-1b instead (no capacity in us-east-1a)" in log
    assert f"{user}: Snapshot snap-" in log  # its progress
    # make before break: a first copy while the old server served, only the rest at the cut-over
    assert f"{user}: Copying your volume {original['VolumeId']} ahead for the move to us-east-1b" in log
    assert f"{user}: Copy ahead done" in log
    # never reformatted: the copy has the file system of the original
    assert "formatting" not in emulator.console(inst["InstanceId"])
    page = audit_page(hub, user, 'data-outcome="done"')
    assert 'data-event="volume:move" data-outcome="started"' in page
    assert original["VolumeId"] in page

    # back to small (capacity everywhere): it runs where the volume now is, nothing moves
    rec = switch(hub, user, token, "small")
    assert rec["state"] == "succeeded", rec
    vol2, inst = check_accounting(ec2, user, "small")
    assert vol2["VolumeId"] == vol["VolumeId"] and inst["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert read(hub, user, token, "after.txt") == "written in us-east-1b"
    hub.stop_server(user, timeout=120)
    check_accounting(ec2, user, None)


def test_a_move_whose_start_fails_goes_back_to_the_original(hub, ec2, moto):
    """The copy cannot be attached: the start fails, the copy is deleted, the
    original (untouched) and the snapshot are kept, and the switch rolls back
    to small on the original in us-east-1a."""
    user = hub.create_user("aws-move-fail")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"}, timeout=180)
    (original,) = user_volumes(ec2, user)
    write(hub, user, token, "keep.txt", "still here")
    moto.arm(
        action="RunInstances", error="InsufficientInstanceCapacity", status=500,
        match={"InstanceType": "g5.xlarge", "SubnetId": subnet_in(ec2, "us-east-1a")},
    )  # fmt: skip
    # the switch's one attach is the copy's (make before break attaches nothing
    # ahead); the rollback's attach of the original then works
    moto.arm(action="AttachVolume", error="IncorrectState", status=400, times=1)
    with AttachmentWatch(user) as watch:
        rec = switch(hub, user, token, "gpu", timeout=300)
    faults = moto.stats()["faults"]
    moto.reset()
    assert faults.get("IncorrectState") == 1, faults
    assert rec["state"] == "rolled_back", rec
    assert "AttachVolume operation: IncorrectState" in (rec.get("error") or ""), rec
    assert watch.max_attached == 1
    vol, inst = check_accounting(ec2, user, "small")
    assert vol["VolumeId"] == original["VolumeId"] and vol["AvailabilityZone"] == "us-east-1a"
    assert read(hub, user, token, "keep.txt") == "still here"
    snaps = user_snapshots(ec2, user)
    # kept with the original: the one taken ahead (make before break) and the cut-over's
    assert sorted(t["ds-compute:reason"] for t in snaps.values()) == ["zone-move", "zone-move-ahead"]
    assert "Back on your volume" in hub.log_path.read_text(errors="replace")
    page = audit_page(hub, user, 'data-outcome="undone"')
    assert 'data-event="volume:move" data-outcome="started"' in page
    hub.stop_server(user, timeout=120)
    check_accounting(ec2, user, None)
