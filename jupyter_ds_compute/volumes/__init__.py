"""The user's persistent storage: one module per driver (see base.py)."""
