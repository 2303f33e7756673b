"""Idle downshift: move servers idle on an expensive tier down to the default tier.

Every ``idle_check_interval`` seconds the service reads the active servers
from the hub. A server is idle since the later of its hub ``last_activity``
(which the hub updates from the proxy's traffic and from the single-user
server's own activity reports, and those include kernel activity) and its
``started`` time. When :func:`jupyter_ds_compute.policy.idle_action` says so:

- ``downshift``: a switch to the owner's default tier, requested by
  ``policy:idle`` and run by the same orchestrator as any other switch
  (progress, rollback, audit);
- ``stop``: the server is stopped through the hub API (as the idle culler
  would; the spawner detaches the volume).

Each decision is written to the audit log as ``policy:idle`` with the reason,
which Lab shows (``notices`` in ``GET api/tiers``).

This runs alongside ``jupyterhub-idle-culler``: the culler stops servers idle
longer than *its* timeout through the same hub API, so a culled server goes
through the spawner's normal stop and its volume is detached.
"""

from __future__ import annotations

import asyncio
import logging

from .. import formatting, policy, tiers
from .accounting import parse_time
from .hubapi import HubAPIError, server_label
from .orchestrator import SwitchRefused
from .periodic import Periodic
from .store import utcnow

__all__ = ["IdleWatcher"]


class IdleWatcher:
    """The idle loop (see the module docstring)."""

    def __init__(self, live, store, orchestrator, hub, profiles, settings: dict, log=None):
        self.live = live
        self.store = store
        self.orchestrator = orchestrator
        self.hub = hub
        self.profiles = profiles
        self.settings = settings
        self.log = log or logging.getLogger(__name__)
        self._loop: Periodic | None = None

    def enabled(self) -> bool:
        return any(t.idle_downshift_after is not None for t in tiers.tiers_of(self.profiles))

    async def check(self, now: float | None = None) -> list[dict]:
        """One pass; returns the decisions taken (``{"user", "server_name", "action", ...}``)."""
        servers = await self.live.refresh()
        now = utcnow() if now is None else now
        taken = []
        for s in servers:
            if not s["ready"] or s["pending"] or not s["profile"]:
                continue
            try:
                tier = tiers.get_tier(self.profiles, s["profile"])
            except tiers.TierOptionsError:
                continue
            if tier.idle_downshift_after is None:
                continue
            if self.store.active_switch(s["user"], s["server_name"]) is not None:
                continue
            since = max(parse_time(s["last_activity"]) or 0, parse_time(s["started"]) or 0)
            if not since:
                continue
            idle = now - since
            default = tiers.default_slug(self.profiles, s["groups"])
            decision = policy.idle_action(
                profile=s["profile"],
                idle_downshift_after=tier.idle_downshift_after,
                idle_seconds=idle,
                default_profile=default,
                action=self.settings["idle_action"],
            )
            if decision is None:
                continue
            reason = (
                f"idle for {formatting.duration(idle)} on tier {tier.display_name}"
                f" (limit {formatting.duration(tier.idle_downshift_after)})"
            )
            try:
                if decision[0] == "downshift":
                    result = await self.downshift(s, tier, decision[1], reason)
                else:
                    result = await self.stop(s, tier, reason)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - one server must not stop the loop
                self.log.warning("Idle action on %s failed: %s", server_label(s["user"], s["server_name"]), e)
                continue
            if result:
                taken.append(result)
        return taken

    async def downshift(self, s: dict, tier, target: str, reason: str) -> dict | None:
        """Switch ``s`` to ``target`` through :meth:`.Orchestrator.request_switch` (the
        same checks as any switch, without scopes and budgets; refusals are
        audited there as ``policy:idle``); None if refused."""
        user, name = s["user"], s["server_name"]
        target_tier = tiers.get_tier(self.profiles, target)
        message = f"{reason}: moved to {target_tier.display_name}"
        try:
            record = await self.orchestrator.request_switch(
                None,
                {"user": user, "server_name": name, "profile": target},
                profiles=self.profiles,
                live=self.live,
                requested_by="policy:idle",
                reason=message,
            )
        except SwitchRefused as e:
            self.log.info("Idle downshift of %s not done: %s", server_label(user, name), e.message)
            return None
        self.store.audit(
            "policy:idle",
            actor="policy:idle",
            user=user,
            server_name=name,
            switch_id=record["id"],
            from_profile=record["from_profile"],
            to_profile=target,
            outcome="downshift",
            reason=message,
        )
        self.log.info("Idle downshift of %s: %s (switch %s)", server_label(user, name), message, record["id"])
        self.orchestrator.launch(record["id"])
        return {"user": user, "server_name": name, "action": "downshift", "switch_id": record["id"]}

    async def stop(self, s: dict, tier, reason: str) -> dict | None:
        user, name = s["user"], s["server_name"]
        message = f"{reason}: stopped"
        try:
            await self.hub.stop_server(user, name)
        except HubAPIError as e:
            self.log.warning("Idle stop of %s failed: %s", server_label(user, name), e)
            return None
        self.store.audit(
            "policy:idle",
            actor="policy:idle",
            user=user,
            server_name=name,
            from_profile=s["profile"],
            outcome="stop",
            reason=message,
        )
        self.log.info("Idle stop of %s: %s", server_label(user, name), message)
        return {"user": user, "server_name": name, "action": "stop"}

    def start(self) -> None:
        """Check every ``idle_check_interval`` seconds, if some tier has ``idle_downshift_after``."""
        if not self.enabled():
            return
        if self._loop is None:
            self._loop = Periodic("idle", lambda: self.settings["idle_check_interval"], self.check, self.log)
        self._loop.start()

    async def stop_loop(self) -> None:
        if self._loop is not None:
            await self._loop.stop()
