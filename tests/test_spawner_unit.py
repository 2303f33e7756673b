"""DSComputeSpawner in process: no hub process, no proxy, no server.

The spawner is built as JupyterHub builds it (``jupyterhub.user.User`` over an
in-memory hub database, see ``fakes.make_spawner``) and runs on the
in-memory backend and volume driver (``fakes.MemoryBackend`` /
``fakes.MemoryVolume``), which record every contract call; its readiness
check talks to a tiny HTTP server. Each test takes milliseconds; what only a
real hub shows stays in ``test_spawner_hub.py``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from fakes import Memory, ReadyServer, hub_db, hub_spawn, hub_stop, make_spawner
from jupyterhub.spawner import SpawnException

PROFILES = [
    {"display_name": "Small", "slug": "small", "default": True, "cpu": 1, "mem": "1G", "hourly_cost": 0.05},
    {
        "display_name": "GPU",
        "slug": "gpu",
        "cpu": 4,
        "mem": "8G",
        "gpu": 1,
        "hourly_cost": 1.2,
        "spawner_override": {
            "environment": {"ON_GPU": "1"},
            "default_url": "/gpu-lab",
            "args": ["--gpu-flag"],
        },
    },
    {
        "display_name": "Restricted",
        "slug": "restricted",
        "cpu": 1,
        "mem": "1G",
        "hourly_cost": 3.0,
        "allowed_groups": ["gpu-team"],
    },
    {"display_name": "Capped", "slug": "capped", "cpu": 1, "mem": "1G", "hourly_cost": 0.1, "max_servers": 1},
    {
        "display_name": "Tuned",
        "slug": "tuned",
        "cpu": 1,
        "mem": "1G",
        "hourly_cost": 0.1,
        "profile_options": {
            "memory": {
                "display_name": "Memory",
                "choices": {
                    "1g": {"display_name": "1 GiB", "default": True},
                    "2g": {"display_name": "2 GiB", "spawner_override": {"environment": {"TUNED_MEM": "2g"}}},
                },
            }
        },
    },
]

#: the contract calls of one start and one stop, in order (backends/base.py, volumes/base.py)
START_CALLS = [
    "backend.owner",
    "volume.ensure",
    "backend.prepare",
    "backend.bind",
    "volume.attach",
    "volume.describe",
    "backend.start",
    "backend.poll",
]
STOP_CALLS = ["backend.stop", "volume.detach", "volume.describe", "backend.release"]


@pytest.fixture(scope="module")
def ready_server():
    server = ReadyServer()
    yield server
    server.close()


@pytest.fixture
def memory(ready_server):
    return Memory(address=ready_server.address)


@pytest.fixture
def db():
    session = hub_db()
    yield session
    session.close()


@pytest.fixture
def new_spawner(db, memory):
    def make(name="alice", **kw):
        kw.setdefault("profile_list", PROFILES)
        kw.setdefault("gpu_devices", ["0", "1"])
        return make_spawner(db, name=name, memory=memory, **kw)

    return make


def server_of(memory, key="alice/"):
    return memory.servers[key]


# -- start and stop -----------------------------------------------------------------------


async def test_start_and_stop_call_the_contract_in_order(new_spawner, memory, ready_server):
    sp = new_spawner()
    assert await hub_spawn(sp, {"profile": "small"}) == ready_server.address
    assert memory.steps() == START_CALLS
    env = server_of(memory)["env"]
    assert env["DS_COMPUTE_TIER"] == "small"
    assert env["DS_COMPUTE_VOLUME_ID"] == "mem-alice"
    assert env["DS_COMPUTE_VOLUME_DRIVER"] == "memory"
    assert env["DS_COMPUTE_BACKEND"] == "fakes:MemoryBackend"
    assert env["HOME"] == env["DS_COMPUTE_VOLUME_PATH"] == "/memory/mem-alice" == sp.notebook_dir
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert json.loads(env["DS_COMPUTE_TIER_INFO"])["slug"] == "small"
    assert memory.running() == ["alice/"] and memory.attached() == ["mem-alice"]
    assert await sp.poll() is None

    memory.calls.clear()
    await hub_stop(sp)
    assert memory.steps() == ["backend.poll", *STOP_CALLS]
    assert memory.running() == [] and memory.attached() == []
    assert await sp.poll() == 0


async def test_gpu_override_does_not_leak_into_next_start(new_spawner, memory):
    sp = new_spawner()
    default_url, args = sp.default_url, list(sp.args)
    await hub_spawn(sp, {"profile": "gpu"})
    gpu = server_of(memory)
    assert gpu["env"]["ON_GPU"] == "1" and gpu["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert "--gpu-flag" in gpu["cmd"] and sp.default_url == "/gpu-lab"
    await hub_stop(sp)

    # the hub keeps the spawner object across starts
    await hub_spawn(sp, {"profile": "small"})
    small = server_of(memory)
    assert "ON_GPU" not in small["env"] and small["env"]["CUDA_VISIBLE_DEVICES"] == ""
    assert "--gpu-flag" not in small["cmd"]
    assert sp.default_url == default_url and list(sp.args) == args
    assert sp.environment == {}


async def test_choice_override_applies_and_resets(new_spawner, memory):
    sp = new_spawner()
    await hub_spawn(sp, {"profile": "tuned", "memory": "2g"})
    assert server_of(memory)["env"]["TUNED_MEM"] == "2g"
    assert sp.orm_spawner.user_options == {"profile": "tuned", "memory": "2g"}
    await hub_stop(sp)
    await hub_spawn(sp, {"profile": "tuned"})
    assert "TUNED_MEM" not in server_of(memory)["env"]
    # the stored options are completed with the default choice
    assert sp.orm_spawner.user_options == {"profile": "tuned", "memory": "1g"}


# -- state ---------------------------------------------------------------------------------


async def test_state_round_trip_finds_the_server_again(new_spawner, memory, db):
    sp = new_spawner()
    await hub_spawn(sp, {"profile": "gpu"})
    state = sp.get_state()
    assert json.loads(json.dumps(state)) == state
    assert state["backend"] == {"name": "fakes:MemoryBackend", "state": {"server": "alice/"}}
    assert state["volume"] == {"driver": "memory", "id": "mem-alice"}
    assert state["tier"] == "gpu" and state["last_options"] == {"profile": "gpu"}
    assert state["volume_info"]["attached_to"] == "memory-host"

    # a hub restart: a new spawner object, loaded from the stored state
    again = new_spawner()
    again.load_state(sp.orm_spawner.state)
    assert again.get_state() == state
    assert again.tier_slug == "gpu" and again.started_at == sp.started_at
    assert await again.poll() is None
    memory.calls.clear()
    await again.stop()
    assert memory.steps() == STOP_CALLS
    assert memory.running() == [] and memory.attached() == []


async def test_stop_clears_the_server_but_keeps_volume_and_last_options(new_spawner):
    sp = new_spawner()
    await hub_spawn(sp, {"profile": "gpu"})
    await hub_stop(sp)
    state = sp.orm_spawner.state
    assert "backend" not in state and "tier" not in state
    assert state["volume"] == {"driver": "memory", "id": "mem-alice"}
    assert state["last_options"] == {"profile": "gpu"}
    assert state["volume_info"]["attached_to"] is None


# -- failed starts ---------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["backend.prepare", "volume.attach", "backend.start"])
async def test_failed_start_cleans_up(new_spawner, memory, step):
    memory.fail(step)
    sp = new_spawner()
    with pytest.raises(SpawnException) as info:
        await hub_spawn(sp, {"profile": "small"})
    assert info.value.status_code == 500
    assert f"{step} failed (test)" in info.value.message
    steps = memory.steps()
    # the spawner's cleanup, then the hub's (a poll of the ended server)
    assert steps[steps.index(step) + 1 :] == [*STOP_CALLS, "backend.poll"]  # noqa: E203
    assert memory.running() == [] and memory.attached() == []
    assert sp._events[-1]["message"] == f"Failed: {step} failed (test)"
    # the last good options did not change
    assert "last_options" not in sp.get_state()


async def test_server_exiting_during_start_fails_with_its_log(new_spawner, memory):
    memory.exit_during_start = 3
    sp = new_spawner()
    with pytest.raises(SpawnException) as info:
        await hub_spawn(sp, {"profile": "small"})
    assert "exited during start (status 3)" in info.value.message
    assert "memory server log: last line" in info.value.message
    steps = memory.steps()
    assert steps[steps.index("backend.start") :] == [
        "backend.start",
        "backend.poll",
        *STOP_CALLS,
        "backend.poll",
    ]
    assert memory.attached() == []


async def test_failed_start_after_a_good_one_keeps_the_good_options(new_spawner, memory):
    sp = new_spawner()
    await hub_spawn(sp, {"profile": "gpu"})
    await hub_stop(sp)
    memory.fail("backend.start")
    with pytest.raises(SpawnException):
        await hub_spawn(sp, {"profile": "small"})
    assert sp.get_state()["last_options"] == {"profile": "gpu"}


# -- refusals: nothing starts, the last good options come back -------------------------------


@pytest.mark.parametrize(
    "options, status, words",
    [
        ({"profile": "nope"}, 400, ["profile", "nope"]),
        ({"profile": "tuned", "memory": "9g"}, 400, ["memory", "9g"]),
        ({"profile": "restricted"}, 403, ["gpu-team"]),
    ],
    ids=["unknown-tier", "bad-choice", "group"],
)
async def test_refused_options(new_spawner, memory, options, status, words):
    sp = new_spawner()
    await hub_spawn(sp, {"profile": "gpu"})
    await hub_stop(sp)
    memory.calls.clear()
    with pytest.raises(SpawnException) as info:
        await hub_spawn(sp, options)
    assert info.value.status_code == status
    for word in words:
        assert word in info.value.message
    assert [s for s in memory.steps() if s != "backend.poll"] == []  # nothing started
    assert sp.user_options == {"profile": "gpu"}
    assert sp.orm_spawner.user_options == {"profile": "gpu"}


async def test_group_member_may_start_restricted_tier(new_spawner, memory):
    sp = new_spawner("gina", groups=["gpu-team"])
    await hub_spawn(sp, {"profile": "restricted"})
    assert memory.running() == ["gina/"]


async def test_cap_counts_other_users_servers(new_spawner, memory):
    bob = new_spawner("bob")
    await hub_spawn(bob, {"profile": "capped"})
    alice = new_spawner("alice")
    with pytest.raises(SpawnException) as info:
        await hub_spawn(alice, {"profile": "capped"})
    assert info.value.status_code == 403
    assert "Capped tier full (1/1)" in info.value.message
    assert alice.orm_spawner.user_options == {}
    assert memory.running() == ["bob/"]
    await hub_stop(bob)
    await hub_spawn(alice, {"profile": "capped"})
    assert memory.running() == ["alice/"]


async def test_budget_refusal_restores_options(new_spawner, memory, monkeypatch):
    """Faked at the spawner's boundary (``_budget_refusal(tier, profiles)``),
    whatever the budget check asks behind it (the service's API)."""
    sp = new_spawner()
    await hub_spawn(sp, {"profile": "small"})
    await hub_stop(sp)
    asked = []

    async def refusal(tier, profiles):
        asked.append(tier.slug)
        return "budget exhausted (test)" if tier.slug == "gpu" else None

    monkeypatch.setattr(sp, "_budget_refusal", refusal)
    with pytest.raises(SpawnException) as info:
        await hub_spawn(sp, {"profile": "gpu"})
    assert info.value.status_code == 403 and "budget exhausted (test)" in info.value.message
    assert asked == ["gpu"]
    assert sp.orm_spawner.user_options == {"profile": "small"}
    await hub_spawn(sp, {"profile": "small"})
    assert server_of(memory)["tier"] == "small"


# -- progress, poll, stop ----------------------------------------------------------------------


async def test_progress_follows_the_start(new_spawner):
    sp = new_spawner()
    events = []
    start = asyncio.ensure_future(hub_spawn(sp, {"profile": "gpu"}))
    while sp._start_future is None:
        await asyncio.sleep(0)
    async for event in sp.progress():
        events.append(event)
    await start
    messages = [e["message"] for e in events]
    assert messages[0] == "Preparing volume for alice"
    assert "Found a memory machine for gpu" in messages  # the backend's own message
    assert "Attaching volume mem-alice on memory-host" in messages
    assert messages[-1] == "Server ready on GPU"
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 95


async def test_poll_reports_a_server_that_ended(new_spawner, memory):
    sp = new_spawner()
    assert await sp.poll() == 0  # never started
    await hub_spawn(sp, {"profile": "small"})
    assert await sp.poll() is None
    server_of(memory)["status"] = 1  # the server died
    assert await sp.poll() == 1
    # stopping an ended server is fine, and so is stopping twice
    await sp.stop()
    await sp.stop(now=True)
    assert memory.attached() == []


# -- deleting the user or named server ---------------------------------------------------------


@pytest.mark.parametrize(
    "driver, delete_volume, deleted",
    [
        ("fakes:MemoryVolume", None, False),
        ("fakes:MemoryVolume", True, True),
        ("fakes:CloudMemoryVolume", None, True),
        ("fakes:CloudMemoryVolume", False, False),
    ],
)
async def test_delete_forever_per_delete_volume(new_spawner, memory, driver, delete_volume, deleted):
    from traitlets.config import Config

    cfg = Config()
    cfg.DSComputeSpawner.volume_driver = driver
    cfg.CloudMemoryVolume.memory = memory
    sp = new_spawner(config=cfg, delete_volume=delete_volume)
    await hub_spawn(sp, {"profile": "small"})
    await hub_stop(sp)
    volume_id = sp.volume.volume_id
    assert volume_id in memory.volumes
    await sp.delete_forever()
    assert (volume_id not in memory.volumes) == deleted
    assert ("volume.delete" in memory.steps()) == deleted


async def test_delete_forever_never_deletes_a_volume_in_use(new_spawner, memory, caplog):
    sp = new_spawner(delete_volume=True)
    await hub_spawn(sp, {"profile": "small"})
    await sp.delete_forever()  # still running: refused by the spawner
    assert "volume.delete" not in memory.steps() and "mem-alice" in memory.volumes
    assert "its server is still running" in caplog.text
    await hub_stop(sp)
    memory.volumes["mem-alice"]["attached_to"] = "elsewhere"  # a stale attachment
    await sp.delete_forever()  # refused by the driver: logged, not raised
    assert "mem-alice" in memory.volumes
    assert "not deleting memory volume mem-alice" in caplog.text


@pytest.mark.parametrize("kind", ["static", "callable"])
async def test_profile_list_is_validated_once(new_spawner, monkeypatch, kind):
    """As KubeSpawner's _get_initialized_profile_list: a static list is
    validated when the config loads, a callable's list once per start; the
    options check, overrides, the server's tier list and the catalogue all
    reuse it (it was ~6 validations per spawn)."""
    from jupyter_ds_compute import tiers

    sp = new_spawner(profile_list=PROFILES if kind == "static" else (lambda spawner: PROFILES))
    loads = []
    original = tiers._normalize_profile
    monkeypatch.setattr(tiers, "_normalize_profile", lambda *a: loads.append(a[2]) or original(*a))
    await hub_spawn(sp, {"profile": "tuned", "memory": "2g"})
    assert len(loads) == (0 if kind == "static" else len(PROFILES)), loads
    await hub_stop(sp)
