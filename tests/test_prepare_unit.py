"""Make before break without a hub: the service's board, its REST calls and the
orchestrator's prepare step against a fake hub (fast). The real thing is
tests/test_prepare_hub.py."""

import asyncio
import contextlib
import json
import types

import pytest
from fakes import FakeHub, new_switch, statuses
from prometheus_client import generate_latest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application

from jupyter_ds_compute.service import accounting
from jupyter_ds_compute.service.hubside import hub_handlers
from jupyter_ds_compute.service.metrics import make_registry
from jupyter_ds_compute.service.orchestrator import Orchestrator
from jupyter_ds_compute.service.prepare import Board
from jupyter_ds_compute.service.store import Store


@pytest.fixture
def store():
    s = Store()
    yield s
    s.close()


@pytest.fixture
def hub():
    h = FakeHub()
    h.add("alice")
    return h


def orch(hub, store, **kw):
    kw.setdefault("stop_timeout", 5)
    kw.setdefault("start_timeout", 5)
    return Orchestrator(hub, store, **kw)


class FakeSpawnerSide:
    """Watches the board as the hub's AheadWatch does and answers each wanted machine."""

    def __init__(self, board, answer="ready", message="", delay=0.0):
        self.board, self.answer, self.message, self.delay = board, answer, message, delay
        self.seen, self.released = [], []
        self.hub_calls_while_preparing = None
        self.task = asyncio.ensure_future(self.run())

    async def run(self):
        version, prepared = 0, set()
        while True:
            snap = await self.board.watch(version, 5)
            version = snap["version"]
            wanted = {w["switch"] for w in snap["wanted"]}
            for sid in prepared - wanted:
                self.released.append(sid)
            for intent in snap["wanted"]:
                if intent["switch"] not in prepared:
                    prepared.add(intent["switch"])
                    self.seen.append(intent)
                    asyncio.ensure_future(self.answer_one(intent))
            prepared &= wanted

    async def answer_one(self, intent):
        self.board.report(intent["switch"], "preparing", "job pending (Resources)")
        await asyncio.sleep(self.delay)
        if self.answer:
            self.board.report(intent["switch"], self.answer, self.message, "node1")

    def stop(self):
        self.task.cancel()


async def watched(board):
    await asyncio.sleep(0.01)
    assert board.watched()


async def test_prepare_ready_then_cut_over(hub, store):
    o = orch(hub, store)
    side = FakeSpawnerSide(o.board, delay=0.05)
    await watched(o.board)
    sw = new_switch(store)
    rec = await o.run(sw["id"])
    side.stop()
    assert rec["state"] == "succeeded", rec
    assert side.seen[0]["options"] == {"profile": "gpu"} and side.seen[0]["user"] == "alice"
    steps = {s["name"]: s for s in rec["steps"]}
    assert steps["prepare"]["status"] == "done" and steps["prepare"]["message"].startswith("ready on node1")
    # nothing was stopped before the machine was ready: prepare ended before stop began
    assert steps["prepare"]["finished"] <= steps["stop"]["started"]
    assert [c[0] for c in hub.calls] == ["DELETE", "PATCH", "POST"]
    assert o.board.wanted == {}  # dropped once started: the spawner releases nothing it used
    assert rec["phase"] == "done"


async def test_prepare_failure_touches_nothing(hub, store):
    o = orch(hub, store)
    side = FakeSpawnerSide(o.board, answer="failed", message="launcher killed (status -9)")
    await watched(o.board)
    sw = new_switch(store)
    rec = await o.run(sw["id"])
    await asyncio.sleep(0.05)
    side.stop()
    assert rec["state"] == "failed", rec
    assert "launcher killed" in rec["error"] and "not touched" in rec["error"]
    assert hub.calls == []  # the old server was never stopped
    assert hub.servers[("alice", "")]["user_options"] == {"profile": "small"}
    st = statuses(rec)
    assert st["prepare"] == "failed" and st["stop"] == "skipped"
    assert "rollback" not in st
    assert o.board.wanted == {}


async def test_prepare_timeout_fails_and_releases(hub, store):
    o = orch(hub, store, prepare_timeout=0.3)
    side = FakeSpawnerSide(o.board, answer=None)  # never ready
    await watched(o.board)
    sw = new_switch(store)
    rec = await o.run(sw["id"])
    await asyncio.sleep(0.05)
    side.stop()
    assert rec["state"] == "failed"
    assert "not ready within" in rec["error"] and "prepare_timeout" in rec["error"]
    assert hub.calls == []
    assert side.released == [sw["id"]]  # the spawner side is told to release it


async def test_prepare_progress_is_the_step_message(hub, store):
    o = orch(hub, store)
    side = FakeSpawnerSide(o.board, delay=0.5)
    await watched(o.board)
    sw = new_switch(store)
    task = asyncio.ensure_future(o.run(sw["id"]))
    await asyncio.sleep(0.2)
    rec = store.get_switch(sw["id"])
    assert rec["phase"] == "preparing"
    step = {s["name"]: s for s in rec["steps"]}["prepare"]
    assert step["status"] == "running" and step["message"] == "job pending (Resources)"
    rec = await task
    side.stop()
    assert rec["state"] == "succeeded"


async def test_unsupported_switches_in_order(hub, store):
    o = orch(hub, store)
    side = FakeSpawnerSide(o.board, answer="unsupported", message="the slurm backend cannot prepare ahead")
    await watched(o.board)
    sw = new_switch(store)
    rec = await o.run(sw["id"])
    side.stop()
    assert rec["state"] == "succeeded"
    assert "cannot prepare ahead" in {s["name"]: s for s in rec["steps"]}["prepare"]["message"]
    assert [c[0] for c in hub.calls] == ["DELETE", "PATCH", "POST"]


@pytest.mark.parametrize("mbb", [True, False])
async def test_no_watch_or_turned_off_switches_in_order(hub, store, mbb):
    o = orch(hub, store, make_before_break=mbb)
    if not mbb:
        side = FakeSpawnerSide(o.board)
        await watched(o.board)
    sw = new_switch(store)
    rec = await o.run(sw["id"])
    if not mbb:
        side.stop()
        assert side.seen == []
    assert rec["state"] == "succeeded"
    message = {s["name"]: s for s in rec["steps"]}["prepare"]["message"]
    assert message.startswith("skipped"), message


async def test_estimate_is_the_median_of_recent_switches(hub, store):
    o = orch(hub, store)
    side = FakeSpawnerSide(o.board)
    await watched(o.board)
    for _ in range(3):
        sw = new_switch(store)
        await o.run(sw["id"])
        hub.servers[("alice", "")]["user_options"] = {"profile": "small"}
    side.stop()
    est = store.get_switch(sw["id"])["estimate"]
    assert est["samples"] == 3
    assert est["prepare"] is not None and est["prepare"] >= 0
    assert est["cutover"] is not None and est["cutover"] > 0
    # another pair has no history
    assert store.estimate("gpu", "manycore") == {"prepare": None, "cutover": None, "samples": 0}


async def test_board_watch_answers_on_change_only():
    board = Board()
    snap = await board.watch(0, 0)  # a new watch (or another service's version) answers at once
    v0 = snap["version"]
    assert snap == {"version": v0, "wanted": []} and v0 > 10**12  # starts at the clock, in ms
    waiter = asyncio.ensure_future(board.watch(v0, 5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    board.want("s1", {"user": "a", "server_name": "", "options": {"profile": "gpu"}})
    snap = await asyncio.wait_for(waiter, 1)
    assert snap["version"] == v0 + 1 and snap["wanted"][0]["switch"] == "s1"
    # an old version answers at once
    assert (await board.watch(v0, 5))["version"] == v0 + 1
    assert board.report("nope", "ready") is False
    board.drop("s1")
    assert board.report("s1", "ready") is False


@contextlib.asynccontextmanager
async def hubside_app(store=None):
    """The service's api/hub/* calls on a port of their own (in the test's loop)."""
    board = Board()
    app = Application(
        hub_handlers("/services/ds-compute/"), spawner_token="secret", prepare_board=board, store=store
    )
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    try:
        yield board, f"http://127.0.0.1:{port}/services/ds-compute/"
    finally:
        server.stop()


async def call(url, method="GET", body=None, token="secret"):
    resp = await AsyncHTTPClient().fetch(
        url,
        method=method,
        body=None if body is None else (body if isinstance(body, str) else json.dumps(body)),
        headers={"Authorization": f"token {token}"},
        raise_error=False,
    )
    return resp.code, json.loads(resp.body) if resp.body else None


@pytest.mark.parametrize(
    "query, field",
    [("version=abc", "version"), ("version=-1", "version"), ("wait=61", "wait"), ("wait=1e3", "wait")],
)
async def test_watch_bad_query_is_400_naming_the_field(query, field):
    async with hubside_app() as (board, url):
        code, body = await call(url + "api/hub/prepare?" + query)
    assert code == 400 and body["field"] == field


async def test_hub_calls_need_the_spawner_token():
    async with hubside_app() as (board, url):
        code, _ = await call(url + "api/hub/prepare?version=0&wait=0", token="wrong")
        assert code == 403
        code, _ = await call(url + "api/hub/prepared", "POST", {"switch": "x", "status": "ready"}, token="")
        assert code == 403


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"switch": "s1", "status": "done"}, 400, "status"),
        ({"switch": 5, "status": "ready"}, 400, "switch"),
        ({"switch": "s1", "status": "ready", "message": ["x"]}, 400, "message"),
        ({"switch": "gone", "status": "ready"}, 404, "switch"),
    ],
)
async def test_prepared_report_checks_its_body(body, status, field):
    async with hubside_app() as (board, url):
        board.want("s1", {"user": "a", "server_name": "", "options": {"profile": "gpu"}})
        code, answer = await call(url + "api/hub/prepared", "POST", body)
    assert code == status and answer["field"] == field
    assert board.reports == {}


async def test_prepared_report_reaches_the_waiting_switch():
    async with hubside_app() as (board, url):
        board.want("s1", {"user": "a", "server_name": "", "options": {"profile": "gpu"}})
        waiting = asyncio.ensure_future(board.wait_report("s1", 5))
        code, _ = await call(
            url + "api/hub/prepared", "POST", {"switch": "s1", "status": "ready", "host": "n1"}
        )
        assert code == 204
        report = await asyncio.wait_for(waiting, 1)
    assert report.status == "ready" and report.host == "n1"


async def test_volume_move_events_are_audited_in_the_running_switch(store):
    sw = new_switch(store, "gpu")
    event = {
        "user": "alice", "server_name": "", "to_profile": "gpu", "volume": "move",
        "outcome": "started", "reason": "vol-1 (us-east-1a) -> vol-2 (us-east-1b) via snap-1",
    }  # fmt: skip
    async with hubside_app(store) as (board, url):
        code, _ = await call(url + "api/hub/events", "POST", event)
        assert code == 204
        for bad, field in (({"volume": "teleport"}, "volume"), ({"outcome": "maybe"}, "outcome")):
            code, answer = await call(url + "api/hub/events", "POST", dict(event, **bad))
            assert code == 400 and answer["field"] == field
        code, _ = await call(url + "api/hub/events", "POST", event, token="wrong")
        assert code == 403
    (row,) = [e for e in store.list_audit(user="alice") if e["event"] == "volume:move"]
    assert row["switch_id"] == sw["id"] and row["from_profile"] == "small" and row["outcome"] == "started"
    assert "via snap-1" in row["reason"]
    live = types.SimpleNamespace(active=[], accounting=accounting.Accounting(store.db))
    profiles = [
        {"slug": "small", "display_name": "Small", "default": True},
        {"slug": "gpu", "display_name": "GPU"},
    ]
    text = generate_latest(make_registry(store, live, profiles)).decode()
    assert 'ds_compute_volume_moves_total{outcome="started",tier="gpu"} 1.0' in text


async def test_held_cut_over_waits_for_go(hub, store):
    o = orch(hub, store, hold_timeout=5)
    side = FakeSpawnerSide(o.board)
    await watched(o.board)
    sw = new_switch(store)
    o.holds[sw["id"]] = asyncio.Event()
    task = asyncio.ensure_future(o.run(sw["id"]))
    await asyncio.sleep(0.3)
    assert o.cutover(sw["id"]) == {"held": True, "waiting": True, "timeout": 5}
    assert hub.calls == []  # prepared, not stopped: waiting for the requester to save
    assert "waiting for JupyterLab" in store.get_step(sw["id"], "prepare")["message"]
    assert o.release_hold(sw["id"]) is True
    rec = await task
    side.stop()
    assert rec["state"] == "succeeded"
    assert "saved in" in {s["name"]: s for s in rec["steps"]}["prepare"]["message"]
    assert o.release_hold(sw["id"]) is False  # over: nothing waits
    assert o.cutover(sw["id"]) is None


async def test_held_cut_over_goes_on_after_its_timeout(hub, store):
    o = orch(hub, store, hold_timeout=0.3)
    side = FakeSpawnerSide(o.board)
    await watched(o.board)
    sw = new_switch(store)
    o.holds[sw["id"]] = asyncio.Event()
    rec = await o.run(sw["id"])
    side.stop()
    assert rec["state"] == "succeeded"
    assert "no word from JupyterLab within 0s" in {s["name"]: s for s in rec["steps"]}["prepare"]["message"]
    assert [c[0] for c in hub.calls] == ["DELETE", "PATCH", "POST"]
