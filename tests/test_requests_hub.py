"""Requests and grants on a real hub: request -> pending on the admin page ->
approved there (shorter) -> the user can switch to the tier -> the notice ->
the end: out of the group, the server switched down with a notice; an
approver group's member decides (through the API, and on the decisions page
found from the index page), a denial's reason is shown; bad input and
non-approvers are refused."""

import re
import sqlite3

import pytest
from hubtest import wait_for

pytestmark = pytest.mark.hub

HUB_EXTRA_CONFIG = """
c.DSComputeSpawner.profile_list = list(c.DSComputeSpawner.profile_list) + [
    {"display_name": "Granted", "slug": "granted", "cpu": 1, "mem": "1G", "hourly_cost": 2.0,
     "allowed_groups": ["grant-team"], "max_grant": "1h", "approvers": ["grant-leads"]},
]
c.DSComputeService.grant_check_interval = 1
c.DSComputeService.grant_expiry_notice = 8
c.DSComputeService.accounting_interval = 1
"""

#: how long the admin's approval grants: the switch must be done before the end
GRANT_SECONDS = 30


def audit(hub, event):
    db = sqlite3.connect(hub.data / "service" / "ds-compute.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM audit WHERE event = ? ORDER BY id", (event,))]
    finally:
        db.close()


def tier(hub, token, slug):
    r = hub.service("GET", "api/tiers", token)
    assert r.status_code == 200, r.text
    return {t["slug"]: t for t in r.json()["tiers"]}[slug], r.json()["notices"]


def groups_of(hub, user):
    return hub.api("GET", f"/users/{user}").json()["groups"]


def profile_of(hub, user):
    m = hub.server_model(user) or {}
    return (m.get("user_options") or {}).get("profile") if m.get("ready") else None


@pytest.fixture(scope="module")
def admin(hub):
    return hub.login("admin", hub.admin_password)


@pytest.fixture(scope="module")
def groups(hub):
    for g in ("grant-team", "grant-leads"):
        hub.api("POST", f"/groups/{g}")
    return hub


def test_request_approve_switch_expire_downshift(hub, groups, admin):
    user = hub.create_user("asker")
    token = hub.user_token(user)
    hub.spawn(user, {"profile": "small"})
    try:
        gpu, _ = tier(hub, token, "granted")
        assert gpu["allowed"] is False and gpu["requestable"] is True and gpu["max_grant"] == 3600
        # bad input: 400 naming the field, nothing recorded
        r = hub.service(
            "POST", "api/requests", token, json={"profile": "granted", "duration": "2h", "reason": "x"}
        )
        assert r.status_code == 400 and r.json()["field"] == "duration", r.text
        r = hub.service(
            "POST", "api/requests", token, json={"profile": "small", "duration": "1h", "reason": "x"}
        )
        assert r.status_code == 400 and r.json()["field"] == "profile", r.text
        r = hub.service(
            "POST",
            "api/requests",
            token,
            json={"profile": "granted", "duration": "1h", "reason": "y" * 10_000},
        )
        assert r.status_code == 400 and r.json()["field"] == "reason", r.text
        # the request
        r = hub.service(
            "POST",
            "api/requests",
            token,
            json={"profile": "granted", "duration": "1h", "reason": "train the model"},
        )
        assert r.status_code == 201, r.text
        request_id = r.json()["id"]
        gpu, _ = tier(hub, token, "granted")
        assert gpu["request"]["id"] == request_id and gpu["requestable"] is False
        r = hub.service(
            "POST", "api/requests", token, json={"profile": "granted", "duration": "1h", "reason": "again"}
        )
        assert r.status_code == 400 and "pending already" in r.json()["message"], r.text
        # a user who is neither admin nor approver: 403
        other = hub.user_token(hub.create_user("bystander"))
        r = hub.service("POST", f"api/requests/{request_id}/decision", other, json={"approve": True})
        assert r.status_code == 403, r.text
        # pending on the admin page, with the requester's spending and budget
        page = admin.get(f"{hub.url}/services/ds-compute/admin")
        assert page.status_code == 200, page.text[:300]
        row = re.search(
            rf'<tr data-request="{request_id}" data-user="asker" data-tier="granted">(.*?)</tr>',
            page.text,
            re.S,
        )
        assert row, page.text[:2000]
        assert "train the model" in row.group(1) and "1 h" in row.group(1)
        spent = re.search(r'class="ds-request-spent" data-spent="([^"]+)"', row.group(1))
        assert spent and float(spent.group(1)) > 0  # its server on Small has run a few seconds
        assert "unlimited" in row.group(1)
        # approve for less than asked
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
        r = admin.post(
            f"{hub.url}/services/ds-compute/admin/requests/{request_id}",
            data={
                "_xsrf": xsrf,
                "decision": "approve",
                "duration": f"{GRANT_SECONDS}s",
                "reason": "ok for now",
            },
        )
        assert r.status_code == 200 and "Approved asker" in r.text, r.text[:1000]
        assert "grant-team" in groups_of(hub, user)
        gpu, notices = tier(hub, token, "granted")
        assert gpu["allowed"] is True and gpu["grant"]["expires"], gpu
        assert any(n["kind"] == "request-approved" and "ok for now" in n["message"] for n in notices), notices
        # the user can switch to the tier now
        r = hub.service("POST", "api/switches", token, json={"profile": "granted"})
        assert r.status_code == 202, r.text
        rec = hub.wait_switch(r.json()["id"], token, timeout=GRANT_SECONDS)
        assert rec["state"] == "succeeded", rec
        assert profile_of(hub, user) == "granted"
        # the notice before the end, then the end: out of the group, moved down by policy:grant
        wait_for(
            lambda: any(n["kind"] == "grant-expiring" for n in tier(hub, token, "granted")[1]),
            timeout=GRANT_SECONDS + 5,
            interval=0.5,
            message="the grant's notice",
        )
        wait_for(lambda: profile_of(hub, user) == "small", timeout=90, interval=0.5, message="the downshift")
        assert "grant-team" not in groups_of(hub, user)
        gpu, notices = tier(hub, token, "granted")
        assert gpu["allowed"] is False and gpu["grant"] is None and gpu["requestable"] is True
        kinds = [n["kind"] for n in notices]
        assert "grant-downshift" in kinds and "grant-expired" in kinds, notices
        moved = next(n for n in notices if n["kind"] == "grant-downshift")
        assert "access to tier Granted ended" in moved["message"] and moved["to_profile"] == "small"
        switches = hub.service("GET", "api/switches", token).json()["switches"]
        assert switches[0]["requested_by"] == "policy:grant" and switches[0]["state"] == "succeeded"
        outcomes = [e["outcome"] for e in audit(hub, "access:grant")]
        assert outcomes == ["expiring", "expired"]
        assert [e["outcome"] for e in audit(hub, "policy:grant")] == ["downshift"]
        # metrics count them
        m = hub.service("GET", "metrics", hub.user_token("admin"))  # a hub admin's full token: read:metrics
        assert m.status_code == 200, m.text
        assert 'ds_compute_access_requests_total{outcome="approved",tier="granted"} 1.0' in m.text
        assert 'ds_compute_access_requests_total{outcome="expired",tier="granted"} 1.0' in m.text
        assert 'ds_compute_grant_downshifts_total{from_tier="granted",to_tier="small"} 1.0' in m.text
    finally:
        hub.stop_server(user)


def test_approver_group_and_denial_reason(hub, groups):
    user = hub.create_user("asker2")
    lead = hub.create_user("lead", groups=["grant-leads"])
    token, lead_token = hub.user_token(user), hub.user_token(lead)
    r = hub.service(
        "POST", "api/requests", token, json={"profile": "granted", "duration": "2h", "reason": "big run"}
    )
    assert r.status_code == 400 and r.json()["field"] == "duration"
    r = hub.service(
        "POST", "api/requests", token, json={"profile": "granted", "duration": "30m", "reason": "big run"}
    )
    assert r.status_code == 201, r.text
    request_id = r.json()["id"]
    # the approver sees it among those they may decide
    listed = hub.service("GET", "api/requests", lead_token).json()
    assert request_id in [q["id"] for q in listed["decidable"]]
    r = hub.service("POST", f"api/requests/{request_id}/decision", lead_token, json={"approve": False})
    assert r.status_code == 400 and r.json()["field"] == "reason", r.text
    r = hub.service(
        "POST",
        f"api/requests/{request_id}/decision",
        lead_token,
        json={"approve": False, "reason": "use the CPU tier this week"},
    )
    assert r.status_code == 200 and r.json()["state"] == "denied", r.text
    gpu, notices = tier(hub, token, "granted")
    assert gpu["allowed"] is False and gpu["request"] is None and gpu["requestable"] is True
    denied = next(n for n in notices if n["kind"] == "request-denied")
    assert "use the CPU tier this week" in denied["message"]
    assert "grant-team" not in groups_of(hub, user)
    own = hub.service("GET", "api/requests", token).json()["requests"]
    assert own[0]["state"] == "denied" and own[0]["decided_by"] == "lead"


def test_approver_decides_on_the_decisions_page(hub, groups):
    """A member of the tier's approvers group (not an admin) finds the request
    from the service's index page and approves it, shorter, on the decisions page."""
    user = hub.create_user("asker3")
    lead = hub.create_user("lead3", groups=["grant-leads"])
    token = hub.user_token(user)
    r = hub.service(
        "POST", "api/requests", token, json={"profile": "granted", "duration": "1h", "reason": "tune it"}
    )
    assert r.status_code == 201, r.text
    request_id = r.json()["id"]
    session = hub.login(lead)
    index = session.get(f"{hub.url}/services/ds-compute/")
    assert index.status_code == 200, index.text[:300]
    assert 'data-testid="to-decide"' in index.text and "/services/ds-compute/requests" in index.text
    page = session.get(f"{hub.url}/services/ds-compute/requests")
    assert page.status_code == 200, page.text[:300]
    row = re.search(rf'<tr data-request="{request_id}".*?</tr>', page.text, re.S)
    assert row and "tune it" in row.group(0) and "data-spent=" in row.group(0), page.text[:2000]
    url = f"{hub.url}/services/ds-compute/requests/{request_id}"
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    # a cookie POST without the page's xsrf token is not the approver's
    r = session.post(url, data={"decision": "approve"})
    assert r.status_code == 403, r.text[:300]
    # longer than asked: 400 naming the field, the page again
    r = session.post(url, data={"_xsrf": xsrf, "decision": "approve", "duration": "2h"})
    assert r.status_code == 400 and 'data-field="duration"' in r.text, r.text[:1000]
    assert "grant-team" not in groups_of(hub, user)
    r = session.post(url, data={"_xsrf": xsrf, "decision": "approve", "duration": "10m"})
    assert r.status_code == 200 and "Approved asker3&#39;s request for Granted until " in r.text, r.text[
        :1000
    ]
    assert "grant-team" in groups_of(hub, user)
    own = hub.service("GET", "api/requests", token).json()["requests"]
    assert own[0]["state"] == "approved" and own[0]["decided_by"] == "lead3" and own[0]["granted"] == 600
    _, notices = tier(hub, token, "granted")
    approved = next(n for n in notices if n["kind"] == "request-approved")
    assert re.fullmatch(
        r"Your request for tier Granted is approved until \d{4}-\d\d-\d\d \d\d:\d\d UTC \(10 min\)",
        approved["message"],
    ), approved
