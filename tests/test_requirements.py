"""The version floors in setup.cfg match what the code needs.

Each floor is derived from something in the tree: the hub API calls and
config the code makes (JupyterHub), what the prebuilt Lab bundle asks of
the JupyterLab it loads into, and what that JupyterLab itself requires
(jupyter_server). A use that disappears from the code fails here too, so
the table cannot go stale silently.
"""

import configparser
import glob
import re
from importlib.metadata import requires, version

import pytest
from hubtest import REPO
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

#: JupyterHub features the code relies on: (file, text that uses it, first version, what)
JUPYTERHUB_FEATURES = [
    ("jupyter_ds_compute/service/hubapi.py", '"PATCH"', "6.0", "PATCH /users/{name}/server (user_options)"),
    ("jupyter_ds_compute/service/hubapi.py", "/server\"", "6.0", "GET /users/{name}/server"),
    ("jupyter_ds_compute/hubconfig.py", "extra_user_scopes", "6.0", "c.JupyterHub.extra_user_scopes"),
    ("jupyterhub_config.py", '"shared-password"', "5.0", "the shared-password authenticator"),
    ("jupyter_ds_compute/hubconfig.py", "server_token_scopes", "4.0", "c.Spawner.server_token_scopes"),
]


def floors():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    out = {}
    for line in cfg["options"]["install_requires"].split():
        req = Requirement(line)
        lower = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        out[req.name.lower().replace("_", "-")] = max(lower) if lower else None
    return out


def test_every_framework_has_a_floor():
    f = floors()
    for name in ("jupyterhub", "jupyterlab", "jupyter-server"):
        assert f.get(name) is not None, f"setup.cfg: {name} needs a version floor"


@pytest.mark.parametrize("path, text, first, what", JUPYTERHUB_FEATURES)
def test_jupyterhub_floor_covers_what_the_code_uses(path, text, first, what):
    assert text in (REPO / path).read_text(), f"{path} no longer uses {what}: update JUPYTERHUB_FEATURES"
    assert floors()["jupyterhub"] >= Version(first), f"{what} needs jupyterhub>={first}"


def test_jupyterlab_floor_is_what_the_prebuilt_bundle_asks_for():
    entries = glob.glob(str(REPO / "jupyter_ds_compute/labextension/static/remoteEntry.*.js"))
    assert entries, "the Lab extension is not built (npm run build:prod)"
    text = open(entries[0]).read()
    m = re.search(r'shareKey:"@jupyterlab/application"[^}]*?requiredVersion:"\^(\d+)\.(\d+)\.\d+', text)
    assert m, "no requiredVersion for @jupyterlab/application in the bundle"
    asked = Version(f"{m.group(1)}.{m.group(2)}")
    floor = floors()["jupyterlab"]
    assert floor >= asked, f"the bundle asks for @jupyterlab/application ^{asked}: jupyterlab>={asked}"
    assert floor.major == asked.major


def test_jupyter_server_floor_is_at_least_what_that_jupyterlab_requires():
    lab = Version(version("jupyterlab"))
    floor = floors()["jupyterlab"]
    if (lab.major, lab.minor) != (floor.major, floor.minor):
        pytest.skip(
            f"installed jupyterlab {lab} is not the floor's minor release {floor}: cannot read its needs"
        )
    needed = [
        Requirement(r)
        for r in requires("jupyterlab")
        if r.lower().replace("_", "-").startswith("jupyter-server")
    ]
    lower = [Version(s.version) for s in SpecifierSet(str(needed[0].specifier)) if s.operator == ">="]
    assert floors()["jupyter-server"] >= max(lower), f"jupyterlab {lab} requires {needed[0]}"


def test_installed_versions_meet_the_floors():
    for name, floor in floors().items():
        if floor is not None:
            assert Version(version(name)) >= floor, f"{name} {version(name)} is below the floor {floor}"
