"""The service authorizes by the token's scopes, never the ``admin`` flag
(issue 12 §3), on a real hub (embedded default + named servers).

- a hub admin's token restricted to ``access:services!service=ds-compute``:
  403 on bob's server, the admin page, the admin actions and bob's switches;
  the admin's full token and browser session: allowed;
- alice's default server's own token (``JUPYTERHUB_API_TOKEN``): its server
  only, never ``alice/n1``;
- a user whose role holds ``servers!user=bob``: may switch bob's server.
"""

import pytest
import requests
from conftest import server_processes
from hubtest import wait_for

pytestmark = pytest.mark.hub

HUB_EXTRA_CONFIG = """
c.JupyterHub.allow_named_servers = True
c.JupyterHub.load_roles = list(c.JupyterHub.load_roles) + [
    {"name": "bob-operator", "scopes": ["servers!user=bob"], "users": ["carol"]},
]
"""

SERVICE = "/services/ds-compute/"
FINAL = ("succeeded", "rolled_back", "failed")


def call(hub, method, path, token, **kwargs):
    return requests.request(
        method,
        f"{hub.url}{SERVICE}{path}",
        headers={"Authorization": f"token {token}"},
        allow_redirects=False,
        timeout=30,
        **kwargs,
    )


def switch(hub, token, user, profile, server_name=""):
    return call(
        hub,
        "POST",
        "api/switches",
        token,
        json={"user": user, "server_name": server_name, "profile": profile},
    )


def wait_switch(hub, token, switch_id, timeout=180):
    def done():
        rec = call(hub, "GET", f"api/switches/{switch_id}", token)
        rec.raise_for_status()
        rec = rec.json()
        return rec if rec["state"] in FINAL else None

    return wait_for(done, timeout=timeout, interval=0.3, message=f"switch {switch_id} to finish")


def tier_and_started(hub, user, server_name=""):
    model = hub.server_model(user, server_name)
    assert model and model["ready"] and not model["pending"], model
    return model["user_options"].get("profile"), model["started"]


def server_token(user, server_name):
    """The ``JUPYTERHUB_API_TOKEN`` of ``user``'s running server ``server_name``."""
    for env in server_processes(user).values():
        if env.get("JUPYTERHUB_SERVER_NAME", "") == server_name and env.get("JUPYTERHUB_API_TOKEN"):
            return env["JUPYTERHUB_API_TOKEN"]
    raise AssertionError(f"no process of {user}'s server {server_name!r}")


@pytest.fixture(scope="module")
def bob(hub):
    hub.create_user("bob")
    hub.spawn("bob", {"profile": "small"})
    yield "bob"
    hub.stop_server("bob")


def test_restricted_admin_token_is_refused_everywhere(hub, bob):
    restricted = hub.user_token("admin", scopes=["access:services!service=ds-compute"])
    who = requests.get(f"{hub.url}/hub/api/user", headers={"Authorization": f"token {restricted}"}).json()
    assert who["admin"] is True and "servers" not in who["scopes"]  # the flag is there; the scopes are not
    before = tier_and_started(hub, bob)

    r = switch(hub, restricted, bob, "gpu")
    assert r.status_code == 403, r.text
    assert "servers!user=bob" in r.json()["message"]
    assert call(hub, "GET", "admin", restricted).status_code == 403
    assert call(hub, "GET", "admin/audit", restricted).status_code == 403
    r = call(hub, "POST", "admin/action", restricted, data={"action": "stop", "user": bob})
    assert r.status_code == 403, r.text
    r = call(
        hub, "POST", "admin/action", restricted, data={"action": "switch", "user": bob, "profile": "gpu"}
    )
    assert r.status_code == 403, r.text
    assert call(hub, "GET", f"api/switches?user={bob}", restricted).status_code == 403
    assert call(hub, "GET", f"api/tiers?user={bob}", restricted).status_code == 403
    assert call(hub, "GET", f"api/policy?user={bob}", restricted).status_code == 403
    # no user: only the admin's own (none), not everyone's
    r = call(hub, "GET", "api/switches", restricted)
    assert r.status_code == 200 and all(s["user"] == "admin" for s in r.json()["switches"])

    # nothing stopped or restarted; the refusal is in the audit log
    assert tier_and_started(hub, bob) == before
    full = hub.user_token("admin")
    audit = call(hub, "GET", f"admin/audit?user={bob}", full)
    assert audit.status_code == 200
    assert "servers!user=bob" in audit.text


def test_full_admin_token_and_session_are_allowed(hub, bob):
    full = hub.user_token("admin")
    assert call(hub, "GET", "admin", full).status_code == 200
    assert call(hub, "GET", f"api/switches?user={bob}", full).status_code == 200
    assert call(hub, "GET", f"api/tiers?user={bob}", full).status_code == 200
    session = hub.login("admin", hub.admin_password)
    page = session.get(f"{hub.url}{SERVICE}admin")
    assert page.status_code == 200, page.text[:300]
    assert "admin/action" in page.text and bob in page.text
    # a plain user's session is not an admin's, whatever else it may do
    hub.create_user("plain")
    plain = hub.login("plain")
    assert plain.get(f"{hub.url}{SERVICE}admin").status_code == 403

    r = switch(hub, full, bob, "gpu")
    assert r.status_code == 202, r.text
    record = wait_switch(hub, full, r.json()["id"])
    assert record["state"] == "succeeded", record
    assert tier_and_started(hub, bob)[0] == "gpu"


def test_servers_user_scope_may_switch_that_users_server(hub, bob):
    hub.create_user("carol")
    token = hub.user_token("carol")
    who = requests.get(f"{hub.url}/hub/api/user", headers={"Authorization": f"token {token}"}).json()
    assert who["admin"] is False and "servers!user=bob" in who["scopes"]
    # not an admin: no admin page, no one else's servers
    assert call(hub, "GET", "admin", token).status_code == 403
    hub.create_user("dora")
    hub.spawn("dora", {"profile": "small"})
    try:
        r = switch(hub, token, "dora", "gpu")
        assert r.status_code == 403, r.text
    finally:
        hub.stop_server("dora")

    current = tier_and_started(hub, bob)[0]
    target = "small" if current != "small" else "manycore"
    r = switch(hub, token, bob, target)
    assert r.status_code == 202, r.text
    record = wait_switch(hub, token, r.json()["id"])
    assert record["state"] == "succeeded", record
    assert tier_and_started(hub, bob)[0] == target
    # and may read bob's switches (servers includes read:servers)
    listed = call(hub, "GET", f"api/switches?user={bob}", token).json()["switches"]
    assert record["id"] in [s["id"] for s in listed]


def test_server_token_acts_only_on_its_own_server(hub):
    alice = hub.create_user("alice")
    hub.spawn(alice, {"profile": "small"})
    hub.spawn(alice, {"profile": "small"}, server_name="n1")
    full = hub.user_token(alice)
    try:
        default_token = server_token(alice, "")
        assert default_token != server_token(alice, "n1")
        who = requests.get(
            f"{hub.url}/hub/api/user", headers={"Authorization": f"token {default_token}"}
        ).json()
        assert f"access:servers!server={alice}/" in who["scopes"]
        n1_before = tier_and_started(hub, alice, "n1")

        r = switch(hub, default_token, alice, "gpu", server_name="n1")
        assert r.status_code == 403, r.text
        assert "n1" in r.json()["message"]
        assert tier_and_started(hub, alice, "n1") == n1_before  # nothing stopped

        # its own server: allowed (no server_name: the token's server)
        r = call(hub, "POST", "api/switches", default_token, json={"profile": "gpu"})
        assert r.status_code == 202, r.text
        record = wait_switch(hub, full, r.json()["id"])
        assert record["state"] == "succeeded", record
        assert (record["user"], record["server_name"]) == (alice, "")
        assert tier_and_started(hub, alice)[0] == "gpu"
        assert tier_and_started(hub, alice, "n1") == n1_before

        # alice's own full token may switch either server
        r = switch(hub, full, alice, "manycore", server_name="n1")
        assert r.status_code == 202, r.text
        assert wait_switch(hub, full, r.json()["id"])["state"] == "succeeded"
        assert tier_and_started(hub, alice, "n1")[0] == "manycore"
    finally:
        hub.stop_server(alice, "n1")
        hub.stop_server(alice)
