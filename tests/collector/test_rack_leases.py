"""Leased rack windows (collector/rack_state.py, "Leased windows") against a real InfluxDB, through real
gRPC streams, with two collector replicas writing the same rack (the auto-registered default rack,
which is never held): rack points summed from a read younger than the lease plus the replica's own
writes since must leave every rack window exact, after late data into an old window, a replica that
dies with its settles still pending, and a restart. Energies are hand-computed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gridwatt.collector.server import RunningCollector
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from tests.collector.helpers import running_collector
from tests.collector.test_node_state import Stream, sample
from tests.conftest import collector_toml, influx_query

NS = 1_000_000_000
J_PER_KWH = 3.6e6
#: Sample time: three hours ago, on a whole minute (the windows are 60 s).
T0 = (time.time_ns() - 3 * 3600 * NS) // (60 * NS) * (60 * NS)
W1, W_OLD, W3, W4 = T0, T0 - 3600 * NS, T0 + 120 * NS, T0 + 240 * NS
#: replica_settle_s: leases run half of it
SETTLE_S = 4.0
JOB = [("job-0", 1.0, {})]


def toml(influxdb: LocalInfluxDB, database: str) -> str:
    return (collector_toml(influxdb.url, database, racks="", extra_server="auto_register = true")
            + f'\n[accounting]\ndefault_zone = "Z"\ndefault_pue = 1.25\nreplica_settle_s = {SETTLE_S}\n')


async def send(stream: Stream, node: str, batch_id: int, start_ns: int, power_w: float) -> None:
    """One batch of 2 GPUs x 10 s at ``power_w`` (2 x 10 x power_w J), acknowledged as stored."""
    ack = await stream.send(pb.Batch(batch_id=batch_id, node=node, gpu_samples=[
        sample(g, start_ns, 10, power_w, JOB) for g in range(2)]))
    assert ack.code == 0, ack.message


async def settles_done(c: RunningCollector) -> None:
    """Wait until the collector has no rack settle recompute pending or running."""
    rollup = c.ingestor.rollup
    deadline = time.monotonic() + 60
    while rollup._settle or rollup._settle_tasks:
        assert time.monotonic() < deadline, "settle recomputes never finished"
        await asyncio.sleep(0.05)


def crash(c: RunningCollector) -> None:
    """What a killed collector leaves undone: its pending settle recomputes and final read-backs."""
    rollup = c.ingestor.rollup
    for handle in rollup._settle_handles.values():
        handle.cancel()
    rollup._settle_handles.clear()
    rollup._settle.clear()
    for read_backs in (rollup._final, rollup._rack_final):
        for handle in read_backs.handles.values():
            handle.cancel()
        read_backs.handles.clear()
        read_backs.entries.clear()


async def test_leased_rack_windows_stay_exact_with_two_replicas_late_data_a_crash_and_a_restart(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """n1 streams to replica A, n2 to replica B (n3 to replica C), all in the default rack. The test holds
    A's clock of leases still, then moves it past a lease, so which of A's rack points come from a lease
    is exact."""
    for sub in ("a", "b", "c", "a2"):
        (tmp_path / sub).mkdir()
    cfg = toml(influxdb, database)
    clock = [time.monotonic()]
    async with running_collector(tmp_path / "b", cfg) as b:
        b_n2 = Stream(b.grpc_port)
        async with running_collector(tmp_path / "a", cfg) as a:
            ra = a.ingestor.rollup
            assert ra.racks.lease_s == SETTLE_S / 2
            ra.racks.clock = lambda: clock[0]
            a_n1 = Stream(a.grpc_port)
            # W4: A reads the window, and its settle reads it again (and leases it anew); replica C
            # writes n3 there and dies before its settle; A's next batch there is summed from the lease
            # (without n3's point), and A's settle after that sum puts it right
            await send(a_n1, "n1", 8, W4, 170.0)
            await settles_done(a)
            async with running_collector(tmp_path / "c", cfg) as c:
                c_n3 = Stream(c.grpc_port)
                await send(c_n3, "n3", 1, W4, 210.0)
                crash(c)
                await c_n3.close()
            await send(a_n1, "n1", 9, W4 + 10 * NS, 180.0)
            assert ra.rack_leased_windows == 1
            await settles_done(a)
            ra.rack_leased_windows = 0
            # W1: A reads the rack's window (and leases it), B writes n2 there, A sums n1's next batch
            # from its lease (without n2's point: a settle puts that right)
            await send(a_n1, "n1", 1, W1, 100.0)
            await send(b_n2, "n2", 1, W1, 200.0)
            await send(a_n1, "n1", 2, W1 + 10 * NS, 110.0)
            assert ra.rack_leased_windows == 1
            # late data into an old window that both replicas write: A reads it (B wrote first), then
            # sums its next batch there from the lease
            await send(b_n2, "n2", 2, W_OLD, 300.0)
            await send(a_n1, "n1", 3, W_OLD, 120.0)
            await send(a_n1, "n1", 4, W_OLD + 10 * NS, 135.0)
            assert ra.rack_leased_windows == 2
            # W3: A reads it (its settle reads it again, and leases it anew), then B writes n2 there and
            # settles; past A's lease, A's next batch reads the rack again (summed from the lease it would
            # miss n2's point, and no settle of B's follows it)
            await send(a_n1, "n1", 5, W3, 150.0)
            await settles_done(a)
            await send(b_n2, "n2", 3, W3, 250.0)
            await settles_done(b)
            clock[0] += SETTLE_S
            await send(a_n1, "n1", 6, W3 + 10 * NS, 160.0)
            assert (ra.rack_leased_windows, ra.rack_leases_late) == (2, 0)  # read, not leased
            # A dies before any of its settles ran
            crash(a)
            await a_n1.close()
        # a restarted A (a new instance, nothing leased) writes W1 again
        async with running_collector(tmp_path / "a2", cfg) as a2:
            a2_n1 = Stream(a2.grpc_port)
            await send(a2_n1, "n1", 7, W1 + 20 * NS, 140.0)
            assert a2.ingestor.rollup.rack_leased_windows == 0
            await a2_n1.close()
        await b_n2.close()
    expected_j = {
        W_OLD: 20 * (300 + 120 + 135),
        W1: 20 * (100 + 110 + 140 + 200),
        W3: 20 * (150 + 160 + 250),
        W4: 20 * (170 + 180 + 210),
    }
    (rack,) = influx_query(influxdb.url, database,
                           "SELECT it_energy_kwh, facility_energy_kwh, gpu_count, nodes FROM rack "
                           "WHERE rack = 'unassigned'")
    got = {t: (kwh * J_PER_KWH, facility_kwh * J_PER_KWH, gpus, nodes)
           for t, kwh, facility_kwh, gpus, nodes in rack["series"][0]["values"]}
    assert got == {t: (pytest.approx(j, rel=1e-12), pytest.approx(1.25 * j, rel=1e-12), 4, 2)
                   for t, j in expected_j.items()}
