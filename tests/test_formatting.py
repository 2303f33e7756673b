"""jupyter_ds_compute.formatting against the cases format.ts is tested with too."""

from __future__ import annotations

import json
import os

import pytest

from jupyter_ds_compute import formatting

CASES = json.load(open(os.path.join(os.path.dirname(__file__), "format_cases.json")))


@pytest.mark.parametrize(
    "function, value, expected",
    [
        (name, value, expected)
        for name, cases in CASES.items()
        if not name.startswith("_")
        for value, expected in cases
    ],
)
def test_format_case(function, value, expected):
    assert getattr(formatting, function)(value) == expected


def test_every_public_function_has_cases():
    assert set(formatting.__all__) - {"NO_PRICE"} == {k for k in CASES if not k.startswith("_")}
