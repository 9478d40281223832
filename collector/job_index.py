"""An in-memory index of the per-job windows by hour and rack, so listings, usage and reports answer
without scanning InfluxDB (whose cost grows with the number of job series: a month of 10,000 jobs
takes seconds to group).

The index holds, per hour, job and rack, the sums of the ``job_window`` points (energies, emissions,
GPU-seconds, ...) and the latest window end; per job, who ran it, its nodes and its first window.
It is filled from InfluxDB (the record) and kept fresh three ways:

* hours this collector has just stored samples for (``note``, the ingest hook) are read again before
  the next answer, so a listing shows what was stored before it;
* every ``refresh_s`` the last ``lookback_s`` of sample time (late samples, estimate revisits,
  other replicas) is read again;
* every ``full_refresh_s`` everything is (backfill older than the look-back by another replica).

A range is taken to whole hours (``since`` down, ``until`` up). The index is bounded to
``max_buckets`` (job, rack, hour) entries (about 0.7 KB each: 500,000 take about 350 MB); past it
the oldest hours are dropped and a range that reaches before the oldest hour held is answered by
reading InfluxDB directly (``complete_from_ns``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

from gridwatt.collector import queries
from gridwatt.collector.listings import WHO, JobSums
from gridwatt.collector.store import InfluxStore, series_rows

log = logging.getLogger("gridwatt.collector.job_index")

HOUR_NS = 3600 * 1_000_000_000
_SUMS = ("e", "f", "c", "ce", "g", "u", "i", "ie")
#: More hours than this in one batch's span: read everything again instead of hour by hour.
MAX_NOTED_HOURS = 1000


def hour_floor(t_ns: int) -> int:
    return t_ns - t_ns % HOUR_NS


def hour_ceil(t_ns: int) -> int:
    return -hour_floor(-t_ns)


@dataclass(slots=True)
class HourSums:
    """One job on one rack in one hour: sums (J, g, GPU-s) in _SUMS order, and the latest window end."""

    sums: tuple[float, ...]
    end_ns: int


@dataclass
class _Job:
    who: dict[str, str] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)
    first_window_ns: int = 0


@dataclass(slots=True)
class _JobTotals:
    """One job over every hour the index holds: its first and last hour, sums (_SUMS order), latest end."""

    first_hour: int
    last_hour: int
    sums: tuple[float, ...]
    end_ns: int


class JobIndex:
    """See the module docstring."""

    def __init__(self, store: InfluxStore, lookback_s: float = 48 * 3600.0, refresh_s: float = 60.0,
                 full_refresh_s: float = 6 * 3600.0, max_buckets: int = 500_000) -> None:
        self.store = store
        self.lookback_ns = int(lookback_s * 1e9)
        self.refresh_s = refresh_s
        self.full_refresh_s = full_refresh_s
        self.max_buckets = max_buckets
        self._hours: dict[int, dict[tuple[str, str], HourSums]] = {}
        #: the same entries job-major, (hour, rack) -> sums, and per-job totals recomputed lazily for the
        #: jobs whose hours changed: a range holding a job whole takes its totals without a per-hour sum
        self._by_job: dict[str, dict[tuple[int, str], HourSums]] = {}
        self._totals: dict[str, _JobTotals] = {}
        self._stale: set[str] = set()
        #: answers for jobs held whole by a range (the same whatever the range), built once per load
        self._whole: dict[str, JobSums] = {}
        self._jobs: dict[str, _Job] = {}
        self._dirty: set[int] = set()
        self._full_at = -math.inf
        self._refreshed_at = -math.inf
        self._lock = asyncio.Lock()
        #: The oldest hour whose data is whole in the index (None: all of it).
        self.complete_from_ns: int | None = None
        self.loads = 0
        #: answers of ``jobs`` since the last load (the index is unchanged between loads)
        self._answers: dict[tuple[int | None, int | None, bool], dict[str, JobSums]] = {}

    def note(self, node: str, rack: str, first_window_ns: int, max_end_ns: int) -> None:
        """Ingest hook: samples from ``first_window_ns`` to ``max_end_ns`` were stored."""
        lo = hour_floor(first_window_ns)
        # the hook's end is the earliest of the batch's GPUs' latest ends: one hour more covers the rest
        hi = max(max_end_ns, lo) + HOUR_NS
        if (hi - lo) // HOUR_NS > MAX_NOTED_HOURS:
            self._full_at = -math.inf
            return
        self._dirty.update(range(lo, hi, HOUR_NS))

    @property
    def buckets(self) -> int:
        return sum(len(h) for h in self._hours.values())

    async def fresh(self) -> None:
        """Bring the index up to date (see the module docstring); one refresh at a time."""
        async with self._lock:
            now = time.monotonic()
            if now - self._full_at >= self.full_refresh_s:
                self._dirty.clear()
                await self._load(None, None)
                self._full_at = self._refreshed_at = now
                return
            if now - self._refreshed_at >= self.refresh_s:
                lo = hour_floor(time.time_ns() - self.lookback_ns)
                self._dirty = {h for h in self._dirty if h < lo}
                await self._load(lo, None)
                self._refreshed_at = now
            if self._dirty:
                hours = sorted(self._dirty)
                self._dirty.clear()
                for lo, hi in _runs(hours):
                    await self._load(lo, hi)

    async def _load(self, lo: int | None, hi: int | None) -> None:
        """Read [lo, hi) (hour-aligned; None: unbounded) from InfluxDB and replace those hours."""
        sums_res, who_res, first_res, nodes_res = await self.store.query(
            queries.job_hours_in_range(self.store.measurement, lo, hi))
        self.loads += 1
        self._answers.clear()
        self._whole.clear()
        fresh: dict[int, dict[tuple[str, str], HourSums]] = {}
        for tags, row in series_rows(sums_res):
            hour = int(row["time"])
            fresh.setdefault(hour, {})[(tags.get("job_id", ""), tags.get("rack", ""))] = HourSums(
                tuple(float(row.get(k) or 0.0) for k in _SUMS), int(row.get("end_ns") or 0))
        if lo is None and hi is None:
            self._hours = {}
            self._by_job = {}
            self._totals = {}
            self._stale = set()
            self._jobs = {}
            self.complete_from_ns = None
        else:
            for hour in [h for h in self._hours if (lo is None or h >= lo) and (hi is None or h < hi)]:
                self._drop_hour(hour)
        for hour, entries in fresh.items():
            self._hours[hour] = entries
            for (job_id, rack), hs in entries.items():
                self._by_job.setdefault(job_id, {})[(hour, rack)] = hs
                self._stale.add(job_id)
        for tags, row in series_rows(who_res):
            job = self._jobs.setdefault(tags.get("job_id", ""), _Job())
            job.who = {name: str(row.get(name) or "") for name in WHO}
        for tags, row in series_rows(first_res):
            job = self._jobs.setdefault(tags.get("job_id", ""), _Job())
            t = int(row.get("time") or 0)
            job.first_window_ns = t if not job.first_window_ns else min(job.first_window_ns, t)
        for tags, _row in series_rows(nodes_res):
            self._jobs.setdefault(tags.get("job_id", ""), _Job()).nodes.add(tags.get("node", ""))
        self._bound()

    def _bound(self) -> None:
        total = self.buckets
        if total <= self.max_buckets:
            return
        for hour in sorted(self._hours):
            total -= len(self._hours[hour])
            self._drop_hour(hour)
            self.complete_from_ns = hour + HOUR_NS
            if total <= self.max_buckets:
                break
        log.warning("job index: more than %d job-hours; holding those from %d ns on (older ranges read "
                    "InfluxDB directly)", self.max_buckets, self.complete_from_ns)

    def _drop_hour(self, hour: int) -> None:
        """Forget one hour, in both views."""
        for job_id, rack in self._hours.pop(hour, {}):
            own = self._by_job.get(job_id)
            if own is not None:
                own.pop((hour, rack), None)
                self._stale.add(job_id)

    def _settle_totals(self) -> None:
        """Recompute the totals of the jobs whose hours changed since the last answer."""
        for job_id in self._stale:
            own = self._by_job.get(job_id)
            if not own:
                self._by_job.pop(job_id, None)
                self._totals.pop(job_id, None)
                continue
            acc = [0.0] * len(_SUMS)
            end_ns = 0
            for hs in own.values():
                for k, v in enumerate(hs.sums):
                    acc[k] += v
                end_ns = max(end_ns, hs.end_ns)
            hours = [hour for hour, _rack in own]
            self._totals[job_id] = _JobTotals(min(hours), max(hours), tuple(acc), end_ns)
        self._stale.clear()

    def covers(self, since_ns: int | None) -> bool:
        """Whether a range starting at ``since_ns`` (None: the beginning) is whole in the index."""
        if self.complete_from_ns is None:
            return True
        return since_ns is not None and hour_floor(since_ns) >= self.complete_from_ns

    def hour_rows(self, since_ns: int | None, until_ns: int | None) -> list[tuple[int, str, str, HourSums]]:
        """(hour, job, rack, sums) of the hours in [since, until) taken to whole hours."""
        lo = hour_floor(since_ns) if since_ns is not None else None
        hi = hour_ceil(until_ns) if until_ns is not None else None
        out = []
        for hour, entries in self._hours.items():
            if (lo is None or hour >= lo) and (hi is None or hour < hi):
                out += [(hour, job, rack, s) for (job, rack), s in entries.items()]
        return out

    def who(self, job_id: str) -> dict[str, str]:
        job = self._jobs.get(job_id)
        return job.who if job is not None else {}

    def jobs(self, since_ns: int | None, until_ns: int | None, per_rack: bool = False) -> dict[str, JobSums]:
        """Per-job sums over [since, until) taken to whole hours (the listings' input); ``per_rack``
        also fills each job's sums per rack (usage by rack or zone)."""
        lo = hour_floor(since_ns) if since_ns is not None else None
        hi = hour_ceil(until_ns) if until_ns is not None else None
        known = self._answers.get((lo, hi, per_rack))
        if known is not None:
            return known
        self._settle_totals()
        empty = _Job()
        out: dict[str, JobSums] = {}
        acc: dict[str, list[float]] = {}
        racks: dict[tuple[str, str], list[float]] = {}
        for job_id, totals in self._totals.items():
            if (lo is not None and totals.last_hour < lo) or (hi is not None and totals.first_hour >= hi):
                continue  # none of the job's hours in the range
            whole = (lo is None or totals.first_hour >= lo) and (hi is None or totals.last_hour < hi)
            if whole and not per_rack:
                known_whole = self._whole.get(job_id)
                if known_whole is None:
                    info = self._jobs.get(job_id, empty)
                    known_whole = self._whole[job_id] = JobSums(
                        job_id, dict(zip(_SUMS, totals.sums, strict=True)), {}, info.nodes,
                        info.first_window_ns, totals.end_ns, info.who)
                out[job_id] = known_whole
                continue
            a: list[float] | None = None
            for (hour, rack), hs in self._by_job[job_id].items():
                if (lo is not None and hour < lo) or (hi is not None and hour >= hi):
                    continue
                if a is None:
                    a = acc[job_id] = [*hs.sums, hs.end_ns]
                else:
                    for k, v in enumerate(hs.sums):
                        a[k] += v
                    if hs.end_ns > a[8]:
                        a[8] = hs.end_ns
                if per_rack:
                    r = racks.get((job_id, rack))
                    if r is None:
                        racks[(job_id, rack)] = list(hs.sums)
                    else:
                        for k, v in enumerate(hs.sums):
                            r[k] += v
        for job_id, a in acc.items():
            info = self._jobs.get(job_id, empty)
            out[job_id] = JobSums(job_id, dict(zip(_SUMS, a, strict=False)), {}, info.nodes,
                                  info.first_window_ns, int(a[8]), info.who)
        for (job_id, rack), r in racks.items():
            out[job_id].by_rack[rack] = dict(zip(_SUMS, r, strict=True))
        if len(self._answers) >= 4:
            self._answers.clear()
        self._answers[(lo, hi, per_rack)] = out
        return out


def _runs(hours: list[int]) -> list[tuple[int, int]]:
    """[lo, hi) ranges covering sorted, hour-aligned starts."""
    runs: list[tuple[int, int]] = []
    for h in hours:
        if runs and runs[-1][1] == h:
            runs[-1] = (runs[-1][0], h + HOUR_NS)
        else:
            runs.append((h, h + HOUR_NS))
    return runs
