"""The AWS actions the hub and its servers use: ONE table, and the IAM
policies generated from it.

:data:`HUB_ACTIONS` lists, per component, every API action the hub process
calls (``backends/ec2.py``, ``volumes/ebs.py``, ``volumes/efs.py``), with the
resource it is scoped to. From it come

- the hub role's policy (:func:`hub_policy`, printed by
  ``jupyter-ds-compute aws policy``, embedded in the CloudFormation template);
- the check in :meth:`jupyter_ds_compute.backends.aws.AWS.aws` that refuses a
  call the table does not list (so a new boto3 call cannot ship without its
  permission: the backend is told here which calls it may make);
- the drift test (``tests/test_aws_deploy.py``), which records every boto3
  call the backend and drivers make against the moto server and checks each
  against the generated policy with :func:`allows`.

:data:`SERVER_ACTIONS` is the same for the servers' instance profile (what
``backends/ec2_userdata.sh`` does on the instance).

Pure: no AWS calls here, boto3 is not imported.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import threading

#: the launch-spec SSM parameters (``EC2Backend.spec_parameter_prefix``)
LAUNCH_PREFIX = "/ds-compute/launch/"

# Resource kinds an action is scoped to; the ARNs are filled in by
# :func:`resource_arns` (``${...}`` are CloudFormation ``Fn::Sub`` variables,
# or concrete values when printing a policy).
ANY = "*"
LAUNCH_PARAMETERS = "launch-parameters"  # parameter<prefix>*
LAUNCH_PATH = "launch-path"  # parameter<prefix without its last slash> (GetParametersByPath)
SERVER_ROLE = "server-role"  # iam:PassRole of the servers' role only
HUB_CONFIG = "hub-config"  # the operator's hub config (SSM parameter or S3 object)
OWN_LAUNCH_PARAMETER = "own-launch-parameter"  # parameter<prefix>${ec2:InstanceID}*

#: component -> [(IAM action, resource kind, why)], the hub role's actions
HUB_ACTIONS: dict[str, list[tuple[str, str, str]]] = {
    "ec2-backend": [
        ("ec2:RunInstances", ANY, "start a server's instance"),
        ("ec2:CreateTags", ANY, "RunInstances with TagSpecifications; taking a warm-pool instance"),
        ("ec2:DescribeInstances", ANY, "poll, find by launch token, reuse stopped, leftovers"),
        ("ec2:DescribeSubnets", ANY, "the zones of the allowed subnets"),
        ("ec2:StartInstances", ANY, "reuse_stopped"),
        ("ec2:StopInstances", ANY, "on_stop = stop; a leftover holding the volume"),
        ("ec2:TerminateInstances", ANY, "stop, leaks of a failed launch, leftovers of a lost start"),
        ("ec2:GetConsoleOutput", ANY, "the boot log of a failed start"),
        ("iam:PassRole", SERVER_ROLE, "launch with the servers' instance profile"),
        ("ssm:PutParameter", LAUNCH_PARAMETERS, "hand over the launch spec (SecureString)"),
        ("ssm:GetParameter", LAUNCH_PARAMETERS, "read the server's exit status; a prepared instance booted"),
        ("ssm:DeleteParameters", LAUNCH_PARAMETERS, "remove the spec and exit status"),
        ("ssm:GetParametersByPath", LAUNCH_PATH, "every server's exit status in one call (poll)"),
        ("kms:Encrypt", ANY, "SecureString with the default key (alias/aws/ssm)"),
    ],
    "ebs-volume": [
        (
            "ec2:CreateVolume",
            ANY,
            "the user's volume; its copy from a snapshot in another zone (a zone move)",
        ),
        ("ec2:DescribeVolumes", ANY, "find, wait for states"),
        ("ec2:AttachVolume", ANY, "follow the user to the instance"),
        ("ec2:DetachVolume", ANY, "at stop, before a switch, from a leftover instance"),
        ("ec2:DeleteVolume", ANY, "delete a user's volume"),
        ("ec2:CreateSnapshot", ANY, "periodic, before-delete and zone-move snapshots"),
        ("ec2:DescribeSnapshots", ANY, "our snapshots of a server; wait for a zone move's"),
        ("ec2:DeleteSnapshot", ANY, "with the volume; a finished zone move's"),
        ("ec2:DescribeInstances", ANY, "the instance's zone and devices"),
        ("ec2:CreateTags", ANY, "CreateVolume/CreateSnapshot with TagSpecifications"),
    ],
    "efs-volume": [
        ("elasticfilesystem:DescribeFileSystems", ANY, "find the hub's file system"),
        ("elasticfilesystem:CreateFileSystem", ANY, "the hub's file system, if none"),
        ("elasticfilesystem:TagResource", ANY, "create with tags"),
        ("elasticfilesystem:DescribeMountTargets", ANY, "one per zone"),
        ("elasticfilesystem:CreateMountTarget", ANY, "a mount target per zone"),
        ("ec2:DescribeSubnets", ANY, "the zones of the subnets"),
        ("ec2:DescribeNetworkInterfaces", ANY, "CreateMountTarget needs it"),
        ("ec2:CreateNetworkInterface", ANY, "CreateMountTarget needs it"),
        ("elasticfilesystem:DescribeAccessPoints", ANY, "find the user's access point"),
        ("elasticfilesystem:CreateAccessPoint", ANY, "the user's home"),
        ("elasticfilesystem:DeleteAccessPoint", ANY, "delete a user's home"),
        ("ec2:DescribeInstances", ANY, "refuse deletion while an instance runs"),
    ],
    "hub-bootstrap": [
        ("ssm:GetParameter", HUB_CONFIG, "the operator's jupyterhub_config.py (ssm: source)"),
        ("s3:GetObject", HUB_CONFIG, "the operator's jupyterhub_config.py (s3:// source)"),
    ],
}

#: the servers' instance profile: what the bootstrap on the instance does
SERVER_ACTIONS: dict[str, list[tuple[str, str, str]]] = {
    "server-bootstrap": [
        ("ssm:GetParameter", OWN_LAUNCH_PARAMETER, "read its launch spec"),
        ("ssm:DeleteParameter", OWN_LAUNCH_PARAMETER, "delete it at boot (the token)"),
        ("ssm:PutParameter", OWN_LAUNCH_PARAMETER, "its exit status (.exit), that it waits (.waiting)"),
        ("kms:Decrypt", ANY, "the SecureString"),
    ],
    "efs-client": [
        ("elasticfilesystem:ClientMount", ANY, "mount -o iam"),
        ("elasticfilesystem:ClientWrite", ANY, "mount -o iam"),
    ],
}

_SERVICE_PREFIX = {"efs": "elasticfilesystem"}


def iam_action(service, operation):
    """``("efs", "CreateAccessPoint")`` -> ``"elasticfilesystem:CreateAccessPoint"``."""
    return f"{_SERVICE_PREFIX.get(service, service)}:{operation}"


def camel(op):
    """boto3 method name -> API operation name (``describe_instances`` -> ``DescribeInstances``)."""
    return "".join(p[:1].upper() + p[1:] for p in op.split("_"))


def declared_actions(table=None) -> set[str]:
    table = HUB_ACTIONS if table is None else table
    return {action for entries in table.values() for action, _kind, _why in entries}


def is_declared(service, op) -> bool:
    """Does the table list boto3 call ``service.op`` (e.g. ``("ec2", "run_instances")``)?"""
    return iam_action(service, camel(op)) in declared_actions()


def resource_arns(
    kind,
    *,
    partition="${AWS::Partition}",
    region="${AWS::Region}",
    account="${AWS::AccountId}",
    launch_prefix=LAUNCH_PREFIX,
    server_role_arn="*",
    hub_config="",
):
    """The ARNs of a resource kind (a list)."""
    ssm = f"arn:{partition}:ssm:{region}:{account}:parameter"
    if kind == ANY:
        return ["*"]
    if kind == LAUNCH_PARAMETERS:
        return [f"{ssm}{launch_prefix}*"]
    if kind == LAUNCH_PATH:
        return [f"{ssm}{launch_prefix.rstrip('/')}"]
    if kind == OWN_LAUNCH_PARAMETER:
        return [f"{ssm}{launch_prefix}${{ec2:InstanceID}}*"]
    if kind == SERVER_ROLE:
        return [server_role_arn]
    if kind == HUB_CONFIG:
        return [hub_config_arn(hub_config, partition=partition, region=region, account=account)]
    raise ValueError(f"unknown resource kind {kind!r}")


def hub_config_arn(source, *, partition="aws", region="*", account="*"):
    """ARN of the hub config source ``ssm:/path`` or ``s3://bucket/key`` ("" -> nothing)."""
    if source.startswith("s3://"):
        return f"arn:{partition}:s3:::{source[len('s3://') :]}"
    if source.startswith("ssm:"):
        return f"arn:{partition}:ssm:{region}:{account}:parameter{source[len('ssm:') :]}"
    return f"arn:{partition}:ssm:{region}:{account}:parameter/ds-compute/none"


def policy(table, *, components=None, **arn_kwargs):
    """An IAM policy document for ``table`` (one statement per resource set)."""
    by_resources: dict[tuple, set] = {}
    for component, entries in table.items():
        if components is not None and component not in components:
            continue
        for action, kind, _why in entries:
            if action.startswith("s3:") and not arn_kwargs.get("hub_config", "").startswith("s3://"):
                continue  # only the source in use
            if action.startswith("ssm:") and kind == HUB_CONFIG:
                if not arn_kwargs.get("hub_config", "").startswith("ssm:"):
                    continue
            key = (kind, tuple(resource_arns(kind, **arn_kwargs)))
            by_resources.setdefault(key, set()).add(action)
    statements = []
    for (kind, resources), actions in sorted(by_resources.items(), key=lambda kv: (kv[0][0] != ANY, kv[0])):
        statements.append(
            {
                "Sid": "Any" if kind == ANY else camel(kind.replace("-", "_")),
                "Effect": "Allow",
                "Action": sorted(actions),
                "Resource": list(resources) if len(resources) > 1 else resources[0],
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def hub_policy(**arn_kwargs):
    """The hub role's policy (every component of :data:`HUB_ACTIONS`)."""
    return policy(HUB_ACTIONS, **arn_kwargs)


def server_policy(**arn_kwargs):
    """The servers' instance-profile policy."""
    return policy(SERVER_ACTIONS, **arn_kwargs)


def allows(doc, action, resource="*"):
    """Does an (Allow-only) policy document allow ``action`` on ``resource``?

    Wildcards (``*``, ``?``) in actions and resources are matched as IAM
    does (case-insensitive actions); policy variables such as
    ``${ec2:InstanceID}`` match anything.
    """
    for st in doc.get("Statement", []):
        if st.get("Effect") != "Allow":
            continue
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions):
            continue
        resources = st.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        for r in resources:
            pattern = re.sub(r"\$\{[^}]*\}", "*", r)
            if resource == "*" or fnmatch.fnmatchcase(resource, pattern):
                return True
    return False


# -- recording the calls the hub makes (the drift test) ----------------------------

#: env var: append every boto3 call of the hub process to this file
CALL_LOG_ENV = "DS_COMPUTE_AWS_CALL_LOG"


class CallRecorder:
    """A botocore ``before-call`` handler appending ``action<TAB>resource`` lines.

    ``action`` is the IAM action (``ec2:RunInstances``); ``resource`` is the
    ARN we can tell from the parameters (SSM parameter names), else ``*``.
    """

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def attach(self, client):
        client.meta.events.register("before-call", self._record)
        return client

    def _record(self, model, params, **kwargs):
        service = model.service_model
        action = f"{service.signing_name}:{model.name}"
        body = params.get("body") if isinstance(params, dict) else None
        resources = ["*"]
        if service.signing_name == "ssm" and body:
            try:
                data = json.loads(body) if isinstance(body, (bytes, str)) else body
            except ValueError:
                data = {}
            names = data.get("Names") or ([data["Name"]] if data.get("Name") else [])
            names = names or ([data["Path"]] if data.get("Path") else [])
            if names:
                resources = [f"arn:aws:ssm:*:*:parameter{n}" for n in names]
        with self.lock, open(self.path, "a") as f:
            for r in resources:
                f.write(f"{action}\t{r}\n")


def record_calls(path=None):
    """Record every boto3 call the hub's AWS plumbing makes (all clients of
    ``backends/aws.py``, existing and future) to ``path`` (default: the file
    named by ``$DS_COMPUTE_AWS_CALL_LOG``). Returns the recorder, or None."""
    path = path or os.environ.get(CALL_LOG_ENV)
    if not path:
        return None
    from ..backends import aws

    recorder = CallRecorder(path)
    aws.client_hooks.append(recorder.attach)
    with aws._clients_lock:
        for c in aws._clients.values():
            recorder.attach(c)
    return recorder


def read_call_log(path):
    """[(action, resource)] from a call log."""
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                action, _, resource = line.rstrip("\n").partition("\t")
                out.append((action, resource or "*"))
    return out
