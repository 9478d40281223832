"""The acked file: how far the collector has stored what the agent read (agent/acked.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gridwatt.agent.acked import AckedThrough
from gridwatt.agent.config import AgentConfig
from gridwatt.agent.spool import Spool
from tests.slurm.test_prolog_epilog import gs  # the epilog reads what the agent writes

read_acked_file = gs.read_acked

pytestmark = pytest.mark.unit


def rows(n: int, start: int = 0) -> list[tuple[int, float, bytes]]:
    return [(start + i, 10.0, f"s{start + i}".encode()) for i in range(n)]


def wired(tmp_path: Path, max_samples: int = 1000) -> tuple[Spool, AckedThrough]:
    """A spool and its mark, as the agent's loop makes them."""
    spool = Spool(tmp_path / "spool.db", max_samples=max_samples)
    return spool, AckedThrough(spool, tmp_path / "spool.acked")


def tick(spool: Spool, acked: AckedThrough, n: int, tick_ns: int) -> None:
    """One sampling tick: ``n`` rows spooled."""
    spool.append(rows(n))
    acked.tick(tick_ns)


def test_the_mark_moves_only_past_ticks_whose_every_row_left(tmp_path: Path) -> None:
    spool, acked = wired(tmp_path)
    tick(spool, acked, 3, 1_000)  # seqs 1-3
    tick(spool, acked, 3, 2_000)  # seqs 4-6
    tick(spool, acked, 3, 3_000)  # seqs 7-9
    assert acked.acked_through_ns == 0 and not (tmp_path / "spool.acked").exists()
    # acks out of order (several batches in flight): the second tick's rows first
    spool.acknowledge([4, 5, 6])
    assert acked.acked_through_ns == 0  # tick 1's rows are still pending
    spool.acknowledge([1, 2])
    assert acked.acked_through_ns == 0
    spool.reject([3], "bad")  # rejected rows have left too
    assert acked.acked_through_ns == 2_000
    assert read_acked_file(tmp_path / "spool.acked") == 2_000
    assert (tmp_path / "spool.acked").read_text() == "2000\n"
    assert (tmp_path / "spool.acked").stat().st_mode & 0o777 == 0o600
    spool.acknowledge([7, 8, 9])
    assert read_acked_file(tmp_path / "spool.acked") == 3_000
    tick(spool, acked, 0, 4_000)  # a tick that spooled nothing, with nothing pending: through at once
    assert read_acked_file(tmp_path / "spool.acked") == 4_000


def test_eviction_and_rows_from_before_a_restart(tmp_path: Path) -> None:
    old = Spool(tmp_path / "spool.db", max_samples=100)
    old.append(rows(5))  # pending from an earlier run: seqs 1-5
    old.close()
    spool, acked = wired(tmp_path, max_samples=100)
    tick(spool, acked, 2, 7_000)  # seqs 6-7
    spool.acknowledge([6, 7])
    assert acked.acked_through_ns == 0  # the older rows 1-5 are not stored yet
    spool.acknowledge([1, 2, 3, 4, 5])
    assert acked.acked_through_ns == 7_000
    tick(spool, acked, 100, 8_000)  # seqs 8-107; the spool holds 100: nothing evicted yet
    tick(spool, acked, 10, 9_000)  # seqs 108-117: the 10 oldest (8-17) evicted
    assert spool.lowest_pending_seq() == 18 and acked.acked_through_ns == 7_000
    spool.acknowledge(list(range(18, 108)))
    assert acked.acked_through_ns == 8_000  # tick 8,000's rows: evicted or acknowledged
    spool.acknowledge(list(range(108, 118)))
    assert acked.acked_through_ns == 9_000 and spool.lowest_pending_seq() is None


@pytest.mark.parametrize("text", ["", "x\n", "-5\n", "12" * 40])
def test_a_file_that_holds_no_time_reads_as_none(tmp_path: Path, text: str) -> None:
    (tmp_path / "a").write_text(text)
    assert read_acked_file(tmp_path / "a") is None
    assert read_acked_file(tmp_path / "absent") is None


def test_a_folder_it_cannot_write_is_said_once_and_sampling_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool.db")
    acked = AckedThrough(spool, tmp_path / "no-such-folder" / "spool.acked")
    with caplog.at_level(logging.WARNING, logger="gridwatt.agent.acked"):
        for t in (1, 2, 3):
            tick(spool, acked, 0, t * 1_000)
    assert acked.acked_through_ns == 3_000
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no-such-folder/spool.acked" in warnings[0]


def test_the_default_path_is_beside_the_spool() -> None:
    assert AgentConfig(spool_path=Path("/var/lib/gridwatt/spool.db")).acked_file() == Path(
        "/var/lib/gridwatt/spool.acked")
    assert AgentConfig(acked_path=Path("/run/a")).acked_file() == Path("/run/a")
