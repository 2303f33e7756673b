"""jupyter-ds-compute: the embedded default, runnable as is on one machine.

    ./dev.sh hub        # sets everything up, then runs: jupyterhub -f jupyterhub_config.py

- local backend (servers are processes here, limited by cgroups when the
  hub is root), local volumes (a directory per user under ``$DS_COMPUTE_DATA``),
- tiers *Small*, *GPU* and *Many-core* with illustrative prices,
- a shared-password login that works out of the box and is printed at start,
- the proxy started by the hub, listening on 127.0.0.1 only,
- the ``ds-compute`` hub service (switches, admin page, audit log, metrics).

Environment variables (all optional):

=========================== ==================================================
``DS_COMPUTE_DATA``          data dir (db, volumes, logs); default ``./data``
``DS_COMPUTE_BIND_URL``      public URL; default ``http://127.0.0.1:8000``
``DS_COMPUTE_HUB_PORT``      hub's internal port; default 8081
``DS_COMPUTE_PROXY_API_PORT`` proxy API port; default 8001
``DS_COMPUTE_SERVICE_PORT``  ds-compute service port; default: a free one
``DS_COMPUTE_PASSWORD``      password for every (non-admin) user name
``DS_COMPUTE_ADMIN_PASSWORD`` password of the admin users (>= 32 characters)
``DS_COMPUTE_ADMIN_USERS``   comma-separated admin names; default ``admin``
``DS_COMPUTE_GPU_DEVICES``   comma-separated GPU ids, e.g. ``0,1``
``DS_COMPUTE_EXTRA_CONFIG``  a config file loaded last (Slurm/AWS modes, tests)
=========================== ==================================================
"""

import json
import os
import secrets
import sys  # noqa: F401 (in scope for DS_COMPUTE_EXTRA_CONFIG files)

from jupyter_ds_compute.hubconfig import banner, configure

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.abspath(os.environ.get("DS_COMPUTE_DATA") or os.path.join(HERE, "data"))
# 0711: servers running as users' own accounts reach their volumes below it,
# nobody but the hub lists it or reads its files (each made 0600 below)
os.makedirs(DATA, mode=0o711, exist_ok=True)
os.chmod(DATA, 0o711)
BIND_URL = os.environ.get("DS_COMPUTE_BIND_URL", "http://127.0.0.1:8000").rstrip("/") + "/"
IS_ROOT = os.geteuid() == 0

# -- tiers ---------------------------------------------------------------------
TIERS = [
    {
        "display_name": "Small",
        "slug": "small",
        "default": True,
        "description": "Exploring, cleaning data, plotting, writing.",
        "cpu": 1,
        "mem": "2G",
        "hourly_cost": 0.05,
    },
    {
        "display_name": "GPU",
        "slug": "gpu",
        "description": "Training models on a GPU.",
        "cpu": 4,
        "mem": "16G",
        "gpu": 1,
        "hourly_cost": 1.20,
    },
    {
        "display_name": "Many-core",
        "slug": "manycore",
        "description": "Every core of the machine: feature jobs, grid searches.",
        "cpu": "all",
        "mem": "20G",
        "hourly_cost": 0.68,
    },
]

# -- hub, proxy, database --------------------------------------------------------
if os.environ.get("DS_COMPUTE_BIND_URL"):
    c.JupyterHub.bind_url = os.environ["DS_COMPUTE_BIND_URL"]
else:
    # the ip only (port 8000 is JupyterHub's default), not bind_url: then
    # `jupyterhub --port 9000` still works
    c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("DS_COMPUTE_HUB_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ.get('DS_COMPUTE_PROXY_API_PORT', '8001')}"
c.ConfigurableHTTPProxy.pid_file = os.path.join(DATA, "proxy.pid")
# JupyterHub's proxy: ./dev.sh installs it into this checkout's node_modules
# (configure(c) below finds it there, else on $PATH, else stops the hub)
c.JupyterHub.db_url = f"sqlite:///{os.path.join(DATA, 'jupyterhub.sqlite')}"
# the hub's database holds every user, token hash and spawner state: 0600
# (SQLite gives its -wal/-shm files the database file's mode)
os.close(os.open(os.path.join(DATA, "jupyterhub.sqlite"), os.O_WRONLY | os.O_CREAT, 0o600))
os.chmod(os.path.join(DATA, "jupyterhub.sqlite"), 0o600)
c.JupyterHub.cookie_secret_file = os.path.join(DATA, "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = os.path.join(DATA, "jupyterhub.pid")
# servers outlive a hub restart; the spawner finds them again from its state
c.JupyterHub.cleanup_servers = False

# -- login ---------------------------------------------------------------------------
_creds_file = os.path.join(DATA, "credentials.json")
try:
    with open(_creds_file) as f:
        _creds = json.load(f)
except (OSError, ValueError):
    _creds = {"password": secrets.token_urlsafe(9), "admin_password": secrets.token_urlsafe(24)}
    with open(os.open(_creds_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(_creds, f)
PASSWORD = os.environ.get("DS_COMPUTE_PASSWORD") or _creds["password"]
ADMIN_PASSWORD = os.environ.get("DS_COMPUTE_ADMIN_PASSWORD") or _creds["admin_password"]
ADMINS = {a.strip() for a in os.environ.get("DS_COMPUTE_ADMIN_USERS", "admin").split(",") if a.strip()}
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = PASSWORD
c.SharedPasswordAuthenticator.admin_password = ADMIN_PASSWORD
c.Authenticator.admin_users = ADMINS
c.Authenticator.allow_all = True

# -- spawner, backend, volumes ---------------------------------------------------------
c.JupyterHub.spawner_class = "ds-compute"
c.DSComputeSpawner.profile_list = TIERS
c.DSComputeSpawner.backend = "local"
c.DSComputeSpawner.volume_driver = "local"
c.DSComputeSpawner.gpu_devices = [g for g in os.environ.get("DS_COMPUTE_GPU_DEVICES", "").split(",") if g]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60
c.LocalVolume.root = os.path.join(DATA, "volumes")
c.LocalBackend.log_dir = os.path.join(DATA, "logs")
# as root, each user's server runs as a system account of its own, made for it
# and marked as ours: jdc-<name> (never an account that exists for something
# else: with one shared password, "alice" must not become the machine's alice)
c.LocalBackend.create_system_users = IS_ROOT
c.SystemAccounts.mode = "prefixed"

# -- policies ------------------------------------------------------------------------------
# Per tier: allowed_groups, max_servers, idle_downshift_after (see TIERS).
# Budgets and the idle loop: c.DSComputeService.* (README, "Policies"). That
# section configures the ds-compute service (configure(c) below hands it over
# as JSON); the spawner asks the service for budgets at spawn, e.g.
#   c.DSComputeService.budgets = {"users": {"alice": 10.0}, "groups": {"students": 5.0}, "default": None}
#   c.DSComputeService.budget_period = "month"        # "day", "week", "month"
#   c.DSComputeService.budget_warn_fraction = 0.8
#   c.DSComputeService.accounting_interval = 10       # seconds between polls of the hub
#   c.DSComputeService.idle_check_interval = 60       # seconds
#   c.DSComputeService.idle_action = "downshift"      # or "stop"
#   c.DSComputeService.metrics_require_auth = True    # False: public metrics
c.DSComputeService.data_dir = os.path.join(DATA, "service")
if os.environ.get("DS_COMPUTE_SERVICE_PORT"):
    c.DSComputeService.service_url = f"http://127.0.0.1:{os.environ['DS_COMPUTE_SERVICE_PORT']}"

# -- operator's overrides (Slurm or AWS mode, tests) -------------------------------------
# The override file runs with this file's names in scope (c, TIERS, DATA,
# BIND_URL, IS_ROOT, os, sys), so it can change or extend anything set above.
_extra = os.environ.get("DS_COMPUTE_EXTRA_CONFIG")
if _extra:
    with open(_extra) as f:
        exec(compile(f.read(), _extra, "exec"))

# -- the ds-compute wiring: service, roles, scopes, checks ------------------------------
# configure(c) checks the whole config once the hub has loaded all of it (files
# layered after this one, `jupyterhub --port ...`), then prints the login.
configure(
    c,
    banner=banner(PASSWORD, ADMINS, ADMIN_PASSWORD),
    proxy_search=[os.path.join(HERE, "node_modules", ".bin")],
)
