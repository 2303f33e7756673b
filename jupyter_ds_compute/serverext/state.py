"""Kernel state across a switch (``keep_state``): the server's side.

Before the server extension forwards a ``keep_state`` switch to the hub
service, :meth:`StateKeeper.save_all` runs
``ds_compute_state.kernel_save(dir)`` (see :mod:`jupyter_ds_compute.kernelstate`)
silently in the kernel of every Jupyter session (notebook, console) and writes
``manifest.json`` (which session had which notebook path, name, type, kernel
name and state directory). Everything lives under ``<volume>/.ds-compute/state/``
(mode 0700, files 0600), one directory per kernel.

When the new server starts, :meth:`StateKeeper.restore_all` recreates the same
sessions through the session manager (same paths, same kernel names) and runs
``ds_compute_state.kernel_restore(dir)`` in each new kernel before anyone can
run anything there; the notice ("restored 14 variables (1.3 GB) in 2.1 s; not
restored: conn (socket)") is printed at the top of the user's first cell and
kept in ``last.json`` for ``GET /ds-compute/api/state`` and
``%ds_compute state``. A kernel's state is deleted once it was restored
without failures, unless ``DSComputeExtension.keep_state_files``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time

MANIFEST = "manifest.json"
LAST = "last.json"
MODULE = "ds_compute_state"


class StateError(Exception):
    """A save that cannot go on (the switch is not forwarded); the message is for the user."""


def _write_private(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


async def run_in_kernel(kernel, code: str, expression: str, timeout: float) -> dict:
    """Execute ``code`` silently in ``kernel`` (a jupyter_client kernel manager);
    the value of ``expression`` (a JSON string) from the reply's user_expressions."""
    client = kernel.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=timeout)
        msg_id = client.execute(
            code, silent=True, store_history=False, user_expressions={"r": expression}, allow_stdin=False
        )
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the kernel did not answer within {timeout:.0f} s")
            reply = await client.get_shell_msg(timeout=left)
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                break
        content = reply["content"]
        if content.get("status") != "ok":
            raise RuntimeError(f"{content.get('ename')}: {content.get('evalue')}")
        r = content.get("user_expressions", {}).get("r", {})
        if r.get("status") != "ok":
            raise RuntimeError(f"{r.get('ename')}: {r.get('evalue')}")
        text = r["data"]["text/plain"]
        # text/plain of a str is its repr
        import ast

        return json.loads(ast.literal_eval(text))
    finally:
        client.stop_channels()


class StateKeeper:
    def __init__(self, serverapp, root: str, log, *, busy_wait: float, timeout: float, reserve_bytes: int,
                 keep_files: bool, max_age: float = 3600.0):  # fmt: skip
        self.serverapp = serverapp
        self.root = root
        self.log = log
        self.busy_wait = busy_wait
        self.timeout = timeout
        self.reserve_bytes = reserve_bytes
        self.keep_files = keep_files
        self.max_age = max_age
        self.restoring: asyncio.Future | None = None

    def kernel_dir(self, kernel_id: str) -> str:
        return os.path.join(self.root, os.path.basename(kernel_id))

    def last(self) -> dict:
        return read_json(os.path.join(self.root, LAST)) or {"save": None, "restore": None}

    def _record(self, what: str, data: dict) -> None:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        last = self.last()
        last[what] = data
        _write_private(os.path.join(self.root, LAST), last)

    async def _wait_idle(self, kernel) -> bool:
        deadline = time.monotonic() + self.busy_wait
        while getattr(kernel, "execution_state", "idle") == "busy":
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def save_all(self, saved_by_kernel: str | None = None) -> dict:
        """Save every session's kernel; the manifest. Raises :class:`StateError`
        (after removing what it wrote) if a save would fill the volume."""
        t0 = time.monotonic()
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        sessions = await self.serverapp.session_manager.list_sessions()
        entries = []
        for s in sessions:
            kernel_model = s.get("kernel") or {}
            kid = kernel_model.get("id")
            entry = {
                "path": s.get("path"),
                "name": s.get("name"),
                "type": s.get("type"),
                "kernel_name": kernel_model.get("name"),
                "kernel_id": kid,
                "dir": os.path.basename(kid or ""),
                "summary": None,
                "error": None,
            }
            entries.append(entry)
            directory = self.kernel_dir(kid)
            if kid == saved_by_kernel:  # the magic's own kernel saved itself (it is busy running the magic)
                index = read_json(os.path.join(directory, "index.json"))
                if index is None:
                    entry["error"] = "the kernel that asked for the switch saved nothing"
                else:
                    entry["summary"] = {
                        k: index.get(k) for k in ("count", "bytes", "not_saved", "stopped", "seconds")
                    }
                continue
            try:
                kernel = self.serverapp.kernel_manager.get_kernel(kid)
            except KeyError:
                entry["error"] = "the kernel is gone"
                continue
            if not await self._wait_idle(kernel):
                entry["error"] = (
                    f"the kernel was still busy after {self.busy_wait:.0f} s; its variables were not saved"
                )
                continue
            code = (
                f"import {MODULE} as _ds_compute_state\n"
                f"_ds_compute_state_result = _ds_compute_state.kernel_save({directory!r}, {self.reserve_bytes!r})"
            )
            try:
                entry["summary"] = await run_in_kernel(kernel, code, "_ds_compute_state_result", self.timeout)
            except Exception as e:
                entry["error"] = f"saving failed: {e}"
        manifest = {"saved_at": time.time(), "sessions": entries, "seconds": round(time.monotonic() - t0, 3)}
        stopped = [e for e in entries if (e["summary"] or {}).get("stopped")]
        if stopped:
            self.discard()
            e = stopped[0]
            raise StateError(
                f"Not switching: saving the variables of {e['path']} would fill your volume "
                f"({e['summary']['stopped']}). Free some space, or switch without keeping the variables."
            )
        _write_private(os.path.join(self.root, MANIFEST), manifest)
        self._record("save", manifest)
        self.log.info(
            "ds-compute: saved the state of %d kernels in %.1f s under %s",
            len(entries),
            manifest["seconds"],
            self.root,
        )
        return manifest

    def discard(self) -> None:
        """Remove a saved state (the switch did not go ahead)."""
        manifest = read_json(os.path.join(self.root, MANIFEST)) or {}
        for e in manifest.get("sessions", []):
            shutil.rmtree(self.kernel_dir(e.get("dir") or "-"), ignore_errors=True)
        for name in os.listdir(self.root) if os.path.isdir(self.root) else []:
            path = os.path.join(self.root, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
        try:
            os.unlink(os.path.join(self.root, MANIFEST))
        except OSError:
            pass

    async def restore_all(self) -> dict | None:
        """Recreate the saved sessions and restore their kernels (at server start)."""
        path = os.path.join(self.root, MANIFEST)
        manifest = read_json(path)
        if manifest is None:
            return None
        os.unlink(path)  # one restore per save, whatever happens
        age = time.time() - float(manifest.get("saved_at") or 0)
        if age > self.max_age:
            self.log.warning(
                "ds-compute: not restoring kernel state saved %.0f s ago (older than %.0f s)",
                age,
                self.max_age,
            )
            self.discard()
            return None
        t0 = time.monotonic()
        results = []
        for e in manifest.get("sessions", []):
            res = {"path": e.get("path"), "kernel_name": e.get("kernel_name"), "summary": None,
                   "error": e.get("error")}  # fmt: skip
            results.append(res)
            directory = self.kernel_dir(e.get("dir") or "-")
            try:
                model = await self.serverapp.session_manager.create_session(
                    path=e.get("path"),
                    name=e.get("name"),
                    type=e.get("type"),
                    kernel_name=e.get("kernel_name"),
                )
            except Exception as exc:
                res["error"] = f"could not start the session again: {exc}"
                self.log.error("ds-compute: restoring %s: %s", e.get("path"), exc)
                continue
            if res["error"] or not os.path.exists(os.path.join(directory, "index.json")):
                res["error"] = res["error"] or "nothing was saved"
                continue
            kernel = self.serverapp.kernel_manager.get_kernel(model["kernel"]["id"])
            code = (
                f"import {MODULE} as _ds_compute_state\n"
                f"_ds_compute_state_result = _ds_compute_state.kernel_restore({directory!r})"
            )
            try:
                res["summary"] = await run_in_kernel(kernel, code, "_ds_compute_state_result", self.timeout)
            except Exception as exc:
                res["error"] = f"restoring failed: {exc}"
                continue
            s = res["summary"]
            if not s.get("error") and not s.get("failed") and not self.keep_files:
                shutil.rmtree(directory, ignore_errors=True)
            self.log.info("ds-compute: %s: %s", e.get("path"), s.get("notice"))
        out = {"restored_at": time.time(), "sessions": results, "seconds": round(time.monotonic() - t0, 3)}
        self._record("restore", out)
        return out
