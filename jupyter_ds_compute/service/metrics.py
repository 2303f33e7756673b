"""Prometheus metrics of the ds-compute service (``GET /services/ds-compute/metrics``).

A dedicated :class:`prometheus_client.CollectorRegistry` with one custom
collector that reads the service's database at each scrape, so the numbers
survive restarts of the service and include the refusals the spawner
records at spawn time:

==================================================  =========  ===============================
metric                                              type       labels
==================================================  =========  ===============================
``ds_compute_switches_total``                       counter    ``from_tier``, ``to_tier``, ``outcome``
``ds_compute_switch_duration_seconds``              histogram  ``outcome``
``ds_compute_running_servers``                      gauge      ``tier``
``ds_compute_cost_accrued_total``                   counter    ``tier`` (unit of ``hourly_cost``)
``ds_compute_policy_refusals_total``                counter    ``policy`` (group/cap/budget), ``tier``
``ds_compute_idle_downshifts_total``                counter    ``from_tier``, ``to_tier``, ``action``
``ds_compute_access_requests_total``                counter    ``tier``, ``outcome`` (pending, refused,
                                                               approved, denied, expiring, expired)
``ds_compute_grant_downshifts_total``               counter    ``from_tier``, ``to_tier``
``ds_compute_warm_pool_machines``                   gauge      ``tier`` (booted, waiting, no user)
``ds_compute_warm_pool_idle_cost_total``            counter    ``tier`` (the operator's, unit of ``hourly_cost``)
==================================================  =========  ===============================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from .. import tiers
from . import warmpool
from .store import FINAL_STATES

__all__ = ["DURATION_BUCKETS", "DSComputeCollector", "make_registry"]

DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class DSComputeCollector:
    def __init__(self, store, live, profiles):
        self.store = store
        self.live = live
        self.profiles = profiles

    def collect(self):
        db = self.store.db
        switches = CounterMetricFamily(
            "ds_compute_switches",
            "Finished switches by tiers and outcome.",
            labels=["from_tier", "to_tier", "outcome"],
        )
        marks = ",".join("?" * len(FINAL_STATES))
        for r in db.execute(
            f"SELECT COALESCE(from_profile, '') AS f, to_profile AS t, state, COUNT(*) AS n FROM switches"
            f" WHERE state IN ({marks}) GROUP BY f, t, state",
            FINAL_STATES,
        ):
            switches.add_metric([r["f"], r["t"], r["state"]], r["n"])
        yield switches

        durations = HistogramMetricFamily(
            "ds_compute_switch_duration_seconds", "Duration of finished switches.", labels=["outcome"]
        )
        by_outcome: dict[str, list[float]] = {}
        for r in db.execute(
            f"SELECT state, finished - created AS d FROM switches WHERE state IN ({marks}) AND finished IS NOT NULL",
            FINAL_STATES,
        ):
            by_outcome.setdefault(r["state"], []).append(max(0.0, r["d"]))
        for outcome, values in sorted(by_outcome.items()):
            buckets = [(str(float(b)), sum(1 for v in values if v <= b)) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", len(values)))
            durations.add_metric([outcome], buckets, sum(values))
        yield durations

        running = GaugeMetricFamily(
            "ds_compute_running_servers", "Servers running or starting per tier.", labels=["tier"]
        )
        counts = {t.slug: 0 for t in tiers.tiers_of(self.profiles)}
        for s in self.live.active:
            counts[s["profile"] or ""] = counts.get(s["profile"] or "", 0) + 1
        for slug, n in sorted(counts.items()):
            running.add_metric([slug], n)
        yield running

        cost = CounterMetricFamily(
            "ds_compute_cost_accrued",
            "Cost accrued by servers (hourly_cost x running time).",
            labels=["tier"],
        )
        for slug, value in sorted(self.live.accounting.total_by_tier().items()):
            cost.add_metric([slug], value)
        yield cost

        refusals = CounterMetricFamily(
            "ds_compute_policy_refusals",
            "Starts and switches refused by a policy.",
            labels=["policy", "tier"],
        )
        for r in db.execute(
            "SELECT SUBSTR(event, 8) AS p, COALESCE(to_profile, '') AS t, COUNT(*) AS n FROM audit"
            " WHERE event LIKE 'policy:%' AND event NOT IN ('policy:idle', 'policy:grant') AND outcome = 'refused'"
            " GROUP BY p, t"
        ):
            refusals.add_metric([r["p"], r["t"]], r["n"])
        yield refusals

        idle = CounterMetricFamily(
            "ds_compute_idle_downshifts",
            "Servers moved down (or stopped) for being idle.",
            labels=["from_tier", "to_tier", "action"],
        )
        for r in db.execute(
            "SELECT COALESCE(from_profile, '') AS f, COALESCE(to_profile, '') AS t, outcome, COUNT(*) AS n FROM audit"
            " WHERE event = 'policy:idle' AND outcome IN ('downshift', 'stop') GROUP BY f, t, outcome"
        ):
            idle.add_metric([r["f"], r["t"], r["outcome"]], r["n"])
        yield idle

        access = CounterMetricFamily(
            "ds_compute_access_requests",
            "Requests for a tier, their decisions and the grants' ends (refused: the request or decision).",
            labels=["tier", "outcome"],
        )
        for r in db.execute(
            "SELECT COALESCE(to_profile, '') AS t, outcome, COUNT(*) AS n FROM audit"
            " WHERE event IN ('access:request', 'access:decision', 'access:grant') GROUP BY t, outcome"
        ):
            access.add_metric([r["t"], r["outcome"] or ""], r["n"])
        yield access

        grant = CounterMetricFamily(
            "ds_compute_grant_downshifts",
            "Servers moved to the default tier because the grant of their tier ended.",
            labels=["from_tier", "to_tier"],
        )
        for r in db.execute(
            "SELECT COALESCE(from_profile, '') AS f, COALESCE(to_profile, '') AS t, COUNT(*) AS n FROM audit"
            " WHERE event = 'policy:grant' AND outcome = 'downshift' GROUP BY f, t"
        ):
            grant.add_metric([r["f"], r["t"]], r["n"])
        yield grant

        moves = CounterMetricFamily(
            "ds_compute_volume_moves",
            "Volumes moved to another availability zone (started, done, undone, failed; reported by the hub).",
            labels=["tier", "outcome"],
        )
        for r in db.execute(
            "SELECT COALESCE(to_profile, '') AS t, outcome, COUNT(*) AS n FROM audit"
            " WHERE event = 'volume:move' GROUP BY t, outcome"
        ):
            moves.add_metric([r["t"], r["outcome"] or ""], r["n"])
        yield moves

        pool_machines = GaugeMetricFamily(
            "ds_compute_warm_pool_machines",
            "Instances booted and waiting in a tier's warm pools (reported by the hub).",
            labels=["tier"],
        )
        pool_cost = CounterMetricFamily(
            "ds_compute_warm_pool_idle_cost",
            "Idle time of warm-pool instances at the tier's hourly_cost: the operator's, in no budget.",
            labels=["tier"],
        )
        counts = warmpool.machines(db)
        for tier, cost in sorted(warmpool.idle_cost(db).items()):
            pool_machines.add_metric([tier], counts.get(tier, 0))
            pool_cost.add_metric([tier], cost)
        yield pool_machines
        yield pool_cost


def make_registry(store, live, profiles) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DSComputeCollector(store, live, profiles))
    return registry
