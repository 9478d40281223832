"""Scrape time and size of /metrics with 1,000 GPUs and 200 running jobs (goal: < 50 ms, < 2 MB).

The live accounts are filled through their real input (``LiveAccounts.observe`` with real
batches: 125 nodes x 8 GPUs in 10 racks and 2 zones, 200 jobs of 5 GPUs each, alerts off), then
``/metrics`` is fetched over HTTP from the collector's own aiohttp app on a loopback port, in
both expositions (text 0.0.4, what promtool and curl get; OpenMetrics, what Prometheus asks for).
Prints figures; the last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp
from aiohttp import web

from gridwatt.collector.config import InfluxConfig
from gridwatt.collector.intensity.base import IntensitySeries
from gridwatt.collector.intensity.constant import ConstantIntensity
from gridwatt.collector.live_metrics import LiveAccounts
from gridwatt.collector.metrics import CollectorMetrics
from gridwatt.collector.query_service import http_app
from gridwatt.collector.stepseries import StepSeries
from gridwatt.collector.store import InfluxStore
from gridwatt.collector.topology import Placement
from gridwatt.demo_harness.influxdb import free_port
from gridwatt.v1 import telemetry_pb2 as pb

S = 1_000_000_000


def fill(live: LiveAccounts, gpus: int, jobs: int, intervals: int) -> None:
    per_node = 8
    nodes = gpus // per_node
    jobs_gpus = max(1, gpus // jobs)
    ci = IntensitySeries(StepSeries((0, 1800 * S), (350.0, 320.0)), "csv:DE_2022_hourly.csv", "lifecycle")
    pue = StepSeries.constant(1.2)
    for k in range(intervals):
        t0 = 1_700_000_000 * S + k * 10 * S
        for n in range(nodes):
            rack = f"rack-{n % 10:02d}"
            placement = Placement(rack, f"zone-{n % 2}", pue, ConstantIntensity(1.0))  # type: ignore[arg-type]
            samples = []
            for g in range(per_node):
                index = n * per_node + g
                share = [pb.JobShare(job_id=f"job-{index // jobs_gpus:05d}", fraction=1.0,
                                     user=f"user-{index % 37}")]
                samples.append(pb.GpuSample(gpu_index=g, start_ns=t0, end_ns=t0 + 10 * S, energy_j=4000.0,
                                            mean_power_w=400.0, util_pct=90.0, idle_s=0.0, jobs=share))
            live.observe(pb.Batch(node=f"node-{n:04d}", gpu_samples=samples), placement, ci, pue)


async def scrape(session: aiohttp.ClientSession, url: str, accept: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    async with session.get(url, headers={"Accept": accept}) as resp:
        body = await resp.read()
    return (time.perf_counter() - t0) * 1000, len(body)


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    live = LiveAccounts()
    t0 = time.perf_counter()
    fill(live, args.gpus, args.jobs, args.intervals)
    fill_s = time.perf_counter() - t0
    samples = args.gpus * args.intervals
    metrics = CollectorMetrics()
    metrics.live = live
    app = http_app(InfluxStore(InfluxConfig()), metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/metrics"
    out: dict[str, object] = {"gpus": args.gpus, "running_jobs": len(live.jobs),
                              "observe_us_per_sample": round(fill_s / samples * 1e6, 2)}
    try:
        async with aiohttp.ClientSession() as session:
            for name, accept in (("text", "text/plain"),
                                 ("openmetrics", "application/openmetrics-text;version=1.0.0")):
                await scrape(session, url, accept)  # warm-up
                runs = [await scrape(session, url, accept) for _ in range(args.repeat)]
                ms = sorted(r[0] for r in runs)
                out[f"{name}_p50_ms"] = round(statistics.median(ms), 2)
                out[f"{name}_max_ms"] = round(ms[-1], 2)
                out[f"{name}_bytes"] = runs[-1][1]
    finally:
        await runner.cleanup()
    out["goal_ms"] = 50
    out["goal_bytes"] = 2_000_000
    out["ok"] = all(float(out[f"{n}_p50_ms"]) < 50 and int(out[f"{n}_bytes"]) < 2_000_000  # type: ignore[arg-type]
                    for n in ("text", "openmetrics"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--intervals", type=int, default=3, help="10-second samples per GPU fed in first")
    p.add_argument("--repeat", type=int, default=30)
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    for name in ("text", "openmetrics"):
        print(f"/metrics ({name}): p50 {result[f'{name}_p50_ms']} ms, max {result[f'{name}_max_ms']} ms, "
              f"{int(result[f'{name}_bytes']) / 1e6:.2f} MB "  # type: ignore[call-overload]
              f"for {result['gpus']} GPUs and {result['running_jobs']} running jobs")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
