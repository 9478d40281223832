"""Agents' ledgers over real gRPC into the real InfluxDB: stored once per node and minute, logged."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from gridwatt.collector.ledger import RESOLUTION_NS
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import batches, running_collector, sim_samples
from tests.conftest import collector_toml, influx_query

T0 = 1_650_000_000 * 10**9  # 2022-04-15T05:20:00Z, a whole minute


def ledger(at_ns: int, sampled: int, acknowledged: int, evicted: int, evicted_energy_j: float,
           pending: int) -> pb.SpoolLedger:
    return pb.SpoolLedger(sampled=sampled, acknowledged=acknowledged, evicted=evicted,
                          evicted_energy_j=evicted_energy_j, pending=pending, at_ns=at_ns)


def points(db: LocalInfluxDB, database: str) -> list[dict[str, object]]:
    (res,) = influx_query(db.url, database, "SELECT * FROM agent_ledger")
    series = res.get("series") or []
    return [dict(zip(series[0]["columns"], v, strict=True)) for v in series[0]["values"]] if series else []


async def test_ledger_only_batches_are_stored_once_per_minute_and_evictions_logged(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gridwatt.collector.ledger")
    async with running_collector(tmp_path, collector_toml(influxdb.url, database)) as c:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            stub = pb_grpc.IngestStub(ch)
            first = pb.Batch(batch_id=1, node="n1", ledger=ledger(T0 + 5 * 10**9, 1000, 0, 900, 9000.0, 100))
            for _ in range(2):  # resent: the same point
                ack = await stub.Write(first)
                assert (ack.code, ack.stored_samples) == (0, 0)
            assert len(points(influxdb, database)) == 1
            # later in the same minute: overwrites; the eviction is logged once
            later = pb.Batch(batch_id=2, node="n1", ledger=ledger(T0 + 50 * 10**9, 1000, 100, 900, 9000.0, 0))
            assert (await stub.Write(later)).code == 0
            # next minute, with samples and a bad ledger: the samples are stored, the ledger skipped
            (with_samples,) = batches("n1", sim_samples("n1", 1, T0, 120, 100.0, 60.0), 10)
            with_samples.ledger.CopyFrom(ledger(T0 + RESOLUTION_NS + 10**9, 1002, 100, 900, float("nan"), 2))
            ack = await stub.Write(with_samples)
            assert (ack.code, ack.stored_samples) == (0, 2)
    (p,) = points(influxdb, database)
    assert p["time"] == T0 and p["node"] == "n1" and p["rack"] == "r1"
    assert (p["sampled"], p["acknowledged"], p["evicted"], p["evicted_energy_j"], p["pending"]) == (
        1000, 100, 900, 9000.0, 0)
    assert p["balanced"] is True and p["at_ns"] == T0 + 50 * 10**9
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("evicted 900 samples (9000.0 J)" in m for m in msgs) == 1
    assert any("ledger not stored: field ledger.evicted_energy_j: value nan" in m for m in msgs)
