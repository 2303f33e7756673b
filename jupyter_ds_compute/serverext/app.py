"""The jupyter-server extension ``ds_compute``."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time

from jupyter_server.extension.application import ExtensionApp
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from traitlets import Bool, Float, Integer, default

from .. import pythonenv
from .context import ServerContext, utcnow
from .envs import LAST_USED_MARKER, EnvScanner, EnvSizes, default_roots
from .handlers import default_handlers
from .kernelspecs import DSComputeKernelSpecManager
from .state import StateError, StateKeeper
from .volume import VolumeUsage, check_notebook_dir

KERNEL_ACTIONS_SCHEMA = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"


class DSComputeExtension(ExtensionApp):
    """REST API for Lab and the magics (``/ds-compute/api/*``), volume check,
    kernels for the environments on the volume."""

    name = "ds_compute"
    load_other_extensions = True

    manage_kernelspecs = Bool(
        None,
        allow_none=True,
        help="""Offer every environment on the volume that has ipykernel as a kernel,
        and load ``%ds_compute`` in every IPython kernel.

        Sets ``ServerApp.kernel_spec_manager_class`` to
        ``DSComputeKernelSpecManager`` unless that was configured explicitly.
        Default (None): on when the spawner gave ``DS_COMPUTE_VOLUME_PATH``.

            c.DSComputeExtension.manage_kernelspecs = False

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    service_timeout = Float(
        3.0,
        help="""Seconds to wait for the hub service on ``GET tiers`` before falling back to DS_COMPUTE_TIERS.""",
    ).tag(config=True)

    policy_cache_seconds = Float(
        30.0,
        help="""How long the budget and notices from the hub service (``GET status``) are cached.
        A failed call is cached as long, so an unreachable service costs at most one
        ``service_timeout`` per period.""",
    ).tag(config=True)

    switch_timeout = Float(
        15.0,
        help="""Seconds to wait for the hub service to accept a switch (it answers 202 before stopping anything).""",
    ).tag(config=True)

    volume_usage_cache_seconds = Float(
        120.0,
        help="""How long the size of a plain-directory volume is cached (it is computed by walking it).""",
    ).tag(config=True)

    keep_state_busy_wait = Float(
        30.0,
        help="""Seconds a ``keep_state`` switch waits for a busy kernel to finish its cell before
        saving the others without it (that kernel's variables are reported as not saved).

            c.DSComputeExtension.keep_state_busy_wait = 60

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    keep_state_timeout = Float(
        900.0,
        help="""Seconds one kernel may take to save (or restore) its variables.""",
    ).tag(config=True)

    keep_state_reserve = Integer(
        256 * 1024 * 1024,
        help="""Bytes that must stay free on the volume while saving kernel state: a save that
        would leave less stops early and the switch is refused with a message (the user may
        switch without keeping the variables).

            c.DSComputeExtension.keep_state_reserve = 1024**3

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    keep_state_files = Bool(
        False,
        help="""Keep the saved kernel state (``~/.ds-compute/state/``) after a successful restore.
        Default: deleted once every variable of a kernel was restored.""",
    ).tag(config=True)

    keep_state_max_age = Float(
        3600.0,
        help="""A saved kernel state older than this (seconds) is not restored at server start
        (e.g. the switch it was saved for rolled back and the server was started much later).""",
    ).tag(config=True)

    @default("manage_kernelspecs")
    def _default_manage(self):
        return None

    # -- linking: before the ServerApp creates its configurables ------------
    def _link_jupyter_server_extension(self, serverapp):
        super()._link_jupyter_server_extension(serverapp)
        self._install_kernel_spec_manager(serverapp)

    def _install_kernel_spec_manager(self, serverapp) -> None:
        manage = self.manage_kernelspecs
        if manage is None:
            manage = bool(os.environ.get("DS_COMPUTE_VOLUME_PATH"))
        if not manage:
            return
        configured = serverapp.config.get("ServerApp", {})
        if "kernel_spec_manager_class" in configured:
            cls = serverapp.kernel_spec_manager_class
            if not (isinstance(cls, type) and issubclass(cls, DSComputeKernelSpecManager)):
                self.log.warning(
                    "ds-compute: ServerApp.kernel_spec_manager_class is set to %s; "
                    "environments on the volume are not offered as kernels",
                    cls,
                )
            return
        gateway = serverapp.config.get("GatewayClient", {}).get("url") or os.environ.get(
            "JUPYTER_GATEWAY_URL"
        )
        if gateway:
            self.log.info("ds-compute: kernels come from a gateway; not offering volume environments")
            return
        serverapp.kernel_spec_manager_class = DSComputeKernelSpecManager

    # -- settings and handlers ------------------------------------------------
    def initialize_settings(self):
        self.context = ServerContext.from_environ(os.environ)
        for problem in self.context.problems + pythonenv.problems():
            self.log.warning("ds-compute: %s", problem)
        root_dir = self.serverapp.root_dir
        self.is_notebook_dir, self.volume_warning = check_notebook_dir(self.context.volume_path, root_dir)
        if self.volume_warning and (self.context.volume_path or self.context.under_hub):
            self.log.warning(
                "ds-compute: VOLUME CHECK FAILED: notebook directory %s, volume %s: %s",
                root_dir,
                self.context.volume_path,
                self.volume_warning,
            )
        vol = self.context.volume_path or root_dir
        self.volume_usage = VolumeUsage(vol, cache_seconds=self.volume_usage_cache_seconds)
        self.state = StateKeeper(
            self.serverapp,
            os.path.join(vol, ".ds-compute", "state"),
            self.log,
            busy_wait=self.keep_state_busy_wait,
            timeout=self.keep_state_timeout,
            reserve_bytes=self.keep_state_reserve,
            keep_files=self.keep_state_files,
            max_age=self.keep_state_max_age,
        )
        self.env_sizes = EnvSizes()
        self._own_scanner: EnvScanner | None = None
        self._background: list[asyncio.Future] = []
        self._policy: dict | None = None  # {"budget", "notices"} last fetched
        self._policy_at = 0.0  # time.monotonic() of that fetch
        self._policy_pending: asyncio.Future | None = None
        self.settings["ds_compute"] = self
        try:  # "last used" of an env = its kernels' starts
            self.serverapp.event_logger.add_listener(
                schema_id=KERNEL_ACTIONS_SCHEMA, listener=self._on_kernel_action
            )
        except Exception as e:  # an event logger without listeners: no record, no harm
            self.log.info("ds-compute: cannot listen to kernel events: %s", e)

    def initialize_handlers(self):
        self.handlers.extend(default_handlers("/ds-compute"))

    async def _start_jupyter_server_extension(self, serverapp):
        # Nothing here is awaited: server start must not wait for discovery.
        self._background.append(asyncio.ensure_future(self._warm_up()))
        # kernels saved by a keep_state switch come back before anyone can use them
        self.state.restoring = asyncio.ensure_future(self._restore_state())
        self._background.append(self.state.restoring)

    async def _restore_state(self) -> None:
        try:
            await self.state.restore_all()
        except Exception:
            self.log.exception("ds-compute: restoring the kernels' saved state failed")

    async def _warm_up(self) -> None:
        try:
            self.volume_usage.refresh()
            ksm = self.kernel_spec_manager
            scanner = self.env_scanner
            envs = await asyncio.to_thread(scanner.envs)
            if ksm is not None:
                ksm.schedule_checks()
            else:
                await scanner.check_pending()
            self.env_sizes.refresh([e.path for e in envs])
        except Exception:
            self.log.exception("ds-compute: background discovery failed")

    async def stop_extension(self):
        for task in self._background:
            task.cancel()

    # -- pieces the handlers use ---------------------------------------------
    @property
    def kernel_spec_manager(self) -> DSComputeKernelSpecManager | None:
        ksm = getattr(self.serverapp, "kernel_spec_manager", None)
        return ksm if isinstance(ksm, DSComputeKernelSpecManager) else None

    @property
    def env_scanner(self) -> EnvScanner:
        ksm = self.kernel_spec_manager
        if ksm is not None:
            return ksm.scanner
        if self._own_scanner is None:
            self._own_scanner = EnvScanner(default_roots(os.environ), self.context.volume_path)
        return self._own_scanner

    async def _on_kernel_action(self, logger, schema_id, data) -> None:
        if data.get("action") != "start" or data.get("status") != "success":
            return
        ksm = self.kernel_spec_manager
        env = ksm.env_for_kernel(data.get("kernel_name") or "") if ksm else None
        if env is None:
            return
        try:
            with open(os.path.join(env.path, LAST_USED_MARKER), "a"):
                pass
            os.utime(os.path.join(env.path, LAST_USED_MARKER))
        except OSError:  # a read-only env: no record, no harm
            pass

    async def status(self) -> dict:
        ctx = self.context
        now = utcnow()
        usage, pol = await asyncio.gather(self.volume_usage.snapshot(wait=1.0), self.policy())
        return {
            "user": ctx.user,
            "server_name": ctx.server_name,
            "tier": ctx.tier,
            "started_at": ctx.started_at,
            "seconds_on_tier": ctx.seconds_on_tier(now),
            "cost_so_far": ctx.cost_so_far(now),
            "volume": dict(
                {
                    "id": ctx.volume_id,
                    "driver": ctx.volume_driver,
                    "path": ctx.volume_path,
                    "is_notebook_dir": self.is_notebook_dir,
                    "warning": self.volume_warning,
                    "notebook_dir": self.serverapp.root_dir,
                },
                **usage,
            ),
            "backend": ctx.backend,
            "under_hub": ctx.under_hub,
            "budget": pol["budget"],
            "notices": pol["notices"],
        }

    # -- budget and notices (the service's GET api/policy) --------------------
    async def policy(self) -> dict:
        """``{"budget": dict or None, "notices": [...]}`` of this server's user.

        From the service's ``GET api/policy`` (with the server's token, so the
        notices are this server's), cached ``policy_cache_seconds``; concurrent
        callers share one request. Never raises: ``None``/``[]`` when the
        service cannot be asked or does not answer.
        """
        ctx = self.context
        if not (ctx.service_url and ctx.api_token):
            return {"budget": None, "notices": []}
        if self._policy is not None and time.monotonic() - self._policy_at < self.policy_cache_seconds:
            return self._policy
        if self._policy_pending is None:
            self._policy_pending = asyncio.ensure_future(self._fetch_policy())
            self._policy_pending.add_done_callback(lambda _: setattr(self, "_policy_pending", None))
        try:
            return await asyncio.shield(self._policy_pending)
        except Exception:  # never: _fetch_policy catches everything; status must not fail
            self.log.exception("ds-compute: reading the budget failed")
            return {"budget": None, "notices": []}

    async def _fetch_policy(self) -> dict:
        resp = await self._service("GET", "api/policy", None, self.service_timeout)
        problem = None
        pol = {"budget": None, "notices": []}
        if resp.code == 200:
            try:
                pol = clean_policy(json.loads(resp.body))
            except (ValueError, TypeError) as e:
                problem = f"a bad answer ({e})"
        else:
            problem = str(resp.error) if resp.code == 599 else f"HTTP {resp.code}"
        if problem:
            self.log.warning("ds-compute: no budget or notices from the ds-compute service: %s", problem)
        self._remember_policy(pol)
        return pol

    def _remember_policy(self, pol: dict) -> None:
        self._policy, self._policy_at = pol, time.monotonic()

    async def _service(self, method: str, path: str, body: dict | None, timeout: float):
        ctx = self.context
        request = HTTPRequest(
            ctx.service_url + path,
            method=method,
            headers={"Authorization": f"token {ctx.api_token}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            connect_timeout=timeout,
            request_timeout=timeout,
        )
        try:
            return await AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as e:  # connection refused, timeout, DNS, TLS...
            return HTTPResponse(request, 599, error=e)

    async def tiers(self) -> dict:
        """The tiers for this user, each as the service sent it (``allowed``,
        ``reason``, ``policy`` of group/cap/budget rules unchanged) plus
        ``current``; the service's ``budget`` and ``notices`` too."""
        ctx = self.context
        tiers, source, warning = ctx.tiers, "environment", None
        pol = None
        if ctx.service_url and ctx.api_token:
            resp = await self._service("GET", "api/tiers", None, self.service_timeout)
            if resp.code == 200:
                try:
                    reply = json.loads(resp.body)
                    got = reply["tiers"]
                    if not isinstance(got, list):
                        raise TypeError("tiers is not a list")
                    tiers, source = [t for t in got if isinstance(t, dict)], "service"
                    if "budget" in reply or "notices" in reply:
                        try:  # fresher than the status' cache: keep it
                            pol = clean_policy(reply)
                            self._remember_policy(pol)
                        except TypeError as e:
                            self.log.warning("ds-compute: bad budget or notices in the tiers answer: %s", e)
                except (ValueError, KeyError, TypeError) as e:
                    warning = (
                        f"the ds-compute service sent a bad tier list ({e}); showing the tiers known at start"
                    )
            else:
                reason = resp.error if resp.code == 599 else f"HTTP {resp.code}"
                warning = (
                    f"the ds-compute service did not answer ({reason}); showing the tiers known at start"
                )
            if warning:
                self.log.warning("ds-compute: %s", warning)
        if pol is None:
            pol = self._policy or {"budget": None, "notices": []}
        return {
            "current": ctx.tier_slug,
            "tiers": ctx.tiers_with_current(tiers),
            "source": source,
            "warning": warning,
            "budget": pol["budget"],
            "notices": pol["notices"],
        }

    async def forward_switch(self, body: dict) -> tuple[int, dict]:
        ctx = self.context
        if not ctx.service_url:
            return 503, {
                "message": "DS_COMPUTE_SERVICE_URL is not set: this server does not know the ds-compute service"
            }
        payload = {k: v for k, v in body.items() if k not in ("user", "server_name", "state_saved_by")}
        payload["server_name"] = ctx.server_name
        payload.setdefault("next", self.serverapp.base_url.rstrip("/") + "/lab")
        saved = None
        if body.get("keep_state"):
            # before the cut-over: this (old) server still runs every kernel
            try:
                saved = await self.state.save_all(saved_by_kernel=body.get("state_saved_by"))
            except StateError as e:
                self.log.warning("ds-compute: switch to %s: %s", body.get("profile"), e)
                return 507, {"message": str(e), "field": "keep_state"}
        resp = await self._service("POST", "api/switches", payload, self.switch_timeout)
        if saved is not None and not 200 <= resp.code < 300:
            self.state.discard()  # the switch does not happen: nothing to restore
        if resp.code == 599:
            self.log.error(
                "ds-compute: switch to %s: service %s unreachable: %s",
                body.get("profile"),
                ctx.service_url,
                resp.error,
            )
            return 502, {
                "message": f"could not reach the ds-compute service at {ctx.service_url}: {resp.error}"
            }
        reply = service_reply(resp)
        if saved is not None and 200 <= resp.code < 300:
            reply["state"] = saved
        self.log.info(
            "ds-compute: switch of %s to %s: service answered %s",
            ctx.server_name or "default server",
            body.get("profile"),
            resp.code,
        )
        return resp.code, reply

    async def switch_record(self, switch_id: str) -> tuple[int, dict]:
        """The service's ``GET api/switches/<id>`` (asked with this server's token).

        ``(status, body)``: the record with 200; the service's own 4xx (404:
        no such switch, 403: not this user's) with a message; 502 with a
        message when the service cannot be reached, times out or answers
        something that is not a JSON object (a 5xx included). Never raises.
        ``switch_id`` must already match ``handlers.SWITCH_ID``.
        """
        ctx = self.context
        if not ctx.service_url:
            return 503, {
                "message": "DS_COMPUTE_SERVICE_URL is not set: this server does not know the ds-compute service"
            }
        resp = await self._service("GET", f"api/switches/{switch_id}", None, self.service_timeout)
        if resp.code == 599:
            self.log.warning(
                "ds-compute: switch %s: service %s unreachable: %s", switch_id, ctx.service_url, resp.error
            )
            return 502, {
                "message": f"could not reach the ds-compute service at {ctx.service_url}: {resp.error}"
            }
        reply = service_reply(resp)
        if resp.code == 404:
            reply.setdefault("message", f"the ds-compute service has no switch {switch_id}")
            return 404, reply
        if 400 <= resp.code < 500:
            reply.setdefault("message", f"the ds-compute service answered {resp.code}")
            return resp.code, reply
        if resp.code != 200 or not isinstance(reply.get("id"), str):
            self.log.warning("ds-compute: switch %s: service answered %s: %s", switch_id, resp.code, reply)
            message = reply.get("message") or f"the ds-compute service answered {resp.code}"
            return 502, {
                "message": f"the ds-compute service could not say how switch {switch_id} goes: {message}"
            }
        return 200, reply

    async def switch_go(self, switch_id: str) -> tuple[int, dict | None]:
        """The service's ``POST api/switches/<id>/go`` (asked with this server's token):
        Lab saved the open documents of a ``hold_cutover`` switch, cut over now.

        ``(204, None)`` when the service took it; its own 4xx (409: the switch
        waits for no go, 404: no such switch, 403: not this user's) with a
        message; 502 with a message when the service cannot be reached, times
        out or answers anything else (a 5xx included). Never raises.
        ``switch_id`` must already match ``handlers.SWITCH_ID``.
        """
        ctx = self.context
        if not ctx.service_url:
            return 503, {
                "message": "DS_COMPUTE_SERVICE_URL is not set: this server does not know the ds-compute service"
            }
        resp = await self._service("POST", f"api/switches/{switch_id}/go", {}, self.service_timeout)
        if resp.code == 599:
            self.log.warning(
                "ds-compute: go for switch %s: service %s unreachable: %s",
                switch_id,
                ctx.service_url,
                resp.error,
            )
            return 502, {
                "message": f"could not reach the ds-compute service at {ctx.service_url}: {resp.error}"
            }
        if resp.code in (200, 204):
            self.log.info("ds-compute: switch %s: go (the open documents were saved)", switch_id)
            return 204, None
        reply = service_reply(resp)
        if 400 <= resp.code < 500:
            reply.setdefault("message", f"the ds-compute service answered {resp.code}")
            return resp.code, reply
        self.log.warning("ds-compute: go for switch %s: service answered %s: %s", switch_id, resp.code, reply)
        message = reply.get("message") or f"the ds-compute service answered {resp.code}"
        return 502, {
            "message": f"the ds-compute service did not take the go for switch {switch_id}: {message}"
        }

    async def forward_request(self, method: str, body: dict | None) -> tuple[int, dict]:
        """The service's ``POST api/requests`` (ask for a tier: ``profile``,
        ``duration``, ``reason``, passed as they are) or ``GET api/requests``
        (the user's own), asked with this server's token.

        ``(status, body)``: the service's answer and status (201, 200, its 4xx
        with the message and field); 502 with a message when the service cannot
        be reached, times out or answers anything but a JSON object (a 5xx
        included). Never raises.
        """
        ctx = self.context
        if not ctx.service_url:
            return 503, {
                "message": "DS_COMPUTE_SERVICE_URL is not set: this server does not know the ds-compute service"
            }
        resp = await self._service(method, "api/requests", body, self.service_timeout)
        if resp.code == 599:
            self.log.warning("ds-compute: requests: service %s unreachable: %s", ctx.service_url, resp.error)
            return 502, {
                "message": f"could not reach the ds-compute service at {ctx.service_url}: {resp.error}"
            }
        reply = service_reply(resp)
        if 400 <= resp.code < 500:
            reply.setdefault("message", f"the ds-compute service answered {resp.code}")
            return resp.code, reply
        complete = (
            isinstance(reply.get("id"), str) if method == "POST" else isinstance(reply.get("requests"), list)
        )
        if resp.code not in (200, 201) or not complete:
            self.log.warning("ds-compute: requests: service answered %s: %s", resp.code, reply)
            message = reply.get("message") or f"the ds-compute service answered {resp.code}"
            return 502, {"message": f"the ds-compute service could not take the request: {message}"}
        if method == "POST":
            self.log.info("ds-compute: request %s for tier %s sent", reply["id"], (body or {}).get("profile"))
        return resp.code, reply

    async def envs_model(self, wait: float = 0.0) -> dict:
        scanner = self.env_scanner
        ksm = self.kernel_spec_manager
        envs = scanner.envs()
        tasks: list[asyncio.Future] = []
        check = ksm.schedule_checks() if ksm else asyncio.ensure_future(scanner.check_pending())
        if check is not None:
            tasks.append(check)
        tasks += self.env_sizes.refresh([e.path for e in envs])
        if wait and tasks:
            await asyncio.wait([asyncio.shield(t) for t in tasks], timeout=wait)
            envs = scanner.envs()
        return {
            "volume_path": self.context.volume_path,
            "roots": scanner.roots,
            "kernels_managed": ksm is not None,
            "envs": [e.to_model(self.env_sizes.get(e.path)) for e in envs],
        }


def service_reply(resp: HTTPResponse) -> dict:
    """The service's JSON object answer; a non-JSON or non-object body becomes
    ``{"message": ...}`` (and ``"body"`` for JSON that is not an object)."""
    try:
        reply = json.loads(resp.body or b"{}")
    except ValueError:
        text = (resp.body or b"").decode(errors="replace")[:300]
        return {"message": f"the ds-compute service answered {resp.code} with a non-JSON body: {text}"}
    if not isinstance(reply, dict):
        return {"message": f"the ds-compute service answered {resp.code}", "body": reply}
    return reply


def _finite(value):
    """JSON numbers only: NaN and infinities (not JSON) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def clean_policy(reply) -> dict:
    """``{"budget", "notices"}`` out of a service answer (``api/policy`` or ``api/tiers``).

    Raises TypeError for a malformed one; drops malformed notices.
    """
    if not isinstance(reply, dict):
        raise TypeError("the answer is not a JSON object")
    budget = reply.get("budget")
    if budget is not None and not isinstance(budget, dict):
        raise TypeError("budget is not an object")
    if budget is not None:
        budget = {k: _finite(v) for k, v in budget.items()}
    notices = reply.get("notices") or []
    if not isinstance(notices, list):
        raise TypeError("notices is not a list")
    notices = [n for n in notices if isinstance(n, dict) and isinstance(n.get("message"), str)]
    return {"budget": budget, "notices": notices}
