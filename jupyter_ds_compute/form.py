"""The spawn form: what ``templates/form.html`` shows for each tier.

Pure functions over the normalized profile list of :mod:`.tiers`: which tiers
and choices a user sees, their resources and price in words, and a warning
when a GPU tier asks for more GPUs than this host has. With the user's
budget (the service's answer, :class:`.spawnpolicy.BudgetClient`) each priced
tier says what is left and how many hours that buys on it; a tier the user
may not use but can request (``max_grant``) is shown disabled with a
*Request access* link to the service's request page.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from . import formatting, policy
from .tiers import (
    FORM_OPTION_PREFIX,
    UNLISTED_SUFFIX,
    Tier,
    TierOptionsError,
    _choice_refusal,
    _select,
    for_user,
    normalize_profile_list,
)


def _price(cost: float | None) -> str:
    """``$0.05/h``; empty for a tier without a price (not ``$0.00/h``)."""
    return "" if cost is None else formatting.price(cost)


#: what the form shows for a resource without a limit (``cpu``/``mem`` None)
UNLIMITED = "unlimited"


def _cpu_label(cpu: float | None) -> str:
    return f"{UNLIMITED} CPU" if cpu is None else formatting.cores(cpu)


def _choice_context(slug, key, option, user_groups, chosen) -> dict:
    field_name = f"{FORM_OPTION_PREFIX}{slug}--{key}"
    unlisted_cfg = option["unlisted_choice"]
    kind, value = chosen if chosen else (None, None)
    choices = []
    for ckey, choice in (option.get("choices") or {}).items():
        if _choice_refusal(key, ckey, choice, user_groups):
            continue
        choices.append(
            {
                "key": ckey,
                "display_name": choice["display_name"],
                "description": choice.get("description") or "",
                "selected": kind == "choice" and value == ckey,
            }
        )
    unlisted = None
    if unlisted_cfg["enabled"]:
        unlisted = {
            "field_name": field_name + UNLISTED_SUFFIX,
            "display_name": unlisted_cfg.get("display_name") or option.get("display_name") or key,
            "display_name_in_choices": unlisted_cfg["display_name_in_choices"],
            "validation_regex": unlisted_cfg.get("validation_regex") or "",
            "validation_message": unlisted_cfg.get("validation_message") or "",
            "selected": kind == "unlisted" or not choices,
            "value": value if kind == "unlisted" else "",
        }
    return {
        "key": key,
        "display_name": option.get("display_name") or key,
        "field_name": field_name,
        "choices": choices,
        "unlisted": unlisted,
    }


def request_page_url(hub_base_url: str | None) -> str:
    """The service's *Request access* page as a path from the hub's ``base_url``
    (``/hub/`` -> ``/services/ds-compute/request``), so it works whatever
    name the browser reaches the hub by."""
    from .hubconfig import SERVICE_NAME

    base = hub_base_url or "/hub/"
    root = base[: -len("hub/")] if base.endswith("hub/") else "/"
    return f"{root}services/{SERVICE_NAME}/request"


def budget_line(budget: dict | None) -> dict | None:
    """What the form says about the user's budget: ``{"left", "left_label",
    "budget_label", "period", "state"}``; None without a budget (unlimited,
    or the service did not answer)."""
    if not isinstance(budget, dict):
        return None
    amount, spent = formatting._number(budget.get("budget")), formatting._number(budget.get("spent"))
    if amount is None:
        return None
    left = max(0.0, amount - (spent or 0.0))
    return {
        "left": left,
        "left_label": formatting.money(left),
        "budget_label": formatting.money(amount),
        "period": str(budget.get("period") or "period"),
        "state": str(budget.get("state") or ""),
    }


def _hours_left(left: float | None, cost: float | None) -> str:
    """How long ``left`` lasts on a tier of price ``cost`` per hour (``4 h``); "" when
    free or nothing is left."""
    if left is None or left <= 0 or not cost or cost <= 0:
        return ""
    return formatting.duration(left / cost * 3600)


def form_context(
    profiles: Any,
    user_groups: Iterable[str] | None,
    gpu_devices_available: int | None,
    is_admin: bool = False,
    user_options: dict | None = None,
    budget: dict | None = None,
    request_url: str | None = None,
) -> list[dict]:
    """Per tier, what ``templates/form.html`` needs.

    Tiers (and choices) the user's groups may not use are left out; for an
    admin such tiers stay in the list with ``allowed`` False and the
    ``reason`` (shown disabled), so admins see why. ``user_options``
    (e.g. the server's previous ones) preselect tier and choices when they
    are still valid; when only a choice is stale, the tier is still
    preselected with its default choices. A tier without a price has
    ``price`` ""; one without a cpu/mem limit says "unlimited".
    ``gpu_warning`` is set when the tier needs more GPUs than
    ``gpu_devices_available`` (None: unknown, no warning).

    ``budget`` (the service's budget answer, or None when it is unknown)
    gives each priced tier ``budget_left`` and ``hours_left`` (what is left
    this period and how long it lasts there) and ``budget_short`` (it lasts
    less than an hour there); ``idle_downshift`` says after
    how long idle a server on the tier is moved down. With ``request_url``
    (the service's request page), a tier refused by its groups that has
    ``max_grant`` is listed for everyone, disabled, with ``requestable`` and
    ``request_link``.
    """
    profiles = normalize_profile_list(profiles)
    groups = list(user_groups or ())
    previous = None
    if user_options:
        # all of them, else the tier alone (a choice may have gone since)
        for candidate in (user_options, {"profile": user_options.get("profile")}):
            try:
                previous = _select(profiles, candidate, groups, check_groups=True)
                break
            except TierOptionsError:
                previous = None
    model = for_user(profiles, groups)  # allowed, reason, default: the one model
    default = next((m["slug"] for m in model if m["default"]), None)
    selected_slug = previous[0]["slug"] if previous else default
    money = budget_line(budget)

    result = []
    for profile, entry in zip(profiles, model, strict=True):
        tier = Tier.from_profile(profile)
        reason = entry["reason"]
        requestable = bool(
            reason
            and request_url
            and tier.max_grant is not None
            and policy.group_refusal(tier.allowed_groups, groups) is not None
        )
        if reason and not is_admin and not requestable:
            continue
        if previous and previous[0] is profile:
            selections = previous[1]
        elif reason:
            selections = {}
        else:
            selections = _select(profiles, {"profile": tier.slug}, groups, True)[1]
        options = [
            _choice_context(tier.slug, key, option, groups, selections.get(key))
            for key, option in (profile.get("profile_options") or {}).items()
        ]
        gpu_short = gpu_devices_available is not None and tier.gpu > max(gpu_devices_available, 0)
        result.append(
            {
                "slug": tier.slug,
                "field_id": f"profile-item-{tier.slug}",
                "display_name": tier.display_name,
                "description": tier.description,
                "default": entry["default"],
                "selected": tier.slug == selected_slug,
                "allowed": reason is None,
                "reason": reason,
                "cpu": tier.cpu,
                "cpu_label": _cpu_label(tier.cpu),
                "mem": tier.mem,
                "mem_label": UNLIMITED if tier.mem is None else formatting.size(tier.mem),
                "gpu": tier.gpu,
                "gpu_label": formatting.gpus(tier.gpu) if tier.gpu else "",
                "hourly_cost": tier.hourly_cost,
                "price": _price(tier.hourly_cost),
                "gpu_warning": gpu_short,
                "gpu_warning_message": (
                    (
                        f"needs {tier.gpu} GPU{'s' if tier.gpu != 1 else ''}, this"
                        f" host has {max(gpu_devices_available or 0, 0)}"
                    )
                    if gpu_short
                    else ""
                ),
                "options": options,
                "budget_left": money["left_label"] if money and tier.hourly_cost else "",
                "hours_left": _hours_left(money["left"] if money else None, tier.hourly_cost),
                "budget_period": money["period"] if money else "",
                # within the next hour the budget would be spent on this tier
                "budget_short": bool(money and tier.hourly_cost and money["left"] < tier.hourly_cost),
                "idle_downshift": (
                    formatting.duration(tier.idle_downshift_after) if tier.idle_downshift_after else ""
                ),
                "requestable": requestable,
                "request_link": f"{request_url}?{urlencode({'profile': tier.slug})}" if requestable else "",
                "max_grant_label": formatting.duration(tier.max_grant) if tier.max_grant else "",
            }
        )
    return result
