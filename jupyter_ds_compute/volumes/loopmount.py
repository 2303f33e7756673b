"""Mount a volume image in a private mount namespace, then become the user
and exec the server.

Run by the local backend as root, under ``unshare --mount --propagation
private``, for ``LocalVolume.mode = "image"``::

    unshare --mount --propagation private -- python -m jupyter_ds_compute.volumes.loopmount \\
        --image IMG --target DIR --uid UID --gid GID -- jupyterhub-singleuser ...

The mount exists only in the server's namespace: no other process on the
machine sees it, and when the last process of the server ends, the kernel
unmounts it and frees the loop device — a crashed server cannot leave its
volume attached.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="loopmount", description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--groups", default="", help="comma-separated supplementary gids")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command after --")
    result = subprocess.run(
        ["mount", "-o", "loop,nosuid,nodev,noatime", "--", args.image, args.target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if result.returncode:
        print(
            f"ds-compute: could not mount volume image {args.image}: "
            f"{result.stdout.decode(errors='replace').strip()}",
            file=sys.stderr,
        )
        return 2
    groups = [int(g) for g in args.groups.split(",") if g]
    os.setgid(args.gid)
    os.setgroups(groups or [args.gid])
    os.setuid(args.uid)
    os.chdir(args.target)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
