"""The shipper against an in-process collector on real gRPC and the real InfluxDB."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from gridwatt.agent.config import CollectorConnection
from gridwatt.agent.shipper import Shipper
from gridwatt.agent.spool import Spool
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from tests.collector.helpers import running_collector, sim_samples
from tests.conftest import collector_toml, first_row, influx_query

T0 = 1_650_000_000 * 10**9


async def test_damaged_payload_is_set_aside_and_the_rest_delivered(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """A spooled row whose payload no longer parses must not stop the shipper (it would stop
    delivery for good): it is moved aside as rejected, everything else is delivered."""
    samples = sim_samples("n1", 2, T0, 600, 100.0, 60.0)  # 20 samples of 6000 J
    spool = Spool(tmp_path / "spool.db")
    rows = [(s.start_ns, s.energy_j, s.SerializeToString()) for s in samples]
    rows.insert(7, (T0, 1.0, b"\xff\xff\xff garbage"))
    spool.append(rows)
    async with running_collector(tmp_path, collector_toml(influxdb.url, database)) as c:
        shipper = Shipper("n1", spool, CollectorConnection(address=f"127.0.0.1:{c.grpc_port}"))
        stop = asyncio.Event()
        task = asyncio.create_task(shipper.run(stop))
        for _ in range(600):
            if spool.pending == 0:
                break
            await asyncio.sleep(0.05)
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)
    ledger = spool.ledger()
    assert (ledger.sampled, ledger.acknowledged, ledger.rejected, ledger.pending) == (21, 20, 1, 0)
    assert ledger.balanced and shipper.stats.reconnects == 0
    row = first_row(influx_query(influxdb.url, database, "SELECT count(energy_j), sum(energy_j) FROM gpu")[0])
    assert (row["count"], row["sum"]) == (20, 20 * 6000.0)
    reason = spool._db.execute("SELECT reason FROM rejected").fetchall()
    assert reason == [("spooled payload is damaged and does not parse",)]
