"""Policies on a real hub: groups, caps, budgets, idle downshift, and the
idle culler alongside (a managed ``jupyterhub-idle-culler`` service)."""

import json
import sqlite3

import pytest
import requests
from hubtest import wait_for

pytestmark = pytest.mark.hub

CULL_TIMEOUT = 20

HUB_EXTRA_CONFIG = f"""
c.DSComputeSpawner.profile_list = list(c.DSComputeSpawner.profile_list) + [
    {{"display_name": "Capped", "slug": "capped", "cpu": 1, "mem": "1G", "hourly_cost": 0.2, "max_servers": 1}},
    # 3600/h = 1 per second: budgets run out in seconds
    {{"display_name": "Pricey", "slug": "pricey", "cpu": 1, "mem": "1G", "hourly_cost": 3600.0}},
    {{"display_name": "Dozy", "slug": "dozy", "cpu": 1, "mem": "1G", "hourly_cost": 0.5, "idle_downshift_after": 3}},
]
c.DSComputeService.budgets = {{"users": {{"spender": 2.0}}, "groups": {{"thrifty": 1.5}}}}
c.DSComputeService.accounting_interval = 1
c.DSComputeService.idle_check_interval = 1
c.JupyterHub.services.append({{
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout={CULL_TIMEOUT}", "--cull-every=2"],
}})
c.JupyterHub.load_roles.append({{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}})
"""


def service(hub, method, path, token, **kwargs):
    kwargs.setdefault("timeout", 30)
    return requests.request(
        method, f"{hub.url}/services/ds-compute/{path}", headers={"Authorization": f"token {token}"}, **kwargs
    )


def audit_events(hub, event):
    db = sqlite3.connect(hub.data / "service" / "ds-compute.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM audit WHERE event = ? ORDER BY id", (event,))]
    finally:
        db.close()


def tiers_by_slug(answer):
    return {t["slug"]: t for t in answer["tiers"]}


# -- groups ---------------------------------------------------------------------------


def test_group_restriction_form_api_and_lab(hub):
    outsider = hub.create_user("outsider")
    member = hub.create_user("insider", groups=["gpu-team"])
    # the form: hidden from the outsider, shown to the member
    assert "Restricted" not in hub.login(outsider).get(f"{hub.url}/hub/spawn").text
    assert "Restricted" in hub.login(member).get(f"{hub.url}/hub/spawn").text
    # the API: 403 with the reason, nothing started
    r = hub.spawn(outsider, {"profile": "restricted"}, wait=False)
    assert r.status_code == 403, r.text
    assert "limited to groups: gpu-team" in r.json()["message"]
    assert hub.server_model(outsider) is None
    # the service's tiers (what the Lab dialog reads) and the server extension's
    token = hub.user_token(outsider)
    t = tiers_by_slug(service(hub, "GET", "api/tiers", token).json())
    assert t["restricted"]["allowed"] is False and t["restricted"]["policy"] == "group"
    assert "gpu-team" in t["restricted"]["reason"]
    hub.spawn(outsider, {"profile": "small"})
    try:
        r = hub.server_api(outsider, "ds-compute/api/tiers", token)
        assert r.status_code == 200, r.text
        lab = tiers_by_slug(r.json())
        assert lab["restricted"]["allowed"] is False
        assert "gpu-team" in lab["restricted"]["reason"]
        assert lab["small"]["allowed"] is True
        # switch through the service: 403 and audited
        r = service(hub, "POST", "api/switches", token, json={"profile": "restricted"})
        assert r.status_code == 403, r.text
    finally:
        hub.stop_server(outsider)
    # the member may
    model = hub.spawn(member, {"profile": "restricted"})
    assert model["user_options"]["profile"] == "restricted"
    hub.stop_server(member)


# -- caps ----------------------------------------------------------------------------------


def test_cap_refuses_then_allows_after_stop(hub):
    first = hub.create_user("cap-first")
    second = hub.create_user("cap-second")
    hub.spawn(first, {"profile": "capped"})
    try:
        r = hub.spawn(second, {"profile": "capped"}, wait=False)
        assert r.status_code == 403, r.text
        assert r.json()["message"] == "Capped tier full (1/1), try later or ask an admin"
        assert hub.server_model(second) is None
        # the tiers answer greys it for others, not for the one on it
        t2 = tiers_by_slug(service(hub, "GET", "api/tiers", hub.user_token(second)).json())
        assert t2["capped"]["allowed"] is False and t2["capped"]["policy"] == "cap"
        assert "(1/1)" in t2["capped"]["reason"]
        # a switch of another server onto the full tier is refused by the service too
        hub.spawn(second, {"profile": "small"})
        r = service(hub, "POST", "api/switches", hub.user_token(second), json={"profile": "capped"})
        assert r.status_code == 403, r.text
        assert "Capped tier full (1/1)" in r.json()["message"]
        hub.stop_server(second)
    finally:
        hub.stop_server(first)
    model = hub.spawn(second, {"profile": "capped"})
    assert model["user_options"]["profile"] == "capped"
    hub.stop_server(second)
    # both refusals are in the audit log: the spawner's (start) and the service's (switch)
    events = audit_events(hub, "policy:cap")
    assert any(e["user"] == second and e["reason"].startswith("spawn refused") for e in events), events
    assert any(e["user"] == second and e["reason"].startswith("403") for e in events), events


# -- budgets -------------------------------------------------------------------------------


def test_budget_spent_refuses_expensive_tiers(hub):
    user = hub.create_user("spender")
    token = hub.user_token(user)
    budget = service(hub, "GET", "api/policy", token).json()["budget"]
    assert budget["state"] == "ok" and budget["budget"] == 2.0 and budget["period"] == "month"
    hub.spawn(user, {"profile": "pricey"})
    # 1 per second against a budget of 2: warn, then spent; the server keeps running
    wait_for(
        lambda: service(hub, "GET", "api/policy", token).json()["budget"]["state"] == "spent",
        timeout=30,
        message="budget spent",
    )
    assert hub.server_model(user)["ready"], "a spent budget must not stop a running server"
    t = service(hub, "GET", "api/tiers", token).json()
    assert t["budget"]["state"] == "spent"
    assert tiers_by_slug(t)["gpu"]["allowed"] is False
    assert tiers_by_slug(t)["gpu"]["policy"] == "budget"
    assert tiers_by_slug(t)["small"]["allowed"] is True
    hub.stop_server(user)
    r = hub.spawn(user, {"profile": "pricey"}, wait=False)
    assert r.status_code == 403, r.text
    assert "budget is spent" in r.json()["message"]
    # the default tier still starts; switching up is refused
    hub.spawn(user, {"profile": "small"})
    r = service(hub, "POST", "api/switches", token, json={"profile": "gpu"})
    assert r.status_code == 403, r.text
    assert "budget is spent" in r.json()["message"]
    hub.stop_server(user)


def test_group_budget_is_shared(hub):
    a = hub.create_user("thrifty-a", groups=["thrifty"])
    b = hub.create_user("thrifty-b", groups=["thrifty"])
    hub.spawn(a, {"profile": "pricey"})
    tb = hub.user_token(b)
    wait_for(
        lambda: service(hub, "GET", "api/policy", tb).json()["budget"]["state"] == "spent",
        timeout=30,
        message="group budget spent",
    )
    hub.stop_server(a)
    budget = service(hub, "GET", "api/policy", tb).json()["budget"]
    assert budget["kind"] == "group" and budget["name"] == "thrifty"
    r = hub.spawn(b, {"profile": "pricey"}, wait=False)
    assert r.status_code == 403, r.text
    assert "group thrifty" in r.json()["message"]


# -- idle downshift and the idle culler -------------------------------------------------------


def test_idle_downshift_to_default(hub):
    user = hub.create_user("sleepy")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "dozy"})

    def moved():
        m = hub.server_model(user)
        return m and m["ready"] and m["user_options"].get("profile") == "small" and m

    wait_for(moved, timeout=90, interval=0.5, message="idle downshift to small")
    switches = service(hub, "GET", f"api/switches?user={user}", token).json()["switches"]
    assert switches[0]["requested_by"] == "policy:idle"
    assert switches[0]["from_profile"] == "dozy" and switches[0]["to_profile"] == "small"
    wait_for(
        lambda: (
            service(hub, "GET", f"api/switches/{switches[0]['id']}", token).json()["state"] == "succeeded"
        ),
        timeout=30,
    )
    # the user sees why (Lab reads the notices of api/tiers)
    notices = service(hub, "GET", "api/tiers", token).json()["notices"]
    assert notices and notices[0]["kind"] == "idle-downshift"
    assert "idle for" in notices[0]["message"] and "Dozy" in notices[0]["message"]
    hub.stop_server(user)


def test_idle_culler_stops_and_detaches(hub):
    user = hub.create_user("culled")
    hub.spawn(user, {"profile": "small"})
    registry = hub.data / "volumes" / ".attachments" / "culled.json"
    assert registry.exists()
    assert json.loads(registry.read_text())["server"].startswith("culled")
    wait_for(lambda: hub.server_model(user) is None, timeout=CULL_TIMEOUT + 60, interval=1, message="culled")
    assert not registry.exists(), "a culled server must release its volume"
    # and it starts again with its volume
    hub.spawn(user, {"profile": "small"})
    assert registry.exists()
    hub.stop_server(user)
