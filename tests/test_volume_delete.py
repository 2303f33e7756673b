"""LocalVolume.delete (directory and image mode) and remove_tree, driven
directly: it deletes the volume and never anything outside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from aws.harness import FakeSpawner
from traitlets.config import Config

from jupyter_ds_compute.volumes.base import VolumeError
from jupyter_ds_compute.volumes.local import LocalVolume, remove_tree

IS_ROOT = os.geteuid() == 0


def make(tmp_path, user="alice", name="", **over):
    c = Config()
    c.LocalVolume.root = str(tmp_path / "volumes")
    for key, value in over.items():
        c.LocalVolume[key] = value
    spawner = FakeSpawner(user, name, config=c)
    return LocalVolume(spawner)


def tree(path):
    """Every path under ``path`` (links not followed), relative, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, n), path))
    return sorted(out)


@pytest.fixture
def outside(tmp_path):
    """A directory next to the volume root that deletion must never touch."""
    d = tmp_path / "outside"
    (d / "sub").mkdir(parents=True)
    (d / "precious.txt").write_text("keep me")
    (d / "sub" / "deep.txt").write_text("keep me too")
    return d


async def test_delete_removes_volume_and_nothing_outside(tmp_path, outside):
    vol = make(tmp_path)
    vid = await vol.ensure()
    other = make(tmp_path, "bob")
    await other.ensure()
    (tmp_path / "volumes" / "bob" / "b.txt").write_text("bob's")
    path = tmp_path / "volumes" / vid
    (path / "notebooks" / "ro").mkdir(parents=True)
    (path / "notebooks" / "a.ipynb").write_text("{}")
    (path / "notebooks" / "ro" / "locked.txt").write_text("x")
    os.chmod(path / "notebooks" / "ro" / "locked.txt", 0o400)
    os.chmod(path / "notebooks" / "ro", 0o500)  # no write: its entries need fchmod first
    # links out of the volume, to a file, a directory, the root, a sibling volume, and dangling
    os.symlink(outside / "precious.txt", path / "link-file")
    os.symlink(outside, path / "link-dir")
    os.symlink(outside / "sub", path / "notebooks" / "link-sub")
    os.symlink(tmp_path / "volumes", path / "link-root")
    os.symlink(tmp_path / "volumes" / "bob", path / "link-bob")
    os.symlink("/nonexistent", path / "dangling")
    os.link(outside / "precious.txt", path / "hardlink.txt")  # same inode: only the name goes
    before = tree(outside)

    result = await vol.delete()

    assert result == {"id": "alice", "deleted": [f"directory {os.path.realpath(path)}"], "kept": []}
    assert not os.path.lexists(path)
    assert tree(outside) == before
    assert (outside / "precious.txt").read_text() == "keep me"
    assert (outside / "sub" / "deep.txt").read_text() == "keep me too"
    assert (tmp_path / "volumes" / "bob" / "b.txt").read_text() == "bob's"
    assert vol.volume_id == ""
    # idempotent: nothing left to delete is not an error
    assert await vol.delete() == {"id": "", "deleted": [], "kept": []}


async def test_named_server_volume_only(tmp_path):
    default, named = make(tmp_path), make(tmp_path, name="gpu-box")
    await default.ensure()
    vid = await named.ensure()
    assert (await named.delete())["id"] == vid
    assert [n for n in sorted(os.listdir(tmp_path / "volumes")) if not n.startswith(".")] == ["alice"]


async def test_volume_that_is_a_symlink_is_refused(tmp_path, outside):
    vol = make(tmp_path)
    os.makedirs(tmp_path / "volumes")
    os.symlink(outside, tmp_path / "volumes" / "alice")
    with pytest.raises(VolumeError, match="is a symbolic link, not a volume"):
        await vol.delete()
    assert os.path.islink(tmp_path / "volumes" / "alice")
    assert (outside / "precious.txt").read_text() == "keep me"


async def test_volume_that_is_a_file_is_refused(tmp_path):
    vol = make(tmp_path)
    os.makedirs(tmp_path / "volumes")
    (tmp_path / "volumes" / "alice").write_text("not a dir")
    with pytest.raises(VolumeError, match="is not a directory"):
        await vol.delete()
    assert (tmp_path / "volumes" / "alice").read_text() == "not a dir"


async def test_attached_volume_is_refused(tmp_path):
    vol = make(tmp_path)
    vid = await vol.ensure()
    (tmp_path / "volumes" / vid / "data.txt").write_text("in use")
    reg = tmp_path / "volumes" / ".attachments" / f"{vid}.json"
    reg.parent.mkdir()
    reg.write_text(json.dumps({"server": "alice", "host": "localhost", "path": "x"}))
    with pytest.raises(VolumeError, match=r"attached to alice on localhost: not deleting it.*stale: remove"):
        await vol.delete()
    assert (tmp_path / "volumes" / vid / "data.txt").read_text() == "in use"


@pytest.mark.parametrize("vid", ["..", ".", ".attachments", "a/../..", "", "../outside"])
def test_remove_tree_refuses_anything_but_a_plain_name(tmp_path, outside, vid):
    root = tmp_path / "volumes"
    (root / ".attachments").mkdir(parents=True)
    with pytest.raises(VolumeError, match="not a plain name"):
        remove_tree(str(root), vid)
    assert (root / ".attachments").is_dir()
    assert (outside / "precious.txt").exists()


@pytest.mark.parametrize("vid", ["..", ".attachments", "a/b"])
async def test_delete_refuses_unsafe_volume_id_from_state(tmp_path, vid):
    vol = make(tmp_path)
    await vol.ensure()
    vol.load_state({"driver": "local", "id": vid})
    with pytest.raises(VolumeError, match="not a plain name"):
        await vol.delete()
    assert (tmp_path / "volumes" / "alice").is_dir()


def test_remove_tree_root_given_through_a_symlink(tmp_path):
    """The configured root may itself be a link (admin's choice); the volume is still found."""
    real = tmp_path / "real"
    (real / "alice" / "x").mkdir(parents=True)
    os.symlink(real, tmp_path / "root-link")
    assert remove_tree(str(tmp_path / "root-link"), "alice") == [f"directory {real / 'alice'}"]
    assert os.listdir(real) == []


@pytest.mark.skipif(not IS_ROOT, reason="mounting needs root")
async def test_mount_point_inside_is_refused(tmp_path, outside):
    vol = make(tmp_path)
    vid = await vol.ensure()
    mnt = tmp_path / "volumes" / vid / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "--bind", str(outside), str(mnt)], check=True)
    try:
        with pytest.raises(VolumeError, match="is a mount point inside volume"):
            await vol.delete()
        assert (outside / "precious.txt").read_text() == "keep me"
        assert mnt.is_dir()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert tree(outside) == ["precious.txt", "sub", "sub/deep.txt"]


# -- image mode ---------------------------------------------------------------------------

needs_image = pytest.mark.skipif(
    not IS_ROOT or not shutil.which("mkfs.ext4") or not shutil.which("losetup"),
    reason="image volumes need root, mkfs.ext4 and losetup",
)


@needs_image
async def test_image_delete(tmp_path):
    vol = make(tmp_path, mode="image", image_size="16M")
    vid = await vol.ensure()
    image = tmp_path / "volumes" / f"{vid}.img"
    assert image.exists() and (tmp_path / "volumes" / "mnt" / vid).is_dir()
    result = await vol.delete()
    assert result["id"] == vid
    assert f"image {image}" in result["deleted"]
    assert not image.exists()
    assert not (tmp_path / "volumes" / "mnt" / vid).exists()
    assert (tmp_path / "volumes" / "mnt").is_dir()


@needs_image
async def test_image_loop_attached_is_refused(tmp_path):
    vol = make(tmp_path, mode="image", image_size="16M")
    vid = await vol.ensure()
    image = tmp_path / "volumes" / f"{vid}.img"
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True)
    try:
        with pytest.raises(VolumeError, match="attached elsewhere .*loop device"):
            await vol.delete()
        assert image.exists()
    finally:
        subprocess.run(["losetup", "-d", loop.stdout.strip()], check=True)
