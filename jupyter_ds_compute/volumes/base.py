"""The interface every volume driver implements.

A volume belongs to a user (and named server), not to a machine: it exists
before the first start and after every stop.  Its id lives in spawner state.
Drivers check real-world preconditions themselves (not attached elsewhere,
same zone, device free): the storage APIs and moto do not always refuse.
"""

from __future__ import annotations

from traitlets.config import LoggingConfigurable

from ..errors import DSComputeError


class VolumeError(DSComputeError):
    """A volume failure with a message meant for the user."""


class VolumeDriver(LoggingConfigurable):
    """Base class: created with ``parent=spawner`` for one user's server."""

    name = "base"

    def __init__(self, spawner, **kwargs):
        super().__init__(parent=spawner, **kwargs)
        self.spawner = spawner
        self.volume_id = ""

    @property
    def log_name(self):
        return self.spawner._log_name

    async def ensure(self) -> str:
        """Create the volume if it does not exist yet; return its id."""
        raise NotImplementedError

    async def attach(self, host) -> str:
        """Make the volume usable on ``host``; return its path there."""
        raise NotImplementedError

    async def detach(self) -> None:
        """Undo ``attach``. Idempotent: detaching a detached volume is fine."""
        raise NotImplementedError

    async def describe(self) -> dict:
        """``{"id", "driver", "attached_to", "size_bytes", "used_bytes"}``."""
        return {"id": self.volume_id, "driver": self.name}

    #: what ``c.DSComputeSpawner.delete_volume = None`` (its default) means for
    #: this driver: delete when the user or named server is deleted, or keep
    delete_by_default = False

    async def delete(self) -> dict:
        """Delete the volume for good: the user or named server is being deleted.

        Called by ``DSComputeSpawner.delete_forever`` (only when
        ``c.DSComputeSpawner.delete_volume`` says so), after the hub stopped
        the server; never called by a stop.  A driver must:

        - find the volume as ``ensure`` would (from ``volume_id``, or by name or
          tags when the state lost it), but never create anything;
        - refuse with :class:`VolumeError`, changing nothing, while the
          volume is attached or in use anywhere (the hub stops servers first,
          so this means something is wrong: say what holds it);
        - delete only this volume and what the driver made for it (e.g. its
          snapshots), nothing else, and never follow a link out of it;
        - be idempotent: a volume that is already gone is not an error.

        Returns ``{"id": <volume id, "" if there was none>, "deleted": [...],
        "kept": [...]}``, lists of short descriptions for the log (e.g.
        ``"volume vol-0abc"``; what deliberately stays, e.g. a final snapshot).
        """
        raise NotImplementedError

    def wrap_command(self, cmd: list[str]) -> list[str]:
        """Prefix the server command when mounting must happen in its namespace."""
        return cmd

    def get_state(self) -> dict:
        return {"driver": self.name, "id": self.volume_id} if self.volume_id else {}

    def load_state(self, state: dict) -> None:
        self.volume_id = state.get("id", "")
