# pytest-jupyter's server fixtures (jp_serverapp, jp_fetch, ...). pytest only
# accepts ``pytest_plugins`` in a top-level conftest, so it lives here.
pytest_plugins = ["pytest_jupyter.jupyter_server"]
