"""PUE of a rack over time: a constant, inline steps, or a CSV schedule (time,pue)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from gridwatt.collector.stepseries import StepSeries
from gridwatt.timeutil import parse_time_ns

PUE_MIN, PUE_MAX = 1.0, 3.0


class PueFileError(Exception):
    """A PUE schedule that cannot be used; the message names file, line and reason."""


def load_pue_csv(path: Path) -> StepSeries:
    """Read ``time,pue`` rows (header required); each PUE holds until the next row."""
    try:
        fh = path.open(newline="")
    except OSError as exc:
        raise PueFileError(f"{path}: cannot open: {exc.strerror}") from None
    rows: list[tuple[int, float]] = []
    with fh:
        reader = csv.DictReader(fh)
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
    rows = sorted((parse_time_ns(t), p) for t, p in steps)
    return StepSeries(tuple(r[0] for r in rows), tuple(r[1] for r in rows))
