import pytest

from jupyter_ds_compute.policy import group_refusal


@pytest.mark.parametrize(
    "allowed, user_groups, is_admin, expected",
    [
        (None, [], False, None),
        (None, None, False, None),
        (["gpu-users"], ["gpu-users"], False, None),
        (["gpu-users", "staff"], ["staff", "other"], False, None),
        (("gpu-users",), {"gpu-users"}, False, None),
        (["gpu-users"], [], False, "tier 'GPU' is limited to groups: gpu-users"),
        (["gpu-users"], None, False, "tier 'GPU' is limited to groups: gpu-users"),
        (["a", "b"], ["c"], False, "tier 'GPU' is limited to groups: a, b"),
        # admins are not exempt: the owner's groups decide
        (["gpu-users"], [], True, "tier 'GPU' is limited to groups: gpu-users"),
        ([], ["gpu-users"], False, "tier 'GPU' is not available to any group"),
    ],
)
def test_group_refusal(allowed, user_groups, is_admin, expected):
    assert group_refusal(allowed, user_groups, is_admin=is_admin, what="tier 'GPU'") == expected


def test_group_refusal_default_wording():
    assert group_refusal(["x"], ["y"]) == "this tier is limited to groups: x"


# -- caps, budgets, idle ---------------------------------------------------------------

from datetime import datetime, timezone  # noqa: E402

from jupyter_ds_compute.policy import (  # noqa: E402
    applicable_budgets,
    budget_refusal,
    budget_state,
    cap_refusal,
    idle_action,
    period_start,
    validate_budgets,
    worst_budget,
)


@pytest.mark.parametrize(
    "cap, running, expected",
    [
        (None, 100, None),
        (2, 0, None),
        (2, 1, None),
        (2, 2, "GPU tier full (2/2), try later or ask an admin"),
        (2, 3, "GPU tier full (3/2), try later or ask an admin"),
        (0, 0, "GPU tier full (0/0), try later or ask an admin"),
    ],
)
def test_cap_refusal(cap, running, expected):
    assert cap_refusal("GPU", cap, running) == expected


def _ts(*args):
    return datetime(*args, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    "now, period, expected",
    [
        (_ts(2024, 5, 15, 13, 30), "day", _ts(2024, 5, 15)),
        (_ts(2024, 5, 15, 13, 30), "week", _ts(2024, 5, 13)),  # a Wednesday -> Monday
        (_ts(2024, 5, 13, 0, 0), "week", _ts(2024, 5, 13)),
        (_ts(2024, 5, 15, 13, 30), "month", _ts(2024, 5, 1)),
        (_ts(2024, 1, 1, 0, 0, 1), "month", _ts(2024, 1, 1)),
    ],
)
def test_period_start(now, period, expected):
    assert period_start(now, period) == expected


def test_period_start_rejects_unknown():
    with pytest.raises(ValueError, match="day, week, month"):
        period_start(0, "year")


@pytest.mark.parametrize(
    "spent, budget, expected",
    [
        (5, None, "unlimited"),
        (0, 10, "ok"),
        (7.9, 10, "ok"),
        (8, 10, "warn"),
        (9.99, 10, "warn"),
        (10, 10, "spent"),
        (12, 10, "spent"),
        (0, 0, "spent"),
    ],
)
def test_budget_state(spent, budget, expected):
    assert budget_state(spent, budget, 0.8)["state"] == expected


def test_budget_state_fields():
    st = budget_state(2.5, 10, 0.8)
    assert st == {"spent": 2.5, "budget": 10.0, "fraction": 0.25, "state": "ok"}


@pytest.mark.parametrize(
    "user, groups, budgets, expected",
    [
        ("alice", [], {}, []),
        ("alice", [], {"users": {"alice": 10}}, [("user", "alice", 10.0)]),
        ("bob", [], {"users": {"alice": 10}, "default": 3}, [("user", "bob", 3.0)]),
        ("alice", ["students", "x"], {"groups": {"students": 5}}, [("group", "students", 5.0)]),
        (
            "alice",
            ["students"],
            {"users": {"alice": 1}, "groups": {"students": 5}},
            [("user", "alice", 1.0), ("group", "students", 5.0)],
        ),
    ],
)
def test_applicable_budgets(user, groups, budgets, expected):
    assert applicable_budgets(user, groups, budgets) == expected


@pytest.mark.parametrize(
    "budgets, message",
    [
        ([], "must be a dict"),
        ({"user": {}}, "unknown key"),
        ({"users": {"a": -1}}, ">= 0"),
        ({"groups": {"g": "lots"}}, ">= 0"),
        ({"default": True}, ">= 0"),
        ({"users": ["a"]}, "dict of name"),
    ],
)
def test_validate_budgets_errors(budgets, message):
    with pytest.raises(ValueError, match=message):
        validate_budgets(budgets)


def test_worst_budget():
    ok = budget_state(1, 10)
    warn = dict(budget_state(9, 10), kind="group", name="g")
    spent = dict(budget_state(11, 10), kind="user", name="a")
    assert worst_budget([])["state"] == "unlimited"
    assert worst_budget([ok, warn]) is warn
    assert worst_budget([warn, spent, ok]) is spent


@pytest.mark.parametrize(
    "state, cost, free, refused",
    [
        ("ok", 1.2, 0.05, False),
        ("warn", 1.2, 0.05, False),
        ("spent", 1.2, 0.05, True),
        ("spent", 0.05, 0.05, False),  # the default tier still starts
        ("spent", 0.01, 0.05, False),
        ("unlimited", 99, 0, False),
    ],
)
def test_budget_refusal(state, cost, free, refused):
    st = {"state": state, "spent": 11.0, "budget": 10.0, "period": "month"}
    reason = budget_refusal(st, "GPU", cost, free)
    assert (reason is not None) == refused
    if refused:
        assert reason.startswith("Your budget is spent (11.00 of 10.00 this month)")
        assert "'GPU'" in reason


def test_budget_refusal_names_the_group():
    st = {
        "state": "spent",
        "spent": 5.0,
        "budget": 5.0,
        "period": "week",
        "kind": "group",
        "name": "students",
    }
    assert budget_refusal(st, "GPU", 1.2, 0.05).startswith("The budget of group students is spent")


@pytest.mark.parametrize(
    "profile, after, idle, default, action, expected",
    [
        ("gpu", 3600, 3599, "small", "downshift", None),
        ("gpu", 3600, 3600, "small", "downshift", ("downshift", "small")),
        ("gpu", 3600, 7200, "small", "stop", ("stop", None)),
        ("gpu", None, 1e9, "small", "downshift", None),
        ("small", 60, 1e9, "small", "downshift", None),  # already on the default tier
        ("gpu", 60, 100, None, "downshift", None),  # no default to go to
        (None, 60, 100, "small", "downshift", None),
    ],
)
def test_idle_action(profile, after, idle, default, action, expected):
    assert (
        idle_action(
            profile=profile,
            idle_downshift_after=after,
            idle_seconds=idle,
            default_profile=default,
            action=action,
        )
        == expected
    )


def test_idle_action_rejects_unknown_action():
    with pytest.raises(ValueError, match="downshift, stop"):
        idle_action(
            profile="gpu", idle_downshift_after=1, idle_seconds=2, default_profile="small", action="cull"
        )


# -- the service's accounting (SQLite, injected times) ------------------------------------

from jupyter_ds_compute.service.accounting import Accounting  # noqa: E402
from jupyter_ds_compute.service.store import Store, isoformat  # noqa: E402

PROFILES = [
    {"display_name": "Small", "slug": "small", "default": True, "cpu": 1, "mem": "1G", "hourly_cost": 0.5},
    {"display_name": "GPU", "slug": "gpu", "cpu": 1, "mem": "1G", "hourly_cost": 3.6},
]


def test_accounting_intervals():
    acc = Accounting(Store().db)
    t0 = _ts(2024, 5, 15, 10)
    srv = {"user": "alice", "server_name": "", "profile": "gpu", "started": isoformat(t0)}
    acc.observe([srv], t0 + 10, PROFILES)  # opened at its start time
    acc.observe([srv], t0 + 100, PROFILES)  # extended
    assert acc.spent(["alice"], t0 - 1, t0 + 100) == pytest.approx(3.6 * 100 / 3600)
    # switched: the GPU run ends, a small run starts
    small = dict(srv, profile="small", started=isoformat(t0 + 110))
    acc.observe([small], t0 + 120, PROFILES)
    assert acc.spent(["alice"], t0, t0 + 120) == pytest.approx(3.6 * 100 / 3600 + 0.5 * 10 / 3600)
    # stopped: closed at the last poll; later polls add nothing
    acc.observe([], t0 + 130, PROFILES)
    acc.observe([], t0 + 1000, PROFILES)
    assert acc.spent(["alice"], t0, t0 + 1000) == pytest.approx(3.6 * 100 / 3600 + 0.5 * 10 / 3600)
    # a period starting in the middle counts only the overlap
    assert acc.spent(["alice"], t0 + 50, t0 + 1000) == pytest.approx(3.6 * 50 / 3600 + 0.5 * 10 / 3600)
    assert acc.spent(["bob"], t0, t0 + 1000) == 0
    assert acc.total_by_tier() == pytest.approx({"gpu": 0.1, "small": 0.5 * 10 / 3600})
