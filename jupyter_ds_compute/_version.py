"""The version of jupyter-ds-compute, in one place.

setup.cfg reads it (``version = attr: jupyter_ds_compute._version.__version__``)
and package.json must carry the same string (checked by the packaging tests).
"""

__version__ = "0.1.0"
