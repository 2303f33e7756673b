"""The backend / volume-driver contract and how the spawner finds plug-ins.

Every class registered in the ``jupyter_ds_compute.backends`` /
``jupyter_ds_compute.volumes`` entry-point groups implements every abstract
method of its base, with the base's signature; the spawner takes entry-point
names, import strings and classes, and refuses unknown names listing the
known ones.
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import entry_points

import pytest
from fakes import MemoryBackend, MemoryVolume, hub_db, make_spawner
from jupyterhub.spawner import SpawnException

from jupyter_ds_compute import plugins
from jupyter_ds_compute.backends import base as backend_base
from jupyter_ds_compute.backends.base import Backend
from jupyter_ds_compute.spawner import DSComputeSpawner
from jupyter_ds_compute.volumes import base as volume_base
from jupyter_ds_compute.volumes.base import DESCRIBE_KEYS, VolumeDriver, description

EXPECTED = {
    plugins.BACKENDS: {"local", "slurm", "ec2"},
    plugins.VOLUMES: {"local", "ebs", "efs"},
}
CONTRACTS = [
    (plugins.BACKENDS, Backend, backend_base.ABSTRACT_METHODS),
    (plugins.VOLUMES, VolumeDriver, volume_base.ABSTRACT_METHODS),
]


def contract_methods(base):
    """The public methods the base declares (what the spawner may call)."""
    return sorted(
        name
        for name, value in vars(base).items()
        if not name.startswith("_") and inspect.isfunction(value) and name != "emit"
    )


def registered(group):
    return {ep.name: ep.load() for ep in entry_points(group=group)}


@pytest.mark.parametrize("group", [plugins.BACKENDS, plugins.VOLUMES])
def test_builtin_plugins_are_registered(group):
    assert EXPECTED[group] <= set(registered(group)), "run pip install -e . after editing setup.cfg"


@pytest.mark.parametrize(
    "group, base, abstract, name",
    [(g, b, a, n) for g, b, a in CONTRACTS for n in sorted(EXPECTED[g])],
)
def test_plugin_implements_contract(group, base, abstract, name):
    cls = registered(group)[name]
    assert issubclass(cls, base)
    assert cls.name == name, "the state's driver/backend name must find the class again"
    for method in abstract:
        assert getattr(cls, method) is not getattr(base, method), f"{cls.__name__} does not define {method}"
    for method in contract_methods(base):
        ours, theirs = inspect.signature(getattr(base, method)), inspect.signature(getattr(cls, method))
        assert [(p.name, p.kind, p.default) for p in theirs.parameters.values()] == [
            (p.name, p.kind, p.default) for p in ours.parameters.values()
        ], f"{cls.__name__}.{method}{theirs} differs from {base.__name__}.{method}{ours}"
        assert inspect.iscoroutinefunction(getattr(cls, method)) == inspect.iscoroutinefunction(
            getattr(base, method)
        ), f"{cls.__name__}.{method}: async in one, sync in the other"


@pytest.mark.parametrize("group, base, abstract", CONTRACTS)
def test_abstract_list_matches_base(group, base, abstract):
    """ABSTRACT_METHODS are exactly the base methods that raise NotImplementedError."""
    obj = base.__new__(base)
    for method in contract_methods(base):
        params = [p for p in inspect.signature(getattr(base, method)).parameters.values()][1:]
        args = [None for p in params if p.default is inspect.Parameter.empty]
        fn = getattr(base, method)
        try:
            result = fn(obj, *args)
            if inspect.iscoroutine(result):
                asyncio.run(result)
            raised = False
        except NotImplementedError:
            raised = True
        except Exception:  # noqa: BLE001 - a default that needs a real object: not abstract
            raised = False
        assert raised == (method in abstract), method


def test_declared_defaults():
    assert VolumeDriver.needs_root_exec is False and VolumeDriver.owner is None
    vol = VolumeDriver.__new__(VolumeDriver)
    vol.volume_id = "v1"
    assert vol.zone() is None
    info = asyncio.run(vol.describe())
    assert set(info) == set(DESCRIBE_KEYS) and info["id"] == "v1" and info["driver"] == "base"
    assert description(vol, {"path": "/x", "mode": "image"})["mode"] == "image"
    assert asyncio.run(Backend.owner(Backend.__new__(Backend))) is None


# -- the spawner's lookup ------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["fakes:MemoryBackend", "fakes.MemoryBackend", MemoryBackend],
    ids=["colon", "dotted", "class"],
)
def test_spawner_uses_backend_from_import_string_or_class(spec):
    sp = DSComputeSpawner(backend=spec)
    backend = sp._make_backend(sp.backend)
    assert type(backend) is MemoryBackend
    backend.load_state({"server": "alice/"})
    state = sp.get_state()
    name = "fakes:MemoryBackend" if spec is MemoryBackend else spec
    assert state["backend"] == {"name": name, "state": {"server": "alice/"}}
    again = DSComputeSpawner(backend="local")
    again.load_state(state)
    assert type(again._backend) is MemoryBackend


def test_spawner_uses_volume_from_import_string_and_finds_it_in_state():
    db = hub_db()
    sp = make_spawner(db, volume_driver="fakes:MemoryVolume")
    assert type(sp.volume) is MemoryVolume
    asyncio.run(sp.volume.ensure())
    state = sp.get_state()
    assert state["volume"] == {"driver": "memory", "id": "mem-alice"}
    again = DSComputeSpawner(volume_driver="fakes:MemoryVolume")
    again.load_state(state)
    assert type(again._volume) is MemoryVolume and again._volume.volume_id == "mem-alice"
    db.close()


def test_spawner_finds_entry_point_names():
    sp = DSComputeSpawner(backend="slurm", volume_driver="ebs")
    assert type(sp._make_backend(sp.backend)).__name__ == "SlurmBackend"
    assert type(sp.volume).__name__ == "EBSVolume"


@pytest.mark.parametrize(
    "trait, value, message",
    [
        (
            "backend",
            "kubernetes",
            "Unknown backend 'kubernetes' (c.DSComputeSpawner.backend); known: ec2, local, slurm",
        ),
        (
            "backend",
            "nosuch.module:X",
            "Unknown backend 'nosuch.module:X' (c.DSComputeSpawner.backend): cannot import",
        ),
        ("backend", "fakes:MemoryVolume", "is not a jupyter_ds_compute.backends.base.Backend subclass"),
        (
            "volume_driver",
            "nfs",
            "Unknown volume driver 'nfs' (c.DSComputeSpawner.volume_driver); known: ebs, efs, local",
        ),
    ],
)
def test_unknown_plugin_is_a_config_error_listing_known_names(trait, value, message):
    sp = DSComputeSpawner(**{trait: value})
    with pytest.raises(SpawnException) as info:
        sp._make_backend(sp.backend) if trait == "backend" else sp.volume
    assert message in str(info.value)
    assert info.value.status_code == 500
