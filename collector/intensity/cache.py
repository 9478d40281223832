"""A cache of intensity points by time range, shared by the API providers.

It remembers which time ranges have been fetched (``covered``) and every point
fetched. ``missing(start, end)`` says which parts of a range still need fetching,
so a node that flushes its spool hours later costs one fetch of the historical
range, not one per batch.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field

from gridwatt.collector.intensity.base import IntensityUnavailable
from gridwatt.collector.stepseries import StepSeries


@dataclass(frozen=True)
class Point:
    """One intensity value: from ``time_ns`` to ``end_ns`` (None: until the next point)."""

    time_ns: int
    g_per_kwh: float
    estimated: bool
    end_ns: int | None = None


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


@dataclass
class RangeCache:
    """Points by time and the ranges known to be fetched. Not thread-safe; use from one loop."""

    _points: dict[int, Point] = field(default_factory=dict)
    _covered: list[tuple[int, int]] = field(default_factory=list)

    def missing(self, start_ns: int, end_ns: int) -> list[tuple[int, int]]:
        """The parts of ``[start_ns, end_ns)`` not yet covered, in order."""
        gaps: list[tuple[int, int]] = []
        t = start_ns
        for s, e in self._covered:
            if e <= t:
                continue
            if s >= end_ns:
                break
            if s > t:
                gaps.append((t, s))
            t = max(t, e)
            if t >= end_ns:
                break
        if t < end_ns:
            gaps.append((t, end_ns))
        return gaps

    def add(self, points: Iterable[Point], covered: tuple[int, int] | None = None) -> None:
        """Store points (a later fetch replaces a point at the same time) and mark a range fetched."""
        for p in points:
            self._points[p.time_ns] = p
        if covered is not None and covered[1] > covered[0]:
            self._covered = _merge([*self._covered, covered])

    def series(self, start_ns: int, end_ns: int, what: str, max_hold_ns: int) -> StepSeries:
        """Steps covering ``[start_ns, end_ns)``: the last point at or before start and all inside.

        Values held beyond the data are marked estimated: if the first known point is
        after ``start_ns`` its value is extended back to ``start_ns`` as a separate
        estimated step, and if the last point ends (``end_ns``) before ``end_ns`` its
        value goes on as an estimated step from there. A point is not held longer
        than ``max_hold_ns`` past its time to reach ``start_ns`` (stale data is no data).
        """
        times = sorted(self._points)
        end_ns = max(end_ns, start_ns + 1)
        i = max(bisect_right(times, start_ns) - 1, 0)
        j = max(bisect_right(times, end_ns - 1), i + 1)
        if not times or times[i] >= end_ns:
            raise IntensityUnavailable(f"{what}: no data for the asked range")
        if times[i] < start_ns - max_hold_ns:
            raise IntensityUnavailable(f"{what}: no data for the asked range (newest point is older)")
        chosen = [self._points[t] for t in times[i:j]]
        if chosen[0].time_ns > start_ns:
            chosen.insert(0, Point(start_ns, chosen[0].g_per_kwh, True, chosen[0].time_ns))
        last = chosen[-1]
        if last.end_ns is not None and last.time_ns < last.end_ns < end_ns:
            chosen.append(Point(last.end_ns, last.g_per_kwh, True))
        return StepSeries(
            tuple(p.time_ns for p in chosen),
            tuple(p.g_per_kwh for p in chosen),
            tuple(p.estimated for p in chosen),
        )
