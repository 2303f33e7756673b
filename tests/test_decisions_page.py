"""The decisions page (``requests``), rendered in process: tornado handlers with
a fake hub and a HubOAuth stand-in (a cookie session whose POSTs need the
page's xsrf token, as HubOAuth's, or a token header), the real store,
grants and templates. An approver sees only the requests they may decide,
an admin all (but their own), someone else the page saying there is nothing
for them; decisions go through ``Grants.decide`` (403 for a non-approver,
400 naming the field); the notices name the tier and a readable UTC end."""

import logging
import re
import socket
from urllib.parse import parse_qs, urlencode, urlparse

import jinja2
import pytest
from jupyterhub._xsrf_utils import check_xsrf_cookie
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer

from jupyter_ds_compute import tiers
from jupyter_ds_compute.service import app as service_app
from jupyter_ds_compute.service import store as store_module
from jupyter_ds_compute.service.accounting import Accounting
from jupyter_ds_compute.service.admin import admin_handlers
from jupyter_ds_compute.service.decisions import decisions_handlers
from jupyter_ds_compute.service.grants import Grants, readable_utc
from jupyter_ds_compute.service.handlers import IndexHandler
from jupyter_ds_compute.service.store import Store
from jupyter_ds_compute.service.tiersource import TierSource

PROFILES = tiers.normalize_profile_list(
    [
        {"display_name": "Small", "slug": "small", "default": True, "hourly_cost": 0.5},
        {"display_name": "Big GPU", "slug": "gpu", "allowed_groups": ["gpu-users"], "max_grant": "2d",
         "approvers": ["gpu-leads"], "hourly_cost": 2.0},
        {"display_name": "TPU", "slug": "tpu", "allowed_groups": ["tpu-users"], "max_grant": "1d",
         "approvers": ["tpu-leads"]},
    ]
)  # fmt: skip

#: who is in which group (the fake hub's and the identity models')
GROUPS = {"gpu-users": set(), "tpu-users": set(), "gpu-leads": {"lead"}, "tpu-leads": {"tina"}}


class Hub:
    def __init__(self):
        self.groups = {g: set(m) for g, m in GROUPS.items()}

    def groups_of(self, user):
        return sorted(g for g, members in self.groups.items() if user in members)

    async def list_users(self, **kw):
        names = ["admin", "bob", "carol", "lead", "tina", "dave"]
        return [{"name": u, "groups": self.groups_of(u), "servers": {}} for u in names]

    async def get_user(self, user):
        return {"name": user, "groups": self.groups_of(user), "servers": {}}

    async def get_server(self, user, name=""):
        return None  # no catalogue: the static list

    async def add_group_member(self, group, user):
        self.groups[group].add(user)

    async def remove_group_member(self, group, user):
        self.groups[group].discard(user)


class Live:
    def __init__(self, store):
        self.accounting = Accounting(store.db)
        self.settings = {"budget_period": "month"}

    async def budget(self, user, groups):
        return {"state": "ok", "spent": 3.0, "budget": 10.0, "user_spent": 3.0}


class SessionAuth:
    """HubOAuth stand-in: ``Authorization: token <name>`` (no xsrf, as a token), or a
    ``session=<name>`` cookie, which a POST accepts only with the xsrf token (HubOAuth's
    ``_get_user_cookie``: without it the caller is anonymous, so ``web.authenticated`` 403s)."""

    access_scopes = None
    base_url = "/services/ds-compute/"

    def __init__(self, hub):
        self.hub = hub

    def check_xsrf_cookie(self, handler):  # HubAuthenticated.check_xsrf_cookie calls this
        check_xsrf_cookie(handler)  # JupyterHub's own check

    async def get_user(self, handler, sync=False):
        name = handler.request.headers.get("Authorization", "")[len("token ") :]
        if not name:
            name = handler.get_cookie("session", "")
            if name and handler.request.method not in ("GET", "HEAD"):
                try:
                    handler.check_xsrf_cookie()
                except web.HTTPError:
                    return None
        if not name:
            return None
        scopes = ["custom:ds-compute:admin"] if name == "admin" else []
        return {"kind": "user", "name": name, "scopes": scopes, "groups": self.hub.groups_of(name)}


@pytest.fixture
def service():
    store = Store()
    hub = Hub()
    live = Live(store)
    source = TierSource(hub, PROFILES)
    grants = Grants(hub, store, None, live, source, {}, log=logging.getLogger("test"))
    prefix = "/services/ds-compute/"
    app = web.Application(
        admin_handlers(prefix) + decisions_handlers(prefix) + [(prefix.rstrip("/") + "/?", IndexHandler)],
        log=logging.getLogger("test"),
        store=store,
        hub_api=hub,
        hub_auth=SessionAuth(hub),
        tier_source=source,
        profiles=PROFILES,
        live_policy=live,
        grants=grants,
        base_url="/",
        service_prefix=prefix,
        cookie_secret=b"x" * 32,
        jinja_env=jinja2.Environment(
            loader=jinja2.FileSystemLoader(service_app.os.path.join(service_app.HERE, "templates")),
            autoescape=True,
        ),
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = HTTPServer(app)
    listening = []

    async def call(method, path, user, form=None, cookies=None):
        """``user`` by token header, or with ``cookies`` ({"session": name, "_xsrf": ...}) by cookie."""
        if not listening:
            server.listen(port, "127.0.0.1")
            listening.append(port)
        headers = {}
        if cookies is not None:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        else:
            headers["Authorization"] = f"token {user}"
        resp = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}{prefix}{path}",
            method=method,
            headers=headers,
            body=urlencode(form) if form is not None else None,
            raise_error=False,
            follow_redirects=False,
        )
        return resp

    call.store = store
    call.hub = hub
    call.grants = grants
    yield call
    server.stop()
    store.close()


def user(name):
    return {"kind": "user", "name": name, "scopes": [], "groups": []}


async def ask(service, name, profile, duration="1d", reason="a big run"):
    return await service.grants.request(
        user(name), {"profile": profile, "duration": duration, "reason": reason}
    )


def rows(page):
    """``{request id: row html}`` of the pending-requests section."""
    return {m.group(1): m.group(0) for m in re.finditer(r'<tr data-request="([^"]+)".*?</tr>', page, re.S)}


def error_of(page):
    m = re.search(r'data-testid="decision-error"(?: data-field="([^"]*)")?>([^<]*)<', page)
    return (m.group(1), m.group(2)) if m else (None, None)


async def test_approver_sees_only_what_they_may_decide_admin_all(service):
    gpu = await ask(service, "bob", "gpu")
    tpu = await ask(service, "carol", "tpu")
    resp = await service("GET", "requests", "lead")
    page = resp.body.decode()
    assert resp.code == 200, page
    shown = rows(page)
    assert list(shown) == [gpu["id"]], page
    row = shown[gpu["id"]]
    # the same rendering as the admin page: spending, budget, the usage chart, the form
    assert "Big GPU" in row and "a big run" in row and 'data-spent="3.0"' in row and "$10" in row
    assert f'id="ds-usage-{gpu["id"]}"' in row
    assert f'action="/services/ds-compute/requests/{gpu["id"]}"' in row and 'name="_xsrf"' in row
    assert "approver of Big GPU" in page
    # an admin sees both, here and (still) on the admin page
    resp = await service("GET", "requests", "admin")
    assert resp.code == 200 and set(rows(resp.body.decode())) == {gpu["id"], tpu["id"]}
    resp = await service("GET", "admin", "admin")
    admin_rows = rows(resp.body.decode())
    assert resp.code == 200 and set(admin_rows) == {gpu["id"], tpu["id"]}
    assert f'action="/services/ds-compute/admin/requests/{gpu["id"]}"' in admin_rows[gpu["id"]]
    # the requester is not shown their own request to decide
    resp = await service("GET", "requests", "bob")
    assert resp.code == 200 and rows(resp.body.decode()) == {}


async def test_non_approver_gets_the_nothing_to_decide_page(service):
    await ask(service, "bob", "gpu")
    resp = await service("GET", "requests", "dave")
    page = resp.body.decode()
    assert resp.code == 200, page
    assert rows(page) == {} and "<form" not in page.split("</nav>")[1]
    assert 'data-testid="requests-empty"' in page and "nothing for you to decide" in page
    # an approver with nothing pending is told so, naming their tier
    resp = await service("GET", "requests", "tina")
    assert resp.code == 200 and "No request for TPU waits for your decision" in resp.body.decode()


async def test_index_links_the_decisions_page(service):
    await ask(service, "bob", "gpu")
    resp = await service("GET", "", "lead")
    page = resp.body.decode()
    assert resp.code == 200, page
    link = re.search(r'data-testid="to-decide">\s*<a href="([^"]+)">([^<]+)</a>', page)
    assert (
        link and link.group(1) == "/services/ds-compute/requests" and link.group(2).startswith("1 request ")
    )
    resp = await service("GET", "", "tina")  # an approver with nothing to decide: a quiet link
    assert 'data-testid="to-decide-none"' in resp.body.decode()
    resp = await service("GET", "", "dave")
    assert "to-decide" not in resp.body.decode()


# JupyterHub's xsrf code asks handler.current_user synchronously when it sets a new cookie;
# the stand-in's get_user is async only (the service awaits it in prepare), hence the warning
@pytest.mark.filterwarnings("ignore:coroutine 'SessionAuth.get_user' was never awaited")
async def test_cookie_post_needs_the_xsrf_token_then_approves(service, monkeypatch):
    clock = [1_800_000_000.0]  # 2027-01-15 08:00 UTC
    monkeypatch.setattr(store_module, "utcnow", lambda: clock[0])
    record = await ask(service, "bob", "gpu")
    resp = await service("GET", "requests", None, cookies={"session": "lead"})
    page = resp.body.decode()
    assert resp.code == 200, page
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    cookie = re.search(r"_xsrf=([^;]+)", resp.headers["Set-Cookie"]).group(1)
    form = {"decision": "approve", "duration": "2h"}
    # without the token: not the approver (anonymous), a 403, nothing decided
    resp = await service(
        "POST", f"requests/{record['id']}", None, form, cookies={"session": "lead", "_xsrf": cookie}
    )
    assert resp.code == 403
    assert service.store.get_request(record["id"])["state"] == "pending"
    # with it: approved, shorter, back to the page with a message naming the tier and a readable end
    resp = await service(
        "POST",
        f"requests/{record['id']}",
        None,
        dict(form, _xsrf=xsrf),
        cookies={"session": "lead", "_xsrf": cookie},
    )
    assert resp.code == 302, resp.body
    location = urlparse(resp.headers["Location"])
    assert location.path == "/services/ds-compute/requests"
    msg = parse_qs(location.query)["msg"][0]
    assert msg == "Approved bob's request for Big GPU until 2027-01-15 10:00 UTC (2 h).", msg
    decided = service.store.get_request(record["id"])
    assert decided["state"] == "approved" and decided["decided_by"] == "lead" and decided["granted"] == 7200
    assert "bob" in service.hub.groups["gpu-users"]
    (event,) = [e for e in service.store.list_audit(user="bob") if e["event"] == "access:decision"]
    assert event["reason"] == "Your request for tier Big GPU is approved until 2027-01-15 10:00 UTC (2 h)"
    resp = await service("GET", "requests?" + urlencode({"msg": msg}), "lead")
    assert 'data-testid="decision-message">Approved bob' in resp.body.decode()


async def test_decision_by_a_non_approver_is_403(service):
    gpu = await ask(service, "bob", "gpu")
    for who in ("dave", "tina", "bob"):  # nobody's, another tier's approver, the requester
        resp = await service("POST", f"requests/{gpu['id']}", who, {"decision": "approve"})
        page = resp.body.decode()
        assert resp.code == 403, (who, page)
        field, message = error_of(page)
        assert message and ("approvers" in message or "their own" in message), page
    assert service.store.get_request(gpu["id"])["state"] == "pending"
    refused = [e for e in service.store.list_audit() if e["event"] == "access:decision"]
    assert [e["outcome"] for e in refused] == ["refused"] * 3
    resp = await service("POST", "requests/nope", "lead", {"decision": "approve"})
    assert resp.code == 404 and error_of(resp.body.decode())[0] == "id"


@pytest.mark.parametrize(
    "form, field, words",
    [
        ({"decision": "approve", "duration": "soon"}, "duration", "must be a duration"),
        ({"decision": "approve", "duration": "3d"}, "duration", "only shorten"),
        ({"decision": "deny"}, "reason", "non-empty"),
        ({"decision": "deny", "reason": "no", "duration": "1h"}, "duration", "only for an approval"),
        ({"decision": "maybe"}, "decision", "approve or deny"),
        ({}, "decision", "approve or deny"),
        ({"decision": "approve", "reason": "x" * 1001}, "reason", "too long"),
    ],
)
async def test_bad_input_is_400_naming_the_field(service, form, field, words):
    gpu = await ask(service, "bob", "gpu")
    resp = await service("POST", f"requests/{gpu['id']}", "lead", form)
    page = resp.body.decode()
    assert resp.code == 400, page
    got_field, message = error_of(page)
    assert got_field == field and words in message, page[:3000]
    assert list(rows(page)) == [gpu["id"]]  # the page again, the request still there to decide
    assert service.store.get_request(gpu["id"])["state"] == "pending"


async def test_denial_and_grant_notices_name_the_tier_and_a_readable_end(service, monkeypatch):
    clock = [1_800_000_000.0]  # 2027-01-15 08:00 UTC
    monkeypatch.setattr(store_module, "utcnow", lambda: clock[0])
    carol = await ask(service, "carol", "tpu")
    resp = await service("POST", f"requests/{carol['id']}", "tina", {"decision": "deny", "reason": "not now"})
    assert resp.code == 302 and "Denied+carol%27s+request+for+TPU" in resp.headers["Location"]
    bob = await ask(service, "bob", "gpu", duration="1h")
    resp = await service("POST", f"requests/{bob['id']}", "admin", {"decision": "approve"})
    assert resp.code == 302
    service.grants.settings.update(grant_expiry_notice=600)
    grant = service.store.grants_due(clock[0] + 3600 + 1)[0]
    service.grants.notify(grant, clock[0] + 3300)
    await service.grants.end(grant, clock[0] + 3600)
    texts = {(e["event"], e["outcome"]): e["reason"] for e in service.store.list_audit()}
    assert texts[("access:decision", "denied")] == "Your request for tier TPU is denied: not now"
    assert texts[("access:decision", "approved")] == (
        "Your request for tier Big GPU is approved until 2027-01-15 09:00 UTC (1 h)"
    )
    assert texts[("access:grant", "expiring")] == (
        "Your access to tier Big GPU ends in 5 min (at 2027-01-15 09:00 UTC): "
        "a server on it will then be moved to your default tier"
    )
    assert texts[("access:grant", "expired")] == "Your access to tier Big GPU ended at 2027-01-15 09:00 UTC"


def test_readable_utc():
    assert readable_utc(1_800_000_000.0) == "2027-01-15 08:00 UTC"
    assert readable_utc(1_800_000_059.9) == "2027-01-15 08:00 UTC"
    assert readable_utc(None) == "an unknown time"
