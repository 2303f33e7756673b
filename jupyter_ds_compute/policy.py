"""Pure policy rules for jupyter-ds-compute.

Every function here is pure: no I/O, no clock, no hub objects. Callers pass
plain values (group names, counts, costs) and get a decision back.

The rules, each used at spawn (hub side) and at switch (service side):

- :func:`group_refusal`: tier (or choice) access by JupyterHub group;
- :func:`cap_refusal`: at most ``max_servers`` servers on a tier at once;
- :func:`period_start`, :func:`applicable_budgets`, :func:`budget_state`,
  :func:`budget_refusal`: spending limits per user and per group over a
  period, warned at a fraction, refusing expensive tiers when spent;
- :func:`idle_action`: what to do with a server idle on an expensive tier;
- :func:`parse_duration`, :func:`request_refusal`, :func:`decision_refusal`,
  :func:`granted_duration`, :func:`grant_phase`: requests for a tier the
  user may not use, their approval and the grant's expiry (docs/internals.md,
  "Requests and grants").

:class:`PolicySettings` declares the settings of these rules (budgets, the
period, the warn fraction, the polling and idle intervals) once, as traits:
the service's application inherits them (``c.DSComputeService.budgets``, also
``c.PolicySettings.budgets``), and the hub checks an operator's values with
the same traits (``hubconfig.check_config``).
"""

from __future__ import annotations

import calendar
import math
import re
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
    "MAX_REASON_LENGTH",
    "budget_refusal",
    "budget_state",
    "cap_refusal",
    "decision_refusal",
    "grant_group",
    "grant_phase",
    "granted_duration",
    "parse_duration",
    "request_refusal",
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


# -- requests and grants ------------------------------------------------------------

#: the units of a duration such as ``"7d"`` (seconds each)
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

#: the longest request or decision reason accepted (characters)
MAX_REASON_LENGTH = 1000

_DURATION_RE = re.compile(r"^\s*([0-9]{1,9}(?:\.[0-9]{1,6})?)\s*([smhdw]?)\s*$")


def parse_duration(value: object) -> float:
    """A duration in seconds from ``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``,
    ``"90"`` or a number of seconds; must be > 0.

    Raises ValueError with a message that names the accepted forms (callers
    prefix the field or key).
    """
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        seconds = float(m.group(1)) * DURATION_UNITS[m.group(2) or "s"] if m else None
    else:
        seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise ValueError(
            f"must be a duration like '7d', '12h', '30m', '45s' or a number of seconds > 0, not {shown}"
        )
    return seconds


def grant_group(allowed_groups: Iterable[str] | None) -> str | None:
    """The JupyterHub group a grant of a tier adds its user to: the tier's
    first ``allowed_groups`` entry (None: the tier is open to all, nothing to grant)."""
    groups = list(allowed_groups or ())
    return groups[0] if groups else None


def request_refusal(
    *,
    display_name: str,
    allowed_groups: Iterable[str] | None,
    max_grant: float | None,
    user_groups: Iterable[str] | None,
    duration: float,
    pending: bool = False,
    granted: bool = False,
) -> tuple[str, str] | None:
    """Why a user may not request tier ``display_name`` for ``duration`` seconds:
    ``(field, message)``, or None.

    A tier can be requested only if it has ``max_grant`` and is limited by
    ``allowed_groups``; not if the user may use it already (by a group, or a
    grant still running), nor while a request of theirs for it is
    ``pending``; and not for longer than ``max_grant``.
    """
    what = f"tier {display_name!r}"
    if max_grant is None or grant_group(allowed_groups) is None:
        return ("profile", f"{what} cannot be requested (it has no max_grant, or is open to everyone)")
    if granted:
        return ("profile", f"you may use {what} already: a grant of it is running")
    if group_refusal(allowed_groups, user_groups) is None:
        return ("profile", f"you may use {what} already (you are in one of its groups)")
    if pending:
        return ("profile", f"a request of yours for {what} is pending already")
    if duration > max_grant:
        return (
            "duration",
            f"{what} may be granted for at most {_short_duration(max_grant)}, not {_short_duration(duration)}",
        )
    return None


def decision_refusal(
    *,
    decider: str,
    requester: str,
    is_admin: bool,
    decider_groups: Iterable[str] | None,
    approvers: Iterable[str] | None,
    display_name: str,
) -> str | None:
    """Why ``decider`` may not approve or deny ``requester``'s request for a
    tier with ``approvers`` (group names), or None.

    Admins (the ``custom:ds-compute:admin`` scope) and members of one of the
    tier's ``approvers`` groups decide; nobody decides their own request.
    """
    if decider == requester:
        return "nobody may decide their own request; another approver or an admin must"
    if is_admin:
        return None
    if set(approvers or ()) & set(decider_groups or ()):
        return None
    groups = ", ".join(approvers or ()) or "none"
    return (
        f"only admins and members of the approvers groups of tier {display_name!r} ({groups}) "
        "may decide requests for it"
    )


def granted_duration(requested: float, approved: float | None, max_grant: float) -> float:
    """How long an approval grants: ``approved`` (None: what was requested),
    at most what was requested and the tier's ``max_grant``; ValueError if longer."""
    if approved is None:
        return min(requested, max_grant)
    if approved > requested:
        raise ValueError(
            f"may only shorten the request ({_short_duration(requested)}), not lengthen it to "
            f"{_short_duration(approved)}"
        )
    if approved > max_grant:
        raise ValueError(f"is longer than the tier's max_grant ({_short_duration(max_grant)})")
    return approved


def grant_phase(now: float, expires: float, notice_before: float) -> str:
    """``active``, ``notice`` (within ``notice_before`` seconds of ``expires``:
    the user is told) or ``expired`` (``now >= expires``)."""
    if now >= expires:
        return "expired"
    if now >= expires - max(0.0, notice_before):
        return "notice"
    return "active"


def _short_duration(seconds: float) -> str:
    """``7d``, ``36h``, ``90m``, ``45s``: the largest unit (up to days) that divides exactly."""
    for unit in ("d", "h", "m"):
        if seconds >= DURATION_UNITS[unit] and seconds % DURATION_UNITS[unit] == 0:
            return f"{int(seconds // DURATION_UNITS[unit])}{unit}"
    return f"{seconds:g}s"


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

    grant_check_interval = Float(
        30.0,
        help=dedent("""
            Seconds between two checks of the grants (approved requests): the
            notice before a grant ends, then its end (the user leaves the
            tier's group; a server on the tier is switched down)::

                c.DSComputeService.grant_check_interval = 10

            .. versionadded:: 0.1
            """).strip(),
    ).tag(config=True)

    grant_expiry_notice = Float(
        600.0,
        help=dedent("""
            Seconds before a grant ends at which its user is told (a notice in
            Lab's status bar and the audit log) that a server on the tier will be
            moved to their default tier. 0: no notice before the end::

                c.DSComputeService.grant_expiry_notice = 3600

            .. versionadded:: 0.1
            """).strip(),
    ).tag(config=True)

    @validate("grant_expiry_notice")
    def _validate_notice(self, proposal):
        if proposal["value"] < 0:
            raise ValueError(
                f"grant_expiry_notice must be a number of seconds >= 0, got {proposal['value']!r}"
            )
        return proposal["value"]

    @validate("accounting_interval", "idle_check_interval", "grant_check_interval")
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
        "grant_check_interval",
        "grant_expiry_notice",
    )

    def settings(self) -> dict:
        """``{name: value}`` of the policy settings (budgets normalized)."""
        out = {name: getattr(self, name) for name in self.SETTINGS}
        out["budgets"] = validate_budgets(out["budgets"])
        out["budget_period"] = out["budget_period"].lower()
        out["idle_action"] = out["idle_action"].lower()
        return out
