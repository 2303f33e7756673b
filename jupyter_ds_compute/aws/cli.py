"""``jupyter-ds-compute aws deploy|upgrade|rollback|status|destroy|policy|template``.

One CloudFormation stack per hub (:mod:`.template`). Every deploy and upgrade
records ``(version, parameters, template)`` in the SSM parameters
``/ds-compute/deploy/<stack>/history/<n>`` (zlib + base64, with the entry it
replaced), and ``/ds-compute/deploy/<stack>/current`` names the entry in
effect; ``rollback`` updates the stack back to the entry before the current
one (moto and the operator can both reason about "an update to a known
template"; CloudFormation's own ``rollback_stack`` only undoes a failed
update, which it does by itself anyway).

Exit codes: 0 done, 1 AWS said no / the stack failed, 2 refused before any
change (bad parameter, volumes exist, not confirmed).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import zlib

from .. import _version
from . import iam, template

OK, FAILED, REFUSED = 0, 1, 2
HISTORY = "/ds-compute/deploy/{stack}/"


class Refused(Exception):
    """Stop before changing anything (exit code 2)."""


class Failed(Exception):
    """AWS or the stack failed (exit code 1)."""


def load_params(path, pairs):
    """Parameters from a JSON file (an object, or CloudFormation's list of
    ``ParameterKey``/``ParameterValue``) and ``KEY=VALUE`` overrides."""
    params = {}
    if path:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise Refused(f"--params {path}: {e}") from None
        if isinstance(data, list):
            try:
                data = {d["ParameterKey"]: d["ParameterValue"] for d in data}
            except (KeyError, TypeError):
                raise Refused(
                    f"--params {path}: a list must hold ParameterKey/ParameterValue objects"
                ) from None
        if not isinstance(data, dict):
            raise Refused(f"--params {path}: expected a JSON object of parameter names to values")
        params.update(data)
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise Refused(f"--param {pair!r}: expected NAME=VALUE")
        params[key.strip()] = value
    return params


def _encode(entry):
    return base64.b64encode(zlib.compress(json.dumps(entry).encode(), 9)).decode()


def _decode(value):
    return json.loads(zlib.decompress(base64.b64decode(value)))


class Deployer:
    """The commands, over boto3 clients (``endpoint_url`` honours ``AWS_ENDPOINT_URL``)."""

    def __init__(self, stack, region=None, out=None, poll=1.0, timeout=3600, confirm=None):
        import boto3

        self.stack = stack
        session = boto3.session.Session(region_name=region)
        self.cfn = session.client("cloudformation")
        self.ssm = session.client("ssm")
        self.ec2 = session.client("ec2")
        self.efs = session.client("efs")
        self.out = out or sys.stdout
        self.poll = poll
        self.timeout = timeout
        self.confirm = confirm or self._ask

    def say(self, msg=""):
        print(msg, file=self.out, flush=True)

    @staticmethod
    def _ask(question):
        try:
            return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
        except EOFError:
            return False

    # -- stack -----------------------------------------------------------------------

    def describe(self):
        from botocore.exceptions import ClientError

        try:
            return self.cfn.describe_stacks(StackName=self.stack)["Stacks"][0]
        except ClientError as e:
            if "does not exist" in str(e):
                return None
            raise

    @staticmethod
    def parameters_of(stack):
        return {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}

    def event_ids(self):
        if self.describe() is None:
            return set()
        return {
            e["EventId"] for e in self.cfn.describe_stack_events(StackName=self.stack).get("StackEvents", [])
        }

    def wait(self, total, seen):
        """Print new stack events and a progress bar until the stack settles."""
        seen = set(seen)
        deadline = time.monotonic() + self.timeout
        last_bar = None
        while True:
            stack = self.describe()
            status = stack["StackStatus"] if stack else "DELETE_COMPLETE"
            events = []
            if stack:
                events = self.cfn.describe_stack_events(StackName=self.stack).get("StackEvents", [])
            for ev in reversed(events):
                if ev["EventId"] in seen:
                    continue
                seen.add(ev["EventId"])
                reason = f"  {ev['ResourceStatusReason']}" if ev.get("ResourceStatusReason") else ""
                self.say(
                    f"  {ev['Timestamp']:%H:%M:%S} {ev['LogicalResourceId']:<24} "
                    f"{ev.get('ResourceType', ''):<32} {ev['ResourceStatus']}{reason}"
                )
            if stack and total:
                done = sum(
                    r["ResourceStatus"].endswith("_COMPLETE")
                    for r in self.cfn.describe_stack_resources(StackName=self.stack).get("StackResources", [])
                )
                width = 30
                filled = min(width, width * done // total)
                bar = f"  [{'#' * filled}{'.' * (width - filled)}] {min(done, total)}/{total} resources, {status}"
                if bar != last_bar:
                    self.say(bar)
                    last_bar = bar
            if not status.endswith("_IN_PROGRESS"):
                return stack, status
            if time.monotonic() > deadline:
                raise Failed(f"stack {self.stack} still {status} after {self.timeout:g}s")
            time.sleep(self.poll)

    def hub_url(self, stack):
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        url = outputs.get("HubUrl", "")
        if url and "://None:" not in url and "://:" not in url:
            return url
        # no public DNS name (private subnet, or moto): the instance's address
        port = self.parameters_of(stack).get("HubHttpsPort", "443")
        iid = outputs.get("HubInstanceId")
        if iid:
            r = self.ec2.describe_instances(InstanceIds=[iid])
            inst = r["Reservations"][0]["Instances"][0]
            host = inst.get("PublicDnsName") or inst.get("PublicIpAddress") or inst.get("PrivateIpAddress")
            if host:
                return f"https://{host}:{port}/"
        return url

    # -- history ---------------------------------------------------------------------

    def history(self):
        """{n: entry} and the current n (0: none)."""
        prefix = HISTORY.format(stack=self.stack)
        entries, current = {}, 0
        kwargs = {"Path": prefix, "Recursive": True}
        while True:
            r = self.ssm.get_parameters_by_path(**kwargs)
            for p in r.get("Parameters", []):
                name = p["Name"][len(prefix) :]
                if name == "current":
                    current = int(p["Value"])
                elif name.startswith("history/"):
                    entries[int(name.split("/")[-1])] = _decode(p["Value"])
            if not r.get("NextToken"):
                break
            kwargs["NextToken"] = r["NextToken"]
        return entries, current

    def record(self, action, params, body):
        entries, current = self.history()
        n = max(entries, default=0) + 1
        entry = {
            "n": n,
            "action": action,
            "version": params["Version"],
            "parameters": params,
            "template": body,
            "previous": current,
            "time": time.time(),
        }
        prefix = HISTORY.format(stack=self.stack)
        self.ssm.put_parameter(
            Name=f"{prefix}history/{n:04d}",
            Value=_encode(entry),
            Type="String",
            Tier="Intelligent-Tiering",  # advanced (8 KB) only if needed
            Overwrite=True,
        )
        self.set_current(n)
        return n

    def set_current(self, n):
        prefix = HISTORY.format(stack=self.stack)
        self.ssm.put_parameter(Name=f"{prefix}current", Value=str(n), Type="String", Overwrite=True)

    def forget(self):
        prefix = HISTORY.format(stack=self.stack)
        names = [f"{prefix}current"] + [f"{prefix}history/{n:04d}" for n in self.history()[0]]
        for i in range(0, len(names), 10):
            self.ssm.delete_parameters(Names=names[i : i + 10])

    # -- commands ----------------------------------------------------------------------

    def deploy(self, raw_params):
        params = template.validate(raw_params, self.stack)
        body = template.to_json(template.build(params))
        if self.describe() is not None:
            raise Refused(
                f"stack {self.stack} exists: use 'jupyter-ds-compute aws upgrade --stack {self.stack}'"
            )
        total = len(json.loads(body)["Resources"])
        self.say(f"Creating stack {self.stack} (jupyter-ds-compute {params['Version']}, {total} resources)")
        seen = set()
        self.cfn.create_stack(
            StackName=self.stack,
            TemplateBody=body,
            Parameters=self._cfn_params(params),
            Capabilities=["CAPABILITY_IAM"],
            OnFailure="ROLLBACK",
            Tags=self._tags(params),
        )
        stack, status = self.wait(total, seen)
        if status != "CREATE_COMPLETE":
            raise Failed(f"stack {self.stack} ended {status}: nothing is running (see the events above)")
        self.record("deploy", params, body)
        self.say(f"Stack {self.stack}: {status}")
        self.say(f"Hub URL: {self.hub_url(stack)}")
        return stack

    def _cfn_params(self, params):
        return [{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()]

    def _tags(self, params):
        return [
            {"Key": "ds-compute:hub", "Value": params["HubId"]},
            {"Key": "ds-compute:version", "Value": params["Version"]},
        ]

    def _existing(self):
        stack = self.describe()
        if stack is None:
            raise Refused(f"no stack {self.stack}: deploy it first ('jupyter-ds-compute aws deploy')")
        if stack["StackStatus"].endswith("_IN_PROGRESS"):
            raise Refused(f"stack {self.stack} is {stack['StackStatus']}: wait for it to settle")
        return stack

    def upgrade(self, version=None, raw_params=None, yes=False):
        """A change set to ``version`` (and/or changed parameters), shown, then applied."""
        stack = self._existing()
        current = self.parameters_of(stack)
        wanted = {k: v for k, v in current.items() if k in template.PARAMETERS}
        wanted.update(raw_params or {})
        if version:
            wanted["Version"] = version
        params = template.validate(wanted, self.stack)
        body = template.to_json(template.build(params))
        return self._apply("upgrade", stack, params, body, yes)

    def rollback(self, yes=False):
        stack = self._existing()
        entries, current = self.history()
        entry = entries.get(current)
        if entry is None or not entry.get("previous") or entry["previous"] not in entries:
            raise Refused(f"stack {self.stack} has no previous version recorded to roll back to")
        target = entries[entry["previous"]]
        self.say(
            f"Rolling {self.stack} back from {entry['version']} (entry {entry['n']}, {entry['action']}) "
            f"to {target['version']} (entry {target['n']}, {target['action']})"
        )
        return self._apply("rollback", stack, target["parameters"], target["template"], yes, target=target)

    def _apply(self, action, stack, params, body, yes, target=None):
        old = self.parameters_of(stack)
        changes = {k: (old.get(k), v) for k, v in params.items() if old.get(k) != v}
        name = f"{action}-{int(time.time() * 1000)}"
        self.say(f"Change set {name} for stack {self.stack}:")
        for k, (a, b) in changes.items():
            self.say(f"  parameter {k}: {a} -> {b}")
        if not changes:
            self.say("  (no parameter changes)")
        self.cfn.create_change_set(
            StackName=self.stack,
            ChangeSetName=name,
            ChangeSetType="UPDATE",
            TemplateBody=body,
            Parameters=self._cfn_params(params),
            Capabilities=["CAPABILITY_IAM"],
            Tags=self._tags(params),
        )
        cs = self._wait_change_set(name)
        if cs["Status"] == "FAILED":
            reason = cs.get("StatusReason", "")
            self.cfn.delete_change_set(StackName=self.stack, ChangeSetName=name)
            if "didn't contain changes" in reason or "No updates" in reason:
                self.say("Nothing to change.")
                return stack
            raise Failed(f"change set {name} failed: {reason}")
        if not cs.get("Changes"):
            self.say("  (CloudFormation listed no resource changes)")
        for ch in cs.get("Changes", []):
            rc = ch.get("ResourceChange", {})
            replace = f" (replacement: {rc['Replacement']})" if rc.get("Replacement") else ""
            self.say(
                f"  {rc.get('Action', '?'):<8} {rc.get('LogicalResourceId', '?'):<24} "
                f"{rc.get('ResourceType', '')}{replace}"
            )
        if not (yes or self.confirm(f"Apply change set {name} to {self.stack}?")):
            self.cfn.delete_change_set(StackName=self.stack, ChangeSetName=name)
            raise Refused(f"not applied; stack {self.stack} is unchanged (version {old.get('Version')})")
        seen = self.event_ids()
        self.cfn.execute_change_set(StackName=self.stack, ChangeSetName=name)
        total = len(json.loads(body)["Resources"])
        stack, status = self.wait(total, seen)
        if status != "UPDATE_COMPLETE":
            raise Failed(
                f"update of {self.stack} ended {status}: CloudFormation keeps the previous version "
                f"({old.get('Version')}) running"
            )
        if target is not None:
            self.set_current(target["n"])
        else:
            self.record(action, params, body)
        self.say(f"Stack {self.stack}: {status}, version {self.parameters_of(stack).get('Version')}")
        self.say(f"Hub URL: {self.hub_url(stack)}")
        return stack

    def _wait_change_set(self, name):
        deadline = time.monotonic() + self.timeout
        while True:
            cs = self.cfn.describe_change_set(StackName=self.stack, ChangeSetName=name)
            if cs["Status"] in ("CREATE_COMPLETE", "FAILED"):
                return cs
            if time.monotonic() > deadline:
                raise Failed(f"change set {name} still {cs['Status']} after {self.timeout:g}s")
            time.sleep(self.poll)

    def status(self):
        stack = self.describe()
        if stack is None:
            self.say(f"Stack {self.stack}: not deployed")
            return None
        params = self.parameters_of(stack)
        entries, current = self.history()
        self.say(f"Stack {self.stack}: {stack['StackStatus']}")
        self.say(f"Version: {params.get('Version')} (hub id {params.get('HubId')})")
        self.say(f"Hub URL: {self.hub_url(stack)}")
        for n in sorted(entries):
            e = entries[n]
            mark = "*" if n == current else " "
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["time"]))
            self.say(f" {mark} {n:>3} {when} {e['action']:<9} {e['version']}")
        return stack

    def user_volumes(self, hub_id):
        """["vol-... (user alice, 50 GiB)", "fsap-... (user bob)"] tagged by this hub."""
        found = []
        kwargs = {"Filters": [{"Name": "tag:ds-compute:hub", "Values": [hub_id]}]}
        while True:
            r = self.ec2.describe_volumes(**kwargs)
            for v in r.get("Volumes", []):
                if v["State"] in ("deleting", "deleted"):
                    continue
                tags = {t["Key"]: t["Value"] for t in v.get("Tags", [])}
                found.append(("ebs", v["VolumeId"], tags.get("ds-compute:user", "?"), f"{v['Size']} GiB"))
            if not r.get("NextToken"):
                break
            kwargs["NextToken"] = r["NextToken"]
        for fs in self.efs.describe_file_systems().get("FileSystems", []):
            aps = self.efs.describe_access_points(FileSystemId=fs["FileSystemId"]).get("AccessPoints", [])
            for ap in aps:
                tags = {t["Key"]: t["Value"] for t in ap.get("Tags", [])}
                if tags.get("ds-compute:hub") == hub_id:
                    found.append(
                        ("efs", ap["AccessPointId"], tags.get("ds-compute:user", "?"), fs["FileSystemId"])
                    )
        return found

    def destroy(self, force=False, delete_volumes=False, yes=False):
        stack = self._existing()
        hub_id = self.parameters_of(stack).get("HubId") or self.stack
        volumes = self.user_volumes(hub_id)
        listing = ", ".join(f"{vid} ({kind}, user {user}, {what})" for kind, vid, user, what in volumes)
        if volumes and not (force or delete_volumes):
            raise Refused(
                f"stack {self.stack} has {len(volumes)} user volume(s): {listing}. "
                "Keep them and destroy the stack with --force, or delete them too with --delete-volumes."
            )
        if volumes:
            self.say(f"User volumes: {listing}")
            self.say("  -> deleted" if delete_volumes else "  -> kept (--force)")
        if not (yes or self.confirm(f"Destroy stack {self.stack} (the hub instance and everything in it)?")):
            raise Refused(f"not confirmed; stack {self.stack} is unchanged")
        if delete_volumes:
            for kind, vid, user, _what in volumes:
                self.say(f"Deleting {vid} (user {user})")
                if kind == "ebs":
                    self.ec2.delete_volume(VolumeId=vid)
                else:
                    self.efs.delete_access_point(AccessPointId=vid)
        seen = self.event_ids()
        self.say(f"Deleting stack {self.stack}")
        self.cfn.delete_stack(StackName=self.stack)
        _stack, status = self.wait(0, seen)
        if status != "DELETE_COMPLETE":
            raise Failed(f"deleting {self.stack} ended {status}")
        self.forget()
        self.say(f"Stack {self.stack}: {status}")
        return status


# -- argv ------------------------------------------------------------------------------


def parser():
    p = argparse.ArgumentParser(
        prog="jupyter-ds-compute aws",
        description="Deploy the hub on AWS with CloudFormation; upgrade, roll back, destroy it.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def stack_args(sp):
        sp.add_argument("--stack", required=True, help="CloudFormation stack name (one per hub)")
        sp.add_argument("--region", default=None, help="AWS region (default: boto3's)")
        sp.add_argument("--poll", type=float, default=5.0, help="seconds between progress polls")

    def param_args(sp):
        sp.add_argument("--params", metavar="FILE", help="JSON object of template parameters")
        sp.add_argument("--param", action="append", metavar="NAME=VALUE", help="one parameter (repeatable)")

    names = ", ".join(template.PARAMETERS)
    sp = sub.add_parser(
        "deploy", help="create the stack and print the hub URL", epilog=f"parameters: {names}"
    )
    stack_args(sp)
    param_args(sp)
    sp = sub.add_parser("upgrade", help="change set to another version/parameters; shown, then applied")
    stack_args(sp)
    param_args(sp)
    sp.add_argument("--version", help="jupyter-ds-compute version to install")
    sp.add_argument("--yes", action="store_true", help="apply without asking")
    sp = sub.add_parser("rollback", help="update the stack back to the previous recorded version")
    stack_args(sp)
    sp.add_argument("--yes", action="store_true", help="apply without asking")
    sp = sub.add_parser("status", help="stack status, version, hub URL, history")
    stack_args(sp)
    sp = sub.add_parser("destroy", help="delete the stack (refused while user volumes exist)")
    stack_args(sp)
    group = sp.add_mutually_exclusive_group()
    group.add_argument("--force", action="store_true", help="destroy even though user volumes exist (kept)")
    group.add_argument("--delete-volumes", action="store_true", help="delete the user volumes too")
    sp.add_argument("--yes", action="store_true", help="do not ask")
    sp = sub.add_parser("policy", help="print the generated IAM policy (JSON)")
    sp.add_argument("--role", choices=["hub", "server"], default="hub")
    sp.add_argument("--region", default="*")
    sp.add_argument("--account", default="*")
    sp.add_argument("--partition", default="aws")
    sp.add_argument("--hub-config", default="", help="ssm:/path or s3://bucket/key of the hub config")
    sp.add_argument("--server-role-arn", default="*", help="the servers' role (iam:PassRole)")
    sp = sub.add_parser("template", help="print the CloudFormation template for parameters")
    sp.add_argument("--stack", default="", help="stack name (the default HubId)")
    param_args(sp)
    return p


def main(argv=None, out=None, confirm=None):
    out = out or sys.stdout
    args = parser().parse_args(argv)
    try:
        if args.command == "policy":
            kw = dict(partition=args.partition, region=args.region, account=args.account)
            if args.role == "hub":
                doc = iam.hub_policy(server_role_arn=args.server_role_arn, hub_config=args.hub_config, **kw)
            else:
                doc = iam.server_policy(**kw)
            print(json.dumps(doc, indent=2), file=out)
            return OK
        if args.command == "template":
            params = template.validate(load_params(args.params, args.param), args.stack)
            print(template.to_json(template.build(params)), file=out)
            return OK
        # everything local is checked before the first AWS call
        raw = load_params(args.params, args.param) if hasattr(args, "params") else {}
        if args.command == "deploy":
            raw.setdefault("Version", _version.__version__)
            template.validate(raw, args.stack)
        elif args.command == "upgrade":
            checked = dict(raw)
            unknown = sorted(set(checked) - set(template.PARAMETERS))
            if unknown:
                template.validate(checked, args.stack)  # names them
            if args.version:
                checked["Version"] = args.version
            for name, value in checked.items():
                problem = template.PARAMETERS[name][1](str(value))
                if problem:
                    raise template.ParameterError(f"parameter {name}={value!r} {problem}")
        d = Deployer(args.stack, region=args.region, out=out, poll=args.poll, confirm=confirm)
        if args.command == "deploy":
            d.deploy(raw)
        elif args.command == "upgrade":
            if not args.version and not raw:
                raise Refused("upgrade needs --version and/or --params/--param")
            d.upgrade(args.version, raw, yes=args.yes)
        elif args.command == "rollback":
            d.rollback(yes=args.yes)
        elif args.command == "status":
            d.status()
        elif args.command == "destroy":
            d.destroy(force=args.force, delete_volumes=args.delete_volumes, yes=args.yes)
        return OK
    except (template.ParameterError, Refused) as e:
        print(f"error: {e}", file=sys.stderr)
        return REFUSED
    except Failed as e:
        print(f"failed: {e}", file=sys.stderr)
        return FAILED
    except Exception as e:
        if type(e).__name__ in (
            "ClientError",
            "NoCredentialsError",
            "EndpointConnectionError",
            "ParamValidationError",
        ):
            print(f"failed: AWS: {e}", file=sys.stderr)
            return FAILED
        raise
