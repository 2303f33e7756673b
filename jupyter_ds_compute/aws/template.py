"""The hub's CloudFormation template (JSON), built from validated parameters
and the IAM table in :mod:`.iam`.

Pure: :func:`validate` checks parameters locally (before any AWS call) and
:func:`build` returns the template as a dict.

What the stack holds:

- the hub's IAM role + instance profile (policy: :func:`.iam.hub_policy`);
- the servers' role + instance profile (policy: :func:`.iam.server_policy`);
- security groups: the hub's HTTPS port open to ``HttpsCidr`` (the only rule
  open to the world), servers' port 8888 from the hub only, the hub's API
  port and HTTPS port from the servers only, NFS to the file system from the
  servers only;
- SSM parameters under ``/ds-compute/<HubId>/`` (version, settings);
- optionally an EFS file system with one mount target per server subnet;
- the hub instance, whose user-data installs ``jupyter-ds-compute==Version``
  and starts JupyterHub with the operator's config (SSM or S3).
"""

from __future__ import annotations

import ipaddress
import json
import re
from importlib.resources import files

from . import iam

SERVER_PORT = 8888  # EC2Backend.port in configs/aws.py

_ID = r"[0-9a-f]{8}(?:[0-9a-f]{9})?"


def _version(value):
    from packaging.version import InvalidVersion, Version

    try:
        Version(value)
    except InvalidVersion:
        return "is not a version (PEP 440), e.g. 0.3.1"
    return None


def _regex(pattern, example):
    rx = re.compile(pattern)

    def check(value):
        return None if rx.fullmatch(value) else f"must look like {example}"

    check.pattern = pattern
    return check


def _port(value):
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        return "must be a TCP port (1-65535)"
    return None


def _cidr(value):
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as e:
        return f"is not an IPv4 CIDR block like 203.0.113.0/24 ({e})"
    if "/" not in value:
        return "needs a prefix length, e.g. 203.0.113.7/32"
    del net
    return None


def _subnets(value):
    items = [x.strip() for x in value.split(",")]
    bad = [x for x in items if not re.fullmatch(rf"subnet-{_ID}", x)]
    if not items or bad:
        return f"must be comma-separated subnet ids like subnet-0123abcd (bad: {', '.join(bad) or 'empty'})"
    return None


def _bool(value):
    return None if value in ("true", "false") else "must be true or false"


def _hub_config(value):
    if re.fullmatch(r"ssm:(/[A-Za-z0-9_.\-/]+)", value) or re.fullmatch(r"s3://[a-z0-9.\-]{3,63}/.+", value):
        return None
    return "must be ssm:/path/of/parameter or s3://bucket/key (the operator's jupyterhub_config.py)"


#: name -> (default or None if required, check, description). ONE table: the
#: local validation, the template's Parameters and the CLI's help come from it.
PARAMETERS = {
    "Version": (None, _version, "jupyter-ds-compute version the hub installs (pip)"),
    "HubImageId": (None, _regex(rf"ami-{_ID}", "ami-0123abcd"), "AMI of the hub (python3, pip)"),
    "HubInstanceType": (
        "t3.medium",
        _regex(r"[a-z][a-z0-9-]*\.[0-9]*[a-z0-9]+", "t3.medium"),
        "instance type of the hub",
    ),
    "VpcId": (None, _regex(rf"vpc-{_ID}", "vpc-0123abcd"), "VPC of the hub and servers"),
    "HubSubnetId": (None, _regex(rf"subnet-{_ID}", "subnet-0123abcd"), "subnet of the hub"),
    "ServerSubnetIds": ("", _subnets, "comma-separated subnets of the servers (default: the hub's)"),
    "HubHttpsPort": ("443", _port, "the hub's HTTPS port, the only one open to HttpsCidr"),
    "HttpsCidr": ("0.0.0.0/0", _cidr, "who may reach the HTTPS port"),
    "HubApiPort": ("8081", _port, "the hub's API port (servers only)"),
    "HubId": (
        "",
        _regex(r"[a-z0-9][a-z0-9-]{0,62}", "research-hub"),
        "ds-compute:hub tag (default: stack name)",
    ),
    "HubConfig": (None, _hub_config, "ssm:/path or s3://bucket/key of the operator's jupyterhub_config.py"),
    "ServerImageId": ("", _regex(rf"ami-{_ID}", "ami-0123abcd"), "AMI of the servers (default: HubImageId)"),
    "Efs": ("false", _bool, "create an EFS file system (the efs volume driver) with mount targets"),
}


class ParameterError(ValueError):
    """A bad deployment parameter; the message names it."""


def validate(params: dict, stack: str = "") -> dict:
    """Check ``params`` (names and values) and fill in defaults; returns a new dict.

    Raises :class:`ParameterError` naming the parameter. No AWS call.
    """
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ParameterError(
            f"unknown parameter {', '.join(unknown)}; known parameters: {', '.join(PARAMETERS)}"
        )
    out = {}
    for name, (default, check, _help) in PARAMETERS.items():
        value = params.get(name)
        if value is None or value == "":
            if default is None:
                raise ParameterError(f"parameter {name} is required ({_help})")
            value = default
        if not isinstance(value, (str, int, bool)) or isinstance(value, bool) and name != "Efs":
            raise ParameterError(f"parameter {name} must be a string, not {type(value).__name__}")
        value = str(value).lower() if isinstance(value, bool) else str(value).strip()
        if value != "":
            problem = check(value)
            if problem:
                raise ParameterError(f"parameter {name}={value!r} {problem}")
        out[name] = value
    if not out["HubId"]:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", stack.lower()):
            raise ParameterError(f"parameter HubId is needed: the stack name {stack!r} is not a valid hub id")
        out["HubId"] = stack.lower()
    out["ServerSubnetIds"] = out["ServerSubnetIds"] or out["HubSubnetId"]
    out["ServerImageId"] = out["ServerImageId"] or out["HubImageId"]
    if out["HubHttpsPort"] == out["HubApiPort"]:
        raise ParameterError("parameter HubApiPort must differ from HubHttpsPort")
    return out


def user_data_script() -> str:
    return files("jupyter_ds_compute.aws").joinpath("hub_userdata.sh").read_text()


def _sub(value):
    """Strings with ``${...}`` become ``Fn::Sub``; IAM policy variables are escaped (``${!ec2:...}``)."""
    if isinstance(value, str) and "${" in value:
        return {"Fn::Sub": re.sub(r"\$\{(\w+:\w+)\}", r"${!\1}", value).replace("${!AWS:", "${AWS:")}
    if isinstance(value, list):
        return [_sub(v) for v in value]
    if isinstance(value, dict):
        return {k: _sub(v) for k, v in value.items()}
    return value


def _getatt(name, attr):
    return {"Fn::GetAtt": [name, attr]}


def _ingress(group, port, source=None, cidr=None, description=""):
    rule = {"GroupId": _getatt(group, "GroupId"), "IpProtocol": "tcp", "FromPort": port, "ToPort": port}
    if source:
        rule["SourceSecurityGroupId"] = _getatt(source, "GroupId")
    else:
        rule["CidrIp"] = cidr
    rule["Description"] = description
    return {"Type": "AWS::EC2::SecurityGroupIngress", "Properties": rule}


def _role(policy_name, document):
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            "Policies": [{"PolicyName": policy_name, "PolicyDocument": _sub(document)}],
        },
    }


def build(params: dict) -> dict:
    """The template for validated ``params`` (see :func:`validate`)."""
    p = params
    ref = lambda name: {"Ref": name}  # noqa: E731
    hub_tags = [
        {"Key": "ds-compute:hub", "Value": ref("HubId")},
        {"Key": "Name", "Value": f"ds-compute hub {p['HubId']}"},
    ]
    res: dict = {}
    res["HubRole"] = _role(
        "ds-compute-hub",
        iam.hub_policy(server_role_arn="${ServerRole.Arn}", hub_config=p["HubConfig"]),
    )
    res["HubInstanceProfile"] = {
        "Type": "AWS::IAM::InstanceProfile",
        "Properties": {"Roles": [ref("HubRole")]},
    }
    res["ServerRole"] = _role("ds-compute-server", iam.server_policy())
    res["ServerInstanceProfile"] = {
        "Type": "AWS::IAM::InstanceProfile",
        "Properties": {"Roles": [ref("ServerRole")]},
    }
    # security groups: rules as separate resources (hub <-> servers refer to each other)
    res["HubSecurityGroup"] = {
        "Type": "AWS::EC2::SecurityGroup",
        "Properties": {"GroupDescription": "jupyter-ds-compute hub", "VpcId": ref("VpcId"), "Tags": hub_tags},
    }
    res["ServerSecurityGroup"] = {
        "Type": "AWS::EC2::SecurityGroup",
        "Properties": {
            "GroupDescription": "jupyter-ds-compute servers",
            "VpcId": ref("VpcId"),
            "Tags": hub_tags,
        },
    }
    res["HubHttpsIngress"] = _ingress(
        "HubSecurityGroup", ref("HubHttpsPort"), cidr=ref("HttpsCidr"), description="the hub's HTTPS port"
    )
    res["HubHttpsFromServers"] = _ingress(
        "HubSecurityGroup", ref("HubHttpsPort"), source="ServerSecurityGroup", description="servers -> proxy"
    )
    res["HubApiFromServers"] = _ingress(
        "HubSecurityGroup", ref("HubApiPort"), source="ServerSecurityGroup", description="servers -> hub API"
    )
    res["ServersFromHub"] = _ingress(
        "ServerSecurityGroup",
        SERVER_PORT,
        source="HubSecurityGroup",
        description="hub -> single-user servers",
    )
    ssm_path = f"/ds-compute/{p['HubId']}/"
    res["VersionParameter"] = {
        "Type": "AWS::SSM::Parameter",
        "Properties": {"Name": f"{ssm_path}version", "Type": "String", "Value": ref("Version")},
    }
    subnets = p["ServerSubnetIds"].split(",")
    efs = p["Efs"] == "true"
    if efs:
        res["FileSystemSecurityGroup"] = {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "jupyter-ds-compute EFS",
                "VpcId": ref("VpcId"),
                "Tags": hub_tags,
            },
        }
        res["NfsFromServers"] = _ingress(
            "FileSystemSecurityGroup", 2049, source="ServerSecurityGroup", description="servers -> EFS"
        )
        res["FileSystem"] = {
            "Type": "AWS::EFS::FileSystem",
            "Properties": {
                "Encrypted": True,
                "PerformanceMode": "generalPurpose",
                "FileSystemTags": hub_tags,
            },
        }
        for i, subnet in enumerate(subnets):
            res[f"MountTarget{i}"] = {
                "Type": "AWS::EFS::MountTarget",
                "Properties": {
                    "FileSystemId": ref("FileSystem"),
                    "SubnetId": subnet,
                    "SecurityGroups": [_getatt("FileSystemSecurityGroup", "GroupId")],
                },
            }
    settings = {
        "DS_COMPUTE_AWS_HUB_ID": "${HubId}",
        "DS_COMPUTE_AWS_AMI": "${ServerImageId}",
        "DS_COMPUTE_AWS_SUBNETS": "${ServerSubnetIds}",
        "DS_COMPUTE_AWS_SECURITY_GROUPS": "${ServerSecurityGroup.GroupId}",
        "DS_COMPUTE_AWS_INSTANCE_PROFILE": "${ServerInstanceProfile.Arn}",
        "DS_COMPUTE_AWS_VOLUME": "efs" if efs else "ebs",
    }
    env_lines = "".join(f"{k}={v}\n" for k, v in settings.items())
    script = user_data_script().replace("@@HUB_ENV@@\n", env_lines)
    res["HubInstance"] = {
        "Type": "AWS::EC2::Instance",
        "Properties": {
            "ImageId": ref("HubImageId"),
            "InstanceType": ref("HubInstanceType"),
            "SubnetId": ref("HubSubnetId"),
            "SecurityGroupIds": [_getatt("HubSecurityGroup", "GroupId")],
            "IamInstanceProfile": ref("HubInstanceProfile"),
            "UserData": {"Fn::Base64": {"Fn::Sub": script}},
            "Tags": hub_tags + [{"Key": "ds-compute:version", "Value": ref("Version")}],
        },
    }
    outputs = {
        "HubUrl": {
            "Description": "the hub (the instance's public DNS name; point your own name at it)",
            "Value": {
                "Fn::Join": [
                    "",
                    ["https://", _getatt("HubInstance", "PublicDnsName"), ":", ref("HubHttpsPort"), "/"],
                ]
            },
        },
        "HubInstanceId": {"Value": ref("HubInstance")},
        "HubPrivateIp": {"Value": _getatt("HubInstance", "PrivateIp")},
        "HubRoleArn": {"Value": _getatt("HubRole", "Arn")},
        "ServerInstanceProfileArn": {"Value": _getatt("ServerInstanceProfile", "Arn")},
        "ServerSecurityGroupId": {"Value": _getatt("ServerSecurityGroup", "GroupId")},
        "HubSecurityGroupId": {"Value": _getatt("HubSecurityGroup", "GroupId")},
        "SsmPath": {"Value": ssm_path},
        "Version": {"Value": ref("Version")},
    }
    if efs:
        outputs["FileSystemId"] = {"Value": ref("FileSystem")}
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        # the version in the template itself: each version's template differs
        # (moto compares templates, and so can an operator reading get_template)
        "Description": f"jupyter-ds-compute {p['Version']} hub {p['HubId']} (jupyter-ds-compute aws deploy)",
        "Parameters": {
            name: {
                "Type": "String",
                "Description": help_,
                **({"AllowedPattern": check.pattern} if hasattr(check, "pattern") else {}),
            }
            for name, (_default, check, help_) in PARAMETERS.items()
        },
        "Resources": res,
        "Outputs": outputs,
    }


def to_json(template) -> str:
    return json.dumps(template, indent=1, sort_keys=False)
