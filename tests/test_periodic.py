"""service/periodic.py: the background loops' helper (issue 13 §4).

A failing call is logged with its traceback, naming the loop, and the loop
goes on; a crash of the loop itself is logged, not swallowed; stop() ends it.
"""

import asyncio
import logging

from jupyter_ds_compute import policy
from jupyter_ds_compute.service.accounting import LivePolicy
from jupyter_ds_compute.service.periodic import Periodic
from jupyter_ds_compute.service.store import Store

LOG = "test-periodic"


def policy_settings(overrides=None) -> dict:
    """The policy settings dict LivePolicy and IdleWatcher read (defaults + ``overrides``)."""
    out = {
        "budgets": {},
        "budget_period": "month",
        "budget_warn_fraction": 0.8,
        "accounting_interval": 10.0,
        "idle_check_interval": 60.0,
        "idle_action": "downshift",
    }
    out.update(overrides or {})
    out["budgets"] = policy.validate_budgets(out["budgets"])
    return out


async def wait_until(cond, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_a_failing_fn_is_logged_with_traceback_and_the_loop_goes_on(caplog):
    calls = []

    async def fn():
        calls.append(1)
        if len(calls) <= 2:
            raise ValueError(f"bad poll {len(calls)}")

    loop = Periodic("accounting", 0.01, fn, logging.getLogger(LOG))
    with caplog.at_level(logging.ERROR, logger=LOG):
        loop.start()
        await wait_until(lambda: len(calls) >= 4)
        assert loop.running
        await loop.stop()
    assert not loop.running and loop.failures == 2
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) == 2
    assert all("accounting loop" in r.getMessage() for r in failed)
    # a new error each time: each with its traceback
    assert failed[0].exc_info and failed[1].exc_info and "ValueError: bad poll 2" in caplog.text
    # stopped: no more calls
    n = len(calls)
    await asyncio.sleep(0.05)
    assert len(calls) == n


async def test_a_crashed_loop_is_logged_not_swallowed(caplog):
    class Boom(BaseException):
        pass

    async def fn():
        raise Boom("the loop itself died")

    loop = Periodic("idle", 0.01, fn, logging.getLogger(LOG))
    with caplog.at_level(logging.ERROR, logger=LOG):
        loop.start()
        await wait_until(lambda: loop.task.done())
        await asyncio.sleep(0)  # the done callback
        assert "The idle loop stopped unexpectedly: the loop itself died" in caplog.text
        await loop.stop()
    assert "The idle loop had crashed before it was stopped" in caplog.text


async def test_interval_is_read_each_round():
    settings = {"every": 10.0}
    calls = []

    async def fn():
        calls.append(1)

    loop = Periodic("x", lambda: settings["every"], fn)
    loop.start()
    await wait_until(lambda: len(calls) == 1)
    await asyncio.sleep(0.05)
    assert len(calls) == 1  # waiting 10 s
    await loop.stop()
    settings["every"] = 0.01
    loop.start()
    await wait_until(lambda: len(calls) >= 3)
    await loop.stop()


class DownHub:
    async def list_users(self, **kw):
        raise ConnectionError("hub is down")


async def test_accounting_loop_survives_a_down_hub(caplog):
    store = Store()
    live = LivePolicy(
        DownHub(), store, [], dict(policy_settings({}), accounting_interval=0.01), log=logging.getLogger(LOG)
    )
    with caplog.at_level(logging.INFO, logger=LOG):
        live.start()
        await wait_until(lambda: live._loop.failures >= 3)
        await live.stop()
    assert "The accounting loop's run failed" in caplog.text and "ConnectionError: hub is down" in caplog.text
    # the same error again: its traceback once, then one line each with the count
    assert sum(1 for r in caplog.records if r.exc_info) == 1
    assert "The accounting loop's run failed again (3 times in a row): hub is down" in caplog.text
    store.close()
