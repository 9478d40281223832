"""Server-rendered SVG charts (pure: numbers in, markup out).

One chart is a time axis (UTC hours) and one value axis, as a line or as bars. Every point
carries its value in a ``data-value`` attribute, so tests can read the plotted numbers back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from gridwatt.timeutil import format_time_ns

WIDTH, HEIGHT = 520, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 36


def nice_max(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``v`` (the top of the value axis)."""
    if v <= 0 or not math.isfinite(v):
        return 1.0
    exp = math.floor(math.log10(v))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        top = m * 10.0**exp
        if top >= v * (1 - 1e-12):
            return top
    return 10.0 ** (exp + 1)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.3g}"
    return f"{v:.2g}"


def chart(title: str, unit: str, times_ns: Sequence[int], values: Sequence[float], step_ns: int,
          kind: str = "line", chart_id: str = "") -> str:
    """An SVG chart of ``values`` at ``times_ns`` (each covering ``step_ns``); ``kind``: line | bar."""
    n = len(values)
    ident = escape(chart_id or title.lower().replace(" ", "-"))
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" id="{ident}" class="chart" width="{WIDTH}" '
            f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">'
            f'<title>{escape(title)} ({escape(unit)})</title>'
            f'<text x="{LEFT}" y="16" class="ct">{escape(title)} ({escape(unit)})</text>')
    if n == 0:
        return head + f'<text x="{LEFT}" y="{HEIGHT // 2}">no data</text></svg>'
    t0, t1 = times_ns[0], times_ns[-1] + step_ns
    top = nice_max(max(values))
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - t0) / (t1 - t0) * pw

    def y(v: float) -> float:
        return TOP + ph - v / top * ph

    parts = [head]
    for k in range(5):  # value grid and labels
        v = top * k / 4
        parts.append(f'<line x1="{LEFT}" y1="{y(v):.1f}" x2="{LEFT + pw}" y2="{y(v):.1f}" class="grid"/>'
                     f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    ticks = max(1, math.ceil(n / 5))
    for i in range(0, n, ticks):  # time labels (UTC)
        label = format_time_ns(times_ns[i])[5:16].replace("T", " ")
        parts.append(f'<text x="{x(times_ns[i]):.1f}" y="{HEIGHT - 14}" text-anchor="start">{label}</text>')
    if kind == "bar":
        bw = max(1.0, pw / n - 2)
        for t, v in zip(times_ns, values, strict=True):
            parts.append(f'<rect class="bar" x="{x(t) + 1:.1f}" y="{y(v):.1f}" width="{bw:.1f}" '
                         f'height="{TOP + ph - y(v):.1f}" data-value="{v!r}"><title>'
                         f'{format_time_ns(t)}: {_fmt(v)} {escape(unit)}</title></rect>')
    else:
        pts = " ".join(f"{x(t + step_ns / 2):.1f},{y(v):.1f}" for t, v in zip(times_ns, values, strict=True))
        parts.append(f'<polyline class="line" points="{pts}"/>')
        for t, v in zip(times_ns, values, strict=True):
            parts.append(f'<circle class="pt" cx="{x(t + step_ns / 2):.1f}" cy="{y(v):.1f}" r="2.5" '
                         f'data-value="{v!r}"><title>{format_time_ns(t)}: {_fmt(v)} {escape(unit)}</title>'
                         '</circle>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" class="axis"/></svg>')
    return "".join(parts)
