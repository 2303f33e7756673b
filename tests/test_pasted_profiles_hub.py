"""KubeSpawner/z2jh ``profile_list`` examples pasted unchanged into a real hub.

Two hubs: the module's ``hub`` (conftest) with z2jh's resource profiles as
a static ``c.DSComputeSpawner.profile_list``, and ``callable_hub`` whose
``profile_list`` is a callable returning KubeSpawner's own docs example (with
its image option), or garbage for users named ``garbage-*``. The examples
and where they come from are in ``tests/pasted_profiles.py``.
"""

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
from conftest import ARTIFACTS, hub_workdir
from hubtest import Hub

pytestmark = pytest.mark.hub

IS_ROOT = os.geteuid() == 0
GiB = 1024**3
TESTS = Path(__file__).resolve().parent

# the embedded default's tiers are replaced by the pasted list, unchanged
HUB_EXTRA_CONFIG = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from pasted_profiles import Z2JH_08_RESOURCE_PROFILES
c.DSComputeSpawner.profile_list = Z2JH_08_RESOURCE_PROFILES
"""

CALLABLE_CONFIG = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from pasted_profiles import KUBESPAWNER_LIST_EXAMPLE

# garbage a callable profile_list may return: caught at spawn, not at start
GARBAGE = [
    {{"display_name": "Fine", "default": True}},
    {{"display_name": "Leaky", "kubespawner_override": {{"mem_limit": "lots"}}}},
]

async def profile_list(spawner):
    return GARBAGE if spawner.user.name.startswith("garbage") else KUBESPAWNER_LIST_EXAMPLE

c.DSComputeSpawner.profile_list = profile_list
# a callable cannot reach the service: give it the evaluated list
c.DSComputeService.profile_list = KUBESPAWNER_LIST_EXAMPLE
"""


@pytest.fixture(scope="module")
def callable_hub():
    h = Hub(hub_workdir("test_pasted_profiles_callable"), extra_config=CALLABLE_CONFIG)
    h.start()
    yield h
    h.stop()
    for pid in _servers(h, ""):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.copy(h.log_path, ARTIFACTS / "test_pasted_profiles_hub-callable-hub.log")


def _servers(hub, user):
    """{pid: environ} of ``user``'s server processes started by ``hub``."""
    found = {}
    port = hub.env["DS_COMPUTE_HUB_PORT"]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        env = dict(i.split("=", 1) for i in raw.decode(errors="replace").split("\0") if "=" in i)
        if not env.get("DS_COMPUTE_SERVER_KEY", "").startswith(f"{user}/" if user else ""):
            continue
        if f":{port}/" in env.get("JUPYTERHUB_API_URL", "") and (
            not user or b"jupyterhub-singleuser" in cmdline
        ):
            found[int(entry)] = env
    return found


def _main_server(hub, user):
    procs = _servers(hub, user)
    assert len(procs) == 1, procs.keys()
    return next(iter(procs.items()))


def _cgroup_limits(pid):
    """{"cpu": cores, "mem": bytes} of the ds-compute cgroups ``pid`` is in (v1 or v2)."""
    limits = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for ctl in controllers.split(",") if controllers else [""]:
            if ctl == "memory":
                mem = int(Path(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes").read_text())
                limits["mem"] = None if mem >= 2**60 else mem  # v1's "no limit"
            elif ctl == "cpu":
                quota = int(Path(f"/sys/fs/cgroup/cpu{path}/cpu.cfs_quota_us").read_text())
                limits["cpu"] = None if quota < 0 else quota / 100_000
            elif (
                ctl == ""
                and path.startswith("/ds-compute")
                and Path(f"/sys/fs/cgroup{path}/memory.max").exists()
            ):
                base = Path(f"/sys/fs/cgroup{path}")
                mem = (base / "memory.max").read_text().strip()
                quota = (base / "cpu.max").read_text().split()[0]
                limits["mem"] = None if mem == "max" else int(mem)
                limits["cpu"] = None if quota == "max" else int(quota) / 100_000
    return {k: limits.get(k) for k in ("cpu", "mem")}


def _spawn(hub, user, options):
    r = hub.api("POST", f"/users/{user}/server", json=options)
    assert r.status_code in (201, 202), f"{r.status_code} {r.text}\n{hub.log_tail(40)}"
    return hub.wait_ready(user)


def _form(hub, session, user):
    page = session.get(f"{hub.url}/hub/spawn/{user}")
    assert page.status_code == 200, page.text[:500]
    return page.text


def _checked(html):
    return re.findall(r'name="profile"\s+id="[^"]*"\s+value="([^"]+)" checked', html)


# -- static pasted list (z2jh 0.8's resource profiles) --------------------------


@pytest.mark.parametrize(
    "slug, cpu, mem, gpu",
    [("small-default", 1, 1 * GiB, 0), ("big-8-cpus", 8, 64 * GiB, 0), ("gpu-job", 4, 16 * GiB, 1)],
)
def test_each_pasted_profile_spawns_with_limits_from_its_override(hub, slug, cpu, mem, gpu):
    user = hub.create_user(f"z2jh-{slug.split('-')[0]}")
    model = _spawn(hub, user, {"profile": slug})
    assert model["user_options"] == {"profile": slug}
    pid, env = _main_server(hub, user)
    info = json.loads(env["DS_COMPUTE_TIER_INFO"])
    assert (info["slug"], info["cpu"], info["mem"], info["gpu"]) == (slug, cpu, mem, gpu)
    assert info["hourly_cost"] is None  # no price, not 0
    # JupyterHub hands the applied cpu_limit/mem_limit on to the server
    assert (float(env["CPU_LIMIT"]), int(env["MEM_LIMIT"])) == (cpu, mem)
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # no GPU devices configured here
    if IS_ROOT:
        assert _cgroup_limits(pid) == {"cpu": pytest.approx(cpu), "mem": mem}
    r = hub.server_api(user, "api/status", hub.user_token(user))
    assert r.status_code == 200, r.text
    hub.stop_server(user)


def test_overrides_without_meaning_here_are_logged_once_per_spawn(hub):
    log = hub.log_path.read_text(errors="replace")
    image = re.findall(
        r"tier 'gpu-job': override 'image' ignored for z2jh-gpu: .*has no setting 'image'", log
    )
    assert len(image) == 1, image
    typo = re.findall(r"tier 'big-8-cpus': override 'mem_guaranttee' ignored for z2jh-big", log)
    assert len(typo) == 1, typo


def test_form_shows_pasted_tiers_without_price_and_preselects_the_previous(hub):
    user = "z2jh-former"
    s = hub.login(user)
    html = _form(hub, s, user)
    for name in ("Small: default", "Big: 8 CPUs", "GPU job"):
        assert name in html
    assert "8 CPUs" in html and "64 GiB RAM" in html and "1 GPU" in html
    assert not re.search(r"\$\d", html) and "/h<" not in html  # no price, not "$0.00/h"
    assert 'class="ds-tier-price' not in html
    assert _checked(html) == ["small-default"]  # the pasted default

    _spawn(hub, user, {"profile": "big-8-cpus"})
    hub.stop_server(user)
    assert _checked(_form(hub, s, user)) == ["big-8-cpus"]

    # and through the form itself
    r = s.post(
        f"{hub.url}/hub/spawn/{user}",
        data={"profile": "gpu-job", "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False,
    )
    assert r.status_code in (302, 303), r.text[:500]
    assert hub.wait_ready(user)["user_options"] == {"profile": "gpu-job"}
    hub.stop_server(user)
    assert _checked(_form(hub, s, user)) == ["gpu-job"]


# -- callable returning KubeSpawner's docs example, or garbage ---------------------


def test_kubespawner_example_profiles_and_choices_spawn(callable_hub):
    hub = callable_hub
    for user, options, expected in [
        ("ks-default", {}, {"profile": "demo-1", "image": "minimal"}),
        ("ks-base", {"profile": "demo-1", "image": "base"}, {"profile": "demo-1", "image": "base"}),
        (
            "ks-other",
            {"profile": "demo-1", "image--unlisted-choice": "jupyter/scipy-notebook:latest"},
            {"profile": "demo-1", "image--unlisted-choice": "jupyter/scipy-notebook:latest"},
        ),
        ("ks-gpu", {"profile": "demo-2"}, {"profile": "demo-2"}),
    ]:
        hub.create_user(user)
        model = _spawn(hub, user, options)
        assert model["user_options"] == expected
        pid, env = _main_server(hub, user)
        info = json.loads(env["DS_COMPUTE_TIER_INFO"])
        assert (info["cpu"], info["mem"], info["hourly_cost"]) == (None, None, None)  # unlimited, no price
        assert info["gpu"] == (1 if expected["profile"] == "demo-2" else 0)
        assert "CPU_LIMIT" not in env and "MEM_LIMIT" not in env
        if IS_ROOT:
            assert _cgroup_limits(pid) == {"cpu": None, "mem": None}
        hub.stop_server(user)
    log = hub.log_path.read_text(errors="replace")
    assert "tier 'demo-1': override 'image' ignored for ks-base" in log
    # demo-2's extra_resource_guarantees only holds the GPU: no warning
    assert not re.search(r"WARNING.*override 'extra_resource_guarantees'", log)


def test_unlisted_value_failing_the_pasted_regex_is_400(callable_hub):
    user = callable_hub.create_user("ks-bad")
    r = callable_hub.api(
        "POST", f"/users/{user}/server", json={"profile": "demo-1", "image--unlisted-choice": "evil/image:1"}
    )
    assert r.status_code == 400, r.text
    assert "image--unlisted-choice" in r.json()["message"]
    assert "Must be an image matching" in r.json()["message"]


def test_form_preselects_previous_choice_and_unlisted_value(callable_hub):
    hub = callable_hub
    user = "ks-former"
    s = hub.login(user)
    html = _form(hub, s, user)
    assert _checked(html) == ["demo-1"]
    assert '<option value="minimal" selected>jupyter/minimal-notebook:latest</option>' in html
    assert "Enter image manually" in html and not re.search(r"\$\d", html)

    _spawn(hub, user, {"profile": "demo-1", "image": "base"})
    hub.stop_server(user)
    html = _form(hub, s, user)
    assert _checked(html) == ["demo-1"]
    assert '<option value="base" selected>jupyter/base-notebook:latest</option>' in html
    assert '<option value="minimal">' in html

    _spawn(hub, user, {"profile": "demo-1", "image--unlisted-choice": "jupyter/r-notebook:latest"})
    hub.stop_server(user)
    html = _form(hub, s, user)
    assert '<option value="unlisted-choice" selected>Enter image manually</option>' in html
    assert 'value="jupyter/r-notebook:latest"' in html
    assert re.search(r' name="profile-option-demo-1--image--unlisted-choice"', html)

    _spawn(hub, user, {"profile": "demo-2"})
    hub.stop_server(user)
    assert _checked(_form(hub, s, user)) == ["demo-2"]


def test_callable_returning_garbage_is_a_clear_error_naming_tier_and_field(callable_hub):
    hub = callable_hub
    user = hub.create_user("garbage-api")
    r = hub.api("POST", f"/users/{user}/server", json={})
    assert 400 <= r.status_code < 600 and r.status_code not in (201, 202), r.text
    message = r.json()["message"]
    assert "tier 'Leaky'" in message and "kubespawner_override.mem_limit" in message, message
    assert "'lots'" in message
    assert "Traceback" not in r.text
    assert hub.server_model(user) is None
    assert _servers(hub, user) == {}

    # the spawn page says the same, without a traceback
    s = hub.login("garbage-form")
    page = s.get(f"{hub.url}/hub/spawn/garbage-form")
    assert 400 <= page.status_code < 600, page.status_code
    assert "Leaky" in page.text and "kubespawner_override.mem_limit" in page.text
    assert "Traceback" not in page.text
