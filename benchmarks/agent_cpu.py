"""Agent CPU per sample: N simulated nodes (the load generator of capacity.py) against a real collector.

Runs ``capacity.py``'s own worker loop (per node: a SimSource read every interval, the agent's
Sampler, its SQLite Spool in /dev/shm and its Shipper with ``linger_s`` batching) in this process
for ``--seconds`` after ``--warmup``, against one ``gridwatt-collector`` and one InfluxDB 1.x.
Prints the process CPU seconds per 1,000 samples (and wall seconds), optionally a cProfile.
Last line JSON: ``cpu_s_per_1000_samples``, ``cores``, ``acked_samples_per_s``, ``ack_p99_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, toml_str

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capacity import percentile, run_nodes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--interval-s", type=float, default=1.0)
    p.add_argument("--linger-s", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--profile", type=Path, default=None, help="write cProfile stats here and print the top")
    args = p.parse_args()
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="gridwatt-agentcpu-"))
    spools = Path(tempfile.mkdtemp(prefix="gridwatt-agentcpu-spools-", dir=shm if shm.is_dir() else None))
    try:
        with LocalInfluxDB(data_dir=folder / "influxdb") as db:
            grpc_port, http_port = new_collector_ports()
            cfg = folder / "collector.toml"
            cfg.write_text(
                f'[server]\ngrpc_listen = "127.0.0.1:{grpc_port}"\nhttp_listen = "127.0.0.1:{http_port}"\n'
                f"auto_register = true\nmax_in_flight_batches = 4096\n"
                f'[influxdb]\nurl = {toml_str(db.url)}\ndatabase = "e2e"\n'
                '[accounting]\ndefault_zone = "Z"\ndefault_pue = 1.2\n'
                '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 350.0 }\n'
            )
            collector = CollectorProcess(cfg, grpc_port, http_port, log_path=folder / "collector.log").start()
            try:
                worker = argparse.Namespace(
                    address=collector.grpc_address, prefix="n", first=0, count=args.nodes, gpus=args.gpus,
                    interval_s=args.interval_s, linger_s=args.linger_s, warmup=args.warmup,
                    seconds=args.seconds, folder=str(spools), in_phase=False,
                )
                prof = cProfile.Profile() if args.profile else None
                wall0 = time.monotonic()
                if prof is not None:
                    prof.enable()
                result = asyncio.run(run_nodes(worker))
                if prof is not None:
                    prof.disable()
                wall_s = time.monotonic() - wall0
            finally:
                collector.stop()
    finally:
        subprocess.run(["rm", "-rf", str(spools), str(folder)], check=False)
    if prof is not None and args.profile is not None:
        prof.dump_stats(str(args.profile))
        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(35)
    offered = args.nodes * args.gpus / args.interval_s * args.seconds
    out = {
        "nodes": args.nodes, "gpus": args.gpus, "seconds": args.seconds,
        "cpu_s": round(result["cpu_s"], 3),
        "cpu_s_per_1000_samples": round(result["cpu_s"] / offered * 1000, 4),
        "cores": round(result["cpu_s"] / args.seconds, 4),
        "acked_samples_per_s": round(result["acked"] / args.seconds, 1),
        "ack_p99_s": round(percentile(result["latencies"], 0.99), 3),
        "backlog_growth_samples": result["backlog_end"] - result["backlog_start"],
        "wall_s": round(wall_s, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
