"""PUE of a rack over time: a constant, inline steps, or a CSV schedule (time,pue).

Every rack's PUE comes from a :class:`PueProvider`: :class:`StaticPue` for the three
configured kinds here, ``FacilityFeedPue`` (collector/pue_feed.py) for a PUE derived from
a site's facility power feed and the IT energy the collector measured.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gridwatt.collector.stepseries import StepSeries
from gridwatt.textfile import checked_lines
from gridwatt.timeutil import parse_time_ns

PUE_MIN, PUE_MAX = 1.0, 3.0


class PueFileError(Exception):
    """A PUE schedule or feed that cannot be used; the message names file, line and reason."""


class PueProvider(Protocol):
    """Gives a rack's PUE (dimensionless) over a time range."""

    async def series(self, start_ns: int, end_ns: int) -> StepSeries:
        """PUE covering [start_ns, end_ns) as a step function of time."""
        ...


@dataclass(frozen=True)
class StaticPue:
    """A PUE known from the config (constant, inline schedule or CSV): no I/O."""

    pue: StepSeries

    async def series(self, start_ns: int, end_ns: int) -> StepSeries:
        return self.pue


def load_pue_csv(path: Path) -> StepSeries:
    """Read ``time,pue`` rows (header required); each PUE holds until the next row."""
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise PueFileError(f"{path}: cannot open: {exc.strerror}") from None
    rows: list[tuple[int, float]] = []
    with fh:
        reader = csv.DictReader(checked_lines(fh, path, PueFileError))
        if not reader.fieldnames or not {"time", "pue"} <= set(reader.fieldnames):
            raise PueFileError(f"{path}: header must have columns time,pue")
        for line, row in enumerate(reader, start=2):
            try:
                t_ns = parse_time_ns(row["time"])
                pue = float(row["pue"])
            except (ValueError, TypeError):
                raise PueFileError(f"{path}:{line}: bad row {row!r}") from None
            if not math.isfinite(pue) or not PUE_MIN <= pue <= PUE_MAX:
                raise PueFileError(f"{path}:{line}: pue {pue} outside [{PUE_MIN}, {PUE_MAX}]")
            rows.append((t_ns, pue))
    if not rows:
        raise PueFileError(f"{path}: no rows")
    rows.sort()
    try:
        return StepSeries(tuple(r[0] for r in rows), tuple(r[1] for r in rows))
    except ValueError as exc:
        raise PueFileError(f"{path}: {exc}") from None


def pue_from_steps(steps: list[tuple[str, float]]) -> StepSeries:
    """A schedule of (ISO time, PUE) steps, in any order."""
    rows = sorted((parse_time_ns(t), p) for t, p in steps)
    return StepSeries(tuple(r[0] for r in rows), tuple(r[1] for r in rows))
