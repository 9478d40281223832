"""The shipper against an in-process collector on real gRPC and the real InfluxDB."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable
from pathlib import Path

from gridwatt.agent.config import CollectorConnection
from gridwatt.agent.shipper import NewData, Shipper, retrieve_quietly
from gridwatt.agent.spool import Spool
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from tests.collector.helpers import running_collector, sim_samples
from tests.conftest import collector_toml, first_row, influx_query

T0 = 1_650_000_000 * 10**9


async def drained(spool: Spool) -> None:
    """Wait (up to 30 s) until every spooled sample was acknowledged."""
    for _ in range(600):
        if spool.pending == 0:
            return
        await asyncio.sleep(0.05)


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
        await drained(spool)
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


def test_new_data_wakes_a_lingering_shipper_only_when_it_matters() -> None:
    """NewData.set() is let through only when ``wanted`` says so; ring() always wakes."""

    async def check() -> None:
        bell = NewData()
        bell.set()
        assert bell.is_set()  # no linger: every set() wakes
        bell.clear()
        full = [False]
        bell.wanted = lambda: full[0]
        bell.set()
        assert not bell.is_set()  # the batch cannot be full yet: nothing to tell the shipper
        full[0] = True
        bell.set()
        assert bell.is_set()
        bell.clear()
        full[0] = False
        bell.ring()
        assert bell.is_set()

    asyncio.run(check())


async def test_a_full_batch_and_a_flush_end_the_linger(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """With a linger that never ends by itself, samples go out only because 16 fill a batch, and
    then because the agent flushes: the shipper must be woken by new samples while it lingers."""
    samples = sim_samples("n1", 8, T0, 4, 100.0, 1.0)  # 4 intervals of 8 GPUs, 100 J each
    rows = [(s.start_ns, s.energy_j, s.SerializeToString()) for s in samples]
    spool = Spool(tmp_path / "spool.db")
    async with running_collector(tmp_path, collector_toml(influxdb.url, database)) as c:
        conn = CollectorConnection(address=f"127.0.0.1:{c.grpc_port}", batch_max_samples=16)
        shipper = Shipper("n1", spool, conn.model_copy(update={"linger_s": 10.0**6}))
        stop = asyncio.Event()
        task = asyncio.create_task(shipper.run(stop))

        async def until(cond: Callable[[], bool]) -> None:
            while not cond():
                await asyncio.sleep(0.02)

        spool.append(rows[:8])
        shipper.new_data.set()
        await until(lambda: shipper.new_data.wanted is not None)  # lingering on 8 of 16
        assert spool.pending == 8 and shipper.stats.batches_acked == 0
        spool.append(rows[8:16])
        shipper.new_data.set()  # 16: a full batch
        await until(lambda: spool.pending == 0)
        assert shipper.stats.batches_acked == 1
        spool.append(rows[16:24])
        shipper.new_data.set()
        await until(lambda: shipper.new_data.wanted is not None)
        assert spool.pending == 8
        shipper.flush.set()
        shipper.new_data.set()
        await until(lambda: spool.pending == 0)
        assert shipper.stats.batches_acked == 2
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    ledger = spool.ledger()
    assert (ledger.sampled, ledger.acknowledged, ledger.pending) == (24, 24, 0) and ledger.balanced
    row = first_row(influx_query(influxdb.url, database, "SELECT count(energy_j), sum(energy_j) FROM gpu")[0])
    assert (row["count"], row["sum"]) == (24, 24 * 100.0)


async def test_on_ack_reports_each_stored_batch_with_its_oldest_samples_age(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """``on_ack`` (benchmarks/capacity.py) gets, per stored batch, its samples and the time from the end
    of its oldest GPU sample to the ack: the data's delay, linger included (not only send → ack)."""
    samples = sim_samples("n1", 2, T0, 600, 100.0, 60.0)  # 20 samples, the first two end at T0 + 60 s
    oldest_end_ns = min(s.end_ns for s in samples)
    assert oldest_end_ns == T0 + 60 * 10**9
    spool = Spool(tmp_path / "spool.db")
    spool.append([(s.start_ns, s.energy_j, s.SerializeToString()) for s in samples[:8]])
    acks: list[tuple[float, int, int]] = []
    async with running_collector(tmp_path, collector_toml(influxdb.url, database)) as c:
        conn = CollectorConnection(address=f"127.0.0.1:{c.grpc_port}", batch_max_samples=8, linger_s=0.0)
        shipper = Shipper("n1", spool, conn, on_ack=lambda *a: acks.append(a))
        before_ns = time.time_ns()
        stop = asyncio.Event()
        task = asyncio.create_task(shipper.run(stop))
        await drained(spool)
        spool.append([(s.start_ns, s.energy_j, s.SerializeToString()) for s in samples[8:]])
        shipper.new_data.set()
        await drained(spool)
        after_ns = time.time_ns()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)
    assert [n for _, n, _ in acks] == [8, 8, 4]
    # batch k's oldest samples end at T0 + (4k + 1) minutes (2 GPUs a minute, 8 samples a batch)
    for k, (latency_s, _, age_ns) in enumerate(acks):
        first_end_ns = T0 + (4 * k + 1) * 60 * 10**9
        assert before_ns - first_end_ns <= age_ns <= after_ns - first_end_ns
        assert 0 <= latency_s <= (after_ns - before_ns) / 1e9


def test_a_reader_that_ends_in_an_error_after_its_cancel_is_not_logged_as_never_retrieved() -> None:
    """The shipper cancels its ack reader when a session ends; the call's cancellation can reach the
    reader as an RPC error rather than CancelledError. ``retrieve_quietly`` takes that error, so
    asyncio reports nothing (without it: one "Task exception was never retrieved")."""
    def reported(quiet: bool) -> list[str]:
        messages: list[str] = []

        async def reader() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise RuntimeError("the call was cancelled") from None

        async def session() -> None:
            asyncio.get_running_loop().set_exception_handler(
                lambda _loop, ctx: messages.append(str(ctx["message"])))
            task = asyncio.create_task(reader())
            await asyncio.sleep(0)
            task.cancel()
            if quiet:
                task.add_done_callback(retrieve_quietly)
            await asyncio.sleep(0.01)  # the reader ends with its RuntimeError
            del task
            gc.collect()

        asyncio.run(session())
        return messages

    assert reported(quiet=True) == []
    assert reported(quiet=False) == ["Task exception was never retrieved"]
