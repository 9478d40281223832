"""Late measured intensity replaces estimates: re-account stored samples, then their windows.

When a batch is accounted with estimated intensity (a value held past the data, a fallback
provider's value, or a value its provider marked estimated), the ingest notes the zone and the
batch's time range here. Every ``interval_s`` each noted stretch is asked of the zone's provider
again, past its cache (``revisit_series`` / ``forget``). The stored ``gpu`` points of that zone
and stretch that still carry estimated emissions are re-accounted with the new answer (pure
accounting, the rack's PUE at the sample's time) and, where anything changed, rewritten with
the same tags and timestamps: InfluxDB merges the new fields into the stored point, so the write
is idempotent and a replica or a resend doing the same leaves the same values. Their ``job``
points follow (each job's share is the stored ``fraction``), then the node, job-window and rack
windows are recomputed from the stored points as after any batch (collector/rollup.py).

A stretch is dropped once nothing in it rests on an estimate any more, or ``lookback_s`` after
it was last noted (the look-back bound: providers publish measured values within hours; see
collector/README.md). At most ``max_stretches`` stretches per zone are kept (the oldest are
dropped, with a warning). Pending stretches live in memory; at start the collector notes again
the hours of the last ``lookback_s`` (by sample time) whose stored samples still carry estimated
emissions (:meth:`EstimateRevisor.recover`), so a restart or a new replica picks them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gridwatt.collector import queries
from gridwatt.collector.accounting import J_PER_KWH, emissions_with_estimated
from gridwatt.collector.intensity.base import IntensityProvider, IntensitySeries, IntensityUnavailable
from gridwatt.collector.rollup import RackRollup
from gridwatt.collector.schema import gpu_key, job_key, string_field
from gridwatt.collector.stepseries import StepSeries
from gridwatt.collector.store import InfluxStore, QueryError, StoreUnavailable, series_rows
from gridwatt.collector.topology import Topology
from gridwatt.timeutil import NS_PER_S

log = logging.getLogger("gridwatt.collector.revisit")

#: re-account at most this much sample time per query, so one stretch never reads unbounded rows
CHUNK_NS = 3600 * NS_PER_S
#: stored and recomputed emissions closer than this (relative) are the same
_SAME_REL = 1e-12


@dataclass
class Stretch:
    """A time range of one zone accounted (partly) with estimated intensity."""

    start_ns: int
    end_ns: int
    deadline: float  # clock time after which it is no longer revisited


async def revisit_series(provider: IntensityProvider, start_ns: int, end_ns: int) -> IntensitySeries:
    """The provider's answer for the range, asked again past its cache."""
    revisit = getattr(provider, "revisit_series", None)
    if revisit is not None:
        result: IntensitySeries = await revisit(start_ns, end_ns)
        return result
    forget = getattr(provider, "forget", None)
    if forget is not None:
        forget(start_ns, end_ns)
    return await provider.series(start_ns, end_ns)


def _differs(a: float, b: float) -> bool:
    return abs(a - b) > _SAME_REL * max(abs(a), abs(b), 1e-9)


class EstimateRevisor:
    """See the module docstring."""

    def __init__(
        self,
        store: InfluxStore,
        rollup: RackRollup,
        topology: Topology,
        *,
        interval_s: float = 300.0,
        lookback_s: float = 48 * 3600.0,
        max_stretches: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.rollup = rollup
        self.topology = topology
        self.interval_s = interval_s
        self.lookback_s = lookback_s
        self.max_stretches = max_stretches
        self._clock = clock
        self.pending: dict[str, list[Stretch]] = {}
        self.points_rewritten = 0
        self.runs = 0
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def note(self, zone: str, start_ns: int, end_ns: int) -> None:
        """Remember that ``[start_ns, end_ns)`` of ``zone`` was accounted with estimated intensity."""
        self._add(zone, Stretch(start_ns, max(end_ns, start_ns + 1), self._clock() + self.lookback_s))

    def _add(self, zone: str, stretch: Stretch) -> None:
        merged = stretch
        kept: list[Stretch] = []
        for s in self.pending.get(zone, []):
            if s.end_ns < merged.start_ns or s.start_ns > merged.end_ns:
                kept.append(s)
            else:
                merged = Stretch(min(s.start_ns, merged.start_ns), max(s.end_ns, merged.end_ns),
                                 max(s.deadline, merged.deadline))
        kept.append(merged)
        if len(kept) > self.max_stretches:
            kept.sort(key=lambda s: s.deadline)
            dropped = len(kept) - self.max_stretches
            log.warning("zone %r: %d stretches with estimated intensity pending; the %d oldest are no "
                        "longer revisited (max_stretches)", zone, len(kept), dropped)
            kept = kept[dropped:]
        self.pending[zone] = sorted(kept, key=lambda s: s.start_ns)

    def start(self) -> None:
        """Revisit every ``interval_s`` in the background until :meth:`stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def recover(self) -> int:
        """Note the hours of the last ``lookback_s`` (sample time) whose stored samples still carry
        estimated emissions, so that a restarted collector (or a new replica) revisits them too.
        Returns the number of hours noted."""
        lookback_s = int(self.lookback_s)
        if lookback_s <= 0:
            return 0
        (res,) = await self.store.query(queries.estimated_hours(self.store.measurement, lookback_s))
        hours = 0
        for tags, row in series_rows(res):
            zone = tags.get("zone", "")
            if zone and row.get("count"):
                t = int(row["time"])
                self.note(zone, t, t + 3600 * NS_PER_S)
                hours += 1
        if hours:
            log.info("%d hours of stored samples with estimated intensity to revisit", hours)
        return hours

    async def _loop(self) -> None:
        try:
            await self.recover()
        except Exception as exc:  # the store may be down at start: only what is noted from now is revisited
            log.warning("could not read back the samples with estimated intensity to revisit: %s", exc)
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.run_once()
            except Exception as exc:  # a store or provider failure: the stretches stay for next time
                log.warning("revisiting estimated intensity failed (retried in %.0f s): %s",
                            self.interval_s, exc)

    async def run_once(self) -> int:
        """Revisit every pending stretch once; returns the number of gpu points rewritten."""
        async with self._lock:
            self.runs += 1
            now = self._clock()
            rewritten = 0
            for zone in list(self.pending):
                provider = self.topology.providers.get(zone)
                stretches = self.pending.pop(zone, [])  # stretches noted meanwhile start a new list
                for stretch in stretches:
                    if now > stretch.deadline or provider is None:
                        log.info("zone %r: %d-%d no longer revisited (look-back passed); its estimates stay",
                                 zone, stretch.start_ns, stretch.end_ns)
                        continue
                    try:
                        n, estimated_left = await self._revisit(zone, provider, stretch)
                    except (IntensityUnavailable, QueryError, StoreUnavailable) as exc:
                        log.debug("zone %r: revisit of %d-%d deferred: %s", zone, stretch.start_ns,
                                  stretch.end_ns, exc)
                        self._add(zone, stretch)
                        continue
                    except BaseException:
                        self._add(zone, stretch)
                        raise
                    rewritten += n
                    if estimated_left:
                        self._add(zone, stretch)
            self.points_rewritten += rewritten
            return rewritten

    async def _revisit(self, zone: str, provider: IntensityProvider, stretch: Stretch) -> tuple[int, bool]:
        series = await revisit_series(provider, stretch.start_ns, stretch.end_ns)
        rewritten = 0
        estimated_left = False
        todo = [(t, min(t + CHUNK_NS, stretch.end_ns))
                for t in range(stretch.start_ns, stretch.end_ns, CHUNK_NS)]
        while todo:
            lo, hi = todo.pop(0)
            got = await self._reaccount(zone, series, lo, hi)
            if got is None:  # InfluxDB cut the answer short (max-row-limit): halve the chunk
                mid = lo + (hi - lo) // 2
                todo[:0] = [(lo, mid), (mid, hi)]
                continue
            rewritten += got[0]
            estimated_left = estimated_left or got[1]
        return rewritten, estimated_left

    async def _reaccount(
        self, zone: str, intensity: IntensitySeries, lo_ns: int, hi_ns: int
    ) -> tuple[int, bool] | None:
        """Re-account the gpu (and job) points of ``zone`` starting in [lo_ns, hi_ns) that carry
        estimated emissions; returns (gpu points rewritten, whether estimated emissions remain), or
        None when InfluxDB answered only part of the rows (a smaller range must be asked)."""
        (gpu_res,) = await self.store.query(
            queries.estimated_gpu_points(self.store.measurement, zone, lo_ns, hi_ns)
        )
        if gpu_res.get("partial") and hi_ns - lo_ns > NS_PER_S:
            return None
        gpu_rows = series_rows(gpu_res)
        if not gpu_rows:
            return 0, False
        racks = sorted({tags.get("rack", "") for tags, _ in gpu_rows})
        (job_res,) = await self.store.query(
            queries.estimated_job_fractions(self.store.measurement, racks, lo_ns, hi_ns)
        )
        if job_res.get("partial") and hi_ns - lo_ns > NS_PER_S:
            return None
        fractions: dict[tuple[str, str, int], list[tuple[str, str, float, str]]] = {}
        for tags, row in series_rows(job_res):
            key = (tags.get("node", ""), tags.get("gpu", ""), int(row["time"]))
            fraction = row.get("fraction")  # absent: a whole GPU (gpu_point_fields = "accounting")
            fractions.setdefault(key, []).append((tags.get("job_id", ""), tags.get("rack", ""),
                                                  1.0 if fraction is None else float(fraction),
                                                  tags.get("alias", "")))
        has_est = any(intensity.series.estimated)
        pues: dict[str, StepSeries | None] = {}
        lines: list[str] = []
        touched: dict[tuple[str, str], set[int]] = {}
        estimated_left = False
        rewritten = 0
        for tags, row in gpu_rows:
            node, rack = tags.get("node", ""), tags.get("rack", "")
            pue = await self._pue(pues, node, gpu_rows)
            if pue is None:
                continue
            changed, left = self._point_lines(zone, intensity, pue, tags, row, fractions, lines, has_est)
            estimated_left = estimated_left or left
            if changed:
                rewritten += 1
                start = int(row["time"])
                res = self.rollup.resolution_ns
                touched.setdefault((node, rack), set()).add(start - start % res)
        if lines:  # with the writer marks of the windows whose job points it rewrites
            marked: dict[str, set[int]] = {}
            for (node, _), windows in touched.items():
                marked.setdefault(node, set()).update(windows)
            result = await self.rollup.write_marked(marked, lines)
            if getattr(result, "rejected", None):
                log.error("zone %r: InfluxDB refused %d re-accounted points", zone, len(result.rejected))
        for (node, rack), windows in touched.items():
            await self.rollup.recompute(node, rack, zone, windows)
        return rewritten, estimated_left

    async def _pue(
        self, pues: dict[str, StepSeries | None], node: str,
        rows: list[tuple[dict[str, str], dict[str, Any]]],
    ) -> StepSeries | None:
        """The PUE of ``node``'s rack over all the rows' intervals (asked once per node and chunk)."""
        if node not in pues:
            placement = self.topology.locate(node)
            if placement is None:
                pues[node] = None
            else:
                lo = min(int(r["time"]) for _, r in rows)
                hi = max(int(r.get("end_ns") or r["time"]) for _, r in rows)
                pues[node] = await placement.pue_series(lo, max(hi, lo + 1))
        return pues[node]

    def _point_lines(
        self, zone: str, intensity: IntensitySeries, pue: StepSeries, tags: dict[str, str],
        row: dict[str, Any],
        fractions: dict[tuple[str, str, int], list[tuple[str, str, float, str]]], lines: list[str],
        has_est: bool,
    ) -> tuple[bool, bool]:
        node, rack, gpu, uuid = (tags.get(k, "") for k in ("node", "rack", "gpu", "uuid"))
        start = int(row["time"])
        end = int(row.get("end_ns") or start)
        energy_j = float(row.get("energy_j") or 0.0)
        fac, co2, est = emissions_with_estimated(energy_j, start, end, pue, intensity.series, has_est)
        old_co2 = float(row.get("co2e_g") or 0.0)
        old_est = float(row.get("estimated_co2e_g") or 0.0)
        if not (_differs(co2, old_co2) or _differs(est, old_est)):
            return False, est > 0
        eff_ci = co2 * J_PER_KWH / fac if fac > 0 else intensity.series.value_at(start)
        ef = string_field(intensity.factor_at(start))
        src = string_field(intensity.source_at(start))
        if self.store.config.gpu_point_fields == "accounting":  # the fields a gpu point has
            lines.append(f"{gpu_key(node, rack, zone, gpu, uuid)} co2e_g={co2!r},estimated_co2e_g={est!r},"
                         f"ef={ef} {start}")
        else:
            lines.append(
                f"{gpu_key(node, rack, zone, gpu, uuid)} "
                f"co2e_g={co2!r},estimated_co2e_g={est!r},intensity_g_per_kwh={eff_ci!r},"
                f"intensity_estimated={'true' if est > 0 else 'false'},intensity_source={src},ef={ef} {start}"
            )
        for job_id, job_rack, frac, alias in fractions.get((node, gpu, start), []):
            lines.append(  # the same series as the point's (its alias tag kept), so it overwrites
                f"{job_key(job_id, node, job_rack, gpu, alias)} "
                f"co2e_g={co2 * frac!r},estimated_co2e_g={est * frac!r},ef={ef} {start}"
            )
        return True, est > 0
