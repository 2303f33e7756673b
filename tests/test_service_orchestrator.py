"""The switch state machine against a fake hub API (no hub, fast)."""

import asyncio

import pytest
from fakes import FakeHub, new_switch, statuses

from jupyter_ds_compute.service.orchestrator import Orchestrator
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


async def test_switch_succeeds(hub, store):
    sw = new_switch(store)
    rec = await orch(hub, store).run(sw["id"])
    assert rec["state"] == "succeeded", rec
    assert rec["error"] is None
    assert set(statuses(rec).values()) == {"done"}
    assert hub.servers[("alice", "")]["user_options"] == {"profile": "gpu"}
    # PATCH (while stopped) comes before POST
    assert [c[0] for c in hub.calls] == ["DELETE", "PATCH", "POST"]
    steps = {s["name"]: s for s in rec["steps"]}
    assert steps["wait-ready"]["message"].startswith("ready in")
    assert steps["verify"]["message"] == "running on tier gpu"
    audit = store.list_audit(switch_id=sw["id"])
    assert audit[0]["event"] == "final" and audit[0]["outcome"] == "succeeded"
    assert {a["outcome"] for a in audit if a["event"] == "step"} >= {"stop:done", "start:done", "verify:done"}


async def test_failed_start_rolls_back(hub, store):
    hub.broken.add("gpu")
    sw = new_switch(store)
    rec = await orch(hub, store).run(sw["id"])
    assert rec["state"] == "rolled_back", rec
    assert "wait-ready" in rec["error"] and "Spawn failed: tier is broken" in rec["error"]
    assert "previous tier small" in rec["error"]
    st = statuses(rec)
    assert st["wait-ready"] == "failed" and st["verify"] == "pending" and st["rollback"] == "done"
    m = hub.servers[("alice", "")]
    assert m["ready"] and m["user_options"] == {"profile": "small"}
    # the rollback restarted with the previous options, explicitly
    assert hub.calls[-1] == ("POST", "alice", "", {"profile": "small"})
    final = store.list_audit(switch_id=sw["id"])[0]
    assert final["outcome"] == "rolled_back" and final["reason"] == rec["error"]


async def test_start_500_reports_the_spawner_reason(hub, store):
    hub.crash_in_post.add("gpu")
    sw = new_switch(store)
    rec = await orch(hub, store).run(sw["id"])
    assert rec["state"] == "rolled_back"
    assert "step wait-ready failed: Spawn failed: exit status 3" in rec["error"]
    assert hub.servers[("alice", "")]["user_options"] == {"profile": "small"}


async def test_rollback_fails_too_leaves_server_stopped(hub, store):
    hub.broken.update({"gpu", "small"})
    sw = new_switch(store)
    rec = await orch(hub, store).run(sw["id"])
    assert rec["state"] == "failed", rec
    assert "failed too" in rec["error"] and "stopped" in rec["error"]
    assert statuses(rec)["rollback"] == "failed"
    m = hub.servers[("alice", "")]
    assert m["stopped"] and not m["pending"]
    assert store.list_audit(switch_id=sw["id"])[0]["outcome"] == "failed"


async def test_stop_failure_rolls_back_without_restart(hub, store):
    hub.fail_stop = True
    sw = new_switch(store)
    rec = await orch(hub, store).run(sw["id"])
    assert rec["state"] == "rolled_back"
    assert "stop exploded" in rec["error"]
    assert statuses(rec)["stop"] == "failed"
    rollback = rec["steps"][-1]
    assert rollback["message"] == "the server is still running on tier small"
    assert [c[0] for c in hub.calls] == ["DELETE"]


async def test_start_timeout_is_bounded(hub, store):
    hub.spawn_delay = 60
    sw = new_switch(store)
    o = orch(hub, store, start_timeout=0.2)
    rec = await asyncio.wait_for(o.run(sw["id"]), 10)
    # the rollback also times out (same fake), leaving the server stopped
    assert rec["state"] == "failed"
    assert "not ready after 0.2s" in rec["error"]
    assert hub.servers[("alice", "")]["stopped"]


async def test_someone_else_started_another_tier(hub, store):
    sw = new_switch(store)
    real_patch = hub.patch_user_options

    async def patch_then_user_launches(user, name, options):
        # the user clicks "Launch Server" in the gap with an old form
        await real_patch(user, name, options)
        hub.patch_user_options = real_patch  # once
        hub.servers[(user, name)].update(ready=True, stopped=False, user_options={"profile": "big"})

    hub.patch_user_options = patch_then_user_launches
    rec = await orch(hub, store).run(sw["id"])
    assert statuses(rec)["verify"] == "failed"
    assert "runs on tier 'big'" in rec["error"]
    assert rec["state"] == "rolled_back"
    assert hub.servers[("alice", "")]["user_options"] == {"profile": "small"}


# reconcile: a previous service process died mid-switch


def interrupted(store, at):
    """A switch whose process died while step ``at`` was running."""
    sw = new_switch(store)
    store.set_state(sw["id"], "running")
    for name in ("stop", "patch-options", "start", "wait-ready", "verify"):
        if name == at:
            store.set_step(sw["id"], name, "running")
            break
        store.set_step(sw["id"], name, "done", "ok")
    return sw


async def test_reconcile_stopped_server_starts_target(hub, store):
    sw = interrupted(store, "patch-options")
    hub.servers[("alice", "")].update(ready=False, stopped=True)
    tasks = await orch(hub, store).reconcile()
    await asyncio.gather(*tasks)
    rec = store.get_switch(sw["id"])
    assert rec["state"] == "succeeded", rec
    assert hub.servers[("alice", "")]["user_options"] == {"profile": "gpu"}
    assert [c[0] for c in hub.calls] == ["PATCH", "POST"]


async def test_reconcile_running_on_target_succeeds(hub, store):
    sw = interrupted(store, "wait-ready")
    hub.servers[("alice", "")]["user_options"] = {"profile": "gpu"}
    await asyncio.gather(*await orch(hub, store).reconcile())
    rec = store.get_switch(sw["id"])
    assert rec["state"] == "succeeded"
    assert set(statuses(rec).values()) == {"done"}
    assert hub.calls == []


async def test_reconcile_running_on_old_tier_is_rolled_back(hub, store):
    sw = interrupted(store, "stop")
    await asyncio.gather(*await orch(hub, store).reconcile())
    rec = store.get_switch(sw["id"])
    assert rec["state"] == "rolled_back"
    assert "still running on tier small" in rec["error"]
    assert hub.calls == []


async def test_reconcile_waits_for_pending_spawn(hub, store):
    sw = interrupted(store, "wait-ready")
    m = hub.servers[("alice", "")]
    m.update(ready=False, stopped=False, pending="spawn", user_options={"profile": "gpu"})
    asyncio.get_running_loop().call_later(0.05, m.update, {"pending": None, "ready": True})
    await asyncio.gather(*await orch(hub, store).reconcile())
    assert store.get_switch(sw["id"])["state"] == "succeeded"


async def test_reconcile_failed_spawn_rolls_back(hub, store):
    hub.broken.add("gpu")
    sw = interrupted(store, "patch-options")
    hub.servers[("alice", "")].update(ready=False, stopped=True)
    await asyncio.gather(*await orch(hub, store).reconcile())
    rec = store.get_switch(sw["id"])
    assert rec["state"] == "rolled_back"
    assert hub.servers[("alice", "")]["user_options"] == {"profile": "small"}


async def test_reconcile_pending_switch_runs_from_the_start(hub, store):
    sw = new_switch(store)  # accepted, never started
    await asyncio.gather(*await orch(hub, store).reconcile())
    assert store.get_switch(sw["id"])["state"] == "succeeded"
    assert [c[0] for c in hub.calls] == ["DELETE", "PATCH", "POST"]


async def test_reconcile_interrupted_rollback_finishes_it(hub, store):
    sw = interrupted(store, "wait-ready")
    store.set_step(sw["id"], "wait-ready", "failed", "Spawn failed: x")
    store.set_state(sw["id"], "running", error="step wait-ready failed: Spawn failed: x")
    store.add_step(sw["id"], "rollback")
    store.set_step(sw["id"], "rollback", "running")
    hub.servers[("alice", "")].update(ready=False, stopped=True, user_options={"profile": "gpu"})
    await asyncio.gather(*await orch(hub, store).reconcile())
    rec = store.get_switch(sw["id"])
    assert rec["state"] == "rolled_back"
    assert "Spawn failed: x" in rec["error"]
    assert hub.servers[("alice", "")]["user_options"] == {"profile": "small"}


async def test_reconcile_deleted_server_fails(hub, store):
    sw = interrupted(store, "start")
    del hub.servers[("alice", "")]
    await asyncio.gather(*await orch(hub, store).reconcile())
    rec = store.get_switch(sw["id"])
    assert rec["state"] == "failed" and "deleted" in rec["error"]


async def test_launch_keeps_one_task_per_switch(hub, store):
    sw = new_switch(store)
    o = orch(hub, store)
    t1 = o.launch(sw["id"])
    t2 = o.launch(sw["id"])
    assert t1 is t2
    await t1
    assert store.get_switch(sw["id"])["state"] == "succeeded"
    assert o.tasks == {}
