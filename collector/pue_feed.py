"""PUE derived from a site's facility power feed: facility energy ÷ the IT energy the collector measured.

For a window ``[c, c + rack_resolution_s)`` of a site::

    ratio(c) = facility energy of the site in c (the feed's power step function integrated over c)
               ÷ IT energy of all racks of the site in c (sum of ``it_energy_kwh`` of their ``node`` points)

Emissions are computed when a batch is ingested, before the IT energy of its own windows is
complete, so the PUE used for window ``w`` is the ratio of an earlier, *complete* window:

* a window ``c`` is complete once every configured node of the site's racks has a ``node`` point in a
  later window (agents send in time order, so nothing of ``c`` is still to come);
* PUE(w) = clamp(ratio(c)) for the latest complete window ``c < w`` within ``max_lag_s`` of ``w`` that has
  IT energy stored and is covered by the feed; at least a one-window lag, usually one batch more;
* no such window (start-up, a node that has not reported for ``max_lag_s``, a gap in the feed):
  ``fallback_pue``;
* a ratio outside [pue_min, pue_max] is clamped, with one warning per window;
* a window's ratio is fixed the first time it is used (cached per process), so a batch resent
  later gets the same PUE; samples arriving later for that window do not change it.

The ``gpu``, ``node`` and ``rack`` points record the PUE actually used (their ``pue`` field).
"""

from __future__ import annotations

import bisect
import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gridwatt.collector import queries
from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.collector.pue import PueFileError
from gridwatt.collector.stepseries import StepSeries
from gridwatt.collector.store import series_rows
from gridwatt.textfile import checked_lines
from gridwatt.timeutil import NS_PER_S, format_time_ns, parse_time_ns

log = logging.getLogger("gridwatt.collector.pue_feed")

_POWER_COLUMNS = {"facility_power_w": 1.0, "facility_power_kw": 1000.0}


@dataclass(frozen=True)
class FacilityFeed:
    """Facility power of a site over time. Units: W.

    The feed covers ``[power_w.times_ns[0], end_ns)``; ``end_ns`` None means the last value holds on.
    """

    power_w: StepSeries
    end_ns: int | None
    source: str = ""

    @property
    def start_ns(self) -> int:
        return self.power_w.times_ns[0]


def load_facility_feed(path: Path) -> FacilityFeed:
    """Read ``time,facility_power_w`` (or ``facility_power_kw``) rows; header required.

    Each row holds until the next; the last row holds for one more step of the feed (the time
    between the last two rows), after which the feed is missing. A feed of one row holds on.
    """
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise PueFileError(f"{path}: cannot open: {exc.strerror}") from None
    rows: list[tuple[int, float]] = []
    with fh:
        reader = csv.DictReader(checked_lines(fh, path, PueFileError))
        names = set(reader.fieldnames or ())
        columns = [c for c in _POWER_COLUMNS if c in names]
        if "time" not in names or len(columns) != 1:
            raise PueFileError(
                f"{path}: header must have columns time and one of facility_power_w, facility_power_kw"
            )
        column = columns[0]
        scale = _POWER_COLUMNS[column]
        for line, row in enumerate(reader, start=2):
            try:
                t_ns = parse_time_ns(row["time"])
                power_w = float(row[column]) * scale
            except (ValueError, TypeError, AttributeError):
                raise PueFileError(f"{path}:{line}: bad row {row!r}") from None
            if not math.isfinite(power_w) or power_w < 0:
                raise PueFileError(f"{path}:{line}: {column} {row[column]} must be a finite number >= 0")
            rows.append((t_ns, power_w))
    if not rows:
        raise PueFileError(f"{path}: no rows")
    rows.sort()
    try:
        series = StepSeries(tuple(r[0] for r in rows), tuple(r[1] for r in rows))
    except ValueError as exc:
        raise PueFileError(f"{path}: {exc}") from None
    end_ns = None if len(rows) == 1 else 2 * rows[-1][0] - rows[-2][0]
    return FacilityFeed(series, end_ns, f"csv:{path.name}")


def feed_energy_kwh(feed: FacilityFeed, start_ns: int, end_ns: int) -> float | None:
    """Facility energy in [start_ns, end_ns) in kWh (pure); None unless the feed covers all of it."""
    if start_ns < feed.start_ns or (feed.end_ns is not None and end_ns > feed.end_ns):
        return None
    joules = sum(p * (b - a) / NS_PER_S for a, b, p in feed.power_w.pieces(start_ns, end_ns))
    return joules / J_PER_KWH


def pue_ratio(facility_kwh: float | None, it_kwh: float | None) -> float | None:
    """Facility ÷ IT energy (pure); None when either is missing or IT is not positive."""
    if facility_kwh is None or it_kwh is None or not it_kwh > 0:
        return None
    return facility_kwh / it_kwh


def clamp_pue(raw: float, pue_min: float, pue_max: float) -> float:
    """``raw`` limited to [pue_min, pue_max] (pure)."""
    return min(max(raw, pue_min), pue_max)


def merge_steps(times_ns: Sequence[int], values: Sequence[float]) -> StepSeries:
    """A StepSeries of the steps, leaving out steps that repeat the previous value (pure)."""
    keep_t = [times_ns[0]]
    keep_v = [values[0]]
    for t, v in zip(times_ns[1:], values[1:], strict=True):
        if v != keep_v[-1]:
            keep_t.append(t)
            keep_v.append(v)
    return StepSeries(tuple(keep_t), tuple(keep_v))


@dataclass(frozen=True)
class SiteRacks:
    """A site's racks and their configured nodes (all of whose IT energy the facility feed covers)."""

    name: str
    racks: tuple[str, ...]
    nodes: tuple[str, ...]


class QueryStore(Protocol):
    """What FacilityFeedPue needs of the store: InfluxQL reads (collector/store.py InfluxStore)."""

    async def query(self, q: str, method: str = "GET") -> list[dict[str, Any]]: ...

    def measurement(self, name: str) -> str: ...


class FacilityFeedPue:
    """A PueProvider for the racks of one site; see the module docstring for the semantics."""

    def __init__(
        self,
        site: SiteRacks,
        feed: FacilityFeed,
        store: QueryStore | None,
        resolution_s: int,
        pue_min: float = 1.0,
        pue_max: float = 3.0,
        fallback_pue: float = 1.58,
        max_lag_s: int = 3600,
    ) -> None:
        self.site = site
        self.feed = feed
        self.store = store
        self.resolution_ns = resolution_s * NS_PER_S
        self.pue_min = pue_min
        self.pue_max = pue_max
        self.fallback_pue = fallback_pue
        self.max_lag_windows = max(1, math.ceil(max_lag_s / resolution_s))
        #: reference window start → the (clamped) PUE it gave; sorted keys for lookups
        self._cache: dict[int, float] = {}
        self._cache_keys: list[int] = []
        self._waiting_for: frozenset[str] = frozenset()
        self.queries = 0

    async def series(self, start_ns: int, end_ns: int) -> StepSeries:
        """PUE for every window of [start_ns, end_ns); one InfluxQL request."""
        res = self.resolution_ns
        first = start_ns - start_ns % res
        windows = list(range(first, max(end_ns, first + 1), res))
        look_lo = first - self.max_lag_windows * res
        latest, it_kwh = await self._read(look_lo, windows[-1])
        boundary = self._boundary(latest, look_lo)
        complete = sorted(c for c in it_kwh if boundary is not None and c < boundary)
        clamped: list[str] = []
        values = [self._pue_for(w, complete, it_kwh, clamped) for w in windows]
        if clamped:
            log.warning("site %r: feed-derived PUE outside [%g, %g], clamped: %s",
                        self.site.name, self.pue_min, self.pue_max, "; ".join(clamped))
        return merge_steps(windows, values)

    async def _read(self, look_lo: int, hi: int) -> tuple[dict[str, int], dict[int, float]]:
        """Each site node's latest window since look_lo, and the site's IT kWh per window in [look_lo, hi)."""
        if self.store is None:
            raise RuntimeError(f"site {self.site.name!r}: FacilityFeedPue has no store attached")
        res_s = self.resolution_ns // NS_PER_S
        self.queries += 1
        last_q, sums_q = await self.store.query(
            queries.site_it_energy(self.store.measurement, self.site.racks, look_lo, hi, res_s)
        )
        latest = {tags.get("node", ""): int(row["time"]) for tags, row in series_rows(last_q)}
        it_kwh = {int(row["time"]): float(row["sum"]) for _, row in series_rows(sums_q)
                  if row.get("sum") is not None}
        return latest, it_kwh

    def _boundary(self, latest: dict[str, int], look_lo: int) -> int | None:
        """Windows before this are complete (every node of the site reported later); None: none known."""
        waiting = frozenset(n for n in self.site.nodes if n not in latest)
        if waiting != self._waiting_for:
            self._waiting_for = waiting
            if waiting:
                log.warning("site %r: nodes %s have no window since %s; feed-derived PUE uses only windows "
                            "complete before (else fallback_pue %g)", self.site.name, sorted(waiting),
                            format_time_ns(look_lo), self.fallback_pue)
        if waiting or not latest:
            return None
        return min(latest.values())

    def _pue_for(self, w: int, complete: list[int], it_kwh: dict[int, float], clamped: list[str]) -> float:
        """PUE for window w: the ratio of the latest usable complete window before it, else the fallback."""
        lo = w - self.max_lag_windows * self.resolution_ns
        best: int | None = None
        best_raw: float | None = None
        i = bisect.bisect_left(complete, w)
        while i > 0 and complete[i - 1] >= lo:
            c = complete[i - 1]
            raw = pue_ratio(feed_energy_kwh(self.feed, c, c + self.resolution_ns), it_kwh[c])
            if raw is not None:
                best, best_raw = c, raw
                break
            i -= 1
        j = bisect.bisect_left(self._cache_keys, w)
        if j > 0 and self._cache_keys[j - 1] >= lo and (best is None or self._cache_keys[j - 1] >= best):
            return self._cache[self._cache_keys[j - 1]]
        if best is None or best_raw is None:
            return self.fallback_pue
        pue = clamp_pue(best_raw, self.pue_min, self.pue_max)
        if pue != best_raw:
            clamped.append(f"window {format_time_ns(best)} ratio {best_raw:.4g} -> {pue:g}")
        self._remember(best, pue)
        return pue

    def _remember(self, window: int, pue: float) -> None:
        self._cache[window] = pue
        bisect.insort(self._cache_keys, window)
        if len(self._cache_keys) > 8 * self.max_lag_windows + 64:
            for old in self._cache_keys[: len(self._cache_keys) // 2]:
                del self._cache[old]
            del self._cache_keys[: len(self._cache_keys) // 2]
