"""The tier catalogue: what the ds-compute service needs of a user's tiers.

The spawner evaluates ``profile_list`` for its user (a callable included),
normalizes it, and publishes the result as its *catalogue*: the normalized
profiles without what only the spawner can use (overrides, which may hold
callables; ``backend``/``volume``, which may be classes). What stays is
JSON-safe and is exactly what :func:`jupyter_ds_compute.tiers.validate_user_options`
and the tier model read: slugs, names, prices, resources, groups, caps, idle
limits, option keys, choices (with their groups and defaults) and the
unlisted-choice regexes. The service reads it from the server's spawner
state (``state["tiers"]``, with ``admin:server_state``) and validates a switch
against it before it stops anything (docs/internals.md, "Where the service's
tiers come from").

Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from . import tiers

__all__ = ["CATALOGUE_VERSION", "catalogue", "from_state"]

#: bumped when the catalogue's shape changes (``state["tiers"]["version"]``)
CATALOGUE_VERSION = 1

_SPAWNER_ONLY = ("spawner_override", "kubespawner_override", "backend", "volume")


def _json_safe(value: Any) -> Any:
    """``value`` if it survives a JSON round trip unchanged in meaning, else None."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return None


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in _SPAWNER_ONLY}


def catalogue(profiles: Any) -> dict:
    """``{"version", "profiles"}``: the JSON-safe catalogue of a profile list.

    ``profiles`` is a ``profile_list`` (normalized or not, not a callable:
    the spawner evaluates that first). The result is valid input to every
    function of :mod:`~jupyter_ds_compute.tiers` and holds no callable.
    """
    out = []
    for p in tiers.normalize_profile_list(profiles):
        q = _strip(p)
        if "extra" in q:
            q["extra"] = _json_safe(q["extra"]) or {}
        options = {}
        for key, option in (p.get("profile_options") or {}).items():
            o = dict(option)
            o["choices"] = {ck: _strip(choice) for ck, choice in (option.get("choices") or {}).items()}
            if isinstance(option.get("unlisted_choice"), dict):
                o["unlisted_choice"] = _strip(option["unlisted_choice"])
            options[key] = o
        if options:
            q["profile_options"] = options
        out.append(q)
    result = {"version": CATALOGUE_VERSION, "profiles": out}
    # a value we do not know of that is still not JSON (an operator's object) fails here, loudly
    json.dumps(result, allow_nan=False)
    return result


def from_state(state: Any) -> list[dict] | None:
    """The normalized profiles of a spawner state's catalogue, or None
    (no catalogue: the server never started since, or an unknown version)."""
    if not isinstance(state, dict):
        return None
    cat = state.get("tiers")
    if not isinstance(cat, dict) or cat.get("version") != CATALOGUE_VERSION:
        return None
    try:
        return tiers.normalize_profile_list(cat.get("profiles"))
    except tiers.TierConfigError:
        return None
