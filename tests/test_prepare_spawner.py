"""The spawner's side of make before break, in process (fakes): what it prepares for
a wanted switch, what it reports, that the next start (a NEW spawner object, as
JupyterHub makes after a stop) takes the prepared machine, and that an unused
one is released."""

from __future__ import annotations

import asyncio

import pytest
from fakes import Memory, MemoryBackend, ReadyServer, hub_db, hub_spawn, hub_stop, make_spawner
from test_spawner_unit import PROFILES

from jupyter_ds_compute.backends.base import BackendError, HostInfo


class PreparingBackend(MemoryBackend):
    """The memory backend with ``prepare_ahead`` (records it, like the others)."""

    name = "preparing"
    prepares_ahead = True
    fail_with = None

    async def prepare_ahead(self, tier, cmd, env, volume_path, key):
        self.memory.record("backend.prepare_ahead", tier.slug)
        self.emit(f"Readying a {tier.slug} machine")
        await asyncio.sleep(0.01)
        if PreparingBackend.fail_with:
            raise BackendError(PreparingBackend.fail_with)
        self.prepared_key = key
        self.prepared_env = dict(env)
        return HostInfo(kind="local", id="memory-host")


class FakeWatch:
    """What the spawner uses of :class:`~jupyter_ds_compute.ahead.AheadWatch`."""

    def __init__(self, wanted=True):
        self.prepared = {}
        self.reports = []
        self.wanted = wanted

    async def report(self, switch_id, status, message="", host=""):
        self.reports.append((switch_id, status, message, host))
        return self.wanted


def intent(profile="gpu", switch="sw1", timeout=5):
    return {
        "switch": switch,
        "user": "alice",
        "server_name": "",
        "options": {"profile": profile},
        "timeout": timeout,
    }


async def prepared_spawner(new_spawner, watch, backend=PreparingBackend):
    sp = new_spawner(backend=backend)
    sp._watch = watch
    await hub_spawn(sp, {"profile": "small"})
    return sp


async def settle(watch, status_count=1):
    for _ in range(200):
        if sum(1 for r in watch.reports if r[1] != "preparing") >= status_count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no final report: {watch.reports}")


@pytest.fixture(scope="module")
def ready_server():
    server = ReadyServer()
    yield server
    server.close()


@pytest.fixture
def memory(ready_server):
    return Memory(address=ready_server.address)


@pytest.fixture
def new_spawner(memory):
    session = hub_db()
    yield lambda **kw: make_spawner(session, memory=memory, profile_list=PROFILES, gpu_devices=["0"], **kw)
    session.close()


@pytest.fixture(autouse=True)
def _reset():
    PreparingBackend.fail_with = None


async def test_prepares_reports_and_the_next_spawner_takes_it(new_spawner, memory):
    watch = FakeWatch()
    old = await prepared_spawner(new_spawner, watch)
    memory.calls.clear()
    old.want_prepared(intent(), watch)
    await settle(watch)
    assert [r[1] for r in watch.reports] == ["preparing", "ready"], watch.reports
    assert watch.reports[0][2] == "Readying a gpu machine" and watch.reports[1][3] == "memory-host"
    assert memory.steps() == ["backend.prepare_ahead"]  # the old server was not touched
    ahead = watch.prepared[("alice", "")]
    prepared = ahead["backend"]
    # the prepared environment is the target tier's (no token)
    assert prepared.prepared_env["DS_COMPUTE_TIER"] == "gpu"
    assert "JUPYTERHUB_API_TOKEN" not in prepared.prepared_env
    await hub_stop(old)
    # JupyterHub makes a new spawner object for the next start
    new = new_spawner(backend=PreparingBackend)
    new._watch = watch
    memory.calls.clear()
    await hub_spawn(new, {"profile": "gpu"})
    assert new._backend is prepared and prepared.spawner is new
    assert "backend.prepare_ahead" not in memory.steps()
    assert memory.servers["alice/"]["env"]["DS_COMPUTE_SERVER_KEY"] == prepared.prepared_key
    assert watch.prepared == {}
    await hub_stop(new)


async def test_backend_without_prepare_ahead_is_unsupported(new_spawner, memory):
    watch = FakeWatch()
    sp = await prepared_spawner(new_spawner, watch, backend=MemoryBackend)
    sp.want_prepared(intent(), watch)
    await settle(watch)
    assert watch.reports == [("sw1", "unsupported", "the memory backend cannot prepare a machine ahead", "")]
    assert watch.prepared == {}
    await hub_stop(sp)


async def test_failed_prepare_is_reported_and_released(new_spawner, memory):
    PreparingBackend.fail_with = "no capacity for gpu"
    watch = FakeWatch()
    sp = await prepared_spawner(new_spawner, watch)
    sp.want_prepared(intent(), watch)
    await settle(watch)
    assert watch.reports[-1][1:3] == ("failed", "no capacity for gpu")
    assert watch.prepared == {}
    await asyncio.sleep(0.05)
    assert memory.running() == ["alice/"]  # the old server runs on
    await hub_stop(sp)


async def test_bad_options_are_a_failed_prepare(new_spawner, memory):
    watch = FakeWatch()
    sp = await prepared_spawner(new_spawner, watch)
    sp.want_prepared(intent(profile="restricted"), watch)  # a group-restricted tier
    await settle(watch)
    assert watch.reports[-1][1] == "failed" and "gpu-team" in watch.reports[-1][2]
    await hub_stop(sp)


async def test_unused_machine_is_released_after_its_timeout(new_spawner, memory):
    watch = FakeWatch()
    sp = await prepared_spawner(new_spawner, watch)
    sp.want_prepared(intent(timeout=0.2), watch)
    await settle(watch)
    memory.calls.clear()
    await asyncio.sleep(0.4)
    assert watch.prepared == {}
    assert memory.steps() == ["backend.stop", "backend.release"]
    assert memory.calls[0][1:] == (True,)  # stop(now=True)
    await hub_stop(sp)


async def test_machine_no_longer_wanted_is_released(new_spawner, memory):
    watch = FakeWatch()
    sp = await prepared_spawner(new_spawner, watch)
    sp.want_prepared(intent(), watch)
    await settle(watch)
    sp.release_prepared_unless({"sw1"})
    assert ("alice", "") in watch.prepared  # still wanted
    memory.calls.clear()
    sp.release_prepared_unless(set())
    await asyncio.sleep(0.05)
    assert watch.prepared == {} and memory.steps() == ["backend.stop", "backend.release"]
    await hub_stop(sp)


async def test_service_that_no_longer_wants_it_gets_it_released(new_spawner, memory):
    watch = FakeWatch(wanted=False)  # the report is answered 404
    sp = await prepared_spawner(new_spawner, watch)
    sp.want_prepared(intent(), watch)
    await settle(watch)
    await asyncio.sleep(0.05)
    assert watch.prepared == {}
    assert "backend.stop" in memory.steps()
    await hub_stop(sp)


async def test_a_start_on_another_tier_releases_it(new_spawner, memory):
    watch = FakeWatch()
    old = await prepared_spawner(new_spawner, watch)
    old.want_prepared(intent(profile="gpu"), watch)
    await settle(watch)
    prepared = watch.prepared[("alice", "")]["backend"]
    await hub_stop(old)
    new = new_spawner(backend=PreparingBackend)
    new._watch = watch
    await hub_spawn(new, {"profile": "tuned"})  # not what it was prepared for
    assert new._backend is not prepared and watch.prepared == {}
    assert memory.servers["alice/"]["tier"] == "tuned"
    await hub_stop(new)
