"""jupyter-ds-compute: switch a JupyterHub server between compute tiers.

Importing the package is cheap on purpose (the hub, every single-user server
and every kernel may import it): the server extension, the spawner and the
magics are imported only when they are asked for.
"""

from ._version import __version__

__all__ = [
    "__version__",
    "_jupyter_server_extension_points",
    "_jupyter_labextension_paths",
    "load_ipython_extension",
    "unload_ipython_extension",
]


def _jupyter_server_extension_points():
    from .serverext import DSComputeExtension

    return [{"module": "jupyter_ds_compute.serverext", "app": DSComputeExtension}]


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "jupyter-ds-compute"}]


def load_ipython_extension(ipython):
    """``%load_ext jupyter_ds_compute``: register the ``%ds_compute`` magic."""
    from .magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):
    from .magics import unload_ipython_extension as _unload

    _unload(ipython)
