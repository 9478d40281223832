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

from gridwatt.collector.intensity.coverage import IntensityGap, Segment, clip, uncovered
from gridwatt.collector.stepseries import StepSeries
from gridwatt.timeutil import NS_PER_S, format_time_ns


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

    def segments(
        self, start_ns: int, end_ns: int, max_hold_ns: int
    ) -> tuple[list[Segment], list[tuple[int, int]]]:
        """What is known of ``[start_ns, end_ns)``: covered segments, and the stretches left uncovered.

        Each point covers its own period (``time_ns`` to ``end_ns``, or to the next point when
        ``end_ns`` is None), measured or estimated as the source said. Where no point covers a
        stretch, the value before it is held for at most ``max_hold_ns`` past the end of its period
        (and the first known value is extended back at most ``max_hold_ns``), **marked estimated**,
        wherever in the range the stretch is. What is still uncovered is returned as missing.
        """
        end_ns = max(end_ns, start_ns + 1)
        times = sorted(self._points)
        if not times:
            return [], [(start_ns, end_ns)]
        i = max(bisect_right(times, start_ns) - 1, 0)
        j = max(bisect_right(times, end_ns - 1), i + 1)
        segs: list[Segment] = []
        first = self._points[times[i]]
        if first.time_ns > start_ns:
            segs.append(Segment(first.time_ns - max_hold_ns, first.time_ns, first.g_per_kwh, True))
        for k in range(i, j):
            p = self._points[times[k]]
            next_t = times[k + 1] if k + 1 < len(times) else None
            own_end = p.end_ns if p.end_ns is not None else (next_t if next_t is not None else p.time_ns)
            if next_t is not None:
                own_end = min(own_end, next_t)
            if own_end > p.time_ns:
                segs.append(Segment(p.time_ns, own_end, p.g_per_kwh, p.estimated))
            hold_end = max(own_end, p.time_ns) + max_hold_ns
            if next_t is not None:
                hold_end = min(hold_end, next_t)
            if hold_end > own_end:
                segs.append(Segment(max(own_end, p.time_ns), hold_end, p.g_per_kwh, True))
        inside = clip(segs, start_ns, end_ns)
        return inside, uncovered(inside, start_ns, end_ns)

    def series(self, start_ns: int, end_ns: int, what: str, max_hold_ns: int) -> StepSeries:
        """Steps covering ``[start_ns, end_ns)`` (see :meth:`segments`).

        Raises IntensityGap (an IntensityUnavailable carrying the covered segments and the
        missing stretches) when any part of the range is not covered (none of it: no segments):
        a value is never held silently, nor past ``max_hold_ns``.
        """
        segs, missing = self.segments(start_ns, end_ns, max_hold_ns)
        if not segs:  # an answer (the data has nothing here), not a failure: an IntensityGap too
            newest = max(self._points, default=None)
            older = " (newest point is older)" if newest is not None and newest < start_ns else ""
            raise IntensityGap(f"{what}: no data for the asked range{older}", [], missing)
        if missing:
            a, b = missing[0]
            raise IntensityGap(
                f"{what}: no value for {len(missing)} stretch(es) of the asked range, the first "
                f"{format_time_ns(a)} to {format_time_ns(b)} (a value is held at most "
                f"{max_hold_ns / NS_PER_S / 3600:g} h)",
                segs, missing,
            )
        return StepSeries(
            tuple(s.start_ns for s in segs),
            tuple(s.g_per_kwh for s in segs),
            tuple(s.estimated for s in segs),
        )

    def forget(self, start_ns: int, end_ns: int) -> None:
        """Mark ``[start_ns, end_ns)`` not fetched, so that the next ``series`` asks the API again.

        The points stay until a new fetch replaces them (a later answer wins).
        """
        kept: list[tuple[int, int]] = []
        for s, e in self._covered:
            if e <= start_ns or s >= end_ns:
                kept.append((s, e))
                continue
            if s < start_ns:
                kept.append((s, start_ns))
            if e > end_ns:
                kept.append((end_ns, e))
        self._covered = kept
