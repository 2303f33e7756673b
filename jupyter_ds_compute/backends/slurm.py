r"""Backend ``slurm``: each server is a Slurm batch job.

Tiers map onto what a Slurm operator configures anyway: a tier's
``extra["slurm"]`` names its ``partition``, ``time`` limit, ``account``,
``qos``, ``reservation``, ``constraint``, ``gres`` and extra ``sbatch_lines``;
``cpu``, ``mem`` and ``gpu`` become ``--cpus-per-task``, ``--mem`` and
``--gres=gpu:N``.  ``c.SlurmBackend.*`` holds the operator-wide defaults::

    c.DSComputeSpawner.backend = "slurm"
    c.DSComputeSpawner.profile_list = [
        {"slug": "small", "cpu": 1, "mem": "2G",
         "extra": {"slurm": {"partition": "small", "time": "8:00:00"}}},
        {"slug": "gpu", "cpu": 4, "mem": "16G", "gpu": 1,
         "extra": {"slurm": {"partition": "gpu", "qos": "gpu",
                             "sbatch_lines": ["#SBATCH --exclusive=user"]}}},
    ]

What it takes from batchspawner (``pip install jupyter-ds-compute[slurm]``):
the ``SlurmSpawner``'s reading of Slurm, i.e. its job-state rules
(``state_pending_re``, ``state_running_re``, ``state_unknown_re``, still
configurable as ``c.SlurmSpawner.state_*``) and its job-id parser, so a
server is pending, running or gone exactly when batchspawner says so.  What
it does not take, on purpose:

- ``submit_batch_script``, which merges ``user_options`` into the template
  variables (a user could set ``partition``, ``options`` or the command) and
  runs a shell string behind ``sudo``. Here the script comes from one template
  file that receives only operator config and ``shlex.quote``d values,
  resources go on sbatch's argv, and sbatch runs as the user through
  ``setuid`` (argv, no shell).  The spawner has already refused any
  ``user_options`` key that is not a tier or one of its options.
- one ``squeue`` per server per poll: :mod:`.squeue` polls every job of the
  hub with one call per interval.
- the ``/hub/api/batchspawner`` port report (a handler that ``setattr``s any
  posted key on the spawner): the job writes its port into the server's
  spool directory (:mod:`.slurm_launch`) and the hub takes the host from
  Slurm's own ``BatchHost``.

A start first cancels the jobs an earlier start of the same hub user and
server left queued or running when the hub lost track of them (the hub was
killed between ``sbatch`` and saving its state): one ``squeue`` by job name
(injective per user and server, :func:`jupyter_ds_compute.names.safe_name`)
and submitting account; every such job but the one the state names is
``scancel``\ ed. The hub calls ``start`` only for a server it believes
stopped, so nothing found then is a server it tracks.

Make before break (:meth:`SlurmBackend.prepare_ahead`): a switch submits
the target job while the old server still serves. Its script is the same
template, but the launcher (:mod:`.slurm_launch` ``--wait-start``) waits for
the start instead of starting the server; the job name, argv and template
rules are those of a start, and the script carries no per-user value (the
spool directory travels in the job's environment). At the cut-over
:meth:`~SlurmBackend.start` writes the start (argv, environment with the
server's token, working directory) to ``job-<id>.start`` in the server's
spool directory: 0600, owned by the user, in their 0700 directory, written
under a temporary name and renamed (:func:`write_start_file`); the launcher
reads it as JSON (never sourced by a shell), deletes it and ``exec``\ s the
server with that environment (Slurm's own variables, and what the
``prologue`` changed, kept). A waiting job nobody starts exits by itself
after :attr:`SlurmBackend.prepared_timeout` (the spawner ``scancel``\ s it
first when the switch fails or does not take it).

Volumes: the local volume driver's directory mode, on a path every node
sees (``c.LocalVolume.root`` on the shared file system); so must be
:attr:`SlurmBackend.spool_dir`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import pwd
import re
import secrets
import shlex
import string
import subprocess
import sys
from collections import deque

from jupyterhub.utils import exponential_backoff
from traitlets import Bool, CaselessStrEnum, Float, List, Unicode, default

from .. import names
from . import launcher
from .base import Backend, BackendError, HostInfo, PrepareUnsupported
from .local import LocalBackend, SystemAccountMixin, _python_script, unreachable_dir
from .squeue import FORMAT, SqueuePoller, SqueueUnavailable, parse

TEMPLATE = os.path.join(os.path.dirname(__file__), "slurm_job.sh")

#: keys a tier may set under ``extra["slurm"]``
TIER_KEYS = ("partition", "time", "account", "qos", "reservation", "constraint", "gres", "sbatch_lines")
#: one Slurm word: partition, QoS, account, time, gres, constraint expressions
_WORD = re.compile(r"^[A-Za-z0-9_.:,+=@%/&|!\[\]*-]+$")
#: states after which the job will not run again (squeue's long names)
ENDED = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
}  # fmt: skip
WHY = {
    "TIMEOUT": "it reached its time limit",
    "PREEMPTED": "it was preempted",
    "NODE_FAIL": "its node failed",
    "CANCELLED": "it was cancelled (scancel)",
    "OUT_OF_MEMORY": "it ran out of memory",
    "FAILED": "it failed",
    "COMPLETED": "the server exited",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "it reached its deadline",
}


def write_start_file(workdir, job_id, start, uid=None, gid=None):
    """Write ``start`` (JSON-able) to ``<workdir>/job-<job_id>.start`` for the job's launcher.

    Only its owner can read it (0600, ``uid``/``gid`` when the hub writes for
    another account); written under a random temporary name (``O_EXCL``,
    ``O_NOFOLLOW``, relative to the directory opened without following a
    link: the directory belongs to the user) and renamed, so the launcher
    never reads half a start. Blocking (a shared file system): call it in a
    thread. Returns the path.
    """
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", str(job_id)):
        raise ValueError(f"not a Slurm job id: {job_id!r}")
    name = f"job-{job_id}.start"
    tmp = f".{name}.{secrets.token_hex(8)}"
    data = json.dumps(start).encode()
    dfd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
        try:
            try:
                if uid is not None:
                    os.fchown(fd, uid, gid if gid is not None else -1)
                os.fchmod(fd, 0o600)  # whatever the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)
    return os.path.join(workdir, name)


def _batchspawner():
    try:
        import batchspawner
    except ImportError as e:
        raise ImportError(
            "The slurm backend needs batchspawner: pip install jupyter-ds-compute[slurm]"
        ) from e
    return batchspawner


class SlurmBackend(SystemAccountMixin, Backend):
    """Run ``jupyterhub-singleuser`` as a Slurm batch job on the tier's partition."""

    name = "slurm"

    # -- operator-wide defaults (a tier's extra["slurm"] overrides them) ----------

    partition = Unicode(
        "",
        help="""
        Partition for tiers that name none (empty: the cluster's default).

        Example::

            c.SlurmBackend.partition = "interactive"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    time = Unicode("", help="""Default ``--time`` limit, e.g. ``"8:00:00"`` (empty: the partition's).""").tag(
        config=True
    )
    account = Unicode("", help="""Default ``--account``.""").tag(config=True)
    qos = Unicode("", help="""Default ``--qos``.""").tag(config=True)
    reservation = Unicode("", help="""Default ``--reservation``.""").tag(config=True)
    constraint = Unicode("", help="""Default ``--constraint`` (node features).""").tag(config=True)

    gres_name = Unicode(
        "gpu",
        help="""GRES name for a tier's ``gpu`` count: ``--gres={gres_name}:{gpu}``. A tier's ``gres`` replaces it.""",
    ).tag(config=True)

    sbatch_lines = List(
        Unicode(),
        help="""
        Extra ``#SBATCH`` lines for every job (a tier's ``sbatch_lines`` come after).

        Example::

            c.SlurmBackend.sbatch_lines = ["#SBATCH --exclusive=user", "#SBATCH --signal=B:TERM@60"]

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    prologue = Unicode(
        "",
        help="""
        Shell lines run in the job before the server (operator config, not
        quoted), e.g. ``module load cuda``.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    launcher_preload = List(
        Unicode(),
        help="""
        Modules a job prepared for a switch imports while it waits for its start
        (the old server still serving), so that at the cut-over the server
        starts with them imported. Used when the server command is a Python
        script of :attr:`python`'s interpreter. Default: the local backend's
        list (``c.LocalBackend.launcher_preload``'s default).

        Example::

            c.SlurmBackend.launcher_preload = ["jupyterhub.singleuser", "jupyterlab", "my_server_ext"]

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    @default("launcher_preload")
    def _default_launcher_preload(self):
        return list(LocalBackend.class_traits()["launcher_preload"].default())

    # -- where and how -----------------------------------------------------------------

    spool_dir = Unicode(
        help="""
        Directory on the shared file system (seen by the hub and every node)
        for each server's Slurm output and port file
        (``<spool_dir>/<user>--<server>/``). Default: ``ds-compute-slurm`` in
        the hub's working directory.

        Example::

            c.SlurmBackend.spool_dir = "/shared/jupyterhub/slurm"

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("spool_dir")
    def _default_spool_dir(self):
        return os.path.abspath("ds-compute-slurm")

    script_template = Unicode(
        TEMPLATE,
        help="""
        The job script template (``string.Template``: ``$sbatch_lines``,
        ``$prologue``, ``$launch``). Default: the one shipped in the package.
        """,
    ).tag(config=True)

    server_ip = Unicode("0.0.0.0", help="""Address the server listens on, on its node.""").tag(config=True)

    node_address = Unicode(
        "{node}",
        help="""
        How the hub reaches a node: a format string of Slurm's node name
        (``BatchHost``), e.g. ``"{node}.ib.cluster"``.

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    python = Unicode(
        help="""Python on the nodes that runs the launcher (default: the hub's own, as for ``cmd``).""",
    ).tag(config=True)

    @default("python")
    def _default_python(self):
        return sys.executable

    sbatch = List(Unicode(), ["sbatch"], help="""The sbatch command (argv).""").tag(config=True)
    scancel = List(Unicode(), ["scancel"], help="""The scancel command (argv).""").tag(config=True)
    squeue = List(
        Unicode(), ["squeue"], help="""The squeue command (argv); one call polls every server."""
    ).tag(config=True)

    squeue_interval = Float(
        15.0,
        help="""
        Seconds a ``squeue`` answer is reused by every server's poll. The hub
        then runs at most about 60 / interval ``squeue`` a minute, whatever
        the number of servers (batchspawner: one per server per poll).

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    squeue_jitter = Float(0.2, help="""Random +/- fraction of :attr:`squeue_interval`.""").tag(config=True)

    startup_poll_interval = Float(
        0.5, help="""Seconds between checks of a starting job (shared by all starting servers)."""
    ).tag(config=True)

    command_timeout = Float(30.0, help="""Seconds before sbatch, scancel or squeue count as failed.""").tag(
        config=True
    )

    stop_timeout = Float(30.0, help="""Seconds ``stop`` waits for Slurm to end the job.""").tag(config=True)

    prepared_timeout = Float(
        900,
        help="""
        Seconds a job prepared for a switch (make before break) waits for its
        start once it runs, before it exits by itself: a backstop, the spawner
        ``scancel``\\ s an unused one after the switch's ``prepare_timeout``.
        ``0``: do not prepare ahead (switches stop the old server first).

        Example::

            c.SlurmBackend.prepared_timeout = 1200

        .. versionadded:: 0.2
        """,
    ).tag(config=True)

    run_as = CaselessStrEnum(
        ["auto", "system", "hub"],
        "auto",
        help="""
        Who submits (and so owns) the job: ``auto`` is the user's system
        account when the hub runs as root, else the hub's own account.
        Which account, and which are never used, is ``c.SystemAccounts.*``
        (the same policy as the local backend).
        """,
    ).tag(config=True)

    create_system_users = Bool(
        False,
        help="""
        Create a missing system account on the hub's machine (one-node test
        clusters; on a real cluster accounts come from the directory service):
        the same as ``c.SystemAccounts.create = True``.
        """,
    ).tag(config=True)

    # -- state ---------------------------------------------------------------------------
    job_id = ""
    host = ""
    port = 0
    workdir = ""

    def __init__(self, spawner, **kwargs):
        super().__init__(spawner, **kwargs)
        self._job = None
        self._ended_logged = False
        #: a prepared job (make before break): what sbatch exported to it, until its start
        self._exported = None
        #: the sbatch of :meth:`prepare_ahead` while it runs (a release waits for its job id)
        self._submitting = None

    # -- helpers -------------------------------------------------------------------------

    @property
    def poller(self):
        return SqueuePoller.shared(
            self.squeue,
            interval=self.squeue_interval,
            jitter=self.squeue_jitter,
            timeout=self.command_timeout,
        )

    @property
    def job(self):
        """batchspawner's SlurmSpawner, used for its reading of Slurm only."""
        if self._job is None:
            self._job = _batchspawner().SlurmSpawner(config=self.config, log=self.log)
        return self._job

    @property
    def as_system_user(self):
        if self.run_as == "hub":
            return False
        if self.run_as == "system" and os.geteuid() != 0:
            raise BackendError("c.SlurmBackend.run_as = 'system' needs the hub to run as root")
        return os.geteuid() == 0

    async def owner(self):
        """``(uid, gid)`` the job and its volume belong to (a checked account:
        jobs run as it, so the hub must know it, e.g. from the directory service)."""
        if self.as_system_user:
            acct = await self.system_account()
            return acct.uid, acct.gid
        return os.getuid(), os.getgid()

    def _preexec(self):
        if not self.as_system_user:
            return None
        acct = self.system_account_now()
        uid, gid, groups = acct.uid, acct.gid, list(acct.groups)
        if uid == 0 or gid == 0 or 0 in groups:  # the policy refuses these; never, whatever it says
            raise BackendError(f"Refusing to submit {self.log_name}'s job as root")

        def drop():
            os.setgid(gid)
            os.setgroups(groups)
            os.setuid(uid)

        return drop

    async def _run(self, argv, input=None, env=None):
        self.log.info("Running %s for %s", " ".join(shlex.quote(a) for a in argv), self.log_name)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd="/",
                preexec_fn=self._preexec(),
            )
            out, err = await asyncio.wait_for(
                proc.communicate(input.encode() if input is not None else None), self.command_timeout
            )
        except asyncio.TimeoutError:
            proc.kill()
            raise BackendError(f"{argv[0]} did not answer within {self.command_timeout:g}s") from None
        except OSError as e:
            raise BackendError(f"Could not run {argv[0]}: {e}") from None
        return proc.returncode, out.decode(errors="replace").strip(), err.decode(errors="replace").strip()

    # -- the submission (pure: operator config + tier -> argv, script) ----------------

    def settings(self, tier):
        """The tier's Slurm settings over the operator defaults; validated."""
        own = tier.extra.get("slurm") or {}
        if not isinstance(own, dict):
            raise BackendError(f"Tier {tier.slug!r}: extra.slurm must be a dict (hub config); ask an admin")
        unknown = sorted(set(own) - set(TIER_KEYS))
        if unknown:
            raise BackendError(
                f"Tier {tier.slug!r}: unknown extra.slurm key(s) {', '.join(unknown)} "
                f"(known: {', '.join(TIER_KEYS)}); ask an admin"
            )
        merged = {key: own.get(key, getattr(self, key, "")) for key in TIER_KEYS if key != "sbatch_lines"}
        for key, value in merged.items():
            if value in ("", None):
                continue
            if not isinstance(value, str) or not _WORD.match(value):
                raise BackendError(
                    f"Tier {tier.slug!r}: extra.slurm.{key} {value!r} is not a Slurm value; ask an admin"
                )
        lines = list(self.sbatch_lines) + list(own.get("sbatch_lines") or [])
        for line in lines:
            if not isinstance(line, str) or not line.startswith("#SBATCH ") or "\n" in line or "\r" in line:
                raise BackendError(f"Tier {tier.slug!r}: sbatch line {line!r} must be one '#SBATCH ...' line")
        merged["sbatch_lines"] = lines
        return merged

    def job_name(self):
        """The job name of this hub user's server: injective (``names.safe_name``)."""
        return f"ds-compute-{names.safe_name(self.spawner.user.name, self.spawner.name or '')}"

    def sbatch_argv(self, tier, workdir, chdir):
        """sbatch's command line: every resource as its own argv element."""
        s = self.settings(tier)
        argv = [
            *self.sbatch,
            "--parsable",
            f"--job-name={self.job_name()}",
            f"--output={os.path.join(workdir, 'slurm-%j.log')}",
            f"--chdir={chdir}",
            "--export=ALL",
            "--nodes=1",
            "--ntasks=1",
        ]
        # a tier without cpu/mem (None) leaves them to the partition's defaults
        if tier.cpu is not None:
            argv.append(f"--cpus-per-task={max(1, math.ceil(tier.cpu))}")
        if tier.mem is not None:
            argv.append(f"--mem={max(1, math.ceil(tier.mem / 2**20))}M")
        gres = s["gres"] or (f"{self.gres_name}:{tier.gpu}" if tier.gpu else "")
        if gres:
            argv.append(f"--gres={gres}")
        for key in ("partition", "time", "account", "qos", "reservation", "constraint"):
            if s[key]:
                argv.append(f"--{key}={s[key]}")
        return argv

    def job_summary(self, tier):
        """``partition gpu, 4 CPUs, 16384M, gpu:1, time 4:00:00`` for progress messages."""
        s = self.settings(tier)
        parts = [f"partition {s['partition'] or '(default)'}"]
        parts += [f"{max(1, math.ceil(tier.cpu))} CPUs"] if tier.cpu is not None else []
        parts += [f"{max(1, math.ceil(tier.mem / 2**20))}M memory"] if tier.mem is not None else []
        gres = s["gres"] or (f"{self.gres_name}:{tier.gpu}" if tier.gpu else "")
        parts += [gres] if gres else []
        parts += [f"{key} {s[key]}" for key in ("time", "account", "qos") if s[key]]
        return ", ".join(parts)

    def script(self, tier, cmd, workdir):
        """The job script: operator config and quoted values only."""
        launch = [self.python, "-m", "jupyter_ds_compute.backends.slurm_launch", "--port-dir", workdir,
                  "--ip", self.server_ip, "--", *cmd]  # fmt: skip
        return self._render(tier, launch)

    def prepared_script(self, tier, cmd=(), path=""):
        """The script of a job prepared ahead: its launcher waits for the start
        (:mod:`.slurm_launch` ``--wait-start``). Operator config only, the same
        for every user: the spool directory comes in the job's environment.
        When the server command ``cmd`` (found on ``path``) is a Python script
        of :attr:`python`, the launcher preloads its modules and runs it."""
        launch = [self.python, "-m", "jupyter_ds_compute.backends.slurm_launch", "--wait-start",
                  "--timeout", f"{self.prepared_timeout:g}", "--ip", self.server_ip]  # fmt: skip
        script = _python_script(cmd[0], path) if cmd and self.launcher_preload else None
        if script is not None and os.path.realpath(script[0]) == os.path.realpath(self.python):
            launch += ["--script", script[1], "--preload", ",".join(self.launcher_preload)]
        return self._render(tier, launch)

    def _render(self, tier, launch):
        s = self.settings(tier)
        with open(self.script_template) as f:
            template = string.Template(f.read())
        return template.substitute(
            sbatch_lines="\n".join(s["sbatch_lines"]),
            prologue=self.prologue,
            launch=" ".join(shlex.quote(a) for a in launch),
        )

    @staticmethod
    def job_env(env):
        """The server's env for sbatch (``--export=ALL``): nothing sbatch reads as options."""
        clean = {k: v for k, v in env.items() if not k.startswith(("SBATCH_", "SLURM_"))}
        if "SLURM_CONF" in os.environ:
            clean["SLURM_CONF"] = os.environ["SLURM_CONF"]
        return clean

    # -- Backend interface ---------------------------------------------------------------

    async def prepare(self, tier):
        s = self.settings(tier)  # refuse broken operator config before anything happens
        return HostInfo(kind="shared-fs", id=f"slurm:{s['partition'] or 'default'}")

    def bind(self):
        # the real host:port are known once the job runs; start() returns them
        return self.server_ip, 0

    def _workdir(self):
        return os.path.join(self.spool_dir, names.safe_name(self.spawner.user.name, self.spawner.name or ""))

    def _ensure_workdir(self):
        os.makedirs(self.spool_dir, mode=0o755, exist_ok=True)
        workdir = self._workdir()
        os.makedirs(workdir, mode=0o700, exist_ok=True)
        os.chmod(workdir, 0o700)  # the start file of a prepared job carries the server's token
        if self.as_system_user:
            acct = self.system_account_now()
            os.chown(workdir, acct.uid, acct.gid)
            blocked = unreachable_dir(workdir, acct.uid, [acct.gid])
            if blocked:
                raise BackendError(
                    f"The Slurm spool directory {workdir} is not reachable by {acct.name}: "
                    f"{blocked} does not let them through (c.SlurmBackend.spool_dir)."
                )
        return workdir

    async def _ready_paths(self, volume_path):
        """The spool directory made and both it and the volume reachable by the
        job's account; returns ``(account name, account or None)``."""
        acct = await self.system_account() if self.as_system_user else None
        self.workdir = self._ensure_workdir()
        if acct is not None:
            blocked = unreachable_dir(volume_path, acct.uid, list(acct.groups))
            if blocked:
                raise BackendError(
                    f"The volume {volume_path} is not reachable by {acct.name}: "
                    f"{blocked} does not let them through (c.LocalVolume.root must be traversable, o+x)."
                )
        return (acct.name if acct is not None else pwd.getpwuid(os.getuid()).pw_name), acct

    async def _submit(self, tier, argv, script, env):
        """sbatch as the user; sets :attr:`job_id` and tracks it."""
        self.log.debug("Job script for %s:\n%s", self.log_name, script)
        rc, out, err = await self._run(argv, input=script, env=env)
        if rc:
            raise BackendError(
                f"Slurm refused the job for tier {tier.display_name}: {err or out}",
                log_message=f"sbatch exit {rc} for {self.log_name}: {err} {out}",
            )
        try:
            self.job_id = self.job.parse_job_id(out)
        except Exception:
            raise BackendError(f"sbatch gave no job id: {out!r}") from None
        self._ended_logged = False
        self.poller.track(self.job_id)
        self.emit(f"Submitted Slurm job {self.job_id}: {self.job_summary(tier)}")

    async def start(self, tier, cmd, env, volume_path, keep_root=False):
        """Submit the server's job and wait for its port; on a backend prepared
        ahead (:meth:`prepare_ahead`), hand the start to the job already running."""
        if keep_root:
            raise BackendError(
                "The slurm backend cannot mount volume images: use c.LocalVolume.mode = 'directory'"
            )
        account, acct = await self._ready_paths(volume_path)
        prepared = self._exported is not None and self.job_id
        if not (prepared and await self._start_prepared(account, acct, cmd, env, volume_path)):
            await self._end_leftovers(account)
            argv = self.sbatch_argv(tier, self.workdir, volume_path)
            await self._submit(tier, argv, self.script(tier, cmd, self.workdir), self.job_env(env))
            self.host = await self._wait_running()
            self.port = await self._wait_port()
        address = self.node_address.format(node=self.host)
        self.emit(f"Job {self.job_id} running on {self.host}, server port {self.port}")
        return address, self.port

    # -- make before break: a job that waits for its start ---------------------------------

    prepares_ahead = True

    async def prepare_ahead(self, tier, cmd, env, volume_path, key):
        """Submit the target job now (same name, argv and template rules as a
        start); its launcher waits for the start file. Returns once the job
        runs and its launcher waits (Slurm's pending reason is reported meanwhile)."""
        if self.prepared_timeout <= 0:
            raise PrepareUnsupported("c.SlurmBackend.prepared_timeout = 0: jobs are not prepared ahead")
        self.settings(tier)  # a broken tier fails the switch before anything is submitted
        await self._ready_paths(volume_path)
        # not _end_leftovers: the old server's job has the same name and still serves
        env = dict(env, DS_COMPUTE_SERVER_KEY=key, DS_COMPUTE_SLURM_DIR=self.workdir)
        exported = self.job_env(env)
        # room in the job's environment block for the server's real one (launcher.rewrite_proc_environ)
        exported.update(launcher.env_reserve())
        argv = self.sbatch_argv(tier, self.workdir, volume_path)
        # shielded: a release while sbatch runs still learns the job id (stop() waits for it)
        script = self.prepared_script(tier, cmd, env.get("PATH") or os.environ.get("PATH", ""))
        self._submitting = asyncio.ensure_future(self._submit(tier, argv, script, exported))
        try:
            await asyncio.shield(self._submitting)
        finally:
            if self._submitting.done():
                self._submitting = None
        self._exported = exported
        self.host = await self._wait_running()
        self.emit(f"Job {self.job_id} running on {self.host}: loading the server ahead")
        waiting = await self._wait_file(f"job-{self.job_id}.waiting", "its launcher was ready")
        try:
            status = json.loads(waiting)
        except ValueError:
            status = {}
        for failure in status.get("failed") or []:
            self.log.warning(
                "Prepared job %s of %s could not preload %s", self.job_id, self.log_name, failure
            )
        loaded = f", server modules loaded in {status['seconds']:.1f}s" if "seconds" in status else ""
        self.emit(f"Job {self.job_id} ready on {self.host}{loaded}: the server starts there at the cut-over")
        # the node, for the switch's "ready on ..." (the start's prepare() names the partition again)
        return HostInfo(kind="shared-fs", id=self.host, extra={"job_id": self.job_id})

    async def _start_prepared(self, account, acct, cmd, env, volume_path):
        """Write the prepared job's start file and wait for its port; False if
        the job is gone (the start then submits a new one)."""
        exported, self._exported = self._exported, None
        info, kind, detail = await self._status(self.startup_poll_interval)
        if kind != "running":
            self.log.warning(
                "Prepared Slurm job %s of %s is %s (%s): submitting a new job",
                self.job_id,
                self.log_name,
                kind,
                detail,
            )
            await self.stop(now=True)
            return False
        if info is not None and info.host:
            self.host = info.host
        await self._end_leftovers(account)  # never the prepared job: it is self.job_id
        start = {"argv": list(cmd), "env": self.job_env(env), "exported": exported, "cwd": volume_path}
        await asyncio.to_thread(
            write_start_file,
            self.workdir,
            self.job_id,
            start,
            acct.uid if acct is not None else None,
            acct.gid if acct is not None else None,
        )
        self.log.info("Handed the start of %s to its prepared Slurm job %s", self.log_name, self.job_id)
        self.emit(f"Starting the server in the prepared Slurm job {self.job_id} on {self.host}")
        self.port = await self._wait_port()
        return True

    # -- leftovers of a start the hub lost ---------------------------------------------

    async def _queued_jobs(self, account):
        """``{job_id: JobInfo}`` of this server's jobs that Slurm has not ended:
        one ``squeue`` by job name and submitting account."""
        argv = [*self.squeue, "--noheader", f"--name={self.job_name()}", f"--user={account}",
                f"--format={FORMAT}"]  # fmt: skip
        rc, out, err = await self._run(argv)
        if rc:
            raise BackendError(
                "Slurm is not answering (squeue): cannot check for an earlier job of this server; "
                "try again in a minute.",
                log_message=f"squeue for leftovers of {self.log_name}: exit {rc} {err or out}",
            )
        return {j: info for j, info in parse(out).items() if info.state not in ENDED}

    async def _end_leftovers(self, account):
        """Cancel the jobs of this server that an earlier start left (see the module doc)."""
        found = await self._queued_jobs(account)
        ids = sorted(j for j, info in found.items() if j != self.job_id and info.state != "COMPLETING")
        if not ids:
            return
        self.log.warning(
            "Cancelling Slurm jobs %s (%s) of %s that an earlier start left without the hub knowing "
            "(the hub was stopped while starting it); one server per user and volume",
            ", ".join(ids),
            ", ".join(f"{j} {found[j].state}" for j in ids),
            self.log_name,
        )
        self.emit(f"Cancelling Slurm job(s) {', '.join(ids)} left by an interrupted start")
        rc, out, err = await self._run([*self.scancel, *ids])
        if rc and "Invalid job id" not in err and "already completing or completed" not in err:
            self.log.warning("scancel %s for %s: exit %s %s", " ".join(ids), self.log_name, rc, err or out)

        async def ended():
            left = await self._queued_jobs(account)
            return not any(j in left and left[j].state != "COMPLETING" for j in ids)

        try:
            message = f"Slurm jobs {', '.join(ids)} of {self.log_name} did not end"
            await exponential_backoff(ended, message, timeout=self.stop_timeout)
        except asyncio.TimeoutError:
            raise BackendError(
                f"An earlier Slurm job of this server ({', '.join(ids)}) is still running and could not "
                "be cancelled: not starting a second one on the same volume.",
                log_message=f"leftover jobs {ids} of {self.log_name} survived scancel ({self.stop_timeout}s)",
            ) from None

    async def _status(self, max_age=None):
        """(JobInfo or None, what batchspawner would call it)."""
        try:
            info = await self.poller.get(self.job_id, max_age=max_age)
        except SqueueUnavailable as e:
            return None, "unknown", str(e)
        if info is None:
            return None, "gone", "Slurm no longer knows the job"
        self.job.job_status = f"{info.state} {info.host}".strip()
        if info.state in ENDED:
            return info, "ended", self._why(info)
        if self.job.state_isrunning():
            return info, "running", ""
        if self.job.state_ispending():
            return info, "pending", info.reason
        return info, "other", info.state

    @staticmethod
    def _why(info):
        why = WHY.get(info.state, info.state.lower())
        if info.reason and info.reason not in ("None", "(null)"):
            why += f" ({info.reason})"
        return why

    async def _wait_running(self):
        shown = None
        while True:
            info, kind, detail = await self._status(self.startup_poll_interval)
            if kind == "running":
                return info.host
            if kind in ("ended", "gone"):
                tail = await self.log_tail()
                raise BackendError(
                    f"Slurm job {self.job_id} ended before the server started: {detail}. "
                    f"Last lines of its output:\n{tail}",
                    log_message=f"job {self.job_id} of {self.log_name} {detail}; output:\n{tail}",
                )
            message = {
                "pending": f"Job {self.job_id} pending"
                + (f" ({detail})" if detail not in ("", "None") else ""),
                "unknown": f"Job {self.job_id}: Slurm is not answering ({detail})",
            }.get(kind, f"Job {self.job_id} is {detail}")
            if message != shown:
                self.emit(message)
                shown = message
            await asyncio.sleep(self.startup_poll_interval)

    async def _wait_file(self, name, what):
        """The text of ``name`` in the spool directory once the job wrote it; fail if the job ends first."""
        path = os.path.join(self.workdir, name)
        while True:
            try:
                with open(path) as f:
                    return f.read()
            except FileNotFoundError:
                pass
            _, kind, detail = await self._status(self.startup_poll_interval)
            if kind in ("ended", "gone"):
                tail = await self.log_tail()
                raise BackendError(
                    f"Slurm job {self.job_id} ended before {what}: {detail}. "
                    f"Last lines of its output:\n{tail}",
                    log_message=f"job {self.job_id} of {self.log_name} ended before {what}: {detail}\n{tail}",
                )
            await asyncio.sleep(self.startup_poll_interval / 5)

    async def _wait_port(self):
        path = os.path.join(self.workdir, f"job-{self.job_id}.port")
        while True:
            try:
                with open(path) as f:
                    port = int(f.read().strip())
                if 0 < port < 65536:
                    return port
                raise ValueError(port)
            except FileNotFoundError:
                pass
            except ValueError:
                raise BackendError(f"Job {self.job_id} reported a bad port in {path}") from None
            _, kind, detail = await self._status(self.startup_poll_interval)
            if kind in ("ended", "gone"):
                tail = await self.log_tail()
                raise BackendError(
                    f"The server exited during start (Slurm job {self.job_id}: {detail}). "
                    f"Last lines of its log:\n{tail}",
                    log_message=f"job {self.job_id} of {self.log_name} ended during start: {detail}\n{tail}",
                )
            await asyncio.sleep(self.startup_poll_interval / 5)

    async def poll(self):
        if not self.job_id:
            return 0
        info, kind, detail = await self._status()
        if kind in ("running", "pending", "unknown", "other"):
            return None
        if not self._ended_logged:
            self._ended_logged = True
            self.log.warning(
                "Server %s stopped: Slurm job %s %s: %s",
                self.log_name,
                self.job_id,
                "ended" if kind == "ended" else "is gone",
                detail,
            )
            self.emit(f"Slurm job {self.job_id} ended: {detail}")
        return 0 if info is not None and info.state == "COMPLETED" else 1

    async def stop(self, now=False):
        if self._submitting is not None:
            # released while its sbatch ran: wait for the job id, then cancel that job
            try:
                await asyncio.wait_for(asyncio.shield(self._submitting), self.command_timeout + 5)
            except Exception:
                pass
            self._submitting = None
        self._exported = None
        if not self.job_id:
            return
        rc, out, err = await self._run([*self.scancel, self.job_id])
        if rc and "Invalid job id" not in err and "already completing or completed" not in err:
            self.log.warning("scancel %s for %s: exit %s %s", self.job_id, self.log_name, rc, err or out)
        if not now:
            deadline = asyncio.get_running_loop().time() + self.stop_timeout
            while asyncio.get_running_loop().time() < deadline:
                info, kind, _ = await self._status(self.startup_poll_interval)
                if kind in ("ended", "gone") or (info is not None and info.state == "COMPLETING"):
                    break
                await asyncio.sleep(self.startup_poll_interval)
            else:
                self.log.warning(
                    "Slurm job %s of %s did not end within %ss", self.job_id, self.log_name, self.stop_timeout
                )
        self.poller.untrack(self.job_id)
        self._remove_job_files()
        self.job_id, self.host, self.port = "", "", 0

    def _remove_job_files(self):
        """The job's port file, and what a prepared job left (its start file carries a token)."""
        if self.workdir and self.job_id:
            for suffix in ("port", "start", "waiting"):
                try:
                    os.unlink(os.path.join(self.workdir, f"job-{self.job_id}.{suffix}"))
                except OSError:
                    pass

    async def log_tail(self, lines=30):
        if not (self.workdir and self.job_id):
            return ""
        try:
            with open(os.path.join(self.workdir, f"slurm-{self.job_id}.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                tail = deque(f.read().decode(errors="replace").splitlines(), maxlen=lines)
        except OSError:
            return ""
        return "\n".join(tail)

    def get_state(self):
        if not self.job_id:
            return {}
        return {"job_id": self.job_id, "host": self.host, "port": self.port, "workdir": self.workdir}

    def load_state(self, state):
        self.job_id = str(state.get("job_id", ""))
        self.host = state.get("host", "")
        self.port = state.get("port", 0)
        self.workdir = state.get("workdir", "")
        if self.job_id:
            self.poller.track(self.job_id)
