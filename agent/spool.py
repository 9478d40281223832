"""A bounded on-disk spool of samples (SQLite, WAL), kept until the collector acknowledges them.

Every sample gets a sequence number. The shipper reads pending samples in
order, and deletes them only once their batch is acknowledged as stored.
When the spool is full the oldest samples are evicted; their count and energy
are kept in the ledger, which always balances::

    sampled == acknowledged + rejected + evicted + pending
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("gridwatt.agent.spool")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    start_ns INTEGER NOT NULL,
    energy_j REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    start_ns INTEGER NOT NULL,
    energy_j REAL NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    rejected_at_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
);
"""

_COUNTERS = ("sampled", "acknowledged", "rejected", "evicted", "evicted_energy_j")


@dataclass(frozen=True)
class Ledger:
    """Counts of samples by fate; ``balanced`` is the invariant the agent reports."""

    sampled: int
    acknowledged: int
    rejected: int
    evicted: int
    evicted_energy_j: float
    pending: int

    @property
    def balanced(self) -> bool:
        return self.sampled == self.acknowledged + self.rejected + self.evicted + self.pending


class SpoolError(Exception):
    """The spool file cannot be opened or written; the message names the path."""


class Spool:
    """See the module docstring. Not thread-safe: use from one thread (the agent's event loop)."""

    def __init__(self, path: Path, max_samples: int = 24 * 3600 * 8) -> None:
        self.path = path
        self.max_samples = max_samples
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            for name in _COUNTERS:
                self._db.execute("INSERT OR IGNORE INTO ledger(name, value) VALUES (?, 0)", (name,))
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"spool {path}: cannot open: {exc}") from None
        self._pending = self._count()

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM samples").fetchone()[0])

    def _bump(self, name: str, by: float) -> None:
        self._db.execute("UPDATE ledger SET value = value + ? WHERE name = ?", (by, name))

    @property
    def pending(self) -> int:
        return self._pending

    def append(self, rows: Iterable[tuple[int, float, bytes]]) -> int:
        """Store (start_ns, energy_j, payload) rows; evict the oldest beyond the bound. Returns count."""
        rows = list(rows)
        if not rows:
            return 0
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO samples(start_ns, energy_j, payload) VALUES (?, ?, ?)", rows)
            self._bump("sampled", len(rows))
            over = self._pending + len(rows) - self.max_samples
            if over > 0:
                cur = db.execute(
                    "SELECT count(*), coalesce(sum(energy_j), 0), min(seq), max(seq) FROM "
                    "(SELECT seq, energy_j FROM samples ORDER BY seq LIMIT ?)",
                    (over,),
                )
                n, energy_j, lo, hi = cur.fetchone()
                db.execute("DELETE FROM samples WHERE seq BETWEEN ? AND ?", (lo, hi))
                self._bump("evicted", n)
                self._bump("evicted_energy_j", energy_j)
                log.warning(
                    "spool full (%d samples): evicted the %d oldest samples (%.1f J); "
                    "the collector is told when it is reachable again",
                    self.max_samples, n, energy_j,
                )
                self._pending -= n
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._pending += len(rows)
        return len(rows)

    def read_after(self, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` pending (seq, payload) rows with seq > after_seq, in order."""
        cur = self._db.execute(
            "SELECT seq, payload FROM samples WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        )
        return [(int(s), bytes(p)) for s, p in cur.fetchall()]

    def acknowledge(self, seqs: Sequence[int]) -> int:
        """Delete acknowledged samples; returns how many were still pending."""
        return self._remove(seqs, "acknowledged")

    def reject(self, seqs: Sequence[int], reason: str) -> int:
        """Move samples the collector rejected (bad input) aside; kept for inspection, never resent."""
        if not seqs:
            return 0
        marks = ",".join("?" * len(seqs))
        self._db.execute("BEGIN")
        self._db.execute(
            f"INSERT OR IGNORE INTO rejected(seq, start_ns, energy_j, payload, reason, rejected_at_ns) "
            f"SELECT seq, start_ns, energy_j, payload, ?, ? FROM samples WHERE seq IN ({marks})",
            (reason, time.time_ns(), *seqs),
        )
        n = self._db.execute(f"DELETE FROM samples WHERE seq IN ({marks})", tuple(seqs)).rowcount
        self._bump("rejected", n)
        self._db.execute("COMMIT")
        self._pending -= n
        return n

    def _remove(self, seqs: Sequence[int], counter: str) -> int:
        if not seqs:
            return 0
        self._db.execute("BEGIN")
        n = 0
        for i in range(0, len(seqs), 500):
            chunk = tuple(seqs[i : i + 500])
            marks = ",".join("?" * len(chunk))
            n += self._db.execute(f"DELETE FROM samples WHERE seq IN ({marks})", chunk).rowcount
        self._bump(counter, n)
        self._db.execute("COMMIT")
        self._pending -= n
        return n

    def ledger(self) -> Ledger:
        values = dict(self._db.execute("SELECT name, value FROM ledger").fetchall())
        return Ledger(
            sampled=int(values["sampled"]),
            acknowledged=int(values["acknowledged"]),
            rejected=int(values["rejected"]),
            evicted=int(values["evicted"]),
            evicted_energy_j=float(values["evicted_energy_j"]),
            pending=self._pending,
        )

    def close(self) -> None:
        self._db.close()
