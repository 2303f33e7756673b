"""Volume ``ebs``: one encrypted gp3 EBS volume per user (and named server).

The volume is created on the first start in :attr:`EBSVolume.availability_zone`
and tagged with the hub, user and server; its id lives in spawner state (and
is found again by its tags if the state is lost). ``attach`` moves it to the
instance the backend prepared, ``detach`` brings it back to ``available``.

AWS (and moto even more) accepts things that break a volume, so ``attach``
checks them itself and refuses with a clear message, changing nothing:

- the volume is not attached to another instance (or being attached/detached);
- the instance is in the volume's availability zone;
- the device name is free on the instance;
- the instance is ours (hub, user and server tags) and ``running``.

An attachment stuck in ``attaching`` (it happens on real EC2) is bounded by
:attr:`EBSVolume.attach_timeout`; then the attachment is force-detached and
the start fails, so the switch rolls back to the previous tier.

When a tier's instances have no capacity in the volume's zone, the EC2
backend may launch in another allowed zone (:attr:`EBSVolume.move_across_zones`):
the volume then moves (:meth:`EBSVolume.move_to_zone`): a snapshot of the
detached volume, a new volume from it in the instance's zone (same size,
type, encryption; tagged ``ds-compute:moved-from``), attached instead. The
original and the snapshot stay until the server answers on the new volume
(:meth:`EBSVolume.finish_move` deletes both); a start that fails goes back to
the original and deletes the copy (:meth:`EBSVolume.undo_move`), keeping the
snapshot. The pending move is in spawner state, so a hub that stops midway
loses nothing: the next start that comes up finishes it.

On the instance, the user-data finds the device by volume id (NVMe serial,
``/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…``), formats it only
when it holds no file system, and mounts it at :attr:`EBSVolume.mount_path`.
"""

from __future__ import annotations

import hashlib
import time

from traitlets import Bool, Float, Integer, List, Unicode

from ..backends import aws
from ..names import safe_name
from .base import VolumeDriver, VolumeError

#: tag of a volume made by a zone move: the id of the volume it was copied from
MOVED_TAG = "ds-compute:moved-from"
#: ``ds-compute:reason`` of the snapshots a zone move takes (at the cut-over, and ahead)
MOVE_REASON, PRECOPY_REASON = "zone-move", "zone-move-ahead"


class EBSVolume(VolumeDriver, aws.AWS):
    """An EBS volume per user that follows them from instance to instance."""

    name = "ebs"

    availability_zone = Unicode(
        help="""
        Availability zone of new volumes (an EBS volume is bound to its AZ,
        so every tier's instances for this user launch there, unless a tier
        has no capacity there: see :attr:`move_across_zones`).
        Default: ``<region>a``.

        Example::

            c.EBSVolume.availability_zone = "eu-west-1b"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    size = Integer(20, help="""Size of a new volume in GiB.""").tag(config=True)

    volume_type = Unicode(
        "gp3", help="""EBS volume type of new volumes (``gp3``, ``gp2``, ``io2``...)."""
    ).tag(config=True)

    iops = Integer(0, help="""Provisioned IOPS (gp3/io1/io2); 0 for the type's default.""").tag(config=True)

    throughput = Integer(0, help="""gp3 throughput in MiB/s; 0 for the default (125).""").tag(config=True)

    kms_key_id = Unicode(
        "",
        help="""KMS key for encryption; empty for the account's default EBS key. Volumes are always encrypted.""",
    ).tag(config=True)

    mount_path = Unicode(
        "/home/jovyan",
        help="""
        Where the volume is mounted on the instance: the server's home and
        notebook directory (``DS_COMPUTE_VOLUME_PATH``).

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    device_names = List(
        Unicode(),
        default_value=[f"/dev/sd{c}" for c in "fghijklmnop"],
        help="""Device names to attach as, first free one wins (the instance's own mappings are checked).""",
    ).tag(config=True)

    wait_poll_max = Float(
        1.0,
        help="""
        Longest pause (seconds) between two looks at the volume while waiting
        for it to attach or detach. These waits are the user's downtime during
        a switch's cut-over, so they poll often (the AWS rate limiter,
        ``c.AWS.rate_limits``, still bounds DescribeVolumes).
        """,
    ).tag(config=True)

    attach_timeout = Float(
        120.0,
        help="""
        Seconds for an attachment to reach ``attached``. Longer means it is
        stuck in ``attaching``: it is force-detached and the start fails.
        """,
    ).tag(config=True)

    detach_timeout = Float(
        300.0, help="""Seconds for the volume to become ``available`` after detach."""
    ).tag(config=True)

    snapshot_before_delete = Bool(
        False,
        help="""
        When the volume is deleted (the user or named server is deleted and
        ``c.DSComputeSpawner.delete_volume`` allows it), take a final
        snapshot first and keep it (tagged like the volume,
        ``ds-compute:reason = before-delete``); it is then the only thing
        left, and it costs storage until you delete it. The volume's other
        snapshots made by this hub (:attr:`snapshot_interval`) are deleted
        with it either way.

        Example::

            c.EBSVolume.snapshot_before_delete = True

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    snapshot_interval = Float(
        0.0,
        help="""
        Snapshot schedule: at a stop, take a snapshot when the last one is
        older than this many seconds (e.g. ``86400`` for daily). 0: never.
        Snapshots are tagged like the volume.

        Example::

            c.EBSVolume.snapshot_interval = 24 * 3600

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    move_across_zones = Bool(
        True,
        help="""
        Let the volume move to another availability zone when the tier's
        instances have no capacity in its zone (``InsufficientInstanceCapacity``
        there, capacity in another of ``c.EC2Backend.subnet_ids``' zones): a
        snapshot, a new volume from it there, the original deleted once the
        server answers on the new one. False: such a start fails with the
        capacity error instead.

        Example::

            c.EBSVolume.move_across_zones = False

        .. versionadded:: 0.4
        """,
    ).tag(config=True)

    move_timeout = Float(
        3600.0,
        help="""
        Seconds for a zone move's snapshot to complete and its new volume to
        become ``available`` (a snapshot's first copy of a large volume takes
        long; later ones are incremental). Longer: the start fails, the
        original volume untouched.
        """,
    ).tag(config=True)

    prepare_move_wait = Float(
        300.0,
        help="""
        Seconds a switch's prepare step waits for the snapshot taken ahead of
        a zone move (while the old server serves; the cut-over's snapshot is
        then incremental). Longer: the switch goes on and the snapshot
        completes in the background (the cut-over's still copies only what
        it lacks). Counts towards ``c.DSComputeService.prepare_timeout``.
        """,
    ).tag(config=True)

    # state
    _zone = None
    #: a zone move whose original is not deleted yet: {"volume_id", "zone", "snapshot_id", "at"}
    moved_from = None
    #: this driver object moved the volume (in this start): a failed start undoes it
    _moved_here = False
    attached_to = ""
    device = ""
    last_snapshot = 0.0

    def _key(self):
        """The injective name of this user's server (Name tag, creation token, paths)."""
        return safe_name(self.spawner.user.name, self.spawner.name or "")

    def _tags(self):
        tags = self.owner_tags(self.spawner)
        tags["Name"] = f"ds-compute {self._key()}"
        return tags

    #: (monotonic time, description) of the last DescribeVolumes of our volume
    _last_seen = (float("-inf"), None)

    async def _describe(self):
        """The volume's description, or None if it is gone."""
        vol = await self._describe_id(self.volume_id)
        self._last_seen = (time.monotonic(), vol)
        return vol

    async def _describe_id(self, vid):
        """The description of volume ``vid``, or None if it is gone."""
        try:
            r = await self.aws("ec2", "describe_volumes", VolumeIds=[vid])
        except Exception as e:
            if aws.error_code(e) in ("InvalidVolume.NotFound", "InvalidVolumeID.Malformed"):
                return None
            raise
        return (r.get("Volumes") or [None])[0]

    def _recently_seen(self, max_age=5.0):
        """The description ``detach`` just saw (a switch: detach, then ensure), else None."""
        seen, vol = self._last_seen
        if vol is not None and vol.get("VolumeId") == self.volume_id and time.monotonic() - seen < max_age:
            return vol
        return None

    async def _find_by_tags(self):
        r = await self.aws("ec2", "describe_volumes", Filters=self.owner_filters(self.spawner))
        # instances' root volumes carry the owner tags too, and a tier tag
        vols = [
            v
            for v in r.get("Volumes", [])
            if v["State"] not in ("deleting", "deleted")
            and "ds-compute:tier" not in aws.tag_dict(v.get("Tags"))
        ]
        vols.sort(key=lambda v: v["CreateTime"])
        # a zone move not finished yet: the copy is the one in use, not its original
        superseded = {aws.tag_dict(v.get("Tags")).get(MOVED_TAG) for v in vols}
        current = [v for v in vols if v["VolumeId"] not in superseded] or vols
        return current[0] if current else None

    async def ensure(self):
        vol = None
        if self.volume_id:
            # a switch detached it a moment ago: that answer is as good as a new one
            # (check_attachable describes it again before attaching)
            vol = self._recently_seen() or await self._describe()
        if vol is not None and not self.is_ours(vol.get("Tags"), self.spawner):
            self.refuse_foreign(vol["VolumeId"], vol.get("Tags"), self.spawner)
        if vol is None:
            if self.volume_id:
                self.log.warning(
                    "EBS volume %s of %s is gone; looking it up by tags", self.volume_id, self.log_name
                )
            vol = await self._find_by_tags()
        if vol is None:
            vol = await self._create()
        self.volume_id = vol["VolumeId"]
        self._zone = vol["AvailabilityZone"]
        if vol["State"] == "creating":
            await self._wait_state("available", self.attach_timeout)
        return self.volume_id

    async def _create(self):
        zone = self.availability_zone or f"{self.region}a"
        kwargs = dict(
            AvailabilityZone=zone,
            Size=self.size,
            VolumeType=self.volume_type,
            Encrypted=True,
            TagSpecifications=[{"ResourceType": "volume", "Tags": aws.tag_list(self._tags())}],
            # idempotent: a retried create returns the same volume, never a second one
            ClientToken=hashlib.sha256(f"{self.hub_id}/{self._key()}/{zone}".encode()).hexdigest()[:64],
        )
        if self.iops:
            kwargs["Iops"] = self.iops
        if self.throughput:
            kwargs["Throughput"] = self.throughput
        if self.kms_key_id:
            kwargs["KmsKeyId"] = self.kms_key_id
        self.log.info(
            "Creating %s GiB %s volume in %s for %s", self.size, self.volume_type, zone, self.log_name
        )
        try:
            vol = await self.aws("ec2", "create_volume", **kwargs)
        except Exception as e:
            raise VolumeError(
                f"Could not create your EBS volume in {zone}: {aws.error_message(e)}",
                log_message=f"create_volume for {self.log_name} failed: {e!r}",
            ) from None
        return vol

    async def _wait_state(self, state, timeout):
        async def probe():
            vol = await self._describe()
            return vol if vol is not None and vol["State"] == state else None

        try:
            return await aws.wait_until(
                probe, what=f"volume {self.volume_id} to be {state}", timeout=timeout, cap=self.wait_poll_max
            )
        except aws.WaitTimeout as e:
            raise VolumeError(
                f"Your volume {self.volume_id} did not become {state} in time", log_message=str(e)
            ) from None

    # -- attach ---------------------------------------------------------------

    async def _instance(self, instance_id):
        try:
            inst = await self.describe_instance(instance_id)
        except Exception as e:
            raise VolumeError(
                f"Instance {instance_id} not found: {aws.error_message(e)}",
                log_message=f"describe_instances {instance_id}: {e!r}",
            ) from None
        if inst is None:
            raise VolumeError(f"Instance {instance_id} not found")
        return inst

    def _refuse(self, message):
        raise VolumeError(f"{message} Nothing was changed.", log_message=f"{self.log_name}: {message}")

    async def check_attachable(self, instance_id):
        """Refuse (VolumeError) unless the volume may be attached to ``instance_id``.

        Returns ``(device, already_attached)``.
        """
        vol = await self._describe()
        if vol is None:
            self._refuse(f"Volume {self.volume_id} does not exist.")
        for att in vol.get("Attachments") or []:
            if att.get("InstanceId") == instance_id and att.get("State") == "attached":
                return att.get("Device"), True
            self._refuse(
                f"Volume {self.volume_id} is {att.get('State', 'attached')} to instance "
                f"{att.get('InstanceId')}: stop the server there first."
            )
        if vol["State"] != "available":
            self._refuse(f"Volume {self.volume_id} is {vol['State']}, not available.")
        inst = await self._instance(instance_id)
        if not self.is_ours(inst.get("Tags"), self.spawner):
            self._refuse(f"Instance {instance_id} does not belong to this server (tags): refusing to attach.")
        state = inst.get("State", {}).get("Name")
        if state != "running":
            self._refuse(f"Instance {instance_id} is {state}, not running.")
        inst_zone = inst.get("Placement", {}).get("AvailabilityZone")
        if inst_zone != vol["AvailabilityZone"]:
            self._refuse(
                f"Volume {self.volume_id} is in {vol['AvailabilityZone']} but instance "
                f"{instance_id} is in {inst_zone}: an EBS volume cannot cross zones."
            )
        used = {m.get("DeviceName") for m in inst.get("BlockDeviceMappings") or []}
        used.add(inst.get("RootDeviceName"))
        # /dev/sdf and /dev/xvdf are the same slot
        used |= {d.replace("/dev/xvd", "/dev/sd") for d in used if d}
        for dev in self.device_names:
            if dev not in used and dev.replace("/dev/xvd", "/dev/sd") not in used:
                return dev, False
        self._refuse(f"No free device name on instance {instance_id} (tried {', '.join(self.device_names)}).")

    async def attach(self, host):
        if host.kind != "ec2":
            raise VolumeError(
                f"Volume {self.volume_id} is an EBS volume and attaches only to EC2 instances, "
                f"not to {host.kind} machine {host.id}: use the ec2 backend."
            )
        device, already = await self.check_attachable(host.id)
        if not already:
            self.log.info("Attaching %s to %s as %s for %s", self.volume_id, host.id, device, self.log_name)
            try:
                await self.aws(
                    "ec2", "attach_volume", VolumeId=self.volume_id, InstanceId=host.id, Device=device
                )
            except Exception as e:
                raise VolumeError(
                    f"Could not attach volume {self.volume_id} to {host.id}: {aws.error_message(e)}",
                    log_message=f"attach_volume {self.volume_id} -> {host.id}: {e!r}",
                ) from None
            self.attached_to, self.device = host.id, device
            await self._wait_attached(host.id)
        self.attached_to, self.device = host.id, device
        host.extra["mount"] = {
            "driver": "ebs",
            "volume_id": self.volume_id,
            "device": device,
            "path": self.mount_path,
            "fs_type": "ext4",
        }
        return self.mount_path

    async def _wait_attached(self, instance_id):
        async def probe():
            vol = await self._describe()
            atts = [a for a in (vol or {}).get("Attachments") or [] if a.get("InstanceId") == instance_id]
            return atts and atts[0].get("State") == "attached"

        try:
            await aws.wait_until(
                probe,
                what=f"volume {self.volume_id} to attach to {instance_id}",
                timeout=self.attach_timeout,
                cap=self.wait_poll_max,
            )
        except aws.WaitTimeout:
            self.log.error(
                "Volume %s stuck in 'attaching' to %s for %ss (%s); force-detaching",
                self.volume_id,
                instance_id,
                self.attach_timeout,
                self.log_name,
            )
            await self._detach(force=True)
            raise VolumeError(
                f"Volume {self.volume_id} was stuck attaching to {instance_id} for "
                f"{self.attach_timeout:g}s (an EC2 hiccup); it was detached again. Try again.",
                log_message=f"attach of {self.volume_id} to {instance_id} stuck in attaching; force-detached",
            ) from None

    # -- detach ----------------------------------------------------------------

    async def detach(self):
        if not self.volume_id:
            return
        await self._detach(force=False)
        if self.snapshot_interval and time.time() - self.last_snapshot > self.snapshot_interval:
            await self.snapshot(reason="scheduled")

    async def detach_from(self, instance_id):
        """Detach the volume from ``instance_id`` (stopped or terminated: the EC2
        backend ending a leftover instance of this server) and wait until it is
        ``available``; attachments to any other instance are left alone."""
        self.attached_to = instance_id
        await self._detach(force=False)

    async def _detach(self, force):
        vol = await self._describe()
        if vol is None:
            self.attached_to = self.device = ""
            return
        if vol["State"] == "available" and not vol.get("Attachments"):
            # already detached (an instance's termination detaches it): nothing to wait for
            self.attached_to = self.device = ""
            return
        poller = aws.InstancePoller.shared(self)
        for att in vol.get("Attachments") or []:
            if att.get("State") in ("detaching", "detached"):
                continue
            known = poller.known(att.get("InstanceId", "")) or {}
            if not force and known.get("State", {}).get("Name") in ("shutting-down", "terminated"):
                # the backend is terminating that instance: its shutdown unmounts the file
                # system and the termination detaches the volume; only wait for it
                continue
            if self.attached_to and att.get("InstanceId") != self.attached_to:
                # someone else's attachment: never touch it
                self.log.warning(
                    "Volume %s is attached to %s, not %s: leaving it",
                    self.volume_id,
                    att["InstanceId"],
                    self.attached_to,
                )
                continue
            self.log.info(
                "Detaching %s from %s for %s (force=%s)",
                self.volume_id,
                att["InstanceId"],
                self.log_name,
                force,
            )
            try:
                await self.aws(
                    "ec2",
                    "detach_volume",
                    VolumeId=self.volume_id,
                    InstanceId=att["InstanceId"],
                    Force=force,
                )
            except Exception as e:
                if aws.error_code(e) not in ("IncorrectState", "InvalidAttachment.NotFound"):
                    raise VolumeError(
                        f"Could not detach volume {self.volume_id}: {aws.error_message(e)}",
                        log_message=f"detach_volume {self.volume_id}: {e!r}",
                    ) from None
        await self._wait_state("available", self.detach_timeout)
        self.attached_to = self.device = ""

    # -- moving to another zone --------------------------------------------------

    @property
    def moves_across_zones(self):
        return self.move_across_zones

    async def move_to_zone(self, zone, progress):
        """Snapshot the detached volume, make a new volume from it in ``zone``
        and use that one; the original stays until :meth:`finish_move`.

        Refused (nothing changed) while the volume is attached or busy. A copy
        left by an earlier move that never got into the state is deleted first.
        """
        vol = await self._describe()
        if vol is None:
            self._refuse(f"Volume {self.volume_id} does not exist.")
        old_id, old_zone = vol["VolumeId"], vol["AvailabilityZone"]
        if old_zone == zone:
            return {"from": old_id, "from_zone": old_zone, "to": old_id, "to_zone": zone, "via": None}
        if vol["State"] != "available" or vol.get("Attachments"):
            self._refuse(
                f"Volume {old_id} is {vol['State']} (attached): it can move to {zone} only when detached."
            )
        if self.moved_from:
            self._refuse(
                f"Volume {old_id} is itself the copy of {self.moved_from['volume_id']} from an unfinished "
                "move; start the server once where it is, then switch again."
            )
        started = time.monotonic()
        await self._delete_stale_copies(old_id)
        progress(
            f"Your volume {old_id} is in {old_zone}, your machine in {zone}: "
            f"copying the volume to {zone} (snapshot, then a new volume)"
        )
        snap = await self.snapshot(reason=MOVE_REASON)
        await self._wait_snapshot(snap, progress)
        tags = self._tags()
        tags[MOVED_TAG] = old_id
        kwargs = dict(
            AvailabilityZone=zone,
            SnapshotId=snap,
            Size=vol["Size"],
            VolumeType=vol.get("VolumeType") or self.volume_type,
            Encrypted=True,
            TagSpecifications=[{"ResourceType": "volume", "Tags": aws.tag_list(tags)}],
            ClientToken=hashlib.sha256(f"{self.hub_id}/{self._key()}/{snap}/{zone}".encode()).hexdigest()[
                :64
            ],
        )
        # the copy performs like the original
        if kwargs["VolumeType"] in ("io1", "io2", "gp3") and vol.get("Iops"):
            kwargs["Iops"] = vol["Iops"]
        if kwargs["VolumeType"] == "gp3" and vol.get("Throughput"):
            kwargs["Throughput"] = vol["Throughput"]
        if vol.get("KmsKeyId") or self.kms_key_id:
            kwargs["KmsKeyId"] = vol.get("KmsKeyId") or self.kms_key_id
        try:
            new = await self.aws("ec2", "create_volume", **kwargs)
        except Exception as e:
            raise VolumeError(
                f"Could not make a copy of your volume in {zone}: {aws.error_message(e)}. "
                f"Your volume {old_id} in {old_zone} was not touched (snapshot {snap} kept).",
                log_message=f"create_volume from {snap} in {zone} for {self.log_name} failed: {e!r}",
            ) from None
        self.moved_from = {"volume_id": old_id, "zone": old_zone, "snapshot_id": snap, "at": time.time()}
        self.volume_id, self._zone, self._moved_here = new["VolumeId"], zone, True
        self.attached_to = self.device = ""
        if new.get("State") != "available":
            try:
                await self._wait_state("available", self.move_timeout)
            except VolumeError:
                await self.undo_move()
                raise
        self.log.info(
            "Volume of %s moved %s (%s) -> %s (%s) via %s in %.1fs; the original stays until the server is up",
            self.log_name, old_id, old_zone, self.volume_id, zone, snap, time.monotonic() - started,
        )  # fmt: skip
        progress(f"Your volume is now {self.volume_id} in {zone} ({time.monotonic() - started:.0f}s)")
        return {"from": old_id, "from_zone": old_zone, "to": self.volume_id, "to_zone": zone, "via": snap}

    async def prepare_move(self, zone, progress):
        """A snapshot of the volume in use (crash-consistent; only a base): EBS
        snapshots are incremental, so the cut-over's snapshot of the detached
        volume then copies only what changed since. Deleted by :meth:`finish_move`."""
        started = time.monotonic()
        progress(
            f"Copying your volume {self.volume_id} ahead for the move to {zone} (snapshot while you work)"
        )
        snap = await self.snapshot(reason=PRECOPY_REASON)
        try:
            await self._wait_snapshot(snap, progress, timeout=self.prepare_move_wait)
        except VolumeError as e:
            progress(f"The copy ahead goes on in the background ({e.message.split(';')[0]})")
            return snap
        progress(
            f"Copy ahead done ({time.monotonic() - started:.0f}s): the switch copies only what changes now"
        )
        return snap

    async def _wait_snapshot(self, snap, progress, timeout=None):
        timeout = self.move_timeout if timeout is None else timeout
        shown = [None]

        async def probe():
            r = await self.aws("ec2", "describe_snapshots", SnapshotIds=[snap])
            (info,) = r.get("Snapshots") or [{}]
            state = info.get("State")
            if state == "error":
                raise VolumeError(
                    f"The snapshot {snap} of your volume failed ({info.get('StateMessage') or 'error'}); "
                    "your volume was not touched.",
                    log_message=f"snapshot {snap} of {self.volume_id} for {self.log_name}: error",
                )
            if state != "completed" and info.get("Progress") != shown[0]:
                shown[0] = info.get("Progress")
                if shown[0]:
                    progress(f"Snapshot {snap} of your volume: {shown[0]}")
            return state == "completed"

        try:
            await aws.wait_until(probe, what=f"snapshot {snap}", timeout=timeout, cap=5)
        except aws.WaitTimeout as e:
            raise VolumeError(
                f"The snapshot {snap} of your volume did not complete in {timeout:g}s; "
                "your volume was not touched.",
                log_message=str(e),
            ) from None

    async def _delete_stale_copies(self, old_id):
        """Delete copies of ``old_id`` an interrupted earlier move made (not in the
        state: the original is still the volume in use, so they hold nothing newer)."""
        r = await self.aws(
            "ec2",
            "describe_volumes",
            Filters=self.owner_filters(self.spawner) + [{"Name": f"tag:{MOVED_TAG}", "Values": [old_id]}],
        )
        for v in r.get("Volumes", []):
            if (
                v["State"] != "available"
                or v.get("Attachments")
                or not self.is_ours(v.get("Tags"), self.spawner)
            ):
                continue
            self.log.warning(
                "Deleting %s, a copy of %s left by an interrupted zone move (%s)",
                v["VolumeId"], old_id, self.log_name,
            )  # fmt: skip
            await self.aws_delete(
                "ec2", "delete_volume", not_found="InvalidVolume.NotFound", error=VolumeError,
                what=f"volume {v['VolumeId']}", VolumeId=v["VolumeId"],
            )  # fmt: skip

    async def finish_move(self):
        """Delete the original of a finished move and the move's snapshot."""
        moved = self.moved_from
        if not moved:
            return None
        old, snap = moved["volume_id"], moved.get("snapshot_id")
        deleted = []
        try:
            if await self._delete_original():
                deleted.append(f"volume {old}")
        except VolumeError as e:
            self.log.warning("%s; kept, retried at the next start", e.log_message)
            return {"id": old, "deleted": [], "kept": [f"volume {old}"]}
        # the move's snapshot, and those taken ahead of it (make before break)
        r = await self.aws(
            "ec2", "describe_snapshots", OwnerIds=["self"],
            Filters=self.owner_filters(self.spawner) + [
                {"Name": "volume-id", "Values": [old]},
                {"Name": "tag:ds-compute:reason", "Values": [MOVE_REASON, PRECOPY_REASON]},
            ],
        )  # fmt: skip
        snaps = {s["SnapshotId"] for s in r.get("Snapshots", []) if self.is_ours(s.get("Tags"), self.spawner)}
        for sid in sorted(snaps | ({snap} if snap else set()), key=lambda x: x != snap):
            await self.aws_delete(
                "ec2", "delete_snapshot", not_found="InvalidSnapshot.NotFound", error=VolumeError,
                what=f"snapshot {sid}", SnapshotId=sid,
            )  # fmt: skip
            deleted.append(f"snapshot {sid}")
        self.moved_from = None
        self._moved_here = False
        self.log.info("Zone move of %s finished: deleted %s", self.log_name, ", ".join(deleted) or "nothing")
        return {"id": old, "deleted": deleted, "kept": []}

    async def _delete_original(self):
        """Delete the original of the pending move (True), or find it gone (False).
        Refused (VolumeError) while it is attached or not tagged as ours."""
        old = self.moved_from["volume_id"]
        vol = await self._describe_id(old)
        if vol is None or vol["State"] in ("deleting", "deleted"):
            return False
        if not self.is_ours(vol.get("Tags"), self.spawner):
            self._refuse(f"Volume {old} (the original of a zone move) is not tagged as this server's.")
        if vol.get("Attachments"):
            self._refuse(f"Volume {old} (the original of a zone move) is attached to an instance.")
        await self.aws_delete(
            "ec2", "delete_volume", not_found="InvalidVolume.NotFound", error=VolumeError,
            what=f"volume {old}", VolumeId=old,
        )  # fmt: skip
        return True

    async def undo_move(self):
        """Back to the original volume; the copy (detached) is deleted, the snapshot kept."""
        moved = self.moved_from
        if not (moved and self._moved_here):
            return None
        copy = self.volume_id
        self.attached_to = ""
        await self._detach(force=False)
        await self.aws_delete(
            "ec2", "delete_volume", not_found="InvalidVolume.NotFound", error=VolumeError,
            what=f"volume {copy}", VolumeId=copy,
        )  # fmt: skip
        self.volume_id, self._zone = moved["volume_id"], moved["zone"]
        self.moved_from, self._moved_here = None, False
        self.attached_to = self.device = ""
        self.log.warning(
            "Zone move of %s undone: back on %s in %s, copy %s deleted, snapshot %s kept",
            self.log_name, self.volume_id, self._zone, copy, moved.get("snapshot_id"),
        )  # fmt: skip
        return {
            "kept": [f"volume {self.volume_id}", f"snapshot {moved.get('snapshot_id')}"],
            "deleted": [f"volume {copy}"],
        }

    # -- snapshots and deletion -------------------------------------------------

    async def snapshot(self, reason="manual"):
        """Snapshot the volume (tagged like it); returns the snapshot id."""
        tags = self._tags()
        tags["ds-compute:reason"] = reason
        r = await self.aws(
            "ec2",
            "create_snapshot",
            VolumeId=self.volume_id,
            Description=f"ds-compute {reason} snapshot of {self._key()}",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": aws.tag_list(tags)}],
        )
        self.last_snapshot = time.time()
        self.log.info("Snapshot %s of %s (%s) for %s", r["SnapshotId"], self.volume_id, reason, self.log_name)
        return r["SnapshotId"]

    delete_by_default = True

    #: the EC2 backend need not wait for a terminated instance before ``detach``:
    #: ``detach`` waits for the volume to be ``available``, which it becomes
    #: once the instance is terminated (one waiter instead of two)
    waits_for_termination = True

    async def delete(self):
        """Delete the volume and the snapshots this hub made of it.

        Refused while the volume is attached to an instance that is not
        this server's own stopped or terminated one (that attachment is
        detached first). With :attr:`snapshot_before_delete`, a final
        snapshot is taken and kept.
        """
        vol = await self._describe() if self.volume_id else None
        if vol is None:
            vol = await self._find_by_tags()  # the state lost it
        if vol is None or vol["State"] in ("deleting", "deleted"):
            self.volume_id = ""
            return {"id": "", "deleted": [], "kept": []}
        vid = self.volume_id = vol["VolumeId"]
        if not self.is_ours(vol.get("Tags"), self.spawner):
            self._refuse(f"Volume {vid} is not tagged as this server's (hub, user, server): not deleting it.")
        await self._detach_for_delete(vol)
        deleted, kept = [], []
        final = None
        if self.snapshot_before_delete:
            final = await self.snapshot(reason="before-delete")
            kept.append(f"final snapshot {final}")
        if self.moved_from:
            # a zone move not finished: its original goes too (the snapshots below with it)
            if await self._delete_original():
                deleted.append(f"volume {self.moved_from['volume_id']}")
            self.moved_from = None
        # every snapshot this hub made for this server (of this volume, or of the
        # ones it was moved from) but the final ones an earlier deletion kept
        r = await self.aws(
            "ec2", "describe_snapshots", OwnerIds=["self"], Filters=self.owner_filters(self.spawner)
        )
        for snap in r.get("Snapshots", []):
            sid = snap["SnapshotId"]
            tags = snap.get("Tags")
            if sid == final or not self.is_ours(tags, self.spawner):
                continue
            if aws.tag_dict(tags).get("ds-compute:reason") == "before-delete":
                kept.append(f"final snapshot {sid} of an earlier deletion")
                continue
            await self.aws_delete(
                "ec2", "delete_snapshot", not_found="InvalidSnapshot.NotFound", error=VolumeError,
                what=f"snapshot {sid} of volume {vid}", SnapshotId=sid,
            )  # fmt: skip
            deleted.append(f"snapshot {sid}")
        await self.aws_delete(
            "ec2", "delete_volume", not_found="InvalidVolume.NotFound", error=VolumeError,
            what=f"volume {vid}", VolumeId=vid,
        )  # fmt: skip
        deleted.append(f"volume {vid}")
        self.volume_id = ""
        self.attached_to = self.device = ""
        return {"id": vid, "deleted": deleted, "kept": kept}

    async def _detach_for_delete(self, vol):
        """Refuse if attached anywhere but to this server's own stopped instance; detach that."""
        atts = [
            a for a in vol.get("Attachments") or [] if a.get("State") in ("attaching", "attached", "busy")
        ]
        for att in atts:
            iid = att.get("InstanceId")
            try:
                inst = await self._instance(iid)
            except VolumeError:
                continue  # gone: the attachment goes with it
            state = inst.get("State", {}).get("Name")
            if state not in ("stopped", "terminated") or not self.is_ours(inst.get("Tags"), self.spawner):
                self._refuse(
                    f"Volume {vol['VolumeId']} is {att.get('State')} to instance {iid} ({state}): "
                    "not deleting it. Stop the server there first."
                )
        if atts or vol["State"] != "available":
            self.attached_to = ""
            await self._detach(force=False)

    async def describe(self):
        info = {"id": self.volume_id, "driver": self.name, "path": self.mount_path, "attached_to": None}
        vol = await self._describe() if self.volume_id else None
        if vol:
            info["size_bytes"] = vol["Size"] * 2**30
            info["zone"] = vol["AvailabilityZone"]
            info["state"] = vol["State"]
            atts = [a for a in vol.get("Attachments") or [] if a.get("State") in ("attaching", "attached")]
            info["attached_to"] = atts[0]["InstanceId"] if atts else None
        if self.moved_from:
            info["moved_from"] = self.moved_from["volume_id"]
        return info

    def zone(self):
        """The volume's availability zone (known after ``ensure``): the EC2
        backend launches there (elsewhere only when that zone has no capacity
        and :attr:`move_across_zones` lets the volume follow)."""
        return self._zone

    def get_state(self):
        if not self.volume_id:
            return {}
        return {
            "driver": self.name,
            "id": self.volume_id,
            "zone": self._zone,
            "attached_to": self.attached_to,
            "device": self.device,
            "last_snapshot": self.last_snapshot,
            "moved_from": self.moved_from,
        }

    def load_state(self, state):
        self.volume_id = state.get("id", "")
        self._zone = state.get("zone")
        self.attached_to = state.get("attached_to", "")
        self.device = state.get("device", "")
        self.last_snapshot = state.get("last_snapshot", 0.0)
        self.moved_from = state.get("moved_from")
