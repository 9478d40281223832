"""Stretches of a time range covered by intensity values, and the stretches left uncovered.

A provider that can cover only part of an asked range raises :class:`IntensityGap`
with the ``Segment``\\ s it has and the ``missing`` stretches; the fallback chain asks
the next provider for the missing stretches only, and :func:`to_series` joins the
pieces into one :class:`IntensitySeries` whose steps keep their own source and
emission factor. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from gridwatt.collector.intensity.base import EmissionFactor, IntensitySeries, IntensityUnavailable
from gridwatt.collector.stepseries import StepSeries


@dataclass(frozen=True)
class Segment:
    """``g_per_kwh`` over ``[start_ns, end_ns)``; ``estimated`` when it is not a measured value."""

    start_ns: int
    end_ns: int
    g_per_kwh: float
    estimated: bool
    source: str = ""
    emission_factor: EmissionFactor = "lifecycle"


class IntensityGap(IntensityUnavailable):
    """Part of the asked range is covered (``segments``); ``missing`` stretches are not."""

    def __init__(self, message: str, segments: Sequence[Segment], missing: Sequence[tuple[int, int]]) -> None:
        super().__init__(message)
        self.segments = list(segments)
        self.missing = list(missing)


def clip(segments: Iterable[Segment], start_ns: int, end_ns: int) -> list[Segment]:
    """The parts of ``segments`` inside ``[start_ns, end_ns)``, in time order."""
    out = []
    for s in sorted(segments, key=lambda s: s.start_ns):
        a, b = max(s.start_ns, start_ns), min(s.end_ns, end_ns)
        if a < b:
            out.append(replace(s, start_ns=a, end_ns=b))
    return out


def uncovered(segments: Iterable[Segment], start_ns: int, end_ns: int) -> list[tuple[int, int]]:
    """The stretches of ``[start_ns, end_ns)`` no segment covers, in order."""
    gaps: list[tuple[int, int]] = []
    t = start_ns
    for s in sorted(segments, key=lambda s: s.start_ns):
        if s.end_ns <= t:
            continue
        if s.start_ns >= end_ns:
            break
        if s.start_ns > t:
            gaps.append((t, s.start_ns))
        t = max(t, s.end_ns)
    if t < end_ns:
        gaps.append((t, end_ns))
    return gaps


def from_series(s: IntensitySeries, start_ns: int, end_ns: int) -> list[Segment]:
    """The segments of a whole answer over ``[start_ns, end_ns)`` (the first step holds from start)."""
    ci = s.series
    out = []
    for a, b, value in ci.pieces(start_ns, end_ns):
        out.append(Segment(a, b, value, ci.is_estimated_at(a), s.source_at(a), s.factor_at(a)))
    return out


def to_series(segments: Sequence[Segment], start_ns: int, end_ns: int) -> IntensitySeries:
    """One series from segments that cover ``[start_ns, end_ns)`` with no hole (else IntensityUnavailable).

    ``source`` and ``emission_factor`` of the whole are those of the first segment; each step keeps
    its own in ``step_sources`` / ``step_factors``.
    """
    pieces = clip(segments, start_ns, max(end_ns, start_ns + 1))
    holes = uncovered(pieces, start_ns, max(end_ns, start_ns + 1))
    if not pieces or holes:
        raise IntensityUnavailable(f"intensity does not cover {holes or [(start_ns, end_ns)]}")
    steps = StepSeries(
        tuple(p.start_ns for p in pieces),
        tuple(p.g_per_kwh for p in pieces),
        tuple(p.estimated for p in pieces),
    )
    sources = tuple(p.source for p in pieces)
    factors = tuple(p.emission_factor for p in pieces)
    mixed = len(set(sources)) > 1 or len(set(factors)) > 1
    return IntensitySeries(
        steps, pieces[0].source, pieces[0].emission_factor,
        step_sources=sources if mixed else (), step_factors=factors if mixed else (),
    )
