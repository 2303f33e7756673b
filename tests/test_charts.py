"""The admin page's server-rendered SVG charts (issue 17, "let admins see, not read"):
well-formed SVG with a title and description, labels escaped, "No data yet"
without data, and the numbers from the store and the accounts."""

import calendar
import xml.etree.ElementTree as ET

import pytest

from jupyter_ds_compute.service import charts
from jupyter_ds_compute.service.accounting import Accounting
from jupyter_ds_compute.service.store import Store

SVG = "{http://www.w3.org/2000/svg}"
#: Wednesday 2026-12-02 12:00 UTC
NOW = calendar.timegm((2026, 12, 2, 12, 0, 0))
DAY = 86400
EVIL = '<script>alert("x")</script>&\'bob'


def parse(chart):
    root = ET.fromstring(str(chart.svg))  # raises on anything not well-formed
    assert root.tag == SVG + "svg"
    assert root.get("role") == "img"
    title_id, desc_id = root.get("aria-labelledby").split()
    assert root.find(SVG + "title").get("id") == title_id
    assert root.find(SVG + "desc").get("id") == desc_id
    assert root.find(SVG + "title").text == chart.title
    return root


def texts(root):
    return [t.text for t in root.iter(SVG + "text")]


@pytest.fixture
def store():
    s = Store()
    Accounting(s.db)
    yield s
    s.close()


def usage(db, user, profile, cost, start, end, server=""):
    db.execute(
        'INSERT INTO usage (user, server_name, profile, hourly_cost, started_key, start, "end", open)'
        " VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
        (user, server, profile, cost, str(start), start, end),
    )


def switch(db, sid, state, created, finished):
    db.execute(
        "INSERT INTO switches (id, user, server_name, requested_by, from_profile, to_profile, from_options,"
        " to_options, state, created, updated, finished) VALUES (?, 'u', '', 'u', 'small', 'gpu', '{}', '{}',"
        " ?, ?, ?, ?)",
        (sid, state, created, created, finished),
    )


@pytest.mark.parametrize(
    "chart",
    [
        lambda: charts.bar_chart("c", "Cost", []),
        lambda: charts.bar_chart("c", "Cost", [("zero", 0.0)]),
        lambda: charts.stacked_bar_chart("c", "Per day", ["2026-12-01"], [("gpu", [0])]),
        lambda: charts.stacked_bar_chart("c", "Per day", [], []),
        lambda: charts.line_chart("c", "Servers", [1.0, 2.0], [("gpu", [0, 0])]),
        lambda: charts.line_chart("c", "Servers", [], []),
    ],
)
def test_empty_data_says_no_data_yet(chart):
    c = chart()
    root = parse(c)
    assert c.empty and c.rows == [] and c.columns
    assert texts(root) == ["No data yet"]
    assert root.find(SVG + "desc").text == "No data yet"


def test_bar_chart_numbers_order_and_escaping():
    c = charts.bar_chart("cost-user", "Cost <per> user", [("alice", 1.5), (EVIL, 3.25), ("carol", 0)])
    root = parse(c)
    assert c.title == "Cost <per> user"
    bars = root.findall(f"{SVG}g[@class='ds-bar']")
    assert [(b.get("data-label"), float(b.get("data-value"))) for b in bars] == [(EVIL, 3.25), ("alice", 1.5)]
    assert c.rows == [[EVIL, "$3.25"], ["alice", "$1.50"]]
    assert "$3.25" in texts(root) and "$1.50" in texts(root)
    # the raw label never appears unescaped in the markup
    assert "<script>" not in str(c.svg) and "&lt;script&gt;" in str(c.svg)
    # the longer bar is the larger value, proportionally
    widths = [float(b.find(SVG + "rect").get("width")) for b in bars]
    assert widths[0] == pytest.approx(300) and widths[1] == pytest.approx(300 * 1.5 / 3.25, abs=0.01)
    assert "total $4.75" in c.summary


def test_bar_chart_sums_the_rest_in_others():
    items = [(f"user{i:02d}", float(i + 1)) for i in range(20)]
    c = charts.bar_chart("c", "Cost", items)
    parse(c)
    assert len(c.rows) == charts.MAX_BARS
    assert c.rows[0] == ["user19", "$20.00"]
    assert c.rows[-1] == ["6 others", "$21.00"]  # 1+2+...+6


def test_ids_are_reduced_to_safe_characters():
    c = charts.bar_chart('x" onload="alert(1)', "T", [("a", 1)])
    root = parse(c)
    assert root.get("id") == "x--onload--alert-1-"
    assert "onload=" not in str(c.svg).replace('id="x--onload', "")


def test_stacked_bars_numbers_and_notes():
    c = charts.stacked_bar_chart(
        "sw",
        "Switches",
        ["2026-12-01", "2026-12-02"],
        [("succeeded", [2, 1]), ("failed", [0, 1])],
        fmt=charts._count,
        notes=["12 s", ""],
        extra_columns=[("Median", ["12 s", ""])],
    )
    root = parse(c)
    bars = root.findall(f"{SVG}g[@class='ds-bar']")
    assert [float(b.get("data-value")) for b in bars] == [2, 2]
    assert len(bars[0].findall(SVG + "rect")) == 1 and len(bars[1].findall(SVG + "rect")) == 2
    assert "12 s" in texts(root)
    assert c.columns == ["Day", "succeeded", "failed", "Median"]
    assert c.rows == [["2026-12-01", "2", "0", "12 s"], ["2026-12-02", "1", "1", ""]]


def test_line_chart_escapes_series_and_lists_changes():
    c = charts.line_chart("srv", "Servers", [0.0, 60.0, 120.0, 180.0], [(EVIL, [0, 2, 2, 1])])
    root = parse(c)
    series = root.find(f"{SVG}g[@class='ds-series']")
    assert series.get("data-label") == EVIL and series.get("data-peak") == "2"
    assert [r[1] for r in c.rows] == ["0", "2", "1"]  # only where the number changes
    assert EVIL in [t.text for t in root.iter(SVG + "text")] or charts._short(EVIL) in texts(root)


def test_cost_by_tier_and_user_over_the_period(store):
    db = store.db
    since = NOW - 10 * 3600
    usage(db, "alice", "gpu", 2.0, NOW - 2 * 3600, NOW - 1 * 3600)  # 1 h: $2
    usage(db, "alice", "small", 0.1, NOW - 12 * 3600, NOW)  # 10 h inside: $1
    usage(db, "bob", "gpu", 2.0, NOW - 20 * 3600, NOW - 11 * 3600)  # before the period
    by_tier = charts.cost_by(db, "profile", since, NOW)
    assert by_tier == {"gpu": pytest.approx(2.0), "small": pytest.approx(1.0)}
    assert charts.cost_by(db, "user", since, NOW) == {"alice": pytest.approx(3.0)}
    assert charts.cost_by(db, "user", since, NOW, user="bob") == {}
    with pytest.raises(ValueError, match="profile"):
        charts.cost_by(db, "server_name; DROP TABLE usage", since, NOW)


def test_cost_per_day_splits_at_midnight(store):
    db = store.db
    midnight = calendar.timegm((2026, 12, 2, 0, 0, 0))
    usage(db, "alice", "gpu", 1.0, midnight - 3 * 3600, midnight + 2 * 3600)
    days, per = charts.cost_per_day(db, midnight - DAY, NOW, user="alice")
    assert days == [midnight - DAY, midnight]
    assert per == {"gpu": [pytest.approx(3.0), pytest.approx(2.0)]}


def test_servers_over_time_counts_intervals(store):
    db = store.db
    usage(db, "a", "gpu", 1.0, 100, 300)
    usage(db, "b", "gpu", 1.0, 200, 400, server="x")
    usage(db, "c", "small", 0.1, 0, 500)
    times, per = charts.servers_over_time(db, 0, 500, samples=6)
    assert times == [0, 100, 200, 300, 400, 500]
    assert per["gpu"] == [0, 1, 2, 2, 1, 0]
    assert per["small"] == [1, 1, 1, 1, 1, 1]


def test_servers_over_time_shows_a_server_shorter_than_a_step(store):
    usage(store.db, "a", "gpu", 1.0, 130, 140)
    usage(store.db, "b", "gpu", 1.0, 250, 250)  # seen by one poll only
    times, per = charts.servers_over_time(store.db, 0, 500, samples=6)
    assert per["gpu"] == [0, 0, 1, 1, 0, 0]


def test_switches_per_day_outcomes_and_durations(store):
    db = store.db
    today = calendar.timegm((2026, 12, 2, 0, 0, 0))
    switch(db, "a", "succeeded", today + 60, today + 70)
    switch(db, "b", "succeeded", today + 100, today + 130)
    switch(db, "c", "failed", today - DAY + 5, today - DAY + 9)
    switch(db, "d", "running", today + 200, None)
    switch(db, "e", "rolled_back", today - 5 * DAY, today - 5 * DAY + 1)  # before the window
    sw = charts.switches_per_day(db, today - DAY, NOW)
    assert sw["days"] == [today - DAY, today]
    assert sw["outcomes"]["succeeded"] == [0, 2]
    assert sw["outcomes"]["failed"] == [1, 0]
    assert sw["outcomes"]["rolled_back"] == [0, 0]
    assert sw["outcomes"]["in flight"] == [0, 1]
    assert sw["durations"] == [[4.0], [10.0, 30.0]]


def test_admin_charts_with_data(store):
    db = store.db
    today = calendar.timegm((2026, 12, 2, 0, 0, 0))
    usage(db, EVIL, "gpu", 2.0, NOW - 3600, NOW)
    switch(db, "a", "succeeded", today + 60, today + 80)
    switch(db, "b", "succeeded", today + 90, today + 130)
    cs = charts.admin_charts(db, "week", NOW, tier_names={"gpu": "GPU <big>"})
    assert [c.id for c in cs] == [
        "ds-chart-cost-tier",
        "ds-chart-cost-user",
        "ds-chart-switches",
        "ds-chart-servers",
    ]
    for c in cs:
        parse(c)
        assert not c.empty
    assert cs[0].rows == [["GPU <big>", "$2.00"]]
    assert cs[1].rows == [[EVIL, "$2.00"]]
    sw = cs[2]
    assert len(sw.rows) == charts.SWITCH_DAYS  # the week so far is shorter than two weeks
    assert sw.rows[-1] == ["2026-12-02", "2", "0", "0", "0", "30 s", "40 s"]
    assert "30 s" in texts(parse(sw))
    servers = cs[3]
    assert servers.columns == ["Time (UTC)", "GPU <big>"]
    assert servers.rows[-1][1] == "1"


def test_admin_charts_empty_store(store):
    for c in charts.admin_charts(store.db, "month", NOW):
        assert c.empty and texts(parse(c)) == ["No data yet"]


def test_requester_chart(store):
    usage(store.db, "asker", "gpu", 2.0, NOW - 3600, NOW)
    usage(store.db, "other", "gpu", 2.0, NOW - 3600, NOW)
    c = charts.requester_chart(store.db, "asker", "day", NOW, "ds-usage-abc")
    parse(c)
    assert c.rows == [["2026-12-02", "$2.00"]] and c.columns == ["Day", "gpu"]
    assert charts.requester_chart(store.db, "nobody", "day", NOW, "x").empty
