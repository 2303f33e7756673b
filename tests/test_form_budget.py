"""The spawn form says what a tier costs before it is chosen (issue 17): the price,
the budget left and the hours it buys there, the idle limit, and a *Request
access* link for a tier the user may not use but can request; the spawner asks
the service for the budget and renders the form without a budget line when
the service does not answer."""

import logging
import re

import jinja2
import pytest
from fakes import FakeService, hub_db, make_spawner

from jupyter_ds_compute import form, tiers

PROFILES = [
    {"display_name": "Small", "slug": "small", "default": True, "hourly_cost": 0.5, "cpu": 1, "mem": "1G"},
    {"display_name": "GPU <fast>", "slug": "gpu", "hourly_cost": 2.0, "cpu": 2, "mem": "2G",
     "allowed_groups": ["gpu-users"], "max_grant": "7d", "idle_downshift_after": 1800},
    {"display_name": "Locked", "slug": "locked", "allowed_groups": ["vip"], "hourly_cost": 1.0},
    {"display_name": "Free", "slug": "free"},
]  # fmt: skip
BUDGET = {"spent": 2.0, "budget": 10.0, "state": "ok", "period": "month", "kind": "user", "name": "alice"}
REQUEST_URL = "/services/ds-compute/request"


def by_slug(ctx):
    return {t["slug"]: t for t in ctx}


def render(ctx, budget=None):
    env = jinja2.Environment(loader=jinja2.PackageLoader("jupyter_ds_compute", "templates"), autoescape=True)
    return env.get_template("form.html").render(tiers=ctx, selected=None, budget=form.budget_line(budget))


def test_budget_left_and_hours_per_tier():
    ctx = by_slug(form.form_context(PROFILES, [], 0, budget=BUDGET, request_url=REQUEST_URL))
    assert ctx["small"]["budget_left"] == "$8.00" and ctx["small"]["hours_left"] == "16 h"
    assert ctx["small"]["budget_period"] == "month"
    assert ctx["gpu"]["hours_left"] == "4 h" and ctx["gpu"]["idle_downshift"] == "30 min"
    assert ctx["small"]["idle_downshift"] == ""
    # a tier without a price: no budget line for it
    assert ctx["free"]["budget_left"] == "" and ctx["free"]["hours_left"] == ""


@pytest.mark.parametrize(
    "budget",
    [None, {"spent": 3.0, "budget": None, "state": "unlimited"}, "garbage", {"budget": "ten"}],
)
def test_no_budget_no_budget_line(budget):
    ctx = by_slug(form.form_context(PROFILES, [], 0, budget=budget))
    assert ctx["small"]["budget_left"] == "" and ctx["small"]["hours_left"] == ""
    assert form.budget_line(budget) is None
    assert "ds-budget-line" not in render(list(ctx.values()), budget)


def test_budget_short_within_the_hour():
    budget = dict(BUDGET, spent=8.5)  # $1.50 left: 3 h on Small, 45 min on GPU
    ctx = by_slug(form.form_context(PROFILES, [], 0, budget=budget, request_url=REQUEST_URL))
    assert ctx["small"]["budget_short"] is False and ctx["gpu"]["budget_short"] is True
    assert ctx["gpu"]["hours_left"] == "45 min" and ctx["free"]["budget_short"] is False
    page = render(list(ctx.values()), budget)
    gpu = page[page.index('id="profile-item-gpu"') :]
    assert "Your budget would be spent within the hour here: $1.50 left this month: about 45 min" in gpu
    assert (
        "within the hour"
        not in page[page.index('id="profile-item-small"') : page.index('id="profile-item-gpu"')]
    )


def test_budget_spent_says_nothing_left():
    line = form.budget_line({"spent": 12.0, "budget": 10.0, "state": "spent", "period": "week"})
    assert line["left"] == 0 and line["left_label"] == "$0.00"
    ctx = form.form_context(PROFILES, [], 0, budget={"spent": 12.0, "budget": 10.0, "period": "week"})
    small = by_slug(ctx)["small"]
    assert small["budget_left"] == "$0.00" and small["hours_left"] == ""
    assert "$0.00 left this week</span>" in render(ctx)


def test_requestable_tier_is_shown_disabled_with_a_link():
    ctx = by_slug(form.form_context(PROFILES, [], 0, request_url=REQUEST_URL))
    gpu = ctx["gpu"]
    assert gpu["allowed"] is False and gpu["requestable"] is True
    assert gpu["request_link"] == "/services/ds-compute/request?profile=gpu"
    assert gpu["max_grant_label"] == "7 d"
    assert "locked" not in ctx  # no max_grant: still hidden from non-admins
    assert ctx["small"]["requestable"] is False and ctx["small"]["request_link"] == ""
    # a member of the group may use it: nothing to request
    member = by_slug(form.form_context(PROFILES, ["gpu-users"], 0, request_url=REQUEST_URL))["gpu"]
    assert member["allowed"] is True and member["requestable"] is False
    # no service: no link, and the tier stays hidden as before
    assert "gpu" not in by_slug(form.form_context(PROFILES, [], 0))


def test_form_html_shows_costs_link_and_escapes():
    ctx = form.form_context(PROFILES, [], 0, budget=BUDGET, request_url=REQUEST_URL)
    page = render(ctx, BUDGET)
    assert re.search(
        r'class="mb-2 ds-budget-line" data-left="8.0">\s*Your budget this month: <strong>\$8.00</strong> left of \$10.00',
        page,
    )
    gpu = page[page.index('id="profile-item-gpu"') :]
    assert re.search(r'id="profile-item-gpu"\s+value="gpu" disabled>', page)
    assert "$8.00 left this month: about 4 h on this tier" in gpu
    assert "Idle limit 30 min" in gpu
    assert 'href="/services/ds-compute/request?profile=gpu"' in gpu and "Request access&hellip;" in gpu
    assert "GPU &lt;fast&gt;" in page and "GPU <fast>" not in page
    assert "for up to 7 d" in gpu


def test_request_page_url():
    assert form.request_page_url("/hub/") == "/services/ds-compute/request"
    assert form.request_page_url("/jh/hub/") == "/jh/services/ds-compute/request"
    assert form.request_page_url(None) == "/services/ds-compute/request"


async def test_spawner_form_asks_the_service_for_the_budget():
    fake = FakeService(switch_reply=(200, {"budget": dict(BUDGET, spent=6.0)}))
    await fake.start()
    try:
        spawner = make_spawner(
            hub_db(),
            profile_list=tiers.normalize_profile_list(PROFILES),
            service_api_url=fake.url,
            service_api_token="secret",
            service_url="http://hub.example/services/ds-compute/",
            budget_cache_seconds=0,
        )
        page = await spawner._render_options_form()
    finally:
        fake.stop()
    # (the hub's prepare watch polls the same service: api/hub/prepare)
    (call,) = [c for c in fake.calls if c["path"].endswith("/budget")]
    assert call["path"] == "/services/ds-compute/api/hub/budget" and call["auth"] == "token secret"
    assert "<strong>$4.00</strong> left of $10.00" in page
    assert "about 2 h on this tier" in page  # $4 on GPU at $2/h
    assert 'href="/services/ds-compute/request?profile=gpu"' in page


async def test_spawner_form_without_the_service_has_no_budget_line():
    fake = FakeService()
    url = fake.url
    fake.stop()  # nothing listens there any more
    spawner = make_spawner(
        hub_db(),
        name="bob",
        profile_list=tiers.normalize_profile_list(PROFILES),
        service_api_url=url,
        service_api_token="secret",
        service_timeout=2,
        budget_cache_seconds=0,
    )
    seen = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())
    spawner.log.addHandler(handler)
    old_level = spawner.log.level
    spawner.log.setLevel(logging.INFO)
    try:
        page = await spawner._render_options_form()
    finally:
        spawner.log.removeHandler(handler)
        spawner.log.setLevel(old_level)
    assert 'id="profile-item-small"' in page and "ds-budget-line" not in page and "left this" not in page
    assert any("No budget line on the spawn form of bob" in m for m in seen), seen
