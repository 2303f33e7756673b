"""The progress page's words for a switch's phase and its estimate (the page's
own JS, run with node): what the user reads while the new machine is prepared
and during the short cut-over; human step labels, ``data-step`` = the step name."""

import json
import re
import shutil
import subprocess

import pytest
from test_service_pages import render

T0 = "2024-05-02T10:00:00.000Z"


def record(**kw):
    rec = {
        "id": "0123456789ab",
        "user": "alice",
        "server_name": "",
        "from_profile": "small",
        "to_profile": "gpu",
        "state": "running",
        "error": None,
        "steps": [
            {"name": "validate", "status": "done", "duration": 0.01, "message": ""},
            {"name": "prepare", "status": "running", "duration": None, "message": ""},
            {"name": "stop", "status": "pending", "duration": None, "message": ""},
            {"name": "wait-ready", "status": "pending", "duration": None, "message": ""},
        ],
    }
    rec.update(kw)
    return rec


def page(rec=None):
    return render("progress.html", record=rec or record(), api_url="/a", next_url="/n", home_url="/h")


def test_step_labels_keep_the_step_name():
    html = page()
    rows = re.findall(r'<tr data-step="([^"]+)">\s*<td class="ds-step-label">([^<]*)<', html)
    assert rows == [
        ("validate", "Check the request"),
        ("prepare", "Prepare the new machine"),
        ("stop", "Stop the old server"),
        ("wait-ready", "Wait for the server to answer"),
    ]
    # the script labels the rows it draws with the same words
    labels = json.loads(re.search(r"var LABELS = (\{.*?\});", html).group(1))
    assert labels["prepare"] == "Prepare the new machine" and labels["rollback"]


@pytest.mark.parametrize(
    "phase,text",
    [
        ("preparing", "Preparing the gpu machine \u2014 your server keeps running, keep working"),
        ("ready", "Ready on the new machine \u2014 saving your work in JupyterLab, then cutting over"),
        ("cutting-over", "Cutting over \u2014 your server is briefly unavailable"),
        ("starting", "Starting on gpu"),
        ("rolling-back", "Going back to small"),
        ("done", ""),
        (None, ""),  # an older service
    ],
)
def test_phase_rendered_with_the_page(phase, text):
    rec = record(phase=phase) if phase else record()
    p = re.search(r'<p id="ds-phase" class="([^"]*)"[^>]*>([^<]*)</p>', page(rec))
    assert p.group(2) == text
    assert ("d-none" in p.group(1)) == (not text)


def test_unknown_step_shows_its_name():
    rec = record(steps=[{"name": "defrost", "status": "pending", "duration": None, "message": ""}])
    assert '<td class="ds-step-label">defrost<' in page(rec)


def run_js(calls):
    """``[[fn, rec, now_ms], ...]`` through the page's phaseText/estimateText."""
    html = page()
    js = re.search(r"\n  var PHASES = .*?;\n", html).group(0)
    js += "".join(
        re.search(r"\n  function %s\(.*?\n  \}\n" % name, html, re.S).group(0)
        for name in ("duration", "phaseText", "estimateText")
    )
    script = js + (
        "var calls = %s; console.log(JSON.stringify(calls.map(function (c) {"
        " return c[0] === 'phase' ? phaseText(c[1]) : estimateText(c[1], c[2]); })));" % json.dumps(calls)
    )
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def steps_started(**started):
    return [{"name": n, "status": "running", "started": t} for n, t in started.items()]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_phase_words_and_estimates():
    t0 = 1714644000000  # T0 in ms
    est = {"prepare": 4.2, "cutover": 3.0, "samples": 5}
    prep = dict(record(), phase="preparing", estimate=est, steps=steps_started(prepare=T0))
    cut = dict(record(), phase="cutting-over", estimate=est, steps=steps_started(stop=T0))
    start = dict(record(), phase="starting", estimate=est, steps=steps_started(stop=T0, verify=T0))
    got = run_js(
        [
            ["phase", prep],
            ["phase", cut],
            ["phase", start],
            ["phase", dict(prep, phase="ready")],
            ["phase", dict(prep, phase="rolling-back")],
            ["phase", dict(prep, phase="done")],
            ["phase", {k: v for k, v in prep.items() if k != "phase"}],  # an older service
            ["eta", prep, t0 + 1000],
            ["eta", prep, t0 + 9000],
            ["eta", cut, t0 + 500],
            ["eta", start, t0 + 2000],
            ["eta", dict(prep, steps=[]), t0],  # not started yet: no remaining time
            ["eta", dict(prep, estimate={"prepare": None, "cutover": None, "samples": 0}), t0],
            ["eta", {k: v for k, v in prep.items() if k != "estimate"}, t0],
            ["eta", dict(prep, phase="done"), t0],
        ]
    )
    assert got == [
        "Preparing the gpu machine \u2014 your server keeps running, keep working",
        "Cutting over \u2014 your server is briefly unavailable",
        "Starting on gpu",
        "Ready on the new machine \u2014 saving your work in JupyterLab, then cutting over",
        "Going back to small",
        "",
        "",
        "usually about 4 s \u00b7 about 3 s left",
        "usually about 4 s \u00b7 taking longer than usual",
        "usually about 3 s \u00b7 about 3 s left",
        "usually about 3 s \u00b7 about 1 s left",
        "usually about 4 s",
        "",
        "",
        "",
    ]
