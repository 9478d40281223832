"""Node- and rack-level windows, recomputed after every write: from held state, or read back.

After a batch of node N is stored:

1. every window it touched is recomputed from all ``job`` points of node N in
   that window (the job shares of each GPU interval, ``unattributed`` included, add up to
   the interval) and written to the ``node`` and ``job_window`` measurements. The job
   points' sums come from the node's held state (collector/node_state.py: kept in memory,
   equal to the read-back, see there why) where it holds the window, else from InfluxDB
   (one query, reading only N's points), which is then held;
2. those windows of N's rack are recomputed from the rack's ``node`` points (one small point
   per node and window), added up in node order (``rack_state.rack_sums``), and written to
   ``rack``. The node points come from the rack's held state (collector/rack_state.py: held
   only while every node of the rack streams to this replica, seeded by one read of the window,
   then following this replica's node writes) where it holds the window, from a lease of the window
   where the rack is not held (a read younger than ``settle_s`` / 2 plus this replica's node writes
   since: collector/rack_state.py, "Leased windows"), else from InfluxDB (one query of the raw node
   points).

For a streamed batch of a held node, 1 and 2 need no read: the node, job_window and (where the rack is
held) rack points are computed before the batch is written and go in the same store write as its
samples (``write_batch``; collector/README.md "One write per streamed batch"). Batches that find their
held rack busy write together in its next turn (``_run_turn``: one write, one rack point). Where they
cannot, the batch is written first and they follow as above.

All these writes have deterministic tags and timestamps, so a resent batch, a late
sample or a batch split differently all leave the same values. Recomputes of
one node are serialised; recomputes of one rack are coalesced (and, where the rack is
read, debounced): the first request for a rack read waits ``rack_delay_s`` (so the nodes
of a rack that land in the same moment share one read), and windows queued while a recompute of
the rack runs are all covered by the next one, which starts only after their node
points were written. A batch is acknowledged after its node and rack windows are
written, so a crash never leaves a window of an acknowledged batch stale: the agent
resends what was not acknowledged, which recomputes the windows.

With several collector replicas, nodes of one rack may be served by different
replicas, and one replica's recompute of a rack window can read before another
replica's node point lands yet write after that replica's (complete) recompute.
So every rack window recomputed from a read, or written from a lease, is recomputed once more from a
read ``settle_s`` after it was last asked for at the earliest (those due together in one recompute,
``settle_gather_s`` later): the last write of a window then always reads every node point written
before it, and the rack series converges to the exact sum. For the
same reason every window written from held state (node or rack) is read back once more
``settle_s`` after the last batch touched it, once the window has closed: another replica
may have rewritten the node's points there (collector/revisit.py), which held state cannot
see. Rack windows summed from held state get no settle recompute. The node read-backs of a
rack that come due together are one query (``_read_back_many``), and read-backs of windows
just closed are spread per rack over ``read_back_spread_s``. A read-back (and a rack recompute from a
read) reads the stored points it would write in the same request, after the sums, and writes only
those that differ (collector/README.md, "Read-backs that rewrite only what differs").

**Final read-backs that read only the marks.** The node read-back exists for writes of the node's job
points in the window by *another* collector instance (another replica, after an agent failover or a
resend, or its revisit; this process before a restart), which held state cannot see. Every write that
stores job points of node N in window W carries, ahead of them in the same request, a writer mark of
(N, W) naming its instance (collector/writer_marks.py: a random id, new at every start); written once per
instance, node and window, so a write of this instance to W is preceded by an acknowledged mark of it.
A final read-back first reads the marks of its windows (``_needing_sums``: one small request per group),
and reads the job sums, compares and rewrites as above only for the windows marked by another instance
(or by none, or where that read failed or came back cut short). A window whose only mark is this
instance's is left as it is (``read_back_sums_skipped``): held state, which follows this instance's own
writes, is then the store's sums, and the stored node and job_window points are this instance's last
write of them. Why that is exact, for writers A and B of W:

* a read-back runs after its instance's writes of W were acknowledged, so their marks are visible to any
  read that starts after it; so of two read-backs (A's and B's, after their writes), the one that reads
  its marks later sees the other's mark and reads the sums whole, after every write of W by both that
  preceded it; and an instance that writes W again (a late batch) schedules a new read-back, with the
  same rule;
* a writer with no held state (a unary ``Write``, a batch whose window held state could not follow, a
  revisit) recomputes the window from a read of the sums after its own write, and that read sees every
  write acknowledged before it; its mark makes every later read-back of W by another instance whole;
* node and job_window points of (N, W) are written only by instances that wrote job points of (N, W)
  (a batch's own write, a recompute after a write, a read-back of a window it wrote), so a stale point
  written after A's last write also comes with a mark other than A's;
* a restarted collector is a new instance: the old instance's marks make its read-backs whole.

What the marks cannot see: a replica of an older gridwatt version (it writes no marks: while one runs
beside newer ones, as in a rolling upgrade, a newer replica's read-back may skip a window the older one
wrote), and two instances whose ids agree modulo the window length (about 1 in 6·10^10 for a pair at
60 s windows): the later mark then hides the earlier, which matters only where, besides, one of them
read its marks before the other's first write of the window and the other's mark then hid its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gridwatt.collector import queries
from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.collector.node_state import (
    HeldNodes,
    JobPoint,
    NodeHeld,
    Series,
    held_series,
    node_windows_from_series,
    series_from_rows,
)
from gridwatt.collector.rack_state import (
    HeldRacks,
    RackWindow,
    node_point,
    points_from_result,
    rack_sums,
)
from gridwatt.collector.read_back_plan import plan_read_backs
from gridwatt.collector.schema import WHO_FIELDS, job_window_key, node_key, rack_key, string_field
from gridwatt.collector.store import InfluxStore, WriteResult, series_rows
from gridwatt.collector.writer_marks import WriterMarks
from gridwatt.timeutil import NS_PER_S

log = logging.getLogger("gridwatt.collector.rollup")


@dataclass
class OneWrite:
    """What ``RackRollup.write_batch`` did: the store's answer for the batch's own lines, and whether
    the rack's windows are written too (else the caller recomputes them)."""

    result: WriteResult
    rack_done: bool


@dataclass
class _TurnMember:
    """A streamed batch in a rack turn: its node's series key, node windows (``starts``: their starts
    in order, as its node lines are), own lines, and the node and job_window lines they make
    (``extra``); ``done`` as ``RackRollup._run_turn`` says."""

    key: tuple[str, str]
    windows: dict[int, dict[str, float]]
    lines: list[str]
    extra: list[str]
    #: writer marks (collector/writer_marks.py) written before ``lines``, and their (node, window)
    marks: list[str] = field(default_factory=list)
    mark_owners: list[tuple[str, int]] = field(default_factory=list)
    done: asyncio.Future[tuple[WriteResult, dict[int, tuple[int, str]], bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    starts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.starts = sorted(self.windows)


@dataclass
class _RackTurn:
    """Batches of one rack written together, with the rack's points, in one store write."""

    members: list[_TurnMember]


def _cut(result: WriteResult, k: int) -> tuple[dict[int, tuple[int, str]], WriteResult]:
    """A write of ``k`` lines (writer marks) and then others: the first ``k`` refused, and the answer
    for the others (their own indexes)."""
    if not k:
        return {}, result
    rest = WriteResult(lines=result.lines - k, retries=result.retries,
                       rejected={i - k: why for i, why in result.rejected.items() if i >= k})
    return {i: why for i, why in result.rejected.items() if i < k}, rest


def _split(result: WriteResult, n: int) -> tuple[WriteResult, dict[int, tuple[int, str]]]:
    """A write of a batch's ``n`` lines and then its node/job_window lines: the answer for its own lines,
    and the later lines refused (by their index among those)."""
    mine = WriteResult(lines=n, retries=result.retries,
                       rejected={i: why for i, why in result.rejected.items() if i < n})
    return mine, {i - n: why for i, why in result.rejected.items() if i >= n}


def window_field_values(w: dict[str, float]) -> dict[str, float | int]:
    """Fields of node and rack points from sums (e, f, ie in J; c, ce in g; d gpu-s; u util×s; i s; n GPUs),
    as written (``gpu_count`` an integer field, the others floats; pure).

    ``estimated_co2e_g`` is the part of the emissions resting on estimated or held intensity."""
    e, f, c, d = w["e"], w["f"], w["c"], w["d"]
    pue = f / e if e > 0 else 0.0
    intensity = c * J_PER_KWH / f if f > 0 else 0.0
    mean_util = w["u"] / d if d > 0 else 0.0
    return {
        "it_energy_kwh": e / J_PER_KWH, "facility_energy_kwh": f / J_PER_KWH, "co2e_g": c,
        "co2e_kg": c / 1000, "estimated_co2e_g": w["ce"], "pue": pue, "intensity_g_per_kwh": intensity,
        "gpu_count": int(w["n"]), "gpu_seconds": d, "util_pct_s": w["u"], "mean_util_pct": mean_util,
        "idle_s": w["i"], "idle_energy_kwh": w["ie"] / J_PER_KWH,
    }


#: The integer fields of node, rack and job_window points (every other number is a float field).
INT_FIELDS = frozenset(("gpu_count", "end_ns", "nodes"))


def _line_fields(fields: Mapping[str, float | int | str]) -> str:
    """Line protocol fields: strings quoted, ``INT_FIELDS`` with ``i``, floats by ``repr`` (round-trips
    exactly)."""
    return ",".join(
        f"{k}={string_field(v)}" if isinstance(v, str) else f"{k}={v}i" if k in INT_FIELDS else f"{k}={v!r}"
        for k, v in fields.items())


def _window_fields(w: dict[str, float]) -> str:
    """``window_field_values`` in line protocol."""
    return _line_fields(window_field_values(w))


#: Who ran a job (string fields of ``job`` points), carried into its ``job_window`` points.
WHO = WHO_FIELDS


def node_lines(node: str, rack: str, zone: str, windows: dict[int, dict[str, float]]) -> list[str]:
    """``node`` points (pure)."""
    prefix = node_key(node, rack, zone) + " "
    return [f"{prefix}{_window_fields(w)} {t}" for t, w in sorted(windows.items())]


def rack_field_values(w: dict[str, float]) -> dict[str, float | int]:
    """Fields of a ``rack`` point from rack sums, as written (pure)."""
    return {**window_field_values(w), "nodes": int(w["nodes"])}


def rack_lines(rack: str, zone: str, windows: dict[int, dict[str, float]]) -> list[str]:
    """``rack`` points (pure); ``nodes`` is the number of nodes that reported in the window."""
    prefix = rack_key(rack, zone) + " "
    return [f"{prefix}{_window_fields(w)},nodes={int(w['nodes'])}i {t}" for t, w in sorted(windows.items())]


def job_window_field_values(w: dict[str, Any]) -> dict[str, float | int | str]:
    """Fields of a ``job_window`` point from one job's sums on one node in one window, and who ran it,
    as written (pure)."""
    out: dict[str, float | int | str] = {
        "energy_j": w["e"], "facility_energy_j": w["f"], "co2e_g": w["c"], "estimated_co2e_g": w["ce"],
        "gpu_s": w["d"], "util_pct_s": w["u"], "idle_s": w["i"], "idle_energy_j": w["ie"],
        "gpu_count": int(w["n"]), "end_ns": int(w["end_ns"]),
    }
    for name in WHO:
        if w.get(name):
            out[name] = str(w[name])
    return out


def job_window_lines(node: str, rack: str, jobs: dict[tuple[int, str], dict[str, Any]]) -> list[str]:
    """``job_window`` points (pure): one job's sums on one node in one window, and who ran it."""
    return [f"{job_window_key(job, node, rack)} {_line_fields(job_window_field_values(w))} {t}"
            for (t, job), w in sorted(jobs.items())]


class _Changes:
    """One node's changes of its windows under its lock, as seen by the read-backs reading it without
    the lock: each such read ``watch``es its windows first, every change (``bump``, made before and
    after each write under the lock) marks the watches it touches, and ``unwatch`` says whether the
    read's windows changed meanwhile (then it reads again under the lock, so what it holds and writes is
    never older than a change it missed). Nothing is kept for windows no read watches: a backfill
    writing window after window costs nothing here, and its read-backs of older windows are not read
    twice."""

    __slots__ = ("watches",)

    def __init__(self) -> None:
        #: the windows of each read in flight, and whether a change touched them
        self.watches: list[_Watch] = []

    def bump(self, window_starts: Iterable[int]) -> None:
        if not self.watches:
            return
        touched = set(window_starts)
        for w in self.watches:
            if not w.changed and not w.windows.isdisjoint(touched):
                w.changed = True

    def watch(self, window_starts: Iterable[int]) -> _Watch:
        w = _Watch(set(window_starts))
        self.watches.append(w)
        return w

    def unwatch(self, w: _Watch) -> bool:
        """Stop watching; whether any of the watched windows changed since ``watch``."""
        with contextlib.suppress(ValueError):
            self.watches.remove(w)
        return w.changed


@dataclass(slots=True)
class _Watch:
    windows: set[int]
    changed: bool = False


class _ReadBacks:
    """Windows written from held state that wait for their final read-back, per key (a node or a
    rack) with its context (``ctx``: what ``run`` needs besides the key), each window with the
    monotonic time of its last write; ``wait_s(window, written, rack)``: seconds until it is due
    (``rack_of(key, ctx)``: the rack, whose read-backs are spread apart from other racks')."""

    def __init__(self, what: str, wait_s: Callable[[int, float, str], float],
                 rack_of: Callable[[str, tuple[str, ...]], str],
                 run: Callable[[str, tuple[str, ...], set[int]], Coroutine[Any, Any, None]]) -> None:
        self.what = what
        self._wait_s = wait_s
        self.rack_of = rack_of
        self.run = run
        self.entries: dict[str, tuple[tuple[str, ...], dict[int, float]]] = {}
        self.handles: dict[str, asyncio.TimerHandle] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        #: read-backs run (finished, failed or not)
        self.runs = 0

    def __len__(self) -> int:
        return len(self.entries) + len(self.tasks)

    def schedule(self, key: str, ctx: tuple[str, ...], window_starts: Iterable[int]) -> None:
        now = time.monotonic()
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = (ctx, {})
        entry[1].update(dict.fromkeys(window_starts, now))
        # one timer per key: a window written after it was set (a late batch) waits for it, and is read
        # back with the windows then due (one query where they are close), not in a read of its own
        if key not in self.handles and entry[1]:
            rack = self.rack_of(key, entry[0])
            wait = min(self._wait_s(t, now, rack) for t in entry[1])
            self.handles[key] = asyncio.get_running_loop().call_later(wait, self._start, key)

    def due(self, key: str, now: float | None) -> tuple[tuple[str, ...], set[int]] | None:
        """Take the key's windows that are due (all with ``now`` None)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        ctx, last = entry
        rack = self.rack_of(key, ctx)
        due = {t for t, at in last.items() if now is None or self._wait_s(t, at, rack) <= 0}
        for t in due:
            del last[t]
        if not last:
            del self.entries[key]
        return (ctx, due) if due else None

    def _start(self, key: str) -> None:
        self.handles.pop(key, None)
        due = self.due(key, time.monotonic())
        entry = self.entries.get(key)
        if entry is not None:  # windows not yet due: look again when the first of them is
            rack = self.rack_of(key, entry[0])
            wait = max(0.05, min(self._wait_s(t, at, rack) for t, at in entry[1].items()))
            self.handles[key] = asyncio.get_running_loop().call_later(wait, self._start, key)
        if due is not None:
            task = asyncio.create_task(self.run(key, *due))
            self.tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.runs += 1
        if not task.cancelled() and task.exception() is not None:
            log.warning("reading %s windows back failed (a later batch recomputes them): %s",
                        self.what, task.exception())

    async def drain(self) -> None:
        """Run every pending read-back now (best effort), 16 at a time (a large cluster stops in seconds)."""
        for handle in self.handles.values():
            handle.cancel()
        self.handles.clear()
        pending = [(key, due) for key in list(self.entries) if (due := self.due(key, None))]
        for k in range(0, len(pending), 16):
            chunk = pending[k:k + 16]
            results = await asyncio.gather(*(self.run(key, *due) for key, due in chunk),
                                           return_exceptions=True)
            for (key, _), result in zip(chunk, results, strict=True):
                if isinstance(result, Exception):  # the store may be down at shutdown
                    log.warning("%s %r: final read-back of windows failed: %s", self.what, key, result)
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


#: The fields of a ``node`` point and of a ``job_window`` point a read-back compares with what it would
#: write (``window_field_values``, ``job_window_field_values``).
_ONES = dict.fromkeys(("e", "f", "c", "ce", "d", "u", "i", "ie", "n", "end_ns"), 1.0)
NODE_POINT_FIELDS = tuple(window_field_values(_ONES))
RACK_POINT_FIELDS = tuple(rack_field_values({**_ONES, "nodes": 1.0}))
JOB_WINDOW_FIELDS = (*job_window_field_values(_ONES), *WHO)


@dataclass
class _Stored:
    """One node's stored points in the windows a read-back read: ``node`` points by window start and
    ``job_window`` points by (window start, job id), as InfluxDB answered (field name -> value)."""

    nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)


@dataclass
class _NodeRead:
    """What a read-back read, per node: the rows of the job sums, and the stored points."""

    rows: dict[str, list[tuple[dict[str, str], dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list))
    stored: dict[str, _Stored] = field(default_factory=lambda: defaultdict(_Stored))

    def forget(self, node: str) -> None:
        self.rows.pop(node, None)
        self.stored.pop(node, None)

    def update(self, other: _NodeRead) -> None:
        self.rows.update(other.rows)
        self.stored.update(other.stored)


def _stored_equal(fields: Mapping[str, float | int | str], row: dict[str, Any] | None) -> bool:
    """Whether a stored point (``row``; None: none) already has every field value that writing
    ``fields`` would store (other fields it may have stay either way; pure)."""
    if row is None:
        return False
    for name, value in fields.items():
        got = row.get(name)
        if isinstance(value, str):
            if got != value.replace("\n", " "):  # string_field's newline
                return False
        elif got is None or isinstance(got, (str, bool)) or got != value:
            return False
    return True


class RackRollup:
    """See the module docstring."""

    def __init__(
        self, store: InfluxStore, resolution_s: int, max_gap_windows: int = 60, settle_s: float = 0.0,
        rack_delay_s: float = 0.0, instance_id: int | None = None,
    ) -> None:
        self.store = store
        self.settle_s = settle_s
        self.rack_delay_s = rack_delay_s
        #: per rack, its zone and the windows to settle, each with when it was last asked (monotonic s)
        self._settle: dict[str, tuple[str, dict[int, float]]] = {}
        self._settle_handles: dict[str, asyncio.TimerHandle] = {}
        self._settle_tasks: set[asyncio.Task[int]] = set()
        self.settle_runs = 0
        #: a settle recompute waits this much longer than settle_s, so that the windows asked for
        #: meanwhile (each due settle_s after it was asked) are read together
        self.settle_gather_s = settle_s / 4
        self.resolution_ns = resolution_s * NS_PER_S
        self.max_gap_windows = max_gap_windows
        self._node_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        #: per node, the changes of its windows made under its lock (read-backs read without it)
        self._changes: dict[str, _Changes] = defaultdict(_Changes)
        #: nodes a read-back read again under their lock (their windows changed during its first read)
        self.read_backs_again = 0
        #: node and job_window points final read-backs rewrote (the stored ones differed) / left (equal)
        self.read_back_rewrites = 0
        self.read_back_kept = 0
        #: rack points not written because the store had them already (read in the same request)
        self.rack_writes_kept = 0
        self._rack_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._queued: dict[str, tuple[set[int], asyncio.Future[int]]] = {}
        #: InfluxQL requests made: all of them, and those reading node and rack windows
        self.queries = 0
        self.node_queries = 0
        self.rack_queries = 0
        #: held node state (collector/node_state.py), used by ingest for streamed batches
        self.held = HeldNodes(store, self.resolution_ns)
        #: this instance's writer marks (collector/writer_marks.py; random id unless given)
        self.marks = WriterMarks(self.resolution_ns, instance_id)
        #: node windows whose final read-back found only this instance's mark, so read no job sums
        self.read_back_sums_skipped = 0
        #: requests reading writer marks (also in ``queries``), and those that failed or came back cut
        #: short (then every window was read back whole)
        self.mark_queries = 0
        self.mark_reads_failed = 0
        #: held rack state (collector/rack_state.py); ``configure``d with the topology's racks
        self.racks = HeldRacks(settle_s, lease_s=settle_s / 2)
        #: node windows / rack windows written from held state, waiting for their final read-back
        self._final = _ReadBacks("node", self._final_wait_s, lambda _node, ctx: ctx[0], self._node_read_back)
        #: node read-backs due together, per (rack, zone), read in one query per ``read_back_group``
        #: nodes: node -> (windows, future)
        self._read_back_queue: dict[tuple[str, str], dict[str, tuple[set[int], asyncio.Future[None]]]] = {}
        self._read_back_flush: asyncio.TimerHandle | None = None
        self.read_back_group = 16
        self.read_back_gather_s = 0.2
        #: read-backs of windows just closed start up to this long after window end + settle_s (per rack):
        #: most of a window, so each second of it carries few (their queries read whole windows)
        self.read_back_spread_s = resolution_s * 0.9
        self._read_back_tasks: set[asyncio.Task[None]] = set()
        self._rack_final = _ReadBacks("rack", self._final_wait_s, lambda rack, _ctx: rack,
                                      self._rack_read_back)
        #: read-backs of node windows written from held state that found other values
        self.final_mismatches = 0
        #: rack windows a recompute found held (summed from held state, or already stored as they are),
        #: and windows whose final read-back found node points other than those held
        self.rack_held_windows = 0
        self.rack_final_mismatches = 0
        #: batches whose node and job_window points (and rack points too) went in the batch's own
        #: write (write_batch)
        self.one_writes = 0
        self.rack_one_writes = 0
        #: a held rack's next window is read (and held) up to this long before it starts on the wall
        #: clock (a fixed offset per rack within it, at least 1 s), off the ack path; 0: not at all
        self.prefetch_lead_s = min(10.0, resolution_s / 4)
        self._prefetch: dict[tuple[str, int], asyncio.TimerHandle | asyncio.Task[None]] = {}
        #: next-window reads made ahead (also counted in rack_queries)
        self.rack_prefetches = 0
        #: per held rack, the turn that batches finding the rack busy join (``_run_turn``)
        self._turns: dict[str, _RackTurn] = {}
        self._turn_tasks: set[asyncio.Task[None]] = set()
        #: writes of rack turns that stored their rack points (``rack_one_writes`` counts their batches)
        self.rack_turns = 0
        #: rack windows of racks not held that turns summed from a lease (collector/rack_state.py), and
        #: turns whose write ended after a lease ran out (their batches then recompute from a read)
        self.rack_leased_windows = 0
        self.rack_leases_late = 0

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

    async def node_series(self, node: str, lo_ns: int, hi_ns: int) -> list[Series]:
        """The sums of each job series (GPU, job) of ``node`` per window in [lo_ns, hi_ns), read back."""
        res_s = self.resolution_ns // NS_PER_S
        self.node_queries += 1
        rows = await self._sums(queries.node_window_sums(self.store.measurement, node, lo_ns, hi_ns, res_s))
        return series_from_rows(rows)

    async def _read_series(self, node: str, window_starts: set[int]) -> list[Series]:
        out: list[Series] = []
        for lo, hi in self._runs(window_starts):
            out += [r for r in await self.node_series(node, lo, hi) if r[0] in window_starts]
        return out

    async def rack_points(self, rack: str, lo_ns: int, hi_ns: int) -> dict[int, RackWindow]:
        """The node points of ``rack`` per window in [lo_ns, hi_ns), as stored (one query)."""
        self.rack_queries += 1
        self.queries += 1
        q = queries.rack_window_points(self.store.measurement, rack, lo_ns, hi_ns)
        (result,) = await self.store.query(q)
        return points_from_result(result)

    async def _rack_points_stored(self, rack: str, zone: str, lo_ns: int, hi_ns: int,
                                  ) -> tuple[dict[int, RackWindow], dict[int, dict[str, Any]]]:
        """``rack_points``, and the rack's own stored points there, read after them in the same request
        (window -> field values)."""
        self.rack_queries += 1
        self.queries += 1
        m = self.store.measurement
        q = (queries.rack_window_points(m, rack, lo_ns, hi_ns) + "; "
             + queries.rack_stored_points(m, rack, zone, lo_ns, hi_ns, RACK_POINT_FIELDS))
        nodes, racks = await self.store.query(q)
        return points_from_result(nodes), {int(row["time"]): row for _, row in series_rows(racks)}

    async def rack_windows(self, rack: str, lo_ns: int, hi_ns: int) -> dict[int, dict[str, float]]:
        """Sums per window over all node points of ``rack`` in [lo_ns, hi_ns), read back."""
        return {t: w for t, points in (await self.rack_points(rack, lo_ns, hi_ns)).items()
                if (w := rack_sums(points)) is not None}

    async def recompute(
        self, node: str, rack: str, zone: str, window_starts: set[int], held: NodeHeld | None = None,
        samples: Iterable[Any] = (), points: list[JobPoint] | None = None,
    ) -> int:
        """Recompute the node's windows, then its rack's (coalesced); returns rack points written.

        With ``held`` (ingest, after a stored batch whose gpu ``samples`` and job ``points`` it gives),
        held windows are followed in memory and the others read back; without it every window is read
        back and the node's held state dropped (another writer, such as revisit.py, changed its points).
        """
        if not window_starts:
            return 0
        await self.recompute_node(node, rack, zone, window_starts, held, samples, points)
        return await self._recompute_rack(rack, zone, window_starts)

    async def recompute_rack(self, rack: str, zone: str, window_starts: set[int]) -> int:
        """Recompute the rack's windows (debounced, coalesced); returns rack points written."""
        return await self._recompute_rack(rack, zone, window_starts) if window_starts else 0

    async def write_batch(
        self, node: str, rack: str, zone: str, window_starts: set[int], held: NodeHeld,
        samples: Iterable[Any], points: list[JobPoint], lines: list[str],
    ) -> OneWrite:
        """Write a streamed batch's ``lines`` together with the node, ``job_window`` and (where the rack
        is held and free) ``rack`` points they make, in one store write: the ack then waits for one
        write instead of three in a row (see the module docstring, "One write per batch").

        Where held state cannot say what the windows will be without a read, the lines are written
        alone and the node's windows recomputed after them as before (``recompute_node``); where the
        store refused some of the batch's lines, the windows are read back and written again. All
        under the node's lock, so a final read-back never sees the batch's job points before held
        state does. ``rack_done`` False: the caller recomputes the rack's windows (``recompute_rack``)."""
        async with self._node_locks[node]:
            changes = self._changes[node]
            changes.bump(window_starts)  # before and after: a read-back reading meanwhile reads again
            try:
                return await self._write_batch_locked(node, rack, zone, window_starts, held, samples, points,
                                                      lines)
            finally:
                changes.bump(window_starts)

    async def _write_batch_locked(
        self, node: str, rack: str, zone: str, window_starts: set[int], held: NodeHeld,
        samples: Iterable[Any], points: list[JobPoint], lines: list[str],
    ) -> OneWrite:
        """``write_batch`` with the node's lock held."""
        follow = self.held.follow(held, points, window_starts) if held.valid else None
        windows: dict[int, dict[str, float]] = {}
        jobs: dict[tuple[int, str], dict[str, Any]] = {}
        if follow is not None:
            windows, jobs = node_windows_from_series(held_series(follow, window_starts))
        if follow is None or windows.keys() != window_starts:  # (every touched window has job points)
            result = await self.write_marked({node: window_starts}, lines)
            await self._recompute_node_locked(node, rack, zone, window_starts,
                                              None if result.rejected else held, samples, points)
            return OneWrite(result, False)
        marks, owners = self.marks.prepend({node: window_starts}, [])
        member = _TurnMember((node, zone), windows, lines,
                             node_lines(node, rack, zone, windows) + job_window_lines(node, rack, jobs),
                             marks, owners)
        starts = member.starts  # node_lines' order
        if self.racks.summable(rack) and all(self.racks.window(rack, t) is not None for t in starts) and (
                self.racks.eligible(rack) or 2 * len(lines) < self.store.config.write_batch_lines):
            # the rack point goes in this write: at once if the rack is free, else in the rack's next
            # turn, with every other batch of the rack that finds it busy meanwhile (_run_turn). A large
            # batch of a rack that is not held (a backfill) is written on its own, beside the other
            # nodes' (a turn would write them one after the other), and its rack point follows from
            # the lease (recompute_rack)
            rack_lock = self._rack_locks[rack]
            if not rack_lock.locked() and rack not in self._queued and rack not in self._turns:
                await self._run_turn(rack, zone, _RackTurn([member]))
            else:
                turn = self._turns.get(rack)
                if turn is None:
                    turn = self._turns[rack] = _RackTurn([])
                    task = asyncio.create_task(self._run_turn(rack, zone, turn))
                    self._turn_tasks.add(task)
                    task.add_done_callback(self._turn_tasks.discard)
                turn.members.append(member)
                await asyncio.shield(member.done)
            mine, refused, rack_done = member.done.result()
        else:
            self.racks.begin_write(rack, starts)
            try:
                result = await self.store.write_lines(member.marks + lines + member.extra)
            except BaseException:
                self.racks.wrote(rack, member.key, {}, starts)
                raise
            finally:
                self.racks.end_write(rack, starts)
            mine, refused = _split(self._marks_written(member.marks, member.mark_owners, result), len(lines))
            self._member_wrote(rack, member, refused)
            rack_done = False
        if refused:
            self._log_refused(node, member.extra, WriteResult(rejected=refused))
        if mine.rejected or not held.valid:  # the windows written may not be the store's: read
            await self._recompute_node_locked(node, rack, zone, window_starts, None, samples, points)
            return OneWrite(mine, False)
        self.held.commit(held, samples, points, follow)
        self.one_writes += 1
        if self.settle_s > 0:
            self._schedule_final(node, rack, zone, window_starts)
        return OneWrite(mine, rack_done and not refused)

    async def write_marked(self, node_windows: Mapping[str, Iterable[int]], lines: list[str]) -> WriteResult:
        """Write ``lines``, which store ``job`` points of these nodes' windows, after the writer marks
        those windows still need (collector/writer_marks.py), in the same request; the answer is for
        ``lines`` alone (their own indexes)."""
        marked, owners = self.marks.prepend(node_windows, lines)
        result = await self.store.write_lines(marked)
        return self._marks_written(marked[:len(owners)], owners, result)

    def _marks_written(self, marks: list[str], owners: list[tuple[str, int]],
                       result: WriteResult) -> WriteResult:
        """Note the writer marks a write (``marks`` first, then other lines) stored; the answer for the
        other lines. A refused mark is logged: other instances cannot see this write of its window."""
        refused, rest = _cut(result, len(owners))
        self.marks.confirm(owners, refused)
        if refused:
            self._log_refused("writer marks", marks, WriteResult(rejected=refused))
        return rest

    def _member_wrote(self, rack: str, member: _TurnMember, refused: dict[int, tuple[int, str]]) -> None:
        """Held rack state follows a batch's node points as stored (those refused: unknown now)."""
        starts = member.starts
        bad = {starts[i] for i in refused if i < len(starts)}
        self.racks.wrote(rack, member.key, {t: node_point(member.windows[t]) for t in starts if t not in bad},
                         bad)

    async def _run_turn(self, rack: str, zone: str, turn: _RackTurn) -> None:
        """One write of the batches of a held rack in ``turn`` (their lines, node and job_window points)
        and the rack points of their windows, summed from the rack's held node points with theirs: under
        the rack's lock, so no other rack point of the rack is in flight meanwhile. Batches of the rack
        that come while it waits for the lock join it; those that come later wait for the next turn.
        Each member's ``done`` gets (its lines' answer, its node/job lines refused, rack point stored)."""
        try:
            async with self._rack_locks[rack]:
                if self._turns.get(rack) is turn:
                    del self._turns[rack]  # closed: later batches make the next turn
                await self._write_turn(rack, zone, turn)
        except BaseException as exc:
            for member in turn.members:
                if not member.done.done():
                    member.done.set_exception(exc)
                    member.done.exception()  # retrieved; the member re-raises it
            if not isinstance(exc, Exception):
                raise

    async def _write_turn(self, rack: str, zone: str, turn: _RackTurn) -> None:
        members = turn.members
        rack_points: dict[int, RackWindow] = {}
        #: leased windows (rack not held: collector/rack_state.py), with when their lease runs out
        leases: dict[int, float] = {}
        for t in sorted({t for m in members for t in m.windows}):
            held = self.racks.held(rack, t)
            if held is None:  # dropped meanwhile: no rack point here, the members recompute the rack
                rack_points.clear()
                break
            if (ends := self.racks.lease_ends(rack, held)) is not None:
                leases[t] = ends
            theirs = {m.key: node_point(m.windows[t]) for m in members if t in m.windows}
            rack_points[t] = {**held.points, **theirs}
        rack_windows = {t: w for t, p in rack_points.items() if (w := rack_sums(p)) is not None}
        lines: list[str] = []
        spans: list[tuple[int, int]] = []
        for m in members:
            spans.append((len(lines), len(m.marks) + len(m.lines) + len(m.extra)))
            lines += m.marks
            lines += m.lines
            lines += m.extra
        rack_part = rack_lines(rack, zone, rack_windows)
        spans.append((len(lines), len(rack_part)))
        lines += rack_part
        for m in members:
            self.racks.begin_write(rack, m.starts)
        try:
            result = await self.store.write_lines(lines)
        except BaseException:
            for m in members:
                self.racks.wrote(rack, m.key, {}, m.starts)
            raise
        finally:
            for m in members:
                self.racks.end_write(rack, m.starts)
        parts = result.share(spans) if len(spans) > 1 else [result]
        answers = []
        for m, part in zip(members, parts, strict=False):
            mine, refused = _split(self._marks_written(m.marks, m.mark_owners, part), len(m.lines))
            self._member_wrote(rack, m, refused)
            answers.append((mine, refused))
        rack_refused = bool(parts[-1].rejected)
        if rack_refused:
            self._log_refused(rack, rack_part, parts[-1])
        stored = bool(rack_points) and not rack_refused and not any(refused for _, refused in answers)
        if stored and leases and self.racks.clock() >= min(leases.values()):
            # stored after a lease ran out: another replica's node point that landed since its read may
            # be missing, and its settle may have read already; the members recompute from a read
            stored = False
            self.rack_leases_late += 1
        if stored:
            for t, written in rack_points.items():  # stored as summed, while no other node wrote since
                held_window = self.racks.held(rack, t)
                if held_window is not None and held_window.points == written:
                    self.racks.written(rack, t, held_window.version)
            self.rack_held_windows += len(rack_points)
            self.rack_one_writes += len(members)
            self.rack_turns += 1
            self.rack_leased_windows += len(leases)
            self._schedule_prefetch(rack, zone, max(rack_points))
            if self.settle_s > 0:
                if leases:  # another replica may have written since the read: read again settle_s on
                    self._schedule_settle(rack, zone, set(leases))
                if held_for_good := set(rack_points) - leases.keys():
                    self._rack_final.schedule(rack, (zone,), held_for_good)
        for m, (mine, refused) in zip(members, answers, strict=True):
            m.done.set_result((mine, refused, stored))

    async def recompute_node(
        self, node: str, rack: str, zone: str, window_starts: set[int], held: NodeHeld | None = None,
        samples: Iterable[Any] = (), points: list[JobPoint] | None = None,
    ) -> None:
        """The node part of ``recompute``: its node and job_window points."""
        if not window_starts:
            return
        async with self._node_locks[node]:
            await self._recompute_node_locked(node, rack, zone, window_starts, held, samples, points)

    async def _recompute_node_locked(
        self, node: str, rack: str, zone: str, window_starts: set[int], held: NodeHeld | None,
        samples: Iterable[Any], points: list[JobPoint] | None,
    ) -> None:
        """``recompute_node`` with the node's lock held."""
        changes = self._changes[node]
        changes.bump(window_starts)  # before and after: a read-back reading meanwhile reads again
        try:
            await self._recompute_node_body(node, rack, zone, window_starts, held, samples, points)
        finally:
            changes.bump(window_starts)

    async def _recompute_node_body(
        self, node: str, rack: str, zone: str, window_starts: set[int], held: NodeHeld | None,
        samples: Iterable[Any], points: list[JobPoint] | None,
    ) -> None:
        if held is None or not held.valid:
            self.held.drop(node)
            held, read = None, set(window_starts)
        else:
            read = self.held.wrote(held, samples, points or [], window_starts)
        series = held_series(held.windows, window_starts - read) if held is not None else []
        fresh = await self._read_series(node, read) if read else []
        if held is not None:
            self.held.read(held, fresh, read)
        windows, jobs = node_windows_from_series(series + fresh)
        mine = {t: w for t, w in windows.items() if t in window_starts}
        await self._write_node(node, rack, zone, mine,
                               job_window_lines(node, rack, {k: w for k, w in jobs.items()
                                                             if k[0] in window_starts}))
        if held is not None:
            self.held.evict(held)
            if self.settle_s > 0 and window_starts - read:
                self._schedule_final(node, rack, zone, window_starts - read)

    def _schedule_prefetch(self, rack: str, zone: str, window_ns: int) -> None:
        """Read the held rack's next window ahead, before it starts on the wall clock, so that the
        first batches of the window find it held (one write each) instead of all waiting, in the
        same moment, for one read per rack. Only while that window is still to come: sample time
        far behind the wall clock (a backfill) is read when touched, as before."""
        nxt = window_ns + self.resolution_ns
        if self.prefetch_lead_s <= 0 or (rack, nxt) in self._prefetch or self.racks.held(rack, nxt):
            return
        until_s = (nxt - time.time_ns()) / NS_PER_S
        lead_s = 1.0 + zlib.crc32(rack.encode()) % 1000 / 1000 * max(0.0, self.prefetch_lead_s - 1.0)
        if until_s <= 0 or until_s > 2 * self.resolution_ns / NS_PER_S:
            return
        self._prefetch[(rack, nxt)] = asyncio.get_running_loop().call_later(
            max(0.0, until_s - lead_s), self._start_prefetch, rack, zone, nxt)

    def _start_prefetch(self, rack: str, zone: str, window_ns: int) -> None:
        task = asyncio.create_task(self._prefetch_window(rack, window_ns))
        self._prefetch[(rack, window_ns)] = task
        task.add_done_callback(lambda t: self._prefetched(rack, window_ns, t))

    async def _prefetch_window(self, rack: str, window_ns: int) -> None:
        async with self._rack_locks[rack]:
            if self.racks.eligible(rack) and self.racks.held(rack, window_ns) is None:
                self.rack_prefetches += 1
                await self._read_rack(rack, {window_ns})

    def _prefetched(self, rack: str, window_ns: int, task: asyncio.Task[None]) -> None:
        if self._prefetch.get((rack, window_ns)) is task:
            del self._prefetch[(rack, window_ns)]
        if not task.cancelled() and task.exception() is not None:  # the batches will read it
            log.info("rack %r: reading the next window ahead failed: %s", rack, task.exception())

    def counters(self) -> dict[str, int]:
        """Counters for /metrics (collector/metrics.py): ``name:label`` -> value."""
        return {
            "rollup_queries:node": self.node_queries, "rollup_queries:rack": self.rack_queries,
            "rollup_queries:fill": self.held.queries,
            "rollup_queries:interval": self.held.interval_checks_read,
            "rollup_read_backs:node": self.final_runs, "rollup_read_backs:rack": self.rack_final_runs,
            "rollup_read_back_mismatches:node": self.final_mismatches,
            "rollup_read_back_mismatches:rack": self.rack_final_mismatches,
            "rollup_settle_recomputes": self.settle_runs,
            "rollup_one_writes:node": self.one_writes, "rollup_one_writes:rack": self.rack_one_writes,
            "rollup_rack_turns": self.rack_turns,
            "rollup_rack_leases:windows": self.rack_leased_windows,
            "rollup_rack_leases:late": self.rack_leases_late,
            "rollup_queries:rack_ahead": self.rack_prefetches,
            "rollup_read_backs_again": self.read_backs_again,
            "rollup_points_kept:node": self.read_back_kept, "rollup_points_kept:rack": self.rack_writes_kept,
            "rollup_points_rewritten": self.read_back_rewrites,
            "rollup_read_back_sums_skipped": self.read_back_sums_skipped,
            "rollup_queries:marks": self.mark_queries,
        }

    @property
    def final_runs(self) -> int:
        """Read-backs of node windows written from held state run so far."""
        return self._final.runs

    @property
    def rack_final_runs(self) -> int:
        """Read-backs of rack windows written from held state run so far."""
        return self._rack_final.runs

    def _schedule_final(self, node: str, rack: str, zone: str, window_starts: set[int]) -> None:
        """Read these windows back once they have closed and ``settle_s`` after the last write from
        held state (see ``_final_wait_s``)."""
        self._final.schedule(node, (rack, zone), window_starts)

    def _final_wait_s(self, window_ns: int, written: float, rack: str = "") -> float:
        """Seconds until a window written from held state at ``written`` (monotonic) is read back:
        ``settle_s`` after that write, and not before the window's end (sample time, on the wall
        clock) plus ``settle_s``, so a window still filling in real time is read back once. The
        racks' read-backs of windows just closed are spread over ``read_back_spread_s`` (a fixed
        offset per rack), so they do not all reach InfluxDB in the same moment."""
        since_write = self.settle_s - (time.monotonic() - written)
        until_closed = (window_ns + self.resolution_ns - time.time_ns()) / NS_PER_S + self.settle_s
        if rack and self.read_back_spread_s > 0:
            until_closed += zlib.crc32(rack.encode()) % 1000 / 1000 * self.read_back_spread_s
        return max(0.0, since_write, until_closed)

    async def _node_read_back(self, node: str, ctx: tuple[str, ...], window_starts: set[int]) -> None:
        """A node's final read-back, read together with those of its rack's nodes due within
        ``read_back_gather_s`` (one query for up to ``read_back_group`` nodes)."""
        rack, zone = ctx
        queue = self._read_back_queue.setdefault((rack, zone), {})
        entry = queue.get(node)
        if entry is not None:  # already waiting: these windows go along
            entry[0].update(window_starts)
            await asyncio.shield(entry[1])
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        queue[node] = (set(window_starts), future)
        if self._read_back_flush is None:
            self._read_back_flush = loop.call_later(self.read_back_gather_s, self._flush_read_backs)
        await asyncio.shield(future)

    def _flush_read_backs(self) -> None:
        self._read_back_flush = None
        queued, self._read_back_queue = self._read_back_queue, {}
        for (rack, zone), nodes in queued.items():
            names = sorted(nodes)
            for k in range(0, len(names), self.read_back_group):
                group = {n: nodes[n] for n in names[k:k + self.read_back_group]}
                task = asyncio.create_task(self._read_back_group(rack, zone, group))
                self._read_back_tasks.add(task)
                task.add_done_callback(self._read_back_tasks.discard)

    async def _read_back_group(self, rack: str, zone: str,
                               group: dict[str, tuple[set[int], asyncio.Future[None]]]) -> None:
        """Run one grouped read-back and answer its nodes' waiters."""
        try:
            await self._read_back_many(rack, zone, {n: windows for n, (windows, _) in group.items()})
        except BaseException as exc:
            for _, future in group.values():
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # marked retrieved; the waiter re-raises it
            if not isinstance(exc, Exception):
                raise
            return
        for _, future in group.values():
            if not future.done():
                future.set_result(None)

    async def _read_back_many(self, rack: str, zone: str, nodes: dict[str, set[int]]) -> None:
        """The final read-back of several nodes of one rack (nodes due at the same windows: one query).
        Windows whose only writer mark is this instance's need no read (see the module docstring)."""
        nodes = await self._needing_sums(nodes)
        if not nodes:
            return
        names = sorted(nodes)  # locks in one order: no deadlock with another group
        # read without the nodes' locks (their batches go on meanwhile); then, under them, read again
        # only the nodes whose windows changed during that read (rare: a batch for a closed window)
        watches = {node: self._changes[node].watch(nodes[node]) for node in names}
        try:
            read = await self._read_node_rows(nodes, rack, zone)
        except BaseException:
            for node in names:
                self._changes[node].unwatch(watches[node])
            raise
        async with contextlib.AsyncExitStack() as stack:
            for node in names:
                await stack.enter_async_context(self._node_locks[node])
            changed = {node: nodes[node] for node in names if self._changes[node].unwatch(watches[node])}
            if changed:
                self.read_backs_again += len(changed)
                for node in changed:
                    read.forget(node)
                read.update(await self._read_node_rows(changed, rack, zone))
            writes = []
            for node in names:
                fresh = [r for r in series_from_rows(read.rows.get(node, [])) if r[0] in nodes[node]]
                writes.append(self._held_read_back(node, rack, zone, nodes[node], fresh,
                                                   read.stored.get(node, _Stored())))
            moved = set().union(*await asyncio.gather(*writes))
        if moved:
            await self._recompute_rack(rack, zone, moved)

    async def _needing_sums(self, nodes: dict[str, set[int]]) -> dict[str, set[int]]:
        """The nodes' windows whose job sums a final read-back must read: all but those whose only
        writer mark is this instance's (one request; all of them where it fails or comes back cut)."""
        plans = plan_read_backs(nodes, self._runs)
        m = self.store.measurement
        q = "; ".join(queries.window_writers(m, sorted(p.take), p.lo_ns, p.hi_ns) for p in plans)
        self.mark_queries += 1
        self.queries += 1
        try:
            results = await self.store.query(q)
        except Exception as exc:  # the sums read says what is wrong, if anything still is
            self.mark_reads_failed += 1
            log.info("reading writer marks failed (the windows are read back whole): %s", exc)
            return nodes
        if len(results) != len(plans) or any(
                r.get("partial") or any(s.get("partial") for s in r.get("series") or ()) for r in results):
            self.mark_reads_failed += 1  # cut short (max-row-limit): a mark left out may be another's
            return nodes
        writers = self.marks.writers(row for r in results for row in series_rows(r))
        only = self.marks.only_mine(writers, nodes)
        self.read_back_sums_skipped += sum(len(w) for w in only.values())
        return {n: rest for n, w in nodes.items() if (rest := w - only.get(n, set()))}

    async def _read_node_rows(self, nodes: dict[str, set[int]], rack: str, zone: str) -> _NodeRead:
        """The ``job`` sums of these nodes' windows, rows per node, and their stored ``node`` and
        ``job_window`` points there (in the same request, read after the sums): each node read over its
        own runs of windows only, nodes with the same runs in one query (collector/read_back_plan.py)."""
        res_s = self.resolution_ns // NS_PER_S
        out = _NodeRead()
        for plan in plan_read_backs(nodes, self._runs):
            self.node_queries += 1
            self.queries += 1
            names = sorted(plan.take)
            m = self.store.measurement
            q = (queries.nodes_window_sums(m, names, plan.lo_ns, plan.hi_ns, res_s) + "; "
                 + queries.nodes_stored_windows(m, names, rack, plan.lo_ns, plan.hi_ns, NODE_POINT_FIELDS,
                                                JOB_WINDOW_FIELDS))
            sums, node_points, job_windows = await self.store.query(q)
            for tags, row in series_rows(sums):
                node = tags.get("node", "")
                if plan.takes(node, int(row["time"])):
                    out.rows[node].append((tags, row))
            for tags, row in series_rows(node_points):
                node, t = tags.get("node", ""), int(row["time"])
                if tags.get("zone", "") == zone and plan.takes(node, t):
                    out.stored[node].nodes[t] = row
            for tags, row in series_rows(job_windows):
                node, t = tags.get("node", ""), int(row["time"])
                if plan.takes(node, t):
                    out.stored[node].jobs[(t, tags.get("job_id", ""))] = row
        return out

    async def _held_read_back(self, node: str, rack: str, zone: str, window_starts: set[int],
                              fresh: list[Series], stored: _Stored) -> set[int]:
        """Compare the node windows read back (``fresh``) with held state, hold them and rewrite the
        node's points from them where the stored ones differ (under the node's lock). Returns the windows
        whose rack point must be recomputed."""
        changes = self._changes[node]
        changes.bump(window_starts)  # before and after: a read-back reading meanwhile reads again
        try:
            return await self._held_read_back_locked(node, rack, zone, window_starts, fresh, stored)
        finally:
            changes.bump(window_starts)

    async def _held_read_back_locked(self, node: str, rack: str, zone: str, window_starts: set[int],
                                     fresh: list[Series], stored: _Stored) -> set[int]:
        held = self.held.get(node)
        if held is not None:
            common = {t for t in window_starts if t in held.windows}  # not evicted since
            mine = node_windows_from_series(held_series(held.windows, common))
            if mine != node_windows_from_series([r for r in fresh if r[0] in common]):
                self.final_mismatches += 1
                log.info("node %r: windows read back differ from held state (another replica or a "
                         "rewrite wrote there); rewritten from the store", node)
            self.held.read(held, fresh, window_starts)
            self.held.evict(held)
        windows, jobs = node_windows_from_series(fresh)
        # Rewrite only the points stored otherwise: the stored ones were read after the sums, so leaving
        # an equal point is this rewrite landing at that read (see collector/README.md, "Read-backs that
        # rewrite only what differs"). Never compared with held state: another replica may have written
        # an incomplete point after ours.
        node_changed = {t: w for t, w in windows.items()
                        if not _stored_equal(window_field_values(w), stored.nodes.get(t))}
        job_changed = {k: w for k, w in jobs.items()
                       if not _stored_equal(job_window_field_values(w), stored.jobs.get(k))}
        self.read_back_rewrites += len(node_changed) + len(job_changed)
        self.read_back_kept += len(windows) - len(node_changed) + len(jobs) - len(job_changed)
        same = {t: node_point(w) for t, w in windows.items() if t not in node_changed}
        # a held rack window holding another value of this node point than the store's: its rack point too
        moved = {t for t, p in same.items()
                 if (window := self.racks.window(rack, t)) is not None and window.get((node, zone)) != p}
        if same:
            self.racks.wrote(rack, (node, zone), same)
        await self._write_node(node, rack, zone, node_changed, job_window_lines(node, rack, job_changed))
        return moved | set(node_changed)

    async def _write_node(self, node: str, rack: str, zone: str, windows: dict[int, dict[str, float]],
                          job_lines: list[str]) -> None:
        """Write a node's ``node`` and ``job_window`` points, and tell the held racks which node points
        are now stored (and which may or may not be, where the write failed or a point was refused)."""
        lines = node_lines(node, rack, zone, windows) + job_lines
        if not lines:
            return
        starts = sorted(windows)  # node_lines' order
        self.racks.begin_write(rack, starts)
        try:
            result = await self.store.write_lines(lines)
        except BaseException:
            self.racks.wrote(rack, (node, zone), {}, starts)
            raise
        finally:
            self.racks.end_write(rack, starts)
        self._log_refused(node, lines, result)
        refused = {starts[i] for i in getattr(result, "rejected", {}) if i < len(starts)}
        self.racks.wrote(rack, (node, zone),
                         {t: node_point(windows[t]) for t in starts if t not in refused}, refused)

    @staticmethod
    def _log_refused(what: str, lines: list[str], result: Any) -> None:
        for index, (status, reason) in getattr(result, "rejected", {}).items():
            log.error("%s: InfluxDB refused a window point (HTTP %d): %s | %s",
                      what, status, reason, lines[index][:200])

    def _schedule_settle(self, rack: str, zone: str, window_starts: set[int]) -> None:
        """Recompute these rack windows from a read once more, ``settle_s`` after now at the earliest
        (each window that long after the last time it was asked; those due together in one recompute)."""
        now = time.monotonic()
        entry = self._settle.get(rack)
        if entry is None:
            entry = self._settle[rack] = (zone, {})
        entry[1].update(dict.fromkeys(window_starts, now))
        if rack not in self._settle_handles:
            loop = asyncio.get_running_loop()
            self._settle_handles[rack] = loop.call_later(self.settle_s + self.settle_gather_s,
                                                         self._start_settle, rack)

    def _start_settle(self, rack: str) -> None:
        self._settle_handles.pop(rack, None)
        zone, asked = self._settle[rack]
        now = time.monotonic()
        windows = {t for t, at in asked.items() if now - at >= self.settle_s * 0.999}
        for t in windows:
            del asked[t]
        if asked:  # asked again meanwhile: look again when the first of them is due (and gathered)
            wait = max(0.01, self.settle_s - (now - min(asked.values()))) + self.settle_gather_s
            self._settle_handles[rack] = asyncio.get_running_loop().call_later(wait, self._start_settle, rack)
        else:
            del self._settle[rack]
        if not windows:
            return
        task = asyncio.create_task(self._recompute_rack(rack, zone, windows, settle=False))
        self._settle_tasks.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[int]) -> None:
        self._settle_tasks.discard(task)
        self.settle_runs += 1
        if not task.cancelled() and task.exception() is not None:
            log.warning("settling rack windows failed (a later batch recomputes them): %s", task.exception())

    def pending_read_backs(self) -> int:
        """Nodes and racks whose held windows wait for their read-back, plus read-backs and rack settles
        running or scheduled (0: nothing deferred is left)."""
        return len(self._final) + len(self._rack_final) + len(self._settle) + len(self._settle_tasks)

    async def close(self) -> None:
        """Run pending read-backs and settle recomputes now (best effort), so a stopping collector
        leaves them exact."""
        if self._turn_tasks:  # rack turns of batches in flight: written or failed before the rest
            await asyncio.gather(*self._turn_tasks, return_exceptions=True)
        for ahead in self._prefetch.values():  # reads ahead are for batches yet to come: none now
            ahead.cancel()
        self._prefetch.clear()
        await self._final.drain()
        for handle in self._settle_handles.values():
            handle.cancel()
        pending = list(self._settle.items())
        self._settle_handles.clear()
        self._settle.clear()
        for rack, (zone, asked) in pending:
            try:
                await self._recompute_rack(rack, zone, set(asked), settle=False)
            except Exception as exc:  # the store may be down at shutdown
                log.warning("rack %r: final settle recompute failed: %s", rack, exc)
        if self._settle_tasks:
            await asyncio.gather(*self._settle_tasks, return_exceptions=True)
        await self._rack_final.drain()

    async def _read_rack(
        self, rack: str, window_starts: set[int], zone: str | None = None,
        stored: dict[int, dict[str, Any]] | None = None,
    ) -> tuple[dict[int, RackWindow], set[int], dict[int, RackWindow]]:
        """Read the rack's node points in these windows (one query per run); hold them where the rack is
        held (collector/rack_state.py). Returns (windows, those now held, what was held of them before).
        With ``stored`` (and ``zone``), the rack points stored there too, read after the node points."""
        got: dict[int, RackWindow] = {}
        kept: set[int] = set()
        before: dict[int, RackWindow] = {}
        for lo, hi in self._runs(window_starts):
            read = self.racks.begin_read(rack, {t for t in window_starts if lo <= t < hi})
            try:
                if stored is not None and zone is not None:
                    found, stored_run = await self._rack_points_stored(rack, zone, lo, hi)
                    stored.update(stored_run)
                else:
                    found = await self.rack_points(rack, lo, hi)
            except BaseException:
                self.racks.abort_read(rack, read)
                raise
            run_got, run_kept, run_before = self.racks.end_read(rack, read, found)
            got.update(run_got)
            kept |= run_kept
            before.update(run_before)
        return got, kept, before

    async def _rack_read_back(self, rack: str, ctx: tuple[str, ...], window_starts: set[int]) -> None:
        """Rewrite rack windows written from held state from the store's node points, hold those, and
        count the windows where they differ from what was held."""
        (zone,) = ctx
        async with self._rack_locks[rack]:
            stored: dict[int, dict[str, Any]] = {}
            got, _, before = await self._read_rack(rack, window_starts, zone, stored)
            for t, held_points in before.items():
                if held_points != got[t]:
                    self.rack_final_mismatches += 1
                    log.info("rack %r: node points read back differ from held state (another replica or "
                             "a rewrite wrote there); rack window rewritten from the store", rack)
            points = {}
            versions: dict[int, int] = {}
            for t, window in got.items():
                held = self.racks.held(rack, t)
                points[t] = window if held is None else held.points
                if held is not None:
                    versions[t] = held.version
            await self._write_rack(rack, zone, points, versions, stored)

    async def _recompute_rack(
        self, rack: str, zone: str, window_starts: set[int], settle: bool = True
    ) -> int:
        queued = self._queued.get(rack)
        if queued is not None:
            queued[0].update(window_starts)
            return await asyncio.shield(queued[1])
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queued[rack] = (set(window_starts), future)
        held_now: set[int] = set()
        versions: dict[int, int] = {}
        written = 0
        try:
            # debounce (nodes landing meanwhile share this one), unless the rack is summed from held state
            if settle and self.rack_delay_s > 0 and not self.racks.eligible(rack):
                await asyncio.sleep(self.rack_delay_s)
            async with self._rack_locks[rack]:
                todo, _ = self._queued.pop(rack)
                points: dict[int, RackWindow] = {}
                stored: dict[int, dict[str, Any]] = {}
                eligible = self.racks.eligible(rack)
                # held windows are summed from held state; of a rack that is not held, leased windows
                # (collector/rack_state.py), except in a settle recompute, which reads
                if eligible or (settle and self.racks.lease_s > 0):
                    held_now = {t for t in todo if self.racks.held(rack, t) is not None}
                #: windows summed from a lease that began before this recompute: when it runs out
                leases: dict[int, float] = {}
                for t in held_now:
                    held = self.racks.held(rack, t)
                    if held is not None and (ends := self.racks.lease_ends(rack, held)) is not None:
                        leases[t] = ends
                if todo - held_now:  # not held: read (and held or leased from now on)
                    got, kept, _ = await self._read_rack(rack, todo - held_now, zone, stored)
                    points.update(got)
                    held_now |= kept
                dropped = {t for t in held_now if self.racks.held(rack, t) is None and t not in points}
                if dropped:  # dropped while reading (a stream opened or closed, a write failed): read
                    got, kept, _ = await self._read_rack(rack, dropped)
                    points.update(got)
                    held_now -= dropped - kept
                for t in sorted(held_now):
                    held = self.racks.held(rack, t)
                    if held is None:  # dropped while reading: what was read
                        held_now.discard(t)
                        continue
                    points.pop(t, None)
                    if held.written != held.version:  # else the stored rack point is this one already
                        points[t] = held.points
                        versions[t] = held.version
                written = await self._write_rack(rack, zone, points, versions, stored)
                late = {t for t, ends in leases.items() if t in versions and self.racks.clock() >= ends}
                if late:  # stored after their lease ran out (see _write_turn): again, from a read
                    self.rack_leases_late += 1
                    stored = {}
                    got, _, _ = await self._read_rack(rack, late, zone, stored)
                    again: dict[int, RackWindow] = {}
                    again_versions: dict[int, int] = {}
                    for t, window in got.items():
                        held = self.racks.held(rack, t)  # (the read's answer, held anew)
                        again[t] = window if held is None else held.points
                        if held is not None:
                            again_versions[t] = held.version
                    written += await self._write_rack(rack, zone, again, again_versions, stored)
                self.rack_leased_windows += len(leases) - len(late)
        except BaseException as exc:
            entry = self._queued.get(rack)
            if entry is not None and entry[1] is future:
                self._queued.pop(rack)
            if not future.done():
                future.set_exception(exc)
                future.exception()  # marked retrieved; waiters re-raise it
            raise
        future.set_result(written)
        self.rack_held_windows += len(held_now)
        if versions:
            self._schedule_prefetch(rack, zone, max(versions))
        if self.settle_s > 0:
            if not eligible:  # read, and at most leased from now on: settle every window it covered
                if settle:
                    self._schedule_settle(rack, zone, todo)
            else:
                if versions:  # written from held state: read back once after the window's end instead
                    self._rack_final.schedule(rack, (zone,), set(versions))
                if settle and todo - held_now:
                    self._schedule_settle(rack, zone, todo - held_now)  # every other window it covered
        return written

    async def _write_rack(self, rack: str, zone: str, points: dict[int, RackWindow],
                          versions: dict[int, int], stored: dict[int, dict[str, Any]] | None = None) -> int:
        """Write the rack points of these windows, and mark those of held windows (``versions``: the
        version of their node points summed) as stored. Returns the points written. A window whose rack
        point is ``stored`` (read after its node points, under the rack's lock) with exactly these values
        is not written again: that is this write landing at that read."""
        windows = {t: w for t, window in points.items() if (w := rack_sums(window)) is not None}
        if stored:
            same = {t for t, w in windows.items() if _stored_equal(rack_field_values(w), stored.get(t))}
            self.rack_writes_kept += len(same)
            for t in same:
                del windows[t]
                if t in versions:
                    self.racks.written(rack, t, versions[t])
        lines = rack_lines(rack, zone, windows)
        if not lines:
            return 0
        result = await self.store.write_lines(lines)
        self._log_refused(rack, lines, result)
        starts = sorted(windows)  # rack_lines' order
        refused = {starts[i] for i in getattr(result, "rejected", {})}
        for t, version in versions.items():
            if t not in refused:
                self.racks.written(rack, t, version)
        return len(lines)
