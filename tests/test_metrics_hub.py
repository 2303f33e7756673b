"""``/services/ds-compute/metrics`` on a real hub: Prometheus text that
``prometheus_client``'s parser reads, counting what happened; by default only
for a token with ``read:metrics`` (a Prometheus service, as the README says)
or a hub admin's."""

import secrets

import pytest
import requests
from hubtest import wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.hub

PROMETHEUS_TOKEN = secrets.token_hex(16)

HUB_EXTRA_CONFIG = f"""
# Prometheus as the README's "Metrics" section sets it up
c.JupyterHub.services = list(c.JupyterHub.services) + [{{"name": "prometheus", "api_token": "{PROMETHEUS_TOKEN}"}}]
c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + [{{
    "name": "prometheus",
    "scopes": ["read:metrics", "access:services!service=ds-compute"],
    "services": ["prometheus"],
}}]
c.DSComputeSpawner.profile_list = list(c.DSComputeSpawner.profile_list) + [
    {{"display_name": "Dozy", "slug": "dozy", "cpu": 1, "mem": "1G", "hourly_cost": 0.5, "idle_downshift_after": 3}},
    {{"display_name": "Capped", "slug": "capped", "cpu": 1, "mem": "1G", "hourly_cost": 0.2, "max_servers": 0}},
]
c.DSComputeService.accounting_interval = 1
c.DSComputeService.idle_check_interval = 1
"""


def metrics(hub, token=None, scheme="token"):
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    return requests.get(f"{hub.url}/services/ds-compute/metrics", headers=headers, timeout=10)


def scrape(hub, token=PROMETHEUS_TOKEN):
    # Prometheus sends "Authorization: Bearer <credentials>"
    r = metrics(hub, token, scheme="Bearer")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def service(hub, method, path, token, **kwargs):
    return requests.request(
        method,
        f"{hub.url}/services/ds-compute/{path}",
        headers={"Authorization": f"token {token}"},
        timeout=30,
        **kwargs,
    )


def test_metrics_need_read_metrics_or_admin(hub):
    # anonymous: refused, and no metric text in the answer
    r = metrics(hub)
    assert r.status_code == 403, r.text
    assert "read:metrics" in r.text and "ds_compute_" not in r.text
    # a user's own token (no read:metrics) and a token that is not the hub's: refused
    plain = hub.create_user("metrics-plain")
    r = metrics(hub, hub.user_token(plain))
    assert r.status_code == 403 and "ds_compute_" not in r.text
    r = metrics(hub, "not-a-token")
    assert r.status_code == 403 and "ds_compute_" not in r.text
    # a service token without read:metrics (the tests' admin service): refused
    assert metrics(hub, hub.admin_token).status_code == 403
    # Prometheus' token, with either scheme, and a hub admin's token: the metrics
    assert "ds_compute_running_servers" in metrics(hub, PROMETHEUS_TOKEN).text
    assert ("ds_compute_running_servers", (("tier", "small"),)) in scrape(hub)
    hub.create_user("admin")  # an admin of the embedded default
    r = metrics(hub, hub.user_token("admin"))
    assert r.status_code == 200 and "ds_compute_running_servers" in r.text, r.text[:300]


def test_metrics_count_what_happened(hub):
    before = scrape(hub)
    assert value(before, "ds_compute_running_servers", tier="gpu") == 0
    user = hub.create_user("metered")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    try:
        # a switch small -> gpu
        r = service(hub, "POST", "api/switches", token, json={"profile": "gpu"})
        assert r.status_code == 202, r.text
        sid = r.json()["id"]
        wait_for(
            lambda: service(hub, "GET", f"api/switches/{sid}", token).json()["state"] == "succeeded",
            timeout=120,
            interval=0.5,
        )
        # refusals: a group-limited tier and a full tier, through the switch API
        assert service(hub, "POST", "api/switches", token, json={"profile": "restricted"}).status_code == 403
        assert service(hub, "POST", "api/switches", token, json={"profile": "capped"}).status_code == 403
        # and at spawn, by the spawner
        other = hub.create_user("metered-2")
        assert hub.spawn(other, {"profile": "capped"}, wait=False).status_code == 403
        wait_for(
            lambda: value(scrape(hub), "ds_compute_running_servers", tier="gpu") == 1,
            timeout=10,
            message="running gpu gauge",
        )
        # the spawner reports its refusal to the service in the background
        wait_for(
            lambda: value(scrape(hub), "ds_compute_policy_refusals_total", policy="cap", tier="capped") == 2,
            timeout=15,
            message="the spawner's cap refusal counted",
        )
        after = scrape(hub)
        assert (
            value(after, "ds_compute_switches_total", from_tier="small", to_tier="gpu", outcome="succeeded")
            == 1
        )
        assert value(after, "ds_compute_switch_duration_seconds_count", outcome="succeeded") == 1
        assert value(after, "ds_compute_switch_duration_seconds_sum", outcome="succeeded") > 0
        assert value(after, "ds_compute_switch_duration_seconds_bucket", outcome="succeeded", le="+Inf") == 1
        assert value(after, "ds_compute_running_servers", tier="small") == 0
        assert value(after, "ds_compute_policy_refusals_total", policy="group", tier="restricted") == 1
        assert value(after, "ds_compute_policy_refusals_total", policy="cap", tier="capped") == 2
        wait_for(
            lambda: value(scrape(hub), "ds_compute_cost_accrued_total", tier="gpu") > 0,
            timeout=10,
            message="gpu cost accrued",
        )
        assert value(after, "ds_compute_cost_accrued_total", tier="small") > 0
    finally:
        hub.stop_server(user)


def test_metrics_count_idle_downshifts(hub):
    user = hub.create_user("dozer")
    hub.spawn(user, {"profile": "dozy"})
    try:
        wait_for(
            lambda: (
                value(
                    scrape(hub),
                    "ds_compute_idle_downshifts_total",
                    from_tier="dozy",
                    to_tier="small",
                    action="downshift",
                )
                == 1
            ),
            timeout=60,
            interval=0.5,
            message="idle downshift counted",
        )
        wait_for(
            lambda: (
                (hub.server_model(user) or {}).get("ready")
                and hub.server_model(user)["user_options"]["profile"] == "small"
            ),
            timeout=90,
            interval=0.5,
        )
        # the server is ready a moment before the orchestrator records the switch as finished
        wait_for(
            lambda: (
                value(
                    scrape(hub),
                    "ds_compute_switches_total",
                    from_tier="dozy",
                    to_tier="small",
                    outcome="succeeded",
                )
                == 1
            ),
            timeout=30,
            interval=0.5,
            message="idle switch counted",
        )
    finally:
        hub.stop_server(user)
