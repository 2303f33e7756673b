"""The test doubles the unit tests share, in one place.

- :class:`Memory`, :class:`MemoryBackend`, :class:`MemoryVolume`: an in-memory
  machine, backend and volume driver that implement the contracts of
  ``backends/base.py`` and ``volumes/base.py``, record every call, and can be
  told to fail at a step or to have the server exit during start.
- :func:`make_spawner`, :func:`hub_spawn`, :func:`hub_stop`: a
  ``DSComputeSpawner`` built the way JupyterHub builds one
  (``jupyterhub.user.User`` over an in-memory hub database, as JupyterHub's
  own ``tests/test_spawner.py`` does) and the hub's side of a start and a
  stop (``User.spawn`` / ``User.stop``, trimmed to what a spawner sees).
- :class:`FakeSpawner`: the little of a spawner a backend or volume driver
  uses on its own; :class:`TraitsSpawner`: a traits object for the override
  tests of ``tiers.py``.
- :class:`FakeService`: the ds-compute service's ``api/tiers``,
  ``api/policy`` and ``api/switches`` over HTTP; :class:`TokenUsers`: a
  jupyter-server identity provider where each token is one user.
- :class:`FakeHub`: the hub REST calls the switch orchestrator makes, on
  in-memory server models, plus :func:`new_switch` and :func:`statuses`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

from jupyter_server.auth.identity import IdentityProvider, User
from tornado import httpserver, netutil, web
from traitlets import Any, Dict, Integer, List, Unicode, default
from traitlets.config import Config, HasTraits, LoggingConfigurable

from jupyter_ds_compute.backends.base import Backend, BackendError, HostInfo
from jupyter_ds_compute.service.hubapi import HubAPIError
from jupyter_ds_compute.volumes.base import VolumeDriver, VolumeError

# -- an in-memory machine, backend and volume driver ------------------------------------


class Memory:
    """The world :class:`MemoryBackend` and :class:`MemoryVolume` act on.

    ``calls``: every contract call, in order, as ``(name, detail)``, e.g.
    ``("backend.start", "gpu")``, ``("volume.detach", "mem-alice")``.
    ``servers``: running servers by key (``user/server``): ``{"tier", "cmd",
    "env", "path", "status"}`` (``status`` None while running).
    ``volumes``: existing volumes by id: ``{"attached_to", "owner"}``.

    ``fail(step, error)`` makes the contract call ``step`` (``"backend.start"``,
    ``"volume.attach"``, ...) raise ``error`` (a ``BackendError`` /
    ``VolumeError`` by default); ``exit_during_start = 3`` makes every server
    exit with status 3 right after ``start`` (before it answers HTTP).
    ``address``: what ``start`` returns (point it at a tiny HTTP server so
    the spawner's readiness check succeeds).
    """

    def __init__(self, address=("127.0.0.1", 1)):
        self.calls = []
        self.servers = {}
        self.volumes = {}
        self.failures = {}
        self.exit_during_start = None
        self.address = tuple(address)

    def __deepcopy__(self, memo):
        # traitlets deep-copies config values: every backend and volume made
        # from ``c.MemoryBackend.memory = m`` must act on the same world
        return self

    def fail(self, step, error=None):
        if error is None:
            cls = BackendError if step.startswith("backend.") else VolumeError
            error = cls(f"{step} failed (test)", log_message=f"{step} failed: injected by the test")
        self.failures[step] = error

    def record(self, step, detail=None):
        self.calls.append((step, detail))
        error = self.failures.get(step)
        if error is not None:
            raise error

    def steps(self, prefix=""):
        """The names of the calls so far (those starting with ``prefix``)."""
        return [name for name, _ in self.calls if name.startswith(prefix)]

    def attached(self):
        """Ids of the volumes attached somewhere."""
        return sorted(vid for vid, v in self.volumes.items() if v["attached_to"])

    def running(self):
        """Keys of the servers that run."""
        return sorted(key for key, s in self.servers.items() if s["status"] is None)


class MemoryBackend(Backend):
    """A backend whose servers are entries in :class:`Memory` (``c.MemoryBackend.memory``)."""

    name = "memory"

    memory = Any(help="The Memory this backend acts on.").tag(config=True)

    @default("memory")
    def _default_memory(self):
        return Memory()

    owner_ids = Any(None, allow_none=True, help="What owner() returns.").tag(config=True)

    def __init__(self, spawner, **kwargs):
        super().__init__(spawner, **kwargs)
        self.key = ""

    def _key(self):
        return f"{self.spawner.user.name}/{self.spawner.name}"

    async def owner(self):
        self.memory.record("backend.owner")
        return self.owner_ids

    async def prepare(self, tier):
        self.memory.record("backend.prepare", tier.slug)
        self.emit(f"Found a memory machine for {tier.slug}")
        return HostInfo(kind="local", id="memory-host")

    def bind(self):
        self.memory.record("backend.bind")
        return self.memory.address

    async def start(self, tier, cmd, env, volume_path, keep_root=False):
        self.memory.record("backend.start", tier.slug)
        self.key = self._key()
        self.memory.servers[self.key] = {
            "tier": tier.slug,
            "cmd": list(cmd),
            "env": dict(env),
            "path": volume_path,
            "keep_root": keep_root,
            "status": self.memory.exit_during_start,
        }
        return self.memory.address

    async def poll(self):
        self.memory.record("backend.poll")
        server = self.memory.servers.get(self.key)
        if server is None:
            return 0
        return server["status"]

    async def stop(self, now=False):
        self.memory.record("backend.stop", now)
        server = self.memory.servers.get(self.key)
        if server is not None and server["status"] is None:
            server["status"] = 0

    async def release(self):
        self.memory.record("backend.release")

    async def log_tail(self, lines=30):
        return "memory server log: last line"

    def get_state(self):
        return {"server": self.key} if self.key else {}

    def load_state(self, state):
        self.key = state.get("server", "")


class MemoryVolume(VolumeDriver):
    """A volume driver whose volumes are entries in :class:`Memory` (``c.MemoryVolume.memory``)."""

    name = "memory"

    memory = Any(help="The Memory this driver acts on.").tag(config=True)

    @default("memory")
    def _default_memory(self):
        return Memory()

    def _id(self):
        name = self.spawner.name
        return f"mem-{self.spawner.user.name}" + (f"--{name}" if name else "")

    async def ensure(self):
        self.memory.record("volume.ensure")
        self.volume_id = self.volume_id or self._id()
        self.memory.volumes.setdefault(self.volume_id, {"attached_to": None, "owner": self.owner})
        return self.volume_id

    async def attach(self, host):
        self.memory.record("volume.attach", host.id)
        vol = self.memory.volumes[self.volume_id]
        if vol["attached_to"] not in (None, host.id):
            raise VolumeError(f"Volume {self.volume_id} is attached to {vol['attached_to']}")
        vol["attached_to"] = host.id
        return f"/memory/{self.volume_id}"

    async def detach(self):
        self.memory.record("volume.detach", self.volume_id)
        vol = self.memory.volumes.get(self.volume_id)
        if vol is not None:
            vol["attached_to"] = None

    async def describe(self):
        self.memory.record("volume.describe", self.volume_id)
        vol = self.memory.volumes.get(self.volume_id) or {}
        return {"attached_to": vol.get("attached_to"), "size_bytes": 2**30}

    async def delete(self):
        self.memory.record("volume.delete", self.volume_id)
        vid = self.volume_id or self._id()
        vol = self.memory.volumes.get(vid)
        if vol is None:
            return {"id": "", "deleted": [], "kept": []}
        if vol["attached_to"]:
            raise VolumeError(f"Volume {vid} is attached to {vol['attached_to']}")
        del self.memory.volumes[vid]
        return {"id": vid, "deleted": [f"volume {vid}"], "kept": []}


class CloudMemoryVolume(MemoryVolume):
    """A MemoryVolume that is deleted with its user by default (like ebs, efs)."""

    name = "memory-cloud"
    delete_by_default = True


# -- a DSComputeSpawner without a hub process -------------------------------------------


class ReadyServer:
    """A tiny HTTP server in a thread that answers 200 to everything: what the
    spawner's readiness check (``_wait_ready``) meets instead of a real server."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.address = ("127.0.0.1", self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def hub_db():
    """An in-memory JupyterHub database (a fresh schema)."""
    from jupyterhub import orm

    return orm.new_session_factory("sqlite:///:memory:")()


def make_spawner(
    db, name="alice", server_name="", config=None, memory=None, groups=(), admin=False, **traits
):
    """A ``DSComputeSpawner`` of hub user ``name`` as ``User._new_spawner`` makes it.

    The backend and volume driver are :class:`MemoryBackend` /
    :class:`MemoryVolume` on ``memory`` unless ``config`` says otherwise;
    ``traits`` are spawner traits (``profile_list=...``).
    """
    from jupyterhub import orm
    from jupyterhub.objects import Hub
    from jupyterhub.user import User as HubUser

    from jupyter_ds_compute.spawner import DSComputeSpawner

    cfg = Config()
    cfg.DSComputeSpawner.backend = MemoryBackend
    cfg.DSComputeSpawner.volume_driver = MemoryVolume
    cfg.DSComputeSpawner.ready_poll_interval = 0.005
    if memory is not None:
        cfg.MemoryBackend.memory = memory
        cfg.MemoryVolume.memory = memory
    if config is not None:
        cfg.merge(config)
    orm_user = db.query(orm.User).filter_by(name=name).one_or_none()
    if orm_user is None:
        orm_user = orm.User(name=name, admin=admin)
        db.add(orm_user)
        for group in groups:
            orm_group = db.query(orm.Group).filter_by(name=group).one_or_none() or orm.Group(name=group)
            db.add(orm_group)
            orm_user.groups.append(orm_group)
        db.commit()
    user = HubUser(orm_user, {"hub": Hub(), "config": cfg, "allow_named_servers": True})
    if server_name and server_name not in user.orm_spawners:
        user._new_orm_spawner(server_name)
    return user._new_spawner(server_name, spawner_class=DSComputeSpawner, **traits)


async def hub_spawn(spawner, options=None):
    """What ``jupyterhub.user.User.spawn`` does around ``Spawner.start``.

    Stores ``options`` (``None``: the stored ones), makes the server's
    record, runs the ``apply_user_options`` hook and ``start``; on failure,
    does the hub's cleanup (:func:`hub_stop`) and re-raises. Returns what
    ``start`` returned.
    """
    from jupyterhub import orm
    from jupyterhub.objects import Server

    db = spawner.user.db
    if options is None:
        options = spawner.orm_spawner.user_options or {}
    else:
        spawner.orm_spawner.user_options = options
        db.commit()
    base_url = spawner.user.base_url + (f"{spawner.name}/" if spawner.name else "")
    orm_server = orm.Server(base_url=base_url)
    db.add(orm_server)
    spawner.orm_spawner.server = orm_server
    db.commit()
    spawner.server = Server(orm_server=orm_server)
    spawner.user_options = options
    spawner.clear_state()
    spawner.api_token = "test-api-token"
    try:
        await spawner._run_apply_user_options(spawner.user_options)
        result = await spawner.start()
    except BaseException:
        await hub_stop(spawner)
        raise
    spawner.orm_spawner.state = spawner.get_state()
    db.commit()
    return result


async def hub_stop(spawner):
    """What ``jupyterhub.user.User.stop`` does around ``Spawner.stop``."""
    db = spawner.user.db
    if await spawner.poll() is None:
        await spawner.stop()
    spawner.server = None
    spawner.clear_state()
    spawner.orm_spawner.state = spawner.get_state()
    db.commit()


# -- what a backend or volume driver sees of a spawner ----------------------------------


class FakeSpawner(LoggingConfigurable):
    """The little of a ``DSComputeSpawner`` a backend or volume driver uses on its own."""

    def __init__(self, user="alice", name="", config=None, user_options=None, volume=None):
        super().__init__(config=config or Config())
        self.user = SimpleNamespace(name=user, groups=[])
        self.name = name
        self._log_name = f"{user}:{name}" if name else user
        self.user_options = user_options or {}
        self.volume = volume


class TraitsSpawner(HasTraits):
    """The few traits the override tests of ``tiers.py`` need, and a logger."""

    image = Unicode("base-image")
    environment = Dict()
    cmd = List(["jupyterhub-singleuser"])
    mem_limit = Integer(None, allow_none=True)
    notebook_dir = Unicode()
    plain_attribute = "plain"

    @default("notebook_dir")
    def _notebook_dir_default(self):
        return "/home/" + self.image

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.log = logging.getLogger("test-traits-spawner")


# -- the ds-compute service and identities, for the server extension and the magics -----


class TokenUsers(IdentityProvider):
    """Test double of JupyterHub's identity provider: each token is one user
    (``users``; a subclass adds its own)."""

    users = {"alice-token": "alice", "bob-token": "bob"}

    async def get_user_token(self, handler):
        name = self.users.get(self.get_token(handler) or "")
        return User(username=name) if name else None


class FakeService:
    """The hub service's ``api/tiers``, ``api/policy`` and ``api/switches`` over
    HTTP on 127.0.0.1, recording every call as ``{"method", "path", "auth", "body"}``.

    Each ``*_reply`` is ``(status, body)`` (body: JSON-able, or ``bytes``/``str``
    sent as they are) or a callable of the request body returning one.
    ``delay``: seconds before each answer. Start it on the loop the client
    runs on (``await fake.start()``).
    """

    def __init__(self, tiers_reply=None, policy_reply=None, switch_reply=None):
        self.sockets = netutil.bind_sockets(0, "127.0.0.1")
        port = self.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/services/ds-compute/"
        self.calls = []
        self.tiers_reply = tiers_reply or (200, {"tiers": []})
        self.policy_reply = policy_reply or (200, {"budget": None, "notices": []})
        self.switch_reply = switch_reply or (
            202,
            {"id": "sw1", "progress_url": "/services/ds-compute/switches/sw1?next=/user/alice/lab"},
        )
        self.delay = 0.0
        self.server = None

    async def start(self):
        fake = self

        class Handler(web.RequestHandler):
            async def handle(self):
                body = json.loads(self.request.body) if self.request.body else None
                fake.calls.append(
                    {
                        "method": self.request.method,
                        "path": self.request.path,
                        "auth": self.request.headers.get("Authorization"),
                        "body": body,
                    }
                )
                if fake.delay:
                    await asyncio.sleep(fake.delay)
                if self.request.path.endswith("/api/tiers"):
                    reply = fake.tiers_reply
                elif self.request.path.endswith("/api/policy"):
                    reply = fake.policy_reply
                else:
                    reply = fake.switch_reply
                code, answer = reply(body) if callable(reply) else reply
                self.set_status(code)
                if answer in (b"", ""):  # a 204 (tornado refuses even an empty chunk then)
                    return self.finish()
                self.finish(answer if isinstance(answer, (bytes, str)) else json.dumps(answer))

            get = post = handle

        self.server = httpserver.HTTPServer(web.Application([(r"/services/ds-compute/api/.*", Handler)]))
        self.server.add_sockets(self.sockets)

    def stop(self):
        if self.server:
            self.server.stop()
        for s in self.sockets:
            s.close()


# -- the hub REST API the switch orchestrator calls ---------------------------------------


class FakeHub:
    """The few hub API calls the orchestrator makes, on in-memory servers.

    ``broken`` tiers fail to start (the server goes back to stopped and the
    progress stream says why); ``fail_stop`` makes DELETE fail.
    """

    poll_interval = 0.001

    def __init__(self):
        self.servers = {}
        self.broken = set()
        self.crash_in_post = set()
        self.fail_stop = False
        self.calls = []
        self.spawn_delay = 0.01

    def add(self, user, name="", profile="small", ready=True):
        self.servers[(user, name)] = {
            "name": name,
            "ready": ready,
            "pending": None,
            "stopped": not ready,
            "user_options": {"profile": profile} if profile else {},
        }

    async def get_user(self, user):
        return {"name": user, "groups": []}

    async def get_server(self, user, name=""):
        m = self.servers.get((user, name))
        return None if m is None else dict(m)

    async def stop_server(self, user, name=""):
        self.calls.append(("DELETE", user, name))
        if self.fail_stop:
            raise HubAPIError(500, "stop exploded", method="DELETE", path="/x")
        m = self.servers[(user, name)]
        m.update(ready=False, pending=None, stopped=True)
        return 204

    async def patch_user_options(self, user, name, options):
        self.calls.append(("PATCH", user, name, dict(options)))
        m = self.servers[(user, name)]
        if not m["stopped"]:
            raise HubAPIError(400, "is active", method="PATCH", path="/x")
        m["user_options"] = dict(options)
        return dict(m)

    async def start_server(self, user, name, options):
        self.calls.append(("POST", user, name, dict(options)))
        m = self.servers[(user, name)]
        if options.get("profile") in self.crash_in_post:
            # the hub's bare 500 when the server dies while the POST waits
            raise HubAPIError(500, "Internal Server Error", method="POST", path="/x")
        if m["ready"]:
            return "already-running"
        m.update(pending="spawn", stopped=False, user_options=dict(options))
        asyncio.get_running_loop().call_later(self.spawn_delay, self._spawned, m, options)
        return "pending"

    def _spawned(self, m, options):
        if options.get("profile") in self.broken:
            m.update(pending=None, ready=False, stopped=True)
        else:
            m.update(pending=None, ready=True, stopped=False)

    async def wait_for(self, user, name, done, timeout, what):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            model = await self.get_server(user, name)
            if done(model):
                return model
            if loop.time() > deadline:
                raise asyncio.TimeoutError(f"{user}:{name} not {what} after {timeout:g}s")
            await asyncio.sleep(self.poll_interval)

    async def wait_stopped(self, user, name, timeout):
        return await self.wait_for(
            user, name, lambda m: m is None or (m["stopped"] and not m["pending"]), timeout, "stopped"
        )

    async def progress(self, user, name, on_event, timeout):
        m = self.servers[(user, name)]
        if m["stopped"] and not m["pending"]:
            on_event({"progress": 100, "failed": True, "message": "Spawn failed: exit status 3"})
            return
        on_event({"progress": 50, "message": "Launching on the fake backend"})
        while m["pending"]:
            await asyncio.sleep(0.001)
        if m["ready"]:
            on_event({"progress": 100, "ready": True, "message": "Server ready"})
        else:
            on_event({"progress": 100, "failed": True, "message": "Spawn failed: tier is broken"})


def new_switch(store, to="gpu", user="alice", name=""):
    """A pending switch of ``user:name`` from small to ``to`` in ``store``."""
    return store.create_switch(
        user=user,
        server_name=name,
        requested_by=user,
        from_profile="small",
        to_profile=to,
        from_options={"profile": "small"},
        to_options={"profile": to},
    )


def statuses(rec):
    """``{step name: status}`` of a switch record."""
    return {s["name"]: s["status"] for s in rec["steps"]}
