"""Requests and grants: the pure rules (policy.py), the tier keys (tiers.py), and the
service's API in process (tornado handlers with a fake hub and identities from the
Authorization header): bad input is a 400 naming the field, non-approvers a 403,
approval adds the group, the end takes it away and moves a server down."""

import json
import logging
import socket

import pytest
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer

from jupyter_ds_compute import policy, tiers
from jupyter_ds_compute.service import store as store_module
from jupyter_ds_compute.service.grants import GrantRefused, Grants
from jupyter_ds_compute.service.handlers import default_handlers
from jupyter_ds_compute.service.hubapi import HubAPIError
from jupyter_ds_compute.service.orchestrator import SwitchRefused
from jupyter_ds_compute.service.store import Store
from jupyter_ds_compute.service.tiersource import TierSource

# -- policy: durations ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [("7d", 7 * 86400), ("12h", 43200), ("30m", 1800), ("45s", 45), ("90", 90), (30, 30), (1.5, 1.5),
     (" 2w ", 14 * 86400), ("1.5h", 5400)],
)  # fmt: skip
def test_parse_duration(value, seconds):
    assert policy.parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "7", "7y", "-1d", "0", 0, -5, True, None, "1e9", "d", "7 d x", [], float("nan")]
)
def test_parse_duration_refuses(value):
    if value == "7":
        assert policy.parse_duration(value) == 7  # plain digits are seconds
        return
    with pytest.raises(ValueError, match="must be a duration like '7d'"):
        policy.parse_duration(value)


# -- policy: requests ----------------------------------------------------------------

GPU = dict(display_name="GPU", allowed_groups=["gpu-users"], max_grant=7 * 86400)


def refusal(**kw):
    args = dict(GPU, user_groups=["students"], duration=86400)
    args.update(kw)
    return policy.request_refusal(**args)


def test_request_allowed():
    assert refusal() is None
    assert refusal(duration=7 * 86400) is None  # exactly the bound


@pytest.mark.parametrize(
    "kw, field, words",
    [
        (dict(max_grant=None), "profile", "cannot be requested"),
        (dict(allowed_groups=None), "profile", "cannot be requested"),
        (dict(user_groups=["gpu-users"]), "profile", "already"),
        (dict(granted=True), "profile", "grant of it is running"),
        (dict(pending=True), "profile", "pending already"),
        (dict(duration=7 * 86400 + 1), "duration", "at most 7d"),
    ],
)
def test_request_refusals(kw, field, words):
    got = refusal(**kw)
    assert got is not None and got[0] == field and words in got[1], got


def test_decision_rules():
    base = dict(requester="bob", is_admin=False, decider_groups=[], approvers=["leads"], display_name="GPU")
    assert policy.decision_refusal(decider="ann", **dict(base, is_admin=True)) is None
    assert policy.decision_refusal(decider="ann", **dict(base, decider_groups=["leads"])) is None
    why = policy.decision_refusal(decider="ann", **dict(base, decider_groups=["students"]))
    assert "approvers" in why and "leads" in why
    # nobody decides their own request, admins included
    assert "own request" in policy.decision_refusal(decider="bob", **dict(base, is_admin=True))
    # no approvers: admins only
    assert policy.decision_refusal(decider="ann", **dict(base, approvers=())) is not None


def test_granted_duration():
    assert policy.granted_duration(86400, None, 7 * 86400) == 86400
    assert policy.granted_duration(86400, 3600, 7 * 86400) == 3600
    with pytest.raises(ValueError, match="only shorten"):
        policy.granted_duration(3600, 7200, 7 * 86400)
    assert policy.granted_duration(10 * 86400, None, 7 * 86400) == 7 * 86400  # the bound wins


@pytest.mark.parametrize(
    "now, phase",
    [(0, "active"), (89, "active"), (90, "notice"), (99.9, "notice"), (100, "expired"), (500, "expired")],
)
def test_grant_phase(now, phase):
    assert policy.grant_phase(now, expires=100, notice_before=10) == phase


def test_grant_phase_without_notice():
    assert policy.grant_phase(99.9, expires=100, notice_before=0) == "active"


def test_grant_group_is_the_first_allowed_group():
    assert policy.grant_group(["gpu-users", "staff"]) == "gpu-users"
    assert policy.grant_group(None) is None


# -- tiers: max_grant and approvers ----------------------------------------------------


def profile(**kw):
    p = {"display_name": "GPU", "slug": "gpu", "allowed_groups": ["gpu-users"]}
    p.update(kw)
    return [{"display_name": "Small", "slug": "small", "default": True}, p]


def test_tier_keys_loaded():
    t = tiers.tiers_of(profile(max_grant="7d", approvers=["leads"]))[1]
    assert t.max_grant == 7 * 86400 and t.approvers == ("leads",)
    assert tiers.tiers_of(profile())[1].max_grant is None
    # normalized twice (the catalogue, the service) it stays the same
    again = tiers.normalize_profile_list(tiers.normalize_profile_list(profile(max_grant="7d")))
    assert again[1]["max_grant"] == 7 * 86400
    assert [t["max_grant"] for t in tiers.for_user(profile(max_grant="1d"), [])] == [None, 86400]


@pytest.mark.parametrize(
    "kw, key, words",
    [
        (dict(max_grant="soon"), "max_grant", "must be a duration"),
        (dict(max_grant="7d", allowed_groups=None), "max_grant", "needs allowed_groups"),
        (dict(approvers=["leads"]), "approvers", "needs max_grant"),
        (dict(max_grant="7d", approvers="leads"), "approvers", "list of group names"),
        (dict(max_grant="7d", approvers=[]), "approvers", "must not be empty"),
    ],
)
def test_tier_keys_refused_naming_tier_and_key(kw, key, words):
    with pytest.raises(tiers.TierConfigError) as e:
        tiers.normalize_profile_list(profile(**kw))
    assert f"tier 'gpu': field '{key}'" in str(e.value) and words in str(e.value)


# -- the service in process ------------------------------------------------------------

PROFILES = tiers.normalize_profile_list(
    [
        {"display_name": "Small", "slug": "small", "default": True},
        {"display_name": "GPU", "slug": "gpu", "allowed_groups": ["gpu-users"], "max_grant": "2d",
         "approvers": ["leads"]},
        {"display_name": "Locked", "slug": "locked", "allowed_groups": ["vip"]},
    ]
)  # fmt: skip


class GroupHub:
    """The hub calls of requests and grants, on in-memory users and groups."""

    def __init__(self):
        self.groups = {"gpu-users": set(), "leads": {"lena"}, "vip": set()}
        self.servers = {}
        self.calls = []

    async def get_user(self, user):
        groups = sorted(g for g, members in self.groups.items() if user in members)
        return {"name": user, "groups": groups, "servers": dict(self.servers.get(user, {}))}

    async def get_server(self, user, name=""):
        return None  # no catalogue: the static list

    async def add_group_member(self, group, user):
        self.calls.append(("add", group, user))
        if group not in self.groups:
            raise HubAPIError(404, "no such group")
        self.groups[group].add(user)

    async def remove_group_member(self, group, user):
        self.calls.append(("remove", group, user))
        self.groups.get(group, set()).discard(user)


class FakeOrchestrator:
    def __init__(self, refuse=False):
        self.requested = []
        self.launched = []
        self.refuse = refuse

    async def request_switch(self, caller, body, *, profiles, live, requested_by, reason):
        if self.refuse:
            raise SwitchRefused(409, "a switch is in flight")
        self.requested.append((caller, body, requested_by, reason))
        return {"id": "sw1", "from_profile": "gpu"}

    def launch(self, switch_id):
        self.launched.append(switch_id)


class FakeLive:
    settings = {"budget_period": "month"}

    async def refusals(self, user, groups, exclude=None, profiles=None):
        return {}, None

    async def budget(self, user, groups):
        return {"state": "unlimited", "spent": 0.0, "budget": None}


class HeaderAuth:
    """HubAuth stand-in: ``Authorization: token <name>`` is user ``<name>``; ``admin`` holds the admin scope."""

    access_scopes = None

    async def get_user(self, handler, sync=False):
        header = handler.request.headers.get("Authorization", "")
        name = header[len("token ") :]
        if not name:
            return None
        scopes = ["custom:ds-compute:admin"] if name == "admin" else []
        return {"kind": "user", "name": name, "scopes": scopes}


SETTINGS = {"grant_expiry_notice": 10.0, "grant_check_interval": 1.0}


@pytest.fixture
def parts():
    store = Store()
    hub = GroupHub()
    source = TierSource(hub, PROFILES)
    orch = FakeOrchestrator()
    grants = Grants(hub, store, orch, FakeLive(), source, dict(SETTINGS), log=logging.getLogger("test"))
    yield store, hub, orch, grants
    store.close()


@pytest.fixture
def api(parts):
    store, hub, orch, grants = parts
    prefix = "/services/ds-compute/"
    app = web.Application(
        default_handlers(prefix),
        log=logging.getLogger("test"),
        store=store,
        hub_api=hub,
        hub_auth=HeaderAuth(),
        tier_source=grants.tier_source,
        profiles=PROFILES,
        live_policy=FakeLive(),
        grants=grants,
        base_url="/",
        service_prefix=prefix,
        cookie_secret=b"x" * 32,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = HTTPServer(app)
    listening = []

    async def call(method, path, user, body=None, raw=None):
        if not listening:  # on the test's own event loop
            server.listen(port, "127.0.0.1")
            listening.append(port)
        resp = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}{prefix}{path}",
            method=method,
            headers={"Authorization": f"token {user}"},
            body=raw if raw is not None else (json.dumps(body) if body is not None else None),
            raise_error=False,
            allow_nonstandard_methods=True,
        )
        return resp.code, json.loads(resp.body or b"null")

    yield call
    server.stop()


def ask(**kw):
    body = {"profile": "gpu", "duration": "1d", "reason": "train the activity model"}
    body.update(kw)
    return body


async def test_request_approve_and_tiers(api, parts):
    store, hub, orch, grants = parts
    code, body = await api("POST", "api/requests", "bob", ask())
    assert code == 201, body
    assert body["state"] == "pending" and body["duration"] == 86400 and body["user"] == "bob"
    # api/tiers: pending, not requestable again
    code, t = await api("GET", "api/tiers", "bob")
    gpu = {x["slug"]: x for x in t["tiers"]}["gpu"]
    assert gpu["allowed"] is False and gpu["request"]["id"] == body["id"] and gpu["requestable"] is False
    locked = {x["slug"]: x for x in t["tiers"]}["locked"]
    assert locked["requestable"] is False  # no max_grant
    # the approver sees it among the ones they may decide; bob sees his own
    code, listed = await api("GET", "api/requests", "lena")
    assert [r["id"] for r in listed["decidable"]] == [body["id"]]
    code, own = await api("GET", "api/requests", "bob")
    assert [r["id"] for r in own["requests"]] == [body["id"]] and own["decidable"] == []
    # approve for a shorter time: bob is in the group, the tier is allowed, the grant shown
    code, decided = await api(
        "POST", f"api/requests/{body['id']}/decision", "lena", {"approve": True, "duration": "2h"}
    )
    assert code == 200, decided
    assert (
        decided["state"] == "approved"
        and decided["granted"] == 7200
        and decided["grant_group"] == "gpu-users"
    )
    assert "bob" in hub.groups["gpu-users"]
    code, t = await api("GET", "api/tiers", "bob")
    assert code == 200
    # (the fake auth's model has no groups: the tiers read the hub's)
    code, t = await api("GET", "api/tiers", "bob")
    # the notice of the answer
    kinds = [n["kind"] for n in t["notices"]]
    assert "request-approved" in kinds
    events = [(e["event"], e["outcome"]) for e in store.list_audit()]
    assert ("access:request", "pending") in events and ("access:decision", "approved") in events
    # deciding again: 409
    code, again = await api(
        "POST", f"api/requests/{body['id']}/decision", "admin", {"approve": False, "reason": "x"}
    )
    assert code == 409, again


async def test_deny_with_reason(api, parts):
    code, body = await api("POST", "api/requests", "bob", ask())
    code, err = await api("POST", f"api/requests/{body['id']}/decision", "admin", {"approve": False})
    assert code == 400 and err["field"] == "reason", err
    code, decided = await api(
        "POST",
        f"api/requests/{body['id']}/decision",
        "admin",
        {"approve": False, "reason": "use the CPU tier first"},
    )
    assert (
        code == 200
        and decided["state"] == "denied"
        and decided["decision_reason"] == "use the CPU tier first"
    )
    code, t = await api("GET", "api/policy", "bob")
    notice = next(n for n in t["notices"] if n["kind"] == "request-denied")
    assert "use the CPU tier first" in notice["message"]
    # denied: may ask again
    code, body = await api("POST", "api/requests", "bob", ask())
    assert code == 201, body


@pytest.mark.parametrize(
    "body, field, words",
    [
        (ask(profile="nope"), "profile", "unknown tier"),
        (ask(profile=None), "profile", "slug of a tier"),
        (ask(profile="small"), "profile", "cannot be requested"),
        (ask(profile="locked"), "profile", "cannot be requested"),
        (ask(duration="3d"), "duration", "at most 2d"),
        (ask(duration="soon"), "duration", "must be a duration"),
        (ask(duration=None), "duration", "required"),
        (ask(reason="x" * 10_000), "reason", "too long"),
        (ask(reason=""), "reason", "non-empty"),
        (ask(reason=5), "reason", "non-empty"),
        (dict(ask(), user="carol"), "user", "Unknown field"),
    ],
)
async def test_bad_requests_are_400_naming_the_field(api, parts, body, field, words):
    code, err = await api("POST", "api/requests", "bob", body)
    assert code == 400, err
    assert err["field"] == field and words in err["message"], err
    assert parts[0].list_requests() == []
    assert parts[0].list_audit()[0]["outcome"] == "refused"


async def test_already_allowed_and_duplicate_are_400(api, parts):
    hub = parts[1]
    hub.groups["gpu-users"].add("gina")
    code, err = await api("POST", "api/requests", "gina", ask())
    assert code == 400 and err["field"] == "profile" and "already" in err["message"], err
    code, _ = await api("POST", "api/requests", "bob", ask())
    code, err = await api("POST", "api/requests", "bob", ask(duration="1h"))
    assert code == 400 and err["field"] == "profile" and "pending already" in err["message"], err


async def test_bad_bodies(api):
    code, err = await api("POST", "api/requests", "bob", raw="[1]")
    assert code == 400 and "JSON object" in err["message"]
    code, body = await api("POST", "api/requests", "bob", ask())
    for decision, field in (({"approve": "yes"}, "approve"), ({"approve": True, "duration": "3d"}, "duration"),
                            ({"approve": True, "duration": "x"}, "duration"),
                            ({"approve": True, "reason": "r" * 10_000}, "reason"),
                            ({"approve": False, "reason": "no", "duration": "1h"}, "duration"),
                            ({"approve": True, "extra": 1}, "extra")):  # fmt: skip
        code, err = await api("POST", f"api/requests/{body['id']}/decision", "admin", decision)
        assert code == 400 and err["field"] == field, (decision, err)
    code, err = await api("POST", "api/requests/ffffffffffff/decision", "admin", {"approve": True})
    assert code == 404 and err["field"] == "id"


async def test_non_approvers_are_403(api, parts):
    store, hub = parts[0], parts[1]
    code, body = await api("POST", "api/requests", "bob", ask())
    for who in ("carol", "bob"):  # not an approver; one's own request
        code, err = await api("POST", f"api/requests/{body['id']}/decision", who, {"approve": True})
        assert code == 403, err
    code, listed = await api("GET", "api/requests", "carol")
    assert listed["decidable"] == []
    assert store.get_request(body["id"])["state"] == "pending"
    assert "bob" not in hub.groups["gpu-users"]
    assert [e["outcome"] for e in store.list_audit() if e["event"] == "access:decision"] == [
        "refused",
        "refused",
    ]


async def test_missing_group_is_409(api, parts):
    hub = parts[1]
    del hub.groups["gpu-users"]
    code, body = await api("POST", "api/requests", "bob", ask())
    code, err = await api("POST", f"api/requests/{body['id']}/decision", "admin", {"approve": True})
    assert code == 409 and "does not exist" in err["message"], err
    assert parts[0].get_request(body["id"])["state"] == "pending"


# -- the grant loop --------------------------------------------------------------------


async def approved(parts, now, duration="1h"):
    store, hub, orch, grants = parts
    record = await grants.request({"name": "bob", "kind": "user", "scopes": []}, ask(duration=duration))
    admin = {"name": "admin", "kind": "user", "scopes": ["custom:ds-compute:admin"]}
    return await grants.decide(admin, record["id"], {"approve": True})


async def test_notice_then_end_then_downshift(parts, monkeypatch):
    store, hub, orch, grants = parts
    clock = [1000.0]
    monkeypatch.setattr(store_module, "utcnow", lambda: clock[0])
    grant = await approved(parts, clock[0])
    hub.servers["bob"] = {"": {"ready": True, "pending": None, "user_options": {"profile": "gpu"}}}
    assert await grants.check(now=clock[0] + 100) == []
    # within grant_expiry_notice: one notice, once
    done = await grants.check(now=clock[0] + 3595)
    assert [d["action"] for d in done] == ["notice"]
    assert await grants.check(now=clock[0] + 3596) == []
    assert "bob" in hub.groups["gpu-users"]
    # the end: out of the group, the server moved to the default tier by policy:grant
    done = await grants.check(now=clock[0] + 3600)
    assert [d["action"] for d in done] == ["expired", "downshift"]
    assert "bob" not in hub.groups["gpu-users"]
    ((caller, body, by, reason),) = orch.requested
    assert (
        caller is None
        and by == "policy:grant"
        and body == {"user": "bob", "server_name": "", "profile": "small"}
    )
    assert "ended" in reason
    assert orch.launched == ["sw1"]
    assert store.get_request(grant["id"])["state"] == "expired"
    events = [(e["event"], e["outcome"]) for e in store.list_audit()]
    assert ("access:grant", "expiring") in events and ("access:grant", "expired") in events
    assert ("policy:grant", "downshift") in events
    # settled: nothing more
    assert await grants.check(now=clock[0] + 4000) == []


async def test_refused_downshift_is_retried(parts):
    store, hub, orch, grants = parts
    orch.refuse = True
    grant = await approved(parts, 0)
    hub.servers["bob"] = {"": {"ready": True, "pending": None, "user_options": {"profile": "gpu"}}}
    far = store.get_request(grant["id"])["expires_ts"] + 1
    await grants.check(now=far)
    assert not store.get_request(grant["id"])["settled"]
    orch.refuse = False
    done = await grants.check(now=far + 1)
    assert [d["action"] for d in done] == ["downshift"]
    assert store.get_request(grant["id"])["settled"]


async def test_end_retried_when_the_hub_fails(parts):
    store, hub, orch, grants = parts
    grant = await approved(parts, 0)

    async def down(group, user):
        raise HubAPIError(0, "hub unreachable")

    hub.remove_group_member = down
    far = store.get_request(grant["id"])["expires_ts"] + 1
    await grants.check(now=far)
    assert store.get_request(grant["id"])["state"] == "approved"  # tried again next round


def test_grant_scopes_are_the_grant_groups_only():
    from jupyter_ds_compute import hubconfig

    assert hubconfig.grant_scopes(PROFILES) == ["groups!group=gpu-users"]  # not vip: Locked has no max_grant
    assert hubconfig.grant_scopes(lambda spawner: PROFILES) == []  # a callable: the operator's role
    assert hubconfig.grant_scopes(None) == []


async def test_a_denial_during_the_approval_undoes_the_membership(parts):
    store, hub, orch, grants = parts
    record = await grants.request({"name": "bob", "kind": "user", "scopes": []}, ask())
    admin = {"name": "admin", "kind": "user", "scopes": ["custom:ds-compute:admin"]}
    add = hub.add_group_member

    async def slow_add(group, user):  # another admin denies while the hub adds the member
        await add(group, user)
        store.decide_request(record["id"], approve=False, decided_by="other", reason="no")

    hub.add_group_member = slow_add
    with pytest.raises(GrantRefused) as e:
        await grants.decide(admin, record["id"], {"approve": True})
    assert e.value.status == 409
    assert "bob" not in hub.groups["gpu-users"] and store.get_request(record["id"])["state"] == "denied"
