"""Warm pools on EC2: instances booted and waiting before any start asks for them.

A tier of the static ``profile_list`` whose backend is ``ec2`` and whose
``warm_pool`` is ``N > 0`` keeps ``N`` instances per pool zone launched,
running and booted, their bootstrap waiting for a launch spec
(``<prefix><id>.waiting``), tagged as the pool's (``ds-compute:hub``,
``ds-compute:pool = <tier>``, no user or server). A start or a switch onto
the tier (:meth:`EC2Backend.prepare <jupyter_ds_compute.backends.ec2.EC2Backend.prepare>`,
``prepare_ahead``) first *takes* one in the zone it needs; it then behaves
like an instance prepared for a switch (nothing launches, ``start`` writes the
spec). The keeper launches a replacement.

- One :class:`WarmPool` per hub process (and AWS region, endpoint, hub id),
  started by the first spawner created inside the hub's loop, like
  :class:`~jupyter_ds_compute.ahead.AheadWatch`. Everything is async: launches
  run as tasks, AWS calls in the thread pool of :mod:`.aws`.
- **Zones.** EBS volumes are zonal, so a pool instance serves only volumes of
  its zone: the pool zones are ``c.EC2Backend.warm_pool_zones``, by default the
  zone of the first of ``c.EC2Backend.subnet_ids`` (where
  ``c.EBSVolume.availability_zone`` usually puts volumes); ``N`` instances are
  kept *per pool zone*. EFS volumes take any.
- **Taking** is a synchronous pop from the keeper's list (no ``await`` between
  the choice and the removal), so two takers in the hub process never get the
  same instance: one hub process owns its pools. The taker then retags the
  instance to its user and server (``CreateTags``), which makes it the
  server's for every later check (``is_ours``, leftovers, stop).
- **Leftovers.** A pool instance carries no user tag: no server's leftover
  logic ends it. A pool instance's bootstrap waits
  ``c.EC2Backend.warm_pool_lifetime`` seconds for a spec, then shuts the
  instance down (terminated): pool instances of a hub that is gone end by
  themselves. The keeper retires (terminates and replaces) instances a
  minute before that, and at its start terminates untaken pool instances a
  previous hub process left.
- **Cost.** The keeper reports each pool's instances to the service (``POST
  api/hub/pool {"tier","zone","instances":[{"id","since"}]}``) at each change
  and every :data:`REPORT_EVERY` seconds; the service accounts the idle time
  at the tier's price as the operator's cost (``service/warmpool.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import types

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from .. import plugins, tiers
from . import aws
from .ec2 import EC2Backend

__all__ = ["POOL_TAG", "PoolLauncher", "WarmPool"]

log = logging.getLogger(__name__)

#: tag naming the tier a pool instance waits for ("" once taken)
POOL_TAG = "ds-compute:pool"
#: seconds between two reports of an unchanged pool to the service
REPORT_EVERY = 60.0
#: seconds to wait after a failed launch before the next try (doubling, capped)
FAIL_BACKOFF = (10.0, 300.0)


class _PoolOwner:
    """Stands in for a spawner where the launcher's logs and tags read one."""

    def __init__(self, slug, zone):
        self.user = types.SimpleNamespace(name="", groups=[])
        self.name = ""
        self._log_name = f"warm pool {slug}/{zone}"
        self.volume = types.SimpleNamespace(zone=lambda: zone, volume_id="")


class PoolLauncher(EC2Backend):
    """An :class:`EC2Backend` that launches one pool instance: pool tags, no user,
    the bootstrap waiting :attr:`warm_pool_lifetime`, always terminated at shutdown."""

    def __init__(self, parent, slug, zone):
        super().__init__(parent)  # the configuration of the hub's spawners
        self.spawner = _PoolOwner(slug, zone)
        self.reuse_stopped = False
        self.on_stop = "terminate"
        self.spec_timeout = self.warm_pool_lifetime

    def _tags(self, tier):
        tags = dict(self.tags)
        tags.update(
            {
                "Name": f"ds-compute warm pool {tier.slug}",
                "ds-compute:hub": self.hub_id,
                POOL_TAG: tier.slug,
                "ds-compute:tier": tier.slug,
                "ds-compute:launch": self.launch_token,
            }
        )
        return tags


def _key_of(backend):
    endpoint = backend.endpoint_url or os.environ.get("AWS_ENDPOINT_URL", "")
    return (backend.region, endpoint, backend.hub_id, asyncio.get_running_loop())


class WarmPool:
    """The warm pools of one hub process: keeper, take, reports."""

    _instances: dict = {}

    def __init__(self, parent, tiers_wanted, *, service=None, log=None):
        #: the spawner whose configuration the launchers use
        self.parent = parent
        self.log = log or globals()["log"]
        #: tiers (``Tier``) with ``warm_pool > 0`` on the ec2 backend
        self.tiers = {t.slug: t for t in tiers_wanted}
        #: ``(url, token)`` of the service, or None (no reports)
        self.service = service
        probe = EC2Backend(parent)
        self.interval = probe.warm_pool_interval
        self.lifetime = probe.warm_pool_lifetime
        self.zones_setting = list(probe.warm_pool_zones)
        self.poller = probe.poller
        self._probe = probe
        #: (slug, zone) -> wanted count
        self.wanted: dict[tuple[str, str], int] = {}
        #: (slug, zone) -> ready entries {id, zone, tier, instance_type, ip, port, launch, since, ready_at}
        self.ready: dict[tuple[str, str], list[dict]] = {}
        self.launching: dict[tuple[str, str], set] = {}
        self._failures: dict[tuple[str, str], tuple[int, float]] = {}
        self._reported: dict[tuple[str, str], tuple[tuple, float]] = {}
        self._wake = asyncio.Event()
        self.task: asyncio.Task | None = None
        #: set by close(): the keeper's loop ends even if a cancellation is lost
        self._closed = False
        self._client = None
        #: launches the keeper made (tests, benchmarks)
        self.launches = 0

    # -- finding the pool ----------------------------------------------------------

    @classmethod
    def for_spawner(cls, spawner) -> WarmPool | None:
        """The hub's pools (started if needed) when its static ``profile_list`` has
        ec2 tiers with ``warm_pool > 0``; else None. Call inside the hub's loop."""
        profiles = spawner.profile_list
        if callable(profiles) or not profiles:
            return None
        try:
            wanted = [t for t in tiers.tiers_of(profiles) if t.warm_pool > 0]
        except tiers.TierConfigError:
            return None  # the spawner reports a broken profile_list itself
        if not wanted:
            return None
        on_ec2 = []
        for t in wanted:
            spec, setting = spawner._tier_backend_spec(t)
            try:
                cls_ = plugins.plugin_class(plugins.BACKENDS, spec, setting)
            except plugins.PluginError:
                continue
            if issubclass(cls_, EC2Backend):
                on_ec2.append(t)
            else:
                spawner.log.warning(
                    "Tier %s: warm_pool = %d ignored: only the ec2 backend keeps warm pools "
                    "(a local launcher or a Slurm job runs as its user and cannot wait unassigned)",
                    t.slug,
                    t.warm_pool,
                )
        if not on_ec2:
            return None
        service = None
        if spawner.service_api_url and spawner.service_api_token:
            service = (spawner.service_api_url, spawner.service_api_token)
        return cls.start(spawner, on_ec2, service=service)

    @classmethod
    def start(cls, parent, tiers_wanted, service=None) -> WarmPool:
        """The one pool keeper of ``parent``'s AWS settings in this loop, running."""
        key = _key_of(EC2Backend(parent))
        pool = cls._instances.get(key)
        if pool is None:
            for old in [k for k in cls._instances if k[3].is_closed()]:
                del cls._instances[old]
            pool = cls._instances[key] = cls(parent, tiers_wanted, service=service, log=parent.log)
        pool.ensure_running()
        return pool

    @classmethod
    def existing(cls, backend) -> WarmPool | None:
        """The running pools of ``backend``'s region, endpoint and hub id, or None."""
        try:
            return cls._instances.get(_key_of(backend))
        except RuntimeError:
            return None

    def ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, timeout: float = 10.0) -> None:
        """Stop keeping (the instances stay; tests terminate them).

        Waits at most ``timeout`` seconds for the keeper's tasks to end (a
        cancellation lost inside ``asyncio.wait_for`` lets a launch run on to
        its end; the keeper's loop itself stops on ``_closed``), so that a hub
        that stops never hangs on them."""
        self._closed = True
        tasks = [self.task] if self.task else []
        tasks += [t for ts in self.launching.values() for t in ts]
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                self.log.warning(
                    "Warm pool keeper: %d task(s) did not stop within %gs of being cancelled: %s",
                    len(pending),
                    timeout,
                    ", ".join(sorted(t.get_name() for t in pending)),
                )
        for k, v in list(self._instances.items()):
            if v is self:
                del self._instances[k]

    # -- taking ----------------------------------------------------------------------

    def _usable(self, entry, now=None):
        """Not too close to the end of its bootstrap's wait for a spec."""
        now = time.monotonic() if now is None else now
        return now - entry["ready_at"] < self._retire_age()

    def _retire_age(self):
        return self.lifetime - min(60.0, self.lifetime / 4)

    def take(self, slug, zone, instance_type) -> dict | None:
        """A ready instance of tier ``slug`` in ``zone`` (None: any zone) of
        ``instance_type``, removed from the pool; None if there is none.

        Synchronous on purpose: no other taker can run between the choice and
        the removal (one hub process owns its pools)."""
        now = time.monotonic()
        for (s, z), entries in self.ready.items():
            if s != slug or (zone and z != zone):
                continue
            for entry in entries:
                if entry["instance_type"] == instance_type and self._usable(entry, now):
                    entries.remove(entry)
                    self.log.info(
                        "Warm pool %s/%s: instance %s taken (%d left); replenishing",
                        s,
                        z,
                        entry["id"],
                        len(entries),
                    )
                    self._wake.set()
                    return entry
        return None

    def discard(self, entry, why) -> None:
        """A taken instance that could not be retagged: terminate it."""
        self.log.warning(
            "Warm pool %s/%s: terminating %s: %s", entry["tier"], entry["zone"], entry["id"], why
        )
        asyncio.ensure_future(self._terminate([entry["id"]]))

    def count(self, slug=None) -> int:
        return sum(len(v) for (s, _), v in self.ready.items() if slug is None or s == slug)

    # -- keeping -----------------------------------------------------------------------

    async def _setup(self) -> None:
        """The pool zones, and the end of untaken pool instances a previous hub process left."""
        subnets = await self._probe._subnets(None)
        zones_known = [az for _, az in subnets]
        zones = self.zones_setting or zones_known[:1]
        bad = [z for z in zones if z not in zones_known]
        if bad:
            self.log.error(
                "c.EC2Backend.warm_pool_zones lists %s, where no subnet of c.EC2Backend.subnet_ids is: "
                "no warm pool there",
                ", ".join(bad),
            )
        for slug, tier in self.tiers.items():
            for z in zones:
                if z in zones_known:
                    self.wanted[(slug, z)] = tier.warm_pool
                    self.ready.setdefault((slug, z), [])
                    self.launching.setdefault((slug, z), set())
                    self.log.info("Warm pool %s/%s: keeping %d instance(s) ready", slug, z, tier.warm_pool)
        stale = await self._probe.find_instances(
            [
                {"Name": "tag:ds-compute:hub", "Values": [self._probe.hub_id]},
                {"Name": "tag-key", "Values": [POOL_TAG]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ]
        )
        ids = [
            i["InstanceId"]
            for i in stale
            if aws.tag_dict(i.get("Tags")).get(POOL_TAG)
            and not aws.tag_dict(i.get("Tags")).get("ds-compute:user")
        ]
        if ids:
            self.log.warning("Warm pool: terminating %s, left untaken by a previous hub process", sorted(ids))
            await self._terminate(ids)

    async def _run(self) -> None:
        delay = 1.0
        # not "while True": Python 3.11's asyncio.wait_for (inside every AWS call)
        # swallows a cancellation that arrives as its call completes (gh-86296),
        # and the loop would then go on for ever
        while not self._closed:
            try:
                if not self.wanted:
                    await self._setup()
                await self._round()
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log.warning("Warm pool keeper: %s; retrying in %.0fs", e, delay, exc_info=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    async def _round(self) -> None:
        answer = await self.poller.all_instances(self.interval)
        now = time.monotonic()
        for key, n in self.wanted.items():
            slug, zone = key
            keep, retire = [], []
            for entry in self.ready[key]:
                inst = answer.get(entry["id"])
                state = (inst or {}).get("State", {}).get("Name")
                if inst is not None and state not in ("pending", "running"):
                    self.log.warning(
                        "Warm pool %s/%s: instance %s is %s; replacing it", slug, zone, entry["id"], state
                    )
                elif not self._usable(entry, now):
                    retire.append(entry["id"])
                else:
                    keep.append(entry)
            if retire:
                self.log.info(
                    "Warm pool %s/%s: retiring %s before its bootstrap stops waiting (%gs)",
                    slug,
                    zone,
                    retire,
                    self.lifetime,
                )
                await self._terminate(retire)
            self.ready[key] = keep
            tasks = self.launching[key]
            missing = n - len(keep) - len(tasks)
            fails, next_try = self._failures.get(key, (0, 0.0))
            if missing > 0 and now >= next_try and not self._closed:
                for _ in range(missing):
                    task = asyncio.ensure_future(self._launch(key))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            await self._report(key)

    async def _launch(self, key) -> None:
        slug, zone = key
        tier = self.tiers[slug]
        launcher = PoolLauncher(self.parent, slug, zone)
        started = time.monotonic()
        try:
            inst = await launcher._acquire(tier, zone)
            self.launches += 1
            await launcher._resolve_address(inst)
            await launcher._wait_bootstrap()
        except asyncio.CancelledError:
            if launcher.instance_id:
                await self._terminate([launcher.instance_id])
            raise
        except Exception as e:
            message = getattr(e, "message", None) or str(e)
            fails = self._failures.get(key, (0, 0.0))[0] + 1
            wait = min(FAIL_BACKOFF[1], FAIL_BACKOFF[0] * 2 ** (fails - 1))
            self._failures[key] = (fails, time.monotonic() + wait)
            self.log.warning(
                "Warm pool %s/%s: launch failed (%s); next try in %.0fs", slug, zone, message, wait
            )
            if launcher.instance_id:
                await self._terminate([launcher.instance_id])
            return
        self._failures.pop(key, None)
        entry = {
            "id": launcher.instance_id,
            "zone": launcher.zone,
            "tier": slug,
            "instance_type": launcher.instance_type,
            "ip": launcher.ip,
            "port": launcher._port_override or launcher.port,
            "launch": launcher.launch_token,
            "since": time.time(),
            "ready_at": time.monotonic(),
        }
        self.ready[key].append(entry)
        self.log.info(
            "Warm pool %s/%s: instance %s (%s) ready in %.1fs (%d of %d)",
            slug,
            zone,
            entry["id"],
            entry["instance_type"],
            time.monotonic() - started,
            len(self.ready[key]),
            self.wanted[key],
        )
        self._wake.set()

    async def _terminate(self, ids) -> None:
        try:
            await self._probe.aws("ec2", "terminate_instances", InstanceIds=list(ids))
        except Exception as e:
            self.log.warning("Warm pool: could not terminate %s: %s", ids, e)

    # -- reports to the service ---------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True, max_clients=2)
        return self._client

    async def _report(self, key) -> None:
        if self.service is None:
            return
        slug, zone = key
        entries = self.ready.get(key, [])
        ids = tuple(sorted(e["id"] for e in entries))
        last = self._reported.get(key)
        if last is not None and last[0] == ids and time.monotonic() - last[1] < REPORT_EVERY:
            return
        url, token = self.service
        body = {
            "tier": slug,
            "zone": zone,
            "instances": [{"id": e["id"], "since": e["since"]} for e in entries],
        }
        req = HTTPRequest(
            (url if url.endswith("/") else url + "/") + "api/hub/pool",
            method="POST",
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
            body=json.dumps(body),
            connect_timeout=5,
            request_timeout=10,
        )
        try:
            resp = await self.client.fetch(req, raise_error=False)
        except Exception as e:
            self.log.warning("Warm pool %s/%s: could not report to the ds-compute service: %s", slug, zone, e)
            return
        if resp.code >= 300:
            self.log.warning(
                "Warm pool %s/%s: the ds-compute service answered %s: %s",
                slug,
                zone,
                resp.code,
                (resp.body or b"")[:200],
            )
            return
        self._reported[key] = (ids, time.monotonic())
