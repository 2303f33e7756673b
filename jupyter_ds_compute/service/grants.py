"""Requests for a tier the user may not use, their decisions, and the grants' ends.

A grant is a JupyterHub group membership with an end: approving a request
adds the user to the tier's first ``allowed_groups`` group through the hub
API (``groups!group=<g>``), and at ``expires`` the service removes them
again and switches a server still on the tier down to the user's default
tier, as the idle downshift does. Every check that already exists (the
service's switch validation, the spawner's ``apply_user_options``, the
spawn form, ``api/tiers``) reads the hub's groups, so none of them needs to
know about grants: the hub's group table is the one source of truth of who
may use a tier, and the ``requests`` table of the store only says why and
until when (docs/internals.md, "Requests and grants").

The rules are pure functions of :mod:`jupyter_ds_compute.policy`; this
module gathers their inputs, calls the hub, records and audits:

- ``access:request`` (``pending``/``refused``), ``access:decision``
  (``approved``/``denied``), ``access:grant`` (``expiring``, ``expired``)
  and ``policy:grant`` (``downshift``; a refused downshift is audited by the
  orchestrator) events, which Lab shows as notices (``handlers.notices``)
  and the metrics count.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from .. import formatting, policy, tiers
from .hubapi import HubAPIError, HubUnavailable, server_label
from .orchestrator import SwitchRefused
from .periodic import Periodic
from .store import RequestExists, isoformat, utcnow
from .tiersource import NoTiers

__all__ = ["GrantRefused", "Grants", "approver_of", "readable_utc", "tier_name"]


def readable_utc(ts: float | None) -> str:
    """A unix time as the notices give it: ``2026-12-08 14:05 UTC`` (Lab shows them as they are)."""
    if ts is None:
        return "an unknown time"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def tier_name(profiles: list[dict] | None, slug: str) -> str:
    """The display name of tier ``slug`` in ``profiles`` (the slug if it is not there any more)."""
    for p in profiles or ():
        if p.get("slug") == slug:
            return p.get("display_name") or slug
    return slug


def approver_of(profiles: list[dict], caller: dict) -> list[str]:
    """The names of the tiers whose ``approvers`` groups ``caller`` (an identity
    model: its groups may be a minute old) is a member of."""
    groups = set(caller.get("groups") or ())
    return [t.display_name for t in tiers.tiers_of(profiles) if set(t.approvers or ()) & groups]


class GrantRefused(Exception):
    """A request or decision refused: ``status`` (400/403/404/409/502), ``message``, ``field``."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def _text(body: dict, key: str, required: bool) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise GrantRefused(400, f"'{key}' must be a non-empty string.", key)
    if len(value) > policy.MAX_REASON_LENGTH:
        raise GrantRefused(
            400, f"'{key}' is too long: at most {policy.MAX_REASON_LENGTH} characters, not {len(value)}.", key
        )
    return value.strip()


def _duration(body: dict, key: str, required: bool) -> float | None:
    value = body.get(key)
    if value is None:
        if required:
            raise GrantRefused(400, f"'{key}' is required: a duration like '7d', '12h' or '30m'.", key)
        return None
    try:
        return policy.parse_duration(value)
    except ValueError as e:
        raise GrantRefused(400, f"'{key}' {e}.", key) from None


class Grants:
    """Requests, decisions and the grant loop (see the module docstring)."""

    def __init__(self, hub, store, orchestrator, live, tier_source, settings: dict, log=None):
        self.hub = hub
        self.store = store
        self.orchestrator = orchestrator
        self.live = live
        self.tier_source = tier_source
        self.settings = settings
        self.log = log or logging.getLogger(__name__)
        self._loop: Periodic | None = None

    # -- inputs ----------------------------------------------------------------

    async def profiles_of(self, user: str) -> list[dict]:
        """The tiers of ``user`` (their default server's catalogue, else every tier known)."""
        try:
            return await self.tier_source.of_server(user, "")
        except NoTiers:
            return self.tier_source.known
        except HubAPIError as e:
            if isinstance(e, HubUnavailable):
                raise GrantRefused(
                    502, "Could not ask JupyterHub about your server; try again shortly."
                ) from None
            return self.tier_source.known

    async def groups_of(self, user: str) -> list[str]:
        """``user``'s groups as the hub has them now (an identity model's are up to a
        minute old: HubAuth caches it, and grants change groups)."""
        try:
            found = await self.hub.get_user(user)
        except HubAPIError as e:
            self.log.error("Could not read %s's groups from the hub: %s", user, e)
            raise GrantRefused(502, "Could not ask JupyterHub about the user; try again shortly.") from None
        if found is None:
            raise GrantRefused(404, f"No such user: {user}.")
        return list(found.get("groups") or [])

    @staticmethod
    def tier_of(profiles: list[dict], slug) -> tiers.Tier:
        if not isinstance(slug, str) or not slug:
            raise GrantRefused(400, "'profile' must be the slug of a tier.", "profile")
        try:
            return tiers.get_tier(profiles, slug)
        except tiers.TierOptionsError as e:
            raise GrantRefused(400, str(e), "profile") from None

    # -- requests ----------------------------------------------------------------

    async def request(self, caller: dict, body: dict) -> dict:
        """``POST api/requests``: the caller asks for a tier for themselves; the
        record. A refusal is audited (``access:request``/``refused``) and raised."""
        try:
            return await self._request(caller, body)
        except GrantRefused as e:
            if e.status < 500:
                slug = body.get("profile") if isinstance(body.get("profile"), str) else None
                self.store.audit(
                    "access:request",
                    actor=caller["name"],
                    user=caller["name"],
                    to_profile=slug[:200] if slug else None,
                    outcome="refused",
                    reason=f"{e.status}: {e.message}",
                )
                self.log.info("Refused %s's request for tier %r: %s", caller["name"], slug, e.message)
            raise

    async def _request(self, caller: dict, body: dict) -> dict:
        user = caller["name"]
        unknown = sorted(set(body) - {"profile", "duration", "reason"})
        if unknown:
            raise GrantRefused(
                400, f"Unknown field {unknown[0]!r}: a request has profile, duration and reason.", unknown[0]
            )
        slug = body.get("profile")
        profiles = await self.profiles_of(user)
        tier = self.tier_of(profiles, slug)
        duration = _duration(body, "duration", required=True)
        reason = _text(body, "reason", required=True)
        groups = await self.groups_of(user)
        open_one = self.store.open_request(user, tier.slug)
        refusal = policy.request_refusal(
            display_name=tier.display_name,
            allowed_groups=tier.allowed_groups,
            max_grant=tier.max_grant,
            user_groups=groups,
            duration=duration,
            pending=bool(open_one and open_one["state"] == "pending"),
            granted=bool(open_one and open_one["state"] == "approved"),
        )
        if refusal:
            field, message = refusal
            raise GrantRefused(400, message[0].upper() + message[1:] + ".", field)
        try:
            record = self.store.create_request(user=user, profile=tier.slug, duration=duration, reason=reason)
        except RequestExists as e:
            message = f"A request of yours for tier {tier.display_name!r} is {e.existing['state']} already."
            raise GrantRefused(400, message, "profile") from None
        self.store.audit(
            "access:request",
            actor=user,
            user=user,
            to_profile=tier.slug,
            outcome="pending",
            duration=duration,
            reason=reason,
        )
        self.log.info(
            "%s requests tier %s for %s (request %s)",
            user,
            tier.slug,
            formatting.duration(duration),
            record["id"],
        )
        return record

    async def may_decide(self, caller: dict, record: dict, profiles=None) -> str | None:
        """Why ``caller`` may not decide ``record`` (None: they may)."""
        from . import authz

        profiles = profiles if profiles is not None else await self.profiles_of(record["user"])
        try:
            tier = tiers.get_tier(profiles, record["profile"])
            approvers, name = tier.approvers, tier.display_name
        except tiers.TierOptionsError:  # the tier is gone: admins only
            approvers, name = (), record["profile"]
        is_admin = authz.is_admin(caller)
        groups = [] if is_admin or not approvers else await self.groups_of(caller["name"])
        return policy.decision_refusal(
            decider=caller["name"],
            requester=record["user"],
            is_admin=is_admin,
            decider_groups=groups,
            approvers=approvers,
            display_name=name,
        )

    async def decidable(self, caller: dict) -> list[dict]:
        """The pending requests ``caller`` may decide (admins: all)."""
        out = []
        for record in self.store.list_requests(states=("pending",)):
            if await self.may_decide(caller, record) is None:
                out.append(record)
        return out

    async def decide(self, caller: dict, request_id: str, body: dict) -> dict:
        """``POST api/requests/<id>/decision``: approve (optionally shorter) or
        deny; the record. A refusal is audited (``access:decision``/``refused``) and raised."""
        try:
            return await self._decide(caller, request_id, body)
        except GrantRefused as e:
            if e.status < 500:
                record = self.store.get_request(request_id) or {}
                self.store.audit(
                    "access:decision",
                    actor=caller["name"],
                    user=record.get("user"),
                    to_profile=record.get("profile"),
                    outcome="refused",
                    reason=f"{e.status}: {e.message}",
                )
                self.log.info(
                    "Refused %s's decision of request %r: %s", caller["name"], request_id[:40], e.message
                )
            raise

    async def _decide(self, caller: dict, request_id: str, body: dict) -> dict:
        record = self.store.get_request(request_id)
        if record is None:
            raise GrantRefused(404, f"No request with id {request_id!r}.", "id")
        unknown = sorted(set(body) - {"approve", "duration", "reason"})
        if unknown:
            raise GrantRefused(
                400, f"Unknown field {unknown[0]!r}: a decision has approve, duration and reason.", unknown[0]
            )
        approve = body.get("approve")
        if not isinstance(approve, bool):
            raise GrantRefused(400, "'approve' must be true or false.", "approve")
        profiles = await self.profiles_of(record["user"])
        refusal = await self.may_decide(caller, record, profiles)
        if refusal:
            raise GrantRefused(403, refusal[0].upper() + refusal[1:] + ".")
        reason = _text(body, "reason", required=not approve)
        approved = _duration(body, "duration", required=False)
        if record["state"] != "pending":
            raise GrantRefused(409, f"Request {request_id} is {record['state']} already.", "id")
        if not approve:
            if approved is not None:
                raise GrantRefused(400, "'duration' is only for an approval.", "duration")
            name = tier_name(profiles, record["profile"])
            return self._record_decision(caller, record, approve=False, reason=reason, name=name)
        tier = self.tier_of(profiles, record["profile"])
        if tier.max_grant is None or policy.grant_group(tier.allowed_groups) is None:
            raise GrantRefused(409, f"Tier {tier.display_name!r} cannot be granted any more (no max_grant).")
        try:
            granted = policy.granted_duration(record["duration"], approved, tier.max_grant)
        except ValueError as e:
            raise GrantRefused(400, f"'duration' {e}.", "duration") from None
        group = policy.grant_group(tier.allowed_groups)
        try:
            await self.hub.add_group_member(group, record["user"])
        except HubAPIError as e:
            self.log.error("Could not add %s to group %s for a grant: %s", record["user"], group, e)
            if e.status == 404:
                raise GrantRefused(
                    409,
                    f"The group {group!r} does not exist in JupyterHub: create it first (the tier's allowed_groups).",
                ) from None
            if e.status == 403:
                raise GrantRefused(
                    502,
                    f"The ds-compute service may not change the group {group!r}: its role needs "
                    f"groups!group={group} (docs/internals.md, 'Requests and grants').",
                ) from None
            raise GrantRefused(
                502, "Could not ask JupyterHub to grant the tier; try again shortly."
            ) from None
        try:
            return self._record_decision(
                caller,
                record,
                approve=True,
                reason=reason,
                granted=granted,
                group=group,
                name=tier.display_name,
            )
        except GrantRefused:
            # decided (denied) by someone else while the hub added the member: undo the membership
            if (self.store.get_request(record["id"]) or {}).get("state") != "approved":
                try:
                    await self.hub.remove_group_member(group, record["user"])
                except HubAPIError as e:
                    self.log.error("Could not undo %s's membership of %s: %s", record["user"], group, e)
            raise

    def _record_decision(
        self, caller, record, *, approve, reason, granted=None, group=None, name=None
    ) -> dict:
        decided = self.store.decide_request(
            record["id"],
            approve=approve,
            decided_by=caller["name"],
            reason=reason,
            granted=granted,
            grant_group=group,
        )
        if decided is None:  # decided by someone else meanwhile
            raise GrantRefused(409, f"Request {record['id']} was decided meanwhile.", "id")
        outcome = "approved" if approve else "denied"
        name = name or record["profile"]
        if approve:
            text = f"Your request for tier {name} is approved until {readable_utc(decided['expires_ts'])}"
            text += f" ({formatting.duration(granted)})" + (f": {reason}" if reason else "")
        else:
            text = f"Your request for tier {name} is denied: {reason}"
        self.store.audit(
            "access:decision",
            actor=caller["name"],
            user=record["user"],
            to_profile=record["profile"],
            outcome=outcome,
            duration=granted,
            reason=text,
        )
        self.log.info(
            "%s %s %s's request %s for tier %s%s",
            caller["name"],
            outcome,
            record["user"],
            record["id"],
            record["profile"],
            f" for {formatting.duration(granted)} (group {group})" if approve else f": {reason}",
        )
        return decided

    # -- the grants' ends --------------------------------------------------------

    async def check(self, now: float | None = None) -> list[dict]:
        """One pass: notices before the ends, the ends, the downshifts; what was done."""
        now = utcnow() if now is None else now
        done = []
        notice = self.settings["grant_expiry_notice"]
        for grant in self.store.grants_due(now + notice):
            try:
                if grant["expires_ts"] <= now:
                    done.append(await self.end(grant, now))
                elif grant["noticed"] is None:
                    done.append(self.notify(grant, now))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - one grant must not stop the others
                self.log.warning("Grant %s of %s: %s (retried next round)", grant["id"], grant["user"], e)
        for grant in self.store.unsettled_grants():
            try:
                done.extend(await self.downshift(grant))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                self.log.warning("Downshift after grant %s of %s: %s", grant["id"], grant["user"], e)
        return done

    def notify(self, grant: dict, now: float) -> dict:
        left = formatting.duration(max(0.0, grant["expires_ts"] - now))
        name = tier_name(self.tier_source.known, grant["profile"])
        text = (
            f"Your access to tier {name} ends in {left} (at {readable_utc(grant['expires_ts'])}): "
            "a server on it will then be moved to your default tier"
        )
        self.store.update_request(grant["id"], noticed=now)
        self.store.audit(
            "access:grant",
            actor="policy:grant",
            user=grant["user"],
            to_profile=grant["profile"],
            outcome="expiring",
            reason=text,
        )
        self.log.info("Grant %s of %s on %s: %s", grant["id"], grant["user"], grant["profile"], text)
        return {"id": grant["id"], "user": grant["user"], "action": "notice"}

    async def end(self, grant: dict, now: float) -> dict:
        """Take the user out of the grant's group (retried next round if the hub refuses)."""
        if grant["grant_group"]:
            await self.hub.remove_group_member(grant["grant_group"], grant["user"])
        self.store.update_request(grant["id"], state="expired", ended=now)
        name = tier_name(self.tier_source.known, grant["profile"])
        text = f"Your access to tier {name} ended at {readable_utc(grant['expires_ts'])}"
        self.store.audit(
            "access:grant",
            actor="policy:grant",
            user=grant["user"],
            to_profile=grant["profile"],
            outcome="expired",
            reason=text,
        )
        self.log.info(
            "Grant %s ended: %s left group %s (tier %s)",
            grant["id"],
            grant["user"],
            grant["grant_group"],
            grant["profile"],
        )
        return {"id": grant["id"], "user": grant["user"], "action": "expired"}

    async def downshift(self, grant: dict) -> list[dict]:
        """Switch the user's servers still on the grant's tier to their default
        tier (as an idle downshift); the grant is settled once none is left."""
        user, slug = grant["user"], grant["profile"]
        model = await self.hub.get_user(user)
        if model is None:
            self.store.update_request(grant["id"], settled=1)
            return []
        groups = model.get("groups") or []
        done, waiting = [], False
        for name, srv in (model.get("servers") or {}).items():
            if (srv.get("user_options") or {}).get("profile") != slug:
                continue
            if srv.get("stopped") and not srv.get("pending"):
                continue
            if srv.get("pending") or not srv.get("ready") or self.store.active_switch(user, name):
                waiting = True  # starting, stopping or switching: look again next round
                continue
            profiles = self.tier_source.of_model(srv) or self.tier_source.known
            try:
                tier = tiers.get_tier(profiles, slug)
            except tiers.TierOptionsError:
                continue
            if policy.group_refusal(tier.allowed_groups, groups) is None:
                continue  # allowed again (another grant, or an admin's group): leave it
            target = tiers.default_slug(profiles, groups)
            if not target or target == slug:
                continue
            target_name = tiers.get_tier(profiles, target).display_name
            message = (
                f"your access to tier {tier.display_name} ended at {readable_utc(grant['expires_ts'])}: "
                f"moved to {target_name}"
            )
            try:
                record = await self.orchestrator.request_switch(
                    None,
                    {"user": user, "server_name": name, "profile": target},
                    profiles=profiles,
                    live=self.live,
                    requested_by="policy:grant",
                    reason=message,
                )
            except SwitchRefused as e:
                self.log.info("Grant downshift of %s not done: %s", server_label(user, name), e.message)
                waiting = True
                continue
            self.store.audit(
                "policy:grant",
                actor="policy:grant",
                user=user,
                server_name=name,
                switch_id=record["id"],
                from_profile=slug,
                to_profile=target,
                outcome="downshift",
                reason=message,
            )
            self.log.info(
                "Grant downshift of %s: %s (switch %s)", server_label(user, name), message, record["id"]
            )
            self.orchestrator.launch(record["id"])
            done.append({"id": grant["id"], "user": user, "server_name": name, "action": "downshift"})
        if not waiting:
            self.store.update_request(grant["id"], settled=1)
        return done

    # -- the loop ------------------------------------------------------------------

    def start(self) -> None:
        """Check every ``grant_check_interval`` seconds (at once at start: ends missed while down)."""
        if self._loop is None:
            self._loop = Periodic(
                "grants", lambda: self.settings["grant_check_interval"], self.check, self.log
            )
        self._loop.start()

    async def stop_loop(self) -> None:
        if self._loop is not None:
            await self._loop.stop()


def public(record: dict) -> dict:
    """A request as the API answers it (without the store's raw time)."""
    out = {k: v for k, v in record.items() if k != "expires_ts"}
    out["now"] = isoformat(utcnow())
    return out
