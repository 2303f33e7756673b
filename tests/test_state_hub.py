"""Kernel state across a switch (issue 15), end to end: a real hub, real
sessions and kernels over the websocket, the magic's and the REST path."""

import json
import os
import time

import pytest
import requests
from hubtest import wait_for
from kernelclient import execute
from test_envs_hub import wheels  # noqa: F401 (the fixture: ipykernel wheels for a venv)

pytestmark = pytest.mark.hub

SETUP = """
import socket
import json as js
import numpy as np
import pandas as pd
arr = np.arange(100000, dtype="float64") * 1.5
df = pd.DataFrame({"n": np.arange(1000), "f": np.linspace(0, 1, 1000),
                   "s": [f"row{i}" for i in range(1000)], "t": pd.date_range("2026-01-01", periods=1000)})
x = 42
def double(v):
    return 2 * v
class Point:
    def __init__(self, a):
        self.a = a
p = Point(7)
conn = socket.socket()
print("ready")
"""

CHECK = """
ok = (x == 42, list(arr[:3]) == [0.0, 1.5, 3.0], len(arr) == 100000, type(arr).__name__ == "ndarray",
      df.shape == (1000, 4), df["s"].iloc[999] == "row999", str(df["t"].dtype).startswith("datetime64"),
      float(df["f"].sum()) == 500.0, double(21) == 42,
      p.a == 7, isinstance(p, Point), js.dumps([1]) == "[1]", "conn" not in dir())
print("checked", all(ok), ok)
"""


def tier_of(hub, user):
    model = hub.server_model(user)
    return model and model.get("ready") and model["user_options"].get("profile")


def new_session(hub, user, token, path, kind="notebook"):
    r = hub.server_api(
        user, "api/sessions", token, method="POST",
        json={"path": path, "name": path, "type": kind, "kernel": {"name": "python3"}},
    )  # fmt: skip
    r.raise_for_status()
    return r.json()["kernel"]["id"]


def sessions(hub, user, token):
    r = hub.server_api(user, "api/sessions", token)
    r.raise_for_status()
    return {s["path"]: s for s in r.json()}


def state(hub, user, token):
    r = hub.server_api(user, "ds-compute/api/state", token)
    r.raise_for_status()
    return r.json()


def wait_restored(hub, user, token, after):
    def done():
        st = state(hub, user, token)
        rest = st.get("restore")
        return st if not st["restoring"] and rest and rest["restored_at"] > after else None

    return wait_for(done, timeout=120, interval=0.5, message="the state restored")


def wait_tier(hub, user, tier):
    wait_for(lambda: tier_of(hub, user) == tier, timeout=180, interval=0.3, message=f"server on {tier}")


def test_variables_follow_the_switch_and_only_with_keep_state(hub):
    user = hub.create_user("keeper")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    nb = new_session(hub, user, token, "work/analysis.ipynb")
    other = new_session(hub, user, token, "other.ipynb")
    for kernel in (nb, other):
        out, err = execute(hub, user, token, kernel, SETUP)
        assert err is None and "ready" in out, (out, err)
    root = state(hub, user, token)["root"]
    before = time.time()
    # the magic's path: it saves its own (busy) kernel, the server saves the idle other one
    try:
        out, err = execute(hub, user, token, nb, "%ds_compute switch gpu --yes --keep-state", timeout=120)
    except ConnectionError:
        pass  # the old server (and this websocket) may stop before the magic's output arrives
    else:
        assert err is None, err
        assert "Switching to GPU" in out and "variables were saved" in out, out
    # the old server may be gone already: what it saved is on the volume
    saved = json.load(open(os.path.join(root, "last.json")))["save"]
    assert {s["path"] for s in saved["sessions"]} == {"work/analysis.ipynb", "other.ipynb"}
    for s in saved["sessions"]:
        assert s["error"] is None, s
        assert [v["name"] for v in s["summary"]["not_saved"]] == ["conn"]
    wait_tier(hub, user, "gpu")
    st = wait_restored(hub, user, token, before)
    by_path = {s["path"]: s for s in st["restore"]["sessions"]}
    assert set(by_path) == {"work/analysis.ipynb", "other.ipynb"}
    for s in by_path.values():
        assert s["error"] is None and s["summary"]["failed"] == [], s
        assert s["summary"]["not_restored"] == [{"name": "conn", "type": "socket"}]
        assert "not restored: conn (socket)" in s["summary"]["notice"]
    # the same sessions (paths, kernel names) on GPU, with their variables
    live = sessions(hub, user, token)
    assert set(live) == {"work/analysis.ipynb", "other.ipynb"}
    assert {s["kernel"]["name"] for s in live.values()} == {"python3"}
    out, err = execute(hub, user, token, live["work/analysis.ipynb"]["kernel"]["id"], CHECK)
    assert err is None, err
    assert "checked True" in out, out
    assert "ds-compute: restored " in out and "not restored: conn (socket)" in out, out
    out, err = execute(hub, user, token, live["other.ipynb"]["kernel"]["id"], CHECK)
    assert "checked True" in out, (out, err)
    # restored without failures: the state is gone from the volume
    assert not [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]

    # without keep_state nothing is saved and the sessions do not come back
    last_save = state(hub, user, token)["save"]["saved_at"]
    r = hub.server_api(user, "ds-compute/api/switch", token, method="POST", json={"profile": "small"})
    assert r.status_code == 202, r.text
    assert "state" not in r.json()
    wait_tier(hub, user, "small")
    time.sleep(2)
    st = state(hub, user, token)
    assert st["save"]["saved_at"] == last_save
    assert not os.path.exists(os.path.join(root, "manifest.json"))
    assert sessions(hub, user, token) == {}
    hub.stop_server(user)


def test_a_corrupted_state_is_reported_not_fatal(hub):
    user = hub.create_user("corrupt")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    nb = new_session(hub, user, token, "c.ipynb")
    out, err = execute(hub, user, token, nb, "y = [1, 2, 3]\nz = {'k': 'v'}\nprint('ready')")
    assert "ready" in out, (out, err)
    r = hub.server_api(user, "ds-compute/api/switch", token, method="POST",
                       json={"profile": "gpu", "keep_state": True})  # fmt: skip
    assert r.status_code == 202, r.text
    kid = r.json()["state"]["sessions"][0]["dir"]
    root = state(hub, user, token)["root"]
    index = json.load(open(os.path.join(root, kid, "index.json")))
    bad = next(v for v in index["variables"] if v["name"] == "y")
    # race the new server: corrupt y before it restores (it is still starting)
    with open(os.path.join(root, kid, bad["file"]), "wb") as f:
        f.write(b"\x80\x05not a pickle")
    before = time.time() - 60
    wait_tier(hub, user, "gpu")
    st = wait_restored(hub, user, token, before)
    (s,) = st["restore"]["sessions"]
    assert [f["name"] for f in s["summary"]["failed"]] == ["y"], s
    assert "y (failed: " in s["summary"]["notice"]
    kernel = sessions(hub, user, token)["c.ipynb"]["kernel"]["id"]
    out, err = execute(hub, user, token, kernel, "print(z, 'y' in dir())")
    assert err is None and "{'k': 'v'} False" in out, (out, err)
    # a failed variable keeps the state for the user to look at
    assert os.path.exists(os.path.join(root, kid, "index.json"))
    hub.stop_server(user)


def test_keep_state_must_be_a_boolean(hub):
    user = hub.create_user("badkeep")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    r = hub.server_api(user, "ds-compute/api/switch", token, method="POST",
                       json={"profile": "gpu", "keep_state": "yes"})  # fmt: skip
    assert r.status_code == 400 and r.json()["field"] == "keep_state", r.text
    # the service checks it too
    r = requests.post(
        f"{hub.url}/services/ds-compute/api/switches",
        json={"user": user, "server_name": "", "profile": "gpu", "keep_state": 1},
        headers={"Authorization": f"token {token}"},
        timeout=10,
    )
    assert r.status_code == 400 and "keep_state" in r.text, r.text
    assert tier_of(hub, user) == "small"
    hub.stop_server(user)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_kernel_from_an_env_on_the_volume_keeps_its_state(hub, wheels):  # noqa: F811
    user = hub.create_user("envkeeper")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    maker = new_session(hub, user, token, "make-env.ipynb")
    out, err = execute(
        hub, user, token, maker,
        f"""
import os, subprocess, sys
env = os.path.expanduser("~/envs/keepy")
subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", env], check=True)
subprocess.run([sys.executable, "-m", "pip", "--python", env + "/bin/python", "install", "-q",
                "--no-index", "--no-compile", "--find-links", {wheels!r}, "ipykernel"], check=True)
print("made")
""",
        timeout=300,
    )  # fmt: skip
    assert "made" in out, (out, err)
    hub.server_api(user, "ds-compute/api/envs", token, params={"wait": 20})
    specs = hub.server_api(user, "api/kernelspecs", token).json()["kernelspecs"]
    name = next(n for n in specs if "keepy" in n)
    r = hub.server_api(
        user, "api/sessions", token, method="POST",
        json={"path": "in-env.ipynb", "name": "in-env.ipynb", "type": "notebook", "kernel": {"name": name}},
    )  # fmt: skip
    r.raise_for_status()
    out, err = execute(hub, user, token, r.json()["kernel"]["id"], "import sys\nx = 42\nprint(sys.prefix)")
    assert err is None and "envs/keepy" in out, (out, err)
    before = time.time()
    r = hub.server_api(user, "ds-compute/api/switch", token, method="POST",
                       json={"profile": "gpu", "keep_state": True})  # fmt: skip
    assert r.status_code == 202, r.text
    wait_tier(hub, user, "gpu")
    st = wait_restored(hub, user, token, before)
    by_path = {s["path"]: s for s in st["restore"]["sessions"]}
    assert by_path["in-env.ipynb"]["kernel_name"] == name
    assert by_path["in-env.ipynb"]["error"] is None, by_path
    live = sessions(hub, user, token)
    assert live["in-env.ipynb"]["kernel"]["name"] == name
    out, err = execute(hub, user, token, live["in-env.ipynb"]["kernel"]["id"], "print(x, sys.prefix)")
    assert err is None and "42 " in out and "envs/keepy" in out, (out, err)
    hub.stop_server(user)
