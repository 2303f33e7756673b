"""The interface every backend implements.

A backend answers one question: *where does the single-user server process
run, and how do we start, watch and end it?*  The spawner owns the tier,
the volume and the JupyterHub contract; a backend only runs processes.

These are the only methods a backend needs to define (like
jupyterhub-traefik-proxy's KV providers): ``prepare``, ``start``, ``poll``,
``stop``, ``release``, ``get_state``, ``load_state``.
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


class Backend(LoggingConfigurable):
    """Base class: created with ``parent=spawner`` for one server."""

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

    async def prepare(self, tier) -> HostInfo:
        """Get a machine for ``tier``; return where it is."""
        raise NotImplementedError

    async def start(self, tier, cmd, env, volume_path) -> tuple[str, int]:
        """Start ``cmd`` with ``env`` in ``volume_path``; return ``(ip, port)``."""
        raise NotImplementedError

    async def poll(self):
        """``None`` while running, an exit status (int) once it has ended."""
        raise NotImplementedError

    async def stop(self, now=False):
        """End every process of the server (kernels included). Idempotent."""
        raise NotImplementedError

    async def release(self):
        """Give the machine back once the volume is detached. Idempotent."""

    async def log_tail(self, lines=30) -> str:
        """The last lines of the server's output, for error messages."""
        return ""

    def get_state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass
