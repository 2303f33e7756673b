"""The admin panel: ``/services/ds-compute/admin`` and ``admin/audit``.

Server-rendered pages in JupyterHub's look (its Bootstrap), for callers
whose token (or HubOAuth cookie) holds ``custom:ds-compute:admin``
(:data:`.authz.ADMIN_SCOPE`; the hub's admin users get it, see
``hubconfig.configure``), never by the model's ``admin`` flag; everyone else
gets a 403 page. An action on a server also needs the server scopes of
:func:`.authz.can_act_on` (``admin:servers``/``servers!user=...``).

- ``GET admin?tier=&state=&user=``: charts (:mod:`.charts`: cost per tier
  and per user this budget period, switches per day, servers per tier over
  time; SVG rendered here, no script), then one row per server (users without a
  server get one ``stopped`` row): tier, state, volume id and where it is
  attached, time on tier, cost this budget period, last activity; actions.
  The volume comes from the server's spawner state (``volume_info``: the
  volume driver's own ``describe()`` at the last start or stop), whatever
  the driver (local, EBS, EFS); see :func:`volume_of`.
- ``POST admin/action`` (HubOAuth cookie + ``_xsrf`` form field):
  ``action=switch`` (through the orchestrator, same checks as the API),
  ``stop`` (hub API ``DELETE``), ``start`` (hub API ``POST`` with the tier).
- ``POST admin/requests/<id>`` (cookie + ``_xsrf``): approve (optionally
  for a shorter duration) or deny (with a reason) a pending request for a
  tier; the page lists them with the requester's spending and budget this
  period (docs/internals.md, "Requests and grants"). The section and the
  decision are those of the decisions page (:mod:`.decisions`, ``requests``),
  where a tier's approvers decide.
- ``GET admin/audit?user=&event=``: the audit log.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

from tornado import web

from .. import formatting, policy, tiers
from . import authz, charts, warmpool
from .accounting import parse_time
from .decisions import decided_message, decision_body, pending_rows
from .grants import GrantRefused
from .handlers import APIError, PageHandler
from .hubapi import HubAPIError
from .store import isoformat, utcnow

__all__ = ["admin_handlers"]

STATES = ("running", "starting", "stopping", "switching", "stopped")


def volume_of(server: dict | None) -> dict | None:
    """The volume of a server model, as its volume driver described it; None if unknown.

    ``{"id", "driver", "attached_to", "as_of", ...}`` from the spawner state's
    ``volume_info`` (``describe()`` at the last start or stop), else the
    driver's own state (``volume``: id, driver) for servers last started
    before ``volume_info`` existed. The state is in the model only with the
    ``admin:server_state`` scope; a server that never started has none.
    """
    state = (server or {}).get("state") or {}
    info = state.get("volume_info")
    if isinstance(info, dict) and info.get("id"):
        return dict(info)
    vol = state.get("volume")
    if isinstance(vol, dict) and vol.get("id"):
        return {
            "id": vol["id"],
            "driver": vol.get("driver") or "",
            "attached_to": vol.get("attached_to") or None,
            "as_of": None,
        }
    return None


class AdminBase(PageHandler):
    def check_admin(self):
        if not self.is_admin():
            raise web.HTTPError(
                403,
                "The ds-compute admin panel is for admins only "
                f"(a token or session with the {authz.ADMIN_SCOPE} scope).",
            )


class AdminHandler(AdminBase):
    @web.authenticated
    async def get(self):
        self.check_admin()
        try:
            users = await self.hub.list_users(include_stopped_servers=True)
        except HubAPIError as e:
            raise web.HTTPError(502, f"Could not list users from JupyterHub: {e.message}") from None
        now = utcnow()
        settings = self.live.settings
        since = policy.period_start(now, settings["budget_period"])
        costs = self.live.accounting.per_server(since, now)
        intervals = self.live.accounting.open_intervals()
        tier_names = {t.slug: t.display_name for t in tiers.tiers_of(self.profiles)}
        rows = []
        for u in sorted(users, key=lambda u: u["name"]):
            servers = dict(u.get("servers") or {})
            if "" not in servers:
                servers[""] = None
            for name, srv in sorted(servers.items()):
                rows.append(self._row(u, name, srv, costs, intervals, now))
        tier_filter = self.get_argument("tier", "")
        state_filter = self.get_argument("state", "")
        user_filter = self.get_argument("user", "")
        shown = [
            r
            for r in rows
            if (not tier_filter or r["tier"] == tier_filter)
            and (not state_filter or r["state"] == state_filter)
            and (not user_filter or user_filter in r["user"])
        ]
        self.render_page(
            "admin.html",
            requests=await pending_rows(
                self,
                self.store.list_requests(states=("pending",)),
                {u["name"]: u.get("groups") or [] for u in users},
            ),
            decide_url=f"{self.prefix}admin/requests/",
            charts=charts.admin_charts(self.live.accounting.db, settings["budget_period"], now, tier_names),
            rows=shown,
            total=len(rows),
            tiers=tiers.tiers_of(self.profiles),
            states=STATES,
            filters={"tier": tier_filter, "state": state_filter, "user": user_filter},
            xsrf=self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes) else self.xsrf_token,
            message=self.get_argument("msg", ""),
            error=self.get_argument("error", ""),
            period=settings["budget_period"],
            audit=self.store.list_audit(limit=15),
            warm_pools=[
                dict(p, display_name=tier_names.get(p["tier"], p["tier"]))
                for p in warmpool.summary(self.store.db, since, now)
            ],
        )

    def _row(self, u, name, srv, costs, intervals, now):
        user = u["name"]
        groups = u.get("groups") or []
        switch = self.store.active_switch(user, name)
        options = (srv or {}).get("user_options") or {}
        profile = options.get("profile")
        if srv is None or (srv.get("stopped") and not srv.get("pending")):
            state = "stopped"
        elif switch is not None:
            state = "switching"
        elif srv.get("pending") == "spawn":
            state = "starting"
        elif srv.get("pending") == "stop":
            state = "stopping"
        elif srv.get("ready"):
            state = "running"
        else:
            state = srv.get("pending") or "stopped"
        if state == "stopped":
            profile = None  # the tier column is where it runs now
        elif not profile:
            profile = tiers.default_slug(self.profiles, groups)
        volume = volume_of(srv)
        started = parse_time((srv or {}).get("started"))
        interval = intervals.get((user, name))
        on_tier_since = None
        if state != "stopped":
            on_tier_since = parse_time(interval["started_key"]) if interval else started
        last = parse_time((srv or {}).get("last_activity")) or parse_time(u.get("last_activity"))
        return {
            "user": user,
            "server_name": name,
            "admin": bool(u.get("admin")),
            "groups": groups,
            "tier": profile or "",
            "state": state,
            "switch_id": switch["id"] if switch else None,
            "volume": volume,
            "volume_as_of": (
                formatting.duration(max(0.0, time.time() - volume["as_of"])) + " ago"
                if volume and volume.get("as_of")
                else ""
            ),
            "time_on_tier": formatting.duration(now - on_tier_since) if on_tier_since else "",
            "cost": costs.get((user, name), 0.0),
            "last_activity": isoformat(last) if last else None,
            "last_activity_ago": formatting.duration(now - last) + " ago" if last else "never",
        }


class AdminActionHandler(AdminBase):
    """``POST admin/action``: switch, stop or start a user's server."""

    @web.authenticated
    async def post(self):
        self.check_admin()
        action = self.get_body_argument("action", "")
        user = self.get_body_argument("user", "")
        name = self.get_body_argument("server_name", "")
        profile = self.get_body_argument("profile", "")
        actor = self.current_user["name"]
        label = f"{user}'s server {name!r}" if name else f"{user}'s server"
        if action in ("stop", "start"):
            # the admin scope opens the page; acting on a server needs its server scopes
            refusal = authz.act_refusal(self.current_user, user, name)
            if refusal and authz.group_filtered(self.current_user):
                try:
                    model = await self.hub.get_user(user)
                except HubAPIError as e:
                    return self._back(error=f"Could not ask JupyterHub about {user}: {e.message}")
                refusal = authz.act_refusal(self.current_user, user, name, (model or {}).get("groups") or [])
            if refusal:
                self.store.audit(
                    f"admin:{action}",
                    actor=actor,
                    user=user,
                    server_name=name,
                    outcome="refused",
                    reason=refusal,
                )
                return self._back(error=refusal)  # as a refused switch: back to the panel, saying why
        try:
            if action == "switch":
                record, progress_url = await self.start_switch(
                    self.current_user, {"user": user, "server_name": name, "profile": profile}
                )
                self.orchestrator.launch(record["id"])
                msg = f"Switching {label} to {profile} (switch {record['id']})."
            elif action == "stop":
                await self.hub.stop_server(user, name)
                self.store.audit("admin:stop", actor=actor, user=user, server_name=name, outcome="requested")
                msg = f"Stopping {label}."
            elif action == "start":
                options = {"profile": profile} if profile else {}
                result = await self.hub.start_server(user, name, options)
                self.store.audit(
                    "admin:start",
                    actor=actor,
                    user=user,
                    server_name=name,
                    to_profile=profile or None,
                    outcome=result,
                )
                msg = f"Starting {label}" + (f" on {profile}." if profile else ".")
            else:
                raise APIError(400, f"Unknown action {action!r}: switch, stop or start.")
        except APIError as e:
            return self._back(error=e.message)
        except HubAPIError as e:
            self.store.audit(
                f"admin:{action}",
                actor=actor,
                user=user,
                server_name=name,
                to_profile=profile or None,
                outcome="refused",
                reason=e.message,
            )
            return self._back(error=f"JupyterHub refused: {e.message}")
        self._back(msg=msg)

    def _back(self, **args):
        self.redirect(f"{self.prefix}admin?" + urlencode(args))


class AdminRequestHandler(AdminBase):
    """``POST admin/requests/<id>``: approve (``decision=approve``, optional
    shorter ``duration``) or deny (``decision=deny``, ``reason``) a request;
    the same rules as ``POST api/requests/<id>/decision``."""

    @web.authenticated
    async def post(self, request_id):
        self.check_admin()
        try:
            record = await self.settings["grants"].decide(self.current_user, request_id, decision_body(self))
        except GrantRefused as e:
            return self._back(error=e.message)
        self._back(msg=decided_message(record, self.profiles))

    def _back(self, **args):
        self.redirect(f"{self.prefix}admin?" + urlencode(args))


class AuditHandler(AdminBase):
    @web.authenticated
    def get(self):
        self.check_admin()
        user = self.get_argument("user", "") or None
        event = self.get_argument("event", "")
        limit = self.int_argument("limit", 500, 1, 5000)
        events = self.store.list_audit(limit=limit, user=user)
        if event:
            events = [e for e in events if e["event"].startswith(event)]
        self.render_page("admin_audit.html", events=events, filters={"user": user or "", "event": event})


def admin_handlers(prefix: str) -> list[tuple]:
    return [
        (prefix + "admin/?", AdminHandler),
        (prefix + "admin/action", AdminActionHandler),
        (prefix + "admin/audit", AuditHandler),
        (prefix + r"admin/requests/([^/]+)", AdminRequestHandler),
    ]
