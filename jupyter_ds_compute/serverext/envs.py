"""Environments on the user's volume (venvs and conda envs).

Every directory directly under an env root (``$DS_COMPUTE_VOLUME_PATH/envs``,
each ``CONDA_ENVS_PATH`` entry, ``$DS_COMPUTE_VOLUME_PATH/.conda/envs``) that
looks like an environment (``bin/python``, ``pyvenv.cfg`` or ``conda-meta``)
is one. The listing path only stats and lists directories, never runs a
process:

* ipykernel present  <=> ``lib/python3*/site-packages/ipykernel`` exists;
* interpreter missing or a dangling symlink (a venv made from a Python that
  only another machine has) -> ``broken`` at once;
* whether the interpreter really runs here (right architecture, libc, and
  ``import ipykernel`` works) is checked once per environment per server
  process, in the background (:class:`EnvChecker`), and cached; a failure
  turns the env ``broken`` with the interpreter's own error.

The scan result is cached and reused while the roots' mtimes and every known
environment's ``bin/`` and ``site-packages/`` mtimes are unchanged, so a
kernel list costs a few ``stat`` calls; a new env (root mtime changes), a
``pip install ipykernel`` (site-packages mtime) or a deleted interpreter
(``bin/`` mtime) triggers a rescan.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

KERNEL_PREFIX = "ds-env-"
#: touched when a kernel of the env starts: "last used" follows the env
LAST_USED_MARKER = ".ds-compute-last-used"

OK = "ok"
UNCHECKED = "unchecked"
BROKEN = "broken"
NO_IPYKERNEL = "no_ipykernel"


def default_roots(env: Mapping[str, str]) -> list[str]:
    """Env roots for a server whose volume is ``DS_COMPUTE_VOLUME_PATH``."""
    roots: list[str] = []
    vol = env.get("DS_COMPUTE_VOLUME_PATH")
    if vol:
        roots.append(os.path.join(vol, "envs"))
    for p in (env.get("CONDA_ENVS_PATH") or "").split(os.pathsep):
        if p:
            roots.append(os.path.expanduser(p))
    if vol:
        roots.append(os.path.join(vol, ".conda", "envs"))
    seen: set[str] = set()
    out = []
    for r in roots:
        key = os.path.realpath(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "env"


def _mtime(path: str | None) -> int | None:
    if not path:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


@dataclass
class EnvInfo:
    name: str  # shown to the user, e.g. "envs/torch" (relative to the volume)
    path: str
    kind: str  # "venv" | "conda" | "unknown"
    python: str
    kernel_name: str
    display_name: str
    site_packages: str | None = None
    has_ipykernel: bool = False
    python_version: str | None = None
    ipykernel_version: str | None = None
    status: str = UNCHECKED
    reason: str | None = None
    resource_dir: str | None = None
    # fingerprint of the directories whose change means "rescan this env"
    watch: dict[str, int | None] = field(default_factory=dict)

    @property
    def is_kernel(self) -> bool:
        return self.status in (OK, UNCHECKED)

    def last_used(self) -> float | None:
        """Last kernel start recorded by ds-compute, or last package install."""
        times = []
        for p in (os.path.join(self.path, LAST_USED_MARKER), self.site_packages):
            if p:
                try:
                    times.append(os.stat(p).st_mtime)
                except OSError:
                    pass
        return max(times) if times else None

    def to_model(self, size: tuple[int, bool] | None = None) -> dict[str, Any]:
        model = asdict(self)
        model.pop("watch")
        model["is_kernel"] = self.is_kernel
        model["last_used"] = self.last_used()
        model["size_bytes"] = size[0] if size else None
        model["size_complete"] = size[1] if size else None
        return model


def _site_packages(env_path: str) -> tuple[str | None, str | None]:
    """(site-packages dir, "3.X" from lib/python3.X) of an env, if any."""
    lib = os.path.join(env_path, "lib")
    try:
        names = sorted(os.listdir(lib), reverse=True)
    except OSError:
        return None, None
    for n in names:
        if n.startswith("python3"):
            sp = os.path.join(lib, n, "site-packages")
            if os.path.isdir(sp):
                return sp, n[len("python") :] or None
    return None, None


def _label(path: str, volume_path: str | None) -> str:
    if volume_path:
        try:
            rel = os.path.relpath(path, volume_path)
        except ValueError:
            rel = None
        if rel and not rel.startswith(".."):
            return rel
    return path


def inspect_env(path: str, volume_path: str | None) -> EnvInfo | None:
    """Describe one directory, or None if it is not an environment."""
    bindir = os.path.join(path, "bin")
    python = os.path.join(bindir, "python")
    if not os.path.lexists(python):
        python3 = os.path.join(bindir, "python3")
        if os.path.lexists(python3):
            python = python3
    if os.path.isdir(os.path.join(path, "conda-meta")):
        kind = "conda"
    elif os.path.isfile(os.path.join(path, "pyvenv.cfg")):
        kind = "venv"
    elif os.path.lexists(python):
        kind = "unknown"
    else:
        return None
    name = _label(path, volume_path)
    sp, pyver = _site_packages(path)
    info = EnvInfo(
        name=name,
        path=path,
        kind=kind,
        python=python,
        kernel_name="",  # set by scan_roots (needs all names to stay unique)
        display_name=f"Python ({name})",
        site_packages=sp,
        python_version=pyver,
        watch={"bin": _mtime(bindir), "site": _mtime(sp)},
    )
    if sp:
        info.has_ipykernel = os.path.isdir(os.path.join(sp, "ipykernel"))
    res = os.path.join(path, "share", "jupyter", "kernels", "python3")
    info.resource_dir = res if os.path.isdir(res) else None
    if not os.path.lexists(python):
        info.status, info.reason = BROKEN, f"no Python interpreter: {python} does not exist"
    elif not os.path.exists(python):
        target = os.path.realpath(python)
        info.status, info.reason = (
            BROKEN,
            (
                f"the interpreter {python} points to {target}, which does not exist on "
                "this machine (the environment was made with a Python that only another "
                "machine has). Recreate it with a Python that exists on every tier, "
                "e.g. a conda env, or `python -m venv --copies`"
            ),
        )
    elif not os.access(python, os.X_OK):
        info.status, info.reason = BROKEN, f"the interpreter {python} is not executable"
    elif not info.has_ipykernel:
        info.status, info.reason = (
            NO_IPYKERNEL,
            (f"ipykernel is not installed; to use it as a kernel run: {python} -m pip install ipykernel"),
        )
    return info


def scan_roots(roots: Iterable[str], volume_path: str | None) -> list[EnvInfo]:
    """All environments directly under ``roots`` (no process is run)."""
    envs: list[EnvInfo] = []
    used: set[str] = set()
    for root in roots:
        try:
            with os.scandir(root) as it:
                children = [e for e in it if not e.name.startswith(".") and e.is_dir()]
        except OSError:
            continue
        for entry in sorted(children, key=lambda e: e.name):
            info = inspect_env(entry.path, volume_path)
            if info is None:
                continue
            kname = KERNEL_PREFIX + _slug(entry.name)
            if kname in used:  # same env name under two roots
                kname = KERNEL_PREFIX + _slug(info.name)
            n = 2
            base = kname
            while kname in used:
                kname = f"{base}-{n}"
                n += 1
            used.add(kname)
            info.kernel_name = kname
            envs.append(info)
    return envs


class EnvScanner:
    """:func:`scan_roots` cached by directory mtimes, plus interpreter checks."""

    def __init__(self, roots: list[str], volume_path: str | None):
        self.roots = list(roots)
        self.volume_path = volume_path
        self._key: tuple | None = None
        self._envs: list[EnvInfo] = []
        self.scans = 0  # how many real scans ran (tests, benchmarks)
        # per server process: python path -> (fingerprint, status, reason, pyver, ikver)
        self._checks: dict[str, tuple] = {}

    def _roots_key(self) -> tuple:
        return tuple((r, _mtime(r)) for r in self.roots)

    def _still_valid(self, roots_key: tuple) -> bool:
        if self._key != roots_key:
            return False
        for env in self._envs:
            if env.watch.get("bin") != _mtime(os.path.join(env.path, "bin")):
                return False
            if env.site_packages is None:
                sp, _ = _site_packages(env.path)
                if sp is not None:
                    return False
            elif env.watch.get("site") != _mtime(env.site_packages):
                return False
        return True

    def envs(self) -> list[EnvInfo]:
        key = self._roots_key()
        if not self._still_valid(key):
            self._envs = scan_roots(self.roots, self.volume_path)
            self._key = key
            self.scans += 1
        for env in self._envs:
            self._apply_check(env)
        return self._envs

    def kernel_envs(self) -> list[EnvInfo]:
        return [e for e in self.envs() if e.is_kernel]

    # -- interpreter checks ---------------------------------------------
    @staticmethod
    def _fingerprint(env: EnvInfo) -> tuple:
        real = os.path.realpath(env.python)
        return (real, _mtime(real), env.watch.get("site"))

    def _apply_check(self, env: EnvInfo) -> None:
        if env.status not in (OK, UNCHECKED):
            return
        found = self._checks.get(env.python)
        if found is None or found[0] != self._fingerprint(env):
            env.status, env.reason = UNCHECKED, None
            return
        _, env.status, env.reason, pyver, ikver = found
        env.python_version = pyver or env.python_version
        env.ipykernel_version = ikver

    def pending(self) -> list[EnvInfo]:
        return [e for e in self.envs() if e.status == UNCHECKED]

    async def check(self, env: EnvInfo, timeout: float = 30.0) -> None:
        """Run the env's interpreter once: does it start and import ipykernel?"""
        fp = self._fingerprint(env)
        code = (
            "import sys; print('%d.%d.%d' % sys.version_info[:3]); "
            "import ipykernel; print(ipykernel.__version__)"
        )
        child_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        status, reason, pyver, ikver = OK, None, None, None
        try:
            proc = await asyncio.create_subprocess_exec(
                env.python,
                "-c",
                code,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=env.path,
                env=child_env,
            )
        except OSError as e:
            status, reason = BROKEN, f"the interpreter {env.python} cannot run on this machine: {e}"
        else:
            try:
                out, err = await asyncio.wait_for(proc.communicate(), timeout)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                status, reason = BROKEN, f"the interpreter {env.python} did not answer within {timeout:g} s"
            else:
                lines = out.decode(errors="replace").split()
                if proc.returncode == 0 and len(lines) >= 2:
                    pyver, ikver = lines[0], lines[1]
                else:
                    tail = err.decode(errors="replace").strip().splitlines()[-1:] or [
                        f"exit status {proc.returncode}"
                    ]
                    what = "cannot import ipykernel" if lines else "cannot run on this machine"
                    status, reason = BROKEN, f"the interpreter {env.python} {what}: {tail[0]}"
        self._checks[env.python] = (fp, status, reason, pyver, ikver)
        self._apply_check(env)

    async def check_pending(self, concurrency: int = 4, timeout: float = 30.0) -> None:
        """Check every unchecked env, including ones that appear meanwhile."""
        sem = asyncio.Semaphore(concurrency)

        async def one(e: EnvInfo) -> None:
            async with sem:
                await self.check(e, timeout)

        while True:
            envs = self.pending()
            if not envs:
                return
            await asyncio.gather(*(one(e) for e in envs))


class EnvSizes:
    """Sizes of environments, computed in threads and cached (they are big)."""

    def __init__(self, cache_seconds: float = 600.0):
        self.cache_seconds = cache_seconds
        self._sizes: dict[str, tuple[float, tuple[int, bool]]] = {}
        self._tasks: dict[str, asyncio.Future] = {}

    def get(self, path: str) -> tuple[int, bool] | None:
        found = self._sizes.get(path)
        return found[1] if found else None

    def refresh(self, paths: Iterable[str]) -> list[asyncio.Future]:
        from .volume import directory_usage

        now = time.monotonic()
        tasks = []
        for p in paths:
            task = self._tasks.get(p)
            if task is not None and not task.done():
                tasks.append(task)
                continue
            found = self._sizes.get(p)
            if found and now - found[0] < self.cache_seconds:
                continue
            task = asyncio.ensure_future(asyncio.to_thread(directory_usage, p, 1_000_000, 20.0))

            def store(t: asyncio.Future, p: str = p) -> None:
                if not t.cancelled() and t.exception() is None:
                    self._sizes[p] = (time.monotonic(), t.result())

            task.add_done_callback(store)
            self._tasks[p] = task
            tasks.append(task)
        return tasks
