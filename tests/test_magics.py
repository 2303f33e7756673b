"""``%ds_compute``: the pure functions, then the magic in a real IPython shell
talking over HTTP to a real jupyter server running the ds_compute extension
(whose hub service is a small tornado app on 127.0.0.1)."""

import asyncio
import json
import time

import fakes
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_ds_compute import magics

TIER_SMALL = {
    "slug": "small",
    "display_name": "Small",
    "description": "",
    "cpu": 1.0,
    "mem": 2 * 2**30,
    "gpu": 0,
    "hourly_cost": 2.0,
}
TIER_GPU = {
    "slug": "gpu",
    "display_name": "GPU",
    "description": "",
    "cpu": 8.0,
    "mem": 32 * 2**30,
    "gpu": 1,
    "hourly_cost": 3.5,
}
TIER_BIG = {
    "slug": "big",
    "display_name": "Many cores",
    "description": "",
    "cpu": 64.0,
    "mem": 256 * 2**30,
    "gpu": 0,
    "hourly_cost": 9.0,
}
TIERS = [
    dict(TIER_SMALL, allowed=True, reason=None, default=True),
    dict(TIER_GPU, allowed=True, reason=None, default=False),
    dict(TIER_BIG, allowed=False, reason="only for group hpc", default=False),
]
SERVER_TOKEN = "server-token-of-alice"


# -- pure functions ---------------------------------------------------------------
def test_not_under_hub_message():
    for env in ({}, {"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:1/user/a/"}, {"JUPYTERHUB_API_TOKEN": "x"}):
        with pytest.raises(magics.DSComputeError, match="Not running under JupyterHub"):
            magics.run("status", env=env)


def test_client_config():
    url, token = magics.client_config(
        {"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:9/user/alice/srv", "JUPYTERHUB_API_TOKEN": "t"}
    )
    assert url == "http://127.0.0.1:9/user/alice/srv/ds-compute/api/" and token == "t"


@pytest.mark.parametrize(
    "n,text",
    [
        (None, "?"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (2 * 2**30, "2 GiB"),
        (3 * 2**40, "3 TiB"),
    ],
)
def test_format_bytes(n, text):
    assert magics.format_bytes(n) == text


@pytest.mark.parametrize(
    "s,text", [(None, "?"), (5, "5 s"), (300, "5 min"), (3725, "1 h 02 min"), (90000, "1 d 1 h")]
)
def test_format_duration(s, text):
    assert magics.format_duration(s) == text


def test_format_tiers_marks_current_and_refusals():
    out = magics.format_tiers(
        {"current": "small", "tiers": [dict(t, current=t["slug"] == "small") for t in TIERS]}
    )
    lines = out.splitlines()
    assert lines[0].split() == ["tier", "name", "cpu", "memory", "gpu", "price", "buys", "idle"]
    small = next(line for line in lines if " small " in f" {line} ")
    assert small.startswith("*") and "$2.00/h" in small and "2 GiB" in small
    big = next(line for line in lines if " big " in line)
    assert not big.startswith("*") and "not allowed: only for group hpc" in big
    # columns line up
    assert len({line.index("$") for line in lines if "$" in line}) == 1


def test_format_envs_lists_broken_with_reason():
    now = 1_000_000.0
    out = magics.format_envs(
        {
            "envs": [
                {
                    "name": "envs/torch",
                    "status": "ok",
                    "python_version": "3.11.7",
                    "kind": "venv",
                    "size_bytes": 3 * 2**30,
                    "last_used": now - 7200,
                    "kernel_name": "ds-env-torch",
                    "is_kernel": True,
                },
                {
                    "name": "envs/old",
                    "status": "broken",
                    "reason": "the interpreter is gone",
                    "kind": "venv",
                    "size_bytes": None,
                    "last_used": None,
                    "kernel_name": "ds-env-old",
                    "is_kernel": False,
                },
            ]
        },
        now=now,
    )
    torch = next(line for line in out.splitlines() if line.startswith("envs/torch"))
    assert "kernel" in torch and "3 GiB" in torch and "2 h ago" in torch and "ds-env-torch" in torch
    old = next(line for line in out.splitlines() if line.startswith("envs/old "))
    assert "broken" in old and "never" in old and "ds-env-old" not in old
    assert "envs/old: the interpreter is gone" in out
    assert "No environments" in magics.format_envs({"envs": [], "roots": ["/v/envs"]})


def test_progress_link():
    url = "/services/ds-compute/switches/x?next=/user/a/lab"
    assert magics.progress_link(url, {}) == url
    assert (
        magics.progress_link(url, {"JUPYTERHUB_PUBLIC_HUB_URL": "https://hub.example.org/hub/"})
        == "https://hub.example.org" + url
    )
    assert (
        magics.progress_link("https://other/x", {"JUPYTERHUB_PUBLIC_HUB_URL": "https://hub/"})
        == "https://other/x"
    )


def test_next_url():
    env = {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/", "DS_COMPUTE_VOLUME_PATH": "/vol/alice"}
    assert magics.next_url(env) == "/user/alice/lab"
    assert (
        magics.next_url(dict(env, JPY_SESSION_NAME="/vol/alice/a b/n.ipynb"))
        == "/user/alice/lab/tree/a%20b/n.ipynb"
    )
    assert magics.next_url(dict(env, JPY_SESSION_NAME="/elsewhere/n.ipynb")) == "/user/alice/lab"
    assert (
        magics.next_url({"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:5/user/bob/gpu/"}) == "/user/bob/gpu/lab"
    )
    assert magics.next_url({}) is None


@pytest.mark.parametrize(
    "args,problem",
    [
        ([], "needs a TIER"),
        (["gpu", "small"], "one TIER"),
        (["--force", "gpu"], "unknown option"),
        (["gpu", "=x"], "KEY=VALUE"),
    ],
)
def test_parse_switch_bad(args, problem):
    with pytest.raises(magics.BadUsage, match=problem):
        magics.parse_switch(args)


def test_parse_switch():
    assert magics.parse_switch(["gpu", "--yes", "image=torch"]) == ("gpu", True, {"image": "torch"})


@pytest.mark.parametrize("line", ["bogus", "status now", "tiers x", "'unclosed"])
def test_bad_usage(line):
    with pytest.raises(magics.BadUsage):
        magics.run(line, env={"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:1/", "JUPYTERHUB_API_TOKEN": "t"})


def test_unreachable_server():
    with pytest.raises(magics.DSComputeError, match="Could not reach"):
        magics.run(
            "status",
            env={"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:1/user/a/", "JUPYTERHUB_API_TOKEN": "t"},
        )


def test_magics_module_imports_only_stdlib_and_ipython():
    """It is copied onto env kernels' path, where jupyter_ds_compute is absent."""
    import ast
    import sys

    tree = ast.parse(open(magics.__file__).read())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    # ds_compute_formatting/_state: the copies of jupyter_ds_compute.formatting/kernelstate next to it
    assert roots - set(sys.stdlib_module_names) == {"IPython", "ds_compute_formatting", "ds_compute_state"}
    tree = ast.parse(open(magics.fmt.__file__).read())
    assert {
        a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    } <= set(sys.stdlib_module_names) | {"__future__"}


def test_kernel_copy_formats_small_prices(tmp_path):
    """The copy on an env kernel's path (both files, no jupyter_ds_compute) works:
    $0.004/h stays $0.004/h, not $0.00."""
    import subprocess
    import sys

    from jupyter_ds_compute.serverext.kernelspecs import DSComputeKernelSpecManager

    shim = DSComputeKernelSpecManager().shim_dir
    code = "import ds_compute_magics as m; print(m.format_price({'hourly_cost': 0.004}))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {shim!r}); {code}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "$0.004/h"


# -- against a real server ------------------------------------------------------------
class TokenUsers(fakes.TokenUsers):
    users = dict(fakes.TokenUsers.users, **{SERVER_TOKEN: "alice"})


def switch_reply(body):
    return 202, {
        "id": "sw1",
        "progress_url": "/services/ds-compute/switches/sw1?next=" + body.get("next", ""),
    }


@pytest.fixture
def run(jp_asyncio_loop):
    """Run a coroutine on pytest-jupyter's loop, where the server runs (see test_serverext)."""
    return jp_asyncio_loop.run_until_complete


@pytest.fixture
def fake_service(run):
    fake = fakes.FakeService(tiers_reply=(200, {"tiers": TIERS}), switch_reply=switch_reply)
    run(fake.start())
    yield fake
    fake.stop()


@pytest.fixture
def kernel_env(monkeypatch, jp_root_dir, fake_service, jp_http_port, jp_base_url):
    """The server's environment (spawner's variables), which its kernels inherit."""
    values = {
        "JUPYTERHUB_USER": "alice",
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_API_TOKEN": SERVER_TOKEN,
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{jp_http_port}{jp_base_url}",
        "JUPYTERHUB_SERVICE_PREFIX": jp_base_url,
        "JUPYTERHUB_PUBLIC_HUB_URL": "https://hub.example.org/hub/",
        "DS_COMPUTE_TIER": "small",
        "DS_COMPUTE_TIER_INFO": json.dumps(TIER_SMALL),
        "DS_COMPUTE_TIERS": json.dumps(TIERS),
        "DS_COMPUTE_STARTED_AT": str(time.time() - 3600),
        "DS_COMPUTE_VOLUME_ID": "alice",
        "DS_COMPUTE_VOLUME_PATH": str(jp_root_dir),
        "DS_COMPUTE_VOLUME_DRIVER": "local",
        "DS_COMPUTE_BACKEND": "local",
        "DS_COMPUTE_SERVICE_URL": fake_service.url,
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture
def jp_server_config(kernel_env):
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ds_compute": True},
            "identity_provider_class": TokenUsers,
            "allow_unauthenticated_access": False,
        },
        "IdentityProvider": {"token": "alice-token"},
    }


@pytest.fixture
def magic(run, jp_serverapp, http_server):
    """Run ``%ds_compute LINE`` (the plain function) in a thread: it blocks on HTTP
    while the server answers on the test's loop."""

    def call(line, ask=None):
        def answer(prompt):
            if ask is None:
                raise AssertionError(f"unexpected question: {prompt}")
            call.prompts.append(prompt)
            return ask

        return run(asyncio.to_thread(magics.run, line, None, answer, call.said.append))

    call.prompts = []
    call.said = []
    return call


def test_status(magic):
    out = magic("status")
    assert "Tier:      Small (small)" in out
    assert "Resources: 1 CPU, 2 GiB memory, 0 GPU" in out
    assert "Price:     $2.00/h" in out
    assert "On tier:   1 h" in out
    assert "Cost:      $2.00 so far" in out
    assert "Volume:    alice (local)" in out and "Notebooks: on the volume" in out
    assert magic("") == out  # no command = status


def test_volume_and_cost(magic, jp_root_dir):
    vol = magic("volume")
    assert str(jp_root_dir) in vol and "WARNING" not in vol
    assert "$2.00/h" in magic("cost")


def test_tiers(magic, fake_service):
    out = magic("tiers")
    assert [line[0] for line in out.splitlines() if " small " in line] == ["*"]
    assert "not allowed: only for group hpc" in out
    assert ("GET", "/services/ds-compute/api/tiers", None) in [
        (c["method"], c["path"], c["body"]) for c in fake_service.calls
    ]


def test_switch_yes(magic, fake_service, jp_base_url):
    out = magic("switch gpu --yes")
    posts = [c for c in fake_service.calls if c["method"] == "POST"]
    assert len(posts) == 1
    path, body = posts[0]["path"], posts[0]["body"]
    assert path == "/services/ds-compute/api/switches"
    assert body == {"profile": "gpu", "next": jp_base_url.rstrip("/") + "/lab", "server_name": ""}
    assert "Switching to GPU (gpu)" in out
    assert "https://hub.example.org/services/ds-compute/switches/sw1?next=" in out
    assert "kernel will restart" in out
    assert magic.prompts == []


def test_switch_asks_first(magic, fake_service):
    assert magic("switch gpu", ask="n") == "Not switching."
    assert magic.prompts == ["The kernel will restart when the server moves. Switch to GPU? [y/N] "]
    assert [c for c in fake_service.calls if c["method"] == "POST"] == []
    assert "Switching to GPU" in magic("switch gpu", ask="y")
    assert len([c for c in fake_service.calls if c["method"] == "POST"]) == 1


def test_switch_refusals(magic, fake_service):
    with pytest.raises(magics.BadUsage, match="no such tier: huge. Tiers: small, gpu, big"):
        magic("switch huge --yes")
    assert "already runs on Small" in magic("switch small --yes")
    assert "cannot switch to Many cores: only for group hpc" in magic("switch big --yes")
    assert [c for c in fake_service.calls if c["method"] == "POST"] == []


def test_envs_empty(magic, jp_root_dir):
    assert "No environments found" in magic("envs")
    assert str(jp_root_dir / "envs") in magic("envs")


# -- the magic in a real IPython shell ----------------------------------------------------------
@pytest.fixture
def shell(run, jp_serverapp, http_server):
    sh = InteractiveShell.instance()
    yield lambda cell: run(asyncio.to_thread(sh.run_cell, cell))
    InteractiveShell.clear_instance()


def test_shell_load_ext_and_commands(shell, capsys, fake_service):
    assert shell("%load_ext jupyter_ds_compute").success
    result = shell("%ds_compute tiers")
    assert result.success
    out = capsys.readouterr().out
    assert "* " in out and "small" in out and "gpu" in out
    assert shell("%ds_compute switch gpu --yes").success
    assert (
        "Follow the progress at: https://hub.example.org/services/ds-compute/switches/sw1"
        in capsys.readouterr().out
    )


def test_shell_bad_usage_is_usage_error(shell, capsys):
    shell("%load_ext jupyter_ds_compute")
    result = shell("%ds_compute bogus")
    assert isinstance(result.error_in_exec, UsageError)
    assert "unknown command 'bogus'" in str(result.error_in_exec)
    result = shell("%ds_compute switch")
    assert isinstance(result.error_in_exec, UsageError)


def test_shell_help(shell, capsys):
    shell("%load_ext jupyter_ds_compute")
    shell("%ds_compute?")
    out = capsys.readouterr().out
    assert "See and switch this server's compute tier" in out and "switch TIER [--yes]" in out


def test_shell_not_under_hub(shell, capsys, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN")
    shell("%load_ext jupyter_ds_compute")
    result = shell("%ds_compute status")
    assert result.success  # a message, not a traceback
    assert "Not running under JupyterHub" in capsys.readouterr().out


# -- requests for a tier (issue 17) ----------------------------------------------------


def test_parse_request():
    args = ["gpu", "--for", "7d", "--why", "train the activity model"]
    assert magics.parse_request(args) == {
        "profile": "gpu",
        "duration": "7d",
        "reason": "train the activity model",
    }
    assert magics.parse_request(["gpu", "--for=2h", "--why=x; rm -rf ~"])["reason"] == "x; rm -rf ~"  # data


@pytest.mark.parametrize(
    "args, problem",
    [([], "needs a TIER"), (["gpu", "--why", "x"], "needs --for"), (["gpu", "--for", "1d"], "needs --why"),
     (["gpu", "--for"], "needs a value"), (["gpu", "cpu", "--for", "1d", "--why", "x"], "one TIER"),
     (["gpu", "--when", "now"], "unknown option")],
)  # fmt: skip
def test_parse_request_bad(args, problem):
    with pytest.raises(magics.BadUsage, match=problem):
        magics.parse_request(args)


def test_request_through_the_server(magic, fake_service):
    fake_service.switch_reply = (201, {"id": "0123456789ab", "state": "pending", "duration": 604800})
    out = magic('request gpu --for 7d --why "train the activity model"')
    assert "Asked for gpu for 7 d" in out and "0123456789ab" in out
    call = fake_service.calls[-1]
    assert call["path"] == "/services/ds-compute/api/requests"
    assert call["body"] == {"profile": "gpu", "duration": "7d", "reason": "train the activity model"}
    fake_service.switch_reply = (
        400,
        {"message": "Tier 'GPU' may be granted for at most 2d.", "field": "duration"},
    )
    with pytest.raises(magics.DSComputeError, match="at most 2d.*duration"):
        magic('request gpu --for 7d --why "x"')


# -- cost before switching (issue 17) --------------------------------------------------
MONTH = {"state": "ok", "spent": 40.0, "budget": 100.0, "fraction": 0.4, "kind": "user", "period": "month"}
UNLIMITED = {"state": "unlimited", "spent": 3.0, "budget": None, "fraction": None}
GPU4 = dict(TIER_GPU, hourly_cost=4.0, idle_downshift_after=1800)


def test_budget_numbers():
    assert magics.budget_left(MONTH) == 60.0
    assert magics.budget_left(dict(MONTH, spent=140.0)) == 0.0
    assert magics.budget_left(UNLIMITED) is None and magics.budget_left(None) is None
    assert magics.hours_on_budget(MONTH, GPU4) == 15.0
    assert magics.hours_on_budget(MONTH, dict(GPU4, hourly_cost=0)) is None
    assert magics.hours_on_budget(MONTH, dict(GPU4, hourly_cost=None)) is None
    assert magics.exceeds_within_hour(dict(MONTH, spent=97.0), GPU4)
    assert not magics.exceeds_within_hour(dict(MONTH, spent=96.0), GPU4)  # exactly an hour left
    assert not magics.exceeds_within_hour(UNLIMITED, GPU4)
    assert not magics.exceeds_within_hour(None, GPU4)
    assert not magics.exceeds_within_hour(dict(MONTH, spent=100.0), dict(GPU4, hourly_cost=0))


def test_cost_line_and_warning():
    assert magics.cost_line(GPU4, MONTH) == (
        "GPU: $4.00/h; $60.00 left this month of your budget, 15 h on it; idle downshift after 30 min"
    )
    assert (
        magics.cost_line(TIER_SMALL, UNLIMITED)
        == "Small: $2.00/h; no budget limit; never moved down when idle"
    )
    assert magics.cost_line(TIER_SMALL, None) == "Small: $2.00/h; never moved down when idle"
    assert magics.budget_warning(GPU4, dict(MONTH, spent=98.0)) == (
        "WARNING: this switch would use up your budget within the hour: $2.00 left this month lasts "
        "about 30 min on GPU ($4.00/h); then only your default tier is available."
    )
    assert magics.budget_warning(GPU4, MONTH) == ""
    assert magics.budget_warning(GPU4, UNLIMITED) == ""


def test_format_budget():
    assert magics.format_budget(MONTH) == "Budget: $60.00 left this month ($40.00 of $100.00 spent)."
    group = dict(MONTH, kind="group", name="physics")
    assert magics.format_budget(group).startswith("Budget (group physics): $60.00 left")
    assert magics.format_budget(UNLIMITED) == "Budget: no limit."
    assert "not known" in magics.format_budget(None)


def test_format_local_time(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        assert magics.format_local_time("2030-05-02T10:00:00+00:00") == "2030-05-02 12:00 CEST"
        assert magics.format_local_time("2030-01-02T10:00:00Z") == "2030-01-02 11:00 CET"
        assert magics.format_local_time("soon") == "soon"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_format_tiers_cost_columns_and_access():
    tiers = [
        dict(TIER_SMALL, allowed=True, current=True, idle_downshift_after=None),
        dict(GPU4, allowed=True, grant={"id": "g1", "expires": "2030-05-02T10:00:00+00:00"}),
        dict(TIER_BIG, allowed=False, reason="only for group hpc", requestable=True, max_grant=86400),
        dict(TIER_BIG, slug="huge", allowed=False, reason="only for group hpc", request={"id": "r1"}),
    ]
    out = magics.format_tiers({"current": "small", "tiers": tiers, "budget": MONTH})
    rows = {line.split()[0 if not line.startswith("*") else 1]: line for line in out.splitlines()[2:6]}
    assert "30 h" in rows["small"] and "never" in rows["small"]
    assert "15 h" in rows["gpu"] and "30 min" in rows["gpu"]
    assert "granted until " + magics.format_local_time("2030-05-02T10:00:00+00:00") in rows["gpu"]
    assert "6.6 h" in rows["big"] and "%ds_compute request big" in rows["big"]
    assert "your request is pending" in rows["huge"]
    assert "Budget: $60.00 left this month ($40.00 of $100.00 spent)." in out
    unlimited = magics.format_tiers({"current": "small", "tiers": tiers, "budget": UNLIMITED})
    assert "unlimited" in unlimited.splitlines()[3] and "Budget: no limit." in unlimited


def test_switch_prints_the_cost_and_the_budget_warning(magic, fake_service):
    tiers = [dict(t, idle_downshift_after=600 if t["slug"] == "gpu" else None) for t in TIERS]
    fake_service.tiers_reply = (200, {"tiers": tiers, "budget": dict(MONTH, spent=98.0)})
    assert "Switching to GPU" in magic("switch gpu --yes")
    assert magic.said == [
        "GPU: $3.50/h; $2.00 left this month of your budget, 0.5 h on it; idle downshift after 10 min",
        "WARNING: this switch would use up your budget within the hour: $2.00 left this month lasts "
        "about 34 min on GPU ($3.50/h); then only your default tier is available.",
    ]
    # said before it asks; nothing posted when the answer is no
    magic.said.clear()
    posts = len([c for c in fake_service.calls if c["method"] == "POST"])
    assert magic("switch gpu", ask="n") == "Not switching."
    assert magic.said[1].startswith("WARNING:") and len(magic.prompts) == 1
    assert len([c for c in fake_service.calls if c["method"] == "POST"]) == posts
    # an unlimited budget: the cost line, no warning
    magic.said.clear()
    fake_service.tiers_reply = (200, {"tiers": tiers, "budget": UNLIMITED})
    assert "Switching to GPU" in magic("switch gpu --yes")
    assert magic.said == ["GPU: $3.50/h; no budget limit; idle downshift after 10 min"]


def test_tiers_through_the_server_show_cost(magic, fake_service):
    fake_service.tiers_reply = (200, {"tiers": TIERS, "budget": MONTH})
    out = magic("tiers")
    gpu = next(line for line in out.splitlines() if line.split()[:1] == ["gpu"])
    assert "$3.50/h" in gpu and "17 h" in gpu  # $60 / $3.50
    assert "Budget: $60.00 left this month" in out
