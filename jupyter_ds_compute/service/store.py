"""SQLite store of the ds-compute service: switches, their steps, the audit log.

Plain :mod:`sqlite3`, one connection, every call a short transaction. The
service runs one process with one event loop, so calls are made from that
loop; each is a few indexed statements on a local file (well under a
millisecond), which is cheaper than hopping to a thread.

Tables
------
``switches``
    one row per accepted switch request; ``state`` is ``pending``,
    ``running``, ``succeeded``, ``rolled_back`` or ``failed``. A partial
    unique index makes "one switch per server at a time" hold even if two
    requests race: the second insert fails and the caller answers 409.
    ``failure`` says why a ``failed`` switch failed when that matters to
    reconcile: ``hub-unavailable`` (the hub did not answer for longer than
    the switch may wait: the outcome is unknown, and the next service start
    looks again); NULL otherwise.
``steps``
    the steps of a switch in order (``validate``, ``prepare``, ``stop``,
    ``patch-options``, ``start``, ``wait-ready``, ``verify``, ``rollback``),
    each ``pending``/``running``/``done``/``failed``/``skipped``. A record
    also says its ``phase`` (``STEP_PHASES``: preparing, cutting-over,
    starting, rolling-back; ``done`` once final); :meth:`Store.get_switch`
    adds an ``estimate`` of the phases from recent switches of the same
    tiers.
``requests``
    requests for a tier the user may not use, and the grants they become
    (docs/internals.md, "Requests and grants"): ``state`` is ``pending``,
    ``approved`` (a grant: ``expires``, the ``grant_group`` the user was
    added to), ``denied`` or ``expired``. Partial unique indexes keep one
    pending request and one grant per user and tier even if two requests race.
``audit``
    append-only: every request (accepted or refused, with the reason),
    every step outcome and every final outcome, with who, when,
    from -> to, duration and reason. The admin page reads it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from datetime import datetime, timezone

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "REQUEST_STATES",
    "RequestExists",
    "STEP_NAMES",
    "STEP_PHASES",
    "Store",
    "SwitchInFlight",
    "isoformat",
    "utcnow",
]

ACTIVE_STATES = ("pending", "running")
FINAL_STATES = ("succeeded", "rolled_back", "failed")
STEP_NAMES = ("validate", "prepare", "stop", "patch-options", "start", "wait-ready", "verify")

#: which phase of a switch each step belongs to (``phase`` of the record)
STEP_PHASES = {
    "validate": "preparing",
    "prepare": "preparing",
    "stop": "cutting-over",
    "patch-options": "cutting-over",
    "start": "cutting-over",
    "wait-ready": "starting",
    "verify": "starting",
    "rollback": "rolling-back",
}

#: how many recent switches of a tier pair an estimate is the median of
ESTIMATE_SAMPLES = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS switches (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    server_name TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    from_profile TEXT,
    to_profile TEXT NOT NULL,
    from_options TEXT NOT NULL,
    to_options TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    next TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    finished REAL,
    failure TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_switch_per_server
    ON switches (user, server_name) WHERE state IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS switches_by_user ON switches (user, created);
CREATE INDEX IF NOT EXISTS switches_by_pair ON switches (to_profile, state, finished);
CREATE TABLE IF NOT EXISTS steps (
    switch_id TEXT NOT NULL REFERENCES switches (id),
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL,
    finished REAL,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (switch_id, name)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    actor TEXT,
    user TEXT,
    server_name TEXT,
    switch_id TEXT,
    event TEXT NOT NULL,
    from_profile TEXT,
    to_profile TEXT,
    outcome TEXT,
    duration REAL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_ts ON audit (ts);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    profile TEXT NOT NULL,
    duration REAL NOT NULL,
    reason TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    decided REAL,
    decided_by TEXT,
    decision_reason TEXT,
    granted REAL,
    expires REAL,
    grant_group TEXT,
    noticed REAL,
    ended REAL,
    settled INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS one_pending_request
    ON requests (user, profile) WHERE state = 'pending';
CREATE UNIQUE INDEX IF NOT EXISTS one_grant
    ON requests (user, profile) WHERE state = 'approved';
CREATE INDEX IF NOT EXISTS requests_by_state ON requests (state, expires);
"""

#: the states of a request (``requests.state``)
REQUEST_STATES = ("pending", "approved", "denied", "expired")


def utcnow() -> float:
    """Current unix time.

    Only a standalone function for mocking purposes.
    """
    return time.time()


def isoformat(ts: float | None) -> str | None:
    """Unix time -> ISO 8601 UTC with milliseconds and a ``Z``, like JupyterHub."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class SwitchInFlight(Exception):
    """A switch of that server is already pending or running."""

    def __init__(self, switch_id: str):
        super().__init__(switch_id)
        self.switch_id = switch_id


class RequestExists(Exception):
    """The user has a pending request (or a running grant) for that tier already."""

    def __init__(self, existing: dict):
        super().__init__(existing["id"])
        self.existing = existing


def sqlite_path(db_url: str) -> str:
    """The file of a ``sqlite:///path`` URL (``sqlite:///:memory:`` allowed)."""
    prefix = "sqlite:///"
    if not db_url.startswith(prefix):
        raise ValueError(
            f"db_url must be a sqlite URL like 'sqlite:///path/to/ds-compute.sqlite', got {db_url!r}"
        )
    return db_url[len(prefix) :] or ":memory:"


def private_file(path: str) -> None:
    """Create ``path`` (mode 0600) in a directory of mode 0700 if absent.

    The records name every user and hold the audit log: only the service's
    own account may read them. SQLite creates its ``-wal`` and ``-shm``
    files with the database file's mode.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


class Store:
    """The service's persistent records (see the module docstring)."""

    def __init__(self, db_url: str = "sqlite:///:memory:"):
        path = sqlite_path(db_url)
        if path != ":memory:":
            private_file(path)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.db.row_factory = sqlite3.Row
        if path != ":memory:":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        columns = {r["name"] for r in self.db.execute("PRAGMA table_info(switches)")}
        if "failure" not in columns:  # a store made before the column
            self.db.execute("ALTER TABLE switches ADD COLUMN failure TEXT")

    def close(self) -> None:
        self.db.close()

    # switches

    def create_switch(
        self,
        *,
        user: str,
        server_name: str,
        requested_by: str,
        from_profile: str | None,
        to_profile: str,
        from_options: dict,
        to_options: dict,
        next_url: str | None = None,
        validate_message: str = "",
    ) -> dict:
        """Record an accepted switch (state ``pending``) with its steps.

        The ``validate`` step is recorded as done (validation happens before
        the request is accepted). Raises :class:`SwitchInFlight` with the id
        of the switch already in flight for that server.
        """
        switch_id = uuid.uuid4().hex[:12]
        now = utcnow()
        try:
            with self._tx():
                self.db.execute(
                    "INSERT INTO switches (id, user, server_name, requested_by, from_profile,"
                    " to_profile, from_options, to_options, state, next, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                    (
                        switch_id,
                        user,
                        server_name,
                        requested_by,
                        from_profile,
                        to_profile,
                        json.dumps(from_options),
                        json.dumps(to_options),
                        next_url,
                        now,
                        now,
                    ),
                )
                for idx, name in enumerate(STEP_NAMES):
                    done = name == "validate"
                    self.db.execute(
                        "INSERT INTO steps (switch_id, idx, name, status, started, finished, message)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            switch_id,
                            idx,
                            name,
                            "done" if done else "pending",
                            now if done else None,
                            now if done else None,
                            validate_message if done else "",
                        ),
                    )
        except sqlite3.IntegrityError:
            active = self.active_switch(user, server_name)
            if active is None:  # pragma: no cover - finished in between; let the caller retry
                raise
            raise SwitchInFlight(active["id"]) from None
        return self.get_switch(switch_id)

    def get_switch(self, switch_id: str) -> dict | None:
        """The switch record as the REST API returns it (with its ``estimate``), or None."""
        row = self.db.execute("SELECT * FROM switches WHERE id = ?", (switch_id,)).fetchone()
        if row is None:
            return None
        model = self._switch_model(row)
        model["estimate"] = self.estimate(row["from_profile"], row["to_profile"])
        return model

    def estimate(self, from_profile: str | None, to_profile: str) -> dict:
        """How long the phases of a switch ``from_profile -> to_profile`` usually take.

        ``{"prepare", "cutover", "samples"}``: medians in seconds over the last
        :data:`ESTIMATE_SAMPLES` succeeded switches of that pair (``prepare``:
        the prepare step; ``cutover``: from the start of ``stop`` to the end
        of ``verify``, what the user does not get to use a server), ``None``
        without any.
        """
        rows = self.db.execute(
            "SELECT s.id, st.name, st.started, st.finished FROM"
            " (SELECT id FROM switches WHERE from_profile IS ? AND to_profile = ? AND state = 'succeeded'"
            "  ORDER BY finished DESC LIMIT ?) s"
            " JOIN steps st ON st.switch_id = s.id"
            " WHERE st.name IN ('prepare', 'stop', 'verify') AND st.status = 'done'",
            (from_profile, to_profile, ESTIMATE_SAMPLES),
        ).fetchall()
        per_switch: dict[str, dict] = {}
        for r in rows:
            per_switch.setdefault(r["id"], {})[r["name"]] = (r["started"], r["finished"])
        prepare, cutover = [], []
        for steps in per_switch.values():
            if "prepare" in steps and None not in steps["prepare"]:
                prepare.append(steps["prepare"][1] - steps["prepare"][0])
            if "stop" in steps and "verify" in steps and steps["stop"][0] and steps["verify"][1]:
                cutover.append(steps["verify"][1] - steps["stop"][0])
        return {
            "prepare": _median(prepare),
            "cutover": _median(cutover),
            "samples": len(per_switch),
        }

    def active_switch(self, user: str, server_name: str) -> dict | None:
        row = self.db.execute(
            "SELECT * FROM switches WHERE user = ? AND server_name = ? AND state IN ('pending', 'running')",
            (user, server_name),
        ).fetchone()
        return None if row is None else self._switch_model(row)

    def unfinished_switches(self) -> list[dict]:
        """Every switch not in a final state, oldest first (for reconcile)."""
        rows = self.db.execute(
            "SELECT * FROM switches WHERE state IN ('pending', 'running') ORDER BY created"
        ).fetchall()
        return [self._switch_model(r) for r in rows]

    def switches_to_revisit(self) -> list[dict]:
        """Failed switches whose outcome is unknown (``failure = 'hub-unavailable'``), oldest first.

        Only the newest switch of its server, and only while no other switch
        of that server is in flight: a later switch has superseded it.
        """
        rows = self.db.execute(
            "SELECT * FROM switches s WHERE state = 'failed' AND failure = 'hub-unavailable'"
            " AND NOT EXISTS (SELECT 1 FROM switches t WHERE t.user = s.user"
            " AND t.server_name = s.server_name AND t.id != s.id"
            " AND (t.created > s.created OR t.state IN ('pending', 'running')))"
            " ORDER BY created"
        ).fetchall()
        return [self._switch_model(r) for r in rows]

    def list_switches(self, user: str | None = None, limit: int = 100) -> list[dict]:
        """Newest first; all users when ``user`` is None."""
        if user is None:
            rows = self.db.execute(
                "SELECT * FROM switches ORDER BY created DESC LIMIT ?", (int(limit),)
            ).fetchall()
        else:
            rows = self.db.execute(
                "SELECT * FROM switches WHERE user = ? ORDER BY created DESC LIMIT ?",
                (user, int(limit)),
            ).fetchall()
        return [self._switch_model(r) for r in rows]

    def set_state(
        self, switch_id: str, state: str, error: str | None = None, failure: str | None = None
    ) -> None:
        """Move a switch to ``state``; final states record ``finished``.

        ``failure`` (e.g. ``hub-unavailable``) is stored with every change of
        state, so it is cleared when the switch moves on.
        """
        now = utcnow()
        finished = now if state in FINAL_STATES else None
        with self._tx():
            if error is None:
                self.db.execute(
                    "UPDATE switches SET state = ?, updated = ?, finished = ?, failure = ? WHERE id = ?",
                    (state, now, finished, failure, switch_id),
                )
            else:
                self.db.execute(
                    "UPDATE switches SET state = ?, error = ?, updated = ?, finished = ?, failure = ?"
                    " WHERE id = ?",
                    (state, error, now, finished, failure, switch_id),
                )

    # steps

    def add_step(self, switch_id: str, name: str) -> None:
        """Append a step (e.g. ``rollback``) if it is not there yet."""
        with self._tx():
            (idx,) = self.db.execute(
                "SELECT COALESCE(MAX(idx), -1) + 1 FROM steps WHERE switch_id = ?", (switch_id,)
            ).fetchone()
            self.db.execute(
                "INSERT OR IGNORE INTO steps (switch_id, idx, name, status) VALUES (?, ?, ?, 'pending')",
                (switch_id, idx, name),
            )

    def set_step(
        self, switch_id: str, name: str, status: str | None = None, message: str | None = None
    ) -> None:
        """Update a step: ``running`` stamps ``started``, final statuses ``finished``."""
        now = utcnow()
        sets, args = ["message = COALESCE(?, message)"], [message]
        if status is not None:
            sets.append("status = ?")
            args.append(status)
            if status == "running":
                sets.append("started = COALESCE(started, ?)")
                args.append(now)
            elif status in ("done", "failed", "skipped"):
                sets.append("finished = ?")
                args.append(now)
                sets.append("started = COALESCE(started, ?)")
                args.append(now)
        with self._tx():
            self.db.execute(
                f"UPDATE steps SET {', '.join(sets)} WHERE switch_id = ? AND name = ?",
                (*args, switch_id, name),
            )
            self.db.execute("UPDATE switches SET updated = ? WHERE id = ?", (now, switch_id))

    def get_step(self, switch_id: str, name: str) -> dict | None:
        row = self.db.execute(
            "SELECT * FROM steps WHERE switch_id = ? AND name = ?", (switch_id, name)
        ).fetchone()
        return None if row is None else self._step_model(row)

    # requests and grants

    def create_request(self, *, user: str, profile: str, duration: float, reason: str) -> dict:
        """Record a ``pending`` request; :class:`RequestExists` if one is pending
        (or a grant runs) for that user and tier."""
        request_id = uuid.uuid4().hex[:12]
        try:
            with self._tx():
                existing = self.db.execute(
                    "SELECT * FROM requests WHERE user = ? AND profile = ? AND state IN ('pending', 'approved')",
                    (user, profile),
                ).fetchone()
                if existing is not None:
                    raise RequestExists(self._request_model(existing))
                self.db.execute(
                    "INSERT INTO requests (id, user, profile, duration, reason, state, created)"
                    " VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (request_id, user, profile, float(duration), reason, utcnow()),
                )
        except sqlite3.IntegrityError:  # pragma: no cover - raced with another insert
            existing = self.open_request(user, profile)
            if existing is None:
                raise
            raise RequestExists(existing) from None
        return self.get_request(request_id)

    def get_request(self, request_id: str) -> dict | None:
        row = self.db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        return None if row is None else self._request_model(row)

    def open_request(self, user: str, profile: str) -> dict | None:
        """The user's pending request or running grant for ``profile`` (None: neither)."""
        row = self.db.execute(
            "SELECT * FROM requests WHERE user = ? AND profile = ? AND state IN ('pending', 'approved')",
            (user, profile),
        ).fetchone()
        return None if row is None else self._request_model(row)

    def list_requests(
        self, user: str | None = None, states: tuple[str, ...] | None = None, limit: int = 200
    ) -> list[dict]:
        """Newest first, optionally for one user and in some states."""
        where, args = [], []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        sql = "SELECT * FROM requests" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.db.execute(sql + " ORDER BY created DESC LIMIT ?", (*args, int(limit))).fetchall()
        return [self._request_model(r) for r in rows]

    def decide_request(
        self,
        request_id: str,
        *,
        approve: bool,
        decided_by: str,
        reason: str,
        granted: float | None = None,
        grant_group: str | None = None,
    ) -> dict | None:
        """``pending`` -> ``approved`` (expires ``granted`` seconds from now) or
        ``denied``; None when it is not pending any more (decided meanwhile)."""
        now = utcnow()
        with self._tx():
            cur = self.db.execute(
                "UPDATE requests SET state = ?, decided = ?, decided_by = ?, decision_reason = ?,"
                " granted = ?, expires = ?, grant_group = ? WHERE id = ? AND state = 'pending'",
                (
                    "approved" if approve else "denied",
                    now,
                    decided_by,
                    reason,
                    granted if approve else None,
                    now + granted if approve else None,
                    grant_group if approve else None,
                    request_id,
                ),
            )
            if cur.rowcount != 1:
                return None
        return self.get_request(request_id)

    def grants_due(self, before: float) -> list[dict]:
        """Running grants (``approved``) that expire before ``before``, soonest first."""
        rows = self.db.execute(
            "SELECT * FROM requests WHERE state = 'approved' AND expires < ? ORDER BY expires", (before,)
        ).fetchall()
        return [self._request_model(r) for r in rows]

    def unsettled_grants(self) -> list[dict]:
        """Expired grants whose servers on the tier may still need a downshift."""
        rows = self.db.execute(
            "SELECT * FROM requests WHERE state = 'expired' AND settled = 0 ORDER BY ended"
        ).fetchall()
        return [self._request_model(r) for r in rows]

    def update_request(self, request_id: str, **values) -> None:
        """Set ``noticed``, ``ended``, ``settled`` or ``state`` of a request."""
        allowed = {"noticed", "ended", "settled", "state"}
        if not values or set(values) - allowed:
            raise ValueError(f"update_request sets only {', '.join(sorted(allowed))}")
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._tx():
            self.db.execute(f"UPDATE requests SET {sets} WHERE id = ?", (*values.values(), request_id))

    def _request_model(self, row) -> dict:
        return {
            "id": row["id"],
            "user": row["user"],
            "profile": row["profile"],
            "duration": row["duration"],
            "reason": row["reason"],
            "state": row["state"],
            "created": isoformat(row["created"]),
            "decided": isoformat(row["decided"]),
            "decided_by": row["decided_by"],
            "decision_reason": row["decision_reason"],
            "granted": row["granted"],
            "expires": isoformat(row["expires"]),
            "expires_ts": row["expires"],
            "grant_group": row["grant_group"],
            "noticed": isoformat(row["noticed"]),
            "ended": isoformat(row["ended"]),
            "settled": bool(row["settled"]),
        }

    # audit

    def audit(
        self,
        event: str,
        *,
        actor: str | None = None,
        user: str | None = None,
        server_name: str | None = None,
        switch_id: str | None = None,
        from_profile: str | None = None,
        to_profile: str | None = None,
        outcome: str | None = None,
        duration: float | None = None,
        reason: str | None = None,
    ) -> None:
        """Append one audit event.

        ``event`` is ``request`` (outcome ``accepted``/``refused``), ``step``
        (``<name>:<status>``) or ``final`` (the switch's final state).
        """
        with self._tx():
            self.db.execute(
                "INSERT INTO audit (ts, actor, user, server_name, switch_id, event, from_profile,"
                " to_profile, outcome, duration, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    utcnow(),
                    actor,
                    user,
                    server_name,
                    switch_id,
                    event,
                    from_profile,
                    to_profile,
                    outcome,
                    duration,
                    reason,
                ),
            )

    def list_audit(
        self, limit: int = 200, user: str | None = None, switch_id: str | None = None
    ) -> list[dict]:
        """Newest first, optionally for one user or one switch."""
        where, args = [], []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if switch_id is not None:
            where.append("switch_id = ?")
            args.append(switch_id)
        sql = "SELECT * FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        rows = self.db.execute(sql, (*args, int(limit))).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["time"] = isoformat(d.pop("ts"))
            out.append(d)
        return out

    # helpers

    def _tx(self):
        return _Transaction(self.db)

    def _step_model(self, row) -> dict:
        return {
            "name": row["name"],
            "status": row["status"],
            "started": isoformat(row["started"]),
            "finished": isoformat(row["finished"]),
            "duration": (
                round(row["finished"] - row["started"], 3)
                if row["finished"] is not None and row["started"] is not None
                else None
            ),
            "message": row["message"],
        }

    def _switch_model(self, row) -> dict:
        steps = self.db.execute(
            "SELECT * FROM steps WHERE switch_id = ? ORDER BY idx", (row["id"],)
        ).fetchall()
        finished = row["finished"]
        return {
            "id": row["id"],
            "user": row["user"],
            "server_name": row["server_name"],
            "requested_by": row["requested_by"],
            "from_profile": row["from_profile"],
            "to_profile": row["to_profile"],
            "from_options": json.loads(row["from_options"]),
            "to_options": json.loads(row["to_options"]),
            "state": row["state"],
            "failure": row["failure"],
            "steps": [self._step_model(s) for s in steps],
            "error": row["error"],
            "created": isoformat(row["created"]),
            "finished": isoformat(finished),
            "duration": None if finished is None else round(finished - row["created"], 3),
            "next": row["next"],
            "phase": _phase(row["state"], steps),
        }


def _phase(state: str, steps) -> str:
    """The phase of a switch (``STEP_PHASES``) from its state and step rows."""
    if state in FINAL_STATES:
        return "done"
    for s in steps:
        if s["status"] == "running":
            return STEP_PHASES.get(s["name"], "preparing")
    if any(s["name"] == "rollback" for s in steps):
        return "rolling-back"
    for s in steps:
        if s["status"] == "pending":
            return STEP_PHASES.get(s["name"], "preparing")
    return "starting"


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    mid = len(values) // 2
    value = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return round(value, 3)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` / ``ROLLBACK`` on an autocommit connection."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
