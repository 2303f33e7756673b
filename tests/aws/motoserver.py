"""A moto server (real HTTP on 127.0.0.1) with a fault-injection middleware.

Run as ``python tests/aws/motoserver.py --port N`` (tests start it through
:class:`MotoServer`). It is ``python -m moto.server``'s app, wrapped by
:class:`FaultMiddleware`, which adds what moto does not simulate:

- ``InsufficientInstanceCapacity`` on ``RunInstances`` (optionally only for
  some instance types / zones), for N calls or until reset;
- throttling: token buckets per action like EC2's (e.g. RunInstances burst 5,
  refill 2/s) answering ``RequestLimitExceeded`` (HTTP 503);
- attachments stuck in ``attaching`` (``DescribeVolumes`` answers rewritten);
- counts of calls per action (for benchmarks and assertions), and per caller
  (the ``app/<id>`` of the User-Agent: the instance emulator and the emulated
  instances set one, the hub none);
- EBS attach and detach that take time (moto's are instant): for
  ``delays["attach"]`` seconds after an ``AttachVolume`` the volume's
  attachment reads ``attaching`` in ``DescribeVolumes`` answers, and for
  ``delays["detach"]`` seconds after a ``DetachVolume`` or the
  ``Terminate``/``StopInstances`` of the instance it was attached to, the
  volume reads ``in-use`` with a ``detaching`` attachment (moto has already
  detached it). The instance emulator reads the same answers, so the device
  shows up on the "instance" only once the attach is over.
- EBS snapshots that take time (moto's complete at once): for
  ``delays["snapshot"]`` seconds after a ``CreateSnapshot`` the snapshot
  reads ``pending`` with a growing ``progress``; a ``CreateVolume`` from it
  meanwhile is refused with ``IncorrectState``, as EC2 refuses it. EBS
  snapshots are incremental: a volume's later snapshots take
  ``delays["snapshot_incremental"]`` (default: the same) — the blocks
  changed since the last one, small when it was a moment ago.

Control endpoints (JSON): ``POST /_fault/arm`` a rule, ``POST /_fault/reset``,
``GET /_fault/stats``, ``POST /_fault/rate`` ``{"RunInstances": [burst, per_s]}``,
``POST /_fault/delays`` ``{"attach": 5, "detach": 5, "snapshot": 10}`` (kept across resets).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

EC2_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>"
)


class TokenBucket:
    def __init__(self, burst, rate):
        self.burst, self.rate = float(burst), float(rate)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self):
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class FaultMiddleware:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.delays = {}
        #: volume id -> (attach time, instance id, device) of its last AttachVolume
        self.attached = {}
        #: volume id -> (until, instance id, device) of an emulated detach
        self.detaching = {}
        #: snapshot id -> (monotonic time of its CreateSnapshot, seconds it takes)
        self.snapshots = {}
        #: volume id -> how many snapshots were taken of it
        self.snapshotted = {}
        self.reset()

    def reset(self):
        with self.lock:
            self.rules = []
            self.buckets = {}
            self.calls = {}
            self.callers = {}
            self.faults = {}

    # -- control -------------------------------------------------------------

    def _control(self, environ, start_response, path, body):
        data = json.loads(body or b"{}")
        if path == "/_fault/arm":
            data.setdefault("times", -1)
            with self.lock:
                self.rules.append(data)
        elif path == "/_fault/reset":
            self.reset()
        elif path == "/_fault/rate":
            with self.lock:
                self.buckets = {k: TokenBucket(*v) for k, v in data.items()}
        elif path == "/_fault/calls":
            with self.lock:
                self.calls, self.faults, self.callers = {}, {}, {}
        elif path == "/_fault/delays":
            with self.lock:
                self.delays = {k: float(v) for k, v in data.items() if v}
        out = json.dumps(
            {
                "calls": self.calls,
                "callers": self.callers,
                "faults": self.faults,
                "rules": self.rules,
                "delays": self.delays,
            }
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
        return [out]

    # -- requests ----------------------------------------------------------------

    @staticmethod
    def _action(environ, body):
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target:  # JSON protocols (SSM): "AmazonSSM.PutParameter"
            return target.rsplit(".", 1)[-1], {}
        ctype = environ.get("CONTENT_TYPE", "")
        if "x-www-form-urlencoded" in ctype and body:
            params = dict(urllib.parse.parse_qsl(body.decode(errors="replace")))
            return params.get("Action", "?"), params
        # REST protocols (EFS): method + path
        path = re.sub(r"/(fs|fsap|fsmt)-[0-9a-f]+", "/{id}", environ.get("PATH_INFO", ""))
        return f"{environ.get('REQUEST_METHOD')} {path}", {}

    def _fault(self, action, params):
        with self.lock:
            bucket = self.buckets.get(action)
            if bucket is not None and not bucket.take():
                self.faults["RequestLimitExceeded"] = self.faults.get("RequestLimitExceeded", 0) + 1
                return {"error": "RequestLimitExceeded", "status": 503, "message": "Request limit exceeded."}
            for rule in self.rules:
                if rule.get("action") != action or rule.get("times") == 0:
                    continue
                match = rule.get("match") or {}
                if any(params.get(k) != v for k, v in match.items()):
                    continue
                if rule["times"] > 0:
                    rule["times"] -= 1
                if rule.get("error"):
                    self.faults[rule["error"]] = self.faults.get(rule["error"], 0) + 1
                return rule
        return None

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        if path.startswith("/_fault/"):
            return self._control(environ, start_response, path, body)
        action, params = self._action(environ, body)
        caller = re.search(r"\bapp/([\w.-]+)", environ.get("HTTP_USER_AGENT", ""))
        caller = caller.group(1) if caller else "hub"
        with self.lock:
            self.calls[action] = self.calls.get(action, 0) + 1
            per = self.callers.setdefault(caller, {})
            per[action] = per.get(action, 0) + 1
        rule = self._fault(action, params)
        if self.delays and not (rule and rule.get("error")):
            self._note_volume_change(action, params)
            if action == "DescribeVolumes" and not rule:
                return self._rewrite(environ, start_response, self._delay_volumes)
            if self.delays.get("snapshot") and action in ("CreateSnapshot", "DescribeSnapshots"):
                volume = params.get("VolumeId", "") if action == "CreateSnapshot" else ""
                return self._rewrite(
                    environ, start_response, lambda text: self._delay_snapshots(text, volume)
                )
            if self.delays.get("snapshot") and action == "CreateVolume" and not rule:
                pending = self._snapshot_progress(params.get("SnapshotId", ""))
                if pending is not None:
                    rule = {
                        "error": "IncorrectState",
                        "status": 400,
                        "message": f"Snapshot '{params['SnapshotId']}' is not 'completed' ({pending}%).",
                    }
        if rule and rule.get("error"):
            out = EC2_ERROR.format(
                code=rule["error"], message=rule.get("message", rule["error"]), rid="fault"
            ).encode()
            status = rule.get("status", 500)
            reason = {500: "Internal Server Error", 503: "Service Unavailable", 400: "Bad Request"}.get(
                status, "Error"
            )
            start_response(
                f"{status} {reason}", [("Content-Type", "text/xml"), ("Content-Length", str(len(out)))]
            )
            return [out]
        if rule and rule.get("rewrite") == "attaching":
            return self._rewrite_attaching(environ, start_response, rule)
        return self.app(environ, start_response)

    # -- attach/detach that take time ----------------------------------------------

    def _note_volume_change(self, action, params):
        now = time.monotonic()
        with self.lock:
            if action == "AttachVolume" and params.get("VolumeId"):
                self.attached[params["VolumeId"]] = (
                    now,
                    params.get("InstanceId", ""),
                    params.get("Device", ""),
                )
                self.detaching.pop(params["VolumeId"], None)
            elif action == "DetachVolume" and params.get("VolumeId"):
                vid = params["VolumeId"]
                _, iid, dev = self.attached.pop(vid, (0, params.get("InstanceId", ""), ""))
                self.detaching[vid] = (now + self.delays.get("detach", 0), iid, dev)
            elif action in ("TerminateInstances", "StopInstances"):
                ids = {v for k, v in params.items() if k.startswith("InstanceId.")}
                for vid, (_, iid, dev) in list(self.attached.items()):
                    if iid in ids:
                        del self.attached[vid]
                        self.detaching[vid] = (now + self.delays.get("detach", 0), iid, dev)

    _VOLUME = re.compile(
        r"(<volumeId>(vol-[0-9a-f]+)</volumeId>.*?<status>)(available|in-use)(</status>.*?)"
        r"(<attachmentSet/>|<attachmentSet>.*?</attachmentSet>)",
        re.S,
    )

    def _delay_volumes(self, text):
        now = time.monotonic()

        def fix(m):
            vid, status, atts = m.group(2), m.group(3), m.group(5)
            with self.lock:
                detach = self.detaching.get(vid)
                attach = self.attached.get(vid)
            if detach and now < detach[0] and status == "available":
                item = (
                    f"<item><volumeId>{vid}</volumeId><instanceId>{detach[1]}</instanceId>"
                    f"<device>{detach[2]}</device><status>detaching</status></item>"
                )
                return f"{m.group(1)}in-use{m.group(4)}<attachmentSet>{item}</attachmentSet>"
            if attach and now < attach[0] + self.delays.get("attach", 0):
                atts = atts.replace("<status>attached</status>", "<status>attaching</status>")
            return m.group(1) + status + m.group(4) + atts

        return self._VOLUME.sub(fix, text)

    def _snapshot_progress(self, sid):
        """Percent done of a snapshot still pending, else None."""
        with self.lock:
            created, took = self.snapshots.get(sid, (None, 0.0))
        if created is None or time.monotonic() >= created + took:
            return None
        return int(100 * (time.monotonic() - created) / took)

    _SNAPSHOT = re.compile(
        r"<snapshotId>(snap-[0-9a-f]+)</snapshotId>.*?(?=<snapshotId>|</snapshotSet>|$)", re.S
    )

    def _delay_snapshots(self, text, volume=""):
        def fix(m):
            sid, item = m.group(1), m.group(0)
            if "<CreateSnapshotResponse" in text:
                with self.lock:
                    n = self.snapshotted.get(volume, 0)
                    self.snapshotted[volume] = n + 1
                    took = (
                        self.delays["snapshot"]
                        if n == 0
                        else self.delays.get("snapshot_incremental", self.delays["snapshot"])
                    )
                    self.snapshots.setdefault(sid, (time.monotonic(), took))
            pct = self._snapshot_progress(sid)
            if pct is None:
                return item
            item = item.replace("<status>completed</status>", "<status>pending</status>")
            return re.sub(r"<progress>[^<]*</progress>", f"<progress>{pct}%</progress>", item)

        return self._SNAPSHOT.sub(fix, text)

    def _rewrite(self, environ, start_response, edit):
        """Run moto, then ``edit(text)`` its answer."""
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(self.app(environ, capture))
        out = edit(body.decode()).encode()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(out))))
        start_response(captured["status"], headers)
        return [out]

    def _rewrite_attaching(self, environ, start_response, rule):
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(self.app(environ, capture))
        vol = rule.get("volume_id")
        text = body.decode()

        def fix(m):
            item = m.group(0)
            if vol and vol not in item:
                return item
            return item.replace("<status>attached</status>", "<status>attaching</status>")

        text = re.sub(r"<attachmentSet>.*?</attachmentSet>", fix, text, flags=re.S)
        out = text.encode()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(out))))
        start_response(captured["status"], headers)
        return [out]


def make_app():
    from moto.server import DomainDispatcherApplication, create_backend_app

    app = DomainDispatcherApplication(create_backend_app)
    return FaultMiddleware(app)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    from moto.server import MotoRequestHandler
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(args.port))
    run_simple("127.0.0.1", args.port, make_app(), threaded=True, request_handler=MotoRequestHandler)


# -- test-side handle -------------------------------------------------------------


class MotoServer:
    """The moto server subprocess; ``url``, ``arm()``, ``reset()``, ``stats()``."""

    def __init__(self, port, log_path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.proc = None

    def start(self, timeout=30):
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.control("GET", "stats")
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"moto server exited: {Path(self.log_path).read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)
        raise TimeoutError("moto server did not come up")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def control(self, method, what, data=None):
        req = urllib.request.Request(
            f"{self.url}/_fault/{what}",
            data=json.dumps(data or {}).encode() if method == "POST" else None,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def arm(self, **rule):
        return self.control("POST", "arm", rule)

    def reset(self):
        return self.control("POST", "reset")

    def rate(self, limits):
        return self.control("POST", "rate", limits)

    def stats(self):
        return self.control("GET", "stats")

    def clear_calls(self):
        return self.control("POST", "calls")

    def set_delays(self, attach=0.0, detach=0.0, snapshot=0.0, snapshot_incremental=None):
        """EBS attach/detach/snapshots that take ``attach``/``detach``/``snapshot``
        seconds (0: instant, moto's); a volume's later snapshots ``snapshot_incremental``
        (None: ``snapshot``)."""
        delays = {"attach": attach, "detach": detach, "snapshot": snapshot}
        if snapshot_incremental is not None:
            delays["snapshot_incremental"] = snapshot_incremental or 0.001
        return self.control("POST", "delays", delays)

    def env(self):
        """Environment for boto3 clients of this server."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
        }


if __name__ == "__main__":
    main()
