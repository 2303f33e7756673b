"""Environments follow the user, end to end: a venv and a ``pip --user``
package made on *Small* are there on *GPU*, the venv is a kernel there without
``ipykernel install``, and it runs code that imports a package only it has."""

import os
import subprocess
import sys
import textwrap

import pytest
from hubtest import wait_for
from kernelclient import execute, start_kernel

pytestmark = [pytest.mark.hub, pytest.mark.slow]


@pytest.fixture(scope="module")
def wheels():
    """ipykernel and its dependencies as wheels, in a directory the servers'
    system users can read (built once per machine; PyPI is reachable)."""
    base = os.environ.get("DS_COMPUTE_TEST_TMP", "/tmp/ds-compute-tests")
    wh = os.path.join(base, "wheels")
    os.makedirs(wh, exist_ok=True)
    if not any(name.startswith("ipykernel-") for name in os.listdir(wh)):
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "ipykernel", "-w", wh], check=True, timeout=900
        )
    os.chmod(base, 0o755)
    subprocess.run(["chmod", "-R", "a+rX", wh], check=True)
    return wh


def run_ok(hub, user, token, kernel, code, timeout=240):
    out, err = execute(hub, user, token, kernel, textwrap.dedent(code), timeout=timeout)
    assert err is None, f"{err}\n{out}"
    return out


@pytest.mark.timeout(900)
def test_env_made_on_small_is_a_kernel_on_gpu(hub, wheels):
    user = hub.create_user("envuser")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    kernel = start_kernel(hub, user, token)
    # as the user would, from a notebook on Small: a venv under ~/envs, a
    # package only it has, and a `pip install --user`-style package
    run_ok(
        hub, user, token, kernel,
        f"""
        import os, subprocess, site, pathlib, sys
        env = os.path.expanduser("~/envs/torchy")
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", env], check=True)
        # this kernel's pip installs into the new env (quicker than ensurepip)
        subprocess.run([sys.executable, "-m", "pip", "--python", env + "/bin/python", "install", "-q",
                        "--no-index", "--no-compile", "--find-links", {wheels!r}, "ipykernel"], check=True)
        sp = next(pathlib.Path(env, "lib").glob("python3*/site-packages"))
        (sp / "onlyhere").mkdir()
        (sp / "onlyhere" / "__init__.py").write_text("WHERE = 'only in envs/torchy'")
        user_site = pathlib.Path(site.getusersitepackages())
        (user_site / "mine").mkdir(parents=True)
        (user_site / "mine" / "__init__.py").write_text("OK = 'user site on the volume'")
        print(user_site)
        """,
    )  # fmt: skip
    hub.stop_server(user)

    hub.spawn(user, {"profile": "gpu"})
    specs = hub.server_api(user, "api/kernelspecs", token).json()["kernelspecs"]
    env_kernels = {name: s["spec"]["display_name"] for name, s in specs.items() if "torchy" in name}
    assert env_kernels, f"env kernel not listed: {sorted(specs)}"
    name, display = next(iter(env_kernels.items()))
    assert "envs/torchy" in display
    envs = hub.server_api(user, "ds-compute/api/envs", token, params={"wait": 20}).json()
    listed = {e["name"]: e for e in envs["envs"]}
    assert listed["envs/torchy"]["status"] == "ok", listed
    kernel = start_kernel(hub, user, token, name=name)
    out = run_ok(hub, user, token, kernel, "import onlyhere, sys; print(onlyhere.WHERE, sys.prefix)")
    assert "only in envs/torchy" in out and "envs/torchy" in out
    # the default kernel sees the user-site package installed on Small
    kernel = start_kernel(hub, user, token)
    out = run_ok(hub, user, token, kernel, "import mine, os; print(mine.OK, os.environ['DS_COMPUTE_TIER'])")
    assert "user site on the volume gpu" in out
    hub.stop_server(user)


def test_broken_env_is_reported_and_list_survives(hub, wheels):
    user = hub.create_user("brokenenv")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    kernel = start_kernel(hub, user, token)
    run_ok(
        hub, user, token, kernel,
        """
        import os, subprocess
        env = os.path.expanduser("~/envs/gone")
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", env], check=True)
        # an interpreter that no longer exists: the env is broken
        os.unlink(env + "/bin/python3")
        if os.path.lexists(env + "/bin/python"):
            os.unlink(env + "/bin/python")
        """,
    )  # fmt: skip
    hub.stop_server(user)
    hub.spawn(user, {"profile": "manycore"})
    r = hub.server_api(user, "api/kernelspecs", token)
    assert r.status_code == 200
    assert "python3" in r.json()["kernelspecs"]
    envs = wait_for(
        lambda: (lambda e: e if "envs/gone" in e else None)(
            {
                x["name"]: x
                for x in hub.server_api(user, "ds-compute/api/envs", token, params={"wait": 10}).json()[
                    "envs"
                ]
            }
        ),
        timeout=60,
        message="broken env reported",
    )
    assert envs["envs/gone"]["status"] == "broken", envs["envs/gone"]
    assert envs["envs/gone"]["reason"]
    hub.stop_server(user)
