"""``GET/POST /services/ds-compute/request?profile=<slug>``: ask for a tier from the spawn page.

The spawn form links a tier the user may not use but can request (its
``max_grant``) here. ``GET`` shows the tier (price, the longest grant) and a
form (duration, reason; ``_xsrf`` for the HubOAuth cookie, checked as on the
admin page); ``POST`` sends it through :meth:`.grants.Grants.request`, the
code behind ``POST api/requests``, so the rules, the audit entry and the
400s naming the field are the same. Whether the tier can be asked for is
:func:`jupyter_ds_compute.policy.request_refusal` on the user's groups as the
hub has them now.
"""

from __future__ import annotations

from tornado import web

from .. import formatting, policy
from .grants import GrantRefused
from .handlers import PageHandler

__all__ = ["request_page_handlers"]


class RequestPageHandler(PageHandler):
    @property
    def grants(self):
        return self.settings["grants"]

    def _caller(self) -> dict:
        caller = self.current_user
        if caller.get("kind", "user") != "user":
            raise web.HTTPError(403, "Only users may request tiers.")
        return caller

    @web.authenticated
    async def get(self):
        caller = self._caller()
        await self._show(caller, self.get_argument("profile", ""), {})

    @web.authenticated
    async def post(self):
        caller = self._caller()
        body = {
            "profile": self.get_body_argument("profile", ""),
            "duration": self.get_body_argument("duration", "").strip() or None,
            "reason": self.get_body_argument("reason", ""),
        }
        try:
            record = await self.grants.request(caller, body)
        except GrantRefused as e:
            self.set_status(e.status)
            return await self._show(caller, body["profile"], body, error=e.message, field=e.field)
        self.render_page("request.html", tier=None, done=record, refusal=None, **self._links())

    async def _show(self, caller, slug, values, error=None, field=None):
        """The form for ``slug`` (or why it cannot be asked for)."""
        user = caller["name"]
        try:
            profiles = await self.grants.profiles_of(user)
            tier = self.grants.tier_of(profiles, slug)
            groups = await self.grants.groups_of(user)
        except GrantRefused as e:
            self.set_status(e.status)
            return self.render_page(
                "request.html",
                tier=None,
                done=None,
                refusal=None,
                error=e.message,
                field=e.field,
                **self._links(),
            )
        open_one = self.store.open_request(user, tier.slug)
        # the rule of POST api/requests, with no duration yet: may this tier be asked for at all?
        refusal = policy.request_refusal(
            display_name=tier.display_name,
            allowed_groups=tier.allowed_groups,
            max_grant=tier.max_grant,
            user_groups=groups,
            duration=0,
            pending=bool(open_one and open_one["state"] == "pending"),
            granted=bool(open_one and open_one["state"] == "approved"),
        )
        self.render_page(
            "request.html",
            tier=tier,
            price=formatting.price(tier.hourly_cost) if tier.hourly_cost is not None else "",
            # the longest grant, written as the requests API reads durations (7d, 12h, ...)
            default_duration=policy._short_duration(tier.max_grant) if tier.max_grant else "",
            refusal=refusal[1][0].upper() + refusal[1][1:] + "." if refusal and not error else None,
            done=None,
            error=error,
            field=field,
            values=values,
            xsrf=self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes) else self.xsrf_token,
            **self._links(),
        )

    def _links(self) -> dict:
        return {"spawn_url": f"{self.base_url}hub/spawn", "home_url": f"{self.base_url}hub/home"}


def request_page_handlers(prefix: str) -> list[tuple]:
    return [(prefix + "request", RequestPageHandler)]
