"""The cost of the hub's warm pools (EC2 instances booted and waiting, no user yet).

The hub's pool keeper (``backends/ec2pool.py``) reports each pool, ``POST
api/hub/pool {"tier","zone","instances":[{"id","since"}]}``, at each change
and every minute (``service/hubside.py``). Each instance's idle time runs from
its ``since`` (booted and waiting) to the last report that listed it: the
report after it left the pool (taken by a server, retired) closes it, and an
instance whose hub stopped reporting counts at most :data:`STALE` seconds past
its last report. Idle time × the tier's ``hourly_cost`` (fixed when the
instance is first reported) is the **operator's** cost: it is in no user's
spending or budget. Once a server takes the instance, the server's usage
interval (``accounting.py``) counts it for its user, like any start.

Shown on the admin page ("Warm pools") and exported as
``ds_compute_warm_pool_machines{tier}`` and
``ds_compute_warm_pool_idle_cost_total{tier}`` (``metrics.py``).
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["STALE", "ensure", "idle_cost", "machines", "record", "summary"]

#: seconds after its last report an instance stops counting (its hub is gone)
STALE = 180.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS warm_pool_idle (
    instance_id TEXT PRIMARY KEY,
    tier TEXT NOT NULL,
    zone TEXT NOT NULL,
    since REAL NOT NULL,
    seen REAL NOT NULL,
    cost_per_hour REAL NOT NULL,
    open INTEGER NOT NULL
)
"""


def ensure(db: sqlite3.Connection) -> None:
    db.execute(_SCHEMA)


def record(
    db: sqlite3.Connection, tier: str, zone: str, instances: list[dict], price: float, now=None
) -> None:
    """One pool report: ``instances`` (``{"id", "since"}``) are idle in pool ``tier``/``zone`` now."""
    now = time.time() if now is None else now
    ensure(db)
    ids = []
    with db:
        for inst in instances:
            ids.append(inst["id"])
            db.execute(
                "INSERT OR IGNORE INTO warm_pool_idle VALUES (?, ?, ?, ?, ?, ?, 1)",
                (inst["id"], tier, zone, min(float(inst["since"]), now), now, float(price)),
            )
            db.execute(
                "UPDATE warm_pool_idle SET seen = MAX(seen, ?), open = 1 WHERE instance_id = ? AND open = 1",
                (now, inst["id"]),
            )
        marks = ",".join("?" * len(ids))
        gone = f" AND instance_id NOT IN ({marks})" if ids else ""
        db.execute(
            "UPDATE warm_pool_idle SET seen = MIN(?, seen + ?), open = 0"
            f" WHERE tier = ? AND zone = ? AND open = 1{gone}",
            (now, STALE, tier, zone, *ids),
        )


def machines(db: sqlite3.Connection, now=None) -> dict:
    """``{tier: instances idle in its pools now}`` (reported within :data:`STALE` seconds)."""
    now = time.time() if now is None else now
    ensure(db)
    rows = db.execute(
        "SELECT tier, COUNT(*) AS n FROM warm_pool_idle WHERE open = 1 AND seen >= ? GROUP BY tier",
        (now - STALE,),
    )
    return {r[0]: r[1] for r in rows}


def idle_cost(db: sqlite3.Connection, since: float | None = None, now=None) -> dict:
    """``{tier: idle time × price}`` from ``since`` (None: ever) until ``now``."""
    now = time.time() if now is None else now
    ensure(db)
    lo = float("-inf") if since is None else since
    out: dict = {}
    for r in db.execute("SELECT tier, since, seen, open, cost_per_hour FROM warm_pool_idle"):
        tier, start, seen, is_open, price = r[0], r[1], r[2], r[3], r[4]
        # an open instance reported lately idles until now; a stale one until STALE past its report
        end = min(now, seen + STALE) if is_open else seen
        seconds = max(0.0, min(end, now) - max(start, lo))
        out[tier] = out.get(tier, 0.0) + seconds / 3600.0 * price
    return out


def summary(db: sqlite3.Connection, period_start: float, now=None) -> list[dict]:
    """Per tier with a pool: ``{"tier", "machines", "period_cost", "total_cost"}`` (admin page)."""
    now = time.time() if now is None else now
    count = machines(db, now)
    period = idle_cost(db, period_start, now)
    total = idle_cost(db, None, now)
    return [
        {"tier": t, "machines": count.get(t, 0), "period_cost": period.get(t, 0.0), "total_cost": total[t]}
        for t in sorted(total)
    ]
