"""Volume ``efs``: one EFS file system for the hub, an access point per user.

- The file system is found by its tags (``ds-compute:hub``) or created once
  (idempotent creation token), encrypted; it gets a mount target in the
  availability zone of each configured subnet.
- Each user (and named server) gets an access point that pins the POSIX
  uid/gid the server runs as and roots them in ``/ds-compute/<user>[--<server>]``
  (created with that owner, mode 750): a user only ever sees their own
  directory. The access point id is the volume id (``DS_COMPUTE_VOLUME_ID``).
- ``attach`` only checks that the instance's zone has an available mount
  target and tells the backend how to mount (``mount -t efs -o
  tls,iam,accesspoint=…``, done by the user-data with amazon-efs-utils).
  EFS is network storage: no zone pinning and nothing to detach.
"""

from __future__ import annotations

import hashlib

from traitlets import Bool, Callable, Integer, List, Unicode

from ..backends import aws
from ..names import safe_name
from .base import VolumeDriver, VolumeError


class EFSVolume(VolumeDriver, aws.AWS):
    """A per-user access point on the hub's EFS file system."""

    name = "efs"

    file_system_id = Unicode(
        "",
        help="""
        Use this existing file system. Empty: find the hub's own (tag
        ``ds-compute:hub``) or create it.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    subnet_ids = List(
        Unicode(),
        help="""
        Subnets to create mount targets in (one per availability zone); use
        the same as ``c.EC2Backend.subnet_ids``.

        Example::

            c.EFSVolume.subnet_ids = c.EC2Backend.subnet_ids

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    security_group_ids = List(
        Unicode(), help="""Security groups of the mount targets (allow NFS, 2049/tcp)."""
    ).tag(config=True)

    performance_mode = Unicode("generalPurpose", help="""EFS performance mode of a new file system.""").tag(
        config=True
    )

    throughput_mode = Unicode("elastic", help="""EFS throughput mode of a new file system.""").tag(
        config=True
    )

    encrypted = Bool(True, help="""Encrypt a new file system at rest.""").tag(config=True)

    posix_uid = Integer(
        1000, help="""uid the access point enforces (the server's uid on the instance)."""
    ).tag(config=True)
    posix_gid = Integer(1000, help="""gid the access point enforces.""").tag(config=True)

    posix_ids = Callable(
        None,
        allow_none=True,
        help="""
        ``f(spawner) -> (uid, gid)`` for per-user POSIX ids (e.g. from a
        directory service); wins over :attr:`posix_uid` / :attr:`posix_gid`.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    root_prefix = Unicode("/ds-compute", help="""Parent directory of the users' access point roots.""").tag(
        config=True
    )

    mount_path = Unicode("/home/jovyan", help="""Where the access point is mounted on the instance.""").tag(
        config=True
    )

    # state
    attached_to = ""

    def _key(self):
        """The injective name of this user's server (Name tag, creation token, paths)."""
        return safe_name(self.spawner.user.name, self.spawner.name or "")

    def _ids(self):
        if self.posix_ids is not None:
            uid, gid = self.posix_ids(self.spawner)
            return int(uid), int(gid)
        return self.posix_uid, self.posix_gid

    async def ensure_file_system(self):
        """The hub's file system id (found or created) with its mount targets."""
        if not self.file_system_id:
            self.file_system_id = await self.hub_file_system()
        if not self.file_system_id:
            tags = dict(self.tags, **{"ds-compute:hub": self.hub_id, "Name": f"ds-compute {self.hub_id}"})
            self.log.info("Creating the EFS file system of hub %s", self.hub_id)
            fs = await self.aws(
                "efs",
                "create_file_system",
                CreationToken=f"ds-compute-{self.hub_id}"[:64],
                PerformanceMode=self.performance_mode,
                ThroughputMode=self.throughput_mode,
                Encrypted=self.encrypted,
                Tags=aws.tag_list(tags),
            )
            self.file_system_id = fs["FileSystemId"]
        await self._ensure_mount_targets()
        return self.file_system_id

    async def _ensure_mount_targets(self):
        if not self.subnet_ids:
            return
        r = await self.aws("efs", "describe_mount_targets", FileSystemId=self.file_system_id)
        have = {mt.get("AvailabilityZoneName") for mt in r.get("MountTargets", [])}
        have_subnets = {mt["SubnetId"] for mt in r.get("MountTargets", [])}
        subnets = await self.aws("ec2", "describe_subnets", SubnetIds=list(self.subnet_ids))
        for s in subnets.get("Subnets", []):
            if s["AvailabilityZone"] in have or s["SubnetId"] in have_subnets:
                continue
            kwargs = dict(FileSystemId=self.file_system_id, SubnetId=s["SubnetId"])
            if self.security_group_ids:
                kwargs["SecurityGroups"] = list(self.security_group_ids)
            self.log.info("Creating EFS mount target in %s (%s)", s["AvailabilityZone"], s["SubnetId"])
            try:
                await self.aws("efs", "create_mount_target", **kwargs)
            except Exception as e:
                if aws.error_code(e) != "MountTargetConflict":
                    raise
            have.add(s["AvailabilityZone"])

    async def ensure(self):
        await self.ensure_file_system()
        if self.volume_id:
            try:
                r = await self.aws("efs", "describe_access_points", AccessPointId=self.volume_id)
                if r.get("AccessPoints"):
                    ap = r["AccessPoints"][0]
                    if not self.is_ours(ap.get("Tags"), self.spawner):
                        self.refuse_foreign(self.volume_id, ap.get("Tags"), self.spawner)
                    return self.volume_id
            except Exception as e:
                if aws.error_code(e) != "AccessPointNotFound":
                    raise
            self.log.warning(
                "EFS access point %s of %s is gone; looking it up", self.volume_id, self.log_name
            )
        r = await self.aws("efs", "describe_access_points", FileSystemId=self.file_system_id)
        for ap in r.get("AccessPoints", []):
            if self.is_ours(ap.get("Tags"), self.spawner):
                self.volume_id = ap["AccessPointId"]
                return self.volume_id
        uid, gid = self._ids()
        tags = self.owner_tags(self.spawner)
        tags["Name"] = f"ds-compute {self._key()}"
        root = f"{self.root_prefix.rstrip('/')}/{self._key()}"
        self.log.info("Creating EFS access point %s (uid %s) for %s", root, uid, self.log_name)
        try:
            ap = await self.aws(
                "efs",
                "create_access_point",
                ClientToken=hashlib.sha256(f"{self.hub_id}/{self._key()}".encode()).hexdigest()[:64],
                FileSystemId=self.file_system_id,
                PosixUser={"Uid": uid, "Gid": gid},
                RootDirectory={
                    "Path": root,
                    "CreationInfo": {"OwnerUid": uid, "OwnerGid": gid, "Permissions": "750"},
                },
                Tags=aws.tag_list(tags),
            )
        except Exception as e:
            raise VolumeError(
                f"Could not create your EFS access point: {aws.error_message(e)}",
                log_message=f"create_access_point for {self.log_name}: {e!r}",
            ) from None
        self.volume_id = ap["AccessPointId"]
        return self.volume_id

    async def attach(self, host):
        if host.kind != "ec2":
            raise VolumeError(
                f"Volume {self.volume_id} is an EFS access point, mounted only on EC2 instances (not {host.kind})."
            )
        r = await self.aws("efs", "describe_mount_targets", FileSystemId=self.file_system_id)
        zones = {mt.get("AvailabilityZoneName"): mt.get("LifeCycleState") for mt in r.get("MountTargets", [])}
        if host.zone not in zones:
            raise VolumeError(
                f"The EFS file system {self.file_system_id} has no mount target in {host.zone}, where "
                f"instance {host.id} is: add a subnet there to c.EFSVolume.subnet_ids. Nothing was changed."
            )
        if zones[host.zone] not in (None, "available"):
            raise VolumeError(
                f"The EFS mount target in {host.zone} is {zones[host.zone]}, not available yet."
            )
        host.extra["mount"] = {
            "driver": "efs",
            "file_system_id": self.file_system_id,
            "access_point_id": self.volume_id,
            "path": self.mount_path,
        }
        self.attached_to = host.id
        return self.mount_path

    async def detach(self):
        # network storage: the instance's shutdown unmounts it
        self.attached_to = ""

    delete_by_default = True

    async def delete(self):
        """Delete the access point; the user's directory stays in the file system.

        EFS has no API to delete files: removing ``<root_prefix>/<user>[--<server>]``
        needs the file system mounted, which the hub is not assumed to have,
        so the directory is reported as kept (its size is billed until an
        admin removes it from a machine that mounts the file system).
        Refused while an instance of this server is pending, running or
        stopping (it may have the access point mounted).
        """
        ap = await self._find_access_point()
        if ap is None:
            self.volume_id = ""
            return {"id": "", "deleted": [], "kept": []}
        apid = self.volume_id = ap["AccessPointId"]
        if not self.is_ours(ap.get("Tags"), self.spawner):
            raise VolumeError(
                f"EFS access point {apid} is not tagged as this server's (hub, user, server): "
                "not deleting it."
            )
        found = await self.find_instances(
            self.owner_filters(self.spawner)
            + [{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "shutting-down"]}]
        )
        live = [(i["InstanceId"], i["State"]["Name"]) for i in found]
        if live:
            iid, state = live[0]
            raise VolumeError(
                f"EFS access point {apid} may be mounted on instance {iid} ({state}): not deleting it. "
                "Stop the server there first. Nothing was changed."
            )
        await self.aws_delete(
            "efs", "delete_access_point", not_found="AccessPointNotFound", error=VolumeError,
            what=f"EFS access point {apid}", AccessPointId=apid,
        )  # fmt: skip
        self.volume_id = ""
        self.attached_to = ""
        root = (ap.get("RootDirectory") or {}).get("Path", "?")
        return {
            "id": apid,
            "deleted": [f"access point {apid}"],
            "kept": [
                f"directory {root} on {ap.get('FileSystemId', self.file_system_id)} "
                "(EFS has no API to delete files: remove it from a machine that mounts the file system)"
            ],
        }

    async def _find_access_point(self):
        """This server's access point (by id, else by tags), or None; never creates anything."""
        if self.volume_id:
            try:
                r = await self.aws("efs", "describe_access_points", AccessPointId=self.volume_id)
                if r.get("AccessPoints"):
                    return r["AccessPoints"][0]
            except Exception as e:
                if aws.error_code(e) != "AccessPointNotFound":
                    raise
        if not self.file_system_id:
            self.file_system_id = await self.hub_file_system()
            if not self.file_system_id:
                return None
        r = await self.aws("efs", "describe_access_points", FileSystemId=self.file_system_id)
        for ap in r.get("AccessPoints", []):
            if self.is_ours(ap.get("Tags"), self.spawner):
                return ap
        return None

    async def describe(self):
        return {
            "id": self.volume_id,
            "driver": self.name,
            "file_system_id": self.file_system_id,
            "path": self.mount_path,
            "attached_to": self.attached_to or None,
        }

    def zone(self):
        """``None``: EFS has no zone, instances may launch in any subnet with a mount target."""
        return None

    def get_state(self):
        if not self.volume_id:
            return {}
        return {
            "driver": self.name,
            "id": self.volume_id,
            "file_system_id": self.file_system_id,
            "attached_to": self.attached_to,
        }

    def load_state(self, state):
        self.volume_id = state.get("id", "")
        if state.get("file_system_id"):
            self.file_system_id = state["file_system_id"]
        self.attached_to = state.get("attached_to", "")
