"""Held node state: recent node windows and GPU interval ends kept in memory, equal to the read-back.

Without it every batch of a node costs two InfluxQL reads: its stored GPU intervals (the one-GPU-second
check, collector/intervals.py) and all its ``job`` points in the touched windows (collector/rollup.py).
Here a replica keeps, per node it serves, what those reads would answer:

* per recent window, per job series (GPU, job id) of the node: the sums InfluxDB's
  ``node_window_sums`` query gives (``sum`` of each field, ``max("end_ns")``, ``last`` of each
  who-field), and
* per GPU the latest end of the node's stored ``gpu`` intervals since a horizon.

**Why it is equal to the read-back.** InfluxDB's ``sum()`` of one series in one window adds the
points' float values one after the other in time order (checked against the real server in
tests/collector/test_node_state.py); the rollup then adds the series of a window in the order InfluxDB
returns them (by GPU tag, then job id, as strings). A held series starts from the read-back of its
window (or from nothing, for a window known to be empty) and takes a new point only when it starts at
or after every stored point of the series ends (``start >= max end_ns``): then it is also later than
every stored point, so adding it last is what InfluxDB will do. Any other point (a resend, a late
sample, a batch split differently) drops the window, which is then read back after the write (one
query) and held again from that answer. ``node_windows_from_series`` is the one pure function that
turns series sums into node and ``job_window`` sums, for held and read-back series alike. The field
values held are the very floats written (``repr`` in the line protocol round-trips exactly).

A window is *known* when it is held, or when it lies at or after ``known_from_ns`` and after the latest
``job`` point the node has there (``latest_start_ns``): then it is empty in the store. Both come from
one read (``HeldNodes.acquire``, two statements) the first time a node is seen, after which the replica
follows its own writes.

**When it is dropped.** Whenever this replica may not have seen a write of the node's points:

* a new ingest stream from the node (an agent that failed over to another replica and came back),
  and every unary ``Write`` (never held: those are read back, as before);
* a write that failed or was partly refused (a batch being written marks the node ``writing``; a
  node still marked at its next batch is read again);
* a recompute from elsewhere (collector/revisit.py rewrites points): ``RackRollup.recompute`` without
  held state drops the node;
* bounds: at most ``max_windows`` windows per node (older ones are forgotten and read back if touched
  again), ``max_series_per_window`` job series in a window, and ``max_nodes`` nodes (least recently
  used first), so a node sending many jobs or windows cannot grow it without bound.

Other replicas' writes to the same node's windows (a revisit on another replica, or two streams of one
node to two replicas) are not seen here: ``RackRollup`` reads every window it wrote from held state back
once more, ``settle_s`` after the last such write and after the window's end (on the wall clock), so
the last word on each window is a read-back (with ``[accounting] replica_settle_s`` > 0, the default;
a single replica may set it to 0). That read-back reads the job sums only where another collector
instance's writer mark is in the window (collector/writer_marks.py): where this instance alone wrote
the node's job points there, what is held is what the store has.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import add
from typing import Any

from gridwatt.collector import queries
from gridwatt.collector.intervals import StoredGpuTime
from gridwatt.collector.points import JobPoint
from gridwatt.collector.schema import WHO_FIELDS
from gridwatt.collector.store import InfluxStore, series_rows

#: The summed fields of a job series, in the order of ``SeriesSums.sums`` (J, J, g, g, GPU-s, %·s, s, J).
SUM_KEYS = ("e", "f", "c", "ce", "d", "u", "i", "ie")

#: The sums of a series or window before its first point.
_ZEROS = [0.0] * len(SUM_KEYS)

#: Far beyond any time validation admits (year 2255): the open upper bound of the fill reads.
FAR_FUTURE_NS = 9_000_000_000_000_000_000


@dataclass(slots=True)
class SeriesSums:
    """What ``node_window_sums`` answers for one job series in one window."""

    sums: list[float]
    end_ns: int
    who: dict[str, str] = field(default_factory=dict)


#: (gpu tag, job id) -> sums, for one window
WindowSeries = dict[tuple[str, str], SeriesSums]
#: (window start, gpu tag, job id, sums): one row of ``node_window_sums``
Series = tuple[int, str, str, SeriesSums]


def node_windows_from_series(
    series: Iterable[Series],
) -> tuple[dict[int, dict[str, float]], dict[tuple[int, str], dict[str, Any]]]:
    """Node sums per window and job sums per (window, job) from series sums (pure).

    ``series`` is (window start, gpu tag, job id, sums) in InfluxDB's answer order: by GPU tag, then
    job id, then window. The float additions happen in that order, for held and read-back alike.
    """
    # sums as lists, added field by field with map(add) (the same additions in the same order as one
    # dict entry at a time), made into dicts at the end (keys in the same order)
    window_sums: dict[int, list[float]] = {}
    job_acc: dict[tuple[int, str], list[Any]] = {}  # [sums, n, end_ns, who]
    gpus: dict[int, set[str]] = defaultdict(set)
    for t, gpu, job_id, s in series:
        sums = s.sums
        w = window_sums.get(t)
        window_sums[t] = list(map(add, _ZEROS if w is None else w, sums))
        acc = job_acc.get((t, job_id))
        if acc is None:
            acc = job_acc[(t, job_id)] = [_ZEROS, 0.0, 0.0, {}]
        acc[0] = list(map(add, acc[0], sums))
        acc[1] += 1
        acc[2] = max(acc[2], float(s.end_ns))
        who = s.who
        if who:
            for name in WHO_FIELDS:
                if who.get(name):
                    acc[3][name] = who[name]
        gpus[t].add(gpu)
    windows: dict[int, dict[str, float]] = {}
    for t, w in window_sums.items():
        wd: dict[str, float] = dict(zip(SUM_KEYS, w, strict=True))
        wd["n"] = len(gpus[t])
        windows[t] = wd
    jobs: dict[tuple[int, str], dict[str, Any]] = {}
    for k, (sums, n, end_ns, who) in job_acc.items():
        j: dict[str, Any] = dict(zip(SUM_KEYS, sums, strict=True))
        j["n"] = n
        j["end_ns"] = end_ns
        j.update(who)
        jobs[k] = j
    return windows, jobs


def series_from_rows(rows: list[tuple[dict[str, str], dict[str, Any]]]) -> list[Series]:
    """The rows of ``queries.node_window_sums`` as series sums, in the answer's order."""
    out = []
    for tags, row in rows:
        sums = [float(row.get(key) or 0.0) for key in SUM_KEYS]
        who = {name: str(row[name]) for name in WHO_FIELDS if row.get(name)}
        out.append((int(row["time"]), tags.get("gpu", ""), tags.get("job_id", ""),
                    SeriesSums(sums, int(row.get("end_ns") or 0), who)))
    return out


def held_series(windows: dict[int, WindowSeries], starts: Iterable[int]) -> list[Series]:
    """The held series of some windows, in the order InfluxDB answers (GPU tag, job id, window)."""
    out = [(t, gpu, job, s) for t in starts if t in windows for (gpu, job), s in windows[t].items()]
    out.sort(key=lambda r: (r[1], r[2], r[0]))
    return out


def add_point(window: WindowSeries, p: JobPoint) -> bool:
    """Add a job point to its window's series; False where it is not later than the series' points
    (a resend, a late sample): then the held window no longer equals the store's and must be read."""
    key = (p.gpu, p.job_id)
    s = window.get(key)
    if s is None:
        window[key] = SeriesSums(list(p.sums), p.end_ns, dict(p.who))
        return True
    if p.start_ns < s.end_ns:
        return False
    s.sums = list(map(add, s.sums, p.sums))  # the same additions, one each
    if p.end_ns > s.end_ns:
        s.end_ns = p.end_ns
    if p.who:
        s.who.update(p.who)
    return True


@dataclass
class NodeHeld:
    """One node's held state (see the module docstring)."""

    known_from_ns: int
    latest_start_ns: int | None
    horizon_ns: int
    gpu_max_end: dict[int, int]
    windows: dict[int, WindowSeries] = field(default_factory=dict)
    valid: bool = True
    #: set while a batch of the node is being written; still set at the next batch: it failed
    writing: bool = False

    def known(self, window_ns: int) -> bool:
        """Whether the store's job points of this window are exactly what is held (absent: none)."""
        if window_ns in self.windows:
            return True
        return window_ns >= self.known_from_ns and (
            self.latest_start_ns is None or self.latest_start_ns < window_ns)

    def interval_view(self, samples: Sequence[Any], lo_ns: int, lookback_ns: int) -> StoredGpuTime | None:
        """What ``stored_intervals`` would give for the conflict check, where held state answers it.

        Where every sample of a GPU starts at or after the latest end of the GPU's stored intervals,
        no stored interval overlaps any of them, so ``first_conflict`` only has the batch itself to
        check: the stored intervals starting inside the range (none overlapping) change nothing.
        Needs every stored interval that could reach the batch (starting within ``lookback_ns``, the
        longest interval validation admits) to be after the horizon. None: read the store.
        """
        if lo_ns - lookback_ns < self.horizon_ns:
            return None
        first: dict[int, int] = {}
        for s in samples:
            if s.start_ns < first.get(s.gpu_index, s.start_ns + 1):
                first[s.gpu_index] = s.start_ns
        ends = self.gpu_max_end
        if any(start < ends.get(gpu, 0) for gpu, start in first.items()):
            return None
        return StoredGpuTime({}, {gpu: ends[gpu] for gpu in first if gpu in ends})


class HeldNodes:
    """Held state of the nodes this replica serves, bounded; ``queries`` counts the reads it made."""

    def __init__(self, store: InfluxStore, resolution_ns: int, max_nodes: int = 20_000,
                 max_windows: int = 4, max_series_per_window: int = 4096) -> None:
        self.store = store
        self.resolution_ns = resolution_ns
        self.max_nodes = max_nodes
        self.max_windows = max_windows
        self.max_series_per_window = max_series_per_window
        self._nodes: OrderedDict[str, NodeHeld] = OrderedDict()
        self.queries = 0
        #: interval checks answered from held state / read from the store
        self.interval_checks_held = 0
        self.interval_checks_read = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, node: str) -> NodeHeld | None:
        return self._nodes.get(node)

    def drop(self, node: str) -> None:
        """Forget the node (it may have missed writes); a batch in flight with it stops using it."""
        held = self._nodes.pop(node, None)
        if held is not None:
            held.valid = False

    async def acquire(self, node: str, lo_ns: int, lookback_ns: int) -> NodeHeld:
        """The node's held state; read (one request, two statements) when not held or after a failed write."""
        held = self._nodes.get(node)
        if held is not None and not held.writing:
            self._nodes.move_to_end(node)
            return held
        self.drop(node)
        known_from = lo_ns - lo_ns % self.resolution_ns
        horizon = lo_ns - lookback_ns
        self.queries += 1
        latest_res, ends_res = await self.store.query(
            queries.held_node_fill(self.store.measurement, node, known_from, horizon, FAR_FUTURE_NS))
        latest = [int(row["time"]) for _, row in series_rows(latest_res)]
        ends = {int(tags.get("gpu", "0")): int(row.get("max") or 0) for tags, row in series_rows(ends_res)}
        return self.hold(node, NodeHeld(known_from, max(latest) if latest else None, horizon, ends))

    def hold(self, node: str, held: NodeHeld) -> NodeHeld:
        """Keep the node's state; beyond ``max_nodes`` the least recently used node is forgotten."""
        self._nodes[node] = held
        while len(self._nodes) > self.max_nodes:
            _, old = self._nodes.popitem(last=False)
            old.valid = False
        return held

    def wrote(self, held: NodeHeld, samples: Iterable[Any], points: list[JobPoint],
              window_starts: set[int]) -> set[int]:
        """Follow a stored batch; returns the touched windows that are not held (to be read back)."""
        held.writing = False
        ends = held.gpu_max_end
        for s in samples:
            if s.end_ns > ends.get(s.gpu_index, 0):
                ends[s.gpu_index] = s.end_ns
        res = self.resolution_ns
        unknown = {t for t in window_starts if not held.known(t)}
        for t in window_starts - unknown:
            held.windows.setdefault(t, {})
        for p in points:
            t = p.start_ns - p.start_ns % res
            window = held.windows.get(t)
            if window is None:
                continue
            if not add_point(window, p) or len(window) > self.max_series_per_window:
                del held.windows[t]
                unknown.add(t)
        latest = max((p.start_ns for p in points), default=None)
        if latest is not None and (held.latest_start_ns is None or latest > held.latest_start_ns):
            held.latest_start_ns = latest
        return unknown

    def follow(self, held: NodeHeld, points: list[JobPoint],
               window_starts: set[int]) -> dict[int, WindowSeries] | None:
        """The touched windows as they will be once this batch's job ``points`` are stored, computed
        before the write (``held`` itself is untouched): what ``wrote`` would hold afterwards. None
        where that needs a read (a window not known, a point that does not follow its series, a
        window over the bounds): then the batch is written first and ``wrote`` follows it, as before."""
        res = self.resolution_ns
        out: dict[int, WindowSeries] = {}
        held_windows = held.windows
        for t in window_starts:
            if not held.known(t):
                return None
            window = held_windows.get(t)
            # a held series is copied (add_point replaces the copy's sums: the list may be shared)
            out[t] = ({k: SeriesSums(v.sums, v.end_ns, dict(v.who)) for k, v in window.items()}
                      if window else {})
        max_series = self.max_series_per_window
        for p in points:  # add_point's steps, inline
            start = p.start_ns
            window = out.get(start - start % res)
            if window is None:
                return None
            key = (p.gpu, p.job_id)
            s = window.get(key)
            if s is None:
                window[key] = SeriesSums(list(p.sums), p.end_ns, dict(p.who))
                if len(window) > max_series:
                    return None
                continue
            if start < s.end_ns:  # not later than the series' points
                return None
            s.sums = list(map(add, s.sums, p.sums))
            if p.end_ns > s.end_ns:
                s.end_ns = p.end_ns
            if p.who:
                s.who.update(p.who)
        return out

    def commit(self, held: NodeHeld, samples: Iterable[Any], points: list[JobPoint],
               windows: dict[int, WindowSeries]) -> None:
        """Hold what ``follow`` computed, now that the batch and those windows are stored."""
        held.writing = False
        ends = held.gpu_max_end
        for s in samples:
            if s.end_ns > ends.get(s.gpu_index, 0):
                ends[s.gpu_index] = s.end_ns
        if not held.valid:
            return
        held.windows.update(windows)
        latest = max([p.start_ns for p in points]) if points else None
        if latest is not None and (held.latest_start_ns is None or latest > held.latest_start_ns):
            held.latest_start_ns = latest
        self._evict(held)

    def read(self, held: NodeHeld, series: list[Series], window_starts: set[int]) -> None:
        """Hold windows just read back whole (after this replica's writes to them)."""
        if not held.valid:
            return
        fresh: dict[int, WindowSeries] = {t: {} for t in window_starts}
        for t, gpu, job, s in series:
            if t in fresh:
                fresh[t][(gpu, job)] = s
        for t, window in fresh.items():
            if len(window) <= self.max_series_per_window:
                held.windows[t] = window
        self._evict(held)

    def _evict(self, held: NodeHeld) -> None:
        if len(held.windows) <= self.max_windows:
            return
        keep = sorted(held.windows)[-self.max_windows:]
        cut = keep[0]
        for t in [t for t in held.windows if t < cut]:
            del held.windows[t]
        held.known_from_ns = max(held.known_from_ns, cut)

    def evict(self, held: NodeHeld) -> None:
        """Keep at most ``max_windows`` windows (the newest); older ones are read back if touched."""
        self._evict(held)
