"""Where servers run: one module per backend (see base.py for the interface)."""
