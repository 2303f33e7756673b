"""Instance emulator: moto's EC2 instances come to life on this machine.

A thread polls the moto server. When an instance tagged by a hub reaches
``running``, the emulator

- gives it an address the hub may dial: a free port on 127.0.0.1, published
  as the instance tag ``ds-compute:test-address`` (the backend runs with
  ``c.EC2Backend.address_source = "tag:ds-compute:test-address"``); moto's
  fake 10.x/54.x addresses are never dialed;
- runs its user-data's shell script (as cloud-init would) in a private mount
  namespace (``unshare --mount``), as root, with ``DS_COMPUTE_INSTANCE_ID``
  standing in for the metadata service, the moto endpoint and test
  credentials, and ``DS_COMPUTE_DEVICE_DIR`` standing in for
  ``/dev/disk/by-id``;
- maps each EBS volume attached to it (per moto) to a loop device over a
  sparse image ``<root>/<vol-id>.img``, linked as
  ``<device dir>/nvme-Amazon_Elastic_Block_Store_<serial>`` while (and only
  while) moto says it is attached there — so the bootstrap's real code finds,
  formats (only if empty) and mounts it; a snapshot copies its volume's
  image (``<root>/<snap-id>.img``, at the first round after moto has it,
  after the shutdown of instances that left ``running``) and a volume made
  from a snapshot starts as a copy of that image, so data crosses zones
  only through snapshots, as on EC2;
- maps EFS access points through a ``mount`` wrapper on ``PATH`` that turns
  ``mount -t efs -o accesspoint=fsap-… fs-…:/ DIR`` into a bind mount of
  ``<root>/efs/<fs-id><access point root>``;
- when the instance leaves ``running`` (stop/terminate), ends its processes
  (SIGTERM, then SIGKILL), like the OS shutdown would;
- turns a ``shutdown`` inside the instance (a wrapper on ``PATH``) into what EC2
  does then: terminate or stop, as its ``InstanceInitiatedShutdownBehavior`` says.

Realistic timing (moto is instant: its instances are ``running`` as soon as
they are launched). ``launch_delay`` seconds after the emulator first sees
an instance, it publishes the address (until then the instance has no
address the hub can use: the backend's address wait, which every start and
every prepared start goes through, lasts that long); ``boot_delay`` seconds
later it runs the user-data (the OS boot before cloud-init), so the
bootstrap's ``.waiting`` report and the spec read come no earlier. EBS
attach/detach times are the moto server's (``MotoServer.set_delays``: the
emulator reads the same delayed answers, so a device appears only once the
attach is over). Defaults 0: tests stay fast; the benchmark uses the issue's
25 s / 15 s (and 5 s / 5 s attach/detach).

Calls of the emulator carry ``app/ds-compute-emulator`` in their User-Agent
and those of the emulated instances ``app/ds-compute-instance``, so the moto
server counts the hub's calls apart (``stats()["callers"]["hub"]``).

Needs root (namespaces, loop devices, mounts).
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3

from jupyter_ds_compute.backends.ec2 import script_from_user_data

ADDRESS_TAG = "ds-compute:test-address"

MOUNT_WRAPPER = r"""#!/bin/bash
# test double: "mount -t efs -o ...accesspoint=AP FS:/ DIR" -> bind mount
if [ "${1:-}" = "-t" ] && [ "${2:-}" = "efs" ]; then
    opts="$4"; target="$6"
    ap=$(echo "$opts" | tr ',' '\n' | sed -n 's/^accesspoint=//p')
    src=$(cat "$DS_TEST_EFS_MAP/$ap")
    exec /bin/mount --bind "$src" "$target"
fi
exec /bin/mount "$@"
"""


SHUTDOWN_WRAPPER = r"""#!/bin/bash
# test double: "shutdown" inside an instance -> what EC2 does when its OS shuts
# down (InstanceInitiatedShutdownBehavior: terminate or stop)
exec python3 - <<'EOF'
import os
import boto3
ec2 = boto3.client("ec2", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
iid = os.environ["DS_COMPUTE_INSTANCE_ID"]
how = ec2.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
if how["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate":
    ec2.terminate_instances(InstanceIds=[iid])
else:
    ec2.stop_instances(InstanceIds=[iid])
EOF
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instance:
    def __init__(self, instance_id, workdir):
        self.id = instance_id
        self.dir = workdir / instance_id
        self.devdir = self.dir / "by-id"
        self.devdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = None
        self.devices = {}
        self.seen = time.monotonic()
        self.addressed = False


class InstanceEmulator:
    def __init__(
        self,
        endpoint_url,
        workdir,
        region="us-east-1",
        interval=0.2,
        image_size_gib=1,
        launch_delay=0.0,
        boot_delay=0.0,
    ):
        self.endpoint_url = endpoint_url
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.region = region
        self.interval = interval
        self.launch_delay = launch_delay
        self.boot_delay = boot_delay
        self.image_size = image_size_gib * 2**30
        self.instances: dict[str, Instance] = {}
        self.loops: dict[str, str] = {}  # volume id -> /dev/loopN (one per volume, kept)
        self.snapshots: dict[str, str] = {}  # snapshot id -> volume id it copied
        self.booted: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = None
        kw = dict(
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=__import__("botocore.config").config.Config(user_agent_appid="ds-compute-emulator"),
        )
        self.ec2 = boto3.client("ec2", **kw)
        self.efs = boto3.client("efs", **kw)
        self.bin = self.workdir / "bin"
        self.bin.mkdir(exist_ok=True)
        for name, text in (("mount", MOUNT_WRAPPER), ("shutdown", SHUTDOWN_WRAPPER)):
            (self.bin / name).write_text(text)
            os.chmod(self.bin / name, 0o755)
        self.efs_root = self.workdir / "efs"
        self.efs_map = self.workdir / "efs-map"
        self.efs_map.mkdir(exist_ok=True)

    # -- lifecycle -------------------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._run, name="instance-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        for inst in list(self.instances.values()):
            self._shutdown(inst)
        for loop in self.loops.values():
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        self.loops.clear()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - keep emulating; tests read .errors
                self.errors.append(repr(e))
            self._stop.wait(self.interval)

    # -- one round ---------------------------------------------------------------

    def tick(self):
        r = self.ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": ["ds-compute:hub"]}])
        states = {}
        for res in r.get("Reservations", []):
            for inst in res["Instances"]:
                states[inst["InstanceId"]] = inst["State"]["Name"]
        for iid, inst in list(self.instances.items()):
            if states.get(iid) != "running":
                self._shutdown(inst)
                del self.instances[iid]
        for iid, state in states.items():
            if state == "running" and iid not in self.instances:
                self.instances[iid] = Instance(iid, self.workdir)
        now = time.monotonic()
        for inst in self.instances.values():
            if not inst.addressed and now - inst.seen >= self.launch_delay:
                self._address(inst)
        self._copy_snapshots()
        self._map_volumes()
        for inst in self.instances.values():
            booted = now - inst.seen >= self.launch_delay + self.boot_delay
            if inst.addressed and inst.proc is None and booted:
                self._boot(inst)

    def _copy_snapshots(self):
        """A new snapshot of a hub's volume: copy the volume's image (sparse)."""
        r = self.ec2.describe_snapshots(
            OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["ds-compute:hub"]}]
        )
        for snap in r.get("Snapshots", []):
            sid = snap["SnapshotId"]
            if sid in self.snapshots:
                continue
            if any(snap["VolumeId"] in inst.devices for inst in self.instances.values()):
                continue  # still on an instance being shut down: copied at a later round
            source = self.workdir / f"{snap['VolumeId']}.img"
            if source.exists():
                subprocess.run(
                    ["cp", "--sparse=always", str(source), str(self.workdir / f"{sid}.img")], check=True
                )
            self.snapshots[sid] = snap["VolumeId"]

    def _map_volumes(self):
        r = self.ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["ds-compute:hub"]}])
        attached = {}
        made_from = {v["VolumeId"]: v.get("SnapshotId") for v in r.get("Volumes", [])}
        for vol in r.get("Volumes", []):
            for att in vol.get("Attachments") or []:
                if att.get("State") == "attached":
                    attached.setdefault(att["InstanceId"], set()).add(vol["VolumeId"])
        for iid, inst in self.instances.items():
            want = attached.get(iid, set())
            for vid in want - set(inst.devices):
                snapshot = made_from.get(vid)
                if snapshot and snapshot not in self.snapshots and not (self.workdir / f"{vid}.img").exists():
                    continue  # made from a snapshot not copied yet: mapped at a later round
                link = inst.devdir / f"nvme-Amazon_Elastic_Block_Store_{vid.replace('-', '')}"
                loop = self._loop(vid, snapshot)
                link.symlink_to(loop)
                inst.devices[vid] = link
            for vid in set(inst.devices) - want:
                inst.devices.pop(vid).unlink(missing_ok=True)

    def _loop(self, vid, snapshot=None):
        if vid not in self.loops:
            image = self.workdir / f"{vid}.img"
            copy = self.workdir / f"{snapshot}.img" if snapshot else None
            if not image.exists() and copy is not None and copy.exists():
                subprocess.run(["cp", "--sparse=always", str(copy), str(image)], check=True)
            elif not image.exists():
                with open(image, "wb") as f:
                    f.truncate(self.image_size)
            out = subprocess.run(
                ["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True
            )
            self.loops[vid] = out.stdout.strip()
        return self.loops[vid]

    def _efs_map(self):
        for ap in self.efs.describe_access_points().get("AccessPoints", []):
            root = ap.get("RootDirectory", {})
            src = self.efs_root / ap["FileSystemId"] / root.get("Path", "/").lstrip("/")
            if not src.exists():
                src.mkdir(parents=True)
                info = root.get("CreationInfo")
                if info:
                    os.chown(src, int(info["OwnerUid"]), int(info["OwnerGid"]))
                    os.chmod(src, int(info["Permissions"], 8))
            (self.efs_map / ap["AccessPointId"]).write_text(str(src))

    def _address(self, inst):
        """The instance runs (after ``launch_delay``): it has an address."""
        self.ec2.create_tags(
            Resources=[inst.id], Tags=[{"Key": ADDRESS_TAG, "Value": f"127.0.0.1:{inst.port}"}]
        )
        inst.addressed = True

    def _boot(self, inst):
        """The OS booted (after ``boot_delay`` more): cloud-init runs the user-data."""
        iid = inst.id
        inst.proc = False  # tried (a missing user-data is an error, not retried)
        raw = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"].get(
            "Value"
        )
        if not raw:
            self.errors.append(f"{iid}: no user-data")
            return
        script = inst.dir / "user-data.sh"
        script.write_text(script_from_user_data(base64.b64decode(raw).decode()))
        try:
            self._efs_map()
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"efs map: {e!r}")
        env = {
            "PATH": f"{self.bin}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "DS_COMPUTE_INSTANCE_ID": iid,
            "DS_COMPUTE_DEVICE_DIR": str(inst.devdir),
            "DS_TEST_EFS_MAP": str(self.efs_map),
            "AWS_SDK_UA_APP_ID": "ds-compute-instance",
        }
        log = open(inst.dir / "console.log", "ab")
        inst.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "bash", str(script)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=inst.dir,
        )
        log.close()
        self.booted.append(iid)

    def _shutdown(self, inst, grace=5.0):
        proc = inst.proc
        if proc and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        if proc:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for link in inst.devices.values():
            link.unlink(missing_ok=True)
        inst.devices.clear()

    def console(self, iid):
        try:
            return (self.workdir / iid / "console.log").read_text(errors="replace")
        except OSError:
            return ""
