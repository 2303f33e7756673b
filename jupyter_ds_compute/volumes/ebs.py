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


class EBSVolume(VolumeDriver, aws.AWS):
    """An EBS volume per user that follows them from instance to instance."""

    name = "ebs"

    availability_zone = Unicode(
        help="""
        Availability zone of new volumes (an EBS volume never leaves its AZ,
        so every tier's instances for this user launch there).
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

    # state
    _zone = None
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
        try:
            r = await self.aws("ec2", "describe_volumes", VolumeIds=[self.volume_id])
        except Exception as e:
            if aws.error_code(e) in ("InvalidVolume.NotFound", "InvalidVolumeID.Malformed"):
                return None
            raise
        vols = r.get("Volumes") or []
        vol = vols[0] if vols else None
        self._last_seen = (time.monotonic(), vol)
        return vol

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
        return vols[0] if vols else None

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
        r = await self.aws(
            "ec2",
            "describe_snapshots",
            OwnerIds=["self"],
            Filters=[{"Name": "volume-id", "Values": [vid]}] + self.owner_filters(self.spawner),
        )
        for snap in r.get("Snapshots", []):
            sid = snap["SnapshotId"]
            if sid == final or not self.is_ours(snap.get("Tags"), self.spawner):
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
        return info

    def zone(self):
        """The volume's availability zone (known after ``ensure``): an EBS volume
        never leaves it, so the EC2 backend launches only there."""
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
        }

    def load_state(self, state):
        self.volume_id = state.get("id", "")
        self._zone = state.get("zone")
        self.attached_to = state.get("attached_to", "")
        self.device = state.get("device", "")
        self.last_snapshot = state.get("last_snapshot", 0.0)
