"""The ds-compute service's SQLite store (no hub)."""

import pytest

from jupyter_ds_compute.service import store as store_mod
from jupyter_ds_compute.service.store import STEP_NAMES, Store, SwitchInFlight


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/ds.sqlite")
    yield s
    s.close()


def new_switch(store, user="alice", server_name="", to="gpu", **kw):
    return store.create_switch(
        user=user,
        server_name=server_name,
        requested_by=kw.pop("requested_by", user),
        from_profile=kw.pop("from_profile", "small"),
        to_profile=to,
        from_options={"profile": "small"},
        to_options={"profile": to},
        next_url=kw.pop("next_url", "/user/alice/lab"),
        validate_message="ok",
    )


def test_create_and_get(store):
    rec = new_switch(store)
    assert rec["state"] == "pending"
    assert [s["name"] for s in rec["steps"]] == list(STEP_NAMES)
    assert rec["steps"][0]["status"] == "done"
    assert all(s["status"] == "pending" for s in rec["steps"][1:])
    assert store.get_switch(rec["id"]) == rec
    assert store.get_switch("nope") is None
    assert rec["from_options"] == {"profile": "small"}
    assert rec["created"].endswith("Z")
    assert rec["finished"] is None and rec["duration"] is None


def test_one_active_switch_per_server(store):
    first = new_switch(store)
    with pytest.raises(SwitchInFlight) as e:
        new_switch(store, to="big")
    assert e.value.switch_id == first["id"]
    # another server of the same user, and another user, are independent
    new_switch(store, server_name="other")
    new_switch(store, user="bob")
    # once final, a new switch of that server is accepted
    store.set_state(first["id"], "succeeded")
    second = new_switch(store, to="big")
    assert second["id"] != first["id"]


def test_steps_and_times(store, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(store_mod, "utcnow", lambda: clock[0])
    rec = new_switch(store)
    store.set_step(rec["id"], "stop", "running")
    clock[0] += 2.5
    store.set_step(rec["id"], "stop", message="waiting")
    store.set_step(rec["id"], "stop", "done", "stopped in 2.5s")
    step = store.get_step(rec["id"], "stop")
    assert step["status"] == "done"
    assert step["duration"] == 2.5
    assert step["message"] == "stopped in 2.5s"
    store.add_step(rec["id"], "rollback")
    store.add_step(rec["id"], "rollback")  # idempotent
    names = [s["name"] for s in store.get_switch(rec["id"])["steps"]]
    assert names == list(STEP_NAMES) + ["rollback"]
    clock[0] += 1
    store.set_state(rec["id"], "rolled_back", error="why")
    rec = store.get_switch(rec["id"])
    assert rec["state"] == "rolled_back" and rec["error"] == "why"
    assert rec["duration"] == 3.5


def test_lists_and_audit(store):
    a = new_switch(store)
    b = new_switch(store, user="bob")
    assert [s["id"] for s in store.list_switches()] == [b["id"], a["id"]]
    assert [s["id"] for s in store.list_switches(user="alice")] == [a["id"]]
    assert len(store.list_switches(limit=1)) == 1
    assert {s["id"] for s in store.unfinished_switches()} == {a["id"], b["id"]}
    store.set_state(a["id"], "failed", error="x")
    assert [s["id"] for s in store.unfinished_switches()] == [b["id"]]

    store.audit("request", actor="bob", user="alice", outcome="refused", reason="403: no")
    store.audit("final", actor="alice", user="alice", switch_id=a["id"], outcome="failed", duration=1.5)
    rows = store.list_audit()
    assert [r["event"] for r in rows] == ["final", "request"]
    assert rows[1]["reason"] == "403: no" and rows[1]["time"].endswith("Z")
    assert [r["event"] for r in store.list_audit(switch_id=a["id"])] == ["final"]
    assert len(store.list_audit(limit=1)) == 1


def test_persists_across_connections(tmp_path):
    url = f"sqlite:///{tmp_path}/ds.sqlite"
    s1 = Store(url)
    rec = new_switch(s1)
    s1.close()
    s2 = Store(url)
    assert s2.get_switch(rec["id"])["to_profile"] == "gpu"
    with pytest.raises(SwitchInFlight):
        new_switch(s2)
    s2.close()


def test_bad_db_url():
    with pytest.raises(ValueError, match="sqlite"):
        Store("postgresql://x/y")
