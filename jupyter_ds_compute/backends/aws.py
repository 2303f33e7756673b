"""Shared AWS plumbing for the ``ec2`` backend and the ``ebs``/``efs`` volumes.

- boto3 is imported lazily: the hub needs it only in AWS mode, and a missing
  install says what to run.
- One boto3 client per (service, region, endpoint) for the whole hub
  process, with botocore's *standard* retry mode (exponential backoff with
  full jitter, retries ``RequestLimitExceeded`` and other throttling) and
  bounded timeouts; clients are thread-safe.
- :func:`call` runs a (blocking) boto3 call in a thread pool sized for many
  concurrent spawns, under ``asyncio.wait_for``, and adds our own jittered
  retries for throttling that outlived botocore's (EC2's RunInstances bucket
  is small: a burst of 5, refilled at 2/s), so a herd of switches queues up
  instead of failing.
- :func:`wait_until` is the async waiter: poll with backoff until a
  predicate holds, bounded by a deadline, with a message naming what we
  waited for.
"""

from __future__ import annotations

import asyncio
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
            "The ec2 backend and the ebs/efs volume drivers need boto3: "
            "pip install jupyter-ds-compute[aws]"
        ) from e
    return _boto3


def client(service, region=None, endpoint_url=None, max_attempts=8, connect_timeout=5, read_timeout=30):
    """A cached boto3 client with standard retries and bounded timeouts.

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
                retries={"mode": "standard", "total_max_attempts": max_attempts},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=64,
            )
            kwargs = {"config": config}
            if endpoint_url:
                kwargs["endpoint_url"] = endpoint_url
            c = _clients[key] = b3.session.Session().client(service, **kwargs)
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
    """Full-jitter exponential backoff (AWS architecture blog): U(0, min(cap, base*2^n))."""
    return random.uniform(0, min(cap, base * 2**attempt))


class CallStats:
    """Counts of API calls made through :func:`call` (benchmarks, tests)."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.throttled = 0

    def add(self, op):
        self.counts[op] = self.counts.get(op, 0) + 1

    @property
    def total(self):
        return sum(self.counts.values())


stats = CallStats()


async def call(
    method,
    /,
    *,
    timeout=60.0,
    throttle_timeout=300.0,
    on_throttle=None,
    **kwargs,
):
    """Run ``method(**kwargs)`` (a bound boto3 client method) in a thread.

    Every attempt is bounded by ``timeout``. Throttling that survived
    botocore's own retries is retried here with full-jitter backoff for up
    to ``throttle_timeout`` seconds; ``on_throttle(delay)`` is called before
    each such wait (for a progress message). Other errors are raised as is.
    """
    loop = asyncio.get_running_loop()
    op = getattr(method, "__name__", "call")
    deadline = time.monotonic() + throttle_timeout
    attempt = 0
    while True:
        stats.add(op)
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(_pool(), functools.partial(method, **kwargs)), timeout=timeout
            )
        except Exception as e:
            if not is_throttling(e):
                raise
            stats.throttled += 1
            delay = backoff_delay(attempt, base=1.0, cap=10.0)
            attempt += 1
            if time.monotonic() + delay > deadline:
                raise
            if on_throttle is not None:
                on_throttle(delay)
            await asyncio.sleep(delay)


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
        8,
        help="""botocore *standard* retry mode attempts per call (throttling, 5xx).""",
    ).tag(config=True)

    call_timeout = Float(60.0, help="""Seconds for one AWS API call (each attempt).""").tag(config=True)

    throttle_timeout = Float(
        300.0,
        help="""Seconds to keep retrying a throttled call (with jitter) before failing.""",
    ).tag(config=True)

    def aws_client(self, service, max_attempts=None):
        return client(
            service,
            self.region,
            self.endpoint_url or None,
            max_attempts or self.max_attempts,
            read_timeout=self.call_timeout,
        )

    async def aws(self, service, op, _retries=None, **kwargs):
        """``await self.aws("ec2", "describe_volumes", VolumeIds=[...])``.

        ``_retries`` overrides botocore's attempts for this call (1: only ours).
        Only calls listed in ``jupyter_ds_compute.aws.iam.HUB_ACTIONS`` (from
        which the hub's IAM policy is generated) may be made.
        """
        if not iam.is_declared(service, op):
            raise RuntimeError(
                f"AWS call {service}.{op} is not in jupyter_ds_compute.aws.iam.HUB_ACTIONS: "
                "add it there, so the hub's generated IAM policy allows it"
            )
        method = getattr(self.aws_client(service, _retries), op)
        on_throttle = None
        emit = getattr(self, "emit", None)
        if emit is not None:

            def on_throttle(delay):
                emit(f"AWS is throttling {op} (RequestLimitExceeded); retrying in {delay:.1f}s")

        return await call(
            method,
            timeout=self.call_timeout,
            throttle_timeout=self.throttle_timeout,
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
