"""Volume ``local``: a directory (default) or an ext4 image on the hub's machine.

Each user (and named server) owns one volume that exists independently of
any server: ``<root>/<volume id>`` (directory mode) or
``<root>/<volume id>.img`` (image mode).  It becomes the server's home and
notebook directory.

Image mode (root only) behaves like a block volume: an ext4 file system
formatted with multi-mount protection (``mkfs.ext4 -O mmp``), loop-mounted
inside the server's own private mount namespace (see ``loopmount.py``), and
refused when it is attached anywhere else.  The volume id lives in spawner state; the directory
itself is the data, so losing the hub's memory loses nothing.

Where the volume is attached is recorded in ``<root>/.attachments/<id>.json``
so that the admin panel can say where each volume is. Whether it is in use
is decided by the live holder, not by that record's name: on this machine,
``attach`` refuses while any live process carries the volume
(``DS_COMPUTE_VOLUME_ID`` and ``DS_COMPUTE_VOLUME_PATH`` in its
environment, which every process of a server inherits) — even one of the
same hub user and server, e.g. a server the hub lost when it was killed —
and takes over a record no live process backs (a server that died). A
record naming a server on another machine cannot be checked and refuses.

Whose volume it is is recorded in ``<root>/.owners/<id>.json`` (the hub
user and server; hub-only, mode 600, beside the volume rather than in it,
so its user cannot change it). ``ensure`` refuses, changing nothing, a
volume whose record names someone else.  Volume ids are injective
(:func:`jupyter_ds_compute.names.safe_name`), so this only ever fires on a
volume made before they were, or on a renamed hub user.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time

from jupyterhub.traitlets import ByteSpecification
from traitlets import CaselessStrEnum, Float, Unicode, default

from ..backends.local import find_processes
from ..names import safe_name
from .base import VolumeDriver, VolumeError


class VolumeOwnedError(VolumeError):
    """The volume's owner record names another hub user or server (403)."""

    status_code = 403


def volume_id_for(username, server_name=""):
    """A file-name-safe, stable, injective volume id: ``alice``, ``alice--gpu-2dbox``.

    :func:`jupyter_ds_compute.names.safe_name`: one hub user and server, one
    id (the same ids as before for lower-case names below U+0100).
    """
    return safe_name(username, server_name or "")


class LocalVolume(VolumeDriver):
    """A directory under :attr:`root` for each user (and named server)."""

    name = "local"

    stopping_wait = Float(
        20.0,
        help="""
        Seconds ``attach`` waits for the processes of a server that is still
        shutting down (a switch: the old tier's job or process group may end a
        little after its stop returned) before it refuses the volume as in use.
        """,
    ).tag(config=True)

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

    mode = CaselessStrEnum(
        ["directory", "image"],
        "directory",
        help="""
        ``directory``: a plain directory per user (no root needed).
        ``image``: an ext4 image file per user with multi-mount protection,
        loop-mounted privately for that user's server only (the hub must run
        as root; the backend must be ``local``).

        Example::

            c.LocalVolume.mode = "image"
            c.LocalVolume.image_size = "20G"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    image_size = ByteSpecification(
        "10G",
        help="""Size of a new volume image (sparse: it takes only what is written).""",
    ).tag(config=True)

    #: (uid, gid) that owns the volume; set by the spawner from the backend
    owner = None
    attached_to = ""

    @property
    def path(self):
        """Where the server sees the volume (the mount point in image mode)."""
        if self.mode == "image":
            return os.path.join(self.root, "mnt", self.volume_id)
        return os.path.join(self.root, self.volume_id)

    @property
    def image(self):
        return os.path.join(self.root, f"{self.volume_id}.img")

    @property
    def needs_root_exec(self):
        """Image mode mounts inside the server's namespace, then drops to the user."""
        return self.mode == "image"

    def _registry(self):
        return os.path.join(self.root, ".attachments", f"{self.volume_id}.json")

    def _read_registry(self):
        try:
            with open(self._registry()) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    # -- ownership -------------------------------------------------------------

    def _owner_file(self, vid=None):
        return os.path.join(self.root, ".owners", f"{vid or self.volume_id}.json")

    def _me(self):
        return {"user": self.spawner.user.name, "server": self.spawner.name or ""}

    def read_owner(self, vid=None):
        """The owner record ``{"user", "server", ...}``; None if there is none;
        ``{}`` if it is unreadable (treated as someone else's)."""
        try:
            with open(self._owner_file(vid)) as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _is_mine(self, record):
        return (
            bool(record)
            and record.get("user") == self.spawner.user.name
            and (record.get("server") or "") == (self.spawner.name or "")
        )

    def _refuse_owner(self, record):
        if record:
            whose = f"hub user {record.get('user')!r}" + (
                f", server {record.get('server')!r}" if record.get("server") else ""
            )
        else:
            whose = "an unreadable owner record"
        raise VolumeOwnedError(
            f"Volume {self.volume_id} belongs to someone else ({whose}), not to {self.log_name}: "
            "nothing was changed; ask an admin.",
            log_message=f"refused volume {self.volume_id} to {self.log_name}: owner record "
            f"{self._owner_file()} says {record!r}",
        )

    def _check_unrecorded(self, existing):
        """A volume made before owner records: adopt it only if nothing says
        it is someone else's (its owner uid is ours, the hub's or root)."""
        if not (self.owner and os.path.exists(existing)):
            return
        st = os.stat(existing)
        if st.st_uid not in (self.owner[0], os.geteuid(), 0):
            raise VolumeOwnedError(
                f"Volume {self.volume_id} has no owner record and belongs to uid {st.st_uid}, "
                f"not to {self.log_name} (uid {self.owner[0]}): nothing was changed; ask an admin.",
                log_message=f"refused unrecorded volume {existing} (uid {st.st_uid}) to {self.log_name}",
            )

    def _claim(self):
        """Write our owner record (exclusive: a concurrent claim is re-checked)."""
        final = self._owner_file()
        os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
        tmp = f"{final}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with open(fd, "w") as f:
            json.dump(dict(self._me(), volume=self.volume_id, driver=self.name, created=time.time()), f)
        try:
            os.link(tmp, final)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        record = self.read_owner()
        if not self._is_mine(record):
            self._refuse_owner(record)

    def _choose_id(self):
        """Our id: from state when its owner record names us (an id made by an
        older naming), else the one :func:`volume_id_for` gives."""
        expected = volume_id_for(self.spawner.user.name, self.spawner.name)
        if self.volume_id and self.volume_id != expected:
            if self._is_mine(self.read_owner(self.volume_id)):
                return self.volume_id
            self.log.warning(
                "Volume id %s in the state of %s is not its own (%s) and has no owner record "
                "naming it: using %s",
                self.volume_id,
                self.log_name,
                expected,
                expected,
            )
        return expected

    async def ensure(self):
        self.volume_id = self._choose_id()
        record = self.read_owner()
        if record is not None and not self._is_mine(record):
            self._refuse_owner(record)  # before anything is created or chowned
        if record is None:
            self._check_unrecorded(self.image if self.mode == "image" else self.path)
        os.makedirs(self.root, mode=0o755, exist_ok=True)
        if self.mode == "image":
            await self._ensure_image()
            if record is None:
                self._claim()
            return self.volume_id
        path = self.path
        if not os.path.isdir(path):
            self.log.info("Creating volume %s at %s for %s", self.volume_id, path, self.log_name)
            os.makedirs(path, mode=0o700, exist_ok=True)
        if record is None:
            self._claim()
        if self.owner:
            uid, gid = self.owner
            st = os.stat(path)
            if (st.st_uid, st.st_gid) != (uid, gid) and os.geteuid() == 0:
                os.chown(path, uid, gid)
        return self.volume_id

    async def _ensure_image(self):
        if os.geteuid() != 0:
            raise VolumeError("c.LocalVolume.mode = 'image' needs the hub to run as root")
        os.makedirs(self.path, mode=0o755, exist_ok=True)
        if os.path.exists(self.image):
            return
        uid, gid = self.owner or (os.getuid(), os.getgid())
        self.log.info("Creating %s volume image %s for %s", self.image_size, self.image, self.log_name)
        tmp = self.image + ".new"
        with open(tmp, "wb") as f:
            f.truncate(self.image_size)
        out = await _run(
            "mkfs.ext4", "-q", "-F", "-O", "mmp", "-E", f"root_owner={uid}:{gid}", "-L", "ds-volume", tmp
        )
        if out is None:
            os.unlink(tmp)
            raise VolumeError(f"Could not format volume image {self.image}: see the hub log")
        os.replace(tmp, self.image)

    async def _image_holder(self):
        """Who holds the image right now (another namespace or host), or None."""
        loops = await _run("losetup", "-j", self.image)
        if loops:
            return f"loop device {loops.split(':', 1)[0]} on this machine"
        mmp = await _run("debugfs", "-R", "dump_mmp", self.image) or ""
        fields = dict(line.split(": ", 1) for line in mmp.splitlines() if ": " in line)
        seq = fields.get("sequence", "ff4d4d50").strip().lower()
        # 0xff4d4d50 = clean; 0xff4d4d51 = being checked by fsck
        if seq not in ("ff4d4d50",):
            return f"host {fields.get('node_name', '?').strip()} (MMP sequence {seq})"
        return None

    def _live_holders(self, own_key=None):
        """``{pid: environ}`` of the processes on this machine using this volume (blocking),
        except those of the start being made (marker ``own_key``: a prepared launcher)."""
        vid, path = self.volume_id, self.path
        return find_processes(
            lambda env: (
                env.get("DS_COMPUTE_VOLUME_ID") == vid
                and env.get("DS_COMPUTE_VOLUME_PATH") == path
                and (own_key is None or env.get("DS_COMPUTE_SERVER_KEY") != own_key)
            )
        )

    async def attach(self, host):
        if host.kind not in ("local", "shared-fs"):
            raise VolumeError(
                f"Volume {self.volume_id} is a local directory and cannot follow a "
                f"server to {host.kind} machine {host.id}: use the ebs or efs volume driver there."
            )
        if not os.path.isdir(self.path):
            raise VolumeError(f"Volume {self.volume_id} does not exist at {self.path}")
        me = self.spawner._log_name
        own_key = host.extra.get("server_key")
        live = await asyncio.to_thread(self._live_holders, own_key)
        deadline, delay = time.monotonic() + self.stopping_wait, 0.1
        while live and time.monotonic() < deadline:
            # a server that is stopping may still be exiting: give it time
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            live = await asyncio.to_thread(self._live_holders, own_key)
        if live:
            pid = min(live)
            key = live[pid].get("DS_COMPUTE_SERVER_KEY") or "no server key"
            raise VolumeError(
                f"Volume {self.volume_id} is in use by a running server on this machine "
                f"(pid {pid}, {key}): stop that server first. Nothing was changed.",
                log_message=f"refused to attach volume {self.volume_id} to {me}: live processes "
                f"{sorted(live)} carry it ({key})",
            )
        holder = self._read_registry()
        if holder and holder.get("server") != me:
            if holder.get("host") != host.id:
                raise VolumeError(
                    f"Volume {self.volume_id} is attached to {holder.get('server')} on "
                    f"{holder.get('host')}: stop that server first.",
                )
            self.log.warning(
                "Volume %s: taking over the attachment record of %s on %s for %s, "
                "no process on this machine uses the volume (a server that died)",
                self.volume_id,
                holder.get("server"),
                holder.get("host"),
                me,
            )
        if self.mode == "image":
            if host.kind != "local":
                raise VolumeError(f"Volume image {self.volume_id} can only be mounted on the hub's machine")
            busy = await self._image_holder()
            if busy:
                raise VolumeError(
                    f"Volume {self.volume_id} is attached elsewhere ({busy}): stop what uses it first. "
                    "Nothing was changed."
                )
        os.makedirs(os.path.dirname(self._registry()), mode=0o700, exist_ok=True)
        tmp = self._registry() + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"server": me, "host": host.id, "path": self.path, "attached_at": time.time()}, f)
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

    def wrap_command(self, cmd):
        if self.mode != "image":
            return cmd
        uid, gid = self.owner or (os.getuid(), os.getgid())
        return [
            "unshare", "--mount", "--propagation", "private", "--",
            sys.executable, "-m", "jupyter_ds_compute.volumes.loopmount",
            "--image", self.image, "--target", self.path, "--uid", str(uid), "--gid", str(gid),
            "--", *cmd,
        ]  # fmt: skip

    async def describe(self):
        info = {"id": self.volume_id, "driver": self.name, "path": self.path, "mode": self.mode}
        holder = self._read_registry()
        info["attached_to"] = holder.get("host") if holder else None
        if self.mode == "image":
            try:
                st = os.stat(self.image)
                info["size_bytes"], info["used_bytes"] = st.st_size, st.st_blocks * 512
            except OSError:
                pass
            return info
        try:
            usage = shutil.disk_usage(self.path)
            info["size_bytes"], info["used_bytes"] = usage.total, usage.used
        except OSError:
            pass
        return info

    async def delete(self):
        """Delete the directory (or the image and its mount point), never anything else.

        Refused while the attachment registry names a server, or (image mode)
        while the image is loop-attached or its MMP block says it is in use.
        The directory is removed through directory file descriptors opened
        with ``O_NOFOLLOW`` (see :func:`remove_tree`): links inside are removed,
        never followed, and nothing on another mount is touched.
        """
        vid = self.volume_id or volume_id_for(self.spawner.user.name, self.spawner.name)
        if not _is_plain_name(vid):
            raise VolumeError(
                f"Volume id {vid!r} is not a plain name under {self.root}: not deleting anything.",
                log_message=f"refusing to delete local volume {vid!r} of {self.log_name}: not a plain name",
            )
        self.volume_id = vid
        holder = self._read_registry()
        if holder:
            raise VolumeError(
                f"Volume {vid} is attached to {holder.get('server')} on {holder.get('host')}: "
                f"not deleting it. Stop that server first (if none runs, the record "
                f"{self._registry()} is stale: remove it).",
            )
        if self.mode == "image":
            deleted = await self._delete_image()
        else:
            deleted = await asyncio.to_thread(remove_tree, self.root, vid)
        self.volume_id = ""
        return {"id": vid if deleted else "", "deleted": deleted, "kept": []}

    async def _delete_image(self):
        try:
            st = os.lstat(self.image)
        except FileNotFoundError:
            st = None
        deleted = []
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise VolumeError(f"Volume image {self.image} is not a regular file: not deleting it.")
            busy = await self._image_holder()
            if busy:
                raise VolumeError(
                    f"Volume {self.volume_id} is attached elsewhere ({busy}): not deleting it. "
                    "Stop what uses it first."
                )
            os.unlink(self.image)
            deleted.append(f"image {self.image}")
        try:
            os.unlink(self.image + ".new")  # a format interrupted by a crash
        except FileNotFoundError:
            pass
        # the mount point: empty unless something wrote there while unmounted
        deleted += await asyncio.to_thread(remove_tree, os.path.join(self.root, "mnt"), self.volume_id)
        return deleted


def _is_plain_name(name):
    """One path component that is not hidden (``.attachments``) nor ``.``/``..``."""
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


def _mount_points():
    """Mount points this process sees (``/proc/self/mountinfo``, octal escapes decoded)."""
    points = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    except OSError:
        pass
    return points


def remove_tree(parent, name):
    """Delete the directory ``parent/name`` and everything in it; nothing else.

    - ``name`` must be one plain path component, and ``parent/name`` a real
      directory: a symbolic link there is refused (neither it nor its target
      is touched);
    - every step goes through a directory file descriptor (``dir_fd``,
      ``O_NOFOLLOW``): a link inside is unlinked, never followed, and a
      directory swapped for a link meanwhile is refused by the kernel;
    - a mount point inside (seen in ``/proc/self/mountinfo``, or a directory
      on another device) is refused: nothing on another file system or bind
      mount is touched;
    - directories without owner write/search permission get it (``fchmod``
      on our descriptor) so that their entries can go.

    Returns ``["directory <path>"]``, or ``[]`` if it did not exist; raises
    :class:`VolumeError` naming the path otherwise (possibly after removing
    part of the tree, never outside it).
    """
    if not _is_plain_name(name):
        raise VolumeError(f"{name!r} is not a plain name under {parent}: not deleting anything.")
    path = os.path.join(os.path.realpath(parent), name)
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return []
    try:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return []
        if stat.S_ISLNK(st.st_mode):
            raise VolumeError(
                f"{path} is a symbolic link, not a volume: not deleting it nor what it points to."
            )
        if not stat.S_ISDIR(st.st_mode):
            raise VolumeError(f"{path} is not a directory: not deleting it.")
        mounts = [m for m in _mount_points() if m == path or m.startswith(path + os.sep)]
        if mounts:
            raise VolumeError(
                f"{mounts[0]} is a mount point inside volume {path}: not deleting anything. Unmount it first."
            )
        try:
            _remove_at(parent_fd, name, st.st_dev, path)
        except RecursionError:
            raise VolumeError(f"{path} is nested too deeply to delete safely: delete it by hand.") from None
        except OSError as e:
            raise VolumeError(
                f"Could not delete all of {path}: {e.strerror} ({e.filename or path})",
                log_message=f"deleting {path}: {e!r}",
            ) from None
    finally:
        os.close(parent_fd)
    return [f"directory {path}"]


def _remove_at(dir_fd, name, dev, path):
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if st.st_dev != dev:
            raise VolumeError(f"{path} is on another file system (a mount point): not deleting it.")
        if st.st_mode & 0o700 != 0o700:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for entry, is_dir in entries:
            if is_dir:
                _remove_at(fd, entry, dev, os.path.join(path, entry))
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


async def _run(*argv):
    """Run a short command; its output, or None (logged) if it failed."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = out.decode(errors="replace").strip()
    if proc.returncode:
        import logging

        logging.getLogger("JupyterHub").warning("%s failed (%s): %s", argv[0], proc.returncode, text)
        return None
    return text
