"""The prepared machine of the local backend: a process that becomes the server.

``LocalBackend.prepare_ahead`` starts ``python -m
jupyter_ds_compute.backends.launcher`` as the user, in the target tier's
cgroup, while the old server still serves. It imports what the server
would import (``--preload``), says ``ready`` on its status pipe, then waits
on stdin for the start: one JSON object ``{"argv", "env", "cwd"}``, written
by the hub at the cut-over (the server's token travels only through this
pipe). It then becomes the server: the environment and working directory
are replaced and the server script (``--script``, e.g.
``jupyterhub-singleuser``) runs in this process with the modules already
imported. If ``argv`` names another program, or a variable that is read at
import time differs from the one it was prepared with (``PYTHON*``,
``LD_*``, ``JUPYTERHUB_SINGLEUSER_*``), it ``exec``s the command instead
(slower, never wrong).

Its ``/proc/<pid>/environ`` is rewritten to the server's environment at the
start (:func:`rewrite_proc_environ`), so the hub's checks that read it see
the server as any other.

It exits by itself when nobody starts it: after ``--timeout`` seconds, or at
once when stdin is closed without a start (the hub stopped or released
it), so a prepared machine never outlives the hub.

Runs in the server's Python (stdlib only until the preload).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import runpy
import select
import shutil
import sys
import time

#: variables read at import time: a start with other values than the launcher had is exec'd
IMPORT_TIME_PREFIXES = ("PYTHON", "LD_", "JUPYTERHUB_SINGLEUSER_")


def import_env(env) -> dict:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES)}


#: variables the hub adds to a launcher's first environment so that the block is big
#: enough to hold the server's real one later (see :func:`rewrite_proc_environ`)
RESERVE_PREFIX = "DS_COMPUTE_ENV_RESERVE_"


def env_reserve() -> dict:
    """The variables that make a launcher's first environment block large enough
    (4 x 32 KiB, each below Linux's 128 KiB per string) for the server's real one."""
    return {f"{RESERVE_PREFIX}{i}": "0" * 32768 for i in range(4)}


def rewrite_proc_environ(env) -> bool:
    """Put ``env`` into this process's original environment block, so that
    ``/proc/<pid>/environ`` (read by the hub's leftover and volume checks and by
    ``ps e``) shows the server's real environment, not the launcher's first one.

    The block is the memory the kernel reports as ``env_start``..``env_end`` in
    ``/proc/self/stat``; the hub made it large with ``DS_COMPUTE_ENV_RESERVE_*``.
    libc's ``environ`` is emptied first (``os.environ.clear()``), so nothing
    points into the block while it is overwritten; the caller then sets ``env``
    again. False (nothing changed) when ``env`` does not fit.
    """
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # fields 50 and 51 (env_start, env_end)
    except (OSError, IndexError, ValueError):
        return False
    data = b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in env.items())
    if not start or len(data) > end - start:
        return False
    os.environ.clear()
    ctypes.memmove(start, data + b"\0" * (end - start - len(data)), end - start)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="jupyter_ds_compute.backends.launcher")
    parser.add_argument("--script", required=True, help="the server's Python script (absolute path)")
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--preload", default="", help="comma-separated modules to import ahead")
    args = parser.parse_args(argv)

    # ``python -m`` put the working directory (the user's volume) first on
    # sys.path; the script would have had its own directory there
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = os.path.dirname(args.script)

    t0 = time.monotonic()
    failed = []
    for name in filter(None, (m.strip() for m in args.preload.split(","))):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                failed.append(f"{name}: {type(e).__name__}: {e}")  # a dependency of it is missing
            # else: not installed here, nothing to load ahead
        except Exception as e:  # the server itself will say what is wrong
            failed.append(f"{name}: {type(e).__name__}: {e}")
    with os.fdopen(args.status_fd, "w") as status:
        status.write(json.dumps({"ready": True, "seconds": time.monotonic() - t0, "failed": failed}) + "\n")

    ready, _, _ = select.select([0], [], [], args.timeout)
    if not ready:
        print(f"ds-compute launcher: not started within {args.timeout:.0f}s; exiting", flush=True)
        return 0
    data = b""
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        data += chunk
    if not data:
        return 0  # released, or the hub is gone
    start = json.loads(data)
    argv, env, cwd = list(start["argv"]), dict(start["env"]), start["cwd"]
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.chdir(cwd)
    program = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
    same_program = os.path.realpath(program) == os.path.realpath(args.script)
    if not same_program or import_env(env) != import_env(os.environ):
        os.execvpe(argv[0], argv, env)
    if not rewrite_proc_environ(env):
        os.execvpe(argv[0], argv, env)  # does not fit the reserved block: start it fresh
    os.environ.update(env)
    sys.argv = [program, *argv[1:]]
    runpy.run_path(args.script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
