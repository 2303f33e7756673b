"""The ``ds-compute`` JupyterHub service: switch orchestration, audit log.

See :mod:`jupyter_ds_compute.service.app` for the hub configuration it needs.
"""

from .app import DSComputeService, create_application, main

__all__ = ["DSComputeService", "create_application", "main"]
