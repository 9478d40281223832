"""Grid intensity from a CSV time series.

Accepted forms (the header decides):

* Electricity Maps exports, older header set: ``Datetime (UTC)``,
  ``Carbon Intensity gCO₂eq/kWh (direct)``, ``Carbon Intensity gCO₂eq/kWh (LCA)``,
  ``Data Estimated`` ...
* Electricity Maps exports, newer header set: ``Datetime (UTC)``,
  ``Carbon intensity gCO₂eq/kWh (direct)``, ``Carbon intensity gCO₂eq/kWh (Life cycle)`` ...
* plain: ``time,intensity_g_per_kwh`` (or ``time,intensity``), with an optional ``estimated``.

Each row's value holds from its time until the next row's time. A row with an empty value (an
hour the export has no value for) holds the previous value, **marked estimated**, until the next row.
"""

from __future__ import annotations

import bisect
import csv
import math
from pathlib import Path
from typing import Literal

from pydantic import Field

from gridwatt.collector.intensity.base import (
    MAX_INTENSITY_G_PER_KWH,
    EmissionFactor,
    IntensitySeries,
    IntensityUnavailable,
)
from gridwatt.collector.intensity.registry import PROVIDERS, ProviderTable
from gridwatt.collector.stepseries import StepSeries
from gridwatt.configfile import ConfigError, ConfigPath
from gridwatt.textfile import checked_lines
from gridwatt.timeutil import NS_PER_S, format_time_ns, parse_time_ns


class CsvConfig(ProviderTable):
    """A CSV time series (Electricity Maps export or ``time,intensity_g_per_kwh``)."""

    kind: Literal["csv"]
    path: ConfigPath
    emission_factor: EmissionFactor = "lifecycle"
    #: unset: the file's values hold at all times; set: ranges outside the file are unavailable
    max_hold_s: float | None = Field(default=None, ge=0)


class IntensityFileError(Exception):
    """The CSV cannot be used; the message names file, line and reason."""


def _norm(header: str) -> str:
    return header.strip().lower().replace("₂", "2").replace("co2eq", "co2e")


def _find_column(headers: list[str], emission_factor: EmissionFactor) -> int | None:
    normed = [_norm(h) for h in headers]
    for i, h in enumerate(normed):
        if "carbon intensity" not in h:
            continue
        if emission_factor == "direct" and "(direct)" in h:
            return i
        if emission_factor == "lifecycle" and ("(lca)" in h or "(life cycle)" in h or "(lifecycle)" in h):
            return i
    for name in ("intensity_g_per_kwh", "intensity", "carbon_intensity"):
        if name in normed:
            return normed.index(name)
    return None


def load_intensity_csv(path: Path, emission_factor: EmissionFactor = "lifecycle") -> IntensitySeries:
    """Read a CSV file into an IntensitySeries; raise IntensityFileError on any bad row."""
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise IntensityFileError(f"{path}: cannot open: {exc.strerror}") from None
    with fh:
        reader = csv.reader(checked_lines(fh, path, IntensityFileError))
        try:
            headers = next(reader)
        except StopIteration:
            raise IntensityFileError(f"{path}: empty file") from None
        normed = [_norm(h) for h in headers]
        time_col = next(
            (i for i, h in enumerate(normed) if h in ("datetime (utc)", "time", "datetime", "timestamp")),
            None,
        )
        value_col = _find_column(headers, emission_factor)
        if time_col is None:
            raise IntensityFileError(f"{path}: no time column (expected 'Datetime (UTC)' or 'time')")
        if value_col is None:
            raise IntensityFileError(
                f"{path}: no {emission_factor} intensity column (expected e.g. "
                f"'Carbon Intensity gCO₂eq/kWh (LCA)' or 'intensity_g_per_kwh')"
            )
        est_col = next((i for i, h in enumerate(normed) if h in ("data estimated", "estimated")), None)
        rows: list[tuple[int, float, bool]] = []
        seen: dict[int, int] = {}  # time → first line with it
        empty: list[int] = []  # times of rows without a value
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            try:
                t_ns = parse_time_ns(row[time_col])
            except (ValueError, IndexError):
                raise IntensityFileError(
                    f"{path}:{line_no}: bad time {row[time_col] if time_col < len(row) else ''!r}"
                ) from None
            raw = row[value_col].strip() if value_col < len(row) else ""
            if raw == "":
                empty.append(t_ns)  # a gap: the previous value holds, marked estimated
                continue
            try:
                value = float(raw)
            except ValueError:
                raise IntensityFileError(f"{path}:{line_no}: bad intensity {raw!r}") from None
            if not math.isfinite(value) or not 0 <= value <= MAX_INTENSITY_G_PER_KWH:
                raise IntensityFileError(f"{path}:{line_no}: intensity {raw!r} outside "
                                         f"[0, {MAX_INTENSITY_G_PER_KWH:g}] gCO2e/kWh")
            est = est_col is not None and est_col < len(row) and row[est_col].strip().lower() == "true"
            first_line = seen.setdefault(t_ns, line_no)
            if first_line != line_no:
                raise IntensityFileError(f"{path}:{line_no}: time {format_time_ns(t_ns)} is already on "
                                         f"line {first_line}")
            rows.append((t_ns, value, est))
    if not rows:
        raise IntensityFileError(f"{path}: no data rows")
    rows.sort()
    rows = _held_gaps(rows, empty)
    series = StepSeries(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))
    return IntensitySeries(series, f"csv:{path.name}", emission_factor)


def _held_gaps(rows: list[tuple[int, float, bool]], empty: list[int]) -> list[tuple[int, float, bool]]:
    """Rows plus, at each empty row's time, the previous value marked estimated (sorted rows in)."""
    if not empty:
        return rows
    known = {t for t, _, _ in rows}
    out = list(rows)
    times = [t for t, _, _ in rows]
    for t in sorted(set(empty) - known):
        i = bisect.bisect_right(times, t) - 1
        if i >= 0:
            out.append((t, rows[i][1], True))
    out.sort()
    return out


class CsvIntensity:
    """A zone's intensity read once from a CSV file.

    With ``max_hold_s`` set, a range that starts before the first row, or more than
    ``max_hold_s`` after the last row, raises IntensityUnavailable (so a fallback chain
    moves on) instead of stretching the file's first or last value; by default the
    file's values hold at every time.
    """

    def __init__(
        self, path: Path, emission_factor: EmissionFactor = "lifecycle", max_hold_s: float | None = None
    ) -> None:
        self._series = load_intensity_csv(path, emission_factor)
        self._max_hold_ns = None if max_hold_s is None else int(max_hold_s * NS_PER_S)
        self.source = self._series.source

    async def series(self, start_ns: int, end_ns: int) -> IntensitySeries:
        if self._max_hold_ns is not None:
            times = self._series.series.times_ns
            if start_ns < times[0] or start_ns > times[-1] + self._max_hold_ns:
                raise IntensityUnavailable(f"{self.source}: the file does not cover the asked range")
        return self._series


@PROVIDERS.register("csv", CsvConfig)
def csv_provider(cfg: CsvConfig) -> CsvIntensity:
    try:
        return CsvIntensity(cfg.path, cfg.emission_factor, cfg.max_hold_s)
    except IntensityFileError as exc:
        raise ConfigError(f"intensity csv: {exc}") from None
