"""Which nodes' windows one read-back query covers (pure; collector/rollup.py runs the queries).

A read-back of node windows reads every ``job`` point of the nodes it names over its time range, so its
cost in InfluxDB is about the nodes named times the range. Nodes whose windows are due at once share
one query (collector/rollup.py, ``_read_back_many``): in real time they are the same windows. In a
backfill they are not: each node's agent ships its own hours, and a query over the union of all their
windows, naming every node, reads every node's points over every other node's hours as well (twice the
points or more, measured with ``benchmarks/ingest.py``).

Here each node's windows become its own runs (``runs``: collector/rollup.py's split where windows lie
far apart), nodes with the same run share a query, and a run that lies inside another query's range,
at most twice its own length, joins that query (one query instead of two, for at most as many points
again: a node one window behind the others in real time). Each node takes from a query only the rows of
its own runs in it (``Query.take``), so no window is ever read twice for a node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: [lo, hi) in ns
Run = tuple[int, int]


@dataclass
class Query:
    """One read-back query: its time range, and for each node named the runs whose rows it takes."""

    lo_ns: int
    hi_ns: int
    take: dict[str, list[Run]] = field(default_factory=dict)

    def takes(self, node: str, t_ns: int) -> bool:
        """Whether the row of ``node`` at window ``t_ns`` answered by this query is the node's to take."""
        return any(lo <= t_ns < hi for lo, hi in self.take.get(node, ()))


def plan_read_backs(nodes: dict[str, set[int]], runs: Callable[[set[int]], list[Run]]) -> list[Query]:
    """The queries reading back each node's windows (``nodes``: node -> window starts), ordered by range.

    ``runs(windows)``: the [lo, hi) ranges covering the windows (sorted, disjoint). With every node
    due at the same windows this is one query per run naming all of them, as a read over the union was.
    """
    by_run: dict[Run, dict[str, list[Run]]] = {}
    for node in sorted(nodes):
        for run in runs(nodes[node]):
            by_run.setdefault(run, {}).setdefault(node, []).append(run)
    kept: list[Query] = []
    # longest first, so a short run finds the longer range that contains it
    for (lo, hi), take in sorted(by_run.items(), key=lambda kv: (kv[0][0] - kv[0][1], kv[0])):
        host = next((q for q in kept if q.lo_ns <= lo and hi <= q.hi_ns
                     and q.hi_ns - q.lo_ns <= 2 * (hi - lo)), None)
        if host is None:
            kept.append(Query(lo, hi, take))
            continue
        for node, node_runs in take.items():
            host.take.setdefault(node, []).extend(node_runs)
    kept.sort(key=lambda q: (q.lo_ns, q.hi_ns))
    return kept
