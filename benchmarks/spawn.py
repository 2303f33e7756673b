"""Spawn benchmark: start→ready and stop times per tier of DSComputeSpawner
against plain ``jupyterhub.spawner.LocalProcessSpawner``, on the same hub, in
one run.

    ./dev.sh bench benchmarks/spawn.py        # BENCH_REPS=5 by default

Users named ``plain-*`` get a LocalProcessSpawner running the same
``jupyterhub-singleuser`` (same default URL, same user, same machine); every
other user gets DSComputeSpawner (cgroup limits, volume, readiness watch).
Prints a table (median/min/max seconds and the ratio ours/plain) and writes
``benchmarks/results/spawn.json``.
"""

from __future__ import annotations

import time

from _common import new_hub, print_table, progress, reps_from_env, summary, write_json

TIERS = ["small", "gpu", "manycore"]

# One hub, two spawner classes: the class picks per user name.
EXTRA_CONFIG = """
import os, sys
from jupyterhub.spawner import LocalProcessSpawner
from jupyter_ds_compute.spawner import DSComputeSpawner


class PlainLocal(LocalProcessSpawner):
    pass


class ByUserName(DSComputeSpawner):
    def __new__(cls, **kwargs):
        user = kwargs.get("user")
        if user is not None and user.name.startswith("plain-"):
            return PlainLocal(**kwargs)
        return super().__new__(cls)


c.JupyterHub.spawner_class = ByUserName
_bin = os.path.dirname(sys.executable)
c.PlainLocal.cmd = [os.path.join(_bin, "jupyterhub-singleuser")]
c.PlainLocal.env_keep = ["PATH", "LANG", "LC_ALL"]
"""


def timed_spawn(hub, user, options):
    t0 = time.perf_counter()
    r = hub.spawn(user, options, wait=False)
    if r.status_code >= 400:
        raise RuntimeError(f"spawn of {user} failed: {r.status_code} {r.text}")
    hub.wait_ready(user, timeout=120)
    return time.perf_counter() - t0


def timed_stop(hub, user):
    t0 = time.perf_counter()
    hub.stop_server(user, wait=True)
    return time.perf_counter() - t0


def main():
    reps = reps_from_env(5)
    hub = new_hub("bench-spawn", EXTRA_CONFIG).start()
    plan = [("plain", None)] + [(t, {"profile": t}) for t in TIERS]
    results = {name: {"start": [], "stop": []} for name, _ in plan}
    total = reps * len(plan)
    done = 0
    try:
        import os

        if os.geteuid() == 0:
            hub.create_user("plain-bench")
            # LocalProcessSpawner needs the system user to exist already
            import subprocess

            subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", "plain-bench"],
                           stderr=subprocess.DEVNULL)  # fmt: skip
            import pwd

            pw = pwd.getpwnam("plain-bench")
            os.makedirs(pw.pw_dir, exist_ok=True)
            os.chown(pw.pw_dir, pw.pw_uid, pw.pw_gid)
        for name, _ in plan:
            if name != "plain":
                hub.create_user(f"bench-{name}")
        # warm-up: first imports fill the page cache for both
        for name, options in plan:
            user = "plain-bench" if name == "plain" else f"bench-{name}"
            timed_spawn(hub, user, options or {})
            timed_stop(hub, user)
        for i in range(reps):
            # interleave so drift on the machine hits both alike
            for name, options in plan:
                user = "plain-bench" if name == "plain" else f"bench-{name}"
                results[name]["start"].append(timed_spawn(hub, user, options or {}))
                results[name]["stop"].append(timed_stop(hub, user))
                done += 1
                progress(done, total, f"rep {i + 1}: {name}")
    finally:
        hub.stop()

    plain = {k: summary(v) for k, v in results["plain"].items()}
    rows = []
    out = {"reps": reps, "plain": plain, "tiers": {}}
    for name in ["plain"] + TIERS:
        s = {k: summary(v) for k, v in results[name].items()}
        ratio_start = s["start"]["median"] / plain["start"]["median"]
        ratio_stop = s["stop"]["median"] / plain["stop"]["median"]
        out["tiers"][name] = dict(s, ratio_start=ratio_start, ratio_stop=ratio_stop)
        rows.append(
            [
                "LocalProcessSpawner" if name == "plain" else f"ds-compute {name}",
                f"{s['start']['median']:.2f}",
                f"{s['start']['min']:.2f}-{s['start']['max']:.2f}",
                f"{ratio_start:.2f}x",
                f"{s['stop']['median']:.2f}",
                f"{s['stop']['min']:.2f}-{s['stop']['max']:.2f}",
                f"{ratio_stop:.2f}x",
            ]
        )
    print(f"\nspawn benchmark, {reps} repetitions each (seconds)\n")
    print_table(
        ["spawner", "start med", "start min-max", "vs plain", "stop med", "stop min-max", "vs plain"], rows
    )
    write_json("spawn", out)


if __name__ == "__main__":
    main()
