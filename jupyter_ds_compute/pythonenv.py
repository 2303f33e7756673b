"""Checks of the Python environment servers run in, as ``pip install
jupyter-ds-compute`` leaves it (``./dev.sh`` fixes both at set-up).

- In a venv made without ``--system-site-packages``, Python hides user
  site-packages: ``pip install --user`` fails, and packages users installed
  on their volume (``PYTHONUSERBASE``) would not follow them across tiers.
- ``rfc3987-syntax`` (pulled in by ``jsonschema[format-nongpl]``) is
  imported by jupyter_events' event validation at every server start and
  costs about 1.2 s there (measured); servers do not need it.

Each check returns a message naming the fix, or None. The hub logs them at
start, each server logs them at its start.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def user_site_problem(prefix: str | None = None, base_prefix: str | None = None) -> str | None:
    prefix = prefix or sys.prefix
    base_prefix = base_prefix or sys.base_prefix
    if prefix == base_prefix:
        return None  # not a venv: user site-packages follow the interpreter's rules
    cfg = os.path.join(prefix, "pyvenv.cfg")
    try:
        with open(cfg) as f:
            lines = [line.split("=", 1) for line in f if "=" in line]
    except OSError:
        return None
    settings = {k.strip().lower(): v.strip().lower() for k, v in lines}
    if settings.get("include-system-site-packages", "false") == "true":
        return None
    return (
        f"the venv {prefix} hides user site-packages, so `pip install --user` fails in servers and "
        "packages installed on the volume do not follow users across tiers: set "
        f"`include-system-site-packages = true` in {cfg} (or make the venv with --system-site-packages)"
    )


def slow_start_problem() -> str | None:
    if importlib.util.find_spec("rfc3987_syntax") is None:
        return None
    return (
        f"rfc3987-syntax is installed in {sys.prefix}: jupyter_events imports it at every server start "
        "(about 1.2 s); servers do not need it: `pip uninstall rfc3987-syntax`"
    )


def problems() -> list[str]:
    return [p for p in (user_site_problem(), slow_start_problem()) if p]


__all__ = ["problems", "slow_start_problem", "user_site_problem"]
