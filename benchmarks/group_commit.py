"""Group commit in the write path alone: many nodes' small batches through InfluxStore into InfluxDB.

N callers ("nodes") each hand ``InfluxStore.write_lines`` one batch every ``--interval-s`` (open
loop, start times spread over the interval), as the collector does for every agent batch. A batch
is the collector's own gpu and job lines (``prepare_batch``) for ``--gpus`` GPUs over
``--batch-s`` seconds of 1 Hz samples. Each configuration of ``--configs`` (group commit off, or
on with its slots and linger) runs ``--seconds`` against one fresh database of one local InfluxDB 1.x.

Per configuration: samples/s stored, write latency (submit → answer) p50/p99, HTTP requests,
influxd and this process's CPU cores per 1,000 samples/s. The write path only: no gRPC, no
queries (the interval check and the window read-backs are not here; benchmarks/capacity.py
has the whole collector). Last line JSON: every configuration's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.sampler import Sampler
from gridwatt.agent.sources.sim.source import SimSource
from gridwatt.agent.sources.sim.trace import synthetic_trace
from gridwatt.collector.config import CollectorConfig, InfluxConfig
from gridwatt.collector.points import prepare_batch
from gridwatt.collector.store import InfluxStore
from gridwatt.collector.wiring import build_topology
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capacity import percentile
from ingest import cpu_s


def say(msg: str) -> None:
    print(f"[group_commit] {msg}", file=sys.stderr, flush=True)


def node_batches(nodes: int, gpus: int, batch_s: float, rounds: int) -> list[list[tuple[int, list[str]]]]:
    """Per node, ``rounds`` consecutive batches as (samples, lines), made by the collector's own code."""
    config = CollectorConfig.model_validate({
        "accounting": {"default_zone": "Z", "default_pue": 1.2}, "server": {"auto_register": True},
        "zones": [{"name": "Z", "intensity": {"kind": "constant", "g_per_kwh": 350.0}}],
    })
    topology = build_topology(config)
    start_ns = time.time_ns() - 86_400 * 10**9
    out = []
    for i in range(nodes):
        node = f"node-{i}"
        placement = topology.locate(node)
        assert placement is not None
        intensity = asyncio.run(placement.intensity.series(0, 0))
        src = SimSource(synthetic_trace(gpus, start_ns, batch_s * rounds, 350.0, 80.0), node, 1.0)
        sampler = Sampler(Attributor(f"job-{i % 7}"), idle_below_pct=5)
        rows: list[pb.GpuSample] = []
        while not src.finished:
            rows += sampler.take(src.read())
        per = max(1, len(rows) // rounds)
        mine = []
        for k in range(rounds):
            chunk = rows[k * per:(k + 1) * per]
            batch = pb.Batch(batch_id=k + 1, node=node, gpu_samples=chunk)
            mine.append((len(chunk), prepare_batch(batch, placement, intensity, 60 * 10**9).lines))
        out.append(mine)
    return out


def parse_config(text: str) -> tuple[bool, int, float]:
    """``off``, or ``SLOTS`` / ``SLOTS@LINGER_S``: (group commit, max in flight, linger)."""
    if text == "off":
        return False, 1, 0.0
    slots, _, linger = text.partition("@")
    return True, int(slots), float(linger or 0)


async def run_config(url: str, database: str, config: str,
                     batches: list[list[tuple[int, list[str]]]], args: argparse.Namespace,
                     influxd_pid: int) -> dict[str, Any]:
    group_commit, slots, linger_s = parse_config(config)
    store = InfluxStore(InfluxConfig(url=url, database=database, group_commit=group_commit,
                                     group_commit_max_in_flight=slots, group_commit_linger_s=linger_s,
                                     timeout_s=60))
    await store.start()
    latencies: list[float] = []
    stored = 0
    failed = 0

    async def node(k: int, mine: list[tuple[int, list[str]]]) -> None:
        nonlocal stored, failed
        await asyncio.sleep(args.interval_s * k / len(batches))
        t_next = time.monotonic()
        for samples, lines in mine:
            t0 = time.monotonic()
            try:
                await store.write_lines(lines)
            except Exception:  # counted; the figures say how many
                failed += 1
            else:
                stored += samples
                latencies.append(time.monotonic() - t0)
            t_next += args.interval_s
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))

    c0, i0, t0 = cpu_s(os.getpid()), cpu_s(influxd_pid), time.monotonic()
    await asyncio.gather(*(node(k, mine) for k, mine in enumerate(batches)))
    c1, i1, t1 = cpu_s(os.getpid()), cpu_s(influxd_pid), time.monotonic()
    requests = store.metrics.registry.get_sample_value(
        "gridwatt_collector_influxdb_write_duration_seconds_count") or 0
    await store.close()
    wall = t1 - t0
    rate = stored / wall
    per_k = 1000 / rate if rate else 0.0
    return {
        "config": config,
        "samples_per_s": round(rate, 1), "stored_samples": stored,
        "offered_samples": sum(s for mine in batches for s, _ in mine),
        "write_p50_s": round(percentile(latencies, 0.5), 4),
        "write_p99_s": round(percentile(latencies, 0.99), 4),
        "requests": int(requests), "batches": len(latencies), "failed": failed,
        "influxd_cores_per_1000_samples_per_s": round((i1 - i0) / wall * per_k, 4),
        "writer_cores_per_1000_samples_per_s": round((c1 - c0) / wall * per_k, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=400)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--batch-s", type=float, default=2.0,
                   help="seconds of 1 Hz samples per batch (the agent's linger)")
    p.add_argument("--interval-s", type=float, default=2.0, help="seconds between a node's batches")
    p.add_argument("--rounds", type=int, default=15, help="batches per node (run time = rounds x interval)")
    p.add_argument("--configs", default="off,1,2,4,2@0.02,2@0.05",
                   help="off, or group_commit_max_in_flight[@group_commit_linger_s], comma-separated")
    args = p.parse_args()
    batches = node_batches(args.nodes, args.gpus, args.batch_s, args.rounds)
    lines = sum(len(ls) for mine in batches for _, ls in mine)
    say(f"{args.nodes} nodes x {args.rounds} batches, {lines} lines; "
        f"one batch every {args.interval_s:g} s per node")
    results = []
    configs = args.configs.split(",")
    folder = Path(tempfile.mkdtemp(prefix="gridwatt-gc-bench-"))
    try:
        with LocalInfluxDB(data_dir=folder / "influxdb") as db:
            assert db.proc is not None
            warm = [mine[:2] for mine in batches]  # a first database and shard, not measured
            asyncio.run(run_config(db.url, "warmup", configs[0], warm, args, db.proc.pid))
            for k, config in enumerate(configs):
                r = asyncio.run(run_config(db.url, f"gc{k}", config, batches, args, db.proc.pid))
                say(json.dumps(r))
                results.append(r)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({"nodes": args.nodes, "gpus": args.gpus, "interval_s": args.interval_s,
                      "cpus": os.cpu_count(), "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                      "configs": results}))


if __name__ == "__main__":
    main()
