"""Writer marks: which collector processes wrote ``job`` points of a node in a window.

Every write that stores ``job`` points of node N in window W (an ingest batch, a rack turn, a unary
``Write``, a revisit) also stores, earlier in the same request, a mark of (N, W) naming its writer: a
``window_writer`` point (collector/schema.py) with tag ``node``, integer field ``w`` = the writer's
*instance id* (random, new at every start of a collector process: ``RackRollup`` makes one), at
``W + instance_id mod resolution_ns``. Marks of different instances in one window are different points
(InfluxDB keeps one value per series, timestamp and field), unless two instances' ids agree modulo the
window length (1 in 6·10^10 for a pair of instances at 60 s windows); then the later write hides the
earlier mark, which can only make a read-back skip wrongly if, besides, the two writers' read-backs
interleave as described in collector/rollup.py ("Final read-backs that read only the marks").

A mark is written once per instance, node and window: ``pending`` says which windows of a write still
need one, ``stored`` remembers those whose mark an acknowledged write stored (bounded: a forgotten window
is marked again, which is harmless). A mark is never written after the points it speaks for: where a
write is cut into several requests they go in order, marks first.

A final read-back of windows this instance wrote from held state reads the marks first
(``queries.window_writers``) and reads the ``job`` sums only of the windows some other instance (or
none) marked; ``only_mine`` gives those that need none. Why that is exact: collector/rollup.py.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from gridwatt.collector.schema import writer_mark_key

#: Instance ids are drawn from [1, 2**62): any fits InfluxDB's signed 64-bit integer field.
ID_BITS = 62


def new_instance_id() -> int:
    """A random instance id (never 0)."""
    return secrets.randbits(ID_BITS) or 1


class WriterMarks:
    """This instance's writer marks: their lines, and which are known stored (see the module docstring)."""

    def __init__(self, resolution_ns: int, instance_id: int | None = None, max_nodes: int = 20_000,
                 max_windows: int = 8) -> None:
        self.resolution_ns = resolution_ns
        self.instance_id = new_instance_id() if instance_id is None else instance_id
        #: where in each window this instance's mark lies (ns after its start)
        self.offset_ns = self.instance_id % resolution_ns
        self.max_nodes = max_nodes
        self.max_windows = max_windows
        self._stored: OrderedDict[str, list[int]] = OrderedDict()
        #: mark lines written / refused by InfluxDB
        self.written = 0
        self.refused = 0

    def pending(self, node: str, window_starts: Iterable[int]) -> list[int]:
        """The windows (sorted) whose mark of this instance is not known to be stored."""
        have = self._stored.get(node, ())
        return sorted(t for t in set(window_starts) if t not in have)

    def lines(self, node: str, window_starts: Iterable[int]) -> list[str]:
        """The mark lines of these windows (pure, in the order given)."""
        key = writer_mark_key(node)
        return [f"{key} w={self.instance_id}i {t + self.offset_ns}" for t in window_starts]

    def stored(self, node: str, window_starts: Iterable[int]) -> None:
        """An acknowledged write stored these windows' marks."""
        starts = list(window_starts)
        if not starts:
            return
        have = self._stored.pop(node, [])
        have = sorted(set(have).union(starts))[-self.max_windows:]
        self._stored[node] = have
        while len(self._stored) > self.max_nodes:
            self._stored.popitem(last=False)

    def prepend(self, node_windows: Mapping[str, Iterable[int]], lines: list[str],
                ) -> tuple[list[str], list[tuple[str, int]]]:
        """The mark lines the nodes' windows still need, then ``lines``; and (node, window) of each mark
        line, in order (``confirm`` takes them once written)."""
        marks: list[str] = []
        owners: list[tuple[str, int]] = []
        for node, windows in node_windows.items():
            todo = self.pending(node, windows)
            marks += self.lines(node, todo)
            owners += [(node, t) for t in todo]
        return marks + lines, owners

    def confirm(self, owners: list[tuple[str, int]], refused: Iterable[int]) -> None:
        """A write of ``owners``' mark lines (first in it) was stored, but for the ``refused`` indexes."""
        bad = {i for i in refused if i < len(owners)}
        by_node: dict[str, list[int]] = {}
        for i, (node, t) in enumerate(owners):
            if i not in bad:
                by_node.setdefault(node, []).append(t)
        for node, starts in by_node.items():
            self.stored(node, starts)
        self.written += len(owners)
        self.refused += len(bad)

    def writers(self, rows: Iterable[tuple[dict[str, str], dict[str, Any]]],
                ) -> dict[str, dict[int, set[int]]]:
        """The rows of ``queries.window_writers`` as node -> window start -> instance ids (pure)."""
        out: dict[str, dict[int, set[int]]] = {}
        res = self.resolution_ns
        for tags, row in rows:
            w = row.get("w")
            if w is None or isinstance(w, bool):
                continue
            t = int(row["time"])
            out.setdefault(tags.get("node", ""), {}).setdefault(t - t % res, set()).add(int(w))
        return out

    def only_mine(self, writers: Mapping[str, Mapping[int, set[int]]],
                  nodes: Mapping[str, set[int]]) -> dict[str, set[int]]:
        """Of each node's windows, those whose only mark is this instance's (pure): no other instance
        wrote job points there before the marks were read."""
        mine = {self.instance_id}
        out: dict[str, set[int]] = {}
        for node, windows in nodes.items():
            marked = writers.get(node, {})
            only = {t for t in windows if marked.get(t) == mine}
            if only:
                out[node] = only
        return out
