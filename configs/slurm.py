"""Slurm mode: each server is a batch job on the tier's partition; the
user's volume is a directory on the cluster's shared file system.

    DS_COMPUTE_EXTRA_CONFIG=configs/slurm.py ./dev.sh hub

This file is exec'd at the end of ``jupyterhub_config.py`` with its names in
scope (``c``, ``TIERS``, ``DATA``, ``BIND_URL``, ``IS_ROOT``, ``os``).
Everything below can also be set directly; the environment variables are
only conveniences:

================================== ==============================================
``DS_COMPUTE_SLURM_SHARED``         a directory every node sees at the same path
                                    (volumes and job spool go under it);
                                    default ``$DS_COMPUTE_DATA`` (one-node clusters)
``DS_COMPUTE_SLURM_ACCOUNT``        ``--account`` of every job
``DS_COMPUTE_SLURM_CREATE_USERS``   ``1``: create missing system users on the hub's
                                    machine (one-node test cluster; default when root)
``DS_COMPUTE_HUB_CONNECT_IP``       the hub's address as the nodes reach it
================================== ==============================================

The hub submits as each user (it must run as root, on a machine that is a
Slurm submit host with the same accounts as the nodes), polls every job with
one ``squeue`` per interval, and reaches each server on its node.  A job that
Slurm ends (time limit, preemption, node failure, ``scancel``) shows up as a
stopped server, with the reason in the hub log.
"""

_env = os.environ  # noqa: F821
_shared = _env.get("DS_COMPUTE_SLURM_SHARED") or DATA  # noqa: F821

# -- backend and volume --------------------------------------------------------------
c.DSComputeSpawner.backend = "slurm"  # noqa: F821
c.DSComputeSpawner.volume_driver = "local"  # noqa: F821
c.LocalVolume.root = os.path.join(_shared, "volumes")  # noqa: F821
c.LocalVolume.mode = "directory"  # noqa: F821
c.SlurmBackend.spool_dir = os.path.join(_shared, "slurm")  # noqa: F821
c.SlurmBackend.create_system_users = _env.get("DS_COMPUTE_SLURM_CREATE_USERS", "1" if IS_ROOT else "0") == "1"  # noqa: F821
c.SlurmBackend.account = _env.get("DS_COMPUTE_SLURM_ACCOUNT", "")  # noqa: F821
# one squeue for all servers every ~15 s (+/- 20 %), whatever their number
c.SlurmBackend.squeue_interval = 15.0  # noqa: F821
c.SlurmBackend.squeue_jitter = 0.2  # noqa: F821

# -- tiers -> partitions -------------------------------------------------------------------
# What each tier asks Slurm for, besides its cpu/mem/gpu (--cpus-per-task,
# --mem, --gres=gpu:N). Keys: partition, time, account, qos, reservation,
# constraint, gres, sbatch_lines. Only this config reaches the job script.
SLURM_TIERS = {
    "small": {"partition": "small", "time": "8:00:00"},
    "gpu": {"partition": "gpu", "time": "4:00:00"},
    "manycore": {"partition": "manycore", "time": "8:00:00"},
}
for _tier in c.DSComputeSpawner.profile_list:  # noqa: F821
    _slurm = SLURM_TIERS.get(_tier.get("slug"))
    if _slurm:
        _tier.setdefault("extra", {})["slurm"] = dict(_slurm)
# tiers without their own partition go to the cluster's default partition
c.SlurmBackend.partition = ""  # noqa: F821

# -- waiting for the queue ------------------------------------------------------------------
# a job may pend for a while; the progress page shows Slurm's reason meanwhile
c.Spawner.start_timeout = 600  # noqa: F821
c.Spawner.http_timeout = 120  # noqa: F821
# the hub asks each server's poll() this often; all polls share one squeue
c.Spawner.poll_interval = 30  # noqa: F821

# -- the nodes must reach the hub's API ---------------------------------------------------
if _env.get("DS_COMPUTE_HUB_CONNECT_IP"):
    c.JupyterHub.hub_ip = "0.0.0.0"  # noqa: F821
    c.JupyterHub.hub_connect_ip = _env["DS_COMPUTE_HUB_CONNECT_IP"]  # noqa: F821
