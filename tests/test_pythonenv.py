"""What `pip install jupyter-ds-compute` leaves to fix is detected and named."""

import sys

from jupyter_ds_compute import pythonenv


def venv(tmp_path, include):
    (tmp_path / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = {include}\nversion = 3.11.2\n"
    )
    return str(tmp_path)


def test_venv_hiding_user_site_is_named_with_the_fix(tmp_path):
    prefix = venv(tmp_path, "false")
    problem = pythonenv.user_site_problem(prefix, "/usr")
    assert problem and "pip install --user" in problem
    assert f"include-system-site-packages = true` in {prefix}/pyvenv.cfg" in problem


def test_venv_seeing_user_site_and_plain_python_are_fine(tmp_path):
    assert pythonenv.user_site_problem(venv(tmp_path, "true"), "/usr") is None
    assert pythonenv.user_site_problem("/usr", "/usr") is None


def test_slow_import_named_only_when_installed(monkeypatch):
    monkeypatch.setattr(pythonenv.importlib.util, "find_spec", lambda name: object())
    assert "pip uninstall rfc3987-syntax" in pythonenv.slow_start_problem()
    monkeypatch.setattr(pythonenv.importlib.util, "find_spec", lambda name: None)
    assert pythonenv.slow_start_problem() is None


def test_the_dev_venv_has_neither_problem():
    """./dev.sh fixes both: the venv the tests run in shows what it does."""
    assert pythonenv.problems() == [], sys.prefix
