"""Per-node budgets, so that one node (careless or hostile) cannot exhaust what all nodes share.

* ``JobSeriesBudget``: new job ids (each one new ``job``/``job_window`` series, and one more value of
  the ``job_id`` tag, which InfluxDB caps at ``max-values-per-tag``) one node may introduce per hour.
* ``NodeSlots``: streams open and batches in flight per node.

Pure bookkeeping in memory; each collector replica keeps its own (see collector/README.md, "Bounds").
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

HOUR_S = 3600.0


class JobSeriesBudget:
    """At most ``per_hour`` job ids new to a node within any hour (sliding window).

    A node's known job ids are remembered (the most recent ``remember`` of them); one that was
    forgotten counts as new again, which only errs on the strict side.
    """

    def __init__(self, per_hour: int, remember: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_hour = per_hour
        self.remember = remember or max(4 * per_hour, 1000)
        self.clock = clock
        self._known: dict[str, OrderedDict[str, None]] = {}
        self._admitted: dict[str, deque[tuple[float, int]]] = {}

    def _used(self, node: str, now: float) -> int:
        q = self._admitted.setdefault(node, deque())
        while q and q[0][0] <= now - HOUR_S:
            q.popleft()
        return sum(n for _, n in q)

    def new_jobs(self, node: str, job_ids: Iterable[str]) -> list[str]:
        """The ids among ``job_ids`` that are new to ``node`` (distinct, in order)."""
        known = self._known.get(node, OrderedDict())
        out: dict[str, None] = {}
        for job in job_ids:
            if job not in known:
                out[job] = None
        return list(out)

    def check(self, node: str, new: list[str]) -> float:
        """0 when ``new`` fits the node's budget now; else seconds until it may fit (inf: never)."""
        if not new:
            return 0.0
        if len(new) > self.per_hour:
            return float("inf")
        now = self.clock()
        used = self._used(node, now)
        if used + len(new) <= self.per_hour:
            return 0.0
        need = used + len(new) - self.per_hour
        for t, n in self._admitted[node]:
            need -= n
            if need <= 0:
                return max(t + HOUR_S - now, 1.0)
        return HOUR_S

    def admit(self, node: str, job_ids: Iterable[str], new: list[str]) -> None:
        """Record a stored batch: its new ids spend budget; all of its ids are now known."""
        now = self.clock()
        if new:
            self._admitted.setdefault(node, deque()).append((now, len(new)))
        known = self._known.setdefault(node, OrderedDict())
        # each distinct id once, in the order of its last occurrence: the order the known ids end
        # in is the same as when every occurrence moves its id to the end
        for job in reversed(dict.fromkeys(reversed(list(job_ids)))):
            known[job] = None
            known.move_to_end(job)
        while len(known) > self.remember:
            known.popitem(last=False)

    def used(self, node: str) -> int:
        """New job ids admitted for ``node`` in the last hour."""
        return self._used(node, self.clock())


class NodeSlots:
    """Counts of something held per node (streams, batches in flight) against a bound."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def try_take(self, node: str) -> bool:
        """Take one slot of ``node``; False (nothing taken) when it holds ``limit`` already."""
        held = self._held.get(node, 0)
        if held >= self.limit:
            return False
        self._held[node] = held + 1
        return True

    def release(self, node: str) -> None:
        held = self._held.get(node, 0) - 1
        if held > 0:
            self._held[node] = held
        else:
            self._held.pop(node, None)

    def held(self, node: str) -> int:
        return self._held.get(node, 0)
