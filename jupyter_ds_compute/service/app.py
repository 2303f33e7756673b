"""The ``ds-compute`` hub service: switch a user's server between tiers.

A managed JupyterHub service (tornado + HubOAuth). It answers the switch
requests of the server extension (with the server's own token) and of users
(a user token, or the browser's HubOAuth cookie for the pages), then stops
the server and starts it again with the new ``user_options`` through the hub
REST API, recording every step and outcome in SQLite.

Configured one way: ``c.DSComputeService.*`` (and ``c.PolicySettings.*``).
``hubconfig.configure(c)`` hands the hub's final config to the service as
one JSON traitlets config in ``$DS_COMPUTE_SERVICE_CONFIG``; run by hand,
the command line (``--data-dir``, ...) and ``--config <file.py>`` work, and
the command line wins. ``--help-all`` lists every setting.

Hub configuration without ``configure(c)`` (``jupyterhub_config.py``)::

    import json, sys
    c.JupyterHub.services = [{
        "name": "ds-compute",
        "url": "http://127.0.0.1:10101",           # proxy route + JUPYTERHUB_SERVICE_URL
        "command": [sys.executable, "-m", "jupyter_ds_compute.service"],
        "oauth_no_confirm": True,                   # no "Authorize access" page
        "environment": {
            "DS_COMPUTE_SERVICE_CONFIG": json.dumps({"DSComputeService": {
                "profile_list": profile_list,
                "data_dir": "/srv/jupyterhub/ds-compute",
            }}),
        },
    }]
    # the minimum: `servers` = read/start/delete (and PATCH user_options of)
    # servers; `read:users:groups` = the owner's groups for tier checks.
    # Not needed: read:users, admin:servers, admin:users.
    c.JupyterHub.load_roles = [{
        "name": "ds-compute",
        "scopes": ["servers", "read:users:groups"],
        "services": ["ds-compute"],
    }]
    # browsers (pages, OAuth) and user tokens may reach the service
    c.JupyterHub.extra_user_scopes = {"access:services!service=ds-compute"}
    # servers' tokens may call it (keep the two defaults)
    c.Spawner.server_token_scopes = [
        "users:activity!user",
        "access:servers!server",
        "access:services!service=ds-compute",
    ]

Environment read: JupyterHub's own (``JUPYTERHUB_API_URL``,
``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_SERVICE_URL``,
``JUPYTERHUB_SERVICE_PREFIX``, ``JUPYTERHUB_BASE_URL``,
``JUPYTERHUB_CLIENT_ID`` and friends), ``DS_COMPUTE_SERVICE_CONFIG`` (the
config) and ``DS_COMPUTE_SPAWNER_TOKEN`` (the secret of the spawner's
``api/hub/*`` calls).

One instance per store: the service holds an exclusive lock
(``fcntl.flock``) on ``<data_dir>/service.lock`` while it runs (see
:func:`lock_data_dir`), and, started by the hub, it stops when the hub that
started it is gone (its parent process changes), leaving switches in flight
to the next instance's reconcile.

Run by hand: ``python -m jupyter_ds_compute.service --help-all``.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import secrets
import signal
import sys
import time
from textwrap import dedent
from urllib.parse import urlparse

import jinja2
from jupyterhub.services.auth import HubOAuth
from tornado import web
from tornado.httpserver import HTTPServer
from traitlets import Any, Bool, Float, Unicode, default, validate
from traitlets.config import Application, Config

from .. import tiers
from .._version import __version__
from ..policy import PolicySettings
from .accounting import LivePolicy
from .admin import admin_handlers
from .decisions import decisions_handlers
from .grants import Grants
from .handlers import default_handlers
from .hubapi import HubAPI
from .hubside import hub_handlers
from .idle import IdleWatcher
from .metrics import make_registry
from .orchestrator import Orchestrator
from .requestpage import request_page_handlers
from .store import Store
from .tiersource import TierSource

__all__ = ["DSComputeService", "create_application", "main"]

HERE = os.path.dirname(os.path.abspath(__file__))

#: what the command line of a ds-compute service process contains
SERVICE_MODULE = "jupyter_ds_compute.service"


class DSComputeService(Application, PolicySettings):
    """The ds-compute JupyterHub service (its policy settings: :class:`.PolicySettings`)."""

    name = "jupyter-ds-compute-service"
    version = __version__
    description = "Switch JupyterHub servers between compute tiers (a JupyterHub service)."

    aliases = {
        "config": "DSComputeService.config_file",
        "data-dir": "DSComputeService.data_dir",
        "db-url": "DSComputeService.db_url",
        "service-url": "DSComputeService.service_url",
        "stop-timeout": "DSComputeService.stop_timeout",
        "start-timeout": "DSComputeService.start_timeout",
        "log-level": "Application.log_level",
    }

    config_file = Unicode(
        "",
        help="A Python config file (``c.DSComputeService.x = ...``) to load, if any (run by hand).",
    ).tag(config=True)

    classes = [PolicySettings]

    hub_api_url = Unicode(
        help=dedent("""
            The hub's REST API, e.g. ``http://127.0.0.1:8081/hub/api``.
            Default: ``$JUPYTERHUB_API_URL`` (set by the hub).
            """).strip()
    ).tag(config=True)

    @default("hub_api_url")
    def _default_hub_api_url(self):
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    api_token = Unicode(help="The service's token for the hub API. Default: ``$JUPYTERHUB_API_TOKEN``.").tag(
        config=True
    )

    @default("api_token")
    def _default_api_token(self):
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    service_url = Unicode(
        help=dedent("""
            Where the service listens, e.g. ``http://127.0.0.1:10101``.
            Default: ``$JUPYTERHUB_SERVICE_URL`` (the service's ``url`` in the hub config).
            """).strip()
    ).tag(config=True)

    @default("service_url")
    def _default_service_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    service_prefix = Unicode(
        help="URL prefix of the service. Default: ``$JUPYTERHUB_SERVICE_PREFIX`` or ``/services/ds-compute/``."
    ).tag(config=True)

    @default("service_prefix")
    def _default_service_prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/ds-compute/")

    base_url = Unicode(
        help="The hub's base URL (``c.JupyterHub.base_url``). Default: ``$JUPYTERHUB_BASE_URL`` or ``/``."
    ).tag(config=True)

    @default("base_url")
    def _default_base_url(self):
        return os.environ.get("JUPYTERHUB_BASE_URL", "/")

    @validate("service_prefix", "base_url")
    def _slashes(self, proposal):
        value = proposal["value"] or "/"
        if not value.startswith("/"):
            value = "/" + value
        if not value.endswith("/"):
            value += "/"
        return value

    data_dir = Unicode(
        help=dedent("""
            Directory of the service's database, lock and cookie secret.
            Created if absent. Only the service opens it (the hub asks the
            service over its API), so it may be anywhere the service's user
            can write. Default: ``./ds-compute-service`` (relative to the
            hub's working directory).

            Example: ``c.DSComputeService.data_dir = "/srv/jupyterhub/ds-compute"``
            """).strip()
    ).tag(config=True)

    @default("data_dir")
    def _default_data_dir(self):
        return os.path.abspath("ds-compute-service")

    db_url = Unicode(
        help=dedent("""
            SQLite URL of the switch records and audit log.
            Default: ``sqlite:///<data_dir>/ds-compute.sqlite``.
            """).strip()
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self):
        return "sqlite:///" + os.path.join(self.data_dir, "ds-compute.sqlite")

    profile_list = Any(
        None,
        allow_none=True,
        help=dedent("""
            The static fallback tiers (list, or dict keyed by slug): used for
            a server whose spawner state has no tier catalogue yet. The tiers
            of a server come from its spawner (``state["tiers"]``, evaluated
            for its user at its last start, callables included; see
            docs/internals.md). ``configure(c)`` sets this from a list or dict
            ``c.DSComputeSpawner.profile_list`` (none for a callable one).
            """).strip(),
    ).tag(config=True)

    spawner_token = Unicode(
        help=dedent("""
            The secret of the spawner's calls (``api/hub/budget``,
            ``api/hub/events``); ``configure(c)`` makes one per hub start.
            Empty: those calls are refused. Default: ``$DS_COMPUTE_SPAWNER_TOKEN``.
            """).strip()
    ).tag(config=True)

    @default("spawner_token")
    def _default_spawner_token(self):
        return os.environ.get("DS_COMPUTE_SPAWNER_TOKEN", "")

    stop_timeout = Float(300, help="Seconds to wait for a server to stop (DELETE until ``stopped``).").tag(
        config=True
    )

    start_timeout = Float(
        600,
        help=dedent("""
            Seconds to wait for a server to be ready after the start request
            (also bounds waiting for a pending start or stop at reconcile).
            """).strip(),
    ).tag(config=True)

    request_timeout = Float(30, help="Seconds to wait for one answer of the hub API.").tag(config=True)

    make_before_break = Bool(
        True,
        help=dedent("""
            Prepare the target machine of a switch while the old server keeps
            serving, and stop the old one only once it is ready (the ``prepare``
            step; docs/internals.md, "Make before break"). A backend that cannot
            prepare ahead, or a hub whose spawner does not watch the service,
            switches in the old order (stop, then start). False: always that order.
            """).strip(),
    ).tag(config=True)

    cutover_hold_timeout = Float(
        15,
        help=dedent("""
            Seconds the cut-over of a switch waits, once its machine is prepared, for
            the requester that asked for it (JupyterLab sends ``"hold_cutover": true``,
            saves the user's open documents, then ``POST api/switches/<id>/go``).
            Then it cuts over anyway.
            """).strip(),
    ).tag(config=True)

    prepare_timeout = Float(
        600,
        help=dedent("""
            Seconds a switch waits for its target machine to be prepared (a
            Slurm job to run, an instance to boot). When they run out the switch
            fails, the old server untouched, and the prepared machine is released.
            """).strip(),
    ).tag(config=True)

    poll_interval = Float(0.2, help="Seconds between two polls of a server's state while waiting.").tag(
        config=True
    )

    lock_timeout = Float(
        10,
        help=dedent("""
            Seconds a starting service waits for the lock on its data dir
            (``<data_dir>/service.lock``, held by the running instance). After
            that, a holder that is a ds-compute service left behind (its hub is
            gone, or it is the predecessor of this hub's) is terminated; any
            other holder makes this instance exit with one line saying which
            process holds the store.

            .. versionadded:: 0.1.0
            """).strip(),
    ).tag(config=True)

    exit_with_parent = Bool(
        True,
        help=dedent("""
            Stop when the process that started the service (the hub, for a
            managed service) is gone, as a new hub starts its own instance.
            Switches in flight are left as they are recorded and finished by
            the next instance. Set ``False`` when a process manager that may
            exit runs the service::

                c.DSComputeService.exit_with_parent = False

            .. versionadded:: 0.1.0
            """).strip(),
    ).tag(config=True)

    parent_check_interval = Float(
        1.0, help="Seconds between two checks that the parent (the hub) is still there."
    ).tag(config=True)

    cookie_secret = Any(
        help=dedent("""
            Secret (bytes) signing the HubOAuth cookie. Default: read from
            ``<data_dir>/cookie_secret``, created (mode 0600) if absent, so
            browser sessions survive a restart of the service.
            """).strip()
    ).tag(config=True)

    @default("cookie_secret")
    def _default_cookie_secret(self):
        path = os.path.join(self.data_dir, "cookie_secret")
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        try:
            with open(path) as f:
                return bytes.fromhex(f.read().strip())
        except FileNotFoundError:
            pass
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex())
        return secret

    volume_root = Unicode(
        "",
        help="``c.LocalVolume.root``: lets the admin page show where each local volume is attached.",
    ).tag(config=True)

    metrics_require_auth = Bool(
        True,
        help=dedent("""
            Require a token for ``GET metrics``, as JupyterHub does for its own
            ``/hub/metrics``: one whose scopes include ``read:metrics`` (give
            Prometheus a service with a role holding ``read:metrics`` and
            ``access:services!service=ds-compute``), or a hub admin's.
            ``False`` makes the metrics public (they hold counts per tier, no
            user names)::

                c.DSComputeService.metrics_require_auth = False

            .. versionchanged:: 0.1.0
               Default ``True`` (was ``False`` before release).
            """).strip(),
    ).tag(config=True)

    def policy_settings(self) -> dict:
        return self.settings()

    @default("log_level")
    def _default_log_level(self):
        return logging.INFO

    _log_formatter_cls = logging.Formatter

    @default("log_format")
    def _default_log_format(self):
        return "[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s] %(message)s"

    def initialize(self, argv=None):
        super().initialize(argv)
        raw = os.environ.get("DS_COMPUTE_SERVICE_CONFIG", "")
        if raw:
            # the hub's final config (hubconfig.service_environment), as JSON;
            # the command line still wins
            try:
                loaded = json.loads(raw)
            except ValueError as e:
                self.log.critical("$DS_COMPUTE_SERVICE_CONFIG is not valid JSON: %s", e)
                self.exit(1)
            if not isinstance(loaded, dict):
                self.log.critical("$DS_COMPUTE_SERVICE_CONFIG must be a JSON object")
                self.exit(1)
            if not any(k in loaded for k in ("DSComputeService", "PolicySettings")):
                loaded = {"DSComputeService": loaded}  # a bare c.DSComputeService section
            self.update_config(Config(loaded))
            self.update_config(self.cli_config)
        if self.config_file:
            self.load_config_file(self.config_file)
            self.update_config(self.cli_config)
        # tornado's and the hub auth's loggers go where ours go
        for name in ("tornado.access", "tornado.application", "tornado.general", "jupyterhub"):
            logger = logging.getLogger(name)
            logger.parent = self.log
            logger.setLevel(self.log.level)
        self.profiles = None
        if self.profile_list is None:
            self.log.info(
                "No static tier list (c.DSComputeSpawner.profile_list is a callable): each server's "
                "tiers come from its spawner state; idle downshift needs a static list"
            )
        else:
            try:
                self.profiles = tiers.normalize_profile_list(self.profile_list)
            except tiers.TierConfigError as e:
                self.log.critical("Bad tier configuration: %s", e)
                self.exit(1)
        if not self.api_token:
            self.log.critical("No hub API token: run as a JupyterHub service or set $JUPYTERHUB_API_TOKEN.")
            self.exit(1)

    def make_parts(self):
        """The store, the hub client, the orchestrator and the tornado app."""
        self.store = Store(self.db_url)
        self.hub_api = HubAPI(
            self.hub_api_url,
            self.api_token,
            request_timeout=self.request_timeout,
            poll_interval=self.poll_interval,
        )
        self.orchestrator = Orchestrator(
            self.hub_api,
            self.store,
            stop_timeout=self.stop_timeout,
            start_timeout=self.start_timeout,
            prepare_timeout=self.prepare_timeout,
            make_before_break=self.make_before_break,
            hold_timeout=self.cutover_hold_timeout,
            log=self.log,
        )
        self.tier_source = TierSource(self.hub_api, self.profiles, log=self.log)
        # one list, updated in place with the tiers seen in servers' catalogues
        known = self.tier_source.known
        self.live = LivePolicy(
            self.hub_api,
            self.store,
            known,
            self.policy_settings(),
            log=self.log,
            tier_source=self.tier_source,
        )
        self.idle = IdleWatcher(
            self.live,
            self.store,
            self.orchestrator,
            self.hub_api,
            known,
            self.policy_settings(),
            log=self.log,
        )
        self.grants = Grants(
            self.hub_api,
            self.store,
            self.orchestrator,
            self.live,
            self.tier_source,
            self.policy_settings(),
            log=self.log,
        )
        self.metrics_registry = make_registry(self.store, self.live, known)
        self.web_app = create_application(self)
        return self.web_app

    async def run(self) -> None:
        self._parent_pid = os.getppid()
        self.make_parts()
        url = urlparse(self.service_url)
        server = HTTPServer(self.web_app, xheaders=True)
        server.listen(url.port or (443 if url.scheme == "https" else 80), url.hostname or "127.0.0.1")
        self.log.info(
            "ds-compute service %s listening on %s (prefix %s), data in %s, static tiers: %s",
            __version__,
            self.service_url,
            self.service_prefix,
            self.data_dir,
            ", ".join(p["slug"] for p in self.profiles)
            if self.profiles
            else "none (from each server's spawner)",
        )
        await self.orchestrator.reconcile()
        self.live.start()
        if self.profiles:
            self.idle.start()
        self.grants.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watch = asyncio.ensure_future(self._watch_parent(stop)) if self.exit_with_parent else None
        await stop.wait()
        if watch is not None:
            watch.cancel()
        self.log.info("Stopping; switches in flight are resumed at the next start")
        server.stop()
        await self.idle.stop_loop()
        await self.grants.stop_loop()
        await self.live.stop()
        await self.orchestrator.stop()
        self.store.close()

    async def _watch_parent(self, stop: asyncio.Event) -> None:
        """Set ``stop`` once the parent (the hub) is gone: we were re-parented."""
        parent = self._parent_pid
        while not stop.is_set():
            await asyncio.sleep(self.parent_check_interval)
            if os.getppid() != parent:
                self.log.warning(
                    "The hub that started this service (pid %d) is gone: stopping, so that the next "
                    "hub's service is the only one on %s; switches in flight are resumed there",
                    parent,
                    self.data_dir,
                )
                stop.set()

    def start(self):
        # before the store is opened: one instance per data dir
        self._lock = lock_data_dir(self.data_dir, self.lock_timeout, self.log)
        asyncio.run(self.run())


class ServiceLockError(SystemExit):
    """Another process holds the data dir's lock (a ``SystemExit`` with one line)."""


def _cmdline(pid: int, limit: int | None = 300) -> str:
    """``/proc/<pid>/cmdline`` on one line (cut at ``limit`` characters); "" if unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            text = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
    text = " ".join(text.split())  # one line, whatever the arguments hold
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # pid (comm) state ppid ...: comm may hold spaces and parentheses
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _holder_pid(fd: int) -> int:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 64).decode().strip() or 0)
    except (OSError, ValueError):
        return 0


def _is_stale_service(pid: int) -> str | None:
    """Why the lock holder ``pid`` may be ended, or None if it must be left alone.

    It must be a ds-compute service (by ``/proc/<pid>/cmdline``) and either
    a child of our own parent (our predecessor under the same hub) or one
    whose parent is not a live hub (its hub was killed; it was re-parented).
    """
    if SERVICE_MODULE not in _cmdline(pid, None):
        return None
    parent = _parent_of(pid)
    if parent and parent == os.getppid():
        return "the previous instance of this hub's service"
    if not parent or "jupyterhub" not in _cmdline(parent, None):
        return f"a service left behind by a hub that is gone (its parent is now pid {parent or '?'})"
    return None  # the child of another live hub: two hubs share this data dir


def lock_data_dir(data_dir: str, timeout: float, log: logging.Logger, poll: float = 0.1) -> int:
    """Hold an exclusive ``flock`` on ``<data_dir>/service.lock``; return its fd (kept open).

    Waits up to ``timeout`` seconds for the holder to let go (a service whose
    hub is gone stops by itself within about a second). Then a stale
    ds-compute service holding it (see :func:`_is_stale_service`) is sent
    SIGTERM (SIGKILL after 5 s) and the lock taken; any other holder is
    a :class:`ServiceLockError` naming it. The lock file holds the pid of
    the instance that has it.
    """
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    path = os.path.join(data_dir, "service.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def try_lock() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return True

    def wait(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if try_lock():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    if try_lock():
        return fd
    holder = _holder_pid(fd)
    log.warning(
        "The service's data dir %s is locked by pid %s (%s): waiting up to %gs for it to stop",
        data_dir,
        holder or "?",
        _cmdline(holder) if holder else "unknown",
        timeout,
    )
    if wait(timeout):
        return fd
    holder = _holder_pid(fd)
    why = _is_stale_service(holder) if holder else None
    if why is None:
        os.close(fd)
        raise ServiceLockError(
            f"ds-compute service: {path} is held by pid {holder or '?'} "
            f"({_cmdline(holder) or 'not a process this service may end'}), which is not a stale "
            "ds-compute service: another service runs on this data dir; stop it or give this one "
            "another c.DSComputeService.data_dir."
        )
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        log.warning("Ending pid %d, %s, which holds %s (%s)", holder, why, path, sig.name)
        try:
            os.kill(holder, sig)
        except ProcessLookupError:
            pass
        if wait(grace):
            return fd
    os.close(fd)
    raise ServiceLockError(f"ds-compute service: {path} is still held by pid {holder} after SIGKILL.")


def create_application(service: DSComputeService) -> web.Application:
    """The tornado application of a configured :class:`DSComputeService`."""
    prefix = service.service_prefix
    hub_auth = HubOAuth(
        api_url=service.hub_api_url,
        api_token=service.api_token,
        base_url=prefix,
        cache_max_age=60,
    )
    jinja_env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
        autoescape=True,
    )
    settings = dict(
        log=service.log,
        log_function=_log_request(service.log),
        store=service.store,
        hub_api=service.hub_api,
        orchestrator=service.orchestrator,
        profiles=service.tier_source.known,
        tier_source=service.tier_source,
        spawner_token=service.spawner_token,
        base_url=service.base_url,
        service_prefix=prefix,
        hub_auth=hub_auth,
        cookie_secret=service.cookie_secret,
        jinja_env=jinja_env,
        live_policy=service.live,
        grants=service.grants,
        prepare_board=service.orchestrator.board,
        metrics_registry=service.metrics_registry,
        metrics_require_auth=service.metrics_require_auth,
        volume_root=service.volume_root,
    )
    return web.Application(
        hub_handlers(prefix)
        + admin_handlers(prefix)
        + request_page_handlers(prefix)
        + decisions_handlers(prefix)
        + default_handlers(prefix),
        **settings,
    )


def _log_request(log):
    def log_request(handler):
        status = handler.get_status()
        level = log.info if status < 400 else log.warning if status < 500 else log.error
        if status < 300 and handler.request.method == "GET" and "/api/" in handler.request.path:
            level = log.debug  # the progress page polls twice a second
        user = getattr(handler, "_hub_auth_user_cache", None)
        level(
            "%d %s %s (%s) %.1fms",
            status,
            handler.request.method,
            handler.request.uri,
            user["name"] if user else handler.request.remote_ip,
            1000 * handler.request.request_time(),
        )

    return log_request


main = DSComputeService.launch_instance

if __name__ == "__main__":
    sys.exit(main())
