"""Build hook: all metadata lives in setup.cfg.

Convenience only: when the prebuilt JupyterLab assets are missing (a fresh
checkout) and package.json is present, build them with npm *before*
``setup()`` runs, because setup.cfg's ``data_files`` globs are expanded when
the config is parsed (a custom ``build_py`` step would run too late). The
documented way is still ``npm install && npm run build:prod`` and then
``pip install .``.
"""

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent.resolve()

if not (HERE / "jupyter_ds_compute/labextension/package.json").exists() and (HERE / "package.json").exists():
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(
            "jupyter-ds-compute: the JupyterLab assets are not built and npm was not found. "
            "Install Node.js >= 20, or run `npm install && npm run build:prod` first."
        )
    subprocess.check_call([npm, "install", "--no-audit", "--no-fund"], cwd=HERE)
    subprocess.check_call([npm, "run", "build:prod"], cwd=HERE)

setup()
