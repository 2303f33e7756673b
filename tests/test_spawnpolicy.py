"""The spawner's budget client: a bounded per-user cache that a stop clears."""

from jupyter_ds_compute.spawnpolicy import BudgetClient


async def test_cache_is_used_until_the_users_server_stops():
    now = [0.0]
    client = BudgetClient("http://127.0.0.1:1/", "token", cache_seconds=10, clock=lambda: now[0])
    answers = iter([{"budget": {"state": "ok"}}, {"budget": {"state": "spent"}}])
    calls = []

    async def fetch(method, path):
        calls.append(path)
        return next(answers)

    client._fetch = fetch
    assert (await client.budget("alice", ["g"]))["state"] == "ok"
    now[0] = 5
    assert (await client.budget("alice", ["g"]))["state"] == "ok"  # cached
    assert len(calls) == 1
    client.forget("bob")  # someone else's stop changes nothing
    assert (await client.budget("alice", ["g"]))["state"] == "ok" and len(calls) == 1
    client.forget("alice")  # her server stopped: what it ran up counts now
    assert (await client.budget("alice", ["g"]))["state"] == "spent"
    assert len(calls) == 2
