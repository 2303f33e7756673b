"""Cost accounting and the policy checks that need live data.

The service *accounts* (it is the one process that sees every server over
time); the hub's spawner *asks* it for a user's budget at spawn over its
REST API (``api/hub/budget``, :mod:`.hubside`; the client is
:mod:`jupyter_ds_compute.spawnpolicy`). Only the service opens its SQLite
file:

``usage``
    one row per (server, start): who, which tier, the tier's hourly cost
    when the interval opened, ``start`` (the hub's ``started`` time of the
    server) and ``end`` (the last poll that saw it running). Cost =
    ``hourly_cost * (end - start) / 3600``; the cost of a period is the
    overlap of the intervals with it. Intervals are opened and extended by
    the service's poll of ``GET /hub/api/users?state=active`` (every
    ``accounting_interval`` seconds) and closed when a poll no longer sees
    the server, so a stop costs at most one interval too little, and a
    restart of the service loses nothing (an interval whose server still
    runs with the same ``started`` simply goes on).

Budgets and caps are decided by the pure rules of :mod:`jupyter_ds_compute.policy`;
this module only gathers their inputs.

The settings are the service's :class:`jupyter_ds_compute.policy.PolicySettings`
(``c.DSComputeService.budgets``, ...): the hub never reads them itself, so
the two sides cannot disagree.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable

from .. import catalogue, policy, tiers
from .hubapi import HubAPIError
from .periodic import Periodic
from .store import isoformat, utcnow

__all__ = [
    "Accounting",
    "LivePolicy",
    "budget_status",
    "parse_time",
]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    server_name TEXT NOT NULL,
    profile TEXT,
    hourly_cost REAL NOT NULL,
    started_key TEXT NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    open INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS usage_by_user ON usage (user, "end");
CREATE UNIQUE INDEX IF NOT EXISTS one_open_interval_per_server
    ON usage (user, server_name) WHERE open = 1;
"""


def parse_time(value) -> float | None:
    """The hub's ISO 8601 times (``2024-01-02T03:04:05.678Z``) -> unix time."""
    if not value:
        return None
    from datetime import datetime, timezone

    text = str(value).replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


class Accounting:
    """The ``usage`` table on an sqlite3 connection (the service's store)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.db.executescript(_SCHEMA)

    # writing (service)

    def observe(self, servers: Iterable[dict], now: float | None = None, profiles=None) -> dict:
        """Account one poll: ``servers`` are the running servers seen now.

        Each is ``{"user", "server_name", "profile", "started"}`` (``started``
        the hub's ISO time). Opens, extends and closes intervals; returns
        ``{tier slug: cost accrued by this poll}``.
        """
        now = utcnow() if now is None else now
        # a tier without a price (hourly_cost None) costs nothing
        costs = {t.slug: t.cost_per_hour for t in tiers.tiers_of(profiles)} if profiles else {}
        # a server's own catalogue (its spawner's tiers for its user) knows its price best
        accrued: dict[str, float] = {}
        seen = set()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for s in servers:
                key = (s["user"], s["server_name"])
                seen.add(key)
                started_key = str(s.get("started") or "")
                start = parse_time(s.get("started")) or now
                row = self.db.execute(
                    "SELECT * FROM usage WHERE user = ? AND server_name = ? AND open = 1", key
                ).fetchone()
                if row is not None and row["started_key"] == started_key and row["profile"] == s["profile"]:
                    end = max(row["end"], now)
                    accrued[row["profile"] or ""] = (
                        accrued.get(row["profile"] or "", 0) + row["hourly_cost"] * (end - row["end"]) / 3600
                    )
                    self.db.execute('UPDATE usage SET "end" = ? WHERE id = ?', (end, row["id"]))
                    continue
                if row is not None:
                    self.db.execute("UPDATE usage SET open = 0 WHERE id = ?", (row["id"],))
                    # a new start of the same server: the old run ended before it
                    start = max(start, row["end"])
                cost = s["hourly_cost"] if s.get("hourly_cost") is not None else costs.get(s["profile"], 0.0)
                self.db.execute(
                    'INSERT INTO usage (user, server_name, profile, hourly_cost, started_key, start, "end")'
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*key, s["profile"], cost, started_key, min(start, now), now),
                )
                accrued[s["profile"] or ""] = (
                    accrued.get(s["profile"] or "", 0) + cost * (now - min(start, now)) / 3600
                )
            for row in self.db.execute("SELECT id, user, server_name FROM usage WHERE open = 1").fetchall():
                if (row["user"], row["server_name"]) not in seen:
                    self.db.execute("UPDATE usage SET open = 0 WHERE id = ?", (row["id"],))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return accrued

    # reading (service and hub)

    def spent(self, users: Iterable[str], since: float, now: float | None = None) -> float:
        """Cost of ``users``' servers between ``since`` and ``now``."""
        return spent(self.db, users, since, now)

    def per_server(self, since: float, now: float | None = None) -> dict:
        """``{(user, server_name): cost since ``since``}``."""
        now = utcnow() if now is None else now
        rows = self.db.execute(
            'SELECT user, server_name, SUM(hourly_cost * (MIN("end", ?) - MAX(start, ?)) / 3600.0) AS cost'
            ' FROM usage WHERE "end" > ? GROUP BY user, server_name',
            (now, since, since),
        ).fetchall()
        return {(r["user"], r["server_name"]): max(0.0, r["cost"] or 0.0) for r in rows}

    def total_by_tier(self) -> dict:
        """All-time cost per tier (the ``cost accrued`` counter)."""
        rows = self.db.execute(
            'SELECT profile, SUM(hourly_cost * ("end" - start) / 3600.0) AS cost FROM usage GROUP BY profile'
        ).fetchall()
        return {r["profile"] or "": r["cost"] or 0.0 for r in rows}

    def open_intervals(self) -> dict:
        """``{(user, server_name): row}`` of servers running at the last poll."""
        rows = self.db.execute("SELECT * FROM usage WHERE open = 1").fetchall()
        return {(r["user"], r["server_name"]): dict(r) for r in rows}


def spent(db: sqlite3.Connection, users: Iterable[str], since: float, now: float | None = None) -> float:
    users = sorted(set(users))
    if not users:
        return 0.0
    now = utcnow() if now is None else now
    marks = ",".join("?" * len(users))
    (cost,) = db.execute(
        f'SELECT SUM(hourly_cost * (MIN("end", ?) - MAX(start, ?)) / 3600.0) FROM usage'
        f' WHERE "end" > ? AND start < ? AND user IN ({marks})',
        (now, since, since, now, *users),
    ).fetchone()
    return max(0.0, cost or 0.0)


def budget_status(db, user: str, groups: Iterable[str], members: dict, settings: dict, now=None) -> dict:
    """The user's tightest budget: :func:`policy.budget_state` plus
    ``kind`` (``user``/``group``), ``name``, ``period``, ``period_start``.

    ``members`` maps each budgeted group of the user to its member names.
    """
    now = utcnow() if now is None else now
    since = policy.period_start(now, settings["budget_period"])
    states = []
    for kind, name, amount in policy.applicable_budgets(user, groups, settings["budgets"]):
        who = [user] if kind == "user" else list(members.get(name) or [user])
        st = policy.budget_state(spent(db, who, since, now), amount, settings["budget_warn_fraction"])
        states.append(dict(st, kind=kind, name=name))
    worst = policy.worst_budget(states)
    worst.setdefault("kind", "user")
    worst.setdefault("name", user)
    own = next((s for s in states if s["kind"] == "user"), None)
    worst.update(
        period=settings["budget_period"],
        period_start=isoformat(since),
        warn_fraction=settings["budget_warn_fraction"],
        user_spent=own["spent"] if own else spent(db, [user], since, now),
    )
    return worst


def free_below(profiles, groups) -> float:
    """Tiers at most this price per hour start even when a budget is spent
    (the user's default tier's price)."""
    if not profiles:
        return 0.0
    slug = tiers.default_slug(profiles, groups)
    return tiers.get_tier(profiles, slug).cost_per_hour if slug else 0.0


# -- service side ------------------------------------------------------------------


def active_servers(users: Iterable[dict], profiles) -> list[dict]:
    """Flatten ``GET /users?state=active`` into one dict per active server.

    ``{"user", "server_name", "profile", "started", "last_activity", "ready",
    "pending", "user_options", "groups", "admin", "hourly_cost"}``; a server
    without ``user_options.profile`` runs on the owner's default tier. Its
    tiers are its spawner's catalogue (``state["tiers"]``), else ``profiles``;
    ``hourly_cost`` is its tier's price there (None: not known).
    """
    out = []
    for u in users:
        groups = u.get("groups") or []
        for name, srv in (u.get("servers") or {}).items():
            if srv.get("stopped") and not srv.get("pending"):
                continue
            options = srv.get("user_options") or {}
            own = catalogue.from_state(srv.get("state")) or profiles
            profile = options.get("profile") or (tiers.default_slug(own, groups) if own else None)
            cost = None
            for p in own or ():
                if p["slug"] == profile:
                    cost = tiers.Tier.from_profile(p).cost_per_hour
            out.append(
                {
                    "user": u["name"],
                    "server_name": name,
                    "hourly_cost": cost,
                    "catalogue": own,
                    "profile": profile,
                    "started": srv.get("started"),
                    "last_activity": srv.get("last_activity"),
                    "ready": bool(srv.get("ready")),
                    "pending": srv.get("pending"),
                    "user_options": options,
                    "groups": groups,
                    "admin": bool(u.get("admin")),
                }
            )
    return out


def running_counts(servers: Iterable[dict], exclude: tuple[str, str] | None = None) -> dict:
    """``{tier slug: number of active servers}``, leaving out ``exclude`` (user, server)."""
    counts: dict[str, int] = {}
    for s in servers:
        if exclude is not None and (s["user"], s["server_name"]) == tuple(exclude):
            continue
        counts[s["profile"]] = counts.get(s["profile"], 0) + 1
    return counts


class LivePolicy:
    """The service's view of what runs: polls the hub, accounts, checks caps and budgets."""

    def __init__(self, hub, store, profiles, settings: dict, log=None, tier_source=None):
        self.hub = hub
        self.tier_source = tier_source
        self.store = store
        self.accounting = Accounting(store.db)
        self.profiles = profiles
        self.settings = settings
        self.log = log or logging.getLogger(__name__)
        self.active: list[dict] = []
        self.last_poll: float | None = None
        self._loop: Periodic | None = None

    async def refresh(self) -> list[dict]:
        """Poll the hub once: account and remember the active servers."""
        users = await self.hub.list_users(state="active")
        servers = active_servers(users, self.profiles)
        if self.tier_source is not None:
            for s in servers:
                if s["catalogue"] is not self.profiles:
                    self.tier_source.observe(s["catalogue"])
        now = utcnow()
        self.accounting.observe([s for s in servers if s["started"]], now, self.profiles)
        self.active, self.last_poll = servers, now
        return servers

    def start(self) -> None:
        """Poll every ``accounting_interval`` seconds (a failed poll is logged; the next one retries)."""
        if self._loop is None:
            self._loop = Periodic(
                "accounting", lambda: self.settings["accounting_interval"], self.refresh, self.log
            )
        self._loop.start()

    async def stop(self) -> None:
        if self._loop is not None:
            await self._loop.stop()

    # checks

    def budgeted(self) -> bool:
        b = self.settings["budgets"]
        return bool(b["users"] or b["groups"] or b["default"] is not None)

    async def members(self, groups: Iterable[str]) -> dict:
        """Members of the user's groups that have a budget (``read:groups``)."""
        out = {}
        for g in groups:
            if g in self.settings["budgets"]["groups"]:
                model = await self.hub.get_group(g)
                out[g] = (model or {}).get("users") or []
        return out

    async def budget(self, user: str, groups: Iterable[str]) -> dict:
        groups = list(groups or ())
        members = await self.members(groups) if self.budgeted() else {}
        return budget_status(self.store.db, user, groups, members, self.settings)

    async def refusals(self, user: str, groups, exclude=None, fresh=True, profiles=None) -> tuple[dict, dict]:
        """``({slug: (policy, reason)}, budget)`` of the cap and budget rules for ``user``.

        ``exclude`` (user, server_name) is not counted against caps (the
        server being switched). ``fresh`` polls the hub first. ``profiles``:
        the tiers of the user's server (default: every tier known).
        """
        profiles = profiles or self.profiles
        try:
            servers = await self.refresh() if fresh or self.last_poll is None else self.active
        except HubAPIError as e:
            if e.status != 403:
                raise
            # the service's role lacks list:users: no caps here (the spawner still checks at start)
            self.log.warning("Cannot list servers for cap checks (%s); give the service list:users", e)
            servers = []
        counts = running_counts(servers, exclude)
        groups = list(groups or ())
        budget = await self.budget(user, groups)
        cheap = free_below(profiles, groups)
        out = {}
        for tier in tiers.tiers_of(profiles) if profiles else ():
            reason = policy.cap_refusal(tier.display_name, tier.max_servers, counts.get(tier.slug, 0))
            if reason:
                out[tier.slug] = ("cap", reason)
                continue
            reason = policy.budget_refusal(budget, tier.display_name, tier.cost_per_hour, cheap)
            if reason:
                out[tier.slug] = ("budget", reason)
        return out, budget
