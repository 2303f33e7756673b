# pytest-jupyter's server fixtures (jp_serverapp, jp_fetch, ...). pytest only
# accepts ``pytest_plugins`` in a top-level conftest, so it lives here.
pytest_plugins = ["pytest_jupyter.jupyter_server"]

import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from hubtest import REPO, Hub

#: screenshots, hub logs: kept after the run (CI prints where)
ARTIFACTS = Path(os.environ.get("DS_COMPUTE_TEST_ARTIFACTS") or REPO / "test-artifacts")
ARTIFACTS.mkdir(parents=True, exist_ok=True)

# Extra tiers the real-hub tests need besides the embedded default's:
# one limited to a group, one with options (choices and an unlisted value).
TEST_TIERS_CONFIG = """
c.DSComputeSpawner.profile_list = list(c.DSComputeSpawner.profile_list) + [
    {
        "display_name": "Restricted",
        "slug": "restricted",
        "description": "Only for the gpu-team group.",
        "cpu": 1, "mem": "1G", "hourly_cost": 3.0,
        "allowed_groups": ["gpu-team"],
    },
    {
        "display_name": "Broken",
        "slug": "broken",
        "description": "A tier whose server dies at start (tests the error path).",
        "cpu": 1, "mem": "1G", "hourly_cost": 0.01,
        "spawner_override": {"cmd": ["/bin/sh", "-c", "echo 'boom: no such machine' >&2; exit 3"]},
    },
    {
        "display_name": "Tuned",
        "slug": "tuned",
        "description": "Small, with a choice of memory.",
        "cpu": 1, "mem": "1G", "hourly_cost": 0.1,
        "profile_options": {
            "memory": {
                "display_name": "Memory",
                "choices": {
                    "1g": {"display_name": "1 GiB", "default": True,
                           "spawner_override": {"environment": {"TUNED_MEM": "1g"}}},
                    "2g": {"display_name": "2 GiB",
                           "spawner_override": {"environment": {"TUNED_MEM": "2g"}}},
                },
                "unlisted_choice": {
                    "enabled": True,
                    "display_name": "Other (e.g. 3g)",
                    "validation_regex": "^[0-9]+g$",
                    "validation_message": "a number of GiB followed by g",
                    "spawner_override": {"environment": {"TUNED_MEM": "{value}"}},
                },
            }
        },
    },
]
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory, request):
    """A real hub (embedded default + test tiers) for one test module.

    A module may set ``HUB_EXTRA_CONFIG`` (config lines) and ``HUB_ENV``.
    """
    extra = TEST_TIERS_CONFIG + getattr(request.module, "HUB_EXTRA_CONFIG", "")
    workdir = hub_workdir(request.module.__name__)
    h = Hub(workdir, extra_config=extra, env=getattr(request.module, "HUB_ENV", None))
    _current_hub["api_port"] = h.env["DS_COMPUTE_HUB_PORT"]
    h.start()
    yield h
    h.stop()
    # a failed test may leave servers behind: end them, so they cannot
    # outlive the run or be mistaken for a later run's servers
    for pid in server_processes(""):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _current_hub.clear()
    shutil.copy(h.log_path, ARTIFACTS / f"{request.module.__name__}-hub.log")


def hub_workdir(name):
    """A fresh directory that servers running as other system users can
    traverse (pytest's own tmp dir is mode 700 under /tmp/pytest-of-root)."""
    base = os.environ.get("DS_COMPUTE_TEST_TMP", "/tmp/ds-compute-tests")
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o755)
    path = tempfile.mkdtemp(prefix=f"{name}-", dir=base)
    os.chmod(path, 0o755)
    return path


_current_hub = {}


def server_processes(user):
    """Environments of the processes of ``user``'s servers, keyed by pid.

    Found by the marker every server process inherits from the spawner;
    only servers of the current module's hub count (by its API port).
    """
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        if not env.get("DS_COMPUTE_SERVER_KEY", "").startswith(f"{user}/" if user else ""):
            continue
        port = _current_hub.get("api_port")
        if port and f":{port}/" not in env.get("JUPYTERHUB_API_URL", ""):
            continue
        found[int(entry)] = env
    return found


def process_uid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    raise LookupError(pid)


def system_uid(name, mode="prefixed"):
    """The uid of hub user ``name``'s system account (the embedded default
    runs servers as ``jdc-<name>``)."""
    from jupyter_ds_compute.accounts import account_name

    return pwd.getpwnam(account_name(name, mode)).pw_uid
