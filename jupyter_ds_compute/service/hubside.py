"""The service's calls for the hub's spawner (``api/hub/*``), not for users.

The spawner asks the service for a user's budget before a start and
reports spawn refusals for the audit log, so that only the service opens its
database (docs/internals.md, "The boundary between hub and service"). They
are authenticated by the shared token ``configure(c)`` makes at each hub
start (``c.DSComputeSpawner.service_api_token`` = the service's
``spawner_token``), compared in constant time; not by HubOAuth.

- ``GET api/hub/budget?user=<name>&group=<g>...`` -> ``{"budget": <budget_status>}``
- ``POST api/hub/events {"user","server_name","to_profile","policy","reason"}`` -> 204: a
  spawn refusal; ``{"user","server_name","to_profile","volume": "move","outcome","reason"}``:
  a volume moving to another zone (``started``, ``done``, ``undone``, ``failed``), audited
  as ``volume:move`` in the switch running for that server
- ``GET api/hub/prepare?version=<n>&wait=<seconds>`` -> ``{"version", "wanted": [<intent>]}``:
  the machines switches want prepared (:mod:`.prepare`), answered once the
  set differs from ``version`` or after ``wait`` (at most 60) seconds
- ``POST api/hub/prepared {"switch","status","message","host"}`` -> 204, or 404 when
  no switch wants that machine (the spawner then releases it)
- ``POST api/hub/pool {"tier","zone","instances":[{"id","since"}]}`` -> 204: the
  instances idle in a warm pool now (:mod:`.warmpool` accounts their cost)
"""

from __future__ import annotations

import hmac
import json
import time

from tornado import web

from . import warmpool
from .hubapi import HubAPIError
from .prepare import PREPARE_STATUSES

__all__ = ["hub_handlers"]

POLICY_KINDS = ("cap", "budget")
#: volume events the spawner reports (``volume:<kind>`` in the audit log) and their outcomes
VOLUME_EVENTS = {"move": ("started", "done", "undone", "failed")}


class HubSideHandler(web.RequestHandler):
    def set_default_headers(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def prepare(self):
        expected = self.settings.get("spawner_token") or ""
        header = self.request.headers.get("Authorization", "")
        given = header[len("token ") :] if header.startswith("token ") else ""
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            raise web.HTTPError(403, "api/hub/* is for the hub's spawner (its service_api_token)")

    def fail(self, status, message, field=None):
        self.set_status(status)
        self.finish(json.dumps({"message": message, **({"field": field} if field else {})}))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else "error"
        if status_code >= 500:
            message = "Internal error in the ds-compute service; see its log."
        self.finish(json.dumps({"message": message}))


class BudgetHandler(HubSideHandler):
    async def get(self):
        user = self.get_argument("user", "")
        if not user:
            return self.fail(400, "'user' is required.", "user")
        groups = self.get_arguments("group")
        try:
            budget = await self.settings["live_policy"].budget(user, groups)
        except HubAPIError as e:
            self.settings["log"].warning("Budget of %s for the spawner: hub not asked (%s)", user, e)
            return self.fail(502, "Could not ask JupyterHub about the user's groups.")
        self.finish(json.dumps({"budget": budget}))


class EventsHandler(HubSideHandler):
    def post(self):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            return self.fail(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return self.fail(400, "The request body must be a JSON object.")
        for key in ("user", "server_name", "to_profile", "reason"):
            if not isinstance(body.get(key), str):
                return self.fail(400, f"'{key}' must be a string.", key)
        if "volume" in body:
            return self._volume_event(body)
        if body.get("policy") not in POLICY_KINDS:
            return self.fail(400, f"'policy' must be one of {', '.join(POLICY_KINDS)}.", "policy")
        self.settings["store"].audit(
            f"policy:{body['policy']}",
            actor=body["user"],
            user=body["user"],
            server_name=body["server_name"],
            to_profile=body["to_profile"],
            outcome="refused",
            reason=body["reason"][:1000],
        )
        self.set_status(204)
        self.finish()

    def _volume_event(self, body):
        """``volume:move`` with its outcome, in the switch running for that server (if any)."""
        outcomes = VOLUME_EVENTS.get(body["volume"]) if isinstance(body["volume"], str) else None
        if outcomes is None:
            return self.fail(400, f"'volume' must be one of {', '.join(VOLUME_EVENTS)}.", "volume")
        if body.get("outcome") not in outcomes:
            return self.fail(400, f"'outcome' must be one of {', '.join(outcomes)}.", "outcome")
        store = self.settings["store"]
        active = store.active_switch(body["user"], body["server_name"])
        store.audit(
            f"volume:{body['volume']}",
            actor=body["user"],
            user=body["user"],
            server_name=body["server_name"],
            switch_id=active["id"] if active else None,
            from_profile=active["from_profile"] if active else None,
            to_profile=body["to_profile"],
            outcome=body["outcome"],
            reason=body["reason"][:1000],
        )
        self.set_status(204)
        self.finish()


def _bounded_int(text, lo, hi):
    """``text`` as an int in ``[lo, hi]`` (plain decimal digits), else None."""
    # up to 16 digits: 2**53 (watch versions are milliseconds since the epoch)
    if not (text.isascii() and text.isdigit()) or len(text) > 16:
        return None
    value = int(text)
    return value if lo <= value <= hi else None


class PrepareWatchHandler(HubSideHandler):
    async def get(self):
        version = _bounded_int(self.get_argument("version", "0"), 0, 2**53)
        if version is None:
            return self.fail(400, "'version' must be a whole number.", "version")
        wait = _bounded_int(self.get_argument("wait", "0"), 0, 60)
        if wait is None:
            return self.fail(400, "'wait' must be a whole number of seconds from 0 to 60.", "wait")
        snapshot = await self.settings["prepare_board"].watch(version, wait)
        if not self.request.connection.stream.closed():
            self.finish(json.dumps(snapshot))


class PreparedHandler(HubSideHandler):
    def post(self):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            return self.fail(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return self.fail(400, "The request body must be a JSON object.")
        for key in ("switch", "message", "host"):
            if not isinstance(body.get(key, ""), str):
                return self.fail(400, f"'{key}' must be a string.", key)
        if body.get("status") not in PREPARE_STATUSES:
            return self.fail(400, f"'status' must be one of {', '.join(PREPARE_STATUSES)}.", "status")
        ok = self.settings["prepare_board"].report(
            body.get("switch", ""), body["status"], body.get("message", "")[:1000], body.get("host", "")[:200]
        )
        if not ok:
            return self.fail(404, "No switch wants that machine prepared (any more): release it.", "switch")
        self.set_status(204)
        self.finish()


#: instances one pool report may list
MAX_POOL_INSTANCES = 1000


class PoolHandler(HubSideHandler):
    def post(self):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            return self.fail(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return self.fail(400, "The request body must be a JSON object.")
        for key in ("tier", "zone"):
            if not isinstance(body.get(key), str) or not body[key] or len(body[key]) > 200:
                return self.fail(400, f"'{key}' must be a non-empty string.", key)
        tier = next((p for p in self.settings["profiles"] if p.get("slug") == body["tier"]), None)
        if tier is None:
            return self.fail(400, f"'tier': the service knows no tier {body['tier'][:100]!r}.", "tier")
        instances = body.get("instances")
        if not isinstance(instances, list) or len(instances) > MAX_POOL_INSTANCES:
            return self.fail(400, f"'instances' must be a list of at most {MAX_POOL_INSTANCES}.", "instances")
        now = time.time()
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                return self.fail(400, f"'instances[{i}]' must be an object.", "instances")
            iid, since = inst.get("id"), inst.get("since")
            if not isinstance(iid, str) or not iid or len(iid) > 100:
                return self.fail(400, f"'instances[{i}].id' must be a non-empty string.", "instances")
            if (
                not isinstance(since, (int, float))
                or isinstance(since, bool)
                or not (0 < since <= now + 60)
                or since != since
            ):
                return self.fail(
                    400,
                    f"'instances[{i}].since' must be a time (seconds since the epoch), not in the future.",
                    "instances",
                )
        warmpool.record(
            self.settings["store"].db,
            body["tier"],
            body["zone"],
            [{"id": x["id"], "since": float(x["since"])} for x in instances],
            float(tier.get("hourly_cost") or 0.0),
            now=now,
        )
        self.set_status(204)
        self.finish()


def hub_handlers(prefix: str) -> list[tuple]:
    return [
        (prefix + "api/hub/budget", BudgetHandler),
        (prefix + "api/hub/events", EventsHandler),
        (prefix + "api/hub/prepare", PrepareWatchHandler),
        (prefix + "api/hub/prepared", PreparedHandler),
        (prefix + "api/hub/pool", PoolHandler),
    ]
