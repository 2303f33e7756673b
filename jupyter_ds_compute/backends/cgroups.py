"""CPU, memory and pids limits for local servers with Linux cgroups.

cgroup v2 is used where the unified hierarchy is mounted with the cpu,
memory and pids controllers available; otherwise the v1 controllers
``cpu``, ``memory`` and ``pids``.  Where neither can be written (no root,
read-only ``/sys/fs/cgroup``), :func:`detect` returns ``None`` and the caller
warns once and runs without limits.

A group is also the handle that lets ``stop`` find every process of a
server, kernels included (they start their own sessions).

Group names come from :func:`group_name`: the server's injective
:func:`~jupyter_ds_compute.names.safe_name` plus the start's random token,
one flat directory under the parent group (never a path out of it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..names import safe_name

CGROUP_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("cpu", "memory", "pids")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    cpu: float | None = None  # cores
    mem: int | None = None  # bytes
    pids: int | None = None


def group_name(user, server, key):
    """The cgroup of one start of ``user``'s server ``server``: ``<safe name>.<token>``.

    ``key`` is the server's ``DS_COMPUTE_SERVER_KEY`` (``user/server/token``);
    its random token (hex) makes each start's group its own.
    """
    token = key.rsplit("/", 1)[-1]
    if not token or not all(c in "0123456789abcdef" for c in token):
        raise ValueError(f"server key {key!r} does not end in a hex token")
    return f"{safe_name(user, server)}.{token}"


def _check_name(name):
    """A group name stays under the parent: no absolute path, no ``..``.

    (Groups of servers started before names were flat are ``user/server/token``.)
    """
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("..", ".") for p in parts):
        raise ValueError(f"bad cgroup name {name!r}")
    return name


def _writable(path):
    return os.path.isdir(path) and os.access(path, os.W_OK)


def detect(root=CGROUP_ROOT, parent="ds-compute"):
    """Return a :class:`Hierarchy` able to hold our groups, or ``None``."""
    unified = None
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        unified = root
    elif os.path.exists(os.path.join(root, "unified", "cgroup.controllers")):
        unified = os.path.join(root, "unified")
    if unified:
        try:
            with open(os.path.join(unified, "cgroup.controllers")) as f:
                available = set(f.read().split())
        except OSError:
            available = set()
        if {"cpu", "memory", "pids"} <= available and _writable(unified):
            return Hierarchy(2, {"": unified}, parent)
    mounts = {c: os.path.join(root, c) for c in V1_CONTROLLERS}
    if all(_writable(p) for p in mounts.values()):
        return Hierarchy(1, mounts, parent)
    return None


class Hierarchy:
    """Where our groups live: ``<mount>/<parent>/<name>`` per controller."""

    def __init__(self, version, mounts, parent):
        self.version = version
        self.mounts = mounts
        self.parent = parent

    def paths(self, name):
        _check_name(name)
        return [os.path.join(m, self.parent, name) for m in self.mounts.values()]

    def create(self, name, limits: Limits):
        """Create the group ``name`` and write ``limits``; return its paths."""
        if self.version == 2:
            self._enable_v2_controllers()
        paths = self.paths(name)
        for p in paths:
            os.makedirs(p, exist_ok=True)
        if self.version == 2:
            (p,) = paths
            if limits.cpu:
                quota = int(limits.cpu * CPU_PERIOD_US)
                _write(p, "cpu.max", f"{quota} {CPU_PERIOD_US}")
            if limits.mem:
                _write(p, "memory.max", str(limits.mem))
                _write_optional(p, "memory.swap.max", "0")
            if limits.pids:
                _write(p, "pids.max", str(limits.pids))
        else:
            cpu, mem, pids = (dict(zip(self.mounts, paths))[c] for c in V1_CONTROLLERS)
            if limits.cpu:
                _write(cpu, "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(cpu, "cpu.cfs_quota_us", str(int(limits.cpu * CPU_PERIOD_US)))
            if limits.mem:
                _write(mem, "memory.limit_in_bytes", str(limits.mem))
            if limits.pids:
                _write(pids, "pids.max", str(limits.pids))
        return paths

    def _enable_v2_controllers(self):
        root = self.mounts[""]
        parent = os.path.join(root, self.parent)
        os.makedirs(parent, exist_ok=True)
        for d in (root, parent):
            _write_optional(d, "cgroup.subtree_control", "+cpu +memory +pids")

    def pids(self, name):
        found = set()
        for p in self.paths(name):
            try:
                with open(os.path.join(p, "cgroup.procs")) as f:
                    found.update(int(line) for line in f if line.strip())
            except OSError:
                pass
        return found

    def remove(self, name):
        for p in self.paths(name):
            try:
                os.rmdir(p)
            except FileNotFoundError:
                pass
            except OSError:
                # still has processes: the caller logs and retries on next stop
                return False
        return True

    def read_limits(self, name):
        """Read back the limits (for status pages and tests)."""
        out = {}
        if self.version == 2:
            (p,) = self.paths(name)
            out["cpu.max"] = _read(p, "cpu.max")
            out["memory.max"] = _read(p, "memory.max")
            out["pids.max"] = _read(p, "pids.max")
        else:
            cpu, mem, pids = (dict(zip(self.mounts, self.paths(name)))[c] for c in V1_CONTROLLERS)
            out["cpu.cfs_quota_us"] = _read(cpu, "cpu.cfs_quota_us")
            out["memory.limit_in_bytes"] = _read(mem, "memory.limit_in_bytes")
            out["pids.max"] = _read(pids, "pids.max")
        return out


def join_procs_files(paths):
    """The ``cgroup.procs`` files a new process writes itself into."""
    return [os.path.join(p, "cgroup.procs") for p in paths]


def _write(d, fname, value):
    with open(os.path.join(d, fname), "w") as f:
        f.write(value)


def _write_optional(d, fname, value):
    try:
        _write(d, fname, value)
    except OSError:
        pass


def _read(d, fname):
    try:
        with open(os.path.join(d, fname)) as f:
            return f.read().strip()
    except OSError:
        return None
