"""The interface every volume driver implements.

A volume belongs to a user (and named server), not to a machine: it exists
before the first start and after every stop.  Its id lives in spawner state.
Drivers check real-world preconditions themselves (not attached elsewhere,
same zone, device free): the storage APIs and moto do not always refuse.

:class:`VolumeDriver` declares everything the spawner (and, through spawner
state, the service's admin page) uses; nothing is probed with ``hasattr``.
Abstract: :meth:`~VolumeDriver.ensure`, :meth:`~VolumeDriver.attach`,
:meth:`~VolumeDriver.detach`, :meth:`~VolumeDriver.delete`.  With defaults:
:meth:`~VolumeDriver.describe`, :meth:`~VolumeDriver.zone`,
:meth:`~VolumeDriver.wrap_command`, :meth:`~VolumeDriver.get_state`,
:meth:`~VolumeDriver.load_state`, the zone move (:meth:`~VolumeDriver.prepare_move`,
:meth:`~VolumeDriver.move_to_zone`, :meth:`~VolumeDriver.finish_move`,
:meth:`~VolumeDriver.undo_move`) and the
attributes :attr:`~VolumeDriver.owner`, :attr:`~VolumeDriver.needs_root_exec`,
:attr:`~VolumeDriver.delete_by_default`, :attr:`~VolumeDriver.moves_across_zones`.

Order of calls for one start: (``owner`` set from the backend) → ``ensure``
→ (backend ``prepare``, which may ask ``zone()`` and
``moves_across_zones``) → (``move_to_zone`` when the machine is in another
zone) → ``attach`` → ``describe`` → ``wrap_command`` → (the server answers)
``finish_move``; a failed start: ``detach`` → ``undo_move``. Stop: ``detach`` → ``describe``. Delete of
the user or named server: ``delete``.

Errors: raise :class:`VolumeError` (a :class:`~jupyter_ds_compute.errors.DSComputeError`)
for anything the user should read (``message`` to the spawn page,
``log_message`` to the hub log, optional ``status_code``, e.g. 403 for a
volume owned by someone else); anything else is a bug and is logged with a
traceback.

A driver outside this package registers an entry point in the group
``jupyter_ds_compute.volumes`` (see ``docs/internals.md``).
"""

from __future__ import annotations

from traitlets.config import LoggingConfigurable

from ..errors import DSComputeError


class VolumeError(DSComputeError):
    """A volume failure with a message meant for the user."""


#: the methods every volume driver must define (the others have defaults)
ABSTRACT_METHODS = ("ensure", "attach", "detach", "delete")

#: the keys of :meth:`VolumeDriver.describe`'s dict (a driver may add its own)
DESCRIBE_KEYS = ("id", "driver", "path", "attached_to", "size_bytes", "used_bytes", "zone")


def description(volume, info: dict | None = None) -> dict:
    """``info`` (a driver's :meth:`~VolumeDriver.describe`) with every key of
    :data:`DESCRIBE_KEYS` present (``None`` when unknown): the one shape the
    spawner stores as ``volume_info`` and the admin page reads."""
    out = {key: None for key in DESCRIBE_KEYS}
    out.update(id=volume.volume_id, driver=volume.name)
    out.update(info or {})
    return out


class VolumeDriver(LoggingConfigurable):
    """Base class: created with ``parent=spawner`` for one user's server.

    Configure subclasses like any traitlets class, e.g.
    ``c.EBSVolume.size = 50``.
    """

    #: short name used in config and state, e.g. "local"
    name = "base"

    #: ``(uid, gid)`` the server runs as, set by the spawner from the
    #: backend's ``owner()`` before :meth:`ensure` (``None``: the backend
    #: does not say). A new volume is made to belong to it; a driver that
    #: records owners refuses (``VolumeError``, ``status_code = 403``) a
    #: volume that belongs to someone else.
    owner: tuple[int, int] | None = None

    #: True when :meth:`wrap_command`'s command must be started with root
    #: rights (it mounts in the server's namespace, then drops to the user);
    #: the spawner passes it to the backend's ``start(..., keep_root=...)``.
    #: May be a property (known after :meth:`attach`).
    needs_root_exec = False

    def __init__(self, spawner, **kwargs):
        super().__init__(parent=spawner, **kwargs)
        self.spawner = spawner
        self.volume_id = ""

    @property
    def log_name(self):
        return self.spawner._log_name

    async def ensure(self) -> str:
        """Create the volume if it does not exist yet; return its id.

        Called at each start, before the backend gets a machine. Sets and
        returns :attr:`volume_id` (kept in spawner state). Finds an existing
        volume from ``volume_id`` or, when the state lost it, by name or tags.
        Raise :class:`VolumeError` when it cannot be made or is not this
        user's (then with ``status_code = 403``).
        """
        raise NotImplementedError

    async def attach(self, host) -> str:
        """Make the volume usable on ``host``; return its path there.

        ``host`` is the backend's :class:`~jupyter_ds_compute.backends.base.HostInfo`
        from ``prepare``. Called once per start. The path becomes the server's
        ``HOME`` and notebook dir. Raise :class:`VolumeError` if the volume
        is attached elsewhere, in another zone, or the host cannot reach it.
        """
        raise NotImplementedError

    async def detach(self) -> None:
        """Undo ``attach``. Idempotent: detaching a detached volume is fine.

        Called after the backend stopped the server (also after a failed
        start), before the backend releases the machine.
        """
        raise NotImplementedError

    async def describe(self) -> dict:
        """The volume as the admin page shows it: a JSON-able dict.

        Called after each attach and detach (bounded by a timeout: a failure
        is logged and never fails a start or stop); the spawner stores the
        result, completed by :func:`description` plus ``"as_of"`` (unix
        time), as ``volume_info`` in spawner state. Keys
        (:data:`DESCRIBE_KEYS`; ``None`` when unknown): ``id``, ``driver``,
        ``path`` (where it is mounted on the server's machine),
        ``attached_to`` (host or instance it is attached to, ``None`` when
        detached), ``size_bytes``, ``used_bytes``, ``zone``; a driver may add
        its own (``mode``, ``state``, ``file_system_id``). Default: id and
        driver only.
        """
        return description(self)

    def zone(self) -> str | None:
        """The availability zone the volume is bound to, or ``None`` (anywhere).

        Called by backends that choose where to run (EC2: only subnets in this
        zone) during ``prepare``, after :meth:`ensure`. Default: ``None``.
        """
        return None

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

    #: True when :meth:`move_to_zone` can copy the volume into another zone
    #: (EBS: snapshot, then a new volume from it). A backend whose machines
    #: have no capacity in :meth:`zone` may then launch in another zone; the
    #: spawner moves the volume there before :meth:`attach`. May be a trait.
    moves_across_zones = False

    #: a move whose original is not deleted yet (a JSON-able dict the driver
    #: keeps in its state), else None: the spawner calls :meth:`finish_move`
    #: once the server answers
    moved_from: dict | None = None

    async def move_to_zone(self, zone: str, progress) -> dict:
        """Copy the (detached) volume into ``zone`` and make the copy this
        server's volume (:attr:`volume_id`, :meth:`zone`); the original stays
        untouched until :meth:`finish_move` (the server is up on the copy) or
        :meth:`undo_move` (the start failed).

        Called by the spawner between the backend's ``prepare`` (whose host
        is in ``zone``) and :meth:`attach`, only when
        :attr:`moves_across_zones`. ``progress(message)`` shows a step on the
        spawn page. Returns ``{"from": id, "from_zone": z, "to": id,
        "to_zone": z, "via": what it was copied through}``. Raise
        :class:`VolumeError`, changing nothing that holds data, if it cannot.
        Default: refuses.
        """
        raise VolumeError(f"A {self.name} volume cannot move to another zone ({zone}).")

    async def prepare_move(self, zone: str, progress) -> None:
        """Make a later :meth:`move_to_zone` to ``zone`` quicker, while the
        volume is still in use (make before break: the target machine is in
        ``zone``; the cut-over moves the volume). Must not change what the
        server sees. EBS: a snapshot now, so the cut-over's is incremental.
        Called by the spawner after the backend's ``prepare_ahead``, only when
        :attr:`moves_across_zones`; a failure is logged, not raised to the
        switch. Default: nothing."""
        return None

    async def finish_move(self) -> dict | None:
        """The server answered on the moved volume: delete the original (and
        what was made only for the move). Idempotent; a move left pending by a
        hub that stopped is finished by the next start that comes up. Returns
        what :meth:`delete` returns, or None when no move is pending."""
        return None

    async def undo_move(self) -> dict | None:
        """The start that moved the volume failed (the copy is detached): go
        back to the original, untouched volume and delete the copy (nothing
        was written to it but by the failed start). Returns ``{"kept": [...],
        "deleted": [...]}``, or None when this start moved nothing."""
        return None

    def wrap_command(self, cmd: list[str]) -> list[str]:
        """The server's argv, prefixed when mounting must happen in its namespace.

        Called after :meth:`attach`. Default: ``cmd`` unchanged.
        """
        return cmd

    def get_state(self) -> dict:
        """What finds the volume again (JSON-able; ``"driver"`` names the driver
        to load it with). Synchronous. Default: driver and id (``{}`` without a volume)."""
        return {"driver": self.name, "id": self.volume_id} if self.volume_id else {}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`get_state` returned, on a fresh driver object. No I/O."""
        self.volume_id = state.get("id", "")
