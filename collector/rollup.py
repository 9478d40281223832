"""Rack-level windows, recomputed from the stored per-GPU points after every write.

A rack window is never accumulated in memory: after a batch is stored, every
window it touched is recomputed from all ``gpu`` points of that rack in that
window, and written with a deterministic tag set and timestamp. So a resent
batch, a late sample, or a batch split differently all leave the same value.
Recomputes of one rack are serialised, so a slower recompute can never
overwrite a newer one from this collector.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.collector.lineproto import tag
from gridwatt.collector.store import InfluxStore, quote_string, series_rows

log = logging.getLogger("gridwatt.collector.rollup")

NS_PER_S = 1_000_000_000
_SUMS = ("e", "f", "c", "d", "u", "i", "ie")


def rack_lines(rack: str, zone: str, windows: dict[int, dict[str, Any]]) -> list[str]:
    """Render aggregated windows (window start → sums) as ``rack`` points (pure)."""
    lines = []
    rack_t, zone_t = tag(rack), tag(zone)
    for start_ns, w in sorted(windows.items()):
        e, f, c, d = w["e"], w["f"], w["c"], w["d"]
        pue = f / e if e > 0 else 0.0
        intensity = c * J_PER_KWH / f if f > 0 else 0.0
        mean_util = w["u"] / d if d > 0 else 0.0
        lines.append(
            f"rack,rack={rack_t},zone={zone_t} it_energy_kwh={e / J_PER_KWH!r},"
            f"facility_energy_kwh={f / J_PER_KWH!r},co2e_g={c!r},co2e_kg={c / 1000!r},pue={pue!r},"
            f"intensity_g_per_kwh={intensity!r},gpu_count={w['n']}i,gpu_seconds={d!r},"
            f"mean_util_pct={mean_util!r},idle_s={w['i']!r},idle_energy_kwh={w['ie'] / J_PER_KWH!r},"
            f"nodes={w['nodes']}i {start_ns}"
        )
    return lines


class RackRollup:
    """Recomputes the rack windows a batch touched (see the module docstring)."""

    def __init__(self, store: InfluxStore, resolution_s: int) -> None:
        self.store = store
        self.resolution_ns = resolution_s * NS_PER_S
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def aggregate(self, rack: str, lo_ns: int, hi_ns: int) -> dict[int, dict[str, Any]]:
        """Sums per window of all gpu points of ``rack`` in [lo_ns, hi_ns)."""
        res_s = self.resolution_ns // NS_PER_S
        q = (
            'SELECT sum("energy_j") AS e, sum("facility_energy_j") AS f, sum("co2e_g") AS c, '
            'sum("duration_s") AS d, sum("util_pct_s") AS u, sum("idle_s") AS i, '
            'sum("idle_energy_j") AS ie FROM "gpu" '
            f"WHERE \"rack\" = {quote_string(rack)} AND time >= {lo_ns} AND time < {hi_ns} "
            f"GROUP BY time({res_s}s), \"node\", \"gpu\" fill(none)"
        )
        (result,) = await self.store.query(q)
        windows: dict[int, dict[str, Any]] = {}
        nodes: dict[int, set[str]] = defaultdict(set)
        for tags, row in series_rows(result):
            w = windows.setdefault(int(row["time"]), dict.fromkeys(_SUMS, 0.0) | {"n": 0})
            for key in _SUMS:
                w[key] += row[key] or 0.0
            w["n"] += 1
            nodes[int(row["time"])].add(tags.get("node", ""))
        for t, w in windows.items():
            w["nodes"] = len(nodes[t])
        return windows

    async def recompute(self, rack: str, zone: str, window_starts: set[int]) -> int:
        """Recompute and write the given windows of one rack; returns the number of rack points."""
        if not window_starts:
            return 0
        async with self._locks[rack]:
            lo = min(window_starts)
            hi = max(window_starts) + self.resolution_ns
            windows = await self.aggregate(rack, lo, hi)
            lines = rack_lines(rack, zone, {t: w for t, w in windows.items() if t in window_starts})
            if lines:
                result = await self.store.write_lines(lines)
                for index, (status, reason) in result.rejected.items():
                    log.error("rack %r: InfluxDB refused a rack window (HTTP %d): %s | %s",
                              rack, status, reason, lines[index][:200])
            return len(lines)
