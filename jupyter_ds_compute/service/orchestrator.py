"""The switch state machine: stop, patch options, start, wait ready, verify;
roll back to the previous tier on failure; reconcile after a restart.

Order and races follow ``notes/hub-service.md`` (JupyterHub 6.1):

0. ``prepare`` (make before break): the target machine is readied while
   the old server keeps serving (:mod:`.prepare`: the hub's spawner watches
   the wanted set and reports). A failure or ``prepare_timeout`` ends the
   switch ``failed`` with the old server never touched; a backend that
   cannot prepare ahead (or a hub that does not watch) skips the step.
1. ``stop``: ``DELETE`` the server, poll until ``stopped and not pending``.
2. ``patch-options``: ``PATCH`` the stopped server's ``user_options``, so a
   "Launch Server" click by the user in the gap also starts the new tier.
3. ``start``: ``POST`` with the new ``user_options``; 400 "already running"
   means someone started it in the gap, which ``verify`` then judges.
4. ``wait-ready``: poll until ``ready`` while copying the hub's spawn
   progress messages into the step's message.
5. ``verify``: ``user_options.profile`` of the running server is the target.

Any failure records why, then restarts the server on the previous tier with
the previous ``user_options`` (``rolled_back``). If that fails too the server
is left stopped and the switch is ``failed``. Every wait is bounded.

A hub that does not answer (:class:`~.hubapi.HubUnavailable`: refused,
reset, timed out, a proxy's 502/503) is not a failure: what the call did is
*unknown*. The switch stays ``running``, the step's message says it waits,
and the hub is asked again with exponential backoff (each wait logged with
the user and server). Once it answers, the switch goes on from where the
hub's server model says it is (as after a restart of the service) — never a
rollback against a hub that was down. Only when the hub stays silent longer
than ``hub_wait_timeout`` does the switch end ``failed`` with ``failure =
"hub-unavailable"``; :meth:`Orchestrator.reconcile` looks at such switches
again at the next service start.

State lives in the :class:`~.store.Store`, so :meth:`Orchestrator.reconcile`
can finish any switch a killed service left behind, judging from the hub's
server model where the switch really is.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

from .. import policy, tiers
from . import authz
from .accounting import running_counts
from .hubapi import HubAPIError, HubUnavailable, server_label
from .prepare import Board
from .store import STEP_NAMES, Store, SwitchInFlight
from .urls import safe_next_url

__all__ = ["HUB_UNAVAILABLE", "Orchestrator", "StepFailed", "SwitchRefused", "profile_of", "token_server"]

#: ``failure`` of a switch that ended because the hub did not answer (its outcome is unknown)
HUB_UNAVAILABLE = "hub-unavailable"

#: at most this many separate hub outages in one run of a switch
MAX_HUB_OUTAGES = 20


class StepFailed(Exception):
    """A step failed; ``reason`` is what the user and the audit log see."""

    def __init__(self, step: str, reason: str):
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class SwitchRefused(Exception):
    """A switch request refused before anything was stopped (already audited).

    ``status`` is the HTTP status the API answers (400 bad input, 403 not
    allowed, 404 no such user/server, 409 busy, 502 the hub did not say);
    ``message`` is what the requester sees; ``field`` names the bad request
    field (400s); ``policy`` the rule that refused (``group``, ``cap``,
    ``budget``); ``switch_id`` the switch already in flight (409).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        policy: str | None = None,
        switch_id: str | None = None,
    ):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.field = field
        self.policy = policy
        self.switch_id = switch_id

    def extra(self) -> dict:
        """The JSON fields an API answer carries besides ``message``."""
        out = {}
        if self.field:
            out["field"] = self.field
        if self.switch_id:
            out["id"] = self.switch_id
        return out


def profile_of(model: dict | None) -> str | None:
    """The tier slug a server model was started with (``user_options.profile``)."""
    if not model:
        return None
    return (model.get("user_options") or {}).get("profile")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HubAPIError):
        if exc.status:
            return f"the hub answered {exc.status}: {exc.message}"
        return exc.message
    if isinstance(exc, asyncio.TimeoutError):
        return str(exc) or "timed out"
    return str(exc) or type(exc).__name__


class Orchestrator:
    """Runs switches recorded in ``store`` against the hub API ``hub``.

    ``hub`` is a :class:`~.hubapi.HubAPI` (tests pass a fake with the same
    methods). Timeouts are in seconds. ``hub_wait_timeout`` bounds one wait
    for a hub that does not answer (default: ``stop_timeout +
    start_timeout``, the longest a switch may take); the waits between two
    tries grow from ``backoff_initial`` by doubling up to ``backoff_max``.
    """

    def __init__(
        self,
        hub,
        store: Store,
        *,
        stop_timeout: float = 300,
        start_timeout: float = 600,
        hub_wait_timeout: float | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 10,
        prepare_timeout: float = 600,
        make_before_break: bool = True,
        hold_timeout: float = 15,
        log: logging.Logger | None = None,
    ):
        self.hub = hub
        self.store = store
        #: what switches want prepared; the hub's spawner watches it (``api/hub/prepare``)
        self.board = Board()
        self.prepare_timeout = prepare_timeout
        self.make_before_break = make_before_break
        #: switches whose requester (Lab) saves the user's work before the cut-over:
        #: set by :meth:`release_hold` (``POST api/switches/<id>/go``), waited for at most ``hold_timeout``
        self.holds: dict[str, asyncio.Event] = {}
        self.hold_timeout = hold_timeout
        self._holding: set[str] = set()
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.hub_wait_timeout = stop_timeout + start_timeout if hub_wait_timeout is None else hub_wait_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.log = log or logging.getLogger(__name__)
        self.tasks: dict[str, asyncio.Task] = {}

    # entry points

    def launch(self, switch_id: str, *, resume: bool = False) -> asyncio.Task:
        """Run (or resume) a switch in the background; returns its task."""
        task = self.tasks.get(switch_id)
        if task is not None and not task.done():
            return task
        task = asyncio.ensure_future(self.run(switch_id, resume=resume))
        self.tasks[switch_id] = task
        task.add_done_callback(lambda t: self._task_done(switch_id, t))
        return task

    async def request_switch(
        self,
        caller: dict | None,
        body: dict,
        *,
        profiles: list[dict],
        live,
        base_url: str = "/",
        requested_by: str | None = None,
        reason: str | None = None,
    ) -> dict:
        """Check a switch request and record it (state ``pending``); returns the record.

        The one entry point of every switch: the API (``POST api/switches``),
        the admin page and the idle policy call it, then :meth:`launch` the
        record (the API only after answering: the caller may be a kernel on
        that very server). ``body`` is the request: ``user`` (default: the
        caller), ``server_name`` (default: the server a server token belongs
        to, else ""), ``next`` (a URL path to go back to), ``profile`` and the
        tier's options; it is not changed.

        ``caller`` is the hub's model of the requester (a user, with its
        token's scopes). ``caller=None`` is a policy of the service itself,
        recorded as ``requested_by`` (e.g. ``policy:idle``, with ``reason``
        saying why): no scope checks and no budget (a policy moves servers
        to cheaper tiers), but the tier, its options and its cap are checked.

        The checks, all before anything is stopped: who may switch what
        (:mod:`.authz`), the tier and its options for the owner's groups, the
        server exists and runs, the switch changes something, caps (not
        counting this server, counting switches in flight to that tier) and
        budgets from a fresh poll of the hub, and no other switch of that
        server in flight. Each refusal is audited (``request``, or
        ``policy:<group|cap|budget>``; a policy's refusals as
        ``requested_by``) and raised as :class:`SwitchRefused`.
        """
        body = dict(body)
        actor = caller["name"] if caller is not None else requested_by
        if not actor:
            raise ValueError("request_switch needs a caller or requested_by")
        target = {"user": None, "server_name": None, "profile": body.get("profile")}

        def refuse(status, message, policy_name=None, **kw):
            event = requested_by if caller is None else f"policy:{policy_name}" if policy_name else "request"
            audit_reason = f"{status}: {message}"
            if caller is None and reason:
                audit_reason = f"{reason}; not moved: {message}"
            self.store.audit(
                event,
                actor=actor,
                user=target["user"],
                server_name=target["server_name"],
                to_profile=target["profile"] if isinstance(target["profile"], str) else None,
                outcome="refused",
                reason=audit_reason,
            )
            self.log.info(
                "Refused switch of %s to %r by %s: %s",
                server_label(target["user"] or "?", target["server_name"] or ""),
                target["profile"],
                actor,
                message,
            )
            return SwitchRefused(status, message, policy=policy_name, **kw)

        if caller is not None and caller.get("kind", "user") != "user":
            raise refuse(403, "Only users (and their servers) may switch servers.")
        is_admin = authz.is_admin(caller)  # tiers/policy take it, and do not lift limits with it
        owner = body.pop("user", None) or (caller["name"] if caller is not None else None)
        if not isinstance(owner, str) or not owner:
            raise refuse(400, "'user' must be a user name.", field="user")
        target["user"] = owner
        server_name = body.pop("server_name", None)
        if server_name is None:
            server_name = token_server(caller, owner)
        if not isinstance(server_name, str):
            raise refuse(
                400, "'server_name' must be a string ('' for the default server).", field="server_name"
            )
        target["server_name"] = server_name
        next_url = body.pop("next", None)
        if next_url is not None and not isinstance(next_url, str):
            raise refuse(400, "'next' must be a URL path.", field="next")
        # the server extension saves and restores the kernels (serverext/state.py); recorded only
        keep_state = body.pop("keep_state", False)
        if not isinstance(keep_state, bool):
            raise refuse(400, "'keep_state' must be true or false.", field="keep_state")
        # a client (Lab) that saves the user's work before the cut-over, then says go
        hold_cutover = body.pop("hold_cutover", False)
        if not isinstance(hold_cutover, bool):
            raise refuse(400, "'hold_cutover' must be true or false.", field="hold_cutover")
        # by the token's scopes (never the admin flag); servers!group= needs the owner's groups first
        refusal = authz.act_refusal(caller, owner, server_name) if caller is not None else None
        if refusal and not (owner != caller["name"] and authz.group_filtered(caller)):
            raise refuse(403, refusal)
        if not isinstance(body.get("profile"), str) or not body.get("profile"):
            raise refuse(400, "'profile' (the tier to switch to) is required.", field="profile")
        label = server_label(owner, server_name)

        try:
            owner_model = await self.hub.get_user(owner)
        except HubAPIError as e:
            self.log.error("Could not read user %s from the hub: %s", owner, e)
            raise refuse(502, "Could not ask JupyterHub about the user; try again shortly.") from None
        if owner_model is None:
            raise refuse(403 if refusal else 404, refusal or f"No such user: {owner}.")
        groups = owner_model.get("groups") or []
        if refusal:
            refusal = authz.act_refusal(caller, owner, server_name, groups)
            if refusal:
                raise refuse(403, refusal)

        # tier and option checks before anything is stopped
        try:
            options = tiers.validate_user_options(profiles, body, groups, is_admin)
        except tiers.TierOptionsError as e:
            raise refuse(
                e.status, e.message, policy_name="group" if e.status == 403 else None, field=e.field
            ) from None

        try:
            server = await self.hub.get_server(owner, server_name)
        except HubAPIError as e:
            self.log.error("Could not read server %s from the hub: %s", label, e)
            raise refuse(502, "Could not ask JupyterHub about the server; try again shortly.") from None
        what = f"{owner}'s server {server_name!r}" if server_name else f"{owner}'s default server"
        if server is None:
            raise refuse(404, f"{what} does not exist.")
        if server.get("pending"):
            raise refuse(
                409, f"{what} is busy ({server['pending']} pending); try again when it has finished."
            )
        if not server.get("ready"):
            raise refuse(
                409,
                f"{what} is not running. Start it from the hub's home page and pick the tier there.",
            )
        current = profile_of(server) or tiers.default_slug(profiles, groups)
        from_options = dict(server.get("user_options") or {})
        if current:
            from_options["profile"] = current
        if current == options["profile"]:
            try:
                same = tiers.validate_user_options(profiles, from_options, groups, is_admin) == options
            except tiers.TierOptionsError:
                same = False
            if same:
                tier = tiers.get_tier(profiles, current)
                raise refuse(
                    400, f"{what} is already on tier {tier.display_name} ({current}).", field="profile"
                )

        # caps (not counting this server) and budgets, from a fresh poll of the hub
        try:
            refusals, _ = await live.refusals(owner, groups, exclude=(owner, server_name), profiles=profiles)
        except HubAPIError as e:
            self.log.error("Could not check caps and budgets with the hub: %s", e)
            raise refuse(502, "Could not ask JupyterHub what runs where; try again shortly.") from None
        tier = tiers.get_tier(profiles, options["profile"])
        kind, why = refusals.get(options["profile"], (None, None))
        if kind == "budget" and caller is None:
            kind = why = None  # a policy moving a server down is never refused for money
        if kind is None:
            # servers already on their way to this tier count against its cap too
            counts = running_counts(live.active, exclude=(owner, server_name))
            arriving = sum(
                1
                for sw in self.store.unfinished_switches()
                if sw["to_profile"] == tier.slug
                and (sw["user"], sw["server_name"]) != (owner, server_name)
                and not any(
                    (s["user"], s["server_name"], s["profile"]) == (sw["user"], sw["server_name"], tier.slug)
                    for s in live.active
                )
            )
            why = policy.cap_refusal(tier.display_name, tier.max_servers, counts.get(tier.slug, 0) + arriving)
            kind = "cap" if why else None
        if kind is not None:
            raise refuse(403, why, policy_name=kind)

        try:
            record = self.store.create_switch(
                user=owner,
                server_name=server_name,
                requested_by=actor,
                from_profile=current,
                to_profile=options["profile"],
                from_options=from_options,
                to_options=options,
                next_url=safe_next_url(next_url, owner, server_name, base_url)
                if caller is not None
                else None,
                validate_message=reason or f"{tier.display_name} allowed for {owner}",
            )
            record["keep_state"] = keep_state
            if hold_cutover and caller is not None:
                self.holds[record["id"]] = asyncio.Event()
        except SwitchInFlight as e:
            raise refuse(
                409,
                f"A switch of {what} is already in progress; follow it or wait until it ends.",
                switch_id=e.switch_id,
            ) from None
        self.store.audit(
            "request",
            actor=actor,
            user=owner,
            server_name=server_name,
            switch_id=record["id"],
            from_profile=current,
            to_profile=options["profile"],
            outcome="accepted",
            reason=reason,
        )
        self.log.info(
            "Accepted switch %s of %s from %s to %s (requested by %s)",
            record["id"],
            label,
            current,
            options["profile"],
            actor,
        )
        return record

    def _task_done(self, switch_id: str, task: asyncio.Task) -> None:
        if self.tasks.get(switch_id) is task:
            del self.tasks[switch_id]
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("Switch %s ended with an unexpected error: %s", switch_id, exc, exc_info=exc)

    async def reconcile(self) -> list[asyncio.Task]:
        """Resume every switch that is not in a final state (at service start),
        and every switch that failed because the hub did not answer (its
        outcome is unknown; only the newest switch of its server)."""
        tasks = []
        for sw in self.store.switches_to_revisit():
            self.log.info(
                "Reconciling switch %s of %s (%s -> %s): it ended when the hub did not answer; looking again",
                sw["id"],
                server_label(sw["user"], sw["server_name"]),
                sw["from_profile"],
                sw["to_profile"],
            )
            try:
                # in flight again before any new request can be accepted for that server
                self.store.set_state(sw["id"], "running")
            except sqlite3.IntegrityError:
                continue  # a new switch of that server was accepted meanwhile
            tasks.append(self.launch(sw["id"], resume=True))
        for sw in self.store.unfinished_switches():
            if sw["id"] in self.tasks:
                continue
            self.log.info(
                "Reconciling switch %s of %s (%s -> %s, state %s)",
                sw["id"],
                server_label(sw["user"], sw["server_name"]),
                sw["from_profile"],
                sw["to_profile"],
                sw["state"],
            )
            tasks.append(self.launch(sw["id"], resume=sw["state"] != "pending"))
        return tasks

    async def stop(self) -> None:
        """Cancel running switches (they are resumed by the next reconcile)."""
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # the state machine

    async def run(self, switch_id: str, *, resume: bool = False) -> dict:
        """Drive one switch to a final state; returns the final record."""
        sw = self.store.get_switch(switch_id)
        if sw is None:
            raise KeyError(switch_id)
        label = server_label(sw["user"], sw["server_name"])
        t0 = time.monotonic()
        self.store.set_state(switch_id, "running")
        outages = 0
        while True:
            try:
                await self._attempt(sw, resume)
            except HubUnavailable as e:
                # unknown, not failed: wait for the hub, then judge from its model
                outages += 1
                if outages > MAX_HUB_OUTAGES or not await self._wait_for_hub(sw, e):
                    self._finish_unknown(sw, e)
                    break
                resume = True
                sw = self.store.get_switch(switch_id)
                continue
            break
        self.board.drop(switch_id)  # whatever was prepared and not used is released
        self.holds.pop(switch_id, None)
        self._holding.discard(switch_id)
        self.log.info(
            "Switch %s of %s finished in %.1fs: %s",
            switch_id,
            label,
            time.monotonic() - t0,
            self.store.get_switch(switch_id)["state"],
        )
        return self.store.get_switch(switch_id)

    async def _attempt(self, sw: dict, resume: bool) -> None:
        """One go at the switch: forward (or resume), rollback on a failed step.

        Raises :class:`HubUnavailable` when the hub stops answering; the
        switch is then neither finished nor rolled back.
        """
        label = server_label(sw["user"], sw["server_name"])
        try:
            if resume:
                if await self._resume(sw):
                    return
            else:
                self.log.info(
                    "Switching %s from tier %s to %s (switch %s)",
                    label,
                    sw["from_profile"],
                    sw["to_profile"],
                    sw["id"],
                )
                await self._forward(sw, "prepare")
        except StepFailed as e:
            if e.step == "prepare":
                # nothing was touched: no rollback, the old server still serves
                self.log.warning("Switch %s of %s failed while preparing: %s", sw["id"], label, e.reason)
                self._close_steps(sw, "skipped", "not done: preparing the new machine failed")
                self._finish(
                    sw,
                    "failed",
                    f"Preparing the {sw['to_profile']} machine failed: {e.reason}. "
                    f"Your server was not touched and still runs on {sw['from_profile']}.",
                )
                return
            reason = f"step {e.step} failed: {e.reason}"
            self.log.warning("Switch %s of %s failed, rolling back: %s", sw["id"], label, reason)
            await self._rollback(sw, reason)
            return
        self._finish(sw, "succeeded", None)

    async def _wait_for_hub(self, sw: dict, exc: HubUnavailable) -> bool:
        """Ask the hub again with exponential backoff until it answers.

        True once it answers (any status: an answer), False after
        ``hub_wait_timeout`` seconds of silence.
        """
        sid = sw["id"]
        user, name = sw["user"], sw["server_name"]
        label = server_label(user, name)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + self.hub_wait_timeout
        delay = self.backoff_initial
        why = _describe(exc)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.log.error(
                    "The hub did not answer for %.0fs (%s) during switch %s of %s; giving up, outcome unknown",
                    self.hub_wait_timeout,
                    why,
                    sid,
                    label,
                )
                return False
            wait = min(delay, remaining)
            self.log.warning(
                "The hub did not answer (%s) during switch %s of %s; its state is unknown, "
                "asking again in %.1fs",
                why,
                sid,
                label,
                wait,
            )
            self._mark_running_steps(
                sw, f"waiting for the hub, which did not answer ({why}); next try in {wait:.1f}s"
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.backoff_max)
            try:
                await self.hub.get_server(user, name)
            except HubUnavailable as e:
                why = _describe(e)
                continue
            except HubAPIError:
                pass  # an answer: the hub is back
            self.log.info(
                "The hub answers again after %.1fs; resuming switch %s of %s from the server's state",
                loop.time() - t0,
                sid,
                label,
            )
            self._mark_running_steps(sw, "the hub answers again; checking where the switch is")
            return True

    def _mark_running_steps(self, sw: dict, message: str) -> None:
        for step in self.store.get_switch(sw["id"])["steps"]:
            if step["status"] == "running":
                self.store.set_step(sw["id"], step["name"], message=message)

    def _finish_unknown(self, sw: dict, exc: HubUnavailable) -> None:
        """The hub stayed silent: ``failed`` with ``failure = hub-unavailable`` (revisited by reconcile)."""
        why = _describe(exc)
        for step in self.store.get_switch(sw["id"])["steps"]:
            if step["status"] == "running":
                self.store.set_step(
                    sw["id"], step["name"], "failed", f"unknown: the hub did not answer ({why})"
                )
        self._finish(
            sw,
            "failed",
            f"The hub did not answer for {self.hub_wait_timeout:.0f}s ({why}), so what became of the "
            "server is unknown; nothing was rolled back. The service looks at this switch again when "
            "it restarts; meanwhile check the server on the hub's home page.",
            failure=HUB_UNAVAILABLE,
        )

    async def _forward(self, sw: dict, start_at: str) -> None:
        """Run the forward steps from ``start_at`` on; raises StepFailed."""
        user, name = sw["user"], sw["server_name"]
        target = sw["to_options"]
        steps = {
            "prepare": lambda: self._do_prepare(sw),
            "stop": lambda: self._do_stop(user, name),
            "patch-options": lambda: self._do_patch(user, name, target),
            "start": lambda: self._do_start(user, name, target),
            "wait-ready": lambda: self._do_wait_ready(sw, "wait-ready"),
            "verify": lambda: self._do_verify(user, name, sw["to_profile"]),
        }
        names = list(STEP_NAMES[1:])
        for step_name in names[names.index(start_at) :]:
            if self.store.get_step(sw["id"], step_name) is None:
                continue  # a record from before that step existed
            if step_name == "stop":
                await self._hold(sw)
            await self._step(sw, step_name, steps[step_name])
            if step_name == "start":
                self.board.drop(sw["id"])  # the spawner has taken the prepared machine (or never will)

    async def _step(self, sw: dict, step_name: str, action) -> str:
        """Run one step, recording status, timing, message and audit."""
        sid = sw["id"]
        self.store.set_step(sid, step_name, "running")
        t0 = time.monotonic()
        try:
            message = await action()
        except asyncio.CancelledError:
            raise
        except HubUnavailable as e:
            # neither done nor failed: the caller waits for the hub
            self.store.set_step(sid, step_name, message=f"the hub did not answer ({_describe(e)})")
            raise
        except StepFailed as e:
            reason = e.reason
        except (HubAPIError, asyncio.TimeoutError) as e:
            reason = _describe(e)
        except Exception as e:
            self.log.exception(
                "Unexpected error in step %s of switch %s (%s)",
                step_name,
                sid,
                server_label(sw["user"], sw["server_name"]),
            )
            reason = f"internal error: {_describe(e)} (see the service log)"
        else:
            duration = time.monotonic() - t0
            self.store.set_step(sid, step_name, "done", message or "")
            self._audit_step(sw, step_name, "done", duration, message)
            return message
        duration = time.monotonic() - t0
        self.store.set_step(sid, step_name, "failed", reason)
        self._audit_step(sw, step_name, "failed", duration, reason)
        raise StepFailed(step_name, reason)

    # step actions (return the step's final message)

    async def _do_prepare(self, sw: dict) -> str:
        """Have the hub's spawner ready the target machine while the old server serves."""
        sid = sw["id"]
        if not self.make_before_break:
            return "skipped (c.DSComputeService.make_before_break = False): stop, then start"
        if not self.board.watched():
            return "skipped: the hub's spawner does not watch the service (stop, then start)"
        self.board.want(
            sid,
            {
                "user": sw["user"],
                "server_name": sw["server_name"],
                "from_profile": sw["from_profile"],
                "options": sw["to_options"],
                "timeout": self.prepare_timeout,
            },
        )
        t0 = time.monotonic()

        def on_message(report):
            if report.message:
                self.store.set_step(sid, "prepare", message=report.message)

        try:
            report = await self.board.wait_report(sid, self.prepare_timeout, on_message)
        except asyncio.TimeoutError:
            self.board.drop(sid)
            raise StepFailed(
                "prepare",
                f"the {sw['to_profile']} machine was not ready within {self.prepare_timeout:.0f}s "
                "(c.DSComputeService.prepare_timeout); it is released",
            ) from None
        if report.status == "unsupported":
            self.board.drop(sid)
            return f"not prepared ahead ({report.message}): stop, then start"
        if report.status != "ready":
            self.board.drop(sid)
            raise StepFailed("prepare", report.message or f"the spawner reported {report.status}")
        where = f" on {report.host}" if report.host else ""
        return f"ready{where} in {time.monotonic() - t0:.1f}s" + (
            f" ({report.message})" if report.message else ""
        )

    def cutover(self, switch_id: str) -> dict | None:
        """The hold of a switch for its API record: ``{"held", "waiting", "timeout"}``, or None."""
        if switch_id not in self.holds:
            return None
        return {
            "held": True,
            "waiting": switch_id in self._holding,
            "timeout": self.hold_timeout,
        }

    def release_hold(self, switch_id: str) -> bool:
        """``go``: the requester saved what it had; False when nothing waits for it."""
        event = self.holds.get(switch_id)
        if event is None:
            return False
        event.set()
        return True

    async def _hold(self, sw: dict) -> None:
        """Before the stop: give a requester that asked for it (``hold_cutover``) the
        chance to save the user's open documents, then cut over (at most ``hold_timeout``)."""
        event = self.holds.get(sw["id"])
        if event is None or event.is_set():
            return
        self._holding.add(sw["id"])
        message = self.store.get_step(sw["id"], "prepare")["message"]
        self.store.set_step(
            sw["id"], "prepare", message=f"{message}; waiting for JupyterLab to save your open documents"
        )
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(event.wait(), self.hold_timeout)
            why = f"saved in {time.monotonic() - t0:.1f}s"
        except asyncio.TimeoutError:
            why = f"no word from JupyterLab within {self.hold_timeout:.0f}s"
            self.log.info(
                "Switch %s of %s: %s; cutting over",
                sw["id"],
                server_label(sw["user"], sw["server_name"]),
                why,
            )
        finally:
            self._holding.discard(sw["id"])
        self.store.set_step(sw["id"], "prepare", message=f"{message}; {why}")

    async def _do_stop(self, user: str, name: str) -> str:
        t0 = time.monotonic()
        status = await self.hub.stop_server(user, name)
        if status == 202:
            await self.hub.wait_stopped(user, name, self.stop_timeout)
        return f"stopped in {time.monotonic() - t0:.1f}s"

    async def _do_patch(self, user: str, name: str, options: dict) -> str:
        await self.hub.patch_user_options(user, name, options)
        return f"stored options {_short(options)}"

    async def _do_start(self, user: str, name: str, options: dict) -> str:
        try:
            result = await self.hub.start_server(user, name, options)
        except HubUnavailable:
            raise
        except HubAPIError as e:
            if e.status < 500:
                raise
            # the hub answers a bare 500 when the server dies while the POST
            # waits; wait-ready then reads the spawner's reason from the
            # progress stream and the server model
            self.log.warning("Start of %s: %s", server_label(user, name), _describe(e))
            return f"the hub reported a problem ({e.status}); checking the server"
        if result == "already-running":
            return "the server was already started by someone else; checking its tier"
        if result == "ready":
            return "started"
        return "start requested"

    async def _do_wait_ready(self, sw: dict, step_name: str) -> str:
        user, name, sid = sw["user"], sw["server_name"], sw["id"]
        last = {"message": ""}

        def on_event(event: dict) -> None:
            message = str(event.get("message") or "").strip()
            if message:
                last["message"] = message
                self.store.set_step(sid, step_name, message=message)

        progress = asyncio.ensure_future(self.hub.progress(user, name, on_event, self.start_timeout))
        t0 = time.monotonic()
        try:
            model = await self.hub.wait_for(
                user,
                name,
                lambda m: m is None or m["ready"] or (m["stopped"] and not m["pending"]),
                self.start_timeout,
                "ready",
            )
            if model is None:
                raise StepFailed(step_name, "the server no longer exists")
            if not model["ready"]:
                # give the stream a moment to deliver "Spawn failed: <why>"
                try:
                    await asyncio.wait_for(asyncio.shield(progress), 2)
                except asyncio.TimeoutError:
                    pass
                why = last["message"] or "the server stopped while starting"
                raise StepFailed(step_name, why)
        finally:
            if not progress.done():
                progress.cancel()
        return f"ready in {time.monotonic() - t0:.1f}s"

    async def _do_verify(self, user: str, name: str, profile: str | None) -> str:
        model = await self.hub.get_server(user, name)
        if model is None or not model["ready"]:
            raise StepFailed("verify", "the server is not running")
        actual = profile_of(model)
        if actual != profile:
            raise StepFailed("verify", f"the server runs on tier {actual!r}, not {profile!r}")
        return f"running on tier {profile}"

    # rollback

    async def _rollback(self, sw: dict, reason: str) -> None:
        sid = sw["id"]
        user, name = sw["user"], sw["server_name"]
        label = server_label(user, name)
        previous = sw["from_options"]
        self.store.set_state(sid, "running", error=reason)
        self.store.add_step(sid, "rollback")
        self.store.set_step(
            sid, "rollback", "running", f"restarting on the previous tier {sw['from_profile']}"
        )
        t0 = time.monotonic()
        try:
            model = await self.hub.get_server(user, name)
            if (
                model
                and model["ready"]
                and not model["pending"]
                and (profile_of(model) == sw["from_profile"])
            ):
                message = f"the server is still running on tier {sw['from_profile']}"
            else:
                if model and (not model["stopped"] or model["pending"]):
                    self.store.set_step(sid, "rollback", message="stopping")
                    status = await self.hub.stop_server(user, name)
                    if status == 202 or model["pending"]:
                        await self.hub.wait_stopped(user, name, self.stop_timeout)
                self.store.set_step(sid, "rollback", message=f"starting on tier {sw['from_profile']}")
                await self.hub.patch_user_options(user, name, previous)
                await self.hub.start_server(user, name, previous)
                await self._do_wait_ready(sw, "rollback")
                await self._do_verify(user, name, sw["from_profile"])
                message = f"running again on tier {sw['from_profile']}"
        except (asyncio.CancelledError, HubUnavailable):
            # unavailable: the rollback is resumed once the hub answers
            raise
        except Exception as e:
            why = e.reason if isinstance(e, StepFailed) else _describe(e)
            if not isinstance(e, (StepFailed, HubAPIError, asyncio.TimeoutError)):
                self.log.exception("Unexpected error rolling back %s (switch %s)", label, sid)
            duration = time.monotonic() - t0
            self.store.set_step(sid, "rollback", "failed", why)
            self._audit_step(sw, "rollback", "failed", duration, why)
            stopped = await self._ensure_stopped(user, name)
            error = f"{reason}. Restarting on the previous tier {sw['from_profile']} failed too: {why}. " + (
                "The server is stopped; start it again from the hub's home page, "
                "and tell an administrator if that fails."
                if stopped
                else "The server could not be stopped either; an administrator must look at it."
            )
            self.log.error("Rollback of %s failed (switch %s): %s", label, sid, why)
            self._finish(sw, "failed", error)
            return
        duration = time.monotonic() - t0
        self.store.set_step(sid, "rollback", "done", message)
        self._audit_step(sw, "rollback", "done", duration, message)
        self._finish(
            sw,
            "rolled_back",
            f"{reason}. The server was restarted on the previous tier {sw['from_profile']}.",
        )

    async def _ensure_stopped(self, user: str, name: str) -> bool:
        """Best effort: leave the server stopped (never half-started)."""
        try:
            model = await self.hub.get_server(user, name)
            if model is None or (model["stopped"] and not model["pending"]):
                return True
            await self.hub.stop_server(user, name)
            await self.hub.wait_stopped(user, name, self.stop_timeout)
            return True
        except HubUnavailable:
            raise
        except Exception as e:
            self.log.error(
                "Could not stop %s after a failed rollback: %s", server_label(user, name), _describe(e)
            )
            return False

    # reconcile

    async def _resume(self, sw: dict) -> bool:
        """Pick up a switch a previous service process left running.

        Returns True when the switch was finished here, False when the
        forward path ran to success (the caller records ``succeeded``);
        raises StepFailed to make the caller roll back.
        """
        sid = sw["id"]
        user, name = sw["user"], sw["server_name"]
        for step in sw["steps"]:
            if step["status"] == "running":
                self.store.set_step(
                    sid, step["name"], message="interrupted (the service or the hub restarted); resuming"
                )
        # a start or stop may still be in progress: let it settle first
        try:
            model = await self.hub.wait_for(
                user,
                name,
                lambda m: m is None or not m["pending"],
                self.start_timeout,
                "settled",
            )
        except HubUnavailable:
            raise
        except (HubAPIError, asyncio.TimeoutError) as e:
            raise StepFailed("reconcile", _describe(e)) from None
        in_rollback = any(s["name"] == "rollback" for s in sw["steps"])
        if model is None:
            self._close_steps(sw, "failed", "the server no longer exists")
            self._finish(sw, "failed", "The server was deleted during the switch.")
            return True
        actual = profile_of(model)
        if in_rollback:
            reason = sw["error"] or "the switch was interrupted"
            if model["ready"] and actual == sw["from_profile"]:
                self._close_steps(sw, "done", f"running again on tier {sw['from_profile']}")
                self._finish(
                    sw,
                    "rolled_back",
                    f"{reason}. The server was restarted on the previous tier {sw['from_profile']}.",
                )
            else:
                await self._rollback(sw, reason)
            return True
        if model["ready"]:
            if actual == sw["to_profile"]:
                self._close_steps(sw, "done", f"confirmed after a service restart: running on tier {actual}")
                return False
            if actual == sw["from_profile"]:
                self._close_steps(sw, "skipped", "not done: the service restarted before this step")
                self._finish(
                    sw,
                    "rolled_back",
                    f"The service restarted during the switch; the server is still running on tier {actual}. "
                    "Switch again if you still want to.",
                )
                return True
            raise StepFailed("verify", f"the server runs on tier {actual!r}, not {sw['to_profile']!r}")
        # stopped: everything up to the stop is done; start on the target tier
        for step in sw["steps"]:
            if step["name"] == "stop" and step["status"] != "done":
                self.store.set_step(sid, "stop", "done", "confirmed stopped after a service restart")
        await self._forward(self.store.get_switch(sid), "patch-options")
        return False

    def _close_steps(self, sw: dict, status: str, message: str) -> None:
        for step in self.store.get_switch(sw["id"])["steps"]:
            if step["status"] in ("pending", "running"):
                self.store.set_step(sw["id"], step["name"], status, message)

    # records

    def _finish(self, sw: dict, state: str, error: str | None, failure: str | None = None) -> None:
        sid = sw["id"]
        self.store.set_state(sid, state, error=error, failure=failure)
        record = self.store.get_switch(sid)
        self.store.audit(
            "final",
            actor=sw["requested_by"],
            user=sw["user"],
            server_name=sw["server_name"],
            switch_id=sid,
            from_profile=sw["from_profile"],
            to_profile=sw["to_profile"],
            outcome=state,
            duration=record["duration"],
            reason=error,
        )

    def _audit_step(self, sw, step_name, status, duration, message) -> None:
        self.store.audit(
            "step",
            actor=sw["requested_by"],
            user=sw["user"],
            server_name=sw["server_name"],
            switch_id=sw["id"],
            from_profile=sw["from_profile"],
            to_profile=sw["to_profile"],
            outcome=f"{step_name}:{status}",
            duration=round(duration, 3),
            reason=message or None,
        )


def token_server(caller: dict | None, owner: str) -> str:
    """The server a server token belongs to (``access:servers!server=alice/``), else ""."""
    bound = authz.token_servers(caller) if caller is not None and caller.get("name") == owner else None
    return min(bound) if bound else ""


def _short(options: dict) -> str:
    text = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return text if len(text) <= 200 else text[:197] + "..."
