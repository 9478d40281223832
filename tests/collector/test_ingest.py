"""Ingest over real gRPC into the real InfluxDB: resends are idempotent, bad input is rejected alone."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import batches, running_collector, sim_samples
from tests.conftest import collector_toml, first_row, influx_query

H_NS = 3600 * 10**9
T0 = 1_650_000_000 * 10**9  # 2022-04-15T05:20:00Z
RACKS = '[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\nnodes = ["n1", "n2"]\n'


def totals(db: LocalInfluxDB, database: str) -> tuple[float, float, float, float, float, float]:
    gpu, job, rack = influx_query(
        db.url,
        database,
        "SELECT sum(energy_j), sum(co2e_g) FROM gpu; SELECT sum(energy_j), sum(co2e_g) FROM job; "
        "SELECT sum(it_energy_kwh), sum(co2e_g) FROM rack",
    )
    g, j, r = first_row(gpu), first_row(job), first_row(rack)
    return (
        g.get("sum", 0),
        g.get("sum_1", 0),
        j.get("sum", 0),
        j.get("sum_1", 0),
        r.get("sum", 0),
        r.get("sum_1", 0),
    )


async def test_every_batch_sent_twice_leaves_totals_unchanged(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    # 4 GPUs x 300 W x 2 h, 30 s samples: 2.4 kWh IT, x1.2 = 2.88 kWh, x350 g = 1008 g.
    samples = sim_samples("n1", 4, T0, 2 * 3600, 300.0, 30.0)
    async with running_collector(tmp_path, collector_toml(influxdb.url, database, racks=RACKS)) as c:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            stub = pb_grpc.IngestStub(ch)
            call = stub.Stream()
            sent = batches("n1", samples, 50)
            for b in sent:
                await call.write(b)
                await call.write(b)  # every batch twice
            acks = [await call.read() for _ in range(2 * len(sent))]
            await call.done_writing()
            assert {a.code for a in acks} == {0}
            once = totals(influxdb, database)
            # and once more, cut into different batches, through the unary RPC
            for b in batches("n1", samples, 37, first_id=1000):
                await stub.Write(b)
    again = totals(influxdb, database)
    expected_j = 4 * 300.0 * 2 * 3600
    assert once[0] == pytest.approx(expected_j, rel=1e-9)  # gpu measurement
    assert once[2] == pytest.approx(expected_j, rel=1e-9)  # job measurement
    assert once[4] == pytest.approx(expected_j / 3.6e6, rel=1e-9)  # rack windows, kWh
    assert once[1] == pytest.approx(1008.0, rel=1e-9)
    assert once[3] == pytest.approx(1008.0, rel=1e-9)
    assert once[5] == pytest.approx(1008.0, rel=1e-9)
    assert again == pytest.approx(once, rel=1e-12)


def _good_batch(node: str = "n1", batch_id: int = 1) -> pb.Batch:
    return batches(node, sim_samples(node, 2, T0, 600, 300.0, 60.0), 1000, first_id=batch_id)[0]


def _bad(kind: str) -> tuple[pb.Batch, str]:
    b = _good_batch()
    s = b.gpu_samples[3]
    now = time.time_ns()
    if kind == "negative_energy":
        s.energy_j = -5.0
        return b, "gpu_samples[3] (gpu 1, start 1650000060000000000): field energy_j: value -5.0 is negative"
    if kind == "nan_energy":
        s.energy_j = math.nan
        return b, "field energy_j: value nan is not a finite number"
    if kind == "absurd_power":
        s.energy_j = 60 * 50_000.0
        return b, "field energy_j: value 3000000.0 means 50000 W, above the plausible 2000 W for one GPU"
    if kind == "end_before_start":
        s.end_ns = s.start_ns - 1
        return b, f"field end_ns: value {s.end_ns} is not after start_ns {s.start_ns}"
    if kind == "far_future":
        s.start_ns, s.end_ns = now + 48 * H_NS, now + 48 * H_NS + 60 * 10**9
        return b, f"field end_ns: value {s.end_ns}"
    if kind == "unknown_node":
        b.node = "ghost-node"
        return b, "field node: value 'ghost-node' is not in any rack"
    if kind == "empty_node":
        b.node = ""
        return b, "field node: empty"
    if kind == "bad_fraction":
        s.jobs[0].fraction = 1.7
        return b, "field jobs.fraction: value 1.7 for job 'job-1' is outside (0, 1]"
    raise AssertionError(kind)


BAD_KINDS = [
    "negative_energy",
    "nan_energy",
    "absurd_power",
    "end_before_start",
    "far_future",
    "unknown_node",
    "empty_node",
    "bad_fraction",
]


async def test_bad_input_is_named_stores_nothing_and_others_carry_on(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    async with running_collector(tmp_path, collector_toml(influxdb.url, database, racks=RACKS)) as c:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            stub = pb_grpc.IngestStub(ch)
            # a well-behaved agent (n2) streams all along on its own stream
            good_call = stub.Stream()
            good = batches("n2", sim_samples("n2", 2, T0, 3600, 250.0, 60.0), 20)
            for kind in BAD_KINDS:
                batch, expected = _bad(kind)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Write(batch)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, kind
                assert expected in (err.value.details() or ""), (kind, err.value.details())
                if good:
                    await good_call.write(good.pop(0))
                    assert (await good_call.read()).code == 0
            # malformed bytes: not a Batch at all
            raw = ch.unary_unary("/gridwatt.v1.Ingest/Write")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\x0a\xff\xff\xff\xff\xff\xff")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed batch" in (err.value.details() or "")
            # on a stream, a bad batch gets a rejecting Ack and the same stream goes on
            bad_stream = stub.Stream()
            bad, _ = _bad("negative_energy")
            await bad_stream.write(bad)
            ack = await bad_stream.read()
            assert ack.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "negative" in ack.message
            fine = _good_batch("n1", batch_id=77)
            await bad_stream.write(fine)
            ack = await bad_stream.read()
            assert (ack.batch_id, ack.code, ack.stored_samples) == (77, 0, len(fine.gpu_samples))
            for b in good:
                await good_call.write(b)
                assert (await good_call.read()).code == 0
            await good_call.done_writing()
    (n1, n2, ghost) = influx_query(
        influxdb.url,
        database,
        "SELECT count(energy_j) FROM gpu WHERE node = 'n1'; SELECT count(energy_j), sum(energy_j) FROM gpu "
        "WHERE node = 'n2'; SELECT count(energy_j) FROM gpu WHERE node = 'ghost-node'",
    )
    # only the one good n1 batch was stored (2 GPUs x 10 intervals); nothing of any bad batch
    assert first_row(n1)["count"] == 20
    assert first_row(n2)["count"] == 2 * 60
    assert first_row(n2)["sum"] == pytest.approx(2 * 250.0 * 3600)
    assert first_row(ghost) == {}


async def test_http_and_grpc_job_queries(tmp_path: Path, influxdb: LocalInfluxDB, database: str) -> None:
    async with running_collector(tmp_path, collector_toml(influxdb.url, database, racks=RACKS)) as c:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            await pb_grpc.IngestStub(ch).Write(_good_batch())
            report = await pb_grpc.QueryStub(ch).GetJob(pb.GetJobRequest(job_id="job-1"))
            assert report.it_energy_kwh == pytest.approx(2 * 300.0 * 600 / 3.6e6)
            assert report.gpu_hours == pytest.approx(2 * 600 / 3600)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.QueryStub(ch).GetJob(pb.GetJobRequest(job_id="nope"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        url = f"http://127.0.0.1:{c.http_port}/v1/jobs/"

        def get(path: str) -> tuple[int, dict[str, object]]:
            try:
                with urllib.request.urlopen(url + path, timeout=10) as resp:
                    return resp.status, json.load(resp)
            except urllib.error.HTTPError as exc:
                return exc.code, json.load(exc)

        status, body = await asyncio.to_thread(get, "job-1")
        assert status == 200
        assert body["job_id"] == "job-1" and body["nodes"] == ["n1"] and body["gpus"] == ["n1/0", "n1/1"]
        assert body["co2e_kg"] == pytest.approx(2 * 300.0 * 600 / 3.6e6 * 1.2 * 0.350)
        status, body = await asyncio.to_thread(get, "nope")
        assert status == 404 and body == {"error": "no samples stored for job 'nope'"}


async def test_host_samples_are_stored_and_bad_ones_rejected(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    good = _good_batch()
    good.host_samples.add(
        start_ns=T0,
        end_ns=T0 + 60 * 10**9,
        cpu_util_pct=35.0,
        mem_used_bytes=2**33,
        mem_total_bytes=2**35,
        cpu_energy_j=6000.0,
        has_cpu_energy=True,
    )
    bad = _good_batch(batch_id=2)
    bad.host_samples.add(start_ns=T0, end_ns=T0 + 60 * 10**9, cpu_util_pct=130.0)
    async with running_collector(tmp_path, collector_toml(influxdb.url, database, racks=RACKS)) as c:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            stub = pb_grpc.IngestStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Write(bad)
            assert "host_samples[0]" in (err.value.details() or "") and "cpu_util_pct" in (
                err.value.details() or ""
            )
            assert (await stub.Write(good)).code == 0
    (host,) = influx_query(
        influxdb.url,
        database,
        "SELECT cpu_util_pct, cpu_energy_j, mem_total_bytes FROM host WHERE node = 'n1'",
    )
    assert first_row(host) == {
        "time": T0,
        "cpu_util_pct": 35.0,
        "cpu_energy_j": 6000.0,
        "mem_total_bytes": 2**35,
    }
