"""How far the collector has stored what this agent read: the ``acked`` file.

Every sampling tick notes the wall-clock time it began (before the GPUs are read and their jobs
looked up) and the spool's last sequence number after its rows were spooled. Once every row up to
that number has left the spool (acknowledged as stored, rejected or evicted), the tick's time is
"acked through": every interval the agent attributed before that time is in the collector's store.

The Slurm epilog (deploy/slurm/gridwatt_slurm.py, ``read_acked``) reads the file: after it removes a
job's mapping at time T, it waits until the file says T or later, then fetches the job's final report.
The file holds one decimal integer (ns since the epoch) and a newline; it is replaced atomically.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

from gridwatt.agent.spool import Spool
from gridwatt.atomic_file import replace_file

log = logging.getLogger("gridwatt.agent.acked")

#: Ticks remembered while their rows are pending. Dropping the oldest loses only intermediate
#: values: a later tick that leaves still moves the mark past them (sequence numbers only grow).
MAX_TICKS = 4096


class AckedThrough:
    """The acked-through mark of ``spool`` (see the module docstring), written to ``path`` when it
    moves (``path`` None: kept in memory only)."""

    def __init__(self, spool: Spool, path: Path | None) -> None:
        self.spool = spool
        self.path = path
        #: ns since the epoch; 0 until a tick has left the spool
        self.acked_through_ns = 0
        self._ticks: deque[tuple[int, int]] = deque(maxlen=MAX_TICKS)
        self._write_failed = False
        spool.on_rows_left = self.rows_left

    def tick(self, tick_ns: int) -> None:
        """A tick that began at ``tick_ns`` has spooled its rows."""
        self._ticks.append((self.spool.last_seq, tick_ns))
        self.rows_left()

    def rows_left(self) -> None:
        """Move the mark past every tick whose rows have all left the spool."""
        ticks = self._ticks
        if not ticks:
            return
        lowest = self.spool.lowest_pending_seq()  # None: nothing pending
        moved_to = 0
        while ticks and (lowest is None or ticks[0][0] < lowest):
            moved_to = ticks.popleft()[1]
        if moved_to > self.acked_through_ns:
            self.acked_through_ns = moved_to
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            replace_file(self.path, f"{self.acked_through_ns}\n", sync=False)
        except OSError as exc:
            if not self._write_failed:
                log.warning("cannot write %s (%s); a Slurm epilog waiting on it falls back to a "
                            "fixed wait", self.path, exc)
            self._write_failed = True
            return
        if self._write_failed:
            log.info("writing %s again", self.path)
            self._write_failed = False
