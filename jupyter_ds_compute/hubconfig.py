"""Wire jupyter-ds-compute into a JupyterHub config: one call.

In an operator's own ``jupyterhub_config.py``::

    from jupyter_ds_compute.hubconfig import configure

    c.JupyterHub.spawner_class = "ds-compute"
    c.DSComputeSpawner.profile_list = [...]
    configure(c)

``configure(c)`` adds the ``ds-compute`` service (its entry, its role with
the narrowest scopes that work, the scopes browsers and servers need to
reach it), finds JupyterHub's proxy, and checks the whole configuration
when the hub has finished loading it: after every file layered with
``load_subconfig`` and after the command line (``jupyterhub --port 9000``),
so what the service and the servers use is what the hub really runs with.
A broken setting stops the hub at start with one line naming it.

Everything is read from ``c`` (traitlets); the service's settings are the
``c.DSComputeService`` section (``jupyter-ds-compute-service --help-all``
lists them).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from urllib.parse import urlparse

from traitlets.config import Config

from . import catalogue
from .tiers import TierConfigError, normalize_profile_list

SERVICE_NAME = "ds-compute"

#: the service's role: ``servers`` = read/start/stop (and PATCH the
#: user_options of) servers; ``read:users:groups``: the owner's groups for
#: tier checks; ``list:users``: accounting, idle checks, admin page;
#: ``read:groups``: members of groups with a budget; ``read:users:activity``:
#: the admin page's last activity of users without a server;
#: ``admin:server_state`` (read only through the REST API): each server's
#: spawner state, where the admin page finds the volume driver's describe().
#: Added when the hub has loaded its config (:func:`grant_scopes`): ``groups!group=<g>``
#: for the groups a grant adds users to, and nothing for other groups.
SERVICE_SCOPES = [
    "servers",
    "read:users:groups",
    "list:users",
    "read:groups",
    "read:users:activity",
    "admin:server_state",
]

#: the custom scope of the service's admin pages (service/authz.py); JupyterHub
#: refuses to change the ``admin`` role's scopes, so the role
#: :data:`ADMIN_ROLE` grants it to the hub's ``admin_users``
ADMIN_SCOPE = f"custom:{SERVICE_NAME}:admin"
ADMIN_ROLE = f"{SERVICE_NAME}-admin"

#: what the service's browser session (HubOAuth token) may carry, intersected
#: with what the user holds: ``servers`` (admins': all servers; a user given
#: ``servers!user=bob``: bob's) and the admin scope, so the admin panel works
OAUTH_SCOPES = ["servers", ADMIN_SCOPE]

#: what a server's token needs besides JupyterHub's defaults: call the service
SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    f"access:services!service={SERVICE_NAME}",
]

PROXY_HINT = (
    "install it with `npm install configurable-http-proxy` (./dev.sh setup does this in a checkout) "
    "or `npm install -g configurable-http-proxy`, or set c.ConfigurableHTTPProxy.command"
)


class ConfigError(SystemExit):
    """A setting that stops the hub at start; the message names it."""

    def __init__(self, message):
        super().__init__(f"jupyter-ds-compute: {message}")


def configure(c: Config, *, banner=None, proxy_search: list[str] | None = None) -> None:
    """Add the ds-compute service and its wiring to the hub config ``c``.

    ``banner``: text (or a callable returning it) printed to stderr once the
    whole configuration has passed its checks (the embedded default prints
    its login there).
    ``proxy_search``: directories searched for ``configurable-http-proxy``
    before ``$PATH`` when ``c.ConfigurableHTTPProxy.command`` is not set.

    Settings that depend on what the hub finally runs with (its public URL,
    the tiers, ``c.DSComputeService``) are computed when the hub has loaded
    all of its config, not now: an operator's lines after this call, files
    layered with ``load_subconfig`` and the command line all count.
    """
    services = [s for s in c.JupyterHub.get("services", []) if s.get("name") != SERVICE_NAME]
    # the spawner's budget calls to the service (api/hub/*): one token per hub start
    if not c.DSComputeSpawner.get("service_api_token"):
        c.DSComputeSpawner.service_api_token = secrets.token_hex(32)
    services.append(_service_entry(c, c.DSComputeSpawner.service_api_token))
    c.JupyterHub.services = services

    roles = [r for r in c.JupyterHub.get("load_roles", []) if r.get("name") != f"{SERVICE_NAME}-service"]
    roles.append(
        {"name": f"{SERVICE_NAME}-service", "scopes": list(SERVICE_SCOPES), "services": [SERVICE_NAME]}
    )
    # the admin pages' custom scope, for the hub's admin users (their final
    # list is merged in when the hub has loaded all its config, _finish); an
    # operator's own ds-compute-admin role (users, groups) is kept and extended
    custom = dict(c.JupyterHub.get("custom_scopes", {}))
    custom.setdefault(
        ADMIN_SCOPE, {"description": "Use the ds-compute admin pages (all servers and the audit log)."}
    )
    c.JupyterHub.custom_scopes = custom
    _admin_role(roles, c.Authenticator.get("admin_users", ()))
    c.JupyterHub.load_roles = roles

    # browsers may open the service's pages; servers' tokens may call its API
    extra = set(c.JupyterHub.get("extra_user_scopes", []))
    extra.add(f"access:services!service={SERVICE_NAME}")
    c.JupyterHub.extra_user_scopes = sorted(extra)
    scopes = list(c.Spawner.get("server_token_scopes", [])) or []
    for scope in SERVER_TOKEN_SCOPES:
        if scope not in scopes:
            scopes.append(scope)
    c.Spawner.server_token_scopes = scopes

    if "command" not in c.ConfigurableHTTPProxy:
        found = find_proxy(proxy_search or [])
        if found:
            c.ConfigurableHTTPProxy.command = [found]

    _when_loaded(c, lambda final: _finish(final, banner))


# -- the service entry ----------------------------------------------------------


def _admin_role(roles, admin_users):
    """Add (or extend) the :data:`ADMIN_ROLE` role in ``roles``: :data:`ADMIN_SCOPE` for ``admin_users``."""
    role = next((r for r in roles if r.get("name") == ADMIN_ROLE), None)
    if role is None:
        role = {"name": ADMIN_ROLE, "description": "ds-compute admin pages", "scopes": [], "users": []}
        roles.append(role)
    if ADMIN_SCOPE not in role.setdefault("scopes", []):
        role["scopes"] = list(role["scopes"]) + [ADMIN_SCOPE]
    role["users"] = sorted(set(role.get("users") or ()) | set(admin_users or ()))


def _service_entry(c, spawner_token):
    url = c.DSComputeService.get("service_url") or f"http://127.0.0.1:{free_port()}"
    return {
        "name": SERVICE_NAME,
        "url": url,
        "command": [sys.executable, "-m", "jupyter_ds_compute.service"],
        # DS_COMPUTE_SERVICE_CONFIG (the service's whole config) is added by
        # _finish() from the config the hub finally runs with
        "environment": {"DS_COMPUTE_SPAWNER_TOKEN": spawner_token},
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": list(OAUTH_SCOPES),
        "display": True,
    }


def grant_scopes(profile_list) -> list[str]:
    """``groups!group=<g>`` for each group a grant may add users to: the first
    ``allowed_groups`` entry of every tier with ``max_grant`` (docs/internals.md,
    "Requests and grants"). Only the static list is known here: for a callable
    ``profile_list``, give the service's role those scopes yourself."""
    if profile_list is None or callable(profile_list):
        return []
    from .policy import grant_group

    out = []
    for p in normalize_profile_list(profile_list):
        group = grant_group(p.get("allowed_groups")) if p.get("max_grant") is not None else None
        if group and f"groups!group={group}" not in out:
            out.append(f"groups!group={group}")
    return out


def service_environment(config):
    """What the service learns from the hub's final config, as one variable:
    ``DS_COMPUTE_SERVICE_CONFIG``, a traitlets config as JSON
    (``{"DSComputeService": {...}, "PolicySettings": {...}}``).

    ``DSComputeService.profile_list`` is the static fallback tier list (for
    servers whose spawner state has no catalogue yet): the catalogue of a
    list or dict ``c.DSComputeSpawner.profile_list`` (JSON-safe, overrides
    left out, so callable overrides are fine); none for a callable
    ``profile_list``, whose tiers the service only learns from each server's
    spawner state.
    """
    section = dict(config.DSComputeService)
    section.pop("service_url", None)  # the hub tells the service where it listens
    profile_list = config.DSComputeSpawner.get("profile_list")
    if "profile_list" not in section and profile_list is not None and not callable(profile_list):
        section["profile_list"] = catalogue.catalogue(profile_list)["profiles"]
    full = {"DSComputeService": section}
    if "PolicySettings" in config:
        full["PolicySettings"] = dict(config.PolicySettings)
    try:
        text = json.dumps(full, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the c.DSComputeService settings must be JSON values: {e}") from None
    return {"DS_COMPUTE_SERVICE_CONFIG": text}


def internal_service_url():
    """The service's own address with its prefix, as the hub reaches it
    (``http://127.0.0.1:<port><base_url>services/ds-compute/``), or "" outside
    a hub or without the service entry."""
    app = _running_hub()
    if app is None:
        return ""
    spec = next((s for s in app.services if s.get("name") == SERVICE_NAME), None)
    if not spec or not spec.get("url"):
        return ""
    base = app.base_url if app.base_url.endswith("/") else app.base_url + "/"
    return f"{spec['url'].rstrip('/')}{base}services/{SERVICE_NAME}/"


def free_port(host="127.0.0.1"):
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_port_free(url, what, wait=5.0):
    """Stop the hub if something listens on ``url``'s port. A predecessor
    that is still shutting down (a hub restart) gets ``wait`` seconds."""
    parsed = urlparse(url)
    if not parsed.port:
        return
    deadline = time.monotonic() + wait
    while True:
        with socket.socket() as s:
            # as the service's own listen(): connections in TIME_WAIT don't count
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((parsed.hostname or "127.0.0.1", parsed.port))
                return
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise ConfigError(f"{what} {url}: cannot listen there ({e.strerror})") from None
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"{what} {url}: port {parsed.port} is already in use (another hub's service?); "
                "choose another port, or leave it unset to get a free one"
            )
        time.sleep(0.2)


# -- the proxy ---------------------------------------------------------------------


def find_proxy(search=()):
    """``configurable-http-proxy`` in ``search`` (directories) or on ``$PATH``."""
    for directory in search:
        path = os.path.join(directory, "configurable-http-proxy")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("configurable-http-proxy")


def _check_proxy(config):
    proxy_class = config.JupyterHub.get("proxy_class", "configurable-http-proxy")
    name = proxy_class if isinstance(proxy_class, str) else getattr(proxy_class, "__name__", "")
    if name not in ("configurable-http-proxy", "default", "ConfigurableHTTPProxy") and not name.endswith(
        ".ConfigurableHTTPProxy"
    ):
        return  # another proxy: its own business
    if config.ConfigurableHTTPProxy.get("should_start", True) is False:
        return
    command = config.ConfigurableHTTPProxy.get("command") or ["configurable-http-proxy"]
    if isinstance(command, str):
        command = [command]
    if not shutil.which(command[0]):
        raise ConfigError(f"JupyterHub's proxy {command[0]!r} was not found: {PROXY_HINT}")


# -- checks of the whole config ------------------------------------------------------


def check_config(config):
    """Check the ds-compute settings of a hub config; raise :class:`ConfigError`.

    - ``c.DSComputeSpawner.profile_list`` (a callable is checked at each spawn);
    - every ``c.DSComputeService`` key: known, and a valid value;
    - the proxy program exists (when JupyterHub starts configurable-http-proxy);
    - a configured service port is free.
    """
    profile_list = config.DSComputeSpawner.get("profile_list")
    if profile_list is not None and not callable(profile_list):
        try:
            normalize_profile_list(profile_list)
        except TierConfigError as e:
            raise ConfigError(f"bad c.DSComputeSpawner.profile_list: {e}") from None
    check_service_config(config.DSComputeService)
    if "PolicySettings" in config:
        check_policy_config(config.PolicySettings)
    _check_proxy(config)
    for service in config.JupyterHub.get("services", []):
        if service.get("name") == SERVICE_NAME and service.get("url"):
            _check_port_free(service["url"], "c.DSComputeService.service_url")


def check_service_config(section):
    """Every key of a ``c.DSComputeService`` section is a setting with a valid value."""
    from traitlets import TraitError

    from .service.app import DSComputeService

    known = DSComputeService.class_own_traits(config=True)
    known.update(DSComputeService.class_traits(config=True))
    for key, value in dict(section).items():
        if key not in known:
            close = [k for k in known if k.startswith(key[:4])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise ConfigError(
                f"c.DSComputeService.{key} is not a setting{hint}; "
                "`jupyter-ds-compute-service --help-all` lists them"
            )
        try:
            DSComputeService(config=Config({"DSComputeService": {key: value}}))
        except (TraitError, ValueError, TypeError) as e:
            raise ConfigError(f"bad c.DSComputeService.{key} = {value!r}: {_short(e)}") from None


def check_policy_config(section):
    """Every key of a ``c.PolicySettings`` section is a policy setting with a valid value."""
    from traitlets import TraitError

    from .policy import PolicySettings

    known = PolicySettings.class_traits(config=True)
    for key, value in dict(section).items():
        if key not in known:
            raise ConfigError(f"c.PolicySettings.{key} is not a setting; known: {', '.join(sorted(known))}")
        try:
            PolicySettings(config=Config({"PolicySettings": {key: value}}))
        except (TraitError, ValueError, TypeError) as e:
            raise ConfigError(f"bad c.PolicySettings.{key} = {value!r}: {_short(e)}") from None


def _short(e):
    return " ".join(str(e).split())[:300]


# -- run when the hub has loaded all of its config ------------------------------------


class _WhenLoaded(logging.Handler):
    """Runs a callback at the hub's first log record, then never again.

    JupyterHub adds ``c.JupyterHub.extra_log_handlers`` to its logger right
    after it has loaded every config file and merged the command line, and
    logs "Running JupyterHub version ..." next, before it opens its database
    or starts anything: the first moment its whole configuration is known.
    """

    def __init__(self, callback):
        super().__init__(level=logging.NOTSET)
        self.callback = callback

    def handle(self, record):
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(_running_hub().config)
        return True

    def emit(self, record):  # pragma: no cover - handle() never emits
        pass

    def __deepcopy__(self, memo):
        # traitlets deep-copies config values; this one is a hook, not data
        return self


def _running_hub():
    """The JupyterHub application loading (or running) this config, or None
    (a script or a test calling :func:`configure` on a plain ``Config``)."""
    try:
        from jupyterhub.app import JupyterHub
    except ImportError:  # pragma: no cover - jupyterhub is a dependency
        return None
    return JupyterHub.instance() if JupyterHub.initialized() else None


def _when_loaded(c, callback):
    """Call ``callback(final_config)`` once the hub has loaded all of its
    config; at once when no hub is loading config (a script or a test calling
    :func:`configure` on a plain ``Config``)."""
    if _running_hub() is None:
        return callback(c)
    handlers = [h for h in c.JupyterHub.get("extra_log_handlers", []) if not isinstance(h, _WhenLoaded)]
    c.JupyterHub.extra_log_handlers = handlers + [_WhenLoaded(callback)]


def _finish(config, banner):
    check_config(config)
    from . import pythonenv

    for problem in pythonenv.problems():
        logging.getLogger("JupyterHub").warning("jupyter-ds-compute: %s", problem)
    services = config.JupyterHub.get("services", [])
    roles = config.JupyterHub.get("load_roles", [])
    app = _running_hub()
    if app is not None:  # what init_services() and the role set-up will read
        services, roles = app.services, app.load_roles
    if any(r.get("name") == ADMIN_ROLE for r in roles):  # admin_users set after configure(c) count too
        _admin_role(roles, config.Authenticator.get("admin_users", ()))
    for spec in services:
        if spec.get("name") == SERVICE_NAME:
            spec.setdefault("environment", {}).update(service_environment(config))
    role = next((r for r in roles if r.get("name") == f"{SERVICE_NAME}-service"), None)
    if role is not None:
        extra = [
            g for g in grant_scopes(config.DSComputeSpawner.get("profile_list")) if g not in role["scopes"]
        ]
        role["scopes"] = list(role["scopes"]) + extra
    if callable(banner):
        banner = banner()
    if banner:
        print(banner, file=sys.stderr, flush=True)


def banner(password, admins, admin_password, url=None):
    """The embedded default's login banner: a callable for :func:`configure`,
    so that it names the URL the hub finally runs at."""

    def text():
        line = "=" * 72
        return (
            f"\n{line}\n jupyter-ds-compute is starting at {url or public_hub_url() or '(unknown URL)'}\n"
            f" Log in with ANY user name and the password: {password}\n"
            f" Admin users ({', '.join(sorted(admins))}) log in with: {admin_password}\n"
            f"{line}\n"
        )

    return text


def public_hub_url():
    """The URL the proxy serves the hub at, as the hub finally runs
    (``public_url`` if set, else ``bind_url`` with the CLI's ``--port``), or
    "" outside a hub. A wildcard bind address becomes 127.0.0.1."""
    app = _running_hub()
    if app is None:
        return ""
    url = app.public_url or app.bind_url
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        return ""
    host = parsed.hostname or ""
    if host in ("", "0.0.0.0", "::"):
        netloc = f"127.0.0.1:{parsed.port}" if parsed.port else "127.0.0.1"
        parsed = parsed._replace(netloc=netloc)
    path = parsed.path if parsed.path.endswith("/") else parsed.path + "/"
    return parsed._replace(path=path).geturl()
