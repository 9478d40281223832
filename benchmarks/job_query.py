"""Per-job query latency: a job of 64 GPUs over 24 h at 10 s resolution, through the collector's HTTP API.

Ingests the job (8 nodes x 8 GPUs, 552,960 samples) through a real collector into a
local InfluxDB 1.x, then times ``GET /v1/jobs/{job_id}`` sequentially. Baseline, in the
same run: the straightforward InfluxQL report (sums over every raw ``job`` point).
Last line JSON: ``{"p50_ms": ..., "p99_ms": ..., "baseline_p50_ms": ..., ...}``. Goal: p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.sampler import Sampler
from gridwatt.agent.sources.sim.source import SimSource
from gridwatt.agent.sources.sim.trace import synthetic_trace
from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.server import start_collector
from gridwatt.configfile import load_config
from gridwatt.demo_harness.influxdb import LocalInfluxDB, free_port
from gridwatt.demo_harness.processes import toml_str
from gridwatt.v1 import telemetry_pb2 as pb

START_NS = 1_656_633_600 * 10**9  # 2022-07-01T00:00:00Z
JOB = "llm-pretrain-64"


def say(msg: str) -> None:
    print(f"[job_query] {msg}", file=sys.stderr, flush=True)


async def ship_node(port: int, node: str, hours: float, interval_s: float) -> int:
    src = SimSource(synthetic_trace(8, START_NS, hours * 3600, 380.0, 85.0), node, interval_s)
    sampler = Sampler(Attributor(JOB), idle_below_pct=5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.stream_stream(
            "/gridwatt.v1.Ingest/Stream",
            request_serializer=pb.Batch.SerializeToString,
            response_deserializer=pb.Ack.FromString,
        )()
        pending, sent, batch_id, buf = 0, 0, 0, []
        while not src.finished:
            buf += sampler.take(src.read())
            if len(buf) >= 2000 or (src.finished and buf):
                batch_id += 1
                await call.write(pb.Batch(batch_id=batch_id, node=node, gpu_samples=buf))
                sent += len(buf)
                buf = []
                pending += 1
                while pending >= 4:
                    ack = await call.read()
                    assert ack.code == 0, ack
                    pending -= 1
        while pending:
            assert (await call.read()).code == 0
            pending -= 1
        await call.done_writing()
    return sent


async def timed(n: int, fn: object) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()  # type: ignore[operator]
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="gridwatt-jobq-"))
    with LocalInfluxDB(data_dir=folder / "influxdb") as db:
        grpc_port, http_port = free_port(), free_port()
        cfg = folder / "collector.toml"
        nodes = [f"gpu-{i:02d}" for i in range(args.nodes)]
        cfg.write_text(
            f'[server]\ngrpc_listen = "127.0.0.1:{grpc_port}"\nhttp_listen = "127.0.0.1:{http_port}"\n'
            f"[influxdb]\nurl = {toml_str(db.url)}\n"
            '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 350.0 }\n'
            f'[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\nnodes = {json.dumps(nodes)}\n'
        )
        running = await start_collector(load_config(cfg, CollectorConfig))
        try:
            say(f"ingesting {args.nodes} nodes x 8 GPUs x {args.hours:g} h at {args.interval_s:g} s")
            t0 = time.perf_counter()
            counts = await asyncio.gather(
                *(ship_node(grpc_port, n, args.hours, args.interval_s) for n in nodes)
            )
            say(f"ingested {sum(counts)} samples in {time.perf_counter() - t0:.1f} s")
            # the deferred read-backs of held node windows and rack settles (collector/rollup.py) run
            # for a few seconds after a backfill; queries are timed on a settled collector
            t1 = time.perf_counter()
            while running.ingestor.rollup.pending_read_backs() and time.perf_counter() - t1 < 300:
                await asyncio.sleep(0.05)
            settle_wait_s = time.perf_counter() - t1
            say(f"deferred read-backs done {settle_wait_s:.1f} s after the ingest")
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{http_port}/v1/jobs/{JOB}"

                async def report() -> None:
                    async with http.get(url) as resp:
                        assert resp.status == 200, await resp.text()
                        body = await resp.json()
                        assert body["gpu_count"] == 8 * args.nodes

                await timed(5, report)  # warm-up
                latencies = await timed(args.repeat, report)
                baseline_q = (
                    'SELECT sum("energy_j"), sum("facility_energy_j"), sum("co2e_g"), sum("gpu_s"), '
                    'sum("util_pct_s"), sum("idle_s"), sum("idle_energy_j"), max("end_ns") FROM "job" '
                    f'WHERE "job_id" = \'{JOB}\' GROUP BY "node", "gpu"'
                )

                async def baseline() -> None:
                    await running.store.query(baseline_q)

                base = await timed(max(5, args.repeat // 10), baseline)
        finally:
            await running.stop(grace_s=1)
    return {
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(pct(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "baseline_p50_ms": round(statistics.median(base), 2),
        "samples": sum(counts),
        "repeat": args.repeat,
        "settle_wait_s": round(settle_wait_s, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--interval-s", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=200)
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    say(
        f"GET /v1/jobs: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; "
        f"full-scan InfluxQL baseline p50 {result['baseline_p50_ms']} ms"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
