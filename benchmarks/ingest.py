"""Ingest throughput: simulated agents → gRPC → collector → InfluxDB, against raw InfluxDB writes.

In one run, against one local InfluxDB 1.x:

* e2e: K simulated agents stream pre-built batches (made by the agent's own sampler
  over a simulated source) to a real ``gridwatt-collector`` process, until all N samples
  are acknowledged and queryable;
* raw: the same line protocol the collector produced for those batches (gpu and job
  points, built with the collector's own code) is POSTed straight to InfluxDB, in the
  collector's chunk size, into a fresh database, until queryable.

Prints progress and figures; the last line is JSON:
``{"e2e_samples_per_s": ..., "raw_samples_per_s": ..., "ratio": ...}``. Goal: ratio ≥ 0.5.
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
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import grpc

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.sampler import Sampler
from gridwatt.agent.sources.sim.source import SimSource
from gridwatt.agent.sources.sim.trace import synthetic_trace
from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.points import prepare_batch
from gridwatt.collector.wiring import build_topology
from gridwatt.configfile import load_config
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, toml_str
from gridwatt.v1 import telemetry_pb2 as pb

START_NS = 1_656_633_600 * 10**9  # 2022-07-01T00:00:00Z


def say(msg: str) -> None:
    print(f"[ingest] {msg}", file=sys.stderr, flush=True)


def make_batches(agents: int, samples: int, batch_size: int, gpus: int) -> dict[str, list[bytes]]:
    """Serialized batches per node, from the agent's own code path (sim source → sampler)."""
    per_agent = samples // agents
    intervals = per_agent // gpus
    out: dict[str, list[bytes]] = {}
    for a in range(agents):
        node = f"bench-{a}"
        src = SimSource(synthetic_trace(gpus, START_NS, intervals * 10.0, 350.0, 80.0), node, 10.0)
        sampler = Sampler(Attributor(f"job-{a % 3}"), idle_below_pct=5)
        rows: list[pb.GpuSample] = []
        while not src.finished:
            rows += sampler.take(src.read())
        out[node] = [
            pb.Batch(batch_id=k + 1, node=node, gpu_samples=rows[i : i + batch_size]).SerializeToString()
            for k, i in enumerate(range(0, len(rows), batch_size))
        ]
    return out


def influx_requests(url: str) -> dict[str, int]:
    """InfluxDB's own counts of HTTP queries and writes and points written (``/debug/vars``)."""
    with urllib.request.urlopen(f"{url}/debug/vars", timeout=60) as resp:
        body = json.load(resp)
    httpd = next((v["values"] for k, v in body.items() if k.startswith("httpd")), {})
    return {k: int(httpd.get(k, 0)) for k in ("queryReq", "writeReq", "pointsWrittenOK")}


def rollup_reads(http_url: str) -> dict[str, float]:
    """The collector's window reads so far (``/metrics``: rollup queries by kind, read-backs, skips)."""
    with urllib.request.urlopen(f"{http_url}/metrics", timeout=60) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gridwatt_collector_rollup_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            if float(value):
                out[name.removeprefix("gridwatt_collector_rollup_")] = float(value)
    return out


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_samples(url: str, database: str) -> int:
    q = urllib.parse.urlencode({"db": database, "q": "SELECT count(energy_j) FROM gpu"})
    with urllib.request.urlopen(f"{url}/query?{q}", timeout=60) as resp:
        body = json.load(resp)
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


async def stream_agent(address: str, batches: list[bytes], in_flight: int) -> int:
    """One agent: a stream with up to ``in_flight`` unacknowledged batches; returns samples stored."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            "/gridwatt.v1.Ingest/Stream", request_serializer=None, response_deserializer=pb.Ack.FromString
        )()
        stored = 0
        sent = 0
        pending = 0
        while sent < len(batches) or pending:
            while sent < len(batches) and pending < in_flight:
                await call.write(batches[sent])
                sent += 1
                pending += 1
            ack = await call.read()
            if ack is grpc.aio.EOF or ack.code != 0:
                raise RuntimeError(f"batch not stored: {ack}")
            stored += ack.stored_samples
            pending -= 1
        await call.done_writing()
        return stored


async def run_e2e(address: str, batches: dict[str, list[bytes]], in_flight: int) -> int:
    results = await asyncio.gather(*(stream_agent(address, b, in_flight) for b in batches.values()))
    return sum(results)


async def post_raw(url: str, database: str, chunks: list[str], concurrency: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/query", data={"q": f'CREATE DATABASE "{database}"'}) as resp:
            resp.raise_for_status()
        queue = list(reversed(chunks))

        async def worker() -> None:
            while queue:
                body = queue.pop()
                params = {"db": database, "precision": "ns"}
                async with session.post(f"{url}/write", params=params, data=body.encode()) as resp:
                    if resp.status != 204:
                        raise RuntimeError(f"raw write failed: {resp.status} {await resp.text()}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--in-flight", type=int, default=4)
    args = p.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="gridwatt-bench-"))
    try:
        say(f"building {args.samples} samples for {args.agents} agents x {args.gpus} GPUs")
        batches = make_batches(args.agents, args.samples, args.batch_size, args.gpus)
        n = sum(len(pb.Batch.FromString(b).gpu_samples) for bs in batches.values() for b in bs)
        with LocalInfluxDB(data_dir=folder / "influxdb") as db:
            grpc_port, http_port = new_collector_ports()
            cfg = folder / "collector.toml"
            cfg.write_text(
                f'[server]\ngrpc_listen = "127.0.0.1:{grpc_port}"\nhttp_listen = "127.0.0.1:{http_port}"\n'
                f'auto_register = true\n[influxdb]\nurl = {toml_str(db.url)}\ndatabase = "e2e"\n'
                '[accounting]\ndefault_zone = "Z"\ndefault_pue = 1.2\n'
                '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 350.0 }\n'
            )
            collector = CollectorProcess(cfg, grpc_port, http_port).start()
            try:
                say(f"e2e: {n} samples through the collector")
                assert db.proc is not None and collector.proc is not None
                requests0 = influx_requests(db.url)
                influx_cpu0, coll_cpu0, self_cpu0 = (
                    cpu_s(db.proc.pid),
                    cpu_s(collector.proc.pid),
                    time.process_time(),
                )
                t0 = time.perf_counter()
                stored = asyncio.run(run_e2e(collector.grpc_address, batches, args.in_flight))
                while count_samples(db.url, "e2e") < n:
                    time.sleep(0.05)
                e2e_s = time.perf_counter() - t0
                e2e_cpu = (
                    cpu_s(db.proc.pid) - influx_cpu0,
                    cpu_s(collector.proc.pid) - coll_cpu0,
                    time.process_time() - self_cpu0,
                )
                requests = {k: n - requests0[k] for k, n in influx_requests(db.url).items()}
                reads = rollup_reads(collector.http_url)
                say(f"e2e: InfluxDB requests {requests}; collector window reads {reads}")
            finally:
                collector.stop()
            assert stored == n, (stored, n)
            say(
                f"e2e: {e2e_s:.2f} s, {n / e2e_s:.0f} samples/s; CPU s: influxd {e2e_cpu[0]:.2f}, "
                f"collector {e2e_cpu[1]:.2f}, agents (this process) {e2e_cpu[2]:.2f}"
            )

            # The same line protocol the collector produced, built with its own code.
            config = load_config(cfg, CollectorConfig)
            topology = build_topology(config)
            lines: list[str] = []
            for node, node_batches in batches.items():
                placement = topology.locate(node)
                assert placement is not None
                intensity = asyncio.run(placement.intensity.series(0, 0))
                for raw in node_batches:
                    lines += prepare_batch(pb.Batch.FromString(raw), placement, intensity, 60 * 10**9).lines
            step = config.influxdb.write_batch_lines
            chunks = ["\n".join(lines[i : i + step]) for i in range(0, len(lines), step)]
            say(f"raw: {len(lines)} lines ({len(lines) / n:.2f} per sample) in {len(chunks)} requests")
            assert db.proc is not None
            influx_cpu0 = cpu_s(db.proc.pid)
            t0 = time.perf_counter()
            asyncio.run(post_raw(db.url, "raw", chunks, concurrency=args.agents))
            while count_samples(db.url, "raw") < n:
                time.sleep(0.05)
            raw_s = time.perf_counter() - t0
            say(
                f"raw: {raw_s:.2f} s, {n / raw_s:.0f} samples/s; "
                f"CPU s: influxd {cpu_s(db.proc.pid) - influx_cpu0:.2f}"
            )
    finally:  # the InfluxDB data of both runs (hundreds of MB)
        shutil.rmtree(folder, ignore_errors=True)
    e2e_rate, raw_rate = n / e2e_s, n / raw_s
    print(
        json.dumps(
            {
                "e2e_samples_per_s": round(e2e_rate),
                "raw_samples_per_s": round(raw_rate),
                "ratio": round(e2e_rate / raw_rate, 3),
                "samples": n,
            }
        )
    )


if __name__ == "__main__":
    main()
