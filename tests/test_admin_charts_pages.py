"""The admin page's charts and the spawn page's *Request access* page, rendered
in process (tornado handlers with a fake hub, identities from the
Authorization header, the real store and accounts): the charts are
well-formed SVG with their numbers, user text is escaped, each pending
requester has a usage chart, and the request page posts through the rules
of ``POST api/requests`` (400 naming the field)."""

import logging
import re
import socket
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import jinja2
import pytest
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer

from jupyter_ds_compute import tiers
from jupyter_ds_compute.service import app as service_app
from jupyter_ds_compute.service.accounting import Accounting
from jupyter_ds_compute.service.admin import admin_handlers
from jupyter_ds_compute.service.grants import Grants
from jupyter_ds_compute.service.requestpage import request_page_handlers
from jupyter_ds_compute.service.store import Store
from jupyter_ds_compute.service.tiersource import TierSource

SVG = "{http://www.w3.org/2000/svg}"
EVIL = '<img src=x onerror="alert(1)">'
PROFILES = tiers.normalize_profile_list(
    [
        {"display_name": "Small", "slug": "small", "default": True, "hourly_cost": 0.5},
        {"display_name": "GPU", "slug": "gpu", "allowed_groups": ["gpu-users"], "max_grant": "2d",
         "hourly_cost": 2.0},
        {"display_name": "Locked", "slug": "locked", "allowed_groups": ["vip"]},
    ]
)  # fmt: skip


class Hub:
    def __init__(self):
        self.groups = {"gpu-users": set(), "vip": set()}
        self.users = ["alice", "bob", EVIL]

    async def list_users(self, **kw):
        return [{"name": u, "groups": [], "servers": {}} for u in self.users]

    async def get_user(self, user):
        groups = sorted(g for g, members in self.groups.items() if user in members)
        return {"name": user, "groups": groups, "servers": {}}

    async def get_server(self, user, name=""):
        return None  # no catalogue: the static list


class Live:
    def __init__(self, store):
        self.accounting = Accounting(store.db)
        self.settings = {"budget_period": "month", "budgets": {"users": {}, "groups": {}, "default": None}}

    async def budget(self, user, groups):
        return {"state": "ok", "spent": 1.0, "budget": 10.0, "user_spent": 1.0}


class HeaderAuth:
    access_scopes = None
    base_url = "/services/ds-compute/"  # the xsrf cookie's path

    async def get_user(self, handler, sync=False):
        name = handler.request.headers.get("Authorization", "")[len("token ") :]
        if not name:
            return None
        scopes = ["custom:ds-compute:admin"] if name == "admin" else []
        return {"kind": "user", "name": name, "scopes": scopes, "groups": []}


@pytest.fixture
def service():
    store = Store()
    hub = Hub()
    live = Live(store)
    source = TierSource(hub, PROFILES)
    grants = Grants(hub, store, None, live, source, {}, log=logging.getLogger("test"))
    prefix = "/services/ds-compute/"
    app = web.Application(
        admin_handlers(prefix) + request_page_handlers(prefix),
        log=logging.getLogger("test"),
        store=store,
        hub_api=hub,
        hub_auth=HeaderAuth(),
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

    async def call(method, path, user, form=None):
        if not listening:
            server.listen(port, "127.0.0.1")
            listening.append(port)
        resp = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{port}{prefix}{path}",
            method=method,
            headers={"Authorization": f"token {user}"},
            body=urlencode(form) if form is not None else None,
            raise_error=False,
            follow_redirects=False,
        )
        return resp.code, resp.body.decode()

    call.store = store
    yield call
    server.stop()
    store.close()


def figures(page):
    """``{chart id: (svg root, figure html)}`` of the page's charts."""
    out = {}
    for m in re.finditer(
        r'<figure class="ds-chart-figure[^"]*" data-chart="([^"]+)".*?</figure>', page, re.S
    ):
        svg = re.search(r"<svg .*?</svg>", m.group(0), re.S).group(0)
        out[m.group(1)] = (ET.fromstring(svg), m.group(0))
    return out


def usage(db, user, profile, cost, start, end):
    db.execute(
        'INSERT INTO usage (user, server_name, profile, hourly_cost, started_key, start, "end", open)'
        " VALUES (?, '', ?, ?, ?, ?, ?, 0)",
        (user, profile, cost, str(start), start, end),
    )


async def test_admin_page_charts_empty(service):
    code, page = await service("GET", "admin", "admin")
    assert code == 200, page
    shown = figures(page)
    assert set(shown) == {"ds-chart-cost-tier", "ds-chart-cost-user", "ds-chart-switches", "ds-chart-servers"}
    for root, html in shown.values():
        assert [t.text for t in root.iter(SVG + "text")] == ["No data yet"]
        assert 'data-empty="true"' in html and "No data yet." in html


async def test_admin_page_charts_with_data_escaped(service):
    now = time.time()
    usage(service.store.db, EVIL, "gpu", 2.0, now - 1800, now)  # $1
    usage(service.store.db, "alice", "small", 0.5, now - 3600, now)  # $0.50
    record = service.store.create_switch(
        user="alice", server_name="", requested_by="alice", from_profile="small", to_profile="gpu",
        from_options={}, to_options={"profile": "gpu"},
    )  # fmt: skip
    service.store.set_state(record["id"], "succeeded")
    code, page = await service("GET", "admin", "admin")
    assert code == 200, page
    assert "<img src=x" not in page  # the user name is escaped everywhere
    shown = figures(page)
    root, html = shown["ds-chart-cost-user"]
    bars = {
        b.get("data-label"): float(b.get("data-value")) for b in root.iter(SVG + "g") if b.get("data-label")
    }
    assert bars == {EVIL: pytest.approx(1.0, abs=0.01), "alice": pytest.approx(0.5, abs=0.01)}
    assert "<th scope=\"row\">&lt;img src=x" in html  # and in the table of numbers
    root, _ = shown["ds-chart-cost-tier"]
    assert {b.get("data-label") for b in root.iter(SVG + "g") if b.get("data-label")} == {"GPU", "Small"}
    root, html = shown["ds-chart-servers"]
    peaks = {g.get("data-label"): g.get("data-peak") for g in root.iter(SVG + "g") if g.get("data-peak")}
    assert peaks == {"GPU": "1", "Small": "1"}
    root, html = shown["ds-chart-switches"]
    today = [b for b in root.iter(SVG + "g") if b.get("class") == "ds-bar"][-1]
    assert today.get("data-value") == "1" and 'data-empty="false"' in html
    assert "<td>1</td>" in html  # one succeeded today, in the table too


async def test_pending_request_has_a_usage_chart(service):
    now = time.time()
    usage(service.store.db, "bob", "small", 0.5, now - 7200, now)  # $1
    code, page = await service("GET", "request?profile=gpu", "bob")
    assert code == 200, page
    assert 'name="duration"' in page and 'value="2d"' in page and 'name="_xsrf"' in page
    code, page = await service(
        "POST", "request", "bob", {"profile": "gpu", "duration": "1d", "reason": "train <the> model"}
    )
    assert code == 200, page
    assert 'data-testid="request-done"' in page
    (record,) = service.store.list_requests(user="bob")
    assert (
        record["state"] == "pending"
        and record["duration"] == 86400
        and record["reason"] == "train <the> model"
    )
    code, page = await service("GET", "admin", "admin")
    row = re.search(rf'<tr data-request="{record["id"]}".*?</form>', page, re.S).group(0)
    assert "train &lt;the&gt; model" in row
    (root, html), *_ = figures(row).values()
    assert root.get("id") == f"ds-usage-{record['id']}"
    assert "bob" in root.find(SVG + "title").text
    bars = [b for b in root.iter(SVG + "g") if b.get("class") == "ds-bar"]
    assert float(bars[-1].get("data-value")) == pytest.approx(1.0, abs=0.01)
    # asking again: pending already (the API's rule), shown instead of the form
    code, page = await service("GET", "request?profile=gpu", "bob")
    assert code == 200 and 'data-testid="request-refusal"' in page and "pending already" in page
    assert 'id="ds-request-form"' not in page


@pytest.mark.parametrize(
    "form, field, words",
    [
        ({"profile": "gpu", "duration": "9d", "reason": "x"}, "duration", "at most 2d"),
        ({"profile": "gpu", "duration": "soon", "reason": "x"}, "duration", "must be a duration"),
        ({"profile": "gpu", "duration": "1d", "reason": ""}, "reason", "non-empty"),
        ({"profile": "gpu", "duration": "1d", "reason": "x" * 1001}, "reason", "too long"),
        ({"profile": "nope", "duration": "1d", "reason": "x"}, "profile", "unknown tier"),
        ({"profile": "locked", "duration": "1d", "reason": "x"}, "profile", "cannot be requested"),
    ],
)
async def test_request_page_refusals_name_the_field(service, form, field, words):
    code, page = await service("POST", "request", "carol", form)
    assert code == 400, page
    m = re.search(r'data-testid="request-error" data-field="([^"]+)">([^<]*)<', page)
    assert m and m.group(1) == field and words in m.group(2), page[:2000]
    assert service.store.list_requests(user="carol") == []
    assert [e["outcome"] for e in service.store.list_audit(user="carol")] == ["refused"]


async def test_request_page_unknown_or_locked_tier_on_get(service):
    code, page = await service("GET", "request?profile=nope", "carol")
    assert code == 400 and 'data-field="profile"' in page and "<form" not in page.split("</nav>")[1]
    code, page = await service("GET", "request?profile=locked", "carol")
    assert code == 200 and "cannot be requested" in page and 'id="ds-request-form"' not in page
    code, page = await service("GET", f"request?profile={EVIL}", "carol")
    assert code == 400 and "<img src=x" not in page
