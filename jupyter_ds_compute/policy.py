"""Pure policy rules for jupyter-ds-compute.

Every function here is pure: no I/O, no clock, no hub objects. Callers pass
plain values (group names, counts, costs) and get a decision back.

Only the group-access rule lives here for now; caps, budgets and the idle
downshift rule follow the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["group_refusal"]


def group_refusal(
    allowed_groups: Iterable[str] | None,
    user_groups: Iterable[str] | None,
    is_admin: bool = False,
    what: str = "this tier",
) -> str | None:
    """Why a user may not use something limited to ``allowed_groups``, or None.

    ``allowed_groups`` is a tier's (or a choice's) ``allowed_groups``:
    ``None`` means everyone may use it. ``user_groups`` are the names of the
    JupyterHub groups of the user who will *own* the server (``None`` counts
    as no groups, so forgetting to pass them fails closed). ``what`` names
    the thing in the reason, e.g. ``"tier 'GPU'"``.

    Returns a short, human reason such as
    ``"tier 'GPU' is limited to groups: gpu-users"`` when the user is in none
    of the allowed groups, else ``None``.

    Admins are *not* exempt: ``is_admin`` is accepted so callers can pass it
    uniformly, but it does not change the answer. Reasons: the groups that
    matter are those of the server's owner (an admin starting or switching
    *bob*'s server must not lift bob's limits), tiers cost money and group
    membership is the one explicit grant operators audit, and an admin who
    needs a tier can add themselves to its group in the admin page.
    """
    del is_admin  # deliberately unused, see the docstring
    if allowed_groups is None:
        return None
    allowed = [str(g) for g in allowed_groups]
    if set(allowed) & set(user_groups or ()):
        return None
    if not allowed:
        return f"{what} is not available to any group"
    return f"{what} is limited to groups: {', '.join(allowed)}"
