"""One small helper for the service's background loops (accounting, idle).

``Periodic(name, interval, fn, log)`` calls ``await fn()`` every
``interval`` seconds (the next call ``interval`` after the previous one
ended) from :meth:`Periodic.start` until :meth:`Periodic.stop`:

- a call that raises is logged with its traceback, naming the loop, and the
  loop goes on at the next interval (one bad poll must not end accounting);
  the same error again in the next runs is one warning line each (with the
  count), so a lasting refusal (a missing scope) does not flood the log;
- if the loop itself ends other than by :meth:`stop` (a bug here, or a
  ``BaseException`` from ``fn``), that is logged as an error with its
  traceback when it happens, and again by :meth:`stop`: nothing hides a
  crashed loop;
- :meth:`stop` cancels the loop and waits for it; only that cancellation is
  absorbed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

__all__ = ["Periodic"]


class Periodic:
    """Run ``fn`` every ``interval`` seconds in the background (see the module docstring).

    ``interval`` may be a number or a callable returning one (read before
    each wait, so a changed setting applies at the next round).
    """

    def __init__(
        self,
        name: str,
        interval: float | Callable[[], float],
        fn: Callable[[], Awaitable[object]],
        log: logging.Logger | None = None,
    ):
        self.name = name
        self.interval = interval
        self.fn = fn
        self.log = log or logging.getLogger(__name__)
        self.task: asyncio.Task | None = None
        #: calls that raised since start (for tests and metrics)
        self.failures = 0

    def _interval(self) -> float:
        return float(self.interval() if callable(self.interval) else self.interval)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def run(self) -> None:
        """The loop: call, log a failure, wait, forever."""
        same = 0  # failures in a row with the same error as the last one
        last = None
        while True:
            try:
                await self.fn()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failures += 1
                what = (type(e), str(e))
                if what == last:
                    # the traceback was logged at the first one: one line per repeat
                    same += 1
                    self.log.warning(
                        "The %s loop's run failed again (%d times in a row): %s", self.name, same + 1, e
                    )
                else:
                    same, last = 0, what
                    self.log.exception(
                        "The %s loop's run failed; trying again in %gs", self.name, self._interval()
                    )
            else:
                if last is not None:
                    self.log.info("The %s loop's run works again", self.name)
                same, last = 0, None
            await asyncio.sleep(self._interval())

    def start(self) -> None:
        if self.running:
            return
        self.task = asyncio.ensure_future(self.run())
        self.task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        self.log.error("The %s loop stopped unexpectedly: %s", self.name, exc or "it returned", exc_info=exc)

    async def stop(self) -> None:
        """Cancel the loop and wait for it to end; a loop that had crashed is reported."""
        task, self.task = self.task, None
        if task is None:
            return
        if task.done():
            if not task.cancelled() and task.exception() is not None:
                self.log.error(
                    "The %s loop had crashed before it was stopped: %s", self.name, task.exception()
                )
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and getattr(current, "cancelling", lambda: 0)():
                raise  # stop() itself was cancelled, not only the loop
