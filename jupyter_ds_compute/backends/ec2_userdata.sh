#!/bin/bash
# jupyter-ds-compute EC2 bootstrap (user-data), rendered by backends/ec2.py.
#
# It carries NO secrets: the server's command and environment (with its hub
# API token) are fetched at boot from the SSM SecureString parameter
# <prefix><instance-id>, which this script deletes as soon as it has read it
# (the hub deletes it too at stop). Then it mounts the user's volume and runs
# the server as the configured uid/gid until it exits; its exit status and
# the tail of its log go to <prefix><instance-id>.exit for the hub. While it
# waits for the spec, <prefix><instance-id>.waiting says so (a switch prepares
# the instance ahead and hands the spec over at its cut-over). No spec within
# the timeout: the instance shuts itself down (terminated or stopped, as its
# InstanceInitiatedShutdownBehavior says), so nothing prepared outlives a hub.
#
# The machine image needs: bash, python3 with boto3, jupyterhub-singleuser
# (and jupyter-ds-compute for the server extension), util-linux (setpriv,
# mount, blkid), e2fsprogs; amazon-efs-utils for the efs volume driver.
# The instance profile needs ssm:GetParameter/DeleteParameter/PutParameter on
# parameter/<prefix>* (scope it to the instance with ${ec2:InstanceID}),
# and kms:Decrypt for the SSM key.
#
# Placeholders (@@ + NAME + @@) are replaced by shell-quoted values.
set -euo pipefail

export AWS_REGION=@@REGION@@
export AWS_DEFAULT_REGION=@@REGION@@
DS_SPEC_PREFIX=@@SPEC_PREFIX@@
DS_SPEC_TIMEOUT=@@SPEC_TIMEOUT@@
DS_PYTHON=@@PYTHON@@

log() { echo "[ds-compute-boot] $*" >&2; }

instance_id() {
    # IMDSv2; DS_COMPUTE_INSTANCE_ID stands in for it where there is no IMDS
    if [ -n "${DS_COMPUTE_INSTANCE_ID:-}" ]; then
        echo "$DS_COMPUTE_INSTANCE_ID"
        return
    fi
    local token
    token=$(curl -sf -X PUT http://169.254.169.254/latest/api/token \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
    curl -sf -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id
}

# ---- operator's extra lines (c.EC2Backend.user_data_extra) ----
@@EXTRA@@
# ----

export DS_INSTANCE_ID="$(instance_id)"
export DS_SPEC_PARAM="${DS_SPEC_PREFIX}${DS_INSTANCE_ID}"
export DS_SPEC_TIMEOUT
log "instance $DS_INSTANCE_ID: waiting for $DS_SPEC_PARAM"

exec "$DS_PYTHON" -u - <<'PYTHON'
import base64, json, os, signal, subprocess, sys, time, zlib
from collections import deque

import boto3

param = os.environ["DS_SPEC_PARAM"]
ssm = boto3.client("ssm")


def log(msg):
    print(f"[ds-compute-boot] {msg}", file=sys.stderr, flush=True)


def report_exit(status, tail):
    try:
        ssm.put_parameter(Name=param + ".exit", Type="String", Overwrite=True,
                          Value=json.dumps({"status": status, "tail": tail})[-4000:])
    except Exception as e:
        log(f"could not report exit: {e!r}")


# tell the hub we are up and waiting (a switch prepared this instance ahead and
# hands over the spec at its cut-over); gone again once the spec is read
try:
    ssm.put_parameter(Name=param + ".waiting", Type="String", Overwrite=True, Value=str(int(time.time())))
except Exception as e:
    log(f"could not say we wait: {e!r}")
deadline = time.monotonic() + float(os.environ["DS_SPEC_TIMEOUT"])
while True:
    try:
        raw = ssm.get_parameter(Name=param, WithDecryption=True)["Parameter"]["Value"]
        break
    except ssm.exceptions.ParameterNotFound:
        if time.monotonic() > deadline:
            # nobody will start a server here (a prepared instance whose switch or hub is
            # gone): shut down, which ends it as its InstanceInitiatedShutdownBehavior says
            log("no launch spec arrived; shutting down")
            subprocess.run(["shutdown", "-h", "now"], check=False)
            sys.exit(1)
        time.sleep(0.5)
try:
    ssm.delete_parameter(Name=param)  # the token must not outlive the boot
except Exception as e:
    log(f"could not delete {param}: {e!r}")
try:
    ssm.delete_parameter(Name=param + ".waiting")
except Exception as e:
    log(f"could not delete {param}.waiting: {e!r}")
if raw.startswith("z:"):
    raw = zlib.decompress(base64.b64decode(raw[2:])).decode()
spec = json.loads(raw)
uid, gid = int(spec["uid"]), int(spec["gid"])
mount = spec.get("mount") or {}
path = spec["cwd"]


def run(*argv):
    log("+ " + " ".join(argv))
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def ebs_device(m):
    """The volume's block device: by NVMe serial (Nitro), else its device name."""
    by_id = os.environ.get("DS_COMPUTE_DEVICE_DIR", "/dev/disk/by-id")
    serial = m["volume_id"].replace("-", "")
    candidates = [os.path.join(by_id, f"nvme-Amazon_Elastic_Block_Store_{serial}")]
    if "DS_COMPUTE_DEVICE_DIR" not in os.environ:
        dev = m["device"]
        candidates += [dev, dev.replace("/dev/sd", "/dev/xvd")]
    until = time.monotonic() + 180
    while time.monotonic() < until:
        for c in candidates:
            if os.path.exists(c):
                return os.path.realpath(c)
        time.sleep(0.2)
    raise SystemExit(f"volume {m['volume_id']} never showed up (looked for {candidates})")


os.makedirs(path, exist_ok=True)
if mount.get("driver") == "ebs":
    dev = ebs_device(mount)
    fresh = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", dev], capture_output=True, text=True).stdout.strip() == ""
    if fresh:
        # format only an empty volume: never mkfs over data
        log(f"{dev} holds no file system: formatting {mount['fs_type']}")
        run(f"mkfs.{mount['fs_type']}", "-q", "-L", "ds-volume", dev)
    run("mount", "-o", "noatime", dev, path)
    if fresh:
        os.chown(path, uid, gid)
        os.chmod(path, 0o750)
elif mount.get("driver") == "efs":
    run("mount", "-t", "efs", "-o", f"tls,iam,accesspoint={mount['access_point_id']}",
        f"{mount['file_system_id']}:/", path)

env = dict(spec["env"])
log_dir = "/var/log" if os.access("/var/log", os.W_OK) else "/tmp"
log_path = os.path.join(log_dir, f"ds-compute-server-{os.environ['DS_INSTANCE_ID']}.log")
logf = open(log_path, "ab", buffering=0)
argv = list(spec["cmd"])
if uid != os.getuid():
    argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"] + argv
log(f"starting the server as {uid}:{gid} in {path}")
proc = subprocess.Popen(argv, env=env, cwd=path, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)


def forward(signum, frame):
    proc.send_signal(signum)


signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
status = proc.wait()
log(f"server exited with {status}")
try:
    with open(log_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16000))
        tail = "\n".join(deque(f.read().decode(errors="replace").splitlines(), maxlen=30))
except OSError:
    tail = ""
report_exit(status, tail)
if mount:
    subprocess.run(["umount", path])
sys.exit(0)
PYTHON
