"""Backend ``local``: the server runs as a process on the hub's machine.

- As the user's system account when the hub runs as root (like
  ``LocalProcessSpawner``), as the hub's own user otherwise
  (``c.LocalBackend.run_as``), so the embedded default needs no root.
  Which account, and whether it may be used at all, is decided by
  :class:`~jupyter_ds_compute.accounts.SystemAccounts` (never uid 0, never
  a system or service account).
- CPU, memory and pids limits of the tier through cgroups (v2 or v1); where
  neither can be written, warn once and run unlimited.
- ``stop`` ends every process of the server, kernels included: through the
  cgroup when there is one, else by the marker variable every process of the
  server inherits (``DS_COMPUTE_SERVER_KEY``, found by a scan of ``/proc`` in
  a thread); it then waits with exponential backoff on the pids it found
  and the cgroup's ``cgroup.procs``, never rescanning ``/proc`` on the loop.
- A start first ends what an earlier start of the same hub user and server
  left running when the hub lost track of it (the hub was killed while
  starting it, so its state never named it): processes whose marker is
  ``<user>/<server>/<token>`` and whose ``JUPYTERHUB_API_URL`` is this hub's,
  found through our cgroups (``<safe name>.<token>``) or, without cgroups, one
  scan of ``/proc`` off the event loop. The hub calls ``start`` only for a
  server it believes stopped, so nothing found then is a server it tracks.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import deque

from jupyterhub.utils import exponential_backoff, random_port, url_path_join
from traitlets import Bool, CaselessStrEnum, Float, Integer, List, Unicode, default

from .. import names
from ..accounts import AccountRefused, SystemAccounts
from . import cgroups, launcher
from .base import Backend, BackendError, HostInfo, PrepareUnsupported

_cgroup_warned = False


def read_environ(pid):
    """The environment of process ``pid`` as a dict, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def find_processes(match, pids=None):
    """``{pid: environ}`` of the processes (all of ``/proc``, or ``pids``) whose
    environment ``match(env)`` accepts; never this process. Blocking: call it
    in a thread (``asyncio.to_thread``)."""
    if pids is None:
        pids = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    found = {}
    for pid in pids:
        if pid == os.getpid():
            continue
        env = read_environ(pid)
        if env is not None and match(env):
            found[pid] = env
    return found


class SystemAccountMixin:
    """The checked system account a backend runs the server as (local, Slurm).

    Needs ``create_system_users`` and ``log_name`` on the backend; the policy
    itself is :class:`~jupyter_ds_compute.accounts.SystemAccounts`.
    """

    _system_accounts = None
    _system_account = None

    @property
    def system_accounts(self):
        if self._system_accounts is None:
            self._system_accounts = SystemAccounts(parent=self)
        return self._system_accounts

    async def system_account(self):
        """The server's :class:`~jupyter_ds_compute.accounts.Account` (created if allowed)."""
        if self._system_account is None:
            self._system_account = await self.system_accounts.resolve(
                self.spawner.user.name, create=self.create_system_users, log_name=self.log_name
            )
        return self._system_account

    def system_account_now(self):
        """Same, without creating (sync: after a hub restart, for stop)."""
        if self._system_account is None:
            self._system_account = self.system_accounts.lookup(self.spawner.user.name)
        return self._system_account


def unreachable_dir(path, uid, gids):
    """The first directory on ``path`` that ``uid`` cannot traverse, or None."""
    import stat

    parts = os.path.abspath(path).split(os.sep)
    for i in range(1, len(parts) + 1):
        d = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(d)
        except OSError:
            return d
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in gids:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return d
    return None


class LocalBackend(SystemAccountMixin, Backend):
    """Run ``jupyterhub-singleuser`` on this machine, limited by cgroups."""

    name = "local"

    run_as = CaselessStrEnum(
        ["auto", "system", "hub"],
        "auto",
        help="""
        Which system user runs the server.

        - ``auto``: the user's own system account when the hub runs as root,
          else the hub's own user.
        - ``system``: always the user's system account (the hub must be root).

        Which account that is, and which accounts are never used (root,
        system and service accounts), is ``c.SystemAccounts.*``.
        - ``hub``: always the hub's own user (no isolation between users;
          fine for one person's machine).

        Example::

            c.LocalBackend.run_as = "hub"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    create_system_users = Bool(
        False,
        help="""
        Create a missing system account when a server has to run as the
        user's system account: the same as ``c.SystemAccounts.create = True``
        (kept for existing configs). Off by default: the hub should not add
        accounts to a machine unless asked.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    pids_limit = Integer(
        4096,
        help="""Maximum number of processes/threads of one server (cgroup ``pids.max``); 0 for none.""",
    ).tag(config=True)

    term_timeout = Integer(
        5,
        help="""Seconds to wait after SIGTERM (the server shuts its kernels down) before SIGKILL.""",
    ).tag(config=True)

    kill_timeout = Integer(5, help="""Seconds to wait for processes to die after SIGKILL.""").tag(config=True)

    cgroup_parent = Unicode(
        "ds-compute",
        help="""Name of the parent cgroup that holds one group per server.""",
    ).tag(config=True)

    log_dir = Unicode(
        help="""
        Directory for each server's output (``<name>.log``, one file per hub
        user and server, named by :func:`jupyter_ds_compute.names.safe_name`),
        owned by the hub. Used for error messages when a server dies at start.
        Default: ``ds-compute-logs`` in the hub's working directory.
        """,
    ).tag(config=True)

    @default("log_dir")
    def _default_log_dir(self):
        return os.path.abspath("ds-compute-logs")

    ip = Unicode("127.0.0.1", help="Address the server listens on.").tag(config=True)

    launcher_preload = List(
        Unicode(),
        [
            "jupyterhub.singleuser",
            "jupyter_server.serverapp",
            "jupyter_server.services.kernels.kernelmanager",
            "jupyter_server.services.contents.largefilemanager",
            "jupyterlab",
            "jupyterlab.labapp",
            "jupyterlab.handlers.announcements",
            "jupyterlab_server",
            "jupyter_server_terminals",
            "jupyter_lsp",
            "notebook_shim",
            "jupyter_ds_compute.serverext",
            "IPython.paths",
            "jinja2",
            "httpx",
        ],
        help="""
        Modules a prepared launcher imports while the old server still serves
        (make before break), so that the server on the new tier starts
        without importing them: the default covers the single-user server,
        JupyterLab and the usual server extensions (measured: a server's
        initialization drops from about 0.8 s to 0.15 s). A module that is
        not installed is skipped; one that fails to import is logged and
        skipped, and the server then imports (and reports) it itself.

        Example::

            c.LocalBackend.launcher_preload = ["jupyterhub.singleuser", "jupyterlab", "my_server_ext"]
        """,
    ).tag(config=True)

    launcher_timeout = Float(
        900,
        help="""
        Seconds a prepared launcher waits for its start before it exits by
        itself (a backstop: the spawner releases an unused one after the
        switch's ``prepare_timeout``, and a launcher ends at once when the hub
        is gone).
        """,
    ).tag(config=True)

    # state
    pid = 0
    port = 0
    cgroup = ""
    key = ""
    uid = None

    def __init__(self, spawner, **kwargs):
        super().__init__(spawner, **kwargs)
        self.proc = None
        self._hierarchy = None
        #: the prepared launcher's stdin (make before break), until the start is handed over
        self._handoff = None

    # -- who runs it -------------------------------------------------------

    @property
    def as_system_user(self):
        if self.run_as == "hub":
            return False
        if self.run_as == "system":
            if os.geteuid() != 0:
                raise BackendError("c.LocalBackend.run_as = 'system' needs the hub to run as root")
            return True
        return os.geteuid() == 0

    async def owner(self):
        """``(uid, gid)`` the server and its volume belong to."""
        if self.as_system_user:
            acct = await self.system_account()
            return acct.uid, acct.gid
        return os.getuid(), os.getgid()

    # -- Backend interface ---------------------------------------------------

    async def prepare(self, tier):
        await self._end_leftovers()
        self.port = self.port or random_port()
        return HostInfo(kind="local", id=socket.gethostname())

    def bind(self):
        return self.ip, self.port

    # -- leftovers of a start the hub lost ------------------------------------

    def _hub_api_url(self):
        """``JUPYTERHUB_API_URL`` as this hub gives it to its servers (``Spawner.get_env``)."""
        sp = self.spawner
        if getattr(sp, "hub_connect_url", None) is not None:
            from urllib.parse import urlparse

            return url_path_join(sp.hub_connect_url, urlparse(sp.hub.api_url).path)
        return sp.hub.api_url

    def _leftover_pids(self):
        """Processes of an earlier start of this hub user's server (blocking: run in a thread).

        Candidates come from our cgroups ``<safe name>.<token>`` (with a
        hierarchy) or from all of ``/proc``; each must carry a marker
        ``<user>/<server>/<token>`` of this very user and server and this
        hub's ``JUPYTERHUB_API_URL``, so that another hub's servers on the
        machine are never touched.
        """
        user, server = self.spawner.user.name, self.spawner.name or ""
        owner = f"{user}/{server}"
        api_url = self._hub_api_url()

        def match(env):
            marker = env.get("DS_COMPUTE_SERVER_KEY", "")
            return (
                marker.rsplit("/", 1)[0] == owner
                and marker != self.key
                and env.get("JUPYTERHUB_API_URL") == api_url
            )

        hierarchy = self._hierarchy_or_warn()
        groups = []
        if hierarchy:
            prefix = names.safe_name(user, server) + "."
            for mount in hierarchy.mounts.values():
                try:
                    entries = os.listdir(os.path.join(mount, hierarchy.parent))
                except OSError:
                    continue
                for entry in entries:
                    token = entry[len(prefix) :]
                    if entry.startswith(prefix) and token and all(c in "0123456789abcdef" for c in token):
                        groups.append(entry)
            groups = sorted(set(groups))
            pids = set()
            for g in groups:
                pids |= hierarchy.pids(g)
            found = set(find_processes(match, pids))
            if not found:
                # started before cgroups were writable, or moved out: the marker still tells
                found = set(find_processes(match))
        else:
            found = set(find_processes(match))
        return found, groups

    async def _end_leftovers(self):
        """End what an earlier start of this server left running unseen (see the module doc)."""
        found, groups = await asyncio.to_thread(self._leftover_pids)
        if found:
            self.log.warning(
                "Ending processes %s of %s that an earlier start left running without the hub "
                "knowing (the hub was stopped while starting it); one server per user and volume",
                sorted(found),
                self.log_name,
            )
            self.emit(f"Ending a server of {self.log_name} left running by an interrupted start")
            for sig, grace in ((signal.SIGTERM, self.term_timeout), (signal.SIGKILL, self.kill_timeout)):
                for pid in found:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + grace
                while found and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    found = {p for p in found if _alive(p)}
                if not found:
                    break
            if found:
                raise BackendError(
                    f"An earlier server of {self.log_name} is still running (pids {sorted(found)}) "
                    "and could not be stopped: not starting a second one on the same volume.",
                )
        hierarchy = self._hierarchy_or_warn() if groups else None
        for g in groups:
            if not hierarchy.pids(g):
                hierarchy.remove(g)

    def _hierarchy_or_warn(self):
        global _cgroup_warned
        if self._hierarchy is None:
            self._hierarchy = cgroups.detect(parent=self.cgroup_parent) or False
            if not self._hierarchy and not _cgroup_warned:
                _cgroup_warned = True
                self.log.warning(
                    "No writable cgroup hierarchy (v2 or v1) on this machine: servers "
                    "run WITHOUT cpu/memory/pids limits. Run the hub as root on a host "
                    "with /sys/fs/cgroup writable to enforce tier limits."
                )
        return self._hierarchy or None

    def _log_path(self):
        name = names.safe_name(self.spawner.user.name, self.spawner.name or "")
        return os.path.join(self.log_dir, f"{name}.log")

    async def _account_for(self, volume_path):
        """``(uid, gid, groups)`` to drop to, or ``(None, None, None)`` to run as the hub's user."""
        if not self.as_system_user:
            return None, None, None
        acct = await self.system_account()
        uid, gid, groups = acct.uid, acct.gid, list(acct.groups)
        if uid == 0 or gid == 0 or 0 in groups:  # the policy refuses these; never, whatever it says
            raise AccountRefused(f"Refusing to run {self.log_name} as root (uid {uid}, groups {groups})")
        blocked = unreachable_dir(volume_path, uid, groups)
        if blocked:
            raise BackendError(
                f"The volume {volume_path} is not reachable by system account "
                f"{acct.name}: {blocked} does not let them through. "
                "Put c.LocalVolume.root under a directory every user can traverse (mode o+x).",
            )
        return uid, gid, groups

    @staticmethod
    def _preexec(procs_files, uid, gid, groups, drop, cwd):
        """What the child runs between fork and exec: join the cgroup (as
        root), then drop privileges, then go to ``cwd``."""

        def preexec():
            for f in procs_files:
                with open(f, "w") as fh:
                    fh.write(str(os.getpid()))
            if drop:
                if uid == 0 or gid == 0 or 0 in groups:
                    raise PermissionError("refusing to run a server as root")
                os.setgid(gid)
                os.setgroups(groups)
                os.setuid(uid)
            os.chdir(cwd)

        return preexec

    # -- make before break: a launcher that becomes the server -----------------

    prepares_ahead = True

    async def prepare_ahead(self, tier, cmd, env, volume_path, key):
        """Start a launcher (:mod:`.launcher`) as the user in the tier's cgroup,
        with the server's modules imported; :meth:`start` hands it the start."""
        script = _python_script(cmd[0] if cmd else "", env.get("PATH") or os.environ.get("PATH", ""))
        if script is None:
            raise PrepareUnsupported(f"the server command {cmd[:1]} is not a Python script")
        python, path = script
        self.key = key
        self.port = random_port()
        procs_files = self._make_cgroup(tier)
        uid, gid, groups = await self._account_for(volume_path)
        os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        read_fd, write_fd = os.pipe()
        argv = [
            python,
            "-m",
            "jupyter_ds_compute.backends.launcher",
            "--script",
            path,
            "--status-fd",
            str(write_fd),
            "--timeout",
            f"{self.launcher_timeout:g}",
            "--preload",
            ",".join(self.launcher_preload),
        ]
        env = dict(env, DS_COMPUTE_SERVER_KEY=key)
        # room in the launcher's environment block for the server's real one (launcher.rewrite_proc_environ)
        env.update(launcher.env_reserve())
        t0 = time.monotonic()
        try:
            with open(self._log_path(), "ab", buffering=0) as logf:
                self.proc = subprocess.Popen(
                    argv,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    pass_fds=(write_fd,),
                    preexec_fn=self._preexec(procs_files, uid, gid, groups, uid is not None, volume_path),
                    start_new_session=True,
                    close_fds=True,
                )
        except (OSError, subprocess.SubprocessError) as e:
            os.close(read_fd)
            raise BackendError(f"Could not start the launcher for {tier.display_name}: {e}") from None
        finally:
            os.close(write_fd)
        self.pid = self.proc.pid
        self.uid = uid if uid is not None else os.getuid()
        self._handoff = self.proc.stdin
        self.emit(f"Loading the server on {tier.display_name} ahead (launcher pid {self.pid})")
        line = await _read_line(read_fd)
        try:
            status = json.loads(line) if line else {}
        except ValueError:
            status = {}
        if not status.get("ready"):
            code = self.proc.poll()
            tail = await self.log_tail(10)
            raise BackendError(
                f"The launcher for {tier.display_name} ended before it was ready "
                f"(exit status {code}). Last lines of its log:\n{tail}",
                log_message=f"launcher pid {self.pid} of {self.log_name} ended while preparing ({code})",
            )
        for failure in status.get("failed", []):
            self.log.warning("Launcher of %s could not preload %s", self.log_name, failure)
        self.emit(f"{tier.display_name} ready: server modules loaded in {time.monotonic() - t0:.1f}s")
        return HostInfo(kind="local", id=socket.gethostname())

    async def _hand_over(self, cmd, env, volume_path, keep_root):
        """Give the prepared launcher its start; False if it is gone (start as usual then)."""
        handoff, self._handoff = self._handoff, None
        if keep_root or self.proc is None or self.proc.poll() is not None:
            self.log.warning(
                "Prepared launcher of %s is gone (status %s): starting %s the usual way",
                self.log_name,
                None if self.proc is None else self.proc.poll(),
                self.key,
            )
            handoff.close()
            await self.stop(now=True)
            return False
        if os.geteuid() == 0 and self.uid == os.getuid():
            cmd = [*cmd, "--ServerApp.allow_root=True"]
        payload = json.dumps({"argv": list(cmd), "env": env, "cwd": volume_path}).encode()

        def write():
            try:
                handoff.write(payload)
                handoff.close()
                return True
            except OSError:  # it died just now
                return False

        if not await asyncio.to_thread(write):
            await self.stop(now=True)
            return False
        self.log.info("Handed the start of %s to its prepared launcher (pid %s)", self.log_name, self.pid)
        return True

    def _make_cgroup(self, tier):
        """The server's cgroup with the tier's limits; its ``cgroup.procs`` files (none without cgroups)."""
        hierarchy = self._hierarchy_or_warn()
        if not hierarchy:
            return []
        self.cgroup = cgroups.group_name(self.spawner.user.name, self.spawner.name or "", self.key)
        limits = cgroups.Limits(cpu=tier.cpu or None, mem=tier.mem or None, pids=self.pids_limit or None)
        paths = hierarchy.create(self.cgroup, limits)
        # None: the tier sets no limit
        cpu = "no CPU limit" if tier.cpu is None else f"{tier.cpu:g} CPU"
        mem = "no memory limit" if tier.mem is None else f"{tier.mem / 2**30:.1f} GiB memory"
        self.emit(f"Limits for tier {tier.display_name}: {cpu}, {mem} (cgroup v{hierarchy.version})")
        return cgroups.join_procs_files(paths)

    async def start(self, tier, cmd, env, volume_path, keep_root=False):
        """Start the server; with ``keep_root`` the command itself drops to
        the user (the image volume's mount wrapper does). On a prepared
        backend (:meth:`prepare_ahead`) the launcher becomes the server."""
        self.key = env["DS_COMPUTE_SERVER_KEY"]
        if self._handoff is not None:
            if await self._hand_over(cmd, env, volume_path, keep_root):
                return self.ip, self.port
        procs_files = self._make_cgroup(tier)
        uid, gid, groups = await self._account_for(volume_path)
        os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        log_path = self._log_path()
        logf = open(log_path, "ab", buffering=0)

        drop = uid is not None and not keep_root
        if uid is None and os.geteuid() == 0:
            # run_as = "hub" with a root hub: jupyter-server refuses root without this
            cmd = [*cmd, "--ServerApp.allow_root=True"]

        self.log.info("Spawning %s for %s", " ".join(shlex.quote(c) for c in cmd), self.log_name)
        try:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                preexec_fn=self._preexec(procs_files, uid, gid, groups, drop, volume_path),
                start_new_session=True,
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise BackendError(
                f"Could not start the server: {e}",
                log_message=f"Popen {cmd} failed for {self.log_name}: {e}",
            ) from None
        finally:
            logf.close()
        self.pid = self.proc.pid
        self.uid = uid if uid is not None else os.getuid()
        return self.ip, self.port

    async def poll(self):
        if self.proc is not None:
            status = self.proc.poll()
            return status
        if not self.pid:
            return 0
        return None if self._pid_is_ours(self.pid) else 0

    def _pid_is_ours(self, pid):
        """True if ``pid`` is alive and carries our marker (no pid reuse mix-up)."""
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except (FileNotFoundError, ProcessLookupError):
            return False
        except PermissionError:
            # not ours to read: someone else's process now has that pid
            return False
        if self.key:
            return f"DS_COMPUTE_SERVER_KEY={self.key}".encode() in environ.split(b"\0")
        return True

    # -- stop: the cgroup (or the marker, scanned in a thread) tells who is left --

    def _find_pids(self):
        """Every live process of this server, kernels included (blocking: run in a thread).

        With a cgroup, its ``cgroup.procs`` (every descendant is in it); without
        one, a scan of ``/proc`` for our marker ``DS_COMPUTE_SERVER_KEY``
        (kernels run in sessions of their own, so the server's process group
        does not hold them); plus the main pid while it is ours.
        """
        hierarchy = self._hierarchy_or_warn() if self.cgroup else None
        pids = set(hierarchy.pids(self.cgroup)) if hierarchy else set()
        if self.key and not pids:
            # no cgroup, or an empty one (a server started before cgroups were
            # writable, or moved out): the marker still tells
            marker = self.key
            pids |= set(find_processes(lambda env: env.get("DS_COMPUTE_SERVER_KEY") == marker))
        if self.pid and self._pid_is_ours(self.pid):
            pids.add(self.pid)
        pids.discard(os.getpid())
        return {p for p in pids if _alive(p)}

    def _still_alive(self, pids):
        """Which of ``pids`` are still alive, and what joined the cgroup since (cheap:
        ``/proc/<pid>/stat`` of known pids and ``cgroup.procs``, no scan)."""
        if self.proc is not None:
            self.proc.poll()  # reap the main process, a zombie otherwise
        left = {p for p in pids if _alive(p)}
        hierarchy = self._hierarchy_or_warn() if self.cgroup else None
        if hierarchy:
            left |= {p for p in hierarchy.pids(self.cgroup) if p != os.getpid() and _alive(p)}
        return left

    @staticmethod
    def _signal(pids, sig):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    async def _wait_gone(self, pids, timeout):
        """Wait with exponential backoff until ``pids`` (and the cgroup) are gone; the
        ones still alive then (empty: all gone)."""
        try:
            # a look at a few /proc/<pid>/stat files costs microseconds: wait
            # in short steps, so a stop is not padded by the backoff itself
            await exponential_backoff(
                lambda: not self._still_alive(pids),
                f"processes of {self.log_name} still running",
                start_wait=0.01,
                scale_factor=1.5,
                max_wait=0.1,
                timeout=timeout,
            )
        except asyncio.TimeoutError:
            return self._still_alive(pids)
        # gone; a final look for late children (one scan in a thread)
        return await asyncio.to_thread(self._find_pids)

    async def stop(self, now=False):
        if not (self.pid or self.cgroup or self.key):
            return
        left = await asyncio.to_thread(self._find_pids)
        if not now and left:
            # the server first: it shuts its kernels down cleanly on SIGTERM
            if self.pid in left:
                self._signal([self.pid], signal.SIGTERM)
            left = await self._wait_gone(left, self.term_timeout)
            if left:
                self._signal(left, signal.SIGTERM)
                left = await self._wait_gone(left, 2)
        if left:
            self._signal(left, signal.SIGKILL)
            left = await self._wait_gone(left, self.kill_timeout)
            if left:
                self.log.warning("Processes of %s survived SIGKILL: %s", self.log_name, sorted(left))
        if self.proc is not None:
            self.proc.poll()
        if self.cgroup:
            hierarchy = self._hierarchy_or_warn()
            if hierarchy and not hierarchy.remove(self.cgroup):
                self.log.warning("cgroup %s of %s not removed (busy)", self.cgroup, self.log_name)
        self.pid = 0
        self.proc = None
        self.cgroup = ""
        if self._handoff is not None:
            self._handoff.close()
            self._handoff = None

    async def log_tail(self, lines=30):
        try:
            with open(self._log_path(), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                tail = deque(f.read().decode(errors="replace").splitlines(), maxlen=lines)
        except OSError:
            return ""
        return "\n".join(tail)

    def read_limits(self):
        hierarchy = self._hierarchy_or_warn() if self.cgroup else None
        return hierarchy.read_limits(self.cgroup) if hierarchy else {}

    def get_state(self):
        if not (self.pid or self.cgroup):
            return {}
        return {"pid": self.pid, "port": self.port, "cgroup": self.cgroup, "key": self.key}

    def load_state(self, state):
        self.pid = state.get("pid", 0)
        self.port = state.get("port", 0)
        self.cgroup = state.get("cgroup", "")
        self.key = state.get("key", "")


def _alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _python_script(program, path):
    """``(python, script)`` when ``program`` (found on ``path``) is a Python script, else None."""
    import shutil

    script = shutil.which(program, path=path) if program else None
    if not script:
        return None
    try:
        with open(script, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    python = first[2:].strip().decode(errors="replace").split()[0] if first[2:].strip() else ""
    if "python" not in os.path.basename(python) or not os.access(python, os.X_OK):
        return None
    return python, os.path.abspath(script)


async def _read_line(fd):
    """One line from pipe ``fd`` (closed afterwards), without blocking the loop; "" at EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        return (await reader.readline()).decode(errors="replace").strip()
    finally:
        transport.close()


def default_singleuser_cmd():
    """``jupyterhub-singleuser`` next to the hub's interpreter (a venv's bin
    need not be on PATH), else from PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")
    return [candidate] if os.path.exists(candidate) else ["jupyterhub-singleuser"]
