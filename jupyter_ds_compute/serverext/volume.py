"""The user's volume as this server sees it: is it the notebook dir, how full.

Usage numbers, and which ones we report:

* the volume is a mount point (ext4 image, EBS, EFS): ``os.statvfs`` of the
  mount is exact and costs microseconds -> ``usage_source: "filesystem"``;
* the volume is a plain directory (the local driver's default): statvfs would
  describe the host's disk, not the user's data, so ``used_bytes`` is the
  directory's own size (``du``: allocated blocks, hard links once, symlinks
  not followed), computed in a thread, bounded in files and seconds, cached
  for ``cache_seconds``; ``size_bytes`` is then what the directory may grow
  to: its used bytes plus the host file system's free bytes ->
  ``usage_source: "directory"``. Until the first walk finishes,
  ``used_bytes`` is ``None``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


def check_notebook_dir(volume_path: str | None, root_dir: str) -> tuple[bool, str | None]:
    """Is the notebook dir (``root_dir``) on the user's volume?

    True when ``volume_path`` exists, is writable and is ``root_dir`` or one
    of its parents. Otherwise the reason, naming both paths.
    """
    if not volume_path:
        return False, (
            "DS_COMPUTE_VOLUME_PATH is not set, so the notebook directory "
            f"{root_dir} is not known to be on a ds-compute volume; files saved "
            "here may not follow you to another machine"
        )
    vol = os.path.realpath(volume_path)
    root = os.path.realpath(os.path.expanduser(root_dir))
    if not os.path.isdir(vol):
        return False, f"the volume path {volume_path} does not exist (notebook directory: {root_dir})"
    if not os.access(vol, os.W_OK | os.X_OK):
        return (
            False,
            f"the volume path {volume_path} is not writable by this server (notebook directory: {root_dir})",
        )
    try:
        inside = os.path.commonpath([vol, root]) == vol
    except ValueError:
        inside = False
    if not inside:
        return False, (
            f"the notebook directory {root_dir} is not on the volume {volume_path}: "
            "files saved there stay on this machine and will NOT follow you when "
            "you switch machines"
        )
    return True, None


def directory_usage(path: str, max_entries: int = 2_000_000, max_seconds: float = 20.0) -> tuple[int, bool]:
    """Bytes allocated under ``path``; ``(bytes, complete)``.

    Stops (``complete=False``) after ``max_entries`` entries or ``max_seconds``.
    """
    total = 0
    seen: set[tuple[int, int]] = set()
    entries = 0
    deadline = time.monotonic() + max_seconds
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            it = os.scandir(current)
        except OSError:
            continue
        with it:
            for entry in it:
                entries += 1
                if entries > max_entries or (entries % 4096 == 0 and time.monotonic() > deadline):
                    return total, False
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_nlink > 1 and not entry.is_dir(follow_symlinks=False):
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += getattr(st, "st_blocks", 0) * 512 or st.st_size
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total, True


def filesystem_usage(path: str) -> dict[str, int]:
    st = os.statvfs(path)
    size = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return {"size_bytes": size, "used_bytes": used, "free_bytes": free}


class VolumeUsage:
    """Cached usage of one volume path (see the module docstring)."""

    def __init__(
        self, path: str, cache_seconds: float = 120.0, max_entries: int = 2_000_000, max_seconds: float = 20.0
    ):
        self.path = path
        self.cache_seconds = cache_seconds
        self.max_entries = max_entries
        self.max_seconds = max_seconds
        self._du: tuple[int, bool] | None = None
        self._du_at = 0.0
        self._task: asyncio.Future | None = None

    def refresh(self) -> asyncio.Future | None:
        """Start a background walk unless one runs or the cache is fresh."""
        if self._task is not None and not self._task.done():
            return self._task
        if self._du is not None and time.monotonic() - self._du_at < self.cache_seconds:
            return None
        if os.path.ismount(self.path):
            return None
        self._task = asyncio.ensure_future(
            asyncio.to_thread(directory_usage, self.path, self.max_entries, self.max_seconds)
        )
        self._task.add_done_callback(self._store)
        return self._task

    def _store(self, task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is None:
            self._du = task.result()
            self._du_at = time.monotonic()

    async def snapshot(self, wait: float = 0.0) -> dict[str, Any]:
        try:
            fs = filesystem_usage(self.path)
        except OSError as e:
            return {"size_bytes": None, "used_bytes": None, "usage_source": None, "usage_error": str(e)}
        if os.path.ismount(self.path):
            return dict(fs, usage_source="filesystem")
        task = self.refresh()
        if task is not None and wait > 0:
            try:
                await asyncio.wait_for(asyncio.shield(task), wait)
            except (asyncio.TimeoutError, OSError):
                pass
        if self._du is None:
            return {
                "size_bytes": None,
                "used_bytes": None,
                "free_bytes": fs["free_bytes"],
                "usage_source": "directory",
                "usage_complete": False,
            }
        used, complete = self._du
        return {
            "size_bytes": used + fs["free_bytes"],
            "used_bytes": used,
            "free_bytes": fs["free_bytes"],
            "usage_source": "directory",
            "usage_complete": complete,
        }
