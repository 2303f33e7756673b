"""Nothing installed by hand: every program the embedded default runs comes
from what the set-up installs (the venv, this checkout's ``node_modules``,
the Debian packages ``dev.sh`` and ``tests/slurm/setup.sh`` name) or from
what a fresh Debian machine with Python 3.11 and Node 20 has.

A program found anywhere else (``npm -g``, ``/usr/local/bin``, a system
``pip``) works here and fails on the next machine: this test fails instead.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import server_processes
from hubtest import REPO

pytestmark = pytest.mark.hub

VENV = Path(sys.prefix)
NODE_MODULES = REPO / "node_modules"
#: what the README promises on a fresh machine (Debian's Python 3.11, Node 20)
BASE_PACKAGES = {"python3.11-minimal", "python3.11", "nodejs", "coreutils", "bash", "dash", "util-linux"}


def setup_apt_packages():
    """Debian packages the set-up scripts install."""
    names = set()
    dev = (REPO / "dev.sh").read_text()
    for line in re.findall(r"^\s*apt_packages\s+(.+)$", dev, re.M):
        names.update(line.split())
    slurm = (REPO / "tests/slurm/setup.sh").read_text()
    for group in re.findall(r"^PACKAGES=\(([^)]*)\)", slurm, re.M):
        names.update(group.split())
    return names


def origin(path):
    """Where an executable comes from: 'venv', 'node_modules', 'apt:<package>' or None."""
    real = Path(os.path.realpath(path))
    for root, name in ((VENV, "venv"), (NODE_MODULES, "node_modules")):
        if real.is_relative_to(os.path.realpath(root)):
            return name
    for candidate in {str(path), str(real)}:
        out = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        if out.returncode == 0:
            return "apt:" + out.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


def assert_from_setup(what, path):
    allowed = {"venv", "node_modules"} | {f"apt:{p}" for p in setup_apt_packages() | BASE_PACKAGES}
    where = origin(path)
    assert where in allowed, (
        f"{what} runs {path} ({os.path.realpath(path)}), which comes from {where or 'nothing the set-up installs'}:"
        " make dev.sh install it (a fresh machine does not have it)"
    )


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def test_set_up_names_the_debian_packages_it_needs():
    assert {"chromium", "slurm-client", "slurmctld", "slurmd", "munge"} <= setup_apt_packages()


def test_proxy_comes_from_node_modules(hub):
    pid = int((hub.data / "proxy.pid").read_text())
    argv = cmdline(pid)
    # node runs the proxy's script: both must come from the set-up
    assert_from_setup("the proxy's interpreter", os.readlink(f"/proc/{pid}/exe"))
    script = next(a for a in argv if "configurable-http-proxy" in a)
    assert Path(os.path.realpath(script)).is_relative_to(NODE_MODULES.resolve()), argv


def test_hub_service_and_server_come_from_the_venv(hub):
    user = hub.create_user("origins")
    hub.spawn(user, {"profile": "small"})
    procs = server_processes(user)
    assert procs
    servers = [pid for pid in procs if any("jupyterhub-singleuser" in a for a in cmdline(pid))]
    assert servers, [cmdline(p) for p in procs]
    for pid in servers:
        argv = cmdline(pid)
        assert_from_setup("the single-user server", os.readlink(f"/proc/{pid}/exe"))
        script = next(a for a in argv if "jupyterhub-singleuser" in a)
        assert_from_setup("the single-user server", shutil.which(script) or script)
    assert_from_setup("the hub", shutil.which("jupyterhub", path=str(VENV / "bin")))
    assert_from_setup("the hub's Python", sys.executable)
    hub.stop_server(user)


@pytest.mark.parametrize("program", ["sbatch", "squeue", "scancel", "chromium"])
def test_tools_of_the_real_parts_tests_come_from_named_packages(program):
    path = shutil.which(program)
    assert path, f"{program} is not installed: ./dev.sh test installs it"
    assert_from_setup(program, path)


def test_something_installed_by_hand_is_caught(tmp_path):
    """The check itself: a program outside the set-up is refused."""
    stray = tmp_path / "configurable-http-proxy"
    stray.write_text("#!/bin/sh\n")
    stray.chmod(0o755)
    with pytest.raises(AssertionError, match="nothing the set-up installs"):
        assert_from_setup("a stray proxy", stray)
