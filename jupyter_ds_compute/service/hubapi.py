"""A small async client of the JupyterHub REST API (JupyterHub >= 6.0).

Only the calls the switch needs, each bounded by ``request_timeout``; the
waits poll with a fixed interval and are bounded by the timeout they are
given. Scopes needed by the service's token: ``servers`` (read, start,
delete, patch ``user_options``, ``/progress``), ``read:users:groups``
(the owner's groups for tier checks), ``list:users`` (accounting, idle
checks, the admin page), ``read:groups`` (members of budgeted groups) and
``admin:server_state`` (each server's spawner state: the admin page's volumes);
``groups!group=<g>`` for the groups grants add users to (requests and grants).
List endpoints are followed page after page (:meth:`HubAPI.get_paginated`).

A call the hub did not answer (connection refused or reset, no answer within
``request_timeout``, or the proxy's 502/503/504 in front of a hub that is
down) raises :class:`HubUnavailable`: the state of the hub is *unknown*,
which is not an answer. Every status the hub itself gave (4xx, 500) is a
plain :class:`HubAPIError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .sse import SSEParser

__all__ = ["HubAPI", "HubAPIError", "HubUnavailable", "UNAVAILABLE_STATUSES", "server_label"]

log = logging.getLogger(__name__)

#: ``Accept`` value that makes the hub answer list endpoints as ``{"items", "_pagination"}``
PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"

#: statuses that mean "no hub behind the proxy", not an answer of the hub:
#: 502/503/504 (configurable-http-proxy, or a load balancer, in front of a
#: hub that is down or restarting) and 599 (tornado: no HTTP answer at all)
UNAVAILABLE_STATUSES = frozenset({502, 503, 504, 599})


class HubAPIError(Exception):
    """A hub API call failed: ``status`` (0 for no answer) and the hub's message."""

    def __init__(self, status: int, message: str, *, method: str = "", path: str = ""):
        super().__init__(f"{method} {path}: {status} {message}".strip())
        self.status = status
        self.message = message
        self.method = method
        self.path = path


class HubUnavailable(HubAPIError):
    """The hub did not answer: refused, reset, timed out, or a proxy's 502/503/504.

    Not an answer: what the call did (if anything) is unknown. Callers wait
    for the hub and then look again, never take it as a final failure.
    """


def server_label(user: str, server_name: str) -> str:
    """``user:server`` as logs and messages name a server (``alice:`` is the default one)."""
    return f"{user}:{server_name}"


def _server_path(user: str, server_name: str) -> str:
    u = quote(user, safe="")
    if server_name:
        return f"/users/{u}/servers/{quote(server_name, safe='')}"
    return f"/users/{u}/server"


class HubAPI:
    """Async hub REST API calls made with the service's own token."""

    def __init__(
        self,
        api_url: str,
        api_token: str,
        *,
        request_timeout: float = 30,
        poll_interval: float = 0.2,
    ):
        self.api_url = api_url.rstrip("/")
        self.api_token = api_token
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        self.client = AsyncHTTPClient()

    async def request(
        self, method: str, path: str, body=None, *, ok=(200, 201, 202, 204), headers: dict | None = None
    ):
        """One API call; returns ``(status, parsed JSON or text or None)``.

        Raises :class:`HubUnavailable` when the hub does not answer
        (refused, reset, no answer within ``request_timeout``, a proxy's
        502/503/504), :class:`HubAPIError` for its other statuses not in ``ok``.
        """
        headers = {**(headers or {}), "Authorization": f"token {self.api_token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        req = HTTPRequest(
            self.api_url + path,
            method=method,
            headers=headers,
            body=None if body is None else json.dumps(body),
            request_timeout=self.request_timeout,
            connect_timeout=self.request_timeout,
            # POST/DELETE without a body
            allow_nonstandard_methods=True,
        )
        try:
            resp = await asyncio.wait_for(self.client.fetch(req, raise_error=False), self.request_timeout + 5)
        except asyncio.TimeoutError:
            raise HubUnavailable(
                0, f"hub unreachable: no answer within {self.request_timeout:g}s", method=method, path=path
            ) from None
        except (OSError, HTTPClientError) as e:
            raise HubUnavailable(0, f"hub unreachable: {e}", method=method, path=path) from None
        text = resp.body.decode("utf8", "replace") if resp.body else ""
        data = None
        if text:
            try:
                data = json.loads(text)
            except ValueError:
                data = text
        if resp.code not in ok:
            if resp.code == 599:
                # tornado's "no HTTP answer": refused, reset, timed out
                raise HubUnavailable(0, f"hub unreachable: {resp.error}", method=method, path=path)
            if isinstance(data, dict) and data.get("message"):
                message = str(data["message"])
            else:
                message = resp.reason or "error"
            if resp.code in UNAVAILABLE_STATUSES:
                raise HubUnavailable(
                    resp.code, f"hub unavailable behind the proxy: {message}", method=method, path=path
                )
            raise HubAPIError(resp.code, message, method=method, path=path)
        return resp.code, data

    # models

    async def get_user(self, user: str) -> dict | None:
        """The user model (as far as the token may read it), None if no such user."""
        try:
            _, data = await self.request("GET", f"/users/{quote(user, safe='')}")
        except HubAPIError as e:
            if e.status == 404:
                return None
            raise
        return data

    async def get_server(self, user: str, server_name: str = "") -> dict | None:
        """The server model (``ready``, ``pending``, ``stopped``, ``user_options``...).

        None if the user has no such server.
        """
        try:
            _, data = await self.request("GET", _server_path(user, server_name))
        except HubAPIError as e:
            if e.status == 404:
                return None
            raise
        return data

    async def list_users(self, state: str | None = None, include_stopped_servers: bool = False) -> list[dict]:
        """Every user model, following the hub's pagination. Needs ``list:users``.

        ``state="active"``: only users with a running or pending server;
        ``include_stopped_servers``: stopped servers are in ``servers`` too.
        """
        query = {}
        if state:
            query["state"] = state
        if include_stopped_servers:
            query["include_stopped_servers"] = "1"
        return await self.get_paginated("/users", query)

    async def get_paginated(self, path: str, query: dict | None = None) -> list:
        """Every item of a list endpoint, page after page (as ``jupyterhub-idle-culler`` does).

        The request asks for the paginated form (``Accept:
        application/jupyterhub-pagination+json``) and follows
        ``_pagination.next`` until the hub says there is none, so the hub's
        ``c.JupyterHub.api_page_max_limit`` decides the page size, whatever it
        is. The next page is requested from :attr:`api_url` with the hub's
        ``offset`` and ``limit`` (not the host of ``next.url``, which is how the
        hub saw this request and may not be how the service reaches it).
        A hub answering a plain list (no pagination) gives that list.
        Items that a concurrent change moves across a page boundary may be
        seen twice: models with a ``name`` are returned once.
        """
        query = dict(query or {})
        items: list = []
        seen: set = set()
        offset = 0
        for page_no in range(1, 100_001):
            q = urlencode({**query, "offset": offset} if offset else query)
            _, data = await self.request(
                "GET", path + (f"?{q}" if q else ""), headers={"Accept": PAGINATION_MEDIA_TYPE}
            )
            if isinstance(data, list):
                # a hub that does not paginate: the whole list
                return data
            if not isinstance(data, dict) or not isinstance(data.get("items"), list):
                raise HubAPIError(
                    0, f"unexpected answer (page {page_no}): {str(data)[:200]}", method="GET", path=path
                )
            for item in data["items"]:
                name = item.get("name") if isinstance(item, dict) else None
                if name is not None:
                    if name in seen:
                        continue
                    seen.add(name)
                items.append(item)
            nxt = (data.get("_pagination") or {}).get("next")
            if not nxt:
                log.debug("Fetched %d items from %s in %d pages", len(items), path, page_no)
                return items
            next_offset = nxt.get("offset")
            if not isinstance(next_offset, int) or next_offset <= offset:
                raise HubAPIError(
                    0,
                    f"pagination does not advance (offset {offset} -> {next_offset!r})",
                    method="GET",
                    path=path,
                )
            if "limit" in nxt:
                query["limit"] = nxt["limit"]
            offset = next_offset
        raise HubAPIError(0, "more than 100000 pages", method="GET", path=path)

    async def get_group(self, name: str) -> dict | None:
        """The group model (``users``: member names), None if no such group. Needs ``read:groups``."""
        try:
            _, data = await self.request("GET", f"/groups/{quote(name, safe='')}")
        except HubAPIError as e:
            if e.status == 404:
                return None
            raise
        return data

    # actions

    async def add_group_member(self, group: str, user: str) -> None:
        """Add ``user`` to ``group`` (a grant). Needs ``groups!group=<group>``."""
        await self.request("POST", f"/groups/{quote(group, safe='')}/users", {"users": [user]})

    async def remove_group_member(self, group: str, user: str) -> None:
        """Remove ``user`` from ``group`` (a grant's end); a group that is gone is fine."""
        try:
            await self.request("DELETE", f"/groups/{quote(group, safe='')}/users", {"users": [user]})
        except HubAPIError as e:
            if e.status != 404 or isinstance(e, HubUnavailable):
                raise

    async def stop_server(self, user: str, server_name: str = "") -> int:
        """DELETE the server: 204 stopped, 202 stop pending."""
        status, _ = await self.request("DELETE", _server_path(user, server_name))
        return status

    async def patch_user_options(self, user: str, server_name: str, user_options: dict) -> dict:
        """Store ``user_options`` on a *stopped* server (JupyterHub 6.0)."""
        _, data = await self.request("PATCH", _server_path(user, server_name), {"user_options": user_options})
        return data

    async def start_server(self, user: str, server_name: str, user_options: dict) -> str:
        """POST the server with ``user_options``.

        Returns ``"ready"`` (201), ``"pending"`` (202) or ``"already-running"``
        (400 "already running": someone started it in the gap; the caller must
        check ``user_options`` afterwards).
        """
        try:
            status, _ = await self.request(
                "POST", _server_path(user, server_name), {"user_options": user_options}
            )
        except HubAPIError as e:
            if e.status == 400 and "already running" in e.message:
                return "already-running"
            raise
        return "ready" if status == 201 else "pending"

    # waits

    async def wait_for(
        self,
        user: str,
        server_name: str,
        done: Callable[[dict | None], bool],
        timeout: float,
        what: str,
    ) -> dict | None:
        """Poll the server model until ``done(model)``; returns that model.

        Raises :class:`asyncio.TimeoutError` (with ``what`` in the message)
        after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            model = await self.get_server(user, server_name)
            if done(model):
                return model
            if loop.time() >= deadline:
                raise asyncio.TimeoutError(f"{server_label(user, server_name)} not {what} after {timeout:g}s")
            await asyncio.sleep(self.poll_interval)

    async def wait_stopped(self, user: str, server_name: str, timeout: float) -> dict | None:
        return await self.wait_for(
            user,
            server_name,
            lambda m: m is None or (m["stopped"] and not m["pending"]),
            timeout,
            "stopped",
        )

    async def progress(
        self,
        user: str,
        server_name: str,
        on_event: Callable[[dict], Awaitable[None] | None],
        timeout: float,
    ) -> None:
        """Follow the hub's spawn-progress event stream, calling ``on_event(event)``.

        Ends when the hub ends the stream (spawn ready or failed) or after
        ``timeout``. The hub answers 400 unless a spawn is pending, so call it
        after the POST.
        """
        path = _server_path(user, server_name) + "/progress"
        parser = SSEParser()

        def on_chunk(chunk: bytes) -> None:
            for sse in parser.feed(chunk):
                if sse.event != "message":
                    continue
                try:
                    event = json.loads(sse.data)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    res = on_event(event)
                    if asyncio.iscoroutine(res):
                        asyncio.ensure_future(res)

        req = HTTPRequest(
            self.api_url + path,
            headers={"Authorization": f"token {self.api_token}", "Accept": "text/event-stream"},
            streaming_callback=on_chunk,
            request_timeout=timeout,
            connect_timeout=self.request_timeout,
        )
        try:
            await asyncio.wait_for(self.client.fetch(req, raise_error=False), timeout + 5)
        except (asyncio.TimeoutError, HTTPClientError, OSError) as e:
            # progress is informative only; the caller polls the server model
            log.debug("Progress stream of %s ended: %s", server_label(user, server_name), e)
