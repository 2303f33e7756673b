"""Tornado handlers of the ds-compute service (REST API + pages).

Every handler is ``HubOAuthenticated``: a request is identified by an
``Authorization: token ...`` header (a server's or a user's token) or by the
HubOAuth cookie set after the browser's OAuth round trip. The hub checks that
the token or cookie carries ``access:services!service=ds-compute``.

The user is looked up asynchronously in :meth:`BaseHandler.prepare` (HubAuth's
own ``get_current_user`` blocks the event loop on every cache miss).

No ``xsrf_cookies``: tornado would check xsrf before HubAuth sees a token and
refuse token POSTs; HubOAuth checks xsrf itself for cookie-authenticated
POSTs (notes/hub-service.md).
"""

from __future__ import annotations

import html
import json
import re
import traceback
from http.client import responses
from urllib.parse import urlencode

from jupyterhub.services.auth import (
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from tornado import web

from .. import formatting, tiers
from . import authz
from .accounting import parse_time
from .grants import GrantRefused, approver_of
from .grants import public as grants_public
from .hubapi import HubAPIError
from .orchestrator import SwitchRefused, token_server
from .store import isoformat, utcnow
from .tiersource import NoTiers
from .urls import safe_next_url

__all__ = ["default_handlers", "safe_next_url"]


class APIError(web.HTTPError):
    """An API error answered as ``{"message", **extra}``."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(status, "%s", message)
        self.message = message
        self.extra = extra


#: deepest nesting of arrays/objects accepted in a JSON body (switch bodies are flat)
MAX_JSON_DEPTH = 20


def parse_int_argument(raw, *, field: str, default: int, minimum: int, maximum: int) -> int:
    """``raw`` (a query argument, None or "" for absent) as an int in ``[minimum, maximum]``.

    Only plain decimal integers count (not ``1e9``, ``nan``, ``0x10``, ``1.5``);
    anything else is an :class:`APIError` 400 naming ``field``.
    """
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,18}", text):
        raise APIError(
            400,
            f"'{field}' must be a whole number from {minimum} to {maximum}, not {raw[:40]!a}.",
            field=field,
        )
    value = int(text)
    if not minimum <= value <= maximum:
        raise APIError(400, f"'{field}' must be from {minimum} to {maximum}, not {value}.", field=field)
    return value


def check_json_value(value, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse (APIError 400 naming the field) a parsed JSON body that is nested
    deeper than ``max_depth`` or holds a lone UTF-16 surrogate (``"\\ud800"``)
    in a key or string, which is not text and cannot be stored or logged.

    Iterative, so no depth makes it recurse.
    """
    # (value, where it is, e.g. "a.b[2]", the top-level key it is under, depth)
    stack = [(value, "", None, 0)]
    while stack:
        item, where, field, depth = stack.pop()
        named = {"field": field} if field else {}
        if isinstance(item, (dict, list)) and depth >= max_depth:
            raise APIError(
                400,
                f"The request body is nested too deeply (at most {max_depth} levels)"
                + (f", in '{field}'." if field else "."),
                **named,
            )
        if isinstance(item, str):
            if _has_surrogate(item):
                raise APIError(
                    400,
                    f"'{where}' holds a lone UTF-16 surrogate ({_first_surrogate(item)}), which is not text.",
                    **named,
                )
        elif isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    continue  # json.loads gives str keys only
                if _has_surrogate(k):
                    raise APIError(
                        400,
                        f"A key {('in ' + repr(where)) if where else 'of the request body'} holds a lone "
                        f"UTF-16 surrogate ({_first_surrogate(k)}), which is not text.",
                        field=field or ascii(k),
                    )
                stack.append((v, f"{where}.{k}" if where else k, field or k, depth + 1))
        elif isinstance(item, list):
            for i, v in enumerate(item):
                stack.append((v, f"{where}[{i}]", field, depth + 1))


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _first_surrogate(text: str) -> str:
    return next(f"\\u{ord(c):04x}" for c in text if 0xD800 <= ord(c) <= 0xDFFF)


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """Common parts: settings access, async auth, error rendering."""

    @property
    def hub_auth(self):
        return self.settings["hub_auth"]

    @property
    def log(self):
        return self.settings["log"]

    @property
    def store(self):
        return self.settings["store"]

    @property
    def hub(self):
        return self.settings["hub_api"]

    @property
    def orchestrator(self):
        return self.settings["orchestrator"]

    @property
    def profiles(self) -> list[dict]:
        return self.settings["profiles"]

    @property
    def live(self):
        return self.settings["live_policy"]

    @property
    def base_url(self) -> str:
        return self.settings["base_url"]

    @property
    def prefix(self) -> str:
        return self.settings["service_prefix"]

    async def prepare(self):
        # identify the caller without blocking the loop (HubAuth.get_user
        # with sync=True runs the request in a thread and waits for it)
        if hasattr(self, "_hub_auth_user_cache"):
            return
        try:
            model = await self.hub_auth.get_user(self, sync=False)
        except web.HTTPError:
            raise
        except Exception as e:
            self.log.error("Could not identify the caller with the hub: %s", e)
            raise web.HTTPError(
                502, "Could not reach JupyterHub to identify you; try again shortly."
            ) from None
        if model:
            try:
                model = self.check_hub_user(model)
            except UserNotAllowed:
                self._hub_auth_user_cache = None
                raise web.HTTPError(
                    403,
                    f"{model.get('kind', 'user')} {model['name']} may not use the ds-compute service",
                ) from None
        self._hub_auth_user_cache = model

    def is_admin(self) -> bool:
        """The caller may use the admin pages (``custom:ds-compute:admin``, see :mod:`.authz`)."""
        return authz.is_admin(self.current_user)

    def refused(self, error: APIError) -> APIError:
        """Audit a refused request (``request``/``refused``, with what and why); returns ``error``.

        For refusals before a switch's target is known (bad query arguments,
        a body that is not a JSON object); :meth:`start_switch` audits its own.
        """
        caller = self.current_user or {}
        self.store.audit(
            "request",
            actor=caller.get("name"),
            outcome="refused",
            reason=f"{error.status_code}: {self.request.method} {self.request.path}: {error.message}",
        )
        self.log.info(
            "Refused %s %s by %s: %s",
            self.request.method,
            self.request.path,
            caller.get("name") or self.request.remote_ip,
            error.message,
        )
        return error

    def int_argument(self, name: str, default: int, minimum: int, maximum: int) -> int:
        """A query argument as an int (see :func:`parse_int_argument`); refusals are audited."""
        try:
            return parse_int_argument(
                self.get_argument(name, None), field=name, default=default, minimum=minimum, maximum=maximum
            )
        except APIError as e:
            raise self.refused(e) from None

    def may_see(self, record: dict) -> bool:
        return authz.can_read(self.current_user, record["user"])

    def get_switch_or_404(self, switch_id: str) -> dict:
        record = self.store.get_switch(switch_id)
        if record is None:
            raise APIError(404, f"No switch with id {switch_id!r}.")
        if not self.may_see(record):
            raise APIError(
                403, f"Only {record['user']} or a token with read:servers for them may see this switch."
            )
        return record

    async def start_switch(self, caller: dict, body: dict) -> tuple[dict, str]:
        """Check a switch request and record it (:meth:`.Orchestrator.request_switch`).

        Returns ``(record, progress_url)``; the caller launches it. Refusals
        (audited there) are raised as :class:`APIError` with the status, the
        message and the field.
        """
        profiles = await self.tiers_of_request(caller, body)
        try:
            record = await self.orchestrator.request_switch(
                caller, body, profiles=profiles, live=self.live, base_url=self.base_url
            )
        except SwitchRefused as e:
            raise APIError(e.status, e.message, **e.extra()) from None
        progress_url = f"{self.prefix}switches/{record['id']}"
        if record["next"] and body.get("next"):
            progress_url += "?" + urlencode({"next": record["next"]})
        return record, progress_url

    _token_server = staticmethod(token_server)

    async def tiers_of_request(self, caller: dict, body: dict) -> list[dict]:
        """The tiers of a switch's target server, from its spawner's catalogue
        (:mod:`.tiersource`); a 409 when none is known, a 502 when the hub is not answering."""
        source = self.settings["tier_source"]
        try:
            return await source.of_request(caller, body, token_server)
        except NoTiers as e:
            raise self.refused(APIError(409, str(e), field="profile")) from None
        except HubAPIError as e:
            self.log.error("Could not read the target server's tiers from the hub: %s", e)
            raise APIError(502, "Could not ask JupyterHub about the server; try again shortly.") from None


class APIHandler(BaseHandler):
    """JSON API: errors are ``{"message": ...}``, never a stack trace."""

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def require_user(self) -> dict:
        user = self.current_user
        if user is None:
            raise APIError(
                403,
                "Authentication required: send 'Authorization: token <token>' "
                "(your server's JUPYTERHUB_API_TOKEN or a user token from the hub's token page).",
            )
        return user

    def get_json_body(self) -> dict:
        """The body as a JSON object; anything else is an audited 400 (see :func:`check_json_value`)."""
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except RecursionError:
            raise self.refused(
                APIError(400, f"The request body is nested too deeply (at most {MAX_JSON_DEPTH} levels).")
            ) from None
        except ValueError:
            raise self.refused(APIError(400, "The request body is not valid JSON (UTF-8).")) from None
        if not isinstance(body, dict):
            raise self.refused(APIError(400, "The request body must be a JSON object."))
        try:
            check_json_value(body)
        except APIError as e:
            raise self.refused(e) from None
        return body

    def write_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        body = {"message": responses.get(status_code, "Error")}
        if isinstance(exc, APIError):
            body["message"] = exc.message
            body.update(exc.extra)
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            body["message"] = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            body["message"] = "Internal error in the ds-compute service; see its log."
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class HealthHandler(APIHandler):
    async def prepare(self):
        pass  # unauthenticated

    def get(self):
        self.write_json({"ok": True})


class SwitchListHandler(APIHandler):
    """``POST api/switches`` starts a switch; ``GET api/switches?user=`` lists."""

    def get(self):
        caller = self.require_user()
        user = self.get_argument("user", None)
        limit = self.int_argument("limit", 100, 1, 1000)
        if user is None and not self.is_admin():
            user = caller["name"]  # everyone's switches: the admin scope
        if user is not None and not authz.can_read(caller, user):
            raise self.refused(
                APIError(403, f"Listing {user}'s switches needs read:servers for them (or being {user}).")
            )
        self.write_json({"switches": self.store.list_switches(user=user, limit=limit)})

    async def post(self):
        caller = self.require_user()
        record, progress_url = await self.start_switch(caller, self.get_json_body())
        # reply before stopping: the caller may be a kernel of this very server
        self.set_status(202)
        await self.finish(json.dumps({"id": record["id"], "progress_url": progress_url}))
        self.orchestrator.launch(record["id"])


class SwitchHandler(APIHandler):
    """``GET api/switches/<id>``: the record (owner or admin)."""

    def get(self, switch_id):
        self.require_user()
        record = self.get_switch_or_404(switch_id)
        record["now"] = isoformat(utcnow())
        record["cutover"] = self.orchestrator.cutover(switch_id)
        if record["cutover"] and record["cutover"]["waiting"]:
            record["phase"] = "ready"  # prepared; the cut-over waits for the requester's "go"
        self.write_json(record)


class SwitchGoHandler(APIHandler):
    """``POST api/switches/<id>/go``: the requester (Lab) has saved; cut over now."""

    def post(self, switch_id):
        caller = self.require_user()
        record = self.get_switch_or_404(switch_id)
        refusal = authz.act_refusal(caller, record["user"], record["server_name"])
        if refusal:
            raise self.refused(APIError(403, refusal))
        if not self.orchestrator.release_hold(switch_id):
            raise APIError(409, "That switch does not wait for a go (it was not held, or it is over).")
        self.set_status(204)
        self.finish()


class TiersHandler(APIHandler):
    """``GET api/tiers``: every tier with ``allowed``/``reason``/``default`` for the caller.

    ``reason`` covers groups, caps (not counting the caller's own server) and
    budgets; ``policy`` names the rule (``group``, ``cap``, ``budget``). The
    answer also carries ``budget`` (the caller's tightest budget) and
    ``notices`` (recent policy actions on the caller's servers, e.g. an idle
    downshift) for Lab's status bar.
    """

    async def get(self):
        caller = self.require_user()
        user = self.get_argument("user", None) or caller["name"]
        if not authz.can_read(caller, user):
            raise APIError(403, f"Seeing {user}'s tiers needs read:servers for them (or being {user}).")
        # the hub's groups now, not the identity's (HubAuth caches it for a minute): a grant
        # adds and its end removes a group (docs/internals.md, "Requests and grants")
        try:
            model = await self.hub.get_user(user)
        except HubAPIError as e:
            self.log.error("Could not read user %s from the hub: %s", user, e)
            raise APIError(502, "Could not ask JupyterHub about the user; try again shortly.") from None
        if model is None:
            raise APIError(404, f"No such user: {user}.")
        groups = model.get("groups") or []
        server_name = self.get_argument("server_name", None)
        if server_name is None:
            server_name = self._token_server(caller, user)
        # the tiers the spawner sees for this user (its catalogue), else the static list
        try:
            profiles = await self.settings["tier_source"].of_server(user, server_name)
        except NoTiers as e:
            raise APIError(409, str(e)) from None
        except HubAPIError as e:
            self.log.error("Could not read %s's server %r from the hub: %s", user, server_name, e)
            raise APIError(502, "Could not ask JupyterHub about the server; try again shortly.") from None
        try:
            live, budget = await self.live.refusals(
                user, groups, exclude=(user, server_name), profiles=profiles
            )
        except HubAPIError as e:
            self.log.warning("Tiers without live policy (hub: %s)", e)
            live, budget = {}, None
        out = []
        for tier in tiers.for_user(profiles, groups):
            kind = "group" if tier["reason"] else None
            if tier["allowed"] and tier["slug"] in live:
                kind, reason = live[tier["slug"]]
                tier.update(allowed=False, reason=reason)
            out.append(dict(tier, policy=kind, **request_state(self.store, user, tier)))
        self.write_json({"tiers": out, "budget": budget, "notices": notices(self.store, user, server_name)})


class PolicyHandler(APIHandler):
    """``GET api/policy``: ``{"budget", "notices"}`` of the caller (Lab's status bar)."""

    async def get(self):
        caller = self.require_user()
        user = self.get_argument("user", None) or caller["name"]
        if not authz.can_read(caller, user):
            raise APIError(403, f"Seeing {user}'s budget needs read:servers for them (or being {user}).")
        groups = caller.get("groups") if user == caller["name"] and "groups" in caller else None
        try:
            if groups is None:
                model = await self.hub.get_user(user)
                if model is None:
                    raise APIError(404, f"No such user: {user}.")
                groups = model.get("groups") or []
            budget = await self.live.budget(user, groups)
        except HubAPIError as e:
            self.log.error("Could not read %s's user or groups from the hub: %s", user, e)
            raise APIError(502, "Could not ask JupyterHub about the user; try again shortly.") from None
        server_name = self.get_argument("server_name", None)
        if server_name is None:
            server_name = self._token_server(caller, user)
        self.write_json({"budget": budget, "notices": notices(self.store, user, server_name)})


def request_state(store, user: str, tier: dict) -> dict:
    """What ``api/tiers`` says of requests for ``tier`` (a :func:`tiers.for_user` entry):
    ``requestable`` (refused by its groups, and it has ``max_grant``), the
    pending ``request`` (``{"id", "created", "duration"}``) and the running
    ``grant`` (``{"id", "expires"}``) of ``user``, None when there is none."""
    record = store.open_request(user, tier["slug"])
    pending = record if record and record["state"] == "pending" else None
    grant = record if record and record["state"] == "approved" else None
    return {
        "requestable": bool(
            tier["reason"]
            and not tier["allowed"]
            and tier.get("max_grant")
            and pending is None
            and grant is None
        ),
        "request": (
            {"id": pending["id"], "created": pending["created"], "duration": pending["duration"]}
            if pending
            else None
        ),
        "grant": {"id": grant["id"], "expires": grant["expires"]} if grant else None,
    }


#: audit events shown as notices: (event, outcome) -> kind; grant events are the user's, whatever the server
NOTICE_KINDS = {
    ("policy:idle", "downshift"): "idle-downshift",
    ("policy:idle", "stop"): "idle-stop",
    ("policy:grant", "downshift"): "grant-downshift",
    ("access:decision", "approved"): "request-approved",
    ("access:decision", "denied"): "request-denied",
    ("access:grant", "expiring"): "grant-expiring",
    ("access:grant", "expired"): "grant-expired",
}


def notices(store, user: str, server_name: str, max_age: float = 86400) -> list[dict]:
    """Policy actions on ``user``'s server (idle, a grant's end), and the
    answers to their requests and their grants' notices (whatever the
    server), in the last ``max_age`` seconds, newest first (:data:`NOTICE_KINDS`)."""
    since = utcnow() - max_age
    out = []
    # a switch audits each of its steps: look far enough back to find the policy events among them
    for event in store.list_audit(limit=200, user=user):
        kind = NOTICE_KINDS.get((event["event"], event["outcome"]))
        if kind is None or (parse_time(event["time"]) or 0) < since:
            continue
        if event["event"].startswith("access:"):
            message = event["reason"]
        elif (event["server_name"] or "") != (server_name or ""):
            continue
        elif event["outcome"] == "stop":
            message = f"Your server was stopped: {event['reason']}"
        else:
            message = f"Your server was moved to the default tier: {event['reason']}"
        out.append(
            {
                "time": event["time"],
                "kind": kind,
                "from_profile": event["from_profile"],
                "to_profile": event["to_profile"],
                "message": message,
            }
        )
    return out


class RequestListHandler(APIHandler):
    """``POST api/requests {"profile", "duration", "reason"}``: ask for a tier
    (for oneself); ``GET api/requests``: one's own requests, and the pending
    ones the caller may decide (``decidable``: admins, a tier's approvers)."""

    @property
    def grants(self):
        return self.settings["grants"]

    async def get(self):
        caller = self.require_user()
        try:
            decidable = await self.grants.decidable(caller)
        except GrantRefused as e:
            raise APIError(e.status, e.message) from None
        self.write_json(
            {
                "requests": [grants_public(r) for r in self.store.list_requests(user=caller["name"])],
                "decidable": [grants_public(r) for r in decidable],
            }
        )

    async def post(self):
        caller = self.require_user()
        if caller.get("kind", "user") != "user":
            raise self.refused(APIError(403, "Only users may request tiers."))
        body = self.get_json_body()
        try:
            record = await self.grants.request(caller, body)
        except GrantRefused as e:
            raise APIError(e.status, e.message, **({"field": e.field} if e.field else {})) from None
        self.write_json(grants_public(record), status=201)


class RequestDecisionHandler(APIHandler):
    """``POST api/requests/<id>/decision {"approve", "duration", "reason"}``:
    approve (optionally for a shorter ``duration``) or deny (``reason`` required)."""

    async def post(self, request_id):
        caller = self.require_user()
        if caller.get("kind", "user") != "user":
            raise self.refused(APIError(403, "Only users (admins, approvers) may decide requests."))
        body = self.get_json_body()
        try:
            record = await self.settings["grants"].decide(caller, request_id, body)
        except GrantRefused as e:
            raise APIError(e.status, e.message, **({"field": e.field} if e.field else {})) from None
        self.write_json(grants_public(record))


#: the scope a token needs for ``GET metrics`` (JupyterHub's own, for ``/hub/metrics``)
METRICS_SCOPE = authz.METRICS_SCOPE


class MetricsHandler(BaseHandler):
    """``GET metrics``: Prometheus text format (see :mod:`.metrics`).

    With ``metrics_require_auth`` (the default), like JupyterHub's own
    ``/hub/metrics``: the caller's token must carry ``read:metrics`` (a
    Prometheus service's role, see the README's "Metrics"; a hub admin's
    full token holds it too); anyone else gets a 403 (:mod:`.authz`).
    """

    async def prepare(self):
        if self.settings.get("metrics_require_auth"):
            await super().prepare()

    def get(self):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if self.settings.get("metrics_require_auth"):
            user = self.current_user
            if not authz.may_read_metrics(user):
                raise web.HTTPError(
                    403,
                    "The ds-compute metrics need a token with the read:metrics scope "
                    "(e.g. a Prometheus service's role, or a hub admin's full token).",
                )
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.settings["metrics_registry"]))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = responses.get(status_code, "Error")
        if isinstance(exc, web.HTTPError) and exc.log_message and status_code < 500:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{status_code} {message}\n")


class PageHandler(BaseHandler):
    """HTML pages (HubOAuth cookie; anonymous browsers go through OAuth)."""

    def render_page(self, name: str, **ns):
        env = self.settings["jinja_env"]
        ns.setdefault("user", self.current_user)
        # the admin links by the scope the pages check (authz.is_admin), never the admin flag
        ns.setdefault("is_admin", authz.is_admin(self.current_user))
        ns.setdefault("base_url", self.base_url)
        ns.setdefault("prefix", self.prefix)
        ns.setdefault("hub_static", f"{self.base_url}hub/static/")
        ns.setdefault("fmt", formatting)  # {{ fmt.duration(s) }}, fmt.money, fmt.price, fmt.size
        token = self.xsrf_token
        ns.setdefault("xsrf_token", token.decode() if isinstance(token, bytes) else token)
        self.finish(env.get_template(name).render(**ns))

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = responses.get(status_code, "Error")
        if isinstance(exc, APIError):
            message = exc.message
        elif isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        if status_code >= 500 and not isinstance(exc, web.HTTPError):
            self.log.error(
                "Error rendering a page: %s", "".join(traceback.format_exception(*kwargs["exc_info"]))
            )
            message = "Internal error in the ds-compute service; see its log."
        try:
            self.render_page("error.html", status_code=status_code, message=message)
        except Exception:
            self.finish(f"<h1>{status_code}</h1><p>{html.escape(message)}</p>")


class ProgressPageHandler(PageHandler):
    """``GET switches/<id>``: live progress, then back to ``next``."""

    @web.authenticated
    def get(self, switch_id):
        record = self.get_switch_or_404(switch_id)
        next_url = safe_next_url(
            self.get_argument("next", None) or record["next"],
            record["user"],
            record["server_name"],
            self.base_url,
        )
        self.render_page(
            "progress.html",
            record=record,
            api_url=f"{self.prefix}api/switches/{switch_id}",
            next_url=next_url,
            home_url=f"{self.base_url}hub/home",
        )


class IndexHandler(PageHandler):
    """``GET /services/ds-compute/``: the user's recent switches (the Services menu link),
    and a link to the requests the caller may decide (``requests``) when there are any."""

    @web.authenticated
    async def get(self):
        user = self.current_user
        switches = self.store.list_switches(user=None if self.is_admin() else user["name"], limit=50)
        to_decide = 0
        if user.get("kind", "user") == "user" and self.store.list_requests(states=("pending",)):
            try:
                to_decide = len(await self.settings["grants"].decidable(user))
            except GrantRefused as e:  # the hub did not answer: the page without the count
                self.log.warning("Requests %s may decide, for the index page: %s", user["name"], e.message)
        self.render_page(
            "index.html",
            switches=switches,
            to_decide=to_decide,
            decides=self.is_admin() or bool(approver_of(self.profiles, user)),
        )


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    @property
    def hub_auth(self):
        return self.settings["hub_auth"]


def default_handlers(prefix: str) -> list[tuple]:
    """Routes under the service prefix (``/services/ds-compute/``)."""
    return [
        (prefix + "oauth_callback", OAuthCallbackHandler),
        (prefix + "api/health", HealthHandler),
        (prefix + "api/switches", SwitchListHandler),
        (prefix + r"api/switches/([A-Za-z0-9_-]+)", SwitchHandler),
        (prefix + r"api/switches/([A-Za-z0-9_-]+)/go", SwitchGoHandler),
        (prefix + "api/tiers", TiersHandler),
        (prefix + "api/policy", PolicyHandler),
        (prefix + "api/requests", RequestListHandler),
        (prefix + r"api/requests/([^/]+)/decision", RequestDecisionHandler),
        (prefix + "metrics", MetricsHandler),
        (prefix + r"switches/([A-Za-z0-9_-]+)", ProgressPageHandler),
        (prefix.rstrip("/") + "/?", IndexHandler),
    ]
