"""The admin panel (``/services/ds-compute/admin``) on a real hub: admins
only, the table, filters, actions (switch, stop, start), the audit log; and
JupyterHub's own admin page data (the *Profile* column)."""

import re

import pytest
from hubtest import wait_for

pytestmark = pytest.mark.hub


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
