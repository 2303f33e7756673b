"""The jupyter-server extension of jupyter-ds-compute (``/ds-compute/api/*``)."""

from .app import DSComputeExtension

__all__ = ["DSComputeExtension"]
