"""Kernel list time with 0, 10, 100 environments on the volume.

Compares ``KernelSpecManager.get_all_specs()`` (what ``GET /api/kernelspecs``
calls) of plain jupyter_client against ``DSComputeKernelSpecManager``:

* warm: nothing changed since the last list (the common case: Lab polls);
* rescan: an env root's mtime changed (a new env appeared), so every env is
  inspected again (stat/listdir only; interpreter checks run in the
  background and are not part of the list).

Envs are made the way discovery sees them (``pyvenv.cfg``, ``bin/python``
symlink, ``lib/python3.X/site-packages/ipykernel``); the listing path never
runs them, so their size does not matter.

Run: PYTHONPATH=. python benchmarks/envs.py [--repeat 200]
Target: under 100 ms added at 100 envs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from jupyter_client.kernelspec import KernelSpecManager

from jupyter_ds_compute.serverext.kernelspecs import DSComputeKernelSpecManager

PYVER = f"python{sys.version_info[0]}.{sys.version_info[1]}"


def make_envs(root: str, n: int) -> None:
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        env = os.path.join(root, f"env{i:03d}")
        os.makedirs(os.path.join(env, "bin"))
        os.makedirs(os.path.join(env, "lib", PYVER, "site-packages", "ipykernel"))
        with open(os.path.join(env, "pyvenv.cfg"), "w") as f:
            f.write(f"home = {os.path.dirname(sys.executable)}\n")
        os.symlink(sys.executable, os.path.join(env, "bin", "python"))


def median_ms(fn, repeat: int, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before:
            before()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    rows = []
    for n in (0, 10, 100):
        with tempfile.TemporaryDirectory() as vol:
            root = os.path.join(vol, "envs")
            make_envs(root, n)
            os.environ["DS_COMPUTE_VOLUME_PATH"] = vol
            os.environ.pop("CONDA_ENVS_PATH", None)
            plain = KernelSpecManager()
            ours = DSComputeKernelSpecManager(check_interpreters=False)
            listed = ours.get_all_specs()
            assert sum(k.startswith("ds-env-") for k in listed) == n, listed.keys()
            t_plain = median_ms(plain.get_all_specs, args.repeat)
            t_warm = median_ms(ours.get_all_specs, args.repeat)

            def new_env_appeared(root=root):
                os.utime(root, ns=(time.time_ns(), time.time_ns()))

            t_rescan = median_ms(ours.get_all_specs, max(20, args.repeat // 5), before=new_env_appeared)
            rows.append((n, t_plain, t_warm, t_rescan))
    print(
        f"python {sys.version.split()[0]}, median of {args.repeat} lists (rescan: {max(20, args.repeat // 5)})"
    )
    print(
        f"{'envs':>5}  {'plain ms':>9}  {'ds warm ms':>10}  {'added ms':>9}  {'ds rescan ms':>12}  {'added ms':>9}"
    )
    for n, p, w, r in rows:
        print(f"{n:>5}  {p:>9.2f}  {w:>10.2f}  {w - p:>9.2f}  {r:>12.2f}  {r - p:>9.2f}")
    worst = max(r - p for n, p, w, r in rows)
    print(f"worst added: {worst:.2f} ms (target < 100 ms at 100 envs): {'OK' if worst < 100 else 'TOO SLOW'}")


if __name__ == "__main__":
    main()
