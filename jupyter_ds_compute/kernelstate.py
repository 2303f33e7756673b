"""Save and restore a kernel's user namespace (``--keep-state`` switches).

Runs *inside* the kernel: the server extension executes
``ds_compute_state.save_namespace(...)`` / ``restore_namespace(...)`` in each
kernel (silently), the ``%ds_compute switch --keep-state`` magic calls it in
its own kernel. Standard library only, like the magics: the server puts a copy
(``ds_compute_state.py``) on the path of every kernel it starts, including
kernels of environments on the volume.

One directory per kernel, each variable in its own file (mode 0600) so that one
failure loses nothing else:

* numpy arrays (not of dtype object): ``numpy.save(allow_pickle=False)``;
* everything else: ``dill`` or ``cloudpickle`` when the kernel has one, else
  ``pickle`` (protocol 5: pandas frames and numpy arrays inside go through
  their own buffer path, not element by element);
* modules: only their name (``import numpy as np`` is re-run as
  ``np = importlib.import_module("numpy")``);
* functions and classes defined in the notebook: their source, taken from the
  kernel's own input history (``In``), re-run at restore. Restore runs no code
  other than the user's own cells' definitions, imports of the modules the
  user had imported, and the unpickling of the user's own objects.

What cannot be saved (sockets, open files, generators, ...) is listed with its
type, and the save goes on. A save stops early, with a message, when the
volume would have less than ``reserve_bytes`` free.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import linecache
import os
import pickle
import shutil
import sys
import textwrap
import time
import types

INDEX = "index.json"
FORMAT = 1
SKIP = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})
DEFAULT_RESERVE = 256 * 1024 * 1024


def _pickler():
    """(name, module) of the best pickler this kernel has."""
    for name in ("dill", "cloudpickle"):
        try:
            return name, importlib.import_module(name)
        except Exception:
            continue
    return "pickle", pickle


def _open_private(path: str):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def _makedirs_private(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def user_names(ns: dict, hidden=()) -> list[str]:
    """The user's own variables in ``ns`` (not IPython's, not ``_private``)."""
    return [n for n in ns if not n.startswith("_") and n not in SKIP and n not in hidden]


def find_definition(cells, name: str) -> str | None:
    """The source of the newest top-level ``def``/``class`` ``name`` in the cells."""
    for cell in reversed(list(cells or ())):
        if not isinstance(cell, str) or name not in cell:
            continue
        try:
            tree = ast.parse(cell)
        except SyntaxError:
            continue
        lines = cell.splitlines()
        for node in reversed(tree.body):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                return "\n".join(lines[start - 1 : node.end_lineno]) + "\n"
    return None


def definition_source(value, name: str, cells=()) -> str | None:
    """The source of a function or class defined in the notebook, or None.

    Functions: their own code's cell (``inspect``); classes: the cell of one of
    their methods, else the input history, else any cell IPython compiled
    (IPython keeps every cell in ``linecache``, with or without history).
    """
    if isinstance(value, types.FunctionType):
        try:
            return textwrap.dedent(inspect.getsource(value))
        except (OSError, TypeError):
            pass
        return find_definition(cells, name)
    files = [
        m.__code__.co_filename
        for m in vars(value).values()
        if isinstance(m, types.FunctionType) and m.__code__.co_filename
    ]
    for f in files:
        src = find_definition(["".join(linecache.getlines(f))], name)
        if src:
            return src
    src = find_definition(cells, name)
    if src:
        return src
    return find_definition(
        ["".join(entry[2]) for entry in list(linecache.cache.values()) if len(entry) > 2], name
    )


def _is_notebook_definition(value) -> bool:
    return isinstance(value, (types.FunctionType, type)) and getattr(value, "__module__", None) == "__main__"


def _numpy_array(value):
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray) and not value.dtype.hasobject


def _estimate(value) -> int:
    try:
        if _numpy_array(value):
            return int(value.nbytes)
        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(value, (pd.DataFrame, pd.Series)):
            usage = value.memory_usage(deep=False)
            return int(usage.sum() if hasattr(usage, "sum") else usage)
    except Exception:
        pass
    return 0


def _type_name(value) -> str:
    return type(value).__name__


def save_namespace(
    ns: dict,
    directory: str,
    *,
    cells=None,
    hidden=(),
    reserve_bytes: int = DEFAULT_RESERVE,
) -> dict:
    """Write the user's variables of ``ns`` to ``directory``; a summary dict.

    ``cells`` is the kernel's input history (default ``ns["In"]``); ``hidden``
    names to leave out (IPython's ``user_ns_hidden``).
    """
    t0 = time.monotonic()
    _makedirs_private(directory)
    for old in os.listdir(directory):  # a previous save of this kernel
        os.unlink(os.path.join(directory, old))
    if cells is None:
        cells = ns.get("In") or ns.get("_ih") or ()
    pickler_name, pickler = _pickler()
    variables, imports, defs, not_saved = [], [], [], []
    stopped = None
    total = 0

    def free() -> int:
        return shutil.disk_usage(directory).free

    for i, name in enumerate(user_names(ns, hidden)):
        value = ns[name]
        if isinstance(value, types.ModuleType):
            imports.append({"name": name, "module": value.__name__})
            continue
        if _is_notebook_definition(value):
            source = definition_source(value, name, cells)
            if source is None:
                not_saved.append(
                    {"name": name, "type": _type_name(value), "reason": "no source in this kernel"}
                )
            else:
                defs.append({"name": name, "source": source})
            continue
        estimate = _estimate(value)
        if estimate and free() - estimate < reserve_bytes:
            stopped = (
                f"stopped before {name} ({estimate} bytes): the volume would have less than "
                f"{reserve_bytes} bytes free"
            )
            break
        kind = "npy" if _numpy_array(value) else pickler_name
        fname = f"{i:05d}.{'npy' if kind == 'npy' else 'pkl'}"
        path = os.path.join(directory, fname)
        try:
            with _open_private(path) as f:
                if kind == "npy":
                    sys.modules["numpy"].save(f, value, allow_pickle=False)
                elif pickler is pickle:
                    pickle.dump(value, f, protocol=5)
                else:
                    pickler.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            _unlink(path)
            not_saved.append(
                {"name": name, "type": _type_name(value), "reason": f"{type(e).__name__}: {e}"[:300]}
            )
            continue
        size = os.path.getsize(path)
        if free() < reserve_bytes:
            _unlink(path)
            stopped = f"stopped at {name} ({size} bytes): the volume would have less than {reserve_bytes} bytes free"
            break
        total += size
        variables.append(
            {"name": name, "file": fname, "kind": kind, "bytes": size, "type": _type_name(value)}
        )
    summary = {
        "format": FORMAT,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "pickler": pickler_name,
        "saved_at": time.time(),
        "variables": variables,
        "imports": imports,
        "defs": defs,
        "not_saved": not_saved,
        "stopped": stopped,
        "bytes": total,
        "count": len(variables) + len(imports) + len(defs),
    }
    with _open_private(os.path.join(directory, INDEX)) as f:
        f.write(json.dumps(summary).encode())
    _sync(directory)  # on the volume before the old machine goes away
    summary["seconds"] = round(time.monotonic() - t0, 3)
    return {k: v for k, v in summary.items() if k not in ("variables", "imports", "defs")}


def _sync(directory: str) -> None:
    """Flush the volume once (``syncfs``), not once per file: 10,000 small
    variables would cost 10,000 journal commits."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(directory, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _load(kind: str, path: str):
    with open(path, "rb") as f:
        if kind == "npy":
            return importlib.import_module("numpy").load(f, allow_pickle=False)
        if kind == "pickle":
            return pickle.load(f)
        return importlib.import_module(kind).load(f)  # dill / cloudpickle, as saved


def restore_namespace(ns: dict, directory: str) -> dict:
    """Load what :func:`save_namespace` wrote into ``ns``; a summary dict.

    Never raises for the state's contents: each variable that fails to load
    (another Python or library version, a corrupted file) is listed in
    ``failed`` and the others are restored.
    """
    t0 = time.monotonic()
    try:
        with open(os.path.join(directory, INDEX), "rb") as f:
            index = json.loads(f.read())
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ValueError(
                f"unknown state format {index.get('format') if isinstance(index, dict) else index!r}"
            )
    except Exception as e:
        return {"restored": 0, "bytes": 0, "seconds": 0.0, "failed": [], "not_restored": [],
                "error": f"cannot read the saved state: {type(e).__name__}: {e}"[:300]}  # fmt: skip
    restored, failed, total = [], [], 0
    for imp in index.get("imports", []):
        try:
            ns[imp["name"]] = importlib.import_module(imp["module"])
            restored.append(imp["name"])
        except Exception as e:
            failed.append(
                {"name": imp.get("name"), "reason": f"import {imp.get('module')}: {type(e).__name__}: {e}"}
            )
    for d in index.get("defs", []):
        try:
            exec(compile(d["source"], f"<restored {d['name']}>", "exec"), ns)  # the user's own cell code
            restored.append(d["name"])
        except Exception as e:
            failed.append({"name": d.get("name"), "reason": f"{type(e).__name__}: {e}"[:300]})
    for var in index.get("variables", []):
        try:
            ns[var["name"]] = _load(var["kind"], os.path.join(directory, os.path.basename(var["file"])))
            restored.append(var["name"])
            total += int(var.get("bytes") or 0)
        except Exception as e:
            failed.append({"name": var.get("name"), "reason": f"{type(e).__name__}: {e}"[:300]})
    not_restored = [{"name": v["name"], "type": v.get("type", "?")} for v in index.get("not_saved", [])]
    python = "%d.%d.%d" % sys.version_info[:3]
    summary = {
        "restored": len(restored),
        "names": restored,
        "bytes": total,
        "seconds": round(time.monotonic() - t0, 3),
        "failed": failed,
        "not_restored": not_restored,
        "error": None,
    }
    if failed and index.get("python") != python:
        summary["note"] = f"saved with Python {index.get('python')}, this kernel runs {python}"
    return summary


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n} B"  # pragma: no cover


def format_notice(summary: dict) -> str:
    """``restored 14 variables (1.3 GB) in 2.1 s; not restored: conn (socket)``."""
    if summary.get("error"):
        return f"ds-compute: your variables were not restored: {summary['error']}"
    n = summary.get("restored", 0)
    text = (
        f"restored {n} variable{'' if n == 1 else 's'} ({format_bytes(summary.get('bytes') or 0)}) "
        f"in {summary.get('seconds', 0):.1f} s"
    )
    missing = [f"{v['name']} ({v['type']})" for v in summary.get("not_restored") or []]
    missing += [f"{v['name']} (failed: {v['reason']})" for v in summary.get("failed") or []]
    if missing:
        text += "; not restored: " + ", ".join(missing)
    return text


def show_notice_once(shell, text: str) -> None:
    """Print ``text`` at the top of the user's next cell (restore runs silently)."""

    def notice(*args, **kwargs):
        try:
            shell.events.unregister("pre_run_cell", notice)
        except ValueError:
            pass
        print("ds-compute: " + text)

    shell.events.register("pre_run_cell", notice)


def kernel_save(directory: str, reserve_bytes: int = DEFAULT_RESERVE) -> str:
    """What the server runs in a kernel: save the IPython user namespace; JSON."""
    from IPython import get_ipython

    shell = get_ipython()
    summary = save_namespace(
        shell.user_ns, directory, hidden=set(shell.user_ns_hidden), reserve_bytes=reserve_bytes
    )
    return json.dumps(summary)


def kernel_restore(directory: str) -> str:
    """What the server runs in a new kernel: restore and queue the notice; JSON."""
    from IPython import get_ipython

    shell = get_ipython()
    summary = restore_namespace(shell.user_ns, directory)
    summary["notice"] = format_notice(summary)
    show_notice_once(shell, summary["notice"])
    return json.dumps(summary)
