"""Agent-side batching (linger), collector failover and haproxy, with real processes end to end.

Live agents play 2 simulated GPUs at 100 W; at 1 Hz every sample is exactly 100 J, so every GPU,
job and rack total is known by hand from the spool's ledger.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from tests.e2e.test_delivery import LIVE_GPUS, Rig, final_stats

TICK_S = 1.0
SAMPLE_J = 100.0  # 100 W x 1 s, exact (the simulated energy counter counts whole mJ)


@pytest.fixture
def rig(tmp_path: Path, influxdb: LocalInfluxDB, database: str) -> Iterator[Rig]:
    r = Rig(tmp_path, influxdb.url, database)
    yield r
    r.close()


def test_batch_max_samples_makes_exact_batches_at_1hz(rig: Rig) -> None:
    """With a long linger, a batch leaves when batch_max_samples are spooled: 4 ticks of 2 GPUs per
    request instead of one request a tick; the stopping agent flushes the rest. Every sample stored."""
    rig.collector.start()
    agent = rig.agent(top=f"interval_s = {TICK_S}\n",
                      collector="linger_s = 60.0\nbatch_max_samples = 8\n").start()
    rig.wait_stored(3 * 8)
    rc, _ = agent.terminate()
    assert rc == 0
    ledger = rig.assert_all_delivered()
    stats = final_stats(agent)
    assert stats["batches_acked"] == -(-ledger.sampled // 8), (stats, ledger)
    assert rig.stored() == (ledger.sampled, SAMPLE_J * ledger.sampled)
    assert rig.rack_energy_j() == pytest.approx(SAMPLE_J * ledger.sampled, rel=1e-9)


def test_default_linger_sends_fewer_larger_batches_at_1hz(rig: Rig) -> None:
    """The default linger (2 s) at 1 Hz: fewer requests than ticks, and every sample stored once."""
    rig.collector.start()
    agent = rig.agent(top=f"interval_s = {TICK_S}\n").start()
    rig.wait_stored(8 * LIVE_GPUS)
    rc, _ = agent.terminate()
    assert rc == 0
    ledger = rig.assert_all_delivered()
    ticks = ledger.sampled // LIVE_GPUS
    stats = final_stats(agent)
    assert 0 < stats["batches_acked"] < ticks, (stats, ticks)
    assert rig.stored() == (ledger.sampled, SAMPLE_J * ledger.sampled)
    assert rig.rack_energy_j() == pytest.approx(SAMPLE_J * ledger.sampled, rel=1e-9)
