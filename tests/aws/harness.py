"""Shared pieces of the AWS tests: a moto server per test module, and a
stand-in spawner for driving backends and volume drivers directly."""

from __future__ import annotations

import os
import types
from contextlib import contextmanager

from hubtest import free_port
from traitlets.config import Config, LoggingConfigurable

from .motoserver import MotoServer


@contextmanager
def moto_server(log_dir):
    """A moto server on 127.0.0.1 with boto3's environment pointing at it."""
    server = MotoServer(free_port(), os.path.join(log_dir, "moto.log")).start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class FakeSpawner(LoggingConfigurable):
    """What backends and volume drivers use of a DSComputeSpawner."""

    def __init__(self, user, name="", config=None, volume=None):
        super().__init__(config=config or Config())
        self.user = types.SimpleNamespace(name=user, groups=[])
        self.name = name
        self._log_name = f"{user}:{name}" if name else user
        self.volume = volume


def tier(slug, **extra):
    return types.SimpleNamespace(slug=slug, display_name=slug.title(), extra=extra)
