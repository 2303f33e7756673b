"""Switch benchmark: a switch through the ds-compute path (server extension →
hub service → hub API → spawner) against a plain stop + spawn of the same
tiers through the hub API, in one run.

    ./dev.sh bench benchmarks/switch.py        # BENCH_REPS=4 by default

Per target tier, for both paths:

- wall time, from the request until Lab answers again at the user's URL
  (``GET /user/<u>/lab`` = 200);
- user-visible downtime: the longest window in which the user's server does
  not answer. A background thread polls ``GET /user/<u>/api/status`` with the
  user's token every 50 ms (through the proxy, no redirects followed, 2 s
  timeout; only a 200 counts as an answer) from just before the request until
  the switch is finished and Lab answers. A window runs from the sending of
  the first poll that got no 200 to the sending of the next poll that did, so
  the resolution is one poll interval (more while a poll hangs to its timeout).

For the ds-compute path, from the switch record
(``GET /services/ds-compute/api/switches/<id>``, steps with ISO ``started`` /
``finished``): the ``prepare`` step (0 when the service has no such step) and
the cut-over, from the start of ``stop`` to the end of ``verify``; and the
share of the switch spent in each step. Writes ``benchmarks/results/switch.json``.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

import requests
from _common import Fatal, new_hub, print_table, progress, reps_from_env, summary, wait_for, write_json

ROUTE = ["gpu", "manycore", "small"]
POLL_INTERVAL = 0.05
POLL_TIMEOUT = 2.0


def lab_reachable(hub, user, token):
    r = requests.get(
        f"{hub.url}/user/{user}/lab",
        headers={"Authorization": f"token {token}"},
        timeout=10,
        allow_redirects=False,
    )
    return r.status_code == 200


class DowntimeProbe:
    """Poll the user's ``api/status`` in a background thread; :meth:`stop`
    returns the longest window (seconds) in which it got no 200."""

    def __init__(self, hub, user, token):
        self.url = f"{hub.url}/user/{user}/api/status"
        self.headers = {"Authorization": f"token {token}"}
        self.samples = []  # (perf_counter at send, answered)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"downtime-{user}", daemon=True)

    def start(self):
        self._thread.start()
        # the first poll is in before the request goes out: the window is
        # measured from a known state of the server
        wait_for(lambda: self.samples, timeout=10, interval=0.01, message="first status poll")
        return self

    def _run(self):
        with requests.Session() as session:
            while not self._stop.is_set():
                sent = time.perf_counter()
                try:
                    r = session.get(
                        self.url, headers=self.headers, timeout=POLL_TIMEOUT, allow_redirects=False
                    )
                    answered = r.status_code == 200
                except requests.RequestException:
                    answered = False
                self.samples.append((sent, answered))
                self._stop.wait(max(0.0, POLL_INTERVAL - (time.perf_counter() - sent)))

    def stop(self):
        self._stop.set()
        self._thread.join(POLL_TIMEOUT + 5)
        end = time.perf_counter()
        longest, down_since = 0.0, None
        for sent, answered in list(self.samples):
            if not answered and down_since is None:
                down_since = sent
            elif answered and down_since is not None:
                longest = max(longest, sent - down_since)
                down_since = None
        if down_since is not None:  # still down when the run ended: count it to the end
            longest = max(longest, end - down_since)
        return longest


def _time(iso):
    return datetime.fromisoformat(iso).timestamp() if iso else None


def step_timings(record):
    """``{step name: seconds}`` from the record's ISO times (0 for a step not
    started or not finished, and for a missing ``prepare``), and the cut-over
    (start of ``stop`` to end of ``verify``; None if either is missing)."""
    steps, bounds = {}, {}
    for s in record["steps"]:
        started, finished = _time(s.get("started")), _time(s.get("finished"))
        steps[s["name"]] = finished - started if started is not None and finished is not None else 0.0
        bounds[s["name"]] = (started, finished)
    steps.setdefault("prepare", 0.0)
    stop_start = bounds.get("stop", (None, None))[0]
    verify_end = bounds.get("verify", (None, None))[1]
    cut_over = verify_end - stop_start if stop_start is not None and verify_end is not None else None
    return steps, cut_over, "prepare" in bounds


def ds_switch(hub, user, token, target):
    probe = DowntimeProbe(hub, user, token).start()
    try:
        t0 = time.perf_counter()
        r = hub.server_api(user, "ds-compute/api/switch", token, method="POST", json={"profile": target})
        if r.status_code != 202:
            raise RuntimeError(f"switch refused: {r.status_code} {r.text}")
        switch_id = r.json()["id"]

        def done():
            m = hub.server_model(user)
            return (
                m
                and m.get("ready")
                and m["user_options"].get("profile") == target
                and lab_reachable(hub, user, token)
            )

        wait_for(done, timeout=180, interval=0.05, message="switched server reachable")
        elapsed = time.perf_counter() - t0

        def finished():
            rec = requests.get(
                f"{hub.url}/services/ds-compute/api/switches/{switch_id}",
                headers={"Authorization": f"token {token}"},
                timeout=10,
            ).json()
            if rec["state"] in ("rolled_back", "failed"):
                raise Fatal(f"switch {switch_id} ended {rec['state']}: {rec.get('error')}")
            return rec if rec["state"] == "succeeded" else None

        record = wait_for(finished, timeout=60, interval=0.1, message="switch record final")
    finally:
        downtime = probe.stop()
    steps, cut_over, has_prepare = step_timings(record)
    return {
        "wall": elapsed,
        "downtime": downtime,
        "steps": steps,
        "cut_over": cut_over,
        "prepare": has_prepare,
    }


def plain_stop_spawn(hub, user, token, target):
    probe = DowntimeProbe(hub, user, token).start()
    try:
        t0 = time.perf_counter()
        hub.stop_server(user, wait=True)
        r = hub.spawn(user, {"profile": target}, wait=False)
        if r.status_code >= 400:
            raise RuntimeError(f"spawn failed: {r.status_code} {r.text}")
        wait_for(lambda: lab_reachable(hub, user, token), timeout=180, interval=0.05, message="Lab reachable")
        elapsed = time.perf_counter() - t0
    finally:
        downtime = probe.stop()
    return {"wall": elapsed, "downtime": downtime}


def _summary(samples):
    samples = [s for s in samples if s is not None]
    return summary(samples) if samples else None


def _fmt(s, key="median"):
    return "-" if s is None else f"{s[key]:.2f}"


def main():
    reps = reps_from_env(4)
    hub = new_hub("bench-switch").start()
    ds_user, plain_user = hub.create_user("bench-switch"), hub.create_user("bench-plain")
    ds_token, plain_token = hub.user_token(ds_user), hub.user_token(plain_user)
    total = reps * len(ROUTE) * 2
    done = 0
    ds_runs = {t: [] for t in ROUTE}
    plain_runs = {t: [] for t in ROUTE}
    try:
        for user in (ds_user, plain_user):
            hub.spawn(user, {"profile": "small"})
        for i in range(reps):
            for target in ROUTE:
                ds_runs[target].append(ds_switch(hub, ds_user, ds_token, target))
                done += 1
                progress(done, total, f"rep {i + 1}: switch to {target}")
                plain_runs[target].append(plain_stop_spawn(hub, plain_user, plain_token, target))
                done += 1
                progress(done, total, f"rep {i + 1}: stop+spawn {target}")
    finally:
        hub.stop()

    all_ds = [run for runs in ds_runs.values() for run in runs]
    all_plain = [run for runs in plain_runs.values() for run in runs]
    prepare_seen = any(run["prepare"] for run in all_ds)
    out = {
        "reps": reps,
        "poll_interval": POLL_INTERVAL,
        "prepare_step_seen": prepare_seen,
        "targets": {},
        "steps": {},
    }
    rows = []
    for target in ROUTE:
        ds, plain = ds_runs[target], plain_runs[target]
        wall, plain_wall = summary([r["wall"] for r in ds]), summary([r["wall"] for r in plain])
        down, plain_down = summary([r["downtime"] for r in ds]), summary([r["downtime"] for r in plain])
        prepare = summary([r["steps"]["prepare"] for r in ds])
        cut_over = _summary([r["cut_over"] for r in ds])
        ratio = wall["median"] / plain_wall["median"]
        out["targets"][target] = {
            "switch": wall,
            "switch_downtime": down,
            "plain_stop_spawn": plain_wall,
            "plain_downtime": plain_down,
            "ratio": ratio,
            "prepare": prepare,
            "cut_over": cut_over,
            "steps": {name: _summary([r["steps"].get(name) for r in ds]) for name in ds[0]["steps"]},
        }
        rows.append(
            [
                f"-> {target}",
                f"{wall['median']:.2f}",
                f"{down['median']:.2f}",
                f"{down['max']:.2f}",
                f"{plain_wall['median']:.2f}",
                f"{plain_down['median']:.2f}",
                f"{plain_down['max']:.2f}",
                f"{ratio:.2f}x",
                f"{prepare['median']:.2f}",
                _fmt(cut_over),
            ]
        )
    overall = (
        summary([r["wall"] for r in all_ds])["median"] / summary([r["wall"] for r in all_plain])["median"]
    )
    out["overall_ratio"] = overall
    print(
        f"\nswitch benchmark, {reps} rounds of small -> gpu -> manycore -> small (seconds, medians unless"
        f" 'max'; wall = request -> Lab answers; down = longest window without a 200 from api/status,"
        f" polled every {POLL_INTERVAL * 1000:.0f} ms)\n"
    )
    print_table(
        [
            "switch",
            "ds wall",
            "ds down",
            "ds down max",
            "plain wall",
            "plain down",
            "plain down max",
            "wall ratio",
            "prepare",
            "cut-over",
        ],
        rows,
    )
    print(f"\noverall median wall ratio: {overall:.2f}x")
    if not prepare_seen:
        print("(the service's switch records have no 'prepare' step: counted as 0)")

    step_totals = {}
    for run in all_ds:
        for name, d in run["steps"].items():
            step_totals[name] = step_totals.get(name, 0.0) + d
    step_sum = sum(step_totals.values()) or 1.0
    print("\nshare of the switch per step (service's record):")
    step_rows = []
    for name, d in step_totals.items():
        share = d / step_sum
        out["steps"][name] = {"total_seconds": d, "share": share}
        step_rows.append([name, f"{d / len(all_ds):.2f}", f"{share:.0%}"])
    print_table(["step", "mean s", "share"], step_rows)
    write_json("switch", out)


if __name__ == "__main__":
    main()
