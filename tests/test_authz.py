"""The service's authorization (service/authz.py): token models → allowed/refused.

The models are shaped as the hub returns them from ``GET /hub/api/user``
(expanded scopes, filtered to the token); see notes/hub-service.md.
"""

import pytest
from traitlets.config import Config

from jupyter_ds_compute import hubconfig
from jupyter_ds_compute.service import authz

IDENTIFY = ["read:users:name!user={u}", "read:users:groups!user={u}", "read:users:activity!user={u}"]
SERVICE = "access:services!service=ds-compute"


def model(name, *scopes, admin=False, kind="user", identify=True):
    own = [s.format(u=name) for s in IDENTIFY] if identify else []
    return {"kind": kind, "name": name, "admin": admin, "scopes": sorted({*own, SERVICE, *scopes})}


# a hub admin's full token (admin role, expanded in part) and its session cookie
ADMIN_FULL = model(
    "admin", "admin:servers", "servers", "read:servers", "start:servers", "delete:servers",
    "admin:users", "access:servers", "read:metrics", authz.ADMIN_SCOPE, admin=True,
)  # fmt: skip
ADMIN_COOKIE = model("admin", "servers", authz.ADMIN_SCOPE, admin=True)
# the same admin's token restricted to the service (issue 12 §3)
ADMIN_RESTRICTED = model("admin", admin=True)
# admin flag but a scope list only the admin role's unexpanded name implies
ADMIN_UNEXPANDED = model("admin", "admin:servers", admin=True)
# alice: full token (the 'self' role expanded), browser cookie, server tokens
ALICE_FULL = model(
    "alice", "servers!user=alice", "read:servers!user=alice", "start:servers!user=alice",
    "delete:servers!user=alice", "access:servers!user=alice", "users:activity!user=alice",
)  # fmt: skip
ALICE_COOKIE = model("alice", "servers!user=alice")
ALICE_COOKIE_OLD = model("alice")  # a session from before oauth_client_allowed_scopes
ALICE_SERVICE_ONLY = model("alice")
ALICE_DEFAULT_SERVER = model("alice", "access:servers!server=alice/", "users:activity!user=alice")
ALICE_N1_SERVER = model("alice", "access:servers!server=alice/n1", "users:activity!user=alice")
# a server token given the user's servers scope acts on all of them
ALICE_SERVER_WITH_SERVERS = model("alice", "access:servers!server=alice/", "servers!user=alice")
# carol: may operate bob's servers; dave: only bob's n1; erin: a group filter
CAROL_BOB = model("carol", "servers!user=bob", "read:servers!user=bob")
DAVE_BOB_N1 = model("dave", "servers!server=bob/n1")
ERIN_GROUP = model("erin", "servers!group=gpu-team", "read:servers!group=gpu-team")
# only half of a switch: stop but not start
FRANK_STOP_ONLY = model("frank", "delete:servers!user=bob")
# a friend with a share of bob's server: access, not control
FRIEND_SHARE = model("friend", "access:servers!server=bob/", "access:servers!user=friend")
SERVICE_MODEL = {"kind": "service", "name": "other", "scopes": ["servers", authz.ADMIN_SCOPE]}

ACT = [
    # (model, user, server, groups, allowed)
    (ADMIN_FULL, "bob", "", (), True),
    (ADMIN_FULL, "bob", "n1", (), True),
    (ADMIN_COOKIE, "bob", "", (), True),
    (ADMIN_UNEXPANDED, "bob", "", (), True),
    (ADMIN_RESTRICTED, "bob", "", (), False),
    (ADMIN_RESTRICTED, "admin", "", (), True),  # own servers by identity
    (ALICE_FULL, "alice", "", (), True),
    (ALICE_FULL, "alice", "n1", (), True),
    (ALICE_FULL, "bob", "", (), False),
    (ALICE_COOKIE, "alice", "n1", (), True),
    (ALICE_COOKIE, "bob", "", (), False),
    (ALICE_COOKIE_OLD, "alice", "n1", (), True),
    (ALICE_SERVICE_ONLY, "alice", "", (), True),
    (ALICE_SERVICE_ONLY, "bob", "", (), False),
    (ALICE_DEFAULT_SERVER, "alice", "", (), True),
    (ALICE_DEFAULT_SERVER, "alice", "n1", (), False),
    (ALICE_DEFAULT_SERVER, "bob", "", (), False),
    (ALICE_N1_SERVER, "alice", "n1", (), True),
    (ALICE_N1_SERVER, "alice", "", (), False),
    (ALICE_N1_SERVER, "alice", "n2", (), False),
    (ALICE_SERVER_WITH_SERVERS, "alice", "n1", (), True),
    (CAROL_BOB, "bob", "", (), True),
    (CAROL_BOB, "bob", "n1", (), True),
    (CAROL_BOB, "alice", "", (), False),
    (CAROL_BOB, "carol", "", (), True),
    (DAVE_BOB_N1, "bob", "n1", (), True),
    (DAVE_BOB_N1, "bob", "", (), False),
    (DAVE_BOB_N1, "bob", "n10", (), False),
    (ERIN_GROUP, "bob", "", ("gpu-team",), True),
    (ERIN_GROUP, "bob", "", ("students",), False),
    (ERIN_GROUP, "bob", "", (), False),
    (FRANK_STOP_ONLY, "bob", "", (), False),
    (FRIEND_SHARE, "bob", "", (), False),
    (FRIEND_SHARE, "friend", "", (), True),
    (SERVICE_MODEL, "bob", "", (), False),
    (None, "bob", "", (), False),
    ({"kind": "user", "name": "bob"}, "bob", "", (), True),  # no scopes at all: identity only
]


@pytest.mark.parametrize("m, user, server, groups, allowed", ACT)
def test_can_act_on(m, user, server, groups, allowed):
    assert authz.can_act_on(m, user, server, groups) is allowed
    refusal = authz.act_refusal(m, user, server, groups)
    assert (refusal is None) is allowed
    if refusal and m and m.get("kind", "user") == "user" and m["name"] != user:
        assert user in refusal and "servers" in refusal


def test_server_token_refusal_names_its_server():
    msg = authz.act_refusal(ALICE_DEFAULT_SERVER, "alice", "n1")
    assert "the default server" in msg and "'n1'" in msg


@pytest.mark.parametrize(
    "m, admin",
    [
        (ADMIN_FULL, True),
        (ADMIN_COOKIE, True),
        (ADMIN_RESTRICTED, False),  # the admin flag alone does not count
        (ADMIN_UNEXPANDED, False),
        (ALICE_FULL, False),
        (model("ops", authz.ADMIN_SCOPE), True),  # a non-hub-admin given the scope
        (model("ops", authz.ADMIN_SCOPE + "!user=ops"), False),  # filtered: not the scope
        (model("ops", "custom:ds-compute:admin:extra"), False),
        (None, False),
        ({"kind": "user", "name": "x", "admin": True}, False),
    ],
)
def test_is_admin(m, admin):
    assert authz.is_admin(m) is admin


@pytest.mark.parametrize(
    "m, user, groups, allowed",
    [
        (ALICE_SERVICE_ONLY, "alice", (), True),
        (ALICE_DEFAULT_SERVER, "alice", (), True),
        (ALICE_FULL, "bob", (), False),
        (ADMIN_RESTRICTED, "bob", (), False),
        (ADMIN_FULL, "bob", (), True),
        (ADMIN_COOKIE, "bob", (), True),  # servers includes read:servers
        (model("ops", authz.ADMIN_SCOPE), "bob", (), True),
        (CAROL_BOB, "bob", (), True),
        (CAROL_BOB, "alice", (), False),
        (DAVE_BOB_N1, "bob", (), False),  # one server is not all of bob's
        (ERIN_GROUP, "bob", ("gpu-team",), True),
        (ERIN_GROUP, "bob", (), False),
        (SERVICE_MODEL, "bob", (), False),
        (None, "bob", (), False),
    ],
)
def test_can_read(m, user, groups, allowed):
    assert authz.can_read(m, user, groups) is allowed


def test_token_servers():
    assert authz.token_servers(ALICE_DEFAULT_SERVER) == {""}
    assert authz.token_servers(ALICE_N1_SERVER) == {"n1"}
    assert authz.token_servers(ALICE_FULL) is None
    assert authz.token_servers(ALICE_COOKIE) is None
    # a share of someone else's server does not bind the friend's token
    assert authz.token_servers(model("friend", "access:servers!server=bob/")) is None
    assert authz.token_servers(None) is None


def test_group_filtered():
    assert authz.group_filtered(ERIN_GROUP)
    assert not authz.group_filtered(CAROL_BOB)
    assert not authz.group_filtered(model("x", "read:users!group=g"))


def test_metrics():
    assert authz.may_read_metrics(ADMIN_FULL)
    assert not authz.may_read_metrics(ADMIN_RESTRICTED)  # admin flag, no scope
    assert authz.may_read_metrics({"kind": "service", "name": "prometheus", "scopes": ["read:metrics"]})
    assert not authz.may_read_metrics(None)


def test_scopes_of_expands_server_scopes_keeping_filters():
    got = authz.scopes_of({"scopes": ["admin:servers!user=bob"]})
    assert {
        "servers!user=bob",
        "start:servers!user=bob",
        "delete:servers!user=bob",
        "read:servers!user=bob",
    } <= got
    assert "servers" not in got


def test_configure_registers_the_custom_scope_and_role():
    c = Config()
    c.Authenticator.admin_users = {"root-admin"}
    c.JupyterHub.load_roles = [
        {"name": "ds-compute-admin", "scopes": [], "groups": ["ops"], "users": ["ann"]}
    ]
    c.ConfigurableHTTPProxy.should_start = False  # no proxy program needed here
    hubconfig.configure(c)
    assert authz.ADMIN_SCOPE == hubconfig.ADMIN_SCOPE
    assert authz.ADMIN_SCOPE in c.JupyterHub.custom_scopes
    assert c.JupyterHub.custom_scopes[authz.ADMIN_SCOPE]["description"]
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == "ds-compute-admin"]
    assert role["scopes"] == [authz.ADMIN_SCOPE]
    assert role["users"] == ["ann", "root-admin"] and role["groups"] == ["ops"]
    (service,) = [s for s in c.JupyterHub.services if s["name"] == "ds-compute"]
    assert set(service["oauth_client_allowed_scopes"]) == {"servers", authz.ADMIN_SCOPE}
    # the service's own role is unchanged
    (svc_role,) = [r for r in c.JupyterHub.load_roles if r["name"] == "ds-compute-service"]
    assert svc_role["scopes"] == hubconfig.SERVICE_SCOPES
    # a valid JupyterHub custom scope name
    from jupyterhub import scopes as hub_scopes

    assert hub_scopes._custom_scope_pattern.match(authz.ADMIN_SCOPE)
