"""Agents' spool ledgers: logged when something was lost, stored in the ``agent_ledger`` measurement.

Every batch carries the sending agent's ledger (cumulative counts since its spool
was created: sampled, acknowledged, rejected, evicted + evicted_energy_j, lost,
pending). The collector stores one point per node and minute (the ledger's own
time, floored to the minute), so a resent batch or a second report in the same
minute overwrites the point instead of adding one. The fields are cumulative:
read them with ``last()``, never ``sum()``::

    SELECT last(evicted), last(evicted_energy_j) FROM agent_ledger WHERE node = 'gpu-node-01'
"""

from __future__ import annotations

import logging
import math

from gridwatt.collector.schema import AGENT_LEDGER, ledger_key
from gridwatt.v1 import telemetry_pb2 as pb

log = logging.getLogger("gridwatt.collector.ledger")

MEASUREMENT = AGENT_LEDGER
#: One stored ledger point per node per this many nanoseconds.
RESOLUTION_NS = 60 * 1_000_000_000


def ledger_problem(ledger: pb.SpoolLedger) -> str | None:
    """Why a batch's ledger cannot be stored (named field), or None."""
    e = ledger.evicted_energy_j
    if not math.isfinite(e) or e < 0:
        return f"field ledger.evicted_energy_j: value {e} is not a finite, non-negative number"
    if ledger.at_ns <= 0:
        return f"field ledger.at_ns: value {ledger.at_ns} is not a time"
    return None


def ledger_line(node: str, rack: str, ledger: pb.SpoolLedger) -> str:
    """The ``agent_ledger`` point for this report (deterministic: node tag + minute of at_ns)."""
    t_ns = ledger.at_ns - ledger.at_ns % RESOLUTION_NS
    balanced = ledger.sampled == (ledger.acknowledged + ledger.rejected + ledger.evicted + ledger.lost
                                  + ledger.pending)
    return (
        f"{ledger_key(node, rack)} "
        f"sampled={ledger.sampled}i,acknowledged={ledger.acknowledged}i,rejected={ledger.rejected}i,"
        f"evicted={ledger.evicted}i,evicted_energy_j={float(ledger.evicted_energy_j)!r},"
        f"lost={ledger.lost}i,pending={ledger.pending}i,quarantines={ledger.quarantines}i,"
        f"at_ns={ledger.at_ns}i,balanced={'true' if balanced else 'false'} {t_ns}"
    )


class LedgerBook:
    """Remembers each node's last ledger, to log evictions and losses once, when they grow."""

    def __init__(self) -> None:
        self._last: dict[str, pb.SpoolLedger] = {}

    def lines(self, batch: pb.Batch, rack: str) -> list[str]:
        """The point to store for this batch's ledger ([] if it has none); logs what is new."""
        if not batch.HasField("ledger"):
            return []
        new = batch.ledger
        problem = ledger_problem(new)
        if problem is not None:  # the samples still count: a bad ledger is skipped, not the batch
            log.warning("node %r: ledger not stored: %s", batch.node, problem)
            return []
        old = self._last.get(batch.node)
        if old is None or new.at_ns >= old.at_ns:
            self._note(batch.node, old, new)
            self._last[batch.node] = new
        return [ledger_line(batch.node, rack, new)]

    @staticmethod
    def _note(node: str, old: pb.SpoolLedger | None, new: pb.SpoolLedger) -> None:
        prev_evicted = old.evicted if old is not None and old.evicted <= new.evicted else 0
        if new.evicted > prev_evicted:
            log.warning(
                "node %r: its spool was full and evicted %d samples (%.1f J) in total, %d since the "
                "last report; those intervals are missing from the store",
                node, new.evicted, new.evicted_energy_j, new.evicted - prev_evicted,
            )
        prev_lost = old.lost if old is not None and old.lost <= new.lost else 0
        if new.lost > prev_lost or (new.quarantines and (old is None or new.quarantines > old.quarantines)):
            log.warning("node %r: its spool was corrupt and quarantined %d times; %d samples lost",
                        node, new.quarantines, new.lost)
