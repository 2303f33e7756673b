"""AWS mode: each server on its own EC2 instance, one EBS volume (or EFS
home) per user that follows them from tier to tier.

    DS_COMPUTE_EXTRA_CONFIG=configs/aws.py ./dev.sh hub

This file is exec'd at the end of ``jupyterhub_config.py`` with its names in
scope (``c``, ``TIERS``, ``DATA``, ``BIND_URL``, ``IS_ROOT``, ``os``).
Everything below can also be set directly; the environment variables are
only conveniences:

=================================== =============================================
``AWS_REGION``                      region (boto3's usual credentials chain applies:
                                    give the hub an instance role, see README)
``DS_COMPUTE_AWS_AMI``              AMI with jupyterhub-singleuser, jupyter-ds-compute,
                                    python3 + boto3 (required)
``DS_COMPUTE_AWS_GPU_AMI``          AMI of the ``gpu`` tier (default: the same)
``DS_COMPUTE_AWS_SUBNETS``          comma-separated subnet ids (required)
``DS_COMPUTE_AWS_SECURITY_GROUPS``  comma-separated security group ids of server
                                    instances (allow the hub to reach port 8888)
``DS_COMPUTE_AWS_INSTANCE_PROFILE`` instance profile of server instances (SSM
                                    parameter read/delete, KMS decrypt, EFS client)
``DS_COMPUTE_AWS_ZONE``             availability zone of the users' EBS volumes
``DS_COMPUTE_AWS_VOLUME``           ``ebs`` (default) or ``efs``
``DS_COMPUTE_AWS_VOLUME_SIZE``      GiB of a new EBS volume (default 50)
``DS_COMPUTE_AWS_HUB_ID``           ``ds-compute:hub`` tag value (default ``ds-compute``)
``DS_COMPUTE_HUB_CONNECT_IP``       the hub's private IP as instances reach it
=================================== =============================================

Servers must reach the hub: run the hub in the same VPC, set
``DS_COMPUTE_BIND_URL=http://<hub private ip>:8000`` and
``DS_COMPUTE_HUB_CONNECT_IP=<hub private ip>``.
"""


def _csv(name):
    return [x.strip() for x in os.environ.get(name, "").split(",") if x.strip()]  # noqa: F821


_env = os.environ  # noqa: F821

# -- backend and volume ------------------------------------------------------------
c.DSComputeSpawner.backend = "ec2"  # noqa: F821
c.DSComputeSpawner.volume_driver = _env.get("DS_COMPUTE_AWS_VOLUME", "ebs")  # noqa: F821

# shared by EC2Backend, EBSVolume, EFSVolume
c.AWS.region = _env.get("AWS_REGION") or _env.get("AWS_DEFAULT_REGION") or "us-east-1"  # noqa: F821
c.AWS.hub_id = _env.get("DS_COMPUTE_AWS_HUB_ID", "ds-compute")  # noqa: F821
c.AWS.tags = {"Project": "jupyter-ds-compute"}  # noqa: F821
if _env.get("DS_COMPUTE_AWS_CALL_LOG"):  # every AWS call, for the IAM drift test
    __import__("jupyter_ds_compute.aws.iam", fromlist=["record_calls"]).record_calls()

# -- instances ---------------------------------------------------------------------------
c.EC2Backend.instance_types = {
    "small": "t3.medium",
    "gpu": "g5.xlarge",
    "manycore": "c6i.4xlarge",
}  # noqa: F821
c.EC2Backend.ami_id = _env.get("DS_COMPUTE_AWS_AMI", "")  # noqa: F821
if _env.get("DS_COMPUTE_AWS_GPU_AMI"):
    c.EC2Backend.ami_ids = {"gpu": _env["DS_COMPUTE_AWS_GPU_AMI"]}  # noqa: F821
c.EC2Backend.subnet_ids = _csv("DS_COMPUTE_AWS_SUBNETS")  # noqa: F821
c.EC2Backend.security_group_ids = _csv("DS_COMPUTE_AWS_SECURITY_GROUPS")  # noqa: F821
c.EC2Backend.iam_instance_profile = _env.get("DS_COMPUTE_AWS_INSTANCE_PROFILE", "")  # noqa: F821
c.EC2Backend.port = 8888  # noqa: F821
c.EC2Backend.address_source = "private_ip"  # noqa: F821
c.EC2Backend.on_stop = "terminate"  # or "stop" + reuse_stopped = True for faster restarts  # noqa: F821
c.EC2Backend.reuse_stopped = False  # noqa: F821
c.EC2Backend.instance_uid = 1000  # noqa: F821
c.EC2Backend.instance_gid = 1000  # noqa: F821

# -- volumes -----------------------------------------------------------------------------
c.EBSVolume.availability_zone = _env.get("DS_COMPUTE_AWS_ZONE", "")  # noqa: F821
c.EBSVolume.size = int(_env.get("DS_COMPUTE_AWS_VOLUME_SIZE", "50"))  # noqa: F821
c.EBSVolume.volume_type = "gp3"  # noqa: F821
c.EBSVolume.mount_path = "/home/jovyan"  # noqa: F821
c.EBSVolume.snapshot_interval = 24 * 3600  # a snapshot at the first stop of each day  # noqa: F821
c.EBSVolume.snapshot_before_delete = True  # noqa: F821
# a tier with capacity only in another zone of the subnets: the volume follows
# (snapshot -> new volume there; the original deleted once the server answers)
c.EBSVolume.move_across_zones = True  # noqa: F821
c.EFSVolume.subnet_ids = c.EC2Backend.subnet_ids  # noqa: F821
c.EFSVolume.mount_path = "/home/jovyan"  # noqa: F821

# -- the server on the instance --------------------------------------------------------------
# the hub's own PATH/venv mean nothing on another machine: the image's are used
c.DSComputeSpawner.env_keep = ["LANG", "LC_ALL"]  # noqa: F821
c.DSComputeSpawner.cmd = ["jupyterhub-singleuser"]  # noqa: F821
# a cold EC2 launch + boot takes ~30 s to minutes (GPU images are large)
c.Spawner.start_timeout = 900  # noqa: F821
c.Spawner.http_timeout = 300  # noqa: F821

# -- the hub, as instances reach it ---------------------------------------------------------------
if _env.get("DS_COMPUTE_HUB_CONNECT_IP"):
    c.JupyterHub.hub_ip = "0.0.0.0"  # noqa: F821
    c.JupyterHub.hub_connect_ip = _env["DS_COMPUTE_HUB_CONNECT_IP"]  # noqa: F821
