"""The hub side of caps and budgets: what the spawner checks before a start.

- **Caps** are counted in the hub's own database (:func:`running_on_tier`):
  the hub is the authority on what runs, and the count and the storing of
  the new options happen without an ``await`` in between.
- **Budgets** are the service's accounts. The spawner asks the service over
  its REST API (:class:`BudgetClient`: ``GET <service>/api/hub/budget``,
  authenticated by the token :func:`jupyter_ds_compute.hubconfig.configure`
  gives both sides), keeps the answer ``cache_seconds`` per user, and waits
  at most ``timeout`` seconds. When the service does not answer, budgets are
  not enforced for that start (a warning naming the user and server says
  so) and caps still are. The service never shares its files with the hub.

Importing this module imports neither the service nor HubOAuth.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

__all__ = ["BudgetClient", "ServiceUnavailable", "running_on_tier"]

log = logging.getLogger(__name__)


def running_on_tier(db, slug: str, exclude_spawner_id=None) -> int:
    """Servers running or starting with ``user_options.profile == slug`` (hub DB)."""
    from jupyterhub import orm

    count = 0
    for row in db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None)):
        if row.id == exclude_spawner_id:
            continue
        if (row.user_options or {}).get("profile") == slug:
            count += 1
    return count


class ServiceUnavailable(Exception):
    """The service did not answer (down, slow, or a broken answer); the message says which."""


class BudgetClient:
    """Asks the ds-compute service for a user's budget; a bounded per-user cache.

    ``url`` is the service's own address with its prefix (e.g.
    ``http://127.0.0.1:10101/services/ds-compute/``), ``token`` the shared
    token. One instance per hub process (see :meth:`for_settings`).
    """

    _instances: dict = {}

    def __init__(
        self, url: str, token: str, *, cache_seconds: float = 10.0, timeout: float = 5.0, clock=None
    ):
        self.url = url if url.endswith("/") else url + "/"
        self.token = token
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self.clock = clock or time.monotonic
        self._cache: dict[tuple, tuple[float, dict]] = {}
        self._cache_max = 1000

    @classmethod
    def for_settings(cls, url, token, cache_seconds, timeout):
        key = (url, token, cache_seconds, timeout)
        client = cls._instances.get(key)
        if client is None:
            client = cls._instances[key] = cls(url, token, cache_seconds=cache_seconds, timeout=timeout)
        return client

    async def _fetch(self, method: str, path: str, body=None) -> dict:
        req = HTTPRequest(
            self.url + path,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        try:
            resp = await asyncio.wait_for(AsyncHTTPClient().fetch(req), self.timeout + 1)
        except HTTPClientError as e:
            text = e.response.body.decode(errors="replace")[:200] if e.response is not None else ""
            raise ServiceUnavailable(
                f"the ds-compute service answered {e.code} to {method} {path}: {text}"
            ) from None
        except (OSError, asyncio.TimeoutError) as e:
            raise ServiceUnavailable(
                f"the ds-compute service at {self.url} did not answer: {e or 'timeout'}"
            ) from None
        try:
            return json.loads(resp.body or b"{}")
        except ValueError:
            raise ServiceUnavailable(f"the ds-compute service's answer to {path} is not JSON") from None

    async def budget(self, user: str, groups) -> dict:
        """The user's tightest budget (the service's ``budget_status``), at most
        ``cache_seconds`` old. Raises :class:`ServiceUnavailable`."""
        groups = sorted(set(groups or ()))
        key = (user, tuple(groups))
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.cache_seconds:
            return hit[1]
        query = urlencode([("user", user)] + [("group", g) for g in groups])
        data = await self._fetch("GET", f"api/hub/budget?{query}")
        budget = data.get("budget")
        if not isinstance(budget, dict) or "state" not in budget:
            raise ServiceUnavailable("the ds-compute service's budget answer has no 'budget'")
        if len(self._cache) >= self._cache_max:
            # bounded: drop what is stale, then the oldest
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.cache_seconds}
            while len(self._cache) >= self._cache_max:
                self._cache.pop(min(self._cache, key=lambda k: self._cache[k][0]))
        self._cache[key] = (now, budget)
        return budget

    def forget(self, user: str) -> None:
        """Drop ``user``'s cached answers: their server stopped, so what it
        ran up is in the service's accounts and the next start must see it."""
        self._cache = {k: v for k, v in self._cache.items() if k[0] != user}

    async def record_event(self, what="an event", **event) -> None:
        """Append ``event`` (``POST api/hub/events``: a ``policy`` refusal or a
        ``volume`` event) to the service's audit log; never raises."""
        try:
            await self._fetch("POST", "api/hub/events", event)
        except ServiceUnavailable as e:
            log.warning("Could not record %s in the ds-compute audit log: %s", what, e)
