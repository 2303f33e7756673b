"""One ``squeue`` per interval for every Slurm job of the hub.

batchspawner asks ``squeue -j <id>`` once per server at every poll, so a hub
with a few hundred servers runs a few hundred ``squeue`` a minute against the
cluster's controller.  Here every server's ``poll()`` reads a shared, cached
answer: the first poll after the cache went stale runs one ``squeue`` for all
tracked jobs (under a lock, so concurrent polls wait for that one call), the
others reuse it.  The cache lifetime is the configured interval with random
jitter, so several hubs (or a hub restarted with many servers) do not beat
in step.

Pure asyncio, no hub objects: :mod:`benchmarks.slurm_poll` drives it
directly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import time
from dataclasses import dataclass

log = logging.getLogger("JupyterHub")

#: squeue's answer for one job: id | long state | batch host | reason
FORMAT = "%i|%T|%B|%r"


@dataclass(frozen=True)
class JobInfo:
    """What squeue said about one job.

    ``state`` is Slurm's long state (``PENDING``, ``RUNNING``, ``TIMEOUT``,
    ...); ``reason`` its reason code (``Resources``, ``Priority``, ``None``).
    """

    job_id: str
    state: str
    host: str
    reason: str


class SqueueUnavailable(Exception):
    """squeue failed or timed out: the controller's answer is unknown."""


def parse(output: str) -> dict[str, JobInfo]:
    """``{job_id: JobInfo}`` from ``squeue --noheader --format=FORMAT`` output."""
    jobs = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[0]:
            continue
        job_id, state, host, reason = parts
        # array/het job ids look like 42_1 or 42+0; we only submit plain jobs
        jobs[job_id] = JobInfo(job_id, state, "" if host in ("(null)", "n/a") else host, reason)
    return jobs


class SqueuePoller:
    """A process-wide cache of ``squeue`` for the jobs of every server.

    Use :meth:`shared` to get the one instance per ``squeue`` command line.
    """

    _instances: dict[tuple, "SqueuePoller"] = {}

    def __init__(self, command=("squeue",), interval=15.0, jitter=0.2, timeout=30.0):
        self.command = tuple(command)
        self.interval = interval
        self.jitter = jitter
        self.timeout = timeout
        self.jobs: set[str] = set()
        #: how many times squeue ran (the benchmark reads this)
        self.calls = 0
        self._lock = asyncio.Lock()
        self._result: dict[str, JobInfo] = {}
        self._queried: frozenset = frozenset()
        self._fetched = float("-inf")
        self._ttl = interval
        self._error: SqueueUnavailable | None = None

    @classmethod
    def shared(cls, command=("squeue",), **settings) -> "SqueuePoller":
        """The instance for ``command``; ``settings`` update its interval etc."""
        key = tuple(command)
        poller = cls._instances.get(key)
        if poller is None:
            poller = cls._instances[key] = cls(command, **settings)
        else:
            for name, value in settings.items():
                setattr(poller, name, value)
        return poller

    def track(self, job_id: str) -> None:
        self.jobs.add(str(job_id))

    def untrack(self, job_id: str) -> None:
        self.jobs.discard(str(job_id))

    def _fresh(self, job_id: str, max_age: float | None) -> bool:
        age = time.monotonic() - self._fetched
        limit = self._ttl if max_age is None else min(max_age, self._ttl)
        return job_id in self._queried and age < limit

    async def get(self, job_id, max_age: float | None = None) -> JobInfo | None:
        """Slurm's view of ``job_id``; None when Slurm does not know it (any more).

        ``max_age`` (seconds) asks for an answer at most that old (a starting
        server wants one every half second; all starting servers still share
        each call). Raises :class:`SqueueUnavailable` when squeue fails.
        """
        job_id = str(job_id)
        self.track(job_id)
        if not self._fresh(job_id, max_age):
            async with self._lock:
                # another poll may have refreshed while we waited for the lock
                if not self._fresh(job_id, max_age):
                    await self._refresh()
        if self._error is not None:
            raise self._error
        return self._result.get(job_id)

    async def _refresh(self) -> None:
        jobs = frozenset(self.jobs)
        argv = [*self.command, "--noheader", "--states=all", f"--jobs={','.join(sorted(jobs, key=_job_key))}",
                f"--format={FORMAT}"]  # fmt: skip
        self.calls += 1
        started = time.monotonic()
        try:
            out, err, rc = await _run(argv, self.timeout)
        except (OSError, asyncio.TimeoutError) as e:
            self._failed(argv, f"{type(e).__name__}: {e}")
            return
        if rc and "Invalid job id" in err:
            # every job we asked about is gone from the controller
            out, rc = "", 0
        if rc:
            self._failed(argv, f"exit status {rc}: {err.strip()}")
            return
        self._result = parse(out)
        self._queried = jobs
        self._error = None
        self._fetched = time.monotonic()
        self._ttl = self.interval * random.uniform(1 - self.jitter, 1 + self.jitter)
        log.debug("squeue for %d jobs took %.3fs", len(jobs), self._fetched - started)

    def _failed(self, argv, detail):
        log.warning("squeue failed (%s): %s", detail, " ".join(argv[:3]) + " ...")
        self._error = SqueueUnavailable(detail)
        # do not hammer a struggling controller: keep the failure for a while too
        self._queried = frozenset(self.jobs)
        self._fetched = time.monotonic()
        self._ttl = min(self.interval, 5.0) * random.uniform(1 - self.jitter, 1 + self.jitter)


def _job_key(job_id):
    return (len(job_id), job_id)


async def _run(argv, timeout):
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out.decode(errors="replace"), err.decode(errors="replace"), proc.returncode
