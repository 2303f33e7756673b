"""Inside a Slurm job: pick a free port, report it, exec the server.

    python -m jupyter_ds_compute.backends.slurm_launch --port-dir DIR --ip 0.0.0.0 -- CMD...

The port is known only on the node, so the job tells the hub through a file
``DIR/job-<SLURM_JOB_ID>.port`` in the server's spool directory on the shared
file system (the hub takes the *host* from Slurm itself, never from the
job).  This replaces batchspawner's ``batchspawner-singleuser``, which
reports the port through a hub API handler that ``setattr``s any key a
server posts onto its spawner.

Standard library only: it runs on the compute node before the server.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from urllib.parse import urlparse, urlunparse


def free_port(ip):
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="slurm_launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port-dir", required=True)
    parser.add_argument("--ip", default="0.0.0.0")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command")
    port = free_port(args.ip)
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:0/"))
    host = f"[{args.ip}]" if ":" in args.ip else args.ip
    os.environ["JUPYTERHUB_SERVICE_URL"] = urlunparse(url._replace(netloc=f"{host}:{port}"))
    job = os.environ.get("SLURM_JOB_ID", "0")
    path = os.path.join(args.port_dir, f"job-{job}.port")
    with open(path + ".tmp", "w") as f:
        f.write(f"{port}\n")
    os.replace(path + ".tmp", path)
    print(
        f"[ds-compute] job {job} on {socket.gethostname()}: server port {port}", file=sys.stderr, flush=True
    )
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
