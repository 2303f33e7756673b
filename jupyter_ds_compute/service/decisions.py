"""The decisions page: ``/services/ds-compute/requests``, for whoever may decide requests.

Admins decide on the admin page; a tier's ``approvers`` (group members who
are not hub admins) decide here, and admins may too. One rendering of a
pending request (``templates/requests_section.html``: the requester's
spending, budget and usage chart this period, the approve/deny form) and one
path to a decision (:meth:`.grants.Grants.decide`, the code of ``POST
api/requests/<id>/decision``), shared with the admin page:

- ``GET requests``: the pending requests the caller may decide
  (:meth:`.grants.Grants.decidable`: all for admins but their own, a tier's
  for its approvers); someone who may decide nothing gets the page saying so.
- ``POST requests/<id>`` (HubOAuth cookie + ``_xsrf``; HubOAuth refuses a
  cookie POST without it, a 403): ``decision=approve`` (optional shorter
  ``duration``) or ``deny`` (``reason``). A refusal is the page again with
  the status of the API (``400`` naming the field, ``403`` for someone who
  may not decide this request, ``404``, ``409``, ``502``); a decision
  redirects back with a message.
"""

from __future__ import annotations

from urllib.parse import urlencode

from tornado import web

from .. import formatting, tiers
from . import charts
from .accounting import parse_time
from .grants import GrantRefused, approver_of, readable_utc, tier_name
from .handlers import PageHandler
from .hubapi import HubAPIError
from .store import utcnow

__all__ = ["decision_body", "decided_message", "decisions_handlers", "pending_rows"]


async def pending_rows(handler, records: list[dict], groups_of: dict | None = None) -> list[dict]:
    """``records`` (pending requests) as the section shows them: the tier's
    name and longest grant, the requester's spending and budget this period
    and that spending per day as a chart. ``groups_of`` (user -> groups, e.g.
    from the admin page's user list) saves asking the hub for each requester."""
    now = utcnow()
    live = handler.live
    period = live.settings["budget_period"]
    tier_names = {t.slug: t.display_name for t in tiers.tiers_of(handler.profiles)}
    out = []
    for q in records:
        try:
            tier = tiers.get_tier(handler.profiles, q["profile"])
            name, max_grant = tier.display_name, tier.max_grant
        except tiers.TierOptionsError:
            name, max_grant = q["profile"], None
        try:
            if groups_of is not None and q["user"] in groups_of:
                groups = groups_of[q["user"]]
            else:
                groups = await handler.settings["grants"].groups_of(q["user"])
            usage = await live.budget(q["user"], groups)
        except (HubAPIError, GrantRefused) as e:
            handler.log.warning("Budget of %s for the requests page: %s", q["user"], e)
            usage = {"spent": 0.0, "budget": None, "state": "unknown"}
        created = parse_time(q["created"]) or now
        out.append(
            dict(
                q,
                tier_name=name,
                max_grant=max_grant,
                usage=dict(usage, spent=usage.get("user_spent", usage.get("spent", 0.0))),
                asked_ago=formatting.duration(max(0.0, now - created)) + " ago",
                usage_chart=charts.requester_chart(
                    live.accounting.db, q["user"], period, now, f"ds-usage-{q['id']}", tier_names
                ),
            )
        )
    return out


def decision_body(handler) -> dict:
    """The approve/deny form as the body of ``POST api/requests/<id>/decision``;
    a :class:`.grants.GrantRefused` 400 naming ``decision`` when it is neither."""
    decision = handler.get_body_argument("decision", "")
    if decision not in ("approve", "deny"):
        raise GrantRefused(400, "'decision' must be approve or deny.", "decision")
    body = {"approve": decision == "approve"}
    duration = handler.get_body_argument("duration", "").strip()
    reason = handler.get_body_argument("reason", "").strip()
    if duration:
        body["duration"] = duration
    if reason:
        body["reason"] = reason
    return body


def decided_message(record: dict, profiles: list[dict]) -> str:
    """What the decider is told once ``record`` is decided."""
    name = tier_name(profiles, record["profile"])
    if record["state"] == "approved":
        return (
            f"Approved {record['user']}'s request for {name} until {readable_utc(record['expires_ts'])} "
            f"({formatting.duration(record['granted'])})."
        )
    return f"Denied {record['user']}'s request for {name}."


class DecisionsHandler(PageHandler):
    """``GET requests``, ``POST requests/<id>`` (see the module docstring)."""

    @property
    def grants(self):
        return self.settings["grants"]

    def _xsrf(self) -> str:
        token = self.xsrf_token
        return token.decode() if isinstance(token, bytes) else token

    @web.authenticated
    async def get(self, request_id=None):
        if request_id is not None:
            raise web.HTTPError(405)
        await self._show(message=self.get_argument("msg", ""))

    @web.authenticated
    async def post(self, request_id=None):
        if request_id is None:
            raise web.HTTPError(405)
        caller = self.current_user
        try:
            if caller.get("kind", "user") != "user":
                raise GrantRefused(403, "Only users (admins, approvers) may decide requests.")
            body = decision_body(self)
            record = await self.grants.decide(caller, request_id, body)
        except GrantRefused as e:
            self.set_status(e.status)
            return await self._show(error=e.message, field=e.field)
        self.redirect(f"{self.prefix}requests?" + urlencode({"msg": decided_message(record, self.profiles)}))

    async def _show(self, message: str = "", error: str = "", field: str | None = None):
        caller = self.current_user
        records = []
        if caller.get("kind", "user") == "user":
            try:
                records = await self.grants.decidable(caller)
            except GrantRefused as e:
                self.set_status(e.status)
                error = error or e.message
        approves = approver_of(self.profiles, caller)
        if self.is_admin():
            empty = "No request waits for a decision."
        elif approves:
            empty = f"No request for {', '.join(approves)} waits for your decision."
        else:
            empty = (
                "There is nothing for you to decide: requests are decided by admins and by the members "
                "of a tier's approvers groups."
            )
        self.render_page(
            "decisions.html",
            requests=await pending_rows(self, records),
            period=self.live.settings["budget_period"],
            xsrf=self._xsrf(),
            decide_url=f"{self.prefix}requests/",
            empty=empty,
            approves=approves,
            message=message,
            error=error,
            field=field,
        )


def decisions_handlers(prefix: str) -> list[tuple]:
    return [(prefix + "requests", DecisionsHandler), (prefix + r"requests/([^/]+)", DecisionsHandler)]
