"""Charts of the admin page: SVG rendered on the server, no script, no internet.

"Let admins see, not read" (issue 17): cost per tier and per user over the
budget period, switches per day with their outcomes and durations, servers
per tier over time, and each pending requester's spending per day.

Two layers, both plain Python:

- **data** (:func:`cost_by`, :func:`cost_per_day`, :func:`servers_over_time`,
  :func:`switches_per_day`): read-only queries of the service's SQLite
  store: the accounting ``usage`` intervals (:mod:`.accounting`) and the
  ``switches`` table (:mod:`.store`). Servers per tier over time need no
  table of their own: every usage interval is one server on one tier from
  its start to the last poll that saw it (a switch closes the interval and
  opens one on the new tier), so the count at a time is the number of
  intervals covering it (a sweep over the interval ends);
- **charts** (:func:`bar_chart`, :func:`stacked_bar_chart`,
  :func:`line_chart`): pure builders returning a :class:`Chart`, an ``<svg
  role="img">`` with a ``<title>`` and a ``<desc>`` (``aria-labelledby``)
  plus the same numbers as a table (``columns``, ``rows``) that the
  template shows in a ``<details>`` for screen readers and for copying.
  Every label (user names and tier names are user input) is escaped with
  :func:`html.escape`; element ids are reduced to ``[A-Za-z0-9_-]``.
  Without data a chart says "No data yet".
"""

from __future__ import annotations

import html
import math
import re
import sqlite3
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from markupsafe import Markup

from .. import formatting, policy

__all__ = [
    "Chart",
    "OUTCOMES",
    "admin_charts",
    "bar_chart",
    "cost_by",
    "cost_per_day",
    "line_chart",
    "requester_chart",
    "servers_over_time",
    "stacked_bar_chart",
    "switches_per_day",
]

DAY = 86400.0
#: switches per day are shown for at least this many days (or the budget period if longer)
SWITCH_DAYS = 14
#: servers per tier over time: at least the last day (or the budget period if longer)
SERVERS_WINDOW = DAY
#: bars shown at most; the rest are summed as "n others"
MAX_BARS = 15
#: points of the servers-over-time chart
SAMPLES = 96
#: a label longer than this is cut in the picture (the table and the tooltip have it whole)
LABEL_CHARS = 22
#: the final states of a switch, in the order they are stacked, with their colours
OUTCOMES = (("succeeded", "#198754"), ("rolled_back", "#fd7e14"), ("failed", "#dc3545"))
#: colours of tiers and other series, in order
PALETTE = ("#0d6efd", "#6f42c1", "#20c997", "#d63384", "#fd7e14", "#6c757d", "#198754", "#0dcaf0")
NO_DATA = "No data yet"

WIDTH = 560
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _e(text) -> str:
    """Escaped for XML text and attribute values."""
    return html.escape(str(text), quote=True)


def _id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", str(text))[:80] or "chart"


def _short(label: str) -> str:
    label = str(label)
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "\u2026"


def _num(x: float) -> str:
    """A coordinate: two decimals at most."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


@dataclass
class Chart:
    """One chart: ``svg`` (markup, safe to insert), and its numbers as a table."""

    id: str
    title: str
    svg: Markup
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    empty: bool = False
    summary: str = ""


def _open(chart_id: str, title: str, desc: str, height: float, width: float = WIDTH) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="ds-chart" role="img" id="{chart_id}"'
        f' aria-labelledby="{chart_id}-title {chart_id}-desc" viewBox="0 0 {_num(width)} {_num(height)}"'
        f' width="100%" style="max-width: {_num(width)}px" {FONT}>',
        f'<title id="{chart_id}-title">{_e(title)}</title>',
        f'<desc id="{chart_id}-desc">{_e(desc)}</desc>',
    ]


def _empty(chart_id: str, title: str, columns: list[str], width: float = WIDTH) -> Chart:
    chart_id = _id(chart_id)
    parts = _open(chart_id, title, NO_DATA, 60, width)
    parts.append(
        f'<rect x="0.5" y="0.5" width="{_num(width - 1)}" height="59" fill="none" stroke="#adb5bd"'
        ' stroke-dasharray="4 3"/>'
    )
    parts.append(f'<text x="{_num(width / 2)}" y="34" text-anchor="middle" fill="#6c757d">{NO_DATA}</text>')
    parts.append("</svg>")
    return Chart(chart_id, title, Markup("\n".join(parts)), columns, [], True, NO_DATA)


def _legend(names: Sequence[str], colors: Sequence[str], y: float) -> list[str]:
    out, x = [], 8.0
    for name, color in zip(names, colors, strict=True):
        label = _short(name)
        out.append(f'<rect x="{_num(x)}" y="{_num(y - 9)}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{_num(x + 14)}" y="{_num(y)}">{_e(label)}</text>')
        x += 24 + 6.5 * len(label)
    return out


# -- charts ----------------------------------------------------------------------


def bar_chart(
    chart_id: str,
    title: str,
    items: Iterable[tuple[str, float]],
    *,
    fmt: Callable[[float], str] = formatting.money,
    label: str = "Name",
    value_label: str = "Cost",
) -> Chart:
    """Horizontal bars, largest first: ``items`` are ``(label, value)``.

    At most :data:`MAX_BARS` bars; the rest are summed in one "n others" bar.
    No item above zero gives the "No data yet" chart.
    """
    columns = [label, value_label]
    items = sorted(((str(k), float(v)) for k, v in items if v and v > 0), key=lambda kv: (-kv[1], kv[0]))
    if not items:
        return _empty(chart_id, title, columns)
    if len(items) > MAX_BARS:
        rest = items[MAX_BARS - 1 :]
        items = items[: MAX_BARS - 1] + [(f"{len(rest)} others", sum(v for _, v in rest))]
    chart_id = _id(chart_id)
    total = sum(v for _, v in items)
    top = max(v for _, v in items)
    row_h, label_w, bar_w, pad = 22, 160, 300, 8
    height = pad * 2 + row_h * len(items)
    desc = f"{len(items)} bars, total {fmt(total)}; largest: {items[0][0]} {fmt(items[0][1])}."
    parts = _open(chart_id, title, desc, height)
    for i, (name, value) in enumerate(items):
        y = pad + i * row_h
        w = max(1.0, bar_w * value / top)
        parts.append(f'<g class="ds-bar" data-label="{_e(name)}" data-value="{value:.6g}">')
        parts.append(f"<title>{_e(name)}: {_e(fmt(value))}</title>")
        parts.append(
            f'<text x="{label_w - 6}" y="{_num(y + 15)}" text-anchor="end">{_e(_short(name))}</text>'
        )
        parts.append(
            f'<rect x="{label_w}" y="{_num(y + 4)}" width="{_num(w)}" height="{row_h - 8}"'
            f' fill="{PALETTE[0]}"/>'
        )
        parts.append(f'<text x="{_num(label_w + w + 6)}" y="{_num(y + 15)}">{_e(fmt(value))}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    rows = [[name, fmt(value)] for name, value in items]
    return Chart(chart_id, title, Markup("\n".join(parts)), columns, rows, False, desc)


def _ticks(top: float) -> list[float]:
    return [0.0, top / 2, top] if top > 0 else [0.0]


def stacked_bar_chart(
    chart_id: str,
    title: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    fmt: Callable[[float], str] = formatting.money,
    colors: Sequence[str] | None = None,
    notes: Sequence[str] | None = None,
    category_label: str = "Day",
    extra_columns: Sequence[tuple[str, Sequence[str]]] = (),
    width: float = WIDTH,
    height: float = 220,
) -> Chart:
    """Vertical bars per category (e.g. a day), stacked by series (e.g. outcome).

    ``series`` are ``(name, one value per category)``; ``notes`` an optional
    short text above each bar (a median duration); ``extra_columns`` more
    ``(heading, one cell per category)`` for the table.
    """
    names = [str(n) for n, _ in series]
    columns = [category_label, *names, *(h for h, _ in extra_columns)]
    totals = [sum(float(vals[i] or 0) for _, vals in series) for i in range(len(categories))]
    if not categories or not any(t > 0 for t in totals):
        return _empty(chart_id, title, columns, width)
    chart_id = _id(chart_id)
    colors = list(colors or PALETTE[: len(series)])
    while len(colors) < len(series):
        colors.append(PALETTE[len(colors) % len(PALETTE)])
    left, right, top_pad, bottom = 56, 10, 36, 34
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    top = max(totals)
    slot = plot_w / len(categories)
    bar_w = max(2.0, slot * 0.7)
    # axis labels: days as MM-DD; every k-th one so that they do not overlap
    axis = [c[5:] if re.fullmatch(r"\d{4}-\d{2}-\d{2}", c) else _short(c) for c in map(str, categories)]
    every = max(1, math.ceil((6.5 * max(len(a) for a in axis) + 8) / slot))
    desc = (
        f"{len(categories)} {category_label.lower()}s from {categories[0]} to {categories[-1]};"
        f" total {fmt(sum(totals))}; at most {fmt(top)} in one."
    )
    parts = _open(chart_id, title, desc, height, width)
    parts += _legend(names, colors, 14)
    for tick in _ticks(top):
        y = top_pad + plot_h - plot_h * tick / top
        parts.append(
            f'<line x1="{left}" x2="{_num(width - right)}" y1="{_num(y)}" y2="{_num(y)}" stroke="#dee2e6"/>'
        )
        parts.append(f'<text x="{left - 4}" y="{_num(y + 4)}" text-anchor="end">{_e(fmt(tick))}</text>')
    for i, cat in enumerate(categories):
        x = left + i * slot + (slot - bar_w) / 2
        y = top_pad + plot_h
        parts.append(f'<g class="ds-bar" data-label="{_e(cat)}" data-value="{totals[i]:.6g}">')
        tip = "; ".join(f"{n} {fmt(float(v[i] or 0))}" for n, v in series if v[i])
        parts.append(f"<title>{_e(cat)}: {_e(tip or fmt(0))}</title>")
        for (_, vals), color in zip(series, colors, strict=True):
            v = float(vals[i] or 0)
            if v <= 0:
                continue
            h = plot_h * v / top
            y -= h
            parts.append(
                f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(bar_w)}" height="{_num(h)}" fill="{color}"/>'
            )
        if notes and notes[i]:
            parts.append(
                f'<text x="{_num(x + bar_w / 2)}" y="{_num(y - 3)}" text-anchor="middle"'
                f' font-size="9">{_e(notes[i])}</text>'
            )
        parts.append("</g>")
        if i % every == 0:
            parts.append(
                f'<text x="{_num(x + bar_w / 2)}" y="{height - bottom + 14}" text-anchor="middle">'
                f"{_e(axis[i])}</text>"
            )
    parts.append("</svg>")
    rows = []
    for i, cat in enumerate(categories):
        rows.append(
            [cat, *(fmt(float(v[i] or 0)) for _, v in series), *(cells[i] for _, cells in extra_columns)]
        )
    return Chart(chart_id, title, Markup("\n".join(parts)), columns, rows, False, desc)


def line_chart(
    chart_id: str,
    title: str,
    times: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    value_label: str = "Servers",
) -> Chart:
    """Step lines over time (unix ``times``), one per series (e.g. a tier); whole numbers."""
    names = [str(n) for n, _ in series]
    columns = ["Time (UTC)", *names]
    if not times or not series or not any(any(v for v in vals) for _, vals in series):
        return _empty(chart_id, title, columns)
    chart_id = _id(chart_id)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    left, right, top_pad, bottom = 40, 10, 36, 34
    height = 220
    plot_w, plot_h = WIDTH - left - right, height - top_pad - bottom
    t0, t1 = times[0], times[-1]
    span = (t1 - t0) or 1.0
    top = max(1.0, max(max(vals) for _, vals in series))

    def xy(t, v):
        return left + plot_w * (t - t0) / span, top_pad + plot_h - plot_h * v / top

    peak = {n: max(vals) for n, vals in series}
    desc = (
        f"{value_label} per tier from {_when(t0)} to {_when(t1)} UTC; at most "
        + ", ".join(f"{n} {int(p)}" for n, p in peak.items())
        + "."
    )
    parts = _open(chart_id, title, desc, height)
    parts += _legend(names, colors, 14)
    for tick in sorted({0, int(top // 2), int(top)}):
        _, y = xy(t0, tick)
        parts.append(
            f'<line x1="{left}" x2="{WIDTH - right}" y1="{_num(y)}" y2="{_num(y)}" stroke="#dee2e6"/>'
        )
        parts.append(f'<text x="{left - 4}" y="{_num(y + 4)}" text-anchor="end">{tick}</text>')
    for k in range(5):
        t = t0 + span * k / 4
        x, _ = xy(t, 0)
        anchor = "start" if k == 0 else "end" if k == 4 else "middle"
        parts.append(
            f'<text x="{_num(x)}" y="{height - bottom + 14}" text-anchor="{anchor}">{_when(t)}</text>'
        )
    for (name, vals), color in zip(series, colors, strict=True):
        points = []
        for i, (t, v) in enumerate(zip(times, vals, strict=True)):
            x, y = xy(t, v)
            if i:
                points.append(f"{_num(x)},{_num(xy(t, vals[i - 1])[1])}")
            points.append(f"{_num(x)},{_num(y)}")
        parts.append(f'<g class="ds-series" data-label="{_e(name)}" data-peak="{int(peak[name])}">')
        parts.append(f"<title>{_e(name)}: at most {int(peak[name])}</title>")
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(points)}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    # the table: the moments the numbers change (not every sample)
    rows, last = [], None
    for i, t in enumerate(times):
        now = tuple(int(vals[i]) for _, vals in series)
        if now != last or i == len(times) - 1:
            rows.append([_when(t), *(str(v) for v in now)])
            last = now
    return Chart(chart_id, title, Markup("\n".join(parts)), columns, rows, False, desc)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%m-%d %H:%M")


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")


# -- data ------------------------------------------------------------------------


def cost_by(db: sqlite3.Connection, key: str, since: float, now: float, user: str | None = None) -> dict:
    """``{tier or user: cost between since and now}`` from the usage intervals;
    ``key`` is ``"profile"`` or ``"user"``."""
    if key not in ("profile", "user"):
        raise ValueError(f"cost_by key must be 'profile' or 'user', not {key!r}")
    where, args = "", []
    if user is not None:
        where, args = " AND user = ?", [user]
    rows = db.execute(
        f'SELECT {key} AS k, SUM(hourly_cost * (MIN("end", ?) - MAX(start, ?)) / 3600.0) AS cost'
        f' FROM usage WHERE "end" > ? AND start < ?{where} GROUP BY {key}',
        (now, since, since, now, *args),
    ).fetchall()
    return {(r["k"] or ""): max(0.0, r["cost"] or 0.0) for r in rows}


def _days(since: float, now: float) -> list[float]:
    """Starts of the UTC days from ``since``'s day to ``now``'s."""
    first = policy.period_start(since, "day")
    out, t = [], first
    while t <= now:
        out.append(t)
        t += DAY
    return out or [first]


def cost_per_day(db: sqlite3.Connection, since: float, now: float, user: str | None = None) -> tuple:
    """``(days, {tier: [cost per day]})`` between ``since`` and ``now`` (UTC days)."""
    days = _days(since, now)
    where, args = "", []
    if user is not None:
        where, args = " AND user = ?", [user]
    rows = db.execute(
        f'SELECT profile, hourly_cost, start, "end" FROM usage WHERE "end" > ? AND start < ?{where}',
        (since, now, *args),
    ).fetchall()
    per: dict[str, list[float]] = {}
    for r in rows:
        if not r["hourly_cost"]:
            continue
        vals = per.setdefault(r["profile"] or "", [0.0] * len(days))
        start, end = max(r["start"], since), min(r["end"], now)
        for i, d in enumerate(days):
            overlap = min(end, d + DAY) - max(start, d)
            if overlap > 0:
                vals[i] += r["hourly_cost"] * overlap / 3600
    return days, dict(sorted(per.items()))


def servers_over_time(db: sqlite3.Connection, since: float, now: float, samples: int = SAMPLES) -> tuple:
    """``(times, {tier: [servers]})``: ``samples`` times from ``since`` to ``now``;
    each number is the most servers on the tier at once since the time before
    (so a server shorter than a step still shows). A server counts from its
    usage interval's start to its end."""
    rows = db.execute(
        'SELECT profile, start, "end" FROM usage WHERE "end" >= ? AND start <= ?', (since, now)
    ).fetchall()
    samples = max(2, int(samples))
    times = [since + (now - since) * i / (samples - 1) for i in range(samples)]
    out = {}
    by_tier: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        by_tier.setdefault(r["profile"] or "", []).append((r["start"], r["end"]))
    for tier, spans in sorted(by_tier.items()):
        # sweep: +1 at a start, -1 at an end; at the same moment starts come first,
        # so an interval covers [start, end] and a zero-length one still counts
        events = sorted([(s, 0, 1) for s, _ in spans] + [(e, 1, -1) for _, e in spans])
        counts, running, j = [], 0, 0
        for t in times:
            peak = running
            while j < len(events) and events[j][0] <= t:
                running += events[j][2]
                peak = max(peak, running)
                j += 1
            counts.append(peak)
        out[tier] = counts
    return times, out


def switches_per_day(db: sqlite3.Connection, since: float, now: float) -> dict:
    """Switches created per UTC day: ``{"days": [day start], "outcomes": {state:
    [count]}, "durations": [[seconds of each final switch]]}`` (``in flight``
    counts switches not final yet)."""
    days = _days(since, now)
    outcomes = {name: [0] * len(days) for name, _ in OUTCOMES}
    outcomes["in flight"] = [0] * len(days)
    durations: list[list[float]] = [[] for _ in days]
    rows = db.execute(
        "SELECT state, created, finished FROM switches WHERE created >= ? AND created <= ?",
        (days[0], now),
    ).fetchall()
    for r in rows:
        i = min(len(days) - 1, int((r["created"] - days[0]) // DAY))
        key = r["state"] if r["state"] in outcomes else "in flight"
        outcomes[key][i] += 1
        if r["finished"] is not None:
            durations[i].append(max(0.0, r["finished"] - r["created"]))
    return {"days": days, "outcomes": outcomes, "durations": durations}


# -- the page's charts -----------------------------------------------------------


def _count(x: float) -> str:
    return str(int(x))


def admin_charts(
    db: sqlite3.Connection, period: str, now: float, tier_names: dict | None = None
) -> list[Chart]:
    """The admin page's charts: cost per tier and per user this budget
    ``period``, switches per day, servers per tier over time."""
    names = tier_names or {}
    since = policy.period_start(now, period)
    label = {"day": "today", "week": "this week", "month": "this month"}[period]
    charts = [
        bar_chart(
            "ds-chart-cost-tier",
            f"Cost per tier {label}",
            [(names.get(k, k) or "(none)", v) for k, v in cost_by(db, "profile", since, now).items()],
            label="Tier",
        ),
        bar_chart(
            "ds-chart-cost-user",
            f"Cost per user {label}",
            list(cost_by(db, "user", since, now).items()),
            label="User",
        ),
    ]
    sw = switches_per_day(db, min(since, now - (SWITCH_DAYS - 1) * DAY), now)
    medians = [formatting.duration(statistics.median(d)) if d else "" for d in sw["durations"]]
    longest = [formatting.duration(max(d)) if d else "" for d in sw["durations"]]
    series = [(name.replace("_", " "), sw["outcomes"][name]) for name, _ in OUTCOMES]
    series.append(("in flight", sw["outcomes"]["in flight"]))
    charts.append(
        stacked_bar_chart(
            "ds-chart-switches",
            "Switches per day by outcome (median duration above each day)",
            [_day(d) for d in sw["days"]],
            series,
            fmt=_count,
            colors=[c for _, c in OUTCOMES] + ["#adb5bd"],
            notes=medians,
            extra_columns=[("Median duration", medians), ("Longest", longest)],
        )
    )
    times, per_tier = servers_over_time(db, min(since, now - SERVERS_WINDOW), now)
    charts.append(
        line_chart(
            "ds-chart-servers",
            "Servers per tier over time (the most at once in each step)",
            times,
            [(names.get(k, k) or "(none)", v) for k, v in per_tier.items()],
        )
    )
    return charts


def requester_chart(
    db: sqlite3.Connection, user: str, period: str, now: float, chart_id: str, tier_names: dict | None = None
) -> Chart:
    """A requester's spending per day this budget period, stacked by tier."""
    names = tier_names or {}
    days, per = cost_per_day(db, policy.period_start(now, period), now, user=user)
    return stacked_bar_chart(
        chart_id,
        f"{user}'s spending per day this {period}",
        [_day(d) for d in days],
        [(names.get(k, k) or "(none)", v) for k, v in per.items()],
        width=320,
        height=150,
    )
