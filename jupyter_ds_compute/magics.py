"""``%ds_compute``: see and switch this server's compute tier from a notebook.

The magic talks to this server's ds-compute server extension
(``{JUPYTERHUB_SERVICE_URL}ds-compute/api/...``) with the server's token
(``JUPYTERHUB_API_TOKEN``), never to the hub.

This module imports nothing but the standard library, IPython and
:mod:`jupyter_ds_compute.formatting` (itself standard library only): the
server puts a copy of both (as ``ds_compute_magics`` and
``ds_compute_formatting``) on the path of every kernel it starts, including
kernels of environments that do not have jupyter-ds-compute installed. The HTTP and formatting parts are plain functions.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Mapping

if __package__:
    from . import formatting as fmt
else:  # the copy on a kernel's path (serverext/kernelspecs.py) has its sibling copy
    import ds_compute_formatting as fmt  # type: ignore[no-redef]

__all__ = [
    "DSComputeError",
    "BadUsage",
    "api_request",
    "run",
    "load_ipython_extension",
    "unload_ipython_extension",
]

USAGE = """\
%ds_compute status              this server: tier, time and cost on it, volume
%ds_compute tiers               the tiers you may switch to
%ds_compute switch TIER [--yes] [--keep-state] [KEY=VALUE ...]
                                move this server (and its volume) to TIER; the
                                kernel restarts. KEY=VALUE are tier options.
                                --keep-state: your kernels' variables come along
%ds_compute request TIER --for 7d --why "REASON"
                                ask an admin or approver for a tier you may not
                                use, for a while (at most the tier's max_grant)
%ds_compute requests            your requests and their answers
%ds_compute state               the last save/restore of the kernels' variables
%ds_compute volume              your volume: where, how full, is it the notebook dir
%ds_compute cost                $/h of this tier and the cost so far
%ds_compute envs                environments on your volume (kernels, broken ones)
"""


class DSComputeError(Exception):
    """Something the user should read (not a bug): shown without a traceback."""


class BadUsage(ValueError):
    """The magic was called wrongly (the magic turns it into UsageError)."""


# -- HTTP -------------------------------------------------------------------
def client_config(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(base URL of this server's ds-compute API, token) from the kernel's env."""
    env = os.environ if env is None else env
    url = env.get("JUPYTERHUB_SERVICE_URL")
    token = env.get("JUPYTERHUB_API_TOKEN")
    if not url or not token:
        missing = [k for k in ("JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_API_TOKEN") if not env.get(k)]
        raise DSComputeError(
            "Not running under JupyterHub: this kernel's server was not started by a "
            f"JupyterHub with ds-compute ({' and '.join(missing)} not set), so there is "
            "no tier to show or switch."
        )
    if not url.endswith("/"):
        url += "/"
    return url + "ds-compute/api/", token


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # our own server: no proxy


def api_request(
    method: str,
    path: str,
    body: Any = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 20.0,
) -> tuple[int, Any]:
    """Call the server extension; (HTTP status, decoded JSON body).

    4xx/5xx answers are returned, not raised; an unreachable server raises
    :class:`DSComputeError`.
    """
    base, token = client_config(env)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path,
        data=data,
        method=method,
        headers={
            "Authorization": f"token {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
    )
    try:
        with _opener.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DSComputeError(f"Could not reach this server's ds-compute API at {base}: {reason}") from None
    try:
        payload = json.loads(raw or b"null")
    except ValueError:
        payload = {"message": raw.decode(errors="replace")[:300]}
    return status, payload


def _message(status: int, payload: Any) -> str:
    if isinstance(payload, dict) and payload.get("message"):
        return str(payload["message"])
    return f"HTTP {status}"


def get_json(path: str, env: Mapping[str, str] | None = None, timeout: float = 20.0) -> Any:
    status, payload = api_request("GET", path, env=env, timeout=timeout)
    if status == 404:
        raise DSComputeError(
            "This server has no ds-compute extension (GET ds-compute/api/"
            f"{path.split('?')[0]} answered 404). Is jupyter-ds-compute installed on the server?"
        )
    if status >= 400:
        raise DSComputeError(f"ds-compute: {_message(status, payload)} (HTTP {status})")
    return payload


# -- formatting ---------------------------------------------------------------
# One rule for the whole project (jupyter_ds_compute/formatting.py); "?" where
# the server did not say.
def format_bytes(n: Any) -> str:
    return fmt.size(n) or "?"


def format_duration(seconds: Any) -> str:
    return fmt.duration(seconds) or "?"


def format_money(x: Any) -> str:
    return fmt.money(x) or "?"


#: what a tier without a price (``hourly_cost`` null) shows instead of one
NO_PRICE = fmt.NO_PRICE


def format_price(tier: Mapping[str, Any]) -> str:
    """``$0.05/h``, ``$0.004/h``; ``no price`` for a tier without one (not ``$0.00/h``)."""
    return fmt.price(tier.get("hourly_cost")) or "?"


def format_cost_so_far(st: Mapping[str, Any]) -> str:
    tier = st.get("tier") or {}
    if tier and tier.get("hourly_cost") is None:
        return f"none ({NO_PRICE} on this tier)"
    return f"{format_money(st.get('cost_so_far'))} so far on this tier"


def format_ago(ts: Any, now: float | None = None) -> str:
    if not isinstance(ts, (int, float)):
        return "never"
    now = time.time() if now is None else now
    return format_duration(max(0.0, now - ts)) + " ago"


def format_local_time(iso: Any) -> str:
    """An ISO time in this kernel's local time (``2030-05-02 12:00 CEST``); as given
    when it does not parse."""
    try:
        when = datetime.datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return str(iso)
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone().strftime("%Y-%m-%d %H:%M %Z").rstrip()


# -- cost before switching ----------------------------------------------------
# The same numbers as Lab's switch dialog (labextension/src/cost.ts).
def budget_left(budget: Any) -> float | None:
    """What is left of a limited budget (>= 0), or None when unlimited or unknown."""
    if not isinstance(budget, dict) or budget.get("state") == "unlimited":
        return None
    total, spent = budget.get("budget"), budget.get("spent")
    if isinstance(total, bool) or not isinstance(total, (int, float)):
        return None
    spent = spent if isinstance(spent, (int, float)) and not isinstance(spent, bool) else 0.0
    return max(0.0, float(total) - float(spent))


def _positive_price(tier: Mapping[str, Any]) -> float | None:
    x = tier.get("hourly_cost")
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 else None


def hours_on_budget(budget: Any, tier: Mapping[str, Any]) -> float | None:
    """Hours the rest of the budget buys on ``tier``; None when unlimited/unknown or free."""
    left, per_hour = budget_left(budget), _positive_price(tier)
    return None if left is None or per_hour is None else left / per_hour


def exceeds_within_hour(budget: Any, tier: Mapping[str, Any]) -> bool:
    """Whether an hour on ``tier`` costs more than what is left of the budget."""
    left, per_hour = budget_left(budget), _positive_price(tier)
    return left is not None and per_hour is not None and left < per_hour


def _period(budget: Any) -> str:
    period = budget.get("period") if isinstance(budget, dict) else None
    return f"this {period}" if period else "this period"


def format_idle(tier: Mapping[str, Any]) -> str:
    idle = tier.get("idle_downshift_after")
    return fmt.duration(idle) if isinstance(idle, (int, float)) and idle > 0 else "never"


def format_buys(budget: Any, tier: Mapping[str, Any]) -> str:
    """The ``buys`` column: hours the rest of the budget lasts on the tier."""
    if budget_left(budget) is None:
        return "unlimited" if isinstance(budget, dict) and budget.get("state") == "unlimited" else "?"
    buys = hours_on_budget(budget, tier)
    return "free" if buys is None else fmt.hours(buys)


def cost_line(tier: Mapping[str, Any], budget: Any) -> str:
    """``GPU: $4.00/h; $60.00 left this month, 15 h on it; idle downshift after 30 min``."""
    name = tier.get("display_name") or tier.get("slug")
    parts = [f"{name}: {format_price(tier)}"]
    left = budget_left(budget)
    if left is not None:
        buys = hours_on_budget(budget, tier)
        parts.append(
            f"{fmt.money(left)} left {_period(budget)} of your budget"
            + ("" if buys is None else f", {fmt.hours(buys)} on it")
        )
    elif isinstance(budget, dict) and budget.get("state") == "unlimited":
        parts.append("no budget limit")
    idle = format_idle(tier)
    parts.append("never moved down when idle" if idle == "never" else f"idle downshift after {idle}")
    return "; ".join(parts)


def budget_warning(tier: Mapping[str, Any], budget: Any) -> str:
    """The warning before a switch that would use the budget up within the hour ("" otherwise)."""
    if not exceeds_within_hour(budget, tier):
        return ""
    buys = hours_on_budget(budget, tier) or 0.0
    return (
        f"WARNING: this switch would use up your budget within the hour: {fmt.money(budget_left(budget))} "
        f"left {_period(budget)} lasts about {fmt.duration(int(buys * 3600))} on "
        f"{tier.get('display_name') or tier.get('slug')} ({format_price(tier)}); then only your "
        "default tier is available."
    )


def format_budget(budget: Any) -> str:
    """The line under ``%ds_compute tiers`` about the budget."""
    left = budget_left(budget)
    if left is None:
        if isinstance(budget, dict) and budget.get("state") == "unlimited":
            return "Budget: no limit."
        return "Budget: not known (the ds-compute service did not say)."
    whose = f" (group {budget['name']})" if budget.get("kind") == "group" and budget.get("name") else ""
    return (
        f"Budget{whose}: {fmt.money(left)} left {_period(budget)} "
        f"({fmt.money(budget.get('spent'))} of {fmt.money(budget.get('budget'))} spent)."
    )


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _tier_resources(t: Mapping[str, Any]) -> tuple[str, str, str]:
    cpu = t.get("cpu")
    gpu = t.get("gpu")
    # a tier's cpu/mem null: no limit
    return (
        f"{cpu:g}" if isinstance(cpu, (int, float)) else ("unlimited" if "cpu" in t and cpu is None else "?"),
        "unlimited" if "mem" in t and t["mem"] is None else format_bytes(t.get("mem")),
        str(gpu) if isinstance(gpu, int) else "?",
    )


def format_status(st: Mapping[str, Any]) -> str:
    tier = st.get("tier") or {}
    lines = []
    if not st.get("under_hub"):
        lines.append("Not running under JupyterHub: no tiers, nothing to switch.")
    if tier:
        cpu, mem, gpu = _tier_resources(tier)
        lines.append(f"Tier:      {tier.get('display_name') or tier.get('slug')} ({tier.get('slug')})")
        lines.append(f"Resources: {cpu} CPU, {mem} memory, {gpu} GPU")
        lines.append(f"Price:     {format_price(tier)}")
    lines.append(f"On tier:   {format_duration(st.get('seconds_on_tier'))}")
    lines.append(f"Cost:      {format_cost_so_far(st)}")
    lines.append(format_volume(st))
    return "\n".join(lines)


def format_volume(st: Mapping[str, Any]) -> str:
    vol = st.get("volume") or {}
    used, size = vol.get("used_bytes"), vol.get("size_bytes")
    usage = f"{format_bytes(used)} used of {format_bytes(size)}" if used is not None else "size not known yet"
    lines = [
        f"Volume:    {vol.get('id') or '?'} ({vol.get('driver') or '?'}) at {vol.get('path') or '?'}",
        f"Usage:     {usage}",
        f"Notebooks: {'on the volume' if vol.get('is_notebook_dir') else 'NOT on the volume'}",
    ]
    if vol.get("warning"):
        lines.append(f"WARNING:   {vol['warning']}")
    return "\n".join(lines)


def format_cost(st: Mapping[str, Any]) -> str:
    tier = st.get("tier") or {}
    return "\n".join(
        [
            f"Tier:      {tier.get('display_name') or tier.get('slug') or '?'}",
            f"Price:     {format_price(tier)}",
            f"On tier:   {format_duration(st.get('seconds_on_tier'))}",
            f"Cost:      {format_cost_so_far(st)}",
        ]
    )


def format_tiers(model: Mapping[str, Any]) -> str:
    rows = []
    budget = model.get("budget")
    for t in model.get("tiers") or []:
        cpu, mem, gpu = _tier_resources(t)
        if t.get("allowed", True):
            note = (
                f"granted until {format_local_time(t['grant'].get('expires'))}"
                if isinstance(t.get("grant"), dict)
                else ""
            )
        else:
            note = "not allowed" + (f": {t['reason']}" if t.get("reason") else "")
            if isinstance(t.get("request"), dict):
                note += " (your request is pending)"
            elif t.get("requestable"):
                note += f" (ask: %ds_compute request {t.get('slug')} --for 1d --why ...)"
        rows.append(
            [
                "*" if t.get("current") else "",
                t.get("slug"),
                t.get("display_name") or "",
                cpu,
                mem,
                gpu,
                format_price(t),
                format_buys(budget, t),
                format_idle(t),
                note,
            ]
        )
    out = format_table(["", "tier", "name", "cpu", "memory", "gpu", "price", "buys", "idle", ""], rows)
    out += "\n" + format_budget(budget)
    out += "\n* = this server's tier; buys = the hours what is left of your budget lasts on the tier;"
    out += "\nidle = idle time before the server moves to your default tier. Switch with: %ds_compute switch TIER"
    if model.get("warning"):
        out += f"\nNote: {model['warning']}"
    return out


def format_envs(model: Mapping[str, Any], now: float | None = None) -> str:
    envs = model.get("envs") or []
    if not envs:
        roots = ", ".join(model.get("roots") or []) or "(none configured)"
        return f"No environments found on the volume (looked in: {roots}).\nCreate one with: python -m venv ~/envs/NAME && ~/envs/NAME/bin/pip install ipykernel"
    rows = []
    for e in envs:
        status = {"ok": "kernel", "unchecked": "kernel (checking)", "no_ipykernel": "no ipykernel"}.get(
            e.get("status"), e.get("status")
        )
        rows.append(
            [
                e.get("name"),
                status,
                e.get("python_version") or "?",
                e.get("kind"),
                format_bytes(e.get("size_bytes")) if e.get("size_bytes") is not None else "…",
                format_ago(e.get("last_used"), now),
                e.get("kernel_name") if e.get("is_kernel") else "",
            ]
        )
    out = format_table(["environment", "status", "python", "kind", "size", "last used", "kernel"], rows)
    problems = [e for e in envs if e.get("reason")]
    if problems:
        out += "\n" + "\n".join(f"{e.get('name')}: {e.get('reason')}" for e in problems)
    return out


# -- commands -----------------------------------------------------------------
def progress_link(progress_url: str, env: Mapping[str, str]) -> str:
    """Absolute URL of the switch's progress page when the hub's public URL is known."""
    if not progress_url or urllib.parse.urlsplit(progress_url).scheme:
        return progress_url
    public = env.get("JUPYTERHUB_PUBLIC_HUB_URL")
    if public:
        parts = urllib.parse.urlsplit(public)
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}{progress_url}"
    return progress_url


def next_url(env: Mapping[str, str]) -> str | None:
    """Where Lab should come back to after the switch: this notebook if we know it."""
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX")
    if not prefix and env.get("JUPYTERHUB_SERVICE_URL"):
        prefix = urllib.parse.urlsplit(env["JUPYTERHUB_SERVICE_URL"]).path
    if not prefix:
        return None
    prefix = prefix.rstrip("/") + "/"
    session = env.get("JPY_SESSION_NAME") or ""
    vol = env.get("DS_COMPUTE_VOLUME_PATH")
    if session and os.path.isabs(session):
        rel = os.path.relpath(session, vol) if vol else None
        session = rel if rel and not rel.startswith("..") else ""
    if session:
        return prefix + "lab/tree/" + urllib.parse.quote(session)
    return prefix + "lab"


def parse_switch(args: list[str]) -> tuple[str, bool, dict[str, str]]:
    tier, yes, options = None, False, {}
    for a in args:
        if a in ("--yes", "-y"):
            yes = True
        elif a.startswith("-"):
            raise BadUsage(f"unknown option {a!r} for switch\n\n{USAGE}")
        elif "=" in a and tier is not None:
            k, v = a.split("=", 1)
            if not k:
                raise BadUsage(f"bad tier option {a!r}: expected KEY=VALUE")
            options[k] = v
        elif tier is None:
            tier = a
        else:
            raise BadUsage(f"switch takes one TIER, got {tier!r} and {a!r}\n\n{USAGE}")
    if not tier:
        raise BadUsage(f"switch needs a TIER, e.g. %ds_compute switch gpu\n\n{USAGE}")
    return tier, yes, options


def parse_request(args: list[str]) -> dict[str, str]:
    """``TIER --for DURATION --why REASON`` -> the body of ``POST requests``
    (values are data: JSON to the server, never a shell or a URL)."""
    tier, values = None, {}
    it = iter(args)
    for a in it:
        key = {"--for": "duration", "--why": "reason"}.get(a.split("=", 1)[0])
        if key:
            value = a.split("=", 1)[1] if "=" in a else next(it, None)
            if value is None or not value.strip():
                raise BadUsage(f"{a} needs a value, e.g. --for 7d --why \"train the model\"\n\n{USAGE}")
            values[key] = value
        elif a.startswith("-"):
            raise BadUsage(f"unknown option {a!r} for request\n\n{USAGE}")
        elif tier is None:
            tier = a
        else:
            raise BadUsage(f"request takes one TIER, got {tier!r} and {a!r}\n\n{USAGE}")
    if not tier:
        raise BadUsage(f'request needs a TIER, e.g. %ds_compute request gpu --for 7d --why "..."\n\n{USAGE}')
    for key, flag in (("duration", "--for"), ("reason", "--why")):
        if key not in values:
            raise BadUsage(f"request needs {flag}, e.g. %ds_compute request {tier} --for 7d --why \"...\"")
    return {"profile": tier, **values}


def request(args: list[str], env: Mapping[str, str]) -> str:
    body = parse_request(args)
    status, reply = api_request("POST", "requests", body, env=env)
    if status in (200, 201) and isinstance(reply, dict):
        return (
            f"Asked for {body['profile']} for {fmt.duration(reply.get('duration'))} "
            f"(request {reply.get('id')}): an admin or approver decides. The answer shows in "
            "Lab's status bar and in %ds_compute requests."
        )
    msg = _message(status, reply)
    field = reply.get("field") if isinstance(reply, dict) else None
    raise DSComputeError(f"Request refused: {msg}" + (f" ({field})" if field else "") + f" (HTTP {status})")


def format_requests(model: Mapping[str, Any]) -> str:
    rows = []
    for r in model.get("requests") or []:
        if r.get("state") == "approved":
            answer = f"until {r.get('expires')}"
        elif r.get("state") == "denied":
            answer = r.get("decision_reason") or ""
        else:
            answer = ""
        rows.append([r.get("profile"), r.get("state"), fmt.duration(r.get("duration")), answer])
    if not rows:
        return 'No requests. Ask with %ds_compute request TIER --for 7d --why "..."'
    return format_table(["Tier", "State", "Asked for", "Answer"], rows)


def own_kernel_id() -> str | None:
    """This kernel's id, from its connection file ``kernel-<id>.json`` (``-f`` on its command line)."""
    import sys

    argv = list(getattr(sys, "argv", []))
    for i, a in enumerate(argv):
        path = argv[i + 1] if a == "-f" and i + 1 < len(argv) else a[3:] if a.startswith("-f=") else None
        name = os.path.basename(path or "")
        if name.startswith("kernel-") and name.endswith(".json"):
            return name[len("kernel-") : -len(".json")]
    return None


def save_own_state(env: Mapping[str, str]) -> str | None:
    """Save this kernel's variables where the server keeps state; this kernel's id.

    The server cannot run the save in this kernel while it runs the magic, so
    the magic saves its own kernel; the server saves the others."""
    kid = own_kernel_id()
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if kid is None or shell is None:
        return None
    if __package__:
        from . import kernelstate
    else:
        import ds_compute_state as kernelstate  # type: ignore[no-redef]
    root = get_json("state", env).get("root")
    if not root:
        return None
    summary = kernelstate.save_namespace(
        shell.user_ns, os.path.join(root, kid), hidden=set(shell.user_ns_hidden)
    )
    if summary.get("stopped"):
        raise DSComputeError(
            f"Not switching: saving your variables would fill your volume ({summary['stopped']}). "
            "Free some space, or switch without --keep-state."
        )
    return kid


def format_state(model: Mapping[str, Any]) -> str:
    lines = []
    save = model.get("save")
    if not save:
        lines.append("No kernel state saved yet (switch with: %ds_compute switch TIER --keep-state).")
    else:
        lines.append(
            f"Last save: {format_ago(save.get('saved_at'))}, {len(save.get('sessions') or [])} kernels"
        )
        for s in save.get("sessions") or []:
            summ = s.get("summary") or {}
            missing = ", ".join(f"{v['name']} ({v['type']})" for v in summ.get("not_saved") or [])
            n = summ.get("count", 0)
            size = format_bytes(summ.get("bytes") or 0)
            what = s.get("error") or f"{n} variable{'' if n == 1 else 's'} ({size})"
            lines.append(f"  {s.get('path')}: {what}" + (f"; not saved: {missing}" if missing else ""))
    restore = model.get("restore")
    if model.get("restoring"):
        lines.append("Restoring now...")
    elif restore:
        lines.append(f"Last restore: {format_ago(restore.get('restored_at'))}")
        for s in restore.get("sessions") or []:
            text = s.get("error") or (s.get("summary") or {}).get("notice") or "?"
            lines.append(f"  {s.get('path')}: {text}")
    return "\n".join(lines)


def switch(
    args: list[str],
    env: Mapping[str, str],
    ask: Callable[[str], str] = input,
    say: Callable[[str], Any] = print,
) -> str:
    keep_state = "--keep-state" in args
    args = [a for a in args if a != "--keep-state"]
    tier, yes, options = parse_switch(args)
    tiers = get_json("tiers", env)
    by_slug = {t.get("slug"): t for t in tiers.get("tiers") or []}
    if tier not in by_slug:
        valid = ", ".join(s for s in by_slug if s) or "(none)"
        raise BadUsage(f"no such tier: {tier}. Tiers: {valid}")
    target = by_slug[tier]
    name = target.get("display_name") or tier
    if tiers.get("current") == tier:
        return f"This server already runs on {name} ({tier}); nothing to do."
    if target.get("allowed") is False:
        reason = target.get("reason") or "not allowed"
        return f"You cannot switch to {name}: {reason}"
    # what it costs, before it happens (the warning only with a limited budget)
    say(cost_line(target, tiers.get("budget")))
    warning = budget_warning(target, tiers.get("budget"))
    if warning:
        say(warning)
    if not yes:
        what = (
            "The kernel will restart (its variables come along)" if keep_state else "The kernel will restart"
        )
        answer = ask(f"{what} when the server moves. Switch to {name}? [y/N] ")
        if (answer or "").strip().lower() not in ("y", "yes"):
            return "Not switching."
    body: dict[str, Any] = dict(options, profile=tier)
    if keep_state:
        body["keep_state"] = True
        kid = save_own_state(env)
        if kid:
            body["state_saved_by"] = kid
    nxt = next_url(env)
    if nxt:
        body["next"] = nxt
    status, reply = api_request("POST", "switch", body, env=env)
    if status == 202 or (200 <= status < 300):
        link = progress_link((reply or {}).get("progress_url", ""), env)
        if keep_state:
            return (
                f"Switching to {name} ({tier}).\n"
                f"Follow the progress at: {link}\n"
                "Your kernels' variables were saved to your volume; they come back on "
                f"{name} (%ds_compute state shows what was saved and restored)."
            )
        return (
            f"Switching to {name} ({tier}).\n"
            f"Follow the progress at: {link}\n"
            "This kernel will restart when the server moves: what is in memory is lost; "
            "files on your volume (and your environments) come along."
        )
    msg = _message(status, reply)
    if status == 409:
        return f"Not switching: {msg}"
    raise DSComputeError(f"Switch to {tier} refused: {msg} (HTTP {status})")


def run(
    line: str,
    env: Mapping[str, str] | None = None,
    ask: Callable[[str], str] = input,
    say: Callable[[str], Any] = print,
) -> str:
    """Run one ``%ds_compute`` command line; the text to show (``say`` shows
    what comes before a question or a switch)."""
    env = os.environ if env is None else env
    try:
        args = shlex.split(line)
    except ValueError as e:
        raise BadUsage(f"cannot parse {line!r}: {e}") from None
    cmd, rest = (args[0], args[1:]) if args else ("status", [])
    if cmd in ("help", "-h", "--help"):
        return USAGE
    simple = {
        "status": ("status", format_status),
        "volume": ("status", format_volume),
        "cost": ("status", format_cost),
        "tiers": ("tiers", format_tiers),
        "envs": ("envs?wait=5", format_envs),
        "state": ("state", format_state),
    }
    if cmd in simple:
        if rest:
            raise BadUsage(f"{cmd} takes no arguments\n\n{USAGE}")
        path, fmt = simple[cmd]
        return fmt(get_json(path, env))
    if cmd == "switch":
        return switch(rest, env, ask, say)
    if cmd == "request":
        return request(rest, env)
    if cmd == "requests":
        if rest:
            raise BadUsage(f"requests takes no arguments\n\n{USAGE}")
        return format_requests(get_json("requests", env))
    raise BadUsage(f"unknown command {cmd!r}\n\n{USAGE}")


# -- IPython ------------------------------------------------------------------
try:
    from IPython.core.error import UsageError
    from IPython.core.magic import Magics, line_magic, magics_class
except ImportError:  # pragma: no cover - the pure functions still work
    Magics = None

if Magics is not None:

    @magics_class
    class DSComputeMagics(Magics):
        @line_magic
        def ds_compute(self, line: str = ""):
            """See and switch this server's compute tier.

            Usage::

              %ds_compute status              this server: tier, time and cost on it, volume
              %ds_compute tiers               the tiers you may switch to
              %ds_compute switch TIER [--yes] [KEY=VALUE ...]
                                              move this server (and its volume) to TIER;
                                              asks first unless --yes, because the kernel
                                              restarts. KEY=VALUE are tier options.
              %ds_compute volume              your volume: where, how full, notebook dir?
              %ds_compute cost                $/h of this tier and the cost so far
              %ds_compute envs                environments on your volume: kernels, sizes,
                                              last use, broken ones and why
              %ds_compute switch TIER --keep-state
                                              the kernels' variables come along
              %ds_compute state               the last save/restore of the variables
              %ds_compute request TIER --for 7d --why "REASON"
                                              ask for a tier you may not use, for a while
              %ds_compute requests            your requests and their answers

            Your files and the environments under ~/envs (and conda envs on the
            volume) move with the server; what is in the kernel's memory does not.
            """
            try:
                text = run(line, ask=input, say=print)
            except BadUsage as e:
                raise UsageError(str(e)) from None
            except DSComputeError as e:
                print(str(e))
                return None
            print(text)
            return None


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(DSComputeMagics)


def unload_ipython_extension(ipython) -> None:
    ipython.magics_manager.magics["line"].pop("ds_compute", None)
