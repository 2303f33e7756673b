"""``jupyter-ds-compute aws ...`` against the moto server (its CloudFormation),
and the IAM drift check: every AWS call the backend and the volume drivers
make is allowed by the policy generated from ``jupyter_ds_compute/aws/iam.py``.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from aws.harness import moto_server

from jupyter_ds_compute.aws import cli, iam, template

pytestmark = pytest.mark.ec2

REPO = Path(__file__).resolve().parent.parent
TIMINGS = {}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    with moto_server(str(tmp_path_factory.mktemp("moto"))) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_faults(moto):
    moto.reset()
    yield
    moto.reset()


@pytest.fixture(scope="module")
def ec2(moto):
    return boto3.client("ec2", region_name="us-east-1")


@pytest.fixture(scope="module")
def cfn(moto):
    return boto3.client("cloudformation", region_name="us-east-1")


@pytest.fixture(scope="module")
def base(ec2):
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = sorted(ec2.describe_subnets()["Subnets"], key=lambda s: s["AvailabilityZone"])
    return {
        "VpcId": vpc,
        "HubSubnetId": subnets[0]["SubnetId"],
        "ServerSubnetIds": ",".join(s["SubnetId"] for s in subnets[:2]),
        "HubImageId": "ami-12c6146b",
        "HubConfig": "ssm:/ops/hub/jupyterhub_config.py",
    }


def run(*argv, confirm=None):
    """(exit code, stdout, stderr) of ``jupyter-ds-compute aws ...`` in-process."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stderr
    sys.stderr = err
    try:
        code = cli.main(list(argv), out=out, confirm=confirm)
    finally:
        sys.stderr = saved
    return code, out.getvalue(), err.getvalue()


def params_file(tmp_path, params, name="params.json"):
    path = tmp_path / name
    path.write_text(json.dumps(params))
    return str(path)


def stacks(cfn):
    return [
        s["StackName"] for s in cfn.list_stacks()["StackSummaries"] if s["StackStatus"] != "DELETE_COMPLETE"
    ]


def version_of(cfn, stack):
    s = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    return {p["ParameterKey"]: p["ParameterValue"] for p in s["Parameters"]}["Version"]


# -- pure ----------------------------------------------------------------------------


def test_every_call_site_is_in_the_table_and_the_policy():
    """Static half of the drift check: each ``self.aws("svc", "op", ...)`` (and
    ``self.aws_delete(...)``, which calls it) in the code."""
    doc = iam.hub_policy(hub_config="ssm:/x")
    sources = ["backends/ec2.py", "volumes/ebs.py", "volumes/efs.py"]
    found = set()
    for src in sources:
        text = (REPO / "jupyter_ds_compute" / src).read_text()
        found |= set(re.findall(r'self\.aws(?:_delete)?\(\s*"(\w+)",\s*"(\w+)"', text))
    assert len(found) > 20
    for service, op in sorted(found):
        action = iam.iam_action(service, iam.camel(op))
        assert iam.is_declared(service, op), action
        assert iam.allows(doc, action), action


def test_backend_refuses_a_call_the_table_does_not_list(moto):
    import asyncio

    from jupyter_ds_compute.backends.aws import AWS

    with pytest.raises(RuntimeError, match=r"ec2\.describe_images is not in .*HUB_ACTIONS"):
        asyncio.run(AWS().aws("ec2", "describe_images"))


def test_policy_scopes_ssm_and_passrole():
    doc = iam.hub_policy(
        region="us-east-1", account="1", partition="aws", server_role_arn="arn:aws:iam::1:role/srv"
    )
    launch = "arn:aws:ssm:us-east-1:1:parameter/ds-compute/launch/i-0abc"
    assert iam.allows(doc, "ssm:PutParameter", launch)
    assert not iam.allows(doc, "ssm:PutParameter", "arn:aws:ssm:us-east-1:1:parameter/other")
    assert iam.allows(doc, "iam:PassRole", "arn:aws:iam::1:role/srv")
    assert not iam.allows(doc, "iam:PassRole", "arn:aws:iam::1:role/admin")
    assert not iam.allows(doc, "ec2:DescribeImages")
    server = iam.server_policy(region="us-east-1", account="1", partition="aws")
    assert iam.allows(server, "ssm:GetParameter", launch)
    assert not iam.allows(server, "ec2:RunInstances")


@pytest.mark.parametrize(
    "name,value,match",
    [
        ("HttpsCidr", "10.0.0.300/8", "parameter HttpsCidr='10.0.0.300/8'"),
        ("HttpsCidr", "10.0.0.1/8", "parameter HttpsCidr="),  # host bits set
        ("HubInstanceType", "t3medium", "parameter HubInstanceType='t3medium' must look like t3.medium"),
        ("HubHttpsPort", "70000", "parameter HubHttpsPort='70000'"),
        ("Version", "latest", "parameter Version='latest' is not a version"),
        ("HubConfig", "/etc/jupyterhub_config.py", "parameter HubConfig="),
        ("Colour", "blue", "unknown parameter Colour"),
    ],
)
def test_bad_parameter_is_named(base, name, value, match):
    with pytest.raises(template.ParameterError, match=re.escape(match)):
        template.validate({**base, "Version": "0.1.0", name: value}, "s")


def test_template_iam_variables_are_escaped_for_fn_sub(base):
    t = template.build(template.validate(dict(base, Version="0.1.0"), "s"))
    body = json.dumps(t["Resources"]["ServerRole"])
    assert "${!ec2:InstanceID}" in body and "${ec2:InstanceID}" not in body
    ud = t["Resources"]["HubInstance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert 'jupyter-ds-compute[aws]==${Version}' in ud and "${HubConfig}" in ud
    assert "@@" not in ud


def test_cli_help_runs():
    r = subprocess.run(
        [sys.executable, "-m", "jupyter_ds_compute.cli", "aws", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0 and "deploy" in r.stdout and "rollback" in r.stdout


def test_policy_command_prints_the_generated_json():
    code, out, _ = run("policy", "--region", "us-east-1", "--account", "123456789012")
    assert code == 0
    assert json.loads(out) == iam.hub_policy(region="us-east-1", account="123456789012", partition="aws")


# -- against moto --------------------------------------------------------------------------


def test_broken_parameter_refused_before_any_call(moto, cfn, base, tmp_path):
    moto.clear_calls()
    code, _, err = run(
        "deploy", "--stack", "broken", "--params", params_file(tmp_path, dict(base, HttpsCidr="0.0.0.0/33"))
    )
    assert code == 2 and "parameter HttpsCidr='0.0.0.0/33'" in err
    code, _, err = run(
        "deploy", "--stack", "broken", "--params", params_file(tmp_path, dict(base, Colour="x"))
    )
    assert code == 2 and "unknown parameter Colour" in err
    assert moto.stats()["calls"] == {}  # not one AWS call
    assert "broken" not in stacks(cfn)


def test_deploy_upgrade_rollback_destroy(moto, cfn, ec2, base, tmp_path):
    iamc = boto3.client("iam", region_name="us-east-1")
    ssm = boto3.client("ssm", region_name="us-east-1")
    pf = params_file(tmp_path, dict(base, Version="0.1.0", HubId="deploy-hub", Efs="true"))
    t0 = time.monotonic()
    code, out, err = run("deploy", "--stack", "hub-a", "--params", pf, "--poll", "0.05")
    TIMINGS["deploy"] = time.monotonic() - t0
    assert code == 0, err
    stack = cfn.describe_stacks(StackName="hub-a")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert re.search(r"^Hub URL: https://[\w.\-]+:443/$", out, re.M), out
    assert "resources, CREATE_COMPLETE" in out  # the progress bar
    # the roles with the generated policies, the instance profiles
    resources = {
        r["LogicalResourceId"]: r.get("PhysicalResourceId")
        for r in cfn.describe_stack_resources(StackName="hub-a")["StackResources"]
    }
    role = iamc.get_role(RoleName=resources["HubRole"])["Role"]
    assert role["Arn"] == outputs["HubRoleArn"]
    (pname,) = iamc.list_role_policies(RoleName=resources["HubRole"])["PolicyNames"]
    doc = iamc.get_role_policy(RoleName=resources["HubRole"], PolicyName=pname)["PolicyDocument"]
    if isinstance(doc, str):  # moto answers the dict's repr
        doc = json.loads(doc) if doc.startswith('{"') else __import__("ast").literal_eval(doc)
    actions = {a for st in doc["Statement"] for a in st["Action"]}
    assert actions == iam.declared_actions() - {"s3:GetObject"}
    iamc.get_instance_profile(InstanceProfileName=resources["ServerInstanceProfile"])
    # security groups: only the HTTPS port is open to the world; the rest is hub <-> servers
    hub_sg, srv_sg = outputs["HubSecurityGroupId"], outputs["ServerSecurityGroupId"]
    vpc_groups = ec2.describe_security_groups(
        Filters=[{"Name": "tag:ds-compute:hub", "Values": ["deploy-hub"]}]
    )
    rules = {g["GroupId"]: g["IpPermissions"] for g in vpc_groups["SecurityGroups"]}
    assert hub_sg in rules and srv_sg in rules and len(rules) == 3  # + the file system's
    world = [
        (g, r["FromPort"])
        for g, rs in rules.items()
        for r in rs
        for ip in r["IpRanges"]
        if ip["CidrIp"] == "0.0.0.0/0"
    ]
    assert world == [(hub_sg, 443)]
    srv = {(r["FromPort"], p["GroupId"]) for r in rules[srv_sg] for p in r["UserIdGroupPairs"]}
    assert srv == {(8888, hub_sg)}
    hub = {(r["FromPort"], p["GroupId"]) for r in rules[hub_sg] for p in r["UserIdGroupPairs"]}
    assert hub == {(443, srv_sg), (8081, srv_sg)}
    assert all(not r["IpRanges"] for g, rs in rules.items() if g != hub_sg for r in rs)
    assert outputs["FileSystemId"].startswith("fs-")
    efs = boto3.client("efs", region_name="us-east-1")
    assert len(efs.describe_mount_targets(FileSystemId=outputs["FileSystemId"])["MountTargets"]) == 2
    assert ssm.get_parameter(Name="/ds-compute/deploy-hub/version")["Parameter"]["Value"] == "0.1.0"
    # deploying again is refused (upgrade is the way)
    code, _, err = run("deploy", "--stack", "hub-a", "--params", pf)
    assert code == 2 and "use 'jupyter-ds-compute aws upgrade" in err

    # upgrade: the change set is shown, then applied on --yes
    code, out, err = run("upgrade", "--stack", "hub-a", "--version", "0.2.0", "--yes", "--poll", "0.05")
    assert code == 0, err
    assert "Change set upgrade-" in out and "parameter Version: 0.1.0 -> 0.2.0" in out
    assert version_of(cfn, "hub-a") == "0.2.0"
    assert ssm.get_parameter(Name="/ds-compute/deploy-hub/version")["Parameter"]["Value"] == "0.2.0"
    # not confirmed: nothing changes
    code, out, err = run("upgrade", "--stack", "hub-a", "--version", "0.3.0", confirm=lambda q: False)
    assert code == 2 and "unchanged (version 0.2.0)" in err
    assert "parameter Version: 0.2.0 -> 0.3.0" in out
    assert version_of(cfn, "hub-a") == "0.2.0"
    code, out, _ = run("status", "--stack", "hub-a")
    assert "Version: 0.2.0" in out and re.search(r"\*\s+2 .* upgrade\s+0\.2\.0", out)

    # rollback: one command, back to the previous version
    t0 = time.monotonic()
    code, out, err = run("rollback", "--stack", "hub-a", "--yes", "--poll", "0.05")
    TIMINGS["rollback"] = time.monotonic() - t0
    assert code == 0, err
    assert "from 0.2.0" in out and "to 0.1.0" in out
    assert version_of(cfn, "hub-a") == "0.1.0"
    assert ssm.get_parameter(Name="/ds-compute/deploy-hub/version")["Parameter"]["Value"] == "0.1.0"
    code, out, err = run("rollback", "--stack", "hub-a", "--yes")
    assert code == 2 and "no previous version" in err

    # destroy: refused while a user volume tagged by this hub exists, naming it
    vol = ec2.create_volume(
        AvailabilityZone="us-east-1a",
        Size=1,
        TagSpecifications=[
            {
                "ResourceType": "volume",
                "Tags": [
                    {"Key": "ds-compute:hub", "Value": "deploy-hub"},
                    {"Key": "ds-compute:user", "Value": "alice"},
                ],
            }
        ],
    )["VolumeId"]
    other = ec2.create_volume(
        AvailabilityZone="us-east-1a",
        Size=1,
        TagSpecifications=[
            {"ResourceType": "volume", "Tags": [{"Key": "ds-compute:hub", "Value": "another-hub"}]}
        ],
    )["VolumeId"]
    code, _, err = run("destroy", "--stack", "hub-a", "--yes")
    assert code == 2 and f"{vol} (ebs, user alice, 1 GiB)" in err and other not in err
    assert "--force" in err and "--delete-volumes" in err
    assert "hub-a" in stacks(cfn)
    code, out, err = run("destroy", "--stack", "hub-a", "--yes", "--delete-volumes", "--poll", "0.05")
    assert code == 0, err
    assert "hub-a" not in stacks(cfn)
    assert ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [vol]}])["Volumes"] == []
    assert ec2.describe_volumes(VolumeIds=[other])["Volumes"]  # not this hub's: untouched
    assert ssm.get_parameters_by_path(Path="/ds-compute/deploy/hub-a/", Recursive=True)["Parameters"] == []
    print("wall time against moto:", {k: f"{v:.2f}s" for k, v in TIMINGS.items()})


def test_failed_update_leaves_the_previous_version(moto, cfn, base, tmp_path):
    pf = params_file(tmp_path, dict(base, Version="0.1.0", HubId="fail-hub"))
    assert run("deploy", "--stack", "hub-f", "--params", pf, "--poll", "0.05")[0] == 0
    # refused by the CLI: nothing reaches AWS
    moto.clear_calls()
    code, _, err = run("upgrade", "--stack", "hub-f", "--version", "not-a-version", "--yes")
    assert code == 2 and "parameter Version='not-a-version'" in err
    code, _, err = run("upgrade", "--stack", "hub-f", "--param", "HubInstanceType=huge", "--yes")
    assert code == 2 and "parameter HubInstanceType='huge'" in err
    assert moto.stats()["calls"] == {}
    # AWS fails the update: the previous version stays, the history does not move
    moto.arm(
        action="ExecuteChangeSet", error="ValidationError", status=400, message="update refused", times=1
    )
    code, _, err = run("upgrade", "--stack", "hub-f", "--version", "0.2.0", "--yes", "--poll", "0.05")
    assert code == 1 and "update refused" in err
    assert version_of(cfn, "hub-f") == "0.1.0"
    assert cfn.describe_stacks(StackName="hub-f")["Stacks"][0]["StackStatus"] == "CREATE_COMPLETE"
    d = cli.Deployer("hub-f")
    entries, current = d.history()
    assert current == 1 and list(entries) == [1]
    assert run("destroy", "--stack", "hub-f", "--yes", "--poll", "0.05")[0] == 0


# -- the drift check, dynamic half ------------------------------------------------------------


async def test_recorded_backend_and_driver_calls_are_allowed(moto, ec2, tmp_path):
    """Unit level: EC2Backend + EBS + EFS operations in-process, every boto3 call recorded."""
    from aws.harness import tier
    from test_aws_unit import make, start_host, stop_host

    from jupyter_ds_compute.backends import aws as awsmod
    from jupyter_ds_compute.volumes.efs import EFSVolume

    log = tmp_path / "calls.log"
    recorder = iam.record_calls(str(log))
    try:
        subnets = {s["AvailabilityZone"]: s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]}
        spawner, backend, volume = make("drift-ebs", subnets)
        host, path = await start_host(spawner, backend, volume)
        await backend.start(tier("small"), ["jupyterhub-singleuser"], {"JUPYTERHUB_API_TOKEN": "t"}, path)
        await backend.poll()
        await volume.snapshot()
        await stop_host(backend, volume)
        await volume.delete()
        over = dict(volume_cls=EFSVolume, EFSVolume__subnet_ids=[subnets["us-east-1a"]])
        spawner, backend, volume = make("drift-efs", subnets, **over)
        await start_host(spawner, backend, volume)
        await stop_host(backend, volume)
        await volume.delete()
    finally:
        awsmod.client_hooks.remove(recorder.attach)
    check_calls(log, want={"ec2:RunInstances", "ec2:AttachVolume", "elasticfilesystem:CreateAccessPoint"})


def check_calls(log, want):
    calls = iam.read_call_log(log)
    actions = {a for a, _ in calls}
    assert want <= actions, sorted(actions)
    doc = iam.hub_policy(region="*", account="*", partition="aws")
    denied = sorted({(a, r) for a, r in calls if not iam.allows(doc, a, r)})
    assert denied == [], f"calls the generated hub policy does not allow: {denied}"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the AWS hub tests need root (instance emulator)")
def test_recorded_hub_calls_are_allowed(tmp_path):
    """Hub level: run the AWS hub tests (a real hub on configs/aws.py) with the
    call recorder on (DS_COMPUTE_AWS_CALL_LOG, read by configs/aws.py)."""
    log = tmp_path / "hub-calls.log"
    env = dict(os.environ, DS_COMPUTE_AWS_CALL_LOG=str(log))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "tests/test_aws_hub.py",
            "tests/test_aws_delete.py",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    check_calls(
        log,
        want={
            "ec2:RunInstances",
            "ec2:AttachVolume",
            "ssm:PutParameter",
            "elasticfilesystem:CreateAccessPoint",
        },
    )
