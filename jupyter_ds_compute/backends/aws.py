"""Shared AWS plumbing for the ``ec2`` backend and the ``ebs``/``efs`` volumes.

- boto3 is imported lazily: the hub needs it only in AWS mode, and a missing
  install says what to run.
- One boto3 client per (service, region, endpoint) for the whole hub
  process, with botocore's *adaptive* retry mode (exponential backoff with
  jitter, retries ``RequestLimitExceeded`` and other throttling, and a
  client-side rate limiter that slows every caller of the client down once
  AWS throttles, so a herd of switches queues up instead of failing) and
  bounded timeouts; clients are thread-safe. There is no retry layer of our
  own on top: botocore's is the only one.
- Errors that are not worth retrying at once (``InsufficientInstanceCapacity``:
  an HTTP 500 botocore would retry on the same subnet) are handed back on the
  first answer; the EC2 backend tries the next subnet instead.
- :func:`call` runs a (blocking) boto3 call in a thread pool sized for many
  concurrent spawns, under ``asyncio.wait_for``; ``on_throttle`` hears of
  each throttled attempt botocore retries (a progress message).
- :func:`wait_until` is the async waiter: poll with backoff until a
  predicate holds, bounded by a deadline, with a message naming what we
  waited for.
- :class:`AWS` is the configuration and the helpers every AWS plug-in
  shares: owner tags and the filters that find things by them, the
  refusal of something tagged for someone else, instance lookups.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

#: error codes that mean "slow down" (EC2 and the other services)
THROTTLING_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
    }
)

_clients: dict = {}
_clients_lock = threading.Lock()
#: callables applied to each new client (``jupyter_ds_compute.aws.iam.record_calls``)
client_hooks: list = []
_executor = None


def boto3():
    """The boto3 module, or an ImportError saying how to install it."""
    try:
        import boto3 as _boto3
    except ImportError as e:
        raise ImportError(
            "The ec2 backend and the ebs/efs volume drivers need boto3: pip install jupyter-ds-compute[aws]"
        ) from e
    return _boto3


#: per service: error codes botocore must not retry (we act on them at once)
NO_RETRY_CODES = {
    "ec2": frozenset({"InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacity"}),
}

#: ``(loop, on_throttle)`` of the call running in this context (see :func:`call`)
_throttle_listener: contextvars.ContextVar = contextvars.ContextVar("ds_compute_aws_throttle", default=None)


def _response_code(response):
    """The error code of a botocore ``needs-retry`` event's response (else '')."""
    if not response:
        return ""
    parsed = response[1] if isinstance(response, tuple) and len(response) > 1 else {}
    return ((parsed or {}).get("Error") or {}).get("Code", "") or ""


def _make_no_retry(codes):
    def no_retry(response=None, **kwargs):
        # False (not None) as the first answer: botocore does not retry
        if _response_code(response) in codes:
            return False
        return None

    return no_retry


def _on_needs_retry(response=None, operation=None, attempts=1, **kwargs):
    """Counts throttled answers and tells the waiting caller (never retries by itself)."""
    if _response_code(response) not in THROTTLING_CODES:
        return None
    stats.throttled += 1
    listener = _throttle_listener.get()
    if listener is not None:
        loop, on_throttle = listener
        op = getattr(operation, "name", "call")
        try:
            loop.call_soon_threadsafe(on_throttle, op, attempts)
        except RuntimeError:  # the loop is closed
            pass
    return None


def client(service, region=None, endpoint_url=None, max_attempts=8, connect_timeout=5, read_timeout=30):
    """A cached boto3 client with adaptive retries and bounded timeouts.

    ``max_attempts`` counts the first attempt too (botocore's
    ``retries={"mode": "adaptive", "max_attempts": N}``).
    ``endpoint_url`` defaults to boto3's own resolution, which honours
    ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>`` (a moto server in
    tests).
    """
    # the environment is part of the key: a client made for another endpoint
    # (e.g. another test's moto server) must not be reused
    env_endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    key = (service, region or "", endpoint_url or env_endpoint, max_attempts, connect_timeout, read_timeout)
    with _clients_lock:
        c = _clients.get(key)
        if c is None:
            b3 = boto3()
            from botocore.config import Config

            config = Config(
                region_name=region or None,
                retries={"mode": "adaptive", "max_attempts": max(1, int(max_attempts))},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=64,
            )
            kwargs = {"config": config}
            if endpoint_url:
                kwargs["endpoint_url"] = endpoint_url
            c = b3.session.Session().client(service, **kwargs)
            event = c.meta.service_model.service_id.hyphenize()
            if service in NO_RETRY_CODES:
                c.meta.events.register_first(f"needs-retry.{event}", _make_no_retry(NO_RETRY_CODES[service]))
            c.meta.events.register(f"needs-retry.{event}", _on_needs_retry)
            _clients[key] = c
            for hook in client_hooks:
                hook(c)
    return c


def _pool():
    global _executor
    if _executor is None:
        # boto3 is blocking; many spawns at once must not queue behind the
        # default executor's few workers (min(32, cpus + 4))
        _executor = ThreadPoolExecutor(
            max_workers=int(os.environ.get("DS_COMPUTE_AWS_THREADS", "64")),
            thread_name_prefix="ds-compute-aws",
        )
    return _executor


def error_code(exc):
    """The AWS error code of a botocore ``ClientError`` (else '')."""
    response = getattr(exc, "response", None) or {}
    return (response.get("Error") or {}).get("Code", "") or ""


def error_message(exc):
    response = getattr(exc, "response", None) or {}
    return (response.get("Error") or {}).get("Message", "") or str(exc)


def is_throttling(exc):
    return error_code(exc) in THROTTLING_CODES


def backoff_delay(attempt, base=0.5, cap=20.0):
    """Full-jitter exponential backoff (AWS architecture blog): U(0, min(cap, base*2^n)).

    For waits of our own that are not API retries (capacity errors, where the
    next try goes to another subnet)."""
    return random.uniform(0, min(cap, base * 2**attempt))


class CallStats:
    """Counts of API calls made through :func:`call` (benchmarks, tests)."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.throttled = 0
        #: calls that waited for the client-side rate limit
        self.limited = 0

    def add(self, op):
        self.counts[op] = self.counts.get(op, 0) + 1

    @property
    def total(self):
        return sum(self.counts.values())


stats = CallStats()


async def call(method, /, *, timeout=60.0, on_throttle=None, **kwargs):
    """Run ``method(**kwargs)`` (a bound boto3 client method) in a thread.

    The whole call, botocore's own retries included, is bounded by
    ``timeout``. ``on_throttle(operation, attempt)`` is called on the event
    loop for each throttled answer botocore is about to retry (a progress
    message). Errors are raised as botocore raised them.
    """
    loop = asyncio.get_running_loop()
    stats.add(getattr(method, "__name__", "call"))
    ctx = contextvars.copy_context()
    if on_throttle is not None:
        ctx.run(_throttle_listener.set, (loop, on_throttle))
    return await asyncio.wait_for(
        loop.run_in_executor(_pool(), ctx.run, functools.partial(method, **kwargs)), timeout=timeout
    )


# -- a client-side token bucket per API action, shared by the whole hub ---------

#: ``{action: (burst, per_second)}``: EC2's documented request token buckets
#: (RunInstances; mutating actions; non-mutating actions), used unless
#: ``c.AWS.rate_limits`` says otherwise. Actions not listed are not limited here
#: (botocore's adaptive mode still backs off when AWS throttles them).
DEFAULT_RATE_LIMITS = {
    "RunInstances": (5, 2.0),
    **{
        a: (200, 5.0)
        for a in ("AttachVolume", "DetachVolume", "TerminateInstances", "StopInstances", "StartInstances",
                  "CreateVolume", "DeleteVolume", "CreateSnapshot", "DeleteSnapshot", "CreateTags")
    },
    **{
        a: (100, 20.0)
        for a in ("DescribeInstances", "DescribeVolumes", "DescribeSubnets", "DescribeSnapshots")
    },
}  # fmt: skip


class TokenBucket:
    """A token bucket that never refuses: :meth:`reserve` takes a token now and
    says how long to wait for it (FIFO: later callers wait longer), so callers
    queue on the client instead of being throttled by AWS.

    One token of AWS's burst is kept in reserve: requests leave the hub at
    exactly AWS's refill rate but reach it with jitter (thread pool, network),
    and a bucket drained to zero would answer the early ones with
    ``RequestLimitExceeded``."""

    def __init__(self, burst, rate):
        self.burst, self.rate = float(burst), float(rate)
        self.capacity = max(1.0, self.burst - 1)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.waited = 0.0

    def reserve(self):
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1
        wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        self.waited += wait
        return wait


#: (region, endpoint, action) -> TokenBucket, for the whole hub process
_buckets: dict = {}


def bucket(region, endpoint, action, limits):
    """The shared bucket of ``action`` (None: not limited); ``limits`` as ``c.AWS.rate_limits``."""
    limit = limits[action] if action in limits else DEFAULT_RATE_LIMITS.get(action)
    if not limit:
        return None
    burst, rate = float(limit[0]), float(limit[1])
    key = (region or "", endpoint or os.environ.get("AWS_ENDPOINT_URL", ""), action)
    b = _buckets.get(key)
    if b is None or (b.burst, b.rate) != (burst, rate):
        b = _buckets[key] = TokenBucket(burst, rate)
    return b


class WaitTimeout(Exception):
    """:func:`wait_until` ran out of time; the message says for what."""


async def wait_until(probe, *, what, timeout, first=0.2, cap=5.0):
    """Poll ``await probe()`` until it returns something truthy; return it.

    Backoff with jitter between polls (``first`` doubling up to ``cap``);
    raises :class:`WaitTimeout` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    delay = first
    while True:
        value = await probe()
        if value:
            return value
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(min(deadline - now, random.uniform(delay / 2, delay)))
        delay = min(cap, delay * 2)


def tag_list(tags: dict):
    return [{"Key": str(k), "Value": str(v)} for k, v in tags.items()]


def tag_dict(tags) -> dict:
    return {t["Key"]: t["Value"] for t in tags or []}


# -- configuration shared by the ec2 backend and the ebs/efs volumes ----------

from traitlets import Dict, Float, Integer, Unicode, default  # noqa: E402
from traitlets.config import LoggingConfigurable  # noqa: E402

from ..aws import iam  # noqa: E402


class AWS(LoggingConfigurable):
    """Settings every AWS plug-in shares: ``c.AWS.region = ...`` applies to
    ``EC2Backend``, ``EBSVolume`` and ``EFSVolume`` alike (each may override)."""

    region = Unicode(
        help="""
        AWS region. Default: ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` from the
        hub's environment, else ``us-east-1``.

        Example::

            c.AWS.region = "eu-west-1"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("region")
    def _default_region(self):
        return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"

    endpoint_url = Unicode(
        "",
        help="""
        API endpoint override (e.g. a moto server). Empty: boto3's own
        resolution, which honours ``AWS_ENDPOINT_URL``.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    hub_id = Unicode(
        "ds-compute",
        help="""
        Value of the ``ds-compute:hub`` tag on everything this hub creates.
        Instances and volumes are *ours* only when they carry it (and the
        user's tags): give each hub sharing an AWS account its own id.

        Example::

            c.AWS.hub_id = "research-hub"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    tags = Dict(
        help="""
        Extra tags on every instance, volume, access point and snapshot
        (cost allocation), e.g. ``{"Project": "ds-platform", "CostCenter": "42"}``.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    max_attempts = Integer(
        10,
        help="""
        Attempts per AWS call (the first one included) in botocore's
        *adaptive* retry mode: throttling (``RequestLimitExceeded``) and
        transient 5xx errors are retried with exponential backoff and jitter,
        and once AWS throttles, the hub's client limits its own request rate.

        Example::

            c.AWS.max_attempts = 15

        .. versionchanged:: 0.2
           adaptive mode; our own retry layer on top of botocore's is gone.
        """,
    ).tag(config=True)

    call_timeout = Float(60.0, help="""Seconds for one attempt of an AWS API call (read timeout).""").tag(
        config=True
    )

    throttle_timeout = Float(
        300.0,
        help="""
        Seconds one AWS call may take in all, botocore's retries of a
        throttled call included, before it fails.
        """,
    ).tag(config=True)

    rate_limits = Dict(
        help="""
        Client-side request rates per API action, ``{"Action": (burst,
        per_second)}``, one token bucket per action and region shared by all
        of the hub's servers: a herd of switches queues in the hub instead of
        drawing ``RequestLimitExceeded`` answers from AWS (and the retries
        they cost). Merged over EC2's documented defaults (``RunInstances``
        5 burst / 2 per s; mutating actions 200 / 5; ``Describe*`` 100 / 20);
        ``None`` for an action turns its bucket off. Raise them to your
        account's limits (AWS support raises them on request).

        Example::

            c.AWS.rate_limits = {"RunInstances": (20, 5), "DescribeVolumes": None}

        .. versionadded:: 0.3
        """,
    ).tag(config=True)

    def aws_client(self, service, max_attempts=None):
        return client(
            service,
            self.region,
            self.endpoint_url or None,
            max_attempts or self.max_attempts,
            read_timeout=self.call_timeout,
        )

    async def aws_delete(self, service, op, *, not_found, error, what, **kwargs):
        """A delete call for which "already gone" (the error code ``not_found``)
        is success; any other failure is ``error`` ("Could not delete <what>").
        """
        try:
            await self.aws(service, op, **kwargs)
        except Exception as e:
            if error_code(e) != not_found:
                raise error(
                    f"Could not delete {what}: {error_message(e)}",
                    log_message=f"{op} {what} ({self.log_name}): {e!r}",
                ) from None

    async def aws(self, service, op, **kwargs):
        """``await self.aws("ec2", "describe_volumes", VolumeIds=[...])``.

        Only calls listed in ``jupyter_ds_compute.aws.iam.HUB_ACTIONS`` (from
        which the hub's IAM policy is generated) may be made.
        """
        if not iam.is_declared(service, op):
            raise RuntimeError(
                f"AWS call {service}.{op} is not in jupyter_ds_compute.aws.iam.HUB_ACTIONS: "
                "add it there, so the hub's generated IAM policy allows it"
            )
        method = getattr(self.aws_client(service), op)
        on_throttle = None
        emit = getattr(self, "emit", None)
        if emit is not None:

            def on_throttle(operation, attempt):
                emit(f"AWS is throttling {operation} (RequestLimitExceeded); retrying, attempt {attempt + 1}")

        limiter = bucket(self.region, self.endpoint_url, iam.camel(op), self.rate_limits)
        if limiter is not None:
            wait = limiter.reserve()
            if wait > 0:
                stats.limited += 1
                if wait >= 2 and emit is not None:
                    emit(f"Waiting {wait:.0f}s for a turn to call AWS {iam.camel(op)} (hub's rate limit)")
                await asyncio.sleep(wait)
        return await call(
            method,
            timeout=max(self.call_timeout, self.throttle_timeout),
            on_throttle=on_throttle,
            **kwargs,
        )

    def owner_tags(self, spawner):
        """Tags naming the hub, user and server something belongs to."""
        tags = dict(self.tags)
        tags.update(
            {
                "ds-compute:hub": self.hub_id,
                "ds-compute:user": spawner.user.name,
                "ds-compute:server": spawner.name or "",
            }
        )
        return tags

    def is_ours(self, tags, spawner):
        t = tag_dict(tags) if isinstance(tags, list) or tags is None else tags
        return (
            t.get("ds-compute:hub") == self.hub_id
            and t.get("ds-compute:user") == spawner.user.name
            and t.get("ds-compute:server", "") == (spawner.name or "")
        )

    def owner_filters(self, spawner):
        """``describe_*`` filters for what carries ``spawner``'s owner tags."""
        return [
            {"Name": "tag:ds-compute:hub", "Values": [self.hub_id]},
            {"Name": "tag:ds-compute:user", "Values": [spawner.user.name]},
            {"Name": "tag:ds-compute:server", "Values": [spawner.name or ""]},
        ]

    def refuse_foreign(self, vid, tags, spawner):
        """A volume our state names is tagged for another hub, user or server: never use it
        (raises :class:`~jupyter_ds_compute.volumes.local.VolumeOwnedError`)."""
        from ..volumes.local import VolumeOwnedError

        t = tag_dict(tags) if isinstance(tags, list) or tags is None else tags
        keys = ("ds-compute:hub", "ds-compute:user", "ds-compute:server")
        whose = ", ".join(f"{k}={t.get(k, '')!r}" for k in keys)
        log_name = spawner._log_name
        raise VolumeOwnedError(
            f"Volume {vid} belongs to someone else ({whose}), not to {log_name}: "
            "nothing was changed; ask an admin.",
            log_message=f"refused {getattr(self, 'name', 'aws')} volume {vid} to {log_name}: tags {t!r}",
        )

    async def describe_instance(self, instance_id):
        """The instance's description, or None if AWS does not know it."""
        try:
            r = await self.aws("ec2", "describe_instances", InstanceIds=[instance_id])
        except Exception as e:
            if error_code(e) in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
                return None
            raise
        found = instances(r)
        return found[0] if found else None

    async def find_instances(self, filters):
        """Every instance matching ``filters`` (one ``DescribeInstances``, all pages)."""
        found, token = [], None
        while True:
            kwargs = {"Filters": filters}
            if token:
                kwargs["NextToken"] = token
            r = await self.aws("ec2", "describe_instances", **kwargs)
            found += instances(r)
            token = r.get("NextToken")
            if not token:
                return found

    async def hub_file_system(self):
        """The id of the EFS file system tagged as this hub's, or ''."""
        r = await self.aws("efs", "describe_file_systems")
        for fs in r.get("FileSystems", []):
            if tag_dict(fs.get("Tags")).get("ds-compute:hub") == self.hub_id:
                return fs["FileSystemId"]
        return ""


def instances(response):
    """The instances of a ``DescribeInstances`` answer, reservations flattened."""
    return [i for res in response.get("Reservations", []) for i in res.get("Instances", [])]


# -- one DescribeInstances per interval for every server of the hub ------------

_NEVER = float("-inf")


class _SharedAnswer:
    """One fetch at a time, its answer shared by everyone who asks.

    ``get(max_age, since)`` returns an answer whose fetch *started* at most
    ``max_age`` seconds before the call and after ``since`` (a monotonic
    time: "after I launched"); callers that wait for a fetch in flight
    reuse it when it qualifies, so N concurrent askers cost one call.
    """

    def __init__(self, fetch):
        self.fetch = fetch
        self.value = None
        self.started = _NEVER
        self.calls = 0
        self._lock = None
        self._loop = None

    def _ok(self, bound):
        return self.started != _NEVER and self.started >= bound

    async def get(self, max_age, since=None):
        bound = time.monotonic() - max_age
        if since is not None:
            bound = max(bound, since)
        if self._ok(bound):
            return self.value
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a lock belongs to one event loop
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            if not self._ok(bound):
                started = time.monotonic()
                self.calls += 1
                self.value = await self.fetch()
                self.started = started
        return self.value


class InstancePoller:
    """What the hub knows about all of its instances, one call per interval.

    JupyterHub polls every server (``poll()``) and every starting or stopping
    server waits for its instance; asking AWS once per server per poll costs
    ``DescribeInstances`` (and an SSM read) in proportion to the number of
    servers. Here, as with the shared Slurm ``squeue``
    (:mod:`.squeue`), one ``DescribeInstances`` filtered by the hub's tag
    answers for all of the hub's instances, and one
    ``GetParametersByPath`` on the launch-spec prefix for all exit reports;
    answers are reused for ``max_age`` seconds (with jitter, so hubs do not
    beat in step) and concurrent askers share one call.

    :meth:`shared` gives the one poller per (region, endpoint, hub id). Instances tags are known from the last answer
    (:meth:`known`): an instance id is never reused, and our tags are set at
    launch.
    """

    _shared: dict = {}

    def __init__(self, owner, jitter=0.2):
        self.owner = owner
        self.jitter = jitter
        self.tracked: set[str] = set()
        self.known_instances: dict[str, dict] = {}
        self._describe = _SharedAnswer(self._fetch_instances)
        #: launch-spec prefix -> shared GetParametersByPath answer
        self._exits: dict[str, _SharedAnswer] = {}

    @classmethod
    def shared(cls, aws_obj) -> "InstancePoller":
        endpoint = aws_obj.endpoint_url or os.environ.get("AWS_ENDPOINT_URL", "")
        key = (aws_obj.region, endpoint, aws_obj.hub_id)
        poller = cls._shared.get(key)
        if poller is None:
            owner = AWS(
                region=aws_obj.region,
                endpoint_url=aws_obj.endpoint_url,
                hub_id=aws_obj.hub_id,
                max_attempts=aws_obj.max_attempts,
                call_timeout=aws_obj.call_timeout,
                throttle_timeout=aws_obj.throttle_timeout,
                rate_limits=dict(aws_obj.rate_limits),
            )
            poller = cls._shared[key] = cls(owner)
        else:
            poller.owner.rate_limits = dict(aws_obj.rate_limits)
        return poller

    @property
    def calls(self):
        """API calls made (DescribeInstances and GetParametersByPath fetches)."""
        return self._describe.calls + sum(e.calls for e in self._exits.values())

    def track(self, instance_id):
        self.tracked.add(instance_id)

    def untrack(self, instance_id):
        self.tracked.discard(instance_id)
        self.known_instances.pop(instance_id, None)

    def remember(self, inst):
        """Keep a description got elsewhere (a ``DescribeInstances`` by id)."""
        if inst:
            self.known_instances[inst["InstanceId"]] = inst

    def known(self, instance_id):
        """The last description of ``instance_id`` we saw (any age), or None."""
        return self.known_instances.get(instance_id)

    def _age(self, max_age):
        return max_age * random.uniform(1 - self.jitter, 1) if max_age else 0.0

    async def _fetch_instances(self):
        found = await self.owner.find_instances(
            [{"Name": "tag:ds-compute:hub", "Values": [self.owner.hub_id]}]
        )
        answer = {i["InstanceId"]: i for i in found}
        self.known_instances.update(answer)
        return answer

    async def _fetch_exits(self, prefix):
        reports, token = {}, None
        while True:
            kwargs = {"Path": prefix.rstrip("/") or "/", "Recursive": False, "MaxResults": 10}
            if token:
                kwargs["NextToken"] = token
            r = await self.owner.aws("ssm", "get_parameters_by_path", **kwargs)
            for p in r.get("Parameters", []):
                name = p.get("Name", "")
                if name.endswith(".exit"):
                    reports[name[len(prefix) : -len(".exit")]] = p.get("Value", "")
            token = r.get("NextToken")
            if not token:
                return reports

    async def all_instances(self, max_age, since=None):
        """``{instance_id: description}`` of every instance tagged with the hub's id."""
        return await self._describe.get(self._age(max_age), since)

    async def instance(self, instance_id, max_age, since=None):
        """The instance's description from the hub-wide answer; one ``DescribeInstances``
        by id when the answer does not name it (just launched: filters are
        eventually consistent) or the hub-wide call fails. None: AWS does not know it."""
        try:
            answer = await self.all_instances(max_age, since)
        except Exception as e:
            if is_throttling(e):
                raise
            answer = {}
        inst = answer.get(instance_id)
        if inst is None:
            inst = await self.owner.describe_instance(instance_id)
            self.remember(inst)
        return inst

    async def exit_report(self, instance_id, prefix, max_age):
        """The raw ``<prefix><instance_id>.exit`` report the bootstrap wrote, or None."""
        shared = self._exits.get(prefix)
        if shared is None:
            shared = self._exits[prefix] = _SharedAnswer(functools.partial(self._fetch_exits, prefix))
        reports = await shared.get(self._age(max_age))
        return reports.get(instance_id)
