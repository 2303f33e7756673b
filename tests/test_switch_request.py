"""Orchestrator.request_switch, the one entry point of every switch (API, admin page,
idle policy), in-process against a fake hub API (issue 13 §4).

Each refusal: its status, message and field, its audit record, and that
nothing was stopped (no DELETE reached the hub).
"""

import pytest
from fakes import FakeHub

from jupyter_ds_compute import policy, tiers
from jupyter_ds_compute.service import authz
from jupyter_ds_compute.service.accounting import LivePolicy
from jupyter_ds_compute.service.idle import IdleWatcher
from jupyter_ds_compute.service.orchestrator import Orchestrator, SwitchRefused
from jupyter_ds_compute.service.store import Store

PROFILES = tiers.normalize_profile_list(
    [
        {
            "display_name": "Small",
            "slug": "small",
            "cpu": 1,
            "mem": "1G",
            "hourly_cost": 0.0,
            "default": True,
        },
        {"display_name": "GPU", "slug": "gpu", "cpu": 2, "mem": "2G", "hourly_cost": 3.0},
        {"display_name": "Capped", "slug": "capped", "cpu": 1, "mem": "1G", "max_servers": 1},
        {"display_name": "Team", "slug": "team", "cpu": 1, "mem": "1G", "allowed_groups": ["team"]},
    ]
)


def policy_settings(overrides=None) -> dict:
    """The policy settings dict LivePolicy and IdleWatcher read (defaults + ``overrides``)."""
    out = {
        "budgets": {},
        "budget_period": "month",
        "budget_warn_fraction": 0.8,
        "accounting_interval": 10.0,
        "idle_check_interval": 60.0,
        "idle_action": "downshift",
    }
    out.update(overrides or {})
    out["budgets"] = policy.validate_budgets(out["budgets"])
    return out


def user_model(name, *scopes):
    """A caller as the hub describes it (see tests/test_authz.py)."""
    own = [f"read:users:name!user={name}", f"read:users:groups!user={name}"]
    return {"kind": "user", "name": name, "admin": False, "scopes": [*own, *scopes]}


ALICE = user_model("alice", "servers!user=alice")
BOB = user_model("bob", "servers!user=bob")
OPERATOR = user_model("op", "admin:servers", "servers", "read:servers", authz.ADMIN_SCOPE)


class Hub(FakeHub):
    """FakeHub plus what the checks read: users with groups, ``GET /users?state=active``."""

    def __init__(self):
        super().__init__()
        self.groups = {}
        self.down = False

    async def get_user(self, user):
        if self.down:
            from jupyter_ds_compute.service.hubapi import HubUnavailable

            raise HubUnavailable(0, "the hub is unreachable", method="GET", path="/users/x")
        if user not in {u for u, _ in self.servers} | set(self.groups):
            return None
        return {"name": user, "groups": self.groups.get(user, [])}

    async def list_users(self, state=None, **kw):
        out = {}
        for (user, name), m in self.servers.items():
            out.setdefault(user, {"name": user, "groups": self.groups.get(user, []), "servers": {}})
            out[user]["servers"][name] = dict(m, started="2026-01-01T00:00:00Z", last_activity=None)
        return list(out.values())


@pytest.fixture
def store():
    s = Store()
    yield s
    s.close()


@pytest.fixture
def hub():
    h = Hub()
    h.add("alice")
    h.add("bob")
    return h


@pytest.fixture
def orch(hub, store):
    return Orchestrator(hub, store, stop_timeout=5, start_timeout=5)


def live(hub, store, **settings):
    return LivePolicy(hub, store, PROFILES, policy_settings(settings))


async def request(orch, caller, body, **kw):
    kw.setdefault("profiles", PROFILES)
    kw.setdefault("live", live(orch.hub, orch.store))
    return await orch.request_switch(caller, body, **kw)


def last_audit(store):
    return store.list_audit(limit=1)[0]


async def test_accepted_is_pending_and_audited(orch, store, hub):
    record = await request(orch, ALICE, {"profile": "gpu", "next": "/user/alice/lab/tree/x.ipynb"})
    assert (
        record["state"] == "pending" and record["to_profile"] == "gpu" and record["from_profile"] == "small"
    )
    assert record["requested_by"] == "alice" and record["next"] == "/user/alice/lab/tree/x.ipynb"
    event = last_audit(store)
    assert (event["event"], event["outcome"], event["switch_id"]) == ("request", "accepted", record["id"])
    assert not hub.calls, "request_switch only records; launch runs it"


@pytest.mark.parametrize(
    "caller, body, status, field, text",
    [
        (ALICE, {}, 400, "profile", "'profile' (the tier to switch to) is required"),
        (ALICE, {"profile": "nope"}, 400, "profile", "nope"),
        (ALICE, {"profile": "gpu", "user": 3}, 400, "user", "'user' must be a user name"),
        (ALICE, {"profile": "gpu", "server_name": 1}, 400, "server_name", "'server_name' must be a string"),
        (ALICE, {"profile": "gpu", "next": ["x"]}, 400, "next", "'next' must be a URL path"),
        (ALICE, {"profile": "small"}, 400, "profile", "already on tier Small"),
        (ALICE, {"profile": "team"}, 403, "profile", "limited to groups: team"),
        (ALICE, {"profile": "gpu", "user": "bob"}, 403, None, "bob"),
        (OPERATOR, {"profile": "gpu", "user": "carol"}, 404, None, "No such user: carol"),
        (ALICE, {"profile": "gpu", "server_name": "other"}, 404, None, "does not exist"),
        ({**ALICE, "kind": "service"}, {"profile": "gpu"}, 403, None, "Only users"),
    ],
    ids=[
        "no-profile", "unknown-tier", "bad-user", "bad-server-name", "bad-next", "same-tier", "group",
        "others-server", "no-such-user", "no-such-server", "service",
    ],
)  # fmt: skip
async def test_refusals_name_the_field_are_audited_and_stop_nothing(
    orch, store, hub, caller, body, status, field, text
):
    with pytest.raises(SwitchRefused) as e:
        await request(orch, caller, body)
    assert e.value.status == status, e.value.message
    assert e.value.field == field
    assert text in e.value.message
    assert e.value.extra() == ({"field": field} if field else {})
    event = last_audit(store)
    assert event["outcome"] == "refused" and event["reason"] == f"{status}: {e.value.message}"
    assert event["actor"] == caller["name"]
    assert event["event"] == ("policy:group" if body.get("profile") == "team" else "request")
    assert not [c for c in hub.calls if c[0] in ("DELETE", "POST", "PATCH")]
    assert store.active_switch("alice", "") is None


async def test_server_not_running_or_busy_is_409(orch, hub):
    hub.add("alice", "stopped", ready=False)
    hub.add("alice", "busy")
    hub.servers[("alice", "busy")]["pending"] = "spawn"
    with pytest.raises(SwitchRefused) as e:
        await request(orch, ALICE, {"profile": "gpu", "server_name": "stopped"})
    assert e.value.status == 409 and "is not running" in e.value.message
    with pytest.raises(SwitchRefused) as e:
        await request(orch, ALICE, {"profile": "gpu", "server_name": "busy"})
    assert e.value.status == 409 and "busy (spawn pending)" in e.value.message


async def test_second_switch_of_a_server_is_409_with_the_first_id(orch, store):
    first = await request(orch, ALICE, {"profile": "gpu"})
    with pytest.raises(SwitchRefused) as e:
        await request(orch, ALICE, {"profile": "gpu"})
    assert e.value.status == 409 and e.value.switch_id == first["id"]
    assert e.value.extra() == {"id": first["id"]}
    assert last_audit(store)["outcome"] == "refused"


async def test_cap_counts_servers_on_their_way_to_the_tier(orch, store, hub):
    # alice's switch to the capped tier is accepted (not yet run): bob's must wait for it
    await request(orch, ALICE, {"profile": "capped"})
    with pytest.raises(SwitchRefused) as e:
        await request(orch, BOB, {"profile": "capped"})
    assert e.value.status == 403 and e.value.policy == "cap"
    assert "Capped tier full (1/1)" in e.value.message
    event = last_audit(store)
    assert event["event"] == "policy:cap" and event["user"] == "bob"


async def test_budget_refuses_a_user_but_not_the_idle_policy(orch, store, hub):
    hub.add("carol", profile="gpu")
    policy = live(hub, store, budgets={"users": {"alice": 0.0, "carol": 0.0}})
    with pytest.raises(SwitchRefused) as e:
        await request(orch, ALICE, {"profile": "gpu"}, live=policy)
    assert e.value.status == 403 and e.value.policy == "budget"
    assert last_audit(store)["event"] == "policy:budget"
    # the idle policy moves carol down to the default tier whatever her budget
    record = await request(
        orch,
        None,
        {"user": "carol", "profile": "small"},
        live=policy,
        requested_by="policy:idle",
        reason="idle",
    )
    assert record["requested_by"] == "policy:idle" and record["to_profile"] == "small"


async def test_hub_down_during_the_checks_is_502(orch, store, hub):
    hub.down = True
    with pytest.raises(SwitchRefused) as e:
        await request(orch, ALICE, {"profile": "gpu"})
    assert e.value.status == 502 and "try again shortly" in e.value.message
    assert last_audit(store)["outcome"] == "refused"


async def test_idle_downshift_goes_through_the_entry_point(orch, store, hub):
    hub.add("dave", profile="gpu")
    hub.add("erin", profile="gpu")
    # the default tier is capped for this test: one downshift fits, the second is refused
    profiles = tiers.normalize_profile_list(
        [
            {
                "display_name": "Small",
                "slug": "small",
                "cpu": 1,
                "mem": "1G",
                "default": True,
                "max_servers": 3,
            },
            {"display_name": "GPU", "slug": "gpu", "cpu": 2, "mem": "2G", "idle_downshift_after": 60},
        ]
    )
    policy = LivePolicy(hub, store, profiles, policy_settings({}))
    watcher = IdleWatcher(policy, store, orch, hub, profiles, policy_settings({}))
    taken = await watcher.check(now=1e12)  # everyone idle for ages
    assert [t["user"] for t in taken] == ["dave"], taken
    refused = [e for e in store.list_audit(limit=20) if e["outcome"] == "refused"]
    assert refused and refused[0]["event"] == "policy:idle" and refused[0]["user"] == "erin"
    assert "not moved: Small tier full (3/3)" in refused[0]["reason"]
    assert "idle for" in refused[0]["reason"]
    downshift = [e for e in store.list_audit(limit=20) if e["outcome"] == "downshift"]
    assert downshift[0]["user"] == "dave" and downshift[0]["reason"].endswith("moved to Small")
    await orch.stop()
