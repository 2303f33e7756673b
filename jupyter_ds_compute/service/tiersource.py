"""Where the service's tiers come from: the spawner, through the hub.

The spawner evaluates ``profile_list`` for each user at each start
(callables included) and keeps the JSON-safe catalogue
(:mod:`jupyter_ds_compute.catalogue`) in its state; the hub hands the state
out in server models to the service (``admin:server_state``). A switch is
validated against that catalogue before anything is stopped; the hub's
``apply_user_options`` validates again when the options are PATCHed.

Without a catalogue (a server not started since this version, or a state the
hub does not show), the static list from the hub's final config
(``c.DSComputeService.profile_list``, which ``configure(c)`` fills from a
list or dict ``profile_list``) is used; with neither, the service says why
it cannot validate (:class:`NoTiers`).
"""

from __future__ import annotations

import logging

from .. import catalogue
from .hubapi import HubAPIError

__all__ = ["NoTiers", "TierSource"]


class NoTiers(Exception):
    """No tiers are known for a server: the message says why (a 409)."""


class TierSource:
    """The tiers of each server; :attr:`known` is every tier seen so far
    (the static list, then each catalogue's new slugs), updated in place for
    the admin page, the metrics and the accounting."""

    def __init__(self, hub, static: list[dict] | None, log=None):
        self.hub = hub
        self.static = static
        self.known: list[dict] = list(static or [])
        self.log = log or logging.getLogger(__name__)

    def observe(self, profiles: list[dict] | None) -> None:
        """Add the tiers of a catalogue whose slugs :attr:`known` lacks."""
        have = {p["slug"] for p in self.known}
        for p in profiles or ():
            if p["slug"] not in have:
                have.add(p["slug"])
                self.known.append(p)
        if self.known and not any(p.get("default") for p in self.known):
            self.known[0] = dict(self.known[0], default=True)

    def of_model(self, server: dict | None) -> list[dict] | None:
        """The tiers of a server model: its catalogue, else the static list (None: neither)."""
        profiles = catalogue.from_state((server or {}).get("state"))
        if profiles is not None:
            self.observe(profiles)
            return profiles
        return self.static

    async def of_server(self, user: str, server_name: str) -> list[dict]:
        """The tiers ``user``'s server ``server_name`` may use; :class:`NoTiers` if unknown.

        Raises :class:`~.hubapi.HubAPIError` when the hub cannot be asked.
        """
        server = await self.hub.get_server(user, server_name)
        profiles = self.of_model(server)
        if profiles is None:
            what = f"{user}'s server {server_name!r}" if server_name else f"{user}'s default server"
            raise NoTiers(
                f"The tiers of {what} are not known yet: the hub's profile_list is computed per user, and "
                "this server has not been started since; start it from the hub's home page first."
            )
        return profiles

    async def of_request(self, caller: dict, body: dict, token_server) -> list[dict]:
        """The tiers for a switch request's target (``user``/``server_name`` of
        ``body`` as the orchestrator reads them). A malformed target gets the
        static list (or ``[]`` so the orchestrator's own checks answer it)."""
        owner = body.get("user") or caller.get("name")
        server_name = body.get("server_name")
        if server_name is None and isinstance(owner, str):
            server_name = token_server(caller, owner)
        if not isinstance(owner, str) or not isinstance(server_name, str):
            return self.static or []
        try:
            return await self.of_server(owner, server_name)
        except HubAPIError as e:
            self.log.warning("Could not read %s's server %r for its tiers: %s", owner, server_name, e)
            return self.static or []
