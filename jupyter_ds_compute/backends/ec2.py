"""Backend ``ec2``: one EC2 instance per running server (boto3).

Start (``prepare`` → volume attach → ``start``):

1. ``prepare(tier)``: pick the tier's instance type and AMI, a subnet in the
   volume's availability zone (an EBS volume is bound to its AZ; with EFS
   any configured subnet; when the volume's zone has no capacity and the
   volume can move, e.g. EBS with ``c.EBSVolume.move_across_zones``, the
   other zones' subnets, and the spawner moves the volume there before it
   attaches), and launch with the bootstrap user-data
   (``ec2_userdata.sh``, no secrets in it) — or restart a stopped instance
   of this user and tier (:attr:`EC2Backend.reuse_stopped`). Everything is
   tagged (hub, user, server, tier, launch token, operator's tags). Wait for
   ``running`` with backoff; learn the server's address
   (:attr:`EC2Backend.address_source`).
2. The volume driver attaches the volume (its precondition checks).
3. ``start``: write the launch spec (command, environment with the hub API
   token, volume mount) to an SSM SecureString parameter named after the
   instance. The bootstrap reads it, deletes it, mounts the volume (EBS:
   device found by volume id, formatted only if empty; EFS: access point),
   and runs the server as :attr:`EC2Backend.instance_uid`.

Make before break (a switch, :meth:`EC2Backend.prepare_ahead`): the target
instance is launched while the old one serves — in the volume's zone (EBS;
another zone if that one has no capacity: the volume moves at the
cut-over), in any allowed subnet (EFS) — and is ready once it runs, has its address and
its bootstrap reports ``<prefix><instance-id>.waiting``. At the cut-over the
old server stops (the EBS volume is detached), and ``prepare`` of that start
launches nothing: it checks the instance still runs in the volume's zone
and ends this server's other instances; the volume attaches; ``start``
writes the launch spec. An instance never taken is terminated by
``stop(now=True)``; one a restarted hub forgot is a leftover of the next
start.

Stop (``stop`` → volume detach → ``release``): terminate (default) or stop
the instance and wait for it (the OS shutdown ends the server and unmounts
the volume), the volume driver detaches and waits ``available``; a stopped
instance is kept for reuse.

Failures real AWS gives: ``InsufficientInstanceCapacity`` (retried with
jitter across the allowed subnets, then a clear error), throttling
(``RequestLimitExceeded``: botocore's adaptive retries, see :mod:`.aws`),
launches that die before ``running``. Any failure
after the launch request tears the instance down again through the
spawner's cleanup path (stop/detach/release), and a launch whose answer got
lost is found by its launch-token tag and terminated: nothing leaks.
Once the new instance runs (before the volume is attached), instances of
this server that an earlier start left running unseen (a hub killed
mid-launch) are ended (:meth:`EC2Backend._end_leftovers`).

Calls: every wait and ``poll()`` reads the hub-wide
:class:`~.aws.InstancePoller` answer (one ``DescribeInstances`` per interval
for all servers); subnet zones are cached; a final state in a
Terminate/StopInstances answer needs no wait.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import time
import uuid
import zlib

from traitlets import Bool, CaselessStrEnum, Dict, Float, Integer, List, Unicode

from . import aws
from .base import Backend, BackendError, HostInfo

USERDATA_TEMPLATE = os.path.join(os.path.dirname(__file__), "ec2_userdata.sh")
ICE_CODES = frozenset({"InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacity"})
SPEC_STANDARD_LIMIT = 4096

#: (region, endpoint, subnet id) -> availability zone: a subnet never changes zone
_subnet_zones: dict = {}


def render_user_data(*, region, spec_prefix, spec_timeout, python, extra=""):
    """The bootstrap script with every value shell-quoted."""
    with open(USERDATA_TEMPLATE) as f:
        text = f.read()
    values = {
        "REGION": shlex.quote(region),
        "SPEC_PREFIX": shlex.quote(spec_prefix),
        "SPEC_TIMEOUT": shlex.quote(str(int(spec_timeout))),
        "PYTHON": shlex.quote(python),
        # operator config (not user input), inserted verbatim
        "EXTRA": extra or ":",
    }
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    return text


#: cloud-init runs user-data scripts on the first boot only; a reused
#: (stopped, then started) instance must run the bootstrap at every boot
_PER_BOOT = "#cloud-config\ncloud_final_modules:\n- [scripts-user, always]\n"


def user_data_mime(script):
    """cloud-init multipart: run ``script`` at every boot."""
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    msg = MIMEMultipart()
    msg.attach(MIMEText(_PER_BOOT, "cloud-config"))
    msg.attach(MIMEText(script, "x-shellscript"))
    return msg.as_string()


def script_from_user_data(user_data):
    """The shell script inside our user-data (what cloud-init would run)."""
    if user_data.startswith("#!"):
        return user_data
    import email

    for part in email.message_from_string(user_data).walk():
        if part.get_content_type() == "text/x-shellscript":
            return part.get_payload(decode=True).decode()
    raise ValueError("no shell script in user-data")


def encode_spec(spec: dict) -> str:
    raw = json.dumps(spec, separators=(",", ":"))
    if len(raw) <= SPEC_STANDARD_LIMIT:
        return raw
    return "z:" + base64.b64encode(zlib.compress(raw.encode(), 9)).decode()


class EC2Backend(Backend, aws.AWS):
    """Run each server on its own EC2 instance."""

    name = "ec2"

    instance_types = Dict(
        {"small": "t3.medium", "gpu": "g5.xlarge", "manycore": "c6i.4xlarge"},
        help="""
        Instance type per tier slug. A tier's ``extra: {"instance_type": ...}``
        wins over this; tiers in neither use :attr:`default_instance_type`.

        Example::

            c.EC2Backend.instance_types = {"small": "t3.medium", "gpu": "g5.xlarge",
                                           "manycore": "c6i.4xlarge"}

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    default_instance_type = Unicode(
        "t3.medium", help="""Instance type of tiers not in :attr:`instance_types`."""
    ).tag(config=True)

    ami_id = Unicode(
        "",
        help="""
        Machine image with jupyterhub-singleuser, jupyter-ds-compute, python3 +
        boto3 (see ``ec2_userdata.sh`` for the list). Per tier:
        :attr:`ami_ids` or the tier's ``extra: {"ami_id": ...}`` (e.g. a GPU image).

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    ami_ids = Dict(help="""AMI per tier slug (e.g. a Deep Learning AMI for ``gpu``).""").tag(config=True)

    subnet_ids = List(
        Unicode(),
        help="""
        Subnets to launch in, in order of preference. With EBS volumes only
        those in the volume's availability zone are used; on
        ``InsufficientInstanceCapacity`` the next allowed subnet is tried.

        Example::

            c.EC2Backend.subnet_ids = ["subnet-0aaa", "subnet-0bbb"]  # 1a, 1b

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    security_group_ids = List(
        Unicode(),
        help="""Security groups of server instances: allow the hub to reach :attr:`port`.""",
    ).tag(config=True)

    iam_instance_profile = Unicode(
        "",
        help="""
        Instance profile (name or ARN) of server instances; it needs
        ``ssm:GetParameter``, ``ssm:DeleteParameter`` and ``ssm:PutParameter``
        on ``parameter<spec_parameter_prefix>*`` and ``kms:Decrypt``
        (and EFS client access with the efs driver).
        """,
    ).tag(config=True)

    key_name = Unicode("", help="""EC2 key pair for SSH to server instances (empty: none).""").tag(
        config=True
    )

    port = Integer(8888, help="""Port the single-user server listens on, on the instance.""").tag(config=True)

    address_source = Unicode(
        "private_ip",
        help="""
        How the hub reaches an instance's server:

        - ``private_ip`` (default; hub in the same VPC), ``public_ip``,
          ``private_dns``;
        - ``tag:<key>``: the value of that instance tag, ``host`` or
          ``host:port``, set by whatever starts the instance (a NAT/port
          forwarder, or the test suite's instance emulator, which sets
          ``ds-compute:test-address``). The backend waits for the tag.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    instance_uid = Integer(
        1000, help="""uid the server runs as on the instance (owner of a new volume)."""
    ).tag(config=True)
    instance_gid = Integer(1000, help="""gid the server runs as on the instance.""").tag(config=True)

    instance_python = Unicode(
        "/usr/bin/python3",
        help="""Python on the image that runs the bootstrap (needs boto3).""",
    ).tag(config=True)

    user_data_extra = Unicode(
        "",
        help="""Shell lines the bootstrap runs (as root) before anything else, e.g. to install drivers.""",
    ).tag(config=True)

    spec_parameter_prefix = Unicode(
        "/ds-compute/launch/",
        help="""
        SSM parameter path of launch specs (``<prefix><instance-id>``,
        SecureString, deleted at boot): the hub API token never sits in
        user-data, where anyone on the instance or with
        ``ec2:DescribeInstanceAttribute`` could read it for the instance's life.
        """,
    ).tag(config=True)

    spec_kms_key_id = Unicode(
        "", help="""KMS key of the launch spec parameter (empty: ``alias/aws/ssm``)."""
    ).tag(config=True)

    on_stop = CaselessStrEnum(
        ["terminate", "stop"],
        "terminate",
        help="""
        What happens to the instance when the server stops: ``terminate``
        (default: nothing idles) or ``stop`` (kept stopped for a faster
        start; with :attr:`reuse_stopped`, the next start on that tier
        restarts it).

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    reuse_stopped = Bool(
        False,
        help="""Restart a stopped instance of this user, server and tier instead of launching one.""",
    ).tag(config=True)

    launch_timeout = Float(600.0, help="""Seconds for a launched instance to reach ``running``.""").tag(
        config=True
    )

    stop_timeout = Float(
        600.0, help="""Seconds for an instance to reach ``stopped`` / ``terminated``."""
    ).tag(config=True)

    spec_timeout = Float(
        900.0,
        help="""
        Seconds the bootstrap waits for its launch spec; then the instance shuts
        itself down (terminated with ``on_stop = "terminate"``, else stopped), so an
        instance prepared for a switch whose hub went away does not run on.
        """,
    ).tag(config=True)

    capacity_retries = Integer(
        3,
        help="""
        Launch attempts per allowed subnet on ``InsufficientInstanceCapacity``
        (with jittered backoff :attr:`capacity_backoff`) before failing with a
        clear message (the switch then rolls back).
        """,
    ).tag(config=True)

    capacity_backoff = Float(
        5.0, help="""Base seconds of the jittered backoff after a capacity error."""
    ).tag(config=True)

    poll_interval = Float(
        10.0,
        help="""
        Seconds during which the hub-wide poll answer is reused: every
        server's ``poll()`` reads one shared ``DescribeInstances`` (filtered
        by the hub's tag) and one ``GetParametersByPath`` (exit reports) per
        interval, whatever the number of servers.

        A server that exits is noticed within JupyterHub's
        ``Spawner.poll_interval`` plus this. Starts and stops do not wait for
        it: their waiters ask for answers fetched after their own launch or
        terminate call (still shared by everyone waiting at that moment).

        .. versionchanged:: 0.3
           one answer for all servers (it was one DescribeInstances per
           server); 10 s (it was 2 s).
        """,
    ).tag(config=True)

    warm_pool_zones = List(
        Unicode(),
        help="""
        Availability zones of the warm pools (tiers with ``warm_pool: N`` keep
        ``N`` booted instances *per zone listed here*; EBS volumes are zonal, so
        a pool instance serves only volumes of its zone, EFS any). Each must
        be the zone of one of :attr:`subnet_ids`. Default: the zone of the
        first of :attr:`subnet_ids` (put ``c.EBSVolume.availability_zone``
        there too).

        Example::

            c.EC2Backend.warm_pool_zones = ["eu-west-1a"]

        .. versionadded:: 0.4
        """,
    ).tag(config=True)

    warm_pool_lifetime = Float(
        3600.0,
        help="""
        Seconds a warm-pool instance's bootstrap waits for a launch spec before
        it shuts the instance down (its :attr:`spec_timeout`): the pool
        instances of a hub that is gone cost at most this long. The hub retires
        (terminates and replaces) pool instances a minute before.

        .. versionadded:: 0.4
        """,
    ).tag(config=True)

    warm_pool_interval = Float(
        10.0,
        help="""Seconds between two rounds of the warm-pool keeper (a take wakes it at once).""",
    ).tag(config=True)

    # state
    instance_id = ""
    zone = None
    ip = ""
    launch_token = ""
    instance_type = ""
    tier_slug = ""

    def __init__(self, spawner, **kwargs):
        super().__init__(spawner, **kwargs)
        self.host = None
        self._reused = False
        self._launched_at = None

    # -- helpers -------------------------------------------------------------

    def _fail(self, message, log_message=None):
        raise BackendError(message, log_message=log_message or f"{self.log_name}: {message}")

    def _tier_setting(self, tier, key, table, fallback):
        return (tier.extra or {}).get(key) or table.get(tier.slug) or fallback

    async def _describe_instance(self, instance_id=None):
        inst = await self.describe_instance(instance_id or self.instance_id)
        self.poller.remember(inst)
        return inst

    @property
    def poller(self):
        """The hub-wide :class:`~.aws.InstancePoller` (one DescribeInstances per interval for all servers)."""
        return aws.InstancePoller.shared(self)

    def _volume_zone(self):
        """``(zone, movable)``: where the volume is (None: anywhere) and whether
        it can move to another zone (:attr:`.VolumeDriver.moves_across_zones`)."""
        volume = self.spawner.volume
        return volume.zone(), bool(volume.moves_across_zones)

    async def _subnets(self, zone, movable=False):
        """``[(subnet_id, az)]`` allowed for a volume in ``zone`` (None: any); with
        ``movable``, the subnets of the other zones follow those of ``zone``
        (launched in only when ``zone`` has no capacity: the volume then moves)."""
        if not self.subnet_ids:
            self._fail("No subnets configured: set c.EC2Backend.subnet_ids.")
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL", "")
        azs = {s: _subnet_zones.get((self.region, endpoint, s)) for s in self.subnet_ids}
        if not all(azs.values()):
            r = await self.aws("ec2", "describe_subnets", SubnetIds=list(self.subnet_ids))
            azs = {s["SubnetId"]: s["AvailabilityZone"] for s in r.get("Subnets", [])}
            _subnet_zones.update({(self.region, endpoint, s): az for s, az in azs.items()})
        ordered = [(s, azs[s]) for s in self.subnet_ids if s in azs]
        allowed = [(s, az) for s, az in ordered if zone is None or az == zone]
        if zone is not None and movable:
            allowed += [(s, az) for s, az in ordered if az != zone]
        if not allowed:
            self._fail(
                f"None of the configured subnets is in {zone}, where your volume is: "
                "add a subnet in that zone to c.EC2Backend.subnet_ids."
            )
        return allowed

    def _tags(self, tier):
        tags = self.owner_tags(self.spawner)
        tags.update(
            {
                "Name": f"ds-compute {self.spawner._log_name} {tier.slug}",
                "ds-compute:tier": tier.slug,
                "ds-compute:launch": self.launch_token,
            }
        )
        return tags

    # -- prepare ---------------------------------------------------------------

    async def prepare(self, tier):
        if self._prepared:
            return await self._take_prepared(tier)
        zone, movable = self._volume_zone()
        if await self._take_from_pool(tier, zone):
            await self._end_leftovers()
            self.host = self._host_info()
            return self.host
        inst = await self._acquire(tier, zone, movable)
        # the answer that showed ours running shows the others too
        await self._end_leftovers()
        await self._resolve_address(inst)
        self.host = self._host_info()
        return self.host

    def _host_info(self):
        return HostInfo(
            kind="ec2", id=self.instance_id, zone=self.zone, extra={"instance_type": self.instance_type}
        )

    async def _acquire(self, tier, zone, movable=False):
        """Launch (or restart) an instance for ``tier`` in ``zone`` (None: any allowed subnet;
        ``movable``: another zone when ``zone`` has no capacity) and wait until it runs;
        returns its description."""
        self.instance_type = self._tier_setting(
            tier, "instance_type", self.instance_types, self.default_instance_type
        )
        self.tier_slug = tier.slug
        subnets = await self._subnets(zone, movable)
        inst = None
        self._reused = False
        if self.reuse_stopped:
            # a stopped instance in another zone is no reason to move the volume
            inst = await self._restart_stopped(tier, {zone} if zone else {az for _, az in subnets})
            self._reused = inst is not None
        self._launched_at = time.monotonic()
        if inst is None:
            inst = await self._launch(tier, subnets)
        self.instance_id = inst["InstanceId"]
        self.poller.track(self.instance_id)
        self.zone = inst.get("Placement", {}).get("AvailabilityZone")
        inst = await self._wait_running()
        self.zone = inst["Placement"]["AvailabilityZone"]
        return inst

    # -- make before break: an instance readied while the old server serves ---------

    prepares_ahead = True

    #: made by ``prepare_ahead`` and not (yet) taken by a start: ``stop`` terminates it
    _prepared = False

    async def prepare_ahead(self, tier, cmd, env, volume_path, key):
        """Launch the target instance while the old one serves: in the volume's zone
        (EBS; any allowed subnet with EFS), wait until it runs, has its address and
        its bootstrap waits for the launch spec (``<prefix><id>.waiting``).

        The old server's instance is not touched: no leftover check here (it
        would end the old server); the start that takes this instance does it.
        ``start`` then only writes the launch spec; ``stop(now=True)`` of an
        instance never taken terminates it.
        """
        zone, movable = self._volume_zone()
        self._prepared = True
        if await self._take_from_pool(tier, zone):
            self.host = self._host_info()
            return self.host
        where = f" in {zone}, where your volume is" if zone else ""
        self.emit(f"Launching your {tier.display_name} instance{where} while your server keeps running")
        inst = await self._acquire(tier, zone, movable)
        if zone and self.zone != zone:
            self.emit(
                f"Your {tier.display_name} instance runs in {self.zone} ({zone} had no capacity): "
                "your volume will be copied there at the switch"
            )
        await self._resolve_address(inst)
        await self._wait_bootstrap()
        self.host = self._host_info()
        self.log.info(
            "%s: instance %s (%s, %s) prepared for the switch to %s",
            self.log_name,
            self.instance_id,
            self.instance_type,
            self.zone,
            tier.slug,
        )
        return self.host

    @property
    def waiting_parameter(self):
        """Written by the bootstrap once it waits for its launch spec."""
        return self.spec_parameter + ".waiting"

    async def _wait_bootstrap(self):
        """Until the instance's bootstrap says it waits for its launch spec (it booted)."""
        started = time.monotonic()
        self.emit(f"Waiting for instance {self.instance_id} to boot")

        async def probe():
            try:
                await self.aws("ssm", "get_parameter", Name=self.waiting_parameter)
                return True
            except Exception as e:
                if aws.error_code(e) != "ParameterNotFound":
                    raise
            inst = await self.poller.instance(self.instance_id, max_age=self.poll_interval)
            state = (inst or {}).get("State", {}).get("Name")
            if state not in ("pending", "running"):
                self._fail(f"Instance {self.instance_id} ended while booting ({state}).")
            return False

        try:
            await aws.wait_until(
                probe,
                what=f"the bootstrap of {self.instance_id}",
                timeout=self.launch_timeout,
                first=1,
                cap=2,
            )
        except aws.WaitTimeout as e:
            self._fail(
                f"Instance {self.instance_id} did not finish booting in {self.launch_timeout:g}s.",
                log_message=str(e),
            )
        self.emit(f"Instance {self.instance_id} booted ({time.monotonic() - started:.1f}s)")

    async def _take_from_pool(self, tier, zone):
        """Take a booted instance of ``tier`` from the hub's warm pool in ``zone``
        (None: any) and make it this server's (retagged); False if there is none.

        The pool hands each instance out once (:meth:`.ec2pool.WarmPool.take`,
        synchronous); the ``CreateTags`` that follows makes it this server's
        for every later check (leftovers, ``stop``)."""
        if not getattr(tier, "warm_pool", 0):
            return False
        from .ec2pool import POOL_TAG, WarmPool

        pool = WarmPool.existing(self)
        if pool is None:
            return False
        instance_type = self._tier_setting(
            tier, "instance_type", self.instance_types, self.default_instance_type
        )
        entry = pool.take(tier.slug, zone, instance_type)
        if entry is None:
            where = f" in {zone}" if zone else ""
            self.log.info("%s: no %s instance ready in the warm pool%s", self.log_name, tier.slug, where)
            return False
        self.launch_token = entry["launch"]
        tags = self._tags(tier)
        tags[POOL_TAG] = ""
        try:
            await self.aws("ec2", "create_tags", Resources=[entry["id"]], Tags=aws.tag_list(tags))
        except Exception as e:
            pool.discard(entry, f"could not retag it for {self.log_name}: {aws.error_message(e)}")
            self.launch_token = ""
            return False
        self.instance_id, self.zone = entry["id"], entry["zone"]
        self.instance_type, self.tier_slug = entry["instance_type"], tier.slug
        self.ip, self._port_override = entry["ip"], int(entry["port"] or 0)
        self._launched_at = time.monotonic()
        self.poller.track(self.instance_id)
        known = self.poller.known(self.instance_id) or {
            "InstanceId": self.instance_id,
            "State": {"Name": "running"},
            "Placement": {"AvailabilityZone": self.zone},
        }
        self.poller.remember({**known, "Tags": aws.tag_list({**aws.tag_dict(known.get("Tags")), **tags})})
        self.emit(
            f"Using instance {self.instance_id} from the {tier.display_name} warm pool "
            f"(booted {time.time() - entry['since']:.0f}s ago): nothing to launch"
        )
        return True

    async def _take_prepared(self, tier):
        """``prepare`` of the start that takes the prepared instance: no launch.

        Checks what AWS would not: the instance still runs, it is the tier's,
        and (EBS) it is in the volume's zone. Then ends this server's other
        instances (a prepared one abandoned by a restarted hub) with an answer
        fetched now, after the old server's stop: never this one.
        """
        if tier.slug != self.tier_slug:
            self._fail(
                f"The instance prepared for tier {self.tier_slug} cannot serve tier {tier.slug}.",
            )
        self._launched_at = time.monotonic()
        inst = await self.poller.instance(self.instance_id, max_age=0, since=self._launched_at)
        state = (inst or {}).get("State", {}).get("Name")
        if state != "running":
            self._fail(f"The instance {self.instance_id} prepared for this switch is {state or 'gone'}.")
        zone, movable = self._volume_zone()
        if zone and inst["Placement"]["AvailabilityZone"] != zone and not movable:
            self._fail(
                f"The instance {self.instance_id} prepared for this switch is in "
                f"{inst['Placement']['AvailabilityZone']}, but your volume is in {zone}."
            )
        self._prepared = False
        await self._end_leftovers()
        self.emit(f"Using instance {self.instance_id}, prepared while your server ran")
        self.host = self._host_info()
        return self.host

    async def _launch(self, tier, subnets):
        ami = self._tier_setting(tier, "ami_id", self.ami_ids, self.ami_id)
        if not ami:
            self._fail("No AMI configured: set c.EC2Backend.ami_id.")
        user_data = user_data_mime(
            render_user_data(
                region=self.region,
                spec_prefix=self.spec_parameter_prefix,
                spec_timeout=self.spec_timeout,
                python=self.instance_python,
                extra=self.user_data_extra,
            )
        )
        attempts = max(1, self.capacity_retries)
        tries = []
        for attempt in range(attempts):
            for subnet, az in subnets:
                self.launch_token = uuid.uuid4().hex
                kwargs = dict(
                    ImageId=ami,
                    InstanceType=self.instance_type,
                    MinCount=1,
                    MaxCount=1,
                    SubnetId=subnet,
                    UserData=user_data,
                    ClientToken=self.launch_token,
                    InstanceInitiatedShutdownBehavior="terminate" if self.on_stop == "terminate" else "stop",
                    MetadataOptions={"HttpTokens": "required", "InstanceMetadataTags": "enabled"},
                    TagSpecifications=[
                        {"ResourceType": "instance", "Tags": aws.tag_list(self._tags(tier))},
                        {"ResourceType": "volume", "Tags": aws.tag_list(self._tags(tier))},
                    ],
                )
                if self.security_group_ids:
                    kwargs["SecurityGroupIds"] = list(self.security_group_ids)
                if self.iam_instance_profile:
                    key = "Arn" if self.iam_instance_profile.startswith("arn:") else "Name"
                    kwargs["IamInstanceProfile"] = {key: self.iam_instance_profile}
                if self.key_name:
                    kwargs["KeyName"] = self.key_name
                if tries and az not in tries:
                    self.emit(
                        f"Launching a {self.instance_type} in {az} instead (no capacity in "
                        f"{', '.join(sorted(set(tries)))})"
                    )
                else:
                    self.emit(f"Launching a {self.instance_type} in {az}")
                try:
                    # botocore retries throttling (adaptive mode) but hands
                    # capacity errors back at once: we try the next subnet
                    r = await self.aws("ec2", "run_instances", **kwargs)
                except Exception as e:
                    code = aws.error_code(e)
                    if code in ICE_CODES:
                        tries.append(az)
                        self.log.warning(
                            "%s: %s for %s in %s (%s): %s",
                            self.log_name,
                            code,
                            self.instance_type,
                            az,
                            subnet,
                            aws.error_message(e),
                        )
                        self.emit(f"AWS has no {self.instance_type} capacity in {az} right now ({code})")
                        continue
                    # the launch may have happened although the answer was lost
                    await self._terminate_launch(self.launch_token)
                    if aws.is_throttling(e):
                        self._fail(
                            "AWS kept throttling our requests (RequestLimitExceeded) while launching "
                            f"your {self.instance_type}; try again in a minute.",
                            log_message=f"run_instances throttled for {self.log_name}: {e!r}",
                        )
                    self._fail(
                        f"Could not launch a {self.instance_type}: {aws.error_message(e)}",
                        log_message=f"run_instances for {self.log_name} failed: {e!r}",
                    )
                return r["Instances"][0]
            if attempt + 1 < attempts:
                delay = aws.backoff_delay(attempt, base=self.capacity_backoff, cap=60)
                self.emit(f"Retrying the launch in {delay:.0f}s (attempt {attempt + 2} of {attempts})")
                await asyncio.sleep(delay)
        zones = ", ".join(sorted(set(tries)))
        self._fail(
            f"AWS has no {self.instance_type} capacity in {zones} right now "
            f"(InsufficientInstanceCapacity, {len(tries)} tries). Try again in a few minutes or pick another tier.",
            log_message=f"InsufficientInstanceCapacity for {self.instance_type} in {zones} "
            f"after {len(tries)} tries ({self.log_name})",
        )

    async def _terminate_launch(self, token):
        """Terminate whatever a launch with ``token`` created (lost answers)."""
        try:
            found = await self.find_instances([{"Name": "tag:ds-compute:launch", "Values": [token]}])
            ids = [
                i["InstanceId"] for i in found if i["State"]["Name"] not in ("terminated", "shutting-down")
            ]
            if ids:
                self.log.warning("Terminating %s launched by a failed request for %s", ids, self.log_name)
                await self.aws("ec2", "terminate_instances", InstanceIds=ids)
        except Exception:
            self.log.exception("Could not check for instances of launch %s (%s)", token, self.log_name)

    async def _restart_stopped(self, tier, zones):
        filters = self.owner_filters(self.spawner) + [
            {"Name": "tag:ds-compute:tier", "Values": [tier.slug]},
            {"Name": "instance-state-name", "Values": ["stopped"]},
        ]
        for inst in await self.find_instances(filters):
            if inst["Placement"]["AvailabilityZone"] not in zones:
                continue
            if inst.get("InstanceType") != self.instance_type:
                continue
            self.launch_token = aws.tag_dict(inst.get("Tags")).get("ds-compute:launch", "")
            self.emit(f"Restarting your stopped {self.instance_type} {inst['InstanceId']}")
            try:
                await self.aws("ec2", "start_instances", InstanceIds=[inst["InstanceId"]])
            except Exception as e:
                if aws.error_code(e) in ICE_CODES:
                    self.emit(f"No capacity to restart {inst['InstanceId']}; launching a new one")
                    return None
                raise
            return inst
        return None

    # -- leftovers of a start the hub lost --------------------------------------------

    async def _end_leftovers(self):
        """End instances of this server that an earlier start left running unseen.

        A hub killed during a launch (or whose state was lost) never learned
        the instance it asked for: it is tagged as this server's (hub, user,
        server) but not named by the state. The hub calls ``start`` only for a
        server it believes stopped, so every pending or running instance of
        this server but the one just launched is such a leftover; the
        hub-wide ``DescribeInstances`` that showed the new instance running
        shows them too (no call of its own). They are ended before the volume
        is attached. One holding this server's EBS
        volume is stopped first (a clean shutdown unmounts the file system;
        detaching a mounted volume can hang ``busy``), the volume driver
        detaches the volume, then the instance is terminated; the others are
        terminated at once (EFS is network storage, the shutdown unmounts it).
        """
        # the hub-wide answer fetched after the launch (the running wait's own, or
        # shared with concurrent starts)
        found = [
            i
            for i in (await self.poller.all_instances(5.0, since=self._launched_at)).values()
            if i["InstanceId"] != self.instance_id
            and i.get("State", {}).get("Name") in ("pending", "running")
            and self.is_ours(i.get("Tags"), self.spawner)
        ]
        if not found:
            return
        ids = sorted(i["InstanceId"] for i in found)
        self.log.warning(
            "Ending instances %s of %s that an earlier start left running without the hub knowing "
            "(the hub was stopped while launching); one server per user and volume",
            ids,
            self.log_name,
        )
        self.emit(f"Ending {len(ids)} instance(s) of {self.log_name} left running by an interrupted start")
        volume = self.spawner.volume
        volume_id = getattr(volume, "volume_id", "")
        holding = [
            i["InstanceId"]
            for i in found
            if volume_id
            and any(
                (m.get("Ebs") or {}).get("VolumeId") == volume_id for m in i.get("BlockDeviceMappings") or []
            )
        ]
        if holding:
            await self.aws("ec2", "stop_instances", InstanceIds=holding)
            for iid in holding:
                await self._wait_state({"stopped", "terminated"}, iid)
                await volume.detach_from(iid)
        await self.aws("ec2", "terminate_instances", InstanceIds=ids)

    async def _wait_running(self):
        started = time.monotonic()
        self.emit(f"Waiting for instance {self.instance_id} to run")

        async def probe():
            # the hub-wide answer (concurrent starts share it), fetched after the launch
            inst = await self.poller.instance(self.instance_id, max_age=0.5, since=self._launched_at)
            state = (inst or {}).get("State", {}).get("Name")
            if inst is None or state in ("shutting-down", "terminated", "stopping", "stopped"):
                reason = (inst or {}).get("StateReason", {}).get("Message", "gone")
                self._fail(
                    f"Instance {self.instance_id} ended while starting ({state}: {reason}).",
                )
            return inst if state == "running" else None

        try:
            inst = await aws.wait_until(
                probe,
                what=f"instance {self.instance_id} to run",
                timeout=self.launch_timeout,
                first=0.2,
                cap=5,
            )
        except aws.WaitTimeout as e:
            self._fail(
                f"Instance {self.instance_id} did not start in {self.launch_timeout:g}s.", log_message=str(e)
            )
        self.emit(f"Instance {self.instance_id} is running ({time.monotonic() - started:.1f}s)")
        return inst

    async def _resolve_address(self, inst):
        source = self.address_source
        self.port = self.port or 8888
        if source.startswith("tag:"):
            key = source[4:]

            asked = time.monotonic()

            async def probe():
                current = await self.poller.instance(self.instance_id, max_age=0.5, since=asked)
                return aws.tag_dict((current or {}).get("Tags")).get(key)

            try:
                value = await aws.wait_until(
                    probe, what=f"tag {key} on {self.instance_id}", timeout=self.launch_timeout, cap=2
                )
            except aws.WaitTimeout as e:
                self._fail(f"Instance {self.instance_id} never published its address (tag {key}).", str(e))
            host, _, port = value.rpartition(":") if ":" in value else (value, "", "")
            self.ip = host
            if port:
                self._port_override = int(port)
            return
        field = {
            "private_ip": "PrivateIpAddress",
            "public_ip": "PublicIpAddress",
            "private_dns": "PrivateDnsName",
        }
        if source not in field:
            self._fail(
                f"Unknown c.EC2Backend.address_source {source!r}: private_ip, public_ip, private_dns, tag:<key>"
            )
        self.ip = inst.get(field[source]) or ""
        if not self.ip:
            self._fail(f"Instance {self.instance_id} has no {source}.")

    _port_override = 0

    def bind(self):
        return self.ip, self._port_override or self.port

    # -- start -------------------------------------------------------------------

    @property
    def spec_parameter(self):
        return f"{self.spec_parameter_prefix}{self.instance_id}"

    async def start(self, tier, cmd, env, volume_path, keep_root=False):
        if keep_root:
            # the instance's bootstrap mounts the volume; the server never gets root
            self._fail("The ec2 backend cannot mount volume images: use the ebs or efs volume driver")
        mount = (self.host.extra.get("mount") if self.host else None) or {}
        spec = {
            "cmd": list(cmd),
            "env": dict(env),
            "cwd": volume_path,
            "uid": self.instance_uid,
            "gid": self.instance_gid,
            "mount": mount,
        }
        value = encode_spec(spec)
        kwargs = dict(
            Name=self.spec_parameter,
            Value=value,
            Type="SecureString",
            Overwrite=True,
            Tier="Standard" if len(value) <= SPEC_STANDARD_LIMIT else "Advanced",
            Description=f"ds-compute launch spec for {self.spawner._log_name}, deleted at boot",
        )
        if self.spec_kms_key_id:
            kwargs["KeyId"] = self.spec_kms_key_id
        if self._reused:
            # a stale exit report from an earlier run of the restarted instance
            await self._delete_parameters(spec=False)
        try:
            await self.aws("ssm", "put_parameter", **kwargs)
        except Exception as e:
            self._fail(
                f"Could not hand the server's settings to {self.instance_id}: {aws.error_message(e)}",
                log_message=f"put_parameter {self.spec_parameter} for {self.log_name}: {e!r}",
            )
        self.emit(f"Booting the server on {self.instance_id}")
        return self.bind()

    # -- poll / stop / release -----------------------------------------------------

    async def _exit_report(self):
        try:
            r = await self.aws("ssm", "get_parameter", Name=self.spec_parameter + ".exit")
        except Exception as e:
            if aws.error_code(e) == "ParameterNotFound":
                return None
            raise
        try:
            return json.loads(r["Parameter"]["Value"])
        except ValueError:
            return {"status": 1, "tail": r["Parameter"]["Value"]}

    async def poll(self):
        """One shared ``DescribeInstances`` and one ``GetParametersByPath`` per
        :attr:`poll_interval` answer for every server of the hub (:class:`~.aws.InstancePoller`)."""
        if not self.instance_id:
            return 0
        poller = self.poller
        poller.track(self.instance_id)
        inst = await poller.instance(self.instance_id, max_age=self.poll_interval)
        state = (inst or {}).get("State", {}).get("Name")
        if state not in ("pending", "running"):
            return 0
        raw = await poller.exit_report(self.instance_id, self.spec_parameter_prefix, self.poll_interval)
        if raw is None:
            return None
        try:
            report = json.loads(raw)
        except ValueError:
            report = {"status": 1}
        return int(report.get("status") or 0) or 1

    async def _delete_parameters(self, spec=True):
        names = [self.spec_parameter + ".exit", self.waiting_parameter]
        names += [self.spec_parameter] if spec else []
        try:
            await self.aws("ssm", "delete_parameters", Names=names)
        except Exception:
            self.log.warning("Could not delete %s (%s)", names, self.log_name, exc_info=True)

    async def stop(self, now=False):
        if not self.instance_id:
            return
        # our tags never change and instance ids are never reused: the last
        # description the hub saw (a poll, the launch) tells whose it is
        inst = self.poller.known(self.instance_id)
        # (a warm-pool instance changed owner tags once, when taken: ask if they are not ours)
        if (
            inst is None
            or inst["State"]["Name"] != "running"
            or not self.is_ours(inst.get("Tags"), self.spawner)
        ):
            inst = await self._describe_instance()
        state = (inst or {}).get("State", {}).get("Name")
        if inst is None or state == "terminated":
            await self._delete_parameters()
            return
        if not self.is_ours(inst.get("Tags"), self.spawner):
            self.log.error(
                "Instance %s is not tagged as %s's: not touching it", self.instance_id, self.log_name
            )
            return
        # a prepared instance no start took never ran a server: nothing to keep
        on_stop = "terminate" if self._prepared else self.on_stop
        if on_stop == "stop" and state != "stopped":
            self.emit(f"Stopping instance {self.instance_id}")
            asked = time.monotonic()
            r = await self.aws("ec2", "stop_instances", InstanceIds=[self.instance_id], Force=bool(now))
            if self._current_state(r, "StoppingInstances") not in ("stopped", "terminated"):
                await self._wait_state({"stopped", "terminated"}, since=asked)
        elif on_stop == "terminate":
            self.emit(f"Terminating instance {self.instance_id}")
            asked = time.monotonic()
            try:
                r = await self.aws("ec2", "terminate_instances", InstanceIds=[self.instance_id])
            except Exception as e:
                if aws.error_code(e) != "InvalidInstanceID.NotFound":
                    raise
                r = {}
            current = self._current_state(r, "TerminatingInstances") if r else "terminated"
            self.poller.remember({**inst, "State": {"Name": current or "shutting-down"}})
            if current != "terminated" and not getattr(self.spawner.volume, "waits_for_termination", False):
                await self._wait_state({"terminated"}, since=asked)
        await self._delete_parameters()

    @staticmethod
    def _current_state(response, key):
        """The state a Stop/TerminateInstances answer reports (no need to wait when it is final)."""
        changes = response.get(key) or [{}]
        return (changes[0].get("CurrentState") or {}).get("Name", "")

    async def _wait_state(self, states, instance_id=None, since=None):
        instance_id = instance_id or self.instance_id
        since = time.monotonic() if since is None else since

        async def probe():
            # the hub-wide answer (shared by everyone stopping), fetched after we asked
            inst = await self.poller.instance(instance_id, max_age=0.5, since=since)
            return inst is None or inst["State"]["Name"] in states

        try:
            await aws.wait_until(
                probe,
                what=f"instance {instance_id} to be {'/'.join(sorted(states))}",
                timeout=self.stop_timeout,
                first=0.5,
            )
        except aws.WaitTimeout as e:
            self._fail(f"Instance {instance_id} did not stop in time.", log_message=str(e))

    async def release(self):
        if not self.instance_id:
            return
        if self.on_stop == "stop" and not self._prepared:
            self.log.info("Keeping stopped instance %s of %s for reuse", self.instance_id, self.log_name)
        self.poller.untrack(self.instance_id)
        self.instance_id = ""
        self.ip = ""
        self.host = None
        self._prepared = False

    async def log_tail(self, lines=30):
        if not self.instance_id:
            return ""
        try:
            report = await self._exit_report()
            if report and report.get("tail"):
                return "\n".join(report["tail"].splitlines()[-lines:])
            r = await self.aws("ec2", "get_console_output", InstanceId=self.instance_id)
            out = r.get("Output") or ""
            try:
                out = base64.b64decode(out).decode(errors="replace")
            except ValueError:
                pass
            return "\n".join(out.splitlines()[-lines:])
        except Exception as e:
            return f"(no log: {e!r})"

    def get_state(self):
        if not self.instance_id:
            return {}
        return {
            "instance_id": self.instance_id,
            "zone": self.zone,
            "ip": self.ip,
            "port": self._port_override or self.port,
            "instance_type": self.instance_type,
            "tier": self.tier_slug,
            "launch": self.launch_token,
        }

    def load_state(self, state):
        self.instance_id = state.get("instance_id", "")
        self.zone = state.get("zone")
        self.ip = state.get("ip", "")
        if state.get("port"):
            self._port_override = int(state["port"])
        self.instance_type = state.get("instance_type", "")
        self.tier_slug = state.get("tier", "")
        self.launch_token = state.get("launch", "")
