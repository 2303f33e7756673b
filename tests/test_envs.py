"""Environments on the volume become kernels (issue 5).

Pure discovery on directory trees, then real venvs (``python -m venv`` +
``pip install ipykernel`` from a wheelhouse built once per session) served by
a real jupyter server with the ds_compute extension: listed as kernels,
started, executing code that imports a package only that env has, with
``%ds_compute`` autoloaded although the env does not have this package.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import venv

import pytest
from jupyter_server.auth.identity import IdentityProvider, User

from jupyter_ds_compute.serverext.envs import (
    BROKEN,
    LAST_USED_MARKER,
    NO_IPYKERNEL,
    OK,
    UNCHECKED,
    EnvScanner,
    default_roots,
    scan_roots,
)
from jupyter_ds_compute.serverext.kernelspecs import DSComputeKernelSpecManager

PYVER = f"python{sys.version_info[0]}.{sys.version_info[1]}"


# -- directory-level fakes (no process runs in the listing path) -------------------------
def fake_env(path, ipykernel=True, python=sys.executable, kind="venv"):
    """An env's files as discovery sees them (enough for the listing path)."""
    (path / "bin").mkdir(parents=True)
    sp = path / "lib" / PYVER / "site-packages"
    sp.mkdir(parents=True)
    if kind == "venv":
        (path / "pyvenv.cfg").write_text(f"home = {os.path.dirname(sys.executable)}\n")
    else:
        (path / "conda-meta").mkdir()
    if python:
        os.symlink(python, path / "bin" / "python")
    if ipykernel:
        (sp / "ipykernel").mkdir()
    return path


def test_default_roots():
    env = {
        "DS_COMPUTE_VOLUME_PATH": "/vol/a",
        "CONDA_ENVS_PATH": "/vol/a/.conda/envs:/vol/a/envs:/opt/shared",
    }
    assert default_roots(env) == ["/vol/a/envs", "/vol/a/.conda/envs", "/opt/shared"]
    assert default_roots({}) == []


def test_scan_roots(tmp_path):
    vol = tmp_path / "vol"
    envs, conda = vol / "envs", vol / ".conda" / "envs"
    fake_env(envs / "torch")
    fake_env(envs / "plain", ipykernel=False)
    fake_env(envs / "gone", python=str(tmp_path / "no-such-python"))  # dangling symlink
    fake_env(envs / "nopython", python=None)
    (envs / "notes").mkdir()  # not an env
    (envs / ".hidden").mkdir()
    fake_env(conda / "torch", kind="conda")  # same name under another root
    found = {e.name: e for e in scan_roots([str(envs), str(conda), str(tmp_path / "missing")], str(vol))}
    assert sorted(found) == [".conda/envs/torch", "envs/gone", "envs/nopython", "envs/plain", "envs/torch"]
    torch = found["envs/torch"]
    assert (torch.kind, torch.status, torch.has_ipykernel, torch.kernel_name) == (
        "venv",
        UNCHECKED,
        True,
        "ds-env-torch",
    )
    assert torch.display_name == "Python (envs/torch)" and torch.is_kernel
    assert found[".conda/envs/torch"].kind == "conda"
    assert found[".conda/envs/torch"].kernel_name == "ds-env-conda-envs-torch"
    assert (
        found["envs/plain"].status == NO_IPYKERNEL and "pip install ipykernel" in found["envs/plain"].reason
    )
    gone = found["envs/gone"]
    assert gone.status == BROKEN and "does not exist on this machine" in gone.reason and not gone.is_kernel
    assert (
        found["envs/nopython"].status == BROKEN and "no Python interpreter" in found["envs/nopython"].reason
    )


def test_scanner_cache_and_invalidation(tmp_path):
    root = tmp_path / "envs"
    root.mkdir()
    fake_env(root / "a")
    scanner = EnvScanner([str(root)], str(tmp_path))
    assert [e.name for e in scanner.envs()] == ["envs/a"]
    assert scanner.envs() and scanner.scans == 1  # cached: nothing changed
    time.sleep(0.01)
    fake_env(root / "b", ipykernel=False)  # a new env appears
    assert [(e.name, e.status) for e in scanner.envs()] == [("envs/a", UNCHECKED), ("envs/b", NO_IPYKERNEL)]
    assert scanner.scans == 2
    time.sleep(0.01)
    (root / "b" / "lib" / PYVER / "site-packages" / "ipykernel").mkdir()  # pip install ipykernel
    assert [e.status for e in scanner.envs()] == [UNCHECKED, UNCHECKED] and scanner.scans == 3
    time.sleep(0.01)
    (root / "a" / "bin" / "python").unlink()  # interpreter deleted
    assert [e.status for e in scanner.envs()] == [BROKEN, UNCHECKED] and scanner.scans == 4
    assert scanner.envs() and scanner.scans == 4


async def _check_all(scanner):
    await scanner.check_pending()


def test_interpreter_checks(tmp_path):
    root = tmp_path / "envs"
    real = fake_env(root / "real", python=None)
    venv.create(str(real), with_pip=False, clear=True)  # real interpreter, fake (empty) ipykernel
    (real / "lib" / PYVER / "site-packages" / "ipykernel").mkdir(exist_ok=True)
    alien = fake_env(root / "alien", python=None)
    (alien / "bin" / "python").write_bytes(b"\x7fELF\x02\x01\x01" + os.urandom(64))  # not runnable here
    (alien / "bin" / "python").chmod(0o755)
    scanner = EnvScanner([str(root)], str(tmp_path))
    assert {e.name: e.status for e in scanner.envs()} == {"envs/alien": UNCHECKED, "envs/real": UNCHECKED}
    asyncio.run(_check_all(scanner))
    got = {e.name: e for e in scanner.envs()}
    assert got["envs/alien"].status == BROKEN and "cannot run on this machine" in got["envs/alien"].reason
    # the empty ipykernel dir imports as a namespace package without __version__
    assert got["envs/real"].status == BROKEN and "cannot import ipykernel" in got["envs/real"].reason
    assert scanner.pending() == []  # checked once, cached


def test_kernelspec_manager(tmp_path, monkeypatch):
    vol = tmp_path / "vol"
    fake_env(vol / "envs" / "torch")
    fake_env(vol / "envs" / "broken", python=str(tmp_path / "nope"))
    fake_env(vol / "envs" / "handmade")
    kdir = tmp_path / "data" / "kernels" / "handmade"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    str(vol / "envs" / "handmade" / "bin" / "python"),
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "mine",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("DS_COMPUTE_VOLUME_PATH", str(vol))
    monkeypatch.delenv("CONDA_ENVS_PATH", raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "data"))
    ksm = DSComputeKernelSpecManager(kernel_dirs=[str(tmp_path / "data" / "kernels")])
    specs = ksm.get_all_specs()
    assert "ds-env-torch" in specs and "ds-env-broken" not in specs
    assert "ds-env-handmade" not in specs and "handmade" in specs  # the user's own spec wins, no duplicate
    spec = ksm.get_kernel_spec("ds-env-torch")
    assert spec.display_name == "Python (envs/torch)"
    python = str(vol / "envs" / "torch" / "bin" / "python")
    assert spec.argv[:3] == [python, "-m", "ipykernel_launcher"]
    assert spec.argv[-1] == "--IPKernelApp.extra_extensions=ds_compute_magics"
    assert spec.env["PATH"].startswith(str(vol / "envs" / "torch" / "bin") + os.pathsep)
    assert spec.env["VIRTUAL_ENV"] == str(vol / "envs" / "torch")
    shim = spec.env["PYTHONPATH"].split(os.pathsep)[0]
    assert sorted(os.listdir(shim)) == [
        "ds_compute_formatting.py",
        "ds_compute_magics.py",
        "ds_compute_state.py",
    ]
    # the native python kernel gets the magic too; the user's extensions config is untouched
    native = ksm.get_kernel_spec("python3")
    assert native.argv[-1] == "--IPKernelApp.extra_extensions=ds_compute_magics"
    assert specs["handmade"]["spec"]["argv"][-1] == "--IPKernelApp.extra_extensions=ds_compute_magics"
    from jupyter_client.kernelspec import NoSuchKernel

    with pytest.raises(NoSuchKernel):
        ksm.get_kernel_spec("ds-env-broken")


def test_kernel_list_survives_scan_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DS_COMPUTE_VOLUME_PATH", str(tmp_path))
    ksm = DSComputeKernelSpecManager()

    def boom():
        raise PermissionError("volume went away")

    monkeypatch.setattr(ksm.scanner, "kernel_envs", boom)
    assert "python3" in ksm.get_all_specs()


# -- real environments, real server ------------------------------------------------------------
@pytest.fixture(scope="session")
def ipykernel_wheels(request, tmp_path_factory):
    """ipykernel and its dependencies as wheels (downloaded once; PyPI is reachable)."""
    cache = getattr(request.config, "cache", None)
    wh = (
        cache.mkdir("ds-compute-ipykernel-wheels") if cache is not None else tmp_path_factory.mktemp("wheels")
    )
    if not any(p.name.startswith("ipykernel-") for p in wh.iterdir()):
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "ipykernel", "-w", str(wh)], check=True, timeout=600
        )
    return wh


@pytest.fixture(scope="session")
def volume(tmp_path_factory, ipykernel_wheels):
    """A user's volume with envs/torch: a real venv with ipykernel and a package
    `onlyhere` that no other Python on this machine has."""
    vol = tmp_path_factory.mktemp("volume")
    env = vol / "envs" / "torch"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    subprocess.run(
        [
            str(env / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-compile",
            "--find-links",
            str(ipykernel_wheels),
            "ipykernel",
        ],
        check=True,
        timeout=600,
    )
    site = next((env / "lib").glob("python3*/site-packages"))
    (site / "onlyhere").mkdir()
    (site / "onlyhere" / "__init__.py").write_text("WHERE = 'only in envs/torch'\n")
    return vol


class TokenUsers(IdentityProvider):
    """Test double of JupyterHub's identity provider: each token is one user."""

    users = {"alice-token": "alice", "server-token-of-alice": "alice"}

    async def get_user_token(self, handler):
        name = self.users.get(self.get_token(handler) or "")
        return User(username=name) if name else None


TIERS = {
    "small": {
        "slug": "small",
        "display_name": "Small",
        "description": "",
        "cpu": 1.0,
        "mem": 2**31,
        "gpu": 0,
        "hourly_cost": 0.5,
    },
    "gpu": {
        "slug": "gpu",
        "display_name": "GPU",
        "description": "",
        "cpu": 8.0,
        "mem": 2**35,
        "gpu": 1,
        "hourly_cost": 3.5,
    },
}


@pytest.fixture(params=["small", "gpu"])
def tier(request):
    return request.param


@pytest.fixture
def jp_root_dir(volume):
    return volume  # the notebook dir is the volume, as the spawner sets it


@pytest.fixture
def jp_server_config(jp_environ, monkeypatch, volume, tier, jp_http_port, jp_base_url):
    env = {
        "JUPYTERHUB_USER": "alice",
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_API_TOKEN": "server-token-of-alice",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{jp_http_port}{jp_base_url}",
        "DS_COMPUTE_TIER": tier,
        "DS_COMPUTE_TIER_INFO": json.dumps(TIERS[tier]),
        "DS_COMPUTE_TIERS": json.dumps(list(TIERS.values())),
        "DS_COMPUTE_STARTED_AT": str(time.time()),
        "DS_COMPUTE_VOLUME_ID": "alice",
        "DS_COMPUTE_VOLUME_PATH": str(volume),
        "DS_COMPUTE_VOLUME_DRIVER": "local",
        "DS_COMPUTE_BACKEND": "local",
        "CONDA_ENVS_PATH": f"{volume}/.conda/envs{os.pathsep}{volume}/envs",
        "PYTHONUSERBASE": f"{volume}/.local",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("DS_COMPUTE_SERVICE_URL", raising=False)
    # kernels inherit the server's env: no PYTHONPATH (jp_environ sets it to our sys.path), so an env
    # kernel really has no jupyter_ds_compute (this process already imported it)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ds_compute": True},
            "identity_provider_class": TokenUsers,
            "allow_unauthenticated_access": False,
        },
        "IdentityProvider": {"token": "alice-token"},
    }


@pytest.fixture
def run(jp_asyncio_loop):
    """Run a coroutine on pytest-jupyter's loop, where the server runs (see test_serverext)."""
    return jp_asyncio_loop.run_until_complete


@pytest.fixture
def server(run, jp_serverapp, http_server):
    """The server, listening, with its extensions started as ``jupyter server``
    does after the loop starts (pytest-jupyter does not call that hook)."""
    run(jp_serverapp.extension_manager.start_all_extensions())
    return jp_serverapp


async def get(jp_fetch, *parts, **params):
    resp = await jp_fetch(*parts, params=params)
    return json.loads(resp.body)


async def execute(jp_serverapp, kernel_name, code, timeout=60):
    """Start a kernel through the server's kernel manager, run ``code``, return stdout+stderr."""
    km = jp_serverapp.kernel_manager
    kid = await km.start_kernel(kernel_name=kernel_name, path="")  # cwd: the notebook dir, as from Lab
    client = km.get_kernel(kid).client()
    client.start_channels()
    out = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("\n".join(msg["content"]["traceback"]))

    try:
        await client.wait_for_ready(timeout=timeout)
        reply = await client.execute_interactive(code, output_hook=hook, timeout=timeout)
    finally:
        client.stop_channels()
        await km.shutdown_kernel(kid, now=True)
    return reply["content"]["status"], "".join(out)


def test_env_kernel_on_every_tier(run, jp_fetch, server, volume, tier):
    """The env made once on the volume is a kernel on whichever tier the server
    starts, imports what only it has, and has %ds_compute (it lacks this package)."""
    specs = run(get(jp_fetch, "api", "kernelspecs"))["kernelspecs"]
    assert "ds-env-torch" in specs
    assert specs["ds-env-torch"]["spec"]["display_name"] == "Python (envs/torch)"
    code = (
        "import sys, onlyhere; print(onlyhere.WHERE); print(sys.prefix)\n"
        "import importlib.util; print('pkg:', importlib.util.find_spec('jupyter_ds_compute'))\n"
        "get_ipython().run_line_magic('ds_compute', 'status')\n"
    )
    status, out = run(execute(server, "ds-env-torch", code))
    assert status == "ok", out
    assert "only in envs/torch" in out
    assert str(volume / "envs" / "torch") in out
    assert "pkg: None" in out, out  # the env does not have jupyter_ds_compute...
    assert f"Tier:      {TIERS[tier]['display_name']} ({tier})" in out  # ...yet the magic works
    assert os.path.exists(volume / "envs" / "torch" / LAST_USED_MARKER)  # "last used" recorded
    envs = run(get(jp_fetch, "ds-compute", "api", "envs", wait="20"))
    torch = next(e for e in envs["envs"] if e["name"] == "envs/torch")
    assert torch["status"] == OK and torch["is_kernel"] and torch["kernel_name"] == "ds-env-torch"
    assert torch["python_version"].startswith("3.") and torch["ipykernel_version"]
    assert torch["size_bytes"] > 1_000_000
    assert time.time() - torch["last_used"] < 120


@pytest.mark.parametrize("tier", ["small"])
def test_new_and_broken_envs_while_running(run, jp_fetch, server, volume, tier):
    envs_dir = volume / "envs"
    before = run(get(jp_fetch, "api", "kernelspecs"))["kernelspecs"]
    assert "ds-env-fresh" not in before
    try:
        # a new env appears while the server runs (no restart, no ipykernel install)
        fresh = envs_dir / "fresh"
        shutil.copytree(envs_dir / "torch", fresh, symlinks=True)  # like `conda create --clone`
        # ipykernel without its dependencies: runs, but cannot start a kernel
        half = envs_dir / "half"
        venv.create(str(half), with_pip=False)
        site = next((half / "lib").glob("python3*/site-packages"))
        os.symlink(
            next((envs_dir / "torch" / "lib").glob("python3*/site-packages/ipykernel")), site / "ipykernel"
        )
        # a broken one: its interpreter deleted
        dead = envs_dir / "dead"
        venv.create(str(dead), with_pip=False)
        (next((dead / "lib").glob("python3*/site-packages")) / "ipykernel").mkdir()
        for p in (dead / "bin").glob("python*"):
            p.unlink()
        # one whose interpreter cannot run on this machine (another architecture)
        alien = envs_dir / "alien"
        venv.create(str(alien), with_pip=False)
        (next((alien / "lib").glob("python3*/site-packages")) / "ipykernel").mkdir()
        (alien / "bin" / "python").unlink()
        (alien / "bin" / "python").write_bytes(b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56)
        (alien / "bin" / "python").chmod(0o755)

        specs = run(get(jp_fetch, "api", "kernelspecs"))["kernelspecs"]
        assert "ds-env-fresh" in specs and "ds-env-torch" in specs
        assert "ds-env-dead" not in specs
        envs = {e["name"]: e for e in run(get(jp_fetch, "ds-compute", "api", "envs", wait="20"))["envs"]}
        assert (
            envs["envs/dead"]["status"] == BROKEN and "no Python interpreter" in envs["envs/dead"]["reason"]
        )
        assert (
            envs["envs/alien"]["status"] == BROKEN
            and "cannot run on this machine" in envs["envs/alien"]["reason"]
        )
        assert envs["envs/half"]["status"] == BROKEN
        assert "cannot import ipykernel: ModuleNotFoundError: No module named" in envs["envs/half"]["reason"]
        assert envs["envs/fresh"]["status"] == OK
        # once checked, the alien env is no longer offered; the list still works
        specs = run(get(jp_fetch, "api", "kernelspecs"))["kernelspecs"]
        assert "ds-env-alien" not in specs and "ds-env-half" not in specs
        assert "ds-env-fresh" in specs and "python3" in specs
        status, out = run(execute(server, "ds-env-fresh", "import sys; print(sys.prefix)\n%ds_compute envs"))
        assert status == "ok", out
        assert str(fresh) in out
        assert "envs/dead" in out and "broken" in out and "no Python interpreter" in out
    finally:
        for name in ("fresh", "half", "dead", "alien"):
            shutil.rmtree(envs_dir / name, ignore_errors=True)
