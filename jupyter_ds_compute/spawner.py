"""DSComputeSpawner: one persistent volume, several compute tiers.

The spawner orchestrates; the pure parts live beside it:

- :mod:`jupyter_ds_compute.tiers` turns ``profile_list`` and ``user_options``
  into a resolved :class:`~jupyter_ds_compute.tiers.Tier` (KubeSpawner's schema);
- a *backend* (:mod:`jupyter_ds_compute.backends`) runs the server process;
- a *volume driver* (:mod:`jupyter_ds_compute.volumes`) owns the user's storage.

Start: validate options → volume.ensure → backend.prepare → volume.attach →
backend.start → wait until the server answers HTTP (or fail with the tail
of its log if it exits first).  Stop: backend.stop → volume.detach →
backend.release.  For a switch, the target machine may be prepared ahead
while the old server serves (:mod:`jupyter_ds_compute.ahead`,
:meth:`DSComputeSpawner.want_prepared`); the start then takes it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import secrets
import time

from jupyterhub.spawner import Spawner, SpawnException
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Bool, Callable, Dict, Float, List, Type, Unicode, Union, default, validate

from . import catalogue, form, plugins, policy, spawnpolicy, tiers
from .ahead import AheadWatch
from .backends.base import Backend, BackendError, PrepareUnsupported
from .backends.local import default_singleuser_cmd
from .errors import DSComputeError
from .hubconfig import SERVICE_NAME, internal_service_url, public_hub_url
from .volumes.base import VolumeDriver, description

LAB_DEFAULTS = os.path.join(os.path.dirname(__file__), "lab-defaults")


def _plugin(group, spec, setting):
    """The backend / volume-driver class ``spec`` names (see :mod:`.plugins`).

    A name nobody registered is the operator's config error: a 500 whose
    message lists the known names.
    """
    try:
        return plugins.plugin_class(group, spec, setting)
    except plugins.PluginError as e:
        raise SpawnException(e.message, reason="config", log_message=e.log_message, status_code=500) from None


class DSComputeSpawner(Spawner):
    """Spawn a user's server on the tier they pick, with their one volume."""

    profile_list = Union(
        [List(), Dict(), Callable()],
        default_value=[],
        help="""
        The compute tiers, in KubeSpawner's ``profile_list`` schema: a list,
        a dict keyed by slug, or a (sync or async) callable of the spawner.

        Besides KubeSpawner's keys (``display_name``, ``slug``,
        ``description``, ``default``, ``profile_options``,
        ``spawner_override`` / ``kubespawner_override``), each tier may
        declare ``cpu``, ``mem``, ``gpu``, ``hourly_cost``, ``allowed_groups``,
        ``max_servers``, ``idle_downshift_after``, ``backend``, ``volume``
        and ``extra``.  See the README for every field.

        A KubeSpawner ``profile_list`` works unchanged: without ``cpu``,
        ``mem``, ``gpu``, a tier takes them from its override's
        ``cpu_limit`` (else ``cpu_guarantee``), ``mem_limit`` (else
        ``mem_guarantee``) and ``extra_resource_limits`` (else
        ``extra_resource_guarantees``) ``["nvidia.com/gpu"]``, else has no
        limit and no GPU; without ``hourly_cost`` it has no price (none
        shown, nothing counted against budgets). Override keys this spawner
        has no setting for (``image``, ``lifecycle_hooks``, ...) are skipped
        with a warning naming the tier and the key at each spawn;
        Kubernetes-only ones (``node_selector``, ``tolerations``, ...:
        ``tiers.KUBERNETES_ONLY_SETTINGS``) are skipped silently.

        Example::

            c.DSComputeSpawner.profile_list = [
                {"display_name": "Small", "slug": "small", "default": True,
                 "cpu": 1, "mem": "2G", "hourly_cost": 0.05},
                {"display_name": "GPU", "slug": "gpu", "cpu": 4, "mem": "16G",
                 "gpu": 1, "hourly_cost": 1.2, "allowed_groups": ["gpu-users"]},
            ]

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @validate("profile_list")
    def _validate_profile_list(self, proposal):
        value = proposal.value
        if callable(value):
            return value
        # raises TierConfigError naming the tier and field
        return tiers.normalize_profile_list(value)

    backend = Union(
        [Unicode(), Type(klass=Backend)],
        default_value="local",
        help="""
        Where servers run: ``local`` (processes on the hub's machine, cgroup
        limits), ``slurm`` (batch jobs) or ``ec2`` (an instance per server).
        A tier's own ``backend`` key overrides this.

        Any name registered in the ``jupyter_ds_compute.backends`` entry-point
        group works (a site's own package can add one, see
        docs/internals.md), as does an import string or the class itself (a
        :class:`jupyter_ds_compute.backends.base.Backend` subclass), as
        JupyterHub takes ``c.JupyterHub.spawner_class``. An unknown name fails
        the start with a message listing the known ones.

        Example::

            c.DSComputeSpawner.backend = "slurm"
            c.DSComputeSpawner.backend = "mysite.compute:KubeBackend"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    volume_driver = Union(
        [Unicode(), Type(klass=VolumeDriver)],
        default_value="local",
        help="""
        The user's persistent storage: ``local`` (a directory on the hub's
        machine), ``ebs`` or ``efs``. A tier's ``volume`` key overrides it.

        Like :attr:`backend`: a name in the ``jupyter_ds_compute.volumes``
        entry-point group, an import string or a
        :class:`jupyter_ds_compute.volumes.base.VolumeDriver` subclass.

        Example::

            c.DSComputeSpawner.volume_driver = "ebs"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    delete_volume = Bool(
        None,
        allow_none=True,
        help="""
        What happens to the user's volume when the hub deletes the user or a
        named server (``DELETE /hub/api/users/<name>``, ``DELETE
        /hub/api/users/<name>/servers/<server>`` with ``{"remove": true}``,
        the admin page's *Delete user*), like KubeSpawner's ``delete_pvc``.
        Stopping a server never deletes anything.

        - ``True``: delete it. local: the directory (or the image and its
          mount point); ebs: the volume and the snapshots this hub made of it
          (``c.EBSVolume.snapshot_before_delete`` keeps one final snapshot);
          efs: the access point (the directory in the file system stays:
          EFS has no API to delete files).
        - ``False``: keep it; the hub log names it. A user created again with
          the same name (or server name) gets it back.
        - ``None`` (default): the driver decides. Cloud volumes (ebs, efs),
          which cost money while they exist, are deleted; local directories
          are kept.

        A volume still attached or in use (a server running on it, a stale
        attachment record, a loop device on the image) is never deleted: the
        hub log says what holds it, and the volume stays. Deleting a local
        directory never follows a symbolic link and never touches anything
        outside the volume (nor a file system mounted inside it).

        Example::

            c.DSComputeSpawner.delete_volume = True   # also delete local directories

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    gpu_devices = List(
        Unicode(),
        help="""
        GPU device ids of this machine, handed out in order through
        ``CUDA_VISIBLE_DEVICES`` (a tier with ``gpu: 1`` gets the first one).
        Empty on a machine without GPUs: the spawn page then says so and GPU
        tiers run with ``CUDA_VISIBLE_DEVICES=""``.

        Example::

            c.DSComputeSpawner.gpu_devices = ["0", "1"]

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    service_url = Unicode(
        help="""
        Base URL of the ``ds-compute`` hub service as a server reaches it
        (``DS_COMPUTE_SERVICE_URL`` in the server), e.g.
        ``http://127.0.0.1:8000/services/ds-compute/``.

        Default: the proxy's URL as the hub really runs, computed at spawn
        time: ``c.JupyterHub.public_url`` if set, else ``c.JupyterHub.bind_url``
        (with ``jupyterhub --port``/``--base-url`` applied; a wildcard bind
        address becomes 127.0.0.1), plus ``services/ds-compute/``. Set it when
        servers run on other machines and reach the hub by another name.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("service_url")
    def _default_service_url(self):
        base = public_hub_url()
        return f"{base}services/{SERVICE_NAME}/" if base else ""

    service_api_url = Unicode(
        help="""
        The ``ds-compute`` service's own address with its prefix, as the hub
        reaches it, e.g. ``http://127.0.0.1:10101/services/ds-compute/``: the
        spawner asks it for a user's budget before a start (see
        :attr:`budget_cache_seconds`). Default: the service entry's ``url``
        that ``configure(c)`` added, plus ``c.JupyterHub.base_url`` and
        ``services/ds-compute/``.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("service_api_url")
    def _default_service_api_url(self):
        return internal_service_url()

    service_api_token = Unicode(
        help="""
        The token the spawner sends to the ``ds-compute`` service's hub-only
        calls (``api/hub/*``); ``configure(c)`` makes one per hub start and
        gives the service the same one. Empty: budgets are not checked at
        spawn (caps still are).

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    budget_cache_seconds = Float(
        10.0,
        help="""
        Seconds the spawner reuses a user's budget from the service before
        asking again (starts in a row do not each ask).

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    service_timeout = Float(
        5.0,
        help="""
        Seconds a start waits for the ``ds-compute`` service's budget answer.
        A service that does not answer in time (or is down) does not block
        the start: budgets are then not enforced for it, and the hub log
        says so; caps (counted in the hub's database) still are.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    environments_on_volume = Bool(
        True,
        help="""
        Point user-level install locations at the volume so that environments
        follow the user from tier to tier: ``PYTHONUSERBASE``, pip's cache,
        ``CONDA_ENVS_PATH``, ``CONDA_PKGS_DIRS`` (venvs go in ``~/envs``).

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    lab_news = Bool(
        False,
        help="""
        Let JupyterLab ask users about "official Jupyter news" (and fetch it).
        Off by default: the pop-up is noise on a hub, and fetching needs the
        internet.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    ready_poll_interval = Float(
        0.1,
        help="""Seconds between checks that a starting server answers HTTP.""",
    ).tag(config=True)

    @default("env_keep")
    def _default_env_keep(self):
        # as LocalProcessSpawner: what a server needs from the hub's environment
        return [
            "PATH",
            "PYTHONPATH",
            "LANG",
            "LC_ALL",
            "LD_LIBRARY_PATH",
            "CONDA_ROOT",
            "CONDA_DEFAULT_ENV",
            "VIRTUAL_ENV",
            "JUPYTERHUB_SINGLEUSER_APP",
        ]

    @default("cmd")
    def _default_cmd(self):
        return default_singleuser_cmd()

    @default("options_form")
    def _default_options_form(self):
        return DSComputeSpawner._render_options_form

    @default("options_from_form")
    def _default_options_from_form(self):
        return tiers.options_from_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # validation happens here, before start(): the hub turns our
        # HTTPError into the REST/form answer and never calls start()
        return DSComputeSpawner._apply_tier_options

    # -- runtime (not config) -----------------------------------------------

    tier = None
    tier_slug = None
    started_at = 0.0
    _profiles = ()
    _backend = None
    _volume = None
    #: the volume driver's ``describe()`` at the last start (after attach) or
    #: stop (after detach), kept in the state so that the ds-compute service's
    #: admin page can show it (see docs/internals.md, "Volumes on the admin page")
    volume_info = None
    _backend_name = ""
    _last_good_options = None
    #: the JSON-safe tier catalogue of the last start (:mod:`.catalogue`), in the state
    _catalogue = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._events = []
        self._start_future = None
        self._applied_options = None
        self._watch = None
        #: deleting the original of a moved volume, after the server answered
        self._finishing_move = None
        self._watch_service()
        self._keep_warm_pools()

    # -- tiers -------------------------------------------------------------

    def _user_groups(self):
        return [g.name for g in getattr(self.user, "groups", [])]

    async def load_profiles(self):
        try:
            return await tiers.load_profile_list(self.profile_list, self)
        except tiers.TierConfigError as e:
            self.log.error("Bad profile_list for %s: %s", self._log_name, e)
            raise SpawnException(
                f"The hub's tier configuration is broken ({e}). Ask an admin.",
                reason="config",
                status_code=500,
            ) from None

    async def _render_options_form(self):
        profiles = await self.load_profiles()
        budget = await self._form_budget()
        request_url = form.request_page_url(getattr(self.hub, "base_url", None)) if self.service_url else None
        # like KubeSpawner 7.1: the previous tier and choices are preselected
        # (form_context drops them when no longer valid)
        context = form.form_context(
            profiles,
            self._user_groups(),
            gpu_devices_available=len(self.gpu_devices),
            is_admin=bool(getattr(self.user, "admin", False)),
            user_options=self.user_options or self._last_good_options or None,
            budget=budget,
            request_url=request_url,
        )
        return _form_template().render(tiers=context, selected=None, budget=form.budget_line(budget))

    async def _form_budget(self):
        """The user's budget for the spawn form, or None (no budget line) when
        the service is not set up or does not answer: the form never fails for it."""
        client = self._budget_client()
        if client is None:
            return None
        try:
            return await client.budget(self.user.name, self._user_groups())
        except spawnpolicy.ServiceUnavailable as e:
            self.log.info("No budget line on the spawn form of %s: %s", self._log_name, e)
            return None

    async def _apply_tier_options(self, user_options):
        """Validate ``user_options``, resolve the tier, apply its overrides.

        Bad options are a 400 (403 for a group-restricted tier) naming the
        field; the stored options go back to the last ones that worked, so a
        refused request changes nothing.
        """
        # a new start: progress() waits for it (the budget check below awaits the service)
        self._start_future = None
        self._events = []
        profiles = await self.load_profiles()
        try:
            options = tiers.validate_user_options(
                profiles,
                user_options or {},
                user_groups=self._user_groups(),
                is_admin=bool(getattr(self.user, "admin", False)),
            )
        except tiers.TierOptionsError as e:
            self.log.warning("Refused user_options for %s: %s", self._log_name, e.message)
            self._restore_options()
            raise SpawnException(e.message, reason="user_options", status_code=e.status) from None
        tier = tiers.get_tier(profiles, options["profile"])
        # budgets first (the service's accounts, asked over its API: an await),
        # then caps (policy.py rules on the hub DB's count): no await between
        # this count and storing the options below, so two concurrent starts
        # cannot both take the last slot
        refusal, kind = await self._budget_refusal(tier, profiles), "budget"
        if refusal is None:
            running = (
                spawnpolicy.running_on_tier(
                    self.db, tier.slug, self.orm_spawner.id if self.orm_spawner is not None else None
                )
                if tier.max_servers is not None and self.db is not None
                else 0
            )
            refusal, kind = policy.cap_refusal(tier.display_name, tier.max_servers, running), "cap"
        if refusal:
            self.log.warning("Refused start of %s on tier %s: %s", self._log_name, tier.slug, refusal)
            self._restore_options()
            self._record_refusal(tier, kind, refusal)
            raise SpawnException(refusal, reason="policy", status_code=403)
        self._profiles = profiles
        self._catalogue = catalogue.catalogue(profiles)
        overrides = tiers.resolve_overrides(profiles, options)
        self._reset_overrides(overrides)
        tiers.apply_overrides(self, overrides)
        self.user_options = options
        if self.orm_spawner is not None:
            # store the completed options so the admin page shows the tier
            self.orm_spawner.user_options = options
        self.tier = tier
        self._applied_options = options

    def _budget_client(self):
        if not (self.service_api_url and self.service_api_token):
            return None
        return spawnpolicy.BudgetClient.for_settings(
            self.service_api_url, self.service_api_token, self.budget_cache_seconds, self.service_timeout
        )

    async def _budget_refusal(self, tier, profiles):
        """Why the user's budget refuses ``tier`` (the service decides what is
        spent), or None; a service that does not answer refuses nothing."""
        client = self._budget_client()
        if client is None or not tier.cost_per_hour:
            return None
        groups = self._user_groups()
        try:
            budget = await client.budget(self.user.name, groups)
        except spawnpolicy.ServiceUnavailable as e:
            self.log.warning(
                "Budgets not checked for the start of %s on tier %s: %s", self._log_name, tier.slug, e
            )
            return None
        default = tiers.default_slug(profiles, groups)
        free_below = tiers.get_tier(profiles, default).cost_per_hour if default else 0.0
        return policy.budget_refusal(budget, tier.display_name, tier.cost_per_hour, free_below)

    def _record_refusal(self, tier, kind, reason):
        """The service's audit log gets the refusal (in the background, best effort)."""
        self._record_event(tier, "a spawn refusal", policy=kind, reason=f"spawn refused: {reason}")

    def _record_event(self, tier, what, **event):
        """``POST api/hub/events`` for this server and ``tier`` (in the background, best effort)."""
        client = self._budget_client()
        if client is None:
            return
        asyncio.ensure_future(
            client.record_event(
                what=what, user=self.user.name, server_name=self.name, to_profile=tier.slug, **event
            )
        )

    def _reset_overrides(self, overrides):
        """Undo the previous tier's overrides before applying the next.

        The hub keeps one spawner object per server across restarts, so
        without this a GPU tier's overrides would leak into the next start.
        """
        originals = self.__dict__.setdefault("_override_originals", {})
        for key, value in originals.items():
            setattr(self, key, copy.deepcopy(value))
        for key in overrides:
            if key not in originals and self.has_trait(key):
                originals[key] = copy.deepcopy(getattr(self, key))

    def _restore_options(self):
        previous = self._last_good_options or {}
        self.user_options = dict(previous)
        if self.orm_spawner is not None and self.db is not None:
            self.orm_spawner.user_options = dict(previous)
            self.db.commit()

    # -- plug-ins ------------------------------------------------------------

    def _make_backend(self, spec, setting="c.DSComputeSpawner.backend"):
        cls = _plugin(plugins.BACKENDS, spec, setting)
        self._backend_name = plugins.plugin_spec(spec)
        self._backend = cls(self)
        return self._backend

    def _tier_backend_spec(self, tier):
        """``(spec, setting)``: the backend a tier runs on, and the setting that names it."""
        if tier.backend:
            return tier.backend, f"tier {tier.slug!r} backend"
        return self.backend, "c.DSComputeSpawner.backend"

    def _volume_class(self, name=None):
        """The configured driver class (the tier's ``volume``, else
        :attr:`volume_driver`); with ``name`` (the ``driver`` a volume's state
        recorded: its class's ``name``), the configured one if it has that
        name (a driver configured as an import string or class), else the
        entry point of that name."""
        tier_volume = self.tier.volume if self.tier and self.tier.volume else None
        spec = tier_volume or self.volume_driver
        setting = f"tier {self.tier.slug!r} volume" if tier_volume else "c.DSComputeSpawner.volume_driver"
        if name is None:
            return _plugin(plugins.VOLUMES, spec, setting)
        try:
            cls = plugins.plugin_class(plugins.VOLUMES, spec, setting)
            if cls.name == name:
                return cls
        except plugins.PluginError:
            pass
        return _plugin(plugins.VOLUMES, name, "spawner state")

    @property
    def volume(self):
        if self._volume is None:
            self._volume = self._volume_class()(self)
        return self._volume

    # -- start ---------------------------------------------------------------

    def _emit(self, progress, message):
        self.log.info("%s: %s", self._log_name, message)
        self._events.append({"progress": progress, "message": message})

    async def start(self):
        self._events = []
        self._start_future = asyncio.ensure_future(self._start())
        return await self._start_future

    async def _start(self):
        if self._applied_options is None:
            # started without the hub's apply hook (e.g. another hook replaced it)
            await self._apply_tier_options(self.user_options)
        tier = self.tier
        spec, setting = self._tier_backend_spec(tier)
        prepared = self._take_prepared(tier, spec)
        key = None
        if prepared is not None:
            backend, key = prepared["backend"], prepared["key"]
            self._backend, self._backend_name = backend, plugins.plugin_spec(spec)
            self._emit(5, f"Using the {tier.display_name} machine prepared for this switch")
        else:
            backend = self._make_backend(spec, setting)
        try:
            return await self._start_on(tier, backend, key)
        except DSComputeError as e:
            tail = await backend.log_tail()
            self.log.error("Start of %s failed: %s\n%s", self._log_name, e.log_message, tail)
            self._emit(100, f"Failed: {e.message}")
            await self._cleanup_failed_start()
            # 403 for refusals (AccountRefused, a volume owned by someone else), else 500
            status = getattr(e, "status_code", 500)
            raise SpawnException(
                e.message, reason="start", log_message=e.log_message, status_code=status
            ) from None
        except asyncio.CancelledError:
            await self._cleanup_failed_start()
            raise
        finally:
            self._applied_options = None

    async def _start_on(self, tier, backend, key=None):
        volume = self.volume
        key = key or self._new_key()
        self._emit(10, f"Preparing volume for {self.user.name}")
        volume.owner = await backend.owner()
        volume_id = await volume.ensure()
        self._emit(25, f"Getting a {tier.display_name} machine")
        host = await self._drain(backend, backend.prepare(tier))
        # the server's own processes (a prepared launcher) do not hold the volume against it
        host.extra.setdefault("server_key", key)
        self.ip, self.port = backend.bind()
        if host.zone and volume.zone() and host.zone != volume.zone() and volume.moves_across_zones:
            volume_id = await self._move_volume(tier, volume, host.zone)
        self._emit(40, f"Attaching volume {volume_id} on {host.id}")
        path = await volume.attach(host)
        self.volume_info = await self._describe_volume(volume)
        self.notebook_dir = path
        env = self.get_env()
        env.update(self._ds_env(tier, volume, path, key))
        cmd = volume.wrap_command(list(self.cmd) + self.get_args())
        self._emit(55, f"Starting the server on {tier.display_name}")
        keep_root = bool(volume.needs_root_exec)
        ip, port = await self._drain(backend, backend.start(tier, cmd, env, path, keep_root=keep_root))
        self.started_at = float(env["DS_COMPUTE_STARTED_AT"])
        self.tier, self.tier_slug = tier, tier.slug
        self._emit(70, "Waiting for the server to answer")
        await self._drain(backend, self._wait_ready(backend, ip, port))
        self._last_good_options = dict(self.user_options)
        if volume.moved_from:
            # the server answers on the moved volume: now the original may go
            self._finishing_move = asyncio.ensure_future(self._finish_move(tier, volume))
        self._emit(95, f"Server ready on {tier.display_name}")
        return ip, port

    # -- a volume that moves to the machine's zone ----------------------------------

    async def _prepare_move(self, volume, zone, switch_id, watch):
        """The machine prepared for a switch is in another zone: let the volume get
        ready for the move while the server runs (best effort: the cut-over copies
        everything if this fails)."""
        reports = []

        def progress(message):
            self.log.info("%s: %s", self._log_name, message)
            reports.append(asyncio.ensure_future(watch.report(switch_id, "preparing", message)))

        try:
            await volume.prepare_move(zone, progress)
        except Exception as e:  # noqa: BLE001 - an optimisation; the move itself copies everything
            self.log.warning("Preparing the volume move of %s to %s failed: %s", self._log_name, zone, e)
        if reports:
            await asyncio.gather(*reports, return_exceptions=True)

    async def _move_volume(self, tier, volume, zone):
        """Copy the volume into ``zone``, where the backend found capacity (EBS:
        snapshot → new volume); the original stays until the server answers."""
        self._emit(
            30,
            f"Moving your volume from {volume.zone()} to {zone}, where your {tier.display_name} machine is",
        )

        def progress(message):
            last = self._events[-1]["progress"] if self._events else 30
            self._emit(min(last + 1, 39), message)

        try:
            move = await volume.move_to_zone(zone, progress)
        except DSComputeError as e:
            self._record_volume_event(tier, "failed", f"move to {zone} failed: {e.message}")
            raise
        self._save_state()  # a hub that stops now still knows both volumes
        self._record_volume_event(
            tier,
            "started",
            f"{move['from']} ({move['from_zone']}) -> {move['to']} ({move['to_zone']}) via {move['via']}",
        )
        return move["to"]

    async def _finish_move(self, tier, volume):
        """Delete the original of a moved volume (best effort: a pending move is
        finished by the next start that comes up)."""
        moved = dict(volume.moved_from or {})
        try:
            result = await volume.finish_move()
        except Exception as e:  # noqa: BLE001 - kept for the next start
            self.log.warning(
                "Could not finish the volume move of %s (kept, retried at the next start): %s",
                self._log_name,
                e,
            )
            return
        if result:
            self._save_state()
            self._record_volume_event(
                tier,
                "done",
                f"{moved.get('volume_id')} ({moved.get('zone')}) -> {volume.volume_id} ({volume.zone()}); "
                f"deleted {', '.join(result['deleted']) or 'nothing'}",
            )

    def _record_volume_event(self, tier, outcome, reason):
        """``volume:move`` in the service's audit log (in the background, best effort)."""
        self._record_event(tier, "a volume move", volume="move", outcome=outcome, reason=reason)

    def _save_state(self):
        """Write this spawner's state to the hub's database now (not only after the start)."""
        if self.orm_spawner is not None and self.db is not None:
            self.orm_spawner.state = self.get_state()
            self.db.commit()

    async def _drain(self, backend, coro):
        """Run ``coro`` while copying the backend's progress messages."""
        task = asyncio.ensure_future(coro)
        while True:
            getter = asyncio.ensure_future(backend.events.get())
            done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                last = self._events[-1]["progress"] if self._events else 0
                self._emit(min(last + 1, 94), getter.result())
            else:
                getter.cancel()
            if task in done:
                while not backend.events.empty():
                    self._emit(
                        self._events[-1]["progress"] if self._events else 0, backend.events.get_nowait()
                    )
                return task.result()

    async def _wait_ready(self, backend, ip, port):
        """Wait until the server answers HTTP; fail fast if it exits first."""
        url = f"http://{ip}:{port}{self.server.base_url}api"
        client = AsyncHTTPClient()
        while True:
            status = await backend.poll()
            if status is not None:
                tail = await backend.log_tail()
                raise BackendError(
                    f"The server exited during start (status {status}). Last lines of its log:\n{tail}",
                    log_message=f"server exited with {status} during start; log tail:\n{tail}",
                )
            try:
                await client.fetch(HTTPRequest(url, request_timeout=2, connect_timeout=1), raise_error=False)
                return
            except (OSError, HTTPClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(self.ready_poll_interval)

    def _new_key(self):
        """A fresh ``DS_COMPUTE_SERVER_KEY``: ``<user>/<server>/<token>``, the marker of every process of one start."""
        return f"{self.user.name}/{self.name}/{secrets.token_hex(8)}"

    def _ds_env(self, tier, volume, path, key):
        gpus = self.gpu_devices[: tier.gpu] if tier.gpu else []
        env = {
            "DS_COMPUTE_SERVER_KEY": key,
            "DS_COMPUTE_TIER": tier.slug,
            "DS_COMPUTE_TIER_INFO": json.dumps(tier.public()),
            "DS_COMPUTE_TIERS": json.dumps(self._tiers_for_user()),
            "DS_COMPUTE_STARTED_AT": repr(time.time()),
            "DS_COMPUTE_VOLUME_ID": volume.volume_id,
            "DS_COMPUTE_VOLUME_PATH": path,
            "DS_COMPUTE_VOLUME_DRIVER": volume.name,
            "DS_COMPUTE_BACKEND": self._backend_name,
            "DS_COMPUTE_SERVICE_URL": self.service_url,
            "CUDA_VISIBLE_DEVICES": ",".join(gpus),
            "HOME": path,
            "USER": self.user.name,
            "SHELL": "/bin/bash",
        }
        if self.environments_on_volume:
            env.update(
                PYTHONUSERBASE=os.path.join(path, ".local"),
                PIP_CACHE_DIR=os.path.join(path, ".cache", "pip"),
                CONDA_ENVS_PATH=os.pathsep.join(
                    [os.path.join(path, "envs"), os.path.join(path, ".conda", "envs")]
                ),
                CONDA_PKGS_DIRS=os.path.join(path, ".conda", "pkgs"),
            )
        if not self.lab_news:
            existing = self.get_env().get("JUPYTER_CONFIG_PATH") or os.environ.get("JUPYTER_CONFIG_PATH", "")
            env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(p for p in (LAB_DEFAULTS, existing) if p)
        return env

    def _tiers_for_user(self):
        return tiers.for_user(self._profiles, self._user_groups())

    async def _cleanup_failed_start(self):
        try:
            await self._stop_all(now=True)
        except Exception:
            self.log.exception("Cleanup after failed start of %s", self._log_name)
            return
        if self._volume is None:
            return
        try:
            undone = await self._volume.undo_move()
        except Exception:
            self.log.exception(
                "Undoing the volume move of %s (the copy is kept as the volume)", self._log_name
            )
            return
        if undone:
            self.volume_info = await self._describe_volume(self._volume)
            self._save_state()
            self._emit(100, f"Back on your volume {self._volume.volume_id}: the copy was deleted")
            self._record_volume_event(
                self.tier,
                "undone",
                f"start failed: kept {', '.join(undone['kept'])}; deleted {', '.join(undone['deleted'])}",
            )

    # -- make before break: a machine prepared while the old server serves ------

    def _watch_service(self):
        """Make sure this hub watches the service for machines to prepare (:mod:`.ahead`)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.service_api_url and self.service_api_token:
            self._watch = AheadWatch.for_spawner(self)

    def _keep_warm_pools(self):
        """Start the hub's warm-pool keeper if a tier wants one (EC2 only, :mod:`.backends.ec2pool`)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        try:
            from .backends.ec2pool import WarmPool
        except ImportError:  # pragma: no cover (tornado and traitlets are the hub's own)
            return
        try:
            WarmPool.for_spawner(self)
        except Exception:
            self.log.exception("Could not start the warm-pool keeper")

    @property
    def _ahead(self):
        """The machine prepared for a switch of this server, or None.

        Kept by the hub-wide :class:`AheadWatch`, not on this object: JupyterHub
        drops a server's spawner object when it stops and makes a new one for
        the next start, and that one takes the machine.
        """
        if self._watch is None:
            return None
        return self._watch.prepared.get((self.user.name, self.name or ""))

    @_ahead.setter
    def _ahead(self, value):
        if self._watch is None:
            return
        key = (self.user.name, self.name or "")
        if value is None:
            self._watch.prepared.pop(key, None)
        else:
            self._watch.prepared[key] = value

    def want_prepared(self, intent, watch):
        """The service wants a machine for switch ``intent["switch"]`` (called by :class:`AheadWatch`)."""
        sid = intent["switch"]
        if self._ahead is not None:
            if self._ahead["switch"] == sid:
                return
            self._release_prepared(f"switch {sid} wants this server's machine instead")
        ahead = {"switch": sid, "state": "preparing", "backend": None, "timer": None}
        self._ahead = ahead
        ahead["task"] = asyncio.ensure_future(self._prepare_ahead(intent, watch, ahead))

    def release_prepared_unless(self, wanted_ids):
        """Release the prepared machine unless its switch is in ``wanted_ids``."""
        if self._ahead is not None and self._ahead["switch"] not in wanted_ids:
            self._release_prepared("its switch no longer needs it")

    def _release_prepared(self, why, ahead=None):
        ahead = ahead or self._ahead
        if ahead is None:
            return
        if self._ahead is ahead:
            self._ahead = None
        task = ahead.get("task")
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if ahead.get("timer") is not None:
            ahead["timer"].cancel()
        backend = ahead.get("backend")
        ahead["backend"] = None
        if backend is not None:
            self.log.info(
                "Releasing the machine prepared for %s (switch %s): %s", self._log_name, ahead["switch"], why
            )
            asyncio.ensure_future(self._end_backend(backend))

    async def _end_backend(self, backend):
        try:
            await backend.stop(now=True)
            await backend.release()
        except Exception:
            self.log.exception("Releasing a prepared machine of %s failed", self._log_name)

    def _take_prepared(self, tier, spec):
        """The prepared machine if it is ready for ``tier`` on backend ``spec`` (it is then this start's)."""
        ahead = self._ahead
        if ahead is None:
            return None
        if (
            ahead["state"] == "ready"
            and ahead.get("tier") == tier.slug
            and ahead.get("spec") == plugins.plugin_spec(spec)
            and ahead.get("options") == self.user_options
        ):
            self._ahead = None
            if ahead["timer"] is not None:
                ahead["timer"].cancel()
            # prepared by the spawner object of the old server; this one starts it
            ahead["backend"].spawner = self
            ahead["backend"].parent = self
            return ahead
        self._release_prepared(f"this start is not the one it was prepared for (tier {tier.slug})")
        return None

    async def _prepare_ahead(self, intent, watch, ahead):
        """Prepare, report, and arm the release timer (a task per switch)."""
        sid = intent["switch"]
        timeout = float(intent.get("timeout") or 600)
        status, message, host_id = "failed", "", ""
        try:
            host = await asyncio.wait_for(self._prepare_machine(intent, ahead, watch), timeout)
        except asyncio.CancelledError:
            if ahead.get("backend") is not None:
                await self._end_backend(ahead.pop("backend"))
            raise
        except PrepareUnsupported as e:
            status, message = "unsupported", e.message
        except asyncio.TimeoutError:
            message = f"not ready within {timeout:.0f}s"
        except DSComputeError as e:
            message = e.message
            self.log.warning(
                "Preparing a machine for %s (switch %s) failed: %s", self._log_name, sid, e.log_message
            )
        except SpawnException as e:
            message = str(e)
        except Exception:
            self.log.exception("Preparing a machine for %s (switch %s) failed", self._log_name, sid)
            message = "internal error in the hub's spawner (see the hub log)"
        else:
            status, host_id = "ready", host.id
            ahead["state"] = "ready"
            ahead["timer"] = asyncio.get_running_loop().call_later(
                timeout, lambda: self._release_prepared(f"not used within {timeout:.0f}s", ahead)
            )
        if status != "ready":
            self._release_prepared(f"preparing ended: {status}", ahead)
        if not await watch.report(sid, status, message, host_id) and status == "ready":
            self._release_prepared("the service no longer wants it", ahead)

    async def _prepare_machine(self, intent, ahead, watch):
        profiles = await self.load_profiles()
        try:
            options = tiers.validate_user_options(
                profiles,
                intent.get("options") or {},
                user_groups=self._user_groups(),
                is_admin=bool(getattr(self.user, "admin", False)),
            )
        except tiers.TierOptionsError as e:
            raise BackendError(e.message) from None
        tier = tiers.get_tier(profiles, options["profile"])
        spec, setting = self._tier_backend_spec(tier)
        cls = _plugin(plugins.BACKENDS, spec, setting)
        if not cls.prepares_ahead:
            raise PrepareUnsupported(f"the {cls.name} backend cannot prepare a machine ahead")
        volume = self._volume
        path = self.notebook_dir
        if volume is None or not volume.volume_id or not path:
            raise PrepareUnsupported("the server's volume is not known to this hub yet")
        if tier.volume and _plugin(plugins.VOLUMES, tier.volume, f"tier {tier.slug!r} volume") is not type(
            volume
        ):
            raise PrepareUnsupported(f"tier {tier.slug} uses another volume driver")
        if volume.needs_root_exec:
            raise PrepareUnsupported(f"the {volume.name} volume mounts as root at the start")
        backend = cls(self)
        ahead["backend"] = backend
        key = self._new_key()
        # the target tier's own command and environment where its overrides set them
        # (the start's values win at the hand-over; see backends/launcher.py)
        overrides = tiers.resolve_overrides(profiles, options)
        base_env = self.get_env()
        target_env = overrides.get("environment")
        if isinstance(target_env, dict):  # a callable is evaluated by the start itself
            base_env.update({k: v for k, v in target_env.items() if isinstance(v, str)})
        env = {k: v for k, v in base_env.items() if k.startswith(_AHEAD_ENV_PREFIXES) or k in _AHEAD_ENV}
        previous_profiles, self._profiles = self._profiles, profiles
        try:
            env.update(self._ds_env(tier, volume, path, key))
        finally:
            self._profiles = previous_profiles
        target_cmd = overrides.get("cmd")
        cmd = volume.wrap_command(list(target_cmd if isinstance(target_cmd, list) else self.cmd))
        self.log.info(
            "Preparing a %s machine for %s (switch %s)", tier.slug, self._log_name, intent["switch"]
        )

        async def relay():
            while True:
                message = await backend.events.get()
                await watch.report(intent["switch"], "preparing", message)

        relaying = asyncio.ensure_future(relay())
        try:
            host = await backend.prepare_ahead(tier, cmd, env, path, key)
        finally:
            relaying.cancel()
        if host.zone and volume.zone() and host.zone != volume.zone() and volume.moves_across_zones:
            await self._prepare_move(volume, host.zone, intent["switch"], watch)
        ahead.update(tier=tier.slug, spec=plugins.plugin_spec(spec), key=key, options=options)
        return host

    # -- progress / poll / stop ------------------------------------------------

    async def progress(self):
        sent = 0
        # options are still being applied (the hub calls start() after that)
        while self._start_future is None and self._spawn_pending:
            await asyncio.sleep(0.1)
        while True:
            while sent < len(self._events):
                yield self._events[sent]
                sent += 1
            if self._start_future is None or self._start_future.done():
                break
            await asyncio.sleep(0.1)

    async def poll(self):
        self._watch_service()
        if self._backend is None:
            return 0
        status = await self._backend.poll()
        if status is not None and self._backend is not None:
            self.log.info("Server %s is not running (status %s)", self._log_name, status)
        return status

    async def stop(self, now=False):
        self.log.info(
            "Stopping %s (tier %s, backend %s, state %s)",
            self._log_name,
            self.tier_slug,
            self._backend_name,
            self._backend.get_state() if self._backend else None,
        )
        try:
            await self._stop_all(now=now)
        except Exception:
            # the hub does not log errors from Spawner.stop itself
            self.log.exception("Stopping %s failed", self._log_name)
            raise

    async def _stop_all(self, now=False):
        client = self._budget_client()
        if client is not None:
            client.forget(self.user.name)  # what this server cost counts at the next start
        backend = self._backend
        if backend is not None:
            await backend.stop(now=now)
        if self._volume is not None:
            await self._volume.detach()
            self.volume_info = await self._describe_volume(self._volume)
        if backend is not None:
            await backend.release()

    async def _describe_volume(self, volume, timeout=30):
        """``volume.describe()`` in its one shape (``volumes.base.description``) plus
        ``"as_of"`` (unix time); never fails a start or stop."""
        try:
            info = description(volume, await asyncio.wait_for(volume.describe(), timeout))
        except Exception as e:  # noqa: BLE001 - informative only
            self.log.warning("Could not describe volume %s of %s: %s", volume.volume_id, self._log_name, e)
            info = description(volume, {"error": f"could not describe: {e}"})
        info["as_of"] = time.time()
        return info

    # -- deletion ------------------------------------------------------------

    async def delete_forever(self):
        """The hub deletes the user or this named server (always after stopping it).

        Deletes or keeps the volume per :attr:`delete_volume`. A refusal (the
        volume is still in use) is logged, not raised: the hub removes the
        server's record anyway, and the volume stays.
        """
        volume = self.volume
        delete = self.delete_volume if self.delete_volume is not None else volume.delete_by_default
        what = f"{volume.name} volume {volume.volume_id or '(none recorded)'}"
        if not delete:
            self.log.info(
                "Deleting %s: kept %s (c.DSComputeSpawner.delete_volume = True deletes it)",
                self._log_name,
                what,
            )
            return
        if self._backend is not None and await self._backend.poll() is None:
            self.log.error(
                "Deleting %s: not deleting %s, its server is still running; the volume stays",
                self._log_name,
                what,
            )
            return
        try:
            result = await volume.delete()
        except DSComputeError as e:
            self.log.error("Deleting %s: not deleting %s: %s", self._log_name, what, e.log_message)
            return
        except Exception:
            self.log.exception("Deleting %s: deleting %s failed; it may still exist", self._log_name, what)
            return
        if not result["id"]:
            self.log.info("Deleting %s: no %s volume to delete", self._log_name, volume.name)
            return
        self.log.info(
            "Deleting %s: deleted %s volume %s (%s)%s",
            self._log_name,
            volume.name,
            result["id"],
            ", ".join(result["deleted"]),
            f"; kept {', '.join(result['kept'])}" if result["kept"] else "",
        )

    # -- state ---------------------------------------------------------------

    def get_state(self):
        state = super().get_state()
        if self._volume is not None and self._volume.volume_id:
            state["volume"] = self._volume.get_state()
        if self._last_good_options:
            state["last_options"] = self._last_good_options
        if self.volume_info:
            state["volume_info"] = self.volume_info
        if self._catalogue:
            # the tiers this user may use, as evaluated at the last start: the
            # ds-compute service validates switches against it (admin:server_state)
            state["tiers"] = self._catalogue
        if self._backend is not None:
            backend_state = self._backend.get_state()
            if backend_state:
                state["backend"] = {"name": self._backend_name, "state": backend_state}
                state["tier"] = self.tier_slug
                state["started_at"] = self.started_at
        return state

    def load_state(self, state):
        super().load_state(state)
        if state.get("volume"):
            self._volume = self._volume_class(state["volume"].get("driver"))(self)
            self._volume.load_state(state["volume"])
        self._last_good_options = state.get("last_options") or self._last_good_options
        self.volume_info = state.get("volume_info") or self.volume_info
        self._catalogue = state.get("tiers") or self._catalogue
        if state.get("backend"):
            backend = self._make_backend(state["backend"]["name"], "spawner state")
            backend.load_state(state["backend"]["state"])
            self.started_at = state.get("started_at", 0.0)
            self.tier_slug = state.get("tier")

    def clear_state(self):
        """Forget the running server, keep the volume and last good options."""
        super().clear_state()
        self._backend = None
        self.started_at = 0.0


#: what of the hub's environment a prepared machine gets ahead (the rest comes with the start)
_AHEAD_ENV_PREFIXES = ("PYTHON", "LD_", "JUPYTERHUB_SINGLEUSER_", "LC_", "CONDA")
#: (``JUPYTERHUB_API_URL``: leftover checks and tools that read ``/proc/<pid>/environ``, which
#: keeps a launcher's first environment, tell the hub's servers by it)
_AHEAD_ENV = (
    "PATH",
    "LANG",
    "TZ",
    "VIRTUAL_ENV",
    "JUPYTERHUB_API_URL",
    "JUPYTERHUB_USER",
    "JUPYTERHUB_SERVER_NAME",
)

_TEMPLATE = None


def _form_template():
    global _TEMPLATE
    if _TEMPLATE is None:
        import jinja2

        env = jinja2.Environment(
            loader=jinja2.PackageLoader("jupyter_ds_compute", "templates"),
            autoescape=True,
        )
        _TEMPLATE = env.get_template("form.html")
    return _TEMPLATE
