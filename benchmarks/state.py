"""Kernel state across a switch (issue 15): save + restore throughput against
the raw sequential write + read speed of the same volume, in the same run.

The namespace: a 1 GB float64 numpy array, a 1 GB pandas frame of mixed
dtypes (float64, int64, bool, a categorical), 10,000 small objects (dicts of
ints and strings in a list, and as 10,000 separate variables). Saved and
restored with the kernel-side helper (``jupyter_ds_compute/kernelstate.py``,
the code that runs in the kernels), in-process. Raw: ``dd``-style, 8 MiB
blocks, written with ``fsync`` (as the save does) and read back; both reads
come from the same machine (the page cache may serve them alike; on a real
switch the new machine reads cold). "nothing to keep": the server's
``StateKeeper.save_all`` with no session (what ``--keep-state`` adds then).

Needs numpy and pandas (not in the dev venv): run with any Python that has
them, from the repository root:

    python -m venv /tmp/bench && /tmp/bench/bin/pip install numpy pandas
    PYTHONPATH=. /tmp/bench/bin/python benchmarks/state.py [--dir DIR] [--gb 1]

Targets: state throughput >= 50 % of raw; added switch time for 1 GB (save +
restore of the array) <= 2x raw write + read of 1 GB; nothing to keep <= 0.2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# the helper exactly as the kernels get it (stdlib only, no jupyter_ds_compute needed)
ks = _load("ds_compute_state", REPO / "jupyter_ds_compute" / "kernelstate.py")

BLOCK = 8 * 1024 * 1024


def raw_write_read(directory: str, nbytes: int) -> tuple[float, float]:
    path = os.path.join(directory, "raw.bin")
    block = os.urandom(BLOCK)
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for _ in range(nbytes // BLOCK):
            f.write(block)
        os.fsync(f.fileno())
    w = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(BLOCK):
            pass
    r = time.perf_counter() - t0
    os.unlink(path)
    return w, r


def namespaces(gb: float) -> dict:
    import numpy as np
    import pandas as pd

    n = int(gb * 1e9)
    rng = np.random.default_rng(0)
    array = {"arr": rng.random(n // 8)}
    rows = n // (8 + 8 + 1 + 1)  # float64 + int64 + bool + int8 categorical codes
    frame = {
        "df": pd.DataFrame(
            {
                "f": rng.random(rows),
                "i": rng.integers(0, 1 << 40, rows),
                "b": rng.random(rows) > 0.5,
                "c": pd.Categorical.from_codes(rng.integers(0, 4, rows), ["a", "b", "c", "d"]),
            }
        )
    }
    small_list = {"records": [{"id": i, "name": f"item-{i}", "tags": ["x", "y"]} for i in range(10_000)]}
    small_vars = {f"v{i}": {"id": i, "name": f"item-{i}"} for i in range(10_000)}
    return {"1 GB numpy array": array, "1 GB pandas frame": frame,
            "10,000 small objects (one list)": small_list, "10,000 small variables": small_vars}  # fmt: skip


def check(a, b) -> bool:
    import numpy as np
    import pandas as pd

    for k, v in a.items():
        w = b[k]
        if isinstance(v, np.ndarray):
            if not np.array_equal(v, w):
                return False
        elif isinstance(v, pd.DataFrame):
            if not v.equals(w):
                return False
        elif v != w:
            return False
    return True


def nothing_to_keep(directory: str) -> float:
    # stdlib only too: loaded by path (this Python need not have jupyter_server)
    StateKeeper = _load("ds_state_server", REPO / "jupyter_ds_compute" / "serverext" / "state.py").StateKeeper

    class Sessions:
        async def list_sessions(self):
            return []

    class App:
        session_manager = Sessions()

    keeper = StateKeeper(App(), os.path.join(directory, "empty-state"), logging.getLogger("bench"),
                         busy_wait=30, timeout=60, reserve_bytes=0, keep_files=False)  # fmt: skip
    t0 = time.perf_counter()
    asyncio.run(keeper.save_all())
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=None, help="a directory on the volume to measure (default: a temp dir)")
    p.add_argument("--gb", type=float, default=1.0, help="size of the array and of the frame (GB)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the fastest counts")
    args = p.parse_args()
    base = tempfile.mkdtemp(prefix="ds-state-bench-", dir=args.dir)
    try:
        gb_bytes = int(args.gb * 1e9)
        runs = [raw_write_read(base, gb_bytes) for _ in range(args.repeat)]
        rw, rr = min(r[0] for r in runs), min(r[1] for r in runs)
        raw_mbs = 2 * gb_bytes / 1e6 / (rw + rr)
        rows, results = [], {"dir": base, "gb": args.gb, "raw_write_s": rw, "raw_read_s": rr, "cases": {}}
        print(f"raw ({args.gb:g} GB, 8 MiB blocks, fsync, best of {args.repeat}): write {rw:.2f} s, read {rr:.2f} s, "
              f"{raw_mbs:.0f} MB/s write+read\n")  # fmt: skip
        for label, ns in namespaces(args.gb).items():
            d = os.path.join(base, "k")
            save_s = restore_s = float("inf")
            for _ in range(args.repeat):
                new: dict = {}
                t0 = time.perf_counter()
                saved = ks.save_namespace(ns, d, reserve_bytes=0)
                save_s = min(save_s, time.perf_counter() - t0)
                t0 = time.perf_counter()
                restored = ks.restore_namespace(new, d)
                restore_s = min(restore_s, time.perf_counter() - t0)
                assert not restored["failed"] and check(ns, new), label
            size = saved["bytes"]
            mbs = 2 * size / 1e6 / (save_s + restore_s)
            ratio = mbs / raw_mbs
            big = size > 100e6  # throughput means nothing for a few MB of small objects: objects/s
            rate = f"{mbs:.0f}" if big else f"{2 * 10_000 / (save_s + restore_s):,.0f} obj/s"
            rows.append([label, f"{size / 1e6:.1f} MB", f"{save_s:.2f}", f"{restore_s:.2f}", rate,
                         f"{100 * ratio:.0f} %" if big else "-"])  # fmt: skip
            results["cases"][label] = {"bytes": size, "save_s": save_s, "restore_s": restore_s,
                                       "mb_s": mbs, "of_raw": ratio}  # fmt: skip
            shutil.rmtree(d)
            del ns, new
        headers = ["namespace", "on disk", "save s", "restore s", "MB/s (w+r)", "of raw"]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        arr = results["cases"]["1 GB numpy array"]
        added = arr["save_s"] + arr["restore_s"]
        empty = nothing_to_keep(base)
        results.update(added_switch_s=added, raw_write_read_s=rw + rr, nothing_to_keep_s=empty)
        print(f"\nadded switch time for the array: {added:.2f} s = {added / (rw + rr):.2f}x raw write+read "
              f"(target <= 2x)")  # fmt: skip
        print(f"--keep-state with nothing to keep: {empty * 1000:.1f} ms (target <= 200 ms)")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "state.json").write_text(json.dumps(results, indent=2))
        print(f"wrote {(RESULTS / 'state.json').relative_to(REPO)}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
