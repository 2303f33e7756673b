"""The profile list: compute tiers in KubeSpawner's ``profile_list`` schema.

Pure functions only (no I/O, no hub objects). The pipeline, as in KubeSpawner:

1. ``load_profile_list`` / ``normalize_profile_list``: evaluate a callable,
   deep-copy, fill slugs and defaults, validate. Broken config raises
   ``TierConfigError`` naming the tier and the field.
2. ``options_from_form``: spawn-form data -> ``user_options`` (builds the dict
   only, like KubeSpawner's ``_options_from_form``).
3. ``validate_user_options``: check and complete ``user_options``; bad input
   raises ``TierOptionsError`` carrying an HTTP status and the field at fault.
4. ``resolve_overrides`` + ``apply_overrides``: merge the chosen tier's and
   choices' ``spawner_override`` and apply them to the spawner.

Form field names and ``user_options`` keys are KubeSpawner's::

    form field                                  user_options key
    profile                                     profile
    profile-option-{slug}--{key}                {key}
    profile-option-{slug}--{key}--unlisted-choice   {key}--unlisted-choice
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jupyterhub.traitlets import ByteSpecification
from traitlets import TraitError

from .policy import group_refusal, parse_duration

__all__ = [
    "OTHER_CHOICE",
    "Profiles",
    "Overrides",
    "Tier",
    "TierConfigError",
    "TierOptionsError",
    "apply_overrides",
    "default_slug",
    "for_user",
    "get_tier",
    "load_profile_list",
    "normalize_profile_list",
    "options_from_form",
    "parse_bytes",
    "resolve_overrides",
    "slugify",
    "tiers_of",
    "validate_user_options",
]

#: value of the <select> entry that stands for "type your own value"
OTHER_CHOICE = "unlisted-choice"
UNLISTED_SUFFIX = "--" + OTHER_CHOICE
FORM_OPTION_PREFIX = "profile-option-"

_PROFILE_FIELDS = frozenset(
    {
        "display_name",
        "slug",
        "description",
        "default",
        "profile_options",
        "spawner_override",
        "kubespawner_override",
        "cpu",
        "mem",
        "gpu",
        "hourly_cost",
        "allowed_groups",
        "max_servers",
        "warm_pool",
        "idle_downshift_after",
        "max_grant",
        "approvers",
        "backend",
        "volume",
        "extra",
    }
)
_OPTION_FIELDS = frozenset({"display_name", "choices", "unlisted_choice"})
_CHOICE_FIELDS = frozenset(
    {
        "display_name",
        "description",
        "default",
        "allowed_groups",
        "spawner_override",
        "kubespawner_override",
    }
)
_UNLISTED_FIELDS = frozenset(
    {
        "enabled",
        "display_name",
        "display_name_in_choices",
        "validation_regex",
        "validation_message",
        "spawner_override",
        "kubespawner_override",
    }
)
_SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGT])(?:i?B?))?\s*$")
_VALUE_RE = re.compile(r"\{\{|\}\}|\{value\}")
_MAX_SHOWN_VALUE = 80

#: where a tier's ``cpu`` / ``mem`` come from when it does not set them:
#: JupyterHub's (and KubeSpawner's) resource settings in its override, the
#: limit first, else the guarantee
CPU_SETTINGS = ("cpu_limit", "cpu_guarantee")
MEM_SETTINGS = ("mem_limit", "mem_guarantee")
#: KubeSpawner's extended resources; the tier's ``gpu`` is their ``GPU_RESOURCE``
EXTRA_RESOURCE_SETTINGS = ("extra_resource_limits", "extra_resource_guarantees")
GPU_RESOURCE = "nvidia.com/gpu"

#: KubeSpawner settings that only steer Kubernetes (scheduling, pod and
#: volume plumbing, object metadata, security contexts): a pasted
#: ``profile_list`` may carry them, and ignoring them changes nothing a user
#: gets here, so ``apply_overrides`` skips them with a debug line only. Any
#: other setting the spawner lacks (``image``, ``lifecycle_hooks``, a typo)
#: is skipped with a warning naming the tier and the setting.
KUBERNETES_ONLY_SETTINGS = frozenset(
    {
        "affinity",
        "allow_privilege_escalation",
        "automount_service_account_token",
        "common_labels",
        "container_security_context",
        "delete_grace_period",
        "dns_name_template",
        "extra_annotations",
        "extra_labels",
        "fs_gid",
        "image_pull_policy",
        "image_pull_secrets",
        "k8s_api_host",
        "k8s_api_request_retry_timeout",
        "k8s_api_request_timeout",
        "k8s_api_threadpool_workers",
        "namespace",
        "node_affinity_preferred",
        "node_affinity_required",
        "node_selector",
        "pod_affinity_preferred",
        "pod_affinity_required",
        "pod_anti_affinity_preferred",
        "pod_anti_affinity_required",
        "pod_connect_ip",
        "pod_name_template",
        "pod_security_context",
        "priority_class_name",
        "privileged",
        "pvc_name_template",
        "scheduler_name",
        "service_account",
        "services_enabled",
        "storage_access_modes",
        "storage_capacity",
        "storage_class",
        "storage_extra_annotations",
        "storage_extra_labels",
        "storage_pvc_ensure",
        "storage_selector",
        "supplemental_gids",
        "tolerations",
        "user_namespace_template",
    }
)


class TierConfigError(ValueError):
    """``profile_list`` is broken (an operator error, raised at hub start)."""


class TierOptionsError(ValueError):
    """``user_options`` are refused (a user error).

    ``status`` is the HTTP status to answer (400 bad input, 403 refused by
    group), ``field`` the ``user_options`` key at fault, ``message`` a short
    text safe to show the user.
    """

    def __init__(self, message: str, *, field: str | None = None, status: int = 400):
        if field and field not in message:
            # the message always names the field at fault
            message = f"{field}: {message}"
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


# ---------------------------------------------------------------------------
# small helpers


def slugify(name: str) -> str:
    """``"GPU (A100), 1×"`` -> ``"gpu-a100-1"``: lowercase ASCII letters,
    digits and single dashes, like python-slugify (which KubeSpawner uses)."""
    text = unicodedata.normalize("NFKD", str(name))
    text = text.encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def parse_bytes(value: Any) -> int:
    """Bytes from an int or a JupyterHub ``ByteSpecification`` string.

    ``"512M"``, ``"2G"``, ``"1.5T"`` use powers of 1024 (JupyterHub's
    :class:`~jupyterhub.traitlets.ByteSpecification` does the conversion);
    Kubernetes' ``"2Gi"`` and ``"2GiB"``/``"2GB"`` mean the same, and a
    bare number string is bytes. Raises ValueError (the caller names the
    tier and field) for anything else or a value that is not positive.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected bytes, got {value!r}")
    if isinstance(value, str):
        m = _BYTES_RE.match(value)
        if not m:
            raise ValueError(f"must be bytes or a string like '2G' or '512M', got {value!r}")
        # ByteSpecification takes "<number><K|M|G|T>" or a number
        value = m.group(1) + m.group(2) if m.group(2) else float(m.group(1))
    elif not isinstance(value, (int, float)):
        raise ValueError(f"must be bytes or a string like '2G' or '512M', got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be > 0, got {value!r}")
    try:
        number = ByteSpecification().validate(None, value)
    except TraitError as e:
        raise ValueError(f"must be bytes or a string like '2G' or '512M', got {value!r}") from e
    if number <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return number


def _copy(obj: Any) -> Any:
    """Copy the dict/list structure, keep leaves (callables!) as they are.

    ``copy.deepcopy`` would also copy the instance bound to a method
    override or the arguments of a ``functools.partial``.
    """
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_copy(v) for v in obj)
    if isinstance(obj, set):
        return {_copy(v) for v in obj}
    return obj


def _shown(value: Any) -> str:
    """repr of a user value, cut short for messages."""
    text = repr(value)
    if len(text) > _MAX_SHOWN_VALUE:
        text = text[: _MAX_SHOWN_VALUE - 4] + "...'"
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cores(value: Any) -> float:
    """Cores from a number or a numeric string (``2``, ``0.5``, ``"1.5"``)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if not _is_number(value) or value <= 0:
        raise ValueError(f"must be a number of cores > 0, got {_shown(value)}")
    return float(value)


def _count(value: Any) -> int:
    """A GPU count from an int or a digit string (Kubernetes writes ``"1"``)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"must be an integer >= 0, got {_shown(value)}")
    return value


def _known_at_config(value: Any) -> bool:
    """False for values only known at spawn: None (reset), callables and
    ``{value}`` templates of an unlisted choice."""
    if value is None or callable(value):
        return False
    return not (isinstance(value, str) and "{value}" in value)


# ---------------------------------------------------------------------------
# 1. config: normalize and validate profile_list


class _Checker:
    """Raises TierConfigError with 'profile_list: tier X: field Y ...'."""

    def __init__(self, tier: str):
        self.tier = tier

    def fail(self, path: str | None, problem: str):
        where = f"profile_list: tier {self.tier!r}"
        if path:
            where += f": field {path!r}"
        raise TierConfigError(f"{where} {problem}")

    def known(self, d: dict, allowed: frozenset, path: str, what: str):
        for key in d:
            if key not in allowed:
                sub = f"{path}.{key}" if path else str(key)
                self.fail(
                    sub,
                    f"is not a known {what} field (known: {', '.join(sorted(allowed))})",
                )

    def dict_(self, value: Any, path: str) -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"must be a dict, got {type(value).__name__}")
        return value

    def text(self, d: dict, key: str, path: str, required=False) -> None:
        sub = f"{path}.{key}" if path else key
        if key not in d:
            if required:
                self.fail(sub, "is required")
            return
        if not isinstance(d[key], str) or (required and not d[key].strip()):
            self.fail(sub, f"must be a non-empty string, got {_shown(d[key])}")

    def bool_(self, d: dict, key: str, path: str) -> None:
        sub = f"{path}.{key}" if path else key
        if key in d and not isinstance(d[key], bool):
            self.fail(sub, f"must be true or false, got {_shown(d[key])}")

    def groups(self, d: dict, key: str, path: str) -> None:
        sub = f"{path}.{key}" if path else key
        value = d.get(key)
        if value is None:
            d.pop(key, None)
            return
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            self.fail(sub, f"must be a list of group names, got {_shown(value)}")
        if not value:
            self.fail(sub, "must not be empty (leave it out to allow everyone)")
        for g in value:
            if not isinstance(g, str) or not g:
                self.fail(sub, f"must hold non-empty group names, got {_shown(g)}")
        d[key] = list(value)

    def override(self, d: dict, path: str) -> str:
        """Accept kubespawner_override as an alias of spawner_override;
        check the resource settings a tier may take its resources from.
        Returns the name the config used (for messages)."""
        sub = f"{path}." if path else ""
        name = "spawner_override"
        if "kubespawner_override" in d:
            if "spawner_override" in d:
                self.fail(
                    f"{sub}kubespawner_override",
                    "is an alias of 'spawner_override'; set only one of them",
                )
            d["spawner_override"] = d.pop("kubespawner_override")
            name = "kubespawner_override"
        if "spawner_override" in d:
            value = self.dict_(d["spawner_override"], f"{sub}{name}")
            for k in value:
                if not isinstance(k, str) or not k:
                    self.fail(
                        f"{sub}{name}",
                        f"keys must be setting names, got {_shown(k)}",
                    )
            self.resource_settings(value, f"{sub}{name}")
        return name

    def resource_settings(self, override: dict, path: str) -> None:
        for key in CPU_SETTINGS + MEM_SETTINGS:
            v = override.get(key)
            if not _known_at_config(v):
                continue
            try:
                _cores(v) if key in CPU_SETTINGS else parse_bytes(v)
            except ValueError as e:
                self.fail(f"{path}.{key}", str(e))
        for key in EXTRA_RESOURCE_SETTINGS:
            v = override.get(key)
            if v is None or callable(v):
                continue
            self.dict_(v, f"{path}.{key}")
            if _known_at_config(v.get(GPU_RESOURCE)):
                try:
                    _count(v[GPU_RESOURCE])
                except ValueError as e:
                    self.fail(f"{path}.{key}.{GPU_RESOURCE}", str(e))


def _from_override(override: dict, keys: tuple, convert) -> Any:
    """The first of ``keys`` the override sets, converted; None if none is
    set, or the first one set is only known at spawn (callable, reset)."""
    for key in keys:
        if key in override:
            value = override[key]
            return convert(value) if _known_at_config(value) else None
    return None


def _override_gpu(override: dict) -> int:
    for key in EXTRA_RESOURCE_SETTINGS:
        resources = override.get(key)
        if isinstance(resources, dict) and _known_at_config(resources.get(GPU_RESOURCE)):
            return _count(resources[GPU_RESOURCE])
    return 0


def _check_resources(c: _Checker, p: dict) -> None:
    """``cpu``, ``mem``, ``gpu`` and ``hourly_cost`` are optional.

    Absent (or None), ``cpu``/``mem`` come from the tier's override
    (``cpu_limit``, else ``cpu_guarantee``; ``mem_limit``, else
    ``mem_guarantee``), else stay None: no limit. ``gpu`` comes from
    ``extra_resource_limits`` (else ``extra_resource_guarantees``)
    ``["nvidia.com/gpu"]``, else 0. No ``hourly_cost`` is None: no price
    (shown as none, accounted as 0).
    """
    override = p.get("spawner_override") or {}
    # cpu: cores, or "all" (resolved with os.cpu_count() in Tier)
    cpu = p.get("cpu")
    if cpu is None:
        p["cpu"] = _from_override(override, CPU_SETTINGS, _cores)
    elif cpu != "all":
        try:
            p["cpu"] = _cores(cpu)
        except ValueError:
            c.fail("cpu", f"must be a number of cores > 0 or 'all', got {_shown(cpu)}")
    try:
        mem = p.get("mem")
        p["mem"] = _from_override(override, MEM_SETTINGS, parse_bytes) if mem is None else parse_bytes(mem)
    except ValueError as e:
        c.fail("mem", str(e))
    gpu = p.get("gpu")
    if gpu is None:
        p["gpu"] = _override_gpu(override)
    elif not isinstance(gpu, int) or isinstance(gpu, bool) or gpu < 0:
        c.fail("gpu", f"must be an integer >= 0, got {_shown(gpu)}")
    cost = p.get("hourly_cost")
    if cost is not None:
        if not _is_number(cost):
            c.fail("hourly_cost", f"must be a number or None (no price), got {_shown(cost)}")
        if cost < 0:
            c.fail("hourly_cost", f"must be >= 0, got {cost!r}")
        cost = float(cost)
    p["hourly_cost"] = cost
    c.groups(p, "allowed_groups", "")
    m = p.get("max_servers")
    if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 0):
        c.fail("max_servers", f"must be an integer >= 0 or None, got {_shown(m)}")
    pool = p.get("warm_pool", 0)
    if not isinstance(pool, int) or isinstance(pool, bool) or pool < 0:
        c.fail("warm_pool", f"must be an integer >= 0 (machines kept ready), got {_shown(pool)}")
    idle = p.get("idle_downshift_after")
    if idle is not None and (not _is_number(idle) or idle <= 0):
        c.fail(
            "idle_downshift_after",
            f"must be a number of seconds > 0 or None, got {_shown(idle)}",
        )
    _check_grant(c, p)
    for key in ("backend", "volume"):
        value = p.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            c.fail(key, f"must be a non-empty string or None, got {_shown(value)}")
    if "extra" in p:
        c.dict_(p["extra"], "extra")


def _check_grant(c: _Checker, p: dict) -> None:
    """``max_grant`` (a duration, stored as seconds) makes a tier limited by
    ``allowed_groups`` requestable; ``approvers`` (group names) may decide
    its requests besides admins (docs/internals.md, "Requests and grants")."""
    value = p.get("max_grant")
    if value is None:
        p.pop("max_grant", None)
    else:
        try:
            p["max_grant"] = parse_duration(value)
        except ValueError as e:
            c.fail("max_grant", str(e))
        if not p.get("allowed_groups"):
            c.fail(
                "max_grant",
                "needs allowed_groups: a grant adds the user to the tier's first allowed group "
                "(a tier open to everyone needs no grant)",
            )
    if p.get("approvers") is None:
        p.pop("approvers", None)
        return
    c.groups(p, "approvers", "")
    if p.get("max_grant") is None:
        c.fail("approvers", "needs max_grant: only a tier that can be requested has approvers")


def _check_option(c: _Checker, key: Any, option: Any) -> None:
    path = f"profile_options.{key}"
    if not isinstance(key, str) or not _SLUG_RE.match(key):
        c.fail(path, "option keys must be letters, digits, '.', '_' or '-'")
    if key == "profile" or key.endswith(UNLISTED_SUFFIX):
        c.fail(path, f"option key {key!r} is reserved")
    c.dict_(option, path)
    c.known(option, _OPTION_FIELDS, path, "profile option")
    c.text(option, "display_name", path)

    choices = option.get("choices")
    if choices is None:
        option.pop("choices", None)
        choices = {}
    c.dict_(choices, f"{path}.choices")
    defaults = []
    for ckey, choice in choices.items():
        cpath = f"{path}.choices.{ckey}"
        if not isinstance(ckey, str) or not ckey:
            c.fail(cpath, "choice keys must be non-empty strings")
        if ckey == OTHER_CHOICE:
            c.fail(cpath, f"choice key {OTHER_CHOICE!r} is reserved")
        c.dict_(choice, cpath)
        c.known(choice, _CHOICE_FIELDS, cpath, "choice")
        c.text(choice, "display_name", cpath, required=True)
        c.text(choice, "description", cpath)
        c.bool_(choice, "default", cpath)
        c.groups(choice, "allowed_groups", cpath)
        c.override(choice, cpath)
        if choice.get("default"):
            defaults.append(ckey)
    if len(defaults) > 1:
        c.fail(
            f"{path}.choices",
            f"has more than one default choice: {', '.join(defaults)}",
        )
    if choices and not defaults:
        # like KubeSpawner: the first choice is the default
        next(iter(choices.values()))["default"] = True

    upath = f"{path}.unlisted_choice"
    unlisted = option.setdefault("unlisted_choice", {})
    c.dict_(unlisted, upath)
    c.known(unlisted, _UNLISTED_FIELDS, upath, "unlisted_choice")
    unlisted.setdefault("enabled", False)
    c.bool_(unlisted, "enabled", upath)
    for k in (
        "display_name",
        "display_name_in_choices",
        "validation_regex",
        "validation_message",
    ):
        c.text(unlisted, k, upath)
    if "validation_regex" in unlisted:
        try:
            re.compile(unlisted["validation_regex"])
        except re.error as e:
            c.fail(f"{upath}.validation_regex", f"is not a valid regex: {e}")
    c.override(unlisted, upath)
    if unlisted["enabled"]:
        unlisted.setdefault("display_name_in_choices", "Other...")
    if not choices and not unlisted["enabled"]:
        c.fail(path, "needs 'choices' or an enabled 'unlisted_choice'")


def _normalize_profile(p: Any, index: int, key: Any) -> dict:
    if not isinstance(p, dict):
        name = key if key is not None else f"#{index + 1}"
        raise TierConfigError(f"profile_list: tier {name!r} must be a dict, got {type(p).__name__}")
    name = p.get("slug") or key or p.get("display_name") or f"#{index + 1}"
    c = _Checker(str(name))
    c.known(p, _PROFILE_FIELDS, "", "tier")
    c.text(p, "display_name", "", required=True)
    if "slug" not in p:
        # a dict profile_list is keyed by slug; else derive it like KubeSpawner
        p["slug"] = key if key is not None else slugify(p["display_name"])
        if not p["slug"]:
            c.fail("slug", "is missing and cannot be derived from display_name")
    if not isinstance(p["slug"], str) or not _SLUG_RE.match(p["slug"]):
        c.fail(
            "slug",
            f"must be letters, digits, '.', '_' or '-' (starting with a letter"
            f" or digit), got {_shown(p['slug'])}",
        )
    c.text(p, "description", "")
    c.bool_(p, "default", "")
    c.override(p, "")
    _check_resources(c, p)
    options = p.get("profile_options")
    if options is None:
        p.pop("profile_options", None)
    else:
        c.dict_(options, "profile_options")
        for okey, option in options.items():
            _check_option(c, okey, option)
    return p


class Profiles(list):
    """A profile list :func:`normalize_profile_list` made: every function
    here takes it as it is, so a list is validated once per load (as
    KubeSpawner's ``_get_initialized_profile_list``), not at every call.
    Treat it as read-only."""


def normalize_profile_list(profile_list: Any) -> list[dict]:
    """Validated deep copy of a ``profile_list`` (list or dict keyed by slug).

    Fills ``slug`` (the dict key, else slugified ``display_name``), makes
    exactly one tier the default (the first if none is marked) and one choice
    of each option the default, renames ``kubespawner_override`` to
    ``spawner_override``, and canonicalizes ``cpu`` (float, ``"all"`` or
    None: no limit), ``mem`` (int bytes or None: no limit), ``gpu`` (int)
    and ``hourly_cost`` (float, or None: no price); missing resources come
    from the tier's override (``cpu_limit``, ``mem_limit``,
    ``extra_resource_limits["nvidia.com/gpu"]``, see ``_check_resources``),
    so a KubeSpawner ``profile_list`` pasted unchanged is valid. A dict is
    ordered by key, like KubeSpawner. Idempotent.

    Raises TierConfigError naming the tier and field, e.g.
    ``profile_list: tier 'gpu': field 'hourly_cost' must be >= 0, got -1``.

    A :class:`Profiles` (what this returns) is returned as it is.
    """
    if isinstance(profile_list, Profiles):
        return profile_list
    if isinstance(profile_list, Mapping):
        items = [(k, profile_list[k]) for k in sorted(profile_list, key=str)]
    elif isinstance(profile_list, (list, tuple)):
        items = [(None, p) for p in profile_list]
    else:
        raise TierConfigError(
            "profile_list must be a list, a dict keyed by slug or a callable,"
            f" got {type(profile_list).__name__}"
        )
    if not items:
        raise TierConfigError("profile_list: no tiers configured")

    profiles = [_normalize_profile(_copy(p), i, k) for i, (k, p) in enumerate(items)]
    seen: dict[str, str] = {}
    for p in profiles:
        if p["slug"] in seen:
            raise TierConfigError(
                f"profile_list: tier {p['slug']!r}: field 'slug' is not unique"
                f" (tiers {seen[p['slug']]!r} and {p['display_name']!r})"
            )
        seen[p["slug"]] = p["display_name"]
    defaults = [p["slug"] for p in profiles if p.get("default")]
    if len(defaults) > 1:
        raise TierConfigError(
            f"profile_list: tier {defaults[1]!r}: field 'default' is also set"
            f" on tier {defaults[0]!r}; only one tier may be the default"
        )
    if not defaults:
        profiles[0]["default"] = True
    return Profiles(profiles)


async def load_profile_list(profile_list: Any, spawner: Any) -> list[dict]:
    """Evaluate a (sync or async) callable ``profile_list(spawner)``, then
    normalize. Lists and dicts are normalized directly."""
    if callable(profile_list):
        profile_list = profile_list(spawner)
        if inspect.isawaitable(profile_list):
            profile_list = await profile_list
    return normalize_profile_list(profile_list)


# ---------------------------------------------------------------------------
# the Tier model


@dataclass(frozen=True)
class Tier:
    """One compute tier, resolved from a normalized profile dict."""

    slug: str
    display_name: str
    description: str
    default: bool
    #: cores; None: no limit
    cpu: float | None
    #: bytes; None: no limit
    mem: int | None
    gpu: int
    #: price per hour; None: the tier has no price (shown as none, costs 0)
    hourly_cost: float | None
    allowed_groups: tuple[str, ...] | None
    max_servers: int | None
    idle_downshift_after: float | None
    backend: str | None
    volume: str | None
    extra: dict = field(default_factory=dict, hash=False)
    raw: dict = field(default_factory=dict, hash=False, repr=False)
    #: seconds a request may be granted for; None: the tier cannot be requested
    max_grant: float | None = None
    #: groups whose members decide requests for the tier (besides admins)
    approvers: tuple[str, ...] = ()
    #: machines kept prepared for the tier (EC2 only: ``backends/ec2pool.py``)
    warm_pool: int = 0

    @classmethod
    def from_profile(cls, profile: dict) -> "Tier":
        cpu = profile.get("cpu")
        if cpu == "all":
            cpu = float(os.cpu_count() or 1)
        mem = profile.get("mem")
        cost = profile.get("hourly_cost")
        groups = profile.get("allowed_groups")
        return cls(
            slug=profile["slug"],
            display_name=profile["display_name"],
            description=profile.get("description") or "",
            default=bool(profile.get("default")),
            cpu=None if cpu is None else float(cpu),
            mem=None if mem is None else int(mem),
            gpu=int(profile.get("gpu") or 0),
            hourly_cost=None if cost is None else float(cost),
            allowed_groups=tuple(groups) if groups is not None else None,
            max_servers=profile.get("max_servers"),
            idle_downshift_after=profile.get("idle_downshift_after"),
            backend=profile.get("backend"),
            volume=profile.get("volume"),
            extra=_copy(profile.get("extra") or {}),
            raw=profile,
            max_grant=profile.get("max_grant"),
            approvers=tuple(profile.get("approvers") or ()),
            warm_pool=int(profile.get("warm_pool") or 0),
        )

    @property
    def cost_per_hour(self) -> float:
        """What accounting and budgets count per hour: 0 without a price."""
        return self.hourly_cost or 0.0

    def public(self) -> dict:
        """The JSON-able fields of ``DS_COMPUTE_TIER_INFO``; ``cpu``/``mem``
        None mean no limit, ``hourly_cost`` None no price."""
        return {
            "slug": self.slug,
            "display_name": self.display_name,
            "description": self.description,
            "cpu": self.cpu,
            "mem": self.mem,
            "gpu": self.gpu,
            "hourly_cost": self.hourly_cost,
        }


def tiers_of(profiles: Any) -> list[Tier]:
    """Every tier of a profile list, in order."""
    return [Tier.from_profile(p) for p in normalize_profile_list(profiles)]


def _find(profiles: list[dict], slug: str) -> dict | None:
    return next((p for p in profiles if p["slug"] == slug), None)


def _refusal(profile: dict, user_groups) -> str | None:
    return group_refusal(
        profile.get("allowed_groups"),
        user_groups,
        what=f"tier {profile['display_name']!r}",
    )


def _default_profile(profiles: list[dict], user_groups) -> dict | None:
    """The default tier if the user may use it, else their first usable one."""
    ordered = sorted(profiles, key=lambda p: not p.get("default"))
    return next(
        (p for p in ordered if _refusal(p, user_groups) is None and _usable_options(p, user_groups) is None),
        None,
    )


def for_user(profiles: Any, user_groups=None) -> list[dict]:
    """The one model of "the tiers this user may use, with reasons".

    Per tier, in order: :meth:`Tier.public` plus ``allowed``, ``reason``
    (why not: the tier's groups, or options none of whose choices the user
    may use), ``default`` (the tier an empty ``user_options`` gets for this
    user: the configured default if usable, else the first usable tier),
    ``max_servers`` and ``idle_downshift_after``. The spawner's
    ``DS_COMPUTE_TIERS``, the service's ``api/tiers`` (which adds live caps
    and budgets), and the spawn form all read it.
    """
    profiles = normalize_profile_list(profiles)
    groups = list(user_groups or ())
    default = _default_profile(profiles, groups)
    out = []
    for p in profiles:
        tier = Tier.from_profile(p)
        reason = _refusal(p, groups) or _usable_options(p, groups)
        out.append(
            {
                **tier.public(),
                "allowed": reason is None,
                "reason": reason,
                "default": p is default,
                "max_servers": tier.max_servers,
                "idle_downshift_after": tier.idle_downshift_after,
                # a refused tier with max_grant can be requested (api/requests)
                "max_grant": tier.max_grant,
            }
        )
    return out


def default_slug(profiles: Any, user_groups=None) -> str | None:
    """Slug of the tier an empty ``user_options`` gets for this user."""
    p = _default_profile(normalize_profile_list(profiles), user_groups)
    return p["slug"] if p else None


def get_tier(profiles: Any, slug: str | None) -> Tier:
    """The tier with this slug (the default tier when slug is empty).

    Raises TierOptionsError (400, field ``profile``) for an unknown slug.
    """
    profiles = normalize_profile_list(profiles)
    if not slug:
        return Tier.from_profile(next(p for p in profiles if p.get("default")))
    p = _find(profiles, slug)
    if p is None:
        raise TierOptionsError(
            f"unknown tier {_shown(slug)}; valid tiers: {', '.join(p['slug'] for p in profiles)}",
            field="profile",
        )
    return Tier.from_profile(p)


# ---------------------------------------------------------------------------
# 2. form -> user_options


def options_from_form(formdata: dict[str, list[str]]) -> dict:
    """Spawn-form data to ``user_options``, exactly like KubeSpawner.

    ``{'profile': ['gpu'], 'profile-option-gpu--image': ['base']}`` ->
    ``{'profile': 'gpu', 'image': 'base'}``. Only fields of the chosen tier
    are taken (``profile-option-{slug}--``); others are ignored. Nothing is
    validated here: that is ``validate_user_options``' job.
    """
    slug = (formdata.get("profile") or [None])[0]
    user_options: dict = {}
    if slug:
        user_options["profile"] = slug
        prefix = f"{FORM_OPTION_PREFIX}{slug}--"
        for key, values in formdata.items():
            if key.startswith(prefix) and values:
                user_options[key[len(prefix) :]] = values[0]
    return user_options


# ---------------------------------------------------------------------------
# 3. validate user_options


def _choice_refusal(option_key: str, choice_key: str, choice: dict, user_groups):
    return group_refusal(
        choice.get("allowed_groups"),
        user_groups,
        what=f"choice {choice_key!r} of option {option_key!r}",
    )


def _default_choice(option: dict, user_groups, check_groups: bool) -> str | None:
    """Default choice key, else the first the user may use, else None."""
    choices = option.get("choices") or {}
    ordered = sorted(choices, key=lambda k: not choices[k].get("default"))
    for key in ordered:
        if not check_groups or _choice_refusal("", key, choices[key], user_groups) is None:
            return key
    return None


def _usable_options(profile: dict, user_groups) -> str | None:
    """Reason a tier is unusable through its options alone, else None."""
    for key, option in (profile.get("profile_options") or {}).items():
        if option.get("choices") and _default_choice(option, user_groups, True) is None:
            if not option["unlisted_choice"]["enabled"]:
                return f"no choice of option {key!r} is available to your groups"
    return None


def _select(
    profiles: list[dict],
    user_options: Any,
    user_groups,
    check_groups: bool,
) -> tuple[dict, dict]:
    """The chosen profile and ``{option key: ("choice"|"unlisted", value)}``."""
    if user_options is None:
        user_options = {}
    if not isinstance(user_options, dict):
        raise TierOptionsError(
            f"user_options must be an object, got {type(user_options).__name__}",
            field="user_options",
        )
    for key, value in user_options.items():
        if not isinstance(key, str):
            raise TierOptionsError(f"option names must be strings, got {_shown(key)}")
        if not isinstance(value, str):
            raise TierOptionsError(f"{key!r} must be a string, got {type(value).__name__}", field=key)

    slug = user_options.get("profile")
    if not slug:
        profile = (
            _default_profile(profiles, user_groups)
            if check_groups
            else next(p for p in profiles if p.get("default"))
        )
        if profile is None:
            raise TierOptionsError("no tier is available to your groups", field="profile", status=403)
    else:
        profile = _find(profiles, slug)
        if profile is None:
            valid = [p["slug"] for p in profiles if not check_groups or _refusal(p, user_groups) is None]
            raise TierOptionsError(
                f"unknown tier {_shown(slug)}; valid tiers: {', '.join(valid)}",
                field="profile",
            )
        if check_groups:
            reason = _refusal(profile, user_groups)
            if reason:
                raise TierOptionsError(reason, field="profile", status=403)

    options = profile.get("profile_options") or {}
    allowed = {"profile"}
    for key, option in options.items():
        allowed.add(key)
        if option["unlisted_choice"]["enabled"]:
            allowed.add(key + UNLISTED_SUFFIX)
    for key in user_options:
        if key not in allowed:
            raise TierOptionsError(
                f"{key!r} is not an option of tier {profile['slug']!r};"
                f" valid keys: {', '.join(sorted(allowed))}",
                field=key,
            )

    selections = {}
    for key, option in options.items():
        ukey = key + UNLISTED_SUFFIX
        unlisted_cfg = option["unlisted_choice"]
        choices = option.get("choices") or {}
        choice = user_options.get(key) or None
        unlisted = user_options.get(ukey) or None
        if choice == OTHER_CHOICE and unlisted_cfg["enabled"]:
            if unlisted is None:
                raise TierOptionsError(
                    f"{ukey!r} is required when {key!r} is {OTHER_CHOICE!r}",
                    field=ukey,
                )
            choice = None
        if unlisted is not None:
            if choice is not None:
                raise TierOptionsError(f"give either {key!r} or {ukey!r}, not both", field=ukey)
            regex = unlisted_cfg.get("validation_regex")
            # fullmatch, like the HTML pattern attribute of the form's input
            if regex and not re.fullmatch(regex, unlisted):
                hint = unlisted_cfg.get("validation_message") or f"must match {regex}"
                raise TierOptionsError(f"{ukey!r}: {_shown(unlisted)} is not valid: {hint}", field=ukey)
            selections[key] = ("unlisted", unlisted)
            continue
        if choice is not None:
            if choice not in choices:
                valid = [
                    k
                    for k, ch in choices.items()
                    if not check_groups or _choice_refusal(key, k, ch, user_groups) is None
                ]
                hint = f" (or set {ukey!r})" if unlisted_cfg["enabled"] else ""
                raise TierOptionsError(
                    f"unknown choice {_shown(choice)} for {key!r}; valid choices: {', '.join(valid)}{hint}",
                    field=key,
                )
            if check_groups:
                reason = _choice_refusal(key, choice, choices[choice], user_groups)
                if reason:
                    raise TierOptionsError(reason, field=key, status=403)
            selections[key] = ("choice", choice)
            continue
        default = _default_choice(option, user_groups, check_groups)
        if default is None:
            if choices:
                raise TierOptionsError(
                    f"no choice of {key!r} is available to your groups",
                    field=key,
                    status=403,
                )
            raise TierOptionsError(
                f"{ukey!r} is required: option {key!r} has no predefined choices",
                field=ukey,
            )
        selections[key] = ("choice", default)
    return profile, selections


def _complete(profile: dict, selections: dict) -> dict:
    result = {"profile": profile["slug"]}
    for key, (kind, value) in selections.items():
        result[key + UNLISTED_SUFFIX if kind == "unlisted" else key] = value
    return result


def validate_user_options(
    profiles: Any,
    user_options: Any,
    user_groups: Iterable[str] | None = None,
    is_admin: bool = False,
) -> dict:
    """Check ``user_options`` and return them complete and normalized.

    The result has ``profile`` (the chosen slug; the user's default tier when
    absent or empty) and, for each option of that tier, either ``{key}`` (the
    choice; its default when absent or empty) or ``{key}--unlisted-choice``.
    Validating the result again gives the same result.

    Raises TierOptionsError: status 400 for an unknown tier, choice or key, a
    non-string value, or an unlisted value failing its regex (``fullmatch``);
    403 when the user's groups may not use the tier or choice. ``user_groups``
    None counts as no groups. ``is_admin`` does not lift group limits (see
    ``policy.group_refusal``).
    """
    profiles = normalize_profile_list(profiles)
    groups = list(user_groups or ())
    profile, selections = _select(profiles, user_options, groups, check_groups=True)
    return _complete(profile, selections)


# ---------------------------------------------------------------------------
# 4. overrides


def _substitute(obj: Any, value: str) -> Any:
    """Put ``value`` where ``{value}`` is, ``{{``/``}}`` -> ``{``/``}``,
    recursively through dict keys and values, lists, tuples and sets. Other
    ``{placeholders}`` stay as they are (like KubeSpawner's recursive_format).
    """
    if isinstance(obj, str):
        return _VALUE_RE.sub(lambda m: {"{{": "{", "}}": "}"}.get(m.group(0), value), obj)
    if isinstance(obj, dict):
        return {_substitute(k, value): _substitute(v, value) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, value) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_substitute(v, value) for v in obj)
    if isinstance(obj, set):
        return {_substitute(v, value) for v in obj}
    return obj


class Overrides(dict):
    """``resolve_overrides``' merged settings; ``tier`` is the slug of the
    tier they come from (named in ``apply_overrides``' log lines)."""

    tier: str | None = None


def _merge(target: dict, new: dict) -> dict:
    """Merge override layers: dicts merge, None markers are kept (they
    delete when applied), anything else replaces."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = _copy(value)
    return target


def resolve_overrides(profiles: Any, user_options: Any) -> dict:
    """The merged ``spawner_override`` for these (validated) ``user_options``.

    Layers, later winning: the tier's ``spawner_override``, then for each
    option in order the chosen choice's ``spawner_override`` or the
    ``unlisted_choice`` one with ``{value}`` substituted. Dicts merge
    recursively; ``None`` values are kept so ``apply_overrides`` deletes.
    Group limits are not checked here (``validate_user_options`` does).
    The result is an :class:`Overrides` (a dict naming its tier).
    """
    profiles = normalize_profile_list(profiles)
    profile, selections = _select(profiles, user_options, None, check_groups=False)
    merged = _merge(Overrides(), profile.get("spawner_override") or {})
    merged.tier = profile["slug"]
    for key, option in (profile.get("profile_options") or {}).items():
        kind, value = selections[key]
        if kind == "unlisted":
            layer = option["unlisted_choice"].get("spawner_override") or {}
            layer = _substitute(layer, value)
        else:
            layer = option["choices"][value].get("spawner_override") or {}
        _merge(merged, layer)
    return merged


def _merged_dict(current: dict, new: dict) -> dict:
    """A new dict: ``current`` updated recursively by ``new``; None deletes."""
    result = _copy(current)
    for key, value in new.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merged_dict(result[key], value)
        elif isinstance(value, dict):
            result[key] = _merged_dict({}, value)
        else:
            result[key] = _copy(value)
    return result


def _has_setting(spawner: Any, name: str) -> bool:
    has_trait = getattr(spawner, "has_trait", None)
    if has_trait is not None and has_trait(name):
        return True
    return hasattr(spawner, name)


def _ignored(spawner: Any, name: str, value: Any) -> tuple[int, str] | None:
    """(log level, why) when the override ``name`` does not apply here."""
    if _has_setting(spawner, name):
        return None
    cls = type(spawner).__name__
    if name in EXTRA_RESOURCE_SETTINGS:
        others = sorted(str(k) for k in value if k != GPU_RESOURCE) if isinstance(value, dict) else []
        if not others:
            return logging.DEBUG, f"it holds nothing but {GPU_RESOURCE!r}, which is the tier's gpu"
        return logging.WARNING, f"{cls} has only GPUs ({GPU_RESOURCE!r}), not {', '.join(others)}"
    if name in KUBERNETES_ONLY_SETTINGS:
        return logging.DEBUG, "a Kubernetes-only KubeSpawner setting, without meaning here"
    return logging.WARNING, f"{cls} has no setting {name!r}"


def apply_overrides(spawner: Any, overrides: dict) -> None:
    """Apply ``resolve_overrides`` output to a spawner.

    A callable value is called with the spawner and its result used (it must
    be synchronous). A dict merges recursively into a dict trait (a nested
    ``None`` deletes that key); a top-level ``None`` resets the trait to its
    class default (``trait_defaults``; plain attributes are deleted); other
    values are set. ``mem_limit``/``mem_guarantee`` take the units of a
    tier's ``mem`` (``"2G"``, ``"2Gi"``), ``cpu_limit``/``cpu_guarantee``
    numeric strings.

    Settings the spawner does not have are skipped, so that a KubeSpawner
    ``profile_list`` spawns unchanged: with a warning naming the tier and
    the setting (e.g. ``image``, ``lifecycle_hooks``, a typo), or a debug
    line for ``KUBERNETES_ONLY_SETTINGS`` and for
    ``extra_resource_limits``/``extra_resource_guarantees`` holding only
    ``nvidia.com/gpu`` (which is the tier's ``gpu``). Values a trait
    refuses raise TierConfigError naming the setting.
    """
    tier = getattr(overrides, "tier", None)
    where = f"tier {tier!r}: " if tier else ""
    log_name = getattr(spawner, "_log_name", None) or type(spawner).__name__
    for name, value in overrides.items():
        ignored = _ignored(spawner, name, value)
        if ignored:
            level, why = ignored
            spawner.log.log(level, "%soverride %r ignored for %s: %s", where, name, log_name, why)
            continue
        source = ""
        if callable(value):
            value = value(spawner)
            source = " (callable result)"
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()
                raise TierConfigError(
                    f"{where}spawner override {name!r}: the callable returned an"
                    " awaitable; override callables must be synchronous"
                )
        try:
            if value is None:
                if getattr(spawner, "has_trait", lambda n: False)(name):
                    setattr(spawner, name, _copy(spawner.trait_defaults(name)))
                    spawner.log.debug("Override %s reset to its default", name)
                else:
                    delattr(spawner, name)
                    spawner.log.debug("Override %s deleted", name)
                continue
            if isinstance(value, str) and name in MEM_SETTINGS:
                value = parse_bytes(value)
            elif isinstance(value, str) and name in CPU_SETTINGS:
                value = _cores(value)
            current = getattr(spawner, name, None)
            if isinstance(value, dict):
                base = current if isinstance(current, dict) else {}
                value = _merged_dict(base, value)
            setattr(spawner, name, value)
        except TierConfigError:
            raise
        except Exception as e:
            raise TierConfigError(f"{where}spawner override {name!r}: {e}") from e
        spawner.log.debug("Override %s=%r%s", name, value, source)
