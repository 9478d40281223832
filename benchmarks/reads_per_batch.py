"""What one real-time batch costs InfluxDB: requests and CPU per batch, in one small controlled run.

N nodes of 8 GPUs each send one batch of 8 one-second samples every second, in real time, each
on its own gRPC stream, to a collector running in this process (so its held state and counters can
be read), all nodes in one auto-registered rack (or, with ``--nodes-per-rack``, in configured racks
of that many nodes, which collector/rack_state.py holds), against one local InfluxDB 1.x. InfluxDB's
own request counters (``SHOW STATS``, httpd ``queryReq`` / ``writeReq``) and the CPU seconds of
influxd and of this process (collector + load) give the cost per batch; the collector's counters say
where the reads went (collector/node_state.py, collector/rack_state.py, collector/rollup.py).

Last line JSON: ``queries_per_batch``, ``writes_per_batch``, influxd and process CPU seconds per
1,000 batches, ack p50/p99, and the collector's read counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc

from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.server import start_collector
from gridwatt.configfile import load_config
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import toml_str
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import cpu_s

NS = 1_000_000_000


def say(msg: str) -> None:
    print(f"[reads] {msg}", file=sys.stderr, flush=True)


def http_requests(url: str) -> tuple[int, int]:
    """InfluxDB's count of query and write requests so far."""
    q = urllib.parse.urlencode({"q": "SHOW STATS FOR 'httpd'"})
    with urllib.request.urlopen(f"{url}/query?{q}", timeout=30) as resp:
        series = json.load(resp)["results"][0]["series"][0]
    row = dict(zip(series["columns"], series["values"][0], strict=False))
    return int(row.get("queryReq", 0)), int(row.get("writeReq", 0))


def rack_tables(nodes: int, per_rack: int) -> str:
    """``[[racks]]`` of ``per_rack`` nodes (none with 0: every node auto-registered in one rack)."""
    if per_rack <= 0:
        return ""
    return "".join(
        f'[[racks]]\nname = "r{r}"\nzone = "Z"\npue = 1.2\nnodes = ['
        + ", ".join(f'"n{i}"' for i in range(r * per_rack, min(nodes, (r + 1) * per_rack))) + "]\n"
        for r in range((nodes + per_rack - 1) // per_rack))


async def one_node(port: int, node: str, t0_ns: int, stop_s: float, latencies: list[float]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.IngestStub(channel).Stream()
        k = 0
        while time.time() < stop_s:
            start = t0_ns + k * NS
            batch = pb.Batch(batch_id=k + 1, node=node, gpu_samples=[pb.GpuSample(
                gpu_index=g, gpu_uuid=f"GPU-{g}", start_ns=start, end_ns=start + NS, energy_j=300.0,
                mean_power_w=300.0, util_pct=80.0,
                jobs=[pb.JobShare(job_id=f"job-{node}", fraction=0.9, user="u")]) for g in range(8)])
            sent = time.monotonic()
            await call.write(batch)
            ack = await call.read()
            if not isinstance(ack, pb.Ack) or ack.code != 0:
                raise SystemExit(f"batch not stored: {ack}")
            latencies.append(time.monotonic() - sent)
            k += 1
            await asyncio.sleep(max(0.0, (t0_ns + k * NS) / NS + 0.05 - time.time()))
        await call.done_writing()


async def run(args: argparse.Namespace) -> dict[str, object]:
    with LocalInfluxDB() as db:
        folder = Path(tempfile.mkdtemp(prefix="gridwatt-reads-"))
        cfg = folder / "collector.toml"
        cfg.write_text(
            '[server]\ngrpc_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\nauto_register = true\n'
            f'max_in_flight_batches = 4096\n[influxdb]\nurl = {toml_str(db.url)}\ndatabase = "reads"\n'
            '[accounting]\ndefault_zone = "Z"\ndefault_pue = 1.2\n'
            '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 350.0 }\n'
            + rack_tables(args.nodes, args.nodes_per_rack))
        collector = await start_collector(load_config(cfg, CollectorConfig))
        try:
            assert db.proc is not None
            t0 = (time.time_ns() // NS - 1) * NS
            await asyncio.sleep(1.0)
            q0, w0 = http_requests(db.url)
            influx0, me0 = cpu_s(db.proc.pid), cpu_s(os.getpid())
            latencies: list[float] = []
            stop = time.time() + args.seconds
            say(f"{args.nodes} nodes x 8 GPUs, one batch per node per second, {args.seconds} s")
            await asyncio.gather(*(one_node(collector.grpc_port, f"n{i}", t0, stop, latencies)
                                   for i in range(args.nodes)))
            q1, w1 = http_requests(db.url)
            influx1, me1 = cpu_s(db.proc.pid), cpu_s(os.getpid())
            rollup = collector.ingestor.rollup
            counters = {
                "held_fill_queries": rollup.held.queries,
                "interval_checks_held": rollup.held.interval_checks_held,
                "interval_checks_read": rollup.held.interval_checks_read,
                "node_window_queries": rollup.node_queries,
                "rack_window_queries": rollup.rack_queries,
                "node_read_backs_after_settle": rollup.final_runs,
                "rack_windows_from_held": rollup.rack_held_windows,
                "rack_read_backs_after_settle": rollup.rack_final_runs,
                "rack_settle_recomputes": rollup.settle_runs,
            }
        finally:
            await collector.stop(grace_s=1)
    latencies.sort()
    n = len(latencies)
    return {
        "batches": n,
        "queries_per_batch": round((q1 - q0) / n, 3),
        "writes_per_batch": round((w1 - w0) / n, 3),
        "influxd_cpu_s_per_1000_batches": round((influx1 - influx0) / n * 1000, 2),
        "process_cpu_s_per_1000_batches": round((me1 - me0) / n * 1000, 2),
        "ack_p50_s": round(latencies[n // 2], 3),
        "ack_p99_s": round(latencies[min(n - 1, int(n * 0.99))], 3),
        **counters,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--nodes-per-rack", type=int, default=0,
                   help="configured racks of this many nodes (0: all auto-registered in one rack)")
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
