"""Who may do what in the ds-compute service: decided by the token's scopes.

Every request's identity is the model the hub returns for its token or
HubOAuth cookie (``GET /hub/api/user``): its ``scopes`` are the token's own,
expanded and already intersected with what the owner holds. The service
never looks at the model's ``admin`` flag: a hub admin's token restricted to
``access:services!service=ds-compute`` can do no more here than any user's.

The rules (pure functions of the model, tested in ``tests/test_authz.py``):

- **Own servers.** A user's own identity acts on all of their own servers:
  the browser session (HubOAuth cookie), a full token, or a token that
  holds only ``access:services!service=ds-compute`` (the hub checks that
  scope before the service sees the request). A *server* token, one whose
  scopes name servers of its owner with ``access:servers!server=alice/<name>``
  but hold no user-wide ``access:servers``/``access:servers!user=alice``,
  acts only on the server(s) it names: the default server's token cannot
  switch ``alice/n1``.
- **Other users' servers.** The token must hold both ``start:servers`` and
  ``delete:servers`` for that server (a switch stops and starts it):
  ``admin:servers`` or ``servers`` (unfiltered), ``servers!user=bob``,
  ``servers!server=bob/<name>`` or ``servers!group=<a group of bob>``. The
  same scopes on one's own servers also count, so a server token given
  ``servers!user=alice`` may act on all of alice's servers.
- **Reading** another user's switches, tiers or budget needs ``read:servers``
  for them (``servers`` and ``admin:servers`` include it); one's own are
  readable by any of one's tokens.
- **The admin pages** (``admin``, ``admin/action``, ``admin/audit``) and the
  list of everyone's switches need :data:`ADMIN_SCOPE`
  (``custom:ds-compute:admin``), a custom scope that
  :func:`jupyter_ds_compute.hubconfig.configure` defines and grants to the
  hub's ``admin_users`` (role ``ds-compute-admin``). An admin page's
  actions on a server still need the server scopes above.
- **Metrics** need ``read:metrics`` (hub admins hold it).

Only users (and their servers) act on servers here; services are refused.
"""

from __future__ import annotations

import re

__all__ = [
    "ADMIN_SCOPE",
    "METRICS_SCOPE",
    "can_act_on",
    "can_read",
    "group_filtered",
    "is_admin",
    "may_read_metrics",
    "scopes_of",
    "token_servers",
    "act_refusal",
]

#: the custom scope of the ds-compute admin pages (defined in hubconfig.configure)
ADMIN_SCOPE = "custom:ds-compute:admin"

#: what ``GET metrics`` needs (JupyterHub's own, as for ``/hub/metrics``)
METRICS_SCOPE = "read:metrics"

#: JupyterHub's scopes that include others (``scopes.scope_definitions``
#: subscopes), for models whose scopes were not expanded
_IMPLIES = {
    "admin:servers": ("servers", "admin:server_state"),
    "servers": ("read:servers", "start:servers", "delete:servers"),
}

#: what a switch (stop, then start) of a server needs
_ACT = ("start:servers", "delete:servers")

_FILTER = re.compile(r"^(?P<base>[^!]+)(?:!(?P<kind>user|server|group)=(?P<value>.*))?$")


def scopes_of(model: dict | None) -> frozenset[str]:
    """The model's scopes with JupyterHub's server-scope implications added."""
    raw = (model or {}).get("scopes") or ()
    out = set()
    todo = [s for s in raw if isinstance(s, str)]
    while todo:
        scope = todo.pop()
        if scope in out:
            continue
        out.add(scope)
        base, sep, filt = scope.partition("!")
        for sub in _IMPLIES.get(base, ()):
            todo.append(sub + sep + filt)
    return frozenset(out)


def _is_user(model: dict | None) -> bool:
    return bool(model) and model.get("kind", "user") == "user" and isinstance(model.get("name"), str)


def _covers(scopes, base: str, user: str, server_name: str | None, groups=()) -> bool:
    """``scopes`` hold ``base`` for ``user``'s server ``server_name``
    (None: for all of the user's servers, i.e. unfiltered or ``!user=``)."""
    if base in scopes or f"{base}!user={user}" in scopes:
        return True
    if server_name is not None and f"{base}!server={user}/{server_name}" in scopes:
        return True
    return any(f"{base}!group={g}" in scopes for g in groups or ())


def token_servers(model: dict | None) -> set[str] | None:
    """The servers of its owner a *server* token is bound to, or None if it is not one.

    A server token's scopes name its server: ``access:servers!server=alice/``
    (the default server) or ``access:servers!server=alice/n1``. A token with
    user-wide access to its owner's servers (``access:servers`` or
    ``access:servers!user=alice``, e.g. a full user token) is not bound.
    """
    if not _is_user(model):
        return None
    me = model["name"]
    scopes = scopes_of(model)
    if _covers(scopes, "access:servers", me, None):
        return None
    prefix = f"access:servers!server={me}/"
    bound = {s[len(prefix) :] for s in scopes if s.startswith(prefix)}
    return bound or None


def can_act_on(model: dict | None, user: str, server_name: str, groups=()) -> bool:
    """May the caller (``model``) switch, stop or start ``user``'s server ``server_name``?

    ``groups``: ``user``'s groups, for ``servers!group=`` scopes (see :func:`group_filtered`).
    """
    return act_refusal(model, user, server_name, groups) is None


def act_refusal(model: dict | None, user: str, server_name: str, groups=()) -> str | None:
    """Why the caller may not act on ``user``'s server ``server_name``; None if it may."""
    what = f"{user}'s server {server_name!r}" if server_name else f"{user}'s default server"
    if not _is_user(model):
        return "Only users (and their servers) may switch servers."
    scopes = scopes_of(model)
    if all(_covers(scopes, base, user, server_name, groups) for base in _ACT):
        return None
    if model["name"] != user:
        return (
            f"Only {user} or a token with the servers scope for {user} "
            f"(admin:servers, servers!user={user}) may act on {what}."
        )
    bound = token_servers(model)
    if bound is not None and server_name not in bound:
        names = ", ".join(repr(s) if s else "the default server" for s in sorted(bound))
        return (
            f"This token belongs to {user}'s server {names}; it may act only on that server, not on {what}."
        )
    return None


def can_read(model: dict | None, user: str, groups=()) -> bool:
    """May the caller see ``user``'s switches, tiers and budget?"""
    if not _is_user(model):
        return False
    if model["name"] == user or is_admin(model):
        return True
    return _covers(scopes_of(model), "read:servers", user, None, groups)


def group_filtered(model: dict | None) -> bool:
    """The caller holds server scopes filtered by group (``servers!group=...``):
    :func:`can_act_on`/:func:`can_read` need the target user's groups to decide."""
    return any("!group=" in s for s in scopes_of(model) if s.split("!")[0] in (*_ACT, "read:servers"))


def is_admin(model: dict | None) -> bool:
    """May the caller open the ds-compute admin pages (:data:`ADMIN_SCOPE`, unfiltered)?"""
    return bool(model) and ADMIN_SCOPE in scopes_of(model)


def may_read_metrics(model: dict | None) -> bool:
    """``GET metrics`` with ``metrics_require_auth``: the token holds ``read:metrics``."""
    return bool(model) and METRICS_SCOPE in scopes_of(model)
