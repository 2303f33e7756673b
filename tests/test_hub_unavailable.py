"""An unreachable hub is "unknown", never a failure (issue 12 §4), without a hub:

- ``HubAPI.request`` against in-process servers: refused, reset, silent,
  502/503/504 are :class:`HubUnavailable`; 400/404/500 are answers;
- the orchestrator against a fake hub that goes down: it waits with growing
  backoff (logged with user and server), never rolls back against the down
  hub, and finishes once it is back; a hub silent for too long ends the
  switch ``failed`` with ``failure = hub-unavailable``, which reconcile
  revisits;
- the service's data-dir lock: a stale ds-compute service holding it is
  ended, any other holder is one clear line.
"""

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from fakes import FakeHub, new_switch, statuses

from jupyter_ds_compute.service.app import ServiceLockError, lock_data_dir
from jupyter_ds_compute.service.hubapi import HubAPI, HubAPIError, HubUnavailable
from jupyter_ds_compute.service.orchestrator import HUB_UNAVAILABLE, Orchestrator
from jupyter_ds_compute.service.store import Store

# -- classification ---------------------------------------------------------------


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _answer(status, body=b'{"message": "from the server"}'):
    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    return handler


async def _reset(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()


async def _silent(reader, writer):
    await asyncio.sleep(30)


async def test_refused_is_unavailable():
    api = HubAPI(f"http://127.0.0.1:{_closed_port()}/hub/api", "t", request_timeout=2)
    with pytest.raises(HubUnavailable) as e:
        await api.get_server("alice")
    assert e.value.status == 0 and "unreachable" in e.value.message


@pytest.mark.parametrize("handler", [_reset, _silent], ids=["reset", "no-answer"])
async def test_reset_and_silence_are_unavailable(handler):
    server, port = await _serve(handler)
    try:
        api = HubAPI(f"http://127.0.0.1:{port}/hub/api", "t", request_timeout=0.5)
        with pytest.raises(HubUnavailable):
            await api.stop_server("alice")
    finally:
        server.close()


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_proxy_gateway_errors_are_unavailable(status):
    server, port = await _serve(_answer(status, b"<html>proxy error</html>"))
    try:
        api = HubAPI(f"http://127.0.0.1:{port}/hub/api", "t", request_timeout=2)
        with pytest.raises(HubUnavailable) as e:
            await api.get_server("alice")
        assert e.value.status == status
    finally:
        server.close()


@pytest.mark.parametrize("status", [400, 403, 500])
async def test_real_answers_are_not_unavailable(status):
    server, port = await _serve(_answer(status))
    try:
        api = HubAPI(f"http://127.0.0.1:{port}/hub/api", "t", request_timeout=2)
        with pytest.raises(HubAPIError) as e:
            await api.stop_server("alice")
        assert not isinstance(e.value, HubUnavailable)
        assert e.value.status == status and e.value.message == "from the server"
    finally:
        server.close()


async def test_404_is_an_answer():
    server, port = await _serve(_answer(404))
    try:
        api = HubAPI(f"http://127.0.0.1:{port}/hub/api", "t", request_timeout=2)
        assert await api.get_server("alice") is None
    finally:
        server.close()


# -- the orchestrator and a hub that goes down ------------------------------------


class FlakyHub(FakeHub):
    """A FakeHub whose every call raises HubUnavailable while ``down``.

    ``down_at``: the call (e.g. ``"POST"``) that takes the hub down; like a
    killed hub, a spawn in flight is lost then (the server is stopped when
    it comes back) unless ``keep_spawn``.
    """

    def __init__(self):
        super().__init__()
        self.down = False
        self.down_at = None
        self.keep_spawn = False
        self.probes = []

    def _check(self, what):
        if self.down_at == what:
            self.down_at = None
            self.down = True
            if not self.keep_spawn:
                for m in self.servers.values():
                    m.update(ready=False, pending=None, stopped=True)
        if self.down:
            self.probes.append(time.monotonic())
            raise HubUnavailable(0, "hub unreachable: [Errno 111] Connection refused", method=what, path="/x")

    async def get_server(self, user, name=""):
        self._check("GET")
        return await super().get_server(user, name)

    async def stop_server(self, user, name=""):
        self._check("DELETE")
        return await super().stop_server(user, name)

    async def patch_user_options(self, user, name, options):
        self._check("PATCH")
        return await super().patch_user_options(user, name, options)

    async def start_server(self, user, name, options):
        self._check("POST")
        return await super().start_server(user, name, options)


@pytest.fixture
def store():
    s = Store()
    yield s
    s.close()


@pytest.fixture
def flaky():
    h = FlakyHub()
    h.add("alice")
    return h


def orch(hub, store, **kw):
    kw.setdefault("stop_timeout", 5)
    kw.setdefault("start_timeout", 5)
    kw.setdefault("backoff_initial", 0.02)
    kw.setdefault("backoff_max", 0.08)
    return Orchestrator(hub, store, **kw)


@pytest.mark.parametrize("at", ["DELETE", "PATCH", "POST"])
async def test_hub_down_mid_switch_is_waited_for_then_finished(flaky, store, at, caplog):
    flaky.down_at = at
    sw = new_switch(store)
    o = orch(flaky, store)
    task = asyncio.ensure_future(o.run(sw["id"]))
    await asyncio.sleep(0.4)
    # unknown: still running, nothing final, no rollback against the down hub
    rec = store.get_switch(sw["id"])
    assert rec["state"] == "running", rec
    assert "rollback" not in statuses(rec)
    running = [s for s in rec["steps"] if s["status"] == "running"]
    assert running and "waiting for the hub" in running[0]["message"], rec
    flaky.down = False
    rec = await asyncio.wait_for(task, 10)
    assert rec["state"] == "succeeded", rec
    assert flaky.servers[("alice", "")]["ready"]
    assert flaky.servers[("alice", "")]["user_options"] == {"profile": "gpu"}
    waits = [r.getMessage() for r in caplog.records if "did not answer" in r.getMessage()]
    assert waits and all("alice:" in w and sw["id"] in w for w in waits), waits
    # exponential backoff, bounded by backoff_max
    gaps = [b - a for a, b in zip(flaky.probes, flaky.probes[1:])]
    assert len(gaps) >= 3 and gaps[1] > gaps[0] * 1.5, gaps
    assert max(gaps) < 0.08 + 0.05, gaps


async def test_hub_down_during_rollback_resumes_the_rollback(flaky, store):
    flaky.broken.add("gpu")
    sw = new_switch(store)
    o = orch(flaky, store)
    real_start = flaky.start_server
    calls = []

    async def start(user, name, options):
        calls.append(options["profile"])
        if options["profile"] == "small" and len(calls) == 2:
            flaky.down = True  # the hub dies when the rollback starts the old tier
            asyncio.get_running_loop().call_later(0.2, setattr, flaky, "down", False)
        return await real_start(user, name, options)

    flaky.start_server = start
    rec = await asyncio.wait_for(o.run(sw["id"]), 10)
    assert rec["state"] == "rolled_back", rec
    assert flaky.servers[("alice", "")]["user_options"] == {"profile": "small"}
    assert flaky.servers[("alice", "")]["ready"]


async def test_hub_silent_too_long_fails_unknown_then_reconcile_finishes(flaky, store):
    flaky.down_at = "POST"
    sw = new_switch(store)
    rec = await asyncio.wait_for(orch(flaky, store, hub_wait_timeout=0.3).run(sw["id"]), 10)
    assert rec["state"] == "failed" and rec["failure"] == HUB_UNAVAILABLE, rec
    assert "unknown" in rec["error"] and "rolled back" in rec["error"]
    assert "rollback" not in statuses(rec)
    # the POST that met the down hub was the last call: no rollback was tried against it
    assert [c[0] for c in flaky.calls] == ["DELETE", "PATCH"], flaky.calls
    # the next service start looks again, once the hub answers
    flaky.down = False
    tasks = await orch(flaky, store).reconcile()
    assert len(tasks) == 1
    await asyncio.gather(*tasks)
    rec = store.get_switch(sw["id"])
    assert rec["state"] == "succeeded" and rec["failure"] is None, rec
    assert flaky.servers[("alice", "")]["user_options"] == {"profile": "gpu"}


async def test_reconcile_does_not_revisit_a_superseded_unknown_switch(flaky, store):
    old = new_switch(store)
    store.set_state(old["id"], "failed", error="hub silent", failure=HUB_UNAVAILABLE)
    newer = new_switch(store, to="small")
    store.set_state(newer["id"], "succeeded")
    assert store.switches_to_revisit() == []
    assert await orch(flaky, store).reconcile() == []
    assert store.get_switch(old["id"])["state"] == "failed"


async def test_store_adds_the_failure_column_to_an_old_database(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE switches (id TEXT PRIMARY KEY, user TEXT NOT NULL, server_name TEXT NOT NULL,"
        " requested_by TEXT NOT NULL, from_profile TEXT, to_profile TEXT NOT NULL, from_options TEXT NOT NULL,"
        " to_options TEXT NOT NULL, state TEXT NOT NULL, error TEXT, next TEXT, created REAL NOT NULL,"
        " updated REAL NOT NULL, finished REAL);"
    )
    db.close()
    s = Store(f"sqlite:///{path}")
    try:
        sw = new_switch(s)
        assert s.get_switch(sw["id"])["failure"] is None
    finally:
        s.close()


# -- one service per data dir ------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(os.path.join(sys.argv[1], "service.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _holder(tmp_path, *argv):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), *argv], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_is_exclusive_and_released_at_exit(tmp_path):
    log = logging.getLogger("test")
    fd = lock_data_dir(str(tmp_path), 1, log)
    assert (tmp_path / "service.lock").read_text().strip() == str(os.getpid())
    assert oct(os.stat(tmp_path / "service.lock").st_mode & 0o777) == "0o600"
    # a second instance in another process cannot have it while we hold it
    probe = "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB)"
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "service.lock")], capture_output=True)
    assert r.returncode != 0 and b"BlockingIOError" in r.stderr
    os.close(fd)
    r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "service.lock")], capture_output=True)
    assert r.returncode == 0, r.stderr


def test_lock_waits_for_a_holder_that_stops(tmp_path):
    proc = _holder(tmp_path)
    try:
        threading_timer = __import__("threading").Timer(0.5, proc.kill)
        threading_timer.start()
        t0 = time.monotonic()
        fd = lock_data_dir(str(tmp_path), 10, logging.getLogger("test"))
        assert 0.4 < time.monotonic() - t0 < 5
        os.close(fd)
    finally:
        proc.kill()
        proc.wait()


def test_lock_ends_a_stale_service(tmp_path):
    # its command line names the service module, and its parent is this test
    # process, which is not a hub: a service left behind by a hub that is gone
    proc = _holder(tmp_path, "jupyter_ds_compute.service")
    try:
        fd = lock_data_dir(str(tmp_path), 0.3, logging.getLogger("test"))
        assert proc.wait(10) == -15  # SIGTERM
        os.close(fd)
    finally:
        proc.kill()
        proc.wait()


def test_lock_held_by_something_else_is_one_line(tmp_path):
    proc = _holder(tmp_path, "not-the-service")
    try:
        with pytest.raises(ServiceLockError) as e:
            lock_data_dir(str(tmp_path), 0.3, logging.getLogger("test"))
        message = str(e.value)
        assert "\n" not in message
        assert f"pid {proc.pid}" in message and "data_dir" in message
        assert proc.poll() is None  # left alone
    finally:
        proc.kill()
        proc.wait()


# -- a local volume is held by a live process, not by a name ----------------------


def _volume(tmp_path, user="alice"):
    from aws.harness import FakeSpawner
    from traitlets.config import Config

    from jupyter_ds_compute.volumes.local import LocalVolume

    c = Config()
    c.LocalVolume.root = str(tmp_path / "volumes")
    return LocalVolume(FakeSpawner(user, "", config=c))


async def test_attach_refuses_a_live_holder_of_the_same_name_and_takes_over_a_dead_one(tmp_path):
    import socket as _socket

    from jupyter_ds_compute.backends.base import HostInfo
    from jupyter_ds_compute.volumes.base import VolumeError

    vol = _volume(tmp_path)
    await vol.ensure()
    host = HostInfo(kind="local", id=_socket.gethostname())
    assert await vol.attach(host) == vol.path
    env = dict(os.environ, DS_COMPUTE_VOLUME_ID=vol.volume_id, DS_COMPUTE_VOLUME_PATH=vol.path,
               DS_COMPUTE_SERVER_KEY="alice//0123abcd")  # fmt: skip
    # a server of the same hub user and server the hub lost: its name is ours, it is alive
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        time.sleep(0.2)
        again = _volume(tmp_path)
        again.stopping_wait = 0.3
        await again.ensure()
        with pytest.raises(VolumeError) as e:
            await again.attach(host)
        assert f"pid {orphan.pid}" in e.value.message and "alice//0123abcd" in e.value.message
    finally:
        orphan.kill()
        orphan.wait()
    # dead now: the record (ours, or someone else's on this machine) is stale and taken over
    record = tmp_path / "volumes" / ".attachments" / f"{vol.volume_id}.json"
    record.write_text('{"server": "ghost:", "host": "%s", "path": "x"}' % host.id)
    assert await again.attach(host) == vol.path
    assert json.loads(record.read_text())["server"] == again.spawner._log_name
    # a record naming a server on another machine cannot be checked: refused
    record.write_text('{"server": "ghost:", "host": "node-7", "path": "x"}')
    third = _volume(tmp_path)
    await third.ensure()
    with pytest.raises(VolumeError, match="node-7"):
        await third.attach(host)


async def test_attach_waits_for_a_server_that_is_still_exiting(tmp_path):
    """A switch: the old tier's process ends a moment after its stop returned
    (Slurm: the job is COMPLETING). attach waits for it instead of refusing."""
    import socket as _socket

    from jupyter_ds_compute.backends.base import HostInfo

    vol = _volume(tmp_path)
    await vol.ensure()
    host = HostInfo(kind="local", id=_socket.gethostname())
    env = dict(os.environ, DS_COMPUTE_VOLUME_ID=vol.volume_id, DS_COMPUTE_VOLUME_PATH=vol.path,
               DS_COMPUTE_SERVER_KEY="alice//old")  # fmt: skip
    exiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"], env=env)
    try:
        time.sleep(0.2)
        vol.stopping_wait = 10
        started = time.monotonic()
        assert await vol.attach(host) == vol.path
        assert exiting.poll() is not None, "attach did not wait for the exiting holder"
        assert time.monotonic() - started < 8
    finally:
        exiting.kill()
        exiting.wait()
