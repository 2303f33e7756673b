"""Deleting a user or a named server through a real hub: the local volume is
kept by default and deleted with ``c.DSComputeSpawner.delete_volume = True``
(the hub calls ``Spawner.delete_forever``)."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
from conftest import ARTIFACTS, TEST_TIERS_CONFIG, _current_hub, hub_workdir, server_processes
from hubtest import Hub, wait_for

from jupyter_ds_compute.volumes.local import volume_id_for

pytestmark = pytest.mark.hub

CONFIGS = {
    "default": "c.JupyterHub.allow_named_servers = True\n",
    "delete": "c.JupyterHub.allow_named_servers = True\nc.DSComputeSpawner.delete_volume = True\n",
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def hub(request):
    """A real hub per setting of ``delete_volume`` (as conftest's ``hub``)."""
    name = f"{request.module.__name__}-{request.param}"
    h = Hub(hub_workdir(name), extra_config=TEST_TIERS_CONFIG + CONFIGS[request.param])
    h.mode = request.param
    _current_hub["api_port"] = h.env["DS_COMPUTE_HUB_PORT"]
    h.start()
    yield h
    h.stop()
    for pid in server_processes(""):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _current_hub.clear()
    shutil.copy(h.log_path, ARTIFACTS / f"{name}-hub.log")


def volume_dir(hub, user, server=""):
    return hub.data / "volumes" / volume_id_for(user, server)


def write(hub, user, token, name, text, server=""):
    r = hub.server_api(
        user,
        f"api/contents/{name}",
        token,
        method="PUT",
        server_name=server,
        json={"type": "file", "format": "text", "content": text},
    )
    assert r.status_code in (200, 201), r.text


def log_has(hub, text):
    return text in hub.log_path.read_text(errors="replace")


def test_delete_user(hub):
    user = hub.create_user(f"deluser-{hub.mode}")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    write(hub, user, token, "work.txt", "a day's work")
    path = volume_dir(hub, user)
    assert (path / "work.txt").read_text() == "a day's work"
    hub.stop_server(user)

    r = hub.api("DELETE", f"/users/{user}")
    assert r.status_code == 204, r.text
    assert hub.api("GET", f"/users/{user}").status_code == 404
    vid = volume_id_for(user)
    if hub.mode == "default":
        assert (path / "work.txt").read_text() == "a day's work"
        kept = f"Deleting {user}: kept local volume {vid} (c.DSComputeSpawner.delete_volume = True"
        assert log_has(hub, kept)
    else:
        assert not os.path.lexists(path)
        assert log_has(hub, f"Deleting {user}: deleted local volume {vid} (directory ")
    # the other volumes and the root are untouched
    assert (hub.data / "volumes").is_dir()


def test_delete_named_server(hub):
    user = hub.create_user(f"delnamed-{hub.mode}")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    write(hub, user, token, "default.txt", "on the default server")
    hub.spawn(user, {"profile": "small"}, server_name="box")
    write(hub, user, token, "box.txt", "on the named server", server="box")
    named, default = volume_dir(hub, user, "box"), volume_dir(hub, user)
    assert (named / "box.txt").exists()

    # the hub stops the running named server, then deletes it
    r = hub.api("DELETE", f"/users/{user}/servers/box", json={"remove": True})
    assert r.status_code in (202, 204), r.text
    wait_for(
        lambda: (
            "box" not in hub.api("GET", f"/users/{user}").json().get("servers", {})
            and log_has(hub, f"Deleting {user}:box: ")
        ),
        timeout=60,
        message="named server deleted",
    )
    assert "box" not in (hub.api("GET", f"/users/{user}?include_stopped_servers=1").json()["servers"])
    if hub.mode == "default":
        assert (named / "box.txt").read_text() == "on the named server"
    else:
        wait_for(lambda: not os.path.lexists(named), timeout=30, message="named volume deleted")
    # the default server and its volume are untouched either way
    assert hub.server_model(user)["ready"]
    assert (default / "default.txt").read_text() == "on the default server"
    hub.stop_server(user)


def test_volume_still_attached_is_not_deleted(hub):
    """A stale attachment record (a server the hub lost track of) blocks the
    deletion; by default the volume is kept anyway, and the log says which."""
    user = hub.create_user("delattached")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    write(hub, user, token, "keep.txt", "still used elsewhere")
    hub.stop_server(user)
    vid = volume_id_for(user)
    record = hub.data / "volumes" / ".attachments" / f"{vid}.json"
    record.write_text(json.dumps({"server": "someone-else", "host": "localhost"}))
    try:
        r = hub.api("DELETE", f"/users/{user}")
        assert r.status_code == 204, r.text
        assert (volume_dir(hub, user) / "keep.txt").read_text() == "still used elsewhere"
        if hub.mode == "default":
            assert log_has(hub, f"Deleting {user}: kept local volume {vid}")
        else:
            assert log_has(
                hub,
                f"Deleting {user}: not deleting local volume {vid}: Volume {vid} is attached to someone-else",
            )
    finally:
        record.unlink()
