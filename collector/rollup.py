"""Node- and rack-level windows, recomputed from stored points after every write.

No window is accumulated in memory. After a batch of node N is stored:

1. every window it touched is recomputed from all ``job`` points of node N in
   that window (the job shares of each GPU interval, ``unattributed`` included, add up to
   the interval) and written to the ``node`` and ``job_window`` measurements (reads only
   N's points);
2. those windows of N's rack are recomputed from the rack's ``node`` points
   (one small point per node and window) and written to ``rack``.

Both writes have deterministic tags and timestamps, so a resent batch, a late
sample or a batch split differently all leave the same values. Recomputes of
one node are serialised; recomputes of one rack are coalesced (group commit):
windows queued while a recompute of the rack runs are all covered by the next
one, which starts only after their node points were written.

With several collector replicas, nodes of one rack may be served by different
replicas, and one replica's recompute of a rack window can read before another
replica's node point lands yet write after that replica's (complete) recompute.
So every recomputed rack window is recomputed once more ``settle_s`` later
(coalesced per rack): the last write of a window then always reads every node
point written before it, and the rack series converges to the exact sum.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from gridwatt.collector import queries
from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.collector.schema import WHO_FIELDS, job_window_key, node_key, rack_key, string_field
from gridwatt.collector.store import InfluxStore, series_rows
from gridwatt.timeutil import NS_PER_S

log = logging.getLogger("gridwatt.collector.rollup")

_SUMS = ("e", "f", "c", "ce", "d", "u", "i", "ie", "n")


def _window_fields(w: dict[str, float]) -> str:
    """Fields of node and rack points from sums (e, f, ie in J; c, ce in g; d gpu-s; u util×s; i s; n GPUs).

    ``ce`` is the part of the emissions resting on estimated or held intensity."""
    e, f, c, d = w["e"], w["f"], w["c"], w["d"]
    pue = f / e if e > 0 else 0.0
    intensity = c * J_PER_KWH / f if f > 0 else 0.0
    mean_util = w["u"] / d if d > 0 else 0.0
    return (
        f"it_energy_kwh={e / J_PER_KWH!r},facility_energy_kwh={f / J_PER_KWH!r},co2e_g={c!r},"
        f"co2e_kg={c / 1000!r},estimated_co2e_g={w['ce']!r},pue={pue!r},"
        f"intensity_g_per_kwh={intensity!r},gpu_count={int(w['n'])}i,"
        f"gpu_seconds={d!r},util_pct_s={w['u']!r},mean_util_pct={mean_util!r},idle_s={w['i']!r},"
        f"idle_energy_kwh={w['ie'] / J_PER_KWH!r}"
    )


def node_lines(node: str, rack: str, zone: str, windows: dict[int, dict[str, float]]) -> list[str]:
    """``node`` points (pure)."""
    prefix = node_key(node, rack, zone) + " "
    return [f"{prefix}{_window_fields(w)} {t}" for t, w in sorted(windows.items())]


def rack_lines(rack: str, zone: str, windows: dict[int, dict[str, float]]) -> list[str]:
    """``rack`` points (pure); ``nodes`` is the number of nodes that reported in the window."""
    prefix = rack_key(rack, zone) + " "
    return [f"{prefix}{_window_fields(w)},nodes={int(w['nodes'])}i {t}" for t, w in sorted(windows.items())]


#: Who ran a job (string fields of ``job`` points), carried into its ``job_window`` points.
WHO = WHO_FIELDS


def _who_fields(w: dict[str, Any]) -> str:
    return "".join(f",{name}={string_field(w[name])}" for name in WHO if w.get(name))


def job_window_lines(node: str, rack: str, jobs: dict[tuple[int, str], dict[str, Any]]) -> list[str]:
    """``job_window`` points (pure): one job's sums on one node in one window, and who ran it."""
    return [
        f"{job_window_key(job, node, rack)} energy_j={w['e']!r},facility_energy_j={w['f']!r},"
        f"co2e_g={w['c']!r},estimated_co2e_g={w['ce']!r},gpu_s={w['d']!r},util_pct_s={w['u']!r},idle_s={w['i']!r},"
        f"idle_energy_j={w['ie']!r},gpu_count={int(w['n'])}i,end_ns={int(w['end_ns'])}i{_who_fields(w)} {t}"
        for (t, job), w in sorted(jobs.items())
    ]


class RackRollup:
    """See the module docstring."""

    def __init__(
        self, store: InfluxStore, resolution_s: int, max_gap_windows: int = 60, settle_s: float = 0.0
    ) -> None:
        self.store = store
        self.settle_s = settle_s
        self._settle: dict[str, tuple[str, set[int]]] = {}
        self._settle_handles: dict[str, asyncio.TimerHandle] = {}
        self._settle_tasks: set[asyncio.Task[int]] = set()
        self.settle_runs = 0
        self.resolution_ns = resolution_s * NS_PER_S
        self.max_gap_windows = max_gap_windows
        self._node_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._rack_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._queued: dict[str, tuple[set[int], asyncio.Future[int]]] = {}
        self.queries = 0

    def _runs(self, window_starts: set[int]) -> list[tuple[int, int]]:
        """[lo, hi) ranges covering the windows, split where they are far apart."""
        gap = self.max_gap_windows * self.resolution_ns
        runs: list[tuple[int, int]] = []
        for t in sorted(window_starts):
            if runs and t - runs[-1][1] <= gap:
                runs[-1] = (runs[-1][0], t + self.resolution_ns)
            else:
                runs.append((t, t + self.resolution_ns))
        return runs

    async def _sums(self, q: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        self.queries += 1
        (result,) = await self.store.query(q)
        return series_rows(result)

    async def node_windows(
        self, node: str, lo_ns: int, hi_ns: int
    ) -> tuple[dict[int, dict[str, float]], dict[tuple[int, str], dict[str, Any]]]:
        """Sums per window over all job points of ``node`` in [lo_ns, hi_ns): per node, and per job.

        The job points of a GPU interval share out its whole energy (``unattributed`` included),
        so their sums are the node's; ``gpu_s`` adds up to the GPUs' seconds.
        """
        res_s = self.resolution_ns // NS_PER_S
        rows = await self._sums(queries.node_window_sums(self.store.measurement, node, lo_ns, hi_ns, res_s))
        windows: dict[int, dict[str, float]] = {}
        jobs: dict[tuple[int, str], dict[str, Any]] = {}
        gpus: dict[int, set[str]] = defaultdict(set)
        for tags, row in rows:
            t = int(row["time"])
            w = windows.setdefault(t, dict.fromkeys(_SUMS, 0.0))
            j = jobs.setdefault((t, tags.get("job_id", "")), dict.fromkeys((*_SUMS, "end_ns"), 0.0))
            for key in _SUMS[:-1]:
                value = row.get(key) or 0.0
                w[key] += value
                j[key] += value
            j["n"] += 1
            j["end_ns"] = max(j["end_ns"], float(row["end_ns"] or 0))
            for name in WHO:
                if row.get(name):
                    j[name] = str(row[name])
            gpus[t].add(tags.get("gpu", ""))
        for t, w in windows.items():
            w["n"] = len(gpus[t])
        return windows, jobs

    async def rack_windows(self, rack: str, lo_ns: int, hi_ns: int) -> dict[int, dict[str, float]]:
        """Sums per window over all node points of ``rack`` in [lo_ns, hi_ns)."""
        res_s = self.resolution_ns // NS_PER_S
        rows = await self._sums(queries.rack_window_sums(self.store.measurement, rack, lo_ns, hi_ns, res_s))
        windows: dict[int, dict[str, float]] = {}
        for _tags, row in rows:
            w = {key: float(row.get(key) or 0.0) for key in (*_SUMS, "nodes")}
            w["e"] *= J_PER_KWH
            w["f"] *= J_PER_KWH
            w["ie"] *= J_PER_KWH
            windows[int(row["time"])] = w
        return windows

    async def recompute(self, node: str, rack: str, zone: str, window_starts: set[int]) -> int:
        """Recompute the node's windows, then its rack's (coalesced); returns rack points written."""
        if not window_starts:
            return 0
        async with self._node_locks[node]:
            lines: list[str] = []
            for lo, hi in self._runs(window_starts):
                windows, jobs = await self.node_windows(node, lo, hi)
                lines += node_lines(
                    node, rack, zone, {t: w for t, w in windows.items() if t in window_starts}
                )
                lines += job_window_lines(
                    node, rack, {k: w for k, w in jobs.items() if k[0] in window_starts}
                )
            if lines:
                self._log_refused(node, lines, await self.store.write_lines(lines))
        return await self._recompute_rack(rack, zone, window_starts)

    @staticmethod
    def _log_refused(what: str, lines: list[str], result: Any) -> None:
        for index, (status, reason) in getattr(result, "rejected", {}).items():
            log.error("%s: InfluxDB refused a window point (HTTP %d): %s | %s",
                      what, status, reason, lines[index][:200])

    def _schedule_settle(self, rack: str, zone: str, window_starts: set[int]) -> None:
        entry = self._settle.get(rack)
        if entry is not None:
            entry[1].update(window_starts)
            return
        self._settle[rack] = (zone, set(window_starts))
        loop = asyncio.get_running_loop()
        self._settle_handles[rack] = loop.call_later(self.settle_s, self._start_settle, rack)

    def _start_settle(self, rack: str) -> None:
        self._settle_handles.pop(rack, None)
        zone, windows = self._settle.pop(rack)
        task = asyncio.create_task(self._recompute_rack(rack, zone, windows, settle=False))
        self._settle_tasks.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[int]) -> None:
        self._settle_tasks.discard(task)
        self.settle_runs += 1
        if not task.cancelled() and task.exception() is not None:
            log.warning("settling rack windows failed (a later batch recomputes them): %s", task.exception())

    async def close(self) -> None:
        """Run pending settle recomputes now (best effort), so a stopping collector leaves them exact."""
        for handle in self._settle_handles.values():
            handle.cancel()
        pending = list(self._settle.items())
        self._settle_handles.clear()
        self._settle.clear()
        for rack, (zone, windows) in pending:
            try:
                await self._recompute_rack(rack, zone, windows, settle=False)
            except Exception as exc:  # the store may be down at shutdown
                log.warning("rack %r: final settle recompute failed: %s", rack, exc)
        if self._settle_tasks:
            await asyncio.gather(*self._settle_tasks, return_exceptions=True)

    async def _recompute_rack(
        self, rack: str, zone: str, window_starts: set[int], settle: bool = True
    ) -> int:
        queued = self._queued.get(rack)
        if queued is not None:
            queued[0].update(window_starts)
            return await asyncio.shield(queued[1])
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queued[rack] = (set(window_starts), future)
        try:
            async with self._rack_locks[rack]:
                todo, _ = self._queued.pop(rack)
                lines: list[str] = []
                for lo, hi in self._runs(todo):
                    windows = await self.rack_windows(rack, lo, hi)
                    lines += rack_lines(rack, zone, {t: w for t, w in windows.items() if t in todo})
                if lines:
                    self._log_refused(rack, lines, await self.store.write_lines(lines))
        except BaseException as exc:
            entry = self._queued.get(rack)
            if entry is not None and entry[1] is future:
                self._queued.pop(rack)
            if not future.done():
                future.set_exception(exc)
                future.exception()  # marked retrieved; waiters re-raise it
            raise
        future.set_result(len(lines))
        if settle and self.settle_s > 0:
            self._schedule_settle(rack, zone, todo)  # every window this recompute covered
        return len(lines)
