"""Volume ``local``: a directory (default) on the hub's machine.

Each user (and named server) owns one volume that exists independently of
any server: ``<root>/<volume id>``.  It becomes the server's home and
notebook directory.  The volume id lives in spawner state; the directory
itself is the data, so losing the hub's memory loses nothing.

Where the volume is attached is recorded in ``<root>/.attachments/<id>.json``
so that a second attach from another server is refused, and so that the
admin panel can say where each volume is.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from traitlets import Unicode, default

from .base import VolumeDriver, VolumeError

_SAFE = re.compile(r"[^a-z0-9._-]")


def volume_id_for(username, server_name=""):
    """A file-name-safe, stable volume id: ``alice`` or ``alice--gpu-box``.

    Characters outside ``[a-z0-9._-]`` become ``-xx`` hex escapes, so two
    different names never share a volume.
    """

    def esc(s):
        return _SAFE.sub(lambda m: "-%02x" % ord(m.group()), s.lower().replace("-", "-2d"))

    vid = esc(username)
    if server_name:
        vid += "--" + esc(server_name)
    return vid


class LocalVolume(VolumeDriver):
    """A directory under :attr:`root` for each user (and named server)."""

    name = "local"

    root = Unicode(
        help="""
        Directory holding every user's volume (``<root>/<user>``,
        ``<root>/<user>--<server>``). It must be reachable by the users'
        system users when servers run as them.

        Example::

            c.LocalVolume.root = "/srv/ds-compute/volumes"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("root")
    def _default_root(self):
        return os.path.abspath("ds-compute-volumes")

    #: (uid, gid) that owns the volume; set by the spawner from the backend
    owner = None
    attached_to = ""

    @property
    def path(self):
        return os.path.join(self.root, self.volume_id)

    def _registry(self):
        return os.path.join(self.root, ".attachments", f"{self.volume_id}.json")

    def _read_registry(self):
        try:
            with open(self._registry()) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    async def ensure(self):
        if not self.volume_id:
            self.volume_id = volume_id_for(self.spawner.user.name, self.spawner.name)
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        path = self.path
        if not os.path.isdir(path):
            self.log.info("Creating volume %s at %s for %s", self.volume_id, path, self.log_name)
            os.makedirs(path, mode=0o700, exist_ok=True)
        if self.owner:
            uid, gid = self.owner
            st = os.stat(path)
            if (st.st_uid, st.st_gid) != (uid, gid) and os.geteuid() == 0:
                os.chown(path, uid, gid)
        return self.volume_id

    async def attach(self, host):
        if host.kind not in ("local", "shared-fs"):
            raise VolumeError(
                f"Volume {self.volume_id} is a local directory and cannot follow a "
                f"server to {host.kind} machine {host.id}: use the ebs or efs volume driver there."
            )
        if not os.path.isdir(self.path):
            raise VolumeError(f"Volume {self.volume_id} does not exist at {self.path}")
        me = self.spawner._log_name
        holder = self._read_registry()
        if holder and holder.get("server") != me:
            raise VolumeError(
                f"Volume {self.volume_id} is attached to {holder.get('server')} on "
                f"{holder.get('host')}: stop that server first.",
            )
        os.makedirs(os.path.dirname(self._registry()), mode=0o700, exist_ok=True)
        tmp = self._registry() + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"server": me, "host": host.id, "path": self.path}, f)
        os.replace(tmp, self._registry())
        self.attached_to = host.id
        return self.path

    async def detach(self):
        holder = self._read_registry()
        if holder and holder.get("server") == self.spawner._log_name:
            try:
                os.unlink(self._registry())
            except FileNotFoundError:
                pass
        self.attached_to = ""

    async def describe(self):
        info = {"id": self.volume_id, "driver": self.name, "path": self.path}
        holder = self._read_registry()
        info["attached_to"] = holder.get("host") if holder else None
        try:
            usage = shutil.disk_usage(self.path)
            info["size_bytes"], info["used_bytes"] = usage.total, usage.used
        except OSError:
            pass
        return info

    def get_state(self):
        return {"driver": self.name, "id": self.volume_id} if self.volume_id else {}
