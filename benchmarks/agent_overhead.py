"""Agent overhead: a live agent with 8 simulated GPUs at 1 Hz, shipping to a real collector.

Measures the agent process's CPU (percent of one core) and resident memory over
``--duration`` seconds (default 300, as the issue asks), and in the same run a
baseline: a Python process that imports the same modules and sleeps. With
``--profile``, the agent runs under cProfile and the top functions are printed.
Last line JSON: ``{"cpu_pct_of_one_core": ..., "rss_mb": ..., "baseline_cpu_pct": ..., ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, toml_str


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(proc: subprocess.Popen[bytes], warmup_s: float, duration_s: float) -> tuple[float, float, float]:
    """(CPU % of one core, mean RSS MB, peak RSS MB) over duration_s after warmup_s."""
    time.sleep(warmup_s)
    c0, t0 = cpu_s(proc.pid), time.monotonic()
    rss: list[float] = []
    while time.monotonic() - t0 < duration_s:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        rss.append(rss_mb(proc.pid))
        time.sleep(1.0)
    cpu_pct = (cpu_s(proc.pid) - c0) / (time.monotonic() - t0) * 100
    return cpu_pct, sum(rss) / len(rss), max(rss)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=300.0, help="measured seconds (default 300)")
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--profile", action="store_true", help="run the agent under cProfile and print a profile")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="gridwatt-overhead-"))
    say = lambda m: print(f"[overhead] {m}", file=sys.stderr, flush=True)  # noqa: E731

    baseline = subprocess.Popen(
        [sys.executable, "-c", "import time, grpc, psutil, gridwatt.agent.runner; time.sleep(10**6)"]
    )
    try:
        say(f"baseline: idle interpreter with the agent's imports, {args.duration:.0f} s")
        base_cpu, base_rss, _ = measure(baseline, args.warmup, args.duration)
    finally:
        baseline.kill()
        baseline.wait()

    with LocalInfluxDB(data_dir=folder / "influxdb") as db:
        grpc_port, http_port = new_collector_ports()
        cfg = folder / "collector.toml"
        cfg.write_text(
            f'[server]\ngrpc_listen = "127.0.0.1:{grpc_port}"\nhttp_listen = "127.0.0.1:{http_port}"\n'
            f"auto_register = true\n[influxdb]\nurl = {toml_str(db.url)}\n"
            '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 350.0 }\n'
        )
        collector = CollectorProcess(cfg, grpc_port, http_port).start()
        agent_cfg = folder / "agent.toml"
        sim_s = args.duration + args.warmup + 600
        agent_cfg.write_text(
            f'node = "overhead-node"\ninterval_s = 1.0\nspool_path = {toml_str(folder / "spool.db")}\n'
            f'[source]\nkind = "sim"\nsim = {{ gpus = 8, duration_s = {sim_s} }}\n'
            f'[collector]\naddress = "127.0.0.1:{grpc_port}"\n'
        )
        prof = folder / "agent.prof"
        cmd = [sys.executable]
        if args.profile:
            cmd += ["-m", "cProfile", "-o", str(prof)]
        cmd += ["-m", "gridwatt.agent.cli", "run", "--config", str(agent_cfg), "--log-level", "WARNING"]
        agent = subprocess.Popen(cmd)
        try:
            say(f"agent: 8 simulated GPUs at 1 Hz, live, {args.duration:.0f} s")
            cpu, rss, peak = measure(agent, args.warmup, args.duration)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
            collector.stop()
    if args.profile and prof.exists():
        stats = pstats.Stats(str(prof), stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(25)
    print(
        json.dumps(
            {
                "cpu_pct_of_one_core": round(cpu, 3),
                "rss_mb": round(rss, 1),
                "peak_rss_mb": round(peak, 1),
                "baseline_cpu_pct": round(base_cpu, 3),
                "baseline_rss_mb": round(base_rss, 1),
                "duration_s": args.duration,
            }
        )
    )


if __name__ == "__main__":
    main()
