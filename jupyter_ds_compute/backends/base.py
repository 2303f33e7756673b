"""The interface every backend implements.

A backend answers one question: *where does the single-user server process
run, and how do we start, watch and end it?*  The spawner owns the tier,
the volume and the JupyterHub contract; a backend only runs processes.

:class:`Backend` declares everything the spawner calls on a backend (like
jupyterhub-traefik-proxy's KV providers): nothing is probed with
``hasattr``.  Abstract (each backend defines them): :meth:`~Backend.prepare`,
:meth:`~Backend.bind`, :meth:`~Backend.start`, :meth:`~Backend.poll`,
:meth:`~Backend.stop`.  With a default that fits most backends:
:meth:`~Backend.owner`, :meth:`~Backend.release`, :meth:`~Backend.log_tail`,
:meth:`~Backend.get_state`, :meth:`~Backend.load_state`, and for a backend
that can ready a machine while the old server still serves (make before
break, :attr:`~Backend.prepares_ahead`), :meth:`~Backend.prepare_ahead`.

Order of calls for one start: ``owner`` → (volume ``ensure``) → ``prepare``
→ ``bind`` → (volume ``attach``) → ``start`` → ``poll`` until the server
answers.  Stop: ``stop`` → (volume ``detach``) → ``release``.  After a hub
restart the spawner makes a new backend and calls ``load_state`` with what
``get_state`` returned, then ``poll``/``stop``.

Errors: raise :class:`BackendError` (a :class:`~jupyter_ds_compute.errors.DSComputeError`)
for anything the user should read; its ``message`` reaches the spawn page,
its ``log_message`` the hub log, and a ``status_code`` attribute (default 500;
403 for a refusal) becomes the spawn's HTTP status.  Any other exception is a
bug: the spawner logs it with a traceback.

A backend outside this package registers an entry point in the group
``jupyter_ds_compute.backends`` (see ``docs/internals.md``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from traitlets.config import LoggingConfigurable

from ..errors import DSComputeError


@dataclass
class HostInfo:
    """Where a server will run, as the volume driver needs to know it.

    ``kind`` is ``local`` (this machine), ``shared-fs`` (a cluster node that
    sees the hub's file systems) or ``ec2`` (an instance).  ``id`` names the
    machine (hostname, Slurm node, instance id); ``zone`` is the
    availability zone for block volumes.
    """

    kind: str = "local"
    id: str = "localhost"
    zone: str | None = None
    extra: dict = field(default_factory=dict)


class BackendError(DSComputeError):
    """A backend failure with a message meant for the user."""


class PrepareUnsupported(BackendError):
    """This backend (or this configuration of it) cannot prepare a machine ahead:
    the switch runs in the old order (stop, then start)."""


#: the methods every backend must define (the others have defaults)
ABSTRACT_METHODS = ("prepare", "bind", "start", "poll", "stop")


class Backend(LoggingConfigurable):
    """Base class: created with ``parent=spawner`` for one server.

    A new object is made for each start (and on a hub restart, from the
    spawner state); configure subclasses like any traitlets class, e.g.
    ``c.LocalBackend.pids_limit = 512``.
    """

    #: short name used in config and state, e.g. "local"
    name = "base"

    def __init__(self, spawner, **kwargs):
        super().__init__(parent=spawner, **kwargs)
        self.spawner = spawner
        #: progress messages for the spawn page; the spawner drains it
        self.events: asyncio.Queue[str] = asyncio.Queue()

    @property
    def log_name(self):
        return self.spawner._log_name

    def emit(self, message):
        """Queue a progress message (shown on the spawn/switch page)."""
        self.log.info("%s: %s", self.log_name, message)
        self.events.put_nowait(message)

    # -- abstract: every backend defines these --------------------------------

    async def prepare(self, tier) -> HostInfo:
        """Get a machine for ``tier`` (a :class:`~jupyter_ds_compute.tiers.Tier`).

        Called at each start, after the volume exists (``ensure``) and before
        it is attached. May take minutes (a batch queue, an instance launch):
        report progress with :meth:`emit`. Returns where the server will run,
        as the volume driver needs it (:class:`HostInfo`). Raise
        :class:`BackendError` when no machine can be had (no capacity, a
        broken setting); nothing has been started then.
        """
        raise NotImplementedError

    def bind(self) -> tuple[str, int]:
        """``(ip, port)`` the server will listen on, as far as known after :meth:`prepare`.

        Synchronous; called once right after :meth:`prepare`, before the
        volume is attached; the spawner sets ``spawner.ip``/``spawner.port``
        from it (the values the hub passes to the server). A port of ``0``
        means "known only once the server runs": :meth:`start` returns the
        real address then.
        """
        raise NotImplementedError

    async def start(self, tier, cmd, env, volume_path, keep_root=False) -> tuple[str, int]:
        """Start the server: run ``cmd`` (argv list) with ``env`` (dict) in ``volume_path``.

        ``volume_path`` is where the volume is mounted on the machine (also the
        server's ``HOME`` and notebook dir). ``keep_root`` is the volume
        driver's :attr:`~jupyter_ds_compute.volumes.base.VolumeDriver.needs_root_exec`:
        when true, ``cmd`` must be started with root rights (it mounts, then
        drops to the user itself); a backend that cannot do that raises
        :class:`BackendError`. Returns ``(ip, port)`` the hub reaches the
        server at; returns as soon as the process runs (the spawner then waits
        for HTTP, calling :meth:`poll`). Raise :class:`BackendError` if the
        process could not be started.
        """
        raise NotImplementedError

    async def poll(self) -> int | None:
        """``None`` while the server runs, an exit status (int) once it has ended.

        Called often (the hub's poll, the spawner while waiting for HTTP):
        keep it cheap and do not raise for an ended server; raise
        :class:`BackendError` only if the state cannot be known at all.
        """
        raise NotImplementedError

    async def stop(self, now=False) -> None:
        """End every process of the server (kernels included). Idempotent.

        ``now``: the hub wants it gone without a grace period. Called at a
        stop, after a failed start and before a delete; stopping a server
        that is not running is not an error.
        """
        raise NotImplementedError

    # -- with defaults -----------------------------------------------------------

    #: True if :meth:`prepare_ahead` is implemented
    prepares_ahead = False

    async def prepare_ahead(self, tier, cmd, env, volume_path, key) -> HostInfo:
        """Ready a machine for ``tier`` while the user's old server still serves.

        Called on a *fresh* backend object (the old server's backend is
        untouched) when a switch is requested, only if :attr:`prepares_ahead`.
        ``cmd`` is the server command as the start will run it, ``env`` the
        environment known ahead (no token: that comes with the start),
        ``volume_path`` where the volume is now, ``key`` the
        ``DS_COMPUTE_SERVER_KEY`` the start will give the server. Report
        progress with :meth:`emit` (a Slurm reason, an instance booting).
        Returns where the server will run (:class:`HostInfo`).

        Afterwards the spawner either starts the server on this object
        (``prepare`` → ``bind`` → ``start``, which must use what was prepared,
        with the same ``key``), or releases it (``stop(now=True)`` →
        ``release``) when the switch fails or the machine is not used within
        its timeout; what was prepared should also end by itself when the
        hub is gone. Raise :class:`PrepareUnsupported` when this
        configuration cannot prepare ahead (the switch then stops first), or
        :class:`BackendError` when preparing failed (the switch fails, the
        old server untouched). Default: unsupported.
        """
        raise PrepareUnsupported(f"the {self.name} backend cannot prepare a machine ahead")

    async def owner(self) -> tuple[int, int] | None:
        """``(uid, gid)`` the server runs as, or ``None`` if the backend does not say.

        Called at each start before the volume's ``ensure``: the spawner sets
        it as the volume driver's
        :attr:`~jupyter_ds_compute.volumes.base.VolumeDriver.owner`, so that a
        new volume belongs to that account and a volume owned by someone else
        is refused. Raise :class:`BackendError` (e.g. an account the hub
        cannot use). Default: ``None`` (the driver keeps its own default,
        e.g. EBS/EFS use their own uid settings).
        """
        return None

    async def release(self) -> None:
        """Give the machine back once the volume is detached. Idempotent.

        Called after :meth:`stop` and the volume's ``detach`` (also after a
        failed start). Default: nothing to give back.
        """

    async def log_tail(self, lines=30) -> str:
        """The last ``lines`` lines of the server's output, for error messages.

        Called when a start fails or the server exits during start; must not
        raise (return ``""`` when there is nothing to show). Default: ``""``.
        """
        return ""

    def get_state(self) -> dict:
        """What is needed to find the server again after a hub restart (JSON-able).

        Synchronous, like ``Spawner.get_state``; stored in the hub's database.
        Default: ``{}`` (nothing to remember: the spawner then forgets the
        backend on a restart).
        """
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`get_state` returned, on a fresh backend object.

        Synchronous; no I/O. Default: nothing.
        """
