"""Helpers for ``jupyterhub_config.py``: config checks at hub start, the
service entry, and the login banner."""

from __future__ import annotations

import json
import sys

from .tiers import TierConfigError, normalize_profile_list


def check_config(c):
    """Stop the hub at start if ``profile_list`` is broken.

    JupyterHub creates spawners only when a user starts a server, so a bad
    tier would otherwise surface at the first spawn.  Call this at the end
    of ``jupyterhub_config.py``; a callable ``profile_list`` is checked at
    each spawn instead.
    """
    profile_list = c.DSComputeSpawner.get("profile_list")
    if profile_list is None or callable(profile_list):
        return
    try:
        normalize_profile_list(profile_list)
    except TierConfigError as e:
        sys.exit(f"jupyter-ds-compute: bad c.DSComputeSpawner.profile_list: {e}")


def service_entry(*, port, data_dir, profile_list, public_url, name="ds-compute", environment=None):
    """The ``c.JupyterHub.services`` entry of the ds-compute service."""
    env = {
        "DS_COMPUTE_SERVICE_DATA": data_dir,
        "DS_COMPUTE_PUBLIC_URL": public_url,
    }
    if not callable(profile_list):
        env["DS_COMPUTE_PROFILE_LIST"] = json.dumps(profile_list)
    env.update(environment or {})
    return {
        "name": name,
        "url": f"http://127.0.0.1:{port}",
        "command": [sys.executable, "-m", "jupyter_ds_compute.service"],
        "environment": env,
        "oauth_no_confirm": True,
        "display": True,
    }


def print_banner(url, password, admins, admin_password):
    line = "=" * 72
    print(
        f"\n{line}\n jupyter-ds-compute is starting at {url}\n"
        f" Log in with ANY user name and the password: {password}\n"
        f" Admin users ({', '.join(sorted(admins))}) log in with: {admin_password}\n"
        f"{line}\n",
        file=sys.stderr,
        flush=True,
    )
