"""Kernel specs for the environments on the volume, and magics autoload.

:class:`DSComputeKernelSpecManager` is the server's normal
``KernelSpecManager`` plus:

* one kernel per environment on the volume that has ipykernel (see
  :mod:`.envs`), named ``ds-env-<env>``, displayed ``Python (envs/<env>)``,
  without anybody running ``ipykernel install``. Broken environments are not
  listed as kernels (``GET /ds-compute/api/envs`` and ``%ds_compute envs``
  report them with the reason). A kernelspec the user installed by hand that
  already runs an environment's interpreter wins over ours (no duplicates).
* ``%ds_compute`` in every IPython kernel: python kernels get
  ``--IPKernelApp.extra_extensions=ds_compute_magics`` and a ``PYTHONPATH``
  entry for a per-server-process directory holding only ``ds_compute_magics.py``
  (a copy of :mod:`jupyter_ds_compute.magics`, which imports nothing but the
  standard library and IPython). So kernels of environments that do not have
  this package installed get the magic too, the copy always matches the
  server's version (it comes from the machine, not the volume), and the
  user's own ``c.IPKernelApp.extensions`` config is left alone
  (``extra_extensions`` adds to it). If the env's IPython cannot load it,
  IPython logs a warning and the kernel runs anyway.

The ServerApp uses this class when the ds_compute extension sets it (see
``DSComputeExtension.manage_kernelspecs``) or by config:
``c.ServerApp.kernel_spec_manager_class = "jupyter_ds_compute.serverext.kernelspecs.DSComputeKernelSpecManager"``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from traitlets import Bool, List, Unicode, default

from .envs import EnvInfo, EnvScanner, default_roots

MAGICS_MODULE = "ds_compute_magics"


def _is_ipykernel_argv(argv: list[str]) -> bool:
    for i, a in enumerate(argv):
        base = os.path.basename(a)
        if base in ("ipykernel_launcher", "ipykernel_launcher.py"):
            return True
        if a == "-m" and i + 1 < len(argv) and argv[i + 1] in ("ipykernel_launcher", "ipykernel"):
            return True
    return False


class DSComputeKernelSpecManager(KernelSpecManager):
    env_roots = List(
        Unicode(),
        help="""Directories whose subdirectories are environments to offer as kernels.

        Default: ``$DS_COMPUTE_VOLUME_PATH/envs``, every ``CONDA_ENVS_PATH``
        entry and ``$DS_COMPUTE_VOLUME_PATH/.conda/envs``.

            c.DSComputeKernelSpecManager.env_roots = ["/home/alice/envs"]

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @default("env_roots")
    def _default_env_roots(self):
        return default_roots(os.environ)

    volume_path = Unicode(
        None,
        allow_none=True,
        help="""The user's volume; env names are shown relative to it. Default: $DS_COMPUTE_VOLUME_PATH.""",
    ).tag(config=True)

    @default("volume_path")
    def _default_volume_path(self):
        return os.environ.get("DS_COMPUTE_VOLUME_PATH") or None

    autoload_magics = Bool(
        True,
        help="""Load the ``%ds_compute`` magic in every IPython kernel this server starts.

            c.DSComputeKernelSpecManager.autoload_magics = False

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    check_interpreters = Bool(
        True,
        help="""Run each environment's interpreter once (in the background) to check that it works here.""",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scanner = EnvScanner(self.env_roots, self.volume_path)
        self._env_map: dict[str, EnvInfo] = {}
        self._shim: str | None = None
        self._check_task: asyncio.Future | None = None
        self._spec_cache: dict[str, tuple[EnvInfo, dict]] = {}

    # -- the magics shim -------------------------------------------------
    @property
    def shim_dir(self) -> str:
        """A directory holding only ``ds_compute_magics.py`` and its
        ``ds_compute_formatting.py`` (made once per process)."""
        if self._shim is None:
            src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "magics.py")
            d = tempfile.mkdtemp(prefix="ds-compute-kernel-path-")
            shutil.copyfile(src, os.path.join(d, MAGICS_MODULE + ".py"))
            # the magics' formatting (jupyter_ds_compute.formatting, stdlib only)
            formatting = os.path.join(os.path.dirname(src), "formatting.py")
            shutil.copyfile(formatting, os.path.join(d, "ds_compute_formatting.py"))
            # keep_state switches: save/restore of the user namespace (kernelstate.py, stdlib only)
            shutil.copyfile(
                os.path.join(os.path.dirname(src), "kernelstate.py"), os.path.join(d, "ds_compute_state.py")
            )
            atexit.register(shutil.rmtree, d, True)
            self._shim = d
        return self._shim

    def _with_autoload(self, spec):
        if not self.autoload_magics or (spec.language or "").lower() != "python":
            return spec
        if not _is_ipykernel_argv(spec.argv):
            return spec
        flag = f"--IPKernelApp.extra_extensions={MAGICS_MODULE}"
        if flag in spec.argv:
            return spec
        env = dict(spec.env or {})
        existing = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.shim_dir, existing) if p)
        return self.kernel_spec_class(
            **dict(spec.to_dict(), argv=[*spec.argv, flag], env=env, resource_dir=spec.resource_dir)
        )

    # -- env kernels -------------------------------------------------------
    def _default_resources(self) -> str:
        try:
            from ipykernel.kernelspec import RESOURCES

            return RESOURCES
        except ImportError:  # pragma: no cover - the server always has ipykernel
            d = os.path.join(self.shim_dir, "resources")
            os.makedirs(d, exist_ok=True)
            return d

    def env_spec(self, env: EnvInfo):
        bindir = os.path.dirname(env.python)
        spec_env = {"PATH": bindir + os.pathsep + "${PATH}"}
        if env.kind == "conda":
            spec_env.update(CONDA_PREFIX=env.path, CONDA_DEFAULT_ENV=env.path)
        else:
            spec_env["VIRTUAL_ENV"] = env.path
        spec = self.kernel_spec_class(
            resource_dir=env.resource_dir or self._default_resources(),
            argv=[env.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=env.display_name,
            language="python",
            interrupt_mode="signal",
            env=spec_env,
            metadata={"debugger": True, "ds_compute": {"env": env.name, "path": env.path, "kind": env.kind}},
        )
        return self._with_autoload(spec)

    def _kernel_envs(self) -> list[EnvInfo]:
        try:
            envs = self.scanner.kernel_envs()
        except Exception:  # never break the kernel list
            self.log.exception("ds-compute: scanning environments in %s failed", self.env_roots)
            envs = []
        if self.allowed_kernelspecs:
            envs = [e for e in envs if e.kernel_name in self.allowed_kernelspecs]
        self._env_map = {e.kernel_name: e for e in envs}
        return envs

    def schedule_checks(self) -> asyncio.Future | None:
        """Check new environments' interpreters in the background (needs a running loop)."""
        if not self.check_interpreters:
            return None
        if self._check_task is not None and not self._check_task.done():
            return self._check_task
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if not self.scanner.pending():
            return None
        self._check_task = loop.create_task(self.scanner.check_pending())
        self._check_task.add_done_callback(self._checks_done)
        return self._check_task

    def _checks_done(self, task: asyncio.Future) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            self.log.error("ds-compute: checking environments failed: %s", task.exception())
            return
        for env in self.scanner.envs():
            if env.status == "broken":
                self.log.warning("ds-compute: environment %s is broken: %s", env.path, env.reason)

    # -- KernelSpecManager API --------------------------------------------
    def find_kernel_specs(self) -> dict[str, str]:
        specs = super().find_kernel_specs()
        for env in self._kernel_envs():
            specs.setdefault(env.kernel_name, env.resource_dir or self._default_resources())
        return specs

    def _get_kernel_spec_by_name(self, kernel_name, resource_dir):
        env = self._env_map.get(kernel_name)
        if env is not None:
            return self.env_spec(env)
        return self._with_autoload(super()._get_kernel_spec_by_name(kernel_name, resource_dir))

    def get_kernel_spec(self, kernel_name):
        if kernel_name.startswith("ds-env-"):
            self._kernel_envs()
            env = self._env_map.get(kernel_name)
            if env is not None:
                return self.env_spec(env)
        return super().get_kernel_spec(kernel_name)

    def get_all_specs(self):
        # Like KernelSpecManager.get_all_specs, but the env scan is validated
        # once per list (not once per spec) and env specs are built once per scan.
        res = {}
        for kname, resource_dir in self.find_kernel_specs().items():
            env = self._env_map.get(kname)
            try:
                if env is not None:
                    res[kname] = {"resource_dir": resource_dir, "spec": self._env_spec_dict(env)}
                else:
                    spec = self._get_kernel_spec_by_name(kname, resource_dir)
                    res[kname] = {"resource_dir": resource_dir, "spec": spec.to_dict()}
            except NoSuchKernel:
                pass
            except Exception:
                self.log.warning("Error loading kernelspec %r", kname, exc_info=True)
        # a spec the user installed by hand for an env wins over ours
        hand_made = [
            os.path.abspath(s["spec"]["argv"][0])
            for name, s in res.items()
            if name not in self._env_map and s.get("spec", {}).get("argv")
        ]
        for name, env in list(self._env_map.items()):
            prefix = os.path.abspath(env.path) + os.sep
            if name in res and any(p.startswith(prefix) for p in hand_made):
                del res[name]
        self.schedule_checks()
        return res

    def _env_spec_dict(self, env: EnvInfo) -> dict:
        cached = self._spec_cache.get(env.kernel_name)
        if cached is None or cached[0] is not env:
            cached = (env, self.env_spec(env).to_dict())
            self._spec_cache[env.kernel_name] = cached
        return dict(cached[1])

    def env_for_kernel(self, kernel_name: str) -> EnvInfo | None:
        return self._env_map.get(kernel_name)


__all__ = ["DSComputeKernelSpecManager", "NoSuchKernel"]
