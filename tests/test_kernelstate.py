"""The kernel-side save/restore helper (jupyter_ds_compute.kernelstate), in-process."""

import json
import os
import socket
import stat
import sys
import types

import pytest

from jupyter_ds_compute import kernelstate as ks

CELLS = [
    "",
    "import json as js\nx = 42",
    "def double(v):\n    return 2 * v\n",
    "class Point:\n    def __init__(self, a):\n        self.a = a\n",
]


def namespace(monkeypatch):
    """Like IPython's: the user namespace is the ``__dict__`` of ``__main__``."""
    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    ns = main.__dict__
    ns.update(In=CELLS, _hidden=1)
    exec("\n".join(CELLS), ns)
    for k in ("__builtins__", "__name__", "__doc__", "__package__", "__loader__", "__spec__"):
        ns.pop(k, None)
    ns["items"] = list(range(1000))
    ns["p"] = ns["Point"](3)
    ns["conn"] = socket.socket()
    ns["gen"] = (i for i in range(3))
    return ns


def test_save_and_restore_round_trip(tmp_path, monkeypatch):
    ns = namespace(monkeypatch)
    d = str(tmp_path / "state" / "k1")
    saved = ks.save_namespace(ns, d, reserve_bytes=0)
    ns["conn"].close()
    assert {v["name"] for v in saved["not_saved"]} == {"conn", "gen"}
    assert {v["type"] for v in saved["not_saved"]} == {"socket", "generator"}
    assert saved["stopped"] is None
    for name in os.listdir(d):  # the user's only
        assert stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700

    fresh = types.ModuleType("__main__")  # the new kernel
    monkeypatch.setitem(sys.modules, "__main__", fresh)
    new = fresh.__dict__
    summary = ks.restore_namespace(new, d)
    assert summary["error"] is None and summary["failed"] == []
    assert new["x"] == 42 and new["items"] == list(range(1000))
    assert new["js"] is json
    assert new["double"](21) == 42
    assert new["p"].a == 3 and type(new["p"]) is new["Point"]
    assert "_hidden" not in new and "In" not in new and "conn" not in new
    assert {v["name"] for v in summary["not_restored"]} == {"conn", "gen"}
    notice = ks.format_notice(summary)
    assert notice.startswith(f"restored {summary['restored']} variables (")
    assert "not restored: " in notice and "conn (socket)" in notice and "gen (generator)" in notice


def test_a_corrupted_variable_is_reported_and_the_others_load(tmp_path):
    d = str(tmp_path / "k")
    ks.save_namespace({"a": [1, 2], "b": {"k": "v"}}, d, reserve_bytes=0)
    index = json.loads(open(os.path.join(d, ks.INDEX)).read())
    bad = next(v for v in index["variables"] if v["name"] == "a")
    with open(os.path.join(d, bad["file"]), "wb") as f:
        f.write(b"\x80\x05garbage")
    new = {}
    summary = ks.restore_namespace(new, d)
    assert new == {"b": {"k": "v"}}
    assert [f["name"] for f in summary["failed"]] == ["a"]
    assert "a (failed: " in ks.format_notice(summary)


def test_a_corrupted_index_is_reported_not_raised(tmp_path):
    d = tmp_path / "k"
    d.mkdir()
    (d / ks.INDEX).write_text("{not json")
    summary = ks.restore_namespace({}, str(d))
    assert summary["restored"] == 0 and "cannot read the saved state" in summary["error"]
    assert "not restored" in ks.format_notice(summary)


def test_a_save_that_would_fill_the_volume_stops_early(tmp_path):
    d = str(tmp_path / "k")
    summary = ks.save_namespace({"a": b"x" * 100}, d, reserve_bytes=1 << 62)
    assert summary["stopped"] and "less than" in summary["stopped"] and "a" in summary["stopped"]
    assert sorted(os.listdir(d)) == [ks.INDEX]


def test_find_definition_takes_the_newest_and_decorators():
    cells = ["def f():\n    return 1\n", "import functools\n@functools.lru_cache\ndef f():\n    return 2\n"]
    assert ks.find_definition(cells, "f") == "@functools.lru_cache\ndef f():\n    return 2\n"
    assert ks.find_definition(cells, "g") is None
    assert ks.find_definition(["def (:"], "f") is None


def test_a_function_without_source_is_listed():
    f = eval("lambda: 1", {"__name__": "__main__"})
    ns = {"f": f}
    summary = ks.save_namespace(ns, "/tmp/ks-lambda-test", reserve_bytes=0, cells=[])
    assert [v["name"] for v in summary["not_saved"]] == ["f"]


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1300, "1.3 KB"), (1.3e9, "1.3 GB")])
def test_format_bytes(n, text):
    assert ks.format_bytes(n) == text


def test_the_helper_imports_only_the_standard_library():
    """It is copied onto env kernels' path (ds_compute_state.py), where jupyter_ds_compute is absent."""
    import ast

    tree = ast.parse(open(ks.__file__).read())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
    }
    assert roots - set(sys.stdlib_module_names) == {"IPython"}


def test_own_kernel_id_from_the_connection_file(monkeypatch):
    from jupyter_ds_compute import magics

    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/run/jupyter/kernel-ab12-cd.json"])
    assert magics.own_kernel_id() == "ab12-cd"
    monkeypatch.setattr(sys, "argv", ["python"])
    assert magics.own_kernel_id() is None


class _Sessions:
    def __init__(self, sessions):
        self.sessions = sessions

    async def list_sessions(self):
        return self.sessions


def _keeper(tmp_path, sessions):
    import logging

    from jupyter_ds_compute.serverext.state import StateKeeper

    app = types.SimpleNamespace(session_manager=_Sessions(sessions))
    return StateKeeper(app, str(tmp_path / "state"), logging.getLogger("test"), busy_wait=0.1, timeout=5,
                       reserve_bytes=0, keep_files=False)  # fmt: skip


SESSION = {
    "path": "a.ipynb",
    "name": "a.ipynb",
    "type": "notebook",
    "kernel": {"id": "k1", "name": "python3"},
}


def test_a_save_that_would_fill_the_volume_refuses_the_switch_and_leaves_nothing(tmp_path):
    import asyncio

    from jupyter_ds_compute.serverext.state import StateError

    keeper = _keeper(tmp_path, [SESSION])
    # the magic's kernel saved itself (as %ds_compute switch --keep-state does) and hit the reserve
    ks.save_namespace({"a": b"x" * 100}, keeper.kernel_dir("k1"), reserve_bytes=1 << 62)
    with pytest.raises(StateError, match="would fill your volume"):
        asyncio.run(keeper.save_all(saved_by_kernel="k1"))
    assert os.listdir(keeper.root) == []


def test_a_manifest_of_the_sessions_and_the_magic_shows_it(tmp_path):
    import asyncio

    from jupyter_ds_compute import magics

    keeper = _keeper(tmp_path, [SESSION])
    ks.save_namespace({"a": [1], "conn": socket.socket()}, keeper.kernel_dir("k1"), reserve_bytes=0)
    manifest = asyncio.run(keeper.save_all(saved_by_kernel="k1"))
    (entry,) = manifest["sessions"]
    assert entry["path"] == "a.ipynb" and entry["kernel_name"] == "python3" and entry["error"] is None
    assert stat.S_IMODE(os.stat(os.path.join(keeper.root, "manifest.json")).st_mode) == 0o600
    text = magics.format_state(dict(keeper.last(), restoring=False))
    assert "a.ipynb: 1 variable (" in text and "not saved: conn (socket)" in text
    assert "No kernel state saved yet" in magics.format_state({"save": None, "restore": None})
    keeper.discard()
    assert not os.path.exists(os.path.join(keeper.root, "manifest.json"))
    assert not os.path.exists(keeper.kernel_dir("k1"))
