"""GET /metrics: scraped over HTTP, parsed as Prometheus text, exact values after a known sequence."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gridwatt.collector.intensity.base import IntensitySeries, IntensityUnavailable
from gridwatt.collector.intensity.chain import FallbackChain
from gridwatt.collector.intensity.constant import ConstantIntensity
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import (
    batches,
    http_get,
    running_collector,
    sim_samples,
    with_influx_settings,
)
from tests.conftest import collector_toml
from tests.influx_front import InfluxFront, Reply

T0 = 1_650_000_000 * 10**9
P = "gridwatt_collector_"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> tuple[str, Samples]:
    status, text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return text, out


def v(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((P + name, frozenset(labels.items())))


class _Down:
    source = "test-provider-down"

    async def series(self, start_ns: int, end_ns: int) -> IntensitySeries:
        raise IntensityUnavailable("HTTP 503 from the provider")


async def test_metrics_after_a_known_sequence(tmp_path: Path, influxdb: LocalInfluxDB, database: str) -> None:
    a, b = batches("n1", sim_samples("n1", 1, T0, 1200, 300.0, 60.0), 10)  # 10 one-minute samples each
    (bad,) = batches("n1", sim_samples("n1", 2, T0, 600, 300.0, 60.0), 100)  # 20 samples
    bad.gpu_samples[3].energy_j = -1.0
    async with running_collector(tmp_path, collector_toml(influxdb.url, database)) as c:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            stub = pb_grpc.IngestStub(ch)
            stream = stub.Stream()
            for batch in (a, b):
                await stream.write(batch)
                assert (await stream.read()).code == 0
            with_stream = (await scrape(c.http_port))[1]
            await stream.done_writing()
            assert await stream.read() == grpc.aio.EOF
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Write(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary("/gridwatt.v1.Ingest/Write")(b"\x0a\xff\xff\xff")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        chain = FallbackChain([_Down(), ConstantIntensity(300.0)])
        await chain.series(T0, T0 + 10**9)
        await chain.series(T0, T0 + 10**9)
        deadline = time.monotonic() + 30
        text, m = await scrape(c.http_port)
        while v(m, "agent_streams") != 0 and time.monotonic() < deadline:  # the stream ends server-side
            await asyncio.sleep(0.05)
            text, m = await scrape(c.http_port)
    assert v(with_stream, "agent_streams") == 1
    assert v(m, "agent_streams") == 0
    assert v(m, "samples_received_total") == 40
    assert v(m, "samples_stored_total") == 20
    assert v(m, "samples_rejected_total", reason="validation") == 20
    assert v(m, "samples_in_flight") == 0
    assert [k for k in m if k[0] == P + "samples_deferred_total"] == []
    assert v(m, "batches_received_total") == 4
    assert v(m, "batches_stored_total") == 2
    assert v(m, "batches_rejected_total", reason="validation") == 1
    assert v(m, "batches_rejected_total", reason="malformed") == 1
    assert v(m, "batches_in_flight") == 0
    assert v(m, "batches_retried_total") == 0
    # two requests per stored batch: its gpu and job points with its node windows (one write), then
    # its rack windows (the rack is read, not held: its node's stream opened < replica_settle_s ago)
    assert v(m, "influxdb_write_duration_seconds_count") == 4
    assert v(m, "influxdb_write_duration_seconds_bucket", le="+Inf") == 4
    assert [v(m, "rollup_one_writes_total", windows=w) for w in ("node", "rack")] == [2, 0]
    assert (v(m, "rollup_queries_total", kind="rack"), v(m, "rollup_queries_total", kind="fill")) == (2, 1)
    assert v(m, "influxdb_up") == 1 and v(m, "influxdb_auth_failing") == 0
    assert v(m, "influxdb_auth_failures_total") == 0
    # intensity provider failures, in the process-wide registry: asked once, then skipped while it
    # cools down (FallbackChain), so one failure
    assert v(m, "intensity_provider_errors_total", provider="test-provider-down") == 1
    assert "# TYPE gridwatt_collector_influxdb_write_duration_seconds histogram" in text


async def test_metrics_of_retries_and_deferrals(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    x, y = batches("n1", sim_samples("n1", 1, T0, 600, 300.0, 60.0), 5)
    async with InfluxFront(influxdb.url, [Reply(500)]) as front:
        toml = with_influx_settings(collector_toml(front.url, database), write_attempts=2, retry_base_s=0.01,
                                    health_probe_interval_s=600.0)
        async with running_collector(tmp_path, toml) as c:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
                stream = pb_grpc.IngestStub(ch).Stream()
                await stream.write(x)  # InfluxDB answers 500 once, then stores it
                assert (await stream.read()).code == 0
                front.script = [Reply(503), Reply(503)]
                await stream.write(y)  # 503 twice: not stored, the agent keeps it
                ack = await stream.read()
                assert ack.code == 14 and ack.retry_after_ms >= 1
                await stream.done_writing()
            _, m = await scrape(c.http_port)
    assert v(m, "samples_received_total") == 10
    assert v(m, "samples_stored_total") == 5
    assert v(m, "samples_deferred_total", reason="store_unavailable") == 5
    assert v(m, "batches_deferred_total", reason="store_unavailable") == 1
    assert v(m, "batches_retried_total") == 1
    assert v(m, "influxdb_write_retries_total", reason="http_5xx") == 1
    assert v(m, "influxdb_write_retries_total", reason="http_503") == 1
    # x: 500, 204 (points and node windows, one write), 204 (rack windows); y: 503, 503
    assert v(m, "influxdb_write_duration_seconds_count") == 5
    assert v(m, "influxdb_up") == 0
    assert [w.status for w in front.writes] == [500, 204, 204, 503, 503]
