"""Pure policy rules for jupyter-ds-compute.

Every function here is pure: no I/O, no clock, no hub objects. Callers pass
plain values (group names, counts, costs) and get a decision back.

The rules, each used at spawn (hub side) and at switch (service side):

- :func:`group_refusal`: tier (or choice) access by JupyterHub group;
- :func:`cap_refusal`: at most ``max_servers`` servers on a tier at once;
- :func:`period_start`, :func:`applicable_budgets`, :func:`budget_state`,
  :func:`budget_refusal`: spending limits per user and per group over a
  period, warned at a fraction, refusing expensive tiers when spent;
- :func:`idle_action`: what to do with a server idle on an expensive tier.

:class:`PolicySettings` declares the settings of these rules (budgets, the
period, the warn fraction, the polling and idle intervals) once, as traits:
the service's application inherits them (``c.DSComputeService.budgets``, also
``c.PolicySettings.budgets``), and the hub checks an operator's values with
the same traits (``hubconfig.check_config``).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from textwrap import dedent

from traitlets import CaselessStrEnum, Dict, Float, validate
from traitlets.config import Configurable

__all__ = [
    "BUDGET_PERIODS",
    "IDLE_ACTIONS",
    "PolicySettings",
    "applicable_budgets",
    "budget_refusal",
    "budget_state",
    "cap_refusal",
    "group_refusal",
    "idle_action",
    "period_start",
    "validate_budgets",
    "worst_budget",
]

BUDGET_PERIODS = ("day", "week", "month")
IDLE_ACTIONS = ("downshift", "stop")


def group_refusal(
    allowed_groups: Iterable[str] | None,
    user_groups: Iterable[str] | None,
    is_admin: bool = False,
    what: str = "this tier",
) -> str | None:
    """Why a user may not use something limited to ``allowed_groups``, or None.

    ``allowed_groups`` is a tier's (or a choice's) ``allowed_groups``:
    ``None`` means everyone may use it. ``user_groups`` are the names of the
    JupyterHub groups of the user who will *own* the server (``None`` counts
    as no groups, so forgetting to pass them fails closed). ``what`` names
    the thing in the reason, e.g. ``"tier 'GPU'"``.

    Returns a short, human reason such as
    ``"tier 'GPU' is limited to groups: gpu-users"`` when the user is in none
    of the allowed groups, else ``None``.

    Admins are *not* exempt: ``is_admin`` is accepted so callers can pass it
    uniformly, but it does not change the answer. Reasons: the groups that
    matter are those of the server's owner (an admin starting or switching
    *bob*'s server must not lift bob's limits), tiers cost money and group
    membership is the one explicit grant operators audit, and an admin who
    needs a tier can add themselves to its group in the admin page.
    """
    del is_admin  # deliberately unused, see the docstring
    if allowed_groups is None:
        return None
    allowed = [str(g) for g in allowed_groups]
    if set(allowed) & set(user_groups or ()):
        return None
    if not allowed:
        return f"{what} is not available to any group"
    return f"{what} is limited to groups: {', '.join(allowed)}"


def cap_refusal(display_name: str, max_servers: int | None, running: int) -> str | None:
    """Why one more server may not start on a tier, or None.

    ``max_servers`` is the tier's cap (None: no cap); ``running`` counts the
    tier's servers that run or are starting now, *not* counting the server
    being started or switched.
    """
    if max_servers is None or running < max_servers:
        return None
    return f"{display_name} tier full ({running}/{max_servers}), try later or ask an admin"


def period_start(now: float, period: str) -> float:
    """Unix time when the budget period containing ``now`` began (UTC).

    ``day``: midnight; ``week``: Monday midnight; ``month``: the 1st at midnight.
    """
    if period not in BUDGET_PERIODS:
        raise ValueError(f"budget period must be one of {', '.join(BUDGET_PERIODS)}, got {period!r}")
    dt = datetime.fromtimestamp(now, tz=timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        dt -= timedelta(days=dt.weekday())
    elif period == "month":
        dt = dt.replace(day=1)
    return calendar.timegm(dt.timetuple())


def validate_budgets(budgets: object) -> dict:
    """Check a budgets setting; return it normalized.

    ``{"users": {name: amount}, "groups": {name: amount}, "default": amount or None}``,
    amounts >= 0 (in the unit of ``hourly_cost``). Raises ValueError naming the bad key.
    """
    if budgets is None:
        budgets = {}
    if not isinstance(budgets, Mapping):
        raise ValueError(f"budgets must be a dict, got {type(budgets).__name__}")
    unknown = set(budgets) - {"users", "groups", "default"}
    if unknown:
        raise ValueError(
            f"budgets: unknown key(s) {', '.join(sorted(map(str, unknown)))}; known: users, groups, default"
        )

    def amount(value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"budgets{where} must be a number >= 0, got {value!r}")
        return float(value)

    out = {"users": {}, "groups": {}, "default": None}
    for kind in ("users", "groups"):
        table = budgets.get(kind) or {}
        if not isinstance(table, Mapping):
            raise ValueError(f"budgets['{kind}'] must be a dict of name -> amount")
        out[kind] = {str(k): amount(v, f"['{kind}'][{k!r}]") for k, v in table.items()}
    if budgets.get("default") is not None:
        out["default"] = amount(budgets["default"], "['default']")
    return out


def applicable_budgets(
    user: str, groups: Iterable[str] | None, budgets: Mapping
) -> list[tuple[str, str, float]]:
    """The budgets that limit ``user``: ``[(kind, name, amount)]``.

    - ``("user", user, amount)``: the user's own spending, limited by
      ``budgets["users"][user]``, else by ``budgets["default"]`` if set;
    - ``("group", g, amount)`` for each of the user's groups with a budget:
      the *sum* of the spending of the group's members is limited (a shared pool).
    """
    budgets = validate_budgets(budgets)
    out = []
    own = budgets["users"].get(user, budgets["default"])
    if own is not None:
        out.append(("user", user, own))
    for g in sorted(set(groups or ())):
        if g in budgets["groups"]:
            out.append(("group", g, budgets["groups"][g]))
    return out


def budget_state(spent: float, budget: float | None, warn_fraction: float = 0.8) -> dict:
    """Where spending stands: ``{"spent", "budget", "fraction", "state"}``.

    ``state`` is ``unlimited`` (no budget), ``ok``, ``warn`` (at least
    ``warn_fraction`` of the budget spent) or ``spent`` (the budget is used
    up: ``spent >= budget``).
    """
    spent = max(0.0, float(spent))
    if budget is None:
        return {"spent": spent, "budget": None, "fraction": None, "state": "unlimited"}
    budget = float(budget)
    fraction = spent / budget if budget > 0 else (1.0 if spent > 0 else float("inf"))
    if spent >= budget:
        state = "spent"
    elif fraction >= warn_fraction:
        state = "warn"
    else:
        state = "ok"
    return {"spent": spent, "budget": budget, "fraction": fraction if budget > 0 else None, "state": state}


_SEVERITY = {"unlimited": 0, "ok": 1, "warn": 2, "spent": 3}


def worst_budget(states: Iterable[dict]) -> dict:
    """The tightest of several :func:`budget_state` results (``unlimited`` if none).

    Spent beats warn beats ok; between equals, the highest fraction.
    """
    best = budget_state(0, None)
    for st in states:
        key = (_SEVERITY[st["state"]], st["fraction"] or 0)
        if key > (_SEVERITY[best["state"]], best["fraction"] or 0):
            best = st
    return best


def budget_refusal(state: dict, display_name: str, hourly_cost: float, free_below: float) -> str | None:
    """Why a tier may not start because a budget is spent, or None.

    When the budget in ``state`` (:func:`budget_state`, possibly with
    ``kind``/``name`` keys from the caller) is spent, only tiers costing
    at most ``free_below`` per hour (the default tier's price) may start;
    running servers are never stopped for a budget.
    """
    if state.get("state") != "spent" or hourly_cost <= free_below:
        return None
    period = state.get("period") or "period"
    whose = (
        "Your budget" if state.get("kind", "user") == "user" else f"The budget of group {state.get('name')}"
    )
    return (
        f"{whose} is spent ({state['spent']:.2f} of {state['budget']:.2f} this {period}):"
        f" tier {display_name!r} ({hourly_cost:.2f}/h) is refused until the next {period};"
        " cheaper tiers still work, or ask an admin"
    )


def idle_action(
    *,
    profile: str | None,
    idle_downshift_after: float | None,
    idle_seconds: float,
    default_profile: str | None,
    action: str = "downshift",
) -> tuple[str, str | None] | None:
    """What to do with a server idle for ``idle_seconds`` on tier ``profile``.

    Returns None (leave it), ``("downshift", default_profile)`` or
    ``("stop", None)``. Servers on the default tier, and tiers without
    ``idle_downshift_after``, are left alone; a downshift needs a default
    tier other than the current one (else nothing happens).
    """
    if action not in IDLE_ACTIONS:
        raise ValueError(f"idle action must be one of {', '.join(IDLE_ACTIONS)}, got {action!r}")
    if idle_downshift_after is None or profile is None or profile == default_profile:
        return None
    if idle_seconds < idle_downshift_after:
        return None
    if action == "stop":
        return ("stop", None)
    if not default_profile:
        return None
    return ("downshift", default_profile)


class PolicySettings(Configurable):
    """The settings of the policy rules, shared by the service and the hub.

    The service's application (``DSComputeService``) is a subclass, so
    operators write ``c.DSComputeService.budgets = ...`` as before (or
    ``c.PolicySettings.budgets``); ``jupyter-ds-compute-service --help-all``
    lists them. :meth:`settings` is the plain dict the rules and the
    accounting take.
    """

    budgets = Dict(
        help=dedent("""
            Spending limits per budget period, in the unit of the tiers'
            ``hourly_cost`` (cost = hourly_cost x running time, accounted by
            the service). ``users``: a user's own spending; ``groups``: the
            total of the group's members (a shared pool); ``default``: the
            limit of users without an entry in ``users`` (None: unlimited).
            At ``budget_warn_fraction`` Lab warns; when a budget is spent,
            tiers dearer than the user's default tier are refused at start
            and switch. Running servers are never stopped for a budget.

            Example (``jupyterhub_config.py``)::

                c.DSComputeService.budgets = {
                    "users": {"alice": 10.0},
                    "groups": {"students": 5.0},
                    "default": None,
                }

            .. versionadded:: 0.1
            """).strip(),
    ).tag(config=True)

    @validate("budgets")
    def _validate_budgets(self, proposal):
        return validate_budgets(proposal["value"])

    budget_period = CaselessStrEnum(
        list(BUDGET_PERIODS),
        default_value="month",
        help=dedent("""
            Budget period (UTC): ``day``, ``week`` (from Monday) or ``month``::

                c.DSComputeService.budget_period = "week"
            """).strip(),
    ).tag(config=True)

    budget_warn_fraction = Float(
        0.8,
        help=dedent("""
            Fraction of a budget spent at which Lab's status bar warns
            (``budget.state == 'warn'``)::

                c.DSComputeService.budget_warn_fraction = 0.9
            """).strip(),
    ).tag(config=True)

    @validate("budget_warn_fraction")
    def _validate_warn_fraction(self, proposal):
        value = proposal["value"]
        if not 0 <= value <= 1:
            raise ValueError(f"budget_warn_fraction must be from 0 to 1, got {value!r}")
        return value

    accounting_interval = Float(
        10.0,
        help="Seconds between two polls of the hub's active servers (accounting, running counts).",
    ).tag(config=True)

    idle_check_interval = Float(
        60.0,
        help="Seconds between two idle checks (only if some tier has ``idle_downshift_after``).",
    ).tag(config=True)

    @validate("accounting_interval", "idle_check_interval")
    def _validate_interval(self, proposal):
        if proposal["value"] <= 0:
            raise ValueError(
                f"{proposal['trait'].name} must be a number of seconds > 0, got {proposal['value']!r}"
            )
        return proposal["value"]

    idle_action = CaselessStrEnum(
        list(IDLE_ACTIONS),
        default_value="downshift",
        help=dedent("""
            What happens to a server idle longer than its tier's
            ``idle_downshift_after``: ``downshift`` (switch to the default
            tier, through the normal switch) or ``stop``.
            """).strip(),
    ).tag(config=True)

    #: the names of the policy settings (the keys of :meth:`settings`)
    SETTINGS = (
        "budgets",
        "budget_period",
        "budget_warn_fraction",
        "accounting_interval",
        "idle_check_interval",
        "idle_action",
    )

    def settings(self) -> dict:
        """``{name: value}`` of the policy settings (budgets normalized)."""
        out = {name: getattr(self, name) for name in self.SETTINGS}
        out["budgets"] = validate_budgets(out["budgets"])
        out["budget_period"] = out["budget_period"].lower()
        out["idle_action"] = out["idle_action"].lower()
        return out
