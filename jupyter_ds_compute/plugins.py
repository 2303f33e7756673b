"""Finding backends and volume drivers: entry points, import strings, classes.

Like JupyterHub finds spawners, authenticators and proxies
(``jupyterhub.traitlets.EntryPointType``), a backend or volume driver is named
in config (``c.DSComputeSpawner.backend``, ``c.DSComputeSpawner.volume_driver``,
a tier's ``backend`` / ``volume`` key) as

- the name of an entry point in the group :data:`BACKENDS` /
  :data:`VOLUMES` (``"local"``, ``"slurm"``, ``"ec2"``; ``"local"``,
  ``"ebs"``, ``"efs"``; or one a site's own package registers),
- an import string, ``"mypkg.mod:MyBackend"`` or ``"mypkg.mod.MyBackend"``,
- or the class itself.

The class must subclass :class:`~jupyter_ds_compute.backends.base.Backend` /
:class:`~jupyter_ds_compute.volumes.base.VolumeDriver`. Anything else is a
:class:`PluginError` naming the setting and the known names.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points

from .errors import DSComputeError

__all__ = ["BACKENDS", "VOLUMES", "PluginError", "known", "plugin_class", "plugin_spec"]

#: entry-point group of backends
BACKENDS = "jupyter_ds_compute.backends"
#: entry-point group of volume drivers
VOLUMES = "jupyter_ds_compute.volumes"

_KIND = {BACKENDS: "backend", VOLUMES: "volume driver"}


class PluginError(DSComputeError):
    """A backend or volume driver named in config cannot be found or used."""


@functools.lru_cache(maxsize=None)
def _entry_points(group: str) -> dict:
    """``{name: EntryPoint}`` of ``group``, looked up once per process."""
    return {ep.name: ep for ep in entry_points(group=group)}


def known(group: str) -> list[str]:
    """The entry-point names installed in ``group``, sorted."""
    return sorted(_entry_points(group))


def _base(group):
    if group == BACKENDS:
        from .backends.base import Backend

        return Backend
    from .volumes.base import VolumeDriver

    return VolumeDriver


def _import_string(spec: str):
    if ":" in spec:
        module, _, attr = spec.partition(":")
    else:
        module, _, attr = spec.rpartition(".")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def plugin_class(group: str, spec, setting: str = "") -> type:
    """The class ``spec`` (entry-point name, import string or class) names in ``group``.

    ``setting`` names where ``spec`` came from (``c.DSComputeSpawner.backend``,
    ``tier 'gpu' backend``) for the error message. Raises :class:`PluginError`.
    """
    kind = _KIND[group]
    base = _base(group)
    where = f" ({setting})" if setting else ""
    names = ", ".join(known(group)) or "none installed"
    if isinstance(spec, type):
        cls = spec
    elif isinstance(spec, str) and spec in _entry_points(group):
        try:
            cls = _entry_points(group)[spec].load()
        except Exception as e:  # noqa: BLE001 - a broken plug-in package: say which
            raise PluginError(
                f"The {kind} {spec!r}{where} could not be loaded: {e}. Ask an admin.",
                log_message=f"loading entry point {spec!r} of {group} failed: {e!r}",
            ) from None
    elif isinstance(spec, str) and spec and ("." in spec or ":" in spec):
        try:
            cls = _import_string(spec)
        except (ImportError, AttributeError, ValueError) as e:
            raise PluginError(
                f"Unknown {kind} {spec!r}{where}: cannot import it ({e}); known: {names}",
            ) from None
    else:
        raise PluginError(
            f"Unknown {kind} {spec!r}{where}; known: {names} "
            f"(or an import string like 'mypkg.module:MyClass', see the {group} entry points)",
        )
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(
            f"The {kind} {spec!r}{where} is not a {base.__module__}.{base.__name__} subclass",
        )
    return cls


def plugin_spec(spec) -> str:
    """``spec`` as a string that :func:`plugin_class` finds again (for spawner state)."""
    if isinstance(spec, type):
        return f"{spec.__module__}:{spec.__qualname__}"
    return spec
