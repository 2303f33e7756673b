"""What the service wants prepared, and what the hub's spawner says about it.

A make-before-break switch (docs/internals.md, "Make before break") first
asks for the target machine. The service cannot reach the spawner's
backends (they live in the hub process), and the hub's REST API has no
call for it, so the spawner side keeps **one watch** on the service:
``GET api/hub/prepare?version=N&wait=S`` (the spawner's token, like
``api/hub/budget``) answers with the whole set of wanted machines as soon
as it differs from version ``N`` (else after ``S`` seconds, unchanged).
The spawner prepares what is wanted and not prepared, releases what it
prepared and is no longer wanted, and reports each switch's progress with
``POST api/hub/prepared``. Level-triggered: after a restart of either side
the next answer is the truth, so nothing is lost and nothing leaks.

Pure bookkeeping on the service's loop; no I/O.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

__all__ = ["PREPARE_STATUSES", "Board", "Report"]

#: what the spawner may report for a switch's prepared machine
PREPARE_STATUSES = ("preparing", "ready", "failed", "unsupported", "released")

#: a watch is "live" while its last call is at most this old (seconds)
WATCH_FRESH = 60.0


@dataclass
class Report:
    status: str = "preparing"
    message: str = ""
    host: str = ""
    updated: float = field(default_factory=time.monotonic)


class Board:
    """The wanted set, its version, the spawner's reports, and who waits for them."""

    def __init__(self):
        # versions start at the clock (ms), so a restarted service never repeats the
        # version a hub's watch last saw (it would wait instead of answering)
        self.version = int(time.time() * 1000)
        self.wanted: dict[str, dict] = {}
        self.reports: dict[str, Report] = {}
        self._changed = asyncio.Event()
        self._reported: dict[str, asyncio.Event] = {}
        self.last_watch = 0.0  # monotonic time of the last watch call (0: never)

    # the orchestrator's side

    def watched(self) -> bool:
        """True while a spawner watches (a call within :data:`WATCH_FRESH` seconds, or one waiting now)."""
        return bool(self.last_watch) and time.monotonic() - self.last_watch <= WATCH_FRESH

    def want(self, switch_id: str, intent: dict) -> None:
        """Ask for a prepared machine for a switch (``intent``: user, server_name, options, timeout)."""
        self.wanted[switch_id] = dict(intent, switch=switch_id)
        self.reports.pop(switch_id, None)
        self._bump()

    def drop(self, switch_id: str) -> None:
        """No longer wanted (the switch used it or ended): the spawner releases what is left."""
        if self.wanted.pop(switch_id, None) is not None:
            self._bump()
        self._reported.pop(switch_id, None)

    async def wait_report(self, switch_id: str, timeout: float, on_message=None) -> Report:
        """The first final report (``ready``/``failed``/``unsupported``) for ``switch_id``;
        ``on_message(report)`` for each ``preparing`` one. Raises ``asyncio.TimeoutError``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = None
        while True:
            report = self.reports.get(switch_id)
            if report is not None and report is not seen:
                seen = report
                if report.status != "preparing":
                    return report
                if on_message is not None:
                    on_message(report)
            event = self._reported.setdefault(switch_id, asyncio.Event())
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError
            try:
                await asyncio.wait_for(event.wait(), remaining)
            finally:
                event.clear()

    # the spawner's side (api/hub/*)

    def snapshot(self) -> dict:
        return {"version": self.version, "wanted": list(self.wanted.values())}

    async def watch(self, version: int, wait: float) -> dict:
        """The wanted set once its version differs from ``version`` (or after ``wait`` seconds)."""
        self.last_watch = time.monotonic()
        try:
            if version == self.version and wait > 0:
                try:
                    await asyncio.wait_for(self._changed.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            return self.snapshot()
        finally:
            self.last_watch = time.monotonic()

    def report(self, switch_id: str, status: str, message: str = "", host: str = "") -> bool:
        """Record what the spawner says; False when nothing wants that switch prepared."""
        if switch_id not in self.wanted:
            return False
        self.reports[switch_id] = Report(status=status, message=message, host=host)
        event = self._reported.get(switch_id)
        if event is not None:
            event.set()
        return True

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
