"""One source of truth for tiers, a real boundary between hub and service
(issue 13 §1, §2): a callable ``profile_list`` and a callable override reach
the service through the spawner's catalogue (its state), a switch is
validated before anything stops, the service keeps its data elsewhere and
the spawner asks it for budgets over its API; importing the spawner does not
import the service; every setting is in ``--help-all``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import hub_workdir
from hubtest import VENV_BIN, Hub, wait_for
from test_switch_hub import request_switch, wait_switch

from jupyter_ds_compute import catalogue, tiers

# -- pure -------------------------------------------------------------------------------------


def test_spawner_import_does_not_import_the_service():
    code = (
        "import sys, jupyter_ds_compute.spawner\n"
        "bad = [m for m in sys.modules if m.startswith('jupyter_ds_compute.service')"
        " or m == 'jupyterhub.services.auth' or m == 'prometheus_client']\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_help_all_lists_every_setting_with_help():
    from jupyter_ds_compute.policy import PolicySettings
    from jupyter_ds_compute.service.app import DSComputeService

    out = subprocess.run(
        [str(VENV_BIN / "jupyter-ds-compute-service"), "--help-all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for cls in (DSComputeService, PolicySettings):
        for name, trait in cls.class_own_traits(config=True).items():
            assert f"--{cls.__name__}.{name}=" in out, name
            assert trait.help, f"{cls.__name__}.{name} has no help"
    # the policy settings are the service's too (c.DSComputeService.budgets keeps working)
    for name in PolicySettings.SETTINGS:
        assert f"--DSComputeService.{name}=" in out, name


def test_catalogue_is_json_and_validates_like_the_spawner():
    pl = [
        {"display_name": "A", "slug": "a", "cpu": 1, "spawner_override": {"cmd": lambda s: ["x"]}},
        {
            "display_name": "B",
            "slug": "b",
            "hourly_cost": 1,
            "backend": "local",
            "profile_options": {
                "img": {
                    "display_name": "Image",
                    "choices": {"x": {"display_name": "X", "spawner_override": {"image": lambda s: "i"}}},
                    "unlisted_choice": {"enabled": True, "validation_regex": "^[a-z]+$"},
                }
            },
        },
    ]
    cat = json.loads(json.dumps(catalogue.catalogue(pl)))
    profiles = catalogue.from_state({"tiers": cat})
    assert [p["slug"] for p in profiles] == ["a", "b"]
    assert "spawner_override" not in json.dumps(cat) and "backend" not in cat["profiles"][1]
    ok = {"profile": "b", "img": "unlisted-choice", "img--unlisted-choice": "abc"}
    assert tiers.validate_user_options(profiles, ok, []) == tiers.validate_user_options(pl, ok, [])
    with pytest.raises(tiers.TierOptionsError) as e:
        tiers.validate_user_options(profiles, dict(ok, **{"img--unlisted-choice": "A!"}), [])
    assert e.value.field == "img--unlisted-choice"
    assert catalogue.from_state({}) is None and catalogue.from_state({"tiers": {"version": 99}}) is None


# -- a real hub: callable profile_list, service data elsewhere ----------------------------------

CALLABLE_CONFIG = """
def per_user_tiers(spawner):
    tiers = [
        {"display_name": "Small", "slug": "small", "default": True, "cpu": 1, "mem": "1G", "hourly_cost": 0.01},
        {"display_name": "Medium", "slug": "medium", "cpu": 1, "mem": "1G", "hourly_cost": 0.5,
         "profile_options": {"flavour": {"display_name": "Flavour", "choices": {
             "plain": {"display_name": "Plain", "spawner_override": {"environment": {"FLAVOUR": "plain"}}},
             "spicy": {"display_name": "Spicy",
                       "spawner_override": {"environment": lambda s: {"FLAVOUR": "spicy-" + s.user.name}}},
         }}}},
    ]
    if spawner.user.name.startswith("vip"):
        tiers.append({"display_name": "VIP", "slug": "vip", "cpu": 1, "mem": "1G", "hourly_cost": 0.02})
    return tiers

c.DSComputeSpawner.profile_list = per_user_tiers
c.DSComputeService.data_dir = os.environ["T_SERVICE_DATA"]
c.DSComputeService.budgets = {"users": {"broke": 0.0}}
"""


@pytest.fixture(scope="module")
def callable_hub():
    workdir = hub_workdir("tier-source")
    service_data = hub_workdir("tier-source-service-data")
    h = Hub(workdir, extra_config=CALLABLE_CONFIG, env={"T_SERVICE_DATA": service_data})
    h.service_data = service_data
    h.start()
    yield h
    h.stop()


def _service_pid(hub):
    with open(os.path.join(hub.service_data, "service.lock")) as f:
        return int(f.read().strip())


def test_callable_profile_list_switch_is_validated_before_stopping(callable_hub):
    hub = callable_hub
    user = hub.create_user("callable")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    before = hub.server_model(user)
    # the service knows this user's tiers (computed by the spawner for them)
    r = hub.server_api(user, "ds-compute/api/tiers", token)
    assert r.status_code == 200, r.text
    assert [t["slug"] for t in r.json()["tiers"]] == ["small", "medium"]
    # a bad option and a tier of another user: 400 naming the field, nothing stopped
    r = request_switch(hub, user, token, "medium", flavour="sour")
    assert r.status_code == 400, r.text
    assert r.json().get("field") == "flavour" and "sour" in r.json()["message"]
    r = request_switch(hub, user, token, "vip")
    assert r.status_code == 400, r.text
    assert r.json().get("field") == "profile"
    after = hub.server_model(user)
    assert after["ready"] and after["started"] == before["started"], "a refused switch stopped the server"
    # a good one works, with the callable override applied by the spawner
    r = request_switch(hub, user, token, "medium", flavour="spicy")
    assert r.status_code == 202, r.text
    record = wait_switch(hub, token, r.json()["id"])
    assert record["state"] == "succeeded", record
    assert hub.server_model(user)["user_options"] == {"profile": "medium", "flavour": "spicy"}


def test_per_user_tiers_reach_the_service(callable_hub):
    hub = callable_hub
    user = hub.create_user("vipuser")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    r = hub.server_api(user, "ds-compute/api/tiers", token)
    assert [t["slug"] for t in r.json()["tiers"]] == ["small", "medium", "vip"]
    r = request_switch(hub, user, token, "vip")
    assert r.status_code == 202, r.text
    assert wait_switch(hub, token, r.json()["id"])["state"] == "succeeded"


def test_service_keeps_its_data_elsewhere_and_the_spawner_asks_it_for_budgets(callable_hub):
    hub = callable_hub
    pid = _service_pid(hub)
    # the service's store is in its own data dir; the hub's has none
    assert os.path.exists(os.path.join(hub.service_data, "ds-compute.sqlite"))
    assert not any(name.endswith("ds-compute.sqlite") for _, _, names in os.walk(hub.data) for name in names)
    # a spend budget of 0 is spent at once: the spawner learns it from the service's API
    user = hub.create_user("broke")
    r = hub.api("POST", f"/users/{user}/server", json={"profile": "medium", "flavour": "plain"})
    assert r.status_code == 403, r.text
    assert "budget is spent" in r.text
    assert not hub.server_model(user) or not hub.server_model(user).get("ready")

    # the refusal is in the service's audit log (reported over its API, not written into its file)
    def refused():
        import sqlite3

        db = sqlite3.connect(os.path.join(hub.service_data, "ds-compute.sqlite"), timeout=5)
        try:
            rows = db.execute(
                "SELECT reason FROM audit WHERE user = ? AND event = 'policy:budget' AND outcome = 'refused'",
                (user,),
            ).fetchall()
        finally:
            db.close()
        return any("spawn refused" in r[0] for r in rows)

    wait_for(refused, timeout=20, message="the spawn refusal in the service's audit log")
    # the cheap default tier still starts
    hub.spawn(user, {"profile": "small"})
    # the service process never opened anything of the hub's data dir (its sqlite included)
    hub_data = os.path.realpath(hub.data)
    opened = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            opened.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    assert any(p.startswith(os.path.realpath(hub.service_data)) for p in opened), opened
    assert not [p for p in opened if p.startswith(hub_data + os.sep) or p.endswith("jupyterhub.sqlite")], (
        opened
    )


def test_budget_check_with_the_service_down_lets_the_start_through(callable_hub):
    hub = callable_hub
    pid = _service_pid(hub)
    os.kill(pid, 19)  # SIGSTOP: the service does not answer
    try:
        user = hub.create_user("broke2")
        # no budget for broke2 anyway; what matters: the start neither hangs nor fails
        hub.spawn(user, {"profile": "medium", "flavour": "plain"}, timeout=60)
        assert "Budgets not checked for the start of broke2" in hub.log_tail(400)
    finally:
        os.kill(pid, 18)  # SIGCONT


# -- a real hub: a callable override inside a static list ------------------------------------------

OVERRIDE_CONFIG = """
c.DSComputeSpawner.profile_list = [
    {"display_name": "Small", "slug": "small", "default": True, "cpu": 1, "mem": "1G", "hourly_cost": 0.01},
    {"display_name": "Lambda", "slug": "lambda", "cpu": 1, "mem": "1G", "hourly_cost": 0.02,
     "spawner_override": {"environment": lambda spawner: {"OVERRIDDEN_FOR": spawner.user.name}}},
]
"""


def test_callable_override_in_a_static_list():
    hub = Hub(hub_workdir("callable-override"), extra_config=OVERRIDE_CONFIG)
    hub.start()
    try:
        user = hub.create_user("override")
        token = hub.user_token(user)
        hub.spawn(user, {"profile": "small"})
        r = hub.server_api(user, "ds-compute/api/tiers", token)
        assert [t["slug"] for t in r.json()["tiers"]] == ["small", "lambda"]
        r = request_switch(hub, user, token, "nope")
        assert r.status_code == 400 and r.json().get("field") == "profile", r.text
        r = request_switch(hub, user, token, "lambda")
        assert r.status_code == 202, r.text
        assert wait_switch(hub, token, r.json()["id"])["state"] == "succeeded"
        from test_operator_config_hub import server_env

        assert server_env(user)["OVERRIDDEN_FOR"] == user
    finally:
        hub.stop()
