"""Held and fallback intensity through the collector, and late measured values replacing them.

Real InfluxDB, real gRPC, an in-process collector, and a real HTTP server playing Electricity
Maps' past-range endpoint with the hourly values of a real recorded answer
(tests/fixtures/grid/electricitymaps_history_US-MIDW-MISO.json). During the outage the hours
10:00-16:00 of 2024-11-30 are ``carbonIntensity: null``.

One GPU at 300 W, 08:00-18:00, PUE 1.2: 0.36 kWh facility energy per hour. By hand:

* outage, chain (Electricity Maps, hold 3 h; then constant 250): 0.36 × (416 + 419 + 427 + 429)
  measured + 0.36 × (3 × 419 held + 3 × 250 fallback) estimated = 608.76 + 722.52 = 1331.28 g,
  estimated_share 722.52 / 1331.28;
* all measured: 0.36 × 4335 = 1560.6 g.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from gridwatt.collector.points import ACCOUNTING_GPU_FIELDS
from gridwatt.collector.revisit import EstimateRevisor
from gridwatt.collector.server import RunningCollector
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import toml_str
from gridwatt.timeutil import NS_PER_S, parse_time_ns
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.grid_server import GridServer, fixture
from tests.collector.helpers import batches, http_get, running_collector, sim_samples
from tests.collector.test_node_state import Stream
from tests.collector.test_rack_state import settled
from tests.conftest import collector_toml, first_row, influx_query

H_NS = 3600 * NS_PER_S
T8 = parse_time_ns("2024-11-30T08:00:00Z")
OUTAGE = (parse_time_ns("2024-11-30T10:00:00Z"), parse_time_ns("2024-11-30T16:00:00Z"))
KWH_PER_H = 0.300 * 1.2
OUTAGE_G = KWH_PER_H * (416 + 419 + 427 + 429) + KWH_PER_H * (3 * 419 + 3 * 250)
ESTIMATED_G = KWH_PER_H * (3 * 419 + 3 * 250)
FULL_G = KWH_PER_H * 4335


class PastRange:
    """The past-range handler: the recording's hours in [start, end), nulls while ``outage``."""

    def __init__(self) -> None:
        self.outage = True
        self.hours = {parse_time_ns(v["datetime"]): v
                      for v in fixture("electricitymaps_history_US-MIDW-MISO.json")["history"]}

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        lo, hi = parse_time_ns(request.query["start"]), parse_time_ns(request.query["end"])
        data = []
        for t, v in sorted(self.hours.items()):
            if lo <= t < hi:
                null = self.outage and OUTAGE[0] <= t < OUTAGE[1]
                data.append({**v, "carbonIntensity": None} if null else v)
        return web.json_response({"zone": request.query["zone"], "data": data})


@pytest.fixture
async def api() -> AsyncIterator[tuple[GridServer, PastRange]]:
    server = GridServer()
    await server.start()
    handler = PastRange()
    server.route("/v3/carbon-intensity/past-range", handler)
    yield server, handler
    await server.stop()


def toml(tmp: Path, influx_url: str, database: str, api_url: str, chain: bool = True,
         lookback_s: float = 3600.0, nodes: str = '"n1"', gpu_fields: str = "all") -> str:
    key = tmp / "em.key"
    key.write_text("k-test\n")
    key.chmod(0o600)
    em = ('kind = "electricitymaps"\nzone = "US-MIDW-MISO"\n'
          f"base_url = {toml_str(api_url)}\napi_key_file = {toml_str(key)}\n"
          "max_hold_s = 10800\nmin_refetch_s = 0\nmax_attempts = 1\n")
    if chain:
        zones = ('[[zones]]\nname = "MISO"\n[zones.intensity]\nkind = "chain"\ncooldown_s = 0\n'
                 f"[[zones.intensity.providers]]\n{em}"
                 '[[zones.intensity.providers]]\nkind = "constant"\ng_per_kwh = 250.0\n')
    else:
        zones = f'[[zones]]\nname = "MISO"\n[zones.intensity]\n{em}'
    return collector_toml(
        influx_url, database, zones=zones,
        extra_influxdb=f'gpu_point_fields = "{gpu_fields}"\n',
        racks=f'[[racks]]\nname = "r1"\nzone = "MISO"\npue = 1.2\nnodes = [{nodes}]\n',
        # the revisit runs only when a test calls run_once()
        extra_server=f"\n[accounting]\nestimate_revisit_s = 86400\nestimate_lookback_s = {lookback_s}\n",
    )


async def send(c: RunningCollector, bs: list[pb.Batch]) -> list[int]:
    """Each batch's Ack code, over one gRPC stream."""
    codes = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
        stream = pb_grpc.IngestStub(ch).Stream()
        for b in bs:
            await stream.write(b)
            codes.append((await stream.read()).code)
        await stream.done_writing()
    return codes


async def job(c: RunningCollector) -> dict[str, Any]:
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{c.http_port}/v1/jobs/job-1")
    assert status == 200, body
    report: dict[str, Any] = json.loads(body)
    return report


async def rack(c: RunningCollector) -> dict[str, Any]:
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{c.http_port}/v1/racks")
    assert status == 200, body
    (r,) = json.loads(body)["racks"]
    return dict(r)


def samples(node: str = "n1") -> list[pb.Batch]:
    return batches(node, sim_samples(node, 1, T8, 36000, 300.0, 60.0), 100)


@pytest.mark.parametrize("gpu_fields", ["all", "accounting"])
async def test_held_then_fallback_then_replaced_exact_under_resends(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, api: tuple[GridServer, PastRange], gpu_fields: str
) -> None:
    server, handler = api
    bs = samples()
    cfg = toml(tmp_path, influxdb.url, database, server.base_url, gpu_fields=gpu_fields)
    async with running_collector(tmp_path, cfg) as c:
        assert await send(c, bs) == [0] * 6
        during = (await job(c))
        assert during["co2e_kg"] * 1000 == pytest.approx(OUTAGE_G, rel=1e-9)
        assert during["estimated_share"] == pytest.approx(ESTIMATED_G / OUTAGE_G, rel=1e-9)
        assert (await rack(c))["estimated_share"] == pytest.approx(ESTIMATED_G / OUTAGE_G, rel=1e-9)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{c.grpc_port}") as ch:
            grpc_report = await pb_grpc.QueryStub(ch).GetJob(pb.GetJobRequest(job_id="job-1"))
        assert grpc_report.estimated_share == pytest.approx(ESTIMATED_G / OUTAGE_G, rel=1e-9)
        # a resend during the outage changes nothing
        assert await send(c, bs[2:4]) == [0, 0]
        assert (await job(c))["co2e_kg"] == pytest.approx(during["co2e_kg"], rel=1e-12)
        # a revisit while the API still has no values rewrites nothing
        assert c.revisor is not None
        assert await c.revisor.run_once() == 0
        assert c.revisor.pending  # still waiting for the measured hours

        handler.outage = False
        # 6 hours × 60 one-minute samples rewritten with measured values
        assert await c.revisor.run_once() == 360
        assert not c.revisor.pending
        after = (await job(c))
        assert after["co2e_kg"] * 1000 == pytest.approx(FULL_G, rel=1e-9)
        assert after["estimated_share"] == 0
        assert (await rack(c))["co2e_kg"] * 1000 == pytest.approx(FULL_G, rel=1e-9)
        # resending everything now changes nothing; nothing is left to revisit
        assert await send(c, bs) == [0] * 6
        assert (await job(c))["co2e_kg"] == pytest.approx(after["co2e_kg"], rel=1e-12)
        assert await c.revisor.run_once() == 0
        await c.ingestor.rollup.close()  # settle the rack windows now
        assert (await rack(c))["co2e_kg"] * 1000 == pytest.approx(FULL_G, rel=1e-9)
    (gpu, node, jw) = influx_query(
        influxdb.url, database,
        "SELECT sum(co2e_g), sum(estimated_co2e_g), count(co2e_g) FROM gpu; "
        "SELECT sum(co2e_g), sum(estimated_co2e_g) FROM node; "
        "SELECT sum(co2e_g), sum(estimated_co2e_g) FROM job_window",
    )
    assert (first_row(gpu)["sum"], first_row(gpu)["sum_1"], first_row(gpu)["count"]) == (
        pytest.approx(FULL_G, rel=1e-9), 0.0, 600)
    assert (first_row(node)["sum"], first_row(node)["sum_1"]) == (pytest.approx(FULL_G, rel=1e-9), 0.0)
    assert (first_row(jw)["sum"], first_row(jw)["sum_1"]) == (pytest.approx(FULL_G, rel=1e-9), 0.0)
    (keys,) = influx_query(influxdb.url, database, "SHOW FIELD KEYS FROM gpu")
    assert len(keys["series"][0]["values"]) == (22 if gpu_fields == "all" else len(ACCOUNTING_GPU_FIELDS))


async def test_look_back_bound_leaves_old_estimates(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, api: tuple[GridServer, PastRange]
) -> None:
    server, handler = api
    cfg = toml(tmp_path, influxdb.url, database, server.base_url, lookback_s=0)
    async with running_collector(tmp_path, cfg) as c:
        assert await send(c, samples()) == [0] * 6
        handler.outage = False
        assert c.revisor is not None
        assert await c.revisor.run_once() == 0  # past the look-back: dropped, not revisited
        assert not c.revisor.pending
        assert (await job(c))["estimated_share"] == pytest.approx(ESTIMATED_G / OUTAGE_G, rel=1e-9)


async def test_without_a_chain_a_stretch_past_the_hold_is_refused_and_resent(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, api: tuple[GridServer, PastRange]
) -> None:
    server, handler = api
    bs = samples()  # batches of 100 minutes: 08:00, 09:40, 11:20, 13:00, 14:40, 16:20
    cfg = toml(tmp_path, influxdb.url, database, server.base_url, chain=False)
    async with running_collector(tmp_path, cfg) as c:
        # 09:40-11:20 and 11:20-13:00 lie within the 3-hour hold; 13:00-16:20 past it: refused
        assert await send(c, bs) == [0, 0, 0, 14, 14, 0]
        assert c.ingestor.stats.batches_deferred_by_reason["intensity_unavailable"] == 2
        partial = (await job(c))
        handler.outage = False
        assert await send(c, bs[3:5]) == [0, 0]  # the agent's resend after recovery
        assert c.revisor is not None
        await c.revisor.run_once()
        after = (await job(c))
    # before: 08-10 measured, 10-13 held at 419, 13:00-16:20 not stored (refused), 16:20-18 measured
    held_g = KWH_PER_H * (416 + 419 + 3 * 419 + 427 * 40 / 60 + 429)
    assert partial["co2e_kg"] * 1000 == pytest.approx(held_g, rel=1e-9)  # 1010.04 g
    assert partial["estimated_share"] == pytest.approx(KWH_PER_H * 3 * 419 / held_g, rel=1e-9)
    assert after["co2e_kg"] * 1000 == pytest.approx(FULL_G, rel=1e-9)
    assert after["estimated_share"] == 0


async def test_two_replicas_revisiting_at_once_stay_exact(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, api: tuple[GridServer, PastRange]
) -> None:
    """n1 writes through replica a, n2 through b; both revisit the zone at once after recovery."""
    server, handler = api
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg = toml(tmp_path, influxdb.url, database, server.base_url, nodes='"n1", "n2"')
    async with running_collector(tmp_path / "a", cfg) as a, running_collector(tmp_path / "b", cfg) as b:
        assert await send(a, samples("n1")) == [0] * 6
        assert await send(b, samples("n2")) == [0] * 6
        await a.ingestor.rollup.close()
        await b.ingestor.rollup.close()
        assert (await rack(a))["co2e_kg"] * 1000 == pytest.approx(2 * OUTAGE_G, rel=1e-9)
        handler.outage = False
        assert a.revisor is not None and b.revisor is not None
        done = await asyncio.gather(a.revisor.run_once(), b.revisor.run_once())
        assert sum(done) >= 720  # each replica rewrites what is still estimated when it reads
        await a.ingestor.rollup.close()
        await b.ingestor.rollup.close()
        r = await rack(a)
        assert r["co2e_kg"] * 1000 == pytest.approx(2 * FULL_G, rel=1e-9)
        assert r["estimated_share"] == 0
    (nodes, racks) = influx_query(
        influxdb.url, database,
        "SELECT sum(co2e_g), sum(estimated_co2e_g) FROM node GROUP BY node; "
        "SELECT sum(co2e_g), sum(estimated_co2e_g) FROM rack",
    )
    for series in nodes["series"]:
        assert series["values"][0][1:] == [pytest.approx(FULL_G, rel=1e-9), 0.0]
    assert first_row(racks)["sum"] == pytest.approx(2 * FULL_G, rel=1e-9)


async def test_a_restarted_collector_recovers_the_stretches_to_revisit(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, api: tuple[GridServer, PastRange]
) -> None:
    server, handler = api
    cfg = toml(tmp_path, influxdb.url, database, server.base_url)
    async with running_collector(tmp_path, cfg) as c:
        assert await send(c, samples()) == [0] * 6
    handler.outage = False
    async with running_collector(tmp_path, cfg) as c:  # a new process: nothing noted in memory
        assert c.revisor is not None and not c.revisor.pending
        # these samples are from 2024: recover() reads back by sample time, so look back far enough
        revisor = EstimateRevisor(c.store, c.ingestor.rollup, c.topology, lookback_s=5 * 365 * 86400.0)
        assert await revisor.recover() == 6  # the hours 10:00-16:00 carry estimated emissions
        assert [(s.start_ns, s.end_ns) for s in revisor.pending["MISO"]] == [OUTAGE]
        assert await revisor.run_once() == 360
        after = await job(c)
    assert after["co2e_kg"] * 1000 == pytest.approx(FULL_G, rel=1e-9)
    assert after["estimated_share"] == 0


async def test_a_revisit_on_another_replica_makes_the_final_read_back_whole(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, api: tuple[GridServer, PastRange]
) -> None:
    """n1 (one GPU, 300 W, PUE 1.2) streams to replica a: 10:00:00-10:00:30 during the outage (nothing
    earlier to hold: the chain's fallback, 250 g/kWh, estimated). Replica b revisits once the API has
    10:00's 431: it rewrites those job points, with its writer mark, and recomputes n1's window from the
    store. Then n1's next batch (10:00:30-10:01:00, measured 431) is written by a from its held state,
    which still has the 250: its node point (0.003 kWh x (250 + 431) = 2.043 g, 0.75 g estimated) is
    wrong until a's final read-back finds b's mark and reads the window whole. By hand:
    0.3 kW x 60 s x 1.2 = 0.006 kWh x 431 = 2.586 g, none estimated."""
    server, handler = api
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg = toml(tmp_path, influxdb.url, database, server.base_url).replace(
        "[accounting]\n", "[accounting]\nreplica_settle_s = 5.0\n")
    t10 = OUTAGE[0]
    first, second = batches("n1", sim_samples("n1", 1, t10, 60, 300.0, 10.0), 3)
    async with running_collector(tmp_path / "a", cfg) as a, running_collector(tmp_path / "b", cfg) as b:
        stream = Stream(a.grpc_port)  # one stream: a holds n1's windows from batch to batch
        assert (await stream.send(first)).code == 0
        handler.outage = False
        revisor = EstimateRevisor(b.store, b.ingestor.rollup, b.topology, lookback_s=5 * 365 * 86400.0)
        assert await revisor.recover() == 1
        assert await revisor.run_once() == 3
        assert a.ingestor.rollup.final_runs == 0  # a's read-back is due 5 s after its last write
        assert (await stream.send(second)).code == 0
        await settled(a, b)
        await stream.close()
        assert a.ingestor.rollup.one_writes == 2  # both batches written from held state
        node, job_window, rack_points = influx_query(
            influxdb.url, database,
            "SELECT co2e_g, estimated_co2e_g, it_energy_kwh FROM node; "
            "SELECT co2e_g, estimated_co2e_g FROM job_window; SELECT co2e_g, estimated_co2e_g FROM rack")
        by_hand = 0.3 * 60 / 3600 * 1.2 * 431
        assert node["series"][0]["values"] == [[t10, pytest.approx(by_hand, rel=1e-12), 0.0,
                                                pytest.approx(0.3 * 60 / 3600, rel=1e-12)]]
        assert job_window["series"][0]["values"] == [[t10, pytest.approx(by_hand, rel=1e-12), 0.0]]
        assert rack_points["series"][0]["values"] == [[t10, pytest.approx(by_hand, rel=1e-12), 0.0]]
        rollup = a.ingestor.rollup
        assert (rollup.read_back_sums_skipped, rollup.final_mismatches) == (0, 1)
