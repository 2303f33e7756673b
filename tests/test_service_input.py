"""Pure checks of the service's input parsing: query integers and JSON bodies
(``jupyter_ds_compute.service.handlers``). The same inputs against a real
service are in ``test_service_fuzz_hub.py``."""

import json

import pytest

from jupyter_ds_compute.service.handlers import (
    MAX_JSON_DEPTH,
    APIError,
    check_json_value,
    parse_int_argument,
)


def parse(raw):
    return parse_int_argument(raw, field="limit", default=100, minimum=1, maximum=1000)


@pytest.mark.parametrize(
    "raw, value", [(None, 100), ("", 100), ("1", 1), ("1000", 1000), (" 7 ", 7), ("+5", 5)]
)
def test_good_integers(raw, value):
    assert parse(raw) == value


@pytest.mark.parametrize(
    "raw",
    ["abc", "1e9", "nan", "NaN", "inf", "-1", "0", "1001", "1.5", "0x10", "１２", "9" * 40, "1_000", "--1"],
)
def test_bad_integers_are_400_naming_the_field(raw):
    with pytest.raises(APIError) as e:
        parse(raw)
    assert e.value.status_code == 400
    assert e.value.extra == {"field": "limit"}
    assert "'limit'" in e.value.message
    e.value.message.encode("ascii")  # the bad value is quoted safely


def nested(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def test_flat_bodies_pass():
    check_json_value({"profile": "gpu", "memory": "2g", "next": "/user/a/lab", "user": "é"})
    check_json_value({"a": nested(MAX_JSON_DEPTH - 1)})


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 1000, 100_000])
def test_deep_bodies_are_400(depth):
    with pytest.raises(APIError) as e:
        check_json_value({"profile": nested(depth)})
    assert e.value.status_code == 400
    assert e.value.extra == {"field": "profile"}
    assert "nested too deeply" in e.value.message


@pytest.mark.parametrize(
    "text, field, where",
    [
        ('{"profile": "\\ud800"}', "profile", "'profile'"),
        ('{"profile": "gpu", "memory": "ok\\udfffx"}', "memory", "'memory'"),
        ('{"extra": {"a": ["x", "\\udc00"]}}', "extra", "'extra.a[1]'"),
        ('{"user": "\\ud83d"}', "user", "'user'"),
    ],
)
def test_lone_surrogates_are_400_naming_the_field(text, field, where):
    body = json.loads(text)  # Python's json accepts them
    with pytest.raises(APIError) as e:
        check_json_value(body)
    assert e.value.status_code == 400
    assert e.value.extra == {"field": field}
    assert where in e.value.message and "surrogate" in e.value.message
    e.value.message.encode("utf-8")  # the message itself can be stored and sent


def test_surrogate_in_a_key_is_400():
    with pytest.raises(APIError) as e:
        check_json_value(json.loads('{"\\ud800": 1}'))
    assert e.value.status_code == 400 and "key" in e.value.message
    e.value.message.encode("utf-8")
    e.value.extra["field"].encode("utf-8")


def test_a_pair_is_text():
    check_json_value(json.loads('{"user": "\\ud83d\\ude00"}'))  # an emoji, escaped as a pair
