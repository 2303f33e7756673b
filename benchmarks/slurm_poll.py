"""squeue invocations per minute: batchspawner's default vs the shared poller.

    ./dev.sh bench benchmarks/slurm_poll.py      (SLURM_POLL_SCALE, SLURM_POLL_WINDOW)

For 1, 50 and 200 running servers, the hub's own poll loop is reproduced
(JupyterHub polls every server each ``Spawner.poll_interval`` = 30 s with
10 % jitter, through a tornado ``PeriodicCallback``) and every ``squeue``
that results is counted by a wrapper in front of the real ``squeue``:

- ``batchspawner``: ``SlurmSpawner.poll()`` itself, default config
  (``squeue -h -j <id> -o '%T %B'``, one per server per poll);
- ``ds-compute``: ``SlurmBackend.poll()`` with its defaults
  (one shared ``squeue`` for all jobs per ``squeue_interval`` = 15 s +/- 20 %).

The jobs are real (held, so pending) jobs on the test cluster of
``tests/slurm/setup.sh`` when ``squeue`` answers; otherwise a fake squeue
stands in and the table says so.  Time is compressed by SLURM_POLL_SCALE
(default 5: a 30 s poll interval takes 6 s; more makes 200 batchspawner
servers saturate this 2-core machine and undercount) and the counts are converted
back to invocations per real minute.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_json  # noqa: E402
from traitlets.config import Config, LoggingConfigurable  # noqa: E402

from jupyter_ds_compute.backends.slurm import SlurmBackend  # noqa: E402
from jupyter_ds_compute.backends.squeue import SqueuePoller  # noqa: E402

SCALE = float(os.environ.get("SLURM_POLL_SCALE", "5"))
WINDOW = float(os.environ.get("SLURM_POLL_WINDOW", "120"))  # real seconds measured per case
HUB_POLL_INTERVAL = 30.0  # JupyterHub's Spawner.poll_interval default
HUB_POLL_JITTER = 0.1  # JupyterHub's Spawner.poll_jitter default
SERVERS = (1, 50, 200)


class _Parent(LoggingConfigurable):
    def __init__(self, n, config):
        super().__init__(config=config)
        self.user = SimpleNamespace(name=f"bench{n}")
        self.name = ""
        self._log_name = f"bench{n}"


def real_slurm():
    if not shutil.which("squeue"):
        return False
    return subprocess.run(["squeue", "--noheader", "-o", "%i"], capture_output=True).returncode == 0


def counting_squeue(tmp, real):
    """A squeue that appends a line to a file at each call, then answers."""
    counter = tmp / "calls"
    script = tmp / "squeue"
    target = 'exec squeue "$@"' if real else "echo 'PENDING (null)'"
    script.write_text(f'#!/bin/sh\necho x >> {counter}\n{target}\n')
    script.chmod(0o755)
    return script, counter


def submit_held(n):
    ids = []
    for _ in range(n):
        out = subprocess.run(
            ["sbatch", "--parsable", "--hold", "-J", "ds-compute-bench", "-o", "/dev/null", "-D", "/tmp",
             "--wrap", "true"],  # fmt: skip
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        ids.append(out.strip().split(";")[0])
    return ids


async def hub_poll_loop(poll, interval, stop_at, latencies):
    """What tornado's PeriodicCallback(poll_and_notify, interval, jitter) does."""
    next_at = time.monotonic() + random.uniform(0, interval)
    while True:
        # fixed rate, like PeriodicCallback: a slow poll does not shift the
        # schedule, missed ticks are skipped
        while next_at <= time.monotonic():
            next_at += interval * (1 + HUB_POLL_JITTER * (random.random() - 0.5))
        await asyncio.sleep(next_at - time.monotonic())
        if time.monotonic() >= stop_at:
            return
        t0 = time.monotonic()
        await poll()
        latencies.append(time.monotonic() - t0)


def batchspawner_pollers(job_ids, squeue):
    from batchspawner import SlurmSpawner

    spawners = []
    for job_id in job_ids:
        # the default query command, pointed at the counting squeue; the req_*
        # values that would otherwise need a hub user (only used for templating)
        query = SlurmSpawner.class_traits()["batch_query_cmd"].default_value.replace("squeue", str(squeue), 1)
        s = SlurmSpawner(exec_prefix="", batch_query_cmd=query, req_username="bench", req_homedir="/tmp",
                         req_keepvars="")  # fmt: skip
        s.job_id = job_id
        spawners.append(s.poll)
    return spawners


def ds_compute_pollers(job_ids, squeue):
    SqueuePoller._instances.clear()
    cfg = Config()
    cfg.SlurmBackend.squeue = [str(squeue)]
    defaults = SlurmBackend.class_traits()
    # the shipped defaults, compressed in time like the hub's poll interval
    cfg.SlurmBackend.squeue_interval = defaults["squeue_interval"].default_value / SCALE
    polls = []
    for n, job_id in enumerate(job_ids):
        b = SlurmBackend(_Parent(n, cfg))
        b.load_state({"job_id": job_id, "host": "", "port": 0, "workdir": ""})
        polls.append(b.poll)
    return polls


async def measure(polls, counter):
    interval = HUB_POLL_INTERVAL / SCALE
    window = WINDOW / SCALE
    latencies = []
    # warm-up of one interval so every server has been polled once, then count
    warm = time.monotonic() + interval
    stop_at = warm + window
    tasks = [asyncio.ensure_future(hub_poll_loop(p, interval, stop_at, latencies)) for p in polls]
    await asyncio.sleep(interval)
    before = _count(counter)
    await asyncio.sleep(window)
    during = _count(counter) - before
    for t in tasks:
        t.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if not isinstance(result, (type(None), asyncio.CancelledError)):
            raise result
    return during * 60.0 / WINDOW, statistics.median(latencies) * 1000 if latencies else 0.0


def _count(counter):
    try:
        return len(counter.read_text().splitlines())
    except FileNotFoundError:
        return 0


async def main():
    real = real_slurm()
    tmp = Path(tempfile.mkdtemp(prefix="slurm-poll-"))
    squeue, counter = counting_squeue(tmp, real)
    job_ids = submit_held(max(SERVERS)) if real else [str(1000 + i) for i in range(max(SERVERS))]
    rows, data = [], []
    try:
        for n in SERVERS:
            ids = job_ids[:n]
            bs, bs_ms = await measure(batchspawner_pollers(ids, squeue), counter)
            ours, ours_ms = await measure(ds_compute_pollers(ids, squeue), counter)
            rows.append([n, f"{bs:.1f}", f"{ours:.1f}", f"{bs / ours:.1f}x" if ours else "-",
                         f"{bs_ms:.0f}", f"{ours_ms:.1f}"])  # fmt: skip
            data.append({"servers": n, "batchspawner_per_min": bs, "ds_compute_per_min": ours,
                         "batchspawner_poll_ms_median": bs_ms, "ds_compute_poll_ms_median": ours_ms})  # fmt: skip
            print(f"  {n} servers done", file=sys.stderr)
    finally:
        if real:
            subprocess.run(["scancel", *job_ids], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nsqueue invocations per minute ({'real Slurm' if real else 'FAKE squeue: no cluster answered'}; "
        f"hub poll_interval 30 s, squeue_interval 15 s; time compressed {SCALE:g}x, {WINDOW:g} s measured per case)\n"
    )
    print_table(
        [
            "servers",
            "batchspawner squeue/min",
            "ds-compute squeue/min",
            "fewer",
            "bs poll ms (p50)",
            "ds poll ms (p50)",
        ],  # fmt: skip
        rows,
    )
    write_json("slurm_poll", {"real_slurm": real, "scale": SCALE, "window_s": WINDOW, "results": data})


if __name__ == "__main__":
    asyncio.run(main())
