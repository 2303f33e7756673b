import pytest

from jupyter_ds_compute.policy import group_refusal


@pytest.mark.parametrize(
    "allowed, user_groups, is_admin, expected",
    [
        (None, [], False, None),
        (None, None, False, None),
        (["gpu-users"], ["gpu-users"], False, None),
        (["gpu-users", "staff"], ["staff", "other"], False, None),
        (("gpu-users",), {"gpu-users"}, False, None),
        (["gpu-users"], [], False, "tier 'GPU' is limited to groups: gpu-users"),
        (["gpu-users"], None, False, "tier 'GPU' is limited to groups: gpu-users"),
        (["a", "b"], ["c"], False, "tier 'GPU' is limited to groups: a, b"),
        # admins are not exempt: the owner's groups decide
        (["gpu-users"], [], True, "tier 'GPU' is limited to groups: gpu-users"),
        ([], ["gpu-users"], False, "tier 'GPU' is not available to any group"),
    ],
)
def test_group_refusal(allowed, user_groups, is_admin, expected):
    assert group_refusal(allowed, user_groups, is_admin=is_admin, what="tier 'GPU'") == expected


def test_group_refusal_default_wording():
    assert group_refusal(["x"], ["y"]) == "this tier is limited to groups: x"
