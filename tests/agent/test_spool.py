"""The on-disk spool: ordering, acknowledgement, eviction, and a ledger that always balances."""

from __future__ import annotations

from pathlib import Path

from gridwatt.agent.spool import Spool


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
