"""A bounded on-disk spool of samples (SQLite, WAL), kept until the collector acknowledges them.

Every sample gets a sequence number. The shipper reads pending samples in
order, and deletes them only once their batch is acknowledged as stored.
When the spool is full the oldest samples are evicted; their count and energy
are kept in the ledger, which always balances::

    sampled == acknowledged + rejected + evicted + lost + pending

A spool that is corrupt or unreadable never stops the agent: on open it is
checked (``PRAGMA quick_check``); a bad file is moved aside to
``<spool>.corrupt-<UTC time>`` (with its -wal/-shm), every row that can still be
read and verified is salvaged into a fresh spool, and the samples that could
not be are counted as ``lost`` in the ledger (carried over when the old
ledger is readable).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from gridwatt.v1 import telemetry_pb2 as pb

log = logging.getLogger("gridwatt.agent.spool")

# Sequence numbers are given by the Spool itself, never reused: above every seq the table holds
# and above the samples ever counted (the ledger's ``sampled``). Spools made before that declared
# ``seq`` AUTOINCREMENT, which makes every INSERT twice as dear; an empty one is remade on open.
_SAMPLES_TABLE = """
CREATE TABLE samples (
    seq INTEGER PRIMARY KEY,
    start_ns INTEGER NOT NULL,
    energy_j REAL NOT NULL,
    payload BLOB NOT NULL
)
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY,
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
CREATE TABLE IF NOT EXISTS marks (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_COUNTERS = ("sampled", "acknowledged", "rejected", "evicted", "evicted_energy_j", "lost", "quarantines")

#: SQLite result codes (primary) that mean "this file is damaged", not "cannot open it here".
_DAMAGED_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_IOERR"}

#: Checks that a salvaged row is what was written: (start_ns, energy_j, payload) → ok.
RowCheck = Callable[[int, float, bytes], bool]


@dataclass(frozen=True)
class Ledger:
    """Counts of samples by fate; ``balanced`` is the invariant the agent reports."""

    sampled: int
    acknowledged: int
    rejected: int
    evicted: int
    evicted_energy_j: float
    pending: int
    #: Samples that were spooled but could not be read back from a corrupt spool.
    lost: int = 0
    #: Times the spool file was found corrupt and moved aside.
    quarantines: int = 0

    @property
    def balanced(self) -> bool:
        return self.sampled == self.acknowledged + self.rejected + self.evicted + self.lost + self.pending

    def line(self) -> str:
        """One log line."""
        return (
            f"sampled={self.sampled} acknowledged={self.acknowledged} rejected={self.rejected} "
            f"evicted={self.evicted} evicted_energy_j={self.evicted_energy_j:.3f} lost={self.lost} "
            f"pending={self.pending} quarantines={self.quarantines} balanced={self.balanced}"
        )


def gpu_sample_row_ok(start_ns: int, energy_j: float, payload: bytes) -> bool:
    """A spooled row is intact when its payload parses and agrees with its own columns."""
    try:
        sample = pb.GpuSample.FromString(payload)
    except DecodeError:
        return False
    return (
        sample.start_ns == start_ns
        and sample.energy_j == energy_j
        and math.isfinite(sample.energy_j)
        and sample.end_ns > sample.start_ns
    )


def _damaged(exc: sqlite3.Error) -> bool:
    """True for errors that mean a damaged file (as opposed to permissions, locks, a missing folder)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if any(name == c or name.startswith(c + "_") for c in _DAMAGED_CODES):
        return True
    # Without an error name (older Pythons), only the plain DatabaseError class means corruption.
    return not name and type(exc) is sqlite3.DatabaseError


@dataclass(frozen=True)
class Salvage:
    """What was recovered from a quarantined spool."""

    quarantined_path: Path
    reason: str
    salvaged: int
    lost: int
    old_ledger_readable: bool


class SpoolError(Exception):
    """The spool file cannot be opened or written; the message names the path."""


def _private_file(path: Path) -> None:
    """Create ``path`` as mode 0600 (never following a symlink), or narrow an existing file to 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class Spool:
    """See the module docstring. Not thread-safe: use from one thread (the agent's event loop)."""

    def __init__(
        self, path: Path, max_samples: int = 24 * 3600 * 8, row_check: RowCheck = gpu_sample_row_ok
    ) -> None:
        self.path = path
        self.max_samples = max_samples
        self.row_check = row_check
        #: Set when the file was found corrupt on open and replaced.
        self.salvage: Salvage | None = None
        try:
            if not path.parent.exists():  # job ids and user names: readable by the agent's user only
                path.parent.mkdir(parents=True, mode=0o700)
            _private_file(path)
        except OSError as exc:
            raise SpoolError(f"spool {path}: cannot create it: {exc}") from None
        problem = self._check(path)
        if problem is not None:
            self._quarantine(problem)
        else:
            self._db = self._open(path)
        self._pending = self._count()
        #: The highest sequence number ever given to a sample here; appends number from it.
        self._last_seq = self._highest_seq()
        #: The ledger's counters as committed (this spool is their only writer): ledger() reads no row.
        self._counters = {str(k): float(v) for k, v in self._db.execute("SELECT name, value FROM ledger")}
        #: Counter changes of the open transaction, applied to ``_counters`` once it commits.
        self._staged: dict[str, float] = {}
        #: Called after rows left the spool as acknowledged or rejected (agent/acked.py listens).
        self.on_rows_left: Callable[[], None] | None = None

    @staticmethod
    def _check(path: Path) -> str | None:
        """None if the file is absent or passes quick_check; else what is wrong with it."""
        if not path.exists():
            return None
        try:
            db = sqlite3.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            if _damaged(exc):
                return str(exc)
            raise SpoolError(f"spool {path}: cannot open: {exc}") from None
        try:
            result = [str(r[0]) for r in db.execute("PRAGMA quick_check(5)").fetchall()]
            if result != ["ok"]:
                return "quick_check: " + "; ".join(result)
            return None
        except sqlite3.Error as exc:
            if _damaged(exc):
                return str(exc)
            raise SpoolError(f"spool {path}: cannot read: {exc}") from None
        finally:
            db.close()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            _private_file(path)  # SQLite gives its -wal and -shm files the same mode
            db = sqlite3.connect(str(path), isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            for name in _COUNTERS:
                db.execute("INSERT OR IGNORE INTO ledger(name, value) VALUES (?, 0)", (name,))
            _drop_autoincrement_if_empty(db)
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(f"spool {path}: cannot open: {exc}") from None
        return db

    def _quarantine(self, reason: str) -> None:
        """Move the damaged file aside, open a fresh spool, salvage what can be read into it."""
        path = self.path
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while dest.exists():
            n += 1
            dest = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
        try:
            for suffix in ("", "-wal", "-shm", "-journal"):
                src = Path(str(path) + suffix)
                if src.exists():
                    src.rename(str(dest) + suffix)
        except OSError as exc:
            raise SpoolError(f"spool {path} is corrupt ({reason}) and cannot be moved aside: {exc}") from None
        log.error("spool %s is corrupt (%s); moved it aside to %s and started a new spool",
                  path, reason, dest)
        self._db = db = self._open(path)
        db.execute("BEGIN")
        try:
            salvaged, old = _read_salvageable(
                dest, self.row_check,
                lambda rows: db.executemany(
                    "INSERT INTO samples(start_ns, energy_j, payload) VALUES (?, ?, ?)", rows),
            )
            counters = {name: 0.0 for name in _COUNTERS}
            lost = 0
            if old is not None:
                counters.update({k: v for k, v in old.items() if k in counters})
                old_pending = int(counters["sampled"] - counters["acknowledged"] - counters["rejected"]
                                  - counters["evicted"] - counters["lost"])
                lost = max(old_pending - salvaged, 0)
                # More rows than the old ledger said were pending: count the surplus as sampled.
                counters["sampled"] += max(salvaged - old_pending, 0)
            else:
                counters["sampled"] = float(salvaged)
            counters["lost"] += lost
            counters["quarantines"] += 1
            db.executemany("UPDATE ledger SET value = ? WHERE name = ?",
                           [(v, k) for k, v in counters.items()])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.salvage = Salvage(dest, reason, salvaged, lost, old is not None)
        if old is not None:
            log.error("spool %s: salvaged %d pending samples from %s; %d could not be read and are "
                      "counted as lost", path, salvaged, dest, lost)
        else:
            log.error("spool %s: salvaged %d samples from %s; its ledger is unreadable, so how many "
                      "were lost is unknown (the ledger restarts from the salvaged samples)",
                      path, salvaged, dest)

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM samples").fetchone()[0])

    def _highest_seq(self) -> int:
        """A seq no sample here ever had or will reuse: the largest the table holds, the samples
        ever counted (every append numbers as many rows as it counts, from 1), and, for a spool made
        with AUTOINCREMENT, that counter."""
        db = self._db
        highest = int(db.execute("SELECT coalesce(max(seq), 0) FROM samples").fetchone()[0])
        highest = max(highest, int(db.execute(
            "SELECT coalesce(max(value), 0) FROM ledger WHERE name = 'sampled'").fetchone()[0]))
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
            highest = max(highest, int(db.execute(
                "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'samples'").fetchone()[0]))
        return highest

    def _bump(self, name: str, by: float) -> None:
        self._db.execute("UPDATE ledger SET value = value + ? WHERE name = ?", (by, name))
        self._staged[name] = self._staged.get(name, 0.0) + by

    def _commit(self) -> None:
        self._db.execute("COMMIT")
        for name, by in self._staged.items():
            self._counters[name] += by
        self._staged.clear()

    def _rollback(self) -> None:
        self._staged.clear()
        self._db.execute("ROLLBACK")

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest sample ever appended (0: none yet)."""
        return self._last_seq

    def lowest_pending_seq(self) -> int | None:
        """The oldest pending sample's sequence number; None when nothing is pending."""
        if self._pending <= 0:
            return None
        row = self._db.execute("SELECT min(seq) FROM samples").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def pending_after(self, after_seq: int) -> int:
        """How many pending samples have seq > ``after_seq``, without reading them: never fewer than
        ``read_after`` finds, and exactly as many unless rows above ``after_seq`` were acknowledged or
        rejected (seqs are given consecutively and eviction takes the oldest rows; a shipper only
        acknowledges rows up to what it has read, so only a new session can see such holes)."""
        return max(0, min(self._pending, self._last_seq - after_seq))

    def mark(self, name: str) -> int | None:
        """A value kept with the samples (e.g. how far a replay got), or None."""
        row = self._db.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def append(
        self, rows: Iterable[tuple[int, float, bytes]], marks: dict[str, int] | None = None
    ) -> int:
        """Store (start_ns, energy_j, payload) rows; evict the oldest beyond the bound. Returns count.

        ``marks`` are written in the same transaction, so they never run ahead of the samples.
        """
        params: list[int | float | bytes] = []
        seq = self._last_seq
        for start_ns, energy_j, payload in rows:  # numbered here: seqs follow on without a gap
            seq += 1
            params += (seq, start_ns, energy_j, payload)
        count = seq - self._last_seq
        if not count and not marks:
            return 0
        db = self._db
        db.execute("BEGIN")
        try:
            for name, value in (marks or {}).items():
                db.execute("INSERT OR REPLACE INTO marks(name, value) VALUES (?, ?)", (name, value))
            # Many rows per INSERT: SQLite runs AUTOINCREMENT's bookkeeping once per statement.
            for i in range(0, count, _INSERT_ROWS):
                n = min(_INSERT_ROWS, count - i)
                db.execute(_insert_sql(n), params[4 * i : 4 * (i + n)])
            self._bump("sampled", count)
            evicted = 0
            over = self._pending + count - self.max_samples
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
                evicted = n
            self._commit()
        except BaseException:
            self._rollback()
            raise
        self._pending += count - evicted
        self._last_seq = seq
        return count

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
        try:
            self._db.execute(
                f"INSERT OR IGNORE INTO rejected(seq, start_ns, energy_j, payload, reason, rejected_at_ns) "
                f"SELECT seq, start_ns, energy_j, payload, ?, ? FROM samples WHERE seq IN ({marks})",
                (reason, time.time_ns(), *seqs),
            )
            n = self._db.execute(f"DELETE FROM samples WHERE seq IN ({marks})", tuple(seqs)).rowcount
            self._bump("rejected", n)
            self._commit()
        except BaseException:
            self._rollback()
            raise
        self._pending -= n
        if self.on_rows_left is not None:
            self.on_rows_left()
        return n

    def _remove(self, seqs: Sequence[int], counter: str) -> int:
        if not seqs:
            return 0
        self._db.execute("BEGIN")
        n = 0
        try:
            span = _as_range(seqs)
            if span is not None:  # a batch as read: one range instead of one lookup per row
                n = self._db.execute("DELETE FROM samples WHERE seq BETWEEN ? AND ?", span).rowcount
                seqs = ()
            for i in range(0, len(seqs), 500):
                chunk = tuple(seqs[i : i + 500])
                marks = ",".join("?" * len(chunk))
                n += self._db.execute(f"DELETE FROM samples WHERE seq IN ({marks})", chunk).rowcount
            self._bump(counter, n)
            self._commit()
        except BaseException:
            self._rollback()
            raise
        self._pending -= n
        if self.on_rows_left is not None:
            self.on_rows_left()
        return n

    def ledger(self) -> Ledger:
        values = self._counters
        return Ledger(
            sampled=int(values["sampled"]),
            acknowledged=int(values["acknowledged"]),
            rejected=int(values["rejected"]),
            evicted=int(values["evicted"]),
            evicted_energy_j=float(values["evicted_energy_j"]),
            pending=self._pending,
            lost=int(values["lost"]),
            quarantines=int(values["quarantines"]),
        )

    def close(self) -> None:
        self._db.close()


def _drop_autoincrement_if_empty(db: sqlite3.Connection) -> None:
    """Remake an empty samples table declared AUTOINCREMENT (a spool made by an older agent) as a
    plain one; the ledger's ``sampled`` keeps the numbering above every seq it gave."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'samples'").fetchone()
    if row is None or "AUTOINCREMENT" not in str(row[0]).upper():
        return
    db.execute("BEGIN")
    try:
        if db.execute("SELECT 1 FROM samples LIMIT 1").fetchone() is None:
            db.execute("DROP TABLE samples")
            db.execute(_SAMPLES_TABLE)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


#: Rows per INSERT statement (4 parameters each: within SQLite's oldest limit of 999).
_INSERT_ROWS = 200


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    return "INSERT INTO samples(seq, start_ns, energy_j, payload) VALUES " + ",".join(["(?, ?, ?, ?)"] * rows)


def _as_range(seqs: Sequence[int]) -> tuple[int, int] | None:
    """(lowest, highest) when ``seqs`` are exactly the integers of that range (any order), else None."""
    if len(seqs) < 2:
        return None
    lo, hi = min(seqs), max(seqs)
    return (lo, hi) if hi - lo == len(seqs) - 1 and len(set(seqs)) == len(seqs) else None


def peek_ledger(path: Path) -> Ledger:
    """The ledger of a spool file, opened read-only (while an agent runs on it, or after a crash)."""
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        values = dict(db.execute("SELECT name, value FROM ledger").fetchall())
        pending = int(db.execute("SELECT count(*) FROM samples").fetchone()[0])
    finally:
        db.close()
    return Ledger(
        sampled=int(values.get("sampled", 0)), acknowledged=int(values.get("acknowledged", 0)),
        rejected=int(values.get("rejected", 0)), evicted=int(values.get("evicted", 0)),
        evicted_energy_j=float(values.get("evicted_energy_j", 0.0)), pending=pending,
        lost=int(values.get("lost", 0)), quarantines=int(values.get("quarantines", 0)),
    )


_CHUNK = 500


def _read_salvageable(
    path: Path, row_check: RowCheck, sink: Callable[[list[tuple[int, float, bytes]]], object]
) -> tuple[int, dict[str, float] | None]:
    """Pass every pending row of a damaged spool that can be read and verified to ``sink``, in
    order and in chunks; return how many, and the old ledger counters if they are readable.
    Never raises for a damaged file.

    Rows are read in chunks by sequence number; where a chunk fails (a damaged page), the
    rows are probed one by one up to the highest sequence number known from the table, the
    AUTOINCREMENT counter or the ledger, so the rows past a damaged page are still found.
    """
    try:
        db = sqlite3.connect(str(path), isolation_level=None)
        # writable_schema lets SQLite open a file shorter than its header says (a truncated spool);
        # query_only makes sure nothing is written to the quarantined file.
        db.execute("PRAGMA writable_schema=ON")
        db.execute("PRAGMA query_only=1")
    except sqlite3.Error as exc:
        log.error("spool %s: nothing can be salvaged: %s", path, exc)
        return 0, None

    def scalar(q: str) -> float | None:
        try:
            row = db.execute(q).fetchone()
            return None if row is None or row[0] is None else float(row[0])
        except sqlite3.Error:
            return None

    old: dict[str, float] | None
    try:
        old = {str(k): float(v) for k, v in db.execute("SELECT name, value FROM ledger").fetchall()}
        if not {"sampled", "acknowledged", "rejected", "evicted"} <= old.keys() or not all(
            math.isfinite(v) and 0 <= v < 2**53 for v in old.values()
        ):
            old = None  # damaged counters are no better than none
    except (sqlite3.Error, TypeError, ValueError):
        old = None
    bounds = [
        scalar("SELECT max(seq) FROM samples"),
        scalar("SELECT seq FROM sqlite_sequence WHERE name = 'samples'"),
        old.get("sampled") if old else None,
    ]
    hi = int(max((b for b in bounds if b is not None), default=0))
    rows: list[tuple[int, float, bytes]] = []
    salvaged = bad = 0

    def flush() -> None:
        nonlocal salvaged
        if rows:
            sink(rows)
            salvaged += len(rows)
            rows.clear()

    def keep(r: Any) -> None:
        nonlocal bad
        try:
            start_ns, energy_j, payload = int(r[1]), float(r[2]), bytes(r[3])
        except (TypeError, ValueError):
            bad += 1
            return
        if row_check(start_ns, energy_j, payload):
            rows.append((start_ns, energy_j, payload))
        else:
            bad += 1

    after = 0
    try:
        while True:
            try:
                chunk = db.execute(
                    "SELECT seq, start_ns, energy_j, payload FROM samples WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, _CHUNK),
                ).fetchall()
            except sqlite3.Error:
                # A damaged page: probe one sequence number at a time until a chunk reads again.
                probe_to = min(after + _CHUNK, hi)
                if after >= hi:
                    break
                for seq in range(after + 1, probe_to + 1):
                    try:
                        r = db.execute(
                            "SELECT seq, start_ns, energy_j, payload FROM samples WHERE seq = ?", (seq,)
                        ).fetchone()
                    except sqlite3.Error:
                        continue
                    if r is not None:
                        keep(r)
                after = probe_to
                flush()
                continue
            if not chunk:
                break
            for r in chunk:
                keep(r)
            after = int(chunk[-1][0])
            flush()
        flush()
    finally:
        db.close()
    if bad:
        log.error("spool %s: %d rows were readable but damaged (payload does not match); not salvaged",
                  path, bad)
    return salvaged, old
