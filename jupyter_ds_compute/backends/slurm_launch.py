r"""Inside a Slurm job: pick a free port, report it, exec the server.

    python -m jupyter_ds_compute.backends.slurm_launch --port-dir DIR --ip 0.0.0.0 -- CMD...

The port is known only on the node, so the job tells the hub through a file
``DIR/job-<SLURM_JOB_ID>.port`` in the server's spool directory on the shared
file system (the hub takes the *host* from Slurm itself, never from the
job).  This replaces batchspawner's ``batchspawner-singleuser``, which
reports the port through a hub API handler that ``setattr``s any key a
server posts onto its spawner.

    python -m jupyter_ds_compute.backends.slurm_launch --wait-start --timeout S --ip 0.0.0.0

A job prepared ahead for a switch (make before break) starts this way: the
spool directory comes from ``$DS_COMPUTE_SLURM_DIR`` (the script names no
user). With ``--script S --preload MODS`` it first imports the server's
modules (as the local backend's :mod:`.launcher` does), so that at the start
the server script ``S`` runs in this process with them already imported
(unless the start names another program or changes a variable read at
import time: then it is ``exec``\ d). It says it waits
(``DIR/job-<id>.waiting``: JSON with the preload's seconds), then waits for the hub
to write ``DIR/job-<id>.start``: JSON ``{"argv", "env", "exported", "cwd"}``,
0600, renamed into place. It reads it (data, never run by a shell), deletes
it, and starts ``argv`` as above with ``env`` as the environment, keeping
what the job itself set (Slurm's variables such as ``SLURM_JOB_ID`` and
``CUDA_VISIBLE_DEVICES``, and what the prologue changed: every variable
whose value differs from ``exported``, what sbatch exported at prepare
time). Nobody starts it within ``--timeout`` seconds: it exits (status 0).

Standard library only (and :func:`.launcher.import_env`) until the preload: it runs on the
compute node before the server.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import runpy
import shutil
import socket
import sys
import time
from urllib.parse import urlparse, urlunparse

from .launcher import import_env, rewrite_proc_environ


def free_port(ip):
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _put(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def preload(script, modules):
    """Import ``modules`` as the server script ``script`` would; ``(seconds, failures)``."""
    # ``python -m`` put the working directory (the user's volume) first on
    # sys.path; the script would have had its own directory there
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = os.path.dirname(script)
    t0 = time.monotonic()
    failed = []
    for name in filter(None, (m.strip() for m in modules.split(","))):
        try:
            importlib.import_module(name)
        except Exception as e:  # the server itself will say what is wrong
            failed.append(f"{name}: {type(e).__name__}: {e}")
    return time.monotonic() - t0, failed


def wait_start(port_dir, job, timeout, interval=0.1, status=None):
    """The start the hub writes for prepared job ``job`` (deleted once read), or None after ``timeout``."""
    path = os.path.join(port_dir, f"job-{job}.start")
    _put(os.path.join(port_dir, f"job-{job}.waiting"), json.dumps(dict(status or {}, pid=os.getpid())) + "\n")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                return None
            time.sleep(interval)
            continue
        with os.fdopen(fd, "rb") as f:
            start = json.loads(f.read())
        os.unlink(path)  # the server's token stays on disk no longer than needed
        return start


def start_env(start, current):
    """The server's environment: the start's, plus what the job set itself
    (every variable of ``current`` whose value is not what sbatch exported)."""
    exported = start.get("exported") or {}
    env = {str(k): str(v) for k, v in (start.get("env") or {}).items()}
    env.update({k: v for k, v in current.items() if exported.get(k) != v})
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(prog="slurm_launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port-dir", default=os.environ.get("DS_COMPUTE_SLURM_DIR"))
    parser.add_argument("--ip", default="0.0.0.0")
    parser.add_argument("--wait-start", action="store_true", help="a prepared job: wait for the start file")
    parser.add_argument("--timeout", type=float, default=900, help="seconds --wait-start waits")
    parser.add_argument("--script", help="--wait-start: the server's Python script, run in this process")
    parser.add_argument("--preload", default="", help="--wait-start: comma-separated modules to import ahead")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not args.port_dir:
        parser.error("no --port-dir (nor $DS_COMPUTE_SLURM_DIR)")
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    job = os.environ.get("SLURM_JOB_ID", "0")
    in_process = False
    if args.wait_start:
        status = {}
        if args.script:
            seconds, failed = preload(args.script, args.preload)
            status = {"seconds": round(seconds, 3), "failed": failed}
        loaded = import_env(os.environ)
        start = wait_start(args.port_dir, job, args.timeout, status=status)
        try:
            os.unlink(os.path.join(args.port_dir, f"job-{job}.waiting"))
        except OSError:
            pass
        if start is None:
            print(f"[ds-compute] job {job}: not started within {args.timeout:.0f}s; exiting", file=sys.stderr)
            return 0
        env = start_env(start, os.environ)
        os.environ.clear()
        os.environ.update(env)
        cmd = [str(a) for a in start["argv"]]
        if start.get("cwd"):
            os.chdir(start["cwd"])
        if args.script and cmd:
            program = shutil.which(cmd[0], path=env.get("PATH")) or cmd[0]
            in_process = os.path.realpath(program) == os.path.realpath(args.script)
            in_process = in_process and import_env(env) == loaded
    if not cmd:
        parser.error("no command")
    port = free_port(args.ip)
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:0/"))
    host = f"[{args.ip}]" if ":" in args.ip else args.ip
    os.environ["JUPYTERHUB_SERVICE_URL"] = urlunparse(url._replace(netloc=f"{host}:{port}"))
    _put(os.path.join(args.port_dir, f"job-{job}.port"), f"{port}\n")
    print(
        f"[ds-compute] job {job} on {socket.gethostname()}: server port {port}", file=sys.stderr, flush=True
    )
    if in_process:
        # /proc/<pid>/environ shows the server's environment, not the job's first one
        env_now = dict(os.environ)
        in_process = rewrite_proc_environ(env_now)
        os.environ.update(env_now)
    if in_process:
        # the server script in this process, its modules already imported
        sys.argv = [args.script, *cmd[1:]]
        runpy.run_path(args.script, run_name="__main__")
        return 0
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
