"""The collector under a stopped, paused or refusing InfluxDB, and under overload (real InfluxDB, real gRPC).

Never OK for unstored data: UNAVAILABLE with a retry hint, health NOT_SERVING (grpc.health.v1
and /healthz 503) until InfluxDB takes writes again, and an exact ledger throughout.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gridwatt.collector.ingest_stats import IngestStats
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import (
    batches,
    http_get,
    influx_post,
    running_collector,
    sim_samples,
    with_influx_settings,
    with_server_settings,
)
from tests.conftest import collector_toml, first_row, influx_query

pytestmark = pytest.mark.integration  # see tests/conftest.py

T0 = 1_650_000_000 * 10**9
H_NS = 3600 * 10**9
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAST = {"write_attempts": 2, "retry_base_s": 0.02, "health_probe_interval_s": 0.2, "timeout_s": 5.0}


def ledger(stats: IngestStats) -> tuple[int, int, int, int, int]:
    """(received, stored, rejected, deferred, in flight) samples; asserts that they add up."""
    assert stats.balanced(), stats
    return (stats.samples_received, stats.samples_stored, stats.samples_rejected, stats.samples_deferred,
            stats.samples_in_flight)


async def health_of(ch: grpc.aio.Channel, service: str = "") -> int:
    resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service))
    return int(resp.status)


async def wait_health(ch: grpc.aio.Channel, want: int, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if await health_of(ch) == want and await health_of(ch, "gridwatt.v1.Ingest") == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health never became {want}")


def gpu_count(url: str, database: str) -> int:
    (res,) = influx_query(url, database, "SELECT count(energy_j) FROM gpu")
    return int(first_row(res).get("count", 0))


async def test_store_down_unavailable_with_retry_hint_health_not_serving_then_everything_stored(
    tmp_path: Path, database: str
) -> None:
    with LocalInfluxDB(tmp_path / "influx") as db:
        toml = with_influx_settings(collector_toml(db.url, database), **FAST)
        b1, b2, b3 = batches("n1", sim_samples("n1", 2, T0, 1800, 300.0, 60.0), 20)
        async with running_collector(tmp_path, toml) as c, grpc.aio.insecure_channel(
            f"127.0.0.1:{c.grpc_port}"
        ) as ch:
            healthz = f"http://127.0.0.1:{c.http_port}/healthz"
            stub = pb_grpc.IngestStub(ch)
            stream = stub.Stream()
            await stream.write(b1)
            assert (await stream.read()).code == 0
            assert (await health_of(ch), await health_of(ch, "gridwatt.v1.Ingest")) == (SERVING, SERVING)
            assert (await asyncio.to_thread(http_get, healthz))[0] == 200

            await asyncio.to_thread(db.stop)
            await stream.write(b2)
            ack = await stream.read()
            assert (ack.batch_id, ack.code, ack.stored_samples) == (b2.batch_id, 14, 0)
            assert "not stored" in ack.message and ack.retry_after_ms >= 200
            await wait_health(ch, NOT_SERVING, 5)
            status, body = await asyncio.to_thread(http_get, healthz)
            assert status == 503 and json.loads(body)["status"] == "unavailable"
            assert "InfluxDB" in json.loads(body)["reason"]
            # the unary call: UNAVAILABLE with the hint in trailing metadata, and no request made
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Write(b3)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            hint = dict(err.value.trailing_metadata() or ())["retry-after-ms"]
            assert int(hint) >= 1 and "InfluxDB unavailable" in (err.value.details() or "")
            assert ledger(c.ingestor.stats) == (60, 20, 0, 40, 0)
            assert dict(c.ingestor.stats.batches_deferred_by_reason) == {"store_unavailable": 2}

            await asyncio.to_thread(db.start)
            await wait_health(ch, SERVING)
            assert (await asyncio.to_thread(http_get, healthz))[0] == 200
            for b in (b2, b3):  # what the agent does: resend
                await stream.write(b)
                assert (await stream.read()).code == 0
            await stream.done_writing()
            assert ledger(c.ingestor.stats) == (100, 60, 0, 40, 0)
        assert gpu_count(db.url, database) == 60


async def test_overload_answers_unavailable_at_once_and_the_in_flight_batches_are_stored(
    tmp_path: Path, database: str
) -> None:
    with LocalInfluxDB(tmp_path / "influx") as db:
        toml = with_server_settings(
            with_influx_settings(collector_toml(db.url, database), timeout_s=120.0),
            max_in_flight_batches=2, overload_retry_after_s=0.75,
        )
        b1, b2, b3, b4 = batches("n1", sim_samples("n1", 1, T0, 2400, 300.0, 60.0), 10)
        async with running_collector(tmp_path, toml) as c, grpc.aio.insecure_channel(
            f"127.0.0.1:{c.grpc_port}"
        ) as ch:
            stub = pb_grpc.IngestStub(ch)
            db.pause()  # InfluxDB hangs: every write stays in flight
            try:
                first = [asyncio.ensure_future(stub.Write(b)) for b in (b1, b2)]
                deadline = time.monotonic() + 60
                while c.ingestor.stats.batches_in_flight < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert c.ingestor.stats.batches_in_flight == 2
                t = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Write(b3)
                assert time.monotonic() - t < 20  # at once, not after InfluxDB's timeout
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "overloaded" in (err.value.details() or "")
                assert dict(err.value.trailing_metadata() or ())["retry-after-ms"] == "750"
                stream = stub.Stream()
                await stream.write(b4)
                ack = await stream.read()
                assert (ack.code, ack.retry_after_ms) == (14, 750)
                await stream.done_writing()
                assert ledger(c.ingestor.stats) == (40, 0, 0, 20, 20)
                # overloaded: NOT_SERVING, so agents and load balancers back off
                assert await health_of(ch) == NOT_SERVING
            finally:
                db.resume()
            acks = await asyncio.gather(*first)
            assert not c.ingestor.overloaded and await health_of(ch) == SERVING  # in flight fell to 0
            assert [(a.code, a.stored_samples) for a in acks] == [(0, 10), (0, 10)]
            assert ledger(c.ingestor.stats) == (40, 20, 0, 20, 0)
            assert dict(c.ingestor.stats.batches_deferred_by_reason) == {"overload": 2}
            # the agent resends the two turned away, now that there is room
            for b in (b3, b4):
                assert (await stub.Write(b)).code == 0
        assert gpu_count(db.url, database) == 40


async def test_influxdb_refusing_some_points_rejects_only_those_samples(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    influx_post(influxdb.url, f"CREATE DATABASE {database} WITH DURATION 1h")
    now = time.time_ns()
    minute = 60 * 10**9
    old = sim_samples("n1", 1, now - 3 * H_NS, 6 * 300, 300.0, 300.0)  # beyond the 1 h retention
    new = sim_samples("n1", 1, now - 40 * minute, 5 * 300, 300.0, 300.0)
    batch = pb.Batch(batch_id=9, node="n1", gpu_samples=[*old, *new])
    assert (len(old), len(new)) == (6, 5)
    async with running_collector(tmp_path, collector_toml(influxdb.url, database)) as c:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            stream = pb_grpc.IngestStub(ch).Stream()
            await stream.write(batch)
            ack = await stream.read()
            await stream.done_writing()
        assert (ack.code, ack.stored_samples) == (3, 5)
        expected = "InfluxDB refused 6 of 11 samples (the other 5 are stored; do not resend): "
        assert ack.message.startswith(expected)
        first = (f"sample 0 (gpu 0, start_ns {old[0].start_ns}): InfluxDB refused the point (HTTP 400): "
                 "partial write: points beyond retention policy")
        assert first in ack.message
        assert ledger(c.ingestor.stats) == (11, 5, 6, 0, 0)
        assert dict(c.ingestor.stats.samples_rejected_by_reason) == {"influxdb_bad_points": 6}
        assert dict(c.ingestor.stats.batches_rejected_by_reason) == {"influxdb_bad_points": 1}
        assert c.store.serving
    gpu, job, rack = influx_query(
        influxdb.url, database,
        "SELECT count(energy_j), sum(energy_j) FROM gpu; SELECT count(energy_j) FROM job; "
        "SELECT sum(it_energy_kwh) FROM rack",
    )
    assert (first_row(gpu)["count"], first_row(job)["count"]) == (5, 5)
    assert first_row(gpu)["sum"] == pytest.approx(5 * 300.0 * 300)
    assert first_row(rack)["sum"] == pytest.approx(5 * 300.0 * 300 / 3.6e6)


async def test_403_keeps_the_data_raises_the_alarm_and_recovers_when_granted(tmp_path: Path) -> None:
    admin = ("admin", "admin-pw")
    with LocalInfluxDB(tmp_path / "influx-auth", auth_enabled=True) as db:
        influx_post(db.url, "CREATE USER admin WITH PASSWORD 'admin-pw' WITH ALL PRIVILEGES")
        influx_post(db.url, "CREATE DATABASE gw", auth=admin)
        influx_post(db.url, "CREATE USER collector WITH PASSWORD 'pw'", auth=admin)
        influx_post(db.url, "GRANT READ ON gw TO collector", auth=admin)
        toml = with_influx_settings(collector_toml(db.url, "gw"), username="collector", password="pw",
                                    create_database=False, **FAST)
        (b1,) = batches("n1", sim_samples("n1", 2, T0, 600, 300.0, 60.0), 100)
        async with running_collector(tmp_path, toml) as c, grpc.aio.insecure_channel(
            f"127.0.0.1:{c.grpc_port}"
        ) as ch:
            stream = pb_grpc.IngestStub(ch).Stream()
            await stream.write(b1)
            ack = await stream.read()
            assert ack.code == 14 and "HTTP 403" in ack.message and "not authorized to write" in ack.message
            await wait_health(ch, NOT_SERVING, 5)
            registry = c.metrics.registry
            assert registry.get_sample_value("gridwatt_collector_influxdb_auth_failing") == 1
            assert registry.get_sample_value("gridwatt_collector_influxdb_auth_failures_total") == 1
            influx_post(db.url, "GRANT ALL ON gw TO collector", auth=admin)
            await wait_health(ch, SERVING)
            assert registry.get_sample_value("gridwatt_collector_influxdb_auth_failing") == 0
            await stream.write(b1)
            assert (await stream.read()).code == 0
            await stream.done_writing()
            assert ledger(c.ingestor.stats) == (40, 20, 0, 20, 0)
