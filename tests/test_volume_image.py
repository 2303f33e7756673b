"""LocalVolume image mode: an ext4 image with multi-mount protection,
loop-mounted in the server's private mount namespace (real hub, root only)."""

import os
import subprocess
import time

import pytest
from conftest import server_processes
from hubtest import wait_for

pytestmark = [
    pytest.mark.hub,
    pytest.mark.skipif(os.geteuid() != 0, reason="image volumes need root (loop devices, mount namespaces)"),
]

HUB_EXTRA_CONFIG = """
c.LocalVolume.mode = "image"
c.LocalVolume.image_size = "256M"
"""


def _mounted_here(path):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def test_image_volume_follows_user_and_is_private(hub):
    user = hub.create_user("imguser")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    (pid, env), *_ = server_processes(user).items()
    mount_point = env["DS_COMPUTE_VOLUME_PATH"]
    image = os.path.join(hub.data, "volumes", f"{user}.img")
    assert os.path.exists(image)
    # the mount exists in the server's namespace only, not in ours
    assert not _mounted_here(mount_point)
    with open(f"/proc/{pid}/mounts") as f:
        assert any(line.split()[1] == mount_point and line.split()[2] == "ext4" for line in f)
    r = hub.server_api(
        user,
        "api/contents/data.txt",
        token,
        method="PUT",
        json={"type": "file", "format": "text", "content": "on the image"},
    )
    assert r.status_code in (200, 201), r.text
    hub.stop_server(user)
    # the kernel released the loop device with the namespace
    wait_for(
        lambda: subprocess.run(["losetup", "-j", image], capture_output=True, text=True).stdout == "",
        timeout=10,
        message="loop device released",
    )
    hub.spawn(user, {"profile": "manycore"})
    r = hub.server_api(user, "api/contents/data.txt", token)
    assert r.status_code == 200 and r.json()["content"] == "on the image"
    hub.stop_server(user)


def test_image_attached_elsewhere_is_refused(hub):
    user = hub.create_user("imgbusy")
    hub.spawn(user, {"profile": "small"})
    hub.stop_server(user)
    image = os.path.join(hub.data, "volumes", f"{user}.img")
    mnt = os.path.join(hub.workdir, "elsewhere")
    os.makedirs(mnt, exist_ok=True)
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         f"mount -o loop '{image}' '{mnt}' && echo mounted && exec sleep 60"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "mounted"
        before = os.stat(image).st_mtime
        r = hub.spawn(user, {"profile": "gpu"}, wait=False)
        assert r.status_code == 500, r.text
        assert "attached elsewhere" in r.json()["message"]
        assert hub.server_model(user) is None
        assert server_processes(user) == {}
        assert os.stat(image).st_mtime == before  # nothing changed on the volume
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.5)
    # once released, the same volume attaches again
    model = hub.spawn(user, {"profile": "gpu"})
    assert model["user_options"]["profile"] == "gpu"
    hub.stop_server(user)
