"""The service's pages format with formatting.py (issue 13 §3): the progress page's step times
(server-rendered and its JS), the admin page's cost and durations, the audit table."""

import json
import os
import re
import shutil
import subprocess

import jinja2
import pytest

from jupyter_ds_compute import formatting

TEMPLATES = os.path.join(os.path.dirname(formatting.__file__), "service", "templates")
CASES = json.load(open(os.path.join(os.path.dirname(__file__), "format_cases.json")))


def render(name, **ns):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    ns.setdefault("fmt", formatting)  # as PageHandler.render_page does
    ns.setdefault("user", {"name": "alice"})
    return env.get_template(name).render(prefix="/services/ds-compute/", base_url="/", xsrf_token="x", **ns)


def test_progress_page_step_times():
    record = {
        "id": "s1", "user": "alice", "server_name": "", "from_profile": "small", "to_profile": "gpu",
        "state": "running", "error": None,
        "steps": [
            {"name": "stop", "status": "done", "duration": 3900.2, "message": ""},
            {"name": "start", "status": "done", "duration": 12.4, "message": ""},
            {"name": "verify", "status": "pending", "duration": None, "message": ""},
        ],
    }  # fmt: skip
    page = render("progress.html", record=record, api_url="/a", next_url="/n", home_url="/h")
    cells = re.findall(r'class="ds-elapsed">([^<]*)<', page)
    assert cells == ["1 h 05 min", "12 s", ""]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_progress_page_js_duration_matches_formatting():
    page = render(
        "progress.html",
        record={"id": "s", "user": "a", "server_name": "", "to_profile": "x", "state": "x", "steps": []},
        api_url="/a",
        next_url="/n",
        home_url="/h",
    )
    js = re.search(r"function duration\(seconds\) \{.*?\n  \}\n", page, re.S).group(0)
    cases = [c for c in CASES["duration"] if c[0] is not None]  # the page computes numbers only
    cases += [[x, formatting.duration(x)] for x in (0.4, 0.5, 1.5, 59.5, 119.6, 7199.5, 90061)]
    script = js + f"console.log(JSON.stringify({json.dumps([c[0] for c in cases])}.map(duration)));"
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [c[1] for c in cases]


def test_admin_audit_table_durations():
    events = [
        {"time": "t", "actor": "a", "user": "alice", "server_name": "", "event": "final", "switch_id": None,
         "from_profile": "small", "to_profile": "gpu", "duration": 75.0, "outcome": "succeeded", "reason": None},
    ]  # fmt: skip
    page = render("admin_audit_table.html", events=events)
    assert "<td>1 min</td>" in page and "75.0" not in page


def test_admin_links_follow_the_admin_scope_not_the_admin_flag():
    from jupyter_ds_compute.service import authz

    flagged = {"name": "root-ish", "admin": True, "scopes": ["access:services!service=ds-compute"]}
    scoped = {"name": "ops", "admin": False, "scopes": [authz.ADMIN_SCOPE]}
    for user, shown in ((flagged, False), (scoped, True)):
        page = render("index.html", user=user, is_admin=authz.is_admin(user))
        assert ("Compute admin" in page) is shown, user
