"""The ds-compute service on a real hub that pages its REST API at 10 items
(``c.JupyterHub.api_page_max_limit = 10``), with 30 users: the admin page
lists every one of them, pages 2 and 3 included, with the volume their
volume driver described; and bad input to the service's endpoints (the
same hub) is a 400 naming the field, audited, never a 500.
"""

import html
import re

import pytest
import requests
from hubtest import wait_for

from jupyter_ds_compute.volumes.local import volume_id_for

pytestmark = pytest.mark.hub

HUB_EXTRA_CONFIG = """
c.JupyterHub.api_page_max_limit = 10
c.JupyterHub.api_page_default_limit = 10
c.DSComputeService.accounting_interval = 1
c.DSComputeSpawner.profile_list = list(c.DSComputeSpawner.profile_list) + [
    {"display_name": "Solo", "slug": "solo", "cpu": 1, "mem": "1G", "hourly_cost": 0.01, "max_servers": 1},
]
"""

N_USERS = 30
USERS = [f"pg-{i:02d}" for i in range(N_USERS)]


def admin_rows(text):
    """``{(user, server): attributes and cells}`` of the admin table."""
    out = {}
    for m in re.finditer(r'<tr data-user="([^"]*)" data-server="([^"]*)"(.*?)</tr>', text, re.S):
        out[(html.unescape(m.group(1)), html.unescape(m.group(2)))] = m.group(3)
    return out


def attr(row, name):
    m = re.search(rf'{name}="([^"]*)"', row)
    return html.unescape(m.group(1)) if m else None


@pytest.fixture(scope="module")
def users(hub):
    # created in order: the hub lists users by id, so the last ones are on page 3 or later
    for name in USERS:
        hub.create_user(name)
    return USERS


@pytest.fixture(scope="module")
def admin(hub):
    return hub.login("admin", hub.admin_password)


def test_hub_really_pages_at_10(hub, users):
    """The premise: a paginated request gets 10 users and a next page."""
    r = hub.api("GET", "/users", headers={"Accept": "application/jupyterhub-pagination+json"})
    data = r.json()
    assert len(data["items"]) == 10
    assert data["_pagination"]["total"] >= N_USERS and data["_pagination"]["next"]
    # and a client that does not paginate is cut at the first page
    assert len(hub.api("GET", "/users").json()) == 10


def test_admin_page_lists_users_on_every_page(hub, users, admin):
    late = users[-1]  # page 3 or later
    hub.spawn(late, {"profile": "gpu"})
    try:
        page = admin.get(f"{hub.url}/services/ds-compute/admin")
        assert page.status_code == 200, page.text[:500]
        rows = admin_rows(page.text)
        listed = {u for u, _ in rows}
        assert set(users) <= listed, sorted(set(users) - listed)
        row = rows[(late, "")]
        assert attr(row, "data-state") == "running" and attr(row, "data-tier") == "gpu"
        # its volume, as the local driver described it at start: id, driver, where attached
        assert (
            attr(row, "data-volume-id") == volume_id_for(late) and attr(row, "data-volume-driver") == "local"
        )
        assert attr(row, "data-attached-to")
        # a user on page 1 that never started: no volume yet, a stopped row
        first = rows[(users[0], "")]
        assert attr(first, "data-state") == "stopped" and attr(first, "data-volume-id") == ""

        # accounting sees the page-3 server: its cost this period grows on the admin page
        def cost():
            row = admin_rows(admin.get(f"{hub.url}/services/ds-compute/admin?user={late}").text)[(late, "")]
            return float(re.search(r'class="ds-cost" data-cost="([0-9.e-]+)"', row).group(1))

        wait_for(lambda: cost() > 0, timeout=60, interval=1, message=f"cost of {late} accounted")
        # filters still see every page
        only = admin_rows(admin.get(f"{hub.url}/services/ds-compute/admin?tier=gpu").text)
        assert set(only) == {(late, "")}
    finally:
        hub.stop_server(late)
    # stopped: the row still shows the volume, now detached (described after detach)
    row = admin_rows(admin.get(f"{hub.url}/services/ds-compute/admin?user={late}").text)[(late, "")]
    assert attr(row, "data-state") == "stopped"
    assert attr(row, "data-volume-id") == volume_id_for(late) and attr(row, "data-attached-to") == ""


def test_caps_count_servers_on_late_pages(hub, users):
    """The api/tiers view of a page-1 user counts a page-3 user's server against a cap."""
    late = users[-2]
    hub.spawn(late, {"profile": "solo"})
    try:
        token = hub.user_token(users[0])
        r = requests.get(
            f"{hub.url}/services/ds-compute/api/tiers",
            headers={"Authorization": f"token {token}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        solo = next(t for t in r.json()["tiers"] if t["slug"] == "solo")
        assert solo["policy"] == "cap" and not solo["allowed"] and "1/1" in solo["reason"], solo
    finally:
        hub.stop_server(late)


# -- bad input -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzer(hub):
    return hub.user_token(hub.create_user("fuzzer"))


def service(hub, method, path, token, **kwargs):
    headers = kwargs.pop("headers", {})
    headers["Authorization"] = f"token {token}"
    return requests.request(
        method, f"{hub.url}/services/ds-compute/{path}", headers=headers, timeout=30, **kwargs
    )


def refusals(hub, admin, actor):
    """Audit rows ``request``/``refused`` by ``actor``, newest first (from the admin audit page)."""
    text = admin.get(f"{hub.url}/services/ds-compute/admin/audit?event=request").text
    out = []
    for m in re.finditer(r'<tr data-event="request" data-outcome="refused">(.*?)</tr>', text, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", m.group(1), re.S)
        if html.unescape(cells[1]) == actor:
            out.append(html.unescape(cells[-1]))
    return out


def assert_400(r, field, *words):
    assert r.status_code == 400, (r.status_code, r.text[:300])
    body = r.json()
    assert body.get("field") == field, body
    assert f"'{field}'" in body["message"] or field in body["message"], body
    for w in words:
        assert w in body["message"], body
    assert "Traceback" not in r.text


@pytest.mark.parametrize("raw", ["abc", "1e9", "nan", "-5", "0", "100000", "1.5", "0x10", "%EF%BC%91"])
def test_bad_limit_is_400_and_audited(hub, admin, fuzzer, raw):
    before = len(refusals(hub, admin, "fuzzer"))
    r = service(hub, "GET", f"api/switches?limit={raw}", fuzzer)
    assert_400(r, "limit")
    after = refusals(hub, admin, "fuzzer")
    assert len(after) == before + 1 and "limit" in after[0], after[:2]


def test_good_limit_still_works(hub, fuzzer):
    r = service(hub, "GET", "api/switches?limit=5", fuzzer)
    assert r.status_code == 200 and r.json() == {"switches": []}


@pytest.mark.parametrize("raw", ["abc", "1e9", "nan", "-1"])
def test_bad_audit_limit_is_400_page(hub, admin, raw):
    r = admin.get(f"{hub.url}/services/ds-compute/admin/audit?limit={raw}")
    assert r.status_code == 400
    assert "limit" in r.text and "Traceback" not in r.text


@pytest.mark.parametrize(
    "body, field, words",
    [
        ('{"profile": "\\ud800"}', "profile", ["surrogate"]),
        ('{"profile": "gpu", "user": "\\udfff"}', "user", ["surrogate"]),
        ('{"profile": "gpu", "next": "/user/fuzzer/\\udc80"}', "next", ["surrogate"]),
        ('{"profile": ' + "[" * 100_000 + "]" * 100_000 + "}", None, ["nested too deeply"]),
        ('{"profile": "gpu", "memory": ' + "{\"a\": " * 50 + "1" + "}" * 50 + "}", "memory", ["nested"]),
    ],
    ids=["surrogate-profile", "surrogate-user", "surrogate-next", "100000-deep", "50-deep-option"],
)
def test_bad_json_bodies_are_400_and_audited(hub, admin, fuzzer, body, field, words):
    before = len(refusals(hub, admin, "fuzzer"))
    r = service(
        hub, "POST", "api/switches", fuzzer, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, (r.status_code, r.text[:300])
    answer = r.json()
    assert answer.get("field") == field, answer
    for w in words:
        assert w in answer["message"], answer
    after = refusals(hub, admin, "fuzzer")
    assert len(after) == before + 1, after[:2]
    assert all(w in after[0] for w in words), after[0]
    # the service is still fine
    assert service(hub, "GET", "api/health", fuzzer).status_code == 200


@pytest.mark.parametrize(
    "body", [b"\xff\xfe{", b"[1, 2]", b'"profile"', b"{", b'{"profile": "gpu"' + b" " * 10]
)
def test_bodies_that_are_not_json_objects_are_400_and_audited(hub, admin, fuzzer, body):
    before = len(refusals(hub, admin, "fuzzer"))
    r = service(hub, "POST", "api/switches", fuzzer, data=body)
    assert r.status_code == 400 and "JSON" in r.json()["message"], r.text[:300]
    assert len(refusals(hub, admin, "fuzzer")) == before + 1


def test_policy_of_unknown_user_is_404_not_500(hub, admin):
    token = hub.user_token("admin")  # an admin of the embedded default
    r = service(hub, "GET", "api/policy?user=no-such-user-here", token)
    assert r.status_code == 404 and "no-such-user-here" in r.json()["message"], r.text
