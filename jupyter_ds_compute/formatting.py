"""How prices, money, sizes, durations and resources read, everywhere.

One rule each, used by the spawn form, the progress page, the admin page and
the ``%ds_compute`` magic; ``labextension/src/format.ts`` mirrors it, and both
are tested against the same cases (``tests/format_cases.json``).

- :func:`price`: ``$0.05/h``, ``$1.20/h``, exact for small prices
  (``$0.004/h``, ``$0.125/h``: two decimals, more up to six when the price
  has them); ``no price`` for a tier without one.
- :func:`money`: ``$12.00``, ``$1,234.50``; a nonzero amount below a cent
  keeps up to four decimals (``$0.004``).
- :func:`size`: binary units, at most one decimal, none when it is whole:
  ``512 B``, ``512 MiB``, ``1.5 GiB``, ``2 GiB``.
- :func:`duration`: ``45 s``, ``5 min``, ``1 h 05 min``, ``2 h``,
  ``2 d 3 h``, ``3 d`` (rounded down to the unit shown).
- :func:`hours`: how many hours a budget buys, rounded down: ``0 h``,
  ``< 0.1 h``, ``0.5 h``, ``2 h``, ``9.9 h``, ``24 h``, ``1,234 h``.
- :func:`cores`, :func:`gpus`, :func:`percent`.

Missing values (``None``, not a number) give ``""``: the caller decides what
an unknown reads as. This module imports only the standard library: the
magic's copy on a kernel's path (see ``serverext/kernelspecs.py``) uses it.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["NO_PRICE", "cores", "duration", "gpus", "hours", "money", "percent", "price", "size"]

#: what a tier without a price (``hourly_cost`` null) shows instead of one
NO_PRICE = "no price"

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _decimals(x: float, least: int, most: int) -> str:
    """``x`` with ``least`` to ``most`` decimals (trailing zeros beyond ``least``
    dropped) and thousands separators."""
    text = f"{x:,.{most}f}"
    if most > least:
        whole, _, frac = text.partition(".")
        frac = frac.rstrip("0").ljust(least, "0")
        text = f"{whole}.{frac}" if frac else whole
    return text


def _dollars(x: float, most: int) -> str:
    sign = "-" if x < 0 and round(x, most) != 0 else ""
    return f"{sign}${_decimals(abs(x), 2, most)}"


def money(amount: Any) -> str:
    """``$12.00``, ``$1,234.50``, ``$0.004`` (below a cent: up to 4 decimals)."""
    x = _number(amount)
    if x is None:
        return ""
    return _dollars(x, 2 if x == 0 or abs(x) >= 0.01 else 4)


def price(per_hour: Any) -> str:
    """``$0.05/h``, ``$1.20/h``, ``$0.004/h``; :data:`NO_PRICE` for ``None``."""
    if per_hour is None:
        return NO_PRICE
    x = _number(per_hour)
    return "" if x is None else f"{_dollars(x, 6)}/h"


def size(num_bytes: Any) -> str:
    """``512 B``, ``1.5 KiB``, ``512 MiB``, ``2 GiB`` (one decimal at most)."""
    x = _number(num_bytes)
    if x is None:
        return ""
    sign, x = ("-" if x < 0 else ""), abs(x)
    unit = 0
    while unit < len(_UNITS) - 1 and round(x / 1024**unit, 1) >= 1024:
        unit += 1
    if unit == 0:
        return f"{sign}{round(x)} B"
    value = round(x / 1024**unit, 1)
    text = f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    return f"{sign}{text} {_UNITS[unit]}"


def duration(seconds: Any) -> str:
    """``45 s``, ``5 min``, ``1 h 05 min``, ``2 h``, ``2 d 3 h`` (negative: ``0 s``)."""
    x = _number(seconds)
    if x is None:
        return ""
    s = int(max(0.0, x) + 0.5)  # round half up, as Math.round does
    if s < 60:
        return f"{s} s"
    minutes = s // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def hours(n: Any) -> str:
    """``0 h``, ``< 0.1 h``, ``2.5 h``, ``24 h``, ``1,234 h``: rounded down (what a
    budget buys is never overstated); one decimal below 10 h."""
    x = _number(n)
    if x is None:
        return ""
    if x <= 0:
        return "0 h"
    if x < 0.1:
        return "< 0.1 h"
    if x < 10:
        text = f"{math.floor(x * 10 + 1e-9) / 10:.1f}"
        text = text[:-2] if text.endswith(".0") else text
    else:
        text = f"{math.floor(x + 1e-9):,}"
    return f"{text} h"


def cores(n: Any) -> str:
    """``1 CPU``, ``0.5 CPU``, ``4 CPUs`` (up to two decimals)."""
    x = _number(n)
    if x is None:
        return ""
    text = _decimals(round(x, 2), 0, 2)
    return f"{text} CPU{'s' if round(x, 2) > 1 else ''}"


def gpus(n: Any) -> str:
    """``no GPU``, ``1 GPU``, ``2 GPUs``."""
    x = _number(n) or 0
    if x <= 0:
        return "no GPU"
    count = int(x) if x == int(x) else x
    return f"{count} GPU{'s' if x > 1 else ''}"


def percent(fraction: Any) -> str:
    """``85%`` of a fraction (rounded down: 99.9% used is not "100%")."""
    x = _number(fraction)
    if x is None:
        return ""
    return f"{math.floor(max(0.0, x) * 100 + 1e-9)}%"
