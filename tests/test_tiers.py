"""Pure tests of the profile_list model (no hub needed)."""

import copy
import functools
import json
import logging
import os
import re
from pathlib import Path

import jinja2
import pasted_profiles as pasted
import pytest
from fakes import TraitsSpawner
from jupyterhub.traitlets import ByteSpecification
from traitlets import Dict, Float, HasTraits, Unicode

from jupyter_ds_compute import tiers as t
from jupyter_ds_compute.form import form_context
from jupyter_ds_compute.tiers import (
    Tier,
    TierConfigError,
    TierOptionsError,
    apply_overrides,
    default_slug,
    get_tier,
    load_profile_list,
    normalize_profile_list,
    options_from_form,
    parse_bytes,
    resolve_overrides,
    slugify,
    tiers_of,
    validate_user_options,
)

GiB = 1024**3
MiB = 1024**2
TEMPLATES = Path(t.__file__).parent / "templates"


def tier(display_name, **kw):
    """A minimal valid tier dict."""
    kw.setdefault("cpu", 1)
    kw.setdefault("mem", "1G")
    kw.setdefault("hourly_cost", 0.01)
    return {"display_name": display_name, **kw}


def image_option(**unlisted):
    return {
        "display_name": "Image",
        "choices": {
            "base": {
                "display_name": "Base",
                "kubespawner_override": {"image": "base:1"},
            },
            "minimal": {
                "display_name": "Minimal",
                "default": True,
                "kubespawner_override": {"image": "minimal:1"},
            },
        },
        "unlisted_choice": {
            "enabled": True,
            "display_name": "Other image",
            "display_name_in_choices": "Enter image manually",
            "validation_regex": r"^jupyter/.+:.+$",
            "validation_message": "Must be jupyter/<name>:<tag>",
            "kubespawner_override": {
                "image": "{value}",
                "environment": {"IMAGE": "{value}", "LITERAL": "${{HOME}}"},
            },
            **unlisted,
        },
    }


def profiles():
    """Small (default), GPU (gpu-users only, with an image option), Big
    (with a group-limited choice)."""
    return [
        tier(
            "Small",
            slug="small",
            description="For notebooks",
            mem="2G",
            spawner_override={"environment": {"TIER": "small"}},
        ),
        tier(
            "GPU",
            slug="gpu",
            cpu=4,
            mem="16G",
            gpu=1,
            hourly_cost=0.9,
            allowed_groups=["gpu-users"],
            kubespawner_override={"environment": {"TIER": "gpu", "CUDA": "1"}},
            profile_options={"image": image_option()},
        ),
        tier(
            "Big",
            slug="big",
            cpu="all",
            mem=64 * GiB,
            hourly_cost=2,
            profile_options={
                "size": {
                    "display_name": "Size",
                    "choices": {
                        "normal": {"display_name": "Normal"},
                        "huge": {
                            "display_name": "Huge",
                            "allowed_groups": ["staff"],
                            "spawner_override": {"mem_limit": 128 * GiB},
                        },
                    },
                }
            },
        ),
    ]


# ---------------------------------------------------------------------------
# normalize_profile_list


def test_normalize_fills_slug_default_and_choice_defaults():
    raw = [
        tier("Something without a slug"),
        tier(
            "With choices",
            slug="sluggity-slug",
            profile_options={
                "no-defaults": {
                    "choices": {
                        "one": {"display_name": "One"},
                        "two": {"display_name": "Two"},
                    }
                },
                "only-unlisted": {"unlisted_choice": {"enabled": True}},
            },
        ),
    ]
    out = normalize_profile_list(raw)
    assert [p["slug"] for p in out] == ["something-without-a-slug", "sluggity-slug"]
    assert [bool(p.get("default")) for p in out] == [True, False]
    opts = out[1]["profile_options"]
    assert opts["no-defaults"]["choices"]["one"]["default"] is True
    assert "default" not in opts["no-defaults"]["choices"]["two"]
    assert opts["no-defaults"]["unlisted_choice"] == {"enabled": False}
    assert opts["only-unlisted"]["unlisted_choice"] == {
        "enabled": True,
        "display_name_in_choices": "Other...",
    }
    # canonical resources
    assert out[0]["cpu"] == 1.0 and out[0]["mem"] == GiB and out[0]["gpu"] == 0
    # the input is not modified
    assert "slug" not in raw[0]


def test_normalize_keeps_explicit_default():
    out = normalize_profile_list([tier("A"), tier("B", default=True)])
    assert [bool(p.get("default")) for p in out] == [False, True]


def test_normalize_dict_keyed_by_slug_sorted_like_kubespawner():
    out = normalize_profile_list(
        {
            "zeta": tier("Last one"),
            "alpha": tier("First one"),
            "mid": tier("Mid", slug="explicit-slug"),
        }
    )
    assert [p["slug"] for p in out] == ["alpha", "explicit-slug", "zeta"]
    assert out[0]["default"] is True


@pytest.mark.parametrize(
    "raw",
    [
        profiles(),
        {p["slug"]: p for p in profiles()},
        [tier("Only", profile_options={"x": {"unlisted_choice": {"enabled": True}}})],
    ],
)
def test_normalize_is_idempotent(raw):
    once = normalize_profile_list(raw)
    assert normalize_profile_list(once) == once
    assert normalize_profile_list(copy.deepcopy(once)) == once


def test_normalize_renames_kubespawner_override_alias():
    out = normalize_profile_list(profiles())
    gpu = out[1]
    assert "kubespawner_override" not in gpu
    assert gpu["spawner_override"]["environment"]["TIER"] == "gpu"
    base = gpu["profile_options"]["image"]["choices"]["base"]
    assert base["spawner_override"] == {"image": "base:1"}
    unlisted = gpu["profile_options"]["image"]["unlisted_choice"]
    assert unlisted["spawner_override"]["image"] == "{value}"


def test_normalize_deep_copies_but_keeps_callables():
    def hook(spawner):
        return "x"

    raw = [tier("A", spawner_override={"image": hook, "environment": {"K": "v"}})]
    out = normalize_profile_list(raw)
    assert out[0]["spawner_override"]["image"] is hook
    out[0]["spawner_override"]["environment"]["K"] = "changed"
    assert raw[0]["spawner_override"]["environment"]["K"] == "v"


@pytest.mark.parametrize(
    "mem, expected",
    [
        (1024, 1024),
        (1.5 * GiB, int(1.5 * GiB)),
        ("512M", 512 * MiB),
        ("2G", 2 * GiB),
        ("1.5G", int(1.5 * GiB)),
        ("1T", 1024**4),
        ("64K", 64 * 1024),
        ("2Gi", 2 * GiB),
        ("2GiB", 2 * GiB),
        ("4096", 4096),
    ],
)
def test_mem_byte_specification(mem, expected):
    assert parse_bytes(mem) == expected
    assert normalize_profile_list([tier("A", mem=mem)])[0]["mem"] == expected


@pytest.mark.parametrize(
    "cpu, expected",
    [(2, 2.0), (0.5, 0.5), ("1.5", 1.5), ("all", float(os.cpu_count() or 1))],
)
def test_cpu(cpu, expected):
    assert tiers_of([tier("A", cpu=cpu)])[0].cpu == expected


def test_cpu_all_stays_all_in_normalized_dict():
    assert normalize_profile_list([tier("A", cpu="all")])[0]["cpu"] == "all"


def test_optional_tier_fields():
    small, gpu, big = tiers_of(profiles())
    assert small.gpu == 0 and small.allowed_groups is None
    assert small.max_servers is None and small.idle_downshift_after is None
    assert small.backend is None and small.volume is None and small.extra == {}
    assert gpu.allowed_groups == ("gpu-users",)
    full = tiers_of(
        [
            tier(
                "Slurm GPU",
                max_servers=3,
                idle_downshift_after=1800,
                backend="slurm",
                volume="efs",
                extra={"partition": "gpu", "gres": "gpu:1"},
            )
        ]
    )[0]
    assert (full.max_servers, full.idle_downshift_after) == (3, 1800)
    assert (full.backend, full.volume) == ("slurm", "efs")
    assert full.extra == {"partition": "gpu", "gres": "gpu:1"}
    assert full.raw["slug"] == "slurm-gpu"


def _broken(change):
    """profiles() with one change applied to a deep copy."""
    pl = profiles()
    change(pl)
    return pl


@pytest.mark.parametrize(
    "profile_list, message",
    [
        ([], "profile_list: no tiers configured"),
        ("small", "profile_list must be a list, a dict keyed by slug or a callable"),
        ([["not", "a", "dict"]], "profile_list: tier '#1' must be a dict, got list"),
        (
            [{"cpu": 1, "mem": "1G", "hourly_cost": 0}],
            "profile_list: tier '#1': field 'display_name' is required",
        ),
        (
            [tier("A", hourly_cost=-1)],
            "profile_list: tier 'A': field 'hourly_cost' must be >= 0, got -1",
        ),
        (
            _broken(lambda pl: pl[1].update(hourly_cost=-1)),
            "profile_list: tier 'gpu': field 'hourly_cost' must be >= 0, got -1",
        ),
        (
            [tier("A", hourly_cost="cheap")],
            "tier 'A': field 'hourly_cost' must be a number or None (no price), got 'cheap'",
        ),
        (
            [{"display_name": "A", "kubespawner_override": {"cpu_limit": "lots"}}],
            "tier 'A': field 'kubespawner_override.cpu_limit' must be a number of cores > 0, got 'lots'",
        ),
        (
            [{"display_name": "A", "spawner_override": {"cpu_guarantee": 0}}],
            "tier 'A': field 'spawner_override.cpu_guarantee' must be a number of cores > 0, got 0",
        ),
        (
            [{"display_name": "A", "kubespawner_override": {"mem_limit": "2 gigs"}}],
            "tier 'A': field 'kubespawner_override.mem_limit' must be bytes or a string like '2G'",
        ),
        (
            [{"display_name": "A", "kubespawner_override": {"extra_resource_limits": ["nvidia.com/gpu"]}}],
            "tier 'A': field 'kubespawner_override.extra_resource_limits' must be a dict, got list",
        ),
        (
            [
                {
                    "display_name": "A",
                    "kubespawner_override": {"extra_resource_limits": {"nvidia.com/gpu": "one"}},
                }
            ],
            "tier 'A': field 'kubespawner_override.extra_resource_limits.nvidia.com/gpu'"
            " must be an integer >= 0, got 'one'",
        ),
        (
            _broken(
                lambda pl: pl[1]["profile_options"]["image"]["choices"]["base"][
                    "kubespawner_override"
                ].update(mem_limit="huge")
            ),
            "tier 'gpu': field 'profile_options.image.choices.base.kubespawner_override.mem_limit'"
            " must be bytes or a string",
        ),
        ([tier("A", cpu=0)], "tier 'A': field 'cpu' must be a number of cores > 0"),
        ([tier("A", cpu="many")], "tier 'A': field 'cpu' must be a number of cores"),
        ([tier("A", cpu=True)], "tier 'A': field 'cpu' must be a number of cores"),
        ([tier("A", mem="2X")], "tier 'A': field 'mem' must be bytes or a string"),
        ([tier("A", mem=-5)], "tier 'A': field 'mem' must be > 0"),
        ([tier("A", mem=True)], "tier 'A': field 'mem' expected bytes"),
        ([tier("A", gpu=-1)], "tier 'A': field 'gpu' must be an integer >= 0"),
        ([tier("A", gpu=1.5)], "tier 'A': field 'gpu' must be an integer >= 0"),
        ([tier("A", gpu=True)], "tier 'A': field 'gpu' must be an integer >= 0"),
        (
            [tier("A", slug="x"), tier("B", slug="x")],
            "profile_list: tier 'x': field 'slug' is not unique",
        ),
        (
            [tier("A"), tier("a")],
            "profile_list: tier 'a': field 'slug' is not unique",
        ),
        (
            [tier("A", default=True), tier("B", default=True)],
            "profile_list: tier 'b': field 'default' is also set on tier 'a'",
        ),
        ([tier("A", default="yes")], "tier 'A': field 'default' must be true or false"),
        (
            [tier("A", image="x")],
            "profile_list: tier 'A': field 'image' is not a known tier field",
        ),
        ([tier("A", slug="has space")], "tier 'has space': field 'slug' must be"),
        ([tier("!!!")], "tier '!!!': field 'slug' is missing and cannot be derived"),
        (
            [tier("A", allowed_groups=[])],
            "tier 'A': field 'allowed_groups' must not be empty",
        ),
        (
            [tier("A", allowed_groups="staff")],
            "tier 'A': field 'allowed_groups' must be a list of group names",
        ),
        (
            [tier("A", max_servers=-1)],
            "tier 'A': field 'max_servers' must be an integer >= 0 or None",
        ),
        (
            [tier("A", idle_downshift_after=0)],
            "tier 'A': field 'idle_downshift_after' must be a number of seconds > 0",
        ),
        ([tier("A", backend="")], "tier 'A': field 'backend' must be a non-empty"),
        ([tier("A", volume=3)], "tier 'A': field 'volume' must be a non-empty"),
        ([tier("A", extra=[1])], "tier 'A': field 'extra' must be a dict, got list"),
        (
            [tier("A", spawner_override={"a": 1}, kubespawner_override={"a": 2})],
            "tier 'A': field 'kubespawner_override' is an alias of 'spawner_override'",
        ),
        (
            [tier("A", spawner_override=["a"])],
            "tier 'A': field 'spawner_override' must be a dict",
        ),
        (
            _broken(lambda pl: pl[1]["profile_options"]["image"]["choices"]["base"].pop("display_name")),
            "tier 'gpu': field 'profile_options.image.choices.base.display_name' is required",
        ),
        (
            _broken(lambda pl: pl[1]["profile_options"]["image"]["choices"]["base"].update(default=True)),
            "tier 'gpu': field 'profile_options.image.choices' has more than one"
            " default choice: base, minimal",
        ),
        (
            _broken(lambda pl: pl[1]["profile_options"]["image"]["choices"]["base"].update(colour="red")),
            "tier 'gpu': field 'profile_options.image.choices.base.colour' is not a known choice field",
        ),
        (
            _broken(lambda pl: pl[1]["profile_options"]["image"].update(required=True)),
            "tier 'gpu': field 'profile_options.image.required' is not a known profile option field",
        ),
        (
            _broken(
                lambda pl: pl[1]["profile_options"]["image"]["unlisted_choice"].update(
                    validation_regex="(unclosed"
                )
            ),
            "tier 'gpu': field 'profile_options.image.unlisted_choice.validation_regex' is not a valid regex",
        ),
        (
            _broken(lambda pl: pl[1]["profile_options"]["image"]["unlisted_choice"].update(enabled="yes")),
            "tier 'gpu': field 'profile_options.image.unlisted_choice.enabled' must be true or false",
        ),
        (
            [tier("A", profile_options={"x": {"display_name": "X"}})],
            "tier 'A': field 'profile_options.x' needs 'choices' or an enabled 'unlisted_choice'",
        ),
        (
            [
                tier(
                    "A",
                    profile_options={"x": {"choices": {"unlisted-choice": {"display_name": "U"}}}},
                )
            ],
            "tier 'A': field 'profile_options.x.choices.unlisted-choice' choice key"
            " 'unlisted-choice' is reserved",
        ),
        (
            [
                tier(
                    "A",
                    profile_options={"profile": {"choices": {"a": {"display_name": "A"}}}},
                )
            ],
            "tier 'A': field 'profile_options.profile' option key 'profile' is reserved",
        ),
        (
            [tier("A", profile_options={"x": {"choices": {"a": "just a string"}}})],
            "tier 'A': field 'profile_options.x.choices.a' must be a dict, got str",
        ),
        (
            [
                tier(
                    "A",
                    profile_options={"x": {"choices": {"a": {"display_name": "A", "allowed_groups": []}}}},
                )
            ],
            "tier 'A': field 'profile_options.x.choices.a.allowed_groups' must not be empty",
        ),
    ],
)
def test_normalize_errors_name_tier_and_field(profile_list, message):
    with pytest.raises(TierConfigError) as e:
        normalize_profile_list(profile_list)
    if not message.startswith("profile_list"):
        message = "profile_list: " + message
    assert str(e.value).startswith(message), str(e.value)


def test_normalize_error_is_a_value_error():
    assert issubclass(TierConfigError, ValueError)
    assert issubclass(TierOptionsError, ValueError)


# ---------------------------------------------------------------------------
# load_profile_list


async def test_load_profile_list_list_and_dict():
    spawner = TraitsSpawner()
    assert await load_profile_list(profiles(), spawner) == normalize_profile_list(profiles())
    as_dict = {p.pop("slug"): p for p in profiles()}
    loaded = await load_profile_list(as_dict, spawner)
    assert [p["slug"] for p in loaded] == ["big", "gpu", "small"]


async def test_load_profile_list_sync_callable_gets_spawner():
    spawner = TraitsSpawner(image="sync")
    seen = []

    def make(s):
        seen.append(s)
        return [tier(f"For {s.image}")]

    loaded = await load_profile_list(make, spawner)
    assert seen == [spawner]
    assert loaded[0]["slug"] == "for-sync"


async def test_load_profile_list_async_callable_gets_spawner():
    spawner = TraitsSpawner(image="async")

    async def make(s):
        return {"only": tier(f"For {s.image}")}

    loaded = await load_profile_list(make, spawner)
    assert [(p["slug"], p["display_name"]) for p in loaded] == [("only", "For async")]


async def test_load_profile_list_callable_result_is_validated():
    with pytest.raises(TierConfigError, match="no tiers configured"):
        await load_profile_list(lambda s: [], TraitsSpawner())


# ---------------------------------------------------------------------------
# slugify, tiers, get_tier


@pytest.mark.parametrize(
    "name, slug",
    [
        ("Small", "small"),
        ("Something without a slug", "something-without-a-slug"),
        ("GPU (A100), 1x", "gpu-a100-1x"),
        ("  many -- cores  ", "many-cores"),
        ("Café Größe", "cafe-groe"),
        ("Bob's box", "bob-s-box"),
        ("日本", ""),
    ],
)
def test_slugify(name, slug):
    assert slugify(name) == slug


def test_tier_public_is_json_and_has_contract_fields():
    small = get_tier(profiles(), "small")
    info = small.public()
    assert info == {
        "slug": "small",
        "display_name": "Small",
        "description": "For notebooks",
        "cpu": 1.0,
        "mem": 2 * GiB,
        "gpu": 0,
        "hourly_cost": 0.01,
    }
    assert json.loads(json.dumps(info)) == info
    assert isinstance(small, Tier) and small.default is True


@pytest.mark.parametrize("slug", [None, ""])
def test_get_tier_default(slug):
    assert get_tier(profiles(), slug).slug == "small"


def test_get_tier_unknown():
    with pytest.raises(TierOptionsError) as e:
        get_tier(profiles(), "nope")
    assert (e.value.status, e.value.field) == (400, "profile")
    assert "valid tiers: small, gpu, big" in e.value.message


def test_tier_is_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        get_tier(profiles(), "small").cpu = 8


# ---------------------------------------------------------------------------
# options_from_form


@pytest.mark.parametrize(
    "formdata, expected",
    [
        ({}, {}),
        ({"profile": [""]}, {}),
        ({"profile": ["small"]}, {"profile": "small"}),
        (
            {"profile": ["demo-1"], "profile-option-demo-1--image": ["minimal"]},
            {"profile": "demo-1", "image": "minimal"},
        ),
        (
            {
                "profile": ["gpu"],
                "profile-option-gpu--image": ["unlisted-choice"],
                "profile-option-gpu--image--unlisted-choice": ["jupyter/x:1"],
            },
            {
                "profile": "gpu",
                "image": "unlisted-choice",
                "image--unlisted-choice": "jupyter/x:1",
            },
        ),
        (
            # options of other tiers (even ones whose slug starts the same)
            # and unrelated fields are ignored
            {
                "profile": ["short"],
                "profile-option-short--relevant": ["choice-a"],
                "profile-option-short-plus--irrelevant": ["choice-b"],
                "_xsrf": ["token"],
                "image": ["sneaky"],
            },
            {"profile": "short", "relevant": "choice-a"},
        ),
        (
            {"profile": ["a", "b"], "profile-option-a--x": ["1", "2"]},
            {"profile": "a", "x": "1"},
        ),
    ],
)
def test_options_from_form(formdata, expected):
    assert options_from_form(formdata) == expected


# ---------------------------------------------------------------------------
# validate_user_options


@pytest.mark.parametrize(
    "user_options, groups, expected",
    [
        ({}, [], {"profile": "small"}),
        (None, [], {"profile": "small"}),
        ({"profile": ""}, [], {"profile": "small"}),
        ({"profile": "big"}, [], {"profile": "big", "size": "normal"}),
        (
            {"profile": "gpu"},
            ["gpu-users"],
            {"profile": "gpu", "image": "minimal"},
        ),
        (
            {"profile": "gpu", "image": "base"},
            ["gpu-users"],
            {"profile": "gpu", "image": "base"},
        ),
        (
            {"profile": "gpu", "image": ""},
            ["gpu-users"],
            {"profile": "gpu", "image": "minimal"},
        ),
        (
            {"profile": "gpu", "image--unlisted-choice": "jupyter/scipy:2024"},
            ["gpu-users"],
            {"profile": "gpu", "image--unlisted-choice": "jupyter/scipy:2024"},
        ),
        (
            # what the form sends when "Other" is chosen
            {
                "profile": "gpu",
                "image": "unlisted-choice",
                "image--unlisted-choice": "jupyter/scipy:2024",
            },
            ["gpu-users"],
            {"profile": "gpu", "image--unlisted-choice": "jupyter/scipy:2024"},
        ),
        (
            {"profile": "gpu", "image--unlisted-choice": ""},
            ["gpu-users"],
            {"profile": "gpu", "image": "minimal"},
        ),
        (
            {"profile": "big", "size": "huge"},
            ["staff"],
            {"profile": "big", "size": "huge"},
        ),
    ],
)
def test_validate_user_options_ok(user_options, groups, expected):
    result = validate_user_options(profiles(), user_options, groups)
    assert result == expected
    # validating the result again gives the same
    assert validate_user_options(profiles(), result, groups) == expected


@pytest.mark.parametrize(
    "user_options, groups, status, field, message",
    [
        (["profile"], [], 400, "user_options", "user_options must be an object"),
        ({"profile": "nope"}, [], 400, "profile", "valid tiers: small, big"),
        ({"profile": 3}, [], 400, "profile", "'profile' must be a string"),
        ({"profile": None}, [], 400, "profile", "'profile' must be a string"),
        (
            {"profile": "gpu"},
            ["staff"],
            403,
            "profile",
            "tier 'GPU' is limited to groups: gpu-users",
        ),
        (
            {"profile": "gpu"},
            None,
            403,
            "profile",
            "tier 'GPU' is limited to groups: gpu-users",
        ),
        (
            {"profile": "gpu", "image": "nope"},
            ["gpu-users"],
            400,
            "image",
            "unknown choice 'nope' for 'image'; valid choices: base, minimal"
            " (or set 'image--unlisted-choice')",
        ),
        (
            {"profile": "big", "size": "tiny"},
            ["staff"],
            400,
            "size",
            "unknown choice 'tiny' for 'size'; valid choices: normal, huge",
        ),
        (
            {"profile": "big", "size": "tiny"},
            [],
            400,
            "size",
            "valid choices: normal",
        ),
        (
            {"profile": "big", "size": "huge"},
            ["gpu-users"],
            403,
            "size",
            "choice 'huge' of option 'size' is limited to groups: staff",
        ),
        (
            {"profile": "gpu", "image--unlisted-choice": "evil/image:1"},
            ["gpu-users"],
            400,
            "image--unlisted-choice",
            "'image--unlisted-choice': 'evil/image:1' is not valid: Must be jupyter/<name>:<tag>",
        ),
        (
            # fullmatch: a trailing newline does not sneak past '$'
            {"profile": "gpu", "image--unlisted-choice": "jupyter/a:b\n"},
            ["gpu-users"],
            400,
            "image--unlisted-choice",
            "is not valid",
        ),
        (
            {"profile": "gpu", "image": "unlisted-choice"},
            ["gpu-users"],
            400,
            "image--unlisted-choice",
            "'image--unlisted-choice' is required when 'image' is 'unlisted-choice'",
        ),
        (
            {
                "profile": "gpu",
                "image": "base",
                "image--unlisted-choice": "jupyter/a:b",
            },
            ["gpu-users"],
            400,
            "image--unlisted-choice",
            "give either 'image' or 'image--unlisted-choice', not both",
        ),
        (
            {"profile": "big", "size--unlisted-choice": "x"},
            [],
            400,
            "size--unlisted-choice",
            "'size--unlisted-choice' is not an option of tier 'big'",
        ),
        (
            {"profile": "small", "image": "base"},
            [],
            400,
            "image",
            "'image' is not an option of tier 'small'; valid keys: profile",
        ),
        (
            {"profile": "small", "cmd": "rm -rf /"},
            [],
            400,
            "cmd",
            "'cmd' is not an option of tier 'small'",
        ),
        ({"image": "base"}, [], 400, "image", "is not an option of tier 'small'"),
        (
            {"profile": "gpu", "image": ["base"]},
            ["gpu-users"],
            400,
            "image",
            "'image' must be a string, got list",
        ),
        ({"profile": "big", "size": 1}, [], 400, "size", "must be a string"),
    ],
)
def test_validate_user_options_errors(user_options, groups, status, field, message):
    with pytest.raises(TierOptionsError) as e:
        validate_user_options(profiles(), user_options, groups)
    assert (e.value.status, e.value.field) == (status, field)
    assert message in e.value.message, e.value.message
    assert str(e.value) == e.value.message


def test_validate_admin_is_not_exempt():
    with pytest.raises(TierOptionsError) as e:
        validate_user_options(profiles(), {"profile": "gpu"}, [], is_admin=True)
    assert e.value.status == 403


def test_unlisted_only_option_requires_a_value():
    pl = [
        tier(
            "Custom",
            profile_options={
                "image": {
                    "unlisted_choice": {
                        "enabled": True,
                        "spawner_override": {"image": "{value}"},
                    }
                }
            },
        )
    ]
    with pytest.raises(TierOptionsError) as e:
        validate_user_options(pl, {})
    assert (e.value.status, e.value.field) == (400, "image--unlisted-choice")
    assert validate_user_options(pl, {"image--unlisted-choice": "any:thing"}) == {
        "profile": "custom",
        "image--unlisted-choice": "any:thing",
    }


def test_default_tier_refused_falls_back_to_first_allowed():
    pl = [
        tier("GPU", default=True, allowed_groups=["gpu-users"]),
        tier("Small"),
    ]
    assert validate_user_options(pl, {}, ["gpu-users"]) == {"profile": "gpu"}
    assert validate_user_options(pl, {}, []) == {"profile": "small"}
    assert default_slug(pl, []) == "small"
    assert default_slug(pl, ["gpu-users"]) == "gpu"


def test_no_tier_allowed_is_403():
    pl = [tier("GPU", allowed_groups=["gpu-users"])]
    with pytest.raises(TierOptionsError) as e:
        validate_user_options(pl, {}, ["other"])
    assert (e.value.status, e.value.field) == (403, "profile")
    assert default_slug(pl, ["other"]) is None


def test_default_choice_refused_falls_back_to_first_allowed_choice():
    pl = [
        tier(
            "A",
            profile_options={
                "size": {
                    "choices": {
                        "huge": {
                            "display_name": "Huge",
                            "default": True,
                            "allowed_groups": ["staff"],
                        },
                        "normal": {"display_name": "Normal"},
                    }
                }
            },
        )
    ]
    assert validate_user_options(pl, {}, ["staff"])["size"] == "huge"
    assert validate_user_options(pl, {}, [])["size"] == "normal"


def test_every_choice_refused_is_403_on_the_option():
    pl = [
        tier("Free"),
        tier(
            "A",
            profile_options={
                "size": {"choices": {"huge": {"display_name": "Huge", "allowed_groups": ["staff"]}}}
            },
        ),
    ]
    with pytest.raises(TierOptionsError) as e:
        validate_user_options(pl, {"profile": "a"}, [])
    assert (e.value.status, e.value.field) == (403, "size")


def test_form_to_user_options_round_trip():
    formdata = {
        "profile": ["gpu"],
        "profile-option-gpu--image": ["unlisted-choice"],
        "profile-option-gpu--image--unlisted-choice": ["jupyter/r:4"],
        "profile-option-big--size": ["normal"],
    }
    user_options = validate_user_options(profiles(), options_from_form(formdata), ["gpu-users"])
    assert user_options == {
        "profile": "gpu",
        "image--unlisted-choice": "jupyter/r:4",
    }


# ---------------------------------------------------------------------------
# resolve_overrides


def test_resolve_overrides_profile_then_choices():
    assert resolve_overrides(profiles(), {"profile": "gpu", "image": "base"}) == {
        "environment": {"TIER": "gpu", "CUDA": "1"},
        "image": "base:1",
    }


@pytest.mark.parametrize("user_options", [{}, None, {"profile": ""}])
def test_resolve_overrides_default_tier(user_options):
    assert resolve_overrides(profiles(), user_options) == {"environment": {"TIER": "small"}}


def test_resolve_overrides_fills_default_choice():
    assert resolve_overrides(profiles(), {"profile": "gpu"})["image"] == "minimal:1"
    assert resolve_overrides(profiles(), {"profile": "big"}) == {}


def test_resolve_overrides_unlisted_value_substitution_and_escaping():
    pl = profiles()
    pl[1]["profile_options"]["image"]["unlisted_choice"]["kubespawner_override"] = {
        "image": "{value}",
        "environment": {
            "IMAGE": "{value}",
            "USER": "${JUPYTER_USER}",
            "ESCAPED": "${{JUPYTER_USER}}",
            "LITERAL_PLACEHOLDER": "{{value}}",
            "BOTH": "{{{value}}}",
            "OTHER": "{username}",
        },
        "cmd": ["start", "--image={value}", {"nested": ["{value}"]}],
        "{value}-label": "yes",
    }
    value = "jupyter/{odd}:1"
    out = resolve_overrides(pl, {"profile": "gpu", "image--unlisted-choice": value})
    assert out == {
        "environment": {
            "TIER": "gpu",
            "CUDA": "1",
            "IMAGE": value,
            "USER": "${JUPYTER_USER}",
            "ESCAPED": "${JUPYTER_USER}",
            "LITERAL_PLACEHOLDER": "{value}",
            "BOTH": "{" + value + "}",
            "OTHER": "{username}",
        },
        "image": value,
        "cmd": ["start", "--image=" + value, {"nested": [value]}],
        value + "-label": "yes",
    }


def test_resolve_overrides_choice_overrides_are_not_formatted():
    pl = [
        tier(
            "A",
            profile_options={
                "x": {
                    "choices": {
                        "a": {
                            "display_name": "A",
                            "spawner_override": {"image": "{value}{{x}}"},
                        }
                    }
                }
            },
        )
    ]
    assert resolve_overrides(pl, {}) == {"image": "{value}{{x}}"}


def test_resolve_overrides_keeps_none_and_later_layers_win():
    pl = [
        tier(
            "A",
            spawner_override={
                "environment": {"KEEP": "1", "DROP": "1"},
                "cmd": ["a"],
                "image": "profile",
            },
            profile_options={
                "x": {
                    "choices": {
                        "a": {
                            "display_name": "A",
                            "kubespawner_override": {
                                "environment": {"DROP": None, "NEW": "2"},
                                "cmd": None,
                            },
                        }
                    }
                },
                "y": {
                    "choices": {
                        "b": {
                            "display_name": "B",
                            "spawner_override": {"image": "choice"},
                        }
                    }
                },
            },
        )
    ]
    assert resolve_overrides(pl, {}) == {
        "environment": {"KEEP": "1", "DROP": None, "NEW": "2"},
        "cmd": None,
        "image": "choice",
    }


def test_resolve_overrides_refuses_bad_options():
    with pytest.raises(TierOptionsError) as e:
        resolve_overrides(profiles(), {"profile": "gpu", "image": "nope"})
    assert e.value.field == "image"


def test_resolve_overrides_does_not_alias_config():
    pl = normalize_profile_list(profiles())
    out = resolve_overrides(pl, {"profile": "small"})
    out["environment"]["TIER"] = "changed"
    assert pl[0]["spawner_override"]["environment"]["TIER"] == "small"


# ---------------------------------------------------------------------------
# apply_overrides


def test_apply_overrides_sets_and_merges_dicts():
    spawner = TraitsSpawner(environment={"KEEP": "1", "DROP": "1", "NESTED": "x"})
    apply_overrides(
        spawner,
        {
            "image": "gpu:1",
            "environment": {"DROP": None, "NEW": "2", "DEEP": {"a": 1, "b": None}},
            "mem_limit": 4 * GiB,
        },
    )
    assert spawner.image == "gpu:1"
    assert spawner.environment == {
        "KEEP": "1",
        "NESTED": "x",
        "NEW": "2",
        "DEEP": {"a": 1},
    }
    assert spawner.mem_limit == 4 * GiB


def test_apply_overrides_nested_none_deletes_in_nested_dict():
    spawner = TraitsSpawner(environment={"DEEP": {"a": 1, "b": 2}})
    apply_overrides(spawner, {"environment": {"DEEP": {"b": None}}})
    assert spawner.environment == {"DEEP": {"a": 1}}


def test_apply_overrides_does_not_mutate_existing_dict_or_overrides():
    env = {"A": "1"}
    spawner = TraitsSpawner(environment=env)
    before = spawner.environment
    overrides = {"environment": {"B": "2"}}
    apply_overrides(spawner, overrides)
    assert before == {"A": "1"}
    assert overrides == {"environment": {"B": "2"}}


def test_apply_overrides_top_level_none_resets_to_default():
    spawner = TraitsSpawner(image="custom", cmd=["other"], environment={"A": "1"}, notebook_dir="/x")
    apply_overrides(spawner, {"cmd": None, "environment": None, "notebook_dir": None})
    assert spawner.cmd == ["jupyterhub-singleuser"]
    assert spawner.environment == {}
    # dynamic defaults are recomputed
    assert spawner.notebook_dir == "/home/custom"


def test_apply_overrides_none_deletes_plain_attribute():
    spawner = TraitsSpawner()
    spawner.plain_attribute = "instance value"
    apply_overrides(spawner, {"plain_attribute": None})
    assert spawner.plain_attribute == "plain"


def test_apply_overrides_callables_get_the_spawner():
    spawner = TraitsSpawner(image="base")
    seen = []

    def image_for(s):
        seen.append(s)
        return s.image + "-gpu"

    apply_overrides(
        spawner,
        {
            "image": image_for,
            "environment": lambda s: {"FROM": s.image},
            "mem_limit": functools.partial(lambda n, s: n * GiB, 3),
        },
    )
    assert seen == [spawner]
    assert spawner.image == "base-gpu"
    assert spawner.environment == {"FROM": "base-gpu"}
    assert spawner.mem_limit == 3 * GiB


def test_apply_overrides_refuses_async_callable():
    async def image(s):
        return "x"

    with pytest.raises(TierConfigError, match="'image'.*must be synchronous"):
        apply_overrides(TraitsSpawner(), {"image": image})


def test_apply_overrides_unknown_setting_is_ignored_with_a_warning(caplog):
    caplog.set_level(logging.DEBUG, logger="test-traits-spawner")
    spawner = TraitsSpawner()
    called = []
    apply_overrides(spawner, {"imgae": "typo", "later": lambda s: called.append(s), "image": "ok"})
    assert spawner.image == "ok" and not hasattr(spawner, "imgae")
    assert called == []  # the callable of a skipped setting is never run
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "override 'imgae' ignored for TraitsSpawner: TraitsSpawner has no setting 'imgae'",
        "override 'later' ignored for TraitsSpawner: TraitsSpawner has no setting 'later'",
    ]


def test_apply_overrides_bad_value_names_setting():
    with pytest.raises(TierConfigError, match="spawner override 'mem_limit'"):
        apply_overrides(TraitsSpawner(), {"mem_limit": "lots"})


def test_apply_overrides_logs_each_override(caplog):
    caplog.set_level(logging.DEBUG, logger="test-traits-spawner")
    apply_overrides(TraitsSpawner(), {"image": "a", "cmd": lambda s: ["b"]})
    messages = [r.getMessage() for r in caplog.records]
    assert "Override image='a'" in messages
    assert "Override cmd=['b'] (callable result)" in messages


def test_resolve_then_apply_end_to_end():
    spawner = TraitsSpawner(environment={"BASE": "1"})
    user_options = validate_user_options(
        profiles(),
        {"profile": "gpu", "image--unlisted-choice": "jupyter/scipy:1"},
        ["gpu-users"],
    )
    apply_overrides(spawner, resolve_overrides(profiles(), user_options))
    assert spawner.image == "jupyter/scipy:1"
    assert spawner.environment == {
        "BASE": "1",
        "TIER": "gpu",
        "CUDA": "1",
        "IMAGE": "jupyter/scipy:1",
        "LITERAL": "${HOME}",
    }


# ---------------------------------------------------------------------------
# form_context


def _by_slug(ctx):
    return {c["slug"]: c for c in ctx}


def test_form_context_hides_group_restricted_tiers_and_choices():
    ctx = form_context(profiles(), [], gpu_devices_available=0)
    assert [c["slug"] for c in ctx] == ["small", "big"]
    size = _by_slug(ctx)["big"]["options"][0]
    assert [c["key"] for c in size["choices"]] == ["normal"]

    ctx = form_context(profiles(), ["gpu-users", "staff"], gpu_devices_available=1)
    assert [c["slug"] for c in ctx] == ["small", "gpu", "big"]
    size = _by_slug(ctx)["big"]["options"][0]
    assert [c["key"] for c in size["choices"]] == ["normal", "huge"]


def test_form_context_admin_sees_refused_tiers_disabled():
    ctx = _by_slug(form_context(profiles(), [], 0, is_admin=True))
    assert ctx["gpu"]["allowed"] is False
    assert ctx["gpu"]["reason"] == "tier 'GPU' is limited to groups: gpu-users"
    assert ctx["small"]["allowed"] is True and ctx["small"]["reason"] is None


def test_form_context_fields():
    ctx = _by_slug(form_context(profiles(), ["gpu-users"], gpu_devices_available=0))
    small, gpu, big = ctx["small"], ctx["gpu"], ctx["big"]
    assert small["mem_label"] == "2 GiB" and small["mem"] == 2 * GiB
    assert small["price"] == "$0.01/h" and small["hourly_cost"] == 0.01
    assert small["cpu_label"] == "1 CPU" and small["gpu_label"] == ""
    assert small["default"] is True and small["selected"] is True
    assert small["field_id"] == "profile-item-small"
    assert small["description"] == "For notebooks"
    assert gpu["cpu_label"] == "4 CPUs" and gpu["gpu_label"] == "1 GPU"
    assert gpu["price"] == "$0.90/h" and gpu["mem_label"] == "16 GiB"
    assert gpu["gpu_warning"] is True
    assert gpu["gpu_warning_message"] == "needs 1 GPU, this host has 0"
    assert small["gpu_warning"] is False
    assert big["price"] == "$2.00/h" and big["mem_label"] == "64 GiB"
    image = gpu["options"][0]
    assert image["field_name"] == "profile-option-gpu--image"
    assert [(c["key"], c["selected"]) for c in image["choices"]] == [
        ("base", False),
        ("minimal", True),
    ]
    assert image["unlisted"] == {
        "field_name": "profile-option-gpu--image--unlisted-choice",
        "display_name": "Other image",
        "display_name_in_choices": "Enter image manually",
        "validation_regex": r"^jupyter/.+:.+$",
        "validation_message": "Must be jupyter/<name>:<tag>",
        "selected": False,
        "value": "",
    }


@pytest.mark.parametrize("available, warning", [(None, False), (0, True), (1, False), (4, False)])
def test_form_context_gpu_warning(available, warning):
    gpu = _by_slug(form_context(profiles(), ["gpu-users"], available))["gpu"]
    assert gpu["gpu_warning"] is warning


@pytest.mark.parametrize(
    "cost, price",
    [(0, "$0.00/h"), (0.04, "$0.04/h"), (1.5, "$1.50/h"), (0.0004, "$0.0004/h")],
)
def test_form_context_price(cost, price):
    assert form_context([tier("A", hourly_cost=cost)], [], 0)[0]["price"] == price


@pytest.mark.parametrize(
    "mem, label",
    [("512M", "512 MiB"), ("1.5G", "1.5 GiB"), ("2T", "2 TiB"), (1000, "1000 B")],
)
def test_form_context_mem_label(mem, label):
    assert form_context([tier("A", mem=mem)], [], 0)[0]["mem_label"] == label


def test_form_context_preselects_previous_user_options():
    ctx = _by_slug(
        form_context(
            profiles(),
            ["gpu-users"],
            1,
            user_options={"profile": "gpu", "image--unlisted-choice": "jupyter/r:4"},
        )
    )
    assert ctx["gpu"]["selected"] is True and ctx["small"]["selected"] is False
    unlisted = ctx["gpu"]["options"][0]["unlisted"]
    assert unlisted["selected"] is True and unlisted["value"] == "jupyter/r:4"
    assert not any(c["selected"] for c in ctx["gpu"]["options"][0]["choices"])


def test_form_context_ignores_invalid_previous_user_options():
    ctx = _by_slug(form_context(profiles(), [], 1, user_options={"profile": "gpu"}))
    assert ctx["small"]["selected"] is True
    assert "gpu" not in ctx


# ---------------------------------------------------------------------------
# templates/form.html


def render(tiers, selected=None):
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("form.html").render(tiers=tiers, selected=selected)


def test_form_template_field_names_and_defaults():
    html = render(form_context(profiles(), ["gpu-users", "staff"], 1))
    for needle in [
        '<input class="form-check-input mt-1 flex-shrink-0"',
        'name="profile"',
        'id="profile-item-small"',
        'value="small" checked',
        'value="gpu"',
        'name="profile-option-gpu--image"',
        'id="profile-option-gpu--image"',
        '<option value="minimal" selected>Minimal</option>',
        '<option value="base">Base</option>',
        '<option value="unlisted-choice">Enter image manually</option>',
        'data-name="profile-option-gpu--image--unlisted-choice"',
        'id="profile-option-gpu--image--unlisted-choice-container"',
        'pattern="^jupyter/.+:.+$"',
        'name="profile-option-big--size"',
        '<option value="huge">Huge</option>',
        "$0.90/h",
        "16 GiB RAM",
        "4 CPUs",
        "1 GPU",
        "For notebooks",
    ]:
        assert needle in html, needle
    # the unlisted input is hidden and unnamed until "Other" is chosen
    assert not re.search(r'(?<!data-)name="profile-option-gpu--image--unlisted-choice"', html)
    assert re.search(r'class="col-12 js-ds-unlisted d-none"', html)
    assert html.count('type="radio"') == 3
    assert html.count(" checked") == 1


def test_form_template_selected_and_prefilled_unlisted():
    ctx = form_context(
        profiles(),
        ["gpu-users"],
        1,
        user_options={"profile": "gpu", "image--unlisted-choice": "jupyter/r:4"},
    )
    html = render(ctx, selected="gpu")
    assert 'value="gpu" checked' in html
    assert 'value="small" checked' not in html
    assert re.search(r' name="profile-option-gpu--image--unlisted-choice"', html)
    assert 'value="jupyter/r:4"' in html
    assert '<option value="unlisted-choice" selected>' in html


def test_form_template_selected_argument_wins():
    html = render(form_context(profiles(), [], 0), selected="big")
    assert 'value="big" checked' in html and 'value="small" checked' not in html


def test_form_template_escapes_text():
    evil = '<script>alert("x")</script>'
    pl = [
        tier(
            evil,
            slug="evil",
            description="a & b <b>",
            profile_options={
                "o": {
                    "display_name": "<i>opt</i>",
                    "choices": {'"><x': {"display_name": "<img src=x>"}},
                    "unlisted_choice": {
                        "enabled": True,
                        "validation_message": '"><script>',
                    },
                }
            },
        )
    ]
    ctx = form_context(pl, [], 0, user_options={"o--unlisted-choice": '"><script>bad()</script>'})
    html = render(ctx)
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "a &amp; b &lt;b&gt;" in html
    assert "&lt;i&gt;opt&lt;/i&gt;" in html
    assert "&lt;img src=x&gt;" in html
    assert 'value="&#34;&gt;&lt;x"' in html
    assert "<script>bad()" not in html
    assert "&#34;&gt;&lt;script&gt;bad()&lt;/script&gt;" in html
    # the only script is ours
    assert html.count("<script>") == 1


def test_form_template_admin_view_disables_refused_tier():
    html = render(form_context(profiles(), [], 0, is_admin=True))
    assert re.search(r'value="gpu"\s+disabled>', html)
    assert "tier &#39;GPU&#39; is limited to groups: gpu-users" in html
    assert "Warning: needs 1 GPU, this host has 0" in html


def test_form_template_no_tiers():
    assert "No compute tier is available to you" in render([])


# ---------------------------------------------------------------------------
# profile lists pasted from KubeSpawner's and z2jh's docs (tests/pasted_profiles.py)


class KubeLikeSpawner(HasTraits):
    """JupyterHub's resource settings and a few others, no ``image``."""

    environment = Dict()
    default_url = Unicode()
    cpu_limit = Float(None, allow_none=True)
    cpu_guarantee = Float(None, allow_none=True)
    mem_limit = ByteSpecification(None)
    mem_guarantee = ByteSpecification(None)
    _log_name = "alice"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.log = logging.getLogger("test-kube-like-spawner")


@pytest.mark.parametrize("name", sorted(pasted.ALL_EXAMPLES))
def test_pasted_profile_lists_are_valid_and_unpriced(name):
    raw = pasted.ALL_EXAMPLES[name]
    before = copy.deepcopy(raw)
    profiles = normalize_profile_list(raw)
    assert raw == before  # the operator's config is not touched
    assert normalize_profile_list(profiles) == profiles
    for t_ in tiers_of(raw):
        assert t_.hourly_cost is None and t_.cost_per_hour == 0.0
        info = json.loads(json.dumps(t_.public()))
        assert info["hourly_cost"] is None
    ctx = form_context(raw, [], 0)
    assert [c["price"] for c in ctx] == [""] * len(profiles)
    html = render(ctx)
    assert not re.search(r"\$\d", html) and "/h" not in html
    assert 'class="ds-tier-price' not in html
    assert html.count(" checked") == 1


def test_pasted_z2jh_resources_come_from_overrides():
    small, big, gpu = tiers_of(pasted.Z2JH_08_RESOURCE_PROFILES)
    assert (small.slug, small.cpu, small.mem, small.gpu, small.default) == (
        "small-default",
        1.0,
        GiB,
        0,
        True,
    )
    assert (big.slug, big.cpu, big.mem, big.gpu) == ("big-8-cpus", 8.0, 64 * GiB, 0)
    assert (gpu.slug, gpu.cpu, gpu.mem, gpu.gpu) == ("gpu-job", 4.0, 16 * GiB, 1)
    assert small.description == "A small job. 1 CPU, no GPU. This is the default.\n"
    ctx = _by_slug(form_context(pasted.Z2JH_08_RESOURCE_PROFILES, [], 0))
    assert (ctx["big-8-cpus"]["cpu_label"], ctx["big-8-cpus"]["mem_label"]) == ("8 CPUs", "64 GiB")
    assert ctx["gpu-job"]["gpu_label"] == "1 GPU" and ctx["gpu-job"]["gpu_warning"] is True


def test_pasted_kubespawner_list_without_resources_is_unlimited():
    demo1, demo2 = tiers_of(pasted.KUBESPAWNER_LIST_EXAMPLE)
    assert (demo1.cpu, demo1.mem, demo1.gpu) == (None, None, 0)
    # extra_resource_guarantees' GPU when there is no limit
    assert (demo2.cpu, demo2.mem, demo2.gpu) == (None, None, 1)
    assert [p.gpu for p in tiers_of(pasted.Z2JH_GPU_SERVER)] == [1]
    ctx = _by_slug(form_context(pasted.KUBESPAWNER_LIST_EXAMPLE, [], 0))
    assert (ctx["demo-1"]["cpu_label"], ctx["demo-1"]["mem_label"]) == ("unlimited CPU", "unlimited")
    html = render(list(ctx.values()))
    assert "unlimited CPU" in html and "unlimited RAM" in html
    image = ctx["demo-1"]["options"][0]
    assert [(c["key"], c["selected"]) for c in image["choices"]] == [("base", False), ("minimal", True)]
    assert image["unlisted"]["display_name_in_choices"] == "Enter image manually"


def test_pasted_slugs_like_kubespawner():
    assert [p["slug"] for p in normalize_profile_list(pasted.Z2JH_FOUR_PROFILES)] == [
        "minimal-environment",
        "datascience-environment",
        "spark-environment",
        "learning-data-science",
    ]
    assert [p["slug"] for p in normalize_profile_list(pasted.KUBESPAWNER_DICT_EXAMPLE)] == [
        "demo-1",
        "demo-2",
    ]


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"cpu_limit": 2, "cpu_guarantee": 0.5}, 2.0),
        ({"cpu_guarantee": 0.5}, 0.5),
        ({"cpu_limit": "1.5"}, 1.5),
        ({"cpu_limit": None, "cpu_guarantee": 1}, None),  # None resets the limit: none
        ({"cpu_limit": lambda spawner: 3}, None),  # only known at spawn
        ({}, None),
    ],
)
def test_cpu_from_override(override, expected):
    assert tiers_of([{"display_name": "A", "spawner_override": override}])[0].cpu == expected


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"mem_limit": "2G", "mem_guarantee": "1G"}, 2 * GiB),
        ({"mem_guarantee": "512M"}, 512 * MiB),
        ({"mem_limit": 1000}, 1000),
        ({"mem_limit": "2Gi"}, 2 * GiB),
        ({}, None),
    ],
)
def test_mem_from_override(override, expected):
    assert tiers_of([{"display_name": "A", "kubespawner_override": override}])[0].mem == expected


def test_own_fields_win_over_overrides():
    t_ = tiers_of(
        [
            {
                "display_name": "A",
                "cpu": 2,
                "mem": "4G",
                "gpu": 0,
                "hourly_cost": 0,
                "kubespawner_override": {
                    "cpu_limit": 8,
                    "mem_limit": "64G",
                    "extra_resource_limits": {"nvidia.com/gpu": "2"},
                },
            }
        ]
    )[0]
    assert (t_.cpu, t_.mem, t_.gpu, t_.hourly_cost) == (2.0, 4 * GiB, 0, 0.0)
    # a price of 0 is a price: shown, unlike no price
    assert form_context([tier("A", hourly_cost=0)], [], 0)[0]["price"] == "$0.00/h"
    assert form_context([tier("A", hourly_cost=None)], [], 0)[0]["price"] == ""


def test_unlisted_value_templates_are_not_checked_at_config():
    option = {
        "display_name": "Memory",
        "unlisted_choice": {"enabled": True, "kubespawner_override": {"mem_limit": "{value}"}},
    }
    pl = [{"display_name": "A", "profile_options": {"memory": option}}]
    assert tiers_of(pl)[0].mem is None
    spawner = KubeLikeSpawner()
    apply_overrides(spawner, resolve_overrides(pl, {"memory--unlisted-choice": "3Gi"}))
    assert spawner.mem_limit == 3 * GiB


def test_apply_pasted_overrides_warns_once_per_setting_it_ignores(caplog):
    caplog.set_level(logging.DEBUG, logger="test-kube-like-spawner")
    spawner = KubeLikeSpawner()
    pl = pasted.Z2JH_08_RESOURCE_PROFILES + [
        {
            "display_name": "Placed",
            "kubespawner_override": {
                "node_selector": {"gpu": "a100"},
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
                "extra_resource_limits": {"nvidia.com/gpu": "1", "example.com/fpga": "1"},
            },
        }
    ]
    pl[0] = dict(pl[0], default=False)
    pl[3]["default"] = True
    for slug in ("gpu-job", "big-8-cpus", "placed"):
        apply_overrides(spawner, resolve_overrides(pl, {"profile": slug}))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "tier 'gpu-job': override 'image' ignored for alice: KubeLikeSpawner has no setting 'image'",
        "tier 'big-8-cpus': override 'mem_guaranttee' ignored for alice:"
        " KubeLikeSpawner has no setting 'mem_guaranttee'",
        "tier 'placed': override 'extra_resource_limits' ignored for alice:"
        " KubeLikeSpawner has only GPUs ('nvidia.com/gpu'), not example.com/fpga",
    ]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("'node_selector' ignored for alice: a Kubernetes-only" in m for m in debug)
    assert any("'tolerations' ignored for alice: a Kubernetes-only" in m for m in debug)
    # the resource settings were applied: JupyterHub passes them on as MEM_LIMIT/CPU_LIMIT
    apply_overrides(spawner, resolve_overrides(pl, {"profile": "gpu-job"}))
    assert (spawner.cpu_limit, spawner.mem_limit, spawner.mem_guarantee) == (4.0, 16 * GiB, 16 * GiB)


def test_apply_kubespawner_choice_and_unlisted_overrides():
    pl = pasted.KUBESPAWNER_LIST_EXAMPLE
    spawner = KubeLikeSpawner()
    options = validate_user_options(pl, {"profile": "demo-1", "image": "base"})
    assert options == {"profile": "demo-1", "image": "base"}
    overrides = resolve_overrides(pl, options)
    assert overrides == {"default_url": "/lab", "image": "jupyter/base-notebook:latest"}
    assert overrides.tier == "demo-1"
    apply_overrides(spawner, overrides)
    assert spawner.default_url == "/lab"
    with pytest.raises(TierOptionsError, match="image--unlisted-choice"):
        validate_user_options(pl, {"profile": "demo-1", "image--unlisted-choice": "evil/image:1"})


def test_form_context_keeps_tier_when_only_a_choice_is_stale():
    ctx = _by_slug(
        form_context(
            pasted.KUBESPAWNER_LIST_EXAMPLE,
            [],
            0,
            user_options={"profile": "demo-1", "image": "gone-since"},
        )
    )
    assert ctx["demo-1"]["selected"] is True
    assert [c["key"] for c in ctx["demo-1"]["options"][0]["choices"] if c["selected"]] == ["minimal"]
    ctx = _by_slug(form_context(pasted.KUBESPAWNER_LIST_EXAMPLE, [], 0, user_options={"profile": "demo-2"}))
    assert ctx["demo-2"]["selected"] is True and ctx["demo-1"]["selected"] is False


def test_no_price_and_no_limits_in_magics():
    """%ds_compute shows DS_COMPUTE_TIER_INFO of a pasted tier without inventing $0.00."""
    from jupyter_ds_compute import magics

    info = tiers_of(pasted.KUBESPAWNER_LIST_EXAMPLE)[0].public()
    st = {"under_hub": True, "tier": info, "seconds_on_tier": 60, "cost_so_far": None, "volume": {}}
    out = magics.format_status(st)
    assert "Resources: unlimited CPU, unlimited memory, 0 GPU" in out
    assert "Price:     no price" in out and "Cost:      none (no price on this tier)" in out
    assert "$0.00" not in out and "$0.00" not in magics.format_cost(st)
    table = magics.format_tiers({"tiers": [dict(info, allowed=True)]})
    assert "no price" in table and "$" not in table
    priced = dict(info, hourly_cost=0.0)
    assert "Price:     $0.00/h" in magics.format_status(dict(st, tier=priced, cost_so_far=0.0))


def test_unpriced_tiers_cost_nothing_and_pass_spent_budgets():
    from jupyter_ds_compute import policy
    from jupyter_ds_compute.service.accounting import Accounting, free_below
    from jupyter_ds_compute.service.store import Store, isoformat

    pl = pasted.Z2JH_08_RESOURCE_PROFILES
    acc = Accounting(Store().db)
    srv = {"user": "alice", "server_name": "", "profile": "gpu-job", "started": isoformat(1000.0)}
    assert acc.observe([srv], 1000.0 + 3600, pl) == {"gpu-job": 0.0}
    assert acc.spent(["alice"], 0, 10_000) == 0.0
    spent = {"state": "spent", "spent": 10.0, "budget": 5.0}
    assert free_below(pl, []) == 0.0
    for t_ in tiers_of(pl):
        assert policy.budget_refusal(spent, t_.display_name, t_.cost_per_hour, free_below(pl, [])) is None


def test_for_user_is_one_model_of_usable_tiers_and_default():
    """The spawner's DS_COMPUTE_TIERS, api/tiers and the form agree: the
    default is the one an empty user_options gets for *this* user."""
    from jupyter_ds_compute.tiers import default_slug, for_user

    profiles = [
        {"display_name": "GPU", "default": True, "cpu": 4, "mem": "8G", "allowed_groups": ["gpu-team"]},
        {"display_name": "Small", "cpu": 1, "mem": "1G", "hourly_cost": 0.05},
        {
            "display_name": "Locked",
            "profile_options": {
                "image": {
                    "display_name": "Image",
                    "choices": {"a": {"display_name": "A", "allowed_groups": ["x"]}},
                }
            },
        },
    ]
    model = {t["slug"]: t for t in for_user(profiles, [])}
    assert not model["gpu"]["allowed"] and "gpu-team" in model["gpu"]["reason"]
    assert model["small"]["allowed"] and model["small"]["default"]
    assert not model["gpu"]["default"]
    assert not model["locked"]["allowed"] and model["locked"]["reason"]
    assert [t["slug"] for t in for_user(profiles, []) if t["default"]] == [default_slug(profiles, [])]
    member = {t["slug"]: t for t in for_user(profiles, ["gpu-team"])}
    assert member["gpu"]["allowed"] and member["gpu"]["default"] and not member["small"]["default"]
    form = {t["slug"]: t for t in form_context(profiles, [], None, is_admin=True)}
    assert {s: (t["allowed"], t["default"]) for s, t in form.items()} == {
        s: (t["allowed"], t["default"]) for s, t in model.items()
    }
