"""Held rack state: each node point of a rack's recent windows kept in memory, so a rack window is
summed without an InfluxDB read.

A ``rack`` point is the sum of the rack's ``node`` points in its window (one point per node series and
window). Here a replica keeps, per rack and recent window, every node point of the rack exactly as
stored (the floats of its fields, which ``repr`` in the line protocol round-trips), keyed by its series
(node, zone), and ``rack_sums`` adds them up.

**The order of the sum is ours, not InfluxDB's.** ``rack_sums`` adds the node points of a window in
the order of their series key (node, then zone, as strings), for held points and points read back alike
(``queries.rack_window_points`` reads the raw points, not InfluxDB's ``sum()``, whose order across
series is the storage engine's and differs between InfluxDB 1.x, 2.x and 3.x). So a rack point written
from held state is bit for bit what a read-back recompute writes, whatever the server.

**Seeded by one read, then following this replica's writes.** The first recompute of a rack window that
is not held reads the rack's node points in it (one query per run of windows) and holds them; after that
every node point this replica writes (``RackRollup.recompute_node`` and its read-backs) replaces its
series' value (``wrote``). Node points written while such a read is in flight are applied over its
answer (they are later than anything the read saw, or equal to it). A node point whose write failed, was
cancelled or was refused leaves the store's value unknown: its window is dropped (``wrote`` with
``failed``) and read again at the next recompute, and a read in flight meanwhile does not hold it.

**Only where nothing else writes the rack's node points.** A rack is *held* (``eligible``) only while
every node configured in it (the topology's ``[[racks]]`` nodes) has an ingest stream open on this
replica, and has had for at least ``settle_s`` (so the last batches a node sent to another replica
before it moved here have landed). A rack that auto-registered nodes may join
(``server.auto_register``, the default rack) or that has no configured nodes is never held. Whenever a
stream of one of its nodes opens or closes, the rack's held windows are dropped. Unary ``Write``\\ s
and revisits (collector/revisit.py) on this replica write node points through ``RackRollup``, so they
are followed like any other write. Other racks use the read per recompute and the settle recompute
``settle_s`` later, as before.

**Leased windows, for racks that are not held.** Any other rack (the default rack, a rack one of whose
nodes streams to another replica) may still be summed without a read for a short while: what a read of
its window found (sent at time *s*), plus every node point this replica wrote there since, is that
window's *lease*, good until *s* + ``lease_s`` (``replica_settle_s`` / 2; 0 disables). Batches of the rack
within it write their rack point from it (``RackRollup``'s rack turns, one write per small batch; a large
batch writes alone and its rack recompute sums from the lease), and a turn whose write ended after the
lease ran out is not taken as the rack's write: its batches recompute the rack from a read before their
ack. Another replica B's node point that landed after *s* is missing from such a rack point, but B
follows its own write with a read of the window at least ``settle_s`` later (its settle recompute, or a
held rack's final read-back), after every rack point this lease gave (landed before *s* + ``lease_s``);
and every window written from a lease is itself settled ``settle_s`` later (a read), so the last write
of each window is one read after every node point written before it, as for the read per recompute.
What widens: where both replicas die within ``settle_s`` of such writes, the window of a rack point read
before another replica's node point landed is up to ``lease_s`` instead of one recompute's read-to-write
time. A window leased before its rack became eligible keeps only its lease. Up to ``max_leased_windows``
windows (a backfill's batches span tens of windows each) and ``max_leased_points`` node points per rack,
those past their lease dropped first, then the oldest.

What this cannot see (another replica's revisit of this rack's nodes, a stream a node left on another
replica that is still writing) is caught by the final read-back: ``RackRollup`` reads every rack window
it wrote from held state back once more after the window's end plus ``settle_s`` (and ``settle_s``
after its last write), rewrites the rack point from the answer, holds the answer and counts the windows
where it differed (``rack_final_mismatches``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gridwatt.collector.accounting import J_PER_KWH

#: The summed float fields of a ``node`` point, in this order in ``NodePoint.sums``.
NODE_FIELDS = ("it_energy_kwh", "facility_energy_kwh", "co2e_g", "estimated_co2e_g", "gpu_seconds",
               "util_pct_s", "idle_s", "idle_energy_kwh")
#: The rack sums (collector/rollup.py's keys) those fields add into, in the same order.
_RACK_KEYS = ("e", "f", "c", "ce", "d", "u", "i", "ie")

#: (node, zone): the tags that tell a rack's node series apart.
SeriesKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class NodePoint:
    """A stored ``node`` point's summed fields (None: absent) and its ``gpu_count`` (None: absent)."""

    sums: tuple[float | None, ...]
    gpu_count: int | None


#: A rack's node points in one window, by series.
RackWindow = dict[SeriesKey, NodePoint]


def node_point(w: Mapping[str, float]) -> NodePoint:
    """The fields of the ``node`` point written for node sums ``w`` (rollup's keys), as stored: the
    same arithmetic as ``rollup._window_fields`` (pure)."""
    return NodePoint((w["e"] / J_PER_KWH, w["f"] / J_PER_KWH, w["c"], w["ce"], w["d"], w["u"], w["i"],
                      w["ie"] / J_PER_KWH), int(w["n"]))


def points_from_result(result: Mapping[str, Any]) -> dict[int, RackWindow]:
    """The answer of ``queries.rack_window_points`` (raw node points, grouped by series) per window, from
    one statement's result as InfluxDB answers it (series of columns and value rows), read by column
    position (a dict per row cost 3x as much): absent fields None (pure)."""
    out: dict[int, RackWindow] = {}
    for series in result.get("series") or ():
        tags = series.get("tags") or {}
        key = (tags.get("node", ""), tags.get("zone", ""))
        where = {name: k for k, name in enumerate(series["columns"])}
        at = where["time"]
        picks = [where.get(name) for name in NODE_FIELDS]
        count_at = where.get("gpu_count")
        for values in series["values"]:
            width = len(values)
            sums = tuple(None if k is None or k >= width or (v := values[k]) is None else float(v)
                         for k in picks)
            count = None if count_at is None or count_at >= width else values[count_at]
            point = NodePoint(sums, None if count is None else int(count))
            out.setdefault(int(values[at]), {})[key] = point
    return out


def rack_sums(window: RackWindow) -> dict[str, float] | None:
    """The rack's sums over its node points in one window (pure): the floats added one by one in
    series-key order (node, then zone); energies back in J; ``n`` the GPUs, ``nodes`` the points with a
    ``gpu_count``. None for a window without node points (no rack point)."""
    if not window:
        return None
    acc = [0.0] * len(_RACK_KEYS)
    gpus = 0
    nodes = 0
    for key in sorted(window):
        point = window[key]
        for k, value in enumerate(point.sums):
            if value is not None:
                acc[k] += value
        if point.gpu_count is not None:
            gpus += point.gpu_count
            nodes += 1
    w = dict(zip(_RACK_KEYS, acc, strict=True))
    w["e"] *= J_PER_KWH
    w["f"] *= J_PER_KWH
    w["ie"] *= J_PER_KWH
    w["n"] = float(gpus)
    w["nodes"] = float(nodes)
    return w


@dataclass
class HeldWindow:
    """A held rack window: its node points, a version that changes with them, and the version the
    stored rack point was last written from (-1: none since held); ``seeded_at``: when the read that
    seeded it was sent (monotonic s; what a lease runs from)."""

    points: RackWindow
    version: int = 0
    written: int = -1
    seeded_at: float = 0.0


@dataclass
class RackRead:
    """A read of some of a rack's windows in flight: the node points written meanwhile, and the
    windows whose writes failed meanwhile (not held from this read)."""

    windows: set[int]
    epoch: int
    #: when the read was sent (monotonic s): what it holds is leased from then (``HeldRacks.lease_s``)
    started: float = 0.0
    wrote: dict[int, RackWindow] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    #: windows with a node point write in flight at some time during the read: the read may have
    #: seen it before its writer did, so its answer is not compared with what was held
    busy: set[int] = field(default_factory=set)


class HeldRacks:
    """The held racks of this replica (see the module docstring); ``max_windows`` per rack."""

    def __init__(self, settle_s: float, max_windows: int = 4, lease_s: float = 0.0,
                 max_leased_windows: int = 256, max_leased_points: int = 50_000) -> None:
        self.settle_s = settle_s
        self.max_windows = max_windows
        #: how long a window of a rack that is not held may be summed from what a read found plus this
        #: replica's writes since (0: never; see the module docstring, "Leased windows")
        self.lease_s = lease_s
        self.max_leased_windows = max_leased_windows
        #: and at most this many node points in a rack's leased windows (a large default rack's backfill)
        self.max_leased_points = max_leased_points
        #: the monotonic clock (s) of eligibility and leases (a test may hold it still)
        self.clock: Callable[[], float] = time.monotonic
        self._members: dict[str, frozenset[str]] = {}
        self._rack_of: dict[str, str] = {}
        self._open: Counter[str] = Counter()
        self._missing: dict[str, int] = {}
        self._since: dict[str, float] = {}
        self._epoch: Counter[str] = Counter()
        self._windows: dict[str, dict[int, HeldWindow]] = {}
        self._reads: dict[str, list[RackRead]] = {}
        self._writing: Counter[tuple[str, int]] = Counter()

    def configure(self, members: Mapping[str, Iterable[str]]) -> None:
        """The racks that may be held, each with its configured nodes (collector/topology.py)."""
        self._members = {rack: frozenset(nodes) for rack, nodes in members.items() if nodes}
        self._rack_of = {node: rack for rack, nodes in self._members.items() for node in nodes}
        self._missing = {rack: sum(1 for n in nodes if not self._open[n])
                         for rack, nodes in self._members.items()}
        now = self.clock()
        self._since = dict.fromkeys(self._members, now)
        self._windows.clear()

    def stream_opened(self, node: str) -> None:
        """An ingest stream of ``node`` opened here: it may have written elsewhere until now."""
        rack = self._rack_of.get(node)
        if self._open[node] == 0 and rack is not None:
            self._missing[rack] -= 1
        self._open[node] += 1
        if rack is not None:
            self._changed(rack)

    def stream_closed(self, node: str) -> None:
        """An ingest stream of ``node`` ended here: it may write elsewhere from now on."""
        if self._open[node] <= 0:
            return
        self._open[node] -= 1
        if self._open[node] == 0:
            del self._open[node]
        rack = self._rack_of.get(node)
        if rack is not None:
            if node not in self._open:
                self._missing[rack] += 1
            self._changed(rack)

    def _changed(self, rack: str) -> None:
        self._since[rack] = self.clock()
        self.drop(rack)

    def drop(self, rack: str) -> None:
        """Forget the rack's held windows; reads in flight do not hold what they find."""
        self._windows.pop(rack, None)
        self._epoch[rack] += 1

    def eligible(self, rack: str) -> bool:
        """Whether the rack's windows may be held: all its nodes stream here, for settle_s already."""
        return (self._missing.get(rack, 1) == 0
                and self.clock() - self._since[rack] >= self.settle_s)

    def summable(self, rack: str) -> bool:
        """Whether the rack's windows may be summed from held state: it is held (``eligible``), or its
        windows are leased (``lease_s`` > 0)."""
        return self.lease_s > 0 or self.eligible(rack)

    def window(self, rack: str, window_ns: int) -> RackWindow | None:
        """The held node points of a rack window (None: not held)."""
        held = self.held(rack, window_ns)
        return None if held is None else held.points

    def held(self, rack: str, window_ns: int, at: float | None = None) -> HeldWindow | None:
        """A held window; of a rack that is not ``eligible``, only while its lease runs (at ``at``,
        monotonic s; now by default)."""
        windows = self._windows.get(rack)
        held = None if windows is None else windows.get(window_ns)
        if held is not None and not self.leased(held, at) and not self._held_as_eligible(rack, held):
            return None
        return held

    def _held_as_eligible(self, rack: str, held: HeldWindow) -> bool:
        """Whether a window is held for good: the rack is eligible and was so when its seed was read
        (a window leased before, when another replica might still have written there, keeps its lease)."""
        return self.eligible(rack) and held.seeded_at >= self._since[rack] + self.settle_s

    def lease_ends(self, rack: str, held: HeldWindow) -> float | None:
        """When a held window's lease runs out (monotonic s); None where it is held for good."""
        return None if self._held_as_eligible(rack, held) else held.seeded_at + self.lease_s

    def leased(self, held: HeldWindow, at: float | None = None) -> bool:
        """Whether a window's lease still runs at ``at`` (monotonic s; now by default)."""
        return (self.clock() if at is None else at) < held.seeded_at + self.lease_s

    def written(self, rack: str, window_ns: int, version: int) -> None:
        """The rack point of a held window was stored from its node points at ``version``: while they
        do not change, writing it again would change nothing."""
        held = self.held(rack, window_ns)
        if held is not None:
            held.written = version

    def held_windows(self, rack: str) -> int:
        return len(self._windows.get(rack, {}))

    def wrote(self, rack: str, key: SeriesKey, points: Mapping[int, NodePoint],
              failed: Iterable[int] = ()) -> None:
        """Follow this replica's write of a node's points (``failed``: windows whose point may or may
        not be stored now)."""
        held = self._windows.get(rack)
        reads = self._reads.get(rack, ())
        for t, point in points.items():
            window = None if held is None else held.get(t)
            if window is not None and window.points.get(key) != point:
                window.points[key] = point
                window.version += 1
            for read in reads:
                if t in read.windows:
                    read.wrote.setdefault(t, {})[key] = point
        for t in failed:
            if held is not None:
                held.pop(t, None)
            for read in reads:
                read.failed.add(t)

    def begin_write(self, rack: str, windows: Iterable[int]) -> None:
        """A write of node points of the rack in these windows starts (``end_write`` when it ended)."""
        windows = list(windows)
        for t in windows:
            self._writing[(rack, t)] += 1
        for read in self._reads.get(rack, ()):
            read.busy.update(t for t in windows if t in read.windows)

    def end_write(self, rack: str, windows: Iterable[int]) -> None:
        for t in windows:
            self._writing[(rack, t)] -= 1
            if self._writing[(rack, t)] <= 0:
                del self._writing[(rack, t)]

    def begin_read(self, rack: str, windows: set[int]) -> RackRead:
        read = RackRead(set(windows), self._epoch[rack], self.clock())
        read.busy = {t for t in windows if (rack, t) in self._writing}
        self._reads.setdefault(rack, []).append(read)
        return read

    def abort_read(self, rack: str, read: RackRead) -> None:
        reads = self._reads.get(rack, [])
        if read in reads:
            reads.remove(read)
        if not reads:
            self._reads.pop(rack, None)

    def end_read(
        self, rack: str, read: RackRead, found: Mapping[int, RackWindow],
    ) -> tuple[dict[int, RackWindow], set[int], dict[int, RackWindow]]:
        """The windows read, with the node points written meanwhile over them; hold them where the rack
        is eligible. Returns (windows, those now held, what was held of them before, where no node point
        write was in flight during the read)."""
        self.abort_read(rack, read)
        got: dict[int, RackWindow] = {}
        for t in read.windows:
            window = dict(found.get(t, {}))
            window.update(read.wrote.get(t, {}))
            got[t] = window
        before: dict[int, RackWindow] = {}
        eligible = self.eligible(rack)
        if read.epoch != self._epoch[rack] or not (eligible or self.lease_s > 0):
            return got, set(), before
        held = self._windows.setdefault(rack, {})
        kept = read.windows - read.failed
        for t in kept:
            if t in held and t not in read.busy:
                before[t] = held[t].points
            held[t] = HeldWindow(dict(got[t]), seeded_at=read.started)
        if not eligible:  # leased: those whose lease ran out go first
            now = self.clock()
            for t in [t for t, w in held.items() if not self.leased(w, now)]:
                del held[t]
        limit = self.max_windows if eligible else self.max_leased_windows
        if len(held) > limit:
            for t in sorted(held)[:-limit]:
                del held[t]
        if not eligible:
            points = sum(len(w.points) for w in held.values())
            for t in sorted(held):  # the oldest go first
                if points <= self.max_leased_points:
                    break
                points -= len(held.pop(t).points)
        return got, kept & held.keys(), before
