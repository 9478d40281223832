"""The on-disk spool: ordering, acknowledgement, eviction, and a ledger that always balances."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from gridwatt.agent.spool import Spool, peek_ledger
from gridwatt.v1 import telemetry_pb2 as pb


def rows(n: int, start: int = 0) -> list[tuple[int, float, bytes]]:
    return [(start + i, 10.0, f"s{start + i}".encode()) for i in range(n)]


def test_ack_reject_and_ledger(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_samples=1000)
    spool.append(rows(10))
    first = spool.read_after(0, 4)
    assert [p for _, p in first] == [b"s0", b"s1", b"s2", b"s3"]
    assert spool.acknowledge([s for s, _ in first]) == 4
    nxt = spool.read_after(first[-1][0], 3)
    assert spool.reject([s for s, _ in nxt], "bad energy") == 3
    ledger = spool.ledger()
    assert (ledger.sampled, ledger.acknowledged, ledger.rejected, ledger.pending) == (10, 4, 3, 3)
    assert ledger.balanced


def test_survives_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.append(rows(5))
    spool.acknowledge([s for s, _ in spool.read_after(0, 2)])
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert again.pending == 3
    assert [p for _, p in again.read_after(0, 10)] == [b"s2", b"s3", b"s4"]
    ledger = again.ledger()
    assert (ledger.sampled, ledger.acknowledged, ledger.pending) == (5, 2, 3) and ledger.balanced


def test_full_spool_evicts_oldest_and_counts_energy(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_samples=100)
    spool.append(rows(80))
    spool.append(rows(50, start=80))
    ledger = spool.ledger()
    assert ledger.evicted == 30
    assert ledger.evicted_energy_j == 300.0
    assert ledger.pending == 100
    assert ledger.balanced
    assert spool.read_after(0, 1)[0][1] == b"s30"


# -- corrupt or torn spools ---------------------------------------------------------------

PAGE = 4096


def gpu_rows(n: int, t0_ns: int = 1_700_000_000 * 10**9) -> list[tuple[int, float, bytes]]:
    """n real GpuSample rows of 1 s at 250 W (250 J), one per second."""
    out = []
    for i in range(n):
        s = pb.GpuSample(gpu_index=i % 8, gpu_uuid=f"GPU-{i % 8}", start_ns=t0_ns + i * 10**9,
                         end_ns=t0_ns + (i + 1) * 10**9, energy_j=250.0, mean_power_w=250.0,
                         gpu_name="NVIDIA A100-SXM4-80GB (simulated)")
        out.append((s.start_ns, s.energy_j, s.SerializeToString()))
    return out


def make_spool(path: Path, n: int, acked: int) -> list[tuple[int, float, bytes]]:
    rows = gpu_rows(n)
    spool = Spool(path)
    for i in range(0, n, 100):
        spool.append(rows[i : i + 100])
    spool.acknowledge([s for s, _ in spool.read_after(0, acked)])
    spool.close()  # checkpoints: everything is in the main file now
    assert not Path(str(path) + "-wal").exists()
    return rows


def quarantined(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if ".corrupt-" in p.name)


def test_damaged_pages_are_quarantined_and_the_rest_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    rows = make_spool(path, 3000, acked=500)
    size = path.stat().st_size
    with path.open("r+b") as fh:  # garbage over 3 pages in the middle of the samples table
        fh.seek((size // PAGE // 2) * PAGE)
        fh.write(b"\xa5\x5a" * (3 * PAGE // 2))
    spool = Spool(path)
    assert spool.salvage is not None and spool.salvage.old_ledger_readable
    ledger = spool.ledger()
    assert (ledger.sampled, ledger.acknowledged, ledger.quarantines) == (3000, 500, 1)
    assert ledger.lost > 0 and ledger.pending > 2000
    assert ledger.lost + ledger.pending == 2500 and ledger.balanced
    assert ledger.lost == spool.salvage.lost and ledger.pending == spool.salvage.salvaged
    # what was salvaged is intact, in order, and a subset of what was pending
    got = [p for _, p in spool.read_after(0, 10_000)]
    pending_before = [p for _, _, p in rows[500:]]
    assert got == [p for p in pending_before if p in set(got)]
    (moved,) = quarantined(path)
    assert moved.name.startswith("spool.db.corrupt-")
    spool.append(gpu_rows(10, t0_ns=2_000_000_000 * 10**9))  # and the new spool works
    assert spool.ledger().balanced and spool.ledger().sampled == 3010
    spool.close()
    assert Spool(path).salvage is None  # the new file is healthy


def test_garbage_file_starts_a_fresh_spool(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, 300, acked=0)
    path.write_bytes(b"this is not a database" * 1000)
    spool = Spool(path)
    assert spool.salvage is not None and not spool.salvage.old_ledger_readable
    ledger = spool.ledger()
    assert (ledger.sampled, ledger.pending, ledger.lost, ledger.quarantines) == (0, 0, 0, 1)
    assert len(quarantined(path)) == 1


def test_truncated_file_salvages_the_readable_part(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    make_spool(path, 3000, acked=0)
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate((size // PAGE // 2) * PAGE)
    spool = Spool(path)
    ledger = spool.ledger()
    assert spool.salvage is not None and spool.salvage.old_ledger_readable and ledger.quarantines == 1
    assert ledger.balanced and 0 < ledger.pending < 3000 and ledger.pending + ledger.lost == 3000
    # the first half of the file holds the oldest rows: those are the ones salvaged
    assert [p for _, p in spool.read_after(0, 5000)] == [p for _, _, p in gpu_rows(ledger.pending)]


def test_torn_wal_loses_only_uncommitted_transactions(tmp_path: Path) -> None:
    """A crash mid-write tears the WAL: the last transaction is gone, the spool is not corrupt."""
    live = tmp_path / "live.db"
    spool = Spool(live)
    rows = gpu_rows(200)
    for i in range(0, 200, 10):  # 20 transactions of 10, all still in the WAL (no close)
        spool.append(rows[i : i + 10])
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "spool.db").write_bytes(live.read_bytes())
    wal = Path(str(live) + "-wal").read_bytes()
    assert len(wal) > 3 * PAGE
    (crash / "spool.db-wal").write_bytes(wal[: len(wal) - PAGE - 100])  # torn mid-frame
    spool.close()
    torn = Spool(crash / "spool.db")
    ledger = torn.ledger()
    assert torn.salvage is None and ledger.balanced
    assert ledger.pending == ledger.sampled and ledger.pending % 10 == 0 and 0 < ledger.pending < 200
    assert [p for _, p in torn.read_after(0, 500)] == [p for _, _, p in rows[: ledger.pending]]
    torn.close()
    # a WAL overwritten with garbage is ignored: the spool opens (as of its last checkpoint)
    crash2 = tmp_path / "crash2"
    crash2.mkdir()
    (crash2 / "spool.db").write_bytes(live.read_bytes() if live.exists() else b"")
    (crash2 / "spool.db-wal").write_bytes(b"\x00garbage" * 4096)
    again = Spool(crash2 / "spool.db")
    assert again.ledger().balanced


# -- sequence numbers and the unsent count the shipper lingers on ----------------------------


def test_seqs_are_consecutive_and_pending_after_counts_what_read_after_finds(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_samples=50)
    spool.append(rows(20))
    assert [s for s, _ in spool.read_after(0, 100)] == list(range(1, 21)) and spool.last_seq == 20

    removed = [0]  # the highest seq acknowledged or rejected: exact from there on

    def check() -> None:
        for after in range(0, spool.last_seq + 3):
            found = len(spool.read_after(after, 1000))
            if after >= removed[0]:
                assert spool.pending_after(after) == found, after
            else:
                assert spool.pending_after(after) >= found, after

    check()
    sent = spool.read_after(0, 12)
    spool.acknowledge([s for s, _ in sent[:5]])  # 1-5 acknowledged, 6-12 in flight
    spool.reject([9, 10], "bad")
    removed[0] = 10
    check()
    assert spool.pending_after(6) == 13 and len(spool.read_after(6, 100)) == 12  # the hole at 9-10
    spool.append(rows(45, start=20))  # 65 appended, 58 kept before eviction: the 8 oldest go
    assert spool.last_seq == 65 and spool.ledger().evicted == 8 and spool.pending == 50
    assert spool.read_after(0, 1)[0][0] == 16
    check()
    spool.close()
    again = Spool(tmp_path / "s.db", max_samples=50)
    assert again.last_seq == 65 and again.pending_after(0) == 50
    spool = again
    check()
    spool.acknowledge([s for s, _ in spool.read_after(0, 1000)])  # all gone: numbering goes on
    assert spool.pending == 0 and spool.pending_after(0) == 0
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert again.last_seq == 65
    again.append(rows(2, start=65))
    assert [(s, p) for s, p in again.read_after(0, 10)] == [(66, b"s65"), (67, b"s66")]
    ledger = again.ledger()
    assert (ledger.sampled, ledger.acknowledged, ledger.rejected, ledger.evicted, ledger.pending) == (
        67, 5 + 50, 2, 8, 2) and ledger.balanced


def test_ledger_kept_in_memory_equals_the_committed_one(tmp_path: Path) -> None:
    """ledger() reads no row: after every kind of change it equals what a reader of the file sees."""
    path = tmp_path / "s.db"
    spool = Spool(path, max_samples=30)
    steps = [
        lambda: spool.append(rows(20)),
        lambda: spool.acknowledge([s for s, _ in spool.read_after(0, 7)]),
        lambda: spool.reject([s for s, _ in spool.read_after(7, 3)], "bad"),
        lambda: spool.append([(i, 0.25 * i, b"x") for i in range(25)]),  # 35 > 30: 5 oldest go (10 J each)
        lambda: spool.acknowledge([1, 2, 3]),  # already gone: counts nothing
    ]
    for step in steps:
        step()
        assert spool.ledger() == peek_ledger(path)
    ledger = spool.ledger()
    assert (ledger.sampled, ledger.acknowledged, ledger.rejected, ledger.evicted, ledger.pending) == (
        45, 7, 3, 5, 30) and ledger.evicted_energy_j == 50.0 and ledger.balanced
    spool.close()
    assert Spool(path).ledger() == ledger


def test_large_appends_and_acks_of_ranges_gaps_and_any_order(tmp_path: Path) -> None:
    """Appends of more rows than one INSERT takes keep every row in order; acknowledging a range,
    a set with a gap, an unordered set, duplicates, and seqs already gone counts exactly what went."""
    spool = Spool(tmp_path / "s.db")
    spool.append(rows(450))  # three INSERT statements (200 + 200 + 50)
    spool.append(rows(1, start=450))
    got = spool.read_after(0, 1000)
    assert got == [(i + 1, f"s{i}".encode()) for i in range(451)]
    assert spool.acknowledge(list(range(1, 101))) == 100  # a range
    assert spool.acknowledge([101, 102, 104]) == 3  # a gap: 103 stays
    assert spool.acknowledge([110, 108, 109, 107]) == 4  # a range in any order
    assert spool.acknowledge([105, 105, 106]) == 2  # duplicates
    assert spool.acknowledge([1, 2, 3, 200, 201]) == 2  # 1-3 are gone already
    assert spool.acknowledge([300]) == 1
    left = [s for s, _ in spool.read_after(0, 1000)]
    assert left == [103, *range(111, 200), *range(202, 300), *range(301, 452)]
    ledger = spool.ledger()
    assert (ledger.sampled, ledger.acknowledged, ledger.pending) == (451, 112, 339) and ledger.balanced
    assert ledger == peek_ledger(tmp_path / "s.db")


OLD_SCHEMA = """
CREATE TABLE samples (seq INTEGER PRIMARY KEY AUTOINCREMENT, start_ns INTEGER NOT NULL,
                      energy_j REAL NOT NULL, payload BLOB NOT NULL);
CREATE TABLE rejected (seq INTEGER PRIMARY KEY, start_ns INTEGER NOT NULL, energy_j REAL NOT NULL,
                       payload BLOB NOT NULL, reason TEXT NOT NULL, rejected_at_ns INTEGER NOT NULL);
CREATE TABLE ledger (name TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def old_spool(path: Path, appended: int, acked: int) -> None:
    """A spool as an agent before this one left it: seq AUTOINCREMENT, ``acked`` oldest rows gone."""
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    counters = {"sampled": appended, "acknowledged": acked, "rejected": 0, "evicted": 0,
                "evicted_energy_j": 0.0, "lost": 0, "quarantines": 0}
    db.executemany("INSERT INTO ledger(name, value) VALUES (?, ?)", counters.items())
    db.executemany("INSERT INTO samples(start_ns, energy_j, payload) VALUES (?, ?, ?)", rows(appended))
    db.execute("DELETE FROM samples WHERE seq <= ?", (acked,))
    db.close()


def samples_sql(path: Path) -> str:
    db = sqlite3.connect(str(path))
    try:
        return str(db.execute("SELECT sql FROM sqlite_master WHERE name = 'samples'").fetchone()[0])
    finally:
        db.close()


def test_an_older_spool_keeps_its_rows_and_numbering_and_is_remade_once_empty(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_spool(path, appended=30, acked=12)
    spool = Spool(path)
    assert "AUTOINCREMENT" in samples_sql(path)  # rows pending: left as it is
    assert spool.last_seq == 30 and spool.pending == 18 and spool.pending_after(12) == 18
    spool.append(rows(5, start=30))
    got = spool.read_after(0, 100)
    assert got == [(i + 1, f"s{i}".encode()) for i in range(12, 35)]
    spool.acknowledge([s for s, _ in got])
    spool.close()
    again = Spool(path)  # empty now: remade without AUTOINCREMENT, numbering goes on
    assert "AUTOINCREMENT" not in samples_sql(path)
    assert again.last_seq == 35 and again.pending == 0
    again.append(rows(2, start=35))
    assert again.read_after(0, 10) == [(36, b"s35"), (37, b"s36")]
    ledger = again.ledger()
    assert (ledger.sampled, ledger.acknowledged, ledger.pending) == (37, 35, 2) and ledger.balanced
    again.close()
    empty = tmp_path / "empty-old.db"
    old_spool(empty, appended=40, acked=40)
    spool = Spool(empty)
    assert "AUTOINCREMENT" not in samples_sql(empty) and spool.last_seq == 40
    spool.append(rows(1))
    assert spool.read_after(0, 10) == [(41, b"s0")]


def test_a_killed_agent_leaves_every_unacknowledged_row_and_numbering_goes_on(tmp_path: Path) -> None:
    """SIGKILL right after appends and acknowledgements (nothing closed): on reopen every row not
    acknowledged is there, byte for byte, the ledger balances, and new rows number above the old."""
    path = tmp_path / "s.db"
    script = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from gridwatt.agent.spool import Spool\n"
        f"spool = Spool(Path({str(path)!r}))\n"
        "for k in range(5):\n"
        "    spool.append([(k * 8 + i, 1.5, b'p%d' % (k * 8 + i)) for i in range(8)])\n"
        "spool.acknowledge(list(range(1, 17)))\n"  # the first two appends
        "spool.acknowledge([20, 21])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -9
    spool = Spool(path)
    expected = [(s, b"p%d" % (s - 1)) for s in range(17, 41) if s not in (20, 21)]
    assert spool.read_after(0, 100) == expected and spool.last_seq == 40
    ledger = spool.ledger()
    assert (ledger.sampled, ledger.acknowledged, ledger.pending) == (40, 18, 22) and ledger.balanced
    assert ledger == peek_ledger(path)
    spool.append(rows(1))
    assert spool.read_after(40, 10) == [(41, b"s0")]
