"""Cost accounting and the policy checks that need live data.

The service *accounts* (it is the one process that sees every server over
time); the hub's spawner *reads* the accounts at spawn. Both sides share
the service's SQLite file:

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

Hub side (:func:`spawn_refusal`, called by the spawner when it applies
``user_options``): caps count the hub's own database (servers that run or
are starting with ``user_options["profile"] == slug``, excluding the server
being started); budgets read the ``usage`` table. The settings come from
``c.DSComputeService.*`` in ``jupyterhub_config.py`` (``self.config`` of the
spawner), the same section the service is configured with, so both sides
always agree.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable

from .. import policy, tiers
from .hubapi import HubAPIError
from .periodic import Periodic
from .store import isoformat, utcnow

__all__ = [
    "DEFAULTS",
    "Accounting",
    "parse_time",
    "policy_settings",
    "spawn_refusal",
]

log = logging.getLogger(__name__)

#: defaults of the policy settings (``c.DSComputeService.<name>``)
DEFAULTS = {
    "budgets": {},
    "budget_period": "month",
    "budget_warn_fraction": 0.8,
    "accounting_interval": 10.0,
    "idle_check_interval": 60.0,
    "idle_action": "downshift",
}

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


def policy_settings(section) -> dict:
    """The policy settings from a ``c.DSComputeService`` config section (or dict)."""
    out = dict(DEFAULTS)
    for key in DEFAULTS:
        if section is not None and key in section:
            out[key] = section[key]
    out["budgets"] = policy.validate_budgets(out["budgets"])
    if out["budget_period"] not in policy.BUDGET_PERIODS:
        raise ValueError(f"budget_period must be one of {', '.join(policy.BUDGET_PERIODS)}")
    return out


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
                cost = costs.get(s["profile"], 0.0)
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
    slug = tiers.default_slug(profiles, groups)
    return tiers.get_tier(profiles, slug).cost_per_hour if slug else 0.0


# -- hub side --------------------------------------------------------------------


def _db_path(section) -> str | None:
    db_url = section.get("db_url") if section is not None else None
    if not db_url:
        data_dir = section.get("data_dir") if section is not None else None
        if not data_dir:
            return None
        return os.path.join(data_dir, "ds-compute.sqlite")
    return db_url[len("sqlite:///") :] if db_url.startswith("sqlite:///") else None


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


def spawn_refusal(spawner, tier, profiles) -> str | None:
    """Cap and budget check of a start, run by the spawner in the hub.

    Returns the reason to refuse (the spawner raises a 403), or None. A
    refusal is also appended to the service's audit log (best effort).
    """
    try:
        section = spawner.config.get("DSComputeService") if spawner.config is not None else None
    except Exception:  # noqa: BLE001 - no config: defaults
        section = None
    settings = policy_settings(section)
    own_id = spawner.orm_spawner.id if spawner.orm_spawner is not None else None
    reason = None
    kind = None
    if tier.max_servers is not None and spawner.db is not None:
        running = running_on_tier(spawner.db, tier.slug, own_id)
        reason = policy.cap_refusal(tier.display_name, tier.max_servers, running)
        kind = "cap"
    path = _db_path(section)
    budgeted = (
        settings["budgets"]["users"]
        or settings["budgets"]["groups"]
        or settings["budgets"]["default"] is not None
    )
    if reason is None and budgeted and path and os.path.exists(path):
        user_groups = list(getattr(spawner.user, "groups", []) or [])
        names = [g.name for g in user_groups]
        members = {g.name: [u.name for u in g.users] for g in user_groups}
        try:
            db = sqlite3.connect(path, timeout=5)
            try:
                db.row_factory = sqlite3.Row
                state = budget_status(db, spawner.user.name, names, members, settings)
            finally:
                db.close()
        except sqlite3.Error as e:
            spawner.log.warning("Could not read the ds-compute accounts at %s: %s", path, e)
        else:
            reason = policy.budget_refusal(
                state, tier.display_name, tier.cost_per_hour, free_below(profiles, names)
            )
            kind = "budget"
    if reason and path:
        record_policy_event(
            path,
            actor=spawner.user.name,
            user=spawner.user.name,
            server_name=spawner.name,
            to_profile=tier.slug,
            outcome="refused",
            policy_name=kind,
            reason=f"spawn refused: {reason}",
        )
    return reason


def record_policy_event(
    path, *, actor, user, server_name, to_profile, outcome, policy_name, reason, from_profile=None
):
    """Append a ``policy:<name>`` audit event to the service's database (best effort)."""
    try:
        db = sqlite3.connect(path, timeout=5)
        try:
            db.execute(
                "INSERT INTO audit (ts, actor, user, server_name, event, from_profile, to_profile, outcome, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    utcnow(),
                    actor,
                    user,
                    server_name,
                    f"policy:{policy_name}",
                    from_profile,
                    to_profile,
                    outcome,
                    reason,
                ),
            )
            db.commit()
        finally:
            db.close()
    except sqlite3.Error as e:
        log.warning("Could not record a policy event in %s: %s", path, e)


# -- service side ------------------------------------------------------------------


def active_servers(users: Iterable[dict], profiles) -> list[dict]:
    """Flatten ``GET /users?state=active`` into one dict per active server.

    ``{"user", "server_name", "profile", "started", "last_activity", "ready",
    "pending", "user_options", "groups", "admin"}``; a server without
    ``user_options.profile`` runs on the owner's default tier.
    """
    out = []
    for u in users:
        groups = u.get("groups") or []
        for name, srv in (u.get("servers") or {}).items():
            if srv.get("stopped") and not srv.get("pending"):
                continue
            options = srv.get("user_options") or {}
            out.append(
                {
                    "user": u["name"],
                    "server_name": name,
                    "profile": options.get("profile") or tiers.default_slug(profiles, groups),
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

    def __init__(self, hub, store, profiles, settings: dict, log=None):
        self.hub = hub
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

    async def refusals(self, user: str, groups, exclude=None, fresh=True) -> tuple[dict, dict]:
        """``({slug: (policy, reason)}, budget)`` of the cap and budget rules for ``user``.

        ``exclude`` (user, server_name) is not counted against caps (the
        server being switched). ``fresh`` polls the hub first.
        """
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
        cheap = free_below(self.profiles, groups)
        out = {}
        for tier in tiers.tiers_of(self.profiles):
            reason = policy.cap_refusal(tier.display_name, tier.max_servers, counts.get(tier.slug, 0))
            if reason:
                out[tier.slug] = ("cap", reason)
                continue
            reason = policy.budget_refusal(budget, tier.display_name, tier.cost_per_hour, cheap)
            if reason:
                out[tier.slug] = ("budget", reason)
        return out, budget
