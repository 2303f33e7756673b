"""Shared pieces of the benchmarks: a real hub, a progress bar, a table."""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import hub_workdir  # noqa: E402
from hubtest import Fatal, Hub, wait_for  # noqa: E402,F401 (re-exported)

RESULTS = REPO / "benchmarks" / "results"


def progress(done, total, label=""):
    """A one-line progress bar on stderr."""
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<40}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def summary(samples):
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def write_json(name, data):
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    print(f"\nwrote {path.relative_to(REPO)}")


def new_hub(name, extra_config="", env=None):
    return Hub(Path(hub_workdir(name)), extra_config=extra_config, env=env or {})


def reps_from_env(default):
    return int(os.environ.get("BENCH_REPS", default))
