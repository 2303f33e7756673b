"""The hub side of make before break: one watch on the service for machines to prepare.

A switch asks for its target machine first (``service/prepare.py``). The
hub's REST API has no call for that and ``c.JupyterHub.extra_handlers`` is
deprecated, so the hub process watches the service instead, over the same
spawner ↔ service channel as budgets (:mod:`.spawnpolicy`: the service's
own address, the shared token):

- :class:`AheadWatch` (one per hub process and service) long-polls
  ``GET api/hub/prepare?version=N&wait=25`` on a client of its own (the
  hub's shared HTTP client keeps all its slots for the proxy and the rest),
  started by the first spawner that has a service to ask;
- for each wanted machine it finds the server's spawner (every spawner
  registers itself when it is created; the hub creates one for every
  running server at its start) and calls
  :meth:`~jupyter_ds_compute.spawner.DSComputeSpawner.prepare_ahead`, which
  reports ``preparing``/``ready``/``failed``/``unsupported`` through
  ``POST api/hub/prepared``;
- a prepared machine no longer wanted (the switch ended, failed, or the
  service restarted without it) is released; one not taken within its
  switch's ``timeout`` is released by the spawner itself.

It is level-triggered: every answer is the whole wanted set, so a restart of
the hub or of the service loses nothing and leaks nothing (a local launcher
ends with the hub; see ``backends/launcher.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

__all__ = ["AheadWatch"]

log = logging.getLogger(__name__)

#: seconds one watch call may wait at the service
WATCH_WAIT = 25


class AheadWatch:
    """One long-poll loop per (service url, token) in this hub process (and event loop)."""

    _instances: dict = {}

    def __init__(self, url: str, token: str, *, log=None):
        self.url = url if url.endswith("/") else url + "/"
        self.token = token
        self.log = log or globals()["log"]
        self.spawners: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        #: (user, server) -> the machine prepared for its switch (the spawner's ``_ahead``)
        self.prepared: dict[tuple[str, str], dict] = {}
        self.version = 0
        self.task: asyncio.Task | None = None
        self._client = None

    @classmethod
    def for_spawner(cls, spawner) -> AheadWatch | None:
        """The watch of ``spawner``'s service (started if needed), with ``spawner`` registered."""
        url, token = spawner.service_api_url, spawner.service_api_token
        if not (url and token):
            return None
        loop = asyncio.get_running_loop()
        key = (url, token, loop)
        watch = cls._instances.get(key)
        if watch is None:
            # a loop that ended (tests run one per test) takes its watch with it
            for old in [k for k in cls._instances if k[2].is_closed()]:
                del cls._instances[old]
            watch = cls._instances[key] = cls(url, token, log=spawner.log)
        watch.spawners[(spawner.user.name, spawner.name or "")] = spawner
        watch.ensure_running()
        return watch

    def ensure_running(self) -> None:
        if self.task is not None and not self.task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the next start or poll starts it
        self.task = loop.create_task(self._run())

    @property
    def client(self):
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True, max_clients=4)
        return self._client

    async def _call(self, method: str, path: str, body=None, timeout: float = 10.0):
        req = HTTPRequest(
            self.url + path,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            connect_timeout=5,
            request_timeout=timeout,
        )
        return await self.client.fetch(req, raise_error=False)

    async def _run(self) -> None:
        delay = 1.0
        failing = False
        while True:
            try:
                resp = await self._call(
                    "GET",
                    f"api/hub/prepare?version={self.version}&wait={WATCH_WAIT}",
                    timeout=WATCH_WAIT + 10,
                )
                if resp.code != 200:
                    raise OSError(f"HTTP {resp.code}: {resp.body[:200] if resp.body else b''!r}")
                snapshot = json.loads(resp.body)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not failing:
                    self.log.warning(
                        "Cannot watch the ds-compute service at %s for switches to prepare (%s); "
                        "retrying (switches stop the old server first meanwhile)",
                        self.url,
                        e,
                    )
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if failing:
                self.log.info("Watching the ds-compute service at %s again", self.url)
            failing, delay = False, 1.0
            self.version = int(snapshot.get("version", 0))
            self.reconcile(snapshot.get("wanted") or [])

    def reconcile(self, wanted: list[dict]) -> None:
        """Prepare what is wanted and not yet prepared; release what no longer is."""
        ids = set()
        for intent in wanted:
            sid = intent.get("switch")
            if not isinstance(sid, str):
                continue
            ids.add(sid)
            spawner = self.spawners.get((intent.get("user"), intent.get("server_name") or ""))
            if spawner is None:
                asyncio.ensure_future(
                    self.report(sid, "unsupported", "the hub has not loaded that server's spawner")
                )
                continue
            spawner.want_prepared(intent, self)
        for key in list(self.prepared):
            spawner = self.spawners.get(key)
            if spawner is not None:
                spawner.release_prepared_unless(ids)

    async def report(self, switch_id: str, status: str, message: str = "", host: str = "") -> bool:
        """Tell the service; False when it no longer wants that machine (release it)."""
        body = {"switch": switch_id, "status": status, "message": message, "host": host}
        try:
            resp = await self._call("POST", "api/hub/prepared", body)
        except Exception as e:
            self.log.warning(
                "Could not report %s of switch %s to the ds-compute service: %s", status, switch_id, e
            )
            return True  # keep it; the next watch answer decides
        if resp.code == 404:
            return False
        if resp.code >= 300:
            self.log.warning(
                "The ds-compute service answered %s to the %s report of switch %s",
                resp.code,
                status,
                switch_id,
            )
        return True
