"""``python -m jupyter_ds_compute.service``: run the ds-compute hub service."""

from .app import main

if __name__ == "__main__":
    main()
