"""Host samples: metered from readings, spooled beside GPU samples, shipped in Batch.host_samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridwatt.agent.config import CollectorConnection
from gridwatt.agent.host_meter import HostMeter, host_spool_row
from gridwatt.agent.shipper import Shipper
from gridwatt.agent.sources.host import HostReading
from gridwatt.agent.spool import Spool
from gridwatt.v1 import telemetry_pb2 as pb

S = 10**9


def reading(t_s: int, energy_uj: int | None, util: float = 25.0) -> HostReading:
    return HostReading(
        t_ns=t_s * S,
        cpu_util_pct=util,
        mem_used_bytes=3 * 2**30,
        mem_total_bytes=16 * 2**30,
        cpu_energy_uj=energy_uj,
        cpu_energy_max_uj=262_143_328_850,
    )


def test_host_meter_intervals_and_rapl_wrap() -> None:
    meter = HostMeter()
    assert meter.take(reading(100, 262_143_000_000)) is None
    sample = meter.take(reading(101, 1_000_000, util=40.0))  # wrapped: 328_850 + 1_000_000 µJ
    assert sample is not None
    assert (sample.start_ns, sample.end_ns, sample.cpu_util_pct) == (100 * S, 101 * S, 40.0)
    assert sample.has_cpu_energy and sample.cpu_energy_j == pytest.approx(1.32885)
    no_rapl = meter.take(reading(102, None))
    assert no_rapl is not None and not no_rapl.has_cpu_energy and no_rapl.mem_total_bytes == 16 * 2**30


async def test_spooled_host_rows_ship_as_host_samples(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    gpu = pb.GpuSample(gpu_index=0, start_ns=S, end_ns=2 * S, energy_j=300.0)
    host = pb.HostSample(start_ns=S, end_ns=2 * S, cpu_util_pct=12.5, has_cpu_energy=True, cpu_energy_j=55.0)
    spool.append([(gpu.start_ns, gpu.energy_j, gpu.SerializeToString()), host_spool_row(host)])
    shipper = Shipper("n1", spool, CollectorConnection())
    batch, seqs = shipper._make_batch(spool.read_after(0, 10))
    assert len(seqs) == 2
    assert list(batch.gpu_samples) == [gpu]
    assert list(batch.host_samples) == [host]
    assert spool.ledger().balanced
