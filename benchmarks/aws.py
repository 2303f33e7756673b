"""AWS backend benchmark against a local moto server (real HTTP, 127.0.0.1).

    python benchmarks/aws.py [--switches 10] [--concurrent 100]

1. Per switch (small -> gpu -> small ...), one user at a time: AWS API calls
   and orchestration time of the ec2 backend + ebs volume (stop the old
   instance, detach, launch, wait running, attach, hand over the launch
   spec). Emulated boot is excluded: no instance emulator runs, the server
   is not waited for.
2. N concurrent switches behind EC2-like token buckets in front of moto
   (RunInstances burst 5, refill 2/s; other mutating calls 200/5 per s;
   non-mutating 100/20 per s): all must complete, none may fail on
   throttling; total time reported.

Run from the repo root (it imports ``tests/aws``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

from aws.harness import FakeSpawner, moto_server, tier  # noqa: E402
from traitlets.config import Config  # noqa: E402

from jupyter_ds_compute.backends.ec2 import EC2Backend  # noqa: E402
from jupyter_ds_compute.volumes.ebs import EBSVolume  # noqa: E402

MUTATING = [
    "AttachVolume", "DetachVolume", "TerminateInstances", "StopInstances", "StartInstances",
    "CreateTags", "CreateVolume",
]  # fmt: skip
NON_MUTATING = ["DescribeInstances", "DescribeVolumes", "DescribeSubnets"]


def config(subnet):
    c = Config()
    c.AWS.hub_id = "bench"
    c.EC2Backend.ami_id = "ami-12c6146b"
    c.EC2Backend.subnet_ids = [subnet]
    c.EC2Backend.poll_interval = 0
    c.EBSVolume.availability_zone = "us-east-1a"
    c.EBSVolume.size = 1
    return c


class Server:
    """One user's server as the spawner drives it (start / stop order)."""

    def __init__(self, user, cfg):
        self.spawner = FakeSpawner(user, config=cfg)
        self.spawner.volume = EBSVolume(self.spawner)
        self.backend = None

    async def start(self, slug):
        volume = self.spawner.volume
        self.backend = EC2Backend(self.spawner)
        await volume.ensure()
        host = await self.backend.prepare(tier(slug))
        path = await volume.attach(host)
        await self.backend.start(tier(slug), ["jupyterhub-singleuser"], {"JUPYTERHUB_API_TOKEN": "x"}, path)

    async def stop(self):
        await self.backend.stop()
        await self.spawner.volume.detach()
        await self.backend.release()

    async def switch(self, slug):
        await self.stop()
        await self.start(slug)


async def sequential(moto, cfg, n):
    srv = Server("seq-user", cfg)
    await srv.start("small")
    times, calls = [], []
    per_action = {}
    for i in range(n):
        moto.clear_calls()
        t0 = time.perf_counter()
        await srv.switch("gpu" if i % 2 == 0 else "small")
        times.append(time.perf_counter() - t0)
        c = moto.stats()["calls"]
        calls.append(sum(c.values()))
        for k, v in c.items():
            per_action[k] = per_action.get(k, 0) + v
    await srv.stop()
    return times, calls, {k: v / n for k, v in sorted(per_action.items())}


async def concurrent(moto, cfg, n):
    servers = [Server(f"user-{i:03d}", cfg) for i in range(n)]
    await asyncio.gather(*(s.start("small") for s in servers))
    moto.clear_calls()
    limits = {"RunInstances": [5, 2]}
    limits.update({a: [200, 5] for a in MUTATING})
    limits.update({a: [100, 20] for a in NON_MUTATING})
    moto.rate(limits)
    durations, failures = [], []

    async def one(s):
        t0 = time.perf_counter()
        try:
            await s.switch("gpu")
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures.append(repr(e))
        durations.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(s) for s in servers))
    total = time.perf_counter() - t0
    stats = moto.stats()
    moto.rate({})
    await asyncio.gather(*(s.stop() for s in servers))
    return total, durations, failures, stats


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def main(args):
    with tempfile.TemporaryDirectory() as tmp, moto_server(tmp) as moto:
        import boto3

        subnets = {
            s["AvailabilityZone"]: s["SubnetId"] for s in boto3.client("ec2").describe_subnets()["Subnets"]
        }
        cfg = config(subnets["us-east-1a"])
        times, calls, per_action = await sequential(moto, cfg, args.switches)
        print(f"## One switch (ec2 + ebs, moto on 127.0.0.1, boot excluded), {args.switches} switches\n")
        print("| metric | median | p95 | max |\n| --- | --- | --- | --- |")
        print(
            f"| orchestration time (s) | {statistics.median(times):.2f} | {pct(times, 95):.2f} | {max(times):.2f} |"
        )
        print(f"| AWS API calls | {statistics.median(calls):.0f} | {pct(calls, 95):.0f} | {max(calls)} |")
        print("\nCalls per switch by action:\n")
        print("| action | calls |\n| --- | --- |")
        for k, v in per_action.items():
            print(f"| {k} | {v:.1f} |")
        total, durations, failures, stats = await concurrent(moto, cfg, args.concurrent)
        print(
            f"\n## {args.concurrent} concurrent switches, EC2-like token buckets "
            "(RunInstances 5 burst / 2 per s; mutating 200/5; describe 100/20)\n"
        )
        print("| metric | value |\n| --- | --- |")
        print(f"| completed | {len(durations) - len(failures)} / {args.concurrent} |")
        print(f"| failed | {len(failures)} |")
        print(f"| total time (s) | {total:.1f} |")
        print(
            f"| per switch p50 / p95 / max (s) | {pct(durations, 50):.1f} / {pct(durations, 95):.1f} / {max(durations):.1f} |"
        )
        print(f"| RequestLimitExceeded answers absorbed | {stats['faults'].get('RequestLimitExceeded', 0)} |")
        print(f"| API calls in total | {sum(stats['calls'].values())} |")
        print(f"| RunInstances calls (incl. throttled) | {stats['calls'].get('RunInstances', 0)} |")
        if failures:
            print("\nFailures:", *failures[:5], sep="\n  ")
            return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=100)
    os.environ.setdefault("DS_COMPUTE_AWS_THREADS", "64")
    sys.exit(asyncio.run(main(parser.parse_args())))
