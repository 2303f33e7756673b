"""Switch benchmark: a switch through the ds-compute path (server extension →
hub service → hub API → spawner) against a plain stop + spawn of the same
tiers through the hub API, in one run.

    ./dev.sh bench benchmarks/switch.py        # BENCH_REPS=4 by default

Time is measured from the request until Lab answers again at the user's URL
(``GET /user/<u>/lab`` = 200). The table also gives the share of the switch
spent in each of the service's steps. Writes ``benchmarks/results/switch.json``.
"""

from __future__ import annotations

import time

import requests
from _common import new_hub, print_table, progress, reps_from_env, summary, wait_for, write_json

ROUTE = ["gpu", "manycore", "small"]


def lab_reachable(hub, user, token):
    r = requests.get(
        f"{hub.url}/user/{user}/lab",
        headers={"Authorization": f"token {token}"},
        timeout=10,
        allow_redirects=False,
    )
    return r.status_code == 200


def ds_switch(hub, user, token, target):
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
            raise RuntimeError(f"switch {switch_id} ended {rec['state']}: {rec.get('error')}")
        return rec if rec["state"] == "succeeded" else None

    record = wait_for(finished, timeout=60, interval=0.1, message="switch record final")
    steps = {s["name"]: s.get("duration") or 0.0 for s in record["steps"]}
    return elapsed, steps


def plain_stop_spawn(hub, user, token, target):
    t0 = time.perf_counter()
    hub.stop_server(user, wait=True)
    r = hub.spawn(user, {"profile": target}, wait=False)
    if r.status_code >= 400:
        raise RuntimeError(f"spawn failed: {r.status_code} {r.text}")
    wait_for(lambda: lab_reachable(hub, user, token), timeout=180, interval=0.05, message="Lab reachable")
    return time.perf_counter() - t0


def main():
    reps = reps_from_env(4)
    hub = new_hub("bench-switch").start()
    ds_user, plain_user = hub.create_user("bench-switch"), hub.create_user("bench-plain")
    ds_token, plain_token = hub.user_token(ds_user), hub.user_token(plain_user)
    total = reps * len(ROUTE) * 2
    done = 0
    ds_times = {t: [] for t in ROUTE}
    plain_times = {t: [] for t in ROUTE}
    step_totals = {}
    try:
        for user in (ds_user, plain_user):
            hub.spawn(user, {"profile": "small"})
        for i in range(reps):
            for target in ROUTE:
                elapsed, steps = ds_switch(hub, ds_user, ds_token, target)
                ds_times[target].append(elapsed)
                for name, d in steps.items():
                    step_totals[name] = step_totals.get(name, 0.0) + d
                done += 1
                progress(done, total, f"rep {i + 1}: switch to {target}")
                plain_times[target].append(plain_stop_spawn(hub, plain_user, plain_token, target))
                done += 1
                progress(done, total, f"rep {i + 1}: stop+spawn {target}")
    finally:
        hub.stop()

    rows, out = [], {"reps": reps, "targets": {}, "steps": {}}
    for target in ROUTE:
        ds, plain = summary(ds_times[target]), summary(plain_times[target])
        ratio = ds["median"] / plain["median"]
        out["targets"][target] = {"switch": ds, "plain_stop_spawn": plain, "ratio": ratio}
        rows.append(
            [
                f"-> {target}",
                f"{ds['median']:.2f}",
                f"{ds['min']:.2f}-{ds['max']:.2f}",
                f"{plain['median']:.2f}",
                f"{plain['min']:.2f}-{plain['max']:.2f}",
                f"{ratio:.2f}x",
            ]
        )
    all_ds = [t for ts in ds_times.values() for t in ts]
    all_plain = [t for ts in plain_times.values() for t in ts]
    overall = summary(all_ds)["median"] / summary(all_plain)["median"]
    out["overall_ratio"] = overall
    print(
        f"\nswitch benchmark, {reps} rounds of small -> gpu -> manycore -> small (seconds, request -> Lab answers)\n"
    )
    print_table(["switch", "ds-compute med", "min-max", "stop+spawn med", "min-max", "ratio"], rows)
    print(f"\noverall median ratio: {overall:.2f}x")
    step_sum = sum(step_totals.values()) or 1.0
    print("\nshare of the switch per step (service's record):")
    step_rows = []
    for name, d in step_totals.items():
        share = d / step_sum
        out["steps"][name] = {"total_seconds": d, "share": share}
        step_rows.append([name, f"{d / (reps * len(ROUTE)):.2f}", f"{share:.0%}"])
    print_table(["step", "mean s", "share"], step_rows)
    write_json("switch", out)


if __name__ == "__main__":
    main()
