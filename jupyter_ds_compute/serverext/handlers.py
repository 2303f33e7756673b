"""REST handlers of the server extension: ``/ds-compute/api/*``.

Contract: ``docs/internals.md``, "Server extension REST API". Only the
server's owner (``JUPYTERHUB_USER``) may call; others get 403.
"""

from __future__ import annotations

import json
import re

from jupyter_server.base.handlers import APIHandler
from tornado import web

#: the id of a switch, as the service's ``Store.create_switch`` makes it (``uuid4().hex[:12]``)
SWITCH_ID = re.compile(r"[0-9a-f]{12}")


class DSComputeHandler(APIHandler):
    @property
    def ds(self):
        return self.settings["ds_compute"]

    def check_owner(self) -> None:
        """403 unless the caller is the server's owner (under JupyterHub)."""
        owner = self.ds.context.user
        if owner is None:  # not under JupyterHub: whoever the server authenticates
            return
        user = self.current_user
        name = getattr(user, "username", None) or getattr(user, "name", None)
        if name != owner:
            self.log.warning("ds-compute: %s tried to use the ds-compute API of %s's server", name, owner)
            raise web.HTTPError(403, "only the owner of this server (%s) may use ds-compute" % owner)

    def reply_error(self, status: int, message: str, **extra) -> None:
        self.set_status(status)
        self.finish(json.dumps(dict(message=message, **extra)))


class StatusHandler(DSComputeHandler):
    @web.authenticated
    async def get(self):
        self.check_owner()
        self.finish(json.dumps(await self.ds.status()))


class TiersHandler(DSComputeHandler):
    @web.authenticated
    async def get(self):
        self.check_owner()
        self.finish(json.dumps(await self.ds.tiers()))


class SwitchHandler(DSComputeHandler):
    @web.authenticated
    async def post(self):
        self.check_owner()
        if not self.ds.context.under_hub:
            return self.reply_error(
                409, "not running under JupyterHub: there is no other machine to switch to"
            )
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            return self.reply_error(400, "the request body is not valid JSON", field=None)
        if not isinstance(body, dict):
            return self.reply_error(
                400, "the request body must be a JSON object like {\"profile\": \"gpu\"}", field=None
            )
        profile = body.get("profile")
        if not isinstance(profile, str) or not profile:
            return self.reply_error(
                400, "profile must be a non-empty string: the slug of the tier to switch to", field="profile"
            )
        if "next" in body and not isinstance(body["next"], str):
            return self.reply_error(400, "next must be a string (a path under this server)", field="next")
        if "keep_state" in body and not isinstance(body["keep_state"], bool):
            return self.reply_error(
                400,
                "keep_state must be true or false (save and restore the kernels' variables)",
                field="keep_state",
            )
        if "hold_cutover" in body and not isinstance(body["hold_cutover"], bool):
            return self.reply_error(
                400,
                "hold_cutover must be true or false (wait for Lab to save before the cut-over)",
                field="hold_cutover",
            )
        if "state_saved_by" in body and not isinstance(body["state_saved_by"], str):
            return self.reply_error(
                400, "state_saved_by must be the id of the kernel that saved itself", field="state_saved_by"
            )
        status, reply = await self.ds.forward_switch(body)
        self.set_status(status)
        self.finish(json.dumps(reply))


class SwitchRecordHandler(DSComputeHandler):
    """``GET switches/<id>``: the service's record of a switch of this server's user.

    Lab follows the prepare phase with it while this server still runs.
    """

    @web.authenticated
    async def get(self, switch_id):
        self.check_owner()
        if not self.ds.context.under_hub:
            return self.reply_error(409, "not running under JupyterHub: there are no switches", field=None)
        if not SWITCH_ID.fullmatch(switch_id):
            return self.reply_error(
                400,
                "id must be the id of a switch: 12 lowercase hex digits, as POST switch answered",
                field="id",
            )
        status, reply = await self.ds.switch_record(switch_id)
        self.set_status(status)
        self.finish(json.dumps(reply))


class SwitchGoHandler(DSComputeHandler):
    """``POST switches/<id>/go``: Lab saved the open documents of a switch it
    asked to hold (``hold_cutover``); the service cuts over now."""

    @web.authenticated
    async def post(self, switch_id):
        self.check_owner()
        if not self.ds.context.under_hub:
            return self.reply_error(409, "not running under JupyterHub: there are no switches", field=None)
        if not SWITCH_ID.fullmatch(switch_id):
            return self.reply_error(
                400,
                "id must be the id of a switch: 12 lowercase hex digits, as POST switch answered",
                field="id",
            )
        status, reply = await self.ds.switch_go(switch_id)
        self.set_status(status)
        if reply is None:
            return self.finish()
        self.finish(json.dumps(reply))


class RequestsHandler(DSComputeHandler):
    """``POST requests {"profile", "duration", "reason"}``: ask for a tier this
    user may not use (forwarded to the service's ``api/requests``, which
    checks them); ``GET requests``: the user's requests."""

    @web.authenticated
    async def get(self):
        self.check_owner()
        if not self.ds.context.under_hub:
            return self.reply_error(409, "not running under JupyterHub: there are no requests", field=None)
        status, reply = await self.ds.forward_request("GET", None)
        self.set_status(status)
        self.finish(json.dumps(reply))

    @web.authenticated
    async def post(self):
        self.check_owner()
        if not self.ds.context.under_hub:
            return self.reply_error(
                409, "not running under JupyterHub: there is no tier to ask for", field=None
            )
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            return self.reply_error(400, "the request body is not valid JSON", field=None)
        if not isinstance(body, dict):
            return self.reply_error(
                400,
                'the request body must be a JSON object like {"profile": "gpu", "duration": "7d", "reason": "..."}',
                field=None,
            )
        for key in ("profile", "reason"):
            if not isinstance(body.get(key), str) or not body[key].strip():
                return self.reply_error(400, f"{key} must be a non-empty string", field=key)
        if not isinstance(body.get("duration"), (str, int, float)) or isinstance(body.get("duration"), bool):
            return self.reply_error(
                400, "duration must be a duration like '7d' or a number of seconds", field="duration"
            )
        # only what a request has: the service names anything else, and the user is this server's owner
        status, reply = await self.ds.forward_request(
            "POST", {k: body[k] for k in ("profile", "duration", "reason")}
        )
        self.set_status(status)
        self.finish(json.dumps(reply))


class EnvsHandler(DSComputeHandler):
    @web.authenticated
    async def get(self):
        self.check_owner()
        try:
            wait = float(self.get_argument("wait", "0"))
        except ValueError:
            return self.reply_error(400, "wait must be a number of seconds", field="wait")
        self.finish(json.dumps(await self.ds.envs_model(wait=min(max(wait, 0.0), 30.0))))


class StateHandler(DSComputeHandler):
    """The last save and restore of the kernels' state (``keep_state`` switches)."""

    @web.authenticated
    async def get(self):
        self.check_owner()
        st = self.ds.state
        restoring = st.restoring is not None and not st.restoring.done()
        self.finish(json.dumps(dict(st.last(), root=st.root, restoring=restoring)))


def default_handlers(prefix: str) -> list[tuple[str, type]]:
    return [
        (rf"{prefix}/api/status", StatusHandler),
        (rf"{prefix}/api/tiers", TiersHandler),
        (rf"{prefix}/api/switch", SwitchHandler),
        # before the record's catch-all: (.*) would take "<id>/go" as an id (and 400 it)
        (rf"{prefix}/api/switches/([^/]*)/go", SwitchGoHandler),
        (rf"{prefix}/api/switches/(.*)", SwitchRecordHandler),
        (rf"{prefix}/api/requests", RequestsHandler),
        (rf"{prefix}/api/envs", EnvsHandler),
        (rf"{prefix}/api/state", StateHandler),
    ]
