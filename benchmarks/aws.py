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
   throttling; total time, throttled answers per call, and the time the
   RunInstances bucket alone allows ((N - burst) / rate) are reported.
3. Polling: API calls per minute for 1, 50 and 200 running servers,
   JupyterHub polling each every ``Spawner.poll_interval`` (30 s, 10 %
   jitter), per-server polling (what ``poll()`` did before: one
   DescribeInstances and one GetParameter per server per poll) against the
   hub-wide :class:`~jupyter_ds_compute.backends.aws.InstancePoller`. Time is
   compressed ``AWS_POLL_SCALE``-fold (default 5) for ``AWS_POLL_WINDOW``
   real seconds (default 12) per case; counts are per simulated minute.

4. Downtime per switch through a real hub (``--downtime``; needs root, for
   the instance emulator), with realistic delays: launch -> running 25 s
   (the emulator withholds the address), boot 15 s (then it runs the
   user-data), EBS attach 5 s and detach 5 s (the moto server's answers say
   attaching/detaching). For EBS and EFS, make before break (the default)
   and the sequential order (``c.DSComputeService.make_before_break =
   False``): the longest window the user's server does not answer (polled
   every 50 ms, ``benchmarks/switch.py``'s probe), the switch's wall time,
   its prepare step and cut-over, and the hub's AWS calls per switch (the
   moto server counts them by User-Agent, apart from the emulator's and the
   instances'). ``--downtime-only`` runs just this part.
   The "ebs, warm pool 1" row gives both tiers ``warm_pool: 1`` and waits,
   before each switch, until the target tier's pool instance has booted: the
   switch takes it, nothing launches for the user (the RunInstances counted
   are the keeper's replacements), so its wall time is about the cut-over.
   The "ebs, zone move" row (``ebs-move``) makes
   each switch's target tier have no capacity in the volume's zone (an
   ``InsufficientInstanceCapacity`` rule for its instance type in that
   zone's subnet), so every switch launches in the other zone and moves
   the volume there (a snapshot while the old server serves, 30 s for a
   volume's first; at the cut-over an incremental one, 3 s, then a new
   volume; the original deleted once the server answers): the downtime of
   a zone move.
   ``--downtime-worlds ebs-pool`` runs only that row (names: ebs-mbb,
   ebs-seq, efs-mbb, efs-seq, ebs-pool, ebs-move).

Results go to ``benchmarks/results/aws.json``.

Run from the repo root (it imports ``tests/aws``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

from _common import progress  # noqa: E402
from aws.harness import FakeSpawner, moto_server, tier  # noqa: E402
from traitlets.config import Config  # noqa: E402

from jupyter_ds_compute.backends import aws  # noqa: E402
from jupyter_ds_compute.backends.ec2 import EC2Backend  # noqa: E402
from jupyter_ds_compute.volumes.ebs import EBSVolume  # noqa: E402

MUTATING = [
    "AttachVolume", "DetachVolume", "TerminateInstances", "StopInstances", "StartInstances",
    "CreateTags", "CreateVolume",
]  # fmt: skip
NON_MUTATING = ["DescribeInstances", "DescribeVolumes", "DescribeSubnets"]

#: measured with this benchmark at commit 6b5cd7d (per-server polls, no client-side bucket)
BEFORE = {
    "calls_per_switch": 17,
    "concurrent_100": {"total_s": 55.0, "throttled": 1147, "calls": 2747, "run_instances_calls": 678},
}
SCALE = float(os.environ.get("AWS_POLL_SCALE", "5"))
WINDOW = float(os.environ.get("AWS_POLL_WINDOW", "12"))
HUB_POLL_INTERVAL, HUB_POLL_JITTER = 30.0, 0.1  # JupyterHub's Spawner defaults
SERVERS = (1, 50, 200)


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
    # the hub's buckets start as AWS's just did: full (the starts above drained ours)
    aws._buckets.clear()
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


async def per_server_poll(backend):
    """What ``EC2Backend.poll()`` did before the shared poller (one server, one poll)."""
    inst = await backend.describe_instance(backend.instance_id)
    if (inst or {}).get("State", {}).get("Name") in ("pending", "running"):
        await backend._exit_report()


async def polling(moto, cfg, n):
    """(per-server, shared) calls per simulated minute for ``n`` running servers."""
    import boto3

    ec2 = boto3.client("ec2")
    subnet = cfg.EC2Backend.subnet_ids[0]
    tags = [{"Key": "ds-compute:hub", "Value": "bench"}]
    r = ec2.run_instances(ImageId="ami-12c6146b", MinCount=n, MaxCount=n, SubnetId=subnet,
                          TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])  # fmt: skip
    ids = [i["InstanceId"] for i in r["Instances"]]
    c = Config(cfg)
    c.EC2Backend.poll_interval = EC2Backend.poll_interval.default_value / SCALE
    backends = []
    for k, iid in enumerate(ids):
        b = EC2Backend(FakeSpawner(f"poll-{k:03d}", config=c))
        b.load_state({"instance_id": iid})
        backends.append(b)
    aws.InstancePoller._shared.clear()
    out = []
    for poll in (per_server_poll, lambda b: b.poll()):
        moto.clear_calls()
        stop = time.monotonic() + WINDOW

        async def loop(b, poll=poll, stop=stop):
            # JupyterHub's PeriodicCallback: random phase, then every interval with jitter
            await asyncio.sleep(random.uniform(0, HUB_POLL_INTERVAL / SCALE))
            while time.monotonic() < stop:
                await poll(b)
                await asyncio.sleep(HUB_POLL_INTERVAL / SCALE * random.uniform(1 - HUB_POLL_JITTER, 1))

        await asyncio.gather(*(loop(b) for b in backends))
        out.append(sum(moto.stats()["calls"].values()) * 60.0 / (WINDOW * SCALE))
    ec2.terminate_instances(InstanceIds=ids)
    return out


#: the issue's realistic delays (seconds)
#: a volume's first snapshot 30 s; a later one (EBS snapshots are incremental: the
#: blocks changed since) 3 s
REALISTIC = {
    "launch": 25.0,
    "boot": 15.0,
    "attach": 5.0,
    "detach": 5.0,
    "snapshot": 30.0,
    "snapshot_incremental": 3.0,
}
#: downtime targets (seconds): make before break, and what the sequential order costs
TARGETS = {"ebs": 15.0, "efs": 5.0, "sequential_at_least": 45.0, "pool_wall_slack": 3.0}
DOWNTIME_ROUTE = ["gpu", "small"]


def _pool_ready(slug, hub_id):
    """A booted, waiting pool instance of tier ``slug`` (the keeper's), or None."""
    import boto3

    from jupyter_ds_compute.backends.ec2pool import POOL_TAG

    ec2, ssm = boto3.client("ec2"), boto3.client("ssm")
    r = ec2.describe_instances(
        Filters=[
            {"Name": "tag:ds-compute:hub", "Values": [hub_id]},
            {"Name": f"tag:{POOL_TAG}", "Values": [slug]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )
    for inst in (i for res in r["Reservations"] for i in res["Instances"]):
        try:
            ssm.get_parameter(Name=f"/ds-compute/launch/{inst['InstanceId']}.waiting")
            return inst
        except ssm.exceptions.ParameterNotFound:
            pass
    return None


def _world_label(volume, mbb, pool, move):
    return (
        f"{volume} {'make before break' if mbb else 'sequential'}"
        f"{f', warm pool {pool}' if pool else ''}{', zone move' if move else ''}"
    )


def _world_short(volume, mbb, pool, move):
    return f"{volume} {'move' if move else 'pool' if pool else 'mbb' if mbb else 'seq'}"


INSTANCE_TYPES = {"small": "t3.medium", "gpu": "g5.xlarge"}


def _arm_no_capacity_where_the_volume_is(moto, user, target):
    """An ICE rule for ``target``'s instance type in the subnet of the user's volume's zone."""
    import boto3

    ec2 = boto3.client("ec2")
    vols = ec2.describe_volumes(Filters=[{"Name": "tag:ds-compute:user", "Values": [user]}])["Volumes"]
    (zone,) = {
        v["AvailabilityZone"]
        for v in vols
        if "ds-compute:tier" not in {t["Key"] for t in v.get("Tags", [])} and v["State"] != "deleting"
    }
    (subnet,) = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s["AvailabilityZone"] == zone]
    moto.reset()
    moto.arm(
        action="RunInstances",
        error="InsufficientInstanceCapacity",
        status=500,
        match={"InstanceType": INSTANCE_TYPES[target], "SubnetId": subnet},
    )
    return zone


def downtime_world(volume, mbb, switches, done, total, pool=0, move=False):
    """One hub (``volume``, make before break on or off, ``warm_pool: pool`` on the
    route's tiers, ``move``: no capacity for the target where the volume is) on its
    own moto server and emulator: ``switches`` switches along
    :data:`DOWNTIME_ROUTE`; a row per switch."""
    from aws.emulator import InstanceEmulator
    from aws.motoserver import MotoServer
    from conftest import hub_workdir
    from hubtest import Hub, free_port, wait_for
    from switch import ds_switch
    from test_aws_hub import HUB_EXTRA_CONFIG

    workdir = Path(hub_workdir(f"bench-aws-{_world_short(volume, mbb, pool, move).replace(' ', '-')}"))
    port = free_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    moto = MotoServer(port, str(workdir / "moto.log")).start()
    moto.set_delays(
        attach=REALISTIC["attach"],
        detach=REALISTIC["detach"],
        snapshot=REALISTIC["snapshot"],
        snapshot_incremental=REALISTIC["snapshot_incremental"],
    )
    os.environ.update(env)
    emulator = InstanceEmulator(
        env["AWS_ENDPOINT_URL"],
        workdir / "instances",
        launch_delay=REALISTIC["launch"],
        boot_delay=REALISTIC["boot"],
    ).start()
    hub_env = dict(
        env,
        DS_COMPUTE_AWS_AMI="ami-12c6146b",
        DS_COMPUTE_AWS_ZONE="us-east-1a",
        DS_COMPUTE_AWS_VOLUME_SIZE="1",
        DS_COMPUTE_AWS_HUB_ID="bench",
        DS_COMPUTE_AWS_VOLUME=volume,
    )
    extra = HUB_EXTRA_CONFIG + (
        f"c.DSComputeService.make_before_break = {mbb}\n"
        # the realistic attach takes 5 s; the test config's 5 s bound would cut it
        "c.EBSVolume.attach_timeout = 120\n"
    )
    if pool:
        extra += (
            f"c.DSComputeSpawner.profile_list = [dict(p, warm_pool={pool}) if p['slug'] in {DOWNTIME_ROUTE!r}"
            " else p for p in c.DSComputeSpawner.profile_list]\n"
            "c.EC2Backend.warm_pool_interval = 2\n"
        )
    hub = Hub(workdir / "hub", extra_config=extra, env=hub_env)
    rows = []
    label = _world_label(volume, mbb, pool, move)
    try:
        hub.start()
        user = hub.create_user(f"bench-{volume}")
        token = hub.user_token(user)
        progress(done, total, f"{label}: first start")
        hub.spawn(user, {"profile": "small"}, timeout=300)
        for i in range(switches):
            target = DOWNTIME_ROUTE[i % len(DOWNTIME_ROUTE)]
            if pool:
                progress(done + i, total, f"{label}: waiting for the {target} pool instance")
                wait_for(lambda t=target: _pool_ready(t, hub_env["DS_COMPUTE_AWS_HUB_ID"]), 600, interval=1)
            if move:
                zone = _arm_no_capacity_where_the_volume_is(moto, user, target)
                progress(done + i, total, f"{label}: switch to {target}, no capacity in {zone}")
            else:
                progress(done + i, total, f"{label}: switch to {target}")
            moto.clear_calls()
            r = ds_switch(hub, user, token, target)
            calls = moto.stats()["callers"].get("hub", {})
            rows.append(
                {
                    "volume": volume,
                    "make_before_break": mbb,
                    "warm_pool": pool,
                    "zone_move": move,
                    "to": target,
                    "downtime_s": r["downtime"],
                    "wall_s": r["wall"],
                    "prepare_s": r["steps"].get("prepare", 0.0),
                    "cut_over_s": r["cut_over"],
                    "aws_calls": sum(calls.values()),
                    "aws_calls_by_action": dict(sorted(calls.items())),
                }
            )
        hub.stop_server(user, timeout=300)
    finally:
        hub.stop()
        emulator.stop()
        moto.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rows


def downtime_section(args):
    import statistics as st

    named = {
        "ebs-mbb": ("ebs", True, 0, False),
        "ebs-seq": ("ebs", False, 0, False),
        "efs-mbb": ("efs", True, 0, False),
        "efs-seq": ("efs", False, 0, False),
        "ebs-pool": ("ebs", True, 1, False),
        "ebs-move": ("ebs", True, 0, True),
    }
    wanted = [w.strip() for w in args.downtime_worlds.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in named]
    if unknown:
        raise SystemExit(f"--downtime-worlds: unknown {', '.join(unknown)}; known: {', '.join(named)}")
    worlds = [named[w] for w in wanted]
    total = len(worlds) * args.downtime_switches
    rows = []
    for k, (volume, mbb, pool, move) in enumerate(worlds):
        rows += downtime_world(
            volume, mbb, args.downtime_switches, k * args.downtime_switches, total, pool, move
        )
    progress(total, total, "done")
    print(
        "\n## Downtime per switch, real hub, realistic delays (launch 25 s, boot 15 s, "
        f"attach 5 s, detach 5 s, snapshot 30 s, incremental 3 s), {args.downtime_switches} switches each\n"
    )
    print(
        "| volume | order | downtime median / max (s) | target | switch wall (s) | prepare (s) "
        "| cut-over (s) | AWS calls per switch |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    summary = []

    def of(volume, mbb, pool, move):
        return [
            r
            for r in rows
            if r["volume"] == volume
            and r["make_before_break"] is mbb
            and r["warm_pool"] == pool
            and r["zone_move"] is move
        ]

    for volume, mbb, pool, move in worlds:
        mine = of(volume, mbb, pool, move)
        down = [r["downtime_s"] for r in mine]
        # the targets are medians; the sequential row is the baseline the issue expects
        # (>= 45 s), told, not judged
        target = (
            f"median <= {TARGETS[volume]:g}"
            if mbb
            else f"baseline, issue says >= {TARGETS['sequential_at_least']:g}"
        )
        ok = st.median(down) <= TARGETS[volume] if mbb else None
        cut = [r["cut_over_s"] for r in mine if r["cut_over_s"] is not None]
        if move:
            # no target in the issue: told, not judged (a snapshot and a new volume in the cut-over)
            target, ok = "told (incremental snapshot + new volume in the cut-over)", None
        if pool:
            # the issue: "the switch wall time itself drops to the cut-over (nothing launches)"
            wall = st.median(r["wall_s"] for r in mine)
            cut_median = st.median(cut) if cut else 0.0
            target = f"wall ~ cut-over (<= cut-over + {TARGETS['pool_wall_slack']:g})"
            ok = wall <= cut_median + TARGETS["pool_wall_slack"]
        entry = {
            "volume": volume,
            "make_before_break": mbb,
            "warm_pool": pool,
            "zone_move": move,
            "downtime_median_s": st.median(down),
            "downtime_max_s": max(down),
            "target_s": TARGETS[volume] if mbb else TARGETS["sequential_at_least"],
            "meets_target": ok,
            "wall_median_s": st.median(r["wall_s"] for r in mine),
            "prepare_median_s": st.median(r["prepare_s"] for r in mine),
            "cut_over_median_s": st.median(cut) if cut else None,
            "aws_calls_median": st.median(r["aws_calls"] for r in mine),
        }
        summary.append(entry)
        print(
            f"| {volume} | {_world_label(volume, mbb, pool, move).split(' ', 1)[1]} "
            f"| {entry['downtime_median_s']:.1f} / {entry['downtime_max_s']:.1f} | {target}{'' if ok is None else (' ok' if ok else ' MISSED')} "
            f"| {entry['wall_median_s']:.1f} | {entry['prepare_median_s']:.1f} "
            f"| {entry['cut_over_median_s'] or 0:.1f} | {entry['aws_calls_median']:.0f} |"
        )
    print("\nHub AWS calls per switch by action (median over the switches):\n")
    actions = sorted({a for r in rows for a in r["aws_calls_by_action"]})
    print("| action | " + " | ".join(_world_short(*w) for w in worlds) + " |")
    print("| --- |" + " --- |" * len(worlds))
    for a in actions:
        cells = []
        for world in worlds:
            mine = of(*world)
            cells.append(f"{st.median(r['aws_calls_by_action'].get(a, 0) for r in mine):g}")
        print(f"| {a} | " + " | ".join(cells) + " |")
    return {"delays_s": REALISTIC, "targets_s": TARGETS, "summary": summary, "switches": rows}


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def main(args):
    if args.downtime_only:
        data = {"downtime": downtime_section(args)}
        RESULTS = HERE / "results"
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / "aws.json"
        old = json.loads(path.read_text()) if path.exists() else {}

        # rows of the worlds not run this time are kept
        def key(e):
            return (e["volume"], e["make_before_break"], e.get("warm_pool", 0), e.get("zone_move", False))

        ran = {key(e) for e in data["downtime"]["summary"]}
        kept = old.get("downtime") or {}

        def others(items):
            return [e for e in items or [] if key(e) not in ran]

        data["downtime"]["summary"] = others(kept.get("summary")) + data["downtime"]["summary"]
        data["downtime"]["switches"] = others(kept.get("switches")) + data["downtime"]["switches"]
        old.update(data)
        path.write_text(json.dumps(old, indent=2))
        print("\nwrote benchmarks/results/aws.json (downtime)")
        return 0
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
        n_calls = sum(stats["calls"].values())
        throttled = stats["faults"].get("RequestLimitExceeded", 0)
        bound = (args.concurrent - 5) / 2.0
        print(f"| throttled answers per call | {throttled / max(n_calls, 1):.3f} |")
        print(f"| RunInstances bucket allows (s) | {bound:.1f} (total / bound = {total / bound:.2f}) |")
        b = BEFORE["concurrent_100"]
        print(f"\nBefore (6b5cd7d, 100 concurrent): {b['total_s']} s, {b['throttled']} throttled answers "
              f"for {b['calls']} calls, {b['run_instances_calls']} RunInstances; "
              f"{BEFORE['calls_per_switch']} calls per switch.")  # fmt: skip
        rows = []
        for n in SERVERS:
            per_server, shared = await polling(moto, cfg, n)
            rows.append({"servers": n, "per_server_per_min": per_server, "shared_per_min": shared})
        print(
            f"\n## Polling: AWS API calls per minute (hub poll 30 s, shared answer "
            f"{EC2Backend.poll_interval.default_value:g} s; time compressed {SCALE:g}x, {WINDOW:g} s per case)\n"
        )
        print("| servers | per-server polling | shared poller | fewer |\n| --- | --- | --- | --- |")
        for row in rows:
            ratio = row["per_server_per_min"] / row["shared_per_min"] if row["shared_per_min"] else 0
            print(
                f"| {row['servers']} | {row['per_server_per_min']:.0f} | {row['shared_per_min']:.0f} | {ratio:.1f}x |"
            )
        data = {
            "before": BEFORE,
            "switch": {"calls_median": statistics.median(calls), "calls_per_action": per_action,
                       "time_median_s": statistics.median(times)},
            "concurrent": {"n": args.concurrent, "total_s": total, "failed": len(failures), "calls": n_calls,
                           "throttled": throttled, "throttled_per_call": throttled / max(n_calls, 1),
                           "run_instances_calls": stats["calls"].get("RunInstances", 0),
                           "bucket_bound_s": bound},
            "polling": {"scale": SCALE, "window_s": WINDOW, "results": rows},
        }  # fmt: skip
        if args.downtime:
            data["downtime"] = downtime_section(args)
        RESULTS = HERE / "results"
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "aws.json").write_text(json.dumps(data, indent=2))
        print("\nwrote benchmarks/results/aws.json")
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
    parser.add_argument("--downtime", action="store_true", help="also the real-hub downtime part (root)")
    parser.add_argument("--downtime-only", action="store_true", help="only the real-hub downtime part")
    parser.add_argument("--downtime-switches", type=int, default=2)
    parser.add_argument(
        "--downtime-worlds",
        default="ebs-mbb,ebs-seq,efs-mbb,efs-seq,ebs-pool,ebs-move",
        help="comma-separated rows of the downtime part (ebs-mbb, ebs-seq, efs-mbb, efs-seq, ebs-pool, ebs-move)",
    )
    os.environ.setdefault("DS_COMPUTE_AWS_THREADS", "64")
    sys.exit(asyncio.run(main(parser.parse_args())))
