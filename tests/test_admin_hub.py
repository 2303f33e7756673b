"""The admin panel (``/services/ds-compute/admin``) on a real hub: admins
only, the table, filters, actions (switch, stop, start), the audit log, the
charts after a switch; JupyterHub's own admin page data (the *Profile*
column); the spawn page's budget line and *Request access* page."""

import re
import xml.etree.ElementTree as ET

import pytest
from hubtest import wait_for

pytestmark = pytest.mark.hub

SVG = "{http://www.w3.org/2000/svg}"

# a tier that can be requested, a budget for the spawn page's line, accounting often
HUB_EXTRA_CONFIG = """
c.DSComputeSpawner.profile_list = list(c.DSComputeSpawner.profile_list) + [
    {"display_name": "Askable", "slug": "askable", "cpu": 1, "mem": "1G", "hourly_cost": 4.0,
     "allowed_groups": ["askable-team"], "max_grant": "2d"},
]
c.DSComputeService.budgets = {"default": 1000}
c.DSComputeService.accounting_interval = 1
"""


def admin_page(hub, session, query=""):
    return session.get(f"{hub.url}/services/ds-compute/admin{query}")


def rows(html):
    """``{(user, server): {"tier", "state"}}`` from the admin table."""
    out = {}
    for m in re.finditer(
        r'<tr data-user="([^"]*)" data-server="([^"]*)" data-tier="([^"]*)" data-state="([^"]*)">(.*?)</tr>',
        html,
        re.S,
    ):
        out[(m.group(1), m.group(2))] = {"tier": m.group(3), "state": m.group(4), "html": m.group(5)}
    return out


def xsrf(html):
    return re.search(r'name="_xsrf" value="([^"]+)"', html).group(1)


def charts(html):
    """``{chart id: (svg root, figure html)}``; each SVG must parse."""
    out = {}
    for m in re.finditer(
        r'<figure class="ds-chart-figure[^"]*" data-chart="([^"]+)".*?</figure>', html, re.S
    ):
        svg = re.search(r"<svg .*?</svg>", m.group(0), re.S).group(0)
        out[m.group(1)] = (ET.fromstring(svg), m.group(0))
    return out


def bars(root):
    return {
        g.get("data-label"): float(g.get("data-value"))
        for g in root.iter(SVG + "g")
        if g.get("class") == "ds-bar"
    }


@pytest.fixture(scope="module")
def admin(hub):
    # "admin" is an admin of the embedded default (DS_COMPUTE_ADMIN_USERS)
    return hub.login("admin", hub.admin_password)


def test_hub_admin_profile_column(hub):
    """JupyterHub's admin page shows user_options.profile: check it in the API model it reads."""
    user = hub.create_user("profiled")
    hub.spawn(user, {"profile": "gpu"})
    model = hub.api("GET", f"/users/{user}").json()
    assert model["servers"][""]["user_options"]["profile"] == "gpu"
    hub.stop_server(user)


def test_non_admin_gets_403(hub):
    s = hub.login("plainuser")
    r = s.get(f"{hub.url}/services/ds-compute/admin")
    assert r.status_code == 403
    assert "admins only" in r.text
    assert s.get(f"{hub.url}/services/ds-compute/admin/audit").status_code == 403
    # and may not post actions
    r = s.post(f"{hub.url}/services/ds-compute/admin/action", data={"action": "stop", "user": "x"})
    assert r.status_code == 403


def test_table_filters_and_actions(hub, admin):
    alice = hub.create_user("alice-adm")
    bob = hub.create_user("bob-adm")
    hub.spawn(alice, {"profile": "gpu"})
    try:
        page = admin_page(hub, admin)
        assert page.status_code == 200, page.text[:500]
        table = rows(page.text)
        a = table[(alice, "")]
        assert a["tier"] == "gpu" and a["state"] == "running"
        assert alice in a["html"] and "<code>alice-2dadm</code>" in a["html"]  # the volume id
        # the volume as the local driver described it at start: driver, where attached
        assert 'data-volume-id="alice-2dadm" data-volume-driver="local"' in a["html"]
        assert re.search(r'data-attached-to="[^"]+"', a["html"]), a["html"]
        assert table[(bob, "")]["state"] == "stopped"
        assert "detached" in table[(bob, "")]["html"]
        assert 'data-volume-id=""' in table[(bob, "")]["html"]  # never started: no volume yet
        # filters
        only_gpu = rows(admin_page(hub, admin, "?tier=gpu").text)
        assert set(only_gpu) == {(alice, "")}
        stopped = rows(admin_page(hub, admin, "?state=stopped").text)
        assert (bob, "") in stopped and (alice, "") not in stopped

        # switch alice to small from the panel
        r = admin.post(
            f"{hub.url}/services/ds-compute/admin/action",
            data={
                "_xsrf": xsrf(page.text),
                "action": "switch",
                "user": alice,
                "server_name": "",
                "profile": "small",
            },
        )
        assert r.status_code == 200 and "Switching" in r.text, r.text[:800]
        # the panel shows "switching" until the orchestrator has verified the new tier
        wait_for(
            lambda: (
                rows(admin_page(hub, admin).text)[(alice, "")] | {"html": ""}
                == {"tier": "small", "state": "running", "html": ""}
            ),
            timeout=120,
            interval=0.5,
            message="switch to small",
        )
        assert hub.server_model(alice)["user_options"]["profile"] == "small"
        # the charts show it: a succeeded switch today, alice's cost, servers on both tiers
        shown = charts(admin_page(hub, admin).text)
        root, html = shown["ds-chart-switches"]
        assert 'data-empty="false"' in html
        assert list(bars(root).values())[-1] >= 1, html[:2000]  # today's bar
        assert "Median duration" in html
        root, html = shown["ds-chart-cost-user"]
        assert bars(root).get(alice, 0) > 0, html[:2000]

        def peaks():
            root, _ = charts(admin_page(hub, admin).text)["ds-chart-servers"]
            return {
                g.get("data-label"): int(g.get("data-peak"))
                for g in root.iter(SVG + "g")
                if g.get("data-peak")
            }

        # the next accounting poll (every second here) sees her on small
        wait_for(
            lambda: peaks().get("GPU", 0) >= 1 and peaks().get("Small", 0) >= 1, timeout=15, message="servers"
        )
        # start bob on manycore
        page = admin_page(hub, admin)
        r = admin.post(
            f"{hub.url}/services/ds-compute/admin/action",
            data={
                "_xsrf": xsrf(page.text),
                "action": "start",
                "user": bob,
                "server_name": "",
                "profile": "manycore",
            },
        )
        assert r.status_code == 200 and "Starting" in r.text, r.text[:800]
        assert hub.wait_ready(bob)["user_options"]["profile"] == "manycore"
        # stop alice
        r = admin.post(
            f"{hub.url}/services/ds-compute/admin/action",
            data={"_xsrf": xsrf(page.text), "action": "stop", "user": alice, "server_name": ""},
        )
        assert r.status_code == 200 and "Stopping" in r.text, r.text[:800]
        wait_for(lambda: hub.server_model(alice) is None, timeout=60, message="alice stopped")
        # stopped: still listed with her volume, detached (described after detach)
        stopped_row = rows(admin_page(hub, admin, f"?user={alice}").text)[(alice, "")]
        assert stopped_row["state"] == "stopped"
        assert 'data-volume-id="alice-2dadm"' in stopped_row["html"]
        assert 'data-attached-to=""' in stopped_row["html"]
        # a POST without the xsrf token is not accepted as the admin
        r = admin.post(
            f"{hub.url}/services/ds-compute/admin/action",
            data={"action": "stop", "user": bob, "server_name": ""},
        )
        assert r.status_code == 403
        assert hub.server_model(bob)["ready"]
        # a refused start shows the hub's reason
        r = admin.post(
            f"{hub.url}/services/ds-compute/admin/action",
            data={"_xsrf": xsrf(page.text), "action": "start", "user": alice, "profile": "restricted"},
        )
        assert "limited to groups: gpu-team" in r.text

        audit = admin.get(f"{hub.url}/services/ds-compute/admin/audit?user={alice}")
        assert audit.status_code == 200
        assert 'data-event="final" data-outcome="succeeded"' in audit.text
        assert 'data-event="admin:stop"' in audit.text
        assert "gpu &rarr; small" in audit.text
    finally:
        for u in (alice, bob):
            if hub.server_model(u) is not None:
                hub.stop_server(u)


def test_spawn_page_budget_and_request_access(hub, admin):
    """A user outside the Askable tier's group sees its price, budget and a
    Request access link; the request page (xsrf-checked) files the request,
    which the admin page lists with the requester's usage chart."""
    user = hub.create_user("asker-adm")
    s = hub.login(user)
    page = s.get(f"{hub.url}/hub/spawn")
    assert page.status_code == 200, page.text[:500]
    assert "Your budget this month: <strong>$1,000.00</strong> left" in page.text
    assert "about 10 d 10 h on this tier" in page.text  # $1000 at $4/h
    link = re.search(r'href="([^"]*request\?profile=askable)"', page.text)
    assert link, page.text[:3000]
    form = s.get(f"{hub.url}{link.group(1)}")
    assert form.status_code == 200 and 'id="ds-request-form"' in form.text, form.text[:1000]
    body = {"profile": "askable", "duration": "1d", "reason": "a <b>big</b> model"}
    # the cookie session's POST needs the form's xsrf token
    assert s.post(f"{hub.url}/services/ds-compute/request", data=body).status_code == 403
    bad = s.post(
        f"{hub.url}/services/ds-compute/request", data=dict(body, duration="9d", _xsrf=xsrf(form.text))
    )
    assert bad.status_code == 400 and 'data-field="duration"' in bad.text
    done = s.post(f"{hub.url}/services/ds-compute/request", data=dict(body, _xsrf=xsrf(form.text)))
    assert done.status_code == 200 and 'data-testid="request-done"' in done.text, done.text[:1000]
    request_id = re.search(r'data-testid="request-done" data-request="([^"]+)"', done.text).group(1)
    page = admin_page(hub, admin).text
    row = re.search(rf'<tr data-request="{request_id}".*?</form>', page, re.S).group(0)
    assert "a &lt;b&gt;big&lt;/b&gt; model" in row
    (root, html), *_ = charts(row).values()
    assert root.get("id") == f"ds-usage-{request_id}" and user in root.find(SVG + "title").text
