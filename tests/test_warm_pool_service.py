"""The service's side of warm pools, without a hub (fast): the hub's pool report
(``POST api/hub/pool``: token, 400 naming the field), the idle-time accounting
at the tier's price (the operator's, in no user's spending), and the metrics.
The real thing is tests/test_aws_pool_hub.py."""

from __future__ import annotations

import contextlib
import json
import time
import types

import pytest
from prometheus_client import generate_latest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application

from jupyter_ds_compute.service import accounting, warmpool
from jupyter_ds_compute.service.hubside import hub_handlers
from jupyter_ds_compute.service.metrics import make_registry
from jupyter_ds_compute.service.prepare import Board
from jupyter_ds_compute.service.store import Store

PROFILES = [
    {"slug": "small", "display_name": "Small", "hourly_cost": 0.1, "default": True},
    {"slug": "gpu", "display_name": "GPU", "hourly_cost": 3.6, "warm_pool": 1},
]


@pytest.fixture
def store():
    s = Store()
    yield s
    s.close()


@contextlib.asynccontextmanager
async def app(store):
    application = Application(
        hub_handlers("/services/ds-compute/"),
        spawner_token="secret",
        prepare_board=Board(),
        store=store,
        profiles=PROFILES,
    )
    sock, port = bind_unused_port()
    server = HTTPServer(application)
    server.add_sockets([sock])
    try:
        yield f"http://127.0.0.1:{port}/services/ds-compute/api/hub/pool"
    finally:
        server.stop()


async def post(url, body, token="secret"):
    resp = await AsyncHTTPClient().fetch(
        url,
        method="POST",
        body=body if isinstance(body, str) else json.dumps(body),
        headers={"Authorization": f"token {token}"},
        raise_error=False,
    )
    return resp.code, json.loads(resp.body) if resp.body else None


def report(tier="gpu", zone="us-east-1a", instances=None):
    return {"tier": tier, "zone": zone, "instances": instances if instances is not None else []}


async def test_pool_report_needs_the_spawner_token(store):
    async with app(store) as url:
        code, _ = await post(url, report(), token="wrong")
    assert code == 403
    assert warmpool.machines(store.db) == {}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"zone": "us-east-1a", "instances": []}, "tier"),
        (report(tier=""), "tier"),
        (report(tier="nope"), "tier"),
        (report(zone=5), "zone"),
        ({"tier": "gpu", "zone": "us-east-1a"}, "instances"),
        (report(instances={"id": "i-1"}), "instances"),
        (report(instances=["i-1"]), "instances"),
        (report(instances=[{"id": "", "since": 1.0}]), "instances"),
        (report(instances=[{"id": "i-1", "since": "yesterday"}]), "instances"),
        (report(instances=[{"id": "i-1", "since": True}]), "instances"),
        (report(instances=[{"id": "i-1", "since": time.time() + 3600}]), "instances"),
        (report(instances=[{"id": "i-1", "since": -5}]), "instances"),
    ],
)
async def test_bad_pool_report_is_400_naming_the_field(store, body, field):
    async with app(store) as url:
        code, answer = await post(url, body)
    assert code == 400, answer
    assert answer["field"] == field and field in answer["message"], answer
    assert warmpool.machines(store.db) == {}


async def test_bad_json_is_400(store):
    async with app(store) as url:
        code, answer = await post(url, "{not json")
    assert code == 400 and "JSON" in answer["message"]


async def test_pool_report_counts_the_machines_and_their_idle_cost(store):
    since = time.time() - 600
    async with app(store) as url:
        code, _ = await post(
            url, report(instances=[{"id": "i-1", "since": since}, {"id": "i-2", "since": since}])
        )
        assert code == 204
        assert warmpool.machines(store.db) == {"gpu": 2}
        # i-1 was taken: the next report leaves it out; its idle time ends there
        code, _ = await post(url, report(instances=[{"id": "i-2", "since": since}]))
        assert code == 204
    assert warmpool.machines(store.db) == {"gpu": 1}
    cost = warmpool.idle_cost(store.db)["gpu"]
    # two instances idle ~600 s each at 3.6/h: ~0.6 each
    assert 1.19 < cost < 1.22, cost


def test_idle_cost_is_time_in_the_pool_times_the_tier_price(store):
    db = store.db
    t0 = 1_000_000.0
    warmpool.record(db, "gpu", "us-east-1a", [{"id": "i-1", "since": t0}], 3.6, now=t0 + 60)
    warmpool.record(db, "gpu", "us-east-1a", [{"id": "i-1", "since": t0}], 3.6, now=t0 + 3600)
    assert warmpool.idle_cost(db, now=t0 + 3600) == {"gpu": pytest.approx(3.6)}
    # taken at the next report: closed there; a period starting half-way counts half
    warmpool.record(db, "gpu", "us-east-1a", [], 3.6, now=t0 + 3660)
    assert warmpool.idle_cost(db, now=t0 + 7200) == {"gpu": pytest.approx(3.66)}
    assert warmpool.idle_cost(db, since=t0 + 1830, now=t0 + 7200) == {"gpu": pytest.approx(1.83)}
    assert warmpool.machines(db, now=t0 + 3700) == {}
    # another zone's pool is another report: it does not close this one's
    warmpool.record(db, "gpu", "us-east-1a", [{"id": "i-3", "since": t0 + 7200}], 3.6, now=t0 + 7200)
    warmpool.record(db, "gpu", "us-east-1b", [], 3.6, now=t0 + 7300)
    assert warmpool.machines(db, now=t0 + 7300) == {"gpu": 1}


def test_a_pool_whose_hub_stopped_reporting_stops_costing(store):
    db = store.db
    t0 = 2_000_000.0
    warmpool.record(db, "gpu", "us-east-1a", [{"id": "i-1", "since": t0}], 3.6, now=t0)
    later = t0 + 10 * 3600
    assert warmpool.machines(db, now=later) == {}
    assert warmpool.idle_cost(db, now=later)["gpu"] == pytest.approx(3.6 * warmpool.STALE / 3600)
    # its next hub's first report (the instance ended meanwhile) closes it, still capped
    warmpool.record(db, "gpu", "us-east-1a", [], 3.6, now=later)
    assert warmpool.idle_cost(db, now=later)["gpu"] == pytest.approx(3.6 * warmpool.STALE / 3600)


def test_pool_cost_is_in_no_users_spending(store):
    t0 = time.time() - 3600
    warmpool.record(store.db, "gpu", "us-east-1a", [{"id": "i-1", "since": t0}], 3.6)
    acct = accounting.Accounting(store.db)
    assert acct.spent([""], t0 - 1) == 0.0
    assert acct.total_by_tier().get("gpu", 0.0) == 0.0
    assert warmpool.idle_cost(store.db)["gpu"] > 3.5


def test_metrics_export_machines_and_idle_cost(store):
    now = time.time()
    warmpool.record(store.db, "gpu", "us-east-1a", [{"id": "i-1", "since": now - 3600}], 3.6, now=now)
    live = types.SimpleNamespace(active=[], accounting=accounting.Accounting(store.db))
    text = generate_latest(make_registry(store, live, PROFILES)).decode()
    assert 'ds_compute_warm_pool_machines{tier="gpu"} 1.0' in text
    line = next(
        x for x in text.splitlines() if x.startswith('ds_compute_warm_pool_idle_cost_total{tier="gpu"}')
    )
    assert 3.59 < float(line.split()[-1]) < 3.62, line
    summary = warmpool.summary(store.db, now - 1800, now)
    assert summary == [
        {
            "tier": "gpu",
            "machines": 1,
            "period_cost": pytest.approx(1.8, abs=0.01),
            "total_cost": pytest.approx(3.6, abs=0.01),
        }
    ]
